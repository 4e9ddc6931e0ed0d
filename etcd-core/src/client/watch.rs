//! Watches as streams: [`Client::watch`](super::Client::watch) returns a
//! [`Watcher`] (cancel it, ask for progress) and [`WatchEvents`] (the
//! responses, a [`Stream`]). Each watch runs on a task of its own that
//! forwards the engine's watch responses; dropping `WatchEvents` ends it.

use super::kv::{key_range_options, KeyRange};
use crate::pb::etcdserverpb::{
    watch_create_request::FilterType, WatchCreateRequest, WatchResponse,
};
use bytes::Bytes;
use futures_core::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Options of [`Client::watch`](super::Client::watch).
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    range: KeyRange,
    req: WatchCreateRequest,
}

impl WatchOptions {
    /// The key alone, from the next revision on.
    pub fn new() -> WatchOptions {
        WatchOptions::default()
    }
    key_range_options!();
    /// Events from `revision` on (history first); a compacted revision
    /// cancels the watch with `compact_revision` set.
    pub fn with_start_revision(mut self, revision: i64) -> Self {
        self.req.start_revision = revision;
        self
    }
    /// Each event carries the key's previous version.
    pub fn with_prev_key(mut self) -> Self {
        self.req.prev_kv = true;
        self
    }
    /// Empty responses now and then (every 10 minutes by default) saying
    /// how far the watch has seen.
    pub fn with_progress_notify(mut self) -> Self {
        self.req.progress_notify = true;
        self
    }
    /// Leaves puts out.
    pub fn with_no_put(mut self) -> Self {
        self.req.filters.push(FilterType::Noput as i32);
        self
    }
    /// Leaves deletes out.
    pub fn with_no_delete(mut self) -> Self {
        self.req.filters.push(FilterType::Nodelete as i32);
        self
    }
    /// Splits responses larger than the request limit.
    pub fn with_fragment(mut self) -> Self {
        self.req.fragment = true;
        self
    }

    /// The protobuf request for `key`.
    pub fn request(&self, key: &[u8]) -> WatchCreateRequest {
        WatchCreateRequest {
            key: Bytes::copy_from_slice(key),
            range_end: self.range.range_end(key),
            ..self.req.clone()
        }
    }
}

/// What a [`Watcher`] asks of its watch's task.
#[derive(Debug)]
pub(crate) enum Command {
    Cancel,
    Progress,
}

/// The control side of a watch.
#[derive(Clone, Debug)]
pub struct Watcher {
    /// The watch's id (in every response).
    pub(crate) watch_id: i64,
    /// To the watch's task.
    pub(crate) commands: mpsc::UnboundedSender<Command>,
}

impl Watcher {
    /// The watch's id, as in its responses.
    pub fn watch_id(&self) -> i64 {
        self.watch_id
    }
    /// Cancels the watch: a last response with `canceled` ends the stream.
    pub fn cancel(&self) {
        let _ = self.commands.send(Command::Cancel);
    }
    /// Asks for a progress response (no events, the revision the watch
    /// has seen up to in its header) once the watch is up to date.
    pub fn request_progress(&self) {
        let _ = self.commands.send(Command::Progress);
    }
}

/// The responses of a watch, in revision order: events, progress
/// notifications, and at last one with `canceled` (cancel, compaction,
/// lost permission). The stream ends after that one or when the member
/// begins stopping.
#[derive(Debug)]
pub struct WatchEvents {
    pub(crate) responses: mpsc::Receiver<WatchResponse>,
}

impl WatchEvents {
    /// The next response (`StreamExt::next` without the import).
    pub async fn message(&mut self) -> Option<WatchResponse> {
        self.responses.recv().await
    }
}

impl Stream for WatchEvents {
    type Item = WatchResponse;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchResponse>> {
        self.responses.poll_recv(cx)
    }
}

/// Runs one watch: `first` is its created response, `stream` the engine's
/// watch stream holding only it. The stream ends when the member begins
/// stopping (`stopping`).
pub(crate) fn start(
    mut stream: crate::WatchStream,
    first: WatchResponse,
    stopping: impl std::future::Future<Output = ()> + Send + 'static,
) -> (Watcher, WatchEvents) {
    let watch_id = first.watch_id;
    let (commands, mut command_rx) = mpsc::unbounded_channel();
    // A few responses of slack: the engine's own queue holds the rest and
    // applies its slow-watcher rules.
    let (tx, responses) = mpsc::channel(16);
    tokio::spawn(async move {
        if first.canceled {
            let _ = tx.send(first).await;
            return;
        }
        let mut handle_alive = true;
        let mut stopping = std::pin::pin!(stopping);
        loop {
            tokio::select! {
                c = command_rx.recv(), if handle_alive => match c {
                    Some(Command::Cancel) => stream.cancel(watch_id),
                    Some(Command::Progress) => stream.request_progress(),
                    None => handle_alive = false,
                },
                r = stream.recv() => {
                    let Some(r) = r else { return };
                    let last = r.canceled;
                    if tx.send(r).await.is_err() || last {
                        return;
                    }
                }
                () = tx.closed() => return,
                () = &mut stopping => return,
            }
        }
    });
    (Watcher { watch_id, commands }, WatchEvents { responses })
}
