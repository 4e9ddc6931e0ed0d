//! The TCP peer transport: raft messages between members over
//! length-delimited frames, one outgoing stream per peer.
//!
//! Each member dials every peer it sends to and keeps that connection for
//! its own messages (streams are one-way, like etcd's peer streams); it
//! accepts the peers' connections on its listener for their messages.
//! Every peer has its own bounded queue and link task, so a slow or dead
//! peer fills only its own queue: `send` never blocks, and a message that
//! finds its queue full is dropped and counted (raft retransmits). Once a
//! link is connected, `send` writes its frames to the socket itself with
//! non-blocking writes, on the caller's (raft) thread, and the link's task
//! only finishes what the socket did not take (`tcp_outbox`).
//!
//! # Byte format
//!
//! A connection starts with a handshake from the dialer:
//!
//! ```text
//! "ETRP" | version: u8 = 1 | cluster_id: u64 BE | from: u64 BE | to: u64 BE
//! ```
//!
//! answered by one status byte: 0 accepted, 1 cluster id mismatch, 2 `to`
//! is not the listener's member id, 3 unsupported version, 6 `from` was
//! removed from the cluster (the listener asks
//! [`TransportHooks::member_status`]), 7 `from` is not a member (yet; no
//! longer sent: see below). A rejected dialer logs why (naming both
//! cluster ids) and retries later; one told it was removed reports it
//! ([`TransportHooks::report_removed`]: the member stops, as etcd's does
//! when its peers answer `410 Gone`); the listener closes the connection.
//!
//! A sender the listener does not know is accepted: the listener is
//! behind, and the sender was added after the membership the listener
//! applied (maybe it leads now, and only it would bring the listener up to
//! date; refusing it left a member isolated while a new member was added
//! and elected unable to rejoin). etcd accepts such a sender on its
//! pipeline too. [`TransportHooks::unknown_sender`] tells the host, which
//! looks up the sender's address so that replies reach it. After
//! acceptance the dialer sends frames:
//!
//! ```text
//! len: u32 BE | a raft `Message` in protobuf encoding (len bytes)
//! ```
//!
//! A frame longer than `max_frame_bytes` or that does not decode closes
//! the connection. With [`TransportHooks::adopt`] the listener's runtime
//! hands each accepted message stream, once handshaken, to the raft
//! thread, which reads its frames itself (`tcp_inbound`); without it the
//! runtime reads them and calls [`Deliver`]. With [`TcpTransportConfig::tls`] every connection (in
//! both directions, and the queries of `peer_query`) is a TLS stream first
//! (see `peer_tls`); the bytes above are what travels inside it.
//!
//! # Snapshot streams
//!
//! A `MsgSnapshot` never travels on the message stream: the state machine
//! image behind it can be large. The sender opens a connection of its own,
//! with the same handshake under the magic "ETRS" (the listener dispatches
//! on the magic: "ETRP" message stream, "ETRS" snapshot stream), answered
//! like the message stream's or with 4 (a snapshot from this member is
//! already being received) or 5 (the listener takes no snapshots). Then:
//!
//! ```text
//! len: u32 BE | the raft `Message` (MsgSnapshot, snapshot.data empty), at most 1 MiB
//! 1: u8 | len: u32 BE | len bytes of the image      (1 <= len <= 8 MiB; sent: 1 MiB)
//! ...                                               (as many chunks as needed, maybe none)
//! 2: u8 | total: u64 BE | crc32c: u32 BE            (end: image length and crc32c)
//! ```
//!
//! answered by one status byte: 0 the image is durable and the message
//! was delivered, 1 the stream was refused (bad frame, length or checksum:
//! the image is discarded), 2 the application failed to import it. The
//! sender reports the outcome to raft (`report_snapshot`), as it does any
//! failure (no connection, a timeout: `snapshot_timeout` bounds every step).
//!
//! The sender reads the image from [`SnapshotIo::export`] on a blocking
//! thread, one chunk ahead of the socket; the receiver writes chunks into
//! the [`SnapshotIo::import`] sink on a blocking thread, at most two chunks
//! behind the socket, so memory stays bounded on both sides. After a
//! verified end frame the receiver calls `finish`, puts the token into the
//! message's `snapshot.data`, delivers the message, and answers. One
//! snapshot is in flight per peer and direction: a second `MsgSnapshot` to
//! a peer that is still receiving one is dropped and reported failed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::peer_query::{serve_query, QueryHandler, QUERY_MAGIC};
use crate::peer_tls::PeerStream;
use crate::rafthttp::{self, EtcdEntryCodec, EtcdLink, EtcdPeers, HttpCtx};
use crate::snapshot::{read_full, SnapshotIo, SnapshotSink};
use crate::tcp_inbound::{self, InboundStream};
use crate::tcp_outbox::{encode_frame, Counters, Outbox, Pushed, Wire};
use crate::transport::{Deliver, Transport};
use crate::{Error, Result};
use raft::eraftpb::MessageType;

/// Magic of a message stream.
const MAGIC: &[u8; 4] = b"ETRP";
/// Magic of a snapshot stream.
const SNAP_MAGIC: &[u8; 4] = b"ETRS";
const VERSION: u8 = 1;
const HANDSHAKE_LEN: usize = 4 + 1 + 8 + 8 + 8;
/// How long a dialer waits for the handshake's answer.
const HANDSHAKE_ANSWER: Duration = Duration::from_secs(3);

/// Handshake answers.
const ACCEPTED: u8 = 0;
const CLUSTER_MISMATCH: u8 = 1;
const WRONG_MEMBER: u8 = 2;
const BAD_VERSION: u8 = 3;
const SNAPSHOT_BUSY: u8 = 4;
const NO_SNAPSHOTS: u8 = 5;
const REMOVED: u8 = 6;
const NOT_MEMBER: u8 = 7;

/// Snapshot stream frames and answers.
const CHUNK_FRAME: u8 = 1;
const END_FRAME: u8 = 2;
const SNAPSHOT_OK: u8 = 0;
const SNAPSHOT_REFUSED: u8 = 1;
const SNAPSHOT_APP_FAILED: u8 = 2;
/// Largest chunk a receiver accepts, and largest snapshot message.
const MAX_CHUNK: usize = 8 << 20;
const MAX_SNAPSHOT_MSG: usize = 1 << 20;

/// Settings of a [`TcpTransport`].
#[derive(Clone, Debug)]
pub struct TcpTransportConfig {
    /// This member's id.
    pub id: u64,
    /// The cluster id both ends must agree on.
    pub cluster_id: u64,
    /// Peers' addresses (`host:port`), by member id.
    pub peers: HashMap<u64, String>,
    /// Messages queued per peer before new ones are dropped.
    pub queue_len: usize,
    /// Largest frame accepted or sent.
    pub max_frame_bytes: usize,
    /// Wait between two connection attempts to a peer.
    pub retry_interval: Duration,
    /// Bytes per chunk of a snapshot image sent (at most 8 MiB).
    pub snapshot_chunk_bytes: usize,
    /// Limit on every step of a snapshot stream: connecting, each frame
    /// read or written, and the receiver's answer after the end frame
    /// (which includes its fsync of the image).
    pub snapshot_timeout: Duration,
    /// TLS for every peer connection (etcd's `--peer-*` flags); None:
    /// plain TCP.
    pub tls: Option<crate::PeerTlsHandle>,
}

impl Default for TcpTransportConfig {
    fn default() -> Self {
        TcpTransportConfig {
            id: 1,
            cluster_id: 0,
            peers: HashMap::new(),
            queue_len: 4096,
            max_frame_bytes: 512 << 20,
            retry_interval: Duration::from_millis(100),
            snapshot_chunk_bytes: crate::SNAPSHOT_CHUNK_BYTES,
            snapshot_timeout: Duration::from_secs(60),
            tls: None,
        }
    }
}

/// Takes an accepted message stream over (see [`TransportHooks::adopt`]);
/// false when nobody can (the stream is then closed, and its sender dials
/// again).
pub type AdoptStream = Arc<dyn Fn(InboundStream) -> bool + Send + Sync>;

/// Called with `(to, ok)` when a snapshot stream to `to` ended
/// ([`RaftNode::report_snapshot`](crate::RaftNode::report_snapshot)).
pub type ReportSnapshot = Arc<dyn Fn(u64, bool) + Send + Sync>;

/// Called with a peer whose connection failed
/// ([`RaftNode::report_unreachable`](crate::RaftNode::report_unreachable)).
pub type ReportUnreachable = Arc<dyn Fn(u64) + Send + Sync>;

/// What a [`TcpTransport`] calls back into, besides [`Deliver`]. Without
/// `snapshots` it refuses incoming snapshot streams and drops outgoing
/// `MsgSnapshot`s (reporting them failed).
#[derive(Clone, Default)]
pub struct TransportHooks {
    /// The application's images: exported for `MsgSnapshot`s sent, imported
    /// for those received.
    pub snapshots: Option<Arc<dyn SnapshotIo>>,
    /// The outcome of every `MsgSnapshot` sent.
    pub report_snapshot: Option<ReportSnapshot>,
    /// Every failed connection attempt or broken stream to a peer.
    pub report_unreachable: Option<ReportUnreachable>,
    /// Whether a dialing member may send to this one; None: everyone
    /// with the right cluster id may.
    pub member_status: Option<MemberStatusFn>,
    /// A member `member_status` calls `Unknown` dialed in (called once per
    /// such connection): this member is behind, and the sender is most
    /// likely a member added meanwhile, perhaps the leader. Its messages
    /// are delivered (etcd takes them too, on its pipeline); the host
    /// finds the sender's address ([`TcpTransport::add_peer`]) so that
    /// this member can answer it before it applies the addition.
    pub unknown_sender: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    /// A peer answered that this member was removed from the cluster.
    pub report_removed: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Translates log entries for members running etcd itself (see
    /// [`crate::rafthttp`]); None: etcd members are not answered.
    pub etcd_codec: Option<Arc<dyn EtcdEntryCodec>>,
    /// Who reads the accepted message streams of this protocol (plain or
    /// TLS) once their handshake is done: normally
    /// [`RaftNode::adopt_stream`](crate::RaftNode::adopt_stream), so that
    /// the raft thread reads its peers' frames itself and calls
    /// [`Deliver`] with each message (one thread wake-up per batch of
    /// messages instead of two per message). None: the transport's
    /// runtime reads them.
    pub adopt: Option<AdoptStream>,
}

/// What a member is to the listener's cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberStatus {
    /// In the membership the listener has applied.
    Member,
    /// Removed, for good.
    Removed,
    /// Neither (not added yet, or never).
    Unknown,
}

/// Looks up a member's status by id (see [`TransportHooks::member_status`]).
pub type MemberStatusFn = Arc<dyn Fn(u64) -> MemberStatus + Send + Sync>;

/// Counters of one peer's outgoing stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Messages written to the peer's connection.
    pub sent: u64,
    /// Messages dropped: queue full, or lost with a broken connection.
    pub dropped: u64,
    /// Handshakes the peer rejected.
    pub rejected: u64,
    /// Snapshots the peer confirmed (image durable, message delivered).
    pub snapshots_sent: u64,
    /// Snapshots that failed (or were dropped: one already in flight).
    pub snapshots_failed: u64,
    /// Bytes of messages written (frames with their length prefixes).
    pub sent_bytes: u64,
}

struct PeerQueue {
    /// Messages for the link's task: while it is not connected, or the
    /// peer runs etcd (then the task writes them).
    tx: mpsc::Sender<Message>,
    /// Once connected: frames the sender writes itself (`tcp_outbox`).
    outbox: Arc<Outbox>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
    addr: String,
    /// A snapshot stream to this peer is running.
    snapshot_busy: Arc<std::sync::atomic::AtomicBool>,
}

/// Raft messages over TCP (see the module doc).
pub struct TcpTransport {
    cfg: TcpTransportConfig,
    hooks: TransportHooks,
    local_addr: SocketAddr,
    peers: Mutex<HashMap<u64, PeerQueue>>,
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    queries: QuerySlot,
    /// What the accepted connections share (received-bytes counters).
    serve: Arc<ServeCtx>,
}

/// The handler of "ETRQ" queries, set once the application is ready.
type QuerySlot = Arc<parking_lot::RwLock<Option<QueryHandler>>>;

impl TcpTransport {
    /// Starts accepting on `listener` (already bound, so tests can use port
    /// 0) and dialing the configured peers. `deliver` gets every message
    /// received; it must not block (e.g. [`RaftNode::step`]).
    ///
    /// [`RaftNode::step`]: crate::RaftNode::step
    pub fn start(
        cfg: TcpTransportConfig,
        listener: std::net::TcpListener,
        deliver: Deliver,
    ) -> Result<Arc<TcpTransport>> {
        Self::start_with(cfg, listener, deliver, TransportHooks::default())
    }

    /// [`TcpTransport::start`] with snapshot streams and failure reports
    /// (see [`TransportHooks`] and the module doc).
    pub fn start_with(
        cfg: TcpTransportConfig,
        listener: std::net::TcpListener,
        deliver: Deliver,
        hooks: TransportHooks,
    ) -> Result<Arc<TcpTransport>> {
        if cfg.snapshot_chunk_bytes == 0 || cfg.snapshot_chunk_bytes > MAX_CHUNK {
            return Err(Error::Config(format!(
                "snapshot chunk of {} bytes: must be within 1..={MAX_CHUNK}",
                cfg.snapshot_chunk_bytes
            )));
        }
        let local_addr = listener.local_addr().map_err(io_err)?;
        listener.set_nonblocking(true).map_err(io_err)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(format!("peer-net-{:x}", cfg.id))
            .enable_all()
            .build()
            .map_err(io_err)?;
        let handle = rt.handle().clone();
        let listener = {
            let _guard = rt.enter();
            TcpListener::from_std(listener).map_err(io_err)?
        };
        let queries: QuerySlot = Arc::default();
        let ctx = Arc::new(ServeCtx {
            queries: queries.clone(),
            id: cfg.id,
            cluster_id: cfg.cluster_id,
            max: cfg.max_frame_bytes,
            deliver,
            snapshots: hooks.snapshots.clone(),
            member_status: hooks.member_status.clone(),
            unknown_sender: hooks.unknown_sender.clone(),
            receiving: Mutex::new(std::collections::HashSet::new()),
            received: Arc::default(),
            adopt: hooks.adopt.clone(),
            timeout: cfg.snapshot_timeout,
            tls: cfg.tls.clone(),
            etcd: Arc::default(),
            etcd_http: Arc::default(),
            codec: hooks.etcd_codec.clone(),
        });
        handle.spawn(accept_loop(listener, ctx.clone()));
        let t = Arc::new(TcpTransport {
            serve: ctx,
            queries,
            hooks,
            peers: Mutex::new(HashMap::new()),
            rt: Mutex::new(Some(rt)),
            handle,
            local_addr,
            cfg,
        });
        for (&peer, addr) in &t.cfg.peers {
            if peer != t.cfg.id {
                t.add_peer(peer, addr.clone());
            }
        }
        Ok(t)
    }

    /// Answers "ETRQ" queries with `handler` from now on (see
    /// [`crate::peer_query`]).
    pub fn set_query_handler(&self, handler: QueryHandler) {
        *self.queries.write() = Some(handler);
    }

    /// Answers the application's part of etcd's peer API (lease
    /// keep-alives and promotes forwarded by etcd members) from now on.
    pub fn set_etcd_http_handler(&self, handler: rafthttp::EtcdHttpHandler) {
        *self.serve.etcd_http.write() = Some(handler);
    }

    /// Whether member `peer` runs etcd (it dialed etcd's peer protocol
    /// here; see [`crate::rafthttp`]).
    pub fn is_etcd_peer(&self, peer: u64) -> bool {
        self.serve.etcd.is_etcd(peer)
    }

    /// The TLS settings of peer connections, if any.
    pub fn tls(&self) -> Option<crate::PeerTlsHandle> {
        self.cfg.tls.clone()
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts (or restarts, with a new address) the stream to `peer`.
    pub fn add_peer(&self, peer: u64, addr: String) {
        let (tx, rx) = mpsc::channel(self.cfg.queue_len.max(1));
        let counters = Arc::new(Counters::default());
        let outbox = Arc::new(Outbox::new(
            peer,
            counters.clone(),
            self.cfg.queue_len,
            self.cfg.max_frame_bytes,
        ));
        let link_addr = addr.clone();
        let link = Link {
            from: self.cfg.id,
            to: peer,
            cluster_id: self.cfg.cluster_id,
            addr,
            retry: self.cfg.retry_interval,
            counters: counters.clone(),
            outbox: outbox.clone(),
            unreachable: self.hooks.report_unreachable.clone(),
            tls: self.cfg.tls.clone(),
            removed: self.hooks.report_removed.clone(),
            etcd: self.serve.etcd.watch(peer),
            codec: self.hooks.etcd_codec.clone(),
        };
        let task = self.handle.spawn(link.run(rx));
        let q = PeerQueue {
            tx,
            outbox,
            counters,
            task,
            addr: link_addr,
            snapshot_busy: Default::default(),
        };
        if let Some(old) = self.peers.lock().insert(peer, q) {
            old.task.abort();
        }
    }

    /// Starts a snapshot stream for `m` (see the module doc); the outcome
    /// goes to the `report_snapshot` hook.
    fn send_snapshot(&self, peers: &HashMap<u64, PeerQueue>, m: Message) {
        let to = m.to;
        let report = self.hooks.report_snapshot.clone();
        let fail = |why: &str| {
            tracing::warn!(peer = format!("{to:x}"), "snapshot not sent: {why}");
            if let Some(r) = &report {
                r(to, false);
            }
        };
        let Some(io) = self.hooks.snapshots.clone() else {
            fail("this transport has no SnapshotIo");
            return;
        };
        let Some(q) = peers.get(&to) else {
            fail("unknown peer");
            return;
        };
        if self.serve.etcd.is_etcd(to) {
            // Raft asks again every heartbeat: said once per peer.
            if self.serve.etcd.first_snapshot_refusal(to) {
                tracing::warn!(
                    peer = format!("{to:x}"),
                    "the peer runs etcd and is behind this leader's raft log: it needs a \
                     snapshot, and snapshots to etcd members are not supported (replace it \
                     with a member of this server, or move leadership to an etcd member)"
                );
            }
            if let Some(r) = &report {
                r(to, false);
            }
            return;
        }
        if q.snapshot_busy.swap(true, Ordering::AcqRel) {
            q.counters.snapshots_failed.fetch_add(1, Ordering::Relaxed);
            fail("a snapshot to this peer is still in flight");
            return;
        }
        let sender = SnapshotSender {
            from: self.cfg.id,
            to,
            cluster_id: self.cfg.cluster_id,
            addr: q.addr.clone(),
            chunk: self.cfg.snapshot_chunk_bytes,
            timeout: self.cfg.snapshot_timeout,
            tls: self.cfg.tls.clone(),
        };
        let busy = q.snapshot_busy.clone();
        let counters = q.counters.clone();
        self.handle.spawn(async move {
            let index = m.get_snapshot().get_metadata().index;
            let r = sender.send(m, io).await;
            busy.store(false, Ordering::Release);
            let ok = r.is_ok();
            match r {
                Ok(bytes) => {
                    counters.snapshots_sent.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(peer = format!("{to:x}"), index, bytes, "sent a snapshot");
                }
                Err(e) => {
                    counters.snapshots_failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        peer = format!("{to:x}"),
                        index,
                        "sending a snapshot failed: {e}"
                    );
                }
            }
            if let Some(r) = report {
                r(to, ok);
            }
        });
    }

    /// Stops the stream to `peer`; its queued messages are dropped.
    pub fn remove_peer(&self, peer: u64) {
        if let Some(q) = self.peers.lock().remove(&peer) {
            q.task.abort();
        }
    }

    /// Counters of the stream to `peer`.
    pub fn peer_stats(&self, peer: u64) -> Option<PeerStats> {
        self.peers.lock().get(&peer).map(|q| PeerStats {
            sent: q.counters.sent.load(Ordering::Relaxed),
            dropped: q.counters.dropped.load(Ordering::Relaxed),
            rejected: q.counters.rejected.load(Ordering::Relaxed),
            snapshots_sent: q.counters.snapshots_sent.load(Ordering::Relaxed),
            snapshots_failed: q.counters.snapshots_failed.load(Ordering::Relaxed),
            sent_bytes: q.counters.sent_bytes.load(Ordering::Relaxed),
        })
    }

    /// Bytes of messages received, by sending member (frames with their
    /// length prefixes).
    pub fn received_bytes(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .serve
            .received
            .lock()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect();
        v.sort_unstable();
        v
    }

    /// Closes the listener and every stream. Idempotent.
    ///
    /// Blocks (at most 5 s) until the transport's tasks are dropped: they
    /// hold the application's hooks (its store, through the snapshot
    /// hook), and a process that exits while another thread still releases
    /// them can abort in the store's teardown. Call it from a thread that
    /// may block (not from an async task).
    pub fn shutdown(&self) {
        self.peers.lock().clear();
        if let Some(rt) = self.rt.lock().take() {
            // On a thread of its own: this one may belong to another runtime.
            let t = std::thread::Builder::new()
                .name("peer-net-stop".into())
                .spawn(move || rt.shutdown_timeout(Duration::from_secs(5)));
            match t {
                Ok(t) => {
                    let _ = t.join();
                }
                Err(e) => tracing::warn!("cannot wait for the peer transport to stop: {e}"),
            }
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        // Possibly inside an async task: no waiting here (`shutdown` waits).
        self.peers.get_mut().clear();
        if let Some(rt) = self.rt.get_mut().take() {
            rt.shutdown_background();
        }
    }
}

impl Transport for TcpTransport {
    /// Connected peers get their frames written here, on the caller's
    /// thread, one write per peer (`tcp_outbox`); the others' messages are
    /// queued for their link's task.
    fn send(&self, msgs: Vec<Message>) {
        let peers = self.peers.lock();
        // Peers with frames appended (a Ready addresses a handful).
        let mut appended: Vec<&PeerQueue> = Vec::new();
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(&peers, m);
                continue;
            }
            let Some(q) = peers.get(&m.to) else {
                tracing::debug!(to = m.to, "dropping a message to an unknown peer");
                continue;
            };
            let pushed = q.outbox.push(m, |m| {
                if q.tx.try_send(m).is_err() {
                    q.counters.dropped.fetch_add(1, Ordering::Relaxed);
                }
            });
            if pushed == Pushed::Appended && !appended.iter().any(|a| std::ptr::eq(*a, q)) {
                appended.push(q);
            }
        }
        for q in appended {
            q.outbox.flush();
        }
    }
}

fn io_err(e: std::io::Error) -> Error {
    Error::Config(format!("peer transport: {e}"))
}

/// The outgoing stream to one peer.
struct Link {
    from: u64,
    to: u64,
    cluster_id: u64,
    addr: String,
    retry: Duration,
    counters: Arc<Counters>,
    /// Where the connected stream's frames are written (`tcp_outbox`).
    outbox: Arc<Outbox>,
    unreachable: Option<ReportUnreachable>,
    tls: Option<crate::PeerTlsHandle>,
    /// Called when the peer says this member was removed.
    removed: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Whether the peer runs etcd, and the streams it opened to this member.
    etcd: EtcdLink,
    codec: Option<Arc<dyn EtcdEntryCodec>>,
}

impl Link {
    async fn run(mut self, mut rx: mpsc::Receiver<Message>) {
        let mut logged_down = false;
        loop {
            if *self.etcd.is_etcd.borrow() {
                if let Some(codec) = self.codec.clone() {
                    let counters = self.counters.clone();
                    let sent_counters = self.counters.clone();
                    let r = rafthttp::pump_etcd(
                        self.to,
                        &mut self.etcd,
                        &mut rx,
                        codec.as_ref(),
                        &move |n| {
                            counters.dropped.fetch_add(n, Ordering::Relaxed);
                        },
                        &move |n, bytes| {
                            sent_counters.sent.fetch_add(n, Ordering::Relaxed);
                            sent_counters.sent_bytes.fetch_add(bytes, Ordering::Relaxed);
                        },
                    )
                    .await;
                    if r.is_none() {
                        return; // the transport dropped the queue
                    }
                    continue;
                }
            }
            match self.connect().await {
                Ok(wire) => {
                    logged_down = false;
                    let r = self.outbox.run(wire, &mut rx).await;
                    self.outbox.disconnect();
                    if r.is_none() {
                        return; // the transport dropped the queue
                    }
                    self.report_unreachable();
                }
                Err(why) => {
                    self.report_unreachable();
                    if !logged_down {
                        tracing::warn!(peer = format!("{:x}", self.to), addr = %self.addr, "cannot reach peer: {why}");
                        logged_down = true;
                    }
                }
            }
            tokio::time::sleep(self.retry).await;
        }
    }

    fn report_unreachable(&self) {
        if let Some(r) = &self.unreachable {
            r(self.to);
        }
    }

    async fn connect(&self) -> std::result::Result<Wire, String> {
        dial_wire(&self.addr, &self.tls, self.cluster_id, self.from, self.to)
            .await
            .map_err(|e| {
                if e.rejected {
                    self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                }
                if e.removed {
                    if let Some(r) = &self.removed {
                        r();
                    }
                }
                e.why
            })
    }
}

/// Why a dial failed; `rejected` when the listener refused the handshake.
struct DialError {
    why: String,
    rejected: bool,
    /// The peer says this member was removed.
    removed: bool,
}

/// Connects to `addr` (in TLS with `tls`) and performs the handshake
/// under `magic`.
async fn dial(
    addr: &str,
    tls: &Option<crate::PeerTlsHandle>,
    magic: &[u8; 4],
    cluster_id: u64,
    from: u64,
    to: u64,
) -> std::result::Result<PeerStream, DialError> {
    let tcp = connect_tcp(addr).await?;
    let mut s: PeerStream = match tls {
        Some(tls) => Box::new(tls_connect(tls, addr, tcp).await?),
        None => Box::new(tcp),
    };
    handshake(&mut s, addr, magic, cluster_id, from, to).await?;
    Ok(s)
}

/// [`dial`] for a message stream, as a [`Wire`] the raft thread writes to
/// without blocking (`tcp_outbox`).
async fn dial_wire(
    addr: &str,
    tls: &Option<crate::PeerTlsHandle>,
    cluster_id: u64,
    from: u64,
    to: u64,
) -> std::result::Result<Wire, DialError> {
    let mut tcp = connect_tcp(addr).await?;
    match tls {
        Some(tls) => {
            let mut s = tls_connect(tls, addr, tcp).await?;
            handshake(&mut s, addr, MAGIC, cluster_id, from, to).await?;
            let (tcp, conn) = s.into_inner();
            Ok(Wire::tls(tcp, conn))
        }
        None => {
            handshake(&mut tcp, addr, MAGIC, cluster_id, from, to).await?;
            Ok(Wire::plain(tcp))
        }
    }
}

fn dial_io(e: std::io::Error) -> DialError {
    DialError {
        why: e.to_string(),
        rejected: false,
        removed: false,
    }
}

/// A TCP connection to `addr`, Nagle off.
async fn connect_tcp(addr: &str) -> std::result::Result<TcpStream, DialError> {
    let tcp = TcpStream::connect(addr).await.map_err(dial_io)?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// TLS client handshake (a failure counts as a rejection).
async fn tls_connect(
    tls: &crate::PeerTlsHandle,
    addr: &str,
    tcp: TcpStream,
) -> std::result::Result<tokio_rustls::client::TlsStream<TcpStream>, DialError> {
    crate::peer_tls::connect(tls, addr, tcp)
        .await
        .map_err(|why| DialError {
            why,
            rejected: true,
            removed: false,
        })
}

/// The dialer's handshake (module doc) and the listener's answer.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    addr: &str,
    magic: &[u8; 4],
    cluster_id: u64,
    from: u64,
    to: u64,
) -> std::result::Result<(), DialError> {
    let mut hs = Vec::with_capacity(HANDSHAKE_LEN);
    hs.extend_from_slice(magic);
    hs.push(VERSION);
    hs.extend_from_slice(&cluster_id.to_be_bytes());
    hs.extend_from_slice(&from.to_be_bytes());
    hs.extend_from_slice(&to.to_be_bytes());
    s.write_all(&hs).await.map_err(dial_io)?;
    // A member running etcd (HTTP) never answers: give up, it dials back.
    let answer = tokio::time::timeout(HANDSHAKE_ANSWER, s.read_u8())
        .await
        .map_err(|_| DialError {
            why: "no answer to the handshake (an etcd member answers on its own streams)".into(),
            rejected: false,
            removed: false,
        })?
        .map_err(dial_io)?;
    let why = match answer {
        ACCEPTED => return Ok(()),
        CLUSTER_MISMATCH => {
            format!("the member at {addr} belongs to another cluster (ours is {cluster_id:016x})")
        }
        WRONG_MEMBER => format!("the member at {addr} is not member {to:016x}"),
        SNAPSHOT_BUSY => format!("the member at {addr} is still receiving a snapshot from us"),
        NO_SNAPSHOTS => format!("the member at {addr} takes no snapshots"),
        REMOVED => {
            return Err(DialError {
                why: format!("the member at {addr} says this member was removed from the cluster"),
                rejected: true,
                removed: true,
            })
        }
        NOT_MEMBER => format!("the member at {addr} does not know this member (yet)"),
        other => format!("handshake refused with code {other}"),
    };
    Err(DialError {
        why,
        rejected: true,
        removed: false,
    })
}

/// Bounds one step of a snapshot stream.
async fn within<T>(
    limit: Option<Duration>,
    f: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match limit {
        None => f.await,
        Some(d) => tokio::time::timeout(d, f).await.map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "snapshot stream timed out")
        })?,
    }
}

/// One outgoing snapshot stream.
struct SnapshotSender {
    from: u64,
    to: u64,
    cluster_id: u64,
    addr: String,
    chunk: usize,
    timeout: Duration,
    tls: Option<crate::PeerTlsHandle>,
}

impl SnapshotSender {
    /// Sends `m` and the image; returns the image's length once the
    /// receiver confirmed.
    async fn send(
        &self,
        mut m: Message,
        io: Arc<dyn SnapshotIo>,
    ) -> std::result::Result<u64, String> {
        let t = Some(self.timeout);
        let index = m.get_snapshot().get_metadata().index;
        m.mut_snapshot().data = Default::default();
        let s = tokio::time::timeout(
            self.timeout,
            dial(
                &self.addr,
                &self.tls,
                SNAP_MAGIC,
                self.cluster_id,
                self.from,
                self.to,
            ),
        )
        .await
        .map_err(|_| "connecting timed out".to_string())?
        .map_err(|e| e.why)?;
        let mut w = BufWriter::new(s);
        within(t, write_frame(&mut w, &m, MAX_SNAPSHOT_MSG))
            .await
            .map_err(|e| e.to_string())
            .map(drop)?;
        // The image is read on a blocking thread, one chunk ahead.
        let (tx, mut rx) = mpsc::channel::<std::result::Result<Vec<u8>, String>>(1);
        let chunk = self.chunk;
        tokio::task::spawn_blocking(move || {
            let mut r = match io.export(index) {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e.to_string()));
                    return;
                }
            };
            loop {
                let mut buf = vec![0; chunk];
                match read_full(&mut *r, &mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        if tx.blocking_send(Ok(buf)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e.to_string()));
                        return;
                    }
                }
            }
        });
        let (mut crc, mut total) = (0u32, 0u64);
        while let Some(c) = rx.recv().await {
            let c = c?;
            crc = crc32c::crc32c_append(crc, &c);
            total += c.len() as u64;
            within(t, write_chunk_frame(&mut w, &c))
                .await
                .map_err(|e| e.to_string())?;
        }
        within(t, async {
            write_end_frame(&mut w, total, crc).await?;
            w.flush().await
        })
        .await
        .map_err(|e| e.to_string())?;
        let answer = within(t, w.read_u8()).await.map_err(|e| e.to_string())?;
        match answer {
            SNAPSHOT_OK => Ok(total),
            SNAPSHOT_REFUSED => Err("the receiver refused the stream".into()),
            SNAPSHOT_APP_FAILED => Err("the receiver could not import the image".into()),
            other => Err(format!("unknown answer {other}")),
        }
    }
}

/// Writes one image chunk frame of a snapshot stream.
async fn write_chunk_frame<W: AsyncWrite + Unpin>(w: &mut W, c: &[u8]) -> std::io::Result<()> {
    w.write_u8(CHUNK_FRAME).await?;
    w.write_u32(c.len() as u32).await?;
    w.write_all(c).await
}

/// Writes the end frame of a snapshot stream.
async fn write_end_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    total: u64,
    crc: u32,
) -> std::io::Result<()> {
    w.write_u8(END_FRAME).await?;
    w.write_u64(total).await?;
    w.write_u32(crc).await
}

/// Reads the image frames of a snapshot stream (after its message),
/// handing each chunk to `on_chunk`; returns the image's length after a
/// verified end frame. Each frame read is bounded by `limit`.
async fn read_image<R, F, Fut>(
    r: &mut R,
    max_chunk: usize,
    limit: Option<Duration>,
    mut on_chunk: F,
) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let (mut crc, mut total) = (0u32, 0u64);
    loop {
        match within(limit, r.read_u8()).await? {
            CHUNK_FRAME => {
                let len = within(limit, r.read_u32()).await? as usize;
                if len == 0 || len > max_chunk {
                    return Err(bad(format!("image chunk of {len} bytes")));
                }
                let mut buf = vec![0; len];
                within(limit, r.read_exact(&mut buf)).await?;
                crc = crc32c::crc32c_append(crc, &buf);
                total += len as u64;
                on_chunk(buf).await?;
            }
            END_FRAME => {
                let n = within(limit, r.read_u64()).await?;
                let c = within(limit, r.read_u32()).await?;
                if n != total {
                    return Err(bad(format!("image of {total} bytes, the sender says {n}")));
                }
                if c != crc {
                    return Err(bad(format!(
                        "image checksum {crc:08x}, the sender says {c:08x}"
                    )));
                }
                return Ok(total);
            }
            other => return Err(bad(format!("unknown snapshot frame kind {other}"))),
        }
    }
}

/// Writes one frame.
async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    m: &Message,
    max: usize,
) -> std::io::Result<usize> {
    let mut buf = Vec::new();
    let len = encode_frame(m, max, &mut buf)?;
    w.write_all(&buf).await?;
    Ok(len)
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Option<Message>> {
    let len = match r.read_u32().await {
        Ok(n) => n as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    tcp_inbound::check_frame_len(len, max)?;
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).await?;
    tcp_inbound::decode_body(&buf).map(Some)
}

/// What the accept loop's connections share.
struct ServeCtx {
    /// The handler of "ETRQ" queries (see peer_query.rs).
    queries: QuerySlot,
    id: u64,
    cluster_id: u64,
    max: usize,
    deliver: Deliver,
    snapshots: Option<Arc<dyn SnapshotIo>>,
    /// Who may send (see [`TransportHooks::member_status`]).
    member_status: Option<MemberStatusFn>,
    /// See [`TransportHooks::unknown_sender`].
    unknown_sender: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    /// Members whose snapshot stream is being received.
    receiving: Mutex<std::collections::HashSet<u64>>,
    /// Bytes of messages received per sending member (`/metrics`; shared
    /// with the streams the raft thread reads).
    received: Arc<Mutex<HashMap<u64, u64>>>,
    /// See [`TransportHooks::adopt`].
    adopt: Option<AdoptStream>,
    timeout: Duration,
    /// TLS on accepted connections, checked before anything is read.
    tls: Option<crate::PeerTlsHandle>,
    /// Which peers run etcd (see [`crate::rafthttp`]).
    etcd: Arc<EtcdPeers>,
    /// The application's part of etcd's peer API, once it is ready.
    etcd_http: Arc<parking_lot::RwLock<Option<rafthttp::EtcdHttpHandler>>>,
    codec: Option<Arc<dyn EtcdEntryCodec>>,
}

async fn accept_loop(listener: TcpListener, ctx: Arc<ServeCtx>) {
    loop {
        match listener.accept().await {
            Ok((s, addr)) => {
                let _ = s.set_nodelay(true);
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let r = match &ctx.tls {
                        None => serve(s, &ctx).await,
                        Some(tls) => {
                            match tokio::time::timeout(ctx.timeout, crate::peer_tls::accept(tls, s))
                                .await
                            {
                                Ok(Ok(s)) => serve(s, &ctx).await,
                                Ok(Err(why)) => {
                                    tracing::warn!(%addr, "rejected peer connection: {why}");
                                    return;
                                }
                                Err(_) => {
                                    tracing::warn!(%addr, "rejected peer connection: TLS handshake timed out");
                                    return;
                                }
                            }
                        }
                    };
                    if let Err(e) = r {
                        tracing::debug!(%addr, "peer connection closed: {e}");
                    }
                });
            }
            Err(e) => {
                tracing::warn!("accepting a peer connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// An accepted connection that can be taken apart for the raft thread
/// (`tcp_inbound`): its socket and, with TLS, its session.
trait Accepted: crate::peer_tls::PeerIo + Sized + 'static {
    fn into_parts(self)
        -> std::io::Result<(std::net::TcpStream, Option<rustls::ServerConnection>)>;
}

impl Accepted for TcpStream {
    fn into_parts(
        self,
    ) -> std::io::Result<(std::net::TcpStream, Option<rustls::ServerConnection>)> {
        Ok((self.into_std()?, None))
    }
}

impl Accepted for tokio_rustls::server::TlsStream<TcpStream> {
    fn into_parts(
        self,
    ) -> std::io::Result<(std::net::TcpStream, Option<rustls::ServerConnection>)> {
        let (tcp, conn) = self.into_inner();
        Ok((tcp.into_std()?, Some(conn)))
    }
}

/// Checks a dialer's handshake and dispatches on its magic.
async fn serve<S: Accepted>(mut s: S, ctx: &ServeCtx) -> std::io::Result<()> {
    let mut hs = [0u8; HANDSHAKE_LEN];
    s.read_exact(&mut hs[..4]).await?;
    if &hs[..4] == QUERY_MAGIC {
        let handler = ctx.queries.read().clone();
        return serve_query(s, ctx.cluster_id, handler).await;
    }
    if rafthttp::is_http(&hs[..4]) {
        let removed = |id: u64| {
            ctx.member_status
                .as_ref()
                .is_some_and(|f| f(id) == MemberStatus::Removed)
        };
        let deliver = |m: Message| {
            let len = 8 + u64::from(m.compute_size());
            *ctx.received.lock().entry(m.from).or_default() += len;
            (ctx.deliver)(m)
        };
        let http = HttpCtx {
            id: ctx.id,
            cluster_id: ctx.cluster_id,
            max: ctx.max,
            etcd: &ctx.etcd,
            codec: ctx.codec.as_ref(),
            removed: &removed,
            deliver: &deliver,
            handler: ctx.etcd_http.read().clone(),
            heartbeat: rafthttp::LINK_HEARTBEAT,
        };
        return rafthttp::serve_http(Box::new(s), hs[..4].to_vec(), &http).await;
    }
    s.read_exact(&mut hs[4..]).await?;
    let field = |i: usize| u64::from_be_bytes(hs[i..i + 8].try_into().expect("8 bytes"));
    let (their_cluster, from, to) = (field(5), field(13), field(21));
    let magic: [u8; 4] = hs[..4].try_into().expect("4 bytes");
    // A new connection kind: a magic in this list and an arm in the match
    // below; the handshake and its answers are shared.
    let known = [MAGIC, SNAP_MAGIC].contains(&&magic);
    let answer = if !known || hs[4] != VERSION {
        BAD_VERSION
    } else if their_cluster != ctx.cluster_id {
        tracing::warn!(
            from = format!("{from:x}"),
            "rejecting a peer of cluster {their_cluster:016x}: this member belongs to cluster {:016x}",
            ctx.cluster_id
        );
        CLUSTER_MISMATCH
    } else if to != ctx.id {
        WRONG_MEMBER
    } else {
        match ctx.member_status.as_ref().map(|f| f(from)) {
            Some(MemberStatus::Removed) => {
                tracing::warn!(
                    from = format!("{from:x}"),
                    "refusing a removed member's connection"
                );
                REMOVED
            }
            Some(MemberStatus::Unknown) => {
                tracing::info!(
                    from = format!("{from:x}"),
                    "accepting a connection from a member this one has not applied yet \
                     (this member is behind)"
                );
                if let Some(hook) = &ctx.unknown_sender {
                    hook(from);
                }
                ACCEPTED
            }
            Some(MemberStatus::Member) | None => ACCEPTED,
        }
    };
    if answer != ACCEPTED {
        s.write_u8(answer).await?;
        return Ok(());
    }
    match &magic {
        MAGIC => {
            // A member that speaks this protocol (maybe one that ran etcd
            // before, under the same id).
            ctx.etcd.mark(from, false);
            s.write_u8(ACCEPTED).await?;
            s.flush().await?;
            match &ctx.adopt {
                Some(adopt) => {
                    let (tcp, tls) = s.into_parts()?;
                    let stream = InboundStream::new(
                        tcp,
                        tls,
                        from,
                        ctx.id,
                        ctx.max,
                        ctx.deliver.clone(),
                        ctx.received.clone(),
                    )?;
                    if !adopt(stream) {
                        tracing::debug!(
                            from = format!("{from:x}"),
                            "closing a peer stream: the raft node is not running"
                        );
                    }
                    Ok(())
                }
                None => serve_messages(s, ctx, from).await,
            }
        }
        SNAP_MAGIC => serve_snapshot(s, ctx, from).await,
        _ => unreachable!("magic checked above"),
    }
}

/// Delivers the messages of an accepted message stream.
async fn serve_messages<S: AsyncRead + Unpin>(
    s: S,
    ctx: &ServeCtx,
    from: u64,
) -> std::io::Result<()> {
    let id = ctx.id;
    // Buffered: one read takes every frame that arrived, instead of two
    // reads (length, then body) per frame.
    let mut s = tokio::io::BufReader::with_capacity(64 * 1024, s);
    while let Some(m) = read_frame(&mut s, ctx.max).await? {
        if let Some(why) = tcp_inbound::misrouted(&m, from, id) {
            return Err(std::io::Error::other(why));
        }
        let len = 4 + u64::from(m.compute_size());
        *ctx.received.lock().entry(from).or_default() += len;
        (ctx.deliver)(m);
    }
    Ok(())
}

/// Removes a member from the receiving set when its stream ends.
struct Receiving<'a> {
    ctx: &'a ServeCtx,
    from: u64,
}

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        self.ctx.receiving.lock().remove(&self.from);
    }
}

/// What the blocking thread writing an incoming image is told.
enum SinkCmd {
    Chunk(Vec<u8>),
    Finish,
}

/// Receives a snapshot stream (the handshake was checked): the message,
/// the image into the application's sink, then delivery and the answer.
async fn serve_snapshot<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut s: S,
    ctx: &ServeCtx,
    from: u64,
) -> std::io::Result<()> {
    let Some(io) = ctx.snapshots.clone() else {
        s.write_u8(NO_SNAPSHOTS).await?;
        return Ok(());
    };
    if !ctx.receiving.lock().insert(from) {
        s.write_u8(SNAPSHOT_BUSY).await?;
        return Ok(());
    }
    let _guard = Receiving { ctx, from };
    s.write_u8(ACCEPTED).await?;
    let limit = Some(ctx.timeout);
    let refuse = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, why);
    let mut m = match within(limit, read_frame(&mut s, MAX_SNAPSHOT_MSG)).await {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(()),
        Err(e) => {
            let _ = s.write_u8(SNAPSHOT_REFUSED).await;
            return Err(e);
        }
    };
    let (index, term) = {
        let meta = m.get_snapshot().get_metadata();
        (meta.index, meta.term)
    };
    if m.get_msg_type() != MessageType::MsgSnapshot
        || m.from != from
        || m.to != ctx.id
        || index == 0
    {
        let _ = s.write_u8(SNAPSHOT_REFUSED).await;
        return Err(refuse(format!(
            "{:?} {}->{} (index {index}) on the snapshot stream {from}->{}",
            m.get_msg_type(),
            m.from,
            m.to,
            ctx.id
        )));
    }
    // The sink lives on a blocking thread, at most two chunks behind.
    let (tx, mut rx) = mpsc::channel::<SinkCmd>(2);
    let writer = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>> {
        let mut sink: Box<dyn SnapshotSink> = io.import(index, term)?;
        while let Some(cmd) = rx.blocking_recv() {
            match cmd {
                SinkCmd::Chunk(c) => sink.write_chunk(&c)?,
                SinkCmd::Finish => return sink.finish().map(Some),
            }
        }
        // The stream broke: dropping the sink discards the image.
        Ok(None)
    });
    let got = read_image(&mut s, MAX_CHUNK, limit, |c| {
        let tx = tx.clone();
        async move {
            tx.send(SinkCmd::Chunk(c))
                .await
                .map_err(|_| std::io::Error::other("the image sink failed"))
        }
    })
    .await;
    let total = match got {
        Ok(total) => {
            let _ = tx.send(SinkCmd::Finish).await;
            drop(tx);
            total
        }
        Err(e) => {
            drop(tx);
            // An application failure shows as a closed channel: tell which.
            let answer = match writer.await {
                Ok(Err(app)) => {
                    tracing::warn!(
                        from = format!("{from:x}"),
                        index,
                        "importing a snapshot failed: {app}"
                    );
                    SNAPSHOT_APP_FAILED
                }
                _ => SNAPSHOT_REFUSED,
            };
            let _ = s.write_u8(answer).await;
            return Err(e);
        }
    };
    let token = match writer.await {
        Ok(Ok(Some(token))) => token,
        Ok(Ok(None)) => {
            s.write_u8(SNAPSHOT_APP_FAILED).await?;
            return Ok(());
        }
        Ok(Err(e)) => {
            tracing::warn!(
                from = format!("{from:x}"),
                index,
                "importing a snapshot failed: {e}"
            );
            s.write_u8(SNAPSHOT_APP_FAILED).await?;
            return Ok(());
        }
        Err(e) => {
            s.write_u8(SNAPSHOT_APP_FAILED).await?;
            return Err(std::io::Error::other(format!("image sink panicked: {e}")));
        }
    };
    tracing::info!(
        from = format!("{from:x}"),
        index,
        term,
        bytes = total,
        "received a snapshot"
    );
    m.mut_snapshot().data = token.into();
    (ctx.deliver)(m);
    s.write_u8(SNAPSHOT_OK).await?;
    s.flush().await
}

#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fuzzing {
    //! Fuzz entry point: decode peer frames from untrusted bytes.

    /// Decodes `data` as a sequence of frames until the first error, with
    /// both decoders: the peer-net runtime's (`read_frame`) and the raft
    /// thread's (`tcp_inbound`, fed in pieces whose size the first byte
    /// picks); they must agree on every message.
    pub fn decode_frames(data: &[u8]) -> usize {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let runtime_decoded = rt.block_on(async {
            let mut r = data;
            let mut out = Vec::new();
            while let Ok(Some(m)) = super::read_frame(&mut r, 1 << 20).await {
                out.push(m);
            }
            out
        });
        let piece = data.first().map_or(1, |&b| 1 + usize::from(b) * 97);
        let raft_decoded = crate::tcp_inbound::decode_in_pieces(data, piece, 1 << 20);
        assert_eq!(
            runtime_decoded, raft_decoded,
            "the two frame decoders disagree"
        );
        raft_decoded.len()
    }

    /// Decodes `data` as a snapshot stream after its handshake: the raft
    /// message, then image frames up to a verified end frame. Returns the
    /// image's length, or `None` where the receiver refuses the stream.
    pub fn decode_snapshot_stream(data: &[u8]) -> Option<u64> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut r = data;
            super::read_frame(&mut r, super::MAX_SNAPSHOT_MSG)
                .await
                .ok()??;
            let mut seen = 0u64;
            let total = super::read_image(&mut r, super::MAX_CHUNK, None, |c| {
                seen += c.len() as u64;
                std::future::ready(Ok(()))
            })
            .await
            .ok()?;
            assert_eq!(seen, total, "every byte counted went to the sink");
            Some(total)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut m = Message::default();
            m.from = 1;
            m.to = 2;
            m.term = 7;
            m.mut_entries().push(Default::default());
            let mut buf = Vec::new();
            write_frame(&mut buf, &m, 1 << 20).await.unwrap();
            write_frame(&mut buf, &m, 1 << 20).await.unwrap();
            let mut r = &buf[..];
            assert_eq!(read_frame(&mut r, 1 << 20).await.unwrap(), Some(m.clone()));
            assert_eq!(read_frame(&mut r, 1 << 20).await.unwrap(), Some(m.clone()));
            assert_eq!(read_frame(&mut r, 1 << 20).await.unwrap(), None);
            // Too long for the limit.
            let mut r = &buf[..];
            assert!(read_frame(&mut r, 4).await.is_err());
            // Not a message.
            let garbage = [0, 0, 0, 3, 0xff, 0xff, 0xff];
            assert!(read_frame(&mut &garbage[..], 1 << 20).await.is_err());
            // Truncated.
            assert!(read_frame(&mut &buf[..buf.len() / 2 - 1], 1 << 20)
                .await
                .is_err());
        });
        assert_eq!(fuzzing::decode_frames(&[0, 0, 0, 0]), 1);
    }

    /// The fuzz entry point over mutations of valid frames and random bytes.
    #[test]
    fn decoding_mutated_frames_never_panics() {
        use rand::{Rng, SeedableRng};
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut valid = Vec::new();
        rt.block_on(async {
            for i in 0..4u64 {
                let mut m = Message::default();
                m.from = i;
                m.to = i + 1;
                m.index = i * 1000;
                let mut e = raft::eraftpb::Entry::default();
                e.data = vec![i as u8; 40].into();
                m.mut_entries().push(e);
                write_frame(&mut valid, &m, 1 << 20).await.unwrap();
            }
        });
        assert_eq!(fuzzing::decode_frames(&valid), 4);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..3000 {
            let mut input = valid.clone();
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..input.len());
                input[i] = rng.gen();
            }
            input.truncate(rng.gen_range(0..=input.len()));
            fuzzing::decode_frames(&input);
            let noise: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
            fuzzing::decode_frames(&noise);
        }
    }

    /// A snapshot stream as the sender writes it (after the handshake).
    fn snapshot_stream(image: &[u8], chunk: usize) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgSnapshot);
            m.from = 1;
            m.to = 2;
            m.mut_snapshot().mut_metadata().index = 10;
            m.mut_snapshot().mut_metadata().term = 2;
            let mut buf = Vec::new();
            write_frame(&mut buf, &m, MAX_SNAPSHOT_MSG).await.unwrap();
            for c in image.chunks(chunk) {
                write_chunk_frame(&mut buf, c).await.unwrap();
            }
            write_end_frame(&mut buf, image.len() as u64, crc32c::crc32c(image))
                .await
                .unwrap();
            buf
        })
    }

    #[test]
    fn snapshot_streams_round_trip_and_damage_is_refused() {
        let image: Vec<u8> = (0..2500u32).map(|i| (i * 7) as u8).collect();
        let good = snapshot_stream(&image, 1000);
        assert_eq!(fuzzing::decode_snapshot_stream(&good), Some(2500));
        assert_eq!(
            fuzzing::decode_snapshot_stream(&snapshot_stream(&[], 1000)),
            Some(0),
            "an empty image is a message and an end frame"
        );
        let msg_len = 4 + u32::from_be_bytes(good[..4].try_into().unwrap()) as usize;
        // A flipped image byte: the checksum disagrees.
        let mut bad = good.clone();
        bad[msg_len + 5 + 17] ^= 1;
        assert_eq!(fuzzing::decode_snapshot_stream(&bad), None);
        // Short streams: cut inside a chunk, or before the end frame.
        assert_eq!(
            fuzzing::decode_snapshot_stream(&good[..good.len() - 13]),
            None
        );
        assert_eq!(
            fuzzing::decode_snapshot_stream(&good[..msg_len + 700]),
            None
        );
        // A lost chunk: the length disagrees.
        let mut short = good[..msg_len].to_vec();
        short.extend_from_slice(&good[msg_len + 1005..]);
        assert_eq!(fuzzing::decode_snapshot_stream(&short), None);
        // An end frame that claims a different length (checksum kept).
        let mut long = good.clone();
        let n = long.len();
        long[n - 12..n - 4].copy_from_slice(&2501u64.to_be_bytes());
        assert_eq!(fuzzing::decode_snapshot_stream(&long), None);
        // Unknown frame kind, empty chunk, oversized chunk.
        for (kind, len) in [
            (9u8, 1u32),
            (CHUNK_FRAME, 0),
            (CHUNK_FRAME, MAX_CHUNK as u32 + 1),
        ] {
            let mut s = good[..msg_len].to_vec();
            s.push(kind);
            s.extend_from_slice(&len.to_be_bytes());
            s.extend_from_slice(&[0; 16]);
            assert_eq!(
                fuzzing::decode_snapshot_stream(&s),
                None,
                "kind {kind} len {len}"
            );
        }
    }

    /// The snapshot fuzz entry point over mutations of valid streams.
    #[test]
    fn decoding_mutated_snapshot_streams_never_panics() {
        use rand::{Rng, SeedableRng};
        let image: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let valid = snapshot_stream(&image, 512);
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut refused = 0;
        for _ in 0..3000 {
            let mut input = valid.clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..input.len());
                input[i] = rng.gen();
            }
            if rng.gen_bool(0.3) {
                input.truncate(rng.gen_range(0..=input.len()));
            }
            if fuzzing::decode_snapshot_stream(&input).is_none() {
                refused += 1;
            }
        }
        assert!(refused > 2500, "damage is caught: {refused}");
    }
}
