//! `pausebench`: the longest pause a writer sees while the server compacts
//! and defragments a large keyspace, and how much space defrag reclaims.
//!
//! Speaks etcd's v3 gRPC API, so the same run measures this server and the
//! real etcd:
//!
//! 1. load: `--keys` keys (`--key-size`, `--val-size`) written twice, with
//!    `--ops-per-txn` puts per Txn from `--load-clients` clients, so half of
//!    the revisions are superseded and compaction has real work;
//! 2. a single writer puts keys of its own in a loop, one at a time, and
//!    records every latency with the phase it fell in: `baseline` (2 s),
//!    `snapshot` (a Maintenance.Snapshot streamed to a file, as `etcdctl
//!    snapshot save` does), `compact` (a physical Compact at the current
//!    revision, waited for), `defrag` (Defragment of the endpoint), `after`
//!    (2 s);
//! 3. prints, per phase, the writer's p50/p99/max latency, the durations of
//!    the snapshot (first byte, whole), compaction and defrag, the
//!    snapshot's size, the server's resident memory before and at most
//!    during the snapshot (`--pid`: sampled from /proc every 10 ms), and
//!    the db size (Status `db_size` and `db_size_in_use`) before
//!    compaction, after compaction and after defrag.
//!
//! ```text
//! pausebench --endpoint http://127.0.0.1:2379 --keys 1000000
//! ```

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use etcd_core::pb::etcdserverpb::{
    request_op, CompactionRequest, DefragmentRequest, PutRequest, RequestOp, StatusRequest,
    StatusResponse, TxnRequest,
};
use etcd_server::rpc::etcdserverpb::{kv_client::KvClient, maintenance_client::MaintenanceClient};
use hdrhistogram::Histogram;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug)]
#[command(about = "Writer pauses during compaction and defragmentation")]
struct Args {
    /// Client URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    endpoint: String,
    /// Keys loaded (each written twice).
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Key size in bytes.
    #[arg(long, default_value_t = 64)]
    key_size: usize,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    val_size: usize,
    /// Puts per Txn while loading (etcd's --max-txn-ops default is 128).
    #[arg(long, default_value_t = 128)]
    ops_per_txn: u64,
    /// Concurrent loading clients.
    #[arg(long, default_value_t = 8)]
    load_clients: usize,
    /// Seconds of writer-only load before compaction and after defrag.
    #[arg(long, default_value_t = 2)]
    quiet_secs: u64,
    /// The server's process id, to sample its resident memory.
    #[arg(long)]
    pid: Option<u32>,
    /// Where the snapshot is written (removed afterwards).
    #[arg(long, default_value = "/var/tmp/pausebench-snapshot.db")]
    snapshot_file: std::path::PathBuf,
}

/// Phases of the measurement, in order.
const PHASES: [&str; 5] = ["baseline", "snapshot", "compact", "defrag", "after"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ch = Endpoint::from_shared(args.endpoint.clone())?
        .timeout(Duration::from_secs(600))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.endpoint))?;
    let mut maint = MaintenanceClient::new(ch.clone());

    let t = Instant::now();
    for pass in 0..2u8 {
        load(&ch, &args, pass).await?;
    }
    println!(
        "loaded: {} keys x 2 writes in {:.1} s",
        args.keys,
        t.elapsed().as_secs_f64()
    );
    let before = status(&mut maint).await?;

    // The writer runs through all phases; `phase` tells it where it is.
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (kv, phase, stop, writes) = (
            KvClient::new(ch.clone()),
            phase.clone(),
            stop.clone(),
            writes.clone(),
        );
        let value = Bytes::from(vec![b'w'; args.val_size]);
        tokio::spawn(async move { write_loop(kv, value, phase, stop, writes).await })
    };

    let quiet = Duration::from_secs(args.quiet_secs);
    tokio::time::sleep(quiet).await;

    phase.store(1, Ordering::SeqCst);
    let rss_before = args.pid.map_or(0, rss_kb);
    let sampling = Arc::new(AtomicBool::new(true));
    let rss_max = Arc::new(AtomicU64::new(rss_before));
    let sampler = args.pid.map(|pid| {
        let (sampling, rss_max) = (sampling.clone(), rss_max.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::SeqCst) {
                rss_max.fetch_max(rss_kb(pid), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    });
    let t = Instant::now();
    let (first_byte, snapshot_bytes) = snapshot(&mut maint, &args.snapshot_file).await?;
    let snapshot_time = t.elapsed();
    sampling.store(false, Ordering::SeqCst);
    if let Some(s) = sampler {
        let _ = s.join();
    }
    let _ = std::fs::remove_file(&args.snapshot_file);

    phase.store(2, Ordering::SeqCst);
    let rev = before.header.as_ref().map_or(0, |h| h.revision);
    let t = Instant::now();
    KvClient::new(ch.clone())
        .compact(CompactionRequest {
            revision: rev,
            physical: true,
        })
        .await
        .context("compact")?;
    let compact_time = t.elapsed();
    let compacted = status(&mut maint).await?;

    phase.store(3, Ordering::SeqCst);
    let t = Instant::now();
    maint
        .defragment(DefragmentRequest {})
        .await
        .context("defragment")?;
    let defrag_time = t.elapsed();
    let defragged = status(&mut maint).await?;

    phase.store(4, Ordering::SeqCst);
    tokio::time::sleep(quiet).await;
    stop.store(true, Ordering::SeqCst);
    let hists = writer.await??;

    println!("snapshot_first_byte_s: {:.3}", first_byte.as_secs_f64());
    println!("snapshot_s: {:.3}", snapshot_time.as_secs_f64());
    println!("snapshot_mb: {:.1}", snapshot_bytes as f64 / 1e6);
    println!("rss_before_snapshot_mb: {:.1}", rss_before as f64 / 1e3);
    println!(
        "rss_max_during_snapshot_mb: {:.1}",
        rss_max.load(Ordering::SeqCst) as f64 / 1e3
    );
    println!("compacted_at_rev: {rev}");
    println!("compact_s: {:.3}", compact_time.as_secs_f64());
    println!("defrag_s: {:.3}", defrag_time.as_secs_f64());
    for (name, s) in [
        ("before_compact", &before),
        ("after_compact", &compacted),
        ("after_defrag", &defragged),
    ] {
        println!(
            "db_size_{name}_mb: {:.1}\ndb_size_in_use_{name}_mb: {:.1}",
            s.db_size as f64 / 1e6,
            s.db_size_in_use as f64 / 1e6
        );
    }
    println!("writer_puts: {}", writes.load(Ordering::Relaxed));
    for (name, h) in PHASES.iter().zip(&hists) {
        println!(
            "writer_{name}: n={} p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
            h.len(),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
    }
    Ok(())
}

/// Writes every key once (pass 0) or again with another value (pass 1).
async fn load(ch: &Channel, args: &Args, pass: u8) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![b'a' + pass; args.val_size]);
    let mut tasks = Vec::new();
    for _ in 0..args.load_clients.max(1) {
        let mut kv = KvClient::new(ch.clone());
        let (next, value) = (next.clone(), value.clone());
        let (keys, per_txn, key_size) = (args.keys, args.ops_per_txn.max(1), args.key_size);
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(per_txn, Ordering::Relaxed);
                if first >= keys {
                    return anyhow::Ok(());
                }
                let success = (first..(first + per_txn).min(keys))
                    .map(|n| RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: Bytes::from(benches::key(n, key_size)),
                            value: value.clone(),
                            ..Default::default()
                        })),
                    })
                    .collect();
                kv.txn(TxnRequest {
                    success,
                    ..Default::default()
                })
                .await
                .context("load txn")?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// One put at a time until `stop`; latencies in microseconds per phase.
async fn write_loop(
    mut kv: KvClient<Channel>,
    value: Bytes,
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
) -> anyhow::Result<Vec<Histogram<u64>>> {
    let mut hists = (0..PHASES.len())
        .map(|_| Histogram::<u64>::new(3))
        .collect::<Result<Vec<_>, _>>()?;
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let started_in = phase.load(Ordering::SeqCst);
        let t = Instant::now();
        kv.put(PutRequest {
            key: Bytes::from(format!("writer/{:08}", n % 10_000)),
            value: value.clone(),
            ..Default::default()
        })
        .await
        .context("writer put")?;
        // A put that spans a phase change counts for the later phase: that
        // is where its pause came from.
        let p = phase.load(Ordering::SeqCst).max(started_in);
        hists[p].record(t.elapsed().as_micros() as u64)?;
        n += 1;
        writes.fetch_add(1, Ordering::Relaxed);
    }
    Ok(hists)
}

async fn status(m: &mut MaintenanceClient<Channel>) -> anyhow::Result<StatusResponse> {
    Ok(m.status(StatusRequest {})
        .await
        .context("status")?
        .into_inner())
}

/// Streams Maintenance.Snapshot into `path` (database and sha256 trailer,
/// as `etcdctl snapshot save` writes it); returns the time to the first
/// message and the bytes written.
async fn snapshot(
    m: &mut MaintenanceClient<Channel>,
    path: &std::path::Path,
) -> anyhow::Result<(Duration, u64)> {
    use std::io::Write;
    let t = Instant::now();
    let mut stream = m
        .snapshot(etcd_core::pb::etcdserverpb::SnapshotRequest {})
        .await
        .context("snapshot")?
        .into_inner();
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut first = None;
    let mut n = 0u64;
    while let Some(r) = stream.message().await.context("snapshot stream")? {
        first.get_or_insert_with(|| t.elapsed());
        out.write_all(&r.blob)?;
        n += r.blob.len() as u64;
    }
    out.flush()?;
    Ok((first.unwrap_or_default(), n))
}

/// Resident memory of process `pid` in kB (0 when unreadable).
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
