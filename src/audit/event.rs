//! The audit event, its canonical bytes and the hash chain.
//!
//! Canonical bytes of an event: its JSON with the `prev_hash` and `hash`
//! members left out, object keys in lexicographic order, no insignificant
//! whitespace, UTF-8 (what `serde_json` writes for a `Value`). The same bytes
//! come back from the warehouse's copy of the body, so a verifier can recompute
//! every hash from the database alone. Integers only: no floats.
//!
//! `hash = SHA-256("popgate-audit-v1" ‖ 0x00 ‖ prev_hash ‖ canonical)`, with
//! the 32 raw bytes of the previous event's hash (zeros for the first).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const HASH_DOMAIN: &[u8] = b"popgate-audit-v1\0";
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// How an event's `ts` is written: UTC, microseconds, `Z`. The warehouse
/// keeps the instant and writes it back the same way to rebuild the body.
pub const TS_FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Durable before the national database is asked.
    Intent,
    /// The answer (or refusal) given to an app; durable before it is sent.
    Outcome,
    /// A policy or audit action by an admin or auditor.
    Admin,
    /// A retention purge of warehouse records.
    Purge,
}

impl EventKind {
    /// The name the event and the warehouse's `kind` column carry.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Intent => "intent",
            EventKind::Outcome => "outcome",
            EventKind::Admin => "admin",
            EventKind::Purge => "purge",
        }
    }
}

/// One audit event. The fields are declared in the lexicographic order of
/// their names, so that serialising the struct writes the canonical bytes
/// directly, without building a `Value` first (a test holds the two routes
/// to the same bytes). `None` members are written as `null`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub app_id: Option<String>,
    pub audit_id: String,
    pub case_ref: Option<String>,
    /// HMAC-SHA-256 of the personal ID under the provincial pseudonym key.
    pub citizen_key: Option<String>,
    /// `granted`, `denied`, `error` (outcomes); `pending` (intents); …
    pub decision: String,
    /// Extra details for admin and purge events.
    pub details: Option<Value>,
    /// Names of the fields released (paths, as granted).
    pub fields: Vec<String>,
    pub http_status: Option<u16>,
    pub instance_id: String,
    /// For an outcome: the audit_id of its intent event, if any.
    pub intent_id: Option<String>,
    pub kind: EventKind,
    /// What the release relied on: the purpose's legal basis, then the
    /// grant's own when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legal_basis: Option<String>,
    pub officer_id: Option<String>,
    pub officer_unit: Option<String>,
    pub operation: String,
    pub policy_version: Option<u64>,
    pub purpose: Option<String>,
    pub reason: Option<String>,
    /// SHA-256 (hex) of the answer released to the app.
    pub released_digest: Option<String>,
    pub request_id: String,
    pub seq: u64,
    /// Every person whose data the answer carried (outcomes of granted
    /// requests): who, in which role, which fields.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<Subject>,
    /// The request's trace (hex), when the app sent a `traceparent` or
    /// the gateway exports traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// RFC 3339 UTC with microseconds.
    pub ts: String,
    /// SHA-256 (hex) of the national database's answer body.
    pub upstream_digest: Option<String>,
    pub upstream_ms: Option<u64>,
    pub upstream_status: Option<String>,
}

/// The roles of the people a stored event's answer carried (`citizen`,
/// `head`, `member`, …), once each, in order.
pub fn roles_of(body: &Value) -> Vec<&str> {
    let mut roles: Vec<&str> = Vec::new();
    for role in body["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["role"].as_str())
    {
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    roles
}

/// One person an answer carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// The released field paths of this person.
    pub fields: Vec<String>,
    /// The person's pseudonym; `None` when the record named no valid
    /// personal ID for them.
    pub key: Option<String>,
    /// `citizen`, `head`, `member`, `father`, `mother`, `spouse`,
    /// `household_head`.
    pub role: String,
}

impl AuditEvent {
    /// An event of `kind` with fresh audit and request ids and nothing else
    /// set: the journal fills in instance, seq, time and the chain; callers
    /// set what they know with struct update syntax.
    pub fn new(kind: EventKind, operation: &str, decision: &str) -> AuditEvent {
        AuditEvent {
            app_id: None,
            audit_id: uuid::Uuid::now_v7().to_string(),
            case_ref: None,
            citizen_key: None,
            decision: decision.to_owned(),
            details: None,
            fields: Vec::new(),
            http_status: None,
            instance_id: String::new(),
            intent_id: None,
            kind,
            legal_basis: None,
            officer_id: None,
            officer_unit: None,
            operation: operation.to_owned(),
            policy_version: None,
            purpose: None,
            reason: None,
            released_digest: None,
            request_id: uuid::Uuid::now_v7().to_string(),
            seq: 0,
            subjects: Vec::new(),
            trace_id: None,
            ts: String::new(),
            upstream_digest: None,
            upstream_ms: None,
            upstream_status: None,
        }
    }

    /// The canonical bytes that are hashed.
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(768);
        // Writing to a Vec cannot fail, and every member serialises.
        let _ = serde_json::to_writer(&mut out, self);
        out
    }
}

/// Canonical bytes of an event body as stored in the warehouse (`json`; `jsonb`
/// before schema version 2) or serialised: sorted keys, compact;
/// `prev_hash`/`hash` members are ignored.
pub fn canonical_value(body: &Value) -> Vec<u8> {
    let mut body = body.clone();
    if let Value::Object(map) = &mut body {
        map.remove("prev_hash");
        map.remove("hash");
    }
    // serde_json's Map is ordered by key (no `preserve_order` feature).
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The chain step: `SHA-256(domain ‖ prev ‖ canonical)`.
pub fn chain_hash(prev: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(HASH_DOMAIN);
    h.update(prev);
    h.update(canonical);
    h.finalize().into()
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// The bytes of a hex string of any even length.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}

pub fn unhex32(s: &str) -> Option<[u8; 32]> {
    unhex(s)?.try_into().ok()
}

/// SHA-256 of some bytes, hex.
pub fn digest_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The keyed pseudonym of a citizen: HMAC-SHA-256 of the personal ID under
/// the provincial secret, hex. Never reversible without the key.
#[derive(Clone)]
pub struct Pseudonymiser {
    key: ring::hmac::Key,
}

impl Pseudonymiser {
    pub fn new(secret: &[u8]) -> Pseudonymiser {
        Pseudonymiser {
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
        }
    }

    /// Reads a key file of 64 hex digits (what `certs init` writes).
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Pseudonymiser> {
        use anyhow::Context;
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let key =
            unhex32(text.trim()).with_context(|| format!("{} must hold 64 hex digits", path.display()))?;
        Ok(Pseudonymiser::new(&key))
    }

    pub fn citizen_key(&self, personal_id: &crate::personal_id::PersonalId) -> String {
        hex(ring::hmac::sign(&self.key, personal_id.as_str().as_bytes()).as_ref())
    }
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymiser(<key>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AuditEvent {
        AuditEvent {
            audit_id: "a".into(),
            instance_id: "gw".into(),
            seq: 1,
            ts: "2026-11-27T00:00:00.000000Z".into(),
            request_id: "r".into(),
            app_id: Some("mot-cua".into()),
            officer_id: Some("o".into()),
            purpose: Some("p".into()),
            case_ref: Some("Hồ sơ 1".into()),
            citizen_key: Some("k".into()),
            fields: vec!["full_name".into()],
            policy_version: Some(1),
            http_status: Some(200),
            upstream_status: Some("200".into()),
            upstream_ms: Some(3),
            ..AuditEvent::new(EventKind::Outcome, "lookup", "granted")
        }
    }

    #[test]
    fn the_struct_serialises_to_the_canonical_bytes() {
        let mut e = event();
        e.details = Some(serde_json::json!({"zeta": [1, {"b": 2, "a": "x"}], "alpha": null}));
        e.intent_id = Some("i".into());
        e.reason = Some("\"quoted\" and ünïcode".into());
        e.legal_basis = Some("Luật Bảo vệ dữ liệu cá nhân 2025".into());
        e.subjects = vec![Subject {
            fields: vec!["full_name".into(), "household_head.full_name".into()],
            key: Some("k".into()),
            role: "citizen".into(),
        }];
        let via_value = canonical_value(&serde_json::to_value(&e).expect("value"));
        assert_eq!(e.canonical(), via_value);
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
    }

    #[test]
    fn canonical_bytes_survive_a_jsonb_style_round_trip() {
        let e = event();
        let canonical = e.canonical();
        // jsonb reorders keys and drops whitespace; parse + re-serialise is
        // what a verifier does with it.
        let reparsed: Value =
            serde_json::from_slice(&serde_json::to_vec_pretty(&e).expect("json")).expect("parse");
        assert_eq!(canonical_value(&reparsed), canonical);
        let text = String::from_utf8(canonical).expect("utf8");
        assert!(
            text.starts_with("{\"app_id\":\"mot-cua\",\"audit_id\":\"a\""),
            "{text}"
        );
    }

    #[test]
    fn the_chain_depends_on_every_byte_and_the_predecessor() {
        let e = event();
        let h1 = chain_hash(&GENESIS_HASH, &e.canonical());
        let mut altered = e.clone();
        altered.decision = "denied".into();
        assert_ne!(h1, chain_hash(&GENESIS_HASH, &altered.canonical()));
        assert_ne!(h1, chain_hash(&[1; 32], &e.canonical()));
        assert_eq!(unhex32(&hex(&h1)), Some(h1));
    }

    #[test]
    fn pseudonyms_are_keyed() {
        let id = crate::personal_id::PersonalId::parse("079203001234", 2026).expect("id");
        let a = Pseudonymiser::new(&[1; 32]).citizen_key(&id);
        let b = Pseudonymiser::new(&[2; 32]).citizen_key(&id);
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(!a.contains("079203001234"));
    }
}
