//! `--grpc-keepalive-min-time`: grpc-go's keepalive enforcement as etcd
//! sets it (`keepalive.EnforcementPolicy{MinTime: --grpc-keepalive-min-time,
//! PermitWithoutStream: false}`). hyper answers every PING and has no such
//! policy, so the client's frames are watched here (through
//! [`crate::ClientFrames`], which already parses them) and the server's
//! written frames are followed by [`FrameCursor`].
//!
//! grpc-go's rule (`http2_server.go`, `handlePing`): a PING from the client
//! (not an ACK) is a strike when it comes sooner than `MinTime` after the
//! previous one, or sooner than two hours when the client has no stream
//! open (pings without streams are not permitted). The server sending
//! HEADERS or DATA clears the strikes at the next PING (a busy connection
//! may ping). More than two strikes: the server answers GOAWAY with
//! `ENHANCE_YOUR_CALM` and debug data `too_many_pings`, and closes the
//! connection.
//!
//! Worked example, min time 5 s, no stream open: PINGs at 0 s, 1 s, 2 s,
//! 3 s are strikes 0, 1, 2, 3: the fourth gets the GOAWAY. With a watch
//! open, PINGs every 10 s are never strikes.
//!
//! A stream is open from the client's HEADERS that start it until the
//! server ends it (END_STREAM on its HEADERS or DATA) or either side
//! resets it (grpc-go counts it in `activeStreams` until then).

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// HTTP/2 frame types and flags used here (RFC 9113 §6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
/// PING's ACK flag.
pub const ACK: u8 = 0x1;
/// DATA's and HEADERS' END_STREAM flag.
pub const END_STREAM: u8 = 0x1;
/// GOAWAY error code ENHANCE_YOUR_CALM.
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// grpc-go's `maxPingStrikes`.
const MAX_PING_STRIKES: u32 = 2;
/// grpc-go's `defaultPingTimeout`: how far apart pings must be when no
/// stream is open (PermitWithoutStream false).
const IDLE_MIN_TIME: Duration = Duration::from_secs(2 * 60 * 60);
/// grpc-go's `defaultKeepalivePolicyMinTime`, what a `MinTime` of 0 means.
const DEFAULT_MIN_TIME: Duration = Duration::from_secs(5 * 60);

/// The enforcement state of one connection.
#[derive(Debug)]
pub struct PingPolicy {
    /// `--grpc-keepalive-min-time`.
    min_time: Duration,
    /// When the previous PING came (None: none yet, never a strike).
    last_ping: Option<Instant>,
    /// Pings that came too soon.
    strikes: u32,
    /// The server sent HEADERS or DATA since the last PING: the next one
    /// clears the strikes instead of being checked.
    reset_strikes: bool,
    /// Streams the client opened that the server has not ended.
    open: HashSet<u32>,
    /// The highest stream the client opened (GOAWAY's last stream id).
    max_stream: u32,
    /// Streams the server ended (or reset) so far.
    ended: u64,
}

impl PingPolicy {
    /// A fresh connection under `min_time` (0: grpc-go's 5 minutes).
    pub fn new(min_time: Duration) -> PingPolicy {
        PingPolicy {
            min_time: if min_time.is_zero() {
                DEFAULT_MIN_TIME
            } else {
                min_time
            },
            last_ping: None,
            strikes: 0,
            reset_strikes: false,
            open: HashSet::new(),
            max_stream: 0,
            ended: 0,
        }
    }

    /// A frame from the client, read at `now`; true when it breaks the
    /// policy (the connection is to get [`goaway`](Self::goaway) and close).
    pub fn client_frame(&mut self, kind: u8, flags: u8, stream: u32, now: Instant) -> bool {
        match kind {
            HEADERS if stream > self.max_stream => {
                self.max_stream = stream;
                self.open.insert(stream);
            }
            RST_STREAM => {
                self.open.remove(&stream);
            }
            PING if flags & ACK == 0 => return self.ping(now),
            _ => {}
        }
        false
    }

    /// Streams the client opened that neither side has ended yet.
    pub fn open_streams(&self) -> usize {
        self.open.len()
    }

    /// Streams the server has ended or reset so far.
    pub fn ended_streams(&self) -> u64 {
        self.ended
    }

    /// A frame the server wrote.
    pub fn server_frame(&mut self, kind: u8, flags: u8, stream: u32) {
        let ends = match kind {
            HEADERS | DATA => {
                self.reset_strikes = true;
                flags & END_STREAM != 0
            }
            RST_STREAM => true,
            _ => false,
        };
        if ends && self.open.remove(&stream) {
            self.ended += 1;
        }
    }

    fn ping(&mut self, now: Instant) -> bool {
        let last = self.last_ping.replace(now);
        if std::mem::take(&mut self.reset_strikes) {
            self.strikes = 0;
            return false;
        }
        let min = if self.open.is_empty() {
            IDLE_MIN_TIME
        } else {
            self.min_time
        };
        if last.is_some_and(|last| now < last + min) {
            self.strikes += 1;
        }
        self.strikes > MAX_PING_STRIKES
    }

    /// The GOAWAY frame grpc-go sends: last stream, ENHANCE_YOUR_CALM,
    /// `too_many_pings`.
    pub fn goaway(&self) -> Vec<u8> {
        goaway_frame(self.max_stream, ENHANCE_YOUR_CALM, b"too_many_pings")
    }
}

/// A GOAWAY frame (RFC 9113 §6.8): last stream id, error code, debug data.
pub fn goaway_frame(last_stream: u32, code: u32, debug: &[u8]) -> Vec<u8> {
    let len = 8 + debug.len();
    let mut f = Vec::with_capacity(9 + len);
    f.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    f.extend_from_slice(&[GOAWAY, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&last_stream.to_be_bytes());
    f.extend_from_slice(&code.to_be_bytes());
    f.extend_from_slice(debug);
    f
}

/// Follows the frames of one direction of an HTTP/2 connection from its
/// first byte (the server's side has no preface string).
#[derive(Debug, Default)]
pub struct FrameCursor {
    /// The frame header being read.
    header: [u8; 9],
    /// Bytes of `header` read so far.
    have: usize,
    /// Payload bytes of the current frame still to come.
    remaining: usize,
}

impl FrameCursor {
    /// Follows `bytes`; `on_frame(type, flags, stream)` for each frame
    /// header completed.
    pub fn feed(&mut self, mut bytes: &[u8], mut on_frame: impl FnMut(u8, u8, u32)) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(bytes.len());
                self.remaining -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == 9 {
                let h = self.header;
                self.have = 0;
                self.remaining = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                on_frame(h[3], h[4], stream);
            }
        }
    }

    /// Between two frames (where another frame may be written).
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn pings_without_a_stream_strike_out_at_the_fourth() {
        let t = Instant::now();
        let mut p = PingPolicy::new(Duration::from_secs(5));
        assert!(!p.client_frame(PING, 0, 0, at(t, 0)));
        assert!(!p.client_frame(PING, ACK, 0, at(t, 0))); // an ACK is no ping
        assert!(!p.client_frame(PING, 0, 0, at(t, 100)));
        assert!(!p.client_frame(PING, 0, 0, at(t, 200)));
        assert!(p.client_frame(PING, 0, 0, at(t, 300)));
        let g = p.goaway();
        assert_eq!(&g[3..5], &[GOAWAY, 0]);
        assert_eq!(&g[13..17], &ENHANCE_YOUR_CALM.to_be_bytes());
        assert_eq!(&g[17..], b"too_many_pings");
    }

    #[test]
    fn pings_during_a_stream_respect_min_time() {
        let t = Instant::now();
        let mut p = PingPolicy::new(Duration::from_secs(5));
        p.client_frame(HEADERS, 0x4, 1, at(t, 0));
        for i in 0..10 {
            assert!(!p.client_frame(PING, 0, 0, at(t, 5 * i)), "ping {i}");
        }
        // Too soon, three times: out.
        assert!(!p.client_frame(PING, 0, 0, at(t, 46)));
        assert!(!p.client_frame(PING, 0, 0, at(t, 47)));
        assert!(p.client_frame(PING, 0, 0, at(t, 48)));
        assert_eq!(&p.goaway()[9..13], &1u32.to_be_bytes());
    }

    #[test]
    fn the_server_writing_clears_the_strikes_and_ends_streams() {
        let t = Instant::now();
        let mut p = PingPolicy::new(Duration::from_secs(5));
        p.client_frame(HEADERS, 0x4, 3, at(t, 0));
        for i in 1..=2 {
            assert!(!p.client_frame(PING, 0, 0, at(t, i)));
        }
        p.server_frame(DATA, 0, 3);
        assert!(!p.client_frame(PING, 0, 0, at(t, 3))); // cleared
        assert!(!p.client_frame(PING, 0, 0, at(t, 4)));
        assert!(!p.client_frame(PING, 0, 0, at(t, 5)));
        // The stream ends: pings now need two hours.
        p.server_frame(HEADERS, END_STREAM | 0x4, 3);
        assert!(!p.client_frame(PING, 0, 0, at(t, 60))); // cleared again
        assert!(!p.client_frame(PING, 0, 0, at(t, 120)));
        assert!(!p.client_frame(PING, 0, 0, at(t, 180)));
        assert!(p.client_frame(PING, 0, 0, at(t, 240)));
    }

    #[test]
    fn the_cursor_finds_frames_across_writes() {
        let mut frames = Vec::new();
        let mut c = FrameCursor::default();
        let mut bytes = vec![0, 0, 3, HEADERS, 0x5, 0, 0, 0, 1, b'a', b'b', b'c'];
        bytes.extend_from_slice(&[0, 0, 0, PING, ACK, 0, 0, 0, 0]);
        for chunk in bytes.chunks(4) {
            c.feed(chunk, |k, f, s| frames.push((k, f, s)));
        }
        assert!(c.at_boundary());
        assert_eq!(frames, [(HEADERS, 0x5, 1), (PING, ACK, 0)]);
        c.feed(&bytes[..5], |_, _, _| {});
        assert!(!c.at_boundary());
    }
}
