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
use super::frame::{list_segments, Frame, FrameReader, ReadFrame};

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
