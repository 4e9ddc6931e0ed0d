//! The receiving half of a peer's message stream, read by the raft thread
//! itself.
//!
//! Before, every message received crossed two thread wake-ups on its
//! receiver: the peer-net thread woke on the socket, decoded the frame and
//! queued the message for the raft thread, which woke in turn (50-60 us
//! each on this project's 2-vCPU VMs; a put through a follower of a
//! 3-member cluster receives four messages on its critical path,
//! benches/RESULTS.md). Now the peer-net runtime still accepts the
//! connection and answers its handshake (TLS included), then hands the
//! socket to the raft thread ([`TransportHooks::adopt`]), which registers
//! it in its own poll beside its command mailbox and reads frames when the
//! socket is readable: one wake-up per batch of messages.
//!
//! Bytes are the frames of `tcp_transport`'s module doc:
//!
//! ```text
//! len: u32 BE | a raft `Message` in protobuf encoding (len bytes)
//! ```
//!
//! with TLS inside the rustls session the handshake set up (taken over
//! from tokio-rustls, with whatever it had already decrypted). A frame
//! longer than the transport's `max_frame_bytes`, one that does not
//! decode, or a message not from the handshake's sender to this member
//! closes the stream, as on the peer-net path.
//!
//! [`TransportHooks::adopt`]: crate::TransportHooks::adopt

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Arc;

use parking_lot::Mutex;
use protobuf::Message as _;
use raft::eraftpb::Message;

use crate::transport::Deliver;

/// Bytes read from one stream per turn of the raft loop before the others
/// (and the raft loop's own work) get a turn; the rest waits for the next.
const READ_BUDGET: usize = 4 << 20;

/// Smallest frame buffer: what one read may take at most when no longer
/// frame is under way.
const READ_CHUNK: usize = 64 << 10;

/// An empty frame buffer larger than this (a large frame went through) is
/// freed.
const SHRINK_ABOVE: usize = 4 << 20;

/// An accepted, handshaken message stream from one peer, for the raft
/// thread to read ([`RaftNode::adopt_stream`](crate::RaftNode::adopt_stream)).
pub struct InboundStream {
    tcp: mio::net::TcpStream,
    /// The TLS session, after its handshake; None: plain TCP.
    tls: Option<rustls::ServerConnection>,
    frames: FrameBuf,
    /// The handshake's sender; every message must be from it.
    from: u64,
    /// This member; every message must be to it.
    id: u64,
    /// Largest frame body accepted.
    max: usize,
    deliver: Deliver,
    /// Bytes received per sending member (the transport's `/metrics`
    /// counter, shared with the peer-net path).
    received: Arc<Mutex<HashMap<u64, u64>>>,
}

/// What one [`InboundStream::read_ready`] left.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// The socket would block: wait for its next readiness.
    Drained,
    /// The read budget ran out with bytes maybe left: read again soon.
    More,
    /// The stream ended (why): drop it.
    Closed(String),
}

impl InboundStream {
    /// The stream of `from` to member `id`, after the handshake: the
    /// socket (non-blocking from now on) and, with TLS, its session.
    pub(crate) fn new(
        tcp: std::net::TcpStream,
        tls: Option<rustls::ServerConnection>,
        from: u64,
        id: u64,
        max: usize,
        deliver: Deliver,
        received: Arc<Mutex<HashMap<u64, u64>>>,
    ) -> io::Result<InboundStream> {
        tcp.set_nonblocking(true)?;
        Ok(InboundStream {
            tcp: mio::net::TcpStream::from_std(tcp),
            tls,
            frames: FrameBuf::default(),
            from,
            id,
            max,
            deliver,
            received,
        })
    }

    /// The socket, to register in a poll.
    pub(crate) fn socket(&mut self) -> &mut mio::net::TcpStream {
        &mut self.tcp
    }

    /// The peer that sends on this stream.
    pub(crate) fn from(&self) -> u64 {
        self.from
    }

    /// Reads what the socket holds, up to [`READ_BUDGET`] bytes, and
    /// delivers every complete message.
    pub(crate) fn read_ready(&mut self) -> ReadOutcome {
        let mut read = 0;
        let mut delivered = 0u64;
        let outcome = loop {
            if read >= READ_BUDGET {
                break ReadOutcome::More;
            }
            let r = match &mut self.tls {
                None => self.frames.read_from(&mut self.tcp),
                Some(conn) => read_tls(conn, &mut self.tcp, &mut self.frames),
            };
            match r {
                Ok(0) => break ReadOutcome::Closed("closed by the peer".into()),
                Ok(n) => read += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break ReadOutcome::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break ReadOutcome::Closed(e.to_string()),
            }
            if let Err(why) = self.deliver_frames(&mut delivered) {
                break ReadOutcome::Closed(why);
            }
        };
        if delivered > 0 {
            *self.received.lock().entry(self.from).or_default() += delivered;
        }
        outcome
    }

    /// Delivers the complete frames buffered; adds their bytes to `bytes`.
    fn deliver_frames(&mut self, bytes: &mut u64) -> Result<(), String> {
        while let Some((m, len)) = self.frames.next(self.max).map_err(|e| e.to_string())? {
            if let Some(why) = misrouted(&m, self.from, self.id) {
                return Err(why);
            }
            *bytes += len as u64;
            (self.deliver)(m);
        }
        Ok(())
    }
}

/// One step of a TLS stream: the socket's records into the session, the
/// session's plaintext into `frames`. `Ok(0)` at the end of the stream
/// (the peer's close_notify or a closed socket), `WouldBlock` when neither
/// has anything.
fn read_tls(
    conn: &mut rustls::ServerConnection,
    tcp: &mut mio::net::TcpStream,
    frames: &mut FrameBuf,
) -> io::Result<usize> {
    // Plaintext already decrypted first (some may have come with the
    // handshake's last records).
    match frames.read_from(&mut conn.reader()) {
        Ok(n) => return Ok(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    let n = conn.read_tls(tcp)?;
    let state = conn
        .process_new_packets()
        .map_err(|e| io::Error::other(format!("TLS: {e}")));
    // What the session must answer (an alert, a key update): best effort,
    // the socket's send buffer is otherwise unused on this side.
    while conn.wants_write() {
        match conn.write_tls(tcp) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    state?;
    if n == 0 {
        return Ok(0);
    }
    match frames.read_from(&mut conn.reader()) {
        Ok(n) => Ok(n),
        // Records that held no application data (yet): more to read.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
        Err(e) => Err(e),
    }
}

/// Refuses a frame whose body of `len` bytes exceeds `max` (the checks
/// below serve both readers of message streams: this module's and the
/// peer-net runtime's `read_frame`).
pub(crate) fn check_frame_len(len: usize, max: usize) -> io::Result<()> {
    if len > max {
        return Err(io::Error::other(format!(
            "frame of {len} bytes exceeds the limit {max}"
        )));
    }
    Ok(())
}

/// Decodes a frame's body.
pub(crate) fn decode_body(body: &[u8]) -> io::Result<Message> {
    Message::parse_from_bytes(body)
        .map_err(|e| io::Error::other(format!("undecodable raft message: {e}")))
}

/// Why `m` does not belong on the stream of `from` to `id`, if it does not.
pub(crate) fn misrouted(m: &Message, from: u64, id: u64) -> Option<String> {
    (m.to != id || m.from != from)
        .then(|| format!("message {}->{} on the stream {from}->{id}", m.from, m.to))
}

/// Bytes of frames received and not yet decoded.
#[derive(Default)]
pub(crate) struct FrameBuf {
    /// Storage; bytes `start..end` are received, not yet decoded.
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl FrameBuf {
    /// One read from `r` into the buffer (grown to fit the frame under
    /// way); what `r.read` returns.
    pub(crate) fn read_from(&mut self, r: &mut impl Read) -> io::Result<usize> {
        self.make_room();
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    /// Makes room after `end`: at least one byte, and the whole frame
    /// under way once its length is known (so it is read without further
    /// moves), moving the undecoded bytes to the front when needed.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > SHRINK_ABOVE {
                // A large frame went through: give its memory back.
                self.buf = Vec::new();
            }
        }
        let held = self.end - self.start;
        let need = self.frame_len().unwrap_or(0).max(held + 1);
        if self.end == self.buf.len() || self.buf.len() - self.start < need {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = held;
        }
        let size = need.max(READ_CHUNK);
        if self.buf.len() < size {
            self.buf.resize(size, 0);
        }
    }

    /// The length (prefix included) of the frame at `start`, once its
    /// prefix is in.
    fn frame_len(&self) -> Option<usize> {
        if self.end - self.start < 4 {
            return None;
        }
        let p: [u8; 4] = self.buf[self.start..self.start + 4]
            .try_into()
            .expect("4 bytes");
        Some(4 + u32::from_be_bytes(p) as usize)
    }

    /// The next complete frame's message and its length (prefix included);
    /// `Ok(None)` until one is complete. Errors: a frame over `max` bytes,
    /// or one that does not decode.
    pub(crate) fn next(&mut self, max: usize) -> io::Result<Option<(Message, usize)>> {
        let Some(len) = self.frame_len() else {
            return Ok(None);
        };
        check_frame_len(len - 4, max)?;
        if self.end - self.start < len {
            return Ok(None);
        }
        let m = decode_body(&self.buf[self.start + 4..self.start + len])?;
        self.start += len;
        Ok(Some((m, len)))
    }
}

/// Test support: the frames [`FrameBuf`] decodes from `data` read in
/// pieces of `piece` bytes (at least 1), until the first bad frame; for
/// the fuzz target, which compares it with the peer-net path's decoder.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn decode_in_pieces(data: &[u8], piece: usize, max: usize) -> Vec<Message> {
    let mut r = Pieces {
        data,
        piece: piece.max(1),
    };
    let mut frames = FrameBuf::default();
    let mut out = Vec::new();
    loop {
        match frames.read_from(&mut r) {
            Ok(0) | Err(_) => return out,
            Ok(_) => {}
        }
        loop {
            match frames.next(max) {
                Ok(Some((m, _))) => out.push(m),
                Ok(None) => break,
                Err(_) => return out,
            }
        }
    }
}

/// A reader that hands out at most `piece` bytes per read.
#[cfg(any(test, feature = "testing"))]
struct Pieces<'a> {
    data: &'a [u8],
    piece: usize,
}

#[cfg(any(test, feature = "testing"))]
impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.piece.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp_outbox::encode_frame;

    fn msg(index: u64, payload: usize) -> Message {
        let mut m = Message::default();
        m.from = 1;
        m.to = 2;
        m.index = index;
        let mut e = raft::eraftpb::Entry::default();
        e.data = vec![index as u8; payload].into();
        m.set_entries(vec![e].into());
        m
    }

    #[test]
    fn frames_split_anywhere_decode_in_order() {
        // Small frames, then one larger than the first buffer, then small.
        let sizes = [0, 10, 300, 200_000, 5, 70_000, 1];
        let mut wire = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            encode_frame(&msg(i as u64, n), 1 << 20, &mut wire).unwrap();
        }
        for piece in [1, 3, 4, 7, 4096, 65_536, usize::MAX] {
            let got = decode_in_pieces(&wire, piece, 1 << 20);
            let idx: Vec<u64> = got.iter().map(|m| m.index).collect();
            assert_eq!(
                idx,
                (0..sizes.len() as u64).collect::<Vec<_>>(),
                "pieces of {piece}"
            );
            for (m, &n) in got.iter().zip(&sizes) {
                assert_eq!(m.entries[0].data.len(), n);
            }
        }
    }

    #[test]
    fn oversized_and_garbage_frames_are_refused() {
        let mut wire = Vec::new();
        encode_frame(&msg(7, 10), 1 << 20, &mut wire).unwrap();
        // A length far over the limit: refused from its prefix, nothing
        // allocated for it.
        let mut over = wire.clone();
        over.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut frames = FrameBuf::default();
        frames.read_from(&mut &over[..]).unwrap();
        assert_eq!(frames.next(1 << 20).unwrap().unwrap().0.index, 7);
        assert!(frames.next(1 << 20).is_err());
        assert!(frames.buf.len() <= READ_CHUNK);
        // A body that is no raft message.
        let mut garbage = wire.clone();
        garbage.extend_from_slice(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
        let mut frames = FrameBuf::default();
        frames.read_from(&mut &garbage[..]).unwrap();
        assert!(frames.next(1 << 20).unwrap().is_some());
        assert!(frames.next(1 << 20).is_err());
    }

    #[test]
    fn a_large_frames_memory_is_given_back() {
        let mut wire = Vec::new();
        encode_frame(&msg(1, 6 << 20), 8 << 20, &mut wire).unwrap();
        let mut frames = FrameBuf::default();
        let mut r = &wire[..];
        while frames.next(8 << 20).unwrap().is_none() {
            frames.read_from(&mut r).unwrap();
        }
        assert!(frames.buf.len() >= 6 << 20);
        encode_frame(&msg(2, 10), 8 << 20, &mut wire).unwrap();
        let mut rest = &wire[wire.len() - (4 + msg(2, 10).compute_size() as usize)..];
        frames.read_from(&mut rest).unwrap();
        assert_eq!(frames.next(8 << 20).unwrap().unwrap().0.index, 2);
        assert!(frames.buf.len() <= READ_CHUNK);
    }
}
