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
        self.index
            .restore(kv.key, rev, tombstone, kv.create_revision, kv.version);
        Ok(())
    }
}
