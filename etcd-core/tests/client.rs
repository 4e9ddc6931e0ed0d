//! The typed client (`etcd_core::client`) against a real single member:
//! KV options, transactions, watch streams, leases kept alive by a task,
//! sessions, locks and elections, cluster and maintenance calls.

use etcd_core::client::{
    Client, Compare, CompareOp, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp, TxnOpResponse, TxnResponses, WatchOptions,
};
use etcd_core::pb::mvccpb::event::EventType;
use etcd_core::{Code, Config, Error, Etcd};
use std::future::Future;
use std::time::Duration;

fn start(dir: &std::path::Path) -> (Etcd, Client) {
    let mut cfg = Config::single("c", dir.join("data"));
    cfg.heartbeat_interval = Duration::from_millis(10);
    cfg.election_timeout = Duration::from_millis(100);
    let etcd = Etcd::start(cfg).unwrap();
    (etcd.clone(), Client::new(etcd))
}

/// [`start`], then waits until the member serves.
async fn start_ready(dir: &std::path::Path) -> (Etcd, Client) {
    let (etcd, c) = start(dir);
    within(etcd.ready()).await.unwrap();
    (etcd, c)
}

/// `f`, failing the test if it takes over 10 s (a hang guard only).
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("done within 10 s")
}

fn keys(r: &etcd_core::pb::etcdserverpb::RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_with_options() {
    let dir = tempfile::tempdir().unwrap();
    let (etcd, c) = start_ready(dir.path()).await;
    for (k, v) in [
        ("app/a", "1"),
        ("app/b", "2"),
        ("app/c", "3"),
        ("other", "x"),
    ] {
        c.put(k, v, None).await.unwrap();
    }
    let all = c
        .get("app/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(keys(&all), ["app/a", "app/b", "app/c"]);
    assert_eq!(all.count, 3);
    let first_rev = all.kvs[0].mod_revision;

    let desc = GetOptions::new()
        .with_prefix()
        .with_sort(SortTarget::Key, SortOrder::Descend)
        .with_limit(2);
    let r = c.get("app/", Some(desc)).await.unwrap();
    assert_eq!(keys(&r), ["app/c", "app/b"]);
    assert!(r.more);
    let r = c
        .get(
            "app/b",
            Some(GetOptions::new().with_from_key().with_keys_only()),
        )
        .await
        .unwrap();
    assert_eq!(keys(&r), ["app/b", "app/c", "other"]);
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    let r = c
        .get(
            "app/a",
            Some(GetOptions::new().with_range("app/c").with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!((r.count, r.kvs.len()), (2, 0));
    let r = c
        .get("app/a", Some(GetOptions::new().with_serializable()))
        .await
        .unwrap();
    assert_eq!(&r.kvs[0].value[..], b"1");

    // prev_kv, an old revision, ignore_value on a missing key.
    let r = c
        .put("app/a", "11", Some(PutOptions::new().with_prev_key()))
        .await
        .unwrap();
    assert_eq!(&r.prev_kv.unwrap().value[..], b"1");
    let old = c
        .get("app/a", Some(GetOptions::new().with_revision(first_rev)))
        .await
        .unwrap();
    assert_eq!(&old.kvs[0].value[..], b"1");
    let e = c
        .put("nope", "", Some(PutOptions::new().with_ignore_value()))
        .await
        .unwrap_err();
    assert_eq!(
        (e.clone(), e.code()),
        (Error::KeyNotFound, Code::InvalidArgument)
    );

    let r = c
        .delete(
            "app/",
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    assert_eq!(r.deleted, 3);
    assert_eq!(r.prev_kvs.len(), 3);
    assert_eq!(
        c.get("app/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap()
            .count,
        0
    );

    // Compaction: the old revision is gone, with etcd's error and code.
    let rev = r.header.unwrap().revision;
    c.compact(rev, true).await.unwrap();
    let e = c
        .get("app/a", Some(GetOptions::new().with_revision(first_rev)))
        .await
        .unwrap_err();
    assert_eq!(e, Error::Compacted);
    assert_eq!(e.code(), Code::OutOfRange);
    assert_eq!(
        e.to_string(),
        "etcdserver: mvcc: required revision has been compacted"
    );
    etcd.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions() {
    let dir = tempfile::tempdir().unwrap();
    let (etcd, c) = start_ready(dir.path()).await;
    // Create-if-absent: succeeds once, then reads the existing value.
    let create = || {
        Txn::new()
            .when([Compare::create_revision("leader", CompareOp::Equal, 0)])
            .and_then([TxnOp::put("leader", "me", None)])
            .or_else([TxnOp::get("leader", None)])
    };
    let r = c.txn(create()).await.unwrap();
    assert!(r.succeeded);
    assert!(matches!(r.op_responses()[..], [TxnOpResponse::Put(_)]));
    let r = c.txn(create()).await.unwrap();
    assert!(!r.succeeded);
    match &r.op_responses()[..] {
        [TxnOpResponse::Get(g)] => assert_eq!(&g.kvs[0].value[..], b"me"),
        other => panic!("{other:?}"),
    }
    // Compare-and-swap on value and version, prefix compares, nesting.
    let cas = Txn::new()
        .when([
            Compare::value("leader", CompareOp::Equal, "me"),
            Compare::version("leader", CompareOp::Equal, 1),
            Compare::mod_revision("leader", CompareOp::Greater, 0),
            Compare::lease("leader", CompareOp::Equal, 0),
        ])
        .and_then([
            TxnOp::put("leader", "you", None),
            TxnOp::txn(Txn::new().and_then([TxnOp::put("log/1", "changed", None)])),
        ]);
    let r = c.txn(cas).await.unwrap();
    assert!(r.succeeded);
    assert!(matches!(
        r.op_responses()[..],
        [TxnOpResponse::Put(_), TxnOpResponse::Txn(_)]
    ));
    let none_older = Txn::new()
        .when([Compare::version("log/", CompareOp::Greater, 1).with_prefix()])
        .or_else([TxnOp::delete(
            "log/",
            Some(DeleteOptions::new().with_prefix()),
        )]);
    let r = c.txn(none_older).await.unwrap();
    assert!(!r.succeeded);
    match &r.op_responses()[..] {
        [TxnOpResponse::Delete(d)] => assert_eq!(d.deleted, 1),
        other => panic!("{other:?}"),
    }
    // The same key written twice: etcd's error.
    let dup = Txn::new().and_then([TxnOp::put("k", "1", None), TxnOp::put("k", "2", None)]);
    let e = c.txn(dup).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "etcdserver: duplicate key given in txn request"
    );
    assert_eq!(e.code(), Code::InvalidArgument);
    etcd.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let (etcd, c) = start_ready(dir.path()).await;
    let first = c
        .put("cfg/a", "0", None)
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let (watcher, mut events) = c
        .watch(
            "cfg/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    c.put("cfg/a", "1", None).await.unwrap();
    c.put("cfg/b", "2", None).await.unwrap();
    c.delete("cfg/a", None).await.unwrap();
    c.put("elsewhere", "x", None).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let r = within(events.next()).await.expect("stream open");
        assert_eq!(r.watch_id, watcher.watch_id());
        for e in r.events {
            let kv = e.kv.unwrap();
            let prev = e
                .prev_kv
                .map(|p| String::from_utf8_lossy(&p.value).into_owned());
            seen.push((
                e.r#type,
                String::from_utf8_lossy(&kv.key).into_owned(),
                prev,
            ));
        }
    }
    let put = EventType::Put as i32;
    let del = EventType::Delete as i32;
    assert_eq!(
        seen,
        [
            (put, "cfg/a".into(), Some("0".into())),
            (put, "cfg/b".into(), None),
            (del, "cfg/a".into(), Some("1".into())),
        ]
    );
    // Progress: an empty response at the current revision.
    watcher.request_progress();
    let r = within(events.message()).await.unwrap();
    assert!(r.events.is_empty());
    assert_eq!(r.header.unwrap().revision, first + 4);
    // Cancel: a last response, then the end of the stream.
    watcher.cancel();
    let r = within(events.message()).await.unwrap();
    assert!(r.canceled);
    assert!(within(events.message()).await.is_none());

    // From a compacted revision: canceled with the compact revision.
    c.compact(first + 2, true).await.unwrap();
    let opts = WatchOptions::new().with_start_revision(first);
    let (_w, mut events) = c.watch("cfg/a", Some(opts)).await.unwrap();
    let r = within(events.message()).await.unwrap();
    assert!(r.canceled);
    assert_eq!(r.compact_revision, first + 2);
    // History from a kept revision, puts only.
    let opts = WatchOptions::new()
        .with_start_revision(first + 2)
        .with_prefix()
        .with_no_delete();
    let (_w, mut events) = c.watch("cfg/", Some(opts)).await.unwrap();
    let r = within(events.message()).await.unwrap();
    assert_eq!(r.events.len(), 1);
    assert_eq!(&r.events[0].kv.as_ref().unwrap().key[..], b"cfg/b");
    etcd.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_kept_alive_by_a_task() {
    let dir = tempfile::tempdir().unwrap();
    let (etcd, c) = start_ready(dir.path()).await;
    // The kept lease's TTL leaves its renewals (every TTL/3) 2 s of slack
    // on a busy machine; the checks below run past the TTL.
    let kept = c.lease_grant(3).await.unwrap().id;
    let left = c.lease_grant(1).await.unwrap().id;
    c.put("kept", "v", Some(PutOptions::new().with_lease(kept)))
        .await
        .unwrap();
    c.put("left", "v", Some(PutOptions::new().with_lease(left)))
        .await
        .unwrap();
    let keep = c.keep_alive(kept);
    assert_eq!(keep.id(), kept);
    // The unrenewed lease expires and takes its key; the renewed one
    // outlives it (by its TTL at least).
    within(async {
        while c.get("left", None).await.unwrap().count != 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(c.get("kept", None).await.unwrap().count, 1);
    }
    assert!(keep.ttl() >= 1, "ttl {}", keep.ttl());
    let ttl = c.lease_time_to_live(kept, true).await.unwrap();
    assert_eq!((ttl.granted_ttl, ttl.keys.len()), (3, 1));
    assert!(c
        .lease_leases()
        .await
        .unwrap()
        .leases
        .iter()
        .any(|l| l.id == kept));
    // Revoked: the keep-alive sees the lease gone.
    c.lease_revoke(kept).await.unwrap();
    within(keep.expired()).await;
    assert_eq!(keep.ttl(), 0);
    assert_eq!(c.get("kept", None).await.unwrap().count, 0);
    assert_eq!(
        c.lease_revoke(kept).await.unwrap_err(),
        Error::LeaseNotFound
    );
    etcd.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_locks() {
    let dir = tempfile::tempdir().unwrap();
    let (etcd, c) = start_ready(dir.path()).await;
    let a = c.session(5).await.unwrap();
    let b = c.session(5).await.unwrap();
    let held = c.lock("jobs", a.lease_id()).await.unwrap();
    assert!(held.starts_with(b"jobs/"));
    // B waits while A holds the lock.
    let waiter = {
        let (c, lease) = (c.clone(), b.lease_id());
        tokio::spawn(async move { c.lock("jobs", lease).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    c.unlock(&held).await.unwrap();
    let b_key = within(waiter).await.unwrap().unwrap();
    assert_ne!(b_key, held);
    // Closing B's session (revoking its lease) releases its lock: A gets
    // it again at once.
    let again = {
        let (c, lease) = (c.clone(), a.lease_id());
        tokio::spawn(async move { c.lock("jobs", lease).await })
    };
    b.close().await.unwrap();
    within(again).await.unwrap().unwrap();
    a.close().await.unwrap();
    etcd.stop();
}

/// Reads observed leaders until one announces `value`.
async fn next_value(observe: &mut etcd_core::client::Observe, value: &str) {
    loop {
        let kv = within(observe.message()).await.unwrap().unwrap();
        if kv.value == value.as_bytes() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elections() {
    let dir = tempfile::tempdir().unwrap();
    let (etcd, c) = start_ready(dir.path()).await;
    assert_eq!(c.leader("svc").await.unwrap(), None);
    let a = c.session(5).await.unwrap();
    let b = c.session(5).await.unwrap();
    let mut observe = c.observe("svc");
    let lead = c.campaign("svc", "a:1", a.lease_id()).await.unwrap();
    next_value(&mut observe, "a:1").await;
    assert_eq!(&c.leader("svc").await.unwrap().unwrap().value[..], b"a:1");
    // B campaigns and waits; A proclaims, then resigns: B leads.
    let b_campaign = {
        let (c, lease) = (c.clone(), b.lease_id());
        tokio::spawn(async move { c.campaign("svc", "b:1", lease).await })
    };
    c.proclaim(&lead, "a:2").await.unwrap();
    next_value(&mut observe, "a:2").await;
    assert!(!b_campaign.is_finished());
    c.resign(&lead).await.unwrap();
    let b_lead = within(b_campaign).await.unwrap().unwrap();
    next_value(&mut observe, "b:1").await;
    assert_eq!(
        c.proclaim(&lead, "a:3").await.unwrap_err(),
        Error::ElectionNotLeader
    );
    // B's session ends: nobody leads.
    drop(b_lead);
    b.close().await.unwrap();
    within(async {
        while c.leader("svc").await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    a.close().await.unwrap();
    etcd.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_and_maintenance() {
    let dir = tempfile::tempdir().unwrap();
    let (etcd, c) = start_ready(dir.path()).await;
    c.put("k", "v", None).await.unwrap();
    let members = c.member_list(true).await.unwrap().members;
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].id, etcd.member_id());
    let status = c.status();
    assert_eq!(status.leader, etcd.member_id());
    assert!(status.db_size > 0);
    assert!(c.alarm_list().await.unwrap().alarms.is_empty());
    let h1 = c.hash_kv(0).unwrap();
    let h2 = c.hash_kv(0).unwrap();
    assert_eq!(h1.hash, h2.hash);
    c.defragment().unwrap();
    // A learner that never starts: added, listed, removed.
    let added = c.member_add(["http://127.0.0.1:1"], true).await.unwrap();
    let id = added.member.unwrap().id;
    assert!(c
        .member_list(false)
        .await
        .unwrap()
        .members
        .iter()
        .any(|m| m.id == id && m.is_learner));
    c.member_remove(id).await.unwrap();
    assert_eq!(
        c.member_remove(id).await.unwrap_err(),
        Error::MemberNotFound
    );
    etcd.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_keep_alives_end_when_the_member_stops() {
    let dir = tempfile::tempdir().unwrap();
    let (etcd, c) = start_ready(dir.path()).await;
    let lease = c.lease_grant(60).await.unwrap().id;
    let keep = c.keep_alive(lease);
    let (_watcher, mut events) = c.watch("k", None).await.unwrap();
    let mut observe = c.observe("election");
    let stopper = etcd.clone();
    tokio::task::spawn_blocking(move || stopper.stop())
        .await
        .unwrap();
    assert!(within(events.message()).await.is_none());
    within(keep.expired()).await;
    // Observe: a last "server stopped", then the end.
    assert_eq!(
        within(observe.message()).await.unwrap().unwrap_err(),
        Error::Stopped
    );
    assert!(within(observe.message()).await.is_none());
    // Nothing holds the member any more: its data directory can be opened
    // again in this process (RocksDB's lock is released).
    drop((keep, events, observe, c, etcd));
    let (etcd, c) = start_ready(dir.path()).await;
    assert_eq!(
        c.lease_time_to_live(lease, false)
            .await
            .unwrap()
            .granted_ttl,
        60
    );
    etcd.stop();
}
