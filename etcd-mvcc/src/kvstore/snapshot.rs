//! Snapshot images of the whole store, for raft snapshots: export from one
//! consistent backend snapshot, and restore in place (the role of etcd's
//! `backend.Snapshot` on the leader and of `kvstore.Restore` after a
//! follower received the `.snap.db` file). The byte format is in
//! `snapshot_image`.
//!
//! # Export
//!
//! [`Store::export`] takes ONE backend snapshot (under the restore gate,
//! for an instant: writers are never blocked) and hands it to a thread that
//! scans every column family in order and encodes blocks into a channel of
//! two; the returned [`ImageExport`] reads them. Memory: about three blocks.
//! Dropping the reader stops the thread and releases the snapshot.
//!
//! # Restore and its crash protocol
//!
//! [`Store::restore`] reads the image twice (it needs `Read + Seek`):
//!
//! 1. **verify** the whole image (every check of `snapshot_image`), without
//!    locks: a truncated, corrupted or inconsistent image is refused with
//!    [`Error::InvalidImage`] and the store is untouched and keeps serving;
//!
//! then **apply**, holding the writer mutex, the restore gate and the index
//! write lock:
//!
//! 2. write `meta/restore_in_progress` (one batch);
//! 3. delete every record of every column family (batches of
//!    `RESTORE_BATCH_OPS`), except that marker;
//! 4. write the image's records, one batch per block, building the new key
//!    index from the `key` records as they stream by (the same rebuild as
//!    [`Store::open`](crate::Store::open));
//! 5. delete the marker (one batch) and flush;
//! 6. swap in the new index, current / compaction revisions and consistent
//!    index, bump the restore epoch, resume the image's unfinished
//!    compaction if it had one.
//!
//! The backend persists a prefix of these batches (see `backend`): after a
//! crash at any point the durable state is either the old store (nothing of
//! the restore persisted) or holds the marker (2..5 partly persisted), or
//! is the complete restored store (5 persisted). With the marker,
//! [`Store::open`](crate::Store::open) fails with
//! [`Error::RestoreIncomplete`]: the caller opens it with
//! [`Store::open_to_restore`] and restores again from the retained image.
//! If a restore fails in steps 2..5 without a crash (an I/O error, an image
//! that changed between the passes), the store stays open but incomplete:
//! every read and write fails with `RestoreIncomplete` until a restore
//! succeeds.
//!
//! Memory: one image block and one write batch at a time, plus the new key
//! index (the old one is freed at the swap, so both exist briefly).
//!
//! # What others see during a restore
//!
//! Writers ([`Store::write`](crate::Store::write), `compact`) wait for it.
//! New read transactions, history reads, `aux_get` / `aux_scan` and exports
//! wait for it (they take the restore gate). Read transactions created
//! before it finish on their own snapshot while it runs and re-pin to the
//! restored store at their next index lookup (`kvstore::txn`). A compaction
//! running in the background is abandoned (`kvstore::compaction`). Watch
//! sinks receive no events for it (`kvstore::history`: resync from history
//! after [`Store::restore_epoch`] changed).

use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use super::inner::{IndexBuilder, Inner};
use super::options::StoreOptions;
use super::store::Store;
use crate::backend::{Backend, Cf, WriteBatch, META_CONSISTENT_INDEX, META_RESTORING};
use crate::error::{Error, Result};
use crate::index::TreeIndex;
use crate::snapshot_image::{verify_image, Decoder, Encoder, ImageInfo, BLOCK_TARGET};

/// Deletes per batch when a restore removes the store's old contents.
pub(crate) const RESTORE_BATCH_OPS: usize = 1000;

/// Blocks an export encodes ahead of its reader.
const EXPORT_QUEUE: usize = 2;

enum Msg {
    Bytes(Vec<u8>),
    Failed(Error),
    Done,
}

/// A snapshot image being exported ([`Store::export`]): read it to the end.
/// `Read + Send + 'static`; holds the store's backend alive until dropped.
pub struct ImageExport {
    rx: Receiver<Msg>,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
    consistent_index: u64,
}

impl std::fmt::Debug for ImageExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageExport")
            .field("consistent_index", &self.consistent_index)
            .field("done", &self.done)
            .finish()
    }
}

impl ImageExport {
    /// The consistent index (last applied raft entry) of the exported state.
    pub fn consistent_index(&self) -> u64 {
        self.consistent_index
    }
}

impl Read for ImageExport {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.pos < self.buf.len() {
                let n = out.len().min(self.buf.len() - self.pos);
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done || out.is_empty() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Msg::Bytes(b)) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Ok(Msg::Done) => self.done = true,
                Ok(Msg::Failed(e)) => return Err(std::io::Error::other(e)),
                Err(_) => return Err(std::io::Error::other("mvcc export thread ended early")),
            }
        }
    }
}

/// The export thread: one snapshot, every column family, in image order.
fn export_thread(inner: &Inner, tx: &SyncSender<Msg>, block_target: usize) {
    let snap = {
        let _gate = inner.gate.read();
        if let Err(e) = inner.check_complete() {
            let _ = tx.send(Msg::Failed(e));
            return;
        }
        inner.backend.snapshot()
    };
    let ci = match snap.get(Cf::Meta, META_CONSISTENT_INDEX) {
        Ok(None) => 0,
        Ok(Some(v)) if v.len() == 8 => u64::from_be_bytes(v[..].try_into().expect("8 bytes")),
        Ok(Some(v)) => {
            let e = Error::Corruption(format!("consistent index record of {} bytes", v.len()));
            let _ = tx.send(Msg::Failed(e));
            return;
        }
        Err(e) => {
            let _ = tx.send(Msg::Failed(e));
            return;
        }
    };
    if tx.send(Msg::Bytes(Encoder::header(ci))).is_err() {
        return;
    }
    let mut enc = Encoder::new(block_target);
    for cf in Cf::ALL {
        for item in snap.scan(cf, &[], None) {
            match item {
                Ok((k, v)) => {
                    if let Some(block) = enc.push(cf, &k, &v) {
                        if tx.send(Msg::Bytes(block)).is_err() {
                            return; // the reader is gone
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Msg::Failed(e));
                    return;
                }
            }
        }
    }
    if tx.send(Msg::Bytes(enc.finish())).is_ok() {
        let _ = tx.send(Msg::Done);
    }
}

impl Store {
    /// A snapshot image of the whole store (every column family: key
    /// revisions, meta with the consistent index and compaction revisions,
    /// lease, auth, members, alarm), streamed from ONE consistent backend
    /// snapshot taken now (format: `docs/mvcc.md`). Writers are not blocked;
    /// memory is a few blocks. Fails with [`Error::RestoreIncomplete`] on an
    /// incomplete store.
    pub fn export(&self) -> Result<ImageExport> {
        self.export_with_block_size(BLOCK_TARGET)
    }

    /// [`export`](Self::export) with another block size (tests, fuzzing).
    #[doc(hidden)]
    pub fn export_with_block_size(&self, block_target: usize) -> Result<ImageExport> {
        let inner = self.inner.clone();
        let (tx, rx) = sync_channel::<Msg>(EXPORT_QUEUE);
        std::thread::Builder::new()
            .name("mvcc-export".into())
            .spawn(move || export_thread(&inner, &tx, block_target))?;
        // The first message is the header (the snapshot is taken) or why not.
        match rx.recv() {
            Ok(Msg::Bytes(header)) => {
                let ci = u64::from_be_bytes(header[16..24].try_into().expect("header"));
                Ok(ImageExport {
                    rx,
                    buf: header,
                    pos: 0,
                    done: false,
                    consistent_index: ci,
                })
            }
            Ok(Msg::Failed(e)) => Err(e),
            Ok(Msg::Done) | Err(_) => Err(Error::Storage("mvcc export thread ended early".into())),
        }
    }

    /// Replaces the whole store, in place, with a snapshot image (see the
    /// module doc of `kvstore::snapshot` for the protocol): afterwards the
    /// store is exactly as if it had applied the image's history: same
    /// ranges at every uncompacted revision, same `hash_kv`, compaction
    /// revision, consistent index and auxiliary buckets; the key index is
    /// rebuilt from the image; an unfinished compaction of the image
    /// resumes. Returns what the image held.
    ///
    /// The image is verified completely first (it is read twice, hence
    /// `Seek`): an invalid one fails with [`Error::InvalidImage`] (or
    /// [`Error::UnsupportedFormat`]) and changes nothing. A failure while
    /// applying (I/O) leaves the store incomplete
    /// ([`Error::RestoreIncomplete`] for reads and writes) until a restore
    /// succeeds; a crash leaves the old store or one that
    /// [`Store::open`](crate::Store::open) refuses with `RestoreIncomplete`.
    ///
    /// Blocks writers and new readers while it applies (see the module doc
    /// for readers already running, compaction and watch sinks). Do not call
    /// it from a thread holding a [`TxnWrite`](crate::TxnWrite).
    pub fn restore<R: Read + Seek>(&self, mut image: R) -> Result<ImageInfo> {
        let start = image.stream_position()?;
        let verified = verify_image(&mut image)?;
        image.seek(SeekFrom::Start(start))?;
        let info = restore_locked(&self.inner, image, RESTORE_BATCH_OPS)?;
        if info != verified {
            // Same bytes twice give the same summary; the image changed
            // underneath, yet the second pass was valid on its own.
            tracing::warn!(?verified, applied = ?info, "snapshot image changed between passes");
        }
        Ok(info)
    }

    /// [`restore`](Self::restore) with another batch size for the deletes
    /// (tests: more writes to crash at).
    #[cfg(test)]
    pub(crate) fn restore_with_batch<R: Read + Seek>(
        &self,
        mut image: R,
        batch_ops: usize,
    ) -> Result<ImageInfo> {
        let start = image.stream_position()?;
        verify_image(&mut image)?;
        image.seek(SeekFrom::Start(start))?;
        restore_locked(&self.inner, image, batch_ops)
    }

    /// Opens the RocksDB store in `dir` without reading its contents, to
    /// restore it: the recovery path after [`Store::open`] failed with
    /// [`Error::RestoreIncomplete`] (it works on any store). Until
    /// [`restore`](Self::restore) succeeds, every read and write fails with
    /// `RestoreIncomplete`.
    #[cfg(feature = "rocksdb")]
    pub fn open_to_restore(dir: &std::path::Path, opts: StoreOptions) -> Result<Store> {
        let backend = crate::backend_rocksdb::RocksBackend::open(dir)?;
        Store::open_with_to_restore(Box::new(backend), opts)
    }

    /// [`open_to_restore`](Self::open_to_restore) on any backend.
    pub fn open_with_to_restore(backend: Box<dyn Backend>, opts: StoreOptions) -> Result<Store> {
        tracing::info!(backend = %backend.describe(), "mvcc store opened to be restored");
        let store = Store::start(backend, TreeIndex::default(), 1, -1, -1, 0, opts)?;
        store.inner.incomplete.store(true, Ordering::Release);
        Ok(store)
    }

    /// Number of restores this store went through since it was opened: a
    /// watch layer compares it to notice a restore (module doc of
    /// `kvstore::history`).
    pub fn restore_epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// True while the store's contents are partial (a failed restore, or
    /// opened with [`open_to_restore`](Self::open_to_restore)).
    pub fn is_restore_incomplete(&self) -> bool {
        self.inner.incomplete.load(Ordering::Acquire)
    }
}

/// Steps 2..6 of a restore (module doc), under the locks.
fn restore_locked(inner: &Arc<Inner>, image: impl Read, batch_ops: usize) -> Result<ImageInfo> {
    let _writer = inner.writer.lock();
    let _gate = inner.gate.write();
    let mut index = inner.index.write();
    let mut wrote = false;
    let result = apply_image(inner, image, batch_ops, &mut wrote);
    inner.size.invalidate();
    // Set again below from the image, if it installs.
    inner.rebuilt_leases.lock().take();
    let epoch = inner.epoch.load(Ordering::Acquire) + 1;
    match result {
        Ok((builder, info)) => {
            *index = builder.index;
            *inner.rebuilt_leases.lock() =
                Some((info.revision, builder.leases.into_iter().collect()));
            inner.current_rev.store(info.revision, Ordering::Release);
            inner
                .compact_rev
                .store(info.compact_revision, Ordering::Release);
            inner
                .consistent_index
                .store(info.consistent_index, Ordering::Release);
            inner.incomplete.store(false, Ordering::Release);
            inner.epoch.store(epoch, Ordering::Release);
            drop(index);
            inner
                .compaction
                .reset(info.finished_compact_revision, epoch);
            if info.compact_revision > info.finished_compact_revision {
                inner.compaction.schedule(info.compact_revision);
            }
            tracing::info!(
                revision = info.revision,
                compact_revision = info.compact_revision,
                consistent_index = info.consistent_index,
                records = info.records,
                keys = inner.index.read().len(),
                "mvcc store restored from a snapshot image"
            );
            Ok(info)
        }
        Err(e) if !wrote => Err(e),
        Err(e) => {
            tracing::error!(error = %e, "restore from a snapshot image failed half-way; the store is incomplete");
            *index = TreeIndex::default();
            inner.current_rev.store(1, Ordering::Release);
            inner.compact_rev.store(-1, Ordering::Release);
            inner.consistent_index.store(0, Ordering::Release);
            inner.incomplete.store(true, Ordering::Release);
            inner.epoch.store(epoch, Ordering::Release);
            drop(index);
            inner.compaction.reset(-1, epoch);
            Err(e)
        }
    }
}

/// Steps 2..5; `wrote` is set once the backend was changed.
fn apply_image(
    inner: &Inner,
    image: impl Read,
    batch_ops: usize,
    wrote: &mut bool,
) -> Result<(IndexBuilder, ImageInfo)> {
    let b = &inner.backend;
    let batch_ops = batch_ops.max(1);
    let mut dec = Decoder::new(image)?;
    // 2. the marker
    let mut batch = WriteBatch::default();
    batch.put(
        Cf::Meta,
        META_RESTORING,
        dec.consistent_index().to_be_bytes(),
    );
    b.write(batch)?;
    *wrote = true;
    // 3. the old contents
    {
        let snap = b.snapshot();
        let mut batch = WriteBatch::default();
        for cf in Cf::ALL {
            for item in snap.scan(cf, &[], None) {
                let (k, _) = item?;
                if cf == Cf::Meta && k == META_RESTORING {
                    continue;
                }
                batch.delete(cf, k.to_vec());
                if batch.len() >= batch_ops {
                    b.write(std::mem::take(&mut batch))?;
                }
            }
        }
        if !batch.is_empty() {
            b.write(batch)?;
        }
    }
    fail::fail_point!("snapshot::install::mid");
    // 4. the image, one batch per block
    let mut builder = IndexBuilder::default();
    while let Some(records) = dec.next_block()? {
        let mut batch = WriteBatch::default();
        for (cf, k, v) in records {
            if cf == Cf::Key {
                builder.add(&k, &v)?;
            }
            batch.put(cf, k.to_vec(), v.to_vec());
        }
        b.write(batch)?;
    }
    // 5. done
    let mut batch = WriteBatch::default();
    batch.delete(Cf::Meta, META_RESTORING);
    b.write(batch)?;
    b.flush()?;
    Ok((builder, dec.info()))
}
