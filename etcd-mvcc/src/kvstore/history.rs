//! The watch event source: live events of every committed transaction, and
//! historical events read back from any uncompacted revision (the part of
//! etcd's `watchable_store.go` that touches the store: `notify` is fed from
//! `TxnWrite.End`, `syncWatchers` reads `[minRev, curRev]` from the backend).
//!
//! Live events: [`Store::subscribe`] registers an [`EventSink`]. Every
//! [`TxnWrite::end`](crate::TxnWrite::end) with at least one change calls
//! each sink once with the transaction's revision and its events, in change
//! order (PUT with `kv` only; DELETE with `kv = {key, mod_revision}` and
//! `prev_kv`), after the batch is in the backend and the revision is
//! published, and *before* the next transaction can start (the writer mutex
//! is still held). So sinks see every revision exactly once, in order, and
//! a reader that loads the current revision `R` after a sink saw `R` finds
//! `R` in the history.
//!
//! Historical events: [`Store::history`] returns the events of revisions
//! `from..=current`, whole revisions only, at most `max_revisions` of them
//! per call; the caller continues at [`HistoryBatch::next_rev`]. Stored
//! tombstones carry only the key; as in etcd their `mod_revision` is patched
//! in from the revision. Historical events carry no `prev_kv` (etcd looks it
//! up at `mod_revision - 1`; see [`Store::range`](crate::Store::range)).
//!
//! Compaction: `from < compact_revision` returns [`History::Compacted`] with
//! the compaction revision (etcd compares `startRev < compactRev`; starting
//! exactly at the compaction revision is allowed). The RocksDB snapshot is
//! taken *before* the compaction revision is loaded: physical compaction
//! only removes revisions `<=` a compaction revision that was published
//! before it started, so every revision above the loaded compaction
//! revision is still in the snapshot. As in etcd, a tombstone *at* the
//! compaction revision itself is not kept by compaction, so a replay
//! starting exactly there may miss that one delete.
//!
//! Restores: [`Store::restore`](crate::Store::restore) replaces the whole
//! history and publishes **no** events: sinks see the revision jump from the
//! old current revision to the image's without the revisions in between.
//! [`Store::restore_epoch`](crate::Store::restore_epoch) changes with every
//! restore. A watch layer must move every watcher to *unsynced* after a
//! restore and catch up from [`Store::history`] (from the watcher's next
//! revision: the events are there unless the image was compacted past it,
//! and then the watcher gets [`History::Compacted`], as etcd cancels it with
//! the compaction revision). A history read that overlaps a restore returns
//! the old store's events or the new one's, never a mix.
//!
//! Example: puts of `a` at 2 and 3, delete of `a` at 4, `compact(3)`:
//!
//! ```
//! use etcd_mvcc::{History, Store, StoreOptions};
//! let dir = tempfile::tempdir().unwrap();
//! let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
//! for v in ["1", "2"] {
//!     let mut t = s.write();
//!     t.put(b"a", v.as_bytes(), 0).unwrap();
//!     t.end(s.consistent_index() + 1).unwrap();
//! }
//! let mut t = s.write();
//! t.delete_range(b"a", b"").unwrap();
//! t.end(s.consistent_index() + 1).unwrap();
//! s.compact(3, s.consistent_index() + 1).unwrap().wait();
//! assert_eq!(s.history(2, 100).unwrap(), History::Compacted { compact_revision: 3 });
//! let History::Events(b) = s.history(3, 100).unwrap() else { panic!() };
//! let revs: Vec<i64> = b.events.iter().map(|e| e.kv.as_ref().unwrap().mod_revision).collect();
//! assert_eq!(revs, [3, 4]);
//! assert_eq!(b.next_rev, 5);
//! ```

use std::sync::atomic::Ordering;

use prost::Message;

use super::events::EventSink;
use super::store::Store;
use crate::backend::Cf;
use crate::error::{Error, Result};
use crate::pb::mvccpb::{event::EventType, Event, KeyValue};
use crate::revision::Revision;

/// One read of the history.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryBatch {
    /// Events of whole revisions, in revision order (and change order within
    /// a revision).
    pub events: Vec<Event>,
    /// The first revision not covered by this batch: continue from here.
    /// `current_rev + 1` once everything was read.
    pub next_rev: i64,
    /// The store's current revision when the batch was read.
    pub current_rev: i64,
}

/// Result of [`Store::history`].
#[derive(Clone, Debug, PartialEq)]
pub enum History {
    /// The events from the requested revision on.
    Events(HistoryBatch),
    /// The requested revision is below the compaction revision.
    Compacted {
        /// The store's compaction revision.
        compact_revision: i64,
    },
}

impl Store {
    /// Registers a sink that receives the events of every transaction
    /// committed from now on (see the module doc for the guarantees).
    pub fn subscribe(&self, sink: EventSink) {
        self.inner.subscribers.write().push(sink);
    }

    /// Reads the events of revisions `from..=current`, at most
    /// `max_revisions` distinct revisions (0 is treated as 1); never splits
    /// a revision. `from <= 0` starts at revision 1.
    pub fn history(&self, from: i64, max_revisions: usize) -> Result<History> {
        let inner = &self.inner;
        let from = from.max(1);
        // Order matters (module doc): current, snapshot, compaction revision;
        // under the restore gate, so all three belong to one store.
        let (current, snap, compact) = {
            let _gate = inner.gate.read();
            inner.check_complete()?;
            let current = inner.current_rev.load(Ordering::Acquire);
            let snap = inner.backend.snapshot();
            (current, snap, inner.compact_rev.load(Ordering::Acquire))
        };
        if from < compact {
            return Ok(History::Compacted {
                compact_revision: compact,
            });
        }
        let mut batch = HistoryBatch {
            events: Vec::new(),
            next_rev: from,
            current_rev: current,
        };
        if from > current {
            return Ok(History::Events(batch));
        }
        let max_revisions = max_revisions.max(1);
        let start = Revision::new(from, 0).to_bytes();
        let end = Revision::new(current + 1, 0).to_bytes();
        let mut revisions = 0usize;
        let mut last_main = 0i64;
        for record in snap.scan(Cf::Key, &start, Some(&end)) {
            let (k, v) = record?;
            let (rev, tombstone) = Revision::from_key(&k)?;
            if rev.main != last_main {
                if revisions == max_revisions {
                    batch.next_rev = rev.main;
                    return Ok(History::Events(batch));
                }
                revisions += 1;
                last_main = rev.main;
            }
            let mut kv = KeyValue::decode(&v[..])
                .map_err(|e| Error::Corruption(format!("undecodable key-value at {rev:?}: {e}")))?;
            let ty = if tombstone {
                kv.mod_revision = rev.main;
                EventType::Delete
            } else {
                EventType::Put
            };
            batch.events.push(Event {
                r#type: ty as i32,
                kv: Some(kv),
                prev_kv: None,
            });
        }
        batch.next_rev = current + 1;
        Ok(History::Events(batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;
    use parking_lot::Mutex;
    use std::sync::Arc;
    use std::time::Duration;

    fn put(s: &Store, kvs: &[(&str, &str)]) -> i64 {
        let mut t = s.write();
        for (k, v) in kvs {
            t.put(k.as_bytes(), v.as_bytes(), 0).unwrap();
        }
        t.end(s.consistent_index() + 1).unwrap();
        s.current_revision()
    }

    fn del(s: &Store, key: &str) {
        let mut t = s.write();
        t.delete_range(key.as_bytes(), b"").unwrap();
        t.end(s.consistent_index() + 1).unwrap();
    }

    fn summary(events: &[Event]) -> Vec<(i64, String, bool)> {
        events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref().unwrap();
                (
                    kv.mod_revision,
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    e.r#type == EventType::Delete as i32,
                )
            })
            .collect()
    }

    #[test]
    fn subscribers_see_every_transaction_in_order_deletes_with_prev_kv() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let seen: Arc<Mutex<Vec<(i64, Vec<Event>)>>> = Arc::default();
        let sink = seen.clone();
        s.subscribe(Arc::new(move |rev, evs| {
            sink.lock().push((rev, evs.to_vec()))
        }));
        put(&s, &[("a", "1"), ("b", "1")]);
        // A transaction without changes publishes nothing.
        s.write().end(s.consistent_index() + 1).unwrap();
        put(&s, &[("a", "2")]);
        del(&s, "a");
        let seen = seen.lock();
        assert_eq!(
            seen.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert_eq!(
            summary(&seen[0].1),
            vec![(2, "a".into(), false), (2, "b".into(), false)]
        );
        // A put's event carries no prev_kv (the store does not read it).
        assert_eq!(seen[1].1[0].prev_kv, None);
        assert_eq!(summary(&seen[2].1), vec![(4, "a".into(), true)]);
        assert_eq!(seen[2].1[0].prev_kv.as_ref().unwrap().value, "2");
    }

    #[test]
    fn history_equals_the_live_stream_in_batches_of_whole_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let live: Arc<Mutex<Vec<Event>>> = Arc::default();
        let sink = live.clone();
        s.subscribe(Arc::new(move |_, evs| sink.lock().extend_from_slice(evs)));
        for i in 0..20 {
            put(&s, &[("k", &i.to_string()), (&format!("x{i}"), "v")]);
            if i % 3 == 0 {
                del(&s, &format!("x{i}"));
            }
        }
        let mut all = Vec::new();
        let mut from = 1;
        loop {
            let History::Events(b) = s.history(from, 4).unwrap() else {
                panic!("not compacted")
            };
            let revs: std::collections::BTreeSet<i64> = b
                .events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision)
                .collect();
            assert!(revs.len() <= 4);
            all.extend(b.events);
            if b.next_rev > b.current_rev {
                break;
            }
            from = b.next_rev;
        }
        let strip = |v: &[Event]| -> Vec<Event> {
            v.iter()
                .map(|e| Event {
                    prev_kv: None,
                    ..e.clone()
                })
                .collect()
        };
        assert_eq!(strip(&all), strip(&live.lock()));
        // From the future: nothing, continue at the same revision.
        let History::Events(b) = s.history(1000, 4).unwrap() else {
            panic!()
        };
        assert!(b.events.is_empty());
        assert_eq!(b.next_rev, 1000);
    }

    #[test]
    fn compacted_start_reports_the_compaction_revision() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        for i in 0..5 {
            put(&s, &[("a", &i.to_string())]);
        }
        s.compact(4, s.consistent_index() + 1).unwrap().wait();
        assert_eq!(
            s.history(3, 10).unwrap(),
            History::Compacted {
                compact_revision: 4
            }
        );
        let History::Events(b) = s.history(4, 10).unwrap() else {
            panic!("start == compact revision is allowed")
        };
        assert_eq!(
            summary(&b.events),
            vec![
                (4, "a".into(), false),
                (5, "a".into(), false),
                (6, "a".into(), false)
            ]
        );
        // Survives a reopen.
        drop(s);
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(
            s.history(1, 10).unwrap(),
            History::Compacted {
                compact_revision: 4
            }
        );
    }

    /// A reader racing with compactions: every batch it gets is either
    /// `Compacted` or complete (no revision above the reported compaction
    /// revision is ever missing).
    #[test]
    fn history_never_misses_revisions_under_concurrent_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(
            Store::open(
                dir.path(),
                StoreOptions {
                    compaction_batch_limit: 3,
                    compaction_sleep_interval: Duration::from_micros(50),
                    ..StoreOptions::default()
                },
            )
            .unwrap(),
        );
        // Every revision writes key "k" and one fresh key: 2 events each.
        for i in 0..300 {
            put(&s, &[("k", &i.to_string()), (&format!("u{i}"), "v")]);
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let compactor = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut rev = 2;
                while !stop.load(Ordering::Relaxed) && rev < 290 {
                    rev += 7;
                    drop(s.compact(rev, s.consistent_index() + 1).unwrap());
                    std::thread::sleep(Duration::from_micros(300));
                }
            })
        };
        let mut compacted = 0;
        let mut complete = 0;
        for round in 0..400 {
            let from = 2 + (round * 13) % 290;
            match s.history(from, 1000).unwrap() {
                History::Compacted { compact_revision } => {
                    assert!(from < compact_revision);
                    compacted += 1;
                }
                History::Events(b) => {
                    let revs: Vec<i64> = b
                        .events
                        .iter()
                        .map(|e| e.kv.as_ref().unwrap().mod_revision)
                        .collect();
                    // Every revision from `from` is present, twice (two
                    // keys): both are puts, and a put at the compaction
                    // revision is kept by compaction.
                    let want: Vec<i64> = (from..=b.current_rev).flat_map(|r| [r, r]).collect();
                    assert_eq!(revs, want, "history from {from}");
                    complete += 1;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        compactor.join().unwrap();
        assert!(compacted > 0 && complete > 0, "{compacted} {complete}");
    }
}
