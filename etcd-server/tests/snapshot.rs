//! `etcdctl snapshot save` against this server, side by side with the real
//! etcd 3.4: the same workload on both, both snapshots read by the real
//! `etcdctl snapshot status`, and ours restored by the real `etcdctl
//! snapshot restore` and served by the real etcd, which must then answer
//! every read as this server does (keys with their revisions and versions,
//! history up to the compaction, leases with their keys, users, roles).
//! The other way round, our `etcdutl snapshot restore` of the real etcd's
//! snapshot, served by this server, answers as the real etcd; and our
//! `etcdutl snapshot status` prints what the real `etcdctl` prints.

mod common;

use common::cluster::error_line;
use common::{etcdctl_path, free_port, Kind, Server};
use std::process::Command;

/// The workload: bulk puts in transactions (many pages in the `key`
/// bucket, sub-revisions), overwrites, deletes, a lease with keys, users
/// and roles, a compaction. Returns a revision before the compaction point
/// and one after it.
fn workload(s: &Server) -> (i64, i64) {
    let value = "v".repeat(100);
    put_in_txns(s, 20, |t, i| format!("bulk/{t:02}/{i:03} {value}-{t}-{i}"));
    for i in 0..30 {
        s.ctl_ok(&["put", &format!("k{i}"), &format!("first-{i}")]);
    }
    let before = revision(s);
    for i in 0..10 {
        s.ctl_ok(&["put", &format!("k{i}"), &format!("second-{i}")]);
    }
    s.ctl_ok(&["del", "k2"]);
    s.ctl_ok(&["del", "bulk/03/", "--prefix"]);
    let lease = s.ctl_ok(&["lease", "grant", "3000"]);
    let id = lease.split_whitespace().nth(1).unwrap().to_string();
    s.ctl_ok(&["put", "leased/a", "1", "--lease", &id]);
    s.ctl_ok(&["put", "leased/b", "2", "--lease", &id]);
    s.ctl_ok(&["user", "add", "root:rootpw"]);
    s.ctl_ok(&["user", "add", "alice:alicepw"]);
    s.ctl_ok(&["role", "add", "reader"]);
    s.ctl_ok(&["role", "grant-permission", "reader", "read", "k", "l"]);
    s.ctl_ok(&["user", "grant-role", "alice", "reader"]);
    let after = revision(s);
    s.ctl_ok(&["put", "k0", "third"]);
    s.ctl_ok(&["compact", &after.to_string()]);
    s.ctl_ok(&["put", "k1", "after-compaction"]);
    (before, after)
}

/// `txns` transactions of 100 puts each; `kv(t, i)` is put `i` of
/// transaction `t`: "key value".
fn put_in_txns(s: &Server, txns: usize, kv: impl Fn(usize, usize) -> String) {
    for t in 0..txns {
        let ops: String = (0..100).map(|i| format!("put {}\n", kv(t, i))).collect();
        // etcdctl txn reads compares, then success ops, then failure ops.
        let out = s.etcdctl_stdin(&["txn"], &format!("\n{ops}\n\n"));
        assert!(out.status.success(), "txn: {out:?}");
    }
}

fn revision(s: &Server) -> i64 {
    let out = s.ctl_ok(&["get", "nothing", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["header"]["revision"].as_i64().unwrap()
}

/// `etcdctl snapshot status -w json` of a file.
fn status(path: &std::path::Path) -> serde_json::Value {
    let out = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "snapshot status: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What a server answers, the parts that must survive a snapshot.
fn reads(s: &Server, before: i64, after: i64) -> Vec<(String, String)> {
    let mut log = reads_only(s, before, after);
    log.extend(write_and_read(s));
    log
}

/// A write and the read of it, for [`reads`].
fn write_and_read(s: &Server) -> Vec<(String, String)> {
    let mut log = Vec::new();
    for args in [
        &["put", "k-new", "x", "-w", "json"][..],
        &["get", "k-new", "-w", "json"],
    ] {
        let o = s.etcdctl(args);
        let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        only_revision(&mut v);
        log.push((args[0].to_string(), v.to_string()));
    }
    log
}

/// The reads of [`reads`], without its write.
fn reads_only(s: &Server, before: i64, after: i64) -> Vec<(String, String)> {
    let mut log = Vec::new();
    let step = |log: &mut Vec<(String, String)>, name: &str, args: &[&str]| {
        let o = s.etcdctl(args);
        let text = if o.status.success() {
            String::from_utf8_lossy(&o.stdout).into_owned()
        } else {
            error_line(&o)
        };
        log.push((name.to_string(), text));
    };
    let kvs_only = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["-w", "json"]);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let now = kvs_only(&["get", "", "--prefix"]);
    let json_step = |log: &mut Vec<(String, String)>, name: &str, args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = s.etcdctl(&a);
        let text = if o.status.success() {
            let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            // The header names the member and cluster: not compared.
            only_revision(&mut v);
            v.to_string()
        } else {
            error_line(&o)
        };
        log.push((name.to_string(), text));
    };
    json_step(&mut log, "get all", now);
    json_step(
        &mut log,
        "get at the compaction revision",
        kvs_only(&["get", "k", "--prefix", "--rev", &after.to_string()]),
    );
    step(
        &mut log,
        "get before the compaction revision",
        &["get", "k", "--prefix", "--rev", &before.to_string()],
    );
    // `lease list` prints in map order (random in etcd): sorted, then each
    // lease with its keys.
    let lease_list = s.ctl_ok(&["lease", "list"]);
    let mut ids: Vec<String> = lease_list
        .lines()
        .skip(1)
        .map(|l| l.trim().to_string())
        .collect();
    ids.sort();
    log.push((
        "lease list".into(),
        format!(
            "{}\n{}",
            lease_list.lines().next().unwrap_or_default(),
            ids.join("\n")
        ),
    ));
    for id in &ids {
        step(
            &mut log,
            "lease keys",
            &["lease", "timetolive", id, "--keys"],
        );
    }
    step(&mut log, "user list", &["user", "list"]);
    step(&mut log, "user get", &["user", "get", "alice"]);
    step(&mut log, "role get", &["role", "get", "reader"]);
    log
}

#[test]
fn snapshot_save_status_and_restore_into_the_real_etcd() {
    let ours = Server::start(Kind::Ours);
    let real = Server::start(Kind::Real);
    let (before, after) = workload(&ours);
    assert_eq!(workload(&real), (before, after));

    let dir = tempfile::tempdir().unwrap();
    let ours_file = dir.path().join("ours.db");
    let real_file = dir.path().join("real.db");
    ours.ctl_ok(&["snapshot", "save", ours_file.to_str().unwrap()]);
    real.ctl_ok(&["snapshot", "save", real_file.to_str().unwrap()]);
    // etcd's file: the bbolt database and a sha256 trailer (32 bytes) that
    // `snapshot restore` checks.
    let len = std::fs::metadata(&ours_file).unwrap().len();
    assert_eq!(len % 4096, 32, "database pages + sha256");

    // The real etcdctl reads both: same revision, same number of keys.
    let (s_ours, s_real) = (status(&ours_file), status(&real_file));
    assert_eq!(
        s_ours["revision"], s_real["revision"],
        "{s_ours} vs {s_real}"
    );
    assert_eq!(
        s_ours["totalKey"], s_real["totalKey"],
        "{s_ours} vs {s_real}"
    );

    // The real etcdctl restores ours; the real etcd serves it.
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("restored.etcd");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let out = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "restore"])
        .arg(&ours_file)
        .args(["--name", "restored", "--data-dir"])
        .arg(&data_dir)
        .args([
            "--initial-cluster",
            &format!("restored={peer}"),
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "snapshot restore: {out:?}");
    let restored = Server::start_on(Kind::Real, tmp, data_dir, "restored", &peer);

    compare(
        &reads(&ours, before, after),
        &reads(&restored, before, after),
        "etcd on our snapshot vs ours",
    );

    // etcdutl snapshot status prints what etcdctl prints, for both files.
    for file in [&ours_file, &real_file] {
        for w in ["simple", "json", "table", "fields"] {
            let theirs = Command::new(etcdctl_path())
                .env("ETCDCTL_API", "3")
                .args(["snapshot", "status", "-w", w])
                .arg(file)
                .output()
                .unwrap();
            let mine = etcdutl(&["snapshot", "status", "-w", w, file.to_str().unwrap()]);
            assert!(mine.status.success(), "{mine:?}");
            assert_eq!(
                String::from_utf8_lossy(&mine.stdout),
                String::from_utf8_lossy(&theirs.stdout),
                "status -w {w} of {}",
                file.display()
            );
        }
    }

    // Our etcdutl restores the real etcd's snapshot; this server serves it
    // as the real etcd served it.
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("from-etcd.etcd");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let out = etcdutl(&[
        "snapshot",
        "restore",
        real_file.to_str().unwrap(),
        "--name",
        "imported",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--initial-cluster",
        &format!("imported={peer}"),
        "--initial-advertise-peer-urls",
        &peer,
    ]);
    assert!(out.status.success(), "etcdutl snapshot restore: {out:?}");
    let imported = Server::start_on(Kind::Ours, tmp, data_dir, "imported", &peer);
    compare(
        &reads(&real, before, after),
        &reads(&imported, before, after),
        "ours on etcd's snapshot vs etcd",
    );
}

fn compare(want: &[(String, String)], got: &[(String, String)], what: &str) {
    assert_eq!(want.len(), got.len());
    for ((name, w), (_, g)) in want.iter().zip(got) {
        let (w, g) = (without_remaining(w), without_remaining(g));
        if g != w {
            // Where they part (whole reads can be megabytes).
            let at = g
                .bytes()
                .zip(w.bytes())
                .position(|(a, b)| a != b)
                .unwrap_or(g.len().min(w.len()));
            let show = |s: &str| {
                let from = s.floor_char_boundary(at.saturating_sub(300));
                let to = s.ceil_char_boundary((at + 300).min(s.len()));
                s[from..to].to_string()
            };
            panic!(
                "{name}: {what}: differ at byte {at}\n got: ...{}...\nwant: ...{}...",
                show(&g),
                show(&w)
            );
        }
    }
}

fn etcdutl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_etcdutl"))
        .args(args)
        .output()
        .unwrap()
}

/// A restore that cannot be done says why and leaves no data directory
/// (or the existing one untouched): a damaged file (bad checksum, flipped
/// page, truncated), a file without its checksum, a data directory that
/// exists.
#[test]
fn restore_refuses_damaged_files_and_existing_data_dirs() {
    let s = Server::start(Kind::Ours);
    for i in 0..300 {
        s.ctl_ok(&["put", &format!("k{i:03}"), &"v".repeat(200)]);
    }
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.db");
    s.ctl_ok(&["snapshot", "save", good.to_str().unwrap()]);
    let bytes = std::fs::read(&good).unwrap();
    let restore = |file: &std::path::Path, data_dir: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
        ];
        args.extend(extra);
        etcdutl(&args)
    };
    let cases: Vec<(&str, Vec<u8>, &str, &[&str])> = vec![
        (
            "bad checksum",
            {
                let mut b = bytes.clone();
                *b.last_mut().unwrap() ^= 1;
                b
            },
            "expected sha256",
            &[],
        ),
        (
            "flipped page byte",
            {
                let mut b = bytes.clone();
                b[5 * 4096 + 100] ^= 0xff;
                b
            },
            "expected sha256",
            &[],
        ),
        (
            "flipped page byte, hash check skipped",
            {
                let mut b = bytes.clone();
                b[3 * 4096 + 8] ^= 0x07; // a page header's flags
                b
            },
            "corrupt bbolt file",
            &["--skip-hash-check"],
        ),
        (
            "truncated",
            bytes[..bytes.len() / 2].to_vec(),
            "missing hash",
            &[],
        ),
        (
            "truncated, hash check skipped",
            bytes[..bytes.len() / 2].to_vec(),
            "beyond the file",
            &["--skip-hash-check"],
        ),
        (
            "no checksum",
            bytes[..bytes.len() - 32].to_vec(),
            "snapshot missing hash but --skip-hash-check=false",
            &[],
        ),
        (
            "not a bbolt file",
            vec![7u8; 8192 + 32],
            "expected sha256",
            &[],
        ),
        (
            "not a bbolt file, hash check skipped",
            vec![7u8; 8192],
            "not a valid bbolt file",
            &["--skip-hash-check"],
        ),
    ];
    for (name, content, want, extra) in cases {
        let file = dir
            .path()
            .join(format!("{}.db", name.replace([' ', ','], "-")));
        std::fs::write(&file, content).unwrap();
        let data_dir = dir
            .path()
            .join(format!("{}.etcd", name.replace([' ', ','], "-")));
        let out = restore(&file, &data_dir, extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: restored");
        assert!(err.contains(want), "{name}: {err}");
        assert!(!data_dir.exists(), "{name}: a data directory was left");
    }
    // A data directory that exists is left as it is.
    let existing = dir.path().join("existing.etcd");
    std::fs::create_dir(&existing).unwrap();
    std::fs::write(existing.join("mine"), "keep").unwrap();
    let out = restore(&good, &existing, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("data-dir exists"));
    assert_eq!(
        std::fs::read_to_string(existing.join("mine")).unwrap(),
        "keep"
    );
    // The good file restores; no copy left beside it.
    let fresh = dir.path().join("fresh.etcd");
    let out = restore(&good, &fresh, &[]);
    assert!(out.status.success(), "{out:?}");
    assert!(fresh.join("member").join("wal").exists());
    assert!(!dir.path().join("fresh.etcd.restoring").exists());
}

/// `Status` of `etcdctl endpoint status -w json` (one endpoint).
fn endpoint_status(s: &Server) -> serde_json::Value {
    let out = s.ctl_ok(&["endpoint", "status", "-w", "json"]);
    let mut v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["Status"].take()
}

/// (member id, cluster id) of an endpoint status.
fn ids(status: &serde_json::Value) -> (u64, u64) {
    let h = &status["header"];
    (
        h["member_id"].as_u64().unwrap(),
        h["cluster_id"].as_u64().unwrap(),
    )
}

/// A response header reduced to its revision (member and cluster ids and
/// the raft term differ between the servers compared).
fn only_revision(v: &mut serde_json::Value) {
    let rev = v["header"]["revision"].clone();
    v["header"] = serde_json::json!({ "revision": rev });
}

/// `remaining(2996s)` -> `remaining(_)` (the TTL left depends on timing),
/// and `attached keys([b a])` sorted (etcd prints them in map order).
fn without_remaining(s: &str) -> String {
    let s = match s.split_once("remaining(") {
        Some((a, b)) => format!("{a}remaining(_){}", b.split_once(')').map_or("", |x| x.1)),
        None => s.to_string(),
    };
    match s.split_once("attached keys([") {
        Some((a, b)) => {
            let (keys, rest) = b.split_once("])").unwrap_or((b, ""));
            let mut keys: Vec<&str> = keys.split(' ').collect();
            keys.sort();
            format!("{a}attached keys([{}]){rest}", keys.join(" "))
        }
        None => s,
    }
}

/// A snapshot is one point in time, and writes go on while it streams:
/// the stream is opened, one chunk read, keys written (they succeed while
/// the stream waits), then the rest read. The file has the revision the
/// stream was opened at, its sha256 is the trailer's, and it reads back
/// (every page checked) with all the keys of that revision.
#[test]
fn snapshot_is_a_point_in_time_and_writes_go_on_meanwhile() {
    use etcd_server::rpc::etcdserverpb::maintenance_client::MaintenanceClient;
    use etcd_server::rpc::etcdserverpb::SnapshotRequest;

    let s = Server::start(Kind::Ours);
    // Enough keys for a file of many chunks.
    let value = "x".repeat(1000);
    put_in_txns(&s, 10, |t, i| format!("key/{t:02}/{i:03} {value}"));
    let rev = revision(&s);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (blobs, remaining) = rt.block_on(async {
        let mut m = MaintenanceClient::new(s.channel().await);
        let mut stream = m.snapshot(SnapshotRequest {}).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        // Writes while the stream is open.
        for i in 0..20 {
            s.ctl_ok(&["put", &format!("during/{i}"), "v"]);
        }
        let mut blobs = vec![first.blob.to_vec()];
        let mut remaining = vec![first.remaining_bytes];
        while let Some(r) = stream.message().await.unwrap() {
            blobs.push(r.blob.to_vec());
            remaining.push(r.remaining_bytes);
        }
        (blobs, remaining)
    });
    assert_eq!(revision(&s), rev + 20, "the writes went through");
    let (sha, chunks) = blobs.split_last().unwrap();
    assert!(chunks.len() > 10, "{} chunks", chunks.len());
    assert!(chunks.iter().all(|c| c.len() <= 32 * 1024));
    let db: Vec<u8> = chunks.concat();
    // remaining_bytes counts down to 0 with the chunks; the checksum's is 0.
    let mut left = db.len() as u64;
    for (c, r) in chunks.iter().zip(&remaining) {
        left -= c.len() as u64;
        assert_eq!(*r, left);
    }
    assert_eq!(*remaining.last().unwrap(), 0);
    assert_eq!(
        &sha[..],
        ring::digest::digest(&ring::digest::SHA256, &db).as_ref()
    );

    let r = etcd_bbolt::Reader::from_bytes(db).unwrap();
    r.check().unwrap();
    let key = r
        .buckets()
        .unwrap()
        .into_iter()
        .find(|b| b.name == b"key")
        .unwrap();
    let mut max_rev = 0i64;
    let mut n = 0;
    r.for_each(&key, |k, _| {
        max_rev = max_rev.max(i64::from_be_bytes(k[..8].try_into().unwrap()));
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(
        max_rev, rev,
        "the snapshot is the store when it was asked for"
    );
    assert_eq!(n, 1000);
}

/// The operator guides' disaster recovery, onto this server: a snapshot
/// of the real etcd restored with our etcdutl into three data directories
/// (one per member of the new cluster, same `--initial-cluster` and token),
/// the three members started on them: they form the cluster etcd would
/// (same member ids), every member serves the keys, and writes replicate.
#[test]
fn three_member_restore_as_the_guides_do() {
    let real = Server::start(Kind::Real);
    for i in 0..200 {
        real.ctl_ok(&["put", &format!("dr/{i:03}"), &format!("v{i}")]);
    }
    real.ctl_ok(&["del", "dr/000"]);
    let rev = revision(&real);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.db");
    real.ctl_ok(&["snapshot", "save", file.to_str().unwrap()]);

    let (peers, initial) = common::loopback_peers("m", 3);
    let token = "restored-cluster";
    let mut members = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join(format!("m{i}.etcd"));
        let out = etcdutl(&[
            "snapshot",
            "restore",
            file.to_str().unwrap(),
            "--name",
            &format!("m{i}"),
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--initial-cluster",
            &initial,
            "--initial-cluster-token",
            token,
            "--initial-advertise-peer-urls",
            peer,
        ]);
        assert!(out.status.success(), "restore m{i}: {out:?}");
        members.push(Server::launch_on(
            Kind::Ours,
            tmp,
            data_dir,
            &format!("m{i}"),
            peer,
            Some(&initial),
            &["--initial-cluster-token", token],
        ));
    }
    for m in &mut members {
        m.wait_ready();
    }
    // The member ids etcd derives from the same --initial-cluster and token.
    let reference = {
        let tmp = tempfile::tempdir().unwrap();
        let out = Command::new(etcdctl_path())
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(&file)
            .args(["--name", "m0", "--data-dir"])
            .arg(tmp.path().join("ref.etcd"))
            .args([
                "--initial-cluster",
                &initial,
                "--initial-cluster-token",
                token,
                "--initial-advertise-peer-urls",
                &peers[0],
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // etcdctl logs "added member" with each "added-peer-id".
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        let mut ids: Vec<String> = log
            .split("\"added-peer-id\":\"")
            .skip(1)
            .map(|s| s.split('"').next().unwrap().to_string())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    let list = members[0].ctl_ok(&["member", "list"]);
    let mut ids: Vec<String> = list
        .lines()
        .map(|l| l.split(',').next().unwrap().trim().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, reference, "{list}");

    for m in &members {
        let out = m.ctl_ok(&["get", "dr/", "--prefix", "--keys-only", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["count"], 199, "{out}");
        assert_eq!(v["header"]["revision"], rev, "{out}");
    }
    members[1].ctl_ok(&["put", "after", "restore"]);
    for m in &members {
        let out = m.ctl_ok(&["get", "after", "--print-value-only"]);
        assert_eq!(out.trim(), "restore");
    }
}

/// What a stopped etcd 3.4 leaves in `member/wal/` reads back with our
/// decoder of etcd's WAL format: the member and cluster ids of its
/// metadata, a hard state whose commit covers every put, the entries
/// consecutive up to it, and the database's consistent index among them.
#[test]
fn a_stopped_etcds_wal_and_database_read_back() {
    let mut real = Server::start(Kind::Real);
    for i in 0..50 {
        real.ctl_ok(&["put", &format!("w{i}"), "v"]);
    }
    let st = endpoint_status(&real);
    let (member, cluster) = ids(&st);
    let raft_index = st["raftIndex"].as_u64().unwrap();
    // etcd exits by re-raising SIGTERM: stopped, whatever the status says.
    real.terminate();

    let wal = etcd_wal::etcd_decoder::read_etcd_wal(&real.data_dir.join("member/wal")).unwrap();
    let md = wal.metadata.unwrap();
    assert_eq!((md.node_id, md.cluster_id), (member, cluster));
    assert!(wal.hard_state.commit >= raft_index, "{:?}", wal.hard_state);
    let last = wal.entries.last().unwrap();
    assert!(last.index >= raft_index);
    // 50 puts, each a normal entry with a payload.
    let puts = wal
        .entries
        .iter()
        .filter(|e| e.entry_type == 0 && !e.data.is_empty())
        .count();
    assert!(puts >= 50, "{puts}");

    // The database's consistent index is an entry of the log, with a term.
    let db = etcd_bbolt::Reader::open(&real.data_dir.join("member/snap/db")).unwrap();
    let meta = db
        .buckets()
        .unwrap()
        .into_iter()
        .find(|b| b.name == b"meta")
        .unwrap();
    let mut ci = 0;
    db.for_each(&meta, |k, v| {
        if k == b"consistent_index" {
            ci = u64::from_be_bytes(v.try_into().unwrap());
        }
        Ok(())
    })
    .unwrap();
    assert!(ci > 0 && ci <= wal.hard_state.commit, "ci {ci}");
    assert!(wal.term_at(ci).is_some(), "no term at {ci}");
}

/// A stopped etcd's data directory, killed with -9 right after the last
/// writes (so its WAL holds entries its database had not committed yet),
/// and this server started on it: the import keeps the ids and replays
/// the tail, and every read answers as the real etcd answered.
#[test]
fn ours_starts_on_a_killed_etcds_data_directory() {
    // etcd commits its database only at shutdown (or a snapshot) here, so
    // after kill -9 the whole workload is in the WAL's tail: the import
    // translates and replays every kind of request the workload makes.
    let mut real = Server::start_with(
        Kind::Real,
        &[
            "--backend-batch-interval",
            "1h",
            "--backend-batch-limit",
            "100000000",
        ],
    );
    let (before, after) = workload(&real);
    // The workload's compaction makes etcd commit; what follows is only
    // in the WAL when etcd is killed.
    let tail_ops: &[&[&str]] = &[
        &["user", "add", "bob:bobpw"],
        &["role", "add", "writer"],
        &[
            "role",
            "grant-permission",
            "writer",
            "readwrite",
            "t/",
            "--prefix",
        ],
        &["user", "grant-role", "bob", "writer"],
        &["put", "t/1", "one"],
        &["put", "t/2", "two"],
        &["del", "t/1"],
        &["lease", "grant", "1000"],
    ];
    for op in tail_ops {
        real.ctl_ok(op);
    }
    let out = real.etcdctl_stdin(&["txn"], "\nput t/3 three\nput t/4 four\n\n\n");
    assert!(out.status.success());
    let extra = |s: &Server| -> Vec<(String, String)> {
        [
            &["user", "get", "bob"][..],
            &["role", "get", "writer"],
            &["get", "t/", "--prefix", "-w", "json"],
        ]
        .iter()
        .map(|a| {
            let o = s.ctl_ok(a);
            // A header: only its revision (the raft term differs).
            let o = match serde_json::from_str::<serde_json::Value>(&o) {
                Ok(mut v) => {
                    only_revision(&mut v);
                    v.to_string()
                }
                Err(_) => o,
            };
            (a.join(" "), o)
        })
        .collect()
    };
    let mut want = reads_only(&real, before, after);
    want.extend(extra(&real));
    let etcd_ids = ids(&endpoint_status(&real));
    real.kill9();
    let tmp = real.keep_dir();
    let ours = Server::start_on(
        Kind::Ours,
        tmp,
        real.data_dir.clone(),
        &real.name,
        &real.peer_url,
    );
    assert_eq!(
        ids(&endpoint_status(&ours)),
        etcd_ids,
        "member and cluster ids kept"
    );
    let mut got = reads_only(&ours, before, after);
    got.extend(extra(&ours));
    compare(&want, &got, "ours on etcd's data dir vs etcd");
    let log = ours.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("imported etcd's state"))
        .unwrap();
    let tail: serde_json::Value = serde_json::from_str(line).unwrap();
    assert!(tail["wal-entries-after"].as_u64().unwrap() >= 9, "{line}");
    assert!(
        real.data_dir.join("member.etcd/snap/db").is_file(),
        "etcd's files kept aside"
    );
    // Writes go on.
    ours.ctl_ok(&["put", "after-import", "x"]);
}

/// A whole etcd 3.4 cluster of three, stopped (one member killed, two
/// terminated), started again as this server on the same data directories
/// and flags: the same members and ids, the same keys at the same
/// revision, a leader, and writes that replicate.
#[test]
fn a_stopped_etcd_cluster_restarts_as_ours() {
    use common::cluster::Cluster;
    let mut c = Cluster::start(Kind::Real, 3);
    for i in 0..100 {
        c.ctl_ok(i % 3, &["put", &format!("c/{i:03}"), &format!("v{i}")]);
    }
    c.ctl_ok(0, &["del", "c/000"]);
    let keys = |c: &Cluster, i: usize| {
        let out = c.ctl_ok(i, &["get", "c/", "--prefix", "-w", "json"]);
        let mut v: serde_json::Value = serde_json::from_str(&out).unwrap();
        only_revision(&mut v);
        v.to_string()
    };
    let want = keys(&c, 0);
    let mut members = c.member_list();
    members.sort_by_key(|m| m.id);
    c.kill9(2);
    for i in 0..2 {
        c.kill9(i);
    }
    c.kind = Kind::Ours;
    for i in 0..3 {
        c.spawn_only(i);
    }
    c.wait_leader(std::time::Duration::from_secs(60));
    let mut now = c.member_list();
    now.sort_by_key(|m| m.id);
    assert_eq!(
        now.iter()
            .map(|m| (m.id, m.name.clone()))
            .collect::<Vec<_>>(),
        members
            .iter()
            .map(|m| (m.id, m.name.clone()))
            .collect::<Vec<_>>()
    );
    for i in 0..3 {
        assert_eq!(keys(&c, i), want, "member {i}");
        assert!(c.log(i).contains("imported etcd's state"), "member {i}");
    }
    c.ctl_ok(1, &["put", "c/after", "import"]);
    for i in 0..3 {
        c.wait_value(i, "c/after", "import", std::time::Duration::from_secs(10));
    }
}

/// etcd 3.5 (the official 3.5.1 binaries, `scripts/etcd35.sh`): the data
/// directory a stopped 3.5 member left starts as ours with its keys,
/// leases and users; our snapshot passes etcd 3.5's `etcdutl snapshot
/// status` and restore, and etcd 3.5 serves the same data from it.
#[test]
fn etcd_35_data_dirs_and_snapshots_both_ways() {
    let bin = common::etcd35_dir();
    let tmp = tempfile::tempdir().unwrap();
    let run35 = |name: &str, data_dir: &std::path::Path, peer: &str| {
        let client = format!("http://127.0.0.1:{}", free_port());
        let log = std::fs::File::create(data_dir.with_extension("log")).unwrap();
        let child = Command::new(bin.join("etcd"))
            .args(["--name", name, "--data-dir"])
            .arg(data_dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
            ])
            .args(["--initial-cluster", &format!("{name}={peer}")])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        (child, client)
    };
    let ctl = |endpoint: &str, args: &[&str]| {
        let out = Command::new(etcdctl_path())
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", endpoint])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let healthy = |endpoint: &str| {
        for _ in 0..100 {
            let ok = Command::new(etcdctl_path())
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", endpoint, "endpoint", "health"])
                .output()
                .unwrap()
                .status
                .success();
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("etcd 3.5 at {endpoint} did not start");
    };
    // What each server must answer alike.
    let state = |endpoint: &str| {
        let kvs: serde_json::Value =
            serde_json::from_str(&ctl(endpoint, &["get", "", "--from-key", "-w", "json"])).unwrap();
        let leases = ctl(endpoint, &["lease", "list"]);
        let users = ctl(endpoint, &["user", "list"]);
        let roles = ctl(endpoint, &["role", "list"]);
        format!("{}\n{leases}{users}{roles}", kvs["kvs"])
    };

    // 1. etcd 3.5 writes a data directory, then stops.
    let dir = tmp.path().join("e35.etcd");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let (mut child, client) = run35("e35", &dir, &peer);
    healthy(&client);
    for i in 0..20 {
        ctl(&client, &["put", &format!("k/{i:02}"), &format!("v{i}")]);
    }
    ctl(&client, &["del", "k/00"]);
    let lease = ctl(&client, &["lease", "grant", "600"]);
    let lease = lease.split_whitespace().nth(1).unwrap().to_string();
    ctl(&client, &["put", "leased", "x", "--lease", &lease]);
    ctl(&client, &["user", "add", "root:rootpw"]);
    ctl(&client, &["role", "add", "reader"]);
    let want = state(&client);
    common::send_signal(child.id(), "TERM");
    child.wait().unwrap();

    // 2. Ours on it.
    let ours_tmp = tempfile::tempdir().unwrap();
    let ours_dir = ours_tmp.path().join("e35.etcd");
    std::fs::rename(&dir, &ours_dir).unwrap();
    let ours = Server::start_on(Kind::Ours, ours_tmp, ours_dir, "e35", &peer);
    assert_eq!(state(&ours.client_url), want, "ours on etcd 3.5's data dir");

    // 3. Our snapshot into etcd 3.5.
    let file = tmp.path().join("ours.db");
    ours.ctl_ok(&["snapshot", "save", file.to_str().unwrap()]);
    let status = Command::new(bin.join("etcdutl"))
        .args(["snapshot", "status", "-w", "json"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "etcdutl 3.5 snapshot status: {status:?}"
    );
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["revision"], revision(&ours), "{status}");
    let restored = tmp.path().join("back.etcd");
    let peer2 = format!("http://127.0.0.1:{}", free_port());
    let out = Command::new(bin.join("etcdutl"))
        .args(["snapshot", "restore"])
        .arg(&file)
        .args(["--name", "back", "--data-dir"])
        .arg(&restored)
        .args(["--initial-cluster", &format!("back={peer2}")])
        .args(["--initial-advertise-peer-urls", &peer2])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdutl 3.5 snapshot restore: {out:?}"
    );
    let (mut child, client) = run35("back", &restored, &peer2);
    healthy(&client);
    assert_eq!(state(&client), want, "etcd 3.5 on our snapshot");
    let _ = child.kill();
    let _ = child.wait();
}

/// An etcd member that never took a write: its database's consistent
/// index is still 0 (etcd 3.4 saves it only with a key-value write) and
/// its WAL holds the bootstrap's conf changes and its publish, a bare v2
/// `Request`. Ours starts on it with the same member, and takes writes.
#[test]
fn an_etcd_member_that_never_took_a_write_imports() {
    let mut real = Server::start(Kind::Real);
    let id = ids(&endpoint_status(&real));
    real.terminate();
    let tmp = real.keep_dir();
    let dir = real.data_dir.clone();
    let ours = Server::start_on(Kind::Ours, tmp, dir, &real.name, &real.peer_url);
    assert_eq!(
        ids(&endpoint_status(&ours)),
        id,
        "member and cluster ids kept"
    );
    let list = ours.ctl_ok(&["member", "list"]);
    assert!(list.contains(&real.name), "{list}");
    ours.ctl_ok(&["put", "first", "write"]);
    assert!(ours.ctl_ok(&["get", "first"]).ends_with("first\nwrite\n"));
}

/// An import interrupted at each of its steps resumes: a staging
/// directory left beside etcd's files is discarded and the import redone;
/// a crash after etcd's files were set aside but before ours were moved in
/// finishes the move. The data is there either way.
#[test]
fn an_interrupted_import_resumes() {
    let mut real = Server::start(Kind::Real);
    for i in 0..20 {
        real.ctl_ok(&["put", &format!("r{i}"), "v"]);
    }
    real.terminate();
    let tmp = real.keep_dir();
    let dir = real.data_dir.clone();
    // A crash during step 1 left a half-built staging directory.
    std::fs::create_dir_all(dir.join("import.staging/member")).unwrap();
    std::fs::write(dir.join("import.staging/member/garbage"), "half").unwrap();
    let mut ours = Server::start_on(Kind::Ours, tmp, dir.clone(), &real.name, &real.peer_url);
    let count = |s: &Server| {
        let out = s.ctl_ok(&["get", "r", "--prefix", "--keys-only"]);
        out.lines().filter(|l| !l.is_empty()).count()
    };
    assert_eq!(count(&ours), 20);
    assert!(!dir.join("import.staging").exists());
    ours.terminate();
    // A crash between steps 2 and 3: etcd's files aside, ours still staged.
    std::fs::create_dir(dir.join("import.staging")).unwrap();
    std::fs::rename(dir.join("member"), dir.join("import.staging/member")).unwrap();
    std::fs::rename(dir.join("version"), dir.join("import.staging/version")).unwrap();
    ours.restart();
    assert_eq!(count(&ours), 20);
    assert!(dir.join("member/snap/db").is_dir());
    assert!(dir.join("member.etcd/snap/db").is_file());
    assert!(!dir.join("import.staging").exists());
}

/// `etcdutl defrag --data-dir` on a stopped etcd's data directory: the
/// database shrinks, holds what etcd's own `etcdctl defrag --data-dir`
/// keeps of a copy (same `snapshot status` hash, revision and keys), and
/// the real etcd restarted on our file answers every read as before.
#[test]
fn defrag_of_a_stopped_etcds_data_directory() {
    let mut real = Server::start(Kind::Real);
    // Free pages: 1,000 values of 1 KiB written, then deleted (the
    // workload's compaction drops their history).
    let value = "x".repeat(1024);
    put_in_txns(&real, 10, |t, i| format!("junk/{t:02}/{i:03} {value}"));
    real.ctl_ok(&["del", "junk/", "--prefix"]);
    let (before, after) = workload(&real);
    let want = reads_only(&real, before, after);
    real.terminate(); // etcd re-raises SIGTERM: no exit code to check
    let tmp = real.keep_dir();
    let db = real.data_dir.join("member/snap/db");
    let status_before = status(&db);
    let size_before = std::fs::metadata(&db).unwrap().len();

    // etcd's own defrag of a copy, the reference.
    let copy = tmp.path().join("copy.etcd");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&real.data_dir)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(cp.success());
    let out = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .args(["defrag", "--data-dir"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(out.status.success(), "etcdctl defrag --data-dir: {out:?}");
    let etcds = copy.join("member/snap/db");

    let out = etcdutl(&["defrag", "--data-dir", real.data_dir.to_str().unwrap()]);
    assert!(out.status.success(), "etcdutl defrag: {out:?}");
    assert!(out.stdout.is_empty(), "etcd prints nothing on success");
    let size_after = std::fs::metadata(&db).unwrap().len();
    let etcd_size = std::fs::metadata(&etcds).unwrap().len();
    eprintln!("defrag: {size_before} bytes -> ours {size_after}, etcd's {etcd_size}");
    assert!(size_after < size_before, "{size_before} -> {size_after}");
    let same = |v: &serde_json::Value| {
        (
            v["hash"].clone(),
            v["revision"].clone(),
            v["totalKey"].clone(),
        )
    };
    assert_eq!(same(&status(&db)), same(&status_before), "records kept");
    assert_eq!(same(&status(&etcds)), same(&status_before), "etcd's copy");
    assert!(!real.data_dir.join("member/snap/db.defrag").exists());

    let restarted = Server::start_on(
        Kind::Real,
        tmp,
        real.data_dir.clone(),
        &real.name,
        &real.peer_url,
    );
    let got = reads_only(&restarted, before, after);
    compare(&want, &got, "etcd on our defragmented file vs before");
    restarted.ctl_ok(&["put", "after-defrag", "x"]);
}

/// `etcdutl defrag --data-dir` on this server's data directory while the
/// server runs: it waits and says so (etcd's hint), goes on once the
/// server stops, and the restarted server answers every read as before.
#[test]
fn defrag_of_our_data_directory_waits_for_the_server() {
    use std::io::BufRead;
    let mut s = Server::start(Kind::Ours);
    let (before, after) = workload(&s);
    let want = reads_only(&s, before, after);
    let mut child = Command::new(env!("CARGO_BIN_EXE_etcdutl"))
        .args(["defrag", "--data-dir"])
        .arg(&s.data_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if line.contains("waiting for etcd to close and release its lock") {
                let _ = tx.send(());
            }
            all.push(line);
        }
        all
    });
    rx.recv_timeout(std::time::Duration::from_secs(60))
        .expect("etcdutl says it waits for the running server");
    assert!(s.terminate().success());
    let out = child.wait_with_output().unwrap();
    let log = reader.join().unwrap();
    assert!(out.status.success(), "etcdutl defrag: {out:?} {log:#?}");
    assert!(
        log.iter().any(|l| l.contains("finished defragmenting")),
        "{log:#?}"
    );
    s.restart();
    let got = reads_only(&s, before, after);
    compare(&want, &got, "ours after an offline defrag vs before");
    s.ctl_ok(&["put", "after-defrag", "x"]);
}

/// 10,000 keys of 1 KiB (a snapshot of ~11 MB, hundreds of chunks).
fn fill_10k(s: &Server) {
    let value = "x".repeat(1000);
    put_in_txns(s, 100, |t, i| format!("big/{t:03}/{i:03} {value}"));
}

/// Entries of a directory, sorted (`db` left out: RocksDB's own files).
fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "db")
        .collect();
    v.sort();
    v
}

/// kill -9 of the server while a snapshot streams: the client gets an
/// error, the restarted server has every key and nothing was left in its
/// data directory by the snapshot (it is an unnamed file), and the next
/// snapshot works.
#[test]
fn kill9_during_a_snapshot_stream() {
    use etcd_server::rpc::etcdserverpb::maintenance_client::MaintenanceClient;
    use etcd_server::rpc::etcdserverpb::SnapshotRequest;

    let mut s = Server::start(Kind::Ours);
    fill_10k(&s);
    let rev = revision(&s);
    let snap_dir = s.data_dir.join("member/snap");
    let before = listing(&snap_dir);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rest = rt.block_on(async {
        let mut m = MaintenanceClient::new(s.channel().await);
        let mut stream = m.snapshot(SnapshotRequest {}).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert!(
            first.remaining_bytes > 1_000_000,
            "{}",
            first.remaining_bytes
        );
        // The server is mid-stream (the client reads no further).
        s.kill9();
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => break other,
            }
        }
    });
    assert!(rest.is_err(), "the stream ends in an error: {rest:?}");
    assert_eq!(listing(&snap_dir), before, "nothing left by the snapshot");
    s.restart();
    assert_eq!(revision(&s), rev);
    let count = s.ctl_ok(&["get", "big/", "--prefix", "--limit", "1", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&count).unwrap();
    assert_eq!(v["count"], 10_000);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("after.db");
    s.ctl_ok(&["snapshot", "save", file.to_str().unwrap()]);
    assert_eq!(status(&file)["revision"], rev);
}

/// kill -9 of `etcdutl snapshot restore` half-way: no data directory
/// appears (the work is in `<data-dir>.restoring`), the restore run again
/// succeeds, and the server serves the snapshot.
#[test]
fn kill9_during_etcdutl_restore() {
    let s = Server::start(Kind::Ours);
    fill_10k(&s);
    let rev = revision(&s);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("snap.db");
    s.ctl_ok(&["snapshot", "save", file.to_str().unwrap()]);
    drop(s);

    let data_dir = dir.path().join("m1.etcd");
    let peer = format!("http://127.0.0.1:{}", free_port());
    let restore = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_etcdutl"));
        c.args(["snapshot", "restore"])
            .arg(&file)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--name", "m1", "--initial-cluster"])
            .arg(format!("m1={peer}"))
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    // The import has begun once the staging directory holds a store.
    kill9_once_staged(
        restore(),
        &dir.path().join("m1.etcd.restoring/member/snap/db"),
    );
    assert!(!data_dir.exists(), "no half-restored data directory");

    let out = restore().output().unwrap();
    assert!(out.status.success(), "restore again: {out:?}");
    assert!(!dir.path().join("m1.etcd.restoring").exists());
    let tmp = tempfile::tempdir().unwrap();
    let ours = Server::start_on(Kind::Ours, tmp, data_dir, "m1", &peer);
    assert_eq!(revision(&ours), rev);
    let count = ours.ctl_ok(&["get", "big/", "--prefix", "--limit", "1", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&count).unwrap();
    assert_eq!(v["count"], 10_000);
}

/// kill -9 of this server while it imports a stopped etcd's data
/// directory: the next start redoes (or finishes) the import, and every
/// key is served, at etcd's revision, with etcd's files kept aside.
#[test]
fn kill9_during_an_import() {
    let mut real = Server::start(Kind::Real);
    fill_10k(&real);
    let rev = revision(&real);
    real.terminate();
    let tmp = real.keep_dir();
    let data_dir = real.data_dir.clone();
    let mut ours = Server::launch_on(
        Kind::Ours,
        tmp,
        data_dir.clone(),
        &real.name,
        &real.peer_url,
        None,
        &[],
    );
    // The import has begun once its staging directory holds a store.
    let staged = data_dir.join("import.staging/member/snap/db");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !staged.exists() {
        assert!(
            !data_dir.join("member/snap/db").is_dir(),
            "the import finished before it could be killed"
        );
        assert!(std::time::Instant::now() < deadline, "no import began");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    ours.kill9();
    ours.restart();
    assert_eq!(revision(&ours), rev);
    let count = ours.ctl_ok(&["get", "big/", "--prefix", "--limit", "1", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&count).unwrap();
    assert_eq!(v["count"], 10_000);
    assert!(
        data_dir.join("member.etcd/snap/db").is_file(),
        "etcd's files kept aside"
    );
    assert!(!data_dir.join("import.staging").exists());
    ours.ctl_ok(&["put", "after-import", "x"]);
}

/// Starts a server of `kind` on `data_dir` with `--force-new-cluster` and
/// waits until it serves.
fn start_forced(kind: Kind, tmp: tempfile::TempDir, data_dir: std::path::PathBuf) -> Server {
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut s = Server::launch_on(
        kind,
        tmp,
        data_dir,
        "restored",
        &peer,
        None,
        &["--force-new-cluster"],
    );
    s.wait_ready();
    s
}

/// A server started on a backup: it answers the reads `want` recorded
/// (between revisions `before` and `after`) as the backed-up member did,
/// alone in its cluster, under ids other than `old` (member, cluster).
fn assert_a_new_cluster_of(
    s: &Server,
    (want, before, after): (&[(String, String)], i64, i64),
    old: (u64, u64),
    what: &str,
) {
    compare(want, &reads_only(s, before, after), what);
    let new = ids(&endpoint_status(s));
    assert_ne!(new.0, old.0, "{what}: a new member id");
    assert_ne!(new.1, old.1, "{what}: a new cluster id");
    assert_eq!(s.ctl_ok(&["member", "list"]).lines().count(), 1, "{what}");
}

/// `etcdutl backup` (etcd's legacy `etcdctl backup --with-v3`, the real
/// one as the oracle): a copy of a stopped member that starts, with
/// `--force-new-cluster`, as a new one-member cluster (new member and
/// cluster ids) answering every read as the member did. Ours backs up its
/// own data directory and a stopped etcd's, and starts on what etcd's own
/// backup wrote; a start on a backup without the flag is refused, saying
/// why; the backup directory must be empty.
#[test]
fn backup_starts_as_a_new_one_member_cluster() {
    // The reference: etcd's own backup, served by etcd.
    let mut real = Server::start(Kind::Real);
    let (real_before, real_after) = workload(&real);
    let want_real = reads_only(&real, real_before, real_after);
    let real_ids = ids(&endpoint_status(&real));
    real.terminate();
    let real_tmp = real.keep_dir();
    let real_copy = real_tmp.path().join("etcd-backup");
    let out = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "2")
        .args(["backup", "--with-v3", "--data-dir"])
        .arg(&real.data_dir)
        .arg("--backup-dir")
        .arg(&real_copy)
        .output()
        .unwrap();
    assert!(out.status.success(), "etcdctl backup: {out:?}");
    let etcds_backup_for_ours = real_tmp.path().join("etcd-backup-for-ours");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&real_copy)
        .arg(&etcds_backup_for_ours)
        .status()
        .unwrap();
    assert!(cp.success());
    let from_etcd = start_forced(Kind::Real, tempfile::tempdir().unwrap(), real_copy);
    let real_reads = (&want_real[..], real_before, real_after);
    assert_a_new_cluster_of(&from_etcd, real_reads, real_ids, "etcd on etcd's backup");
    drop(from_etcd);

    // Ours, of its own data directory.
    let mut ours = Server::start(Kind::Ours);
    let (before, after) = workload(&ours);
    let want = reads_only(&ours, before, after);
    let our_ids = ids(&endpoint_status(&ours));
    assert!(ours.terminate().success());
    let tmp = ours.keep_dir();
    let copy = tmp.path().join("backup");
    std::fs::create_dir(&copy).unwrap();
    std::fs::write(copy.join("something"), "x").unwrap();
    let dir = ours.data_dir.to_str().unwrap();
    let copy_s = copy.to_str().unwrap();
    let out = etcdutl(&["backup", "--data-dir", dir, "--backup-dir", copy_s]);
    assert!(!out.status.success(), "a backup into a non-empty directory");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not empty"),
        "{out:?}"
    );
    assert_eq!(
        std::fs::read_dir(&copy).unwrap().count(),
        1,
        "left as it was"
    );
    std::fs::remove_dir_all(&copy).unwrap();
    let out = etcdutl(&["backup", "--data-dir", dir, "--backup-dir", copy_s]);
    assert!(out.status.success(), "etcdutl backup: {out:?}");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("start it with --force-new-cluster"), "{log}");

    // Without --force-new-cluster: refused, saying what to do.
    let peer = format!("http://127.0.0.1:{}", free_port());
    let mut plain = Server::launch_on(
        Kind::Ours,
        tempfile::tempdir().unwrap(),
        copy.clone(),
        "restored",
        &peer,
        None,
        &[],
    );
    assert!(!plain
        .wait_exit(std::time::Duration::from_secs(30))
        .success());
    assert!(
        plain
            .log_text()
            .contains("start it once with --force-new-cluster"),
        "{}",
        plain.log_text()
    );
    let from_ours = start_forced(Kind::Ours, tempfile::tempdir().unwrap(), copy);
    assert_a_new_cluster_of(
        &from_ours,
        (&want, before, after),
        our_ids,
        "ours on our backup",
    );
    let new_ids = ids(&endpoint_status(&from_ours));
    let members = from_ours.ctl_ok(&["member", "list", "-w", "json"]);
    let members: serde_json::Value = serde_json::from_str(&members).unwrap();
    let members = members["members"].as_array().unwrap();
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!(members[0]["ID"].as_u64(), Some(new_ids.0));
    assert_eq!(members[0]["name"], "restored");
    assert_eq!(
        members[0]["peerURLs"],
        serde_json::json!([from_ours.peer_url])
    );
    from_ours.ctl_ok(&["put", "after-backup", "x"]);
    drop(from_ours);

    // Ours, of the stopped etcd's data directory (converted on the way;
    // etcd's files are only read).
    let db = real.data_dir.join("member/snap/db");
    let db_before = std::fs::read(&db).unwrap();
    let copy = real_tmp.path().join("our-backup");
    let out = etcdutl(&[
        "backup",
        "--data-dir",
        real.data_dir.to_str().unwrap(),
        "--backup-dir",
        copy.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "etcdutl backup of etcd's: {out:?}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        db_before,
        "etcd's db unchanged"
    );
    assert!(real.data_dir.join("member/wal").is_dir());
    let from_real = start_forced(Kind::Ours, tempfile::tempdir().unwrap(), copy);
    assert_a_new_cluster_of(
        &from_real,
        real_reads,
        real_ids,
        "ours on our backup of etcd's data directory",
    );
    drop(from_real);

    // Ours on what etcd's own `etcdctl backup` wrote (imported: a log
    // renumbered below the database's index, no membership).
    let on_etcds = start_forced(
        Kind::Ours,
        tempfile::tempdir().unwrap(),
        etcds_backup_for_ours,
    );
    assert_a_new_cluster_of(&on_etcds, real_reads, real_ids, "ours on etcd's own backup");
    on_etcds.ctl_ok(&["put", "after-backup", "x"]);
}

/// Runs `cmd` and SIGKILLs it as soon as `staged` exists (its work has
/// begun); panics if it ends first.
fn kill9_once_staged(mut cmd: Command, staged: &std::path::Path) {
    let mut child = cmd.spawn().unwrap();
    while !staged.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "{cmd:?} ended before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// kill -9 of `etcdutl backup` half-way: no backup directory, only the
/// `.partial` one, which the next run replaces; the backup it then writes
/// starts with every key.
#[test]
fn kill9_during_etcdutl_backup() {
    let mut s = Server::start(Kind::Ours);
    fill_10k(&s);
    let rev = revision(&s);
    assert!(s.terminate().success());
    let tmp = s.keep_dir();
    let copy = tmp.path().join("backup");
    let backup = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_etcdutl"));
        c.args(["backup", "--data-dir"])
            .arg(&s.data_dir)
            .arg("--backup-dir")
            .arg(&copy)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    // The copy has begun once the staging directory holds a store.
    kill9_once_staged(backup(), &tmp.path().join("backup.partial/member/snap/db"));
    assert!(!copy.exists(), "no half-written backup directory");

    let out = backup().output().unwrap();
    assert!(out.status.success(), "backup again: {out:?}");
    assert!(!tmp.path().join("backup.partial").exists());
    let from = start_forced(Kind::Ours, tempfile::tempdir().unwrap(), copy);
    assert_eq!(revision(&from), rev);
    let count = from.ctl_ok(&["get", "big/", "--prefix", "--limit", "1", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&count).unwrap();
    assert_eq!(v["count"], 10_000);
}
