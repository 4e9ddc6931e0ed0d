//! etcd 3.4's peer protocol (`rafthttp`), enough for etcd members and this
//! server's members to run in ONE cluster: the rolling migration of a
//! running etcd cluster, one member at a time (stop etcd on a host, start
//! this server on its data directory: `etcd_import`).
//!
//! The peer listener takes both protocols: a connection that starts with
//! `GET ` or `POST` is etcd's HTTP/1.1 (after TLS, when the listener has
//! it), anything else this crate's own handshake (`tcp_transport`).
//!
//! # What an etcd member does, and what this side answers
//!
//! etcd keeps, per peer, two long-lived *stream* responses (the receiver
//! dials them: `GET /raft/stream/{message,msgapp}/<its id hex>`, with
//! `X-Raft-To: <our id hex>`), and a *pipeline* of `POST /raft` requests,
//! one message each, for when the peer's streams to it are down. This side
//! never dials etcd (etcd's paths: `/raft/stream/message/<id>` and, for
//! msgappv2, `/raft/stream/msgapp/<id>`):
//! - **etcd -> here**: etcd's pipeline. Every `POST /raft` carries one raft
//!   message in protobuf (`raftpb.Message`: raft-rs's `eraftpb` has the
//!   same field numbers) with `Content-Length`; answered `204 No Content`.
//! - **here -> etcd**: the `message` stream etcd dialed, answered `200`
//!   with `X-Server-Version`, then written until it breaks (no length: the
//!   body ends with the connection):
//!
//!   ```text
//!   len: u64 BE | raftpb.Message (len bytes)      (repeated)
//!   ```
//!
//!   with a *link heartbeat* (an empty `MsgHeartbeat`, which etcd's reader
//!   skips) after a second of silence: etcd drops a stream that says
//!   nothing for 5 s. The `msgappv2` stream is answered too (or etcd marks
//!   the peer inactive every 100 ms and says so) and only ever carries its
//!   link heartbeat, the single byte `0` (msgappv2's `msgTypeLinkHeartbeat`).
//! - `GET /version` (`{"etcdserver":..,"etcdcluster":..}`, read by etcd's
//!   cluster-version monitor) and `GET /raft/probing` (etcd's RTT prober,
//!   `{"ok":true,"now":<RFC 3339>}`) are answered here; the rest of etcd's
//!   peer API that a follower asks its leader (`/leases`,
//!   `/leases/internal`, `/members/promote/<id>`, `/members`) goes to the
//!   application's [`EtcdHttpHandler`], and [`request`] asks an etcd
//!   leader the same.
//! - `POST /raft/snapshot`: an etcd leader's snapshot for a member of ours
//!   that fell behind its log. The body (chunked: Go does not know its
//!   length) is etcd's merged snapshot:
//!
//!   ```text
//!   len: u64 BE | raftpb.Message (MsgSnap; Snapshot.data: etcd's v2 store, unused here)
//!   etcd's bbolt database, to the end of the body
//!   ```
//!
//!   The database goes to a file in [`EtcdEntryCodec::scratch_dir`], is
//!   imported by [`EtcdEntryCodec::import_etcd_snapshot`] (the same
//!   conversion as starting on an etcd data directory), and the message is
//!   delivered with the token; answered `204` (or `500`, and etcd's raft
//!   retries). This side never sends a snapshot to an etcd member: etcd
//!   3.4 would need its v2 store (with the membership) beside the
//!   database.
//!
//! Checks as etcd's handlers: `X-Etcd-Cluster-ID` must be this cluster's
//! (`412 Precondition Failed`), a stream's `X-Raft-To` this member
//! (`412`); a removed sender gets `403` on the pipeline and `410 Gone` on
//! a stream, which tell an etcd member it was removed.
//!
//! # Log entries cross the boundary translated
//!
//! An etcd member's log holds etcd's `InternalRaftRequest`s; ours holds
//! this project's `RaftRequest`s. Raft does not look into entry data, so
//! each side keeps its own encoding and the entries of `MsgAppend` and
//! `MsgPropose` are translated as they cross ([`EtcdEntryCodec`], given by
//! the application); index, term and order never change.
//!
//! # Which peers are etcd members
//!
//! A peer is taken for an etcd member once it dials one of the endpoints
//! above (etcd redials its streams every 100 ms, so within moments), and
//! for one of ours again once it dials this crate's handshake (a member
//! replaced by this server keeps its id). The outgoing link of a peer
//! follows ([`EtcdPeers::watch`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::{Entry, Message, MessageType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use crate::peer_tls::PeerStream;

/// The etcd version this server answers as (its API is etcd 3.4's).
pub const ETCD_SERVER_VERSION: &str = "3.4.0";
/// The cluster version it answers (`/version`).
pub const ETCD_CLUSTER_VERSION: &str = "3.4.0";
/// Largest request head read.
const MAX_HEAD: usize = 64 << 10;
/// Go's body of a 404.
const NOT_FOUND: &str = "404 page not found\n";
/// Silence after which a link heartbeat goes on an etcd stream.
pub(crate) const LINK_HEARTBEAT: Duration = Duration::from_secs(1);

/// One request of etcd's peer API for the application.
#[derive(Clone, Debug)]
pub struct EtcdHttpRequest {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// The application's answer.
#[derive(Clone, Debug)]
pub struct EtcdHttpResponse {
    /// HTTP status code.
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// Answers [`EtcdHttpRequest`]s (set with
/// [`TcpTransport::set_etcd_http_handler`](crate::TcpTransport::set_etcd_http_handler)).
pub type EtcdHttpHandler = Arc<
    dyn Fn(
            EtcdHttpRequest,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = EtcdHttpResponse> + Send>>
        + Send
        + Sync,
>;

/// Translates log entries between etcd's encoding and the application's
/// (see the module doc). Called on the transport's threads: no blocking.
pub trait EtcdEntryCodec: Send + Sync {
    /// An entry of this member's log, as an etcd member must apply it.
    fn entry_to_etcd(&self, e: &Entry) -> Entry;
    /// An etcd member's entry, as this member applies it; an error drops
    /// the message carrying it (raft sends it again).
    fn entry_from_etcd(&self, e: &Entry) -> Result<Entry, String>;
    /// Where an etcd leader's snapshot database is written while it
    /// arrives (deleted once imported).
    fn scratch_dir(&self) -> std::path::PathBuf;
    /// Imports the database of an etcd leader's snapshot (`index`, `term`):
    /// etcd's bbolt file at `db`, converted into the application's image;
    /// returns the token raft's `Snapshot.data` carries to the application
    /// (as [`SnapshotSink::finish`](crate::SnapshotSink::finish)). Blocking.
    fn import_etcd_snapshot(
        &self,
        index: u64,
        term: u64,
        db: &std::path::Path,
    ) -> Result<Vec<u8>, String>;
}

/// The peers known to speak etcd's protocol, and the streams they opened.
#[derive(Default)]
pub(crate) struct EtcdPeers {
    peers: Mutex<HashMap<u64, PeerSlot>>,
    /// etcd members this leader could not send a snapshot to (logged once).
    refused_snapshots: Mutex<std::collections::HashSet<u64>>,
}

/// One peer's state, shared by the accepting side and the peer's link.
struct PeerSlot {
    is_etcd: watch::Sender<bool>,
    /// Streams the peer opened for this member's messages (the newest
    /// replaces the one before).
    attach: mpsc::UnboundedSender<PeerStream>,
    attached: Option<mpsc::UnboundedReceiver<PeerStream>>,
}

impl PeerSlot {
    fn new() -> PeerSlot {
        let (attach, attached) = mpsc::unbounded_channel();
        PeerSlot {
            is_etcd: watch::channel(false).0,
            attach,
            attached: Some(attached),
        }
    }
}

/// What a link to `peer` watches: whether it is an etcd member, and the
/// streams it opens.
pub(crate) struct EtcdLink {
    pub is_etcd: watch::Receiver<bool>,
    pub streams: mpsc::UnboundedReceiver<PeerStream>,
}

impl EtcdPeers {
    /// Hands the link of `peer` its view (once per link: a new link of
    /// the same peer takes over the stream queue).
    pub fn watch(&self, peer: u64) -> EtcdLink {
        let mut peers = self.peers.lock();
        let slot = peers.entry(peer).or_insert_with(PeerSlot::new);
        let streams = match slot.attached.take() {
            Some(rx) => rx,
            None => {
                let (tx, rx) = mpsc::unbounded_channel();
                slot.attach = tx;
                rx
            }
        };
        EtcdLink {
            is_etcd: slot.is_etcd.subscribe(),
            streams,
        }
    }

    /// Records what `peer` speaks (it just dialed this member).
    pub fn mark(&self, peer: u64, etcd: bool) {
        let mut peers = self.peers.lock();
        let slot = peers.entry(peer).or_insert_with(PeerSlot::new);
        if *slot.is_etcd.borrow() != etcd {
            tracing::info!(
                peer = format!("{peer:x}"),
                "peer speaks {}",
                if etcd {
                    "etcd's protocol (rafthttp)"
                } else {
                    "this server's protocol"
                }
            );
            slot.is_etcd.send_replace(etcd);
        }
    }

    /// Hands a stream `peer` opened to its link; dropped (closed) when
    /// this member has no link to `peer`.
    fn attach(&self, peer: u64, s: PeerStream) {
        let peers = self.peers.lock();
        if let Some(slot) = peers.get(&peer).filter(|slot| slot.attached.is_none()) {
            let _ = slot.attach.send(s);
        }
    }

    /// True the first time a snapshot to `peer` is refused.
    pub fn first_snapshot_refusal(&self, peer: u64) -> bool {
        self.refused_snapshots.lock().insert(peer)
    }

    pub fn is_etcd(&self, peer: u64) -> bool {
        self.peers
            .lock()
            .get(&peer)
            .is_some_and(|s| *s.is_etcd.borrow())
    }
}

/// Encodes one message of an etcd `message` stream.
pub(crate) fn encode_stream_message(m: &Message, out: &mut Vec<u8>) -> std::io::Result<()> {
    let bytes = m
        .write_to_bytes()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(&bytes);
    Ok(())
}

/// `m` with the entries of a log-carrying message translated by `f`.
pub(crate) fn translate(
    mut m: Message,
    f: impl Fn(&Entry) -> Result<Entry, String>,
) -> Result<Message, String> {
    if matches!(
        m.get_msg_type(),
        MessageType::MsgAppend | MessageType::MsgPropose
    ) {
        let entries = m
            .get_entries()
            .iter()
            .map(f)
            .collect::<Result<Vec<_>, _>>()?;
        m.set_entries(entries.into());
    }
    Ok(m)
}

/// The messages of an etcd peer's link: written on the `message` stream it
/// opened, translated; returns `None` when the transport dropped the
/// queue, `Some` when the peer is no longer taken for an etcd member.
/// Messages queued while no stream is open are dropped (raft sends again).
pub(crate) async fn pump_etcd(
    to: u64,
    link: &mut EtcdLink,
    rx: &mut mpsc::Receiver<Message>,
    codec: &dyn EtcdEntryCodec,
    dropped: &(dyn Fn(u64) + Sync),
    sent: &(dyn Fn(u64, u64) + Sync),
) -> Option<()> {
    let mut stream: Option<PeerStream> = None;
    let mut buf = Vec::new();
    loop {
        if !*link.is_etcd.borrow() {
            return Some(());
        }
        tokio::select! {
            s = link.streams.recv() => stream = Some(s?),
            changed = link.is_etcd.changed() => changed.ok()?,
            m = rx.recv() => {
                let m = m?;
                let Some(w) = stream.as_mut() else {
                    dropped(1);
                    continue;
                };
                let mut batch = vec![m];
                while batch.len() < 256 {
                    match rx.try_recv() {
                        Ok(m) => batch.push(m),
                        Err(_) => break,
                    }
                }
                let n = batch.len() as u64;
                buf.clear();
                let mut ok = true;
                for m in batch {
                    match translate(m, |e| Ok(codec.entry_to_etcd(e))) {
                        Ok(m) => ok &= encode_stream_message(&m, &mut buf).is_ok(),
                        Err(_) => ok = false,
                    }
                }
                if ok && w.write_all(&buf).await.is_ok() && w.flush().await.is_ok() {
                    sent(n, buf.len() as u64);
                } else {
                    tracing::debug!(peer = format!("{to:x}"), "etcd stream broke");
                    dropped(n);
                    stream = None;
                }
            }
            _ = tokio::time::sleep(LINK_HEARTBEAT), if stream.is_some() => {
                buf.clear();
                let mut hb = Message::default();
                hb.set_msg_type(MessageType::MsgHeartbeat);
                encode_stream_message(&hb, &mut buf).expect("encodes");
                let w = stream.as_mut().expect("guarded");
                if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
                    stream = None;
                }
            }
        }
    }
}

/// What answering etcd's HTTP needs from the transport.
pub(crate) struct HttpCtx<'a> {
    pub id: u64,
    pub cluster_id: u64,
    pub max: usize,
    pub etcd: &'a EtcdPeers,
    pub codec: Option<&'a Arc<dyn EtcdEntryCodec>>,
    /// Whether `from` was removed from the cluster.
    pub removed: &'a (dyn Fn(u64) -> bool + Sync),
    /// Takes a received (translated) message.
    pub deliver: &'a (dyn Fn(Message) + Sync),
    /// The rest of etcd's peer API.
    pub handler: Option<EtcdHttpHandler>,
    /// Silence after which the msgappv2 stream gets a link heartbeat.
    pub heartbeat: Duration,
}

/// A parsed request head.
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn id_header(&self, name: &str) -> Option<u64> {
        self.header(name)
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    }
}

/// Reads a request head; `buf` holds bytes read ahead (kept for the
/// body). `Ok(None)` at a clean end between requests.
async fn read_head<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Head>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => {
                let head = Head {
                    method: req.method.unwrap_or_default().to_string(),
                    path: req.path.unwrap_or_default().to_string(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                };
                buf.drain(..n);
                return Ok(Some(head));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(std::io::Error::other(format!("bad HTTP request: {e}"))),
        }
        if buf.len() > MAX_HEAD {
            return Err(std::io::Error::other("HTTP request head too large"));
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// etcd's answer to a peer of another cluster.
async fn refuse_cluster<S: AsyncWrite + Unpin>(
    s: &mut S,
    ctx: &HttpCtx<'_>,
) -> std::io::Result<()> {
    respond(
        s,
        "412 Precondition Failed",
        ctx,
        "text/plain",
        "cluster ID mismatch\n",
    )
    .await
}

/// Writes a whole response, `status` with its reason phrase (keeping the
/// connection).
async fn respond<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: &str,
    ctx: &HttpCtx<'_>,
    content_type: &str,
    body: impl AsRef<[u8]>,
) -> std::io::Result<()> {
    let body = body.as_ref();
    let head = format!(
        "HTTP/1.1 {status}\r\nX-Etcd-Cluster-ID: {:x}\r\nX-Server-Version: {ETCD_SERVER_VERSION}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        ctx.cluster_id,
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    s.flush().await
}

/// Serves an etcd member's HTTP/1.1 connection; `buf` holds its first
/// bytes. A stream request hands the connection over and returns.
pub(crate) async fn serve_http(
    mut s: PeerStream,
    mut buf: Vec<u8>,
    ctx: &HttpCtx<'_>,
) -> std::io::Result<()> {
    loop {
        let Some(head) = read_head(&mut s, &mut buf).await? else {
            return Ok(());
        };
        let from = head.id_header("X-Server-From");
        // etcd's checkClusterCompatibilityFromHeader: raft traffic must
        // name this cluster; the rest of the peer API may omit it.
        let raft_cluster_ok = head.id_header("X-Etcd-Cluster-ID") == Some(ctx.cluster_id);
        let cluster_ok = head
            .id_header("X-Etcd-Cluster-ID")
            .is_none_or(|c| c == ctx.cluster_id);
        match (head.method.as_str(), head.path.as_str()) {
            ("GET", "/version") => {
                let body = format!(
                    "{{\"etcdserver\":\"{ETCD_SERVER_VERSION}\",\"etcdcluster\":\"{ETCD_CLUSTER_VERSION}\"}}"
                );
                respond(&mut s, "200 OK", ctx, "application/json", &body).await?;
            }
            ("GET", "/raft/probing") => {
                let body = format!("{{\"ok\":true,\"now\":\"{}\"}}\n", rfc3339_now());
                respond(&mut s, "200 OK", ctx, "application/json", &body).await?;
            }
            ("POST", "/raft") => {
                let Some(body) = read_body(&mut s, &mut buf, &head, ctx).await? else {
                    return Ok(());
                };
                if !raft_cluster_ok {
                    refuse_cluster(&mut s, ctx).await?;
                    continue;
                }
                if from.is_some_and(ctx.removed) {
                    respond(
                        &mut s,
                        "403 Forbidden",
                        ctx,
                        "text/plain",
                        "removed member\n",
                    )
                    .await?;
                    continue;
                }
                let Some(codec) = ctx.codec else {
                    respond(&mut s, "404 Not Found", ctx, "text/plain", NOT_FOUND).await?;
                    continue;
                };
                let status = match Message::parse_from_bytes(&body) {
                    Ok(m) if m.to == ctx.id => {
                        ctx.etcd.mark(m.from, true);
                        match translate(m, |e| codec.entry_from_etcd(e)) {
                            Ok(m) => {
                                (ctx.deliver)(m);
                                "204 No Content"
                            }
                            Err(e) => {
                                tracing::warn!("dropping an etcd member's raft message: {e}");
                                "400 Bad Request"
                            }
                        }
                    }
                    _ => "400 Bad Request",
                };
                respond(&mut s, status, ctx, "text/plain", "").await?;
            }
            ("GET", p) if p.starts_with("/raft/stream/") => {
                let rest = &p["/raft/stream/".len()..];
                let (kind, sender) = rest.split_once('/').unwrap_or((rest, ""));
                let sender = u64::from_str_radix(sender, 16).ok();
                let status = if ctx.codec.is_none() || !matches!(kind, "message" | "msgapp") {
                    Some("404 Not Found")
                } else if !raft_cluster_ok || head.id_header("X-Raft-To") != Some(ctx.id) {
                    Some("412 Precondition Failed")
                } else if sender.is_none() {
                    Some("400 Bad Request")
                } else if sender.is_some_and(ctx.removed) {
                    Some("410 Gone")
                } else {
                    None
                };
                if let Some(status) = status {
                    respond(&mut s, status, ctx, "text/plain", "").await?;
                    continue;
                }
                let sender = sender.expect("checked");
                // The body is the stream: it ends with the connection.
                let head = format!(
                    "HTTP/1.1 200 OK\r\nX-Server-Version: {ETCD_SERVER_VERSION}\r\n\
                     Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
                );
                s.write_all(head.as_bytes()).await?;
                s.flush().await?;
                ctx.etcd.mark(sender, true);
                if kind == "message" {
                    ctx.etcd.attach(sender, s);
                    return Ok(());
                }
                // msgappv2: only its link heartbeat, until etcd hangs up.
                loop {
                    tokio::time::sleep(ctx.heartbeat).await;
                    s.write_all(&[0]).await?;
                    s.flush().await?;
                }
            }
            ("POST", "/raft/snapshot") => {
                let Some(codec) = ctx.codec else {
                    respond(&mut s, "404 Not Found", ctx, "text/plain", NOT_FOUND).await?;
                    return Ok(());
                };
                if !raft_cluster_ok {
                    refuse_cluster(&mut s, ctx).await?;
                    return Ok(());
                }
                let (status, text) =
                    match receive_snapshot(&mut s, &mut buf, &head, ctx, codec).await? {
                        Ok(()) => ("204 No Content", String::new()),
                        Err(why) => {
                            tracing::warn!("refused an etcd member's snapshot: {why}");
                            ("500 Internal Server Error", why + "\n")
                        }
                    };
                respond(&mut s, status, ctx, "text/plain", &text).await?;
                return Ok(());
            }
            (method, path) if ctx.handler.is_some() => {
                let body = if method == "POST" {
                    match read_body(&mut s, &mut buf, &head, ctx).await? {
                        Some(b) => b,
                        None => return Ok(()),
                    }
                } else {
                    Vec::new()
                };
                if !cluster_ok {
                    refuse_cluster(&mut s, ctx).await?;
                    continue;
                }
                let handler = ctx.handler.clone().expect("guarded");
                let r = handler(EtcdHttpRequest {
                    method: method.to_string(),
                    path: path.to_string(),
                    body,
                })
                .await;
                let status = format!("{} {}", r.status, reason(r.status));
                respond(&mut s, &status, ctx, r.content_type, &r.body).await?;
            }
            _ => {
                // No application handler (the transport's tests): nothing
                // else of etcd's peer API is served.
                tracing::debug!(
                    method = head.method,
                    path = head.path,
                    "unsupported etcd peer request"
                );
                respond(&mut s, "404 Not Found", ctx, "text/plain", NOT_FOUND).await?;
                return Ok(());
            }
        }
    }
}

/// A request body being read: `Content-Length` bytes, or chunks.
enum Body {
    Length(u64),
    /// Bytes left in the current chunk; None once the last chunk was read.
    Chunked(Option<u64>),
}

impl Body {
    fn of(head: &Head) -> Option<Body> {
        if head
            .header("Transfer-Encoding")
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"))
        {
            return Some(Body::Chunked(Some(0)));
        }
        head.header("Content-Length")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Body::Length)
    }

    /// The next bytes of the body (None at its end); `buf` holds what was
    /// read ahead of the socket.
    async fn next<S: AsyncRead + Unpin>(
        &mut self,
        s: &mut S,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let left = match self {
            Body::Length(0) | Body::Chunked(None) => return Ok(None),
            Body::Length(n) => n,
            Body::Chunked(Some(0)) => {
                let line = read_line(s, buf).await?;
                let size = u64::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| std::io::Error::other("bad chunk size"))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    while !read_line(s, buf).await?.is_empty() {}
                    *self = Body::Chunked(None);
                    return Ok(None);
                }
                *self = Body::Chunked(Some(size));
                let Body::Chunked(Some(n)) = self else {
                    unreachable!()
                };
                n
            }
            Body::Chunked(Some(n)) => n,
        };
        if buf.is_empty() && !fill(s, buf).await? {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let take = (*left).min(buf.len() as u64) as usize;
        *left -= take as u64;
        let out: Vec<u8> = buf.drain(..take).collect();
        if matches!(self, Body::Chunked(Some(0))) && !read_line(s, buf).await?.is_empty() {
            return Err(std::io::Error::other("chunk not followed by CRLF"));
        }
        Ok(Some(out))
    }
}

/// Reads more bytes into `buf`; false at the end of the stream.
async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let mut chunk = [0u8; 64 << 10];
    let n = s.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n > 0)
}

/// One CRLF-terminated line (at most 4 KiB), without its CRLF.
async fn read_line<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> std::io::Result<String> {
    loop {
        if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..p]).into_owned();
            buf.drain(..p + 2);
            return Ok(line);
        }
        if buf.len() > 4096 {
            return Err(std::io::Error::other("line too long"));
        }
        if !fill(s, buf).await? {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Receives an etcd leader's snapshot (see the module doc); the outer
/// error is the connection's, the inner one what the answer says.
async fn receive_snapshot<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    head: &Head,
    ctx: &HttpCtx<'_>,
    codec: &Arc<dyn EtcdEntryCodec>,
) -> std::io::Result<Result<(), String>> {
    let Some(mut body) = Body::of(head) else {
        return Ok(Err("no length".into()));
    };
    // The message: its length, then its bytes.
    let mut prefix = Vec::new();
    let mut rest = Vec::new();
    loop {
        if prefix.len() >= 8 {
            let len = msg_len(&prefix);
            if len > ctx.max {
                return Ok(Err(format!("a snapshot message of {len} bytes")));
            }
            if prefix.len() >= 8 + len {
                break;
            }
        }
        let Some(bytes) = body.next(s, buf).await? else {
            return Ok(Err("the body ends inside the message".into()));
        };
        prefix.extend_from_slice(&bytes);
    }
    let n = 8 + msg_len(&prefix);
    rest.extend_from_slice(&prefix[n..]);
    let mut m = match Message::parse_from_bytes(&prefix[8..n]) {
        Ok(m) if m.get_msg_type() == MessageType::MsgSnapshot && m.to == ctx.id => m,
        Ok(_) => return Ok(Err("not a snapshot message for this member".into())),
        Err(e) => return Ok(Err(format!("undecodable snapshot message: {e}"))),
    };
    let (index, term) = {
        let md = m.get_snapshot().get_metadata();
        (md.index, md.term)
    };
    let path = codec
        .scratch_dir()
        .join(format!("etcd-{:x}-{index:016x}.snap.db.tmp", m.from));
    let mut file = tokio::fs::File::create(&path).await?;
    let written = async {
        file.write_all(&rest).await?;
        let mut total = rest.len() as u64;
        while let Some(bytes) = body.next(s, buf).await? {
            file.write_all(&bytes).await?;
            total += bytes.len() as u64;
        }
        file.flush().await?;
        std::io::Result::Ok(total)
    }
    .await;
    drop(file);
    let total = match written {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
    };
    tracing::info!(
        from = format!("{:x}", m.from),
        index,
        term,
        bytes = total,
        "received an etcd member's snapshot: importing it"
    );
    let imported = {
        let (codec, path) = (codec.clone(), path.clone());
        tokio::task::spawn_blocking(move || codec.import_etcd_snapshot(index, term, &path))
            .await
            .unwrap_or_else(|e| Err(format!("the import panicked: {e}")))
    };
    let _ = std::fs::remove_file(&path);
    match imported {
        Ok(token) => {
            ctx.etcd.mark(m.from, true);
            m.mut_snapshot().data = token.into();
            (ctx.deliver)(m);
            Ok(Ok(()))
        }
        Err(why) => Ok(Err(why)),
    }
}

/// The message length at the front of a merged snapshot.
fn msg_len(prefix: &[u8]) -> usize {
    let b: [u8; 8] = prefix[..8].try_into().expect("8 bytes");
    usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX)
}

/// Reads a request's body (`Content-Length`; at most the frame limit);
/// `None` after answering a request without a usable length.
async fn read_body<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    head: &Head,
    ctx: &HttpCtx<'_>,
) -> std::io::Result<Option<Vec<u8>>> {
    let len = head
        .header("Content-Length")
        .and_then(|v| v.trim().parse::<usize>().ok());
    let Some(len) = len.filter(|&n| n <= ctx.max) else {
        respond(s, "411 Length Required", ctx, "text/plain", "bad length\n").await?;
        return Ok(None);
    };
    while buf.len() < len {
        let mut chunk = vec![0u8; (len - buf.len()).min(64 << 10)];
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(buf.drain(..len).collect()))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        412 => "Precondition Failed",
        _ => "Error",
    }
}

/// Asks an etcd member's peer API (at `addr`, in TLS with `tls`) one
/// request, as etcd's own clients of it do (`leasehttp`, the promote
/// forwarding); returns the status and the body. Blocking, each step
/// bounded by `timeout`.
pub fn request(
    addr: &str,
    tls: Option<&crate::PeerTlsHandle>,
    ids: (u64, u64),
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> crate::Result<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let (cluster_id, from) = ids;
    let fail = |why: String| crate::Error::Peer(format!("{method} {path} to {addr}: {why}"));
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .next()
        .ok_or_else(|| fail("no address".into()))?;
    let tcp =
        std::net::TcpStream::connect_timeout(&sock, timeout).map_err(|e| fail(e.to_string()))?;
    tcp.set_read_timeout(Some(timeout))
        .and_then(|()| tcp.set_write_timeout(Some(timeout)))
        .map_err(|e| fail(e.to_string()))?;
    let mut s: Box<dyn crate::peer_query::ReadWrite> = match tls {
        Some(tls) => Box::new(crate::peer_tls::connect_blocking(tls, addr, tcp).map_err(fail)?),
        None => Box::new(tcp),
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/protobuf\r\n\
         Content-Length: {}\r\nX-Etcd-Cluster-ID: {cluster_id:x}\r\nX-Server-From: {from:x}\r\n\
         X-Server-Version: {ETCD_SERVER_VERSION}\r\nX-Min-Cluster-Version: 3.0.0\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(body))
        .and_then(|()| s.flush())
        .map_err(|e| fail(e.to_string()))?;
    // Connection: close: the answer ends with the connection.
    let mut raw = Vec::new();
    s.take(MAX_HEAD as u64 + (16 << 20))
        .read_to_end(&mut raw)
        .or_else(|e| if raw.is_empty() { Err(e) } else { Ok(0) })
        .map_err(|e| fail(e.to_string()))?;
    parse_response(&raw).map_err(fail)
}

/// A whole HTTP/1.1 response: status and body (`Content-Length`,
/// chunked, or up to the end).
pub(crate) fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("truncated answer".into()),
        Err(e) => return Err(format!("bad answer: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let rest = &raw[n..];
    let body = if header("Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut at = rest;
        loop {
            let line_end = at
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("truncated chunk")?;
            let size = std::str::from_utf8(&at[..line_end])
                .ok()
                .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
                .ok_or("bad chunk size")?;
            at = &at[line_end + 2..];
            if size == 0 {
                break;
            }
            if at.len() < size {
                return Err("truncated chunk".into());
            }
            body.extend_from_slice(&at[..size]);
            at = at.get(size + 2..).ok_or("truncated chunk")?;
        }
        body
    } else if let Some(len) = header("Content-Length").and_then(|v| v.parse::<usize>().ok()) {
        rest.get(..len).ok_or("truncated body")?.to_vec()
    } else {
        rest.to_vec()
    };
    Ok((status, body))
}

/// Now in RFC 3339 with nanoseconds, as Go's `time.Time` marshals.
fn rfc3339_now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond()
    )
}

/// Whether a connection's first 4 bytes start an HTTP request.
pub(crate) fn is_http(first: &[u8]) -> bool {
    first == b"GET " || first == b"POST"
}

#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fuzzing {
    //! Fuzz entry point: untrusted bytes on the peer listener, as etcd's
    //! HTTP (requests of an etcd member), and as an etcd member's answer.

    use super::*;

    struct Same;
    impl EtcdEntryCodec for Same {
        fn entry_to_etcd(&self, e: &Entry) -> Entry {
            e.clone()
        }
        fn entry_from_etcd(&self, e: &Entry) -> Result<Entry, String> {
            Ok(e.clone())
        }
        fn scratch_dir(&self) -> std::path::PathBuf {
            std::env::temp_dir()
        }
        fn import_etcd_snapshot(
            &self,
            _index: u64,
            _term: u64,
            db: &std::path::Path,
        ) -> Result<Vec<u8>, String> {
            let len = std::fs::metadata(db).map_err(|e| e.to_string())?.len();
            Ok(len.to_be_bytes().to_vec())
        }
    }

    /// Serves `data` as the bytes an etcd member sent on a connection
    /// (then hung up); returns how many raft messages were delivered.
    pub fn serve(data: &[u8]) -> usize {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let delivered = std::sync::atomic::AtomicUsize::new(0);
            let peers = EtcdPeers::default();
            let codec: Arc<dyn EtcdEntryCodec> = Arc::new(Same);
            let deliver = |_m: Message| {
                delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            };
            let removed = |id: u64| id == 13;
            let ctx = HttpCtx {
                id: 2,
                cluster_id: 7,
                max: 1 << 20,
                etcd: &peers,
                codec: Some(&codec),
                removed: &removed,
                deliver: &deliver,
                heartbeat: Duration::ZERO,
                handler: Some(Arc::new(|r: EtcdHttpRequest| {
                    Box::pin(async move {
                        EtcdHttpResponse {
                            status: 200,
                            content_type: "application/protobuf",
                            body: r.body,
                        }
                    })
                })),
            };
            let first = data.get(..4).unwrap_or(data).to_vec();
            let rest = data.get(4..).unwrap_or_default().to_vec();
            // The peer writes everything, reads a bounded amount of the
            // answers (a stream would go on forever) and hangs up.
            let writer = async move {
                let _ = client.write_all(&rest).await;
                let _ = client.shutdown().await;
                let mut sink = Vec::new();
                let _ = (&mut client).take(4096).read_to_end(&mut sink).await;
            };
            let server = serve_http(Box::new(server), first, &ctx);
            let _ = tokio::join!(writer, server);
            delivered.load(std::sync::atomic::Ordering::Relaxed)
        })
    }

    /// Parses `data` as an etcd member's answer to [`request`].
    pub fn response(data: &[u8]) -> Option<(u16, usize)> {
        parse_response(data).ok().map(|(s, b)| (s, b.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post_raft(m: &Message) -> Vec<u8> {
        let body = m.write_to_bytes().unwrap();
        let mut req = format!(
            "POST /raft HTTP/1.1\r\nHost: x\r\nX-Etcd-Cluster-ID: 7\r\nX-Server-From: 1\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(&body);
        req
    }

    /// etcd's pipeline requests are delivered, on one connection; a wrong
    /// cluster id or recipient is not.
    #[test]
    fn pipeline_requests_are_delivered() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.from = 1;
        m.to = 2;
        m.mut_entries().push(Entry::default());
        let mut data = post_raft(&m);
        data.extend(post_raft(&m));
        assert_eq!(fuzzing::serve(&data), 2);
        let wrong_cluster = String::from_utf8(post_raft(&m))
            .unwrap_or_default()
            .replace("X-Etcd-Cluster-ID: 7", "X-Etcd-Cluster-ID: 8");
        assert_eq!(fuzzing::serve(wrong_cluster.as_bytes()), 0);
        m.to = 3;
        assert_eq!(fuzzing::serve(&post_raft(&m)), 0);
    }

    #[test]
    fn responses_parse_with_length_chunks_or_close() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcdef";
        assert_eq!(parse_response(r).unwrap(), (200, b"abc".to_vec()));
        let r = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(r).unwrap(), (404, b"abcde".to_vec()));
        let r = b"HTTP/1.1 200 OK\r\n\r\nrest";
        assert_eq!(parse_response(r).unwrap(), (200, b"rest".to_vec()));
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    /// The fuzz entry points over mutations of valid requests and noise.
    #[test]
    fn mutated_requests_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = 1;
        m.to = 2;
        let mut valid = post_raft(&m);
        valid.extend_from_slice(
            b"GET /raft/stream/msgapp/1 HTTP/1.1\r\nX-Raft-To: 2\r\nX-Etcd-Cluster-ID: 7\r\n\r\n",
        );
        let others: &[&[u8]] = &[
            b"GET /version HTTP/1.1\r\n\r\n",
            b"POST /leases HTTP/1.1\r\nContent-Length: 2\r\n\r\n\x08\x01",
            b"GET /raft/stream/message/1 HTTP/1.1\r\nX-Raft-To: 2\r\n\r\n",
            b"POST /raft/snapshot HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        for round in 0..1500 {
            let mut input = if round % 5 == 0 {
                others[round / 5 % others.len()].to_vec()
            } else {
                valid.clone()
            };
            for _ in 0..rng.gen_range(0..6) {
                let i = rng.gen_range(0..input.len());
                input[i] = rng.gen();
            }
            input.truncate(rng.gen_range(0..=input.len()));
            fuzzing::serve(&input);
            fuzzing::response(&input);
        }
    }
}
