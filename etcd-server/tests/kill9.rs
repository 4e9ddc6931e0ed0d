//! Durability under SIGKILL: concurrent writers put unique keys, the server
//! is killed mid-stream and restarted on the same data directory, and every
//! acknowledged write must be there with the revision it was acknowledged
//! with. Three kill/restart cycles per test, all earlier writes re-checked
//! each time. The txn variant also checks atomicity: each txn puts two keys,
//! and after a restart either both keys of a txn exist or neither (both, for
//! acknowledged ones).

mod common;

use common::budget::{OpBudget, IDLE};
use common::{range_paged, Kind, Server};
use etcd_mvcc::pb::mvccpb::KeyValue;
use etcd_server::rpc::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_server::rpc::etcdserverpb::kv_client::KvClient;
use etcd_server::rpc::etcdserverpb::{request_op, Compare, PutRequest, RequestOp, TxnRequest};
use prost::bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;
use tonic::transport::Channel;

/// Concurrent writers (env `KILL9_WRITERS` overrides).
const WRITERS: usize = 8;
const CYCLES: usize = 3;
/// Acknowledged writes per cycle before the SIGKILL.
const WRITES_PER_CYCLE: u64 = 3000;
/// Safety cap on a cycle's writing (a machine too slow for the count).
const CYCLE_CAP: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// One put per write: key `w{writer}/{seq}`.
    Put,
    /// One txn per write putting `t{writer}/{seq}/a` and `t{writer}/{seq}/b`.
    Txn,
}

/// One logical write: its keys (all with the same value).
#[derive(Clone, Debug)]
struct Write {
    keys: Vec<String>,
    value: String,
}

/// What a writer saw until its first error.
struct WriterLog {
    /// Acknowledged writes with their response header revision.
    acked: Vec<(Write, i64)>,
    /// The write whose request failed (outcome unknown), if any.
    in_doubt: Option<Write>,
    /// The next sequence number to use.
    next_seq: u64,
    /// The error that stopped the writer, when it came before the kill.
    error_before_kill: Option<String>,
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn prefix(mode: Mode) -> &'static str {
    match mode {
        Mode::Put => "w",
        Mode::Txn => "t",
    }
}

fn write_for(mode: Mode, writer: usize, seq: u64, cycle: usize) -> Write {
    let p = prefix(mode);
    let keys = match mode {
        Mode::Put => vec![format!("{p}{writer}/{seq}")],
        Mode::Txn => vec![
            format!("{p}{writer}/{seq}/a"),
            format!("{p}{writer}/{seq}/b"),
        ],
    };
    Write {
        keys,
        value: format!("value of writer {writer}, seq {seq}, cycle {cycle}"),
    }
}

/// Sends one write; returns the acknowledged revision.
async fn send(kv: &mut KvClient<Channel>, mode: Mode, w: &Write) -> Result<i64, String> {
    let put = |k: &str| PutRequest {
        key: b(k),
        value: b(&w.value),
        ..Default::default()
    };
    let fut = async {
        match mode {
            Mode::Put => kv.put(put(&w.keys[0])).await.map(|r| r.into_inner().header),
            Mode::Txn => {
                // Guarded by "the first key does not exist yet": must succeed.
                let txn = TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Version as i32,
                        key: b(&w.keys[0]),
                        range_end: Bytes::new(),
                        target_union: Some(TargetUnion::Version(0)),
                    }],
                    success: w
                        .keys
                        .iter()
                        .map(|k| RequestOp {
                            request: Some(request_op::Request::RequestPut(put(k))),
                        })
                        .collect(),
                    failure: vec![],
                };
                kv.txn(txn).await.map(|r| {
                    let r = r.into_inner();
                    assert!(
                        r.succeeded,
                        "txn of fresh keys {:?} did not succeed: {r:?}",
                        w.keys
                    );
                    r.header
                })
            }
        }
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(header)) => Ok(header.expect("response without header").revision),
        Ok(Err(status)) => Err(format!("{status:?}")),
        Err(_) => Err("timed out".into()),
    }
}

async fn writer(
    ch: Channel,
    mode: Mode,
    id: usize,
    mut seq: u64,
    cycle: usize,
    killed: Arc<AtomicBool>,
    budget: Arc<OpBudget>,
) -> WriterLog {
    let mut kv = KvClient::new(ch);
    let mut acked = Vec::new();
    loop {
        if !budget.take() {
            // Spent: wait for the kill (which ends this writer through the
            // error of its next request).
            if killed.load(Ordering::SeqCst) {
                return WriterLog {
                    acked,
                    in_doubt: None,
                    next_seq: seq,
                    error_before_kill: None,
                };
            }
            tokio::time::sleep(IDLE).await;
            continue;
        }
        let w = write_for(mode, id, seq, cycle);
        seq += 1;
        match send(&mut kv, mode, &w).await {
            Ok(rev) => {
                acked.push((w, rev));
                budget.done();
            }
            Err(e) => {
                let error_before_kill = (!killed.load(Ordering::SeqCst)).then(|| {
                    format!(
                        "writer {id}: {:?} failed before the server was killed: {e}",
                        w.keys
                    )
                });
                return WriterLog {
                    acked,
                    in_doubt: Some(w),
                    next_seq: seq,
                    error_before_kill,
                };
            }
        }
    }
}

/// Every kv under `prefix` (read a page at a time), and the store's revision.
async fn read_all(kv: &mut KvClient<Channel>, prefix: &str) -> (BTreeMap<String, KeyValue>, i64) {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let (kvs, rev) = range_paged(kv, prefix.as_bytes(), &end)
        .await
        .expect("range after restart");
    let kvs = kvs
        .into_iter()
        .map(|kv| (String::from_utf8(kv.key.to_vec()).unwrap(), kv))
        .collect();
    (kvs, rev)
}

/// The accumulated knowledge of the test across cycles.
#[derive(Default)]
struct Book {
    /// Writes that must exist, with the revision of all their keys.
    durable: Vec<(Write, i64)>,
    /// Writes that must not exist (in doubt and found absent once: they were
    /// never retried, so they must stay absent).
    absent: Vec<Write>,
    /// Writes in doubt since the last kill.
    in_doubt: Vec<Write>,
    /// Acknowledged writes in total (for the report).
    acked: usize,
}

fn check_after_restart(rt: &Runtime, server: &Server, mode: Mode, book: &mut Book, cycle: usize) {
    rt.block_on(async {
        let mut kv = KvClient::new(server.channel().await);
        let (kvs, rev) = read_all(&mut kv, prefix(mode)).await;
        let mut explained: BTreeSet<&str> = BTreeSet::new();

        for (w, ack_rev) in &book.durable {
            for k in &w.keys {
                let kv = kvs.get(k).unwrap_or_else(|| {
                    panic!("cycle {cycle}: acknowledged write {k} (revision {ack_rev}) is missing after kill -9")
                });
                assert_eq!(kv.value, b(&w.value), "cycle {cycle}: value of {k}");
                assert_eq!(kv.mod_revision, *ack_rev, "cycle {cycle}: mod_revision of {k}: {kv:?}");
                assert_eq!(kv.create_revision, *ack_rev, "cycle {cycle}: create_revision of {k}: {kv:?}");
                assert_eq!(kv.version, 1, "cycle {cycle}: version of {k}: {kv:?}");
                explained.insert(k);
            }
        }
        for w in &book.absent {
            for k in &w.keys {
                assert!(!kvs.contains_key(k), "cycle {cycle}: {k}, absent after an earlier restart, reappeared");
            }
        }
        // Writes in doubt: all of their keys or none, then remembered as such.
        let mut now_durable = Vec::new();
        for w in std::mem::take(&mut book.in_doubt) {
            let present: Vec<&KeyValue> = w.keys.iter().filter_map(|k| kvs.get(k)).collect();
            if present.is_empty() {
                book.absent.push(w);
                continue;
            }
            assert_eq!(
                present.len(),
                w.keys.len(),
                "cycle {cycle}: write in doubt {:?} is partially present (not atomic): {present:?}",
                w.keys
            );
            let r = present[0].mod_revision;
            for kv in &present {
                assert_eq!(kv.value, b(&w.value), "cycle {cycle}: value of in-doubt {kv:?}");
                assert_eq!(kv.mod_revision, r, "cycle {cycle}: in-doubt txn keys differ in revision: {present:?}");
                assert_eq!(kv.create_revision, r, "cycle {cycle}: {kv:?}");
            }
            now_durable.push((w, r));
        }
        for (w, _) in &now_durable {
            explained.extend(w.keys.iter().map(String::as_str));
        }
        let unexplained: Vec<&String> = kvs.keys().filter(|k| !explained.contains(k.as_str())).collect();
        assert!(unexplained.is_empty(), "cycle {cycle}: keys nobody wrote (or that were never sent): {unexplained:?}");
        book.durable.extend(now_durable);

        // One revision per write, distinct.
        let revs: BTreeSet<i64> = book.durable.iter().map(|(_, r)| *r).collect();
        assert_eq!(revs.len(), book.durable.len(), "cycle {cycle}: two writes share a revision");
        let max_rev = revs.iter().next_back().copied().unwrap_or(0);
        assert!(rev >= max_rev, "cycle {cycle}: store revision {rev} < acknowledged revision {max_rev}");

        // Writing continues with the next revision.
        let w = Write { keys: vec![format!("{}after/{cycle}", prefix(mode))], value: "after restart".into() };
        let next = send(&mut kv, Mode::Put, &w).await.expect("put after restart");
        assert_eq!(next, rev + 1, "cycle {cycle}: the first write after restart");
        book.durable.push((w, next));
    });
}

fn kill_restart_cycles(mode: Mode) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut server = Server::start(Kind::Ours);
    let mut book = Book::default();
    let writers =
        std::env::var("KILL9_WRITERS").map_or(WRITERS, |v| v.parse().expect("KILL9_WRITERS"));
    let mut next_seq = vec![0u64; writers];
    for cycle in 0..CYCLES {
        let log_start = server.log_text().len();
        let killed = Arc::new(AtomicBool::new(false));
        let budget = Arc::new(OpBudget::new());
        budget.refill(2 * WRITES_PER_CYCLE);
        let handles: Vec<_> = (0..writers)
            .map(|id| {
                // One connection per writer.
                let ch = rt.block_on(server.channel());
                let (killed, budget) = (killed.clone(), budget.clone());
                rt.spawn(writer(ch, mode, id, next_seq[id], cycle, killed, budget))
            })
            .collect();
        let acked_at_kill = budget.wait_done(WRITES_PER_CYCLE, CYCLE_CAP);
        killed.store(true, Ordering::SeqCst);
        server.kill9();
        let mut acked_now = 0;
        let mut early_errors = Vec::new();
        for (id, h) in handles.into_iter().enumerate() {
            let log = rt
                .block_on(h)
                .unwrap_or_else(|e| panic!("{mode:?} cycle {cycle}: writer {id} panicked: {e:?}"));
            acked_now += log.acked.len();
            book.acked += log.acked.len();
            book.durable.extend(log.acked);
            book.in_doubt.extend(log.in_doubt);
            next_seq[id] = log.next_seq;
            early_errors.extend(log.error_before_kill);
        }
        if !early_errors.is_empty() {
            let log = server.log_text();
            let cycle_log = log.get(log_start..).unwrap_or(&log);
            panic!(
                "{mode:?} cycle {cycle}: writes failed before the server was killed:\n{}\nserver log of the cycle:\n{cycle_log}",
                early_errors.join("\n")
            );
        }
        assert!(
            acked_at_kill >= WRITES_PER_CYCLE,
            "cycle {cycle}: only {acked_at_kill} writes acknowledged in {CYCLE_CAP:?}"
        );
        server.restart();
        check_after_restart(&rt, &server, mode, &mut book, cycle);
        eprintln!(
            "{mode:?} cycle {cycle}: {acked_now} writes acknowledged before kill -9; after restart all {} \
             durable writes verified ({} in-doubt writes absent)",
            book.durable.len(),
            book.absent.len()
        );
    }
}

#[test]
fn acknowledged_puts_survive_kill9() {
    kill_restart_cycles(Mode::Put);
}

#[test]
fn acknowledged_txns_survive_kill9_atomically() {
    kill_restart_cycles(Mode::Txn);
}
