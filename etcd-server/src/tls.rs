//! Client TLS, with etcd's flags and semantics (etcd's `pkg/transport`
//! `TLSInfo.ServerConfig`):
//!
//! | flag | effect |
//! |---|---|
//! | `--cert-file`, `--key-file` | the server's certificate chain and key (PEM) |
//! | `--trusted-ca-file` | CA bundle client certificates are verified against; as in etcd, setting it *requires* a client certificate |
//! | `--client-cert-auth` | require a client certificate (needs `--trusted-ca-file`) |
//! | `--client-crl-file` | revoked client certificates (PEM or DER CRL) |
//! | `--client-cert-allowed-hostname` | the client certificate must name this host (SAN DNS or IP) |
//! | `--auto-tls` | a self-signed certificate made at start (when no `--cert-file`) |
//! | `--self-signed-cert-validity` | its validity in years |
//! | `--cipher-suites` | TLS 1.2 suites, by Go's names (TLS 1.3 suites are fixed, as in Go) |
//! | `--tls-min-version`, `--tls-max-version` | `TLS1.2` or `TLS1.3` (rustls has no 1.0/1.1) |
//!
//! Certificates are re-read for new connections when a file's modification
//! time or size changed (operators rotate them without a restart, as with
//! etcd); a file that does not load keeps the previous configuration and
//! logs why. Established connections keep the certificate they started with.
//!
//! The verified client certificate's common name reaches the engine in the
//! [`RequestContext`](etcd_core::RequestContext) (`cert_common_name`),
//! through the connection's [`ClientConnInfo`].

use etcd_h2_shim::ClientFrames;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client TLS settings from the flags, checked at startup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// `--cert-file`: PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// `--key-file`: PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// `--trusted-ca-file`: PEM CA certificates for client certificates.
    pub trusted_ca_file: Option<PathBuf>,
    /// `--client-cert-auth`.
    pub client_cert_auth: bool,
    /// `--client-crl-file`.
    pub crl_file: Option<PathBuf>,
    /// `--client-cert-allowed-hostname`.
    pub allowed_hostname: Option<String>,
    /// `--auto-tls`: where the self-signed pair is kept
    /// (`<data-dir>/fixtures/client`, as etcd) and the hosts it names.
    pub auto_tls: Option<AutoTls>,
    /// `--cipher-suites`, Go names; empty: rustls' defaults.
    pub cipher_suites: Vec<String>,
    /// `--tls-min-version` (`TLS1.2` when unset).
    pub min_version: Option<String>,
    /// `--tls-max-version` (`TLS1.3` when unset).
    pub max_version: Option<String>,
}

/// `--auto-tls`: a self-signed certificate generated at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoTls {
    /// Directory of `cert.pem` and `key.pem`.
    pub dir: PathBuf,
    /// Host names and IPs the certificate names (the listen URLs' hosts).
    pub hosts: Vec<String>,
    /// `--self-signed-cert-validity`, in years.
    pub validity_years: u32,
}

impl TlsSettings {
    /// Whether anything asks for TLS (an `https://` URL needs this).
    pub fn has_server_cert(&self) -> bool {
        self.cert_file.is_some() || self.auto_tls.is_some()
    }

    /// Checks the combination of flags (before anything starts).
    pub fn validate(&self) -> Result<(), String> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err("--cert-file and --key-file must be given together".into());
        }
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return Err("--client-cert-auth needs --trusted-ca-file".into());
        }
        if self.crl_file.is_some() && self.trusted_ca_file.is_none() {
            return Err("--client-crl-file needs --trusted-ca-file".into());
        }
        if self.allowed_hostname.is_some() && self.trusted_ca_file.is_none() {
            return Err("--client-cert-allowed-hostname needs --trusted-ca-file".into());
        }
        protocol_versions(self)?;
        cipher_suites(&self.cipher_suites)?;
        Ok(())
    }

    /// The files the configuration is built from (watched for rotation).
    fn files(&self) -> Vec<PathBuf> {
        [
            &self.cert_file,
            &self.key_file,
            &self.trusted_ca_file,
            &self.crl_file,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }
}

/// TLS versions rustls offers: `TLS1.2`, `TLS1.3` (etcd's names).
fn protocol_versions(
    s: &TlsSettings,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let rank = |flag: &str, v: &Option<String>, default: u8| -> Result<u8, String> {
        match v.as_deref() {
            None | Some("") => Ok(default),
            Some("TLS1.2") => Ok(2),
            Some("TLS1.3") => Ok(3),
            Some(v @ ("TLS1.0" | "TLS1.1")) => Err(format!(
                "--{flag}={v}: TLS versions below 1.2 are not supported by this server"
            )),
            Some(v) => Err(format!(
                "--{flag}={v:?}: unknown TLS version (use TLS1.2 or TLS1.3)"
            )),
        }
    };
    let min = rank("tls-min-version", &s.min_version, 2)?;
    let max = rank("tls-max-version", &s.max_version, 3)?;
    if min > max {
        return Err("--tls-min-version is above --tls-max-version".into());
    }
    if !s.cipher_suites.is_empty() && min == 3 {
        // etcd refuses the same: suites cannot be chosen for TLS 1.3.
        return Err("--cipher-suites cannot be used with --tls-min-version=TLS1.3".into());
    }
    Ok([(2, &rustls::version::TLS12), (3, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(r, _)| (min..=max).contains(r))
        .map(|(_, v)| v)
        .collect())
}

/// Go's names of the TLS 1.2 suites rustls implements.
const GO_SUITES: &[(&str, rustls::CipherSuite)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// The crypto provider with the chosen TLS 1.2 suites (TLS 1.3's are
/// always on, as in Go). A suite Go knows but rustls does not implement
/// (CBC, RC4, 3DES) is a startup error naming it.
fn cipher_suites(names: &[String]) -> Result<rustls::crypto::CryptoProvider, String> {
    let mut provider = rustls::crypto::ring::default_provider();
    if names.is_empty() {
        return Ok(provider);
    }
    let mut wanted = Vec::new();
    for n in names {
        let Some((_, suite)) = GO_SUITES.iter().find(|(g, _)| g == n) else {
            return Err(format!(
                "--cipher-suites: {n:?} is not supported (supported: {})",
                GO_SUITES
                    .iter()
                    .map(|(g, _)| *g)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        };
        wanted.push(*suite);
    }
    provider.cipher_suites.retain(|s| {
        matches!(s, rustls::SupportedCipherSuite::Tls13(_)) || wanted.contains(&s.suite())
    });
    Ok(provider)
}

/// Reads the files and builds a rustls configuration.
fn build(s: &TlsSettings) -> Result<ServerConfig, String> {
    let (cert_file, key_file) = match (&s.cert_file, &s.key_file, &s.auto_tls) {
        (Some(c), Some(k), _) => (c.clone(), k.clone()),
        (None, None, Some(auto)) => self_signed(auto)?,
        _ => return Err("no server certificate (--cert-file/--key-file or --auto-tls)".into()),
    };
    let (chain, key) = read_pair(&cert_file, &key_file)?;
    let provider = Arc::new(cipher_suites(&s.cipher_suites)?);
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&protocol_versions(s)?)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &s.trusted_ca_file {
        // etcd: a trusted CA file (or --client-cert-auth) requires and
        // verifies a client certificate.
        Some(ca) => {
            let roots = read_roots(ca)?;
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(crl) = &s.crl_file {
                v = v.with_crls(read_crls(crl)?);
            }
            let verifier = v
                .build()
                .map_err(|e| format!("client certificate verifier: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} / {}: {e}", cert_file.display(), key_file.display()))?;
    // gRPC needs h2; /health, /version and /metrics are also served over
    // HTTP/1.1 on the same port, as etcd does.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A PEM certificate chain (leaf first) and its private key.
fn read_pair(
    cert_file: &Path,
    key_file: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("{}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("{}: no usable private key: {e}", key_file.display()))?;
    Ok((chain, key))
}

/// The CA certificates of a PEM bundle.
fn read_roots(ca: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CA certificate in it", ca.display()));
    }
    Ok(roots)
}

/// CRLs from a PEM file (any number) or a single DER one.
fn read_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let pem: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if !pem.is_empty() {
        return Ok(pem);
    }
    Ok(vec![CertificateRevocationListDer::from(bytes)])
}

/// `--auto-tls`: makes (or reuses) a self-signed pair in `auto.dir`.
fn self_signed(auto: &AutoTls) -> Result<(PathBuf, PathBuf), String> {
    let cert = auto.dir.join("cert.pem");
    let key = auto.dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(&auto.dir).map_err(|e| format!("{}: {e}", auto.dir.display()))?;
    let mut params = rcgen::CertificateParams::new(auto.hosts.clone())
        .map_err(|e| format!("--auto-tls: {e}"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "etcd");
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now;
    params.not_after = now + time::Duration::days(365 * i64::from(auto.validity_years.max(1)));
    let pair = rcgen::KeyPair::generate().map_err(|e| format!("--auto-tls: {e}"))?;
    let c = params
        .self_signed(&pair)
        .map_err(|e| format!("--auto-tls: {e}"))?;
    write_private(&key, pair.serialize_pem().as_bytes())?;
    std::fs::write(&cert, c.pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
    tracing::info!(cert = %cert.display(), hosts = ?auto.hosts, "generated a self-signed client certificate (--auto-tls)");
    Ok((cert, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// What the files looked like when the configuration was built.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &[PathBuf]) -> Stamp {
    files
        .iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// A value built from certificate files, rebuilt for the next caller when
/// one of them changed (modification time or size); when the new files do
/// not load, the previous value stays and the error is logged once.
struct Reloading<T> {
    /// What is reloaded, for the logs ("client TLS", "peer TLS").
    what: &'static str,
    files: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<T, String> + Send + Sync>,
    current: parking_lot::Mutex<(Stamp, Arc<T>)>,
}

impl<T> Reloading<T> {
    /// Builds the first value; an error here stops the server from starting.
    fn new(
        what: &'static str,
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, String> {
        let st = stamp(&files);
        let first = Arc::new(build()?);
        Ok(Reloading {
            what,
            files,
            build: Box::new(build),
            current: parking_lot::Mutex::new((st, first)),
        })
    }

    /// The current value, rebuilt first if a file changed.
    fn get(&self) -> Arc<T> {
        let now = stamp(&self.files);
        let mut cur = self.current.lock();
        if now != cur.0 {
            match (self.build)() {
                Ok(v) => {
                    tracing::info!(files = ?self.files, "{} certificate files changed: reloaded", self.what);
                    *cur = (now, Arc::new(v));
                }
                Err(e) => {
                    tracing::error!(
                        "{} certificate files changed but do not load ({e}); keeping the previous certificates",
                        self.what
                    );
                    // Do not retry on every connection until they change again.
                    cur.0 = now;
                }
            }
        }
        cur.1.clone()
    }
}

/// The client listeners' TLS configuration, rebuilt when its files change.
pub struct TlsReloader {
    /// `--client-cert-allowed-hostname`, checked after each handshake.
    allowed_hostname: Option<String>,
    /// `--client-cert-auth`: only then is a certificate's common name the
    /// caller's identity for auth (as in etcd).
    cert_identity: bool,
    config: Reloading<ServerConfig>,
}

impl TlsReloader {
    /// Loads the configuration; an error here stops the server from
    /// starting (etcd refuses to start with unreadable certificates).
    pub fn new(settings: TlsSettings) -> Result<TlsReloader, String> {
        settings.validate()?;
        let allowed_hostname = settings.allowed_hostname.clone();
        let cert_identity = settings.client_cert_auth;
        let files = settings.files();
        let config = Reloading::new("client TLS", files, move || build(&settings))?;
        Ok(TlsReloader {
            allowed_hostname,
            cert_identity,
            config,
        })
    }

    /// The configuration for a new connection (see `Reloading`).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.get()
    }

    /// Runs the TLS handshake of an accepted connection; None (logged)
    /// when it fails or the client certificate is not allowed.
    /// `ping_min_time`: the keepalive policy enforced on the connection.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        remote: SocketAddr,
        ping_min_time: Option<std::time::Duration>,
    ) -> Option<ClientConn> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config());
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::warn!(%remote, "rejected connection: TLS handshake failed: {e}");
                return None;
            }
            Err(_) => {
                tracing::warn!(%remote, "rejected connection: TLS handshake timed out");
                return None;
            }
        };
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec());
        let common_name = match &leaf {
            Some(der) => match parse_leaf(der, self.allowed_hostname.as_deref()) {
                Ok(cn) => cn,
                Err(e) => {
                    tracing::warn!(%remote, "rejected connection: {e}");
                    return None;
                }
            },
            None => None,
        };
        Some(ClientConn {
            stream: ClientFrames::new(Stream::Tls(Box::new(tls)), ping_min_time),
            info: ClientConnInfo {
                remote: Some(remote),
                common_name: common_name.filter(|_| self.cert_identity),
            },
        })
    }
}

/// The verified client certificate's common name, after checking
/// `--client-cert-allowed-hostname` (a SAN DNS name or IP, or the CN).
fn parse_leaf(der: &[u8], allowed_hostname: Option<&str>) -> Result<Option<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string);
    if let Some(host) = allowed_hostname {
        let mut names: Vec<String> = cn.iter().cloned().collect();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(ip) => {
                        let ip = match ip.len() {
                            4 => <[u8; 4]>::try_from(*ip)
                                .map(|a| std::net::IpAddr::from(a).to_string())
                                .ok(),
                            16 => <[u8; 16]>::try_from(*ip)
                                .map(|a| std::net::IpAddr::from(a).to_string())
                                .ok(),
                            _ => None,
                        };
                        names.extend(ip);
                    }
                    _ => {}
                }
            }
        }
        if !names.iter().any(|n| n.eq_ignore_ascii_case(host)) {
            return Err(format!(
                "certificate is not valid for the allowed hostname {host:?} (--client-cert-allowed-hostname / --peer-cert-allowed-hostname); it names {names:?}"
            ));
        }
    }
    Ok(cn)
}

/// What the services learn about a connection (tonic hands it to every
/// request as an extension).
#[derive(Clone, Debug, Default)]
pub struct ClientConnInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// Common name of its verified TLS certificate, under
    /// `--client-cert-auth` (the caller's identity for auth then).
    pub common_name: Option<String>,
}

/// The byte stream of a client connection, plain or TLS.
pub enum Stream {
    /// `http://` listeners.
    Plain(TcpStream),
    /// `https://` listeners.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted client connection, ready for the gRPC/HTTP server.
pub struct ClientConn {
    stream: ClientFrames<Stream>,
    info: ClientConnInfo,
}

impl ClientConn {
    /// A plain TCP connection; `ping_min_time` as for
    /// [`TlsReloader::accept`].
    pub fn plain(
        tcp: TcpStream,
        remote: SocketAddr,
        ping_min_time: Option<std::time::Duration>,
    ) -> ClientConn {
        ClientConn {
            stream: ClientFrames::new(Stream::Plain(tcp), ping_min_time),
            info: ClientConnInfo {
                remote: Some(remote),
                common_name: None,
            },
        }
    }
}

impl tonic::transport::server::Connected for ClientConn {
    type ConnectInfo = ClientConnInfo;
    fn connect_info(&self) -> ClientConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for ClientConn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientConn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Peer TLS from etcd's `--peer-*` flags (the same files and rules as the
/// client side, plus `--peer-cert-allowed-cn` and
/// `--peer-cert-allowed-hostname`). A member verifies the members it dials
/// against `--peer-trusted-ca-file` and presents its own certificate to
/// them; the listener requires a certificate from that CA (as etcd does
/// when a trusted CA file is given). Files are re-read for new connections.
pub struct PeerTlsFiles {
    /// The listener's and the dialer's configurations, rebuilt together.
    configs: Reloading<(Arc<ServerConfig>, Arc<rustls::ClientConfig>)>,
    /// `--peer-cert-allowed-cn`.
    allowed_cn: Option<String>,
    /// `--peer-cert-allowed-hostname`.
    allowed_hostname: Option<String>,
}

/// The peer TLS flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerTlsSettings {
    /// Files, CRL, suites and versions, as for clients (`allowed_hostname`
    /// unused; `auto_tls`: `--peer-auto-tls`, in `<data-dir>/fixtures/peer`).
    pub files: TlsSettings,
    /// `--peer-cert-allowed-cn`.
    pub allowed_cn: Option<String>,
    /// `--peer-cert-allowed-hostname`.
    pub allowed_hostname: Option<String>,
}

impl PeerTlsSettings {
    /// Checks the combination of flags.
    pub fn validate(&self) -> Result<(), String> {
        let f = &self.files;
        if f.cert_file.is_none() && f.key_file.is_none() && f.auto_tls.is_some() {
            // --peer-auto-tls: encryption only, as etcd (no verification).
            return Ok(());
        }
        if f.cert_file.is_none() || f.key_file.is_none() {
            return Err("peer TLS needs --peer-cert-file and --peer-key-file".into());
        }
        if f.trusted_ca_file.is_none() {
            return Err(
                "peer TLS needs --peer-trusted-ca-file (to verify the other members' certificates)"
                    .into(),
            );
        }
        if self.allowed_cn.is_some() && self.allowed_hostname.is_some() {
            return Err(
                "--peer-cert-allowed-cn and --peer-cert-allowed-hostname cannot both be set".into(),
            );
        }
        f.validate()
    }
}

/// The dialer's configuration: verify members against the trusted CA,
/// present this member's certificate.
fn build_client(s: &TlsSettings) -> Result<rustls::ClientConfig, String> {
    if s.cert_file.is_none() && s.auto_tls.is_some() {
        // --peer-auto-tls: etcd's InsecureSkipVerify. The handshake's
        // signatures are still checked; the certificate is not.
        let provider = Arc::new(cipher_suites(&s.cipher_suites)?);
        return Ok(
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(&protocol_versions(s)?)
                .map_err(|e| format!("TLS versions: {e}"))?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
                .with_no_client_auth(),
        );
    }
    let (Some(cert), Some(key), Some(ca)) = (&s.cert_file, &s.key_file, &s.trusted_ca_file) else {
        return Err("peer TLS needs a certificate, a key and a trusted CA file".into());
    };
    let (chain, key_der) = read_pair(cert, key)?;
    let provider = Arc::new(cipher_suites(&s.cipher_suites)?);
    rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&protocol_versions(s)?)
        .map_err(|e| format!("TLS versions: {e}"))?
        .with_root_certificates(read_roots(ca)?)
        .with_client_auth_cert(chain, key_der)
        .map_err(|e| format!("{} / {}: {e}", cert.display(), key.display()))
}

/// `--peer-auto-tls`'s verifier: any certificate (etcd's
/// `InsecureSkipVerify`), with the handshake signatures still verified.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl PeerTlsFiles {
    /// Loads the peer certificates; an error stops the server from starting.
    pub fn new(settings: PeerTlsSettings) -> Result<PeerTlsFiles, String> {
        settings.validate()?;
        let mut files = settings.files.clone();
        files.allowed_hostname = None;
        if files.cert_file.is_some() {
            files.auto_tls = None;
        }
        files.validate()?;
        let watched = files.files();
        let configs = Reloading::new("peer TLS", watched, move || {
            Ok((Arc::new(build(&files)?), Arc::new(build_client(&files)?)))
        })?;
        Ok(PeerTlsFiles {
            configs,
            allowed_cn: settings.allowed_cn,
            allowed_hostname: settings.allowed_hostname,
        })
    }
}

impl etcd_core::PeerTls for PeerTlsFiles {
    fn server(&self) -> Arc<ServerConfig> {
        self.configs.get().0.clone()
    }

    fn client(&self) -> Arc<rustls::ClientConfig> {
        self.configs.get().1.clone()
    }

    fn check_peer(&self, leaf: &[u8]) -> Result<(), String> {
        let cn = parse_leaf(leaf, self.allowed_hostname.as_deref())?;
        if let Some(want) = &self.allowed_cn {
            if cn.as_deref() != Some(want.as_str()) {
                return Err(format!(
                    "peer certificate has common name {cn:?}, --peer-cert-allowed-cn is {want:?}"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(cn: &str, sans: &[&str]) -> Vec<u8> {
        let mut p =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn common_name_and_allowed_hostname() {
        let der = leaf("alice", &["client.example", "10.0.0.7"]);
        assert_eq!(parse_leaf(&der, None).unwrap().as_deref(), Some("alice"));
        for ok in ["client.example", "CLIENT.example", "10.0.0.7", "alice"] {
            assert!(parse_leaf(&der, Some(ok)).is_ok(), "{ok}");
        }
        let err = parse_leaf(&der, Some("other.example")).unwrap_err();
        assert!(err.contains("--client-cert-allowed-hostname"), "{err}");
        assert!(parse_leaf(b"garbage", None).is_err());
    }

    #[test]
    fn go_cipher_suite_names_map_to_rustls() {
        let p = cipher_suites(&["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256".into()]).unwrap();
        let tls12: Vec<_> = p
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, rustls::SupportedCipherSuite::Tls12(_)))
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            tls12,
            [rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
        );
        // TLS 1.3 suites stay (as in Go).
        assert!(p
            .cipher_suites
            .iter()
            .any(|s| matches!(s, rustls::SupportedCipherSuite::Tls13(_))));
        assert!(cipher_suites(&["TLS_RSA_WITH_AES_128_CBC_SHA".into()])
            .unwrap_err()
            .contains("not supported"));
    }
}
