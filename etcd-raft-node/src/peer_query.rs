//! Request/response queries between members on the peer port, for what
//! etcd asks over its peer HTTP API: a joining member fetching the
//! membership, a follower forwarding MemberPromote or a lease keepalive to
//! the leader. The payloads are the application's (opaque here).
//!
//! # Byte format
//!
//! On a new connection to the peer listener, the asker sends:
//!
//! ```text
//! "ETRQ" | version: u8 = 1 | cluster_id: u64 BE (0: unknown, for a joining member)
//!        | len: u32 BE | request (len bytes)
//! ```
//!
//! and the listener answers with one status byte (0 answered, 1 cluster id
//! mismatch, 3 unsupported version, 4 no handler) and, when answered,
//! `len: u32 BE | response (len bytes)`; then it closes the connection.

use crate::{Error, Result};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The handshake magic of a query connection.
pub(crate) const QUERY_MAGIC: &[u8; 4] = b"ETRQ";
const VERSION: u8 = 1;
/// Largest request or response.
const MAX_QUERY_BYTES: u32 = 16 << 20;

const ANSWERED: u8 = 0;
const CLUSTER_MISMATCH: u8 = 1;
const BAD_VERSION: u8 = 3;
const NO_HANDLER: u8 = 4;

/// Answers queries: gets the request bytes, returns the response bytes.
pub type QueryHandler =
    Arc<dyn Fn(Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send>> + Send + Sync>;

/// Serves one query connection whose magic was already read.
pub(crate) async fn serve_query<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    cluster_id: u64,
    handler: Option<QueryHandler>,
) -> std::io::Result<()> {
    let version = s.read_u8().await?;
    let theirs = s.read_u64().await?;
    let len = s.read_u32().await?;
    if len > MAX_QUERY_BYTES {
        return Err(std::io::Error::other(format!("query of {len} bytes")));
    }
    let mut req = vec![0u8; len as usize];
    s.read_exact(&mut req).await?;
    let status = if version != VERSION {
        BAD_VERSION
    } else if theirs != 0 && theirs != cluster_id {
        tracing::warn!(
            "refusing a query from cluster {theirs:016x}: this member belongs to cluster {cluster_id:016x}"
        );
        CLUSTER_MISMATCH
    } else if handler.is_none() {
        NO_HANDLER
    } else {
        ANSWERED
    };
    s.write_u8(status).await?;
    if let (ANSWERED, Some(h)) = (status, handler) {
        let resp = h(req).await;
        s.write_u32(resp.len() as u32).await?;
        s.write_all(&resp).await?;
    }
    s.flush().await?;
    Ok(())
}

pub(crate) trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Asks the member listening at `addr` (`host:port`) one question, in
/// TLS with `tls`; `cluster_id` 0 when the asker does not know it yet.
/// Blocking.
pub fn query(
    addr: &str,
    tls: Option<&crate::PeerTlsHandle>,
    cluster_id: u64,
    request: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>> {
    let fail = |why: String| Error::Peer(format!("query to {addr}: {why}"));
    let sock = addr
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .next()
        .ok_or_else(|| fail("no address".into()))?;
    let tcp = TcpStream::connect_timeout(&sock, timeout).map_err(|e| fail(e.to_string()))?;
    tcp.set_read_timeout(Some(timeout))
        .and_then(|()| tcp.set_write_timeout(Some(timeout)))
        .map_err(|e| fail(e.to_string()))?;
    let mut s: Box<dyn ReadWrite> = match tls {
        Some(tls) => Box::new(crate::peer_tls::connect_blocking(tls, addr, tcp).map_err(fail)?),
        None => Box::new(tcp),
    };
    let mut out = Vec::with_capacity(17 + request.len());
    out.extend_from_slice(QUERY_MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&cluster_id.to_be_bytes());
    out.extend_from_slice(&(request.len() as u32).to_be_bytes());
    out.extend_from_slice(request);
    s.write_all(&out).map_err(|e| fail(e.to_string()))?;
    let mut status = [0u8; 1];
    s.read_exact(&mut status)
        .map_err(|e| fail(format!("no answer ({e})")))?;
    match status[0] {
        ANSWERED => {}
        CLUSTER_MISMATCH => {
            return Err(fail(format!(
                "the member belongs to another cluster than {cluster_id:016x}"
            )))
        }
        NO_HANDLER => return Err(fail("the member is not ready to answer".into())),
        other => return Err(fail(format!("refused with status {other}"))),
    }
    let mut len = [0u8; 4];
    s.read_exact(&mut len).map_err(|e| fail(e.to_string()))?;
    let len = u32::from_be_bytes(len);
    if len > MAX_QUERY_BYTES {
        return Err(fail(format!("answer of {len} bytes")));
    }
    let mut resp = vec![0u8; len as usize];
    s.read_exact(&mut resp).map_err(|e| fail(e.to_string()))?;
    Ok(resp)
}
