//! Leases, locks and elections end to end.
//!
//! - the real `etcdctl` against our server: lease grant, keep-alive,
//!   timetolive --keys, revoke, put --lease, lock, elect;
//! - differential tests against the real etcd 3.4 over gRPC (same
//!   operations, responses compared with headers' ids and terms dropped);
//! - expiry: without keepalives keys go at the TTL; after kill -9 and
//!   restart they go no earlier than the TTL and within TTL plus a bound;
//!   checkpointed remaining TTLs survive a restart.
//!
//! `etcdctl lock` with contention and `etcdctl elect -l` use the Watch API
//! on the client side (clientv3 concurrency waits with watches); those
//! cases run against both servers.

mod common;

use common::{etcdctl_path, Kind, Server};
use etcd_server::rpc::etcdserverpb::kv_client::KvClient;
use etcd_server::rpc::etcdserverpb::lease_client::LeaseClient;
use etcd_server::rpc::etcdserverpb::{
    request_op, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use etcd_server::rpc::v3electionpb::election_client::ElectionClient;
use etcd_server::rpc::v3electionpb::{
    CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest,
};
use etcd_server::rpc::v3lockpb::lock_client::LockClient;
use etcd_server::rpc::v3lockpb::{LockRequest, UnlockRequest};
use prost::bytes::Bytes;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tonic::transport::Channel;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn rt() -> Runtime {
    Runtime::new().unwrap()
}

/// `lease 694d71ddacfda227 granted with TTL(60s)` -> the id (hex).
fn granted_id(out: &str) -> String {
    let id = out.split_whitespace().nth(1).expect("lease id");
    assert!(out.contains("granted with TTL("), "{out}");
    id.to_string()
}

fn get_keys(s: &Server, prefix: &str) -> Vec<String> {
    s.ctl_ok(&["get", "--prefix", "--keys-only", prefix])
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn etcdctl_lease_grant_put_timetolive_keepalive_revoke() {
    let s = Server::start(Kind::Ours);
    let out = s.ctl_ok(&["lease", "grant", "60"]);
    let id = granted_id(&out);
    assert!(out.contains("TTL(60s)"), "{out}");
    s.ctl_ok(&["put", "--lease", &id, "lk/a", "1"]);
    s.ctl_ok(&["put", "--lease", &id, "lk/b", "2"]);
    let ttl = s.ctl_ok(&["lease", "timetolive", "--keys", &id]);
    assert!(
        ttl.contains(&format!("lease {id} granted with TTL(60s), remaining(")),
        "{ttl}"
    );
    assert!(ttl.contains("attached keys([lk/a lk/b])"), "{ttl}");
    assert!(s.ctl_ok(&["lease", "list"]).contains(&id));

    // `lease keep-alive` for a few seconds: one response per keepalive.
    let mut child = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &s.client_url, "lease", "keep-alive", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    std::thread::sleep(Duration::from_secs(3));
    let _ = child.kill();
    let _ = child.wait();
    let lines = reader.join().unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l == &format!("lease {id} keepalived with TTL(60)")),
        "{lines:?}"
    );
    let once = s.ctl_ok(&["lease", "keep-alive", "--once", &id]);
    assert_eq!(once.trim(), format!("lease {id} keepalived with TTL(60)"));

    let rev_before: i64 = s
        .ctl_ok(&["get", "-w", "json", "lk/a"])
        .split("\"revision\":")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        s.ctl_ok(&["lease", "revoke", &id]).trim(),
        format!("lease {id} revoked")
    );
    assert!(get_keys(&s, "lk/").is_empty());
    // Both keys went at one revision.
    let rev_after: i64 = s
        .ctl_ok(&["get", "-w", "json", "lk/a"])
        .split("\"revision\":")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(rev_after, rev_before + 1);
    assert_eq!(
        s.ctl_ok(&["lease", "timetolive", &id]).trim(),
        format!("lease {id} already expired")
    );
    let err = s.ctl_err(&["lease", "revoke", &id]);
    assert!(
        err.contains("etcdserver: requested lease not found"),
        "{err}"
    );
    let err = s.ctl_err(&["put", "--lease", &id, "lk/c", "3"]);
    assert!(
        err.contains("etcdserver: requested lease not found"),
        "{err}"
    );
}

#[test]
fn etcdctl_keys_expire_with_their_lease() {
    let s = Server::start(Kind::Ours);
    let id = granted_id(&s.ctl_ok(&["lease", "grant", "2"]));
    let granted = Instant::now();
    s.ctl_ok(&["put", "--lease", &id, "exp/a", "1"]);
    s.ctl_ok(&["put", "exp/b", "2"]);
    loop {
        let keys = get_keys(&s, "exp/");
        if keys == ["exp/b"] {
            break;
        }
        assert!(
            granted.elapsed() < Duration::from_secs(6),
            "lease did not expire: {keys:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(granted.elapsed() >= Duration::from_millis(1900));
    assert!(s.ctl_ok(&["lease", "list"]).contains("found 0 leases"));
}

fn lock_uncontended_runs_the_command(kind: Kind) {
    let s = Server::start(kind);
    let out = s.ctl_ok(&[
        "lock",
        "mylock",
        "--",
        "sh",
        "-c",
        "echo held $ETCD_LOCK_KEY",
    ]);
    assert!(out.starts_with("held mylock/"), "{out}");
    // The lock key is released after the command.
    assert!(get_keys(&s, "mylock/").is_empty());
}

#[test]
fn etcdctl_lock_runs_a_command_ours() {
    lock_uncontended_runs_the_command(Kind::Ours);
}

#[test]
fn etcdctl_lock_runs_a_command_real() {
    lock_uncontended_runs_the_command(Kind::Real);
}

/// Two `etcdctl lock` contenders with commands: the second runs only
/// after the first finished.
fn lock_two_contenders(kind: Kind) {
    let s = Server::start(kind);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let log = log.to_str().unwrap();
    let spawn = |script: String| {
        Command::new(etcdctl_path())
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &s.client_url, "lock", "L", "--", "sh", "-c"])
            .arg(script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut a = spawn(format!(
        "echo a-start >> {log}; sleep 2; echo a-end >> {log}"
    ));
    std::thread::sleep(Duration::from_millis(700));
    let mut b = spawn(format!("echo b >> {log}"));
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    assert_eq!(std::fs::read_to_string(log).unwrap(), "a-start\na-end\nb\n");
}

#[test]
fn etcdctl_lock_two_contenders_ours() {
    lock_two_contenders(Kind::Ours);
}

#[test]
fn etcdctl_lock_two_contenders_real() {
    lock_two_contenders(Kind::Real);
}

#[test]
fn etcdctl_elect_campaigns_and_holds() {
    let s = Server::start(Kind::Ours);
    let mut child = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &s.client_url, "elect", "myelection", "p1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let key = lines.next().unwrap().unwrap();
    assert!(key.starts_with("myelection/"), "{key}");
    assert_eq!(lines.next().unwrap().unwrap(), "p1");
    let got = s.ctl_ok(&["get", "--prefix", "myelection/"]);
    assert_eq!(got, format!("{key}\np1\n"));
    let _ = child.kill();
    let _ = child.wait();
}

/// `etcdctl elect myelection p1` leads; `etcdctl elect -l` observes p1.
fn elect_observe(kind: Kind) {
    let s = Server::start(kind);
    let spawn = |args: &[&str]| {
        Command::new(etcdctl_path())
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &s.client_url, "elect"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut leader = spawn(&["myelection", "p1"]);
    let mut leader_out = BufReader::new(leader.stdout.take().unwrap()).lines();
    let key = leader_out.next().unwrap().unwrap();
    let mut observer = spawn(&["-l", "myelection"]);
    let mut seen = BufReader::new(observer.stdout.take().unwrap()).lines();
    assert_eq!(seen.next().unwrap().unwrap(), key);
    assert_eq!(seen.next().unwrap().unwrap(), "p1");
    let _ = leader.kill();
    let _ = observer.kill();
    let _ = leader.wait();
    let _ = observer.wait();
}

#[test]
fn etcdctl_elect_observe_ours() {
    elect_observe(Kind::Ours);
}

#[test]
fn etcdctl_elect_observe_real() {
    elect_observe(Kind::Real);
}

// ---------------------------------------------------------------------------
// Differential: the same lease operations against ours and the real etcd.
// ---------------------------------------------------------------------------

/// A response or error, as comparable text (headers' ids and terms dropped,
/// server-chosen lease ids replaced by their position).
async fn lease_script(ch: Channel) -> Vec<String> {
    let mut lease = LeaseClient::new(ch.clone());
    let mut kv = KvClient::new(ch);
    let mut out = Vec::new();
    fn st(s: tonic::Status) -> String {
        format!("error {:?} {}", s.code(), s.message())
    }
    macro_rules! rec {
        ($e:expr, |$r:ident| $f:expr) => {
            out.push(match $e.await {
                Ok(resp) => {
                    let $r = resp.into_inner();
                    $f
                }
                Err(s) => st(s),
            })
        };
    }
    let grant = |ttl, id| LeaseGrantRequest { ttl, id };
    rec!(lease.lease_grant(grant(60, 100)), |r| format!(
        "grant id={} ttl={} rev={}",
        r.id,
        r.ttl,
        r.header.unwrap().revision
    ));
    rec!(lease.lease_grant(grant(1, 101)), |r| format!(
        "grant id={} ttl={}",
        r.id, r.ttl
    ));
    rec!(lease.lease_grant(grant(-5, 102)), |r| format!(
        "grant id={} ttl={}",
        r.id, r.ttl
    ));
    rec!(lease.lease_grant(grant(30, 100)), |r| format!("{r:?}"));
    rec!(lease.lease_grant(grant(9_000_000_001, 103)), |r| format!(
        "{r:?}"
    ));
    rec!(lease.lease_grant(grant(9_000_000_000, 103)), |r| format!(
        "grant id={} ttl={}",
        r.id, r.ttl
    ));
    rec!(lease.lease_grant(grant(10, 0)), |r| format!(
        "server-chosen id positive={} ttl={}",
        r.id > 0,
        r.ttl
    ));
    let put = |key: &str, lease: i64, ignore_lease: bool| PutRequest {
        key: b(key),
        value: b("v"),
        lease,
        ignore_lease,
        ..Default::default()
    };
    rec!(kv.put(put("a", 100, false)), |r| format!(
        "put rev={}",
        r.header.unwrap().revision
    ));
    rec!(kv.put(put("b", 100, false)), |r| format!(
        "put rev={}",
        r.header.unwrap().revision
    ));
    rec!(kv.put(put("c", 103, false)), |r| format!(
        "put rev={}",
        r.header.unwrap().revision
    ));
    rec!(kv.put(put("x", 999, false)), |r| format!("{r:?}"));
    let txn = TxnRequest {
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(put("y", 999, false))),
        }],
        ..Default::default()
    };
    rec!(kv.txn(txn), |r| format!("{r:?}"));
    // Move b from lease 100 to 103; ignore_lease keeps c's lease.
    rec!(kv.put(put("b", 103, false)), |r| format!(
        "put rev={}",
        r.header.unwrap().revision
    ));
    rec!(kv.put(put("c", 0, true)), |r| format!(
        "put rev={}",
        r.header.unwrap().revision
    ));
    rec!(kv.put(put("c", 100, true)), |r| format!("{r:?}"));
    let ttl = |id, keys| LeaseTimeToLiveRequest { id, keys };
    for id in [100, 103, 4242] {
        rec!(lease.lease_time_to_live(ttl(id, true)), |r| format!(
            "ttl id={} granted={} remaining_ok={} keys={:?}",
            r.id,
            r.granted_ttl,
            r.ttl == -1 || (r.ttl <= r.granted_ttl && r.ttl >= r.granted_ttl - 2),
            {
                // etcd lists a lease's keys in no particular order.
                let mut keys = r.keys.clone();
                keys.sort();
                keys
            }
        ));
    }
    rec!(lease.lease_time_to_live(ttl(100, false)), |r| format!(
        "ttl keys={:?}",
        r.keys
    ));
    rec!(lease.lease_leases(LeaseLeasesRequest {}), |r| {
        let mut ids: Vec<i64> = r
            .leases
            .iter()
            .map(|l| l.id)
            .filter(|id| *id < 1000)
            .collect();
        ids.sort();
        format!("leases {ids:?} total={}", r.leases.len())
    });
    // Keepalive: known lease -> its TTL; unknown -> TTL 0.
    let reqs = tokio_stream::iter(vec![
        LeaseKeepAliveRequest { id: 103 },
        LeaseKeepAliveRequest { id: 4242 },
    ]);
    match lease.lease_keep_alive(reqs).await {
        Ok(resp) => {
            let mut stream = resp.into_inner();
            for _ in 0..2 {
                match stream.message().await {
                    Ok(Some(r)) => out.push(format!("keepalive id={} ttl={}", r.id, r.ttl)),
                    other => out.push(format!("keepalive ended {other:?}")),
                }
            }
        }
        Err(s) => out.push(st(s)),
    }
    // Revoke 100: only `a` is still on it (b moved to 103).
    rec!(
        lease.lease_revoke(LeaseRevokeRequest { id: 100 }),
        |r| format!("revoke rev={}", r.header.unwrap().revision)
    );
    rec!(
        lease.lease_revoke(LeaseRevokeRequest { id: 100 }),
        |r| format!("{r:?}")
    );
    rec!(
        kv.range(RangeRequest {
            key: b("a"),
            range_end: b("z"),
            ..Default::default()
        }),
        |r| format!(
            "range {:?}",
            r.kvs
                .iter()
                .map(|kv| (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    kv.lease,
                    kv.mod_revision
                ))
                .collect::<Vec<_>>()
        )
    );
    rec!(
        lease.lease_revoke(LeaseRevokeRequest { id: 103 }),
        |r| format!("revoke rev={}", r.header.unwrap().revision)
    );
    rec!(
        kv.range(RangeRequest {
            key: b("a"),
            range_end: b("z"),
            ..Default::default()
        }),
        |r| format!("range count={}", r.count)
    );
    out
}

#[test]
fn differential_lease_operations() {
    let rt = rt();
    let ours = Server::start(Kind::Ours);
    let real = Server::start(Kind::Real);
    let a = rt.block_on(async { lease_script(ours.channel().await).await });
    let b = rt.block_on(async { lease_script(real.channel().await).await });
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x, y, "step {i} differs\nours: {a:#?}\nreal: {b:#?}");
    }
    assert_eq!(a.len(), b.len());
}

/// Lock and Election over gRPC (served here without Watch): contention,
/// proclaim, observe, resign, and the error cases.
async fn lock_election_script(ch: Channel) -> Vec<String> {
    let mut lease = LeaseClient::new(ch.clone());
    let mut out = Vec::new();
    let l1 = lease
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0x1a })
        .await
        .unwrap()
        .into_inner()
        .id;
    let l2 = lease
        .lease_grant(LeaseGrantRequest { ttl: 30, id: 0x2b })
        .await
        .unwrap()
        .into_inner()
        .id;
    let mut lock = LockClient::new(ch.clone());
    let held = lock
        .lock(LockRequest {
            name: b("L"),
            lease: l1,
        })
        .await
        .unwrap()
        .into_inner();
    out.push(format!("lock key={}", String::from_utf8_lossy(&held.key)));
    let mut lock2 = lock.clone();
    let waiter = tokio::spawn(async move {
        lock2
            .lock(LockRequest {
                name: b("L"),
                lease: l2,
            })
            .await
            .map(|r| String::from_utf8_lossy(&r.into_inner().key).into_owned())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    out.push(format!(
        "waiter done before unlock: {}",
        waiter.is_finished()
    ));
    lock.unlock(UnlockRequest { key: held.key }).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("second locker woke up")
        .unwrap();
    out.push(format!("second lock {second:?}"));
    match lock
        .lock(LockRequest {
            name: b("M"),
            lease: 4242,
        })
        .await
    {
        Ok(r) => out.push(format!("{r:?}")),
        Err(s) => out.push(format!("lock error {:?} {}", s.code(), s.message())),
    }

    let mut el = ElectionClient::new(ch.clone());
    match el.leader(LeaderRequest { name: b("E") }).await {
        Ok(r) => out.push(format!("{r:?}")),
        Err(s) => out.push(format!("leader error {:?} {}", s.code(), s.message())),
    }
    let c1 = el
        .campaign(CampaignRequest {
            name: b("E"),
            lease: l1,
            value: b("v1"),
        })
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    out.push(format!(
        "campaign key={} lease={}",
        String::from_utf8_lossy(&c1.key),
        c1.lease
    ));
    let mut observe = el
        .observe(LeaderRequest { name: b("E") })
        .await
        .unwrap()
        .into_inner();
    macro_rules! next_value {
        () => {
            match tokio::time::timeout(Duration::from_secs(10), observe.message()).await {
                Ok(Ok(Some(r))) => String::from_utf8_lossy(&r.kv.unwrap().value).into_owned(),
                other => format!("observe ended {other:?}"),
            }
        };
    }
    out.push(format!("observed {}", next_value!()));
    let mut el2 = el.clone();
    let candidate = tokio::spawn(async move {
        el2.campaign(CampaignRequest {
            name: b("E"),
            lease: l2,
            value: b("w1"),
        })
        .await
        .map(|r| String::from_utf8_lossy(&r.into_inner().leader.unwrap().key).into_owned())
    });
    for v in ["v2", "v3"] {
        el.proclaim(ProclaimRequest {
            leader: Some(c1.clone()),
            value: b(v),
        })
        .await
        .unwrap();
    }
    out.push(format!("observed {}", next_value!()));
    out.push(format!("observed {}", next_value!()));
    let leader = el.leader(LeaderRequest { name: b("E") }).await.unwrap();
    out.push(format!(
        "leader value={}",
        String::from_utf8_lossy(&leader.into_inner().kv.unwrap().value)
    ));
    out.push(format!(
        "candidate done before resign: {}",
        candidate.is_finished()
    ));
    el.resign(ResignRequest {
        leader: Some(c1.clone()),
    })
    .await
    .unwrap();
    let won = tokio::time::timeout(Duration::from_secs(10), candidate)
        .await
        .expect("candidate won")
        .unwrap();
    out.push(format!("candidate won {won:?}"));
    out.push(format!("observed {}", next_value!()));
    match el
        .proclaim(ProclaimRequest {
            leader: Some(c1),
            value: b("late"),
        })
        .await
    {
        Ok(r) => out.push(format!("{r:?}")),
        Err(s) => out.push(format!("proclaim error {:?} {}", s.code(), s.message())),
    }
    match el.resign(ResignRequest { leader: None }).await {
        Ok(r) => out.push(format!("{r:?}")),
        Err(s) => out.push(format!("resign error {:?} {}", s.code(), s.message())),
    }
    out
}

#[test]
fn differential_lock_and_election() {
    let rt = rt();
    let ours = Server::start(Kind::Ours);
    let real = Server::start(Kind::Real);
    let a = rt.block_on(async { lock_election_script(ours.channel().await).await });
    let b = rt.block_on(async { lock_election_script(real.channel().await).await });
    assert_eq!(a, b, "\nours: {a:#?}\nreal: {b:#?}");
}

#[test]
fn lock_waiter_that_gives_up_releases_its_place() {
    let rt = rt();
    let s = Server::start(Kind::Ours);
    rt.block_on(async {
        let ch = s.channel().await;
        let mut lock = LockClient::new(ch.clone());
        let held = lock
            .lock(LockRequest {
                name: b("G"),
                lease: 0,
            })
            .await
            .unwrap()
            .into_inner();
        // A waiter whose client gives up after 300 ms.
        let mut l2 = lock.clone();
        let r = tokio::time::timeout(
            Duration::from_millis(300),
            l2.lock(LockRequest {
                name: b("G"),
                lease: 0,
            }),
        )
        .await;
        assert!(r.is_err(), "the second lock must wait");
        // Its key is deleted once the server sees the cancellation.
        let mut kv = KvClient::new(ch);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let n = kv
                .range(RangeRequest {
                    key: b("G/"),
                    range_end: b("G0"),
                    count_only: true,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .count;
            if n == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "cancelled waiter's key remains");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        lock.unlock(UnlockRequest { key: held.key }).await.unwrap();
    });
}

// ---------------------------------------------------------------------------
// Expiry across kill -9 and restart.
// ---------------------------------------------------------------------------

#[test]
fn lease_expiry_after_kill_9_and_restart() {
    const TTL: u64 = 5;
    let mut s = Server::start(Kind::Ours);
    let id = granted_id(&s.ctl_ok(&["lease", "grant", &TTL.to_string()]));
    s.ctl_ok(&["put", "--lease", &id, "k9/a", "1"]);
    s.ctl_ok(&["put", "--lease", &id, "k9/b", "2"]);
    s.kill9();
    s.restart();
    let ready = Instant::now();
    assert!(s.ctl_ok(&["lease", "list"]).contains(&id));
    let ttl = s.ctl_ok(&["lease", "timetolive", "--keys", &id]);
    assert!(ttl.contains("attached keys([k9/a k9/b])"), "{ttl}");
    let gone = loop {
        if get_keys(&s, "k9/").is_empty() {
            break ready.elapsed();
        }
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "keys never expired"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // A restarted member counts the TTL (plus the election timeout) again
    // from when it became leader: never earlier than the TTL.
    assert!(
        gone >= Duration::from_secs(TTL),
        "keys expired {gone:?} after restart"
    );
    assert!(
        gone <= Duration::from_secs(TTL + 1 + 3),
        "keys expired only {gone:?} after restart"
    );
    assert!(s.ctl_ok(&["lease", "list"]).contains("found 0 leases"));
}

#[test]
fn checkpointed_remaining_ttl_survives_restart() {
    let mut s = Server::start_with(
        Kind::Ours,
        &["--experimental-lease-checkpoint-interval", "1s"],
    );
    let id = granted_id(&s.ctl_ok(&["lease", "grant", "30"]));
    std::thread::sleep(Duration::from_millis(4500));
    s.kill9();
    s.restart();
    let out = s.ctl_ok(&["lease", "timetolive", &id]);
    let remaining: i64 = out
        .split("remaining(")
        .nth(1)
        .and_then(|r| r.split('s').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    // Without checkpoints the restart would give 30 + 1 s again.
    assert!(
        remaining <= 28,
        "remaining {remaining}s: the checkpoint was lost"
    );
    assert!(remaining >= 20, "remaining {remaining}s");
    // A keepalive restores the full TTL.
    s.ctl_ok(&["lease", "keep-alive", "--once", &id]);
    let out = s.ctl_ok(&["lease", "timetolive", &id]);
    assert!(
        out.contains("remaining(29s)") || out.contains("remaining(30s)"),
        "{out}"
    );
}
