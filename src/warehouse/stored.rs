//! An audit event as the warehouse holds it: one column per field. The
//! body the gateway hashed is rebuilt from the columns, so that the
//! verifier recomputes the chain from what auditors search; rows written
//! before schema version 10 also kept that body as JSON and are read from
//! it.

use serde_json::{Map, Value};
use time::OffsetDateTime;
use tokio_postgres::Row;

use crate::audit::event::TS_FORMAT;

/// The columns [`hashed_body`] and [`rebuilt_body`] read, for a `SELECT`
/// (a literal, for `concat!`).
macro_rules! stored_columns {
    () => {
        "ts, instance_id, seq, prev_hash, hash, body, audit_id::text AS audit_id, request_id, app_id, \
         officer_id, officer_unit, operation, purpose, case_ref, decision, reason, citizen_key, fields, \
         policy_version, upstream_status, upstream_ms, upstream_digest, released_digest, legal_basis, \
         subjects, subject_keys, kind, http_status, intent_id::text AS intent_id, trace_id, details"
    };
}
pub(crate) use stored_columns;

/// [`stored_columns!`] as a constant.
pub const EVENT_COLUMNS: &str = stored_columns!();

/// The body the event's hash covers: the one stored with it, else the
/// one its columns give.
pub fn hashed_body(r: &Row) -> Value {
    r.get::<_, Option<Value>>("body")
        .unwrap_or_else(|| rebuilt_body(r))
}

/// The event's body as its columns give it, member for member what the
/// gateway serialised (`None` as `null`; `legal_basis`, `subjects` and
/// `trace_id` left out when absent). A column changed on its own then
/// gives another body, and another hash.
pub fn rebuilt_body(r: &Row) -> Value {
    let text = |column: &str| -> Value {
        r.get::<_, Option<String>>(column)
            .map_or(Value::Null, Value::String)
    };
    let mut body = Map::new();
    for column in [
        "app_id",
        "audit_id",
        "case_ref",
        "citizen_key",
        "decision",
        "instance_id",
        "intent_id",
        "kind",
        "officer_id",
        "officer_unit",
        "operation",
        "purpose",
        "reason",
        "released_digest",
        "request_id",
        "upstream_digest",
        "upstream_status",
    ] {
        body.insert(column.to_owned(), text(column));
    }
    for optional in ["legal_basis", "trace_id"] {
        if let Value::String(v) = text(optional) {
            body.insert(optional.to_owned(), Value::String(v));
        }
    }
    let number = |v: Option<i64>| v.map_or(Value::Null, Value::from);
    body.insert("seq".into(), Value::from(r.get::<_, i64>("seq")));
    body.insert("policy_version".into(), number(r.get("policy_version")));
    body.insert(
        "upstream_ms".into(),
        number(r.get::<_, Option<i32>>("upstream_ms").map(i64::from)),
    );
    body.insert(
        "http_status".into(),
        number(r.get::<_, Option<i32>>("http_status").map(i64::from)),
    );
    let fields: Option<Vec<String>> = r.get("fields");
    body.insert("fields".into(), fields.map_or(Value::Null, Value::from));
    body.insert(
        "details".into(),
        r.get::<_, Option<Value>>("details").unwrap_or(Value::Null),
    );
    if let Some(subjects) = r.get::<_, Option<Value>>("subjects") {
        body.insert("subjects".into(), subjects);
    }
    let ts: OffsetDateTime = r.get("ts");
    body.insert(
        "ts".into(),
        Value::String(
            ts.to_offset(time::UtcOffset::UTC)
                .format(TS_FORMAT)
                .unwrap_or_default(),
        ),
    );
    Value::Object(body)
}
