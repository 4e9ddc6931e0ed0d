//! Segment files: naming, creation and scanning.
//!
//! A WAL directory holds segments named `<seq:016x>-<first_index:016x>.wal`.
//! `seq` counts up from 0 without gaps (purge removes only the oldest);
//! `first_index` is one past the last log index written before the segment
//! was cut (0 for the first segment), so every live entry of a segment is
//! below the next segment's `first_index`, which is what purge relies on.
//!
//! Each segment begins with a preamble: a segment-header record (whose
//! `prev_crc` continues the crc chain of the previous segment), the metadata
//! record, and, if any, the newest snapshot marker and hard state, so that
//! replay can start at any segment once older ones are purged.
//!
//! A segment is born complete: it is written as `<name>.tmp`, preallocated,
//! given its preamble, fsynced, renamed into place and the directory fsynced.
//! Before the next one is cut, the previous one is truncated to its used
//! length and fsynced. So only the last segment can have a torn tail, and a
//! leftover `.tmp` file is garbage from a crash during a cut.
//!
//! Scanning (see [`scan`]) decides, at the first record that does not
//! verify, between three outcomes:
//! - the rest of the file is zeros: the clean end (preallocated space);
//! - some valid record follows: damage before the tail, refused;
//! - nothing valid follows: a torn tail, repaired only in the last segment
//!   and only under `RecoveryMode::TolerateTailCorruption`.

use crate::fs::{FileSystem, WalFile};
use crate::record::{self, decode_at, DecodeError, Record, ALIGN};
use crate::types::{HardState, RecoveryMode, SnapshotMarker};
use std::io;
use std::path::{Path, PathBuf};

/// Suffix of a segment file.
pub(crate) const SEGMENT_EXT: &str = ".wal";
/// Suffix of a segment being created.
pub(crate) const TMP_EXT: &str = ".tmp";

/// A segment file in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SegmentInfo {
    pub seq: u64,
    pub first_index: u64,
    pub path: PathBuf,
}

pub(crate) fn segment_file_name(seq: u64, first_index: u64) -> String {
    format!("{seq:016x}-{first_index:016x}{SEGMENT_EXT}")
}

/// Parses `<seq:016x>-<first_index:016x>.wal`.
pub(crate) fn parse_segment_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SEGMENT_EXT)?;
    let (a, b) = stem.split_once('-')?;
    let hex = |s: &str| {
        if s.len() == 16 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
            u64::from_str_radix(s, 16).ok()
        } else {
            None
        }
    };
    Some((hex(a)?, hex(b)?))
}

/// Segments in `dir` sorted by seq, and leftover temporary files.
pub(crate) fn list_segments(
    fs: &dyn FileSystem,
    dir: &Path,
) -> io::Result<(Vec<SegmentInfo>, Vec<PathBuf>)> {
    let mut segs = Vec::new();
    let mut tmps = Vec::new();
    for name in fs.list(dir)? {
        if let Some((seq, first_index)) = parse_segment_name(&name) {
            segs.push(SegmentInfo {
                seq,
                first_index,
                path: dir.join(&name),
            });
        } else if name
            .strip_suffix(TMP_EXT)
            .and_then(parse_segment_name)
            .is_some()
        {
            tmps.push(dir.join(&name));
        }
    }
    segs.sort_by_key(|s| s.seq);
    Ok((segs, tmps))
}

/// What a new segment starts with.
pub(crate) struct Preamble<'a> {
    pub seq: u64,
    pub first_index: u64,
    pub prev_crc: u32,
    pub metadata: &'a [u8],
    pub snapshot: Option<SnapshotMarker>,
    pub hard_state: Option<HardState>,
}

/// A freshly created segment.
pub(crate) struct NewSegment {
    pub file: Box<dyn WalFile>,
    pub info: SegmentInfo,
    /// Where the next record goes.
    pub offset: u64,
    /// crc of the last preamble record.
    pub last_crc: u32,
}

/// Creates a complete segment durably (tmp file, preallocate, preamble,
/// fsync, rename, fsync dir). Returns the open file and the write offset.
pub(crate) fn create_segment(
    fs: &dyn FileSystem,
    dir: &Path,
    p: &Preamble<'_>,
    segment_size: u64,
) -> io::Result<NewSegment> {
    let name = segment_file_name(p.seq, p.first_index);
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}{TMP_EXT}"));
    let mut buf = Vec::new();
    let mut crc = record::encode_segment_header(&mut buf, p.prev_crc, p.seq, p.first_index);
    crc = record::encode_metadata(&mut buf, crc, p.metadata);
    if let Some(s) = &p.snapshot {
        crc = record::encode_snapshot(&mut buf, crc, s);
    }
    if let Some(hs) = &p.hard_state {
        crc = record::encode_hard_state(&mut buf, crc, hs);
    }
    let mut file = match fs.create_new(&tmp) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs.remove_file(&tmp)?;
            fs.create_new(&tmp)?
        }
        Err(e) => return Err(e),
    };
    file.allocate(segment_size.max(buf.len() as u64))?;
    file.write_all_at(&buf, 0)?;
    file.sync_all()?;
    fs.rename(&tmp, &path)?;
    fs.sync_dir(dir)?;
    Ok(NewSegment {
        file,
        info: SegmentInfo {
            seq: p.seq,
            first_index: p.first_index,
            path,
        },
        offset: buf.len() as u64,
        last_crc: crc,
    })
}

/// The result of scanning one segment's bytes.
#[derive(Debug)]
pub(crate) struct Scan {
    pub seq: u64,
    pub first_index: u64,
    /// `prev_crc` of the segment header record (links to the previous segment).
    pub header_prev_crc: u32,
    /// Records after the segment header, with their offsets.
    pub records: Vec<(u64, Record)>,
    /// crc of the last valid record.
    pub last_crc: u32,
    /// Offset just past the last valid record.
    pub end: u64,
    /// If the bytes from `end` on are a torn tail to cut: why.
    pub torn: Option<String>,
}

/// A refusal: byte offset and reason.
pub(crate) type ScanError = (u64, String);

/// Scans a segment; see the module documentation for the decision rules.
pub(crate) fn scan(bytes: &[u8], is_last: bool, mode: RecoveryMode) -> Result<Scan, ScanError> {
    let hdr = decode_at(bytes, 0).map_err(|e| (0, format!("bad segment header record: {e}")))?;
    let (seq, first_index) = match record::parse(&hdr) {
        Ok(Record::SegmentHeader { seq, first_index }) => (seq, first_index),
        Ok(other) => {
            return Err((
                0,
                format!("first record is not a segment header but {other:?}"),
            ))
        }
        Err(e) => return Err((0, e)),
    };
    let mut out = Scan {
        seq,
        first_index,
        header_prev_crc: hdr.prev_crc,
        records: Vec::new(),
        last_crc: hdr.crc,
        end: hdr.encoded_len as u64,
        torn: None,
    };
    let mut off = hdr.encoded_len;
    loop {
        if off >= bytes.len() {
            out.end = off as u64;
            return Ok(out);
        }
        let err: DecodeError = match decode_at(bytes, off) {
            Ok(raw) => {
                if raw.prev_crc != out.last_crc {
                    return Err((
                        off as u64,
                        format!(
                            "crc chain broken: record links to {:#010x}, the previous record is {:#010x}",
                            raw.prev_crc, out.last_crc
                        ),
                    ));
                }
                let rec = record::parse(&raw).map_err(|e| (off as u64, e))?;
                if matches!(rec, Record::SegmentHeader { .. }) {
                    return Err((off as u64, "segment header record inside a segment".into()));
                }
                out.records.push((off as u64, rec));
                out.last_crc = raw.crc;
                off += raw.encoded_len;
                continue;
            }
            Err(e) => e,
        };
        out.end = off as u64;
        if bytes[off..].iter().all(|&b| b == 0) {
            return Ok(out); // the clean end: unwritten preallocated space
        }
        if let Some(valid) = find_valid_record(bytes, off + ALIGN) {
            return Err((
                off as u64,
                format!(
                    "{err}, yet a valid record follows at offset {valid}: damage before the tail"
                ),
            ));
        }
        if !is_last {
            return Err((
                off as u64,
                format!("{err} in a segment that is not the last"),
            ));
        }
        if mode == RecoveryMode::AbsoluteConsistency {
            return Err((
                off as u64,
                format!("torn tail ({err}); absolute consistency refuses to repair it"),
            ));
        }
        out.torn = Some(err.to_string());
        return Ok(out);
    }
}

/// The first aligned offset at or after `from` holding a self-consistent record.
fn find_valid_record(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len())
        .step_by(ALIGN)
        .find(|&y| decode_at(bytes, y).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = segment_file_name(3, 0x1234);
        assert_eq!(n, "0000000000000003-0000000000001234.wal");
        assert_eq!(parse_segment_name(&n), Some((3, 0x1234)));
        assert_eq!(parse_segment_name("3-4.wal"), None);
        assert_eq!(
            parse_segment_name("0000000000000003-0000000000001234.wal.tmp"),
            None
        );
        assert_eq!(
            parse_segment_name("000000000000000g-0000000000001234.wal"),
            None
        );
    }
}
