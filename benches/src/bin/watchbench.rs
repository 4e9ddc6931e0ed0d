//! `watchbench`: watch event delivery latency and server memory per
//! watcher, over etcd's v3 gRPC API, so the same command measures this
//! server and the real etcd.
//!
//! ```text
//! watchbench --endpoint http://127.0.0.1:2379 --server-pid 1234 \
//!     --watchers 10000 --streams 100 --conns 10 --rate 1000 --seconds 10
//! ```
//!
//! All watchers watch one key (or, with `--distinct-keys`, one key each); a
//! writer puts that key `--rate` times per
//! second, the value carrying the send time; every received event gives one
//! latency sample (put sent -> event received by that watcher); the puts'
//! own latencies (sent -> answered) are reported beside. Memory: the
//! server's resident set (`/proc/<pid>/status` VmRSS) before the watchers
//! are created and after, divided by the number of watchers (and streams).
//! Prints `name: value` lines.

use clap::Parser;
use etcd_core::pb::etcdserverpb::{
    watch_request::RequestUnion, PutRequest, WatchCreateRequest, WatchRequest,
};
use etcd_server::rpc::etcdserverpb::{kv_client::KvClient, watch_client::WatchClient};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Watch latency and memory benchmark for etcd's v3 gRPC API")]
struct Args {
    /// Client URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    endpoint: String,
    /// Pid of the server process, to read its memory (0: skip).
    #[arg(long, default_value_t = 0)]
    server_pid: u32,
    /// Number of watchers.
    #[arg(long, default_value_t = 1)]
    watchers: usize,
    /// Number of watch streams the watchers are spread over.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Number of gRPC connections the streams are spread over.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// Puts per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Duration of the write phase in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Key watched and written.
    #[arg(long, default_value = "watchbench")]
    key: String,
    /// Watcher i watches `<key>/<i>` and the puts go round-robin over those
    /// keys (each put reaches one watcher) instead of all on one key.
    #[arg(long)]
    distinct_keys: bool,
    /// Watchers ask for each event's previous key-value (as Kubernetes'
    /// apiserver does), which the server reads per revision.
    #[arg(long)]
    prev_kv: bool,
}

fn rss_bytes(pid: u32) -> u64 {
    if pid == 0 {
        return 0;
    }
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let epoch = Instant::now();
    let channels = benches::connect(&a.endpoint, a.conns).await?;
    // Settle the server's memory before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_bytes(a.server_pid);

    let hist = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let received = Arc::new(AtomicU64::new(0));
    let created = Arc::new(AtomicU64::new(0));
    // Events that carried a previous key-value (--prev-kv).
    let with_prev = Arc::new(AtomicU64::new(0));
    let streams = a.streams.max(1).min(a.watchers.max(1));
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for s in 0..streams {
        let n = a.watchers / streams + usize::from(s < a.watchers % streams);
        let (tx, rx) = tokio::sync::mpsc::channel::<WatchRequest>(n.max(1) + 1);
        for j in 0..n {
            let key = if a.distinct_keys {
                format!("{}/{}", a.key, s + j * streams)
            } else {
                a.key.clone()
            };
            tx.send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: key.into_bytes().into(),
                    prev_kv: a.prev_kv,
                    ..Default::default()
                })),
            })
            .await?;
        }
        let mut client = WatchClient::new(channels[s % channels.len()].clone());
        let (hist, received, created, with_prev) = (
            hist.clone(),
            received.clone(),
            created.clone(),
            with_prev.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut stream = client
                .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            let mut local = Histogram::<u64>::new(3)?;
            while let Some(r) = stream.message().await? {
                if r.created {
                    created.fetch_add(1, Ordering::Relaxed);
                }
                for e in &r.events {
                    let sent: u64 =
                        e.kv.as_ref()
                            .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok())
                            .unwrap_or(0);
                    let now = epoch.elapsed().as_micros() as u64;
                    local.record(now.saturating_sub(sent).max(1))?;
                    received.fetch_add(1, Ordering::Relaxed);
                    if e.prev_kv.is_some() {
                        with_prev.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if !local.is_empty() {
                    // Flushed per response: the task is aborted at the end.
                    hist.lock().add(&local)?;
                    local.reset();
                }
            }
            hist.lock().add(&local)?;
            anyhow::Ok(())
        }));
        senders.push(tx);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while created.load(Ordering::Relaxed) < a.watchers as u64 {
        anyhow::ensure!(Instant::now() < deadline, "watchers not created in 120 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rss_watching = rss_bytes(a.server_pid);

    // Writer: `rate` puts per second, paced on a fixed schedule.
    let mut kv = KvClient::new(channels[0].clone());
    let total = a.rate * a.seconds;
    let period = Duration::from_secs_f64(1.0 / a.rate.max(1) as f64);
    let start = tokio::time::Instant::now();
    let mut rss_peak = rss_watching;
    // Each put's own latency (sent -> answered), beside the events': at
    // this pace the server idles between puts, unlike loadgen's loads.
    let mut put_hist = Histogram::<u64>::new(3)?;
    for i in 0..total {
        tokio::time::sleep_until(start + period * i as u32).await;
        let sent = epoch.elapsed().as_micros() as u64;
        let key = if a.distinct_keys {
            format!("{}/{}", a.key, i % a.watchers.max(1) as u64)
        } else {
            a.key.clone()
        };
        kv.put(PutRequest {
            key: key.into_bytes().into(),
            value: sent.to_string().into_bytes().into(),
            ..Default::default()
        })
        .await?;
        put_hist.record(
            (epoch.elapsed().as_micros() as u64)
                .saturating_sub(sent)
                .max(1),
        )?;
        if i % a.rate.max(1) == 0 {
            rss_peak = rss_peak.max(rss_bytes(a.server_pid));
        }
    }
    let elapsed = start.elapsed();
    let want = if a.distinct_keys {
        total
    } else {
        total * a.watchers as u64
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(senders);
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    let h = hist.lock();
    let per = |x: u64| x.saturating_sub(rss_before) as f64;
    println!("watchers: {}", a.watchers);
    println!("streams: {streams}");
    println!("puts: {total}");
    println!(
        "put_rate_achieved: {:.0}",
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "events_received: {} of {want}",
        received.load(Ordering::Relaxed)
    );
    println!("events_with_prev_kv: {}", with_prev.load(Ordering::Relaxed));
    println!("latency_p50_us: {}", h.value_at_quantile(0.50));
    println!("latency_p99_us: {}", h.value_at_quantile(0.99));
    println!("latency_max_us: {}", h.max());
    println!("put_latency_p50_us: {}", put_hist.value_at_quantile(0.50));
    println!("put_latency_p99_us: {}", put_hist.value_at_quantile(0.99));
    println!("rss_before_bytes: {rss_before}");
    println!("rss_watching_bytes: {rss_watching}");
    println!("rss_peak_bytes: {rss_peak}");
    println!(
        "bytes_per_watcher: {:.0}",
        per(rss_watching) / a.watchers.max(1) as f64
    );
    Ok(())
}
