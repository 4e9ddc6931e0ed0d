//! Background compaction (etcd's `kvstore_compaction.go`).
//!
//! [`Store::compact`](crate::Store::compact) only records the scheduled
//! revision `C` (in `meta`, with the consistent index) and raises the
//! compaction revision; one background thread then:
//!
//! 1. compacts the key index in chunks of `compaction_batch_limit` keys, each
//!    chunk under the writer mutex and the index write lock (so an open
//!    `TxnWrite` is never interleaved with it), collecting the revisions to
//!    keep (per key the latest revision `<= C` unless it is a tombstone);
//! 2. scans the `key` column family from the first revision up to `C`
//!    in batches of `compaction_batch_limit` revisions, deleting each revision
//!    not kept, one backend batch each, pausing `compaction_sleep_interval`
//!    in between;
//! 3. records `C` as the finished compaction revision in `meta`.
//!
//! Invariants:
//! - Reads at revisions `>= C` give the same results before, during and after
//!   the compaction: only revisions no such read can return are deleted.
//! - Deletes are written in revision order and the finished revision last, so
//!   any persisted prefix is a valid state; if the store is closed or crashes
//!   before step 3, [`Store::open`](crate::Store::open) sees
//!   `scheduled > finished` and runs the compaction again (it is idempotent).
//! - Jobs are processed in order; if several are pending only the highest
//!   runs (it covers the lower ones).
//! - A restore from a snapshot image ([`Store::restore`](crate::Store::restore))
//!   replaces the history underneath: each job carries the store's restore
//!   epoch, checked under the writer mutex (index chunks) or the restore
//!   gate (physical batches, the finished mark), so a job started before a
//!   restore stops at its next step without touching the restored data;
//!   [`CompactWait`]s of that epoch return.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};

use crate::backend::{Cf, WriteBatch, META_FINISHED_COMPACT};
use crate::error::Result;
use crate::kvstore::Inner;
use crate::revision::Revision;

#[derive(Debug, Default)]
struct State {
    /// Highest scheduled revision not yet picked up by the thread.
    pending: Option<i64>,
    /// Highest compaction revision physically finished.
    finished: i64,
    /// Highest compaction revision that failed (waiters give up on it).
    failed: i64,
    shutdown: bool,
    /// The store's restore epoch: jobs and waiters of an earlier one are void.
    epoch: u64,
}

/// Job queue and progress of the compaction thread.
pub(crate) struct CompactState {
    state: Mutex<State>,
    cond: Condvar,
}

impl CompactState {
    pub(crate) fn new(finished: i64) -> Self {
        CompactState {
            state: Mutex::new(State {
                finished,
                // Below any revision, so a wait for compaction 0 really waits.
                failed: i64::MIN,
                ..State::default()
            }),
            cond: Condvar::new(),
        }
    }

    pub(crate) fn schedule(&self, rev: i64) {
        let mut s = self.state.lock();
        s.pending = Some(s.pending.map_or(rev, |p| p.max(rev)));
        self.cond.notify_all();
    }

    pub(crate) fn finished(&self) -> i64 {
        self.state.lock().finished
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.state.lock().epoch
    }

    /// After a restore: a new epoch with the image's finished compaction;
    /// pending jobs are dropped and every waiter returns.
    pub(crate) fn reset(&self, finished: i64, epoch: u64) {
        let mut s = self.state.lock();
        s.epoch = epoch;
        s.finished = finished;
        s.failed = i64::MIN;
        s.pending = None;
        self.cond.notify_all();
    }

    pub(crate) fn shutdown(&self) {
        self.state.lock().shutdown = true;
        self.cond.notify_all();
    }

    /// The next job: (revision, epoch).
    fn next_job(&self) -> Option<(i64, u64)> {
        let mut s = self.state.lock();
        loop {
            if s.shutdown {
                return None;
            }
            if let Some(rev) = s.pending.take() {
                return Some((rev, s.epoch));
            }
            self.cond.wait(&mut s);
        }
    }

    fn done(&self, rev: i64, ok: bool, epoch: u64) {
        let mut s = self.state.lock();
        if epoch != s.epoch {
            // a restore replaced the store meanwhile; its waiters returned
        } else if ok {
            s.finished = s.finished.max(rev);
        } else {
            s.failed = s.failed.max(rev);
        }
        self.cond.notify_all();
    }

    /// Sleeps `d` unless shut down meanwhile; returns true on shutdown.
    fn sleep(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut s = self.state.lock();
        while !s.shutdown && Instant::now() < deadline {
            self.cond.wait_until(&mut s, deadline);
        }
        s.shutdown
    }

    fn wait(&self, rev: i64, epoch: u64) {
        let mut s = self.state.lock();
        while s.epoch == epoch && s.finished < rev && s.failed < rev && !s.shutdown {
            self.cond.wait(&mut s);
        }
    }
}

/// Returned by [`Store::compact`](crate::Store::compact).
#[must_use = "call wait() to wait for the physical compaction, or drop it"]
///
/// It only refers to the compaction progress, not to the database: holding
/// it does not keep the store open.
pub struct CompactWait {
    state: Arc<CompactState>,
    rev: i64,
    epoch: u64,
}

impl std::fmt::Debug for CompactWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactWait")
            .field("rev", &self.rev)
            .finish()
    }
}

impl CompactWait {
    pub(crate) fn new(state: Arc<CompactState>, rev: i64) -> Self {
        let epoch = state.epoch();
        CompactWait { state, rev, epoch }
    }

    /// The compaction revision.
    pub fn revision(&self) -> i64 {
        self.rev
    }

    /// Returns when the physical compaction finished (etcd's
    /// `Compact{physical: true}`), failed, the store was closed, or a
    /// restore from a snapshot image replaced the store.
    pub fn wait(self) {
        self.state.wait(self.rev, self.epoch);
    }
}

pub(crate) fn spawn(inner: Arc<Inner>) -> Result<JoinHandle<()>> {
    Ok(std::thread::Builder::new()
        .name("mvcc-compaction".into())
        .spawn(move || {
            while let Some((rev, epoch)) = inner.compaction.next_job() {
                match run(&inner, rev, epoch) {
                    Ok(Outcome::Finished) => {
                        tracing::info!(revision = rev, "mvcc compaction finished");
                        inner.compaction.done(rev, true, epoch);
                    }
                    Ok(Outcome::Shutdown) => return, // resumes at next open
                    Ok(Outcome::Restored) => {
                        tracing::info!(
                            revision = rev,
                            "mvcc compaction abandoned: the store was restored from a snapshot"
                        );
                        inner.compaction.done(rev, false, epoch);
                    }
                    Err(e) => {
                        tracing::error!(revision = rev, error = %e, "mvcc compaction failed");
                        inner.compaction.done(rev, false, epoch);
                    }
                }
            }
        })?)
}

/// How a compaction job ended.
enum Outcome {
    Finished,
    /// The store is closing.
    Shutdown,
    /// A restore replaced the store (its epoch changed).
    Restored,
}

/// Runs one compaction of the store as of restore epoch `epoch`.
fn run(inner: &Inner, rev: i64, epoch: u64) -> Result<Outcome> {
    let limit = inner.opts.compaction_batch_limit.max(1);
    let stopping = || inner.shutdown.load(Ordering::Acquire);
    let restored = || inner.epoch.load(Ordering::Acquire) != epoch;

    // 1. key index, in chunks of keys
    // Each chunk's keys are read under the index read lock and compacted
    // under the writer mutex: no lock is held for more than one chunk, so
    // writers wait at most one chunk however large the index is.
    let mut keep: HashSet<Revision> = HashSet::new();
    let mut start: Vec<u8> = Vec::new(); // the empty key: the first
    loop {
        if stopping() {
            return Ok(Outcome::Shutdown);
        }
        let chunk = inner.index.read().keys_from(&start, limit);
        let Some(last) = chunk.last() else { break };
        start = last.to_vec();
        start.push(0); // the smallest key after `last`
        let _writer = inner.writer.lock();
        if restored() {
            return Ok(Outcome::Restored);
        }
        inner.index.write().compact_keys(&chunk, rev, &mut keep);
        drop(_writer);
        std::thread::yield_now();
    }

    // 2. physical removal of superseded revisions <= rev
    let b = &inner.backend;
    let upper = Revision::new(rev + 1, 0).to_bytes();
    let mut start: Vec<u8> = Vec::new();
    let mut removed = 0usize;
    loop {
        if stopping() {
            return Ok(Outcome::Shutdown);
        }
        let mut batch = WriteBatch::default();
        let mut scanned = 0;
        let mut last: Option<Bytes> = None;
        let mut more = false;
        // The restore gate from the epoch check to the write: a restore
        // either finished before (the check fails) or starts after it.
        let gate = inner.gate.read();
        if restored() {
            return Ok(Outcome::Restored);
        }
        {
            // A fresh snapshot per batch: it sees the previous batch's deletes.
            let snap = b.snapshot();
            for item in snap.scan(Cf::Key, &start, Some(&upper)) {
                let (k, _) = item?;
                if scanned == limit {
                    more = true;
                    break;
                }
                let (r, _) = Revision::from_key(&k)?;
                debug_assert!(r.main <= rev);
                if !keep.contains(&r) {
                    batch.delete(Cf::Key, k.to_vec());
                    removed += 1;
                }
                last = Some(k);
                scanned += 1;
            }
        }
        if !batch.is_empty() {
            b.write(batch)?;
        }
        drop(gate);
        if !more {
            break;
        }
        let mut next = last.expect("scanned at least one key").to_vec();
        next.push(0); // the smallest key after `last`
        start = next;
        if inner.compaction.sleep(inner.opts.compaction_sleep_interval) {
            return Ok(Outcome::Shutdown);
        }
    }

    // 3. done
    let gate = inner.gate.read();
    if restored() {
        return Ok(Outcome::Restored);
    }
    let mut batch = WriteBatch::default();
    batch.put(Cf::Meta, META_FINISHED_COMPACT, rev.to_be_bytes());
    b.write(batch)?;
    drop(gate);
    tracing::debug!(
        revision = rev,
        removed,
        kept = keep.len(),
        "mvcc physical compaction done"
    );
    Ok(Outcome::Finished)
}
