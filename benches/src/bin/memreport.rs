//! `memreport`: memory per key of the key index and of whole servers.
//!
//! ```text
//! memreport ours   --keys 1000000 [--shape seq|random]
//! memreport etcd   --keys 1000000 [--bin /usr/bin/etcd]
//! memreport server --keys 1000000 [--bin target/release/etcd-server]
//! ```
//!
//! Keys are 64 bytes (`seq`: `/memreport/key-` and a zero-padded counter;
//! `random`: 64 pseudo-random bytes), values 256 bytes, one version each.
//!
//! - `ours` opens an `etcd_mvcc::Store` in a temporary directory, writes the
//!   keys in transactions of `--batch` puts and prints `Store::index_bytes`
//!   per key, the Rust heap growth per key (a counting global allocator; the
//!   index plus RocksDB's Rust-side buffers, RocksDB's own C++ allocations are
//!   not counted) and the process RSS before and after.
//! - `etcd` and `server` start the real etcd or our `etcd-server` on loopback
//!   ports with a temporary data directory, load the keys over gRPC (plain
//!   `Put`s from `--clients` concurrent clients) and print the server
//!   process's `VmRSS` and `RssAnon` (anonymous memory: bbolt's and RocksDB's
//!   file mappings excluded) growth per key; for etcd also the Go heap in use
//!   (`go_memstats_heap_inuse_bytes` from `/metrics`). After the load it
//!   samples for `--settle-secs` (Go forces a GC every 2 minutes) and reports
//!   the minimum, i.e. the memory still reachable after garbage collection.
//!
//! Output: `name: value` lines. Results and commands: `benches/RESULTS.md`.

// The counting allocator needs `unsafe impl GlobalAlloc`; it only forwards
// to the system allocator and counts bytes.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand, ValueEnum};
use etcd_core::pb::etcdserverpb::{PutRequest, RangeRequest};
use etcd_server::rpc::etcdserverpb::kv_client::KvClient;
use tonic::transport::Endpoint;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Parser, Debug)]
#[command(about = "Memory per key: our key index, the real etcd, our server")]
struct Args {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(clap::Args, Debug, Clone)]
struct Load {
    /// Number of distinct keys.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Key shape (keys are 64 bytes either way).
    #[arg(long, value_enum, default_value_t = Shape::Seq)]
    shape: Shape,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    val_size: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Shape {
    /// `/memreport/key-` and a zero-padded counter.
    Seq,
    /// 64 pseudo-random bytes.
    Random,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Our store, in process.
    Ours {
        #[command(flatten)]
        load: Load,
        /// Puts per write transaction.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// The real etcd, over gRPC.
    Etcd {
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        remote: Remote,
        /// etcd binary.
        #[arg(long, default_value = "/usr/bin/etcd")]
        bin: PathBuf,
    },
    /// Our etcd-server, over gRPC.
    Server {
        #[command(flatten)]
        load: Load,
        #[command(flatten)]
        remote: Remote,
        /// etcd-server binary (default: next to this executable).
        #[arg(long)]
        bin: Option<PathBuf>,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct Remote {
    /// Concurrent gRPC clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// gRPC connections.
    #[arg(long, default_value_t = 4)]
    conns: usize,
    /// Seconds to sample memory after the load (the minimum is reported).
    #[arg(long, default_value_t = 130)]
    settle_secs: u64,
}

/// Key number `n` in the given shape, 64 bytes.
fn key(shape: Shape, n: u64) -> Vec<u8> {
    match shape {
        Shape::Seq => format!("/memreport/key-{n:049}").into_bytes(),
        Shape::Random => {
            let mut x = n;
            let mut out = Vec::with_capacity(64);
            for _ in 0..8 {
                x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = x;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
            }
            out
        }
    }
}

/// `(VmRSS, RssAnon)` of a process in bytes, from `/proc/<pid>/status`.
fn rss(pid: &str) -> anyhow::Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = s
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kb: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kb * 1024)
    };
    Ok((field("VmRSS:")?, field("RssAnon:")?))
}

fn per_key(bytes: i64, keys: u64) -> f64 {
    bytes as f64 / keys as f64
}

fn ours(load: &Load, batch: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = etcd_mvcc::Store::open(dir.path(), etcd_mvcc::StoreOptions::default())?;
    let value = vec![b'v'; load.val_size];
    let (rss0, anon0) = rss("self")?;
    let heap0 = LIVE.load(Ordering::SeqCst);
    let start = Instant::now();
    let mut n = 0;
    let mut ci = 0;
    while n < load.keys {
        let mut txn = store.write();
        for _ in 0..batch.max(1) {
            if n == load.keys {
                break;
            }
            txn.put(&key(load.shape, n), &value, 0)?;
            n += 1;
        }
        ci += 1;
        txn.end(ci)?;
    }
    let elapsed = start.elapsed();
    let heap = LIVE.load(Ordering::SeqCst) - heap0;
    let (rss1, anon1) = rss("self")?;
    let index = store.index_bytes();
    println!("mode: ours (etcd_mvcc::Store in process)");
    println!("keys: {}", store.index_len());
    println!("shape: {:?}", load.shape);
    println!("load_s: {:.1}", elapsed.as_secs_f64());
    println!("index_bytes: {index}");
    println!("index_bytes_per_key: {:.1}", per_key(index as i64, n));
    println!("rust_heap_growth_per_key: {:.1}", per_key(heap as i64, n));
    println!("vmrss_before_mb: {:.1}", rss0 as f64 / 1048576.0);
    println!("vmrss_after_mb: {:.1}", rss1 as f64 / 1048576.0);
    println!(
        "vmrss_growth_per_key: {:.1}",
        per_key(rss1 as i64 - rss0 as i64, n)
    );
    println!(
        "rssanon_growth_per_key: {:.1}",
        per_key(anon1 as i64 - anon0 as i64, n)
    );
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A server process in a temporary data directory; killed on drop.
struct Spawned {
    child: Child,
    client_url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(bin: &Path) -> anyhow::Result<Spawned> {
    let dir = tempfile::tempdir()?;
    let client_url = format!("http://127.0.0.1:{}", free_port()?);
    let peer_url = format!("http://127.0.0.1:{}", free_port()?);
    let log = std::fs::File::create(dir.path().join("server.log"))?;
    let child = Command::new(bin)
        .arg("--name=memreport")
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=memreport={peer_url}"))
        .arg("--quota-backend-bytes=8589934592")
        .arg("--snapshot-count=10000")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    Ok(Spawned {
        child,
        client_url,
        _dir: dir,
    })
}

/// `go_memstats_heap_inuse_bytes` from the server's `/metrics`, if served.
fn go_heap_inuse(client_url: &str) -> Option<u64> {
    let addr = client_url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("go_memstats_heap_inuse_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

async fn remote(name: &str, bin: &Path, load: &Load, r: &Remote) -> anyhow::Result<()> {
    let server = spawn(bin)?;
    let pid = server.child.id().to_string();
    // wait until it serves
    let deadline = Instant::now() + Duration::from_secs(60);
    let channel = loop {
        let attempt = async {
            let ch = Endpoint::from_shared(server.client_url.clone())?
                .connect()
                .await?;
            KvClient::new(ch.clone())
                .range(RangeRequest {
                    key: b"probe".to_vec().into(),
                    ..Default::default()
                })
                .await?;
            anyhow::Ok(ch)
        };
        match attempt.await {
            Ok(ch) => break ch,
            Err(e) if Instant::now() > deadline => bail!("{name} did not start: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss0, anon0) = rss(&pid)?;
    let heap0 = go_heap_inuse(&server.client_url);

    let mut channels = vec![channel];
    channels.extend(benches::connect(&server.client_url, r.conns.max(1) - 1).await?);
    let next = Arc::new(AtomicU64::new(0));
    let value = bytes::Bytes::from(vec![b'v'; load.val_size]);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..r.clients.max(1) {
        let mut client = KvClient::new(channels[c % channels.len()].clone());
        let (next, value, keys, shape) = (next.clone(), value.clone(), load.keys, load.shape);
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= keys {
                    return anyhow::Ok(());
                }
                client
                    .put(PutRequest {
                        key: key(shape, n).into(),
                        value: value.clone(),
                        ..Default::default()
                    })
                    .await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = start.elapsed();

    // settle: the minimum over the sampling period
    let (mut rss1, mut anon1) = rss(&pid)?;
    let mut heap1 = go_heap_inuse(&server.client_url);
    let until = Instant::now() + Duration::from_secs(r.settle_secs);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (v, a) = rss(&pid)?;
        rss1 = rss1.min(v);
        anon1 = anon1.min(a);
        heap1 = match (heap1, go_heap_inuse(&server.client_url)) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
    }
    let n = load.keys;
    println!("mode: {name} ({})", bin.display());
    println!("keys: {n}");
    println!("shape: {:?}", load.shape);
    println!(
        "load_s: {:.1} ({} clients, {} connections, one Put per request)",
        elapsed.as_secs_f64(),
        r.clients,
        r.conns
    );
    println!("vmrss_before_mb: {:.1}", rss0 as f64 / 1048576.0);
    println!("vmrss_after_mb: {:.1}", rss1 as f64 / 1048576.0);
    println!(
        "vmrss_growth_per_key: {:.1}",
        per_key(rss1 as i64 - rss0 as i64, n)
    );
    println!(
        "rssanon_growth_per_key: {:.1}",
        per_key(anon1 as i64 - anon0 as i64, n)
    );
    if let (Some(h0), Some(h1)) = (heap0, heap1) {
        println!("go_heap_inuse_before_mb: {:.1}", h0 as f64 / 1048576.0);
        println!("go_heap_inuse_after_mb: {:.1}", h1 as f64 / 1048576.0);
        println!(
            "go_heap_inuse_growth_per_key: {:.1}",
            per_key(h1 as i64 - h0 as i64, n)
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.mode {
        Mode::Ours { load, batch } => ours(load, *batch),
        Mode::Etcd {
            load,
            remote: r,
            bin,
        } => remote("etcd", bin, load, r).await,
        Mode::Server {
            load,
            remote: r,
            bin,
        } => {
            let bin = match bin {
                Some(b) => b.clone(),
                None => std::env::current_exe()?
                    .parent()
                    .context("executable without a directory")?
                    .join("etcd-server"),
            };
            remote("server", &bin, load, r).await
        }
    }
}
