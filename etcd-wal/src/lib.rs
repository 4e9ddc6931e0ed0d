//! Write-ahead log for the etcd-compatible store.
//!
//! The WAL knows nothing of raft: it stores opaque [`Entry`] payloads tagged
//! with an index and a term, the last [`HardState`], and [`SnapshotMarker`]s,
//! in segment files protected by a chained crc32c. One writer thread batches
//! concurrent appends into one write and one fdatasync (group commit).
//! Opening replays the log, repairs a torn tail left by a crash, and refuses
//! damage anywhere else with [`Error::Corruption`] naming file and offset.
//! The on-disk format and the rules are in `docs/wal.md`.
//!
//! ```
//! use etcd_wal::{Entry, HardState, Wal, WalOptions, WriteBatch};
//!
//! # fn main() -> etcd_wal::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let wal_dir = dir.path().join("member/wal");
//! let wal = Wal::create(&wal_dir, WalOptions::default(), b"node=1,cluster=7")?;
//!
//! // Queue a batch; the ticket completes once it is durable.
//! let ticket = wal.append(WriteBatch {
//!     entries: vec![
//!         Entry { index: 1, term: 1, data: "put a=1".into() },
//!         Entry { index: 2, term: 1, data: "put b=2".into() },
//!     ],
//!     hard_state: Some(HardState { term: 1, vote: 1, commit: 1 }),
//!     snapshot: None,
//! })?;
//! ticket.wait()?;
//!
//! // A new leader overwrites index 2.
//! wal.append_sync(WriteBatch {
//!     entries: vec![Entry { index: 2, term: 2, data: "put c=3".into() }],
//!     ..Default::default()
//! })?;
//! wal.close()?;
//!
//! let (wal, recovered) = Wal::open(&wal_dir, WalOptions::default())?;
//! assert_eq!(&recovered.metadata[..], b"node=1,cluster=7");
//! assert_eq!(recovered.hard_state, HardState { term: 1, vote: 1, commit: 1 });
//! let terms: Vec<(u64, u64)> = recovered.entries.iter().map(|e| (e.index, e.term)).collect();
//! assert_eq!(terms, [(1, 1), (2, 2)]);
//! wal.close()?;
//! # Ok(())
//! # }
//! ```

mod error;
pub mod etcd_decoder;
mod fs;
/// Entry points of the fuzz targets (test support: `testing` feature).
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fuzzing;
mod log_index;
#[cfg(any(test, feature = "testing"))]
mod mem_fs;
mod metrics;
mod record;
mod replay;
mod segment;
mod snap;
mod types;
mod wal;
mod writer;

pub use error::{Error, Result};
pub use metrics::{WalMetrics, FSYNC_DURATION_BUCKETS};
pub use snap::Snapshotter;
pub use types::{
    Entry, HardState, Recovered, RecoveryMode, SnapshotMarker, WalOptions, WriteBatch,
    MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE,
};
pub use wal::{Wal, WalMetricsReader};
pub use writer::Ticket;

/// The file-system seam and the fault-injecting in-memory file system, for
/// crash tests (`testing` feature; no product build has it). Not a stable
/// API.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing {
    pub use crate::fs::{DirLock, FileSystem, RealFs, WalFile};
    pub use crate::mem_fs::{CrashKeep, MemFs};
}
