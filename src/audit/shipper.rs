//! Moves journal events into the warehouse, in batches, exactly once: each
//! batch of events, its checkpoints, its warehouse records and the
//! instance's delivered watermark are committed in one transaction, rows are
//! keyed by `(instance_id, seq)`, and a crash or a PostgreSQL outage at any
//! point gives neither loss nor duplicates. Segments are deleted only once
//! every event in them is delivered (and older than the retention).
//!
//! The SQL of a delivery is the warehouse's ([`crate::warehouse::delivery`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::checkpoint::Checkpoint;
use super::journal::{list_segments, DurableEvent, Frame, FrameReader, JournalState};
use crate::warehouse::delivery::{Committed, Delivery};
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

/// One batch read from the journal.
#[derive(Default)]
struct Batch {
    events: Vec<DurableEvent>,
    checkpoints: Vec<Checkpoint>,
    last_seq: u64,
    /// Where a disk read stopped (`None` for a batch taken from memory).
    end: Option<Position>,
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
        // Logged once per state change, not per attempt.
        let mut failing: Option<String> = None;
        loop {
            if self.state.fork.load(Ordering::Acquire) {
                // Another chain holds this instance's id in the warehouse:
                // nothing more is delivered until an operator has looked.
                let _ = shutdown.changed().await;
                return;
            }
            match self.ship_available().await {
                Ok(_) => {
                    if failing.take().is_some() {
                        tracing::info!(backlog = self.state.backlog(), "audit shipping works again");
                    }
                    backoff = IDLE_POLL;
                }
                Err(error) if self.state.fork.load(Ordering::Acquire) => {
                    tracing::error!(
                        %error,
                        instance = %self.settings.instance_id,
                        "chain fork: the warehouse holds a different chain for this instance id; shipping stopped"
                    );
                }
                Err(error) => {
                    let text = error.to_string();
                    if failing.as_deref() != Some(text.as_str()) {
                        tracing::warn!(%error, backlog = self.state.backlog(), "audit shipping failed; retrying with backoff (logged again when the cause changes)");
                        failing = Some(text);
                    }
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
        self.state
            .delivered_checkpoint
            .store(next.after_checkpoint, Ordering::Release);
        self.position = next.position;
        self.cleanup(batch.last_seq);
        batch.events.len().max(batch.checkpoints.len())
    }

    async fn load_watermark(&mut self) -> anyhow::Result<()> {
        let delivered = self.warehouse.delivered_up_to(&self.settings.instance_id).await?;
        let stored = delivered.events;
        self.shipped_checkpoint = delivered.checkpoint;
        self.state
            .delivered_checkpoint
            .store(delivered.checkpoint, Ordering::Release);
        let durable = self.state.durable_seq.load(Ordering::Acquire);
        if stored > durable {
            self.state.fork.store(true, Ordering::Release);
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
        let delivery = Delivery {
            instance_id: &self.settings.instance_id,
            events: &batch.events,
            checkpoints: &batch.checkpoints,
            last_seq: batch.last_seq,
        };
        match self.warehouse.deliver(&delivery, before).await {
            Err(crate::warehouse::WarehouseError::Fork { seq }) => {
                self.state.fork.store(true, Ordering::Release);
                anyhow::bail!("event {seq} of this instance is already in the warehouse with another hash")
            }
            other => Ok(other?),
        }
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
