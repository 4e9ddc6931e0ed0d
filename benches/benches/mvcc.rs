//! Micro-benchmarks of the MVCC store: put of 256-byte values, point range,
//! prefix ranges of 100 and 10,000 keys, a small multi-op transaction, and
//! the physical compaction of 1M superseded revisions.
//!
//! Run: `cargo bench -p benches --bench mvcc`.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use etcd_mvcc::{RangeOptions, Store, StoreOptions};

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreOptions::default()).expect("open store");
    (dir, store)
}

/// `prefix` followed by 100 keys, in one transaction per 100 keys.
fn preload(store: &Store, prefixes: usize, value: &[u8]) {
    let mut ci = store.consistent_index();
    for p in 0..prefixes {
        let mut t = store.write();
        for k in 0..100 {
            t.put(format!("p{p:04}/k{k:03}").as_bytes(), value, 0)
                .expect("put");
        }
        ci += 1;
        t.end(ci).expect("end");
    }
}

fn bench_put(c: &mut Criterion) {
    let (_dir, store) = open();
    let value = vec![0xabu8; 256];
    let mut g = c.benchmark_group("mvcc");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("put_256B", |b| {
        b.iter(|| {
            i += 1;
            let mut t = store.write();
            t.put(format!("key{:08}", i % 100_000).as_bytes(), &value, 0)
                .expect("put");
            t.end(i).expect("end");
        })
    });
    g.finish();
}

fn bench_range(c: &mut Criterion) {
    let (_dir, store) = open();
    preload(&store, 100, &[0x11; 256]); // 10k keys
    let mut g = c.benchmark_group("mvcc");
    let mut i = 0usize;
    g.throughput(Throughput::Elements(1));
    g.bench_function("range_point", |b| {
        b.iter(|| {
            i = (i + 7919) % 10_000;
            let key = format!("p{:04}/k{:03}", i / 100, i % 100);
            let r = store
                .range(key.as_bytes(), b"", RangeOptions::default())
                .expect("range");
            black_box(r.kvs.len())
        })
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("range_prefix_100", |b| {
        b.iter(|| {
            i = (i + 37) % 100;
            let start = format!("p{i:04}/");
            let end = format!("p{i:04}0"); // '0' = '/' + 1: the prefix end
            let r = store
                .range(start.as_bytes(), end.as_bytes(), RangeOptions::default())
                .expect("range");
            assert_eq!(r.kvs.len(), 100);
            black_box(r.count)
        })
    });
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("range_prefix_10k", |b| {
        b.iter(|| {
            let r = store
                .range(b"p", b"q", RangeOptions::default())
                .expect("range");
            assert_eq!(r.kvs.len(), 10_000);
            black_box(r.count)
        })
    });
    g.finish();
}

fn bench_txn(c: &mut Criterion) {
    let (_dir, store) = open();
    preload(&store, 10, &[0x22; 256]);
    let value = vec![0x33u8; 256];
    let mut g = c.benchmark_group("mvcc");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    let mut ci = store.consistent_index();
    g.bench_function("txn_range_put_put_delete", |b| {
        b.iter(|| {
            i += 1;
            ci += 1;
            let k = i % 1000;
            let mut t = store.write();
            let r = t
                .range(
                    format!("p{:04}/k{:03}", k / 100, k % 100).as_bytes(),
                    b"",
                    RangeOptions::default(),
                )
                .expect("range");
            black_box(r.count);
            t.put(format!("t{k:04}/a").as_bytes(), &value, 0)
                .expect("put");
            t.put(format!("t{k:04}/b").as_bytes(), &value, 0)
                .expect("put");
            t.delete_range(format!("t{:04}/a", (k + 500) % 1000).as_bytes(), b"")
                .expect("delete");
            t.end(ci).expect("end");
        })
    });
    g.finish();
}

/// Compaction of 1M superseded revisions: 500k keys written twice (1M
/// revisions), then `compact` at the last revision, timed until the physical
/// removal finished. The pause between batches is 0 here to measure the
/// work itself (the server default is etcd's 10 ms per 1000 revisions).
fn bench_compaction(c: &mut Criterion) {
    const KEYS: u64 = 500_000;
    let opts = StoreOptions {
        compaction_sleep_interval: std::time::Duration::ZERO,
        ..StoreOptions::default()
    };
    let mut g = c.benchmark_group("mvcc");
    g.sample_size(10);
    g.throughput(Throughput::Elements(2 * KEYS));
    g.bench_function("compact_1M_revisions", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                let dir = tempfile::tempdir().expect("tempdir");
                let store = Store::open(dir.path(), opts.clone()).expect("open store");
                let mut ci = 0;
                for pass in 0..2u8 {
                    for chunk in 0..KEYS / 1000 {
                        let mut t = store.write();
                        for k in chunk * 1000..(chunk + 1) * 1000 {
                            t.put(format!("key{k:08}").as_bytes(), &[pass; 256], 0)
                                .expect("put");
                        }
                        ci += 1;
                        t.end(ci).expect("end");
                    }
                }
                let rev = store.current_revision();
                let t = std::time::Instant::now();
                store.compact(rev, ci + 1).expect("compact").wait();
                total += t.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, bench_put, bench_range, bench_txn, bench_compaction);
criterion_main!(benches);
