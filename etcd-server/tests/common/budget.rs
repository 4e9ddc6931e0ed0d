//! Work bounded by counts, not by time: a test's load phase ends when its
//! clients have done a number of operations, so neither a fast machine
//! (more data than a message may carry, histories too long to check) nor a
//! slow one (too little to mean anything) changes what the test asserts.
//! Wall time only appears as a safety cap.
//!
//! A phase goes like this (a kill -9 test):
//!
//! ```text
//! budget.refill(2 * N)          clients may send at most 2N operations
//! budget.wait_done(N, cap)      ... until N of them have completed
//! server.kill9()                the rest are in flight or not yet sent
//! ```
//!
//! Clients call [`OpBudget::take`] before each operation (and idle while it
//! says no) and [`OpBudget::done`] after it completes.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Operations still allowed in this phase, and operations completed.
#[derive(Default)]
pub struct OpBudget {
    /// Operations clients may still start (may go below zero by the
    /// number of refused takes; only `> 0` matters).
    left: AtomicI64,
    /// Operations completed (answered, with any outcome) since the start.
    done: AtomicU64,
}

impl OpBudget {
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows `n` more operations, forgetting what was left.
    pub fn refill(&self, n: u64) {
        self.left.store(n as i64, Ordering::SeqCst);
    }

    /// Takes one operation from the budget; false when it is spent.
    pub fn take(&self) -> bool {
        self.left.fetch_sub(1, Ordering::SeqCst) > 0
    }

    /// Records one completed operation.
    pub fn done(&self) {
        self.done.fetch_add(1, Ordering::SeqCst);
    }

    /// Operations completed so far.
    pub fn completed(&self) -> u64 {
        self.done.load(Ordering::SeqCst)
    }

    /// Blocks until `n` more operations (counted from the call) have
    /// completed, or `cap` has passed; returns how many completed.
    pub fn wait_done(&self, n: u64, cap: Duration) -> u64 {
        let from = self.completed();
        let deadline = Instant::now() + cap;
        while self.completed() - from < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.completed() - from
    }

    /// [`OpBudget::wait_done`] for async callers.
    pub async fn wait_done_async(&self, n: u64, cap: Duration) -> u64 {
        let from = self.completed();
        let deadline = Instant::now() + cap;
        while self.completed() - from < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.completed() - from
    }
}

/// How long a client idles when the budget is spent before asking again.
pub const IDLE: Duration = Duration::from_millis(5);
