//! The Prometheus metrics of one member, under etcd's names, types and
//! help texts (etcd's `etcdserver/metrics.go`, `mvcc/metrics.go`,
//! `wal/metrics.go`, `mvcc/backend/metrics.go`), so that etcd's Grafana
//! dashboard and etcd-mixin's alerts work unchanged.
//!
//! Each member has its own [`Registry`] (an embedding program may run
//! several members in one process, so nothing is global). Three kinds of
//! series:
//! - counted as things happen: proposals pending and failed, and the KV
//!   request counters (counted on the member that served the request);
//! - read from the member's state at scrape time ([`Etcd::gather`](crate::Etcd::gather)):
//!   leader, leader changes, commit and applied indexes, database sizes,
//!   keys, quota;
//! - histograms owned by the layers below: the WAL's fsync latencies
//!   (`etcd-wal` keeps its own buckets, published here as a family) and the
//!   backend commit latencies (a histogram of `etcd-mvcc`'s store).
//!
//! The server adds its gRPC series (`grpc_server_*`, client bytes) to the
//! same registry through [`Metrics::registry`]; `process_*` come from the
//! prometheus crate's process collector.

use crate::SERVER_VERSION;
use etcd_mvcc::Store;
use etcd_raft_node::{NodeStatus, Role};
use prometheus::proto::{Bucket, Histogram, Metric, MetricFamily, MetricType};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// One member's metrics.
pub struct Metrics {
    /// Everything below, plus what the server registers.
    registry: Registry,
    /// `etcd_server_proposals_pending`: proposals waiting to be applied.
    pub(crate) proposals_pending: IntGauge,
    /// `etcd_server_proposals_failed_total`: proposals that raft dropped or
    /// that timed out.
    pub(crate) proposals_failed: IntCounter,
    /// `etcd_mvcc_range_total`.
    pub(crate) ranges: IntCounter,
    /// `etcd_mvcc_put_total`.
    pub(crate) puts: IntCounter,
    /// `etcd_mvcc_delete_total`.
    pub(crate) deletes: IntCounter,
    /// `etcd_mvcc_txn_total`.
    pub(crate) txns: IntCounter,
    /// `etcd_mvcc_hash_duration_seconds`: Maintenance.Hash.
    pub(crate) hash_seconds: prometheus::Histogram,
    /// Set at scrape time, see [`Metrics::gather`].
    has_leader: IntGauge,
    is_leader: IntGauge,
    leader_changes: IntCounter,
    proposals_committed: IntGauge,
    proposals_applied: IntGauge,
    db_total_size: IntGauge,
    db_in_use: IntGauge,
    keys: IntGauge,
    peer_sent: IntCounterVec,
    peer_received: IntCounterVec,
    peer_failures: IntCounterVec,
    /// `etcd_network_peer_round_trip_time_seconds{To}`, observed by the
    /// prober (`server/prober.rs`).
    peer_rtt: HistogramVec,
}

/// Traffic with the other members, read from the peer transport at scrape
/// time.
#[derive(Default)]
pub(crate) struct PeerTraffic {
    /// `(to, bytes sent, messages or snapshots that failed)`.
    pub(crate) sent: Vec<(u64, u64, u64)>,
    /// `(from, bytes received)`.
    pub(crate) received: Vec<(u64, u64)>,
}

fn counter_vec(r: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid counter");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

/// Raises counter `c` to `total` (a count kept elsewhere).
fn catch_up(c: &IntCounter, total: u64) {
    c.inc_by(total.saturating_sub(c.get()));
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid gauge");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid counter");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

/// A gauge of value 1 whose label says something (etcd's
/// `etcd_server_version{server_version="3.5.0"}`).
fn info(r: &Registry, name: &str, help: &str, label: &str, value: &str) {
    let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid gauge");
    g.with_label_values(&[value]).set(1);
    r.register(Box::new(g)).expect("registered once");
}

impl Metrics {
    /// The metrics of a member with id `member_id`, quota `quota_bytes` and
    /// the store's histograms (`Store::commit_duration`,
    /// `Store::hash_rev_duration`).
    pub(crate) fn new(
        member_id: u64,
        quota_bytes: u64,
        commit_duration: prometheus::Histogram,
        hash_rev_duration: prometheus::Histogram,
    ) -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("registered once");
        r.register(Box::new(commit_duration))
            .expect("registered once");
        r.register(Box::new(hash_rev_duration))
            .expect("registered once");
        let hash_seconds = etcd_mvcc::hash_histogram(
            "etcd_mvcc_hash_duration_seconds",
            "The latency distribution of storage hash operation.",
        );
        r.register(Box::new(hash_seconds.clone()))
            .expect("registered once");
        let quota = gauge(
            &r,
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
        );
        quota.set(i64::try_from(quota_bytes).unwrap_or(i64::MAX));
        info(
            &r,
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            "server_version",
            SERVER_VERSION,
        );
        info(
            &r,
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            "server_id",
            &format!("{member_id:x}"),
        );
        Metrics {
            proposals_pending: gauge(
                &r,
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            ),
            proposals_failed: counter(
                &r,
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            ),
            ranges: counter(
                &r,
                "etcd_mvcc_range_total",
                "Total number of ranges seen by this member.",
            ),
            puts: counter(
                &r,
                "etcd_mvcc_put_total",
                "Total number of puts seen by this member.",
            ),
            deletes: counter(
                &r,
                "etcd_mvcc_delete_total",
                "Total number of deletes seen by this member.",
            ),
            txns: counter(
                &r,
                "etcd_mvcc_txn_total",
                "Total number of txns seen by this member.",
            ),
            hash_seconds,
            has_leader: gauge(
                &r,
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                &r,
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            leader_changes: counter(
                &r,
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            ),
            proposals_committed: gauge(
                &r,
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            proposals_applied: gauge(
                &r,
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            db_total_size: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ),
            db_in_use: gauge(
                &r,
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            ),
            keys: gauge(
                &r,
                "etcd_debugging_mvcc_keys_total",
                "Total number of keys.",
            ),
            peer_sent: counter_vec(
                &r,
                "etcd_network_peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                "To",
            ),
            peer_received: counter_vec(
                &r,
                "etcd_network_peer_received_bytes_total",
                "The total number of bytes received from peers.",
                "From",
            ),
            peer_failures: counter_vec(
                &r,
                "etcd_network_peer_sent_failures_total",
                "The total number of send failures from peers.",
                "To",
            ),
            peer_rtt: {
                // etcd: 0.0001 s * 2^n, n = 0..15.
                let buckets = prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid");
                let opts = HistogramOpts::new(
                    "etcd_network_peer_round_trip_time_seconds",
                    "Round-Trip-Time histogram between peers",
                )
                .buckets(buckets);
                let h = HistogramVec::new(opts, &["To"]).expect("valid histogram");
                r.register(Box::new(h.clone())).expect("registered once");
                h
            },
            registry: r,
        }
    }

    /// Records a round trip time to member `to` (the prober's smoothed
    /// value, as etcd observes it).
    pub(crate) fn observe_peer_rtt(&self, to: u64, rtt: std::time::Duration) {
        self.peer_rtt
            .with_label_values(&[&format!("{to:x}")])
            .observe(rtt.as_secs_f64());
    }

    /// The registry, for the server to add its own series (gRPC).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// Counts a pending proposal until dropped.
pub(crate) struct Pending<'a>(&'a IntGauge);

impl<'a> Pending<'a> {
    pub(crate) fn new(g: &'a IntGauge) -> Self {
        g.inc();
        Pending(g)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Every series now: the scrape-time ones are set from raft's status
    /// `st`, the applied index, the store and the WAL's metrics first.
    pub(crate) fn gather(
        &self,
        st: &NodeStatus,
        applied: u64,
        store: &Store,
        wal: &etcd_wal::WalMetrics,
        peers: &PeerTraffic,
    ) -> Vec<MetricFamily> {
        for (to, bytes, failures) in &peers.sent {
            let to = format!("{to:x}");
            catch_up(&self.peer_sent.with_label_values(&[&to]), *bytes);
            if *failures > 0 {
                catch_up(&self.peer_failures.with_label_values(&[&to]), *failures);
            }
        }
        for (from, bytes) in &peers.received {
            catch_up(
                &self
                    .peer_received
                    .with_label_values(&[&format!("{from:x}")]),
                *bytes,
            );
        }
        self.has_leader.set(i64::from(st.leader_id != 0));
        self.is_leader.set(i64::from(st.role == Role::Leader));
        catch_up(&self.leader_changes, st.leader_changes);
        self.proposals_committed.set(st.commit_index as i64);
        self.proposals_applied.set(applied as i64);
        self.db_total_size.set(store.db_size() as i64);
        self.db_in_use.set(store.db_size_in_use() as i64);
        self.keys.set(store.key_count() as i64);
        let mut families = self.registry.gather();
        families.push(wal_fsync_family(wal));
        // How the write path batches (issue 16): entries per WAL batch (a
        // raft Ready) and batches per group commit (one write + fsync).
        for (name, help, value) in [
            (
                "etcd_debugging_wal_batches_total",
                "Batches appended to the WAL (about one per raft Ready).",
                wal.batches_total,
            ),
            (
                "etcd_debugging_wal_entries_total",
                "Raft entries appended to the WAL.",
                wal.entries_total,
            ),
            (
                "etcd_debugging_wal_group_commits_total",
                "WAL group commits (one write and at most one fsync each).",
                wal.group_commits_total,
            ),
            (
                "etcd_debugging_wal_caller_commits_total",
                "WAL group commits made by the raft thread itself under light load \
                 (no hand-off to the WAL writer thread).",
                wal.caller_commits_total,
            ),
        ] {
            families.push(counter_family(name, help, value));
        }
        // etcd 3.4's names of series 3.5 renamed (3.4-era dashboards).
        let aliases: Vec<MetricFamily> = families
            .iter()
            .filter_map(|f| {
                let old = ALIASES.iter().find(|(new, _)| *new == f.name())?.1;
                let mut f = f.clone();
                f.set_name(old.into());
                Some(f)
            })
            .collect();
        families.extend(aliases);
        families.sort_by(|a, b| a.name().cmp(b.name()));
        families
    }
}

/// (3.5 name, 3.4 name) of series exported under both.
const ALIASES: [(&str, &str); 5] = [
    ("etcd_mvcc_put_total", "etcd_debugging_mvcc_put_total"),
    ("etcd_mvcc_range_total", "etcd_debugging_mvcc_range_total"),
    ("etcd_mvcc_delete_total", "etcd_debugging_mvcc_delete_total"),
    ("etcd_mvcc_txn_total", "etcd_debugging_mvcc_txn_total"),
    (
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_debugging_mvcc_db_total_size_in_bytes",
    ),
];

/// A counter family of one series with `value`.
fn counter_family(name: &str, help: &str, value: u64) -> MetricFamily {
    let mut c = prometheus::proto::Counter::default();
    c.set_value(value as f64);
    let mut metric = Metric::default();
    metric.set_counter(c);
    let mut f = MetricFamily::default();
    f.set_name(name.into());
    f.set_help(help.into());
    f.set_field_type(MetricType::COUNTER);
    f.set_metric(vec![metric]);
    f
}

/// `etcd_disk_wal_fsync_duration_seconds` from the WAL's own buckets.
fn wal_fsync_family(w: &etcd_wal::WalMetrics) -> MetricFamily {
    let mut h = Histogram::default();
    h.set_sample_count(w.fsync_count);
    h.set_sample_sum(w.fsync_duration_sum_seconds);
    h.set_bucket(
        w.fsync_duration_buckets
            .iter()
            .map(|&(le, count)| {
                let mut b = Bucket::default();
                b.set_upper_bound(le);
                b.set_cumulative_count(count);
                b
            })
            .collect(),
    );
    let mut metric = Metric::default();
    metric.set_histogram(h);
    let mut f = MetricFamily::default();
    f.set_name("etcd_disk_wal_fsync_duration_seconds".into());
    f.set_help("The latency distributions of fsync called by WAL.".into());
    f.set_field_type(MetricType::HISTOGRAM);
    f.set_metric(vec![metric]);
    f
}
