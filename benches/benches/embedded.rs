//! What embedding saves: one member on this machine's disk, the same
//! request in-process (`etcd_core::client::Client`) and over gRPC on
//! loopback (tonic's client to `etcd_server::grpc::serve`), and through
//! the in-memory channel (`etcd_server::grpc::InMemoryChannel`: gRPC
//! encoding, no socket); plus the start of a member on an empty data
//! directory (until it serves: elected and published).
//!
//! Run: `cargo bench -p benches --bench embedded` (results and the
//! comparison in benches/RESULTS.md, "Embedded vs gRPC"). The data
//! directories go under `$EMBEDDED_BENCH_DIR` when set (e.g. `/dev/shm`, to
//! take the disk's fsync out of the comparison), else the system's
//! temporary directory.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use etcd_core::client::{Client, GetOptions};
use etcd_core::{Config, Etcd};
use etcd_server::grpc::InMemoryChannel;
use etcd_server::rpc::etcdserverpb::{kv_client::KvClient, PutRequest, RangeRequest};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// Concurrent callers of the throughput rows.
const CONCURRENCY: u64 = 16;
/// Callers enough to saturate each path (peak throughput).
const SATURATION: u64 = 128;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A fresh directory for a member's data.
fn data_dir() -> tempfile::TempDir {
    match std::env::var_os("EMBEDDED_BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent),
        None => tempfile::tempdir(),
    }
    .expect("tempdir")
}

fn start(rt: &Runtime, dir: &std::path::Path) -> Etcd {
    rt.block_on(async {
        let etcd = Etcd::start(Config::single("bench", dir.join("data"))).expect("start");
        etcd.ready().await.expect("ready");
        etcd
    })
}

fn bench_start(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("embedded");
    g.sample_size(20);
    g.bench_function("start_until_ready", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let dir = data_dir();
                let began = Instant::now();
                let etcd = start(&rt, dir.path());
                total += began.elapsed();
                etcd.stop();
            }
            total
        })
    });
    g.finish();
}

/// The ways a request reaches the member.
#[derive(Clone)]
enum Via {
    InProcess(Client),
    Grpc(KvClient<tonic::transport::Channel>),
    InMemory(KvClient<InMemoryChannel>),
}

impl Via {
    fn name(&self) -> &'static str {
        match self {
            Via::InProcess(_) => "in_process",
            Via::Grpc(_) => "grpc_loopback",
            Via::InMemory(_) => "in_memory_channel",
        }
    }

    async fn put(&mut self, key: String, value: &[u8]) {
        match self {
            Via::InProcess(c) => drop(c.put(key, value, None).await.expect("put")),
            Via::Grpc(kv) => drop(kv.put(put_request(key, value)).await.expect("put")),
            Via::InMemory(kv) => drop(kv.put(put_request(key, value)).await.expect("put")),
        }
    }

    async fn get(&mut self, key: &str) {
        let req = RangeRequest {
            key: key.to_owned().into(),
            ..Default::default()
        };
        match self {
            Via::InProcess(c) => drop(c.get(key, Some(GetOptions::new())).await.expect("get")),
            Via::Grpc(kv) => drop(kv.range(req).await.expect("get")),
            Via::InMemory(kv) => drop(kv.range(req).await.expect("get")),
        }
    }
}

fn put_request(key: String, value: &[u8]) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: value.to_vec().into(),
        ..Default::default()
    }
}

/// Runs `iters` calls of `op` spread over `callers` concurrent callers;
/// the elapsed time.
fn drive<F, Fut>(rt: &Runtime, via: &Via, iters: u64, callers: u64, op: F) -> Duration
where
    F: Fn(Via, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    rt.block_on(async {
        let began = Instant::now();
        let tasks: Vec<_> = (0..callers)
            .map(|c| {
                let (via, op) = (via.clone(), op.clone());
                let n = iters / callers + u64::from(c < iters % callers);
                tokio::spawn(async move {
                    for i in 0..n {
                        op(via.clone(), c * 1_000_000 + i).await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("caller");
        }
        began.elapsed()
    })
}

fn bench_requests(c: &mut Criterion) {
    let rt = runtime();
    let dir = data_dir();
    let etcd = start(&rt, dir.path());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(etcd_server::grpc::serve(
        etcd.clone(),
        listener,
        std::future::pending(),
    ));
    let channel = rt
        .block_on(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .tcp_nodelay(true)
                .connect(),
        )
        .expect("connect");
    let vias = [
        Via::InProcess(Client::new(etcd.clone())),
        Via::Grpc(KvClient::new(channel)),
        Via::InMemory(KvClient::new(InMemoryChannel::new(&etcd))),
    ];
    rt.block_on(Via::InProcess(Client::new(etcd.clone())).put("get-key".into(), &[7; 256]));

    let mut g = c.benchmark_group("embedded");
    g.sample_size(20);
    g.throughput(Throughput::Elements(1));
    for callers in [1, CONCURRENCY, SATURATION] {
        for via in &vias {
            let id = BenchmarkId::new(format!("put_256B_{callers}_callers"), via.name());
            g.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    drive(&rt, via, iters, callers, |mut v, i| async move {
                        v.put(format!("key{:06}", i % 100_000), &[0xab; 256]).await
                    })
                })
            });
            let id = BenchmarkId::new(format!("get_linearizable_{callers}_callers"), via.name());
            g.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    drive(&rt, via, iters, callers, |mut v, _| async move {
                        v.get("get-key").await
                    })
                })
            });
        }
    }
    g.finish();
    etcd.stop();
}

criterion_group!(benches, bench_start, bench_requests);
criterion_main!(benches);
