//! One watch stream (etcd's `watcher.go` `watchStream` together with the
//! per-stream parts of `v3rpc/watch.go`): the embedder's equivalent of the
//! gRPC Watch stream, and what the gRPC service runs on.
//!
//! Requests go in with [`WatchStream::create`], [`cancel`](WatchStream::cancel)
//! and [`request_progress`](WatchStream::request_progress) (or
//! [`request`](WatchStream::request) with a `WatchRequest`); every response
//! comes out of [`recv`](WatchStream::recv), in the order etcd sends them:
//! a watcher's `created` response precedes its events; its `canceled`
//! response follows them.
//!
//! As in etcd:
//! - server-assigned watch ids start at 0 and skip ids in use; a create
//!   with a client-chosen id already in use fails with `canceled: true`,
//!   `watch_id: -1` and "mvcc: duplicate watch ID provided on the
//!   WatchStream"; `range_end <= key` fails with "mvcc: watcher range is
//!   empty"; a negative start revision fails with the compacted message;
//! - an empty key means `"\0"`, `range_end == "\0"` means every key `>= key`;
//! - cancelling an unknown id sends nothing;
//! - `progress_notify` watchers get an empty response every
//!   `--experimental-watch-progress-notify-interval` unless they got events
//!   since the last tick;
//! - `fragment` watchers get responses larger than `--max-request-bytes`
//!   plus 512 KiB (etcd's gRPC overhead allowance) split into several (all but the last with `fragment: true`), never
//!   splitting one event.
//!
//! ```no_run
//! # async fn demo(etcd: etcd_core::Etcd) {
//! use etcd_core::pb::etcdserverpb::WatchCreateRequest;
//! let mut w = etcd.watch(&etcd_core::RequestContext::LOCAL);
//! w.create(WatchCreateRequest { key: "a".into(), range_end: "b".into(), ..Default::default() });
//! let created = w.recv().await.unwrap();
//! assert!(created.created);
//! while let Some(resp) = w.recv().await {
//!     for ev in resp.events { println!("{:?}", ev.kv); }
//! }
//! # }
//! ```

use crate::error::{Error, WatchError};
use crate::pb::etcdserverpb::{
    watch_create_request::FilterType, watch_request::RequestUnion, ResponseHeader,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use crate::watchable_store::{StreamQueue, WatchSpec, WatchableStore};
use crate::watcher_group::KeyRange;
use bytes::Bytes;
use prost::Message as _;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Per-stream state of one watcher.
struct StreamWatcher {
    gid: u64,
    progress_notify: bool,
    /// etcd's `progress[id]`: no events sent since the last tick.
    progress_due: bool,
    fragment: bool,
}

/// A watch stream over the engine. Dropping it cancels its watchers.
pub struct WatchStream {
    hub: Arc<WatchableStore>,
    header: Box<dyn Fn(i64) -> ResponseHeader + Send + Sync>,
    queue: Arc<StreamQueue>,
    stream: u64,
    watchers: HashMap<i64, StreamWatcher>,
    next_id: i64,
    ticker: tokio::time::Interval,
    out: VecDeque<WatchResponse>,
    max_request_bytes: usize,
    /// Whether the stream's caller may read a range (auth); None: anyone.
    permit: Option<Permit>,
}

/// Checks READ permission on `[key, range_end)` for a new watcher.
pub(crate) type Permit = Box<dyn Fn(&[u8], &[u8]) -> crate::Result<()> + Send + Sync>;

/// The cancel reason etcd sends for a watcher refused by auth: the text of
/// its gRPC error (`rpctypes.ErrGRPC*.Error()`).
fn auth_cancel_reason(e: &Error) -> String {
    let code = match e {
        Error::InvalidAuthToken => "Unauthenticated",
        Error::AuthOldRevision | Error::UserEmpty => "InvalidArgument",
        _ => {
            return format!(
                "rpc error: code = PermissionDenied desc = {}",
                Error::PermissionDenied
            )
        }
    };
    format!("rpc error: code = {code} desc = {e}")
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream")
            .field("stream", &self.stream)
            .field("watchers", &self.watchers.len())
            .finish()
    }
}

impl WatchStream {
    pub(crate) fn new(
        hub: Arc<WatchableStore>,
        header: Box<dyn Fn(i64) -> ResponseHeader + Send + Sync>,
        progress_interval: Duration,
        max_request_bytes: usize,
        permit: Option<Permit>,
    ) -> WatchStream {
        let (stream, queue) = hub.new_stream();
        let period = progress_interval.max(Duration::from_millis(1));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        WatchStream {
            hub,
            header,
            queue,
            stream,
            watchers: HashMap::new(),
            next_id: 0,
            ticker,
            out: VecDeque::new(),
            max_request_bytes,
            permit,
        }
    }

    /// Handles one request of the gRPC stream.
    pub fn request(&mut self, req: WatchRequest) {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c),
            Some(RequestUnion::CancelRequest(c)) => self.cancel(c.watch_id),
            Some(RequestUnion::ProgressRequest(_)) => self.request_progress(),
            None => {}
        }
    }

    fn refuse(&self, reason: String) {
        self.queue.push_control(WatchResponse {
            header: Some(ResponseHeader {
                revision: self.hub.rev(),
                ..Default::default()
            }),
            watch_id: -1,
            created: true,
            canceled: true,
            cancel_reason: reason,
            ..Default::default()
        });
    }

    /// Creates a watcher; its `created` (or refusal) response comes from
    /// [`recv`](Self::recv).
    pub fn create(&mut self, c: WatchCreateRequest) {
        let key = if c.key.is_empty() {
            Bytes::from_static(&[0])
        } else {
            c.key
        };
        // First, as etcd's recvLoop: whether the caller may read the range.
        // (etcd 3.4 checks a from-key watch as if it were on the key alone;
        // this checks the whole range.)
        if let Some(permit) = &self.permit {
            if let Err(e) = permit(&key, &c.range_end) {
                return self.refuse(auth_cancel_reason(&e));
            }
        }
        if c.start_revision < 0 {
            return self.refuse(Error::Compacted.to_string());
        }
        let range = match &c.range_end[..] {
            [] => KeyRange::Single(key),
            [0] => KeyRange::FromKey(key),
            end if end <= &key[..] => return self.refuse(WatchError::EmptyRange.to_string()),
            _ => KeyRange::Range(key, c.range_end),
        };
        let id = if c.watch_id == 0 {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        } else if self.watchers.contains_key(&c.watch_id) {
            return self.refuse(WatchError::DuplicateId.to_string());
        } else {
            c.watch_id
        };
        let spec = WatchSpec {
            id,
            stream: self.stream,
            range,
            start_rev: c.start_revision,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: c.prev_kv,
        };
        let gid = self.hub.watch(spec, &self.queue);
        self.watchers.insert(
            id,
            StreamWatcher {
                gid,
                progress_notify: c.progress_notify,
                progress_due: true,
                fragment: c.fragment,
            },
        );
    }

    /// Cancels a watcher; its `canceled` response comes from
    /// [`recv`](Self::recv). Unknown ids are ignored, as in etcd.
    pub fn cancel(&mut self, watch_id: i64) {
        let Some(w) = self.watchers.remove(&watch_id) else {
            return;
        };
        self.hub.cancel(w.gid);
        self.queue.push_control(WatchResponse {
            header: Some(ResponseHeader {
                revision: self.hub.rev(),
                ..Default::default()
            }),
            watch_id,
            canceled: true,
            ..Default::default()
        });
    }

    /// A ProgressRequest: an empty response (watch id -1) at the current
    /// revision once every watcher of this stream is synced.
    pub fn request_progress(&mut self) {
        self.hub.progress_all(self.stream, &self.queue);
    }

    /// The next response; None once the member stopped.
    pub async fn recv(&mut self) -> Option<WatchResponse> {
        loop {
            if let Some(r) = self.out.pop_front() {
                return Some(r);
            }
            tokio::select! {
                biased;
                r = self.queue.pop() => {
                    let r = r?;
                    self.prepare(r);
                }
                _ = self.ticker.tick() => self.progress_tick(),
            }
        }
    }

    /// Fills the header, tracks progress and fragments as requested.
    fn prepare(&mut self, mut r: WatchResponse) {
        let rev = r.header.as_ref().map_or(0, |h| h.revision);
        r.header = Some((self.header)(rev));
        let mut fragment = false;
        if let Some(w) = self.watchers.get_mut(&r.watch_id) {
            if !r.events.is_empty() {
                w.progress_due = false;
            }
            fragment = w.fragment;
        }
        if fragment {
            self.out.extend(fragments(r, self.max_request_bytes));
        } else {
            self.out.push_back(r);
        }
    }

    fn progress_tick(&mut self) {
        for w in self.watchers.values_mut() {
            if w.progress_notify {
                if w.progress_due {
                    self.hub.progress(w.gid);
                }
                w.progress_due = true;
            }
        }
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.hub
            .close_stream(self.stream, self.watchers.values().map(|w| w.gid));
        self.queue.close();
    }
}

/// etcd's `sendFragments`: a response of `max` bytes or more with at least
/// two events is split so that each part stays below `max` (a single event
/// larger than that goes alone); all parts but the last have `fragment`.
pub(crate) fn fragments(r: WatchResponse, max: usize) -> Vec<WatchResponse> {
    if r.encoded_len() < max || r.events.len() < 2 {
        return vec![r];
    }
    let mut out = Vec::new();
    let mut events = r.events.clone().into_iter().peekable();
    while events.peek().is_some() {
        let mut cur = WatchResponse {
            events: Vec::new(),
            fragment: true,
            ..r.clone()
        };
        while let Some(e) = events.peek() {
            cur.events.push(e.clone());
            if cur.events.len() > 1 && cur.encoded_len() >= max {
                cur.events.pop();
                break;
            }
            events.next();
        }
        if events.peek().is_none() {
            cur.fragment = false;
        }
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::mvccpb::{Event, KeyValue};

    #[test]
    fn fragments_split_between_events_and_mark_all_but_the_last() {
        let ev = |i: u8| Event {
            kv: Some(KeyValue {
                key: Bytes::from(vec![b'k', i]),
                value: Bytes::from(vec![0u8; 100]),
                mod_revision: 5,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = WatchResponse {
            watch_id: 3,
            events: (0..10).map(ev).collect(),
            ..Default::default()
        };
        assert_eq!(fragments(r.clone(), 1 << 20), vec![r.clone()]);
        let parts = fragments(r.clone(), 350);
        assert!(parts.len() > 1);
        let n = parts.len();
        for (i, p) in parts.iter().enumerate() {
            assert_eq!(p.fragment, i + 1 < n);
            assert_eq!(p.watch_id, 3);
            assert!(!p.events.is_empty());
            assert!(p.events.len() == 1 || p.encoded_len() < 350);
        }
        let joined: Vec<Event> = parts.into_iter().flat_map(|p| p.events).collect();
        assert_eq!(joined, r.events);
    }
}
