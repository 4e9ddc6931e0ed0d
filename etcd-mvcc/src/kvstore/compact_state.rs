//! The compaction thread's job queue and progress, and [`CompactWait`]
//! (protocol: the `compaction` module doc).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

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
pub(super) struct CompactState {
    state: Mutex<State>,
    cond: Condvar,
}

impl CompactState {
    pub(super) fn new(finished: i64) -> Self {
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

    pub(super) fn schedule(&self, rev: i64) {
        let mut s = self.state.lock();
        s.pending = Some(s.pending.map_or(rev, |p| p.max(rev)));
        self.cond.notify_all();
    }

    pub(super) fn finished(&self) -> i64 {
        self.state.lock().finished
    }

    pub(super) fn epoch(&self) -> u64 {
        self.state.lock().epoch
    }

    /// After a restore: a new epoch with the image's finished compaction;
    /// pending jobs are dropped and every waiter returns.
    pub(super) fn reset(&self, finished: i64, epoch: u64) {
        let mut s = self.state.lock();
        s.epoch = epoch;
        s.finished = finished;
        s.failed = i64::MIN;
        s.pending = None;
        self.cond.notify_all();
    }

    pub(super) fn shutdown(&self) {
        self.state.lock().shutdown = true;
        self.cond.notify_all();
    }

    /// The next job: (revision, epoch).
    pub(super) fn next_job(&self) -> Option<(i64, u64)> {
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

    pub(super) fn done(&self, rev: i64, ok: bool, epoch: u64) {
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
    pub(super) fn sleep(&self, d: Duration) -> bool {
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
    pub(super) fn new(state: Arc<CompactState>, rev: i64) -> Self {
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
