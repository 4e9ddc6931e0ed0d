//! Benchmarks of the etcd-compatible store: criterion micro-benchmarks in
//! `benches/` and the `loadgen` binary, a load generator that speaks etcd's
//! gRPC API and so measures this server and the real etcd alike.
//! Results and the exact commands are in `benches/RESULTS.md`.

pub mod h2_client;

use anyhow::Context as _;
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// Latency summary of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Requests that succeeded.
    pub ok: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latencies in microseconds.
    pub latencies: Histogram<u64>,
}

impl Summary {
    /// Successful requests per second.
    pub fn qps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// A latency percentile in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        self.latencies.value_at_quantile(p / 100.0) as f64 / 1000.0
    }

    /// The report printed by `loadgen`, one `name: value` per line.
    pub fn report(&self) -> String {
        format!(
            "requests: {}\nerrors: {}\nelapsed_s: {:.3}\nqps: {:.1}\nlatency_ms_mean: {:.3}\n\
             latency_ms_p50: {:.3}\nlatency_ms_p90: {:.3}\nlatency_ms_p99: {:.3}\n\
             latency_ms_p99.9: {:.3}\nlatency_ms_max: {:.3}\n",
            self.ok,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.qps(),
            self.latencies.mean() / 1000.0,
            self.percentile_ms(50.0),
            self.percentile_ms(90.0),
            self.percentile_ms(99.0),
            self.percentile_ms(99.9),
            self.latencies.max() as f64 / 1000.0,
        )
    }
}

/// The key with number `n`, zero-padded to `size` bytes (like etcd's
/// benchmark tool with sequential keys).
pub fn key(n: u64, size: usize) -> Vec<u8> {
    let s = format!("{n:0size$}");
    s.into_bytes()
}

/// Client TLS for `https://` endpoints, as etcdctl's `--cacert --cert
/// --key` (PEM files).
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    /// CA certificates that signed the server's certificate.
    pub cacert: Option<std::path::PathBuf>,
    /// Client certificate, sent when the server asks for one.
    pub cert: Option<std::path::PathBuf>,
    /// Its private key.
    pub key: Option<std::path::PathBuf>,
}

impl TlsFiles {
    fn config(&self) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let read = |p: &std::path::Path| {
            std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
        };
        let mut c = ClientTlsConfig::new();
        if let Some(ca) = &self.cacert {
            c = c.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            c = c.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(c)
    }
}

/// The URL of each of `conns` (at least one) connections: the
/// comma-separated client URLs in `endpoints`, round-robin.
pub fn spread(endpoints: &str, conns: usize) -> Vec<&str> {
    let urls: Vec<&str> = endpoints.split(',').collect();
    (0..conns.max(1)).map(|i| urls[i % urls.len()]).collect()
}

/// Opens `conns` (at least one) gRPC connections, spread round-robin over
/// the comma-separated client URLs in `endpoints`.
pub async fn connect(endpoints: &str, conns: usize) -> anyhow::Result<Vec<Channel>> {
    connect_with(endpoints, conns, &TlsFiles::default()).await
}

/// [`connect`], with `tls` for `https://` endpoints.
pub async fn connect_with(
    endpoints: &str,
    conns: usize,
    tls: &TlsFiles,
) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(conns.max(1));
    for url in spread(endpoints, conns) {
        let mut ep = Endpoint::from_shared(url.to_string())?;
        if url.starts_with("https://") {
            ep = ep.tls_config(tls.config()?)?;
        }
        let ch = ep
            .connect()
            .await
            .with_context(|| format!("cannot connect to {url}"))?;
        channels.push(ch);
    }
    Ok(channels)
}

/// What one client task of a load run returns: its latencies in
/// microseconds, successes and failures.
pub type ClientResult = anyhow::Result<(Histogram<u64>, u64, u64)>;

/// Waits for every client task of a run started at `start` and merges
/// their results.
pub async fn join_clients(
    tasks: Vec<tokio::task::JoinHandle<ClientResult>>,
    start: Instant,
) -> anyhow::Result<Summary> {
    let mut latencies = Histogram::<u64>::new(3)?;
    let (mut ok, mut errors) = (0, 0);
    for t in tasks {
        let (h, o, e) = t.await??;
        latencies.add(h)?;
        ok += o;
        errors += e;
    }
    Ok(Summary {
        ok,
        errors,
        elapsed: start.elapsed(),
        latencies,
    })
}
