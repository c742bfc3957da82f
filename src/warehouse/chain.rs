//! The verifier's reads: every instance that has a chain in the warehouse,
//! its signed checkpoints, and its events in seq order, a page at a time,
//! with the queryable columns beside the hashed body so that the verifier
//! can check that they agree.

use serde_json::Value;
use tokio_postgres::Client;

use super::Result;
use crate::audit::checkpoint::Checkpoint;

/// One stored event of a chain.
#[derive(Debug, Clone)]
pub struct ChainRow {
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    /// The hashed canonical body.
    pub body: Value,
    pub audit_id: Option<String>,
    pub decision: Option<String>,
    pub app_id: Option<String>,
    pub officer_id: Option<String>,
    pub operation: Option<String>,
    pub purpose: Option<String>,
    pub citizen_key: Option<String>,
    pub fields: Vec<String>,
    pub policy_version: Option<i64>,
    pub ts: time::OffsetDateTime,
    pub request_id: Option<String>,
    pub officer_unit: Option<String>,
    pub case_ref: Option<String>,
    pub reason: Option<String>,
    pub upstream_status: Option<String>,
    pub upstream_ms: Option<i32>,
    pub upstream_digest: Option<String>,
    pub released_digest: Option<String>,
    pub legal_basis: Option<String>,
    pub subjects: Option<Value>,
    pub subject_keys: Vec<String>,
}

fn seq(v: i64) -> u64 {
    v.max(0) as u64
}

/// Every instance with events or checkpoints, in name order.
pub async fn instances(client: &Client) -> Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT instance_id FROM popgate.audit_events UNION SELECT instance_id FROM popgate.audit_checkpoints ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// The checkpoints of `instance`, in seq order.
pub async fn checkpoints(client: &Client, instance: &str) -> Result<Vec<Checkpoint>> {
    Ok(client
        .query(
            "SELECT seq, head_hash, signed_ts, public_key, signature FROM popgate.audit_checkpoints
             WHERE instance_id = $1 ORDER BY seq",
            &[&instance],
        )
        .await?
        .iter()
        .map(|r| Checkpoint {
            instance_id: instance.to_owned(),
            seq: seq(r.get(0)),
            head_hash: r.get(1),
            ts: r.get(2),
            public_key: r.get(3),
            signature: r.get(4),
        })
        .collect())
}

/// Up to `limit` events of `instance` with seq above `after`, in seq order.
pub async fn events_after(client: &Client, instance: &str, after: u64, limit: i64) -> Result<Vec<ChainRow>> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "SELECT seq, prev_hash, hash, body, audit_id::text, decision, app_id, officer_id, operation,
                    purpose, citizen_key, fields, policy_version, ts, request_id, officer_unit, case_ref,
                    reason, upstream_status, upstream_ms, upstream_digest, released_digest, legal_basis,
                    subjects, subject_keys
             FROM popgate.audit_events WHERE instance_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&instance, &after, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ChainRow {
            seq: seq(r.get(0)),
            prev_hash: r.get(1),
            hash: r.get(2),
            body: r.get(3),
            audit_id: r.get(4),
            decision: r.get(5),
            app_id: r.get(6),
            officer_id: r.get(7),
            operation: r.get(8),
            purpose: r.get(9),
            citizen_key: r.get(10),
            fields: r.get(11),
            policy_version: r.get(12),
            ts: r.get(13),
            request_id: r.get(14),
            officer_unit: r.get(15),
            case_ref: r.get(16),
            reason: r.get(17),
            upstream_status: r.get(18),
            upstream_ms: r.get(19),
            upstream_digest: r.get(20),
            released_digest: r.get(21),
            legal_basis: r.get(22),
            subjects: r.get(23),
            subject_keys: r.get(24),
        })
        .collect())
}

/// Every instance's delivered watermark (events up to it were delivered).
pub async fn watermarks(client: &Client) -> Result<Vec<(String, u64)>> {
    Ok(client
        .query(
            "SELECT instance_id, delivered FROM popgate.shipper_watermarks ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), seq(r.get(1))))
        .collect())
}

/// A fork a shipper found: `(instance, seq, detected at)`.
pub async fn forks(client: &Client) -> Result<Vec<(String, u64, time::OffsetDateTime)>> {
    Ok(client
        .query(
            "SELECT instance_id, seq, detected_at FROM popgate.audit_forks ORDER BY instance_id, seq",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), seq(r.get(1)), r.get(2)))
        .collect())
}
