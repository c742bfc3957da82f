//! A small HTTPS client for the command line's `admin` and `audit`
//! commands: the caller's client certificate, an officer token, JSON in and
//! out. Where the pieces come from: explicit flags, or a demo directory
//! (its `ready.json` and its identity provider).

use std::path::{Path, PathBuf};

use crate::tls::https_client::{https_client, ClientOptions, HttpsClient};
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

/// How to reach the gateway and as whom.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsoleArgs {
    /// A `popgate demo` directory: the gateway URL, CA and the app's
    /// certificate come from its ready.json, and a token from its identity provider.
    #[arg(long, global = true)]
    pub dir: Option<PathBuf>,
    /// Your identity in the token minted from --dir (the token's `sub`).
    #[arg(long = "as", id = "as_officer", value_name = "NAME", global = true)]
    pub as_officer: Option<String>,
    /// Gateway URL (without --dir).
    #[arg(long, global = true)]
    pub gateway: Option<String>,
    /// CA of the gateway's certificate (without --dir).
    #[arg(long, global = true)]
    pub ca: Option<PathBuf>,
    /// Your app's client certificate and key (without --dir).
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// Your officer token (without --dir), or '-' to read it from stdin.
    #[arg(long, global = true)]
    pub token: Option<String>,
    /// Print the gateway's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

pub struct ConsoleClient {
    base: String,
    token: String,
    client: HttpsClient,
}

/// A gateway answer.
pub struct Answer {
    pub status: u16,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// The answer, or the problem document's title and detail as an error.
    pub fn ok(self) -> anyhow::Result<Answer> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let p = self.json();
        let mut msg = format!(
            "{} ({}): {}",
            p["title"].as_str().unwrap_or("request failed"),
            self.status,
            p["detail"].as_str().unwrap_or(&self.text)
        );
        if let Some(problems) = p["problems"].as_array() {
            for line in problems.iter().filter_map(Value::as_str) {
                msg.push_str("\n  ");
                msg.push_str(line);
            }
        }
        anyhow::bail!(msg)
    }
}

impl ConsoleClient {
    /// Connects as `app` with `role` (the role is used only when minting a
    /// demo token).
    pub fn new(args: &ConsoleArgs, app: &str, role: &str) -> anyhow::Result<ConsoleClient> {
        let (base, ca, cert, key, token) = match &args.dir {
            Some(dir) => {
                let ready: Value = serde_json::from_str(
                    &std::fs::read_to_string(dir.join("ready.json")).with_context(|| {
                        format!(
                            "{} has no ready.json: is `popgate demo --dir {}` running?",
                            dir.display(),
                            dir.display()
                        )
                    })?,
                )?;
                let path = |v: &Value| PathBuf::from(v.as_str().unwrap_or_default());
                let officer = args
                    .as_officer
                    .as_deref()
                    .context("--as NAME is required with --dir (your identity in the token)")?;
                let layout = crate::tls::pki::PkiLayout::new(dir.join("certs"));
                let token =
                    crate::tls::pki::mint_demo_token(&layout, app, officer, &[role.to_owned()], None, 900)?;
                (
                    ready["gateway_url"].as_str().unwrap_or_default().to_owned(),
                    path(&ready["ca_cert"]),
                    path(&ready["apps"][app]["cert"]),
                    path(&ready["apps"][app]["key"]),
                    token,
                )
            }
            None => {
                let need = |v: &Option<PathBuf>, flag: &str| {
                    v.clone()
                        .with_context(|| format!("--{flag} is required (or --dir)"))
                };
                let token = match args.token.as_deref() {
                    Some("-") => {
                        let mut t = String::new();
                        std::io::stdin().read_line(&mut t)?;
                        t.trim().to_owned()
                    }
                    Some(t) => t.to_owned(),
                    None => anyhow::bail!("--token is required (or --dir)"),
                };
                (
                    args.gateway.clone().context("--gateway is required (or --dir)")?,
                    need(&args.ca, "ca")?,
                    need(&args.cert, "cert")?,
                    need(&args.key, "key")?,
                    token,
                )
            }
        };
        let tls = crate::tls::mutual_client_config(&ca, &cert, &key, &[])?;
        Ok(ConsoleClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            client: https_client(tls, &ClientOptions::default()),
        })
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.send(http::Method::GET, path, None, &[]).await
    }

    pub async fn post(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> anyhow::Result<Answer> {
        self.send(http::Method::POST, path, Some(body), headers).await
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let resp = self
            .client
            .request(req.body(Full::new(bytes))?)
            .await
            .context("cannot reach the gateway")?;
        let status = resp.status().as_u16();
        let text = String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned();
        Ok(Answer { status, text })
    }
}

/// Reads a policy directory as a proposal: every file replaces its
/// counterpart, and files of `active` that the directory lacks are deleted.
pub fn proposal_from_dir(
    dir: &Path,
    active: &serde_json::Map<String, Value>,
) -> anyhow::Result<(Value, Vec<String>)> {
    let files = crate::policy::read_dir(dir).map_err(|p| anyhow::anyhow!("{p}"))?;
    let delete: Vec<String> = active
        .keys()
        .filter(|k| !files.contains_key(*k))
        .cloned()
        .collect();
    Ok((serde_json::to_value(&files)?, delete))
}

/// Prints rows as aligned columns.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(widths[i].saturating_sub(c.chars().count()))))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// A JSON value as a table cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}
