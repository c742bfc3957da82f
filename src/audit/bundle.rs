//! Evidence bundles: one JSON document that proves a case's (or a
//! citizen's) accesses to a court or an inspector with no database and no
//! network. It holds the matching events as the warehouse stores them
//! (pseudonymised; no more citizen data than the warehouse holds), the
//! chain segments that link each one to a signed checkpoint, those
//! checkpoints, the policy versions in force with their signatures, and the
//! public keys; the whole document is signed by the gateway that made it.
//!
//! [`verify`] recomputes every hash of every segment, checks each segment's
//! links and order, each checkpoint's signature and head, that every
//! matching event is anchored, the policy versions' signatures and the
//! bundle's own signature, and names each event that is altered, missing
//! or out of order.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::checkpoint::{verify_bytes, Checkpoint, Signer, TrustedKeys};
use super::event::{canonical_value, chain_hash, hex, unhex32};
use crate::policy::signature::{signature_matches, StoredVersion, VersionSignature};
use crate::warehouse::audit_queries::{EventFilter, EventKey};
use crate::warehouse::{chain, Warehouse};

pub const FORMAT: &str = "popgate-evidence-v1";
const DOMAIN: &[u8] = b"popgate-evidence-v1\0";
/// A bundle holds at most this many matching events.
pub const MAX_EVENTS: usize = 20_000;

/// One instance's contiguous run of events, from a matching event to the
/// signed checkpoint after it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Segment {
    pub instance_id: String,
    /// Stored bodies with their `prev_hash` and `hash`, in seq order.
    pub events: Vec<Value>,
}

/// A policy version as the bundle carries it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundledVersion {
    pub version: u64,
    pub files: BTreeMap<String, String>,
    pub author: String,
    pub approver: Option<String>,
    pub reason: String,
    pub based_on: Option<u64>,
    pub emergency: bool,
    pub signed_by: Option<String>,
    pub public_key: Option<String>,
    pub signature: Option<String>,
}

/// The bundle's own signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleSignature {
    pub instance_id: String,
    pub public_key: String,
    pub signature: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bundle {
    pub format: String,
    pub created_at: String,
    /// Who asked for it (officer and app), and what.
    pub created_by: Value,
    pub query: Value,
    /// The audit ids of the matching events, newest first.
    pub matched: Vec<String>,
    pub segments: Vec<Segment>,
    pub checkpoints: Vec<Checkpoint>,
    pub policy_versions: Vec<BundledVersion>,
    /// Each instance's checkpoint keys, as the warehouse recorded them.
    pub public_keys: BTreeMap<String, Vec<String>>,
    pub signature: Option<BundleSignature>,
}

fn signed_bytes(b: &Bundle) -> Vec<u8> {
    let mut unsigned = b.clone();
    unsigned.signature = None;
    let value = serde_json::to_value(&unsigned).unwrap_or(Value::Null);
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(&canonical_value(&value));
    m
}

/// What a bundle is made of.
pub struct Request {
    pub filter: EventFilter,
    pub query: Value,
    pub created_by: Value,
    pub created_at: String,
}

/// Collects a bundle from the warehouse and signs it.
pub async fn build(
    warehouse: &Warehouse,
    req: Request,
    signer: &Signer,
    instance_id: &str,
) -> crate::warehouse::Result<Bundle> {
    let mut matched = Vec::new();
    let mut cursor: Option<EventKey> = None;
    loop {
        let page = warehouse
            .search_events(&req.filter, cursor.as_ref(), 1000)
            .await?;
        let full = page.len() == 1000;
        cursor = page.last().map(|e| e.key.clone());
        matched.extend(page);
        if !full || matched.len() >= MAX_EVENTS {
            break;
        }
    }
    matched.truncate(MAX_EVENTS);
    let client = warehouse.client().await?;
    let mut by_instance: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    let mut versions = BTreeSet::new();
    for e in &matched {
        by_instance
            .entry(e.key.instance_id.clone())
            .or_default()
            .insert(e.key.seq.max(0) as u64);
        if let Some(v) = e.body["policy_version"].as_u64() {
            versions.insert(v);
        }
    }
    let mut segments = Vec::new();
    let mut checkpoints = Vec::new();
    let mut public_keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (instance, seqs) in by_instance {
        let cps = chain::checkpoints(&client, &instance).await?;
        // Each matching event runs to the first checkpoint at or after it;
        // runs that meet are merged.
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for s in seqs {
            let end = cps.iter().find(|c| c.seq >= s).map_or(s, |c| c.seq);
            match runs.last_mut() {
                Some(last) if s <= last.1 + 1 => last.1 = last.1.max(end),
                _ => runs.push((s, end)),
            }
        }
        for (from, to) in runs {
            let limit = i64::try_from(to - from + 1).unwrap_or(i64::MAX);
            let rows = chain::events_after(&client, &instance, from - 1, limit).await?;
            let events = rows
                .into_iter()
                .map(|r| {
                    let mut body = r.body;
                    body["prev_hash"] = json!(r.prev_hash);
                    body["hash"] = json!(r.hash);
                    body
                })
                .collect();
            segments.push(Segment {
                instance_id: instance.clone(),
                events,
            });
            checkpoints.extend(cps.iter().filter(|c| c.seq >= from && c.seq <= to).cloned());
        }
        let keys = public_keys.entry(instance.clone()).or_default();
        for c in &cps {
            if !keys.contains(&c.public_key) {
                keys.push(c.public_key.clone());
            }
        }
    }
    let mut policy_versions = Vec::new();
    for v in versions {
        if let Some(s) = warehouse.version(v).await? {
            policy_versions.push(BundledVersion {
                version: s.version,
                files: s.files.into_iter().collect(),
                author: s.author,
                approver: s.approver,
                reason: s.reason,
                based_on: s.based_on,
                emergency: s.emergency,
                signed_by: s.signature.as_ref().map(|g| g.instance.clone()),
                public_key: s.signature.as_ref().map(|g| g.public_key.clone()),
                signature: s.signature.map(|g| g.signature),
            });
        }
    }
    let mut bundle = Bundle {
        format: FORMAT.to_owned(),
        created_at: req.created_at,
        created_by: req.created_by,
        query: req.query,
        matched: matched
            .iter()
            .filter_map(|e| e.body["audit_id"].as_str().map(str::to_owned))
            .collect(),
        segments,
        checkpoints,
        policy_versions,
        public_keys,
        signature: None,
    };
    let message = signed_bytes(&bundle);
    bundle.signature = Some(BundleSignature {
        instance_id: instance_id.to_owned(),
        public_key: signer.public_key(),
        signature: signer.sign_bytes(&message),
    });
    Ok(bundle)
}

/// What [`verify`] found.
#[derive(Debug, Default)]
pub struct Verdict {
    pub events: usize,
    pub matched: usize,
    pub checkpoints: usize,
    pub keys_pinned: bool,
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn is_whole(&self) -> bool {
        self.problems.is_empty()
    }

    pub fn summary(&self) -> String {
        let pinned = if self.keys_pinned {
            "keys pinned"
        } else {
            "keys NOT pinned: taken from the bundle itself (pass --trusted-keys)"
        };
        if self.is_whole() {
            format!(
                "bundle whole: {} matching events, {} chained events, {} signed checkpoints; {pinned}",
                self.matched, self.events, self.checkpoints
            )
        } else {
            format!("bundle NOT whole: {} problems; {pinned}", self.problems.len())
        }
    }
}

fn trusted_for<'a>(trusted: Option<&'a TrustedKeys>, bundle: &'a Bundle, instance: &str) -> Vec<&'a str> {
    match trusted {
        Some(t) => super::checkpoint::pinned_for(t, instance),
        None => bundle
            .public_keys
            .get(instance)
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect(),
    }
}

/// Checks a bundle with nothing but itself (and the pinned keys).
pub fn verify(bundle: &Bundle, trusted: Option<&TrustedKeys>) -> Verdict {
    let mut v = Verdict {
        keys_pinned: trusted.is_some(),
        matched: bundle.matched.len(),
        ..Verdict::default()
    };
    let p = &mut v.problems;
    if bundle.format != FORMAT {
        p.push(format!(
            "the bundle's format is '{}', not {FORMAT}",
            bundle.format
        ));
    }
    match &bundle.signature {
        None => p.push("the bundle is not signed".into()),
        Some(s) => {
            let keys = trusted_for(trusted, bundle, &s.instance_id);
            if !keys.contains(&s.public_key.as_str()) {
                p.push(format!(
                    "the bundle is signed with a key that is not trusted for instance {}",
                    s.instance_id
                ));
            } else if !verify_bytes(&s.public_key, &signed_bytes(bundle), &s.signature) {
                p.push("the bundle's signature does not match its content: something in it was changed after it was made".into());
            }
        }
    }
    // Each event's place: (instance, seq) → (hash, audit id, anchored).
    let mut anchored: BTreeMap<String, bool> = BTreeMap::new();
    for seg in &bundle.segments {
        let inst = &seg.instance_id;
        let mut hashes: BTreeMap<u64, String> = BTreeMap::new();
        let mut prev: Option<(u64, String)> = None;
        let mut ids = Vec::new();
        for body in &seg.events {
            v.events += 1;
            let seq = body["seq"].as_u64().unwrap_or(0);
            let id = body["audit_id"].as_str().unwrap_or("?").to_owned();
            let name = format!("instance {inst} seq {seq} (audit id {id})");
            if body["instance_id"].as_str() != Some(inst.as_str()) {
                p.push(format!("{name}: altered: the event names another instance"));
            }
            let stored = body["hash"].as_str().unwrap_or_default().to_owned();
            let prev_hash = body["prev_hash"].as_str().unwrap_or_default();
            match unhex32(prev_hash) {
                None => p.push(format!("{name}: altered: prev_hash is not a SHA-256 hex digest")),
                Some(ph) => {
                    if hex(&chain_hash(&ph, &canonical_value(body))) != stored {
                        p.push(format!(
                            "{name}: altered: the event's content does not match its hash"
                        ));
                    }
                }
            }
            if let Some((last_seq, last_hash)) = &prev {
                if seq <= *last_seq {
                    p.push(format!("{name}: re-ordered: it comes after seq {last_seq}"));
                } else if seq != last_seq + 1 {
                    p.push(format!(
                        "instance {inst}: missing: events {} to {} are absent between seq {last_seq} and seq {seq}",
                        last_seq + 1,
                        seq - 1
                    ));
                } else if prev_hash != last_hash {
                    p.push(format!(
                        "{name}: altered: prev_hash is not the hash of seq {last_seq}"
                    ));
                }
            }
            hashes.insert(seq, stored.clone());
            prev = Some((seq, stored));
            ids.push((seq, id));
        }
        // The segment must end at a valid signed checkpoint of its last event.
        let keys = trusted_for(trusted, bundle, inst);
        let last = prev.as_ref().map(|(s, _)| *s);
        let mut anchor_at: Option<u64> = None;
        for c in bundle.checkpoints.iter().filter(|c| &c.instance_id == inst) {
            let Some(h) = hashes.get(&c.seq) else { continue };
            v.checkpoints += 1;
            if !keys.iter().any(|k| c.verify_with(k)) {
                p.push(format!(
                    "instance {inst}: the checkpoint at seq {} is not signed by a trusted key",
                    c.seq
                ));
            } else if &c.head_hash != h {
                p.push(format!(
                    "instance {inst}: the checkpoint at seq {} does not sign the event held at that place",
                    c.seq
                ));
            } else {
                anchor_at = Some(anchor_at.map_or(c.seq, |a: u64| a.max(c.seq)));
            }
        }
        if anchor_at.is_none() || anchor_at != last {
            p.push(format!(
                "instance {inst}: the segment ending at seq {} does not end at a signed checkpoint",
                last.unwrap_or(0)
            ));
        }
        for (seq, id) in ids {
            let ok = anchor_at.is_some_and(|a| seq <= a);
            let e = anchored.entry(id).or_insert(false);
            *e |= ok;
        }
    }
    for id in &bundle.matched {
        match anchored.get(id) {
            None => p.push(format!(
                "audit id {id}: missing: a matching event is not in the bundle"
            )),
            Some(false) => p.push(format!("audit id {id}: not anchored by a signed checkpoint")),
            Some(true) => {}
        }
    }
    for pv in &bundle.policy_versions {
        let stored = StoredVersion {
            version: pv.version,
            files: pv.files.clone().into_iter().collect(),
            author: pv.author.clone(),
            approver: pv.approver.clone(),
            reason: pv.reason.clone(),
            based_on: pv.based_on,
            emergency: pv.emergency,
            signature: match (&pv.signed_by, &pv.public_key, &pv.signature) {
                (Some(i), Some(k), Some(s)) => Some(VersionSignature {
                    instance: i.clone(),
                    public_key: k.clone(),
                    signature: s.clone(),
                }),
                _ => None,
            },
        };
        let signer_trusted = match (&pv.signed_by, &pv.public_key) {
            (Some(instance), Some(key)) => trusted_for(trusted, bundle, instance).contains(&key.as_str()),
            _ => false,
        };
        if stored.signature.is_none() {
            p.push(format!("policy version {}: not signed", pv.version));
        } else if !signer_trusted {
            p.push(format!(
                "policy version {}: signed with a key that is not trusted for instance {}",
                pv.version,
                pv.signed_by.as_deref().unwrap_or("?")
            ));
        } else if !signature_matches(&stored) {
            p.push(format!(
                "policy version {}: its signature does not match its files",
                pv.version
            ));
        }
    }
    v
}
