//! The state a [`Store`](super::Store), its transactions, its compaction
//! thread and its restores share (invariants: the [`kvstore`](super) module
//! doc). Private to the `kvstore` directory.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use prost::Message;

use super::compact_state::CompactState;
use super::events::EventSink;
use super::options::StoreOptions;
use crate::backend::{Backend, Cf};
use crate::error::{Error, Result};
use crate::index::TreeIndex;
use crate::pb::mvccpb::KeyValue;
use crate::revision::Revision;

/// State shared by the store, its transactions and the compaction thread.
pub(super) struct Inner {
    pub(super) backend: Box<dyn Backend>,
    pub(super) index: RwLock<TreeIndex>,
    pub(super) writer: Mutex<()>,
    pub(super) current_rev: AtomicI64,
    pub(super) compact_rev: AtomicI64,
    pub(super) consistent_index: AtomicU64,
    pub(super) compaction: Arc<CompactState>,
    pub(super) shutdown: AtomicBool,
    pub(super) opts: StoreOptions,
    /// Receivers of every committed transaction's events (`history`).
    pub(super) subscribers: RwLock<Vec<EventSink>>,
    /// Held (write) by a restore for its whole write phase; backend reads
    /// that are not under the index read lock take it (read) around taking
    /// their snapshot (see the module doc).
    pub(super) gate: RwLock<()>,
    /// Number of restores from snapshot images so far (changed under the
    /// writer mutex, the gate and the index write lock).
    pub(super) epoch: AtomicU64,
    /// A restore failed half-way (or the store was opened to be restored):
    /// the backend holds a partial state; reads and writes fail with
    /// [`Error::RestoreIncomplete`] until a restore succeeds.
    pub(super) incomplete: AtomicBool,
    /// Time of each transaction's backend write (etcd's
    /// `etcd_disk_backend_commit_duration_seconds`), for `/metrics`.
    pub(super) commit_seconds: prometheus::Histogram,
    /// Time of each [`Store::hash_kv`](super::Store::hash_kv) (etcd's
    /// `etcd_mvcc_hash_rev_duration_seconds`), for `/metrics`.
    pub(super) hash_rev_seconds: prometheus::Histogram,
    /// The size quota checks read on every write (see [`SizeEstimate`]).
    pub(super) size: SizeEstimate,
    /// Live keys attached to leases as the last index rebuild (open or
    /// restore) found them, with the store's revision then: valid while
    /// the revision has not moved, until taken
    /// (`Store::take_lease_attachments`).
    pub(super) rebuilt_leases: Mutex<Option<(i64, LeaseAttachments)>>,
}

/// Live keys attached to leases: (key, lease id).
pub(super) type LeaseAttachments = Vec<(bytes::Bytes, i64)>;

/// The store's size as quota checks read it, twice per write (before
/// proposing and at apply): the backend's exact [`Backend::size`] (RocksDB:
/// two properties of every column family, each under RocksDB's mutex;
/// ~9 % of the CPU of a put when read every time, still ~0.7 % when read
/// every 64 commits) is read again after every
/// [`SizeEstimate::REFRESH_EVERY`] commits, and in between the bytes
/// committed since are added to it. etcd reads bbolt's file size, which
/// also moves only at commits and in steps.
#[derive(Debug)]
pub(super) struct SizeEstimate {
    /// The last exact size.
    base: AtomicU64,
    /// Bytes committed since `base` was read.
    since_bytes: AtomicU64,
    /// Commits since `base` was read (`REFRESH_EVERY` or more: read again).
    since_commits: AtomicU64,
}

impl SizeEstimate {
    /// Commits between two exact reads.
    pub(super) const REFRESH_EVERY: u64 = 1024;

    /// An estimate that reads the exact size first.
    pub(super) fn new() -> SizeEstimate {
        SizeEstimate {
            base: AtomicU64::new(0),
            since_bytes: AtomicU64::new(0),
            since_commits: AtomicU64::new(Self::REFRESH_EVERY),
        }
    }

    /// A batch of `bytes` was committed.
    pub(super) fn committed(&self, bytes: u64) {
        self.since_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.since_commits.fetch_add(1, Ordering::Relaxed);
    }

    /// The size may have changed by more than commits tell (defragment,
    /// restore, compaction): read it exactly next time.
    pub(super) fn invalidate(&self) {
        self.since_commits
            .store(Self::REFRESH_EVERY, Ordering::Relaxed);
    }

    /// The estimate, reading `backend`'s exact size when due. Concurrent
    /// callers may both read it; a commit counted between the read and the
    /// reset is lost to the estimate until the next read (a few bytes low
    /// for at most `REFRESH_EVERY` commits).
    pub(super) fn get(&self, backend: &dyn Backend) -> u64 {
        if self.since_commits.load(Ordering::Relaxed) >= Self::REFRESH_EVERY {
            self.since_commits.store(0, Ordering::Relaxed);
            self.since_bytes.store(0, Ordering::Relaxed);
            self.base.store(backend.size(), Ordering::Relaxed);
        }
        self.base.load(Ordering::Relaxed) + self.since_bytes.load(Ordering::Relaxed)
    }
}

impl Inner {
    /// Fails with [`Error::RestoreIncomplete`] while the store's contents
    /// are partial.
    pub(super) fn check_complete(&self) -> Result<()> {
        if self.incomplete.load(Ordering::Acquire) {
            Err(Error::RestoreIncomplete)
        } else {
            Ok(())
        }
    }
}

impl Inner {
    /// Reads and decodes the stored key-value of `rev` (latest revisions
    /// only: no snapshot needed because they cannot be compacted away).
    pub(super) fn get_kv(&self, key: &[u8], rev: Revision) -> Result<KeyValue> {
        let v = self.backend.get(Cf::Key, &rev.to_bytes())?;
        decode_kv(key, rev, v.as_deref())
    }
}

/// Decodes a stored key-value, checking it belongs to `key`.
pub(super) fn decode_kv(key: &[u8], rev: Revision, v: Option<&[u8]>) -> Result<KeyValue> {
    let v = v.ok_or_else(|| {
        Error::Corruption(format!(
            "revision {}/{} of key {:?} is in the index but not in the backend",
            rev.main,
            rev.sub,
            String::from_utf8_lossy(key)
        ))
    })?;
    let kv = KeyValue::decode(v)
        .map_err(|e| Error::Corruption(format!("undecodable key-value at {rev:?}: {e}")))?;
    if kv.key != key {
        return Err(Error::Corruption(format!(
            "revision {rev:?} holds key {:?}, the index says {:?}",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(key)
        )));
    }
    Ok(kv)
}

/// Builds the key index from the records of the `key` column family, in
/// revision order (at open, and while a restore streams an image in).
#[derive(Default)]
pub(super) struct IndexBuilder {
    pub(super) index: TreeIndex,
    /// The highest main revision added (0 if none).
    pub(super) max_rev: i64,
    /// Live keys attached to a lease, with the lease (the latest record of
    /// each key decides): what the lessor needs at start, gathered here so
    /// that it does not read every key a second time.
    pub(super) leases: std::collections::HashMap<bytes::Bytes, i64>,
}

impl IndexBuilder {
    pub(super) fn add(&mut self, k: &[u8], v: &[u8]) -> Result<()> {
        let (rev, tombstone) = Revision::from_key(k)?;
        let kv = KeyValue::decode(v)
            .map_err(|e| Error::Corruption(format!("undecodable key-value at {rev:?}: {e}")))?;
        assert!(
            rev.main >= self.max_rev,
            "key column family not in revision order"
        );
        self.max_rev = rev.main;
        if kv.lease != 0 && !tombstone {
            self.leases.insert(kv.key.clone(), kv.lease);
        } else if !self.leases.is_empty() {
            self.leases.remove(&kv.key);
        }
        self.index
            .restore(kv.key, rev, tombstone, kv.create_revision, kv.version);
        Ok(())
    }
}
