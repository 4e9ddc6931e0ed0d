//! Counters and the fsync latency histogram.
//!
//! Buckets match etcd's `etcd_disk_wal_fsync_duration_seconds`
//! (0.001 * 2^n seconds, n = 0..13), so a Prometheus exporter can publish
//! [`WalMetrics`] under etcd's names and existing dashboards keep working.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the fsync duration buckets: 0.001 * 2^n, n = 0..13.
pub const FSYNC_DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// A point-in-time copy of the WAL's metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WalMetrics {
    /// fdatasync/fsync calls on the write path (`..._fsync_duration_seconds_count`).
    pub fsync_count: u64,
    /// Total seconds spent in them (`..._fsync_duration_seconds_sum`).
    pub fsync_duration_sum_seconds: f64,
    /// Prometheus-style cumulative buckets: `(le in seconds, count of fsyncs
    /// that took at most le)`, for [`FSYNC_DURATION_BUCKETS`]; the `+Inf`
    /// bucket is `fsync_count`.
    pub fsync_duration_buckets: Vec<(f64, u64)>,
    /// Bytes written to segment files (records and preambles).
    pub bytes_written_total: u64,
    /// Batches accepted by `append`.
    pub batches_total: u64,
    /// Entries in those batches (entries per batch: how much raft batched
    /// per `Ready`).
    pub entries_total: u64,
    /// Group commits (one write, at most one fdatasync each).
    pub group_commits_total: u64,
    /// Of those, the ones made on the caller's thread by
    /// `Wal::append_sync_now` (no hand-off to the writer thread).
    pub caller_commits_total: u64,
}

#[derive(Debug, Default)]
pub(crate) struct MetricsCollector {
    fsyncs: AtomicU64,
    fsync_nanos: AtomicU64,
    buckets: [AtomicU64; 14],
    bytes: AtomicU64,
    batches: AtomicU64,
    entries: AtomicU64,
    group_commits: AtomicU64,
    caller_commits: AtomicU64,
}

impl MetricsCollector {
    pub fn observe_fsync(&self, d: Duration) {
        self.fsyncs.fetch_add(1, Relaxed);
        self.fsync_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Relaxed);
        let secs = d.as_secs_f64();
        if let Some(i) = FSYNC_DURATION_BUCKETS.iter().position(|&le| secs <= le) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
    }

    pub fn add_bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Relaxed);
    }

    pub fn add_batch(&self, entries: usize) {
        self.batches.fetch_add(1, Relaxed);
        self.entries.fetch_add(entries as u64, Relaxed);
    }

    pub fn add_group_commit(&self) {
        self.group_commits.fetch_add(1, Relaxed);
    }

    pub fn add_caller_commit(&self) {
        self.caller_commits.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> WalMetrics {
        let mut cumulative = 0;
        let fsync_duration_buckets = FSYNC_DURATION_BUCKETS
            .iter()
            .zip(&self.buckets)
            .map(|(&le, c)| {
                cumulative += c.load(Relaxed);
                (le, cumulative)
            })
            .collect();
        WalMetrics {
            fsync_count: self.fsyncs.load(Relaxed),
            fsync_duration_sum_seconds: self.fsync_nanos.load(Relaxed) as f64 / 1e9,
            fsync_duration_buckets,
            bytes_written_total: self.bytes.load(Relaxed),
            batches_total: self.batches.load(Relaxed),
            entries_total: self.entries.load(Relaxed),
            group_commits_total: self.group_commits.load(Relaxed),
            caller_commits_total: self.caller_commits.load(Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative() {
        let m = MetricsCollector::default();
        m.observe_fsync(Duration::from_micros(500));
        m.observe_fsync(Duration::from_millis(3));
        m.observe_fsync(Duration::from_secs(20));
        let s = m.snapshot();
        assert_eq!(s.fsync_count, 3);
        assert_eq!(s.fsync_duration_buckets[0], (0.001, 1));
        assert_eq!(s.fsync_duration_buckets[2], (0.004, 2));
        assert_eq!(s.fsync_duration_buckets[13], (8.192, 2));
        assert!((s.fsync_duration_sum_seconds - 20.0035).abs() < 1e-6);
    }
}
