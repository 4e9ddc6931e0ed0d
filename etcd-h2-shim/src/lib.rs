//! What the etcd-compatible server reads every client connection through,
//! before hyper/h2 sees a byte: [`ClientFrames`] wraps the connection's
//! byte stream (plain or TLS), follows the client's HTTP/2 frames and the
//! server's, and
//! - rewrites the `:authority` etcdctl 3.4 sends (`http://host:port`) to
//!   what h2 accepts (`host:port`);
//! - enforces grpc-go's keepalive policy, `--grpc-keepalive-min-time`
//!   ([`keepalive`]): a client pinging too often gets GOAWAY
//!   `too_many_pings`;
//! - bounds what one client can make it hold to h2's own limits (frames
//!   streamed through, header blocks of at most a few frames, decoded
//!   header lists counted);
//! - gathers the server's writes into fewer syscalls ([`coalesce`]): a
//!   flush first lets the other answers already queued add their frames.
//!
//! A connection that is not HTTP/2 (HTTP/1.1: the JSON gateway, `/health`,
//! `/metrics`) passes through unchanged.
//!
//! ```
//! use etcd_h2_shim::ClientFrames;
//! use tokio::io::AsyncReadExt;
//!
//! # tokio_test_block_on(async {
//! let input = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
//! let conn = tokio::io::join(&input[..], tokio::io::sink());
//! let mut shim = ClientFrames::new(conn, None);
//! let mut seen = Vec::new();
//! shim.read_to_end(&mut seen).await.unwrap();
//! assert_eq!(seen, input); // not HTTP/2: untouched
//! # });
//! # fn tokio_test_block_on(f: impl std::future::Future<Output = ()>) {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```
//!
//! No RocksDB and no server here: the fuzz target (`fuzz/h2`,
//! `client_frames`) builds this crate alone and runs in CI.

mod client_frames;
pub mod coalesce;
pub mod keepalive;

#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub use client_frames::fuzz_client_bytes;
pub use client_frames::{ClientFrames, MAX_CONTINUATIONS, MAX_DECODED_HEADERS, MAX_FRAME};
