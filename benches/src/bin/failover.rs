//! `failover`: how long a cluster refuses writes after its leader dies.
//!
//! Given the client URLs of a running cluster and the process id of each
//! member (same order), it finds the leader with the Maintenance `Status`
//! RPC and sends a put to each other member every `--interval-ms`, without
//! waiting for earlier ones (a put sent to a follower while the leader is
//! dead may hang until the new leader exists, so one-at-a-time writers
//! would measure their own timeout). After `--warmup-ms` it sends SIGKILL
//! to the leader's process and reports the time from the moment `kill -9`
//! returned to the completion of the first put that was *sent* after it
//! and succeeded.
//!
//! ```text
//! failover --endpoints http://127.0.0.1:2379,http://127.0.0.1:2381,http://127.0.0.1:2383 \
//!     --pids 101,102,103
//! ```
//! Prints `name: value` lines: `killed_endpoint`, `failover_ms`,
//! `new_leader_endpoint`, `warmup_writes`, `warmup_errors`.

use anyhow::{bail, Context as _};
use clap::Parser;
use etcd_core::pb::etcdserverpb::{PutRequest, StatusRequest};
use etcd_server::rpc::etcdserverpb::kv_client::KvClient;
use etcd_server::rpc::etcdserverpb::maintenance_client::MaintenanceClient;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(about = "Time from kill -9 of the leader to the first accepted write")]
struct Args {
    /// Client URLs of the members, comma-separated.
    #[arg(long)]
    endpoints: String,
    /// Process ids of the members, comma-separated, in the order of --endpoints.
    #[arg(long)]
    pids: String,
    /// A new put is sent to each surviving member every this many ms,
    /// whether or not earlier ones have answered (the resolution).
    #[arg(long, default_value_t = 5)]
    interval_ms: u64,
    /// Puts in flight per member at most (a tick finding them all busy
    /// sends nothing).
    #[arg(long, default_value_t = 500)]
    max_in_flight: usize,
    /// Deadline of one put.
    #[arg(long, default_value_t = 5000)]
    request_timeout_ms: u64,
    /// Writes before the kill.
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
    /// Give up when no write succeeds this long after the kill.
    #[arg(long, default_value_t = 60)]
    give_up_s: u64,
}

/// The index (in `channels`) of the member that says it leads.
async fn find_leader(channels: &[Channel]) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for (i, ch) in channels.iter().enumerate() {
            let mut m = MaintenanceClient::new(ch.clone());
            if let Ok(r) = m.status(StatusRequest {}).await {
                let r = r.into_inner();
                let me = r.header.map(|h| h.member_id).unwrap_or(0);
                if me != 0 && r.leader == me {
                    return Ok(i);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no member says it is the leader");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let urls: Vec<String> = args.endpoints.split(',').map(str::to_string).collect();
    let pids: Vec<u32> = args
        .pids
        .split(',')
        .map(|p| p.trim().parse().context("bad pid"))
        .collect::<anyhow::Result<_>>()?;
    if urls.len() != pids.len() || urls.len() < 3 {
        bail!("give at least 3 endpoints and as many pids");
    }
    let mut channels = Vec::new();
    for u in &urls {
        channels.push(benches::connect(u, 1).await?.remove(0));
    }
    let leader = find_leader(&channels).await?;

    let kill_at: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let stop = Arc::new(AtomicBool::new(false));
    let (warm_ok, warm_err) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let timeout = Duration::from_millis(args.request_timeout_ms);
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let mut tasks = Vec::new();
    for (i, ch) in channels.iter().enumerate() {
        if i == leader {
            continue;
        }
        let kv = KvClient::new(ch.clone());
        let (kill_at, stop, tx) = (kill_at.clone(), stop.clone(), tx.clone());
        let (warm_ok, warm_err) = (warm_ok.clone(), warm_err.clone());
        let in_flight = Arc::new(tokio::sync::Semaphore::new(args.max_in_flight));
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    continue;
                };
                n += 1;
                let mut kv = kv.clone();
                let (kill_at, tx) = (kill_at.clone(), tx.clone());
                let (warm_ok, warm_err) = (warm_ok.clone(), warm_err.clone());
                let key = bytes::Bytes::from(format!("failover/{i}/{}", n % 64));
                tokio::spawn(async move {
                    let _permit = permit;
                    let sent = Instant::now();
                    let put = kv.put(PutRequest {
                        key,
                        value: bytes::Bytes::from(n.to_string()),
                        ..Default::default()
                    });
                    let ok = matches!(tokio::time::timeout(timeout, put).await, Ok(Ok(_)));
                    let after_kill = kill_at.get().is_some_and(|k| sent >= *k);
                    match (ok, after_kill) {
                        (true, true) => {
                            let _ = tx.send(Instant::now());
                        }
                        (true, false) => {
                            warm_ok.fetch_add(1, Ordering::Relaxed);
                        }
                        (false, false) => {
                            warm_err.fetch_add(1, Ordering::Relaxed);
                        }
                        (false, true) => {}
                    }
                });
            }
        }));
    }
    drop(tx);

    tokio::time::sleep(Duration::from_millis(args.warmup_ms)).await;
    let status = std::process::Command::new("kill")
        .arg("-9")
        .arg(pids[leader].to_string())
        .status()
        .context("cannot run kill")?;
    if !status.success() {
        bail!("kill -9 {} failed", pids[leader]);
    }
    let killed = Instant::now();
    let _ = kill_at.set(killed);
    let first = tokio::time::timeout(Duration::from_secs(args.give_up_s), rx.recv()).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let Ok(Some(first)) = first else {
        bail!("no write succeeded within {} s of the kill", args.give_up_s);
    };
    let survivors: Vec<Channel> = channels
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, c)| c.clone())
        .collect();
    let new_leader = find_leader(&survivors)
        .await
        .map(|j| {
            let idx = if j >= leader { j + 1 } else { j };
            urls[idx].clone()
        })
        .unwrap_or_else(|e| format!("unknown ({e})"));
    println!("killed_endpoint: {}", urls[leader]);
    println!(
        "failover_ms: {:.1}",
        first.duration_since(killed).as_secs_f64() * 1000.0
    );
    println!("new_leader_endpoint: {new_leader}");
    println!("warmup_writes: {}", warm_ok.load(Ordering::Relaxed));
    println!("warmup_errors: {}", warm_err.load(Ordering::Relaxed));
    Ok(())
}
