//! `--auto-compaction-mode periodic --auto-compaction-retention 1s` on 3
//! members, this server and the real etcd 3.4 side by side: history older
//! than the retention is compacted without anyone asking, reads of it fail
//! with etcd's error, current data stays readable, and the compaction is
//! the leader's (this server's log says so with etcd's zap messages).
//! Revision mode checks every 5 minutes, too slow here: the unit tests of
//! `etcd-core`'s `compactor` cover its decisions.

mod common;

use common::cluster::Cluster;
use common::Kind;
use std::time::{Duration, Instant};

/// Writes two revisions, then waits until the first is compacted; returns
/// etcdctl's error for it and the current value.
fn compacts_on_its_own(kind: Kind) -> (String, String, Cluster) {
    let c = Cluster::start_with(
        kind,
        3,
        &[
            "--auto-compaction-mode",
            "periodic",
            "--auto-compaction-retention",
            "1s",
        ],
    );
    c.put(0, "k", "v1");
    let rev = c.ctl_ok(0, &["get", "k", "-w", "json"]);
    let rev: serde_json::Value = serde_json::from_str(&rev).unwrap();
    let rev = rev["kvs"][0]["mod_revision"].as_i64().unwrap().to_string();
    c.put(0, "k", "v2");
    let deadline = Instant::now() + Duration::from_secs(60);
    let err = loop {
        let out = c.ctl(1, &["get", "k", "--rev", &rev]);
        if !out.status.success() {
            break common::cluster::error_line(&out);
        }
        assert!(
            Instant::now() < deadline,
            "{kind:?}: revision {rev} still readable after 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let value = c.get(2, "k", false).unwrap_or_default();
    (err, value, c)
}

#[test]
fn periodic_auto_compaction_matches_etcd() {
    let (ours_err, ours_value, c) = compacts_on_its_own(Kind::Ours);
    let leader = c.wait_leader(Duration::from_secs(10));
    let log = c.log(leader);
    assert!(
        log.contains("starting auto periodic compaction")
            && log.contains("completed auto periodic compaction"),
        "the leader's log tells of its compactions:\n{}",
        c.log_tails(20)
    );
    drop(c);
    let (real_err, real_value, _c) = compacts_on_its_own(Kind::Real);
    assert_eq!(ours_err, real_err);
    assert_eq!(
        ours_err,
        "Error: etcdserver: mvcc: required revision has been compacted"
    );
    assert_eq!((ours_value.as_str(), real_value.as_str()), ("v2", "v2"));
}
