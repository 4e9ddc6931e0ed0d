//! bbolt files in etcd's layout, read and written without bbolt.
//!
//! etcd keeps its state machine in a bbolt database (`member/snap/db`) and
//! `etcdctl snapshot save` writes a copy of it. This crate is what the
//! server needs to speak that format: a validating [`Reader`] (import of
//! an etcd data directory or snapshot) and a streaming [`Writer`] (the
//! snapshots `Maintenance.Snapshot` sends). It is not a database: no
//! transactions, no updates in place, no freelist; files written have
//! none, as etcd's own on Linux (`NoFreelistSync`).
//!
//! Why our own: the published Rust port of bbolt (`bbolt-rs`) is a whole
//! database built on `mmap` and `unsafe` page casts: unfit to decode
//! untrusted files (a damaged page is undefined behaviour, not an error),
//! and its writes go through transactions that hold every dirty page in
//! memory. Here every read is bounds-checked (and fuzzed: `fuzz/bbolt`),
//! and writing is one pass with a page per tree level in memory.
//!
//! The byte format is in [`format`]. A round trip:
//!
//! ```
//! use etcd_bbolt::{Reader, Writer, DEFAULT_PAGE_SIZE};
//!
//! let file = tempfile::tempfile().unwrap();
//! let mut w = Writer::new(file, DEFAULT_PAGE_SIZE).unwrap();
//! w.begin_bucket(b"key").unwrap();
//! for i in 0u64..10_000 {
//!     w.put(&i.to_be_bytes(), b"value").unwrap();
//! }
//! let (file, written) = w.finish(1).unwrap();
//!
//! let r = Reader::new(file).unwrap();
//! assert_eq!(r.size(), written.size);
//! assert_eq!(r.check().unwrap(), 10_000);
//! ```

mod error;
pub mod format;
mod reader;
mod writer;

pub use error::{Error, Result};
pub use format::{BucketHeader, Meta, DEFAULT_PAGE_SIZE};
pub use reader::{BucketRef, Reader, Source};
pub use writer::{Writer, WrittenFile};
