//! The values the WAL stores and returns, and its options.
//!
//! The WAL knows nothing of raft: an [`Entry`] is opaque bytes tagged with an
//! index and a term, a [`HardState`] is three numbers, and a
//! [`SnapshotMarker`] says "everything up to this index lives in a snapshot".

use crate::error::{Error, Result};
use bytes::Bytes;

/// One log entry: opaque `data` (an encoded raft entry) at `index`/`term`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Log index (raft indexes start at 1).
    pub index: u64,
    /// Term of the entry.
    pub term: u64,
    /// Opaque payload.
    pub data: Bytes,
}

/// The persistent raft state besides the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    /// Current term.
    pub term: u64,
    /// Vote in the current term (0 = none).
    pub vote: u64,
    /// Commit index.
    pub commit: u64,
}

/// Records that a snapshot covering the log up to `index` (at `term`) exists:
/// replay drops entries at or below it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMarker {
    /// Last index covered by the snapshot.
    pub index: u64,
    /// Term of that index.
    pub term: u64,
}

/// What one `append` persists. Written in this order: snapshot marker,
/// entries, hard state.
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// Entries, contiguous and ascending by index. An entry whose index is at
    /// or below the last one written replaces the log from that index on.
    pub entries: Vec<Entry>,
    /// The new hard state, if it changed.
    pub hard_state: Option<HardState>,
    /// A new snapshot marker (never older than the previous one).
    pub snapshot: Option<SnapshotMarker>,
}

impl WriteBatch {
    /// True when the batch writes nothing (appending it is a sync barrier).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.hard_state.is_none() && self.snapshot.is_none()
    }
}

/// What to do with a damaged tail on open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Truncate a torn last record (the expected result of a crash during a
    /// write that was never acknowledged), logging what was cut. Damage
    /// followed by valid records is still refused.
    #[default]
    TolerateTailCorruption,
    /// Refuse to open on any damage, even a torn tail.
    AbsoluteConsistency,
}

/// Options for [`Wal::create`](crate::Wal::create) and
/// [`Wal::open`](crate::Wal::open).
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Size a segment is preallocated to; a new segment is cut once the
    /// current one is full (a group commit may overshoot it). Default 64 MiB.
    pub segment_size: u64,
    /// How to treat a damaged tail on open.
    pub recovery_mode: RecoveryMode,
    /// Segments `purge` always keeps, like etcd's `--max-wals`. Default 5;
    /// 0 = unlimited (purge never removes anything).
    pub max_wals: usize,
    /// fdatasync each group commit. Default true; false only for tests and
    /// benches (tickets then complete after the write, without durability).
    pub fsync: bool,
}

/// Smallest accepted `segment_size` (tests use tiny segments).
pub const MIN_SEGMENT_SIZE: u64 = 512;
/// Largest accepted `segment_size`.
pub const MAX_SEGMENT_SIZE: u64 = 1 << 40;

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_size: 64 * 1024 * 1024,
            recovery_mode: RecoveryMode::default(),
            max_wals: 5,
            fsync: true,
        }
    }
}

impl WalOptions {
    /// Checks the options.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return Err(Error::InvalidOptions(format!(
                "segment_size {} is outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}",
                self.segment_size
            )));
        }
        Ok(())
    }
}

/// What [`Wal::open`](crate::Wal::open) replayed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The metadata given to `create`.
    pub metadata: Bytes,
    /// The last hard state written (default if none).
    pub hard_state: HardState,
    /// The newest snapshot marker, if any.
    pub snapshot: Option<SnapshotMarker>,
    /// The live entries after the snapshot marker, contiguous by index.
    pub entries: Vec<Entry>,
}

impl Recovered {
    /// The index of the last entry, or of the snapshot marker when no entry
    /// follows it; 0 for an empty log.
    pub fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map(|e| e.index)
            .or(self.snapshot.map(|s| s.index))
            .unwrap_or(0)
    }

    /// The commit index a restart starts from when the state machine has
    /// durably applied up to `applied`: the recorded one, raised to
    /// `applied` (a commit index learned without a sync may have been
    /// lost, but everything applied was committed) and to the snapshot
    /// marker, and never beyond the last index.
    pub fn commit_index(&self, applied: u64) -> u64 {
        self.hard_state
            .commit
            .max(applied)
            .max(self.snapshot.map_or(0, |s| s.index))
            .min(self.last_index())
    }
}
