//! Crashes and failures at named points of the server binary (its
//! failpoints, `etcd_core::failpoints`, set through `$FAILPOINTS`), each
//! during the operation it sits in: the process must stop (fail-stop:
//! status 1, a `fatal error` line), and a restart must lose no
//! acknowledged write and find a consistent state.

mod common;

use common::cluster::Cluster;
use common::{Kind, Server};
use etcd_server::rpc::etcdserverpb::{kv_client::KvClient, PutRequest};
use std::time::Duration;

/// Puts `k/<n>` = `<n>` one after another, at most `max` of them, until
/// one fails; the acknowledged keys' numbers.
fn put_until_failure(s: &Server, max: usize) -> Vec<usize> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut kv = KvClient::new(s.channel().await);
        let mut acked = Vec::new();
        for i in 0..max {
            let put = kv.put(PutRequest {
                key: format!("k/{i:04}").into(),
                value: i.to_string().into(),
                ..Default::default()
            });
            match tokio::time::timeout(Duration::from_secs(30), put).await {
                Ok(Ok(_)) => acked.push(i),
                _ => break,
            }
        }
        acked
    })
}

/// Restarts `s` with `point` set to `action`.
fn restart_with(s: &mut Server, point: &str, action: &str) {
    assert!(s.terminate().success());
    s.env = vec![("FAILPOINTS".into(), format!("{point}={action}"))];
    s.restart();
}

/// Waits for the fail-stop exit, then restarts without failpoints.
fn expect_fatal_then_restart(s: &mut Server, point: &str) {
    let status = s.wait_exit(Duration::from_secs(60));
    let log = s.log_text();
    assert_eq!(status.code(), Some(1), "{point}: {status}; log:\n{log}");
    assert!(log.contains("fatal error"), "{point}: {log}");
    s.env.clear();
    s.restart();
}

/// Every acknowledged put is there, with its value, and the keys were
/// applied in the order they were written (mod revisions increase).
fn check_puts(s: &Server, acked: &[usize], point: &str) {
    let out = s.ctl_ok(&["get", "--prefix", "k/", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kvs = v["kvs"].as_array().cloned().unwrap_or_default();
    let mut revisions = Vec::new();
    for kv in &kvs {
        let key = String::from_utf8(common::unbase64(kv["key"].as_str().unwrap())).unwrap();
        let value = String::from_utf8(common::unbase64(kv["value"].as_str().unwrap())).unwrap();
        let n: usize = key["k/".len()..].parse().unwrap();
        assert_eq!(value, n.to_string(), "{point}: {key}");
        revisions.push(kv["mod_revision"].as_i64().unwrap());
    }
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "{point}: keys applied out of order: {revisions:?}"
    );
    // The acknowledged puts, and at most the one in flight after them.
    let present = kvs.len();
    let last = acked.last().map_or(0, |l| l + 1);
    assert!(
        present == last || present == last + 1,
        "{point}: {present} keys after {last} acknowledged puts"
    );
}

/// A crash (panic) or an fsync error at a point of the write path, after
/// 30 passes: the member stops, the restart keeps every acknowledged put.
#[test]
fn write_path_points() {
    for (point, action) in [
        ("wal::sync::before", "30*off->panic"),
        // EIO on fsync: the WAL is poisoned, raft stops the process.
        ("wal::sync::before", "30*off->return"),
        ("apply::entry::after_store", "30*off->panic"),
    ] {
        let mut s = Server::start(Kind::Ours);
        restart_with(&mut s, point, action);
        let acked = put_until_failure(&s, 500);
        assert!(
            acked.len() < 500,
            "{point}={action}: never fired ({} puts)",
            acked.len()
        );
        expect_fatal_then_restart(&mut s, point);
        check_puts(&s, &acked, point);
        s.ctl_ok(&["put", "after", "restart"]);
    }
}

/// A crash in the middle of a compaction: after the restart the
/// compaction is finished (resumed) and the latest values are intact.
#[test]
fn crash_mid_compaction() {
    let mut s = Server::start(Kind::Ours);
    for round in 0..10 {
        for k in 0..20 {
            s.ctl_ok(&["put", &format!("c/{k:02}"), &format!("{round}")]);
        }
    }
    let status = s.ctl_ok(&["endpoint", "status", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let rev = v[0]["Status"]["header"]["revision"].as_i64().unwrap();
    restart_with(&mut s, "compact::mid", "panic");
    // The compaction is acknowledged once raft applied it; its physical
    // part runs after and crashes.
    let _ = s.etcdctl(&["compact", &(rev - 5).to_string()]);
    expect_fatal_then_restart(&mut s, "compact::mid");
    let err = s.ctl_err(&["get", "c/00", &format!("--rev={}", rev - 10)]);
    assert!(
        err.contains("required revision has been compacted"),
        "{err}"
    );
    for k in 0..20 {
        let v = s.ctl_ok(&["get", &format!("c/{k:02}"), "--print-value-only"]);
        assert_eq!(v.trim(), "9", "c/{k:02}");
    }
    // The history kept is readable (c/19 became 9 at `rev`).
    let old = s.ctl_ok(&[
        "get",
        "c/19",
        &format!("--rev={}", rev - 1),
        "--print-value-only",
    ]);
    assert_eq!(old.trim(), "8");
}

/// A crash in the middle of a defragmentation loses nothing.
#[test]
fn crash_mid_defragmentation() {
    let mut s = Server::start(Kind::Ours);
    let acked = put_until_failure(&s, 300);
    assert_eq!(acked.len(), 300);
    restart_with(&mut s, "defrag::mid", "panic");
    assert!(!s.etcdctl(&["defrag"]).status.success());
    expect_fatal_then_restart(&mut s, "defrag::mid");
    check_puts(&s, &acked, "defrag::mid");
    s.ctl_ok(&["defrag"]);
}

/// A follower that crashes while installing the leader's snapshot image
/// installs it again after its restart and catches up.
#[test]
fn crash_mid_snapshot_install() {
    let mut c = Cluster::start_with(
        Kind::Ours,
        3,
        &[
            "--snapshot-count=50",
            "--experimental-snapshot-catchup-entries=10",
        ],
    );
    c.kill9(2);
    let leader = c.wait_leader(Duration::from_secs(30));
    for i in 0..200 {
        c.put(leader, &format!("s/{i:03}"), &i.to_string());
    }
    c.members[2].env = vec![("FAILPOINTS".into(), "snapshot::install::mid=panic".into())];
    c.spawn_only(2);
    let status = c.wait_exit(2, Duration::from_secs(60));
    let log = c.log(2);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{log}");
    assert!(log.contains("fatal error"), "{log}");
    c.members[2].env.clear();
    c.restart(2);
    c.wait_value(2, "s/199", "199", Duration::from_secs(60));
    for i in (0..200).step_by(37) {
        assert_eq!(
            c.get(2, &format!("s/{i:03}"), true).as_deref(),
            Some(i.to_string().as_str())
        );
    }
}
