//! Revision-indexed MVCC key-value store with etcd v3 semantics, on RocksDB
//! (or an in-memory backend for tests: see [`Backend`]).
//!
//! Every committed write transaction with changes gets the next *main
//! revision*; each key keeps its history (create/mod revision, version) so it
//! can be read as of any revision not yet compacted. An in-memory B-tree index
//! maps each key to its generations of revisions (see `key_index`); the
//! values live in the backend keyed by revision. Compaction removes superseded
//! revisions in the background; the raft log is the source of durability
//! (RocksDB's own WAL is off, see `docs/mvcc.md`).
//!
//! Raft snapshots of the state machine: [`Store::export`] streams a
//! checksummed image of the whole store from one backend snapshot, and
//! [`Store::restore`] replaces a store's contents with one, in place and
//! crash-safely (format and protocol in `docs/mvcc.md`, "Snapshot images").
//!
//! Cargo feature `rocksdb` (default): the RocksDB backend and
//! [`Store::open`]. Without it only the in-memory backend exists
//! ([`Store::open_in_memory`], [`MemDisk`]).
//!
//! ```
//! # #[cfg(feature = "rocksdb")] {
//! use etcd_mvcc::{RangeOptions, Store, StoreOptions};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
//! assert_eq!(store.current_revision(), 1);
//!
//! // One write transaction = one revision; its consistent index is stored with it.
//! let mut txn = store.write();
//! txn.put(b"foo", b"bar", 0).unwrap();
//! txn.put(b"foz", b"baz", 0).unwrap();
//! let events = txn.end(1).unwrap();
//! assert_eq!(events.len(), 2);
//! assert_eq!(store.current_revision(), 2);
//!
//! let mut txn = store.write();
//! txn.delete_range(b"foz", b"").unwrap();
//! txn.end(2).unwrap();
//!
//! // All keys with prefix "fo" now, and as of revision 2.
//! let now = store.range(b"fo", b"fp", RangeOptions::default()).unwrap();
//! assert_eq!(now.kvs.len(), 1);
//! assert_eq!(&now.kvs[0].value[..], b"bar");
//! let old = store.range(b"fo", b"fp", RangeOptions { rev: 2, ..Default::default() }).unwrap();
//! assert_eq!(old.count, 2);
//!
//! // Compact history before revision 3.
//! store.compact(3, 3).unwrap().wait();
//! let err = store.range(b"fo", b"fp", RangeOptions { rev: 2, ..Default::default() });
//! assert_eq!(err, Err(etcd_mvcc::Error::Compacted));
//! assert_eq!(store.consistent_index(), 3);
//! # }
//! ```

mod backend;
mod backend_memory;
#[cfg(feature = "rocksdb")]
mod backend_rocksdb;
mod error;
mod index;
mod index_chunk;
mod key_index;
mod kvstore;
mod revision;
mod snapshot_image;

/// The store against a model, for the fuzz targets and tests (test
/// support: `testing` feature; no product build has it).
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fuzzing;
/// Snapshot image decoding and restore, for the fuzz targets and tests
/// (`testing` feature).
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fuzzing_image;

/// Generated protobuf types (etcd's `mvccpb` package).
pub mod pb {
    /// `mvccpb`: KeyValue and Event, wire-compatible with etcd.
    #[allow(clippy::all, missing_docs)]
    pub mod mvccpb {
        include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    }
}

pub use backend::{Backend, BatchOp, Cf, Record, ScanIter, Snapshot, WriteBatch, FORMAT_VERSION};
pub use backend_memory::{MemBackend, MemDisk};
#[cfg(feature = "rocksdb")]
pub use backend_rocksdb::RocksBackend;
pub use error::{Error, Result};
pub use kvstore::{
    hash_histogram, Bucket, CompactWait, EventSink, HashKv, History, HistoryBatch, ImageExport,
    KeyRevisions, RangeHeader, RangeOptions, RangeResult, Store, StoreOptions, StoreView, TxnRead,
    TxnWrite, RANGE_CHUNK_SIZE,
};
pub use pb::mvccpb::{event::EventType, Event, KeyValue};
pub use revision::Revision;
pub use snapshot_image::{
    encode_records, verify_image, ImageInfo, ImageWriter, BLOCK_TARGET, IMAGE_MAGIC, IMAGE_VERSION,
    MAX_BLOCK_LEN,
};
