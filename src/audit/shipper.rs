//! Moves journal events into the warehouse, in batches, exactly once: each
//! batch of events, its checkpoints, its warehouse records and the
//! instance's delivered watermark are committed in one transaction, rows are
//! keyed by `(instance_id, seq)`, and a crash or a PostgreSQL outage at any
//! point gives neither loss nor duplicates. Segments are deleted only once
//! every event in them is delivered (and older than the retention).
//!
//! Events and records go in with binary `COPY`, typed column by column,
//! which costs PostgreSQL a fraction of an `INSERT … SELECT` over a JSON
//! parameter. Should rows of a batch already be there (a watermark lost or
//! restored from an older backup), the batch is retried row by row with
//! `ON CONFLICT DO NOTHING`, and the rows found are logged.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::{BufMut, BytesMut};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::checkpoint::Checkpoint;
use super::journal::{list_segments, DurableEvent, Frame, FrameReader, JournalState};
use crate::warehouse::Warehouse;

const IDLE_POLL: Duration = Duration::from_millis(100);
/// How many full batches the warehouse takes at once, each in its own
/// transaction on its own connection: PostgreSQL then inserts on more than
/// one core while the batches still commit in order.
const LANES: usize = 2;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ShipperSettings {
    pub dir: PathBuf,
    pub instance_id: String,
    pub batch: usize,
    /// Delivered segments are kept this long before deletion.
    pub retention: Duration,
}

/// Where the reader stopped last time, to avoid rereading a segment.
#[derive(Debug, Clone, Copy)]
struct Position {
    segment_first: u64,
    offset: u64,
    last_seq: u64,
}

pub struct Shipper {
    settings: ShipperSettings,
    state: Arc<JournalState>,
    warehouse: Warehouse,
    position: Option<Position>,
    watermark_known: bool,
    /// The newest checkpoint already in the warehouse.
    shipped_checkpoint: u64,
}

/// Where a batch starts: after the `delivered` event, with checkpoints
/// newer than `after_checkpoint`.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    delivered: u64,
    after_checkpoint: u64,
    position: Option<Position>,
}

impl Cursor {
    /// Where the batch after `batch` starts, `batch` having started here:
    /// the cursor that [`Shipper::advance`] leaves once it is committed.
    fn after(self, batch: &Batch) -> Cursor {
        Cursor {
            delivered: batch.last_seq,
            after_checkpoint: batch
                .checkpoints
                .iter()
                .map(|c| c.seq)
                .fold(self.after_checkpoint, u64::max),
            position: batch.end.or(self.position),
        }
    }
}

/// Whether a batch was committed: `None` while it is being delivered.
type Committed = watch::Receiver<Option<bool>>;

/// One batch read from the journal.
#[derive(Default)]
struct Batch {
    events: Vec<DurableEvent>,
    checkpoints: Vec<Checkpoint>,
    last_seq: u64,
    /// Where a disk read stopped (`None` for a batch taken from memory).
    end: Option<Position>,
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
    upstream_ms, upstream_digest, released_digest, body, prev_hash, hash";
const EVENT_TYPES: [Type; 23] = [
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
    Type::JSON,
    Type::TEXT,
    Type::TEXT,
];

const RECORD_COLUMNS: &str = "audit_id, citizen_key, app_id, purpose, policy_version, released_at, \
    data_as_of, ward_code, ward_name, province_code, province_name, age_band, fields, retain_until";
const RECORD_TYPES: [Type; 14] = [
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
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
async fn copy_rows<R: Row>(tx: &tokio_postgres::Transaction<'_>, rows: &[R]) -> anyhow::Result<()> {
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
fn encode_copy<R: Row>(rows: &[R]) -> anyhow::Result<bytes::Bytes> {
    let mut buf = BytesMut::with_capacity(rows.len() * 1024);
    buf.put_slice(b"PGCOPY\n\xff\r\n\0");
    buf.put_i32(0); // flags
    buf.put_i32(0); // header extension
    for row in rows {
        let params = row.params();
        buf.put_i16(i16::try_from(params.len())?);
        for (value, ty) in params.iter().zip(R::TYPES) {
            let at = buf.len();
            buf.put_i32(0);
            let len = match value
                .to_sql_checked(ty, &mut buf)
                .map_err(|e| anyhow::anyhow!(e))?
            {
                IsNull::Yes => -1,
                IsNull::No => i32::try_from(buf.len() - at - 4)?,
            };
            buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
    buf.put_i16(-1);
    Ok(buf.freeze())
}

/// Inserts `rows` one by one, skipping those already there.
async fn insert_rows<R: Row>(tx: &tokio_postgres::Transaction<'_>, rows: &[R]) -> anyhow::Result<()> {
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
    body: RawJson<&'a [u8]>,
}

impl<'a> EventRow<'a> {
    fn new(e: &'a DurableEvent) -> anyhow::Result<EventRow<'a>> {
        let ev = &e.event;
        Ok(EventRow {
            e,
            audit_id: ev
                .audit_id
                .parse()
                .with_context(|| format!("journal event {} has an invalid audit_id", ev.seq))?,
            ts: OffsetDateTime::parse(&ev.ts, &Rfc3339)
                .with_context(|| format!("journal event {} has an invalid ts", ev.seq))?,
            seq: ev.seq as i64,
            policy_version: ev.policy_version.map(|v| v as i64),
            upstream_ms: ev.upstream_ms.map(|m| m.min(i32::MAX as u64) as i32),
            body: RawJson(&e.canonical),
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
            &self.body,
            &self.e.prev_hash,
            &self.e.hash,
        ]
    }
}

/// The typed columns of one `citizen_records` row.
struct RecordRow<'a> {
    w: &'a super::WarehouseRecord,
    audit_id: uuid::Uuid,
    policy_version: i64,
    released_at: OffsetDateTime,
    data_as_of: Option<OffsetDateTime>,
    retain_until: OffsetDateTime,
    fields: RawJson<Vec<u8>>,
}

impl<'a> RecordRow<'a> {
    fn new(row: &EventRow<'a>) -> anyhow::Result<Option<RecordRow<'a>>> {
        let Some(w) = &row.e.warehouse else {
            return Ok(None);
        };
        let seq = row.seq;
        let time = |t: &str, what: &str| {
            OffsetDateTime::parse(t, &Rfc3339)
                .with_context(|| format!("the warehouse record of event {seq} has an invalid {what}"))
        };
        Ok(Some(RecordRow {
            w,
            audit_id: row.audit_id,
            policy_version: w.policy_version as i64,
            released_at: time(&w.released_at, "released_at")?,
            // The national database's own timestamp: kept when readable,
            // never a reason to hold the batch back.
            data_as_of: w
                .data_as_of
                .as_deref()
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()),
            retain_until: time(&w.retain_until, "retain_until")?,
            fields: RawJson(serde_json::to_vec(&w.fields)?),
        }))
    }
}

impl Row for RecordRow<'_> {
    const TABLE: &'static str = "citizen_records";
    const COLUMNS: &'static str = RECORD_COLUMNS;
    const TYPES: &'static [Type] = &RECORD_TYPES;

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        let w = self.w;
        vec![
            &self.audit_id,
            &w.citizen_key,
            &w.app_id,
            &w.purpose,
            &self.policy_version,
            &self.released_at,
            &self.data_as_of,
            &w.ward_code,
            &w.ward_name,
            &w.province_code,
            &w.province_name,
            &w.age_band,
            &self.fields,
            &self.retain_until,
        ]
    }
}

impl Shipper {
    pub fn new(settings: ShipperSettings, state: Arc<JournalState>, warehouse: Warehouse) -> Shipper {
        Shipper {
            settings,
            state,
            warehouse,
            position: None,
            watermark_known: false,
            shipped_checkpoint: 0,
        }
    }

    /// Ships until `shutdown`, then makes one last attempt. Full batches
    /// follow one another at once; after a partial one the shipper waits
    /// `IDLE_POLL`, so that under load the warehouse gets few large
    /// transactions rather than many small ones.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = IDLE_POLL;
        loop {
            match self.ship_available().await {
                Ok(_) => backoff = IDLE_POLL,
                Err(error) => {
                    tracing::warn!(%error, backlog = self.state.backlog(), "audit shipping failed; will retry");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => {
                    // Deliver what is left (events and the final checkpoint).
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                    while tokio::time::Instant::now() < deadline {
                        match self.ship_available().await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Ships full batches while there are any, then one partial batch, and
    /// returns how many events were delivered. While full batches follow
    /// one another, [`LANES`] of them go to the warehouse at once, each on
    /// its own connection, and the next round is read meanwhile (from the
    /// segment files, on another thread, when memory no longer holds it).
    /// Each batch still commits after the one before it, with its
    /// watermark; one that fails stops those after it from committing.
    pub async fn ship_available(&mut self) -> anyhow::Result<usize> {
        if !self.watermark_known {
            self.load_watermark().await?;
        }
        let mut shipped = 0;
        let mut round = self.take_round(self.cursor()).await?;
        while let Some(last) = round.last() {
            let after = round.iter().fold(self.cursor(), Cursor::after);
            let (results, following) = if self.full_batch_follows(last) {
                tokio::join!(self.deliver_round(&round), self.take_round(after))
            } else {
                let results = self.deliver_round(&round).await;
                // After a partial batch, the rest waits for the next round.
                let following = if self.is_full(last) {
                    self.take_round(after).await
                } else {
                    Ok(Vec::new())
                };
                (results, following)
            };
            for (batch, delivered) in round.iter().zip(results) {
                delivered?;
                shipped += self.advance(batch);
            }
            round = following?;
        }
        Ok(shipped)
    }

    /// Where the next batch starts.
    fn cursor(&self) -> Cursor {
        Cursor {
            delivered: self.state.delivered_seq.load(Ordering::Acquire),
            after_checkpoint: self.shipped_checkpoint,
            position: self.position,
        }
    }

    fn is_full(&self, batch: &Batch) -> bool {
        batch.events.len() >= self.settings.batch
    }

    /// Whether `batch` is full and a full batch more is durable after it.
    fn full_batch_follows(&self, batch: &Batch) -> bool {
        self.is_full(batch)
            && self
                .state
                .durable_seq
                .load(Ordering::Acquire)
                .saturating_sub(batch.last_seq)
                >= self.settings.batch as u64
    }

    /// The batches that follow `from`, up to [`LANES`]: a batch after the
    /// first only while full ones follow.
    async fn take_round(&self, from: Cursor) -> anyhow::Result<Vec<Batch>> {
        let mut round: Vec<Batch> = Vec::with_capacity(LANES);
        let mut at = from;
        while round.len() < LANES && round.last().is_none_or(|b| self.full_batch_follows(b)) {
            let Some(batch) = self.take_batch(at).await? else {
                break;
            };
            at = at.after(&batch);
            round.push(batch);
        }
        Ok(round)
    }

    /// The batch that follows `from`: taken from memory when the journal
    /// still holds it there, else read from the segment files. `None` when
    /// nothing durable follows.
    async fn take_batch(&self, from: Cursor) -> anyhow::Result<Option<Batch>> {
        let durable = self.state.durable_seq.load(Ordering::Acquire);
        let anchored = self.state.checkpoint_seq.load(Ordering::Acquire);
        if durable <= from.delivered && anchored <= from.after_checkpoint {
            return Ok(None);
        }
        let limit = self.settings.batch;
        let batch = match self
            .state
            .take_handoff(from.delivered, limit, from.after_checkpoint)
        {
            Some((events, checkpoints)) => Batch {
                last_seq: events.last().map_or(from.delivered, |e| e.event.seq),
                events,
                checkpoints,
                end: None,
            },
            None => {
                let dir = self.settings.dir.clone();
                tokio::task::spawn_blocking(move || {
                    read_batch(
                        &dir,
                        from.delivered,
                        durable,
                        limit,
                        from.position,
                        from.after_checkpoint,
                    )
                })
                .await??
            }
        };
        Ok((!batch.events.is_empty() || !batch.checkpoints.is_empty()).then_some(batch))
    }

    /// Records a committed batch; returns its size (events, or checkpoints
    /// when it carried only those).
    fn advance(&mut self, batch: &Batch) -> usize {
        let next = self.cursor().after(batch);
        self.state.mark_delivered(next.delivered);
        self.shipped_checkpoint = next.after_checkpoint;
        self.position = next.position;
        self.cleanup(batch.last_seq);
        batch.events.len().max(batch.checkpoints.len())
    }

    async fn load_watermark(&mut self) -> anyhow::Result<()> {
        let client = self.warehouse.pool().get().await?;
        let row = client
            .query_opt(
                "SELECT delivered FROM popgate.shipper_watermarks WHERE instance_id = $1",
                &[&self.settings.instance_id],
            )
            .await?;
        let stored = row.map_or(0, |r| r.get::<_, i64>(0)).max(0) as u64;
        let checkpoint: Option<i64> = client
            .query_one(
                "SELECT max(seq) FROM popgate.audit_checkpoints WHERE instance_id = $1",
                &[&self.settings.instance_id],
            )
            .await?
            .get(0);
        self.shipped_checkpoint = checkpoint.unwrap_or(0).max(0) as u64;
        let durable = self.state.durable_seq.load(Ordering::Acquire);
        if stored > durable {
            anyhow::bail!(
                "the warehouse holds events up to seq {stored} for instance '{}' but the local journal ends at {durable}: \
                 the journal was lost or replaced; start this instance with a new instance_id",
                self.settings.instance_id
            );
        }
        self.state.mark_delivered(stored);
        self.watermark_known = true;
        Ok(())
    }

    /// Delivers a round of batches at once; each waits, before its
    /// watermark and commit, until the one before it has committed.
    /// Returns each batch's outcome, in order.
    async fn deliver_round(&self, round: &[Batch]) -> Vec<anyhow::Result<()>> {
        let committed: Vec<_> = round.iter().map(|_| watch::channel(None::<bool>)).collect();
        let deliveries = round
            .iter()
            .zip(&committed)
            .enumerate()
            .map(|(i, (batch, (done, _)))| {
                let before = i.checked_sub(1).map(|j| committed[j].1.clone());
                async move {
                    let delivered = self.deliver(batch, before).await;
                    done.send_replace(Some(delivered.is_ok()));
                    delivered
                }
            });
        futures_util::future::join_all(deliveries).await
    }

    /// Delivers one batch; with `before`, commits only once the batch
    /// before it has.
    async fn deliver(&self, batch: &Batch, before: Option<Committed>) -> anyhow::Result<()> {
        let events = batch
            .events
            .iter()
            .map(EventRow::new)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut records = Vec::new();
        for row in &events {
            records.extend(RecordRow::new(row)?);
        }
        let mut client = self.warehouse.pool().get().await?;
        match self
            .deliver_in(&mut client, batch, &events, &records, true, before.clone())
            .await
        {
            Err(e) if is_unique_violation(&e) => {
                tracing::warn!(
                    first = batch.events.first().map_or(0, |e| e.event.seq),
                    last = batch.last_seq,
                    "some audit events of this batch are already in the warehouse; shipping it row by row"
                );
                self.deliver_in(&mut client, batch, &events, &records, false, before)
                    .await
            }
            other => other,
        }
    }

    /// One transaction: the rows (by `COPY`, or row by row skipping those
    /// already there), the checkpoints and the watermark.
    async fn deliver_in(
        &self,
        client: &mut deadpool_postgres::Object,
        batch: &Batch,
        events: &[EventRow<'_>],
        records: &[RecordRow<'_>],
        copy: bool,
        before: Option<Committed>,
    ) -> anyhow::Result<()> {
        let tx = client.transaction().await?;
        if copy {
            copy_rows(&tx, events).await?;
            copy_rows(&tx, records).await?;
        } else {
            insert_rows(&tx, events).await?;
            insert_rows(&tx, records).await?;
        }
        for cp in &batch.checkpoints {
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
                anyhow::bail!(
                    "events {}..={} not committed: the batch before them was not delivered",
                    batch.events.first().map_or(0, |e| e.event.seq),
                    batch.last_seq
                );
            }
        }
        let last = batch.last_seq as i64;
        tx.execute(
            "INSERT INTO popgate.shipper_watermarks (instance_id, delivered) VALUES ($1, $2)
             ON CONFLICT (instance_id) DO UPDATE SET delivered = GREATEST(popgate.shipper_watermarks.delivered, EXCLUDED.delivered)",
            &[&self.settings.instance_id, &last],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes segments whose every event is delivered, keeping the newest.
    fn cleanup(&self, delivered: u64) {
        let Ok(segments) = list_segments(&self.settings.dir) else {
            return;
        };
        for pair in segments.windows(2) {
            let (_, path) = &pair[0];
            let next_first = pair[1].0;
            if next_first.saturating_sub(1) <= delivered && older_than(path, self.settings.retention) {
                if let Err(error) = std::fs::remove_file(path) {
                    tracing::warn!(%error, segment = %path.display(), "cannot delete a delivered segment");
                }
            }
        }
    }
}

fn older_than(path: &Path, age: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|t| SystemTime::now().duration_since(t).unwrap_or_default() >= age)
        .unwrap_or(false)
}

/// Reads events with `delivered < seq <= durable`, at most `limit`.
fn read_batch(
    dir: &Path,
    delivered: u64,
    durable: u64,
    limit: usize,
    position: Option<Position>,
    after_checkpoint: u64,
) -> anyhow::Result<Batch> {
    let segments = list_segments(dir)?;
    let mut batch = Batch {
        last_seq: delivered,
        ..Batch::default()
    };
    let start = segments
        .iter()
        .rposition(|(first, _)| *first <= delivered + 1)
        .unwrap_or(0);
    for (first, path) in segments.iter().skip(start) {
        let mut reader = FrameReader::open(path)?;
        if let Some(p) = position.filter(|p| p.segment_first == *first && p.last_seq == batch.last_seq) {
            reader.seek(p.offset)?;
        }
        while let Some((frame, _)) = reader.next_frame()? {
            match frame {
                Frame::Event {
                    event,
                    prev_hash,
                    hash,
                    warehouse,
                } => {
                    if event.seq <= batch.last_seq {
                        continue;
                    }
                    if event.seq > durable || event.seq != batch.last_seq + 1 || batch.events.len() >= limit {
                        return Ok(batch);
                    }
                    batch.last_seq = event.seq;
                    batch
                        .events
                        .push(DurableEvent::from_frame(event, prev_hash, hash, warehouse));
                    batch.end = Some(Position {
                        segment_first: *first,
                        offset: reader.offset,
                        last_seq: batch.last_seq,
                    });
                }
                Frame::Checkpoint(cp) => {
                    if cp.seq == batch.last_seq && cp.seq > after_checkpoint {
                        batch.checkpoints.push(cp);
                        batch.end = Some(Position {
                            segment_first: *first,
                            offset: reader.offset,
                            last_seq: batch.last_seq,
                        });
                    }
                }
            }
        }
    }
    Ok(batch)
}

const INSERT_CHECKPOINT: &str = "
INSERT INTO popgate.audit_checkpoints (instance_id, seq, head_hash, ts, signed_ts, public_key, signature)
VALUES ($1, $2, $3, CAST($4::text AS timestamptz), $4, $5, $6)
ON CONFLICT DO NOTHING";

fn is_unique_violation(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::code)
            == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    })
}
