//! The MVCC store (etcd's `mvcc` package around `kvstore.go`).
//!
//! Files (no file depends on one listed after it):
//! - `options`: [`StoreOptions`], [`Bucket`];
//! - `events`: the subscriber type and its fan-out;
//! - `compact_state`: the compaction job queue and [`CompactWait`];
//! - `inner`: the state all of the below share (private to this directory);
//! - `hash`, `txn`, `compaction`: hashing, read/write transactions and the
//!   compaction thread, over `inner`;
//! - `store`: [`Store`] (open, compact, maintenance);
//! - `history`, `snapshot`: the event history and snapshot images, as
//!   further `impl Store` blocks.
//!
//! Invariants:
//! - `current_rev` is the main revision of the last committed write
//!   transaction with changes (1 for an empty store). Every revision in the
//!   `key` column family is `<= current_rev`; the key index may hold higher
//!   ones only while a [`TxnWrite`] is open.
//! - `compact_rev <= current_rev`; it only grows, and is changed while
//!   holding the key index write lock, so a reader that checks it under the
//!   read lock sees an index that is consistent with it.
//! - At most one [`TxnWrite`] exists at a time (the `writer` mutex); it is
//!   also held by `compact` and by each chunk of key-index compaction.
//! - `current_rev` is published (Release) only after the transaction's batch
//!   is in the backend; readers load it (Acquire) before taking a backend
//!   snapshot, so a snapshot holds every revision `<=` the revision they read at.
//! - A restore from a snapshot image (`snapshot`) holds the writer
//!   mutex, the restore `gate` and the index write lock for its whole write
//!   phase (lock order: writer, gate, index). Every backend snapshot or read
//!   is taken under the gate or the index read lock, so none sees a
//!   half-restored backend; `epoch` counts restores, and a read pinned to a
//!   snapshot of an earlier epoch re-pins (`txn`).

mod compact_state;
mod compaction;
mod events;
mod hash;
mod history;
mod inner;
mod options;
mod snapshot;
#[cfg(test)]
mod snapshot_tests;
mod store;
#[cfg(test)]
mod tests;
mod txn;

pub use compact_state::CompactWait;
pub use events::EventSink;
pub use hash::HashKv;
pub use history::{History, HistoryBatch};
pub use options::{Bucket, StoreOptions, RANGE_CHUNK_SIZE};
pub use snapshot::ImageExport;
pub use store::{hash_histogram, Store, StoreView};
pub use txn::{KeyRevisions, RangeHeader, RangeOptions, RangeResult, TxnRead, TxnWrite};
