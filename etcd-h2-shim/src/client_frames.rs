//! [`ClientFrames`]: the client's side of a connection, read frame by frame
//! before hyper/h2 sees it. Three jobs: etcdctl 3.4's `:authority` fixed
//! (below), grpc-go's ping policy ([`crate::keepalive`]), and bounded memory
//! (at the end).
//!
//! ## `:authority`
//!
//! Accepts the `:authority` that etcd's Go clients really send.
//!
//! `etcdctl` 3.4 opens a separate client per endpoint for `endpoint status`,
//! `endpoint hashkv`, `defrag` and `snapshot save`, and grpc-go then sends
//! the whole endpoint URL as the HTTP/2 `:authority`
//! (`http://127.0.0.1:2379`). Go's server accepts it; the Rust `h2` crate
//! rejects a malformed authority with `RST_STREAM(PROTOCOL_ERROR)` and its
//! maintainers chose not to relax that (hyperium/h2#525). etcd fixed its
//! client later (etcd-io/etcd#13359), but deployed clients still send it.
//!
//! So every accepted connection is read through [`ClientFrames`]: it parses
//! the client's HTTP/2 frames and decodes the connection's first header
//! block (HEADERS plus any CONTINUATION frames) with its own HPACK decoder.
//! - When that block has an `:authority` of the form
//!   `scheme://host[:port][/...]`, it is rewritten to `host[:port]` and the
//!   block re-encoded with the shim's own HPACK encoder; every later block
//!   of the connection is decoded, fixed and re-encoded the same way, so
//!   the server's HPACK dynamic table follows the shim's encoder.
//! - Otherwise the block goes to the server as the client encoded it, and
//!   so does every later header frame, streamed through like DATA: the
//!   server's dynamic table now follows the client's, and the shim decodes
//!   nothing more on that connection. A gRPC client keeps one authority
//!   per connection (grpc-go's is the dial target's), so a connection that
//!   starts well stays well. This matters for speed: decoding and
//!   re-encoding every request's headers cost about a third of the
//!   server's CPU per put (profile in benches/RESULTS.md).
//!
//! Other frames pass through untouched, as does everything the server
//! writes.
//!
//! Frame layout (RFC 9113 §4.1): `length:24 | type:8 | flags:8 | R:1 stream:31 | payload`.
//! A connection that does not start with the HTTP/2 client preface is
//! passed through unchanged.
//!
//! ## Bounded memory
//!
//! What one client can make this shim hold is bounded by h2's own limits
//! as hyper configures them, checked before h2 sees anything (once header
//! frames stream through, h2 applies the same limits itself):
//! - frames other than HEADERS, CONTINUATION and PING stream through as
//!   they arrive (a DATA frame is never held whole);
//! - a frame longer than [`MAX_FRAME`] (the server's SETTINGS_MAX_FRAME_SIZE)
//!   gets h2's answer, GOAWAY `FRAME_SIZE_ERROR`;
//! - a header block may span at most [`MAX_CONTINUATIONS`] CONTINUATION
//!   frames (h2's `too_many_continuations` GOAWAY), so at most 6 frames are
//!   held; its decoded header list is counted as HPACK decodes it and may
//!   not exceed [`MAX_DECODED_HEADERS`] (h2's `header_list_way_too_large`
//!   GOAWAY): an HPACK block that references a large dynamic-table entry
//!   many times cannot blow up.
//!
//! Worked example: a client sends HEADERS without END_HEADERS, then
//! CONTINUATION frames without END_HEADERS. The sixth CONTINUATION ends
//! the connection with GOAWAY `ENHANCE_YOUR_CALM` `too_many_continuations`
//! after at most 6 × 16 KiB were held, where h2 alone would have seen the
//! same after this shim held everything.

use bytes::{Buf, BufMut, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::coalesce::Coalesce;
use crate::keepalive::{goaway_frame, FrameCursor, PingPolicy, ENHANCE_YOUR_CALM, PING};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The server's SETTINGS_MAX_FRAME_SIZE (h2's default; tonic keeps it).
pub const MAX_FRAME: usize = 16_384;
/// The server's SETTINGS_MAX_HEADER_LIST_SIZE (hyper's default, 16 KiB;
/// tonic keeps it).
const MAX_HEADER_LIST: usize = 16 << 10;
/// h2's limit on CONTINUATION frames in one block
/// (`calc_max_continuation_frames` for the two settings above).
pub const MAX_CONTINUATIONS: usize = 5;
/// h2's abuse limit on a decoded header list (4 × the list size; fields
/// counted as RFC 7541 counts them, name + value + 32).
pub const MAX_DECODED_HEADERS: usize = 4 * MAX_HEADER_LIST;
/// Room made in the read buffer before each read from the client.
const READ_SIZE: usize = 16 * 1024;
/// GOAWAY error code FRAME_SIZE_ERROR.
const FRAME_SIZE_ERROR: u32 = 0x6;

enum Mode {
    /// Still reading the client preface.
    Preface,
    /// Following frames (header blocks: see [`Headers`]).
    Frames,
    /// Not HTTP/2 (or undecodable): bytes pass through.
    Passthrough,
    /// The client broke the ping policy or a limit: what it sends is
    /// dropped while the GOAWAY goes out, then the connection ends.
    Closing,
}

/// What becomes of a connection's header blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Headers {
    /// No block complete yet: the first is decoded to decide.
    Undecided,
    /// The first block had an `:authority` to fix: every block is
    /// decoded, fixed and re-encoded.
    Rewrite,
    /// The first block needed nothing and went on as the client encoded
    /// it: header frames stream through.
    Relay,
}

/// The GOAWAY of a broken ping policy or limit.
#[derive(Debug, PartialEq, Eq)]
enum GoAway {
    /// Not needed.
    No,
    /// This frame, to write at the server's next frame boundary.
    Due(Vec<u8>),
    /// Being written (the bytes left).
    Writing(BytesMut),
    /// Written and flushed: reads end.
    Sent,
}

/// Why a header frame is not passed on.
enum Refusal {
    /// Not HTTP/2 as h2 would read it: left to h2 (passthrough).
    Malformed,
    /// Over one of h2's limits: GOAWAY ENHANCE_YOUR_CALM with this debug
    /// data (h2's), and why (logged).
    Limit(&'static [u8], &'static str),
}

/// A header block being collected from HEADERS + CONTINUATION frames.
struct PendingBlock {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// CONTINUATION frames so far.
    continuations: usize,
}

/// Wraps a server-side connection; see the module doc.
pub struct ClientFrames<S> {
    /// The connection; the server's writes to it are coalesced
    /// ([`crate::coalesce`]).
    inner: Coalesce<S>,
    /// [`PingPolicy::ended_streams`] at the last completed flush: the
    /// streams ended since are the current batch's.
    ended_at_flush: u64,
    mode: Mode,
    /// Bytes read from the client, not yet processed.
    raw: BytesMut,
    /// Processed bytes ready for the server.
    ready: BytesMut,
    /// Payload bytes of the current frame still to stream through.
    passing: usize,
    /// The highest stream the client opened (a GOAWAY's last stream).
    last_stream: u32,
    pending: Option<PendingBlock>,
    headers: Headers,
    decoder: fluke_hpack::Decoder<'static>,
    encoder: fluke_hpack::Encoder<'static>,
    /// `--grpc-keepalive-min-time` enforcement (None: not enforced).
    pings: Option<PingPolicy>,
    /// The server's frames, followed for `pings`.
    written: FrameCursor,
    /// The GOAWAY of a broken ping policy.
    goaway: GoAway,
}

impl<S> ClientFrames<S> {
    /// Wraps `inner`; `ping_min_time` enforces grpc-go's ping policy.
    pub fn new(inner: S, ping_min_time: Option<Duration>) -> Self {
        ClientFrames {
            inner: Coalesce::new(inner),
            ended_at_flush: 0,
            mode: Mode::Preface,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            passing: 0,
            last_stream: 0,
            pending: None,
            headers: Headers::Undecided,
            decoder: fluke_hpack::Decoder::new(),
            encoder: fluke_hpack::Encoder::new(),
            pings: ping_min_time.map(PingPolicy::new),
            written: FrameCursor::default(),
            goaway: GoAway::No,
        }
    }

    /// Moves the first `n` bytes of `raw` to `ready` as they are (copied
    /// and advanced past: splitting would make both buffers shared, an
    /// allocation per frame).
    fn pass(&mut self, n: usize) {
        self.ready.extend_from_slice(&self.raw[..n]);
        self.raw.advance(n);
    }

    /// Moves every complete unit of `raw` to `ready`, rewriting header blocks.
    fn process(&mut self) {
        loop {
            match self.mode {
                Mode::Closing => {
                    self.raw.clear();
                    return;
                }
                Mode::Passthrough => {
                    let n = self.raw.len();
                    self.pass(n);
                    return;
                }
                Mode::Preface => {
                    let n = self.raw.len().min(PREFACE.len());
                    if self.raw[..n] != PREFACE[..n] {
                        self.mode = Mode::Passthrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return;
                    }
                    self.pass(PREFACE.len());
                    self.mode = Mode::Frames;
                }
                Mode::Frames => {
                    if self.passing > 0 {
                        let n = self.passing.min(self.raw.len());
                        if n == 0 {
                            return;
                        }
                        self.pass(n);
                        self.passing -= n;
                        continue;
                    }
                    if self.raw.len() < 9 {
                        return;
                    }
                    let len =
                        u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]) as usize;
                    let (kind, flags) = (self.raw[3], self.raw[4]);
                    let stream =
                        u32::from_be_bytes([self.raw[5], self.raw[6], self.raw[7], self.raw[8]])
                            & 0x7fff_ffff;
                    if len > MAX_FRAME {
                        self.refuse(FRAME_SIZE_ERROR, b"", "a frame over the maximum size");
                        continue;
                    }
                    if kind == HEADERS {
                        self.last_stream = self.last_stream.max(stream);
                    }
                    let whole = ((kind == HEADERS || kind == CONTINUATION)
                        && self.headers != Headers::Relay)
                        || (kind == PING && self.pings.is_some());
                    if !whole {
                        // Streamed through: the header now, the payload
                        // as it arrives.
                        if let Some(p) = &mut self.pings {
                            p.client_frame(kind, flags, stream, Instant::now());
                        }
                        self.pass(9);
                        self.passing = len;
                        continue;
                    }
                    if self.raw.len() < 9 + len {
                        return;
                    }
                    if let Some(p) = &mut self.pings {
                        if p.client_frame(kind, flags, stream, Instant::now()) {
                            // The PING still reaches the server (which
                            // acknowledges it, as grpc-go does).
                            let goaway = p.goaway();
                            self.pass(9 + len);
                            self.refuse_with(
                                goaway,
                                "a client pinged too often (--grpc-keepalive-min-time)",
                            );
                            continue;
                        }
                    }
                    if kind == PING {
                        self.pass(9 + len);
                        continue;
                    }
                    let payload = self.raw[9..9 + len].to_vec();
                    self.raw.advance(9 + len);
                    match self.take_header_frame(kind, flags, stream, payload) {
                        Ok(()) => {}
                        Err(Refusal::Limit(debug, why)) => {
                            self.refuse(ENHANCE_YOUR_CALM, debug, why);
                        }
                        // Leave the (now inconsistent) connection to h2,
                        // which will fail it with a protocol or
                        // compression error.
                        Err(Refusal::Malformed) => self.mode = Mode::Passthrough,
                    }
                }
            }
        }
    }

    /// Ends the connection with GOAWAY `code` (h2's answer to the same).
    fn refuse(&mut self, code: u32, debug: &[u8], why: &str) {
        let frame = goaway_frame(self.last_stream, code, debug);
        self.refuse_with(frame, why);
    }

    fn refuse_with(&mut self, goaway: Vec<u8>, why: &str) {
        tracing::warn!("closing a client connection with GOAWAY: {why}");
        self.raw.clear();
        self.pending = None;
        self.mode = Mode::Closing;
        self.goaway = GoAway::Due(goaway);
    }

    fn take_header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        mut payload: Vec<u8>,
    ) -> Result<(), Refusal> {
        use Refusal::Malformed;
        if kind == HEADERS {
            if self.pending.is_some() {
                return Err(Malformed); // a block is still open
            }
            if flags & PADDED != 0 {
                let pad = *payload.first().ok_or(Malformed)? as usize;
                if pad + 1 > payload.len() {
                    return Err(Malformed);
                }
                payload.truncate(payload.len() - pad);
                payload.remove(0);
            }
            let priority = if flags & PRIORITY != 0 {
                if payload.len() < 5 {
                    return Err(Malformed);
                }
                let p: [u8; 5] = payload[..5].try_into().map_err(|_| Malformed)?;
                payload.drain(..5);
                Some(p)
            } else {
                None
            };
            self.pending = Some(PendingBlock {
                stream,
                flags,
                priority,
                fragment: payload,
                continuations: 0,
            });
        } else {
            let p = self.pending.as_mut().ok_or(Malformed)?;
            if p.stream != stream {
                return Err(Malformed);
            }
            if flags & END_HEADERS == 0 {
                p.continuations += 1;
                if p.continuations > MAX_CONTINUATIONS {
                    return Err(Refusal::Limit(
                        b"too_many_continuations",
                        "a header block of too many CONTINUATION frames",
                    ));
                }
            }
            p.fragment.extend_from_slice(&payload);
        }
        if flags & END_HEADERS == 0 {
            return Ok(());
        }
        let block = self.pending.take().ok_or(Malformed)?;
        // Decoded field by field, counted as h2 counts them, kept only up
        // to the abuse limit.
        if !hpack_well_formed(&block.fragment) {
            return Err(Malformed);
        }
        let mut headers = Vec::new();
        let mut size = 0usize;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                size = size.saturating_add(name.len() + value.len() + 32);
                if size <= MAX_DECODED_HEADERS {
                    headers.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|_| Malformed)?;
        if size > MAX_DECODED_HEADERS {
            return Err(Refusal::Limit(
                b"header_list_way_too_large",
                "a header list over the size limit",
            ));
        }
        let mut fixed = false;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" {
                let v = fix_authority(value);
                fixed |= v != *value;
                *value = v;
            }
        }
        if self.headers == Headers::Undecided && !fixed {
            // The server decodes the client's own encoding from now on.
            self.headers = Headers::Relay;
            self.write_block(&block, &block.fragment);
            return Ok(());
        }
        self.headers = Headers::Rewrite;
        let encoded = self
            .encoder
            .encode(headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())));
        self.write_block(&block, &encoded);
        Ok(())
    }

    fn write_block(&mut self, block: &PendingBlock, encoded: &[u8]) {
        let prio_len = if block.priority.is_some() { 5 } else { 0 };
        let first_room = MAX_FRAME - prio_len;
        let (first, mut rest) = encoded.split_at(encoded.len().min(first_room));
        let mut flags = block.flags & (END_STREAM | PRIORITY);
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        put_frame_header(
            &mut self.ready,
            prio_len + first.len(),
            HEADERS,
            flags,
            block.stream,
        );
        if let Some(p) = block.priority {
            self.ready.extend_from_slice(&p);
        }
        self.ready.extend_from_slice(first);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
            rest = tail;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            put_frame_header(
                &mut self.ready,
                chunk.len(),
                CONTINUATION,
                flags,
                block.stream,
            );
            self.ready.extend_from_slice(chunk);
        }
    }
}

fn put_frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    out.put_slice(&(len as u32).to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// Whether `block` is a sequence of complete HPACK representations (RFC
/// 7541 §6): every integer ends within 4 continuation octets and every
/// string fits. fluke-hpack unwraps some integers it decodes (a size update
/// cut short panics), so a block is checked before it is decoded; one that
/// is not well formed is left to h2, which answers COMPRESSION_ERROR.
fn hpack_well_formed(mut block: &[u8]) -> bool {
    /// An integer with an `n`-bit prefix; None when cut short or too long.
    fn integer(buf: &mut &[u8], n: u32) -> Option<u64> {
        let (&first, rest) = buf.split_first()?;
        *buf = rest;
        let max = (1u64 << n) - 1;
        let mut value = u64::from(first) & max;
        if value < max {
            return Some(value);
        }
        for shift in [0, 7, 14, 21] {
            let (&b, rest) = buf.split_first()?;
            *buf = rest;
            value += u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }
    fn string(buf: &mut &[u8]) -> Option<()> {
        let len = usize::try_from(integer(buf, 7)?).ok()?;
        *buf = buf.get(len..)?;
        Some(())
    }
    let field = |buf: &mut &[u8]| -> Option<()> {
        let first = *buf.first()?;
        if first & 0x80 != 0 {
            integer(buf, 7)?; // indexed
        } else if first & 0xc0 == 0x40 {
            if integer(buf, 6)? == 0 {
                string(buf)?; // new name
            }
            string(buf)?;
        } else if first & 0xe0 == 0x20 {
            integer(buf, 5)?; // dynamic table size update
        } else {
            if integer(buf, 4)? == 0 {
                string(buf)?;
            }
            string(buf)?;
        }
        Some(())
    };
    while !block.is_empty() {
        if field(&mut block).is_none() {
            return false;
        }
    }
    true
}

/// `http://host:port/path` -> `host:port`; anything else unchanged.
fn fix_authority(value: &[u8]) -> Vec<u8> {
    let Some(pos) = value.windows(3).position(|w| w == b"://") else {
        return value.to_vec();
    };
    let rest = &value[pos + 3..];
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    rest[..end].to_vec()
}

impl<S> ClientFrames<S> {
    /// Follows bytes the server wrote: its frames for the ping policy, and
    /// the boundary a due GOAWAY waits for (the reader is woken to send it).
    fn follow(&mut self, written: &[u8], cx: &mut Context<'_>) {
        let pings = &mut self.pings;
        self.written.feed(written, |kind, flags, stream| {
            if let Some(p) = pings {
                p.server_frame(kind, flags, stream);
            }
        });
        if matches!(self.goaway, GoAway::Due(_)) && self.written.at_boundary() {
            cx.waker().wake_by_ref();
        }
    }
}

impl<S: AsyncWrite + Unpin> ClientFrames<S> {
    /// Writes a due GOAWAY once the server is between frames; Ready when
    /// it is out (flushed).
    fn drive_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.goaway {
                GoAway::No | GoAway::Sent => return Poll::Ready(Ok(())),
                GoAway::Due(frame) => {
                    if !self.written.at_boundary() {
                        // The server is mid-frame: its next write ends it
                        // and wakes this task (poll_write).
                        return Poll::Pending;
                    }
                    let frame = BytesMut::from(&std::mem::take(frame)[..]);
                    self.goaway = GoAway::Writing(frame);
                }
                GoAway::Writing(bytes) if bytes.is_empty() => {
                    std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
                    self.goaway = GoAway::Sent;
                }
                GoAway::Writing(bytes) => {
                    let n = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, bytes))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    bytes.advance(n);
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ClientFrames<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.goaway != GoAway::No {
                // The GOAWAY, then the end of the connection for the server.
                return this.drive_goaway(cx);
            }
            // Read straight into `raw`'s spare room (no zeroed scratch
            // buffer: h2 polls this on every wake-up of the connection).
            this.raw.reserve(READ_SIZE);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.raw) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(n)) => {
                    if n == 0 {
                        // EOF: hand over whatever is left as it is.
                        if this.raw.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        let rest = this.raw.len();
                        this.pass(rest);
                        continue;
                    }
                    this.process();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ClientFrames<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.goaway {
            GoAway::No => {}
            GoAway::Due(_) if !this.written.at_boundary() => {}
            _ => {
                // The connection is closing: the GOAWAY first, then the
                // server's last frames are dropped.
                std::task::ready!(this.drive_goaway(cx))?;
                return Poll::Ready(Ok(buf.len()));
            }
        }
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.follow(&buf[..n], cx);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Gather only when other calls may answer while the flush yields
        // (crate::coalesce): two or more streams among those still open
        // and those this batch ended. Without a ping policy no streams are
        // followed (the metrics listener, tests) and Coalesce's default,
        // gathering, stays.
        if let Some(p) = &this.pings {
            let ended = p.ended_streams() - this.ended_at_flush;
            this.inner.set_gather(p.open_streams() as u64 + ended > 1);
        }
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        if r.is_ready() {
            if let Some(p) = &this.pings {
                this.ended_at_flush = p.ended_streams();
            }
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.goaway != GoAway::No {
            // Closing: one buffer at a time through poll_write's logic.
            let buf = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return Pin::new(this).poll_write(cx, buf);
        }
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        let mut left = n;
        for b in bufs {
            if left == 0 {
                break;
            }
            let k = left.min(b.len());
            this.follow(&b[..k], cx);
            left -= k;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Fuzz entry point: runs arbitrary client bytes through the shim.
/// Must never panic (the bytes come from any client that connects).
/// Test support (`testing` feature).
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub fn fuzz_client_bytes(data: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    // The ping policy too: a flood of PINGs ends the stream with a GOAWAY
    // (written to a sink).
    let conn = tokio::io::join(data, tokio::io::sink());
    let mut fixed = ClientFrames::new(conn, Some(Duration::from_secs(5)));
    let mut out = Vec::new();
    futures::executor::block_on(fixed.read_to_end(&mut out)).expect("reading a slice cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = BytesMut::new();
        put_frame_header(&mut b, payload.len(), kind, flags, stream);
        b.extend_from_slice(payload);
        b.to_vec()
    }

    async fn run(input: Vec<u8>) -> Vec<u8> {
        let mut fixed = ClientFrames::new(tokio::io::join(&input[..], tokio::io::sink()), None);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.unwrap();
        out
    }

    /// Runs `input` through the shim: (what the server reads, what the
    /// shim wrote to the client itself).
    async fn run_both(input: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
        let mut shim = ClientFrames::new(tokio::io::join(&input[..], Vec::new()), None);
        let mut out = Vec::new();
        shim.read_to_end(&mut out).await.unwrap();
        let (_, written) = shim.inner.into_inner().into_inner();
        (out, written)
    }

    /// The GOAWAY among written bytes: (last stream, code, debug).
    fn goaway_of(written: &[u8]) -> (u32, u32, Vec<u8>) {
        assert_eq!(written[3], crate::keepalive::GOAWAY, "{written:?}");
        let len = u32::from_be_bytes([0, written[0], written[1], written[2]]) as usize;
        let p = &written[9..9 + len];
        (
            u32::from_be_bytes(p[..4].try_into().unwrap()),
            u32::from_be_bytes(p[4..8].try_into().unwrap()),
            p[8..].to_vec(),
        )
    }

    #[tokio::test]
    async fn a_continuation_flood_gets_h2s_goaway_early() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, 0, 1, &[0x82]));
        for _ in 0..MAX_CONTINUATIONS {
            input.extend(frame(CONTINUATION, 0, 1, &[0x84]));
        }
        let (out, written) = run_both(input.clone()).await;
        assert_eq!(out, PREFACE, "the block is still held: nothing passed");
        assert!(written.is_empty());
        input.extend(frame(CONTINUATION, 0, 1, &[0x84])); // one too many
        input.extend(frame(0x0, 0, 1, b"never read"));
        let (out, written) = run_both(input).await;
        assert_eq!(out, PREFACE);
        assert_eq!(
            goaway_of(&written),
            (1, ENHANCE_YOUR_CALM, b"too_many_continuations".to_vec())
        );
    }

    #[tokio::test]
    async fn an_hpack_bomb_is_refused_before_it_is_decoded_whole() {
        // A 4000-byte value into the dynamic table, then referenced 20
        // times: 21 × 4033 decoded bytes from a 4 KiB block.
        let mut block = vec![0x40, 0x01, b'x', 0x7f, 0xa1, 0x1e];
        block.extend(std::iter::repeat_n(b'a', 4000));
        block.extend(std::iter::repeat_n(0xbe, 20));
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let (out, written) = run_both(input).await;
        assert_eq!(out, PREFACE);
        assert_eq!(
            goaway_of(&written),
            (1, ENHANCE_YOUR_CALM, b"header_list_way_too_large".to_vec())
        );
        // Ten references stay under the limit: passed on (h2 applies its
        // own, smaller, header list limit).
        let mut block = vec![0x40, 0x01, b'x', 0x7f, 0xa1, 0x1e];
        block.extend(std::iter::repeat_n(b'a', 4000));
        block.extend(std::iter::repeat_n(0xbe, 10));
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let (out, written) = run_both(input).await;
        assert!(out.len() > PREFACE.len() && written.is_empty());
    }

    #[tokio::test]
    async fn an_oversized_frame_gets_frame_size_error() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x0, 0, 1, &vec![0; MAX_FRAME + 1]));
        let (out, written) = run_both(input).await;
        assert_eq!(out, PREFACE);
        assert_eq!(goaway_of(&written), (0, FRAME_SIZE_ERROR, Vec::new()));
    }

    #[tokio::test]
    async fn data_streams_through_without_waiting_for_the_whole_frame() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut shim = ClientFrames::new(server, None);
        let mut first = PREFACE.to_vec();
        first.extend(&frame(0x0, 0, 1, &[7; 10_000])[..9 + 100]);
        tokio::io::AsyncWriteExt::write_all(&mut client, &first)
            .await
            .unwrap();
        // Everything sent so far comes out although 9,900 bytes of the
        // frame are still to come (read by count; the timeout only turns a
        // hang into a failure).
        let mut got = vec![0u8; first.len()];
        tokio::time::timeout(Duration::from_secs(60), shim.read_exact(&mut got))
            .await
            .expect("the partial frame was held back")
            .unwrap();
        assert_eq!(got, first);
    }

    #[test]
    fn hpack_blocks_are_checked_before_decoding() {
        let mut enc = fluke_hpack::Encoder::new();
        let block = enc.encode(vec![(&b":path"[..], &b"/x"[..]), (b"k", b"v")]);
        assert!(hpack_well_formed(&block));
        // A size update cut short (fluke-hpack panics on it; found by the
        // http2_frames fuzz target), a string longer than the block, an
        // integer of too many octets.
        for bad in [
            &[0x3f][..],
            &[0x3f, 0xff],
            &[0x40, 0x05, b'a'],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
        ] {
            assert!(!hpack_well_formed(bad), "{bad:?}");
        }
        // A complete size update (to 4096), then `:method: GET`.
        let ok = [0x3f, 0xe1, 0x1f, 0x82];
        assert!(hpack_well_formed(&ok));
        assert!(fluke_hpack::Decoder::new().decode(&ok).is_ok());
    }

    #[test]
    fn authority_urls_lose_scheme_and_path() {
        assert_eq!(fix_authority(b"http://127.0.0.1:2379"), b"127.0.0.1:2379");
        assert_eq!(fix_authority(b"https://h:1/x/y"), b"h:1");
        assert_eq!(fix_authority(b"127.0.0.1:2379"), b"127.0.0.1:2379");
    }

    #[tokio::test]
    async fn header_blocks_are_rewritten_across_continuations_and_dynamic_table() {
        let mut client = fluke_hpack::Encoder::new();
        let hdrs: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":authority", b"http://127.0.0.1:2379"),
            (b":path", b"/etcdserverpb.Maintenance/Status"),
        ];
        let block1 = client.encode(hdrs.clone());
        // The second request refers to the client's dynamic table.
        let block2 = client.encode(hdrs.clone());
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let (a, b) = block1.split_at(block1.len() / 2);
        input.extend(frame(HEADERS, 0, 1, a));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b));
        // Padded HEADERS with END_STREAM for the second request.
        let mut padded = vec![3u8];
        padded.extend_from_slice(&block2);
        padded.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM | PADDED,
            3,
            &padded,
        ));
        input.extend(frame(0x0, END_STREAM, 1, b"data")); // DATA
        let out = run(input).await;

        assert_eq!(&out[..PREFACE.len()], PREFACE);
        let mut rest = &out[PREFACE.len()..];
        let mut server = fluke_hpack::Decoder::new();
        let mut seen = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let (kind, flags) = (rest[3], rest[4]);
            let payload = &rest[9..9 + len];
            if kind == HEADERS {
                assert!(flags & END_HEADERS != 0 && flags & PADDED == 0);
                let h = server.decode(payload).unwrap();
                let auth = h.iter().find(|(n, _)| n == b":authority").unwrap();
                assert_eq!(auth.1, b"127.0.0.1:2379");
                seen.push(flags & END_STREAM);
            } else {
                seen.push(100 + kind);
            }
            rest = &rest[9 + len..];
        }
        assert_eq!(seen, vec![104, 0, END_STREAM, 100]);
    }

    #[tokio::test]
    async fn a_connection_that_starts_well_is_relayed_as_sent() {
        let mut client = fluke_hpack::Encoder::new();
        let good: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":authority", b"127.0.0.1:2379"),
            (b":path", b"/etcdserverpb.KV/Put"),
        ];
        let block1 = client.encode(good.clone());
        let block2 = client.encode(good);
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        let first = frame(HEADERS, END_HEADERS, 1, &block1);
        input.extend(&first);
        // Later header frames stream through byte for byte: padding,
        // CONTINUATION and all, whatever they hold (the shim no longer
        // decodes them; h2 reads the client's own encoding).
        let mut padded = vec![2u8];
        padded.extend_from_slice(&block2);
        padded.extend_from_slice(&[0, 0]);
        let (a, b) = padded.split_at(4);
        let later = [
            frame(HEADERS, PADDED, 3, a),
            frame(CONTINUATION, END_HEADERS, 3, b),
            frame(0x0, END_STREAM, 3, b"data"),
        ]
        .concat();
        input.extend(&later);
        let out = run(input.clone()).await;
        assert_eq!(out, input, "nothing rewritten");
        // A relayed HEADERS still counts as the client's last stream (the
        // GOAWAY of a broken limit names it).
        let mut over = input.clone();
        over.extend(frame(0x0, 0, 3, &vec![0; MAX_FRAME + 1]));
        let (out, written) = run_both(over).await;
        assert_eq!(out, input);
        assert_eq!(goaway_of(&written), (3, FRAME_SIZE_ERROR, Vec::new()));
    }

    #[test]
    fn arbitrary_frames_never_panic() {
        let mut x = 0x9e3779b97f4a7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut data = PREFACE.to_vec();
            for _ in 0..next() % 6 {
                let kind = [HEADERS, CONTINUATION, 0, 4, 6, 3, 7][(next() % 7) as usize];
                let payload: Vec<u8> = (0..next() % 40).map(|_| next() as u8).collect();
                data.extend(frame(kind, next() as u8, (next() % 4) as u32, &payload));
            }
            if next() % 3 == 0 {
                let cut = (next() as usize) % data.len();
                data.truncate(cut);
            }
            fuzz_client_bytes(&data);
        }
    }

    #[tokio::test]
    async fn non_http2_bytes_pass_through() {
        let input = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(run(input.clone()).await, input);
    }
}
