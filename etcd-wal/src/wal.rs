//! The [`Wal`] handle: create, open (replay + repair), append, purge, close.
//!
//! Invariants:
//! - one handle per directory: the directory is `flock`ed while open;
//! - `append` validates a batch against the log as queued so far (no index
//!   gaps, snapshot markers never move backwards) *before* numbering and
//!   queueing it, under one lock, so the writer sees batches in `seq` order
//!   and never meets a batch that would make the log unreplayable;
//! - `append_sync_now` commits on the caller's thread only while holding
//!   that lock with every queued batch durable: the writer thread has
//!   nothing pending, so no batch can overtake another;
//! - `purge` only removes a prefix of the segments, never the one being
//!   written, never one holding live entries above the newest durable
//!   snapshot marker, and always keeps `max_wals` segments.

use crate::error::{Error, Result};
use crate::fs::{DirLock, FileSystem, RealFs};
use crate::log_index::LogIndex;
use crate::metrics::{MetricsCollector, WalMetrics};
use crate::record::{ENTRY_PREFIX, MAX_PAYLOAD};
use crate::replay;
use crate::segment::{self, Preamble, SegmentInfo};
use crate::types::{HardState, Recovered, SnapshotMarker, WalOptions, WriteBatch};
use crate::writer::{self, Progress, Queued, Shared, Ticket, Writer};
use bytes::Bytes;
use crossbeam_channel::Sender;
use parking_lot::{Condvar, Mutex};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Batches that may wait in the channel before `append` blocks.
const QUEUE_CAPACITY: usize = 4096;

/// A write-ahead log in one directory. `Send + Sync`; all methods take
/// `&self` except [`Wal::close`]. Dropping it stops the writer thread
/// cleanly (queued batches are still written).
#[derive(Debug)]
pub struct Wal {
    shared: Arc<Shared>,
    queue: Mutex<Queue>,
    tx: Option<Sender<Queued>>,
    /// The open segment, committed to by the writer thread or, when it has
    /// nothing pending, by `append_sync_now`'s caller.
    open: Arc<Mutex<Writer>>,
    thread: Option<JoinHandle<Result<()>>>,
    _lock: DirLock,
}

/// The log as queued by `append` (ahead of what is durable).
#[derive(Debug)]
struct Queue {
    index: LogIndex,
    next_seq: u64,
}

/// Where the writer starts.
struct Start {
    file: Box<dyn crate::fs::WalFile>,
    offset: u64,
    last_crc: u32,
    index: LogIndex,
    snapshot: Option<SnapshotMarker>,
    hard_state: Option<HardState>,
    segments: Vec<SegmentInfo>,
    metadata: Bytes,
}

impl Wal {
    /// True if `dir` holds WAL segments.
    pub fn exists(dir: &Path) -> bool {
        exists_in(&RealFs, dir)
    }

    /// Creates a new WAL in `dir` (created if missing; error if it already
    /// holds a WAL) with opaque `metadata` (the caller stores node id/cluster
    /// id there).
    pub fn create(dir: &Path, opts: WalOptions, metadata: &[u8]) -> Result<Wal> {
        Wal::create_with_fs(Arc::new(RealFs), dir, opts, metadata)
    }

    /// Opens and replays: returns the metadata, the last hard state, the
    /// newest snapshot marker and the entries after it. A torn tail is
    /// repaired (see [`RecoveryMode`](crate::RecoveryMode)); appends continue
    /// after the last valid record.
    pub fn open(dir: &Path, opts: WalOptions) -> Result<(Wal, Recovered)> {
        Wal::open_with_fs(Arc::new(RealFs), dir, opts)
    }

    /// Replays the WAL in `dir` without opening it for appends, for
    /// offline tools (`etcdutl backup`): nothing is written (a torn tail
    /// stays as it is; the records before it are returned). Fails with
    /// [`Error::Locked`] while a process has the WAL open.
    pub fn read(dir: &Path, opts: WalOptions) -> Result<Recovered> {
        opts.validate()?;
        let _lock = lock_dir(&RealFs, dir)?;
        Ok(replay::replay(&RealFs, dir, opts.recovery_mode)?.recovered)
    }

    /// [`Wal::create`] on any file system (tests).
    #[doc(hidden)]
    pub fn create_with_fs(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        opts: WalOptions,
        metadata: &[u8],
    ) -> Result<Wal> {
        opts.validate()?;
        if metadata.len() > MAX_PAYLOAD {
            return Err(Error::InvalidOptions(format!(
                "metadata of {} bytes is too large",
                metadata.len()
            )));
        }
        fs.create_dir_all(dir)?;
        let lock = lock_dir(&*fs, dir)?;
        let (segments, tmps) = segment::list_segments(&*fs, dir)?;
        if !segments.is_empty() {
            return Err(Error::AlreadyExists(dir.to_path_buf()));
        }
        remove_tmps(&*fs, dir, &tmps)?;
        let preamble = Preamble {
            seq: 0,
            first_index: 0,
            prev_crc: 0,
            metadata,
            snapshot: None,
            hard_state: None,
        };
        let new = segment::create_segment(&*fs, dir, &preamble, opts.segment_size)?;
        // The directory may be new: make its own entry durable too.
        fs.sync_dir(parent_of(dir))?;
        let metrics = MetricsCollector::default();
        metrics.add_bytes(new.offset);
        let start = Start {
            file: new.file,
            offset: new.offset,
            last_crc: new.last_crc,
            index: LogIndex::default(),
            snapshot: None,
            hard_state: None,
            segments: vec![new.info],
            metadata: Bytes::copy_from_slice(metadata),
        };
        Wal::start(fs, dir, opts, lock, start, metrics)
    }

    /// [`Wal::open`] on any file system (tests, fuzzing).
    #[doc(hidden)]
    pub fn open_with_fs(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        opts: WalOptions,
    ) -> Result<(Wal, Recovered)> {
        opts.validate()?;
        let lock = lock_dir(&*fs, dir)?;
        let tmps = replay::leftover_tmp_files(&*fs, dir)?;
        remove_tmps(&*fs, dir, &tmps)?;
        let r = replay::replay(&*fs, dir, opts.recovery_mode)?;
        let last = r
            .segments
            .last()
            .expect("replay found at least one segment")
            .clone();
        let mut file = fs.open_rw(&last.path)?;
        if let Some(reason) = &r.tail.torn {
            tracing::warn!(
                file = %last.path.display(),
                offset = r.tail.end,
                cut_bytes = r.tail.file_len - r.tail.end,
                damaged_bytes = r.tail.damaged_len,
                reason = %reason,
                "wal: truncating a torn tail (a write interrupted by a crash, never acknowledged)"
            );
            file.set_len(r.tail.end)?;
            file.allocate(opts.segment_size)?;
            file.sync_all()?;
        }
        let start = Start {
            file,
            offset: r.tail.end,
            last_crc: r.tail.last_crc,
            index: r.index,
            snapshot: r.recovered.snapshot,
            hard_state: r.hard_state,
            segments: r.segments,
            metadata: r.recovered.metadata.clone(),
        };
        let wal = Wal::start(fs, dir, opts, lock, start, MetricsCollector::default())?;
        Ok((wal, r.recovered))
    }

    fn start(
        fs: Arc<dyn FileSystem>,
        dir: &Path,
        opts: WalOptions,
        lock: DirLock,
        s: Start,
        metrics: MetricsCollector,
    ) -> Result<Wal> {
        let segment = s.segments.last().expect("at least one segment").clone();
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            fs,
            opts,
            poisoned: AtomicBool::new(false),
            progress: Mutex::new(Progress::default()),
            progress_cv: Condvar::new(),
            segments: Mutex::new(s.segments),
            durable_snapshot: Mutex::new(s.snapshot),
            metrics,
        });
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_CAPACITY);
        let writer = Writer {
            shared: shared.clone(),
            file: s.file,
            segment,
            offset: s.offset,
            zeroed: s.offset,
            last_crc: s.last_crc,
            index: s.index,
            snapshot: s.snapshot,
            hard_state: s.hard_state,
            metadata: s.metadata,
            dirty: false,
            buf: Vec::new(),
        };
        let open = Arc::new(Mutex::new(writer));
        let handle = {
            let open = open.clone();
            std::thread::Builder::new()
                .name("etcd-wal-writer".into())
                .spawn(move || writer::run(open, rx))?
        };
        Ok(Wal {
            shared,
            queue: Mutex::new(Queue {
                index: s.index,
                next_seq: 0,
            }),
            tx: Some(tx),
            open,
            thread: Some(handle),
            _lock: lock,
        })
    }

    /// Queues a batch for the writer thread and returns at once (a raft
    /// leader sends while persisting). The batch is durable when the
    /// returned [`Ticket`] completes. Dropping the ticket does not cancel
    /// the write.
    ///
    /// Rejected with [`Error::InvalidBatch`] (nothing queued) if its entries
    /// are not contiguous, would leave an index gap after the log queued so
    /// far, or if its snapshot marker is older than the last one.
    pub fn append(&self, batch: WriteBatch) -> Result<Ticket> {
        let seq = self.hand_over(batch, true, false)?;
        Ok(Ticket::new(self.shared.clone(), seq))
    }

    /// Queues a batch that need not be durable on its own (etcd's
    /// `MustSync` false: only the commit index moved). The writer writes
    /// it without an fdatasync unless its group holds a batch that needs
    /// one; the next synced batch's fdatasync (or `close`) makes it
    /// durable with everything before it. A failure still poisons the WAL.
    pub fn append_unsynced(&self, batch: WriteBatch) -> Result<()> {
        self.hand_over(batch, false, false).map(drop)
    }

    /// Validates and numbers `batch` under the queue lock and hands it to
    /// the writer thread, or, with `here` and every queued batch durable,
    /// commits it on this thread (the lock keeps other batches out, and
    /// the writer thread holds none: at most it finishes a segment cut).
    /// Returns its `seq`.
    fn hand_over(&self, batch: WriteBatch, sync: bool, here: bool) -> Result<u64> {
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned);
        }
        let tx = self.tx.as_ref().ok_or(Error::Closed)?;
        let mut q = self.queue.lock();
        let mut index = q.index;
        validate(&batch, &mut index)?;
        let seq = q.next_seq + 1;
        let entries = batch.entries.len();
        let queued = Queued { seq, batch, sync };
        let here = here && self.shared.progress.lock().durable >= q.next_seq;
        if here {
            self.open.lock().commit(vec![queued]);
        } else {
            tx.send(queued).map_err(|_| Error::Closed)?;
        }
        q.index = index;
        q.next_seq = seq;
        drop(q);
        self.shared.metrics.add_batch(entries);
        if here {
            self.shared.metrics.add_caller_commit();
        }
        Ok(seq)
    }

    /// [`Wal::append`] and [`Ticket::wait`].
    pub fn append_sync(&self, batch: WriteBatch) -> Result<()> {
        self.append(batch)?.wait()
    }

    /// [`Wal::append_sync`], but when the writer thread has nothing
    /// pending the batch is written and synced on the caller's thread: no
    /// hand-off to the writer and back (two thread wake-ups, 20-40 us on
    /// a small VM). With batches pending it queues behind them, as
    /// `append_sync`. Same validation, ordering, poisoning and metrics.
    ///
    /// For a caller that knows nothing would group with this batch (a raft
    /// thread under light load): under load, the hand-off is what lets
    /// the writer group several batches into one fdatasync. The queue lock
    /// is held through the write and fdatasync, so another thread's
    /// `append` meanwhile waits for them (the raft node appends from its
    /// raft thread only).
    pub fn append_sync_now(&self, batch: WriteBatch) -> Result<()> {
        let seq = self.hand_over(batch, true, true)?;
        Ticket::new(self.shared.clone(), seq).wait()
    }

    /// Deletes segments that hold only entries below `index` (the caller
    /// guarantees the state machine durably applied past it), keeping at
    /// least `max_wals` files (none are removed when `max_wals` is 0).
    /// Returns how many were removed.
    ///
    /// Never removes entries above the newest *durable* snapshot marker (so
    /// replay still finds a contiguous log after it): like etcd, where WAL
    /// files are released only up to the last snapshot, append a
    /// [`SnapshotMarker`] at or above `index - 1` first, or less is purged.
    pub fn purge(&self, index: u64) -> Result<usize> {
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned);
        }
        let opts = &self.shared.opts;
        if opts.max_wals == 0 {
            return Ok(0);
        }
        let Some(snap) = *self.shared.durable_snapshot.lock() else {
            return Ok(0);
        };
        let limit = index.min(snap.index.saturating_add(1));
        let fs = &*self.shared.fs;
        let mut segs = self.shared.segments.lock();
        let removable = segs.len().saturating_sub(opts.max_wals.max(1));
        let mut n = 0;
        while n < removable && segs[n + 1].first_index <= limit {
            n += 1;
        }
        let mut removed = 0;
        let mut result = Ok(());
        for seg in &segs[..n] {
            match fs.remove_file(&seg.path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => removed += 1,
                Err(e) => {
                    result = Err(Error::Io(e));
                    break;
                }
            }
        }
        if removed > 0 {
            let gone: Vec<PathBuf> = segs.drain(..removed).map(|s| s.path).collect();
            drop(segs);
            fs.sync_dir(&self.shared.dir)?;
            tracing::info!(removed, up_to = %gone[gone.len() - 1].display(), limit, "wal: purged segments");
        }
        result.map(|()| removed)
    }

    /// Metrics: fsync count and latency histogram, bytes written.
    pub fn metrics(&self) -> WalMetrics {
        self.shared.metrics.snapshot()
    }

    /// A handle that reads [`Wal::metrics`] from elsewhere (a metrics
    /// exporter), while the WAL itself is owned by its writer.
    pub fn metrics_reader(&self) -> WalMetricsReader {
        WalMetricsReader(self.shared.clone())
    }

    /// The WAL directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.shared.segments.lock().len()
    }

    /// True after a failed write or fsync.
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Acquire)
    }

    /// Drains the queue (every queued batch is written and synced), stops
    /// the writer thread and releases the directory. Returns
    /// [`Error::Poisoned`] if the WAL was poisoned.
    pub fn close(mut self) -> Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<()> {
        drop(self.tx.take());
        let Some(handle) = self.thread.take() else {
            return Ok(());
        };
        match handle.join() {
            Ok(r) => r,
            Err(_) => Err(Error::Poisoned), // the writer panicked: a broken invariant, already logged
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, dir = %self.shared.dir.display(), "wal: dropped after an error");
        }
    }
}

fn validate(b: &WriteBatch, index: &mut LogIndex) -> Result<()> {
    if let Some(s) = &b.snapshot {
        if let Some(cur) = index.snapshot {
            if s.index < cur {
                return Err(Error::InvalidBatch(format!(
                    "snapshot marker at {} is older than the current one at {cur}",
                    s.index
                )));
            }
        }
        index.apply_snapshot(s.index);
    }
    let mut prev: Option<u64> = None;
    for e in &b.entries {
        if let Some(p) = prev {
            if e.index != p.wrapping_add(1) {
                return Err(Error::InvalidBatch(format!(
                    "entries are not contiguous: {} follows {p}",
                    e.index
                )));
            }
        }
        if e.data.len() > MAX_PAYLOAD - ENTRY_PREFIX {
            return Err(Error::InvalidBatch(format!(
                "entry {} of {} bytes is too large",
                e.index,
                e.data.len()
            )));
        }
        index.check_append(e.index).map_err(Error::InvalidBatch)?;
        index.push_entry(e.index);
        prev = Some(e.index);
    }
    Ok(())
}

fn exists_in(fs: &dyn FileSystem, dir: &Path) -> bool {
    segment::list_segments(fs, dir)
        .map(|(segs, _)| !segs.is_empty())
        .unwrap_or(false)
}

fn lock_dir(fs: &dyn FileSystem, dir: &Path) -> Result<DirLock> {
    fs.lock_dir(dir).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock => Error::Locked(dir.to_path_buf()),
        io::ErrorKind::NotFound => Error::NotFound(dir.to_path_buf()),
        _ => Error::Io(e),
    })
}

fn remove_tmps(fs: &dyn FileSystem, dir: &Path, tmps: &[PathBuf]) -> Result<()> {
    for t in tmps {
        tracing::info!(file = %t.display(), "wal: removing a segment left half-created by a crash");
        fs.remove_file(t)?;
    }
    if !tmps.is_empty() {
        fs.sync_dir(dir)?;
    }
    Ok(())
}

fn parent_of(dir: &Path) -> &Path {
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Wal>();
        check::<Ticket>();
    }
}

/// Reads a [`Wal`]'s metrics (see [`Wal::metrics_reader`]).
#[derive(Clone)]
pub struct WalMetricsReader(Arc<Shared>);

impl WalMetricsReader {
    /// The WAL's metrics now.
    pub fn read(&self) -> WalMetrics {
        self.0.metrics.snapshot()
    }
}
