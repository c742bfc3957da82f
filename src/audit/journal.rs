//! The local audit journal of one gateway instance: append-only segment
//! files of length-prefixed, CRC32C-checked frames, written by one writer
//! task with group commit (one `fdatasync` per batch). An append returns
//! only once its frame is durable; if the journal cannot be written, every
//! append fails and the caller releases nothing.
//!
//! Frame: `len: u32 LE ‖ crc32c(payload): u32 LE ‖ payload` where the
//! payload is a JSON [`Frame`]. Segment files are named
//! `seg-<first seq, 20 digits>.log`; a segment's frames all have sequence
//! numbers below the next segment's first.
//!
//! On open the journal is scanned: a torn or corrupt tail is truncated, and
//! the chain (sequence and hashes) is continued from the last whole event.
//! After a failed write the writer never retries `fsync` on the same file:
//! it abandons the segment (cutting it back to its last durable frame) and
//! the next batch starts a new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::checkpoint::{Checkpoint, Signer};
use super::event::{chain_hash, hex, unhex32, AuditEvent, GENESIS_HASH};
use super::WarehouseRecord;

/// Largest frame accepted when reading (a bound against corrupt lengths).
const MAX_FRAME_BYTES: u32 = 4 * 1024 * 1024;
const QUEUE_DEPTH: usize = 8192;
const MAX_BATCH: usize = 1024;
/// A batch below this size waits for the request workers once (see `run`).
const SMALL_BATCH: usize = 32;
/// Bytes of durable frames held in memory for the shipper; beyond this it
/// reads them back from the segment files instead.
const HANDOFF_BYTES: usize = 16 * 1024 * 1024;

/// One journal frame. (Frames live only while being encoded or read, so
/// the size difference between variants costs nothing worth a box.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Frame {
    Event {
        event: AuditEvent,
        prev_hash: String,
        hash: String,
        /// The enriched warehouse records, one per released person; not
        /// part of the hash (a copy of released data, not evidence). Frames
        /// of earlier versions hold one record or `null`.
        #[serde(deserialize_with = "one_or_many")]
        warehouse: Vec<WarehouseRecord>,
    },
    Checkpoint(Checkpoint),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    #[error("the audit journal cannot be written")]
    Unwritable,
    #[error("the audit backlog awaiting the warehouse is over its limit")]
    BacklogFull,
    #[error("the audit journal is shut down")]
    Closed,
}

/// Limits and behaviour of a journal.
#[derive(Debug, Clone)]
pub struct JournalSettings {
    pub dir: PathBuf,
    pub instance_id: String,
    pub segment_bytes: u64,
    /// A checkpoint is signed every this many events ...
    pub checkpoint_every: u64,
    /// ... or this often when events were written since the last one.
    pub checkpoint_interval: Duration,
    /// Undelivered events beyond which appends fail closed.
    pub max_backlog_events: u64,
    /// How long the warehouse may make no progress on a non-empty backlog
    /// before appends fail closed.
    pub max_backlog_age: Duration,
    /// Test seam: while set, every write fails as a full disk would.
    pub fail_writes: Option<Arc<AtomicBool>>,
}

/// Shared counters between the writer, the shipper and the ops listener.
#[derive(Debug)]
pub struct JournalState {
    /// Highest sequence number known durable on local disk.
    pub durable_seq: AtomicU64,
    /// Highest sequence number known delivered to the warehouse.
    pub delivered_seq: AtomicU64,
    /// Sequence number anchored by the last durable checkpoint.
    pub checkpoint_seq: AtomicU64,
    /// Milliseconds (since `epoch`) of the shipper's last progress.
    last_delivery_ms: AtomicU64,
    /// The last write failed and no write has succeeded since.
    pub degraded: AtomicBool,
    /// Sequence number of the newest checkpoint delivered to the warehouse.
    pub delivered_checkpoint: AtomicU64,
    /// The warehouse holds another chain under this instance's id (a
    /// fork): shipping has stopped.
    pub fork: AtomicBool,
    /// The newest durable checkpoint: an anchor the gateway serves.
    pub latest_checkpoint: Mutex<Option<Checkpoint>>,
    epoch: Instant,
    /// Frames made durable and not yet taken by the shipper, in order.
    handoff: Mutex<Handoff>,
}

/// A durable frame, handed to the shipper from memory so that it need not
/// read it back from disk.
#[derive(Debug, Clone)]
pub enum Shippable {
    Event(Box<DurableEvent>),
    Checkpoint(Checkpoint),
}

/// An event as written: the event, its canonical bytes (the `body` stored
/// in the warehouse) and its place in the chain.
#[derive(Debug, Clone)]
pub struct DurableEvent {
    pub event: AuditEvent,
    pub canonical: Vec<u8>,
    pub prev_hash: String,
    pub hash: String,
    pub warehouse: Vec<WarehouseRecord>,
}

impl DurableEvent {
    /// The event of a frame read from disk.
    pub fn from_frame(
        event: AuditEvent,
        prev_hash: String,
        hash: String,
        warehouse: Vec<WarehouseRecord>,
    ) -> Self {
        DurableEvent {
            canonical: event.canonical(),
            event,
            prev_hash,
            hash,
            warehouse,
        }
    }
}

impl Shippable {
    pub fn seq(&self) -> u64 {
        match self {
            Shippable::Event(e) => e.event.seq,
            Shippable::Checkpoint(c) => c.seq,
        }
    }

    fn is_checkpoint(&self) -> bool {
        matches!(self, Shippable::Checkpoint(_))
    }

    /// Roughly the memory it holds.
    fn size(&self) -> usize {
        match self {
            Shippable::Event(e) => e.canonical.len() + 256 + 1024 * e.warehouse.len(),
            Shippable::Checkpoint(_) => 256,
        }
    }
}

#[derive(Debug, Default)]
struct Handoff {
    frames: std::collections::VecDeque<Shippable>,
    bytes: usize,
}

impl JournalState {
    pub fn backlog(&self) -> u64 {
        self.durable_seq
            .load(Ordering::Acquire)
            .saturating_sub(self.delivered_seq.load(Ordering::Acquire))
    }

    /// Called by the shipper after a committed delivery.
    pub fn mark_delivered(&self, seq: u64) {
        self.delivered_seq.fetch_max(seq, Ordering::AcqRel);
        self.last_delivery_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// Gives the shipper frames just made durable; drops them (the shipper
    /// then reads the segment files) when the shipper is too far behind.
    fn hand_off(&self, frames: Vec<Shippable>) {
        let mut h = self.handoff.lock().unwrap_or_else(|p| p.into_inner());
        let size: usize = frames.iter().map(Shippable::size).sum();
        if h.bytes + size > HANDOFF_BYTES {
            return;
        }
        h.bytes += size;
        h.frames.extend(frames);
    }

    /// Takes from memory the frames that follow `delivered`: up to `limit`
    /// consecutive events, with the checkpoints anchoring them that are newer
    /// than `after_checkpoint`. `None` when memory does not hold the next
    /// frame (after a restart, or when the shipper fell behind), and the
    /// caller must read the segment files.
    pub fn take_handoff(
        &self,
        delivered: u64,
        limit: usize,
        after_checkpoint: u64,
    ) -> Option<(Vec<DurableEvent>, Vec<Checkpoint>)> {
        let mut h = self.handoff.lock().unwrap_or_else(|p| p.into_inner());
        let stale = |f: &Shippable| {
            if f.is_checkpoint() {
                f.seq() < delivered || f.seq() <= after_checkpoint
            } else {
                f.seq() <= delivered
            }
        };
        while h.frames.front().is_some_and(stale) {
            let f = h.frames.pop_front()?;
            h.bytes -= f.size();
        }
        let front = h.frames.front()?;
        let next = if front.is_checkpoint() {
            front.seq() == delivered
        } else {
            front.seq() == delivered + 1
        };
        if !next {
            return None;
        }
        let (mut events, mut checkpoints, mut last) = (Vec::new(), Vec::new(), delivered);
        while let Some(f) = h.frames.front() {
            let take = if f.is_checkpoint() {
                f.seq() == last
            } else {
                f.seq() == last + 1 && events.len() < limit
            };
            if !take {
                break;
            }
            let f = h.frames.pop_front()?;
            h.bytes -= f.size();
            match f {
                Shippable::Checkpoint(cp) => {
                    if cp.seq > after_checkpoint {
                        checkpoints.push(cp);
                    }
                }
                Shippable::Event(e) => {
                    last = e.event.seq;
                    events.push(*e);
                }
            }
        }
        Some((events, checkpoints))
    }

    /// How long the shipper has made no progress while a backlog exists.
    pub fn backlog_age(&self) -> Duration {
        if self.backlog() == 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_delivery_ms.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// What an append made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub hash: String,
}

struct Job {
    event: AuditEvent,
    warehouse: Vec<WarehouseRecord>,
    reply: oneshot::Sender<Result<Appended, JournalError>>,
}

enum Msg {
    Append(Box<Job>),
    /// Sign a checkpoint now if anything was written since the last one.
    Checkpoint(oneshot::Sender<()>),
}

/// Handle to the journal; cheap to clone. The writer stops (after a final
/// checkpoint) when every handle is dropped.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Msg>,
    pub state: Arc<JournalState>,
}

/// Who may read the journal: it holds what was released (names, dates of
/// birth, addresses in the warehouse records), so its owner only.
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
/// How long opening waits for a lock that the same process is releasing
/// (a gateway stopped and started again in one process).
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// The exclusive lock on a journal directory: one process per journal.
/// Held by the journal's writer for as long as it runs.
#[derive(Debug)]
pub struct JournalLock {
    _file: File,
}

impl JournalLock {
    /// Takes the lock of the journal directory `dir` (creating it,
    /// owner-only), or says which process holds it.
    pub fn acquire(dir: &Path) -> anyhow::Result<JournalLock> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))?;
        JournalLock::acquire_file(&dir.join("LOCK"), "the audit journal", dir)
    }

    /// Takes the lock file `path`, which guards `what` at `dir`.
    pub fn acquire_file(path: &Path, what: &str, dir: &Path) -> anyhow::Result<JournalLock> {
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(FILE_MODE)
            .open(path)?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(fs::TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    anyhow::bail!(
                        "{what} {} is in use by another popgate process (pid {}): one process per journal; \
                         give each instance its own data_dir (or audit.journal_dir) and instance_id",
                        dir.display(),
                        holder
                            .trim()
                            .parse::<u32>()
                            .map_or("unknown".to_owned(), |p| p.to_string())
                    );
                }
                Err(fs::TryLockError::Error(e)) => return Err(e.into()),
            }
        }
        file.set_len(0)?;
        file.write_all(std::process::id().to_string().as_bytes())?;
        Ok(JournalLock { _file: file })
    }
}

/// What the scan of an existing journal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanResult {
    pub head_seq: u64,
    pub head_hash: [u8; 32],
    pub first_seq: u64,
    pub truncated_bytes: u64,
    pub last_checkpoint_seq: u64,
}

/// The file of the journal directory where every signed checkpoint is
/// appended (JSON Lines): an anchor kept outside the database.
pub const CHECKPOINT_LOG: &str = "checkpoints.jsonl";

pub fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.log")
}

/// The segments of `dir`, ordered, with their first sequence numbers.
pub fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if let Some(first) = name
            .strip_prefix("seg-")
            .and_then(|r| r.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}

pub fn encode_frame(frame: &Frame) -> Vec<u8> {
    let payload = serde_json::to_vec(frame).unwrap_or_default();
    let mut out = Vec::with_capacity(payload.len() + 8);
    push_frame(&mut out, &payload);
    out
}

/// Appends the frame of `payload` (header and payload) to `out`.
fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The payload of an event frame, written around the event's canonical
/// bytes so that the event is serialised once: what serde writes for
/// [`Frame::Event`], member for member.
fn event_payload(canonical: &[u8], prev_hash: &str, hash: &str, warehouse: &[WarehouseRecord]) -> Vec<u8> {
    let mut out = Vec::with_capacity(canonical.len() + 200 + 1024 * warehouse.len());
    out.extend_from_slice(EVENT_FRAME_START);
    out.extend_from_slice(b"\"event\":");
    out.extend_from_slice(canonical);
    out.extend_from_slice(b",\"prev_hash\":\"");
    out.extend_from_slice(prev_hash.as_bytes());
    out.extend_from_slice(b"\",\"hash\":\"");
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(b"\",\"warehouse\":");
    // Writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, warehouse);
    out.push(b'}');
    out
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The input ends inside the frame (a torn write).
    Truncated,
    /// Length beyond the bound, CRC mismatch, or a payload that is not a frame.
    Corrupt,
}

/// Decodes one frame from the start of `bytes`: the frame and its length.
pub fn decode_frame(bytes: &[u8]) -> Result<(Frame, usize), FrameError> {
    if bytes.len() < 8 {
        return Err(FrameError::Truncated);
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::Corrupt);
    }
    let end = 8 + len as usize;
    let payload = bytes.get(8..end).ok_or(FrameError::Truncated)?;
    if crc32c::crc32c(payload) != crc {
        return Err(FrameError::Corrupt);
    }
    // Event frames, nearly all of them, as a plain struct: serde reads an
    // internally tagged enum by buffering every member as generic content
    // first, which made reading segments back several times slower.
    let frame = if payload.starts_with(EVENT_FRAME_START) {
        let m: EventMembers = serde_json::from_slice(payload).map_err(|_| FrameError::Corrupt)?;
        Frame::Event {
            event: m.event,
            prev_hash: m.prev_hash,
            hash: m.hash,
            warehouse: m.warehouse,
        }
    } else {
        serde_json::from_slice(payload).map_err(|_| FrameError::Corrupt)?
    };
    Ok((frame, end))
}

/// How every event frame starts: serde writes an internally tagged enum's
/// tag first, and [`event_payload`] does the same.
const EVENT_FRAME_START: &[u8] = b"{\"t\":\"event\",";

/// The members of [`Frame::Event`] (the tag `t` is skipped as unknown).
#[derive(Deserialize)]
struct EventMembers {
    event: AuditEvent,
    prev_hash: String,
    hash: String,
    #[serde(deserialize_with = "one_or_many")]
    warehouse: Vec<WarehouseRecord>,
}

/// A frame's warehouse records: a list, or (frames of earlier versions)
/// one record or `null`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<WarehouseRecord>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Records {
        Many(Vec<WarehouseRecord>),
        One(Option<Box<WarehouseRecord>>),
    }
    Ok(match Records::deserialize(d)? {
        Records::Many(list) => list,
        Records::One(one) => one.into_iter().map(|r| *r).collect(),
    })
}

/// Reads frames from a segment file one at a time.
pub struct FrameReader {
    reader: BufReader<File>,
    pub offset: u64,
}

impl FrameReader {
    pub fn open(path: &Path) -> io::Result<FrameReader> {
        Ok(FrameReader {
            reader: BufReader::new(File::open(path)?),
            offset: 0,
        })
    }

    pub fn seek(&mut self, offset: u64) -> io::Result<()> {
        self.reader.seek(SeekFrom::Start(offset))?;
        self.offset = offset;
        Ok(())
    }

    /// The next whole frame; `Ok(None)` at a clean end, a torn tail or a
    /// corrupt frame (the caller decides whether that is the end).
    pub fn next_frame(&mut self) -> io::Result<Option<(Frame, u64)>> {
        Ok(match self.read_next()? {
            ReadFrame::Frame(frame, at) => Some((frame, at)),
            ReadFrame::End | ReadFrame::Torn | ReadFrame::Corrupt => None,
        })
    }

    /// The next frame, or what stands in its place at `self.offset`.
    pub fn read_next(&mut self) -> io::Result<ReadFrame> {
        let mut head = [0u8; 8];
        match read_full(&mut self.reader, &mut head)? {
            0 => return Ok(ReadFrame::End),
            8 => {}
            _ => return Ok(ReadFrame::Torn),
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if len > MAX_FRAME_BYTES {
            return Ok(ReadFrame::Corrupt);
        }
        let mut buf = vec![0u8; 8 + len as usize];
        buf[..8].copy_from_slice(&head);
        if read_full(&mut self.reader, &mut buf[8..])? != len as usize {
            return Ok(ReadFrame::Torn);
        }
        match decode_frame(&buf) {
            Ok((frame, n)) => {
                let at = self.offset;
                self.offset += n as u64;
                Ok(ReadFrame::Frame(frame, at))
            }
            Err(_) => Ok(ReadFrame::Corrupt),
        }
    }
}

/// What a reader found at its offset.
#[allow(clippy::large_enum_variant)] // short-lived, as `Frame`
pub enum ReadFrame {
    Frame(Frame, u64),
    /// A clean end of the file.
    End,
    /// The file ends inside a frame: an interrupted write.
    Torn,
    /// A frame that fails its length bound, checksum or decoding.
    Corrupt,
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// What reading a journal directory found, changing nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Examined {
    pub head_seq: u64,
    pub head_hash: [u8; 32],
    pub first_seq: u64,
    pub last_checkpoint_seq: u64,
    /// Segments, frames and bytes read.
    pub segments: usize,
    pub events: u64,
    /// An interrupted write at the very end of the last segment: the only
    /// thing opening may cut (segment, where the whole frames end, length).
    pub torn_tail: Option<(PathBuf, u64, u64)>,
    /// The first damaged frame, if any: the journal does not open then.
    pub damage: Option<Damage>,
}

/// A frame that is not what the writer wrote: opening stops on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub segment: PathBuf,
    pub offset: u64,
    pub what: String,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at byte {}: {}",
            self.segment.display(),
            self.offset,
            self.what
        )
    }
}

/// Reads the journal in `dir` and says where the chain stands, where a
/// torn tail is, and where the first damaged frame is.
pub fn examine(dir: &Path) -> anyhow::Result<Examined> {
    let segments = list_segments(dir)?;
    let mut out = Examined {
        head_seq: segments.first().map_or(0, |(first, _)| first - 1),
        head_hash: GENESIS_HASH,
        first_seq: 0,
        last_checkpoint_seq: 0,
        segments: segments.len(),
        events: 0,
        torn_tail: None,
        damage: None,
    };
    out.first_seq = out.head_seq + 1;
    let mut hash_known = out.head_seq == 0;
    for (i, (first, path)) in segments.iter().enumerate() {
        let last_segment = i + 1 == segments.len();
        let limit = segments.get(i + 1).map_or(u64::MAX, |(next, _)| *next);
        let damage = |offset: u64, what: String| Damage {
            segment: path.clone(),
            offset,
            what,
        };
        if *first != out.head_seq + 1 {
            out.damage = Some(damage(
                0,
                format!(
                    "the segment starts at sequence {first}, but the chain continues at {}: segments are missing",
                    out.head_seq + 1
                ),
            ));
            return Ok(out);
        }
        let mut reader = FrameReader::open(path)?;
        loop {
            let at = reader.offset;
            let frame = match reader.read_next()? {
                ReadFrame::Frame(frame, _) => frame,
                ReadFrame::End => break,
                ReadFrame::Torn if last_segment => {
                    out.torn_tail = Some((path.clone(), at, fs::metadata(path)?.len()));
                    break;
                }
                ReadFrame::Torn => {
                    out.damage = Some(damage(
                        at,
                        "the segment ends inside a frame, and a later segment follows".into(),
                    ));
                    return Ok(out);
                }
                // After a power loss a file system may leave the end of the
                // last segment zero-filled: an interrupted write too.
                ReadFrame::Corrupt if last_segment && zeros_from(path, at)? => {
                    out.torn_tail = Some((path.clone(), at, fs::metadata(path)?.len()));
                    break;
                }
                ReadFrame::Corrupt => {
                    out.damage = Some(damage(
                        at,
                        "the frame fails its checksum or cannot be read (a flipped bit, a bad sector, an edit)".into(),
                    ));
                    return Ok(out);
                }
            };
            match frame {
                Frame::Event {
                    event,
                    prev_hash,
                    hash,
                    ..
                } => {
                    let prev = unhex32(&prev_hash);
                    let linked = event.seq == out.head_seq + 1
                        && event.seq < limit
                        && (!hash_known || prev == Some(out.head_hash))
                        && prev.is_some_and(|p| hex(&chain_hash(&p, &event.canonical())) == hash);
                    if !linked {
                        out.damage = Some(damage(
                            at,
                            format!(
                                "event {} does not continue the chain after event {}",
                                event.seq, out.head_seq
                            ),
                        ));
                        return Ok(out);
                    }
                    out.head_seq = event.seq;
                    out.head_hash = unhex32(&hash).unwrap_or(GENESIS_HASH);
                    out.events += 1;
                    hash_known = true;
                }
                Frame::Checkpoint(cp) => {
                    if cp.seq != out.head_seq || cp.head_hash != hex(&out.head_hash) {
                        out.damage = Some(damage(
                            at,
                            format!("a checkpoint of sequence {} does not match the chain", cp.seq),
                        ));
                        return Ok(out);
                    }
                    out.last_checkpoint_seq = cp.seq;
                }
            }
        }
    }
    Ok(out)
}

/// Whether every byte of `path` from `offset` on is zero.
fn zeros_from(path: &Path, offset: u64) -> io::Result<bool> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = [0u8; 64 * 1024];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(true),
            n if buf[..n].iter().all(|b| *b == 0) => {}
            _ => return Ok(false),
        }
    }
}

/// The command that moves a damaged journal's tail aside.
pub fn salvage_command(dir: &Path) -> String {
    format!("popgate audit journal salvage --dir {}", dir.display())
}

/// Opens the journal in `dir` for writing: only an interrupted write at
/// the very end may be cut; any other damage stops here, with the place
/// and the recovery command, and nothing after it is touched.
pub fn scan(dir: &Path) -> anyhow::Result<ScanResult> {
    fs::create_dir_all(dir)?;
    // Journals written before files were owner-only become so.
    for (_, path) in list_segments(dir)? {
        fs::set_permissions(&path, fs::Permissions::from_mode(FILE_MODE))?;
    }
    let found = examine(dir)?;
    if let Some(damage) = &found.damage {
        anyhow::bail!(
            "the audit journal is damaged: {damage}. popgate does not start on a damaged journal, \
             because the events after this point would be lost. Inspect it with \
             `popgate audit journal inspect --dir {dir}`; `{salvage}` moves the damaged frame and \
             everything after it aside (docs/audit.md, \"A damaged journal\")",
            dir = dir.display(),
            salvage = salvage_command(dir),
        );
    }
    let mut truncated = 0;
    if let Some((path, good_end, len)) = &found.torn_tail {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(*good_end)?;
        f.sync_all()?;
        truncated = len - good_end;
        tracing::warn!(segment = %path.display(), bytes = truncated, "cut an interrupted write at the journal's end");
    }
    Ok(ScanResult {
        head_seq: found.head_seq,
        head_hash: found.head_hash,
        first_seq: found.first_seq,
        truncated_bytes: truncated,
        last_checkpoint_seq: found.last_checkpoint_seq,
    })
}

struct Segment {
    file: File,
    len: u64,
}

struct Writer {
    settings: JournalSettings,
    state: Arc<JournalState>,
    signer: Arc<Signer>,
    head_seq: u64,
    head_hash: [u8; 32],
    segment: Option<Segment>,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    checkpoint_log: Mutex<Option<File>>,
    /// Released when the writer stops.
    _lock: JournalLock,
}

impl Journal {
    /// Locks the journal directory, opens (scanning and repairing) the
    /// journal and starts its writer.
    pub fn open(settings: JournalSettings, signer: Arc<Signer>) -> anyhow::Result<(Journal, ScanResult)> {
        let lock = JournalLock::acquire(&settings.dir)?;
        Journal::open_locked(settings, signer, lock)
    }

    /// As [`Journal::open`], with the directory's lock already taken.
    pub fn open_locked(
        settings: JournalSettings,
        signer: Arc<Signer>,
        lock: JournalLock,
    ) -> anyhow::Result<(Journal, ScanResult)> {
        let scan = scan(&settings.dir)?;
        let epoch = Instant::now();
        let state = Arc::new(JournalState {
            durable_seq: AtomicU64::new(scan.head_seq),
            delivered_seq: AtomicU64::new(scan.first_seq.saturating_sub(1)),
            checkpoint_seq: AtomicU64::new(scan.last_checkpoint_seq),
            last_delivery_ms: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            delivered_checkpoint: AtomicU64::new(0),
            fork: AtomicBool::new(false),
            latest_checkpoint: Mutex::new(None),
            epoch,
            handoff: Mutex::new(Handoff::default()),
        });
        let checkpoint_log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(FILE_MODE)
            .open(settings.dir.join(CHECKPOINT_LOG))
            .ok();
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer = Writer {
            state: state.clone(),
            signer,
            head_seq: scan.head_seq,
            head_hash: scan.head_hash,
            segment: None,
            since_checkpoint: scan.head_seq - scan.last_checkpoint_seq.min(scan.head_seq),
            last_checkpoint: Instant::now(),
            checkpoint_log: Mutex::new(checkpoint_log),
            _lock: lock,
            settings,
        };
        let interval = writer.settings.checkpoint_interval;
        tokio::task::spawn_blocking(move || writer.run(rx));
        tokio::spawn(checkpoint_ticker(tx.downgrade(), interval));
        Ok((Journal { tx, state }, scan))
    }

    /// Appends `event` (its `instance_id`, `seq` and `ts` are set by the
    /// journal) and returns once it is durable.
    pub async fn append(
        &self,
        event: AuditEvent,
        warehouse: Vec<WarehouseRecord>,
    ) -> Result<Appended, JournalError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Append(Box::new(Job {
                event,
                warehouse,
                reply,
            })))
            .await
            .map_err(|_| JournalError::Closed)?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Signs a checkpoint of the current head (if anything was written
    /// since the last one) and waits until it is durable.
    pub async fn checkpoint(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Msg::Checkpoint(done)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// Asks for a checkpoint every `interval`, without keeping the writer alive.
async fn checkpoint_ticker(tx: mpsc::WeakSender<Msg>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(tx) = tx.upgrade() else {
            return;
        };
        let (done, _) = oneshot::channel();
        if tx.send(Msg::Checkpoint(done)).await.is_err() {
            return;
        }
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        loop {
            let mut batch = Vec::new();
            let mut waiting = Vec::new();
            match rx.blocking_recv() {
                Some(Msg::Append(job)) => batch.push(*job),
                Some(Msg::Checkpoint(done)) => waiting.push(done),
                None => {
                    // Every handle is gone: anchor what was written, then stop.
                    let _ = self.write_batch(Vec::new(), true);
                    return;
                }
            }
            let mut take_queued = |batch: &mut Vec<Job>, waiting: &mut Vec<oneshot::Sender<()>>| {
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(Msg::Append(job)) => batch.push(*job),
                        Ok(Msg::Checkpoint(done)) => waiting.push(done),
                        Err(_) => break,
                    }
                }
            };
            take_queued(&mut batch, &mut waiting);
            // A small batch lets the request workers go first, once: where
            // the writer shares a core with them, they finish what they were
            // doing and their appends join this batch instead of each
            // waiting for an `fdatasync` of its own. Where a core is free,
            // this returns at once.
            if batch.len() < SMALL_BATCH {
                std::thread::yield_now();
                take_queued(&mut batch, &mut waiting);
            }
            let due = !waiting.is_empty()
                || self.since_checkpoint + batch.len() as u64 >= self.settings.checkpoint_every
                || self.last_checkpoint.elapsed() >= self.settings.checkpoint_interval;
            let _ = self.write_batch(batch, due);
            for done in waiting {
                let _ = done.send(());
            }
        }
    }

    fn refuse_for_backlog(&self) -> bool {
        let s = &self.state;
        s.backlog() >= self.settings.max_backlog_events || s.backlog_age() > self.settings.max_backlog_age
    }

    fn write_batch(&mut self, batch: Vec<Job>, checkpoint_due: bool) -> Result<(), ()> {
        if !batch.is_empty() && self.refuse_for_backlog() {
            tracing::error!(
                backlog = self.state.backlog(),
                "audit backlog over its limit: failing closed"
            );
            for job in batch {
                let _ = job.reply.send(Err(JournalError::BacklogFull));
            }
            return Err(());
        }
        let mut buf = Vec::with_capacity(batch.len() * 2048);
        let mut seq = self.head_seq;
        let mut hash = self.head_hash;
        let mut replies = Vec::with_capacity(batch.len());
        let mut shippable = Vec::with_capacity(batch.len() + 1);
        let now = time::OffsetDateTime::now_utc();
        let ts = now
            .format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
            ))
            .unwrap_or_default();
        for job in batch {
            seq += 1;
            let mut event = job.event;
            event.seq = seq;
            event.instance_id.clone_from(&self.settings.instance_id);
            event.ts.clone_from(&ts);
            let prev = hash;
            let canonical = event.canonical();
            hash = chain_hash(&prev, &canonical);
            let hash_hex = hex(&hash);
            let prev_hash = hex(&prev);
            let payload = event_payload(&canonical, &prev_hash, &hash_hex, &job.warehouse);
            push_frame(&mut buf, &payload);
            replies.push((
                job.reply,
                Appended {
                    seq,
                    hash: hash_hex.clone(),
                },
            ));
            shippable.push(Shippable::Event(Box::new(DurableEvent {
                event,
                canonical,
                prev_hash,
                hash: hash_hex,
                warehouse: job.warehouse,
            })));
        }
        let events = replies.len() as u64;
        let checkpoint = (checkpoint_due && (self.since_checkpoint + events) > 0).then(|| {
            self.signer
                .sign(&self.settings.instance_id, seq, &hex(&hash), &ts)
        });
        if let Some(cp) = &checkpoint {
            let payload = serde_json::to_vec(&Frame::Checkpoint(cp.clone())).unwrap_or_default();
            push_frame(&mut buf, &payload);
            shippable.push(Shippable::Checkpoint(cp.clone()));
        }
        if buf.is_empty() {
            return Ok(());
        }
        match self.write_durably(seq - events + 1, &buf) {
            Ok(()) => {
                self.head_seq = seq;
                self.head_hash = hash;
                self.state.durable_seq.store(seq, Ordering::Release);
                self.state.hand_off(shippable);
                if self.state.degraded.swap(false, Ordering::AcqRel) {
                    tracing::info!("audit journal writable again");
                }
                for (reply, appended) in replies {
                    let _ = reply.send(Ok(appended));
                }
                self.since_checkpoint += events;
                if let Some(cp) = checkpoint {
                    self.state.checkpoint_seq.store(cp.seq, Ordering::Release);
                    if let Ok(mut latest) = self.state.latest_checkpoint.lock() {
                        *latest = Some(cp.clone());
                    }
                    self.since_checkpoint = 0;
                    self.last_checkpoint = Instant::now();
                    self.append_checkpoint_log(&cp);
                }
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "audit journal write failed: refusing to release answers");
                self.state.degraded.store(true, Ordering::Release);
                self.abandon_segment();
                for (reply, _) in replies {
                    let _ = reply.send(Err(JournalError::Unwritable));
                }
                Err(())
            }
        }
    }

    fn write_durably(&mut self, first_seq: u64, bytes: &[u8]) -> io::Result<()> {
        if self
            .settings
            .fail_writes
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected: no space left on device",
            ));
        }
        if self
            .segment
            .as_ref()
            .is_some_and(|s| s.len >= self.settings.segment_bytes)
        {
            self.segment = None;
        }
        if self.segment.is_none() {
            let path = self.settings.dir.join(segment_name(first_seq));
            let file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(FILE_MODE)
                .open(&path)?;
            File::open(&self.settings.dir)?.sync_all()?;
            self.segment = Some(Segment { file, len: 0 });
        }
        let seg = self
            .segment
            .as_mut()
            .ok_or_else(|| io::Error::other("no segment"))?;
        seg.file.write_all(bytes)?;
        seg.file.sync_data()?;
        seg.len += bytes.len() as u64;
        Ok(())
    }

    /// After a failed write: cut the segment back to its last durable frame
    /// (best effort) and never use it again.
    fn abandon_segment(&mut self) {
        if let Some(seg) = self.segment.take() {
            let _ = seg.file.set_len(seg.len);
        }
    }

    fn append_checkpoint_log(&self, cp: &Checkpoint) {
        let Ok(mut guard) = self.checkpoint_log.lock() else {
            return;
        };
        if let Some(file) = guard.as_mut() {
            let line = serde_json::to_string(cp).unwrap_or_default();
            if writeln!(file, "{line}").and_then(|_| file.sync_data()).is_err() {
                tracing::warn!("cannot append to {CHECKPOINT_LOG}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::event::EventKind;

    fn state() -> JournalState {
        JournalState {
            durable_seq: AtomicU64::new(0),
            delivered_seq: AtomicU64::new(0),
            checkpoint_seq: AtomicU64::new(0),
            last_delivery_ms: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            delivered_checkpoint: AtomicU64::new(0),
            fork: AtomicBool::new(false),
            latest_checkpoint: Mutex::new(None),
            epoch: Instant::now(),
            handoff: Mutex::new(Handoff::default()),
        }
    }

    fn event(seq: u64) -> Shippable {
        let event = AuditEvent {
            audit_id: format!("a{seq}"),
            instance_id: "gw".into(),
            request_id: "r".into(),
            seq,
            ..AuditEvent::new(EventKind::Intent, "lookup", "pending")
        };
        Shippable::Event(Box::new(DurableEvent::from_frame(
            event,
            String::new(),
            String::new(),
            Vec::new(),
        )))
    }

    fn checkpoint(seq: u64) -> Shippable {
        Shippable::Checkpoint(Checkpoint {
            instance_id: "gw".into(),
            seq,
            head_hash: String::new(),
            ts: String::new(),
            public_key: String::new(),
            signature: String::new(),
        })
    }

    fn seqs(taken: &(Vec<DurableEvent>, Vec<Checkpoint>)) -> (Vec<u64>, Vec<u64>) {
        (
            taken.0.iter().map(|e| e.event.seq).collect(),
            taken.1.iter().map(|c| c.seq).collect(),
        )
    }

    #[test]
    fn the_shipper_takes_consecutive_frames_from_memory_with_their_checkpoints() {
        let s = state();
        s.hand_off(vec![event(1), event(2), checkpoint(2), event(3), event(4)]);
        let taken = s.take_handoff(0, 3, 0).expect("in memory");
        // The limit counts events; the checkpoint anchoring event 2 comes along.
        assert_eq!(seqs(&taken), (vec![1, 2, 3], vec![2]));
        let taken = s.take_handoff(3, 10, 2).expect("in memory");
        assert_eq!(seqs(&taken), (vec![4], vec![]));
        assert!(s.take_handoff(4, 10, 2).is_none(), "nothing left");
        assert_eq!(s.handoff.lock().expect("lock").bytes, 0);
    }

    #[test]
    fn a_gap_in_memory_sends_the_shipper_to_the_segment_files() {
        let s = state();
        s.hand_off(vec![event(5), event(6)]);
        // The shipper has delivered up to 3: event 4 is only on disk.
        assert!(s.take_handoff(3, 10, 0).is_none());
        // Once the disk read has delivered 4, memory takes over again.
        let taken = s.take_handoff(4, 10, 0).expect("in memory");
        assert_eq!(seqs(&taken), (vec![5, 6], vec![]));
        // Frames the disk read already delivered are dropped, not shipped twice.
        s.hand_off(vec![event(7), event(8), checkpoint(8)]);
        let taken = s.take_handoff(7, 10, 0).expect("in memory");
        assert_eq!(seqs(&taken), (vec![8], vec![8]));
    }

    #[test]
    fn the_hand_written_event_payload_is_what_serde_writes() {
        let Shippable::Event(e) = event(7) else {
            unreachable!("event() builds an event")
        };
        let payload = event_payload(&e.canonical, "aa", "bb", &[]);
        let expected = serde_json::to_vec(&Frame::Event {
            event: e.event.clone(),
            prev_hash: "aa".into(),
            hash: "bb".into(),
            warehouse: Vec::new(),
        })
        .expect("json");
        let reparse = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).expect("json");
        assert_eq!(reparse(&payload), reparse(&expected));
    }

    #[test]
    fn event_frames_decode_on_the_fast_path_as_serde_would() {
        let Shippable::Event(e) = event(7) else {
            unreachable!("event() builds an event")
        };
        let frame = Frame::Event {
            event: e.event.clone(),
            prev_hash: "aa".into(),
            hash: "bb".into(),
            warehouse: Vec::new(),
        };
        let bytes = encode_frame(&frame);
        assert!(
            bytes[8..].starts_with(EVENT_FRAME_START),
            "serde writes the tag first"
        );
        let (decoded, len) = decode_frame(&bytes).expect("decodes");
        assert_eq!(len, bytes.len());
        assert!(matches!(decoded, Frame::Event { .. }));
        let generic: Frame = serde_json::from_slice(&bytes[8..]).expect("serde");
        let value = |f: &Frame| serde_json::to_value(f).expect("json");
        assert_eq!(value(&decoded), value(&generic));
        // A frame that claims to be an event but is not one is still corrupt.
        let mut bad = Vec::new();
        push_frame(&mut bad, b"{\"t\":\"event\",\"hash\":\"bb\"}");
        assert_eq!(decode_frame(&bad).err(), Some(FrameError::Corrupt));
    }

    #[test]
    fn past_its_memory_bound_the_handoff_keeps_nothing_new() {
        let s = state();
        let big = (1..=100_000).map(event).collect::<Vec<_>>();
        s.hand_off(big);
        assert!(s.handoff.lock().expect("lock").frames.is_empty());
        assert!(s.take_handoff(0, 10, 0).is_none());
    }
}
