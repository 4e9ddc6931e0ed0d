//! The TCP peer transport: raft messages between members over
//! length-delimited frames, one outgoing stream per peer.
//!
//! Each member dials every peer it sends to and keeps that connection for
//! its own messages (streams are one-way, like etcd's peer streams); it
//! accepts the peers' connections on its listener for their messages.
//! Every peer has its own bounded queue and writer task, so a slow or dead
//! peer fills only its own queue: `send` never blocks, and a message that
//! finds its queue full is dropped and counted (raft retransmits).
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
//! is not the listener's member id, 3 unsupported version. A rejected dialer
//! logs why (naming both cluster ids) and retries later; the listener closes
//! the connection. After acceptance the dialer sends frames:
//!
//! ```text
//! len: u32 BE | a raft `Message` in protobuf encoding (len bytes)
//! ```
//!
//! A frame longer than `max_frame_bytes` or that does not decode closes
//! the connection. The streams are generic over `AsyncRead + AsyncWrite`,
//! so TLS can wrap the TCP stream without changing the framing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::peer_query::{serve_query, QueryHandler, QUERY_MAGIC};
use crate::transport::Transport;
use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"ETRP";
const VERSION: u8 = 1;
const HANDSHAKE_LEN: usize = 4 + 1 + 8 + 8 + 8;

/// Handshake answers.
const ACCEPTED: u8 = 0;
const CLUSTER_MISMATCH: u8 = 1;
const WRONG_MEMBER: u8 = 2;
const BAD_VERSION: u8 = 3;

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
        }
    }
}

/// Called with every message received from a peer.
pub type Deliver = Arc<dyn Fn(Message) + Send + Sync>;

/// Counters of one peer's outgoing stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Messages written to the peer's connection.
    pub sent: u64,
    /// Messages dropped: queue full, or lost with a broken connection.
    pub dropped: u64,
    /// Handshakes the peer rejected.
    pub rejected: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    dropped: AtomicU64,
    rejected: AtomicU64,
}

struct PeerQueue {
    tx: mpsc::Sender<Message>,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

/// Raft messages over TCP (see the module doc).
pub struct TcpTransport {
    cfg: TcpTransportConfig,
    local_addr: SocketAddr,
    peers: Mutex<HashMap<u64, PeerQueue>>,
    rt: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    queries: QuerySlot,
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
        let (id, cluster_id, max) = (cfg.id, cfg.cluster_id, cfg.max_frame_bytes);
        let queries: QuerySlot = Arc::default();
        handle.spawn(accept_loop(
            listener,
            id,
            cluster_id,
            max,
            deliver,
            queries.clone(),
        ));
        let t = Arc::new(TcpTransport {
            queries,
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

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts (or restarts, with a new address) the stream to `peer`.
    pub fn add_peer(&self, peer: u64, addr: String) {
        let (tx, rx) = mpsc::channel(self.cfg.queue_len.max(1));
        let counters = Arc::new(Counters::default());
        let link = Link {
            from: self.cfg.id,
            to: peer,
            cluster_id: self.cfg.cluster_id,
            addr,
            max_frame: self.cfg.max_frame_bytes,
            retry: self.cfg.retry_interval,
            counters: counters.clone(),
        };
        let task = self.handle.spawn(link.run(rx));
        if let Some(old) = self
            .peers
            .lock()
            .insert(peer, PeerQueue { tx, counters, task })
        {
            old.task.abort();
        }
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
        })
    }

    /// Closes the listener and every stream. Idempotent.
    pub fn shutdown(&self) {
        self.peers.lock().clear();
        if let Some(rt) = self.rt.lock().take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Transport for TcpTransport {
    fn send(&self, msgs: Vec<Message>) {
        let peers = self.peers.lock();
        for m in msgs {
            let Some(q) = peers.get(&m.to) else {
                tracing::debug!(to = m.to, "dropping a message to an unknown peer");
                continue;
            };
            if q.tx.try_send(m).is_err() {
                q.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
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
    max_frame: usize,
    retry: Duration,
    counters: Arc<Counters>,
}

impl Link {
    async fn run(self, mut rx: mpsc::Receiver<Message>) {
        let mut logged_down = false;
        loop {
            match self.connect().await {
                Ok(stream) => {
                    logged_down = false;
                    if self.pump(stream, &mut rx).await.is_none() {
                        return; // the transport dropped the queue
                    }
                }
                Err(why) => {
                    if !logged_down {
                        tracing::warn!(peer = format!("{:x}", self.to), addr = %self.addr, "cannot reach peer: {why}");
                        logged_down = true;
                    }
                }
            }
            tokio::time::sleep(self.retry).await;
        }
    }

    async fn connect(&self) -> std::result::Result<TcpStream, String> {
        let mut s = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        let mut hs = Vec::with_capacity(HANDSHAKE_LEN);
        hs.extend_from_slice(MAGIC);
        hs.push(VERSION);
        hs.extend_from_slice(&self.cluster_id.to_be_bytes());
        hs.extend_from_slice(&self.from.to_be_bytes());
        hs.extend_from_slice(&self.to.to_be_bytes());
        s.write_all(&hs).await.map_err(|e| e.to_string())?;
        let answer = s.read_u8().await.map_err(|e| e.to_string())?;
        match answer {
            ACCEPTED => Ok(s),
            CLUSTER_MISMATCH => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                Err(format!(
                    "the member at {} belongs to another cluster (ours is {:016x})",
                    self.addr, self.cluster_id
                ))
            }
            WRONG_MEMBER => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                Err(format!(
                    "the member at {} is not member {:016x}",
                    self.addr, self.to
                ))
            }
            other => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                Err(format!("handshake refused with code {other}"))
            }
        }
    }

    /// Writes queued messages until the connection breaks (`Some`) or the
    /// queue is closed (`None`).
    async fn pump<S: AsyncWrite + Unpin>(
        &self,
        stream: S,
        rx: &mut mpsc::Receiver<Message>,
    ) -> Option<()> {
        let mut w = BufWriter::new(stream);
        loop {
            let m = rx.recv().await?;
            let mut batch = vec![m];
            while let Ok(m) = rx.try_recv() {
                batch.push(m);
                if batch.len() >= 256 {
                    break;
                }
            }
            let n = batch.len() as u64;
            let mut ok = true;
            for m in &batch {
                if let Err(e) = write_frame(&mut w, m, self.max_frame).await {
                    tracing::debug!(peer = format!("{:x}", self.to), "peer stream broke: {e}");
                    ok = false;
                    break;
                }
            }
            if ok && w.flush().await.is_ok() {
                self.counters.sent.fetch_add(n, Ordering::Relaxed);
            } else {
                self.counters.dropped.fetch_add(n, Ordering::Relaxed);
                return Some(());
            }
        }
    }
}

/// Writes one frame.
async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    m: &Message,
    max: usize,
) -> std::io::Result<()> {
    let bytes = m
        .write_to_bytes()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    if bytes.len() > max {
        return Err(std::io::Error::other(format!(
            "message of {} bytes exceeds the frame limit {max}",
            bytes.len()
        )));
    }
    w.write_u32(bytes.len() as u32).await?;
    w.write_all(&bytes).await
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
    if len > max {
        return Err(std::io::Error::other(format!(
            "frame of {len} bytes exceeds the limit {max}"
        )));
    }
    let mut buf = vec![0; len];
    r.read_exact(&mut buf).await?;
    Message::parse_from_bytes(&buf)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("undecodable raft message: {e}")))
}

async fn accept_loop(
    listener: TcpListener,
    id: u64,
    cluster_id: u64,
    max: usize,
    deliver: Deliver,
    queries: QuerySlot,
) {
    loop {
        match listener.accept().await {
            Ok((s, addr)) => {
                let _ = s.set_nodelay(true);
                let deliver = deliver.clone();
                let queries = queries.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(s, id, cluster_id, max, deliver, queries).await {
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

/// Checks a dialer's handshake and delivers its messages.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    id: u64,
    cluster_id: u64,
    max: usize,
    deliver: Deliver,
    queries: QuerySlot,
) -> std::io::Result<()> {
    let mut hs = [0u8; HANDSHAKE_LEN];
    s.read_exact(&mut hs[..4]).await?;
    if &hs[..4] == QUERY_MAGIC {
        let handler = queries.read().clone();
        return serve_query(s, cluster_id, handler).await;
    }
    s.read_exact(&mut hs[4..]).await?;
    let field = |i: usize| u64::from_be_bytes(hs[i..i + 8].try_into().expect("8 bytes"));
    let (their_cluster, from, to) = (field(5), field(13), field(21));
    let answer = if &hs[..4] != MAGIC || hs[4] != VERSION {
        BAD_VERSION
    } else if their_cluster != cluster_id {
        tracing::warn!(
            from = format!("{from:x}"),
            "rejecting a peer of cluster {their_cluster:016x}: this member belongs to cluster {cluster_id:016x}"
        );
        CLUSTER_MISMATCH
    } else if to != id {
        WRONG_MEMBER
    } else {
        ACCEPTED
    };
    s.write_u8(answer).await?;
    if answer != ACCEPTED {
        return Ok(());
    }
    while let Some(m) = read_frame(&mut s, max).await? {
        if m.to != id || m.from != from {
            return Err(std::io::Error::other(format!(
                "message {}->{} on the stream {from}->{id}",
                m.from, m.to
            )));
        }
        deliver(m);
    }
    Ok(())
}

#[doc(hidden)]
pub mod fuzzing {
    //! Fuzz entry point: decode peer frames from untrusted bytes.

    /// Decodes `data` as a sequence of frames until the first error.
    pub fn decode_frames(data: &[u8]) -> usize {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut r = data;
            let mut n = 0;
            while let Ok(Some(_)) = super::read_frame(&mut r, 1 << 20).await {
                n += 1;
            }
            n
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
}
