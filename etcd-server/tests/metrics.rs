//! `/metrics` scraped from a 3-member cluster of this server and of the
//! real etcd 3.4 after the same etcdctl workload, both parsed with a
//! Prometheus text-format parser: every series etcd-mixin's alerts and
//! dashboard query (docs/metrics-reference.md §4) exists in ours with the
//! same type, the same label names and, for histograms, the same buckets.
//! The prober's round trip histogram appears once the first probes are
//! reported (5 s after start, on both): the scrape waits for it.

mod common;

use common::cluster::Cluster;
use common::Kind;
use prometheus_parse::{Scrape, Value};
use std::collections::{BTreeMap, BTreeSet};

/// What etcd-mixin (current and 3.4-era) queries, as exported names.
const MIXIN: &[&str] = &[
    "etcd_server_has_leader",
    "etcd_server_leader_changes_seen_total",
    "etcd_server_proposals_failed_total",
    "etcd_server_proposals_pending",
    "etcd_server_proposals_committed_total",
    "etcd_server_proposals_applied_total",
    "etcd_server_quota_backend_bytes",
    "etcd_mvcc_db_total_size_in_bytes",
    "etcd_mvcc_db_total_size_in_use_in_bytes",
    "etcd_debugging_mvcc_db_total_size_in_bytes",
    "etcd_disk_wal_fsync_duration_seconds",
    "etcd_disk_backend_commit_duration_seconds",
    "etcd_network_peer_sent_bytes_total",
    "etcd_network_peer_received_bytes_total",
    "etcd_network_peer_round_trip_time_seconds",
    "etcd_network_client_grpc_sent_bytes_total",
    "etcd_network_client_grpc_received_bytes_total",
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_server_handling_seconds",
    "process_resident_memory_bytes",
];

/// Per family: its type, the label-name sets of its series (without
/// `le`), and its bucket bounds (histograms).
#[derive(Debug, PartialEq)]
struct Family {
    kind: &'static str,
    labels: BTreeSet<Vec<String>>,
    buckets: Vec<String>,
}

fn scrape(kind: Kind) -> (BTreeMap<String, Family>, Scrape) {
    let c = Cluster::start_with(kind, 3, &["--metrics", "extensive"]);
    c.put(0, "k", "v");
    c.ctl_ok(0, &["get", "k"]);
    c.ctl_ok(0, &["del", "k"]);
    // A watch that ends by the client going away (etcd: Canceled).
    let _ = std::process::Command::new("timeout")
        .args([
            "1",
            "etcdctl",
            "--endpoints",
            &c.members[0].client_url,
            "watch",
            "k",
        ])
        .env("ETCDCTL_API", "3")
        .output();
    let lease = c.ctl_ok(0, &["lease", "grant", "60"]);
    let id = lease.split_whitespace().nth(1).unwrap().to_string();
    c.ctl_ok(0, &["lease", "keep-alive", "--once", &id]);
    let url = format!("{}/metrics", c.members[0].client_url);
    // The prober reports its first round trips 5 s after start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let text = loop {
        let out = std::process::Command::new("curl")
            .args(["-s", "-f", &url])
            .output()
            .expect("curl");
        assert!(out.status.success(), "{kind:?}: GET /metrics failed");
        let text = String::from_utf8(out.stdout).unwrap();
        if text.contains("etcd_network_peer_round_trip_time_seconds_bucket") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{kind:?}: no round trip times after 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    };
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for s in &parsed.samples {
        let (kind, buckets) = match &s.value {
            Value::Counter(_) => ("counter", vec![]),
            Value::Gauge(_) => ("gauge", vec![]),
            Value::Histogram(h) => (
                "histogram",
                h.iter().map(|b| b.less_than.to_string()).collect(),
            ),
            Value::Summary(_) => ("summary", vec![]),
            Value::Untyped(_) => ("untyped", vec![]),
        };
        let mut names: Vec<String> = s.labels.keys().cloned().collect();
        names.sort();
        let f = families.entry(s.metric.clone()).or_insert(Family {
            kind,
            labels: BTreeSet::new(),
            buckets: buckets.clone(),
        });
        f.labels.insert(names);
    }
    (families, parsed)
}

fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[test]
fn mixin_series_match_etcd() {
    let (ours, ours_scrape) = scrape(Kind::Ours);
    let (real, real_scrape) = scrape(Kind::Real);
    for name in MIXIN {
        let r = real
            .get(*name)
            .unwrap_or_else(|| panic!("etcd 3.4 lacks {name}"));
        let o = ours.get(*name).unwrap_or_else(|| panic!("we lack {name}"));
        assert_eq!(o, r, "{name}: ours vs etcd 3.4");
    }
    // The values the dashboard's first panels show.
    for (what, s) in [("ours", &ours_scrape), ("etcd", &real_scrape)] {
        assert_eq!(value(s, "etcd_server_has_leader", &[]), 1.0, "{what}");
        let put = [("grpc_method", "Put"), ("grpc_service", "etcdserverpb.KV")];
        assert!(value(s, "grpc_server_started_total", &put) >= 1.0, "{what}");
        let ok = [("grpc_method", "Put"), ("grpc_code", "OK")];
        assert!(value(s, "grpc_server_handled_total", &ok) >= 1.0, "{what}");
        assert!(
            value(s, "etcd_network_peer_sent_bytes_total", &[]) > 0.0,
            "{what}"
        );
        assert!(
            value(s, "etcd_network_peer_received_bytes_total", &[]) > 0.0,
            "{what}"
        );
        assert!(
            value(s, "etcd_server_proposals_committed_total", &[]) > 0.0,
            "{what}"
        );
    }
}

/// `GET path` on member `i`: (HTTP status, body).
fn http_get(c: &Cluster, i: usize, path: &str) -> (String, String) {
    let url = format!("{}{path}", c.members[i].client_url);
    let o = std::process::Command::new("curl")
        .args(["-s", "-m", "30", "-w", "\n%{http_code}", &url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (code.to_string(), body.to_string())
}

/// `/livez` and `/readyz` (etcd 3.5.11+; etcd 3.4 has neither, so this is
/// not differential): a member that lost its quorum is live (serializable
/// reads work) but not ready (linearizable reads fail).
#[test]
fn livez_and_readyz() {
    let mut c = Cluster::start(Kind::Ours, 3);
    c.put(0, "k", "v");
    assert_eq!(http_get(&c, 0, "/livez"), ("200".into(), "ok".into()));
    assert_eq!(http_get(&c, 0, "/readyz"), ("200".into(), "ok".into()));
    let (code, body) = http_get(&c, 0, "/readyz?verbose");
    assert_eq!(code, "200");
    assert_eq!(
        body,
        "[+]data_corruption ok\n[+]serializable_read ok\n[+]linearizable_read ok\n\
         readyz check passed\n"
    );
    c.kill9(1);
    c.kill9(2);
    assert_eq!(http_get(&c, 0, "/livez").0, "200");
    let (code, body) = http_get(&c, 0, "/readyz");
    assert_eq!(code, "503", "{body}");
    assert!(body.contains("[-]linearizable_read failed"), "{body}");
    assert!(body.ends_with("readyz check failed\n"), "{body}");
    let (code, _) = http_get(&c, 0, "/readyz?exclude=linearizable_read");
    assert_eq!(code, "200");
}
