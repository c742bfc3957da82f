//! The journal directory as opening finds it: the lock that gives it to
//! one process, and the scan that says where the chain stands, what may be
//! cut (an interrupted write at the very end, nothing else) and where the
//! first damage is.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::event::{chain_hash, hex, unhex32, GENESIS_HASH};
use super::frame::{list_segments, Frame, FrameReader, ReadFrame, MAX_FRAME_BYTES};

/// Who may read the journal: it holds what was released (names, dates of
/// birth, addresses in the warehouse records), so its owner only.
const DIR_MODE: u32 = 0o700;
pub(super) const FILE_MODE: u32 = 0o600;
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
    /// Zeros after the last frame of the last segment (the space it was
    /// prepared with, unused): opening trims them (segment, where the
    /// frames end).
    pub free_tail: Option<(PathBuf, u64)>,
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
        free_tail: None,
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
                ReadFrame::End | ReadFrame::Torn | ReadFrame::Corrupt => match rest_of(path, at)? {
                    Rest::Free => {
                        if last_segment && fs::metadata(path)?.len() > at {
                            out.free_tail = Some((path.clone(), at));
                        }
                        break;
                    }
                    Rest::Interrupted if last_segment => {
                        out.torn_tail = Some((path.clone(), at, fs::metadata(path)?.len()));
                        break;
                    }
                    Rest::Interrupted => {
                        out.damage = Some(damage(
                            at,
                            "the segment ends in an interrupted write, and a later segment follows".into(),
                        ));
                        return Ok(out);
                    }
                    Rest::Damaged(what) => {
                        out.damage = Some(damage(at, what));
                        return Ok(out);
                    }
                },
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

/// What follows the last whole frame of a segment.
enum Rest {
    /// Nothing, or only zeros: the file's end, or the space a prepared
    /// segment was written with (or a power loss left zero-filled).
    Free,
    /// What a write cut short leaves.
    Interrupted,
    /// Bytes the writer did not leave there.
    Damaged(String),
}

/// The unit a disk writes whole: a write cut short by a crash leaves
/// whole sectors of it unwritten (zeros, in a prepared segment).
const SECTOR: u64 = 512;

/// Judges the bytes of `path` from `at`, where its frames stop.
fn rest_of(path: &Path, at: u64) -> io::Result<Rest> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(at))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(Rest::Free),
            n if buf[..n].iter().all(|b| *b == 0) => {}
            _ => break,
        }
    }
    // The frame that starts at `at`, and whether the file ends inside it.
    file.seek(SeekFrom::Start(at))?;
    let mut rest = Vec::new();
    file.take(8 + u64::from(MAX_FRAME_BYTES)).read_to_end(&mut rest)?;
    Ok(match interrupted(&rest, at) {
        Ok(()) => Rest::Interrupted,
        Err(what) => Rest::Damaged(what),
    })
}

/// Whether `rest`, the bytes from offset `at` to the end of a segment
/// (some of them not zero), is an interrupted write rather than damage;
/// the damage otherwise. A frame's payload is JSON text, which holds no
/// zero byte, and ends in `}`: a sector of it that reads as zeros was
/// never written, while a flipped bit cannot zero a sector.
fn interrupted(rest: &[u8], at: u64) -> Result<(), String> {
    let Some(head) = rest.get(..8) else {
        // The file ends inside a frame's header.
        return Ok(());
    };
    if head.iter().all(|b| *b == 0) {
        // No header was written here, yet later bytes of the same write
        // were: a disk need not write a write's sectors in order.
        return Ok(());
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if len > MAX_FRAME_BYTES {
        return Err(format!(
            "a frame claims {len} bytes, more than any frame has (a flipped bit, a bad sector, an edit)"
        ));
    }
    let end = 8 + len as usize;
    let payload = &rest[8..end.min(rest.len())];
    if let Some(whole) = shorter_frame(payload, len as usize, crc) {
        return Err(format!(
            "the frame's length says {len} bytes, but its first {whole} pass its checksum: the length is damaged"
        ));
    }
    if rest.len() < end {
        // The file ends inside the frame.
        return Ok(());
    }
    if crc32c::crc32c(payload) == crc {
        return Err("the frame passes its checksum but is not a frame the writer writes".into());
    }
    let mut sector = (at + 8).next_multiple_of(SECTOR);
    while sector < at + end as u64 {
        let from = (sector - at) as usize;
        let to = (from + SECTOR as usize).min(end);
        if rest[from..to].iter().all(|b| *b == 0) {
            return Ok(());
        }
        sector += SECTOR;
    }
    Err("the frame fails its checksum or cannot be read (a flipped bit, a bad sector, an edit)".into())
}

/// The length of the shortest start of `payload`, shorter than the `len`
/// its header claims, that ends in `}` and has the checksum `crc`: a whole
/// frame whose length field was damaged.
fn shorter_frame(payload: &[u8], len: usize, crc: u32) -> Option<usize> {
    let mut sum = 0;
    let mut from = 0;
    for (i, b) in payload.iter().enumerate() {
        if *b == b'}' {
            sum = crc32c::crc32c_append(sum, &payload[from..=i]);
            from = i + 1;
            if sum == crc && i + 1 < len {
                return Some(i + 1);
            }
        }
    }
    None
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
    if let Some((path, end)) = &found.free_tail {
        let f = OpenOptions::new().write(true).open(path)?;
        f.set_len(*end)?;
        f.sync_all()?;
    }
    Ok(ScanResult {
        head_seq: found.head_seq,
        head_hash: found.head_hash,
        first_seq: found.first_seq,
        truncated_bytes: truncated,
        last_checkpoint_seq: found.last_checkpoint_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::super::event::{AuditEvent, EventKind};
    use super::super::frame::{event_payload, push_frame, segment_name};
    use super::*;

    /// The frames of events `first..first + n` continuing the chain from
    /// `prev`, with the offset where each starts; each spans several sectors.
    fn frames(first: u64, n: u64, mut prev: [u8; 32]) -> (Vec<u8>, Vec<usize>, [u8; 32]) {
        let (mut out, mut offsets) = (Vec::new(), Vec::new());
        for seq in first..first + n {
            let event = AuditEvent {
                audit_id: format!("a{seq}"),
                instance_id: "gw".into(),
                request_id: "r".into(),
                seq,
                fields: (0..100).map(|i| format!("field-{i}")).collect(),
                ..AuditEvent::new(EventKind::Intent, "lookup", "pending")
            };
            let canonical = event.canonical();
            let hash = chain_hash(&prev, &canonical);
            offsets.push(out.len());
            push_frame(
                &mut out,
                &event_payload(&canonical, &hex(&prev), &hex(&hash), &[]),
            );
            prev = hash;
        }
        (out, offsets, prev)
    }

    fn journal(segments: &[(u64, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (first, bytes) in segments {
            fs::write(dir.path().join(segment_name(*first)), bytes).expect("write");
        }
        dir
    }

    /// Six whole events, then the space a prepared segment had left.
    fn prepared() -> (Vec<u8>, Vec<usize>) {
        let (mut bytes, offsets, _) = frames(1, 6, GENESIS_HASH);
        assert!(
            offsets[5] + 2 * (SECTOR as usize) < bytes.len(),
            "the last frame spans sectors"
        );
        bytes.resize(bytes.len() + 64 * 1024, 0);
        (bytes, offsets)
    }

    #[test]
    fn the_unused_space_of_a_prepared_segment_ends_its_frames_and_is_trimmed_at_open() {
        let (bytes, _) = prepared();
        let whole = bytes.len() - 64 * 1024;
        let dir = journal(&[(1, &bytes)]);
        let found = examine(dir.path()).expect("examine");
        assert_eq!((found.head_seq, found.events, found.damage), (6, 6, None));
        assert_eq!(found.torn_tail, None, "unused space is not a torn write");
        let opened = scan(dir.path()).expect("opens");
        assert_eq!((opened.head_seq, opened.truncated_bytes), (6, 0));
        let path = dir.path().join(segment_name(1));
        assert_eq!(fs::metadata(&path).expect("segment").len(), whole as u64);
    }

    #[test]
    fn a_write_cut_short_inside_a_prepared_segment_is_cut_at_open() {
        let (mut bytes, offsets) = prepared();
        // The last frame's first sector reached the disk, the rest did not.
        let at = offsets[5];
        let unwritten = (at as u64 + 8).next_multiple_of(SECTOR) as usize;
        bytes[unwritten..].fill(0);
        let dir = journal(&[(1, &bytes)]);
        let found = examine(dir.path()).expect("examine");
        assert_eq!(found.damage, None);
        assert_eq!(found.torn_tail.as_ref().map(|t| t.1), Some(at as u64));
        let opened = scan(dir.path()).expect("opens");
        assert_eq!(opened.head_seq, 5);
        // The disk wrote a later sector of the write before an earlier one.
        let (mut bytes, offsets) = prepared();
        let at = offsets[5];
        bytes[at..at + 8].fill(0);
        let dir = journal(&[(1, &bytes)]);
        assert_eq!(scan(dir.path()).expect("opens").head_seq, 5);
    }

    #[test]
    fn a_flipped_bit_in_the_last_frame_before_unused_space_is_damage() {
        let (mut bytes, offsets) = prepared();
        let at = offsets[5];
        bytes[at + 700] ^= 0x20;
        let dir = journal(&[(1, &bytes)]);
        let found = examine(dir.path()).expect("examine");
        let damage = found.damage.expect("damage");
        assert_eq!(damage.offset, at as u64);
        assert!(damage.what.contains("checksum"), "{}", damage.what);
        assert!(scan(dir.path()).is_err(), "a damaged journal does not open");
        assert_eq!(fs::read(dir.path().join(segment_name(1))).expect("read"), bytes);
    }

    #[test]
    fn a_flipped_bit_in_the_last_frames_length_is_damage_not_a_torn_write() {
        // Without prepared space: the frame now seems to run past the file's end.
        let (mut bytes, offsets, _) = frames(1, 6, GENESIS_HASH);
        let at = offsets[5];
        bytes[at + 2] ^= 0x01;
        let dir = journal(&[(1, &bytes)]);
        let damage = examine(dir.path()).expect("examine").damage.expect("damage");
        assert_eq!(damage.offset, at as u64);
        assert!(damage.what.contains("the length is damaged"), "{}", damage.what);
        // With it: the frame now seems to run into the zeros.
        let (mut bytes, offsets) = prepared();
        bytes[offsets[5] + 1] ^= 0x10;
        let dir = journal(&[(1, &bytes)]);
        let damage = examine(dir.path()).expect("examine").damage.expect("damage");
        assert!(damage.what.contains("the length is damaged"), "{}", damage.what);
    }

    #[test]
    fn a_segment_before_the_last_may_end_in_unused_space_but_not_in_a_torn_write() {
        let (mut first, _, prev) = frames(1, 3, GENESIS_HASH);
        let end = first.len();
        first.resize(end + 8192, 0);
        let (second, _, _) = frames(4, 2, prev);
        let dir = journal(&[(1, &first), (4, &second)]);
        let found = examine(dir.path()).expect("examine");
        assert_eq!((found.head_seq, found.damage), (5, None));
        // Bytes after the zeros: not what the writer leaves before rotating.
        first[end + 4096] = b'x';
        let dir = journal(&[(1, &first), (4, &second)]);
        let damage = examine(dir.path()).expect("examine").damage.expect("damage");
        assert_eq!(damage.offset, end as u64);
        assert!(damage.what.contains("a later segment follows"), "{}", damage.what);
    }
}
