//! Moves journal events into the warehouse, in batches, idempotently: each
//! batch of events, its checkpoints, its warehouse records and the
//! instance's delivered watermark are committed in one transaction, rows are
//! keyed by `(instance_id, seq)`, and a crash or a PostgreSQL outage at any
//! point gives neither loss nor duplicates. Segments are deleted only once
//! every event in them is delivered (and older than the retention).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::watch;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

use super::journal::{list_segments, Frame, FrameReader, JournalState};
use crate::warehouse::Warehouse;

const IDLE_POLL: Duration = Duration::from_millis(100);
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

/// One batch read from the journal: frame payloads, as written.
#[derive(Default)]
struct Batch {
    events: Vec<Bytes>,
    checkpoints: Vec<Bytes>,
    /// The newest checkpoint in the batch.
    checkpoint_seq: u64,
    last_seq: u64,
    /// Where a disk read stopped (`None` for a batch taken from memory).
    end: Option<Position>,
}

/// JSON payloads sent as one `json`/`jsonb` array parameter, written as they
/// are: the shipper never parses or re-serialises an event.
#[derive(Debug)]
struct JsonArray<'a>(&'a [Bytes]);

impl ToSql for JsonArray<'_> {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            out.put_u8(1); // jsonb's binary format: a version byte, then the text
        }
        out.put_u8(b'[');
        for (i, item) in self.0.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            out.put_slice(item);
        }
        out.put_u8(b']');
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    to_sql_checked!();
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

    /// Ships until `shutdown`, then makes one last attempt. A full batch is
    /// followed at once by the next; a partial one waits for `IDLE_POLL`, so
    /// that under load the warehouse gets few large transactions rather than
    /// many small ones.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = IDLE_POLL;
        loop {
            match self.ship_once().await {
                Ok(n) if n >= self.settings.batch => {
                    backoff = IDLE_POLL;
                    continue;
                }
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
                        match self.ship_once().await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Ships one batch; returns how many events were delivered.
    pub async fn ship_once(&mut self) -> anyhow::Result<usize> {
        if !self.watermark_known {
            self.load_watermark().await?;
        }
        let delivered = self
            .state
            .delivered_seq
            .load(std::sync::atomic::Ordering::Acquire);
        let durable = self.state.durable_seq.load(std::sync::atomic::Ordering::Acquire);
        let anchored = self
            .state
            .checkpoint_seq
            .load(std::sync::atomic::Ordering::Acquire);
        if durable <= delivered && anchored <= self.shipped_checkpoint {
            return Ok(0);
        }
        let limit = self.settings.batch;
        let after_checkpoint = self.shipped_checkpoint;
        let batch = match self.state.take_handoff(delivered, limit, after_checkpoint) {
            Some((events, checkpoints)) => Batch {
                last_seq: events.last().map_or(delivered, |e| e.seq),
                checkpoint_seq: checkpoints.iter().map(|c| c.seq).max().unwrap_or(0),
                events: events.into_iter().map(|e| e.payload).collect(),
                checkpoints: checkpoints.into_iter().map(|c| c.payload).collect(),
                end: None,
            },
            None => {
                let dir = self.settings.dir.clone();
                let position = self.position;
                tokio::task::spawn_blocking(move || {
                    read_batch(&dir, delivered, durable, limit, position, after_checkpoint)
                })
                .await??
            }
        };
        if batch.events.is_empty() && batch.checkpoints.is_empty() {
            return Ok(0);
        }
        let n = batch.events.len();
        self.deliver(&batch).await?;
        self.state.mark_delivered(batch.last_seq);
        self.shipped_checkpoint = self.shipped_checkpoint.max(batch.checkpoint_seq);
        if batch.end.is_some() {
            self.position = batch.end;
        }
        self.cleanup(batch.last_seq);
        Ok(n.max(batch.checkpoints.len()))
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
        let durable = self.state.durable_seq.load(std::sync::atomic::Ordering::Acquire);
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

    async fn deliver(&self, batch: &Batch) -> anyhow::Result<()> {
        let mut client = self.warehouse.pool().get().await?;
        let tx = client.transaction().await?;
        let events = JsonArray(&batch.events);
        tx.execute(INSERT_EVENTS, &[&events]).await?;
        tx.execute(INSERT_RECORDS, &[&events]).await?;
        if !batch.checkpoints.is_empty() {
            tx.execute(INSERT_CHECKPOINTS, &[&JsonArray(&batch.checkpoints)])
                .await?;
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
        while let Some((frame, payload, _)) = reader.next_with_payload()? {
            match frame {
                Frame::Event { event, .. } => {
                    if event.seq <= batch.last_seq {
                        continue;
                    }
                    if event.seq > durable || event.seq != batch.last_seq + 1 || batch.events.len() >= limit {
                        return Ok(batch);
                    }
                    batch.last_seq = event.seq;
                    batch.events.push(payload);
                    batch.end = Some(Position {
                        segment_first: *first,
                        offset: reader.offset,
                        last_seq: batch.last_seq,
                    });
                }
                Frame::Checkpoint(cp) => {
                    if cp.seq == batch.last_seq && cp.seq > after_checkpoint {
                        batch.checkpoint_seq = batch.checkpoint_seq.max(cp.seq);
                        batch.checkpoints.push(payload);
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

const INSERT_EVENTS: &str = "
INSERT INTO popgate.audit_events (instance_id, seq, audit_id, ts, request_id, app_id, officer_id, officer_unit,
    operation, purpose, case_ref, decision, reason, citizen_key, fields, policy_version, upstream_status,
    upstream_ms, upstream_digest, released_digest, body, prev_hash, hash)
SELECT e->'event'->>'instance_id', (e->'event'->>'seq')::bigint, (e->'event'->>'audit_id')::uuid,
    (e->'event'->>'ts')::timestamptz, e->'event'->>'request_id', e->'event'->>'app_id',
    e->'event'->>'officer_id', e->'event'->>'officer_unit', e->'event'->>'operation', e->'event'->>'purpose',
    e->'event'->>'case_ref', e->'event'->>'decision', e->'event'->>'reason', e->'event'->>'citizen_key',
    ARRAY(SELECT jsonb_array_elements_text(e->'event'->'fields')), (e->'event'->>'policy_version')::bigint,
    e->'event'->>'upstream_status', (e->'event'->>'upstream_ms')::integer, e->'event'->>'upstream_digest',
    e->'event'->>'released_digest', e->'event', e->>'prev_hash', e->>'hash'
FROM jsonb_array_elements($1::jsonb) AS e
ON CONFLICT DO NOTHING";

const INSERT_RECORDS: &str = "
INSERT INTO popgate.citizen_records (audit_id, citizen_key, app_id, purpose, policy_version, released_at,
    data_as_of, ward_code, ward_name, province_code, province_name, age_band, fields, retain_until)
SELECT (e->'event'->>'audit_id')::uuid, w->>'citizen_key', w->>'app_id', w->>'purpose',
    (w->>'policy_version')::bigint, (w->>'released_at')::timestamptz, (w->>'data_as_of')::timestamptz,
    w->>'ward_code', w->>'ward_name', w->>'province_code', w->>'province_name', w->>'age_band',
    w->'fields', (w->>'retain_until')::timestamptz
FROM jsonb_array_elements($1::jsonb) AS e, LATERAL (SELECT e->'warehouse' AS w) AS x
WHERE jsonb_typeof(e->'warehouse') = 'object'
ON CONFLICT DO NOTHING";

const INSERT_CHECKPOINTS: &str = "
INSERT INTO popgate.audit_checkpoints (instance_id, seq, head_hash, ts, signed_ts, public_key, signature)
SELECT c->>'instance_id', (c->>'seq')::bigint, c->>'head_hash', (c->>'ts')::timestamptz, c->>'ts',
    c->>'public_key', c->>'signature'
FROM jsonb_array_elements($1::jsonb) AS c
ON CONFLICT DO NOTHING";
