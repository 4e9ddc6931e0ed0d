//! The connected half of a peer's outgoing message stream: the raft thread
//! writes frames to the socket itself.
//!
//! Before, every message crossed three thread wake-ups on its way from one
//! raft thread to another (raft thread -> the sender's peer-net thread ->
//! socket -> the receiver's peer-net thread -> raft thread), 80-95 us per
//! one-way message on this project's 2-vCPU VMs (benches/RESULTS.md). Now
//! [`TcpTransport::send`](crate::TcpTransport) appends each message's frame
//! to its peer's [`Outbox`] and writes it with a non-blocking write on the
//! calling (raft) thread; the sender's runtime is woken only when the
//! socket does not take everything (its send buffer is full) or the
//! connection broke.
//!
//! Who writes what, for one peer:
//! - While the link is connecting (or the peer runs etcd, or the
//!   connection broke and the link waits to dial again), the outbox has no
//!   [`Wire`] and messages go to the link's queue, as they always did.
//! - Once the link's task has dialed and finished the handshake, it takes
//!   the outbox lock, moves what the queue holds into the outbox (so order
//!   is kept: a sender decides between queue and outbox under the same
//!   lock), installs the wire and writes.
//! - From then on senders append frames and write under the lock. What the
//!   socket leaves over stays in [`OutboxState::buf`] (TLS: in rustls'
//!   buffer) and the task is kicked: it waits until the socket is writable
//!   and writes the rest. Later senders append behind it (a non-blocking
//!   write finds the socket still not ready and returns at once).
//! - A write error drops the wire and what it had not written (counted as
//!   dropped, as a broken stream always did: raft retransmits) and kicks
//!   the task, which reports the peer unreachable and dials again.
//!
//! Bytes are the frames of the module doc of `tcp_transport`; with TLS
//! they are handed to the connection's rustls session (its buffer limit
//! lifted, so it takes every frame) and its records written to the socket
//! the same way.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::Message;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// What a peer's `PeerStats` are read from (shared by the transport, the
/// peer's link task and its outbox).
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) snapshots_sent: AtomicU64,
    pub(crate) snapshots_failed: AtomicU64,
    pub(crate) sent_bytes: AtomicU64,
}

/// A connected, handshaken message stream, written without blocking.
pub(crate) struct Wire {
    /// Shared with the link's task, which waits on its write readiness
    /// without holding the outbox lock.
    tcp: Arc<TcpStream>,
    /// The TLS session (after its handshake); None: plain TCP.
    tls: Option<rustls::ClientConnection>,
}

impl Wire {
    /// A plain TCP stream.
    pub(crate) fn plain(tcp: TcpStream) -> Wire {
        Wire {
            tcp: Arc::new(tcp),
            tls: None,
        }
    }

    /// A TLS stream whose handshake is done.
    pub(crate) fn tls(tcp: TcpStream, mut conn: rustls::ClientConnection) -> Wire {
        // Every frame is taken into the session's buffer (the outbox is
        // bounded by frames, not rustls).
        conn.set_buffer_limit(None);
        Wire {
            tcp: Arc::new(tcp),
            tls: Some(conn),
        }
    }
}

/// `std::io::Write` over a tokio socket's non-blocking writes (any thread).
struct TryWrite<'a>(&'a TcpStream);

impl Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.0.try_write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What [`Outbox::push`] did with a message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Appended to the outbox: [`Outbox::flush`] writes it.
    Appended,
    /// Not connected: handed to the caller's queue.
    Queued,
    /// Dropped (the outbox is full, or the message exceeds the frame
    /// limit) and counted.
    Dropped,
}

/// One peer's outgoing frames and, once connected, its wire (module doc).
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    /// Wakes the link's task: bytes are left over, or the wire broke.
    kick: Notify,
    counters: Arc<Counters>,
    /// Frames the outbox holds at most (the transport's `queue_len`).
    limit: u64,
    /// Largest frame body sent (`max_frame_bytes`).
    max_frame: usize,
    /// The peer's id, for logs.
    to: u64,
}

/// What the outbox lock guards.
#[derive(Default)]
pub(crate) struct OutboxState {
    wire: Option<Wire>,
    /// Frames not yet handed to the socket (plain TCP) or to rustls (TLS),
    /// from `head` on.
    buf: Vec<u8>,
    /// Bytes of `buf` already handed over (reset when all are written).
    head: usize,
    /// Frames appended since the outbox was last empty (fully written).
    frames: u64,
    /// Their bytes, length prefixes included.
    bytes: u64,
}

impl OutboxState {
    /// Capacity kept by an empty buffer: one burst of large appends (a
    /// follower catching up) must not pin its size for good.
    const KEEP_CAPACITY: usize = 1 << 20;

    /// Empties `buf` (all of it written).
    fn clear_buf(&mut self) {
        self.head = 0;
        if self.buf.capacity() > Self::KEEP_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
    }

    /// Nothing is waiting to be written.
    fn idle(&self) -> bool {
        self.head == self.buf.len()
            && self
                .wire
                .as_ref()
                .and_then(|w| w.tls.as_ref())
                .is_none_or(|c| !c.wants_write())
    }

    /// Writes as much as the socket takes: `Ok(true)` when everything is
    /// written, `Ok(false)` when the socket would block.
    fn write_out(&mut self) -> io::Result<bool> {
        let Some(w) = self.wire.as_mut() else {
            return Ok(false);
        };
        match &mut w.tls {
            None => {
                while self.head < self.buf.len() {
                    match w.tcp.try_write(&self.buf[self.head..]) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(n) => self.head += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(true)
            }
            Some(conn) => {
                // Every frame goes to rustls at once (no buffer limit):
                // `head` then marks them taken until `buf` is cleared.
                if self.head < self.buf.len() {
                    conn.writer().write_all(&self.buf[self.head..])?;
                    self.head = self.buf.len();
                }
                while conn.wants_write() {
                    match conn.write_tls(&mut TryWrite(&w.tcp)) {
                        Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(true)
            }
        }
        .inspect(|&all| {
            if all {
                self.clear_buf();
            }
        })
    }
}

impl Outbox {
    pub(crate) fn new(to: u64, counters: Arc<Counters>, limit: usize, max_frame: usize) -> Outbox {
        Outbox {
            state: Mutex::new(OutboxState::default()),
            kick: Notify::new(),
            counters,
            limit: limit.max(1) as u64,
            max_frame,
            to,
        }
    }

    /// Appends `m`'s frame when the link is connected; `queue` is called
    /// under the outbox lock otherwise (module doc: ordering).
    pub(crate) fn push(&self, m: Message, queue: impl FnOnce(Message)) -> Pushed {
        let mut s = self.state.lock();
        if s.wire.is_none() {
            queue(m);
            return Pushed::Queued;
        }
        if self.append(&mut s, &m) {
            Pushed::Appended
        } else {
            Pushed::Dropped
        }
    }

    /// Encodes `m` into `s.buf`; false (counted dropped) when the outbox
    /// is full or the message too large.
    fn append(&self, s: &mut OutboxState, m: &Message) -> bool {
        let encoded = if s.frames >= self.limit {
            None
        } else {
            match encode_frame(m, self.max_frame, &mut s.buf) {
                Ok(len) => Some(len),
                Err(e) => {
                    tracing::warn!(peer = format!("{:x}", self.to), "dropping a message: {e}");
                    None
                }
            }
        };
        let Some(len) = encoded else {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        s.frames += 1;
        s.bytes += 4 + len as u64;
        true
    }

    /// Writes what the outbox holds (on the caller's thread, without
    /// blocking); kicks the link's task for what the socket leaves over or
    /// when the wire broke.
    pub(crate) fn flush(&self) {
        let mut s = self.state.lock();
        if self.write_locked(&mut s) != Progress::Done {
            self.kick.notify_one();
        }
    }

    /// Writes under the lock and accounts for the outcome.
    fn write_locked(&self, s: &mut OutboxState) -> Progress {
        if s.wire.is_none() {
            return Progress::Broken;
        }
        match s.write_out() {
            Ok(true) => {
                self.counters.sent.fetch_add(s.frames, Ordering::Relaxed);
                self.counters
                    .sent_bytes
                    .fetch_add(s.bytes, Ordering::Relaxed);
                s.frames = 0;
                s.bytes = 0;
                Progress::Done
            }
            Ok(false) => Progress::Blocked,
            Err(e) => {
                tracing::debug!(peer = format!("{:x}", self.to), "peer stream broke: {e}");
                self.break_wire(s);
                Progress::Broken
            }
        }
    }

    /// Drops the wire and every frame it had not written (counted).
    fn break_wire(&self, s: &mut OutboxState) {
        s.wire = None;
        s.clear_buf();
        self.counters.dropped.fetch_add(s.frames, Ordering::Relaxed);
        s.frames = 0;
        s.bytes = 0;
    }

    /// The link's task, once `wire` is connected: installs it (moving what
    /// `queued` yields first, under the lock), then writes what senders
    /// leave over until the wire breaks (`Some`) or the transport drops
    /// the queue (`None`).
    pub(crate) async fn run(
        &self,
        wire: Wire,
        rx: &mut tokio::sync::mpsc::Receiver<Message>,
    ) -> Option<()> {
        {
            let mut s = self.state.lock();
            debug_assert!(s.wire.is_none() && s.buf.is_empty());
            while let Ok(m) = rx.try_recv() {
                self.append(&mut s, &m);
            }
            s.wire = Some(wire);
            if self.write_locked(&mut s) == Progress::Broken {
                return Some(());
            }
        }
        loop {
            // Wait until kicked (unless something is left already: a
            // kick may have been consumed by an earlier pass).
            let tcp = {
                let s = self.state.lock();
                match &s.wire {
                    None => return Some(()),
                    Some(w) if !s.idle() => Some(w.tcp.clone()),
                    Some(_) => None,
                }
            };
            let Some(tcp) = tcp else {
                tokio::select! {
                    _ = self.kick.notified() => {}
                    m = rx.recv() => {
                        // Senders queue only while no wire is installed:
                        // this one was sent after a sender's write found
                        // the wire broken, and goes with the frames the
                        // wire lost (raft retransmits).
                        m?;
                        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            };
            if let Err(e) = tcp.writable().await {
                tracing::debug!(peer = format!("{:x}", self.to), "peer stream broke: {e}");
                let mut s = self.state.lock();
                self.break_wire(&mut s);
                return Some(());
            }
            let mut s = self.state.lock();
            if self.write_locked(&mut s) == Progress::Broken {
                return Some(());
            }
        }
    }

    /// Drops the wire (the link's task is done with it).
    pub(crate) fn disconnect(&self) {
        let mut s = self.state.lock();
        if s.wire.is_some() {
            self.break_wire(&mut s);
        }
    }
}

/// How far [`Outbox::write_locked`] got.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Done,
    Blocked,
    Broken,
}

/// Appends one frame to `buf`: the message's length as a big-endian `u32`,
/// then its protobuf encoding. Returns the body's length; on error (the
/// message exceeds `max` bytes, or cannot be encoded) `buf` is left as it
/// was. The one encoder of the peer stream's frame format (see
/// `tcp_transport`'s module doc).
pub(crate) fn encode_frame(m: &Message, max: usize, buf: &mut Vec<u8>) -> io::Result<usize> {
    let len = m.compute_size() as usize;
    if len > max {
        return Err(io::Error::other(format!(
            "message of {len} bytes exceeds the frame limit {max}"
        )));
    }
    let start = buf.len();
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    let written = {
        let mut os = protobuf::CodedOutputStream::vec(buf);
        m.write_to_with_cached_sizes(&mut os)
            .and_then(|()| os.flush())
    };
    if let Err(e) = written {
        buf.truncate(start);
        return Err(io::Error::other(format!(
            "cannot encode a raft message: {e}"
        )));
    }
    debug_assert_eq!(buf.len() - start, 4 + len);
    Ok(len)
}
