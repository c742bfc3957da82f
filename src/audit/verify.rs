//! `popgate audit verify`: recomputes every instance's hash chain from the
//! warehouse and checks the signed checkpoints, naming each missing,
//! altered, inserted or reordered event and each forged or misplaced
//! checkpoint. It trusts the database for nothing: every stored column is
//! checked against the hashed event, and the chains are held against
//! anchors the database cannot rewrite — signed checkpoints kept outside it
//! (the gateway's journal directory, a copy an auditor keeps) — and against
//! the shipper's delivery watermark. A missing tail, a missing instance, an
//! emptied log or a fork is "not whole"; so are events after an instance's
//! last checkpoint, reported as not yet anchored.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use tokio_postgres::Client;

use super::checkpoint::Checkpoint;
use super::event::{canonical_value, chain_hash, hex, unhex32, GENESIS_HASH};
use crate::warehouse::chain::{self, ChainRow};

const PAGE: i64 = 5_000;

pub use super::checkpoint::{load_trusted_keys, TrustedKeys};

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
    /// Anchor checkpoints the chains were held against.
    pub anchors: usize,
}

impl Report {
    /// Nothing wrong and every event anchored.
    pub fn is_whole(&self) -> bool {
        self.findings.is_empty() && self.unanchored.is_empty()
    }

    /// Events after the last checkpoint of their instance.
    pub fn unanchored_events(&self) -> u64 {
        self.unanchored.iter().map(|(_, a, b)| b - a + 1).sum()
    }

    /// The one-line summary.
    pub fn summary(&self) -> String {
        let verdict = if !self.findings.is_empty() {
            "audit log BROKEN".to_owned()
        } else if !self.unanchored.is_empty() {
            format!("audit log not yet anchored ({} events)", self.unanchored_events())
        } else {
            "audit log whole".to_owned()
        };
        format!(
            "{verdict}: {} instance(s), {} events, {} checkpoints verified; {} events not yet anchored by a checkpoint; {}; {}",
            self.instances,
            self.events,
            self.checkpoints,
            self.unanchored_events(),
            if self.keys_pinned {
                "checkpoint keys pinned"
            } else {
                "checkpoint keys NOT pinned (taken from the database itself)"
            },
            match self.anchors {
                0 => "no anchor given: a deleted tail would not show".to_owned(),
                n => format!("{n} anchor checkpoint(s) held against the warehouse"),
            }
        )
    }

    /// Each event after its instance's last checkpoint, as report lines.
    pub fn unanchored_lines(&self) -> Vec<String> {
        self.unanchored
            .iter()
            .map(|(i, a, b)| {
                format!(
                    "instance {i} seq {a}..={b}: not yet anchored ({} events)",
                    b - a + 1
                )
            })
            .collect()
    }
}

/// Reads an anchor file: the JSON Lines of checkpoints a gateway keeps in
/// its journal directory (`checkpoints.jsonl`), or the document of
/// `GET /audit/v1/checkpoints/latest` (`{"checkpoints": [...]}`).
pub fn load_anchor(path: &std::path::Path) -> anyhow::Result<Vec<Checkpoint>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    #[derive(serde::Deserialize)]
    struct Latest {
        checkpoints: Vec<Checkpoint>,
    }
    if let Ok(latest) = serde_json::from_str::<Latest>(&text) {
        return Ok(latest.checkpoints);
    }
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, line)| {
            serde_json::from_str::<Checkpoint>(line)
                .with_context(|| format!("{}:{}: not a signed checkpoint", path.display(), n + 1))
        })
        .collect()
}

/// Verifies everything in the warehouse (no anchor).
pub async fn verify(client: &Client, trusted: Option<&TrustedKeys>) -> crate::warehouse::Result<Report> {
    verify_anchored(client, trusted, &[]).await
}

/// The keys a checkpoint of `instance` may be signed with: the pinned ones,
/// or (unpinned) its own.
fn keys_for<'a>(trusted: Option<&'a TrustedKeys>, instance: &str, own: &'a str) -> Vec<&'a str> {
    match trusted {
        Some(t) => super::checkpoint::pinned_for(t, instance),
        None => vec![own],
    }
}

/// Verifies everything in the warehouse, and holds each instance's chain
/// against `anchors` (signed checkpoints kept outside the database) and
/// the shipper's delivery watermark.
pub async fn verify_anchored(
    client: &Client,
    trusted: Option<&TrustedKeys>,
    anchors: &[Checkpoint],
) -> crate::warehouse::Result<Report> {
    let mut report = Report {
        keys_pinned: trusted.is_some(),
        anchors: anchors.len(),
        ..Report::default()
    };
    let mut instances = chain::instances(client).await?;
    let watermarks = chain::watermarks(client).await?;
    // An instance the anchors or the shipper know of must be there too.
    for name in anchors
        .iter()
        .map(|a| a.instance_id.clone())
        .chain(watermarks.iter().filter(|(_, d)| *d > 0).map(|(i, _)| i.clone()))
    {
        if !instances.contains(&name) {
            instances.push(name);
        }
    }
    instances.sort();
    if instances.is_empty() {
        report.findings.push(Finding {
            instance: "*".to_owned(),
            seq: 0,
            what: "the warehouse holds no audit event and no checkpoint at all: an emptied log, unless nothing was ever served"
                .to_owned(),
        });
    }
    report.instances = instances.len();
    check_policy_versions(client, trusted, &mut report).await?;
    for (instance, seq, detected) in chain::forks(client).await? {
        let when = detected.format(&Rfc3339).unwrap_or_default();
        report.findings.push(Finding {
            instance,
            seq,
            what: format!(
                "chain fork: the warehouse holds another event here than the instance's journal (found by its shipper at {when}); its shipping stopped"
            ),
        });
    }
    for instance in instances {
        let anchored: Vec<&Checkpoint> = anchors.iter().filter(|a| a.instance_id == instance).collect();
        let delivered = watermarks
            .iter()
            .find(|(i, _)| *i == instance)
            .map_or(0, |(_, d)| *d);
        verify_instance(client, &instance, trusted, &anchored, delivered, &mut report).await?;
    }
    Ok(report)
}

/// Every policy version that was applied must carry a signature that
/// matches it, by a pinned key of the instance named when keys are pinned.
async fn check_policy_versions(
    client: &Client,
    trusted: Option<&TrustedKeys>,
    report: &mut Report,
) -> crate::warehouse::Result<()> {
    for v in crate::warehouse::policies::applied_versions(client).await? {
        let what = match &v.signature {
            None => {
                Some("policy version was applied but is not signed (written into the database, not approved)")
            }
            Some(_) if !crate::policy::signature::signature_matches(&v) => {
                Some("policy version's signature does not match its content")
            }
            Some(sig)
                if trusted.is_some()
                    && !keys_for(trusted, &sig.instance, "").contains(&sig.public_key.as_str()) =>
            {
                Some("policy version is signed by a key that is not pinned for its instance")
            }
            Some(_) => None,
        };
        if let Some(what) = what {
            report.findings.push(Finding {
                instance: "policy".to_owned(),
                seq: v.version,
                what: what.to_owned(),
            });
        }
    }
    Ok(())
}

async fn verify_instance(
    client: &Client,
    instance: &str,
    trusted: Option<&TrustedKeys>,
    anchors: &[&Checkpoint],
    delivered: u64,
    report: &mut Report,
) -> crate::warehouse::Result<()> {
    let finding = |seq: u64, what: String| Finding {
        instance: instance.to_owned(),
        seq,
        what,
    };
    let checkpoints: Vec<Checkpoint> = chain::checkpoints(client, instance).await?;
    let wanted: BTreeMap<u64, ()> = checkpoints
        .iter()
        .map(|c| c.seq)
        .chain(anchors.iter().map(|a| a.seq))
        .map(|s| (s, ()))
        .collect();
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
            for what in column_mismatches(row) {
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
        let keys = keys_for(trusted, instance, &cp.public_key);
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
    // The anchors kept outside the database: each must be signed by a key
    // of this instance and match the chain the warehouse holds.
    for anchor in anchors {
        let keys = keys_for(trusted, instance, &anchor.public_key);
        let known_key = first_key.is_none_or(|k| k == anchor.public_key) || trusted.is_some();
        if !known_key || !keys.iter().any(|k| anchor.verify_with(k)) {
            report.findings.push(finding(
                anchor.seq,
                "forged anchor: the anchor checkpoint is not signed by this instance's key".into(),
            ));
            continue;
        }
        match computed_at.get(&anchor.seq) {
            None if anchor.seq > last_seq => report.findings.push(finding(
                last_seq + 1,
                format!(
                    "missing tail: events {}..={} are anchored outside the database but absent from the warehouse",
                    last_seq + 1,
                    anchor.seq
                ),
            )),
            None => report.findings.push(finding(
                anchor.seq,
                "missing: the anchored event is absent from the warehouse".into(),
            )),
            Some(h) if *h != anchor.head_hash => report.findings.push(finding(
                anchor.seq,
                "fork: the warehouse's chain differs here from the anchored one (another writer, or a rewrite)".into(),
            )),
            Some(_) => anchored = anchored.max(anchor.seq),
        }
    }
    if delivered > last_seq {
        report.findings.push(finding(
            last_seq + 1,
            format!(
                "missing tail: the shipper delivered events up to {delivered}, but the warehouse holds them only up to {last_seq}"
            ),
        ));
    }
    if last_seq > anchored {
        report
            .unanchored
            .push((instance.to_owned(), anchored + 1, last_seq));
    }
    Ok(())
}

/// Every stored column must say what the hashed event says: a column
/// changed on its own (a `ts` moved out of a search window, a case
/// reference rewritten) is named. A row without a body of its own is
/// hashed as its columns give it, so only `subject_keys`, which repeats
/// the subjects' pseudonyms for the search, can disagree.
fn column_mismatches(row: &ChainRow) -> Vec<String> {
    let differs = |column: &str| format!("altered: column {column} differs from the hashed event");
    let mut out = Vec::new();
    if let (Value::Object(hashed), Some(Value::Object(columns))) = (&row.body, &row.columns) {
        let names: std::collections::BTreeSet<&String> = hashed
            .keys()
            .chain(columns.keys())
            .filter(|k| !matches!(k.as_str(), "prev_hash" | "hash"))
            .collect();
        let instant = |v: &Value| {
            v.as_str()
                .and_then(|t| time::OffsetDateTime::parse(t, &Rfc3339).ok())
        };
        for name in names {
            let (h, c) = (
                hashed.get(name).unwrap_or(&Value::Null),
                columns.get(name).unwrap_or(&Value::Null),
            );
            let same = if name == "ts" {
                instant(h) == instant(c)
            } else {
                h == c
            };
            if !same {
                out.push(differs(name));
            }
        }
    }
    let hashed_keys: Vec<&str> = row.body["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["key"].as_str())
        .collect();
    if row.subject_keys != hashed_keys {
        out.push(differs("subject_keys"));
    }
    out
}
