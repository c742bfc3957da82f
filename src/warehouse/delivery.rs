//! Delivery of journal batches into the warehouse, for the shipper: each
//! batch of events, its checkpoints, its warehouse records and the
//! instance's delivered watermark in one transaction.
//!
//! Events and records go in with binary `COPY`, typed column by column,
//! which costs PostgreSQL a fraction of an `INSERT … SELECT` over a JSON
//! parameter. Should rows of a batch already be there (a watermark lost or
//! restored from an older backup), the batch is retried row by row with
//! `ON CONFLICT DO NOTHING`.

use bytes::{BufMut, BytesMut};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::{Warehouse, WarehouseError};
use crate::audit::checkpoint::Checkpoint;
use crate::audit::journal::DurableEvent;
use crate::audit::record::{OldUnit, Place};
use crate::audit::WarehouseRecord;

/// Whether a batch was committed: `None` while it is being delivered.
pub type Committed = watch::Receiver<Option<bool>>;

/// Where an instance's delivery stands in the warehouse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveredUpTo {
    /// The watermark: every event up to this seq is delivered.
    pub events: u64,
    /// The newest checkpoint delivered.
    pub checkpoint: u64,
}

/// One batch to deliver: events in seq order, the checkpoints read with
/// them, and the seq the watermark moves to.
pub struct Delivery<'a> {
    pub instance_id: &'a str,
    pub events: &'a [DurableEvent],
    pub checkpoints: &'a [Checkpoint],
    pub last_seq: u64,
}

fn malformed(what: &str) -> WarehouseError {
    WarehouseError::Malformed(what.to_owned())
}

/// JSON text already serialised, sent as a `json` or `jsonb` value.
#[derive(Debug)]
struct RawJson<B>(B);

impl<B: AsRef<[u8]> + std::fmt::Debug> ToSql for RawJson<B> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            out.put_u8(1); // jsonb's binary format: a version byte, then the text
        }
        out.put_slice(self.0.as_ref());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    to_sql_checked!();
}

const EVENT_COLUMNS: &str = "instance_id, seq, audit_id, ts, request_id, app_id, officer_id, officer_unit, \
    operation, purpose, case_ref, decision, reason, citizen_key, fields, policy_version, upstream_status, \
    upstream_ms, upstream_digest, released_digest, prev_hash, hash, legal_basis, subjects, subject_keys, \
    kind, http_status, intent_id, trace_id, details";
const EVENT_TYPES: [Type; 30] = [
    Type::TEXT,
    Type::INT8,
    Type::UUID,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT_ARRAY,
    Type::INT8,
    Type::TEXT,
    Type::INT4,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::JSON,
    Type::TEXT_ARRAY,
    Type::TEXT,
    Type::INT4,
    Type::UUID,
    Type::TEXT,
    Type::JSON,
];

const RECORD_COLUMNS: &str =
    "audit_id, citizen_key, app_id, purpose, legal_basis, policy_version, released_at, \
    released_month, data_as_of, ward_code, ward_name, province_code, province_name, \
    residence_old_province_code, residence_old_province_name, residence_old_district_code, \
    residence_old_district_name, residence_old_ward_code, residence_old_ward_name, residence_ambiguous, \
    permanent_ward_code, permanent_ward_name, permanent_province_code, permanent_province_name, \
    permanent_old_province_code, permanent_old_province_name, permanent_old_district_code, \
    permanent_old_district_name, permanent_old_ward_code, permanent_old_ward_name, permanent_ambiguous, \
    region, age_band, sex, household_size, household_role, fields, retain_until";
const RECORD_TYPES: [Type; 38] = [
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::DATE,
    Type::TIMESTAMPTZ,
    // residence
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::BOOL,
    // permanent address
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::BOOL,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::TEXT,
    Type::JSONB,
    Type::TIMESTAMPTZ,
];

/// A warehouse row, typed column by column.
trait Row {
    const TABLE: &'static str;
    const COLUMNS: &'static str;
    const TYPES: &'static [Type];
    fn params(&self) -> Vec<&(dyn ToSql + Sync)>;
}

/// Writes `rows` with one binary `COPY`, encoded whole before it is sent:
/// PostgreSQL then reads one long message instead of waiting on a chunk
/// at a time.
async fn copy_rows<R: Row>(tx: &tokio_postgres::Transaction<'_>, rows: &[R]) -> Result<(), WarehouseError> {
    if rows.is_empty() {
        return Ok(());
    }
    let data = encode_copy(rows)?;
    let sink = tx
        .copy_in(&format!(
            "COPY popgate.{} ({}) FROM STDIN (FORMAT binary)",
            R::TABLE,
            R::COLUMNS
        ))
        .await?;
    let mut sink = std::pin::pin!(sink);
    futures_util::SinkExt::send(&mut sink, data).await?;
    sink.finish().await?;
    Ok(())
}

/// `rows` in PostgreSQL's binary `COPY` format: the signature, then per
/// row its column count and each value as a length and its bytes (-1 for
/// NULL), then the trailer.
fn encode_copy<R: Row>(rows: &[R]) -> Result<bytes::Bytes, WarehouseError> {
    let mut buf = BytesMut::with_capacity(rows.len() * 1024);
    buf.put_slice(b"PGCOPY\n\xff\r\n\0");
    buf.put_i32(0); // flags
    buf.put_i32(0); // header extension
    for row in rows {
        let params = row.params();
        buf.put_i16(i16::try_from(params.len()).map_err(|_| malformed("too many columns"))?);
        for (value, ty) in params.iter().zip(R::TYPES) {
            let at = buf.len();
            buf.put_i32(0);
            let len = match value
                .to_sql_checked(ty, &mut buf)
                .map_err(|e| WarehouseError::Malformed(e.to_string()))?
            {
                IsNull::Yes => -1,
                IsNull::No => {
                    i32::try_from(buf.len() - at - 4).map_err(|_| malformed("a value over 2 GiB"))?
                }
            };
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
    buf.put_i16(-1);
    Ok(buf.freeze())
}

/// Inserts `rows` one by one, skipping those already there.
async fn insert_rows<R: Row>(tx: &tokio_postgres::Transaction<'_>, rows: &[R]) -> Result<(), WarehouseError> {
    if rows.is_empty() {
        return Ok(());
    }
    let placeholders = (1..=R::TYPES.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let insert = tx
        .prepare_typed(
            &format!(
                "INSERT INTO popgate.{} ({}) VALUES ({placeholders}) ON CONFLICT DO NOTHING",
                R::TABLE,
                R::COLUMNS
            ),
            R::TYPES,
        )
        .await?;
    for row in rows {
        tx.execute(&insert, &row.params()).await?;
    }
    Ok(())
}

/// The typed columns of one `audit_events` row.
struct EventRow<'a> {
    e: &'a DurableEvent,
    audit_id: uuid::Uuid,
    ts: OffsetDateTime,
    seq: i64,
    policy_version: Option<i64>,
    upstream_ms: Option<i32>,
    subjects: Option<RawJson<Vec<u8>>>,
    subject_keys: Vec<&'a str>,
    kind: &'static str,
    http_status: Option<i32>,
    intent_id: Option<uuid::Uuid>,
    details: Option<RawJson<Vec<u8>>>,
}

impl<'a> EventRow<'a> {
    fn new(e: &'a DurableEvent) -> Result<EventRow<'a>, WarehouseError> {
        let ev = &e.event;
        Ok(EventRow {
            e,
            audit_id: ev
                .audit_id
                .parse()
                .map_err(|_| malformed(&format!("journal event {} has an invalid audit_id", ev.seq)))?,
            ts: OffsetDateTime::parse(&ev.ts, &Rfc3339)
                .map_err(|_| malformed(&format!("journal event {} has an invalid ts", ev.seq)))?,
            seq: ev.seq as i64,
            policy_version: ev.policy_version.map(|v| v as i64),
            upstream_ms: ev.upstream_ms.map(|m| m.min(i32::MAX as u64) as i32),
            subjects: (!ev.subjects.is_empty())
                .then(|| serde_json::to_vec(&ev.subjects).map(RawJson))
                .transpose()
                .map_err(|e| WarehouseError::Malformed(e.to_string()))?,
            subject_keys: ev.subjects.iter().filter_map(|s| s.key.as_deref()).collect(),
            kind: ev.kind.as_str(),
            http_status: ev.http_status.map(i32::from),
            intent_id: ev
                .intent_id
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|_| malformed(&format!("journal event {} has an invalid intent_id", ev.seq)))?,
            details: ev
                .details
                .as_ref()
                .map(|d| serde_json::to_vec(d).map(RawJson))
                .transpose()
                .map_err(|e| WarehouseError::Malformed(e.to_string()))?,
        })
    }
}

impl Row for EventRow<'_> {
    const TABLE: &'static str = "audit_events";
    const COLUMNS: &'static str = EVENT_COLUMNS;
    const TYPES: &'static [Type] = &EVENT_TYPES;

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let ev = &self.e.event;
        vec![
            &ev.instance_id,
            &self.seq,
            &self.audit_id,
            &self.ts,
            &ev.request_id,
            &ev.app_id,
            &ev.officer_id,
            &ev.officer_unit,
            &ev.operation,
            &ev.purpose,
            &ev.case_ref,
            &ev.decision,
            &ev.reason,
            &ev.citizen_key,
            &ev.fields,
            &self.policy_version,
            &ev.upstream_status,
            &self.upstream_ms,
            &ev.upstream_digest,
            &ev.released_digest,
            &self.e.prev_hash,
            &self.e.hash,
            &ev.legal_basis,
            &self.subjects,
            &self.subject_keys,
            &self.kind,
            &self.http_status,
            &self.intent_id,
            &ev.trace_id,
            &self.details,
        ]
    }
}

/// The typed columns of one `citizen_records` row.
struct RecordRow<'a> {
    w: &'a WarehouseRecord,
    audit_id: uuid::Uuid,
    policy_version: i64,
    released_at: OffsetDateTime,
    released_month: time::Date,
    old: OldUnit,
    permanent: Place,
    permanent_old: OldUnit,
    household_size: Option<i32>,
    data_as_of: Option<OffsetDateTime>,
    retain_until: OffsetDateTime,
    fields: RawJson<Vec<u8>>,
}

impl<'a> RecordRow<'a> {
    fn new(row: &EventRow<'a>, w: &'a WarehouseRecord) -> Result<RecordRow<'a>, WarehouseError> {
        let seq = row.seq;
        let time = |t: &str, what: &str| {
            OffsetDateTime::parse(t, &Rfc3339).map_err(|_| {
                malformed(&format!(
                    "the warehouse record of event {seq} has an invalid {what}"
                ))
            })
        };
        let released_at = time(&w.released_at, "released_at")?;
        let local = released_at.to_offset(crate::clock::VIETNAM).date();
        let permanent = w.permanent.clone().unwrap_or_default();
        Ok(RecordRow {
            w,
            audit_id: row.audit_id,
            policy_version: w.policy_version as i64,
            released_at,
            released_month: local.replace_day(1).unwrap_or(local),
            old: w.residence_old.clone().unwrap_or_default(),
            permanent_old: permanent.old.clone().unwrap_or_default(),
            permanent,
            household_size: w.household_size.and_then(|n| i32::try_from(n).ok()),
            // The national database's own timestamp: kept when readable,
            // never a reason to hold the batch back.
            data_as_of: w
                .data_as_of
                .as_deref()
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()),
            retain_until: time(&w.retain_until, "retain_until")?,
            fields: RawJson(
                serde_json::to_vec(&w.fields).map_err(|e| WarehouseError::Malformed(e.to_string()))?,
            ),
        })
    }
}

impl Row for RecordRow<'_> {
    const TABLE: &'static str = "citizen_records";
    const COLUMNS: &'static str = RECORD_COLUMNS;
    const TYPES: &'static [Type] = &RECORD_TYPES;

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let (w, o, p, po) = (self.w, &self.old, &self.permanent, &self.permanent_old);
        vec![
            &self.audit_id,
            &w.citizen_key,
            &w.app_id,
            &w.purpose,
            &w.legal_basis,
            &self.policy_version,
            &self.released_at,
            &self.released_month,
            &self.data_as_of,
            &w.ward_code,
            &w.ward_name,
            &w.province_code,
            &w.province_name,
            &o.province_code,
            &o.province_name,
            &o.district_code,
            &o.district_name,
            &o.ward_code,
            &o.ward_name,
            &w.residence_ambiguous,
            &p.ward_code,
            &p.ward_name,
            &p.province_code,
            &p.province_name,
            &po.province_code,
            &po.province_name,
            &po.district_code,
            &po.district_name,
            &po.ward_code,
            &po.ward_name,
            &p.ambiguous,
            &w.region,
            &w.age_band,
            &w.sex,
            &self.household_size,
            &w.household_role,
            &self.fields,
            &self.retain_until,
        ]
    }
}

impl Warehouse {
    /// The delivered watermark and newest checkpoint of `instance_id`.
    pub async fn delivered_up_to(&self, instance_id: &str) -> Result<DeliveredUpTo, WarehouseError> {
        let client = self.pool().get().await?;
        let row = client
            .query_opt(
                "SELECT delivered FROM popgate.shipper_watermarks WHERE instance_id = $1",
                &[&instance_id],
            )
            .await?;
        let events = row.map_or(0, |r| r.get::<_, i64>(0)).max(0) as u64;
        let checkpoint: Option<i64> = client
            .query_one(
                "SELECT max(seq) FROM popgate.audit_checkpoints WHERE instance_id = $1",
                &[&instance_id],
            )
            .await?
            .get(0);
        Ok(DeliveredUpTo {
            events,
            checkpoint: checkpoint.unwrap_or(0).max(0) as u64,
        })
    }

    /// Delivers one batch; with `before`, commits only once the batch
    /// before it has (so that batches sent at once still commit in order).
    pub async fn deliver(
        &self,
        batch: &Delivery<'_>,
        before: Option<Committed>,
    ) -> Result<(), WarehouseError> {
        let events = batch
            .events
            .iter()
            .map(EventRow::new)
            .collect::<Result<Vec<_>, _>>()?;
        let mut records = Vec::new();
        for row in &events {
            for w in &row.e.warehouse {
                records.push(RecordRow::new(row, w)?);
            }
        }
        let mut client = self.pool().get().await?;
        match deliver_in(&mut client, batch, &events, &records, true, before.clone()).await {
            Err(e) if e.is_unique_violation() => {
                // The same event delivered before is no harm; another event
                // at one of these places is a fork.
                if let Some((seq, theirs, ours)) = forked_at(&client, batch).await? {
                    client
                        .execute(
                            "INSERT INTO popgate.audit_forks (instance_id, seq, warehouse_hash, journal_hash)
                             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                            &[&batch.instance_id, &(seq as i64), &theirs, &ours],
                        )
                        .await?;
                    return Err(WarehouseError::Fork { seq });
                }
                tracing::warn!(
                    first = batch.events.first().map_or(0, |e| e.event.seq),
                    last = batch.last_seq,
                    "some audit events of this batch are already in the warehouse; shipping it row by row"
                );
                deliver_in(&mut client, batch, &events, &records, false, before).await
            }
            other => other,
        }
    }
}

/// The first event of `batch` that the warehouse holds with another hash:
/// its seq, the warehouse's hash and the journal's.
async fn forked_at(
    client: &deadpool_postgres::Object,
    batch: &Delivery<'_>,
) -> Result<Option<(u64, String, String)>, WarehouseError> {
    let (Some(first), Some(last)) = (batch.events.first(), batch.events.last()) else {
        return Ok(None);
    };
    let rows = client
        .query(
            "SELECT seq, hash FROM popgate.audit_events WHERE instance_id = $1 AND seq BETWEEN $2 AND $3",
            &[
                &batch.instance_id,
                &(first.event.seq as i64),
                &(last.event.seq as i64),
            ],
        )
        .await?;
    for row in rows {
        let (seq, hash): (i64, String) = (row.get(0), row.get(1));
        let ours = batch.events.iter().find(|e| e.event.seq as i64 == seq);
        if let Some(ours) = ours.filter(|e| e.hash != hash) {
            return Ok(Some((seq as u64, hash, ours.hash.clone())));
        }
    }
    Ok(None)
}

/// One transaction: the rows (by `COPY`, or row by row skipping those
/// already there), the checkpoints and the watermark.
async fn deliver_in(
    client: &mut deadpool_postgres::Object,
    batch: &Delivery<'_>,
    events: &[EventRow<'_>],
    records: &[RecordRow<'_>],
    copy: bool,
    before: Option<Committed>,
) -> Result<(), WarehouseError> {
    let tx = client.transaction().await?;
    if copy {
        copy_rows(&tx, events).await?;
        copy_rows(&tx, records).await?;
    } else {
        insert_rows(&tx, events).await?;
        insert_rows(&tx, records).await?;
    }
    for cp in batch.checkpoints {
        let seq = cp.seq as i64;
        tx.execute(
            INSERT_CHECKPOINT,
            &[
                &cp.instance_id,
                &seq,
                &cp.head_hash,
                &cp.ts,
                &cp.public_key,
                &cp.signature,
            ],
        )
        .await?;
    }
    if let Some(mut before) = before {
        let committed = before.wait_for(Option::is_some).await.map_or(None, |c| *c);
        if committed != Some(true) {
            return Err(WarehouseError::Aborted(format!(
                "events {}..={} not committed: the batch before them was not delivered",
                batch.events.first().map_or(0, |e| e.event.seq),
                batch.last_seq
            )));
        }
    }
    let last = batch.last_seq as i64;
    tx.execute(
        "INSERT INTO popgate.shipper_watermarks (instance_id, delivered) VALUES ($1, $2)
         ON CONFLICT (instance_id) DO UPDATE SET delivered = GREATEST(popgate.shipper_watermarks.delivered, EXCLUDED.delivered)",
        &[&batch.instance_id, &last],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

const INSERT_CHECKPOINT: &str = "
INSERT INTO popgate.audit_checkpoints (instance_id, seq, head_hash, ts, signed_ts, public_key, signature)
VALUES ($1, $2, $3, CAST($4::text AS timestamptz), $4, $5, $6)
ON CONFLICT DO NOTHING";
