//! The watch hub (etcd's `watchable_store.go`): delivers the store's events
//! to watchers, live or replayed from history.
//!
//! Every watcher is in exactly one of two groups:
//! - **synced**: it has received every event up to the last revision the
//!   store published (`notified_rev`); the apply thread hands it each new
//!   transaction's events directly ([`WatchableStore::notify`], called by
//!   the store's event sink under the store's writer mutex, so in revision
//!   order; a put's `prev_kv` is read there, once per revision, only when
//!   a watcher getting it asked for it, as etcd's watch server reads it);
//! - **unsynced**: it is behind (it started at an old revision, or its
//!   consumer was too slow). The sync thread reads the history from the
//!   lowest `next_rev` among them, in batches of at most
//!   [`MAX_SYNC_REVISIONS`] whole revisions, hands each its events, and
//!   moves a watcher to synced once its `next_rev > notified_rev`.
//!
//! Every watcher has a `next_rev`: all events below it were queued for it,
//! none at or above it. Events of one revision always go out in one
//! response. Responses are queued per stream ([`StreamQueue`]), at most
//! [`STREAM_BUF_LEN`] event responses (etcd's `chanBufLen`); when a synced
//! watcher's queue is full the watcher is *parked*: moved to unsynced with
//! `next_rev` at the revision it missed, so apply never blocks, memory
//! stays bounded, and nothing is lost (it resumes from history once its
//! consumer drained the queue). As in etcd, an unsynced watcher whose
//! `next_rev` falls below the compaction revision gets one response with
//! `compact_revision` set and `canceled`, and is removed.
//!
//! Moving a watcher from unsynced to synced without losing or repeating an
//! event: the sync thread reads history up to the current revision `R`
//! without the hub lock, then under the lock sets `next_rev = R + 1` and
//! moves it to synced only if `R >= notified_rev`; a later `notify(rev)`
//! skips a watcher whose `next_rev > rev` (the revision the store published
//! but not yet notified when the history was read).
//!
//! Example: watcher W from revision 5, current revision 9. W is unsynced;
//! the sync thread reads revisions 5..=9 and queues W's events in one
//! response (header revision 9), sets `next_rev = 10`, moves W to synced.
//! A put at 10 is then queued for W by the apply thread.

use crate::pb::etcdserverpb::{ResponseHeader, WatchResponse};
use crate::pb::mvccpb::{event::EventType, Event};
use crate::watcher_group::{KeyRange, WatcherGroup};
use crossbeam_channel::{Receiver, Sender};
use etcd_mvcc::{History, RangeOptions, Store};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

/// Event responses a stream may hold before its watchers are parked
/// (etcd's `chanBufLen`).
pub(crate) const STREAM_BUF_LEN: usize = 128;
/// Revisions read from history per sync pass (etcd's `watchBatchMaxRevs`).
pub(crate) const MAX_SYNC_REVISIONS: usize = 1000;
/// How often the sync thread looks at unsynced watchers without being
/// woken (etcd syncs every 100 ms).
const SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// The ordered responses of one watch stream, shared by the hub (producer)
/// and the stream's handle (the one consumer).
pub(crate) struct StreamQueue {
    state: Mutex<QueueState>,
    ready: tokio::sync::Notify,
    kick: Sender<()>,
}

#[derive(Default)]
struct QueueState {
    /// `(counts against the buffer, response)`.
    items: VecDeque<(bool, WatchResponse)>,
    events: usize,
    closed: bool,
}

impl StreamQueue {
    /// Queues an event (or progress) response unless the buffer is full.
    pub(crate) fn try_push_event(&self, r: WatchResponse) -> bool {
        let mut s = self.state.lock();
        if s.closed {
            return true; // nobody listens: drop silently
        }
        if s.events >= STREAM_BUF_LEN {
            return false;
        }
        s.events += 1;
        s.items.push_back((true, r));
        drop(s);
        self.ready.notify_one();
        true
    }

    /// Queues a control response (created, canceled, compacted): never
    /// refused; there is at most one per client request or watcher.
    pub(crate) fn push_control(&self, r: WatchResponse) {
        let mut s = self.state.lock();
        if s.closed {
            return;
        }
        s.items.push_back((false, r));
        drop(s);
        self.ready.notify_one();
    }

    fn has_room(&self) -> bool {
        self.state.lock().events < STREAM_BUF_LEN
    }

    /// The next response; None once closed and drained.
    pub(crate) async fn pop(&self) -> Option<WatchResponse> {
        loop {
            match self.take() {
                Ok(r) => return r,
                Err(()) => self.ready.notified().await,
            }
        }
    }

    /// The next response (`Ok(None)` once closed and drained), or `Err`
    /// when there is none yet.
    fn take(&self) -> Result<Option<WatchResponse>, ()> {
        let mut s = self.state.lock();
        if let Some((counted, r)) = s.items.pop_front() {
            if counted {
                if s.events == STREAM_BUF_LEN {
                    // Parked watchers of this stream can resume.
                    let _ = self.kick.try_send(());
                }
                s.events -= 1;
            }
            return Ok(Some(r));
        }
        if s.closed {
            return Ok(None);
        }
        Err(())
    }

    pub(crate) fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_one();
    }

    /// The next response if one is queued (the simulation's synchronous
    /// consumer; [`StreamQueue::pop`] without waiting).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn try_pop(&self) -> Option<WatchResponse> {
        self.take().ok().flatten()
    }
}

/// What to watch, as the stream handle normalised it.
pub(crate) struct WatchSpec {
    /// The id within the stream.
    pub(crate) id: i64,
    pub(crate) stream: u64,
    pub(crate) range: KeyRange,
    /// 0: from the next revision.
    pub(crate) start_rev: i64,
    pub(crate) no_put: bool,
    pub(crate) no_delete: bool,
    pub(crate) prev_kv: bool,
}

struct Watcher {
    spec: WatchSpec,
    next_rev: i64,
    synced: bool,
    queue: Arc<StreamQueue>,
}

impl Watcher {
    /// The events of `evs` this watcher wants, as it wants them.
    fn select<'a>(&self, evs: impl Iterator<Item = &'a Event>) -> Vec<Event> {
        evs.filter(|e| {
            let kv = e.kv.as_ref().expect("events carry a kv");
            let is_put = e.r#type == EventType::Put as i32;
            kv.mod_revision >= self.next_rev
                && self.spec.range.contains(&kv.key)
                && !(is_put && self.spec.no_put)
                && (is_put || !self.spec.no_delete)
        })
        .map(|e| {
            let mut e = e.clone();
            if !self.spec.prev_kv {
                e.prev_kv = None;
            }
            e
        })
        .collect()
    }

    fn response(&self, rev: i64, events: Vec<Event>) -> WatchResponse {
        WatchResponse {
            header: Some(rev_header(rev)),
            watch_id: self.spec.id,
            events,
            ..Default::default()
        }
    }
}

fn rev_header(revision: i64) -> ResponseHeader {
    ResponseHeader {
        revision,
        ..Default::default()
    }
}

#[derive(Default)]
struct HubState {
    watchers: HashMap<u64, Watcher>,
    synced: WatcherGroup,
    unsynced: HashSet<u64>,
    /// The last revision handed to `notify`.
    notified_rev: i64,
    next_gid: u64,
    /// Streams whose progress request waits for all their watchers to sync.
    deferred_progress: HashMap<u64, Arc<StreamQueue>>,
}

impl HubState {
    fn park(&mut self, gid: u64, next_rev: i64) {
        let w = self
            .watchers
            .get_mut(&gid)
            .expect("parking a known watcher");
        self.synced.remove(gid, &w.spec.range);
        w.synced = false;
        w.next_rev = next_rev;
        self.unsynced.insert(gid);
    }

    fn remove(&mut self, gid: u64) -> Option<Watcher> {
        let w = self.watchers.remove(&gid)?;
        if w.synced {
            self.synced.remove(gid, &w.spec.range);
        } else {
            self.unsynced.remove(&gid);
        }
        Some(w)
    }

    /// Answers deferred progress requests of streams now fully synced.
    fn answer_deferred_progress(&mut self) {
        if self.deferred_progress.is_empty() {
            return;
        }
        let mut lagging = HashSet::new();
        for gid in &self.unsynced {
            lagging.insert(self.watchers[gid].spec.stream);
        }
        let rev = self.notified_rev;
        self.deferred_progress.retain(|stream, q| {
            if lagging.contains(stream) {
                return true;
            }
            !q.try_push_event(WatchResponse {
                header: Some(rev_header(rev)),
                watch_id: -1,
                ..Default::default()
            })
        });
    }
}

/// The hub. Created by `Etcd::start`, fed by the store's event sink.
pub(crate) struct WatchableStore {
    store: Arc<Store>,
    state: Mutex<HubState>,
    kick: Sender<()>,
    stopped: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    next_stream: std::sync::atomic::AtomicU64,
    /// Every open stream's queue (a watcher's queue is its stream's),
    /// closed at [`WatchableStore::stop`].
    streams: Mutex<std::collections::HashMap<u64, std::sync::Weak<StreamQueue>>>,
}

impl WatchableStore {
    /// Creates the hub, subscribes it to the store's events and starts the
    /// sync thread.
    pub(crate) fn start(store: Arc<Store>) -> std::io::Result<Arc<WatchableStore>> {
        let (kick, kicked) = crossbeam_channel::bounded(1);
        let hub = Arc::new(WatchableStore {
            state: Mutex::new(HubState {
                notified_rev: store.current_revision(),
                ..Default::default()
            }),
            store: store.clone(),
            kick,
            stopped: AtomicBool::new(false),
            thread: Mutex::new(None),
            next_stream: Default::default(),
            streams: Default::default(),
        });
        let weak = Arc::downgrade(&hub);
        store.subscribe(Arc::new(move |rev, evs| {
            if let Some(h) = weak.upgrade() {
                h.notify(rev, evs);
            }
        }));
        let weak = Arc::downgrade(&hub);
        let t = std::thread::Builder::new()
            .name("watch-sync".into())
            .spawn(move || sync_loop(weak, kicked))?;
        *hub.thread.lock() = Some(t);
        Ok(hub)
    }

    /// A new stream's queue and id.
    pub(crate) fn new_stream(&self) -> (u64, Arc<StreamQueue>) {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let q = Arc::new(StreamQueue {
            state: Mutex::new(QueueState::default()),
            ready: tokio::sync::Notify::new(),
            kick: self.kick.clone(),
        });
        // Under the streams lock: `stop` either sees this stream or has
        // set `stopped` before we look.
        let mut streams = self.streams.lock();
        if self.stopped.load(Ordering::Acquire) {
            q.close();
        } else {
            streams.insert(id, Arc::downgrade(&q));
        }
        (id, q)
    }

    /// The store's current revision as the hub sees it.
    pub(crate) fn rev(&self) -> i64 {
        self.state.lock().notified_rev
    }

    /// Registers a watcher; queues its `created` response first. Returns
    /// the hub-wide id.
    pub(crate) fn watch(&self, spec: WatchSpec, queue: &Arc<StreamQueue>) -> u64 {
        let mut s = self.state.lock();
        let gid = s.next_gid;
        s.next_gid += 1;
        let current = s.notified_rev;
        queue.push_control(WatchResponse {
            header: Some(rev_header(current)),
            watch_id: spec.id,
            created: true,
            ..Default::default()
        });
        let synced = spec.start_rev == 0 || spec.start_rev > current;
        let next_rev = if synced {
            spec.start_rev.max(current + 1)
        } else {
            spec.start_rev
        };
        if synced {
            s.synced.add(gid, &spec.range);
        } else {
            s.unsynced.insert(gid);
        }
        s.watchers.insert(
            gid,
            Watcher {
                spec,
                next_rev,
                synced,
                queue: queue.clone(),
            },
        );
        drop(s);
        if !synced {
            let _ = self.kick.try_send(());
        }
        gid
    }

    /// Removes a watcher; false if it was already gone (compacted).
    pub(crate) fn cancel(&self, gid: u64) -> bool {
        self.state.lock().remove(gid).is_some()
    }

    /// Removes every watcher of a closed stream.
    pub(crate) fn close_stream(&self, stream: u64, gids: impl Iterator<Item = u64>) {
        self.streams.lock().remove(&stream);
        let mut s = self.state.lock();
        for gid in gids {
            s.remove(gid);
        }
        s.deferred_progress.remove(&stream);
    }

    /// Queues a progress notification for one watcher if it is synced.
    pub(crate) fn progress(&self, gid: u64) {
        let s = self.state.lock();
        if let Some(w) = s.watchers.get(&gid) {
            if w.synced {
                w.queue
                    .try_push_event(w.response(s.notified_rev, Vec::new()));
            }
        }
    }

    /// A stream's ProgressRequest: an empty response with watch id -1 at
    /// the current revision once every watcher of the stream is synced
    /// (at once if they are, otherwise as soon as they are).
    pub(crate) fn progress_all(&self, stream: u64, queue: &Arc<StreamQueue>) {
        let mut s = self.state.lock();
        s.deferred_progress.insert(stream, queue.clone());
        s.answer_deferred_progress();
    }

    /// The store's sink: one committed transaction's events.
    /// The store was restored from a snapshot image: its revision jumped
    /// without events. Every synced watcher becomes unsynced and catches up
    /// from the store's history (or is cancelled as compacted, as etcd
    /// does).
    pub(crate) fn on_restore(&self) {
        let mut s = self.state.lock();
        s.notified_rev = self.store.current_revision();
        let synced: Vec<(u64, i64)> = s
            .watchers
            .iter()
            .filter(|(_, w)| w.synced)
            .map(|(gid, w)| (*gid, w.next_rev))
            .collect();
        for (gid, next_rev) in synced {
            s.park(gid, next_rev);
        }
        drop(s);
        let _ = self.kick.try_send(());
    }

    fn notify(&self, rev: i64, evs: &[Event]) {
        let mut s = self.state.lock();
        s.notified_rev = rev;
        if s.synced.is_empty() {
            return;
        }
        let mut hits: Vec<u64> = Vec::new();
        let mut seen = HashSet::new();
        for e in evs {
            let key = &e.kv.as_ref().expect("events carry a kv").key;
            s.synced.for_each_matching(key, |gid| {
                if seen.insert(gid) {
                    hits.push(gid);
                }
            });
        }
        // A put's event carries no prev_kv: read it once, only if a
        // watcher that gets this revision asked for it.
        let mut filled = None;
        if hits.iter().any(|g| {
            let w = &s.watchers[g];
            w.spec.prev_kv && rev >= w.next_rev
        }) {
            let mut evs = evs.to_vec();
            self.fill_prev_kv(&mut evs);
            filled = Some(evs);
        }
        let evs = filled.as_deref().unwrap_or(evs);
        let mut parked = false;
        for gid in hits {
            let w = &s.watchers[&gid];
            if rev < w.next_rev {
                continue; // starts later, or got this revision from history
            }
            let events = w.select(evs.iter());
            if events.is_empty() {
                s.watchers.get_mut(&gid).expect("present").next_rev = rev + 1;
                continue;
            }
            if w.queue.try_push_event(w.response(rev, events)) {
                s.watchers.get_mut(&gid).expect("present").next_rev = rev + 1;
            } else {
                s.park(gid, rev);
                parked = true;
            }
        }
        drop(s);
        if parked {
            let _ = self.kick.try_send(());
        }
    }

    /// One pass over the unsynced watchers whose consumers have room.
    /// Returns true if some are left to sync now.
    fn sync_once(&self) -> bool {
        let (from, need_prev) = {
            let s = self.state.lock();
            let mut from = i64::MAX;
            let mut need_prev = false;
            for gid in &s.unsynced {
                let w = &s.watchers[gid];
                if w.queue.has_room() {
                    from = from.min(w.next_rev);
                    need_prev |= w.spec.prev_kv;
                }
            }
            (from, need_prev)
        };
        if from == i64::MAX {
            return false;
        }
        let batch = match self.store.history(from, MAX_SYNC_REVISIONS) {
            Ok(History::Events(b)) => b,
            Ok(History::Compacted { compact_revision }) => {
                let mut s = self.state.lock();
                let behind: Vec<u64> = s
                    .unsynced
                    .iter()
                    .copied()
                    .filter(|gid| s.watchers[gid].next_rev < compact_revision)
                    .collect();
                for gid in behind {
                    let w = s.remove(gid).expect("unsynced watchers are known");
                    w.queue.push_control(WatchResponse {
                        header: Some(rev_header(0)),
                        watch_id: w.spec.id,
                        canceled: true,
                        compact_revision,
                        ..Default::default()
                    });
                }
                s.answer_deferred_progress();
                return true;
            }
            Err(e) => {
                tracing::error!(error = %e, "watch: reading the history failed");
                return false;
            }
        };
        let mut events = batch.events;
        if need_prev {
            self.fill_prev_kv(&mut events);
        }
        let mut s = self.state.lock();
        let notified = s.notified_rev;
        let ids: Vec<u64> = s.unsynced.iter().copied().collect();
        let mut more = false;
        for gid in ids {
            let w = s
                .watchers
                .get_mut(&gid)
                .expect("unsynced watchers are known");
            if w.next_rev < from || !w.queue.has_room() {
                continue;
            }
            let evs = w.select(events.iter());
            if !evs.is_empty() && !w.queue.try_push_event(w.response(batch.current_rev, evs)) {
                continue;
            }
            w.next_rev = w.next_rev.max(batch.next_rev);
            if w.next_rev > notified {
                w.synced = true;
                let range = w.spec.range.clone();
                s.unsynced.remove(&gid);
                s.synced.add(gid, &range);
            } else {
                more = true;
            }
        }
        s.answer_deferred_progress();
        more
    }

    /// etcd's prev_kv for events without one (replayed events, live
    /// puts): the key at `mod_revision - 1` (none for a creation, or when
    /// that revision is compacted).
    fn fill_prev_kv(&self, events: &mut [Event]) {
        for e in events.iter_mut().filter(|e| e.prev_kv.is_none()) {
            let kv = e.kv.as_ref().expect("events carry a kv");
            let is_create =
                e.r#type == EventType::Put as i32 && kv.create_revision == kv.mod_revision;
            if is_create {
                continue;
            }
            let opts = RangeOptions {
                rev: kv.mod_revision - 1,
                limit: 1,
                ..Default::default()
            };
            if let Ok(r) = self.store.range(&kv.key, b"", opts) {
                e.prev_kv = r.kvs.into_iter().next();
            }
        }
    }

    /// Stops the sync thread and closes every stream (their handles then
    /// return None).
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let _ = self.kick.try_send(());
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
        // Every watcher's queue is its stream's: closing the streams
        // closes them all, with or without watchers.
        for q in self.streams.lock().drain().filter_map(|(_, q)| q.upgrade()) {
            q.close();
        }
    }
}

fn sync_loop(hub: Weak<WatchableStore>, kicked: Receiver<()>) {
    loop {
        let Some(h) = hub.upgrade() else { return };
        if h.stopped.load(Ordering::Acquire) {
            return;
        }
        let more = h.sync_once();
        drop(h);
        if !more {
            match kicked.recv_timeout(SYNC_INTERVAL) {
                Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}
