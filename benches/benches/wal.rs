//! WAL benchmarks: append_sync of 256-byte entries with 1 and 8 concurrent
//! writers (group commit), and the floor: a raw 4 KiB write + fdatasync.
//!
//! Run on a quiet machine: `cargo bench -p benches --bench wal`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etcd_wal::{Entry, Wal, WalOptions, WriteBatch};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

const ENTRY_BYTES: usize = 256;

struct Log {
    wal: Wal,
    next: Mutex<u64>,
    _dir: tempfile::TempDir,
}

impl Log {
    fn new() -> Log {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal =
            Wal::create(&dir.path().join("wal"), WalOptions::default(), b"bench").expect("create");
        Log {
            wal,
            next: Mutex::new(1),
            _dir: dir,
        }
    }

    /// Allocates the next index and queues one 256 B entry (as a raft node
    /// would, serialized), then waits outside the lock.
    fn append_sync(&self, data: &Bytes) {
        let ticket = {
            let mut n = self.next.lock().expect("lock");
            let e = Entry {
                index: *n,
                term: 1,
                data: data.clone(),
            };
            *n += 1;
            self.wal
                .append(WriteBatch {
                    entries: vec![e],
                    ..Default::default()
                })
                .expect("append")
        };
        ticket.wait().expect("durable");
    }
}

fn bench_append_sync(c: &mut Criterion) {
    let data = Bytes::from(vec![0xabu8; ENTRY_BYTES]);
    let mut g = c.benchmark_group("wal_append_sync_256B");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(1));

    let log = Log::new();
    g.bench_function("1_writer", |b| b.iter(|| log.append_sync(&data)));
    drop(log);

    // 8 writers: each iteration is 8 concurrent appends (reported per batch of 8).
    let log = Arc::new(Log::new());
    g.throughput(Throughput::Elements(8));
    g.bench_function("8_writers", |b| {
        b.iter_custom(|iters| {
            let barrier = Arc::new(Barrier::new(9));
            let done = Arc::new(AtomicU64::new(0));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let (log, data, barrier, done) =
                        (log.clone(), data.clone(), barrier.clone(), done.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        for _ in 0..iters {
                            log.append_sync(&data);
                        }
                        done.fetch_add(iters, Ordering::Relaxed);
                    })
                })
                .collect();
            barrier.wait();
            let start = Instant::now();
            for t in threads {
                t.join().expect("writer thread");
            }
            let elapsed = start.elapsed();
            assert_eq!(done.load(Ordering::Relaxed), iters * 8);
            elapsed
        })
    });
    g.finish();
}

fn bench_raw_fdatasync(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = std::fs::File::create(dir.path().join("raw")).expect("create");
    let block = vec![0x5au8; 4096];
    let mut g = c.benchmark_group("raw");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.bench_function("write_4KiB_fdatasync", |b| {
        b.iter(|| {
            f.write_all(&block).expect("write");
            f.sync_data().expect("fdatasync");
        })
    });
    g.finish();
}

criterion_group!(benches, bench_append_sync, bench_raw_fdatasync);
criterion_main!(benches);
