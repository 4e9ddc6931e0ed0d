//! `walbench`: the WAL's commit cost against the disk's fsync floor, in one
//! run on one disk.
//!
//! ```text
//! walbench --dir /var/tmp --seconds 5
//! ```
//! 1. raw: 4 KiB `write` + `fdatasync` in a loop (the floor);
//! 2. WAL, 1 writer: `append_sync` of one 256-byte entry at a time;
//! 3. WAL, W writers (1, 8, 64, 256): each thread appends one 256-byte entry
//!    and waits for its ticket, in a loop. Entries take consecutive indexes
//!    (the index is assigned and the batch queued under one lock, as the
//!    raft thread does), and the waits overlap, so fsyncs are shared.
//!
//! Prints one `name: value` line per figure.

use anyhow::Context as _;
use clap::Parser;
use etcd_wal::{Entry, Wal, WalOptions, WriteBatch};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "WAL commit latency and group-commit throughput vs raw fdatasync")]
struct Args {
    /// Directory on the disk to measure (a temporary directory is made inside).
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Writer counts for the group-commit scenario.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64,256")]
    writers: Vec<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tmp = tempfile::tempdir_in(&args.dir).context("cannot create a directory to measure in")?;
    let dur = Duration::from_secs_f64(args.seconds);

    let raw = raw_fdatasync(&tmp.path().join("raw"), dur)?;
    print_latency("raw_fdatasync_4k", &raw, dur);

    let wal = Wal::create(&tmp.path().join("wal1"), WalOptions::default(), b"bench")?;
    let mut h = Histogram::<u64>::new(3)?;
    let start = Instant::now();
    let mut index = 0;
    while start.elapsed() < dur {
        index += 1;
        let t = Instant::now();
        wal.append_sync(batch(index))?;
        h.record(t.elapsed().as_micros() as u64)?;
    }
    print_latency("wal_append_sync_1_writer", &h, start.elapsed());
    println!(
        "wal_1_writer_p50_over_raw_p50: {:.2}",
        h.value_at_quantile(0.5) as f64 / raw.value_at_quantile(0.5).max(1) as f64
    );
    drop(wal);

    for &w in &args.writers {
        let wal = Arc::new(Wal::create(
            &tmp.path().join(format!("walw{w}")),
            WalOptions::default(),
            b"bench",
        )?);
        let next = Arc::new(Mutex::new(0u64));
        let start = Instant::now();
        let threads: Vec<_> = (0..w)
            .map(|_| {
                let (wal, next) = (wal.clone(), next.clone());
                std::thread::spawn(move || -> anyhow::Result<u64> {
                    let mut done = 0;
                    while start.elapsed() < dur {
                        let ticket = {
                            let mut n = next.lock();
                            *n += 1;
                            wal.append(batch(*n))?
                        };
                        ticket.wait()?;
                        done += 1;
                    }
                    Ok(done)
                })
            })
            .collect();
        let mut records = 0;
        for t in threads {
            records += t.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        }
        let secs = start.elapsed().as_secs_f64();
        let m = wal.metrics();
        println!(
            "wal_writers_{w}_records_per_s: {:.0}",
            records as f64 / secs
        );
        println!(
            "wal_writers_{w}_fsyncs_per_s: {:.0}",
            m.fsync_count as f64 / secs
        );
        println!(
            "wal_writers_{w}_records_per_fsync: {:.1}",
            records as f64 / m.fsync_count.max(1) as f64
        );
    }
    Ok(())
}

fn batch(index: u64) -> WriteBatch {
    WriteBatch {
        entries: vec![Entry {
            index,
            term: 1,
            data: vec![7u8; 256].into(),
        }],
        ..Default::default()
    }
}

fn raw_fdatasync(path: &std::path::Path, dur: Duration) -> anyhow::Result<Histogram<u64>> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    let block = vec![1u8; 4096];
    let mut h = Histogram::<u64>::new(3)?;
    let start = Instant::now();
    while start.elapsed() < dur {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        h.record(t.elapsed().as_micros() as u64)?;
    }
    Ok(h)
}

fn print_latency(name: &str, h: &Histogram<u64>, elapsed: Duration) {
    println!(
        "{name}_ops_per_s: {:.0}",
        h.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "{name}_p50_ms: {:.3}",
        h.value_at_quantile(0.5) as f64 / 1000.0
    );
    println!(
        "{name}_p99_ms: {:.3}",
        h.value_at_quantile(0.99) as f64 / 1000.0
    );
}
