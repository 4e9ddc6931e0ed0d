//! The embedded watch API (`Etcd::watch`) against a real single member:
//! live and replayed events, compaction, filters, prev_kv, ids, progress,
//! and a consumer that does not read while thousands of writes happen
//! (parked, resumed from history, nothing lost or repeated).

use etcd_core::pb::etcdserverpb::{
    watch_create_request::FilterType, CompactionRequest, DeleteRangeRequest, PutRequest,
    TxnRequest, WatchCreateRequest, WatchResponse,
};
use etcd_core::pb::mvccpb::event::EventType;
use etcd_core::RequestContext;
use etcd_core::{Config, Etcd, WatchStream};
use std::time::Duration;

fn start(dir: &std::path::Path) -> Etcd {
    let mut cfg = Config::single("w", dir.join("data"));
    cfg.heartbeat_interval = Duration::from_millis(10);
    cfg.election_timeout = Duration::from_millis(100);
    cfg.watch_progress_notify_interval = Duration::from_millis(200);
    Etcd::start(cfg).unwrap()
}

async fn put(e: &Etcd, k: &str, v: &str) -> i64 {
    e.put(
        &RequestContext::LOCAL,
        PutRequest {
            key: k.as_bytes().to_vec().into(),
            value: v.as_bytes().to_vec().into(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
    .header
    .unwrap()
    .revision
}

async fn recv(w: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(10), w.recv())
        .await
        .expect("a response within 10 s")
        .expect("stream open")
}

fn create(key: &str, end: &str, rev: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: key.as_bytes().to_vec().into(),
        range_end: end.as_bytes().to_vec().into(),
        start_revision: rev,
        ..Default::default()
    }
}

/// `(type, key, mod_revision)` of each event.
fn evs(r: &WatchResponse) -> Vec<(&'static str, String, i64)> {
    r.events
        .iter()
        .map(|e| {
            let kv = e.kv.as_ref().unwrap();
            (
                if e.r#type == EventType::Put as i32 {
                    "PUT"
                } else {
                    "DELETE"
                },
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_history_filters_prev_kv_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let e = start(dir.path());
    put(&e, "a", "1").await; // rev 2
    put(&e, "b", "1").await; // rev 3
    let mut w = e.watch(&RequestContext::LOCAL);
    // Server-assigned ids start at 0; a client id in use is refused.
    w.create(create("a", "c", 0));
    let c = recv(&mut w).await;
    assert!(c.created && !c.canceled);
    assert_eq!((c.watch_id, c.header.as_ref().unwrap().revision), (0, 3));
    w.create(WatchCreateRequest {
        watch_id: 7,
        prev_kv: true,
        ..create("a", "", 2)
    });
    let c = recv(&mut w).await;
    assert_eq!((c.watch_id, c.created), (7, true));
    // Replay: watcher 7 gets revision 2 from history.
    let r = recv(&mut w).await;
    assert_eq!(r.watch_id, 7);
    assert_eq!(evs(&r), [("PUT", "a".into(), 2)]);
    assert!(r.events[0].prev_kv.is_none(), "a creation has no prev_kv");
    w.create(WatchCreateRequest {
        watch_id: 7,
        ..create("x", "", 0)
    });
    let dup = recv(&mut w).await;
    assert_eq!((dup.watch_id, dup.created, dup.canceled), (-1, true, true));
    assert_eq!(
        dup.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    w.create(create("b", "a", 0));
    let bad = recv(&mut w).await;
    assert_eq!(bad.cancel_reason, "mvcc: watcher range is empty");
    w.create(WatchCreateRequest {
        filters: vec![FilterType::Noput as i32],
        ..create("a", "z", 0)
    });
    assert_eq!(recv(&mut w).await.watch_id, 1);

    // One txn touching a and b: one response per watcher, both events.
    e.txn(
        &RequestContext::LOCAL,
        TxnRequest {
            success: vec![
                etcd_core::pb::etcdserverpb::RequestOp {
                    request: Some(
                        etcd_core::pb::etcdserverpb::request_op::Request::RequestPut(PutRequest {
                            key: "a".into(),
                            value: "2".into(),
                            ..Default::default()
                        }),
                    ),
                },
                etcd_core::pb::etcdserverpb::RequestOp {
                    request: Some(
                        etcd_core::pb::etcdserverpb::request_op::Request::RequestDeleteRange(
                            DeleteRangeRequest {
                                key: "b".into(),
                                ..Default::default()
                            },
                        ),
                    ),
                },
            ],
            ..Default::default()
        },
    )
    .await
    .unwrap(); // rev 4
    let mut got = std::collections::HashMap::new();
    for _ in 0..3 {
        let r = recv(&mut w).await;
        assert_eq!(r.header.as_ref().unwrap().revision, 4);
        got.insert(r.watch_id, r);
    }
    assert_eq!(
        evs(&got[&0]),
        [("PUT", "a".into(), 4), ("DELETE", "b".into(), 4)]
    );
    assert!(got[&0].events[0].prev_kv.is_none(), "prev_kv not asked");
    assert_eq!(evs(&got[&7]), [("PUT", "a".into(), 4)]);
    assert_eq!(got[&7].events[0].prev_kv.as_ref().unwrap().value, "1");
    assert_eq!(evs(&got[&1]), [("DELETE", "b".into(), 4)]);

    // Cancel: a canceled response; later events do not reach it.
    w.cancel(0);
    let c = recv(&mut w).await;
    assert_eq!((c.watch_id, c.canceled), (0, true));
    w.cancel(42); // unknown: nothing is sent
    put(&e, "a", "3").await;
    let r = recv(&mut w).await;
    assert_eq!((r.watch_id, evs(&r)), (7, vec![("PUT", "a".into(), 5)]));

    // ProgressRequest: all synced -> watch id -1 at the current revision.
    w.request_progress();
    let p = recv(&mut w).await;
    assert_eq!((p.watch_id, p.header.unwrap().revision), (-1, 5));
    assert!(p.events.is_empty());
    drop(w);
    e.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_start_and_progress_notify() {
    let dir = tempfile::tempdir().unwrap();
    let e = start(dir.path());
    for i in 0..5 {
        put(&e, "k", &i.to_string()).await; // revs 2..=6
    }
    e.compact(
        &RequestContext::LOCAL,
        CompactionRequest {
            revision: 4,
            physical: true,
        },
    )
    .await
    .unwrap();
    let mut w = e.watch(&RequestContext::LOCAL);
    w.create(create("k", "", 3));
    let c = recv(&mut w).await;
    assert!(c.created && !c.canceled);
    let r = recv(&mut w).await;
    assert_eq!((r.watch_id, r.canceled, r.compact_revision), (0, true, 4));
    assert!(r.events.is_empty());
    // Exactly at the compaction revision is allowed.
    w.create(create("k", "", 4));
    assert!(recv(&mut w).await.created);
    let r = recv(&mut w).await;
    let revs: Vec<i64> = evs(&r).iter().map(|x| x.2).collect();
    assert_eq!(revs, [4, 5, 6]);
    // A negative start revision is refused with the compacted message.
    w.create(create("k", "", -1));
    let r = recv(&mut w).await;
    assert_eq!((r.watch_id, r.canceled, r.created), (-1, true, true));
    assert_eq!(
        r.cancel_reason,
        "etcdserver: mvcc: required revision has been compacted"
    );
    // progress_notify: empty responses at the current revision.
    w.create(WatchCreateRequest {
        progress_notify: true,
        ..create("p", "", 0)
    });
    let c = recv(&mut w).await;
    let id = c.watch_id;
    let p = recv(&mut w).await;
    assert_eq!(p.watch_id, id);
    assert!(p.events.is_empty() && !p.canceled);
    assert_eq!(p.header.unwrap().revision, 6);
    drop(w);
    e.stop();
}

/// A consumer that reads nothing while 3,000 single-put transactions
/// happen (far more than the stream buffer): apply is not blocked, and
/// afterwards the consumer gets every revision exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_parked_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = start(dir.path());
    let mut slow = e.watch(&RequestContext::LOCAL);
    slow.create(create("k", "", 0));
    assert!(recv(&mut slow).await.created);
    let mut fast = e.watch(&RequestContext::LOCAL);
    fast.create(create("k", "", 0));
    assert!(recv(&mut fast).await.created);
    let n = 3000;
    let writer = {
        let e = e.clone();
        tokio::spawn(async move {
            let mut last = 0;
            for i in 0..n {
                last = put(&e, "k", &i.to_string()).await;
            }
            last
        })
    };
    // The fast consumer keeps up meanwhile.
    let mut want = 2;
    while want < n + 2 {
        let r = recv(&mut fast).await;
        for (_, _, rev) in evs(&r) {
            assert_eq!(rev, want);
            want += 1;
        }
    }
    let last = writer.await.unwrap();
    assert_eq!(last, n + 1);
    let mut want = 2;
    let mut responses = 0;
    while want <= last {
        let r = recv(&mut slow).await;
        responses += 1;
        for (_, _, rev) in evs(&r) {
            assert_eq!(rev, want, "in order, none missing, none repeated");
            want += 1;
        }
    }
    // Parked and resumed from history: fewer responses than revisions.
    assert!(responses < n, "{responses} responses");
    e.stop();
}

/// With auth enabled, a watcher needs READ on its whole range: refused
/// ones get etcd's canceled response (created, canceled, watch id -1, the
/// gRPC error text as reason); permitted ones see events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_need_read_permission() {
    use etcd_core::pb::authpb::{permission::Type as PermType, Permission};
    use etcd_core::pb::etcdserverpb::{
        AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthUserAddRequest,
        AuthUserGrantRoleRequest, AuthenticateRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::single("w", dir.path().join("data"));
    cfg.bcrypt_cost = 4;
    let e = Etcd::start(cfg).unwrap();
    let local = &RequestContext::LOCAL;
    for u in ["root", "alice"] {
        let r = AuthUserAddRequest {
            name: u.into(),
            password: "pw".into(),
            ..Default::default()
        };
        e.user_add(local, r).await.unwrap();
    }
    let r = AuthRoleAddRequest {
        name: "reader".into(),
    };
    e.role_add(local, r).await.unwrap();
    let grant = AuthRoleGrantPermissionRequest {
        name: "reader".into(),
        perm: Some(Permission {
            perm_type: PermType::Read as i32,
            key: b"a".to_vec().into(),
            range_end: b"c".to_vec().into(),
        }),
    };
    e.role_grant_permission(local, grant).await.unwrap();
    for (user, role) in [("root", "root"), ("alice", "reader")] {
        let r = AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        e.user_grant_role(local, r).await.unwrap();
    }
    e.auth_enable(local).await.unwrap();
    let login = AuthenticateRequest {
        name: "alice".into(),
        password: "pw".into(),
    };
    let token = e
        .authenticate(&RequestContext::default(), login)
        .await
        .unwrap()
        .token;
    let alice = RequestContext {
        token: Some(token),
        ..RequestContext::default()
    };
    let refusals = [
        (
            RequestContext::default(),
            create("a", "", 0),
            "rpc error: code = InvalidArgument desc = etcdserver: user name is empty",
        ),
        (
            alice.clone(),
            create("a", "d", 0),
            "rpc error: code = PermissionDenied desc = etcdserver: permission denied",
        ),
        (
            alice.clone(),
            create("b", "\0", 0),
            "rpc error: code = PermissionDenied desc = etcdserver: permission denied",
        ),
        (
            RequestContext {
                token: Some("nope.1".into()),
                ..RequestContext::default()
            },
            create("a", "", 0),
            "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token",
        ),
    ];
    for (ctx, c, reason) in refusals {
        let mut w = e.watch(&ctx);
        w.create(c);
        let r = recv(&mut w).await;
        assert!(r.created && r.canceled, "{r:?}");
        assert_eq!((r.watch_id, r.cancel_reason.as_str()), (-1, reason));
    }
    let mut w = e.watch(&alice);
    w.create(create("a", "c", 0));
    let r = recv(&mut w).await;
    assert!(r.created && !r.canceled, "{r:?}");
    let root_token = e
        .authenticate(
            &RequestContext::default(),
            AuthenticateRequest {
                name: "root".into(),
                password: "pw".into(),
            },
        )
        .await
        .unwrap()
        .token;
    let root = RequestContext {
        token: Some(root_token),
        ..RequestContext::default()
    };
    let rev = e
        .put(
            &root,
            PutRequest {
                key: b"b".to_vec().into(),
                value: b"1".to_vec().into(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let r = recv(&mut w).await;
    assert_eq!(evs(&r), vec![("PUT", "b".to_string(), rev)]);
    std::thread::spawn(move || e.stop()).join().unwrap();
}

/// A stream whose watchers were all cancelled still ends (None) when the
/// member stops, as one with watchers does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_watchers_ends_at_stop() {
    let dir = tempfile::tempdir().unwrap();
    let e = start(dir.path());
    let mut w = e.watch(&RequestContext::LOCAL);
    w.create(create("a", "", 0));
    let created = recv(&mut w).await;
    w.cancel(created.watch_id);
    assert!(recv(&mut w).await.canceled);
    let stopper = e.clone();
    tokio::task::spawn_blocking(move || stopper.stop())
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), w.recv())
        .await
        .expect("the stream ends within 10 s");
    assert!(end.is_none());
}
