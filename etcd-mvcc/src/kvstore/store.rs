//! [`Store`]: open, revisions, compaction scheduling, auxiliary buckets and
//! maintenance (etcd's `kvstore.go`).

#[cfg(feature = "rocksdb")]
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};

use super::compact_state::{CompactState, CompactWait};
use super::compaction;
use super::hash::{self, HashKv};
use super::inner::{IndexBuilder, Inner, LeaseAttachments};
use super::options::{Bucket, StoreOptions};
use super::txn::{RangeOptions, RangeResult, TxnRead, TxnWrite};
use crate::backend::{
    check_format, meta_i64, meta_u64, Backend, Cf, ScanIter, Snapshot, WriteBatch,
    META_CONSISTENT_INDEX, META_FINISHED_COMPACT, META_RESTORING, META_SCHEDULED_COMPACT,
};
use crate::backend_memory::MemDisk;
use crate::error::{Error, Result};
use crate::index::TreeIndex;

/// A revision-indexed MVCC key-value store on a [`Backend`] (RocksDB, or in
/// memory). `Send + Sync`: share it with `Arc`. Dropping it stops the
/// compaction thread (an unfinished compaction resumes at the next open) and
/// flushes the backend.
pub struct Store {
    pub(super) inner: Arc<Inner>,
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

        let (index, max_rev, leases) = restore_index(&*backend)?;
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
        *store.inner.rebuilt_leases.lock() = Some((current, leases));
        if scheduled > finished {
            tracing::info!(revision = scheduled, "resuming unfinished compaction");
            store.inner.compaction.schedule(scheduled);
        }
        Ok(store)
    }

    /// The store over an opened backend and its rebuilt state.
    pub(super) fn start(
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
            commit_seconds: commit_histogram(),
            hash_rev_seconds: hash_histogram(
                "etcd_mvcc_hash_rev_duration_seconds",
                "The latency distribution of storage hash by revision operation.",
            ),
            size: super::inner::SizeEstimate::new(),
            rebuilt_leases: Mutex::new(None),
        });
        let compactor = compaction::spawn(inner.clone())?;
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
        let _timer = self.inner.hash_rev_seconds.start_timer();
        hash::hash_kv(&self.inner, rev)
    }

    /// Bytes the backend occupies (RocksDB: SST files and memtables). Cheap:
    /// asked before and at every write (the quota).
    pub fn db_size(&self) -> u64 {
        self.inner.backend.size()
    }

    /// The live keys attached to leases, with their lease, as the index
    /// rebuild of [`open`](Self::open) or of the last [`restore`](Self::restore)
    /// found them; `None` once taken, or once a write moved the revision
    /// (they may be stale then). The lessor's start reads this instead of
    /// every key again.
    pub fn take_lease_attachments(&self) -> Option<Vec<(bytes::Bytes, i64)>> {
        let (rev, attached) = self.inner.rebuilt_leases.lock().take()?;
        (rev == self.current_revision()).then_some(attached)
    }

    /// [`db_size`](Self::db_size) as quota checks read it on every write:
    /// exact every 1,024 commits, plus the bytes committed since in between
    /// (cheap; see `SizeEstimate`).
    pub fn db_size_estimate(&self) -> u64 {
        self.inner.size.get(&*self.inner.backend)
    }

    /// The histogram of backend write times (`/metrics`' etcd
    /// `etcd_disk_backend_commit_duration_seconds`; a handle to the live one).
    pub fn commit_duration(&self) -> prometheus::Histogram {
        self.inner.commit_seconds.clone()
    }

    /// The histogram of [`hash_kv`](Self::hash_kv) times (etcd's
    /// `etcd_mvcc_hash_rev_duration_seconds`; a handle to the live one).
    pub fn hash_rev_duration(&self) -> prometheus::Histogram {
        self.inner.hash_rev_seconds.clone()
    }

    /// Keys in the index (deleted ones until compacted), etcd's
    /// `etcd_debugging_mvcc_keys_total`.
    pub fn key_count(&self) -> usize {
        self.inner.index.read().len()
    }

    /// Live bytes (RocksDB: estimated live SST data plus memtables).
    pub fn db_size_in_use(&self) -> u64 {
        self.inner.backend.size_in_use()
    }

    /// Reclaims space (RocksDB: flush and manual compaction of every column
    /// family). Online: reads and writes continue meanwhile.
    pub fn defragment(&self) -> Result<()> {
        let r = self.inner.backend.defragment();
        self.inner.size.invalidate();
        r
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

    /// A consistent read-only view of every column family, as of now (one
    /// backend snapshot: later writes are not in it, and are not blocked by
    /// it). What `Maintenance.Snapshot` copies into etcd's bbolt layout.
    pub fn view(&self) -> Result<StoreView<'_>> {
        // As a read transaction: the revision first, then the snapshot,
        // which holds every batch up to it.
        let (revision, snap) = {
            let _gate = self.inner.gate.read();
            self.inner.check_complete()?;
            let rev = self.inner.current_rev.load(Ordering::Acquire);
            (rev, self.inner.backend.snapshot())
        };
        Ok(StoreView { snap, revision })
    }

    /// Makes everything applied so far durable (RocksDB: flushes the
    /// memtables of all column families atomically). Call it before
    /// truncating the raft log up to [`consistent_index`](Self::consistent_index).
    pub fn flush(&self) -> Result<()> {
        self.inner.backend.flush()
    }
}

/// See [`Store::view`].
pub struct StoreView<'a> {
    /// The backend snapshot every read of the view goes to.
    snap: Box<dyn Snapshot + 'a>,
    /// The store's revision when the view was taken (what a response
    /// header computed from the view reports).
    revision: i64,
}

impl StoreView<'_> {
    /// The store's revision when the view was taken: every write up to it
    /// is in the view (a write that raced the view may be too, as in
    /// etcd's `Hash`, which reads the revision beside its transaction).
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Every record of `cf`, in key order.
    pub fn scan(&self, cf: Cf) -> ScanIter<'_> {
        self.snap.scan(cf, &[], None)
    }

    /// The consistent index (raft index of the last applied entry).
    pub fn consistent_index(&self) -> Result<u64> {
        Ok(self.meta(META_CONSISTENT_INDEX)?.unwrap_or(0))
    }

    /// The latest scheduled and finished compaction revisions (-1: none).
    pub fn compact_revisions(&self) -> Result<(i64, i64)> {
        let get = |k| Ok::<_, Error>(self.meta(k)?.map_or(-1, |v| v as i64));
        Ok((get(META_SCHEDULED_COMPACT)?, get(META_FINISHED_COMPACT)?))
    }

    fn meta(&self, key: &[u8]) -> Result<Option<u64>> {
        match self.snap.get(Cf::Meta, key)? {
            None => Ok(None),
            Some(v) => Ok(Some(u64::from_be_bytes(v.as_ref().try_into().map_err(
                |_| Error::Corruption(format!("meta record of {} bytes", v.len())),
            )?))),
        }
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
/// order; returns it with the highest stored main revision (0 if none) and
/// the live keys attached to leases.
fn restore_index(b: &dyn Backend) -> Result<(TreeIndex, i64, LeaseAttachments)> {
    let mut builder = IndexBuilder::default();
    let snap = b.snapshot();
    for item in snap.scan(Cf::Key, &[], None) {
        let (k, v) = item?;
        builder.add(&k, &v)?;
    }
    Ok((
        builder.index,
        builder.max_rev,
        builder.leases.into_iter().collect(),
    ))
}

/// etcd's hash histograms (`name`): 0.01 s * 2^n, n = 0..14.
pub fn hash_histogram(name: &str, help: &str) -> prometheus::Histogram {
    let opts = prometheus::HistogramOpts::new(name, help)
        .buckets(prometheus::exponential_buckets(0.01, 2.0, 15).expect("valid buckets"));
    prometheus::Histogram::with_opts(opts).expect("valid histogram")
}

/// etcd's backend commit histogram: 0.001 s * 2^n, n = 0..13.
fn commit_histogram() -> prometheus::Histogram {
    let opts = prometheus::HistogramOpts::new(
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
    )
    .buckets(prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets"));
    prometheus::Histogram::with_opts(opts).expect("valid histogram")
}
