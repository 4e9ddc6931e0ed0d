//! The storage backend interface (etcd's `backend` package): what the MVCC
//! store needs from an ordered key-value engine, and nothing more.
//!
//! Two implementations:
//! - [`RocksBackend`](crate::RocksBackend) (cargo feature `rocksdb`, on by
//!   default): the real one, one RocksDB column family per [`Cf`];
//! - [`MemBackend`](crate::MemBackend): persistent ordered maps in memory,
//!   with a separate *durable* state that only [`Backend::flush`] updates, so
//!   tests can crash it (see `backend_memory`).
//!
//! Column families (see `docs/mvcc.md` for the byte layouts):
//!
//! | name      | key                                   | value                        |
//! |-----------|---------------------------------------|------------------------------|
//! | `key`     | revision `main:8 BE, sub:8 BE [, 't']`| protobuf `mvccpb.KeyValue`   |
//! | `meta`    | ASCII name (see `META_*`)             | 8 bytes big-endian integer   |
//! | `lease`, `auth`, `members`, `alarm` | owned by upper layers | owned by upper layers |
//!
//! Contract of every implementation:
//! - [`Backend::write`] applies a [`WriteBatch`] atomically: a snapshot, a
//!   read and the durable state contain all of its changes or none.
//! - A [`Snapshot`] is a consistent view of every batch written before it
//!   was taken; later writes never change what it returns.
//! - Durability: writes need not be durable; [`Backend::flush`] makes
//!   everything written so far durable. Whatever the backend persists on its
//!   own (RocksDB flushing full memtables) is a *prefix* of the written
//!   batches. After a crash the store reopens at a prefix, and the
//!   consistent index in `meta` (written in the same batch as each raft
//!   entry's changes) says exactly which one; the raft layer re-applies the
//!   rest (see [`Store::consistent_index`](crate::Store::consistent_index)).

use std::ops::Bound;

use bytes::Bytes;

use crate::error::{Error, Result};

/// A column family of the store (a bbolt bucket in etcd).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cf {
    /// Key revisions: revision -> `mvccpb.KeyValue`.
    Key,
    /// Store metadata (`consistent_index`, compaction revisions, format).
    Meta,
    /// Leases (owned by upper layers).
    Lease,
    /// Users, roles, auth settings (owned by upper layers).
    Auth,
    /// Cluster members (owned by upper layers).
    Members,
    /// Alarms (owned by upper layers).
    Alarm,
}

impl Cf {
    /// Every column family, in a fixed order (`Cf as usize` indexes it).
    pub const ALL: [Cf; 6] = [
        Cf::Key,
        Cf::Meta,
        Cf::Lease,
        Cf::Auth,
        Cf::Members,
        Cf::Alarm,
    ];

    /// The column family's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Key => "key",
            Cf::Meta => "meta",
            Cf::Lease => "lease",
            Cf::Auth => "auth",
            Cf::Members => "members",
            Cf::Alarm => "alarm",
        }
    }
}

/// One change of a [`WriteBatch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Sets `key = value` in `cf`.
    Put {
        /// Column family.
        cf: Cf,
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
    },
    /// Removes `key` from `cf` (no-op if absent).
    Delete {
        /// Column family.
        cf: Cf,
        /// Key.
        key: Vec<u8>,
    },
}

/// Changes across column families, applied atomically by [`Backend::write`]
/// in order (a later change of the same key wins).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<BatchOp>,
}

impl WriteBatch {
    /// Adds `key = value` in `cf`.
    pub fn put(&mut self, cf: Cf, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Put {
            cf,
            key: key.into(),
            value: value.into(),
        });
    }

    /// Adds a delete of `key` in `cf`.
    pub fn delete(&mut self, cf: Cf, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Delete {
            cf,
            key: key.into(),
        });
    }

    /// True without changes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The changes, in order.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    /// Bytes of keys and values the batch writes (deletes count their
    /// key): what it adds to a store's size, give or take the backend's
    /// own overhead.
    pub fn bytes(&self) -> u64 {
        self.ops
            .iter()
            .map(|op| match op {
                BatchOp::Put { key, value, .. } => (key.len() + value.len()) as u64,
                BatchOp::Delete { key, .. } => key.len() as u64,
            })
            .sum()
    }

    /// The changes, in order, by value.
    pub fn into_ops(self) -> Vec<BatchOp> {
        self.ops
    }
}

/// A stored record: (key, value).
pub type Record = (Bytes, Bytes);

/// Forward iterator over the records of a [`Snapshot::scan`].
pub type ScanIter<'a> = Box<dyn Iterator<Item = Result<Record>> + Send + 'a>;

/// A consistent read view: every batch written before it was taken, nothing
/// after. Cheap to take (RocksDB snapshot; in memory, O(1) map clones).
pub trait Snapshot: Send + Sync {
    /// The value of `key` in `cf`.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Bytes>>;

    /// The values of `keys` in `cf`, in the order of `keys` (one batched
    /// lookup where the engine supports it).
    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        keys.iter().map(|k| self.get(cf, k)).collect()
    }

    /// The records of `cf` with `start <= key` and `key < end` (`end` None:
    /// to the last key), in ascending key order. The watch history reads use
    /// it to scan the `key` column family forward from a revision.
    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>) -> ScanIter<'_>;
}

/// An ordered key-value engine with the store's column families.
/// `Send + Sync`: the store shares it between readers, the writer and the
/// compaction thread.
pub trait Backend: Send + Sync {
    /// Applies `batch` atomically (see the module doc: not necessarily durable).
    fn write(&self, batch: WriteBatch) -> Result<()>;

    /// The current value of `key` in `cf` (everything written so far).
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Bytes>>;

    /// A consistent read view of everything written so far.
    fn snapshot(&self) -> Box<dyn Snapshot + '_>;

    /// Makes everything written so far durable (all column families at one
    /// point), and returns when it is.
    fn flush(&self) -> Result<()>;

    /// Reclaims the space of removed records (RocksDB: flush and manual
    /// compaction of every column family). Online: reads and writes continue.
    fn defragment(&self) -> Result<()>;

    /// Bytes the backend occupies (RocksDB: files in its directory).
    fn size(&self) -> u64;

    /// Bytes in use by live data (RocksDB: an estimate).
    fn size_in_use(&self) -> u64;

    /// A short description for logs and `Debug` (e.g. the directory).
    fn describe(&self) -> String;
}

/// `meta` key: index of the last applied raft entry (u64 BE).
pub(crate) const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";
/// `meta` key: the latest scheduled compaction revision (i64 BE).
pub(crate) const META_SCHEDULED_COMPACT: &[u8] = b"scheduled_compact_rev";
/// `meta` key: the latest compaction revision whose physical removal finished (i64 BE).
pub(crate) const META_FINISHED_COMPACT: &[u8] = b"finished_compact_rev";
/// `meta` key: present while a restore from a snapshot image is replacing
/// the store's contents (written first, removed last; see `kvstore::snapshot`).
pub(crate) const META_RESTORING: &[u8] = b"restore_in_progress";
/// `meta` key: on-disk format version (u64 BE).
pub(crate) const META_FORMAT_VERSION: &[u8] = b"format_version";

/// The on-disk format this build writes and understands.
pub const FORMAT_VERSION: u64 = 1;

/// Decodes an 8-byte big-endian `meta` record.
pub(crate) fn meta_u64(b: &dyn Backend, key: &[u8]) -> Result<Option<u64>> {
    match b.get(Cf::Meta, key)? {
        None => Ok(None),
        Some(v) => {
            let a: [u8; 8] = v.as_ref().try_into().map_err(|_| {
                Error::Corruption(format!(
                    "meta record {} has {} bytes, want 8",
                    String::from_utf8_lossy(key),
                    v.len()
                ))
            })?;
            Ok(Some(u64::from_be_bytes(a)))
        }
    }
}

pub(crate) fn meta_i64(b: &dyn Backend, key: &[u8]) -> Result<Option<i64>> {
    Ok(meta_u64(b, key)?.map(|v| v as i64))
}

/// Checks the format version, writing (and flushing) it on a new database.
pub(crate) fn check_format(b: &dyn Backend) -> Result<()> {
    match meta_u64(b, META_FORMAT_VERSION)? {
        Some(v) if v > FORMAT_VERSION => Err(Error::UnsupportedFormat {
            found: v,
            supported: FORMAT_VERSION,
        }),
        Some(_) => Ok(()),
        None => {
            let mut batch = WriteBatch::default();
            batch.put(Cf::Meta, META_FORMAT_VERSION, FORMAT_VERSION.to_be_bytes());
            b.write(batch)?;
            // make the format version durable right away
            b.flush()
        }
    }
}

/// `(start, end)` of a scan as bounds of an ordered map.
pub(crate) fn scan_bounds<'a>(
    start: &'a [u8],
    end: Option<&'a [u8]>,
) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        Bound::Included(start),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    )
}
