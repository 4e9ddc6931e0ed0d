//! A checker of etcd's six watch guarantees (ordered, unique, reliable,
//! atomic, resumable, bookmarkable; etcd's "API guarantees" page), run on
//! histories recorded against our server under concurrent writes,
//! compactions and kill -9 / restart, with clients resuming from the last
//! revision they saw + 1.
//!
//! Recording: writers run txns of 1-3 operations on keys `k0..k9` with
//! values unique in the run and record each acknowledged txn with its
//! revision (the ground truth); a txn whose answer was lost (the server was
//! killed) is *ambiguous*: it may or may not have been committed. Watchers
//! record every response of every stream they open, the revision they
//! resumed from, and progress responses. The run is bounded by counts:
//! a compaction after every [`TXNS_PER_STEP`] txns, a kill after every
//! [`STEPS_PER_ROUND`] steps, and at the end the watchers are given until
//! they have seen the last acknowledged revision (time only caps each wait).
//!
//! The checks are those of `common::watch_check`.

mod common;

use common::budget::{OpBudget, IDLE};
use common::watch_check::{check, connect, watcher, Ev, Record, Truth};
use common::{Kind, Server};
use etcd_server::rpc::etcdserverpb::{
    kv_client::KvClient, request_op::Request as Op, CompactionRequest, DeleteRangeRequest,
    PutRequest, RequestOp, TxnRequest, WatchResponse,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// Txns (answered or failed) between two compactions.
const TXNS_PER_STEP: u64 = 60;
/// Compactions between two kills.
const STEPS_PER_ROUND: usize = 6;
/// Safety cap on one step, and on the watchers' final catch-up.
const CAP: Duration = Duration::from_secs(60);

#[test]
fn checker_finds_violations() {
    let ev = |k: &str, v: &str| (true, k.to_string(), v.to_string());
    let mut truth = Truth::default();
    truth.known.insert(2, vec![ev("a", "1"), ev("b", "1")]);
    truth.known.insert(3, vec![ev("a", "2")]);
    truth.known.insert(4, vec![ev("a", "3")]);
    let resp = |evs: &[(i64, &str, &str)]| WatchResponse {
        events: evs
            .iter()
            .map(|(rev, k, v)| etcd_core::pb::mvccpb::Event {
                kv: Some(etcd_core::pb::mvccpb::KeyValue {
                    key: k.as_bytes().to_vec().into(),
                    value: v.as_bytes().to_vec().into(),
                    mod_revision: *rev,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let rec = |resps: Vec<WatchResponse>| Record {
        streams: vec![(2, resps)],
    };
    let good = rec(vec![
        resp(&[(2, "a", "1"), (2, "b", "1")]),
        resp(&[(3, "a", "2"), (4, "a", "3")]),
    ]);
    assert!(check(&truth, &[good]).is_empty());
    let split = rec(vec![
        resp(&[(2, "a", "1")]),
        resp(&[(2, "b", "1")]),
        resp(&[(3, "a", "2"), (4, "a", "3")]),
    ]);
    assert!(!check(&truth, &[split]).is_empty(), "atomic");
    let missing = rec(vec![
        resp(&[(2, "a", "1"), (2, "b", "1")]),
        resp(&[(4, "a", "3")]),
    ]);
    assert!(
        check(&truth, &[missing])[0].starts_with("reliable"),
        "reliable"
    );
    let dup = rec(vec![
        resp(&[(2, "a", "1"), (2, "b", "1")]),
        resp(&[(3, "a", "2")]),
        resp(&[(3, "a", "2"), (4, "a", "3")]),
    ]);
    assert!(!check(&truth, &[dup]).is_empty(), "unique");
    let mut early_bookmark = WatchResponse::default();
    early_bookmark.header = Some(Default::default());
    early_bookmark.header.as_mut().unwrap().revision = 4;
    let bm = rec(vec![
        resp(&[(2, "a", "1"), (2, "b", "1")]),
        early_bookmark,
        resp(&[(3, "a", "2"), (4, "a", "3")]),
    ]);
    assert!(
        check(&truth, &[bm])
            .iter()
            .any(|v| v.starts_with("bookmarkable")),
        "bookmarkable"
    );
    let resumed_wrong = Record {
        streams: vec![
            (2, vec![resp(&[(2, "a", "1"), (2, "b", "1")])]),
            (4, vec![resp(&[(4, "a", "3")])]),
        ],
    };
    assert!(!check(&truth, &[resumed_wrong]).is_empty(), "resumable");
}

fn put_op(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: k.as_bytes().to_vec().into(),
            value: v.as_bytes().to_vec().into(),
            ..Default::default()
        })),
    }
}

fn del_op(k: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
            key: k.as_bytes().to_vec().into(),
            prev_kv: true,
            ..Default::default()
        })),
    }
}

/// One writer: txns until `stop`; records acknowledged and ambiguous ones.
async fn writer(
    url: String,
    id: usize,
    truth: Arc<Mutex<Truth>>,
    stop: Arc<AtomicBool>,
    budget: Arc<OpBudget>,
) {
    let mut seq = 0u64;
    let mut kv = None;
    while !stop.load(Ordering::Relaxed) {
        if kv.is_none() {
            kv = connect(&url).await.map(KvClient::new);
            if kv.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        if !budget.take() {
            tokio::time::sleep(IDLE).await;
            continue;
        }
        seq += 1;
        let n = 1 + (seq % 3) as usize;
        let mut ops = Vec::new();
        let mut evs: Vec<Ev> = Vec::new();
        let with_delete = seq.is_multiple_of(4);
        for i in 0..n {
            let key = format!("k{}", (seq as usize * 7 + i * 3 + id) % 10);
            if evs.iter().any(|e| e.1 == key) {
                continue;
            }
            if with_delete && i == 0 {
                ops.push(del_op(&key));
                evs.push((false, key, String::new()));
            } else {
                let v = format!("w{id}-{seq}-{i}");
                ops.push(put_op(&key, &v));
                evs.push((true, key, v));
            }
        }
        let req = TxnRequest {
            success: ops,
            ..Default::default()
        };
        let result = kv.as_mut().unwrap().txn(req).await;
        budget.done();
        match result {
            Ok(r) => {
                let r = r.into_inner();
                let rev = r.header.unwrap().revision;
                // A delete of a missing key is not an event.
                let deleted_nothing = with_delete
                    && matches!(
                        r.responses[0].response,
                        Some(etcd_server::rpc::etcdserverpb::response_op::Response::ResponseDeleteRange(ref d)) if d.deleted == 0
                    );
                if deleted_nothing {
                    evs.remove(0);
                }
                if !evs.is_empty() {
                    let mut t = truth.lock().await;
                    assert!(
                        t.known.insert(rev, evs.clone()).is_none(),
                        "two txns acknowledged at revision {rev}"
                    );
                }
            }
            Err(_) => {
                // Lost answer: committed or not, we cannot tell. Record both
                // shapes (with or without the delete event).
                let mut t = truth.lock().await;
                if with_delete {
                    t.ambiguous.push(evs[1..].to_vec());
                }
                t.ambiguous.push(evs);
                kv = None;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_guarantees_hold_under_writes_compactions_and_kill9() {
    let mut server = Server::start(Kind::Ours);
    let url = server.client_url.clone();
    let truth = Arc::new(Mutex::new(Truth::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let budget = Arc::new(OpBudget::new());
    let mut tasks = Vec::new();
    for id in 0..2 {
        tasks.push(tokio::spawn(writer(
            url.clone(),
            id,
            truth.clone(),
            stop.clone(),
            budget.clone(),
        )));
    }
    let records: Vec<Arc<Mutex<Record>>> = (0..4).map(|_| Arc::default()).collect();
    let mut watchers = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let url = url.clone();
        watchers.push(tokio::spawn(watcher(
            move || Some(url.clone()),
            "k",
            i == 3,
            r.clone(),
            stop_watch.clone(),
        )));
    }
    let mut compactions = 0;
    for round in 0..3 {
        for _ in 0..STEPS_PER_ROUND {
            budget.refill(TXNS_PER_STEP);
            budget.wait_done_async(TXNS_PER_STEP, CAP).await;
            // Compact to a recent acknowledged put-only revision, a few
            // back (a tombstone at the compaction revision itself is not
            // kept, in etcd too; a revision a few below a put-only one may
            // well hold a delete).
            let rev = truth
                .lock()
                .await
                .known
                .iter()
                .rev()
                .filter(|(_, evs)| evs.iter().all(|e| e.0))
                .nth(5)
                .map_or(0, |(r, _)| *r);
            if rev > 1 {
                if let Some(ch) = connect(&url).await {
                    let r = KvClient::new(ch)
                        .compact(CompactionRequest {
                            revision: rev,
                            physical: false,
                        })
                        .await;
                    if r.is_ok() {
                        compactions += 1;
                    }
                }
            }
        }
        if round < 2 {
            // Writes are in flight: the step's budget is refilled before
            // the kill.
            budget.refill(TXNS_PER_STEP);
            budget.wait_done_async(TXNS_PER_STEP / 2, CAP).await;
            server.kill9();
            tokio::time::sleep(Duration::from_millis(300)).await;
            tokio::task::block_in_place(|| server.restart());
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    // Let the watchers catch up with the last acknowledged write, then stop
    // them.
    let last = truth
        .lock()
        .await
        .known
        .keys()
        .next_back()
        .copied()
        .unwrap_or(0);
    let deadline = std::time::Instant::now() + CAP;
    for r in &records {
        while std::time::Instant::now() < deadline && r.lock().await.highest_seen() < last {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop_watch.store(true, Ordering::Relaxed);
    for w in watchers {
        w.await.unwrap();
    }
    let truth = truth.lock().await;
    let mut recs = Vec::new();
    for r in &records {
        recs.push(r.lock().await.clone());
    }
    let violations = check(&truth, &recs);
    let events: usize = recs
        .iter()
        .flat_map(|r| &r.streams)
        .flat_map(|(_, rs)| rs)
        .map(|r| r.events.len())
        .sum();
    let streams: usize = recs.iter().map(|r| r.streams.len()).sum();
    eprintln!(
        "acknowledged txns {}, ambiguous {}, compactions {compactions}, watch streams {streams}, events received {events}",
        truth.known.len(),
        truth.ambiguous.len()
    );
    for (i, r) in recs.iter().enumerate() {
        let s: Vec<(i64, usize)> = r.streams.iter().map(|(s, rs)| (*s, rs.len())).collect();
        eprintln!("watcher {i}: streams (start, responses) {s:?}");
    }
    assert!(violations.is_empty(), "violations: {violations:#?}");
    // Three fast watchers resumed after each of the two kills; the slow
    // one may still be draining what the client library buffered.
    assert!(truth.known.len() > 100 && compactions > 3 && streams > 3 * 3);
}
