//! Requests waiting for their raft entry to be applied (etcd's `pkg/wait`):
//! the proposer registers its request id, the apply loop triggers it.
//!
//! Invariant: a waiter is answered only by the entry its own process
//! proposed. Every proposal carries a [`Waiter`]: the request id and the
//! proposing process's *origin*, a random 64-bit number drawn when the
//! member starts. Request ids alone (etcd's idutil: the member id's low
//! 16 bits, then a millisecond clock and a counter) can collide: two
//! members whose ids share their low 16 bits, or a member restarted
//! after its clock went back, can propose the same id while one of them
//! waits on it. The apply loop applies everybody's entries, so without
//! the origin a waiter could be answered with another request's result.
//!
//! Example: members A and B (ids `0x..12ab` both) propose request id
//! `0x12ab_0000_0000_0100`; B's entry commits first. On A, applying it
//! calls [`Wait::trigger_applied`] with B's origin: A's waiter stays
//! registered, and is answered by A's own entry when it applies.

use parking_lot::Mutex;
use std::collections::HashMap;
use tokio::sync::oneshot;

/// Who waits for a proposed entry: a request id and the process that
/// proposed it. Carried in the entry (`RaftRequest`, or the context of a
/// raft configuration change).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Waiter {
    /// The proposing process ([`Wait::origin`]); 0 for entries written
    /// before origins existed, which no waiter matches.
    pub(crate) origin: u64,
    /// The request id (0: nobody waits).
    pub(crate) id: u64,
}

/// Waiters by request id, for one process.
pub(crate) struct Wait<T> {
    /// This process's origin (see the module doc).
    origin: u64,
    waiters: Mutex<HashMap<u64, oneshot::Sender<T>>>,
}

impl<T> Wait<T> {
    /// Waiters of the process with `origin` (nonzero; a random number
    /// drawn at start).
    pub(crate) fn new(origin: u64) -> Self {
        assert_ne!(origin, 0, "origin 0 marks entries without an origin");
        Wait {
            origin,
            waiters: Mutex::new(HashMap::new()),
        }
    }

    /// This process's origin, for the entries it proposes.
    pub(crate) fn origin(&self) -> u64 {
        self.origin
    }

    /// The tag of request `id` proposed by this process.
    pub(crate) fn waiter(&self, id: u64) -> Waiter {
        Waiter {
            origin: self.origin,
            id,
        }
    }

    /// Registers `id`; the receiver gets the value given to [`Wait::trigger`].
    pub(crate) fn register(&self, id: u64) -> oneshot::Receiver<T> {
        let (tx, rx) = oneshot::channel();
        let old = self.waiters.lock().insert(id, tx);
        assert!(old.is_none(), "request id {id:x} registered twice");
        rx
    }

    /// Hands `value` to the waiter of `id`, if it still waits (this
    /// process failed the proposal before it reached the log).
    pub(crate) fn trigger(&self, id: u64, value: T) {
        if let Some(tx) = self.waiters.lock().remove(&id) {
            let _ = tx.send(value);
        }
    }

    /// Hands the result of an applied entry to its waiter, if the entry
    /// was proposed by this process and its requester still waits.
    pub(crate) fn trigger_applied(&self, w: Waiter, value: T) {
        if w.origin == self.origin && w.id != 0 {
            self.trigger(w.id, value);
        }
    }

    /// Forgets `id` (its requester gave up).
    pub(crate) fn cancel(&self, id: u64) {
        self.waiters.lock().remove(&id);
    }
}

/// A random nonzero origin for a starting process.
pub(crate) fn new_origin() -> u64 {
    loop {
        let o = rand::random::<u64>();
        if o != 0 {
            return o;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_own_entries_answer_a_waiter() {
        let (a, b) = (Wait::new(7), Wait::<&str>::new(9));
        let mut rx = a.register(0x12ab_0000_0000_0100);
        // B proposed the same id; its entry is applied on A first.
        a.trigger_applied(b.waiter(0x12ab_0000_0000_0100), "b's result");
        assert!(
            rx.try_recv().is_err(),
            "a foreign entry answered A's waiter"
        );
        // An entry from before origins existed matches nobody either.
        a.trigger_applied(
            Waiter {
                origin: 0,
                id: 0x12ab_0000_0000_0100,
            },
            "old",
        );
        assert!(rx.try_recv().is_err());
        a.trigger_applied(a.waiter(0x12ab_0000_0000_0100), "a's result");
        assert_eq!(rx.try_recv().unwrap(), "a's result");
    }

    #[test]
    fn origins_differ_between_starts() {
        assert_ne!(new_origin(), new_origin());
    }
}
