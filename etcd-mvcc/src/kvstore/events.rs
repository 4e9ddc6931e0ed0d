//! Subscribers to the committed transactions of a [`Store`](super::Store)
//! (the live half of the `history` module).

use std::sync::Arc;

use crate::pb::mvccpb::Event;

/// Receives the events of every committed transaction: `(revision, events)`.
///
/// Called on the writing thread while the store's writer mutex is held: it
/// must be quick and must not start a write transaction or a compaction
/// (that would deadlock). Reads are fine.
pub type EventSink = Arc<dyn Fn(i64, &[Event]) + Send + Sync>;

/// Calls the subscribers with a committed transaction's events.
pub(super) fn publish(subscribers: &[EventSink], rev: i64, events: &[Event]) {
    for s in subscribers {
        s(rev, events);
    }
}
