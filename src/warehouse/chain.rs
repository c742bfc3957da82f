//! The verifier's reads: every instance that has a chain in the warehouse,
//! its signed checkpoints, and its events in seq order, a page at a time,
//! each with the body its hash covers and, for rows that kept a body of
//! their own, the body their columns give, so that the verifier can check
//! that they agree.

use serde_json::Value;
use tokio_postgres::Client;

use super::stored::{self, stored_columns};
use super::Result;
use crate::audit::checkpoint::Checkpoint;

/// One stored event of a chain.
#[derive(Debug, Clone)]
pub struct ChainRow {
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    /// The body the hash covers: stored, or rebuilt from the columns.
    pub body: Value,
    /// The body the columns give, when the row also stored one (written
    /// before schema version 10).
    pub columns: Option<Value>,
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
            concat!(
                "SELECT ",
                stored_columns!(),
                " FROM popgate.audit_events WHERE instance_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            ),
            &[&instance, &after, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let kept: Option<Value> = r.get("body");
            ChainRow {
                seq: seq(r.get("seq")),
                prev_hash: r.get("prev_hash"),
                hash: r.get("hash"),
                columns: kept.is_some().then(|| stored::rebuilt_body(r)),
                body: kept.unwrap_or_else(|| stored::rebuilt_body(r)),
                subject_keys: r.get("subject_keys"),
            }
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
