//! The gRPC server knobs, on this server and the real etcd 3.4 alike,
//! seen on the wire by a raw HTTP/2 client: `--max-concurrent-streams` is
//! what the server's SETTINGS frame advertises, and with
//! `--grpc-keepalive-interval 1s` the server PINGs the connection; a
//! client pinging more often than `--grpc-keepalive-min-time` allows gets
//! GOAWAY `ENHANCE_YOUR_CALM` `too_many_pings` and is disconnected.

mod common;

use common::{Kind, Server};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One HTTP/2 frame: (type, flags, payload).
fn read_frame(s: &mut TcpStream) -> (u8, u8, Vec<u8>) {
    let mut h = [0u8; 9];
    s.read_exact(&mut h).expect("frame header");
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).expect("frame payload");
    (h[3], h[4], payload)
}

fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const MAX_CONCURRENT_STREAMS: u16 = 3;

/// Connects with prior knowledge; returns the server's advertised
/// MAX_CONCURRENT_STREAMS and whether it sent a PING within 10 s.
fn observe(kind: Kind) -> (Option<u32>, bool) {
    let s = Server::start_with(
        kind,
        &[
            "--max-concurrent-streams",
            "7",
            "--grpc-keepalive-interval",
            "1s",
        ],
    );
    let addr = s.client_url.trim_start_matches("http://").to_string();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    c.write_all(&frame(SETTINGS, 0, &[])).unwrap();
    let (kind_, flags, payload) = read_frame(&mut c);
    assert_eq!((kind_, flags), (SETTINGS, 0), "the server's SETTINGS first");
    let streams = payload.chunks(6).find_map(|p| {
        (u16::from_be_bytes([p[0], p[1]]) == MAX_CONCURRENT_STREAMS)
            .then(|| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
    });
    c.write_all(&frame(SETTINGS, 1, &[])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pinged = false;
    while Instant::now() < deadline && !pinged {
        let (t, flags, payload) = read_frame(&mut c);
        if t == PING && flags & 1 == 0 {
            pinged = true;
            c.write_all(&frame(PING, 1, &payload)).unwrap();
        }
    }
    (streams, pinged)
}

#[test]
fn max_streams_and_keepalive_match_etcd() {
    let ours = observe(Kind::Ours);
    let real = observe(Kind::Real);
    assert_eq!(ours, (Some(7), true));
    assert_eq!(ours, real);
}

/// A client that opens no stream and pings back to back: what the server
/// answers, frame by frame, until it closes the connection (or 60 frames:
/// a server that never closes fails the test).
fn ping_flood(kind: Kind, extra: &[&str]) -> (Vec<(u8, Vec<u8>)>, bool) {
    let s = Server::start_with(kind, extra);
    let addr = s.client_url.trim_start_matches("http://").to_string();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    c.write_all(&frame(SETTINGS, 0, &[])).unwrap();
    for i in 0..5u64 {
        // Writes after the server closed may fail: what it sent is read below.
        let _ = c.write_all(&frame(PING, 0, &i.to_be_bytes()));
    }
    let mut frames = Vec::new();
    let mut closed = false;
    for _ in 0..60 {
        let mut h = [0u8; 9];
        if let Err(e) = c.read_exact(&mut h) {
            // The end of the connection (a reset counts); not a timeout.
            closed = !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            );
            break;
        }
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let mut payload = vec![0u8; len];
        c.read_exact(&mut payload).expect("frame payload");
        if h[3] == SETTINGS && h[4] == 0 {
            let _ = c.write_all(&frame(SETTINGS, 1, &[]));
        }
        frames.push((h[3], payload));
    }
    (frames, closed)
}

/// The GOAWAY among `frames`: (error code, debug data).
fn goaway(frames: &[(u8, Vec<u8>)]) -> Option<(u32, String)> {
    frames.iter().find(|(t, _)| *t == GOAWAY).map(|(_, p)| {
        let code = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        (code, String::from_utf8_lossy(&p[8..]).into_owned())
    })
}

#[test]
fn too_many_pings_get_goaway_like_etcd() {
    let (real, real_closed) = ping_flood(Kind::Real, &[]);
    let (ours, ours_closed) = ping_flood(Kind::Ours, &[]);
    let expected = Some((0xb, "too_many_pings".to_string()));
    assert_eq!(goaway(&real), expected, "etcd: {real:?}");
    assert_eq!(goaway(&ours), expected, "ours: {ours:?}");
    // The connection ends after it: the GOAWAY is the last frame.
    assert!(
        real_closed && ours_closed,
        "etcd {real_closed}, ours {ours_closed}"
    );
    assert_eq!(ours.last().map(|f| f.0), Some(GOAWAY), "{ours:?}");
    // The flag is read: a zero min time is grpc-go's 5 minutes, and
    // still no ping without a stream is allowed within 2 hours.
    let (ours, closed) = ping_flood(Kind::Ours, &["--grpc-keepalive-min-time", "0s"]);
    assert_eq!(goaway(&ours), expected, "ours: {ours:?}");
    assert!(closed);
}
