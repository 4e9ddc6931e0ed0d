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
//! So every accepted connection is read through [`AuthorityFix`]: it parses
//! the client's HTTP/2 frames, decodes each header block (HEADERS plus any
//! CONTINUATION frames) with its own HPACK decoder, rewrites an
//! `:authority` of the form `scheme://host[:port][/...]` to `host[:port]`,
//! and re-encodes the block with its own HPACK encoder for the server. All
//! header blocks of a connection go through the same decoder/encoder pair,
//! so both HPACK dynamic tables stay consistent. Other frames pass through
//! untouched, as does everything the server writes.
//!
//! Frame layout (RFC 9113 §4.1): `length:24 | type:8 | flags:8 | R:1 stream:31 | payload`.
//! A connection that does not start with the HTTP/2 client preface is
//! passed through unchanged.

use bytes::{Buf, BufMut, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::keepalive::{FrameCursor, PingPolicy};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The server's SETTINGS_MAX_FRAME_SIZE (h2's default; tonic keeps it).
const MAX_FRAME: usize = 16_384;

enum Mode {
    /// Still reading the client preface.
    Preface,
    /// Rewriting header blocks.
    Frames,
    /// Not HTTP/2 (or undecodable): bytes pass through.
    Passthrough,
    /// The client broke the ping policy: what it sends is dropped while
    /// the GOAWAY goes out, then the connection ends.
    Closing,
}

/// The GOAWAY of a broken ping policy ([`crate::keepalive`]).
#[derive(Debug, PartialEq, Eq)]
enum GoAway {
    /// Not needed.
    No,
    /// To write at the server's next frame boundary.
    Due,
    /// Being written (the bytes left).
    Writing(BytesMut),
    /// Written and flushed: reads end.
    Sent,
}

/// A header block being collected from HEADERS + CONTINUATION frames.
struct PendingBlock {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// Wraps a server-side connection; see the module doc.
pub struct AuthorityFix<S> {
    inner: S,
    mode: Mode,
    /// Bytes read from the client, not yet processed.
    raw: BytesMut,
    /// Processed bytes ready for the server.
    ready: BytesMut,
    pending: Option<PendingBlock>,
    decoder: fluke_hpack::Decoder<'static>,
    encoder: fluke_hpack::Encoder<'static>,
    /// `--grpc-keepalive-min-time` enforcement (None: not enforced).
    pings: Option<PingPolicy>,
    /// The server's frames, followed for `pings`.
    written: FrameCursor,
    /// The GOAWAY of a broken ping policy.
    goaway: GoAway,
}

impl<S> AuthorityFix<S> {
    /// Wraps `inner`; `ping_min_time` enforces grpc-go's ping policy.
    pub fn new(inner: S, ping_min_time: Option<Duration>) -> Self {
        AuthorityFix {
            inner,
            mode: Mode::Preface,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            pending: None,
            decoder: fluke_hpack::Decoder::new(),
            encoder: fluke_hpack::Encoder::new(),
            pings: ping_min_time.map(PingPolicy::new),
            written: FrameCursor::default(),
            goaway: GoAway::No,
        }
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
                    let all = self.raw.split();
                    self.ready.extend_from_slice(&all);
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
                    let p = self.raw.split_to(PREFACE.len());
                    self.ready.extend_from_slice(&p);
                    self.mode = Mode::Frames;
                }
                Mode::Frames => {
                    if self.raw.len() < 9 {
                        return;
                    }
                    let len =
                        u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]) as usize;
                    if self.raw.len() < 9 + len {
                        return;
                    }
                    let kind = self.raw[3];
                    if let Some(p) = &mut self.pings {
                        let stream = u32::from_be_bytes([
                            self.raw[5],
                            self.raw[6],
                            self.raw[7],
                            self.raw[8],
                        ]) & 0x7fff_ffff;
                        if p.client_frame(kind, self.raw[4], stream, Instant::now()) {
                            // The PING still reaches the server (which
                            // acknowledges it, as grpc-go does).
                            let frame = self.raw.split_to(9 + len);
                            self.ready.extend_from_slice(&frame);
                            tracing::warn!(
                                "client pinged too often (--grpc-keepalive-min-time): closing the connection with GOAWAY too_many_pings"
                            );
                            self.mode = Mode::Closing;
                            self.goaway = GoAway::Due;
                            continue;
                        }
                    }
                    if kind != HEADERS && kind != CONTINUATION {
                        let frame = self.raw.split_to(9 + len);
                        self.ready.extend_from_slice(&frame);
                        continue;
                    }
                    let mut frame = self.raw.split_to(9 + len);
                    let flags = frame[4];
                    let stream =
                        u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
                    frame.advance(9);
                    if self
                        .take_header_frame(kind, flags, stream, frame.to_vec())
                        .is_err()
                    {
                        // Leave the (now inconsistent) connection to h2,
                        // which will fail it with a compression error.
                        self.mode = Mode::Passthrough;
                    }
                }
            }
        }
    }

    fn take_header_frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        mut payload: Vec<u8>,
    ) -> Result<(), ()> {
        if kind == HEADERS {
            if flags & PADDED != 0 {
                let pad = *payload.first().ok_or(())? as usize;
                if pad + 1 > payload.len() {
                    return Err(());
                }
                payload.truncate(payload.len() - pad);
                payload.remove(0);
            }
            let priority = if flags & PRIORITY != 0 {
                if payload.len() < 5 {
                    return Err(());
                }
                let p: [u8; 5] = payload[..5].try_into().map_err(|_| ())?;
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
            });
        } else {
            let p = self.pending.as_mut().ok_or(())?;
            if p.stream != stream {
                return Err(());
            }
            p.fragment.extend_from_slice(&payload);
        }
        if flags & END_HEADERS == 0 {
            return Ok(());
        }
        let block = self.pending.take().ok_or(())?;
        let mut headers = self.decoder.decode(&block.fragment).map_err(|_| ())?;
        for (name, value) in &mut headers {
            if name.as_slice() == b":authority" {
                *value = fix_authority(value);
            }
        }
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

/// `http://host:port/path` -> `host:port`; anything else unchanged.
fn fix_authority(value: &[u8]) -> Vec<u8> {
    let Some(pos) = value.windows(3).position(|w| w == b"://") else {
        return value.to_vec();
    };
    let rest = &value[pos + 3..];
    let end = rest.iter().position(|&b| b == b'/').unwrap_or(rest.len());
    rest[..end].to_vec()
}

impl<S: AsyncWrite + Unpin> AuthorityFix<S> {
    /// Writes a due GOAWAY once the server is between frames; Ready when
    /// it is out (flushed).
    fn drive_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.goaway {
                GoAway::No | GoAway::Sent => return Poll::Ready(Ok(())),
                GoAway::Due => {
                    if !self.written.at_boundary() {
                        // The server is mid-frame: its next write ends it
                        // and wakes this task (poll_write).
                        return Poll::Pending;
                    }
                    let frame = self.pings.as_ref().map(PingPolicy::goaway);
                    self.goaway = GoAway::Writing(BytesMut::from(&frame.unwrap_or_default()[..]));
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

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.goaway != GoAway::No {
                // The GOAWAY, then the end of the connection for the server.
                return this.drive_goaway(cx);
            }
            let mut tmp = [0u8; 16 * 1024];
            let mut rb = ReadBuf::new(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if rb.filled().is_empty() {
                        // EOF: hand over whatever is left as it is.
                        let rest = this.raw.split();
                        if rest.is_empty() {
                            return Poll::Ready(Ok(()));
                        }
                        this.ready.extend_from_slice(&rest);
                        continue;
                    }
                    this.raw.extend_from_slice(rb.filled());
                    this.process();
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.goaway {
            GoAway::No => {}
            GoAway::Due if !this.written.at_boundary() => {}
            _ => {
                // The connection is closing: the GOAWAY first, then the
                // server's last frames are dropped.
                std::task::ready!(this.drive_goaway(cx))?;
                return Poll::Ready(Ok(buf.len()));
            }
        }
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if let Some(p) = &mut this.pings {
            this.written.feed(&buf[..n], |kind, flags, stream| {
                p.server_frame(kind, flags, stream)
            });
            if this.goaway == GoAway::Due && this.written.at_boundary() {
                // The reader waits for this boundary to send the GOAWAY.
                cx.waker().wake_by_ref();
            }
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
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
        if this.pings.is_some() {
            // Followed frame by frame: one buffer at a time.
            let buf = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &**b);
            return Pin::new(this).poll_write(cx, buf);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.pings.is_none() && self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Fuzz entry point: runs arbitrary client bytes through the rewriter.
/// Must never panic (the bytes come from any client that connects).
/// Test support (`testing` feature).
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub fn fuzz_client_bytes(data: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    // The ping policy too: a flood of PINGs ends the stream with a GOAWAY
    // (written to a sink).
    let conn = tokio::io::join(data, tokio::io::sink());
    let mut fixed = AuthorityFix::new(conn, Some(Duration::from_secs(5)));
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
        let mut fixed = AuthorityFix::new(tokio::io::join(&input[..], tokio::io::sink()), None);
        let mut out = Vec::new();
        fixed.read_to_end(&mut out).await.unwrap();
        out
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
                let kind = [HEADERS, CONTINUATION, 0, 4, 6, 3][(next() % 6) as usize];
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
