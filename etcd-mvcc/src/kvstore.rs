//! The MVCC store (etcd's `kvstore.go`): open/restore, revisions, compaction
//! scheduling, auxiliary buckets and maintenance.
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
//! - A restore from a snapshot image (`kvstore_snapshot`) holds the writer
//!   mutex, the restore `gate` and the index write lock for its whole write
//!   phase (lock order: writer, gate, index). Every backend snapshot or read
//!   is taken under the gate or the index read lock, so none sees a
//!   half-restored backend; `epoch` counts restores, and a read pinned to a
//!   snapshot of an earlier epoch re-pins (`kvstore_txn`).

#[cfg(feature = "rocksdb")]
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use prost::Message;

use crate::backend::{
    check_format, meta_i64, meta_u64, Backend, Cf, WriteBatch, META_CONSISTENT_INDEX,
    META_FINISHED_COMPACT, META_RESTORING, META_SCHEDULED_COMPACT,
};
use crate::backend_memory::MemDisk;
use crate::error::{Error, Result};
use crate::hash::{self, HashKv};
use crate::index::TreeIndex;
use crate::kvstore_compaction::{self, CompactState, CompactWait};
use crate::kvstore_txn::{RangeOptions, RangeResult, TxnRead, TxnWrite, RANGE_CHUNK_SIZE};
use crate::pb::mvccpb::KeyValue;
use crate::revision::Revision;

/// Options of [`Store::open`].
///
/// `Default` gives etcd's defaults: batches of 1000 revisions, 10 ms pause
/// between compaction batches; ranges read in chunks of
/// [`RANGE_CHUNK_SIZE`] keys.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Maximum number of revisions (or keys, for the in-memory index) handled
    /// per compaction batch. 0 is treated as 1.
    pub compaction_batch_limit: usize,
    /// Pause between two physical compaction batches, so that compaction
    /// never competes with writers for long.
    pub compaction_sleep_interval: Duration,
    /// Maximum number of key-values a range fetches and hands over at once
    /// (see [`TxnRead::range_chunks`]). 0 is treated as 1.
    pub range_chunk_size: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            compaction_batch_limit: 1000,
            compaction_sleep_interval: Duration::from_millis(10),
            range_chunk_size: RANGE_CHUNK_SIZE,
        }
    }
}

/// Auxiliary column families owned by upper layers; their changes are
/// written in the same backend batch as the key changes of a [`TxnWrite`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Leases (`lease` column family).
    Lease,
    /// Users, roles, auth settings (`auth` column family).
    Auth,
    /// Cluster members (`members` column family).
    Members,
    /// Alarms (`alarm` column family).
    Alarm,
}

impl Bucket {
    pub(crate) fn cf(self) -> Cf {
        match self {
            Bucket::Lease => Cf::Lease,
            Bucket::Auth => Cf::Auth,
            Bucket::Members => Cf::Members,
            Bucket::Alarm => Cf::Alarm,
        }
    }
}

/// State shared by the store, its transactions and the compaction thread.
pub(crate) struct Inner {
    pub(crate) backend: Box<dyn Backend>,
    pub(crate) index: RwLock<TreeIndex>,
    pub(crate) writer: Mutex<()>,
    pub(crate) current_rev: AtomicI64,
    pub(crate) compact_rev: AtomicI64,
    pub(crate) consistent_index: AtomicU64,
    pub(crate) compaction: Arc<CompactState>,
    pub(crate) shutdown: AtomicBool,
    pub(crate) opts: StoreOptions,
    /// Receivers of every committed transaction's events (`kvstore_history`).
    pub(crate) subscribers: RwLock<Vec<crate::kvstore_history::EventSink>>,
    /// Held (write) by a restore for its whole write phase; backend reads
    /// that are not under the index read lock take it (read) around taking
    /// their snapshot (see the module doc).
    pub(crate) gate: RwLock<()>,
    /// Number of restores from snapshot images so far (changed under the
    /// writer mutex, the gate and the index write lock).
    pub(crate) epoch: AtomicU64,
    /// A restore failed half-way (or the store was opened to be restored):
    /// the backend holds a partial state; reads and writes fail with
    /// [`Error::RestoreIncomplete`] until a restore succeeds.
    pub(crate) incomplete: AtomicBool,
}

impl Inner {
    /// Fails with [`Error::RestoreIncomplete`] while the store's contents
    /// are partial.
    pub(crate) fn check_complete(&self) -> Result<()> {
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
    pub(crate) fn get_kv(&self, key: &[u8], rev: Revision) -> Result<KeyValue> {
        let v = self.backend.get(Cf::Key, &rev.to_bytes())?;
        decode_kv(key, rev, v.as_deref())
    }
}

/// Decodes a stored key-value, checking it belongs to `key`.
pub(crate) fn decode_kv(key: &[u8], rev: Revision, v: Option<&[u8]>) -> Result<KeyValue> {
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

/// A revision-indexed MVCC key-value store on a [`Backend`] (RocksDB, or in
/// memory). `Send + Sync`: share it with `Arc`. Dropping it stops the
/// compaction thread (an unfinished compaction resumes at the next open) and
/// flushes the backend.
pub struct Store {
    pub(crate) inner: Arc<Inner>,
    compactor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.inner.backend.describe())
            .field("current_revision", &self.current_revision())
            .field("compact_revision", &self.compact_revision())
            .field("consistent_index", &self.consistent_index())
            .finish()
    }
}

impl Store {
    /// Opens (or creates) the store in a RocksDB database in `dir`, rebuilds
    /// the key index from the `key` column family and resumes an unfinished
    /// compaction.
    #[cfg(feature = "rocksdb")]
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<Store> {
        let backend = crate::backend_rocksdb::RocksBackend::open(dir)?;
        Store::open_with(Box::new(backend), opts)
    }

    /// A new, empty store in memory (nothing survives it; for tests). To
    /// reopen or crash an in-memory store, open it on a [`MemDisk`] with
    /// [`open_with`](Self::open_with)`(Box::new(disk.backend()), opts)`.
    pub fn open_in_memory(opts: StoreOptions) -> Result<Store> {
        Store::open_with(Box::new(MemDisk::new().backend()), opts)
    }

    /// Opens the store on `backend`: checks the format version, rebuilds the
    /// key index from the `key` column family and resumes an unfinished
    /// compaction.
    ///
    /// Fails with [`Error::RestoreIncomplete`] if a restore from a snapshot
    /// image was interrupted (see [`Store::restore`]); recover with
    /// [`open_with_to_restore`](Self::open_with_to_restore) and `restore`.
    pub fn open_with(backend: Box<dyn Backend>, opts: StoreOptions) -> Result<Store> {
        if backend.get(Cf::Meta, META_RESTORING)?.is_some() {
            tracing::error!(
                backend = %backend.describe(),
                "mvcc store holds an interrupted restore from a snapshot image"
            );
            return Err(Error::RestoreIncomplete);
        }
        check_format(&*backend)?;
        let consistent_index = meta_u64(&*backend, META_CONSISTENT_INDEX)?.unwrap_or(0);
        // -1 until the first compaction, like etcd's compactMainRev: so
        // `compact(0)` on a never compacted store succeeds once, as in etcd.
        let scheduled = meta_i64(&*backend, META_SCHEDULED_COMPACT)?.unwrap_or(-1);
        let finished = meta_i64(&*backend, META_FINISHED_COMPACT)?.unwrap_or(-1);
        if finished > scheduled {
            return Err(Error::Corruption(format!(
                "finished compaction revision {finished} is above the scheduled one {scheduled}"
            )));
        }

        let (index, max_rev) = restore_index(&*backend)?;
        // All revisions may have been compacted away: the compaction revision
        // is then the best lower bound of the current revision (like etcd).
        let current = max_rev.max(scheduled).max(1);
        tracing::info!(
            backend = %backend.describe(),
            current_revision = current,
            compact_revision = scheduled,
            finished_compact_revision = finished,
            consistent_index,
            keys = index.len(),
            "mvcc store opened"
        );

        let store = Store::start(
            backend,
            index,
            current,
            scheduled,
            finished,
            consistent_index,
            opts,
        )?;
        if scheduled > finished {
            tracing::info!(revision = scheduled, "resuming unfinished compaction");
            store.inner.compaction.schedule(scheduled);
        }
        Ok(store)
    }

    /// The store over an opened backend and its rebuilt state.
    pub(crate) fn start(
        backend: Box<dyn Backend>,
        index: TreeIndex,
        current: i64,
        scheduled: i64,
        finished: i64,
        consistent_index: u64,
        opts: StoreOptions,
    ) -> Result<Store> {
        let inner = Arc::new(Inner {
            backend,
            index: RwLock::new(index),
            writer: Mutex::new(()),
            current_rev: AtomicI64::new(current),
            compact_rev: AtomicI64::new(scheduled),
            consistent_index: AtomicU64::new(consistent_index),
            compaction: Arc::new(CompactState::new(finished)),
            shutdown: AtomicBool::new(false),
            opts,
            subscribers: RwLock::new(Vec::new()),
            gate: RwLock::new(()),
            epoch: AtomicU64::new(0),
            incomplete: AtomicBool::new(false),
        });
        let compactor = kvstore_compaction::spawn(inner.clone())?;
        Ok(Store {
            inner,
            compactor: Some(compactor),
        })
    }

    /// The revision of the last committed change (1 for an empty store).
    pub fn current_revision(&self) -> i64 {
        self.inner.current_rev.load(Ordering::Acquire)
    }

    /// The scheduled compaction revision, -1 if never compacted (etcd's
    /// `compactMainRev`).
    pub fn compact_revision(&self) -> i64 {
        self.inner.compact_rev.load(Ordering::Acquire)
    }

    /// The compaction revision whose physical removal has finished.
    pub fn finished_compact_revision(&self) -> i64 {
        self.inner.compaction.finished()
    }

    /// Index of the last raft entry applied (persisted in the same batch as
    /// its changes).
    pub fn consistent_index(&self) -> u64 {
        self.inner.consistent_index.load(Ordering::Acquire)
    }

    /// Number of keys in the in-memory index (live or with uncompacted history).
    pub fn index_len(&self) -> usize {
        self.inner.index.read().len()
    }

    /// Heap bytes held by the in-memory key index (keys, histories and the
    /// tree of chunks), computed from the structures' capacities; the only
    /// estimated part is the B-tree of chunks (a few bytes per key). See
    /// `docs/mvcc.md` for the layout. Takes the index read lock for one pass
    /// over the chunks and their histories (no key decoding; linear in the
    /// number of keys).
    pub fn index_bytes(&self) -> u64 {
        self.inner.index.read().heap_bytes() as u64
    }

    /// A read transaction pinned at the current revision (a consistent view:
    /// later writes are invisible to it).
    pub fn read(&self) -> TxnRead<'_> {
        TxnRead::new(&self.inner)
    }

    /// `read().range(key, end, opts)`.
    pub fn range(&self, key: &[u8], end: &[u8], opts: RangeOptions) -> Result<RangeResult> {
        self.read().range(key, end, opts)
    }

    /// Starts the write transaction. Exclusive: blocks while another
    /// [`TxnWrite`] is open (do not call it, nor [`compact`](Self::compact),
    /// from the thread holding one).
    pub fn write(&self) -> TxnWrite<'_> {
        TxnWrite::new(&self.inner)
    }

    /// Records `rev` as the scheduled compaction revision (durably, together
    /// with `consistent_index`) and starts removing superseded revisions
    /// `<= rev` in bounded background batches (not blocking reads/writes).
    /// Reads below `rev` fail with [`Error::Compacted`] from now on.
    ///
    /// Errors: [`Error::Compacted`] if `rev <= compact_revision()`,
    /// [`Error::FutureRevision`] if `rev > current_revision()`; in these cases
    /// nothing is written (record the consistent index with an empty
    /// `write().end(ci)` if needed).
    pub fn compact(&self, rev: i64, consistent_index: u64) -> Result<CompactWait> {
        let inner = &self.inner;
        let _writer = inner.writer.lock();
        inner.check_complete()?;
        if rev <= inner.compact_rev.load(Ordering::Acquire) {
            return Err(Error::Compacted);
        }
        if rev > inner.current_rev.load(Ordering::Acquire) {
            return Err(Error::FutureRevision);
        }
        let mut batch = WriteBatch::default();
        batch.put(Cf::Meta, META_SCHEDULED_COMPACT, rev.to_be_bytes());
        batch.put(
            Cf::Meta,
            META_CONSISTENT_INDEX,
            consistent_index.to_be_bytes(),
        );
        inner.backend.write(batch)?;
        {
            let _index = inner.index.write();
            inner.compact_rev.store(rev, Ordering::Release);
        }
        inner
            .consistent_index
            .store(consistent_index, Ordering::Release);
        inner.compaction.schedule(rev);
        Ok(CompactWait::new(inner.compaction.clone(), rev))
    }

    /// Hash of all key-value revisions `<= rev` (0: current) that survive
    /// compaction; equal on members with equal history (like etcd's HashKV).
    pub fn hash_kv(&self, rev: i64) -> Result<HashKv> {
        hash::hash_kv(&self.inner, rev)
    }

    /// Bytes the backend occupies (RocksDB: files in the database directory).
    pub fn db_size(&self) -> u64 {
        self.inner.backend.size()
    }

    /// Live bytes (RocksDB: estimated live SST data plus memtables).
    pub fn db_size_in_use(&self) -> u64 {
        self.inner.backend.size_in_use()
    }

    /// Reclaims space (RocksDB: flush and manual compaction of every column
    /// family). Online: reads and writes continue meanwhile.
    pub fn defragment(&self) -> Result<()> {
        self.inner.backend.defragment()
    }

    /// Reads a record of an auxiliary bucket (committed data only).
    pub fn aux_get(&self, b: Bucket, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let _gate = self.inner.gate.read();
        self.inner.check_complete()?;
        Ok(self.inner.backend.get(b.cf(), key)?.map(|v| v.to_vec()))
    }

    /// All records of an auxiliary bucket, sorted by key.
    pub fn aux_scan(&self, b: Bucket) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let snap = {
            let _gate = self.inner.gate.read();
            self.inner.check_complete()?;
            self.inner.backend.snapshot()
        };
        snap.scan(b.cf(), &[], None)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect()
    }

    /// Makes everything applied so far durable (RocksDB: flushes the
    /// memtables of all column families atomically). Call it before
    /// truncating the raft log up to [`consistent_index`](Self::consistent_index).
    pub fn flush(&self) -> Result<()> {
        self.inner.backend.flush()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.inner.shutdown.store(true, Ordering::Release);
        self.inner.compaction.shutdown();
        if let Some(h) = self.compactor.take() {
            if h.join().is_err() {
                tracing::error!("mvcc compaction thread panicked");
            }
        }
        if let Err(e) = self.inner.backend.flush() {
            tracing::error!(error = %e, "mvcc: flush at close failed");
        }
    }
}

/// Rebuilds the key index by scanning the `key` column family in revision
/// order; returns it with the highest stored main revision (0 if none).
fn restore_index(b: &dyn Backend) -> Result<(TreeIndex, i64)> {
    let mut builder = IndexBuilder::default();
    let snap = b.snapshot();
    for item in snap.scan(Cf::Key, &[], None) {
        let (k, v) = item?;
        builder.add(&k, &v)?;
    }
    Ok((builder.index, builder.max_rev))
}

/// Builds the key index from the records of the `key` column family, in
/// revision order (at open, and while a restore streams an image in).
#[derive(Default)]
pub(crate) struct IndexBuilder {
    pub(crate) index: TreeIndex,
    /// The highest main revision added (0 if none).
    pub(crate) max_rev: i64,
}

impl IndexBuilder {
    pub(crate) fn add(&mut self, k: &[u8], v: &[u8]) -> Result<()> {
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
