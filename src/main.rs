//! The `popgate` command line: parses arguments, starts logging, runs the
//! chosen command and maps failure to an exit status. Nothing else lives
//! here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use popgate::client::{cell, print_table, ConsoleArgs, ConsoleClient};
use popgate::config::{Config, DEFAULT_PROVINCE};
use popgate::sim::{population::MAX_POPULATION, Faults, SimSettings, Simulator};
use popgate::tls::pki::{self, PkiLayout, SAMPLE_APPS};
use popgate::tls::{self, MutualServerFiles};

#[derive(Parser)]
#[command(
    name = "popgate",
    version,
    about = "The secured gateway between a province's applications and the national population database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything on embedded defaults (PKI, simulator, PostgreSQL, gateway) until Ctrl-C/SIGTERM.
    Demo {
        /// Directory for the dev PKI, the PostgreSQL cluster and ready.json.
        #[arg(long, default_value = "var/demo")]
        dir: PathBuf,
        /// Policy directory imported as version 1 when the store is empty.
        #[arg(long, default_value = "policies")]
        policies: PathBuf,
        /// Province (post-2025 code) the demo serves.
        #[arg(long, default_value_t = DEFAULT_PROVINCE)]
        province: u16,
        /// Simulator seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Simulated population size.
        #[arg(long, default_value_t = MAX_POPULATION)]
        population: u32,
        /// Multiplies every rate limit (still enforced), for load tests and benchmarks.
        #[arg(long, default_value_t = 1.0, value_parser = positive)]
        limit_scale: f64,
    },
    /// Prints an officer token from the demo identity provider in DIR, bound to APP's certificate.
    Token {
        /// A demo directory (or a `certs init` directory).
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        app: String,
        /// The officer's id (the token's `sub`).
        #[arg(long)]
        sub: String,
        /// A role; repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// Ward code of the officer's unit.
        #[arg(long)]
        unit: Option<u32>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..=86_400))]
        ttl: u64,
    },
    /// The gateway for production use, from a TOML config.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// The national population DB simulator alone.
    Sim(SimArgs),
    /// Development certificates and keys.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Access policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The audit log: verify it, and (as an auditor) search, export and report.
    Audit {
        #[command(flatten)]
        console: ConsoleArgs,
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Policy administration as a policy admin: list, propose, approve, reject, roll back, diff, simulate.
    Admin {
        #[command(flatten)]
        console: ConsoleArgs,
        #[command(subcommand)]
        command: AdminCommand,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// The active version's files and every version.
    List,
    /// Proposes a change: the files of a policy directory, or single files.
    Propose {
        #[arg(long)]
        reason: String,
        /// A policy directory: its files replace the active ones; active files it lacks are deleted.
        #[arg(long, conflicts_with_all = ["file", "delete"])]
        from_dir: Option<PathBuf>,
        /// POLICY_PATH=LOCAL_FILE, e.g. apps/y-te.toml=./y-te.toml (repeatable).
        #[arg(long)]
        file: Vec<String>,
        /// A policy file to delete, e.g. apps/old.toml (repeatable).
        #[arg(long)]
        delete: Vec<String>,
    },
    /// Approves another admin's proposal, making it active everywhere.
    Approve { version: u64 },
    /// Rejects a proposal.
    Reject {
        version: u64,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Activates a copy of an earlier version.
    Rollback {
        version: u64,
        #[arg(long)]
        reason: String,
    },
    /// What changed, grant by grant.
    Diff {
        version: u64,
        #[arg(long)]
        against: Option<u64>,
    },
    /// What a grant would release from a national-database record (a JSON file).
    Simulate {
        #[arg(long)]
        app: String,
        #[arg(long, default_value = "officer")]
        role: String,
        #[arg(long, default_value = "lookup")]
        operation: String,
        #[arg(long)]
        purpose: String,
        #[arg(long)]
        record: PathBuf,
    },
}

#[derive(clap::Args, Default)]
struct EventFilterArgs {
    /// A citizen's personal ID (pseudonymised by the gateway before the search).
    #[arg(long)]
    personal_id: Option<String>,
    #[arg(long)]
    app: Option<String>,
    #[arg(long)]
    officer: Option<String>,
    #[arg(long)]
    purpose: Option<String>,
    /// granted, denied, error, pending, done
    #[arg(long)]
    decision: Option<String>,
    /// intent, outcome, admin, purge
    #[arg(long)]
    kind: Option<String>,
    /// RFC 3339, inclusive.
    #[arg(long)]
    from: Option<String>,
    /// RFC 3339, exclusive.
    #[arg(long)]
    to: Option<String>,
}

impl EventFilterArgs {
    fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, v) in [
            ("personal_id", &self.personal_id),
            ("app", &self.app),
            ("officer", &self.officer),
            ("purpose", &self.purpose),
            ("decision", &self.decision),
            ("kind", &self.kind),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if let Some(v) = v {
                m.insert(k.to_owned(), serde_json::Value::from(v.as_str()));
            }
        }
        serde_json::Value::Object(m)
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Searches events, newest first.
    Search {
        #[command(flatten)]
        filter: EventFilterArgs,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// The next_cursor of a previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One event.
    Show { audit_id: String },
    /// Every matching event, as JSON Lines or CSV, to stdout.
    Export {
        #[command(flatten)]
        filter: EventFilterArgs,
        #[arg(long)]
        csv: bool,
    },
    /// Who accessed a citizen's data: when, through which app, for which purpose, which fields.
    Accesses {
        #[arg(long)]
        personal_id: String,
        /// Vietnamese labels.
        #[arg(long)]
        vi: bool,
    },
    /// Recomputes every instance's hash chain and checks the signed checkpoints; exit 0 when whole, else 1 and one line per broken event.
    Verify {
        /// PostgreSQL URL of the warehouse.
        #[arg(long)]
        warehouse: String,
        /// JSON file {"INSTANCE": ["BASE64 PUBLIC KEY", ...]} of the checkpoint keys to trust; without it the keys recorded in the database are used.
        #[arg(long)]
        trusted_keys: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Creates a development PKI (apps CA, gateway cert, app certs, national-DB CA and certs, audit and pseudonym keys).
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing PKI.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validates a policy directory: exit 0 when valid, else one `FILE:LINE:COL: message` line per problem.
    Check {
        #[arg(default_value = "policies")]
        path: PathBuf,
        #[arg(long, default_value_t = DEFAULT_PROVINCE)]
        province: u16,
    },
}

#[derive(clap::Args)]
struct SimArgs {
    #[arg(long, default_value = "127.0.0.1:7443")]
    listen: SocketAddr,
    /// A directory made by `popgate certs init`; supplies the three files below.
    #[arg(long)]
    certs_dir: Option<PathBuf>,
    /// Server certificate (default: CERTS_DIR/sim.pem).
    #[arg(long)]
    cert: Option<PathBuf>,
    #[arg(long)]
    key: Option<PathBuf>,
    /// CA whose client certificates are accepted (default: CERTS_DIR/national-ca.pem).
    #[arg(long)]
    client_ca: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = MAX_POPULATION, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_POPULATION)))]
    population: u32,
    #[arg(long, default_value_t = DEFAULT_PROVINCE)]
    province: u16,
    /// Added to every answer.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Uniform extra latency in [0, JITTER).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Fraction of requests answered with HTTP 500.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    error_rate: f64,
    /// Fraction of requests that stall for --stall-ms first.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    stall_rate: f64,
    #[arg(long, default_value_t = 30_000)]
    stall_ms: u64,
}

fn positive(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err("must be a positive number".to_owned()),
    }
}

fn fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err("must be a number from 0 to 1".to_owned()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("POPGATE_LOG")
        .unwrap_or_else(|_| "info,tokio_postgres=warn".into());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Structured logs for collectors: POPGATE_LOG_FORMAT=json.
    if std::env::var("POPGATE_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        logs.json().init();
    } else {
        logs.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("popgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("popgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Demo {
            dir,
            policies,
            province,
            seed,
            population,
            limit_scale,
        } => {
            let opts = popgate::demo::DemoOptions {
                dir,
                policies,
                province,
                seed,
                population,
                limit_scale,
            };
            popgate::demo::run(opts, shutdown_signal()).await?;
        }
        Command::Serve { config } => {
            let config = Config::load(&config)?;
            let gateway = popgate::api::start(&config).await?;
            let served = gateway.run_until(shutdown_signal()).await;
            gateway.stop().await;
            served?;
        }
        Command::Sim(args) => run_sim(args).await?,
        Command::Token {
            dir,
            app,
            sub,
            roles,
            unit,
            ttl,
        } => {
            let certs = if dir.join("certs").is_dir() {
                dir.join("certs")
            } else {
                dir
            };
            let token = pki::mint_demo_token(&PkiLayout::new(certs), &app, &sub, &roles, unit, ttl)?;
            println!("{token}");
        }
        Command::Certs {
            command: CertsCommand::Init { dir, force },
        } => {
            pki::init(&dir, SAMPLE_APPS, force)?;
            println!("development PKI written to {}", dir.display());
        }
        Command::Audit {
            command:
                AuditCommand::Verify {
                    warehouse,
                    trusted_keys,
                },
            ..
        } => {
            let trusted = trusted_keys
                .as_deref()
                .map(popgate::audit::verify::load_trusted_keys)
                .transpose()?;
            let client = popgate::warehouse::connect(&warehouse).await?;
            let report = popgate::audit::verify::verify(&client, trusted.as_ref()).await?;
            for finding in &report.findings {
                println!("{finding}");
            }
            println!("{}", report.summary());
            return Ok(if report.is_whole() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Command::Admin { console, command } => return run_admin(&console, command).await,
        Command::Audit { console, command } => return run_audit(&console, command).await,
        Command::Policy {
            command: PolicyCommand::Check { path, province },
        } => {
            return Ok(match popgate::policy::load_dir(&path, province) {
                Ok(set) => {
                    println!(
                        "{}: valid ({} apps, {} fields, {} purposes)",
                        path.display(),
                        set.apps.len(),
                        set.catalog.fields.len(),
                        set.purposes.len()
                    );
                    ExitCode::SUCCESS
                }
                Err(problems) => {
                    println!("{problems}");
                    ExitCode::FAILURE
                }
            });
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_admin(console: &ConsoleArgs, command: AdminCommand) -> anyhow::Result<ExitCode> {
    use serde_json::json;
    let client = ConsoleClient::new(console, "admin-cli", "policy-admin")?;
    let answer = match command {
        AdminCommand::List => {
            let a = client.get("/admin/v1/policies").await?.ok()?;
            if !console.json {
                let v = a.json();
                println!("active version: {}", cell(&v["active_version"]));
                let rows: Vec<Vec<String>> = v["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        ["version", "state", "author", "approver", "created_at", "reason"]
                            .iter()
                            .map(|k| cell(&r[*k]))
                            .collect()
                    })
                    .collect();
                print_table(
                    &["VERSION", "STATE", "AUTHOR", "APPROVER", "CREATED", "REASON"],
                    &rows,
                );
                return Ok(ExitCode::SUCCESS);
            }
            a
        }
        AdminCommand::Propose {
            reason,
            from_dir,
            file,
            delete,
        } => {
            let (files, delete) = match from_dir {
                Some(dir) => {
                    let active = client.get("/admin/v1/policies").await?.ok()?.json();
                    let empty = serde_json::Map::new();
                    popgate::client::proposal_from_dir(&dir, active["files"].as_object().unwrap_or(&empty))?
                }
                None => {
                    let mut files = serde_json::Map::new();
                    for spec in file {
                        let (path, local) = spec
                            .split_once('=')
                            .context("--file takes POLICY_PATH=LOCAL_FILE")?;
                        let text =
                            std::fs::read_to_string(local).with_context(|| format!("cannot read {local}"))?;
                        files.insert(path.to_owned(), text.into());
                    }
                    (serde_json::Value::Object(files), delete)
                }
            };
            let body = json!({ "reason": reason, "files": files, "delete": delete });
            client
                .post("/admin/v1/policies/proposals", &body, &[])
                .await?
                .ok()?
        }
        AdminCommand::Approve { version } => client
            .post(
                &format!("/admin/v1/policies/proposals/{version}/approve"),
                &json!({}),
                &[],
            )
            .await?
            .ok()?,
        AdminCommand::Reject { version, reason } => {
            let body = json!({ "reason": reason });
            client
                .post(
                    &format!("/admin/v1/policies/proposals/{version}/reject"),
                    &body,
                    &[],
                )
                .await?
                .ok()?
        }
        AdminCommand::Rollback { version, reason } => {
            let body = json!({ "version": version, "reason": reason });
            client
                .post("/admin/v1/policies/rollback", &body, &[])
                .await?
                .ok()?
        }
        AdminCommand::Diff { version, against } => {
            let query = against.map(|a| format!("?against={a}")).unwrap_or_default();
            client
                .get(&format!("/admin/v1/policies/versions/{version}/diff{query}"))
                .await?
                .ok()?
        }
        AdminCommand::Simulate {
            app,
            role,
            operation,
            purpose,
            record,
        } => {
            let record: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&record)
                    .with_context(|| format!("cannot read {}", record.display()))?,
            )
            .context("the record file is not JSON")?;
            let body = json!({ "app": app, "role": role, "operation": operation, "purpose": purpose, "record": record });
            client
                .post("/admin/v1/policies/simulate", &body, &[])
                .await?
                .ok()?
        }
    };
    println!("{}", serde_json::to_string_pretty(&answer.json())?);
    Ok(ExitCode::SUCCESS)
}

async fn run_audit(console: &ConsoleArgs, command: AuditCommand) -> anyhow::Result<ExitCode> {
    use serde_json::json;
    let client = ConsoleClient::new(console, "audit-cli", "auditor")?;
    let event_rows = |events: &serde_json::Value| -> Vec<Vec<String>> {
        events
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                [
                    "ts",
                    "kind",
                    "app_id",
                    "officer_id",
                    "operation",
                    "purpose",
                    "decision",
                    "fields",
                    "audit_id",
                ]
                .iter()
                .map(|k| cell(&e[*k]))
                .collect()
            })
            .collect()
    };
    let headers = [
        "TIME",
        "KIND",
        "APP",
        "OFFICER",
        "OPERATION",
        "PURPOSE",
        "DECISION",
        "FIELDS",
        "AUDIT ID",
    ];
    match command {
        AuditCommand::Search {
            filter,
            limit,
            cursor,
        } => {
            let mut body = filter.to_json();
            body["limit"] = json!(limit);
            if let Some(c) = cursor {
                body["cursor"] = json!(c);
            }
            let v = client
                .post("/audit/v1/events/search", &body, &[])
                .await?
                .ok()?
                .json();
            if console.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_table(&headers, &event_rows(&v["events"]));
                if let Some(next) = v["next_cursor"].as_str() {
                    println!("more: --cursor {next}");
                }
            }
        }
        AuditCommand::Show { audit_id } => {
            let v = client
                .get(&format!("/audit/v1/events/{audit_id}"))
                .await?
                .ok()?
                .json();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        AuditCommand::Export { filter, csv } => {
            let accept = if csv { "text/csv" } else { "application/x-ndjson" };
            let a = client
                .post(
                    "/audit/v1/events/export",
                    &filter.to_json(),
                    &[("accept", accept)],
                )
                .await?
                .ok()?;
            print!("{}", a.text);
        }
        AuditCommand::Accesses { personal_id, vi } => {
            let lang: &[(&str, &str)] = if vi { &[("accept-language", "vi")] } else { &[] };
            let v = client
                .post(
                    "/audit/v1/citizens/accesses",
                    &json!({ "personal_id": personal_id }),
                    lang,
                )
                .await?
                .ok()?
                .json();
            if console.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let rows: Vec<Vec<String>> = v["accesses"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        let fields: Vec<String> = a["fields"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|f| {
                                f["label"]
                                    .as_str()
                                    .or(f["id"].as_str())
                                    .unwrap_or_default()
                                    .to_owned()
                            })
                            .collect();
                        let app = if vi { cell(&a["app_name"]) } else { cell(&a["app"]) };
                        let purpose = if vi {
                            cell(&a["purpose_label"])
                        } else {
                            cell(&a["purpose"])
                        };
                        vec![
                            cell(&a["time"]),
                            app,
                            purpose,
                            cell(&a["case_ref"]),
                            fields.join(", "),
                        ]
                    })
                    .collect();
                let headers = if vi {
                    ["THỜI GIAN", "HỆ THỐNG", "MỤC ĐÍCH", "HỒ SƠ", "TRƯỜNG DỮ LIỆU"]
                } else {
                    ["TIME", "APP", "PURPOSE", "CASE", "FIELDS"]
                };
                print_table(&headers, &rows);
            }
        }
        AuditCommand::Verify { .. } => unreachable_verify()?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `audit verify` is handled before a console client is needed.
fn unreachable_verify() -> anyhow::Result<()> {
    anyhow::bail!("audit verify takes --warehouse URL")
}

async fn run_sim(args: SimArgs) -> anyhow::Result<()> {
    let layout = args.certs_dir.as_ref().map(PkiLayout::new);
    let pick = |given: Option<PathBuf>, from_layout: fn(&PkiLayout) -> PathBuf, flag: &str| {
        given
            .or_else(|| layout.as_ref().map(from_layout))
            .with_context(|| format!("--{flag} or --certs-dir is required"))
    };
    let cert = pick(args.cert, PkiLayout::sim_cert, "cert")?;
    let key = pick(args.key, PkiLayout::sim_key, "key")?;
    let client_ca = pick(args.client_ca, PkiLayout::national_ca_cert, "client-ca")?;
    let tls = tls::mutual_server_config(&MutualServerFiles {
        cert: &cert,
        key: &key,
        client_ca: &client_ca,
        allow_tls12: false,
        alpn: tls::ALPN_H2_H1,
        crls: Vec::new(),
    })?;
    let sim = Arc::new(Simulator::new(&SimSettings {
        seed: args.seed,
        population: args.population,
        province: args.province,
        faults: Faults {
            latency: Duration::from_millis(args.latency_ms),
            jitter: Duration::from_millis(args.jitter_ms),
            error_rate: args.error_rate,
            stall_rate: args.stall_rate,
            stall: Duration::from_millis(args.stall_ms),
        },
    }));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!("popgate sim: listening on https://{}", listener.local_addr()?);
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(sim.run(listener, Arc::new(tls), stop_rx));
    shutdown_signal().await;
    let _ = stop.send(true);
    let _ = task.await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
