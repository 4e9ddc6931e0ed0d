//! Replay: reading every segment back into a [`Recovered`].
//!
//! Rules (see also `log_index`):
//! - segments must have consecutive `seq`s, a header matching their file
//!   name, a crc chain continuing from the previous segment (not checked for
//!   the oldest remaining one, whose predecessor may be purged), and the same
//!   metadata;
//! - an entry at or below the last replayed index truncates the replayed
//!   entries from that index on; an entry past `last + 1` is a gap and an
//!   error; a snapshot marker drops the entries at or below it and must
//!   never move backwards;
//! - at the end, the entries must continue right after the snapshot marker;
//! - only the last segment may end in a torn tail (see `segment::scan`);
//!   replay reports it and `Wal::open` repairs it.

use crate::error::{Error, Result};
use crate::fs::FileSystem;
use crate::log_index::{EntryEffect, LogIndex};
use crate::record::Record;
use crate::segment::{self, SegmentInfo};
use crate::types::{Entry, HardState, Recovered, RecoveryMode, SnapshotMarker};
use bytes::Bytes;
use std::path::{Path, PathBuf};

/// Where the writer continues after replay.
#[derive(Debug)]
pub(crate) struct Tail {
    /// Offset just past the last valid record of the last segment.
    pub end: u64,
    /// crc of the last valid record.
    pub last_crc: u32,
    /// Length of the last segment file.
    pub file_len: u64,
    /// Why the bytes from `end` on must be cut, if they must.
    pub torn: Option<String>,
    /// Bytes from `end` to the last nonzero byte (what a torn tail loses).
    pub damaged_len: u64,
}

/// Everything `Wal::open` needs.
#[derive(Debug)]
pub(crate) struct Replayed {
    pub recovered: Recovered,
    pub segments: Vec<SegmentInfo>,
    pub tail: Tail,
    pub index: LogIndex,
    /// The last hard state record, if any was ever written.
    pub hard_state: Option<HardState>,
}

/// Replays the segments in `dir`.
pub(crate) fn replay(fs: &dyn FileSystem, dir: &Path, mode: RecoveryMode) -> Result<Replayed> {
    let (segments, _tmps) = segment::list_segments(fs, dir)?;
    if segments.is_empty() {
        return Err(Error::NotFound(dir.to_path_buf()));
    }
    for w in segments.windows(2) {
        if w[1].seq != w[0].seq + 1 {
            return Err(Error::corruption(
                &w[1].path,
                0,
                format!(
                    "missing segment: expected seq {:#x} after {:#x}",
                    w[0].seq + 1,
                    w[0].seq
                ),
            ));
        }
    }
    let mut st = State::default();
    let mut chain: Option<u32> = None;
    let mut metadata: Option<Bytes> = None;
    let mut tail = None;
    for (i, seg) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let bytes = fs.read(&seg.path)?;
        let scan = segment::scan(&bytes, is_last, mode)
            .map_err(|(offset, reason)| Error::corruption(&seg.path, offset, reason))?;
        let bad = |offset: u64, reason: String| Error::corruption(&seg.path, offset, reason);
        if (scan.seq, scan.first_index) != (seg.seq, seg.first_index) {
            return Err(bad(
                0,
                format!(
                    "segment header says seq {:#x} first index {:#x}, the file name disagrees",
                    scan.seq, scan.first_index
                ),
            ));
        }
        match chain {
            Some(prev) if prev != scan.header_prev_crc => {
                return Err(bad(
                    0,
                    format!(
                        "crc chain broken across segments: header links to {:#010x}, the previous segment ends with {:#010x}",
                        scan.header_prev_crc, prev
                    ),
                ));
            }
            None if seg.seq == 0 && scan.header_prev_crc != 0 => {
                return Err(bad(
                    0,
                    "the first segment does not start the crc chain".into(),
                ));
            }
            _ => {}
        }
        let mut records = scan.records.into_iter();
        match records.next() {
            Some((off, Record::Metadata(m))) => match &metadata {
                Some(first) if *first != m => {
                    return Err(bad(
                        off,
                        "metadata differs from the earlier segments".into(),
                    ));
                }
                Some(_) => {}
                None => metadata = Some(m),
            },
            Some((off, other)) => {
                return Err(bad(
                    off,
                    format!("expected the metadata record, found {other:?}"),
                ));
            }
            None => return Err(bad(scan.end, "segment has no metadata record".into())),
        }
        for (off, rec) in records {
            st.apply(rec).map_err(|reason| bad(off, reason))?;
        }
        chain = Some(scan.last_crc);
        if is_last {
            tail = Some(Tail {
                end: scan.end,
                last_crc: scan.last_crc,
                file_len: bytes.len() as u64,
                torn: scan.torn,
                damaged_len: bytes
                    .get(scan.end as usize..)
                    .and_then(|rest| rest.iter().rposition(|&b| b != 0))
                    .map_or(0, |p| p as u64 + 1),
            });
        }
    }
    let tail = tail.expect("there is at least one segment");
    if let (Some(s), Some(first)) = (st.snapshot, st.entries.first()) {
        if first.index != s.index + 1 {
            return Err(Error::corruption(
                &segments[0].path,
                0,
                format!(
                    "entries start at {} but the snapshot marker is at {}: entries are missing",
                    first.index, s.index
                ),
            ));
        }
    }
    debug_assert_eq!(
        st.index.live,
        st.entries
            .first()
            .map(|f| (f.index, st.entries.last().map_or(0, |l| l.index)))
    );
    Ok(Replayed {
        recovered: Recovered {
            metadata: metadata.expect("every segment has metadata"),
            hard_state: st.hard_state.unwrap_or_default(),
            snapshot: st.snapshot,
            entries: st.entries,
        },
        segments,
        tail,
        index: st.index,
        hard_state: st.hard_state,
    })
}

#[derive(Default)]
struct State {
    index: LogIndex,
    entries: Vec<Entry>,
    snapshot: Option<SnapshotMarker>,
    hard_state: Option<HardState>,
}

impl State {
    fn apply(&mut self, rec: Record) -> Result<(), String> {
        match rec {
            Record::Entry(e) => {
                self.index.check_replay(e.index)?;
                match self.index.push_entry(e.index) {
                    EntryEffect::Appended => self.entries.push(e),
                    EntryEffect::TruncatedFrom(i) => {
                        let first = self.entries.first().map_or(i, |f| f.index);
                        self.entries.truncate((i - first) as usize);
                        self.entries.push(e);
                    }
                    EntryEffect::ReplacedAll => {
                        self.entries.clear();
                        self.entries.push(e);
                    }
                    EntryEffect::DroppedAll => self.entries.clear(),
                }
            }
            Record::HardState(hs) => self.hard_state = Some(hs),
            Record::Snapshot(m) => {
                if let Some(s) = self.snapshot {
                    if m.index < s.index {
                        return Err(format!(
                            "snapshot marker moves backwards from {} to {}",
                            s.index, m.index
                        ));
                    }
                }
                self.snapshot = Some(m);
                self.index.apply_snapshot(m.index);
                let stale = self.entries.partition_point(|e| e.index <= m.index);
                self.entries.drain(..stale);
            }
            Record::Metadata(_) => return Err("metadata record outside a segment preamble".into()),
            Record::SegmentHeader { .. } => unreachable!("scan rejects headers inside a segment"),
        }
        Ok(())
    }
}

/// Paths of leftover temporary segment files in `dir`.
pub(crate) fn leftover_tmp_files(fs: &dyn FileSystem, dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(segment::list_segments(fs, dir)?.1)
}
