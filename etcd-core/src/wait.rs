//! Requests waiting for their raft entry to be applied (etcd's `pkg/wait`):
//! the proposer registers its request id, the apply loop triggers it.

use parking_lot::Mutex;
use std::collections::HashMap;
use tokio::sync::oneshot;

/// Waiters by request id.
pub(crate) struct Wait<T> {
    waiters: Mutex<HashMap<u64, oneshot::Sender<T>>>,
}

impl<T> Wait<T> {
    pub(crate) fn new() -> Self {
        Wait {
            waiters: Mutex::new(HashMap::new()),
        }
    }

    /// Registers `id`; the receiver gets the value given to [`Wait::trigger`].
    pub(crate) fn register(&self, id: u64) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        let old = self.waiters.lock().insert(id, tx);
        assert!(old.is_none(), "request id {id:x} registered twice");
        rx
    }

    /// Hands `value` to the waiter of `id`, if it still waits.
    pub(crate) fn trigger(&self, id: u64, value: T) {
        if let Some(tx) = self.waiters.lock().remove(&id) {
            let _ = tx.send(value);
        }
    }

    /// Forgets `id` (its requester gave up).
    pub(crate) fn cancel(&self, id: u64) {
        self.waiters.lock().remove(&id);
    }
}
