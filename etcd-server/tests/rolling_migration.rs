//! A running etcd 3.4 cluster moved onto this server one member at a time,
//! with a client writing throughout (issue 14's rolling migration): each
//! etcd member is stopped and this server started on its data directory
//! (`etcd_import`), and until the last one is replaced etcd members and
//! ours run one cluster (`etcd_raft_node::rafthttp`, entries translated by
//! `etcd_core::etcd_entries`). The real etcd is the oracle throughout:
//! every member, of either kind, must answer the same reads and the same
//! HashKV at every step. At the end the way back: a snapshot of ours
//! restored by the real etcdctl into a new etcd cluster.

mod common;

use common::cluster::{ctl_at, Cluster};
use common::{etcdctl_path, Kind, Server};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECS_30: Duration = Duration::from_secs(30);

/// Puts `w/<n>` through every endpoint (etcdctl fails over) until stopped;
/// returns the keys whose put was acknowledged.
fn writer(endpoints: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let mut acked = Vec::new();
        let mut n = 0;
        while !stop.load(Ordering::Acquire) {
            let key = format!("w/{n:05}");
            let out = ctl_at(&endpoints, &["put", &key, &format!("v{n}")]);
            if out.status.success() {
                acked.push(key);
            }
            n += 1;
        }
        acked
    })
}

/// Stops etcd member `i` (SIGTERM, as a service manager stops it) and
/// starts this server on its data directory with the same flags.
fn replace_with_ours(c: &mut Cluster, i: usize) {
    c.terminate(i);
    c.kind = Kind::Ours;
    c.restart(i);
    c.kind = Kind::Real;
}

/// Moves the leadership to member `to` and waits until every member names
/// it, moving it again (up to three times) when it does not hold: right
/// after a member was replaced, an etcd peer that has not yet opened its
/// streams to the new member gets no heartbeats from it, campaigns (etcd
/// 3.4 runs without pre-vote) and may take the leadership back.
fn move_leader_to(c: &Cluster, to: usize) {
    for _ in 0..3 {
        if let Err(why) = c.move_leader(to) {
            eprintln!("move-leader to member {to}: {why}; retrying");
        }
        if c.wait_leader(SECS_30) == to {
            return;
        }
    }
    panic!(
        "member {to} did not keep the leadership:\n{}",
        c.log_tails(30)
    );
}

/// Every member answers the same `w/` and `k/` keys (values, revisions)
/// once it has caught up, and the same HashKV.
fn assert_members_agree(c: &Cluster, what: &str) {
    let leader = c.wait_leader(SECS_30);
    // A write every member must see before comparing.
    let marker = format!("marker-{what}");
    c.ctl_ok(leader, &["put", &marker, "x"]);
    for i in c.running().collect::<Vec<_>>() {
        c.wait_value(i, &marker, "x", SECS_30);
    }
    let rev = c.status(leader).unwrap().revision;
    let reads: Vec<String> = c
        .running()
        .map(|i| {
            c.ctl_ok(
                i,
                &[
                    "get",
                    "",
                    "--from-key",
                    "-w",
                    "json",
                    &format!("--rev={rev}"),
                ],
            )
        })
        .map(|out| {
            let mut v: serde_json::Value = serde_json::from_str(&out).unwrap();
            v["header"] = serde_json::Value::Null;
            v.to_string()
        })
        .collect();
    for r in &reads[1..] {
        assert_eq!(r, &reads[0], "{what}: members disagree at revision {rev}");
    }
    c.assert_hash_kv_equal(SECS_30);
}

/// Grants a lease through member `at`; its id in hex.
fn grant(c: &Cluster, at: usize, ttl: u32) -> String {
    let out = c.ctl_ok(at, &["lease", "grant", &ttl.to_string()]);
    out.split_whitespace().nth(1).unwrap().to_string()
}

/// A keep-alive and a TimeToLive of `lease` through member `at` (a
/// follower: both go to the leader, which runs the other kind).
fn keep_alive_through(c: &Cluster, at: usize, lease: &str, ttl: u32) {
    let out = c.ctl_ok(at, &["lease", "keep-alive", "--once", lease]);
    assert!(
        out.contains(&format!("keepalived with TTL({ttl})")),
        "keep-alive through member {at}: {out}"
    );
    let out = c.ctl_ok(at, &["lease", "timetolive", lease]);
    assert!(
        out.contains(&format!("granted with TTL({ttl}s)")),
        "timetolive through member {at}: {out}"
    );
    // A lease the leader does not know: etcd's "not found", across kinds.
    let out = c.ctl(at, &["lease", "keep-alive", "--once", "1234abcd"]);
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("requested lease not found"), "{text}");
}

/// Users added through a member of each kind (ours leading) can log in on
/// every member: etcd 3.4 members hash the password themselves, so it
/// travels in the entry while they remain.
fn users_across_kinds(c: &Cluster, ours: usize, etcd: usize) {
    c.ctl_ok(ours, &["user", "add", "root:rootpw"]);
    c.ctl_ok(ours, &["user", "grant-role", "root", "root"]);
    c.ctl_ok(ours, &["user", "add", "alice:alicepw"]);
    c.ctl_ok(etcd, &["user", "add", "bob:bobpw"]);
    c.ctl_ok(etcd, &["role", "add", "reader"]);
    c.ctl_ok(
        ours,
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "k/",
            "--prefix",
        ],
    );
    c.ctl_ok(ours, &["user", "grant-role", "alice", "reader"]);
    c.ctl_ok(etcd, &["user", "grant-role", "bob", "reader"]);
    c.ctl_ok(ours, &["auth", "enable"]);
    for i in 0..3 {
        for user in ["alice:alicepw", "bob:bobpw"] {
            let out = c.ctl_retry(
                i,
                &["--user", user, "get", "k/00"],
                &["authentication failed", "user name not found"],
                SECS_30,
            );
            assert!(
                out.status.success(),
                "{user} on member {i}: {}",
                common::cluster::error_line(&out)
            );
        }
        let out = c.ctl(i, &["--user", "alice:wrong", "get", "k/00"]);
        assert!(
            !out.status.success(),
            "a wrong password works on member {i}"
        );
        let out = c.ctl(i, &["--user", "bob:", "get", "k/00"]);
        assert!(
            !out.status.success(),
            "an empty password works on member {i}"
        );
    }
    c.ctl_ok(ours, &["--user", "root:rootpw", "auth", "disable"]);
}

/// Every key of a member's store (its `get --from-key` as JSON, without
/// the header that names the member).
fn all_keys(out: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(out).unwrap();
    v["kvs"].to_string()
}

/// Back to etcd, as the guides do: `etcdctl snapshot save` from a member
/// of ours, the real `etcdctl snapshot restore` into three new data
/// directories, the real etcd 3.4 started on them: the same keys, with
/// the same revisions and versions.
fn back_to_etcd(c: &Cluster) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.db");
    c.ctl_ok(0, &["snapshot", "save", file.to_str().unwrap()]);
    let want = all_keys(&c.ctl_ok(0, &["get", "", "--from-key", "-w", "json"]));
    let (peers, initial) = common::loopback_peers("back", 3);
    let mut members = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join(format!("back{i}.etcd"));
        let out = std::process::Command::new(etcdctl_path())
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(&file)
            .args(["--name", &format!("back{i}"), "--data-dir"])
            .arg(&data_dir)
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-token", "back-to-etcd"])
            .args(["--initial-advertise-peer-urls", peer])
            .output()
            .unwrap();
        assert!(out.status.success(), "etcdctl snapshot restore: {out:?}");
        members.push(Server::launch_on(
            Kind::Real,
            tmp,
            data_dir,
            &format!("back{i}"),
            peer,
            Some(&initial),
            &["--initial-cluster-token", "back-to-etcd"],
        ));
    }
    for m in &mut members {
        m.wait_ready();
    }
    for m in &members {
        let got = all_keys(&m.ctl_ok(&["get", "", "--from-key", "-w", "json"]));
        assert_eq!(got, want, "etcd restored from our snapshot");
    }
}

#[test]
fn rolling_migration_of_a_running_etcd_cluster() {
    let mut c = Cluster::start(Kind::Real, 3);
    for i in 0..30 {
        c.put(i % 3, &format!("k/{i:02}"), &format!("before-{i}"));
    }
    let mut members = c.member_list();
    members.sort_by_key(|m| m.id);
    let stop = Arc::new(AtomicBool::new(false));
    let writes = writer(c.endpoints(), stop.clone());
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));

    // 1. A follower becomes ours (SIGTERM, as a service manager stops it):
    //    ours follows an etcd leader.
    let leader = c.wait_leader(SECS_30);
    let first = c.other_than(&[leader]);
    replace_with_ours(&mut c, first);
    assert!(c.log(first).contains("imported etcd's state"));
    assert!(
        c.log(first).contains("peer speaks etcd's protocol"),
        "{}",
        c.log_tails(30)
    );
    assert_members_agree(&c, "ours following etcd");
    // The etcd members see a steady peer: no stream they cannot open (etcd
    // redials every 100 ms and logs each failure). One "became inactive"
    // is allowed: the writer etcd kept for the stopped etcd process may
    // notice its broken connection only now.
    let etcd_members = [leader, c.other_than(&[leader, first])];
    let seen: Vec<usize> = etcd_members.iter().map(|&i| c.log(i).len()).collect();
    std::thread::sleep(Duration::from_secs(3));
    for (&i, &from) in etcd_members.iter().zip(&seen) {
        let new = c.log(i)[from..].to_string();
        assert!(
            !new.contains("failed to dial") && new.matches("became inactive").count() <= 1,
            "etcd member {i} complains about ours:\n{new}"
        );
    }
    // Keep-alives through ours reach the etcd leader (etcd's /leases).
    let lease = grant(&c, leader, 600);
    keep_alive_through(&c, first, &lease, 600);

    // 2. Ours leads etcd members: they apply our entries, and forward
    //    their clients' writes to us.
    move_leader_to(&c, first);
    for i in 0..3 {
        c.put(i, &format!("k/led-by-ours-{i}"), "x");
    }
    assert_members_agree(&c, "ours leading etcd");
    // An etcd follower's keep-alives reach our leader (it serves /leases).
    let etcd_follower = c.other_than(&[first]);
    keep_alive_through(&c, etcd_follower, &lease, 600);
    users_across_kinds(&c, first, etcd_follower);

    // 3. The second member: killed (kill -9), then ours on its data dir.
    let second = c.other_than(&[first]);
    c.kill9(second);
    c.kind = Kind::Ours;
    c.restart(second);
    c.kind = Kind::Real;
    assert_members_agree(&c, "two of ours, one etcd");

    // 4. The last etcd member.
    let third = c.other_than(&[first, second]);
    c.terminate(third);
    c.kind = Kind::Ours;
    c.restart(third);
    assert_members_agree(&c, "all ours");

    stop.store(true, Ordering::Release);
    let acked = writes.join().unwrap();
    assert!(
        acked.len() >= 10,
        "the writer got {} puts through",
        acked.len()
    );
    // Every acknowledged write is there, on every member.
    for i in 0..3 {
        let out = c.ctl_ok(i, &["get", "w/", "--prefix", "--keys-only"]);
        let have: std::collections::HashSet<&str> = out.lines().filter(|l| !l.is_empty()).collect();
        for k in &acked {
            if !have.contains(k.as_str()) {
                failures
                    .lock()
                    .unwrap()
                    .push(format!("member {i} lost {k}"));
            }
        }
    }
    let failures = failures.lock().unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    // Same members (ids, names, URLs), and the cluster goes on.
    let mut now = c.member_list();
    now.sort_by_key(|m| m.id);
    assert_eq!(now, members);
    c.put(0, "after", "migration");
    for i in 0..3 {
        c.wait_value(i, "after", "migration", SECS_30);
    }
    eprintln!("{} writes acknowledged during the migration", acked.len());
    back_to_etcd(&c);
}

/// `n` puts of `bulk/<i>` through `url`, 16 at a time (each its own raft
/// entry).
fn bulk_puts(url: &str, n: usize) {
    use etcd_server::rpc::etcdserverpb::kv_client::KvClient;
    use etcd_server::rpc::etcdserverpb::PutRequest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(url.to_string())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for t in 0..16 {
            let mut kv = KvClient::new(ch.clone());
            tasks.push(tokio::spawn(async move {
                for i in (t..n).step_by(16) {
                    kv.put(PutRequest {
                        key: format!("bulk/{i:05}").into(),
                        value: format!("v{i}").into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

/// A member of ours that was down while its etcd leader took a snapshot
/// and dropped the entries it missed catches up from etcd's snapshot (the
/// bbolt database imported as when starting on an etcd data directory).
#[test]
fn ours_catches_up_from_an_etcd_leaders_snapshot() {
    // etcd snapshots every 1,000 entries and keeps 5,000 behind it.
    let mut c = Cluster::start_with(Kind::Real, 3, &["--snapshot-count", "1000"]);
    c.put(0, "k/first", "1");
    let leader = c.wait_leader(SECS_30);
    let ours = c.other_than(&[leader]);
    replace_with_ours(&mut c, ours);
    c.wait_value(ours, "k/first", "1", SECS_30);
    c.terminate(ours);
    let url = c.members[leader].client_url.clone();
    bulk_puts(&url, 7_000);
    c.put(leader, "k/last", "1");
    c.kind = Kind::Ours;
    c.restart(ours);
    c.wait_value(ours, "k/last", "1", Duration::from_secs(60));
    let log = c.log(ours);
    assert!(
        log.contains("received an etcd member's snapshot"),
        "caught up without a snapshot: {}",
        c.log_tails(20)
    );
    assert_members_agree(&c, "after an etcd snapshot");
    let out = c.ctl_ok(
        ours,
        &["get", "bulk/", "--prefix", "--limit=1", "-w", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["count"], 7000, "{out}");
}

/// Membership changes in a mixed cluster, proposed by a leader of ours
/// (the etcd members apply them translated): a learner of ours joins, is
/// promoted and removed; every member, of either kind, ends with the same
/// membership and data. (A new *etcd* member could not join under a
/// leader of ours: it needs a snapshot, which ours does not send to etcd.)
#[test]
fn membership_changes_in_a_mixed_cluster() {
    let mut c = Cluster::start(Kind::Real, 3);
    c.put(0, "k/0", "v");
    let leader = c.wait_leader(SECS_30);
    let ours = c.other_than(&[leader]);
    replace_with_ours(&mut c, ours);
    // Both etcd members have opened their streams to ours before it leads.
    let deadline = std::time::Instant::now() + SECS_30;
    while c.log(ours).matches("peer speaks etcd's protocol").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the etcd members never opened their streams to ours:\n{}",
            c.log_tails(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    move_leader_to(&c, ours);
    c.kind = Kind::Ours;
    let learner = c.add_member("m3", true);
    c.wait_value(learner, "k/0", "v", SECS_30);
    c.promote(learner);
    c.put(learner, "k/1", "through the promoted member");
    assert_members_agree(&c, "after the promote");
    // etcd members refuse a removal until the promoted member has been
    // connected for 5 s (etcd's strict reconfig check): retried.
    let id = format!("{:x}", c.id(learner));
    let out = c.ctl_retry(
        ours,
        &["member", "remove", &id],
        &["unhealthy cluster"],
        SECS_30,
    );
    assert!(
        out.status.success(),
        "{}",
        common::cluster::error_line(&out)
    );
    c.members[learner].in_cluster = false;
    c.kill9(learner);
    let lists: Vec<Vec<common::cluster::MemberInfo>> = c
        .running()
        .map(|i| {
            let mut l = c.member_list_at(i);
            l.sort_by_key(|m| m.id);
            l
        })
        .collect();
    assert_eq!(lists[0].len(), 3, "{:?}", lists[0]);
    assert!(lists.iter().all(|l| l == &lists[0]), "{lists:?}");
    assert_members_agree(&c, "after the removal");
}
