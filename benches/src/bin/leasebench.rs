//! `leasebench`: lease keepalive throughput over etcd's v3 gRPC API (like
//! etcd's `benchmark lease-keepalive`), so the same command measures this
//! server and the real etcd.
//!
//! Each client grants its own lease, opens one LeaseKeepAlive stream and
//! sends keepalives one at a time (request, wait for the response), until
//! `--total` keepalives were answered across all clients.
//!
//! ```text
//! leasebench --endpoints http://127.0.0.1:2379 --conns 4 --clients 64 --total 200000
//! ```
//! Prints `name: value` lines: requests, errors, qps and latency percentiles.

use benches::ClientResult;
use clap::Parser;
use etcd_core::pb::etcdserverpb::{LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest};
use etcd_server::rpc::etcdserverpb::lease_client::LeaseClient;
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(about = "Lease keepalive throughput over etcd's v3 gRPC API")]
struct Args {
    /// Client URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    endpoints: String,
    /// Number of gRPC connections.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Concurrent clients, each with its own lease and keepalive stream.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Total keepalives.
    #[arg(long, default_value_t = 100_000)]
    total: u64,
    /// TTL of the leases.
    #[arg(long, default_value_t = 60)]
    ttl: i64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let channels = benches::connect(&args.endpoints, args.conns).await?;
    let next = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for c in 0..args.clients.max(1) {
        let mut client = LeaseClient::new(channels[c % channels.len()].clone());
        let id = client
            .lease_grant(LeaseGrantRequest {
                ttl: args.ttl,
                id: 0,
            })
            .await?
            .into_inner()
            .id;
        clients.push((client, id));
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (client, id) in clients.iter().cloned() {
        let (next, total) = (next.clone(), args.total);
        tasks.push(tokio::spawn(run_client(client, id, next, total)));
    }
    let summary = benches::join_clients(tasks, start).await?;
    for (mut client, id) in clients {
        let _ = client.lease_revoke(LeaseRevokeRequest { id }).await;
    }
    print!("{}", summary.report());
    Ok(())
}

async fn run_client(
    mut client: LeaseClient<Channel>,
    id: i64,
    next: Arc<AtomicU64>,
    total: u64,
) -> ClientResult {
    let mut hist = Histogram::<u64>::new(3)?;
    let (mut ok, mut errors) = (0u64, 0u64);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    // The first keepalive goes out before the call returns: Go's gRPC
    // server sends the response headers only with the first response.
    if next.fetch_add(1, Ordering::Relaxed) >= total {
        return Ok((hist, ok, errors));
    }
    let mut t = Instant::now();
    tx.send(LeaseKeepAliveRequest { id }).await?;
    let mut responses = client
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut first = true;
    while first || next.fetch_add(1, Ordering::Relaxed) < total {
        if !first {
            t = Instant::now();
            tx.send(LeaseKeepAliveRequest { id }).await?;
        }
        first = false;
        match responses.message().await {
            Ok(Some(r)) if r.ttl > 0 => {
                hist.record(t.elapsed().as_micros() as u64)?;
                ok += 1;
            }
            other => {
                if errors == 0 {
                    eprintln!("first error: {other:?}");
                }
                errors += 1;
                if !matches!(other, Ok(Some(_))) {
                    break;
                }
            }
        }
    }
    Ok((hist, ok, errors))
}
