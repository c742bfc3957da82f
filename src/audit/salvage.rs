//! `popgate audit journal inspect|salvage`: what an operator does with a
//! journal that the gateway refuses to open. `inspect` reads and reports;
//! `salvage` moves the damaged frame and everything after it into a
//! quarantine directory beside the segments (nothing is deleted), so that
//! the journal opens again at the last whole event before the damage.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::journal::{examine, list_segments, Damage, Examined, JournalLock};

/// The journal directory named by `dir`: the directory itself, or its
/// `journal/` (a demo directory or a gateway's `data_dir`).
pub fn journal_dir(dir: &Path) -> PathBuf {
    let inner = dir.join("journal");
    let has_segments = |d: &Path| list_segments(d).is_ok_and(|s| !s.is_empty());
    if !has_segments(dir) && inner.is_dir() {
        inner
    } else {
        dir.to_owned()
    }
}

/// What `salvage` moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvaged {
    pub damage: Damage,
    pub quarantine: PathBuf,
    pub bytes: u64,
    /// Whole segments after the damaged one, moved as they were.
    pub later_segments: usize,
    /// The last event still in the journal: the chain continues after it.
    pub head_seq: u64,
}

/// Reads the journal and says what it holds (no change).
pub fn inspect(dir: &Path) -> anyhow::Result<Examined> {
    examine(dir)
}

/// Moves the damaged frame of the journal in `dir` and everything after it
/// into `dir/quarantine-SECONDS/`; `None` when nothing is damaged. Refuses
/// while a gateway holds the journal.
pub fn salvage(dir: &Path) -> anyhow::Result<Option<Salvaged>> {
    let _lock = JournalLock::acquire(dir)?;
    let found = examine(dir)?;
    let Some(damage) = found.damage else {
        return Ok(None);
    };
    let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let quarantine = dir.join(format!("quarantine-{stamp}"));
    fs::create_dir_all(&quarantine)?;
    fs::set_permissions(&quarantine, fs::Permissions::from_mode(0o700))?;
    let name = damage
        .segment
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let bytes =
        fs::read(&damage.segment).with_context(|| format!("cannot read {}", damage.segment.display()))?;
    let cut = usize::try_from(damage.offset)
        .unwrap_or(bytes.len())
        .min(bytes.len());
    let tail = quarantine.join(format!("{name}.from-byte-{}", damage.offset));
    fs::write(&tail, &bytes[cut..])?;
    fs::set_permissions(&tail, fs::Permissions::from_mode(0o600))?;
    fs::File::open(&tail)?.sync_all()?;
    let mut later_segments = 0;
    for (_, path) in list_segments(dir)? {
        if path > damage.segment {
            let to = quarantine.join(path.file_name().unwrap_or_default());
            fs::rename(&path, &to)?;
            later_segments += 1;
        }
    }
    let segment = fs::OpenOptions::new().write(true).open(&damage.segment)?;
    segment.set_len(damage.offset)?;
    segment.sync_all()?;
    fs::File::open(dir)?.sync_all()?;
    let head_seq = examine(dir)?.head_seq;
    Ok(Some(Salvaged {
        damage,
        quarantine,
        bytes: (bytes.len() - cut) as u64,
        later_segments,
        head_seq,
    }))
}
