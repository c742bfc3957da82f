//! `popgate audit verify`: recomputes every instance's hash chain from the
//! warehouse and checks the signed checkpoints, naming each missing,
//! altered, inserted or reordered event and each forged or misplaced
//! checkpoint. Events after an instance's last valid checkpoint are reported
//! as not yet anchored (they verify as a chain but nothing signed vouches
//! for them yet).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use tokio_postgres::Client;

use super::checkpoint::Checkpoint;
use super::event::{canonical_value, chain_hash, hex, unhex32, GENESIS_HASH};
use crate::warehouse::chain::{self, ChainRow};

const PAGE: i64 = 5_000;

/// Public keys trusted per instance (`"*"` for any instance), base64.
pub type TrustedKeys = HashMap<String, Vec<String>>;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub instance: String,
    pub seq: u64,
    pub what: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "instance {} seq {}: {}", self.instance, self.seq, self.what)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Report {
    pub instances: usize,
    pub events: u64,
    pub checkpoints: u64,
    pub findings: Vec<Finding>,
    /// (instance, first unanchored seq, last seq)
    pub unanchored: Vec<(String, u64, u64)>,
    pub keys_pinned: bool,
}

impl Report {
    pub fn is_whole(&self) -> bool {
        self.findings.is_empty()
    }

    /// The one-line summary.
    pub fn summary(&self) -> String {
        let unanchored: u64 = self.unanchored.iter().map(|(_, a, b)| b - a + 1).sum();
        format!(
            "{}: {} instance(s), {} events, {} checkpoints verified; {} events not yet anchored by a checkpoint; {}",
            if self.is_whole() { "audit log whole" } else { "audit log BROKEN" },
            self.instances,
            self.events,
            self.checkpoints,
            unanchored,
            if self.keys_pinned {
                "checkpoint keys pinned"
            } else {
                "checkpoint keys NOT pinned (taken from the database itself)"
            }
        )
    }
}

/// Reads a trusted-keys file: JSON `{"INSTANCE": ["BASE64KEY", ...]}`.
pub fn load_trusted_keys(path: &std::path::Path) -> anyhow::Result<TrustedKeys> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} must be {{\"instance\": [\"base64 key\", ...]}}",
            path.display()
        )
    })
}

/// Verifies everything in the warehouse.
pub async fn verify(client: &Client, trusted: Option<&TrustedKeys>) -> crate::warehouse::Result<Report> {
    let mut report = Report {
        keys_pinned: trusted.is_some(),
        ..Report::default()
    };
    let instances = chain::instances(client).await?;
    report.instances = instances.len();
    for instance in instances {
        verify_instance(client, &instance, trusted, &mut report).await?;
    }
    Ok(report)
}

async fn verify_instance(
    client: &Client,
    instance: &str,
    trusted: Option<&TrustedKeys>,
    report: &mut Report,
) -> crate::warehouse::Result<()> {
    let finding = |seq: u64, what: String| Finding {
        instance: instance.to_owned(),
        seq,
        what,
    };
    let checkpoints: Vec<Checkpoint> = chain::checkpoints(client, instance).await?;
    let wanted: BTreeMap<u64, ()> = checkpoints.iter().map(|c| (c.seq, ())).collect();
    let mut computed_at: HashMap<u64, String> = HashMap::new();

    let mut expected = 1u64;
    let mut prev_stored: Option<String> = None;
    let mut last_seq = 0u64;
    let mut after = 0u64;
    loop {
        let rows = chain::events_after(client, instance, after, PAGE).await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            let seq = row.seq;
            after = seq;
            report.events += 1;
            let prev_hash = row.prev_hash.clone();
            let hash = row.hash.clone();
            let body = &row.body;
            if seq > expected {
                let what = if seq - expected == 1 {
                    format!("missing: event {expected} is absent")
                } else {
                    format!("missing: events {expected} to {} are absent", seq - 1)
                };
                report.findings.push(finding(expected, what));
            }
            let prev = unhex32(&prev_hash);
            match prev {
                None => report.findings.push(finding(
                    seq,
                    "altered: prev_hash is not a SHA-256 hex digest".into(),
                )),
                Some(prev) => {
                    let recomputed = hex(&chain_hash(&prev, &canonical_value(body)));
                    if recomputed != hash {
                        report.findings.push(finding(
                            seq,
                            "altered: the event's content does not match its hash".into(),
                        ));
                    }
                    if wanted.contains_key(&seq) {
                        computed_at.insert(seq, recomputed);
                    }
                    let links = if seq == 1 {
                        prev == GENESIS_HASH
                    } else if seq == expected {
                        prev_stored.as_deref() == Some(prev_hash.as_str())
                    } else {
                        true // after a gap the missing event is what is reported
                    };
                    if !links {
                        report.findings.push(finding(
                            seq,
                            "inserted or reordered: prev_hash does not match the hash of the event before it"
                                .into(),
                        ));
                    }
                }
            }
            for what in column_mismatches(instance, row) {
                report.findings.push(finding(seq, what));
            }
            prev_stored = Some(hash);
            expected = seq + 1;
            last_seq = seq;
        }
    }

    // Checkpoints: signature, key, position and head.
    let mut anchored = 0u64;
    let mut first_key: Option<&str> = None;
    for cp in &checkpoints {
        report.checkpoints += 1;
        let keys: Vec<&str> = match trusted {
            Some(t) => t
                .get(instance)
                .into_iter()
                .chain(t.get("*"))
                .flatten()
                .map(String::as_str)
                .collect(),
            None => vec![cp.public_key.as_str()],
        };
        if !keys.iter().any(|k| cp.verify_with(k)) {
            let why = if trusted.is_some() && keys.iter().all(|k| *k != cp.public_key) {
                "forged checkpoint: not signed by a trusted key"
            } else {
                "forged checkpoint: the signature does not match its content"
            };
            report.findings.push(finding(cp.seq, why.into()));
            continue;
        }
        if trusted.is_none() {
            match first_key {
                None => first_key = Some(cp.public_key.as_str()),
                Some(k) if k != cp.public_key => {
                    report
                        .findings
                        .push(finding(cp.seq, "suspicious checkpoint: signed by a different key than the instance's first checkpoint".into()));
                    continue;
                }
                Some(_) => {}
            }
        }
        match computed_at.get(&cp.seq) {
            None if cp.seq > last_seq => report.findings.push(finding(
                cp.seq,
                format!("checkpoint beyond the last event ({last_seq}): signed events are missing from the warehouse"),
            )),
            None => report.findings.push(finding(cp.seq, "checkpoint anchors an event that is missing".into())),
            Some(h) if *h != cp.head_hash => report.findings.push(finding(
                cp.seq,
                "checkpoint does not match the chain: the events up to it were altered or the checkpoint replayed".into(),
            )),
            Some(_) => anchored = anchored.max(cp.seq),
        }
    }
    if last_seq > anchored {
        report
            .unanchored
            .push((instance.to_owned(), anchored + 1, last_seq));
    }
    Ok(())
}

/// Every stored column must say what the hashed body says: a column
/// changed on its own (a `ts` moved out of a search window, a case
/// reference rewritten) is named.
fn column_mismatches(instance: &str, row: &ChainRow) -> Vec<String> {
    let body = &row.body;
    let text = |key: &str| body[key].as_str().map(str::to_owned);
    let number = |key: &str| body[key].as_u64().map(|v| v.to_string());
    let list = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let hashed_ts = text("ts").and_then(|t| time::OffsetDateTime::parse(&t, &Rfc3339).ok());
    let hashed_subjects = body.get("subjects").filter(|s| !s.is_null());
    let hashed_keys: Vec<String> = hashed_subjects
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s["key"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let checks: [(&str, Option<String>, Option<String>); 22] = [
        ("instance_id", Some(instance.to_owned()), text("instance_id")),
        ("seq", Some(row.seq.to_string()), number("seq")),
        ("audit_id", row.audit_id.clone(), text("audit_id")),
        (
            "ts",
            Some(row.ts.unix_timestamp_nanos().to_string()),
            hashed_ts.map(|t| t.unix_timestamp_nanos().to_string()),
        ),
        ("request_id", row.request_id.clone(), text("request_id")),
        ("decision", row.decision.clone(), text("decision")),
        ("app_id", row.app_id.clone(), text("app_id")),
        ("officer_id", row.officer_id.clone(), text("officer_id")),
        ("officer_unit", row.officer_unit.clone(), text("officer_unit")),
        ("operation", row.operation.clone(), text("operation")),
        ("purpose", row.purpose.clone(), text("purpose")),
        ("case_ref", row.case_ref.clone(), text("case_ref")),
        ("reason", row.reason.clone(), text("reason")),
        ("citizen_key", row.citizen_key.clone(), text("citizen_key")),
        (
            "policy_version",
            row.policy_version.map(|v| v.to_string()),
            number("policy_version"),
        ),
        (
            "upstream_status",
            row.upstream_status.clone(),
            text("upstream_status"),
        ),
        (
            "upstream_ms",
            row.upstream_ms.map(|v| v.to_string()),
            number("upstream_ms"),
        ),
        (
            "upstream_digest",
            row.upstream_digest.clone(),
            text("upstream_digest"),
        ),
        (
            "released_digest",
            row.released_digest.clone(),
            text("released_digest"),
        ),
        ("legal_basis", row.legal_basis.clone(), text("legal_basis")),
        (
            "fields",
            Some(row.fields.join("\u{1f}")),
            Some(list(&body["fields"]).join("\u{1f}")),
        ),
        (
            "subject_keys",
            Some(row.subject_keys.join("\u{1f}")),
            Some(hashed_keys.join("\u{1f}")),
        ),
    ];
    let mut out: Vec<String> = checks
        .into_iter()
        .filter(|(_, stored, hashed)| stored != hashed)
        .map(|(column, _, _)| format!("altered: column {column} differs from the hashed event"))
        .collect();
    if row.subjects.as_ref() != hashed_subjects {
        out.push("altered: column subjects differs from the hashed event".to_owned());
    }
    out
}
