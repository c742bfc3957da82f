//! The people's side of the consoles: the `popgate admin` and `popgate
//! audit` commands, which call the gateway's `/admin/v1` and `/audit/v1`
//! surfaces (through [`crate::client`]) and print tables for people or the
//! gateway's JSON with `--json`; and `popgate audit verify`, which reads the
//! warehouse directly.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;

use crate::client::{cell, print_table, ConsoleArgs, ConsoleClient};

#[derive(Subcommand)]
pub enum AdminCommand {
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
    /// Proposes a copy of an earlier version that was once active (a second admin approves it).
    Rollback {
        version: u64,
        #[arg(long)]
        reason: String,
    },
    /// A version's full text, state, author, approver and signer.
    Show { version: u64 },
    /// Emergency freeze by one admin: suspends an app (or its grants for one purpose) at once, until confirmed or expired.
    Freeze {
        #[arg(long)]
        app: String,
        #[arg(long)]
        purpose: Option<String>,
        #[arg(long)]
        reason: String,
    },
    /// A second admin confirms an emergency freeze.
    Confirm { version: u64 },
    /// The audited requests of a window judged by a version (a proposal): per app and purpose, the fields gained or lost and the requests denied.
    Replay {
        version: u64,
        /// RFC 3339, inclusive.
        #[arg(long)]
        from: String,
        /// RFC 3339, exclusive.
        #[arg(long)]
        to: String,
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
        /// The version judged by (a proposal included); default the active one.
        #[arg(long)]
        version: Option<u64>,
    },
}

#[derive(clap::Args, Default)]
pub struct EventFilterArgs {
    /// A citizen's personal ID (pseudonymised by the gateway before the search).
    #[arg(long)]
    pub personal_id: Option<String>,
    #[arg(long)]
    pub app: Option<String>,
    #[arg(long)]
    pub officer: Option<String>,
    #[arg(long)]
    pub purpose: Option<String>,
    /// The case reference (dossier number) the accesses served.
    #[arg(long)]
    pub case_ref: Option<String>,
    /// granted, denied, error, abandoned, pending, done
    #[arg(long)]
    pub decision: Option<String>,
    /// intent, outcome, admin, purge
    #[arg(long)]
    pub kind: Option<String>,
    /// RFC 3339, inclusive.
    #[arg(long)]
    pub from: Option<String>,
    /// RFC 3339, exclusive.
    #[arg(long)]
    pub to: Option<String>,
}

impl EventFilterArgs {
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, v) in [
            ("personal_id", &self.personal_id),
            ("app", &self.app),
            ("officer", &self.officer),
            ("purpose", &self.purpose),
            ("case_ref", &self.case_ref),
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
pub enum AuditCommand {
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
    /// Who accessed a citizen's data: when (Vietnam time), through which app, for which purpose, on which legal basis, which fields; never the officer.
    Accesses {
        #[arg(long)]
        personal_id: String,
        /// Vietnamese labels.
        #[arg(long)]
        vi: bool,
        /// RFC 3339, inclusive.
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339, exclusive.
        #[arg(long)]
        to: Option<String>,
        /// Writes the printable letter (HTML, Vietnamese, A4) to this file instead of printing a table.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Alerts of the rules, newest first.
    Alerts {
        /// distinct-citizens, repeated-denials, off-hours, watch-list, case-spread, chain-fork, policy-signature, verify-failure
        #[arg(long)]
        rule: Option<String>,
        /// open or resolved
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Acknowledges and closes an alert with a note.
    Resolve {
        alert_id: String,
        #[arg(long)]
        note: String,
    },
    /// Disclosure holds: what citizen reports leave out, until when, and why.
    Holds,
    /// Leaves a case's (or an app's purpose's) accesses out of citizen reports until a date.
    Hold {
        #[arg(long = "case")]
        case_ref: Option<String>,
        #[arg(long)]
        app: Option<String>,
        #[arg(long)]
        purpose: Option<String>,
        /// YYYY-MM-DD: the first day the accesses are reported again.
        #[arg(long)]
        until: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        legal_basis: String,
    },
    /// A second auditor puts a long hold in force for its whole length.
    ApproveHold { hold_id: String },
    /// Ends a hold at once.
    LiftHold {
        hold_id: String,
        #[arg(long)]
        reason: String,
    },
    /// Puts a citizen on the watch list: every later access raises an alert.
    Watch {
        #[arg(long)]
        personal_id: String,
        #[arg(long)]
        reason: String,
    },
    /// An evidence bundle of one case's or one citizen's events that verifies offline (`verify-bundle`).
    Bundle {
        /// The case reference (dossier number).
        #[arg(
            long = "case",
            conflicts_with = "personal_id",
            required_unless_present = "personal_id"
        )]
        case_ref: Option<String>,
        #[arg(long)]
        personal_id: Option<String>,
        /// RFC 3339, inclusive.
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339, exclusive.
        #[arg(long)]
        to: Option<String>,
        /// Where to write the bundle (JSON, readable by its owner only).
        #[arg(long)]
        out: PathBuf,
    },
    /// Verifies an evidence bundle with no database and no network; exit 0 when whole, else 1 and one line per problem.
    VerifyBundle {
        file: PathBuf,
        /// JSON file {"INSTANCE": ["BASE64 PUBLIC KEY", ...]} of the keys to trust; without it the keys the bundle carries are used.
        #[arg(long)]
        trusted_keys: Option<PathBuf>,
    },
    /// The local audit journal of a stopped gateway: inspect it, or salvage a damaged one.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Recomputes every instance's hash chain and checks the signed checkpoints; exit 0 when whole, else 1 and one line per broken event.
    Verify {
        /// PostgreSQL URL of the warehouse.
        #[arg(long)]
        warehouse: String,
        /// JSON file {"INSTANCE": ["BASE64 PUBLIC KEY", ...]} of the checkpoint keys to trust; without it the keys recorded in the database are used.
        #[arg(long)]
        trusted_keys: Option<PathBuf>,
        /// CA certificate (PEM) of the warehouse's server certificate: connect with TLS (verify-full).
        #[arg(long)]
        warehouse_ca: Option<PathBuf>,
        /// Signed checkpoints kept outside the database (a gateway's journal/checkpoints.jsonl, or the JSON of GET /audit/v1/checkpoints/latest); repeat for several.
        #[arg(long)]
        anchor: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum JournalCommand {
    /// Reads the journal and reports its chain and the first damaged frame; exit 0 when it opens, 1 when damaged.
    Inspect {
        /// The journal directory (or a demo directory / data_dir holding journal/).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Moves the damaged frame and everything after it into DIR/quarantine-SECONDS/ (nothing is deleted), so that the gateway starts again.
    Salvage {
        #[arg(long)]
        dir: PathBuf,
    },
}

fn run_journal(command: JournalCommand) -> anyhow::Result<ExitCode> {
    use crate::audit::salvage;
    match command {
        JournalCommand::Inspect { dir } => {
            let dir = salvage::journal_dir(&dir);
            let found = salvage::inspect(&dir)?;
            println!(
                "{}: {} segment(s), events {}..={} ({} read), last checkpoint at {}",
                dir.display(),
                found.segments,
                found.first_seq,
                found.head_seq,
                found.events,
                found.last_checkpoint_seq
            );
            if let Some((path, at, len)) = &found.torn_tail {
                println!(
                    "an interrupted write at the end of {} (bytes {at}..{len}) will be cut when the gateway opens the journal",
                    path.display()
                );
            }
            match found.damage {
                None => println!("the journal opens"),
                Some(damage) => {
                    println!("DAMAGED: {damage}");
                    println!(
                        "the gateway will not start on it; `{}` moves it aside",
                        crate::audit::journal::salvage_command(&dir)
                    );
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        JournalCommand::Salvage { dir } => {
            let dir = salvage::journal_dir(&dir);
            match salvage::salvage(&dir)? {
                None => println!("{}: nothing is damaged; nothing moved", dir.display()),
                Some(s) => {
                    println!("damaged: {}", s.damage);
                    println!(
                        "moved {} byte(s) of that segment and {} later segment(s) to {}",
                        s.bytes,
                        s.later_segments,
                        s.quarantine.display()
                    );
                    println!(
                        "the journal now ends at event {}; the next event continues the chain there. If the warehouse \
                         already holds events after {} for this instance, the shipper will refuse to deliver: start \
                         the instance with a new instance_id, and keep the quarantine as evidence",
                        s.head_seq, s.head_seq
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run_admin(console: &ConsoleArgs, command: AdminCommand) -> anyhow::Result<ExitCode> {
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
                    crate::client::proposal_from_dir(&dir, active["files"].as_object().unwrap_or(&empty))?
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
        AdminCommand::Show { version } => {
            let a = client
                .get(&format!("/admin/v1/policies/versions/{version}"))
                .await?
                .ok()?;
            if !console.json {
                let v = a.json();
                for key in [
                    "version",
                    "state",
                    "author",
                    "approver",
                    "reason",
                    "based_on",
                    "copy_of",
                    "emergency",
                    "signed_by",
                    "signature_valid",
                ] {
                    println!("{key:>16}: {}", cell(&v[key]));
                }
                for (path, text) in v["files"].as_object().into_iter().flatten() {
                    println!("\n# {path}\n{}", text.as_str().unwrap_or_default());
                }
                return Ok(ExitCode::SUCCESS);
            }
            a
        }
        AdminCommand::Freeze { app, purpose, reason } => {
            let body = json!({ "app": app, "purpose": purpose, "reason": reason });
            client.post("/admin/v1/policies/freeze", &body, &[]).await?.ok()?
        }
        AdminCommand::Confirm { version } => client
            .post(
                &format!("/admin/v1/policies/versions/{version}/confirm"),
                &json!({}),
                &[],
            )
            .await?
            .ok()?,
        AdminCommand::Replay { version, from, to } => {
            let body = json!({ "version": version, "replay": { "from": from, "to": to } });
            let a = client
                .post("/admin/v1/policies/simulate", &body, &[])
                .await?
                .ok()?;
            if !console.json {
                let v = a.json();
                println!(
                    "{} audited requests judged by version {}",
                    cell(&v["replayed"]),
                    cell(&v["version"])
                );
                let counts = |m: &serde_json::Value| {
                    m.as_object()
                        .map(|o| {
                            o.iter()
                                .map(|(f, n)| format!("{f} ({n})"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default()
                };
                let rows: Vec<Vec<String>> = v["by_app_and_purpose"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| {
                        vec![
                            cell(&r["app"]),
                            cell(&r["purpose"]),
                            cell(&r["requests"]),
                            cell(&r["would_be_denied"]),
                            counts(&r["would_lose"]),
                            counts(&r["would_gain"]),
                        ]
                    })
                    .collect();
                print_table(
                    &["APP", "PURPOSE", "REQUESTS", "DENIED", "WOULD LOSE", "WOULD GAIN"],
                    &rows,
                );
                return Ok(ExitCode::SUCCESS);
            }
            a
        }
        AdminCommand::Simulate {
            app,
            role,
            operation,
            purpose,
            record,
            version,
        } => {
            let record: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&record)
                    .with_context(|| format!("cannot read {}", record.display()))?,
            )
            .context("the record file is not JSON")?;
            let body = json!({ "version": version, "app": app, "role": role, "operation": operation, "purpose": purpose, "record": record });
            client
                .post("/admin/v1/policies/simulate", &body, &[])
                .await?
                .ok()?
        }
    };
    println!("{}", serde_json::to_string_pretty(&answer.json())?);
    Ok(ExitCode::SUCCESS)
}

pub async fn run_audit(console: &ConsoleArgs, command: AuditCommand) -> anyhow::Result<ExitCode> {
    use serde_json::json;
    let connect = || ConsoleClient::new(console, "audit-cli", "auditor");
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
                    "case_ref",
                    "decision",
                    "reason",
                    "legal_basis",
                    "fields",
                    "audit_id",
                ]
                .iter()
                .map(|k| cell(&e[*k]))
                .chain(std::iter::once(crate::audit::event::roles_of(e).join(",")))
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
        "CASE",
        "DECISION",
        "REASON",
        "LEGAL BASIS",
        "FIELDS",
        "AUDIT ID",
        "ROLES",
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
            let v = connect()?
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
            let v = connect()?
                .get(&format!("/audit/v1/events/{audit_id}"))
                .await?
                .ok()?
                .json();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        AuditCommand::Export { filter, csv } => {
            let accept = if csv { "text/csv" } else { "application/x-ndjson" };
            let a = connect()?
                .post(
                    "/audit/v1/events/export",
                    &filter.to_json(),
                    &[("accept", accept)],
                )
                .await?
                .ok()?;
            print!("{}", a.text);
        }
        AuditCommand::Accesses {
            personal_id,
            vi,
            from,
            to,
            out,
        } => {
            let mut body = json!({ "personal_id": personal_id, "from": from, "to": to });
            if let Some(out) = out {
                let a = connect()?
                    .post("/audit/v1/citizens/accesses", &body, &[("accept", "text/html")])
                    .await?
                    .ok()?;
                crate::tls::pki::write_file(&out, a.text.as_bytes(), 0o600)?;
                eprintln!("wrote the letter to {}", out.display());
                return Ok(ExitCode::SUCCESS);
            }
            let client = connect()?;
            let mut list = Vec::new();
            loop {
                let page = client
                    .post("/audit/v1/citizens/accesses", &body, &[])
                    .await?
                    .ok()?
                    .json();
                list.extend(page["accesses"].as_array().cloned().unwrap_or_default());
                match page["next_cursor"].as_str() {
                    Some(c) => body["cursor"] = json!(c),
                    None => break,
                }
            }
            let v = json!({ "accesses": list, "count": list.len() });
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
                                f[if vi { "label" } else { "label_en" }]
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
                            cell(&a["purpose_label_en"])
                        };
                        vec![
                            cell(&a["time"]),
                            app,
                            purpose,
                            cell(&a["legal_basis"]),
                            cell(&a["case_ref"]),
                            fields.join(", "),
                        ]
                    })
                    .collect();
                let headers = if vi {
                    [
                        "THỜI GIAN",
                        "HỆ THỐNG",
                        "MỤC ĐÍCH",
                        "CĂN CỨ PHÁP LÝ",
                        "HỒ SƠ",
                        "TRƯỜNG DỮ LIỆU",
                    ]
                } else {
                    ["TIME", "APP", "PURPOSE", "LEGAL BASIS", "CASE", "FIELDS"]
                };
                print_table(&headers, &rows);
            }
        }
        AuditCommand::Alerts { rule, state, limit } => {
            let mut path = format!("/audit/v1/alerts?limit={limit}");
            for (k, v) in [("rule", &rule), ("state", &state)] {
                if let Some(v) = v {
                    path.push_str(&format!("&{k}={v}"));
                }
            }
            let v = connect()?.get(&path).await?.ok()?.json();
            if console.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let rows: Vec<Vec<String>> = v["alerts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| {
                        let evidence = a["audit_ids"].as_array().map_or(0, Vec::len).to_string();
                        ["raised_at", "rule", "state", "officer_id", "app_id", "summary"]
                            .iter()
                            .map(|k| cell(&a[*k]))
                            .chain([evidence, cell(&a["id"])])
                            .collect()
                    })
                    .collect();
                print_table(
                    &[
                        "RAISED", "RULE", "STATE", "OFFICER", "APP", "SUMMARY", "EVENTS", "ID",
                    ],
                    &rows,
                );
            }
        }
        AuditCommand::Resolve { alert_id, note } => {
            let path = format!("/audit/v1/alerts/{alert_id}/resolve");
            let v = connect()?
                .post(&path, &json!({ "note": note }), &[])
                .await?
                .ok()?
                .json();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        AuditCommand::Hold {
            case_ref,
            app,
            purpose,
            until,
            reason,
            legal_basis,
        } => {
            let body = json!({
                "case_ref": case_ref, "app": app, "purpose": purpose,
                "until": until, "reason": reason, "legal_basis": legal_basis,
            });
            let v = connect()?.post("/audit/v1/holds", &body, &[]).await?.ok()?.json();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        AuditCommand::ApproveHold { hold_id } => {
            let path = format!("/audit/v1/holds/{hold_id}/approve");
            let v = connect()?.post(&path, &json!({}), &[]).await?.ok()?.json();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        AuditCommand::LiftHold { hold_id, reason } => {
            let path = format!("/audit/v1/holds/{hold_id}/lift");
            let v = connect()?
                .post(&path, &json!({ "reason": reason }), &[])
                .await?
                .ok()?
                .json();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        AuditCommand::Watch { personal_id, reason } => {
            let body = json!({ "personal_id": personal_id, "reason": reason });
            let v = connect()?
                .post("/audit/v1/watchlist", &body, &[])
                .await?
                .ok()?
                .json();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        AuditCommand::Holds => {
            let v = connect()?.get("/audit/v1/holds").await?.ok()?.json();
            if console.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let rows: Vec<Vec<String>> = v["holds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|h| {
                        [
                            "case_ref",
                            "app",
                            "purpose",
                            "in_force_until",
                            "until",
                            "in_force",
                            "created_by",
                            "approved_by",
                            "reason",
                            "id",
                        ]
                        .iter()
                        .map(|k| cell(&h[*k]))
                        .collect()
                    })
                    .collect();
                print_table(
                    &[
                        "CASE",
                        "APP",
                        "PURPOSE",
                        "IN FORCE UNTIL",
                        "ASKED UNTIL",
                        "IN FORCE",
                        "BY",
                        "APPROVED BY",
                        "REASON",
                        "ID",
                    ],
                    &rows,
                );
            }
        }
        AuditCommand::Bundle {
            case_ref,
            personal_id,
            from,
            to,
            out,
        } => {
            let body = json!({ "case_ref": case_ref, "personal_id": personal_id, "from": from, "to": to });
            let a = connect()?.post("/audit/v1/evidence", &body, &[]).await?.ok()?;
            crate::tls::pki::write_file(&out, a.text.as_bytes(), 0o600)?;
            let v = a.json();
            eprintln!(
                "wrote {} matching events to {}",
                v["matched"].as_array().map_or(0, Vec::len),
                out.display()
            );
        }
        AuditCommand::VerifyBundle { file, trusted_keys } => {
            let trusted = trusted_keys
                .as_deref()
                .map(crate::audit::verify::load_trusted_keys)
                .transpose()?;
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let bundle: crate::audit::bundle::Bundle = serde_json::from_str(&text)
                .with_context(|| format!("{} is not an evidence bundle", file.display()))?;
            let verdict = crate::audit::bundle::verify(&bundle, trusted.as_ref());
            for problem in &verdict.problems {
                println!("{problem}");
            }
            println!("{}", verdict.summary());
            if !verdict.is_whole() {
                return Ok(ExitCode::FAILURE);
            }
        }
        AuditCommand::Journal { command } => return run_journal(command),
        AuditCommand::Verify {
            warehouse,
            trusted_keys,
            warehouse_ca,
            anchor,
        } => {
            let trusted = trusted_keys
                .as_deref()
                .map(crate::audit::verify::load_trusted_keys)
                .transpose()?;
            let mut anchors = Vec::new();
            for file in &anchor {
                anchors.extend(crate::audit::verify::load_anchor(file)?);
            }
            let tls = match &warehouse_ca {
                Some(ca) => crate::warehouse::WarehouseTls::verify_full(ca)?,
                None => crate::warehouse::WarehouseTls::Disable,
            };
            let client = crate::warehouse::connect_with(&warehouse, &tls).await?;
            let report = crate::audit::verify::verify_anchored(&client, trusted.as_ref(), &anchors).await?;
            for finding in &report.findings {
                println!("{finding}");
            }
            for line in report.unanchored_lines() {
                println!("{line}");
            }
            println!("{}", report.summary());
            if !report.is_whole() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
