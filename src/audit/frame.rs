//! The journal's on-disk format: segment files of length-prefixed,
//! CRC32C-checked frames, and reading them back one at a time.
//!
//! Frame: `len: u32 LE ‖ crc32c(payload): u32 LE ‖ payload` where the
//! payload is a JSON [`Frame`]. Segment files are named
//! `seg-<first seq, 20 digits>.log`; a segment's frames all have sequence
//! numbers below the next segment's first. A segment may have been written
//! full of zeros before its frames (see [`super::journal`]): eight zero
//! bytes where a header would be end its frames, since no frame has a
//! zero length.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checkpoint::Checkpoint;
use super::event::AuditEvent;
use super::WarehouseRecord;

/// Largest frame accepted when reading (a bound against corrupt lengths).
pub(super) const MAX_FRAME_BYTES: u32 = 4 * 1024 * 1024;

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
pub(super) fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The payload of an event frame, written around the event's canonical
/// bytes so that the event is serialised once: what serde writes for
/// [`Frame::Event`], member for member.
pub(super) fn event_payload(
    canonical: &[u8],
    prev_hash: &str,
    hash: &str,
    warehouse: &[WarehouseRecord],
) -> Vec<u8> {
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
pub(super) const EVENT_FRAME_START: &[u8] = b"{\"t\":\"event\",";

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
            8 if head == [0; 8] => {
                // The zeros of a prepared segment: nothing more yet. Reading
                // on starts here again.
                self.reader.seek(SeekFrom::Start(self.offset))?;
                return Ok(ReadFrame::End);
            }
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
    /// A clean end of the file, or the zero-filled space after the last
    /// frame of a prepared segment.
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
