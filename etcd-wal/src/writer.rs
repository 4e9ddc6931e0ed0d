//! The writer thread: group commit, segment cuts, poisoning, tickets.
//!
//! The writer thread blocks on the channel for a batch, then takes every
//! batch already queued (up to [`MAX_GROUP_BYTES`]), encodes them into one
//! buffer, issues ONE positional write and ONE fdatasync, and then marks
//! the whole group durable, waking every waiting [`Ticket`].
//!
//! The open segment's state ([`Writer`]) sits behind a mutex so that a
//! caller may also commit a batch on its own thread when the writer has
//! nothing pending ([`Wal::append_sync_now`](crate::Wal::append_sync_now)):
//! that saves the two thread wake-ups of a hand-off when there is nothing
//! to group with. The thread takes the mutex only to commit a group.
//!
//! Invariants:
//! - batches are written in the order `append` numbered them (`seq`), and
//!   `Progress::durable` only moves forward; a ticket is complete when
//!   `durable >= seq`;
//! - a group is fdatasynced when any of its batches needs it (`append`,
//!   `append_sync_now`); a group of `append_unsynced` batches only is
//!   written and left dirty, and the next sync of the file (the next
//!   synced group, a segment cut's `sync_all`, or the one at close) makes
//!   it durable: nobody holds a ticket for it, and every ticket of a later
//!   batch completes after such a sync;
//! - after a failed write, fdatasync or cut the WAL is poisoned: the failing
//!   group's tickets get the I/O error, every later ticket and call gets
//!   [`Error::Poisoned`], and the writer never touches the file again (a
//!   failed fsync may have dropped dirty pages; retrying could report
//!   success for lost data);
//! - a segment is cut between groups, never inside one: a group may
//!   overshoot `segment_size` (the file grows past its preallocation), and
//!   the next group starts in a new segment;
//! - when the thread exits, for whatever reason (even a panic), waiters are
//!   woken and get an error instead of hanging.

use crate::error::{Error, Result};
use crate::fs::{FileSystem, WalFile};
use crate::log_index::LogIndex;
use crate::metrics::MetricsCollector;
use crate::record;
use crate::segment::{self, Preamble, SegmentInfo};
use crate::types::{HardState, SnapshotMarker, WalOptions, WriteBatch};
use bytes::Bytes;
use crossbeam_channel::Receiver;
use parking_lot::{Condvar, Mutex};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A group stops taking queued batches once it holds this many bytes.
pub(crate) const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// Bytes of zeros written ahead of the log's end; see
/// [`Writer::zeros_after`].
pub(crate) const ZERO_AHEAD: u64 = 1024 * 1024;

/// State shared by the [`Wal`](crate::Wal) handle, tickets and the writer.
#[derive(Debug)]
pub(crate) struct Shared {
    pub dir: PathBuf,
    pub fs: Arc<dyn FileSystem>,
    pub opts: WalOptions,
    pub poisoned: AtomicBool,
    pub progress: Mutex<Progress>,
    pub progress_cv: Condvar,
    /// Segments on disk, oldest first; the last is the one being written.
    pub segments: Mutex<Vec<SegmentInfo>>,
    /// The newest snapshot marker known durable.
    pub durable_snapshot: Mutex<Option<SnapshotMarker>>,
    pub metrics: MetricsCollector,
}

#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Every batch with `seq <= durable` is written, and durable unless it
    /// was appended unsynced and no sync has followed yet.
    pub durable: u64,
    /// The group whose write failed, with its error.
    pub failed: Option<Failure>,
    /// The writer thread has exited.
    pub stopped: bool,
}

#[derive(Debug)]
pub(crate) struct Failure {
    pub from: u64,
    pub to: u64,
    pub error: Error,
}

/// A batch queued for the writer.
#[derive(Debug)]
pub(crate) struct Queued {
    pub seq: u64,
    pub batch: WriteBatch,
    /// Must be durable when its ticket completes (`append`); false for
    /// `append_unsynced`, made durable by a later sync.
    pub sync: bool,
}

/// Completes when its batch is durable; see [`Ticket::wait`].
#[derive(Debug)]
#[must_use = "a ticket does nothing unless waited on; drop it explicitly to not wait"]
pub struct Ticket {
    shared: Arc<Shared>,
    seq: u64,
}

impl Ticket {
    pub(crate) fn new(shared: Arc<Shared>, seq: u64) -> Ticket {
        Ticket { shared, seq }
    }

    /// Blocks until the batch is durable (its group's fdatasync returned),
    /// or returns the error of its group's failed write/fsync
    /// ([`Error::Io`]), or [`Error::Poisoned`] if an earlier group failed.
    pub fn wait(self) -> Result<()> {
        let mut p = self.shared.progress.lock();
        loop {
            if p.durable >= self.seq {
                return Ok(());
            }
            if let Some(f) = &p.failed {
                if (f.from..=f.to).contains(&self.seq) {
                    return Err(f.error.duplicate());
                }
                if self.seq > f.to {
                    return Err(Error::Poisoned);
                }
            }
            if p.stopped {
                return Err(if self.shared.poisoned.load(Ordering::Acquire) {
                    Error::Poisoned
                } else {
                    Error::Closed
                });
            }
            self.shared.progress_cv.wait(&mut p);
        }
    }

    /// True if [`Ticket::wait`] would return at once.
    pub fn is_done(&self) -> bool {
        let p = self.shared.progress.lock();
        p.durable >= self.seq || p.failed.is_some() || p.stopped
    }
}

/// The open segment: what a group commit writes to. It sits behind the
/// `Wal`'s `open` mutex, taken by whoever commits: the writer thread, or a
/// caller of `append_sync_now` while the writer has nothing pending.
pub(crate) struct Writer {
    pub shared: Arc<Shared>,
    pub file: Box<dyn WalFile>,
    pub segment: SegmentInfo,
    /// Where the next record goes in `file`.
    pub offset: u64,
    pub last_crc: u32,
    pub index: LogIndex,
    pub snapshot: Option<SnapshotMarker>,
    pub hard_state: Option<HardState>,
    pub metadata: Bytes,
    /// Bytes of `file` from its start that are written (records or
    /// zeros): a commit below it changes no file system metadata
    /// ([`Writer::zeros_after`]).
    pub zeroed: u64,
    /// Written but not synced (with `fsync: false`, or after a group of
    /// `append_unsynced` batches only).
    pub dirty: bool,
    pub buf: Vec<u8>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("segment", &self.segment.path)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

/// Marks the writer stopped (and poisoned, if it panicked) when dropped.
struct StopGuard(Arc<Shared>);

impl Drop for StopGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.poisoned.store(true, Ordering::Release);
        }
        self.0.progress.lock().stopped = true;
        self.0.progress_cv.notify_all();
    }
}

/// The writer thread's body: group commits until every `Wal` sender is
/// gone, then syncs what is left dirty (`fsync: false`, unsynced batches).
pub(crate) fn run(writer: Arc<Mutex<Writer>>, rx: Receiver<Queued>) -> Result<()> {
    let _guard = StopGuard(writer.lock().shared.clone());
    while let Ok(first) = rx.recv() {
        let mut size = batch_size(&first.batch);
        let mut group = vec![first];
        while size < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(q) => {
                    size += batch_size(&q.batch);
                    group.push(q);
                }
                Err(_) => break,
            }
        }
        writer.lock().commit(group);
    }
    let mut w = writer.lock();
    if w.is_poisoned() {
        return Err(Error::Poisoned);
    }
    if w.dirty {
        if let Err(e) = w.timed_sync() {
            let to = w.shared.progress.lock().durable;
            w.fail(to + 1, to, e);
            return Err(Error::Poisoned);
        }
    }
    Ok(())
}

impl Writer {
    fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Acquire)
    }

    /// Writes and syncs `group` (batches in `seq` order, following every
    /// batch committed before) and marks it durable, or poisons the WAL.
    pub(crate) fn commit(&mut self, group: Vec<Queued>) {
        let from = group[0].seq;
        let to = group[group.len() - 1].seq;
        if self.is_poisoned() {
            return; // tickets above the failed group resolve to Poisoned
        }
        if let Err(e) = self.maybe_cut() {
            self.fail(from, to, e);
            return;
        }
        self.buf.clear();
        let snapshot_before = self.snapshot;
        for q in &group {
            self.encode(&q.batch);
        }
        if !self.buf.is_empty() {
            let data_len = self.buf.len();
            let zeros = self.zeros_after(data_len as u64);
            self.buf.resize(data_len + zeros as usize, 0);
            let buf = std::mem::take(&mut self.buf);
            let res = self.file.write_all_at(&buf, self.offset);
            self.buf = buf;
            if let Err(e) = res {
                self.fail(from, to, e);
                return;
            }
            self.buf.truncate(data_len);
            self.offset += data_len as u64;
            self.zeroed = self.zeroed.max(self.offset + zeros);
            self.shared.metrics.add_bytes(data_len as u64);
            // A snapshot marker is synced whatever its batch asked: purge
            // trusts `durable_snapshot`.
            let must_sync = group.iter().any(|q| q.sync || q.batch.snapshot.is_some());
            if self.shared.opts.fsync && must_sync {
                if let Err(e) = self.timed_sync() {
                    self.fail(from, to, e);
                    return;
                }
            } else {
                self.dirty = true;
            }
        }
        self.shared.metrics.add_group_commit();
        if self.snapshot != snapshot_before {
            *self.shared.durable_snapshot.lock() = self.snapshot;
        }
        {
            let mut p = self.shared.progress.lock();
            assert!(to > p.durable, "groups complete in order");
            p.durable = to;
        }
        self.shared.progress_cv.notify_all();
        // Cut now rather than when the next group arrives, off its latency.
        if let Err(e) = self.maybe_cut() {
            self.fail(to + 1, to, e);
        }
    }

    /// How many zeros to write after a group's `data_len` bytes of
    /// records: up to [`ZERO_AHEAD`] past them when fewer than half of
    /// that are known written (`zeroed`), never past the segment's
    /// preallocated size; 0 without `fsync`.
    ///
    /// Why: a segment is preallocated with `fallocate`, whose extents stay
    /// "unwritten" until written; a commit into one converts it, so its
    /// fdatasync also writes the inode: two device writes instead of one.
    /// Measured on this project's machine (ext4, virtio disk;
    /// benches/RESULTS.md): a 1.5 KiB `pwrite` plus `fdatasync` costs 51 us
    /// of CPU into fallocated space and 35 us into zeros written before,
    /// 0.24 vs 0.15 ms. Zeros are what preallocated space reads as anyway
    /// (the clean end), so they change no byte of the log. They go out in
    /// the group's own write and fdatasync (no extra sync for a failure to
    /// land in; a group of unsynced batches leaves them to the next sync):
    /// one commit per ~1 MiB of log carries them, about 1.5 ms more for
    /// that commit.
    fn zeros_after(&self, data_len: u64) -> u64 {
        let data_end = self.offset + data_len;
        let end = self.shared.opts.segment_size;
        if !self.shared.opts.fsync || data_end >= end || self.zeroed >= data_end + ZERO_AHEAD / 2 {
            return 0;
        }
        (data_end + ZERO_AHEAD).min(end) - data_end
    }

    /// Encodes one batch: snapshot marker, entries, hard state.
    fn encode(&mut self, b: &WriteBatch) {
        if let Some(s) = &b.snapshot {
            self.last_crc = record::encode_snapshot(&mut self.buf, self.last_crc, s);
            self.index.apply_snapshot(s.index);
            self.snapshot = Some(*s);
        }
        for e in &b.entries {
            self.last_crc = record::encode_entry(&mut self.buf, self.last_crc, e);
            self.index.push_entry(e.index);
        }
        if let Some(hs) = &b.hard_state {
            self.last_crc = record::encode_hard_state(&mut self.buf, self.last_crc, hs);
            self.hard_state = Some(*hs);
        }
    }

    fn timed_sync(&mut self) -> std::io::Result<()> {
        fail::fail_point!("wal::sync::before", |_| Err(std::io::Error::other(
            "fsync failed (failpoint wal::sync::before)"
        )));
        let start = Instant::now();
        self.file.sync_data()?;
        self.shared.metrics.observe_fsync(start.elapsed());
        self.dirty = false;
        Ok(())
    }

    /// Starts a new segment if the current one is full.
    fn maybe_cut(&mut self) -> std::io::Result<()> {
        if self.offset < self.shared.opts.segment_size {
            return Ok(());
        }
        // Drop the unused preallocated tail; make the old segment final.
        self.file.set_len(self.offset)?;
        let start = Instant::now();
        self.file.sync_all()?;
        self.shared.metrics.observe_fsync(start.elapsed());
        self.dirty = false;
        let preamble = Preamble {
            seq: self.segment.seq + 1,
            first_index: self.index.last_index() + 1,
            prev_crc: self.last_crc,
            metadata: &self.metadata,
            snapshot: self.snapshot,
            hard_state: self.hard_state,
        };
        let new = segment::create_segment(
            &*self.shared.fs,
            &self.shared.dir,
            &preamble,
            self.shared.opts.segment_size,
        )?;
        self.shared.metrics.add_bytes(new.offset);
        tracing::info!(
            segment = %new.info.path.display(),
            previous_len = self.offset,
            "wal: cut a new segment"
        );
        self.shared.segments.lock().push(new.info.clone());
        self.file = new.file;
        self.segment = new.info;
        self.offset = new.offset;
        self.zeroed = new.offset;
        self.last_crc = new.last_crc;
        Ok(())
    }

    /// Poisons the WAL: `from..=to` get `e`, everything later `Poisoned`.
    fn fail(&mut self, from: u64, to: u64, e: std::io::Error) {
        tracing::error!(
            segment = %self.segment.path.display(),
            offset = self.offset,
            error = %e,
            "wal: write or fsync failed; the wal is poisoned and must be reopened"
        );
        self.shared.poisoned.store(true, Ordering::Release);
        {
            let mut p = self.shared.progress.lock();
            if p.failed.is_none() {
                p.failed = Some(Failure {
                    from,
                    to,
                    error: Error::Io(e),
                });
            }
        }
        self.shared.progress_cv.notify_all();
    }
}

fn batch_size(b: &WriteBatch) -> usize {
    b.entries
        .iter()
        .map(|e| record::encoded_len(record::ENTRY_PREFIX + e.data.len()))
        .sum::<usize>()
        + 128
}
