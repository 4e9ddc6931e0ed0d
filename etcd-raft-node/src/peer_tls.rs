//! TLS on the peer port: every connection between members (raft message
//! streams, snapshot streams, "ETRQ" queries) runs inside TLS when the
//! transport has a [`PeerTls`]. The framing inside is unchanged.
//!
//! The provider (built from etcd's `--peer-*` flags by the server) hands out
//! the listener's and the dialer's rustls configurations for each new
//! connection (so certificate files can be rotated), and checks a verified
//! peer certificate beyond its CA (`--peer-cert-allowed-cn`,
//! `--peer-cert-allowed-hostname`). A connection that fails any check is
//! closed before a byte of the peer protocol is read.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// TLS settings of the peer port.
pub trait PeerTls: Send + Sync {
    /// The listener's configuration for a new connection.
    fn server(&self) -> Arc<rustls::ServerConfig>;
    /// The dialer's configuration for a new connection.
    fn client(&self) -> Arc<rustls::ClientConfig>;
    /// Checks the verified certificate (DER) a connecting peer presented;
    /// `Err` says why it is refused. Called only when it sent one.
    fn check_peer(&self, leaf: &[u8]) -> Result<(), String>;
}

/// A [`PeerTls`] to put in a config (`Debug` for the config's sake).
#[derive(Clone)]
pub struct PeerTlsHandle(pub Arc<dyn PeerTls>);

impl std::fmt::Debug for PeerTlsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

/// A peer connection, plain or TLS.
pub(crate) trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerIo for T {}

/// A connected peer stream.
pub(crate) type PeerStream = Box<dyn PeerIo>;

/// The host part of `host:port` (brackets of an IPv6 literal removed), as
/// the name the peer's certificate must carry.
fn server_name(addr: &str) -> Result<rustls::pki_types::ServerName<'static>, String> {
    let host = match addr.rsplit_once(':') {
        Some((h, _)) => h,
        None => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("{host:?} is no valid TLS server name: {e}"))
}

/// TLS client handshake over `tcp` to the member at `addr` (the stream's
/// type kept: the message stream takes the session apart, `tcp_outbox`).
pub(crate) async fn connect(
    tls: &PeerTlsHandle,
    addr: &str,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let name = server_name(addr)?;
    let c = tokio_rustls::TlsConnector::from(tls.0.client());
    c.connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {addr} failed: {e}"))
}

/// TLS server handshake of an accepted connection, then the peer checks.
pub(crate) async fn accept(
    tls: &PeerTlsHandle,
    tcp: TcpStream,
) -> Result<tokio_rustls::server::TlsStream<TcpStream>, String> {
    let a = tokio_rustls::TlsAcceptor::from(tls.0.server());
    let s = a
        .accept(tcp)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    if let Some(leaf) = s.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        tls.0.check_peer(leaf.as_ref())?;
    }
    Ok(s)
}

/// Blocking TLS client stream (the query client runs on plain threads).
pub(crate) fn connect_blocking(
    tls: &PeerTlsHandle,
    addr: &str,
    tcp: std::net::TcpStream,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>, String> {
    let name = server_name(addr)?;
    let conn = rustls::ClientConnection::new(tls.0.client(), name)
        .map_err(|e| format!("TLS to {addr}: {e}"))?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}
