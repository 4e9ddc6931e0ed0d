//! Watch over the wire: the real `etcdctl watch` (prefix, --rev,
//! --prev-kv, interactive), and differential tests that run the same
//! operations and watch requests against our server and the real etcd and
//! compare the recorded response streams (per watch id; header revisions,
//! flags, compaction, cancel reasons, fragments and events).

mod common;

use common::{Kind, Server};
use etcd_server::rpc::etcdserverpb::{
    kv_client::KvClient, request_op::Request as Op, watch_client::WatchClient,
    watch_create_request::FilterType, watch_request::RequestUnion, CompactionRequest,
    DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, WatchCancelRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse,
};
use std::collections::BTreeMap;
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;
use tokio::sync::mpsc;

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn put_op(k: &str, v: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key: b(k).into(),
            value: v.to_vec().into(),
            ..Default::default()
        })),
    }
}

fn del_op(k: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
            key: b(k).into(),
            ..Default::default()
        })),
    }
}

async fn txn(kv: &mut KvClient<tonic::transport::Channel>, ops: Vec<RequestOp>) -> i64 {
    kv.txn(TxnRequest {
        success: ops,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .header
    .unwrap()
    .revision
}

/// One watch stream: send requests, record responses.
struct Stream {
    tx: mpsc::Sender<WatchRequest>,
    rx: tonic::Streaming<WatchResponse>,
    got: Vec<WatchResponse>,
}

impl Stream {
    /// Opens a stream with its first create request (Go's gRPC server
    /// sends the response headers only with the first message).
    async fn open(s: &Server, first: WatchCreateRequest) -> Stream {
        let (tx, rx) = mpsc::channel(16);
        tx.send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(first)),
        })
        .await
        .unwrap();
        let mut client = WatchClient::new(s.channel().await);
        let rx = client
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Stream {
            tx,
            rx,
            got: Vec::new(),
        }
    }

    async fn send(&mut self, r: RequestUnion) {
        self.tx
            .send(WatchRequest {
                request_union: Some(r),
            })
            .await
            .unwrap();
    }

    async fn create(&mut self, c: WatchCreateRequest) {
        self.send(RequestUnion::CreateRequest(c)).await;
    }

    /// Records responses for `d`.
    async fn collect_for(&mut self, d: Duration) {
        let end = tokio::time::Instant::now() + d;
        while let Ok(r) = tokio::time::timeout_at(end, self.rx.message()).await {
            self.got.push(r.unwrap().expect("stream open"));
        }
    }

    /// Records responses until none came for `quiet`.
    async fn settle(&mut self, quiet: Duration) {
        while let Ok(r) = tokio::time::timeout(quiet, self.rx.message()).await {
            self.got.push(r.unwrap().expect("stream open"));
        }
    }
}

fn create(key: &str, end: &str, rev: i64) -> WatchCreateRequest {
    WatchCreateRequest {
        key: b(key).into(),
        range_end: b(end).into(),
        start_revision: rev,
        ..Default::default()
    }
}

/// A response without what legitimately differs (raft term, cluster and
/// member ids are compared elsewhere), as text.
fn norm(r: &WatchResponse) -> String {
    let evs: Vec<String> = r
        .events
        .iter()
        .map(|e| {
            let kv = e.kv.clone().unwrap_or_default();
            let prev = e.prev_kv.as_ref().map(|p| {
                format!(
                    "{}={}@{}/{}/v{}",
                    String::from_utf8_lossy(&p.key),
                    p.value.len(),
                    p.create_revision,
                    p.mod_revision,
                    p.version
                )
            });
            format!(
                "{}:{}={}@{}/{}/v{} prev={:?}",
                e.r#type,
                String::from_utf8_lossy(&kv.key),
                String::from_utf8_lossy(&kv.value[..kv.value.len().min(8)]),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                prev
            )
        })
        .collect();
    format!(
        "rev={} created={} canceled={} compact={} reason={:?} fragment={} events={:?}",
        r.header.as_ref().map_or(-1, |h| h.revision),
        r.created,
        r.canceled,
        r.compact_revision,
        r.cancel_reason,
        r.fragment,
        evs
    )
}

/// Responses grouped by watch id, in arrival order within each.
fn by_id(got: &[WatchResponse]) -> BTreeMap<i64, Vec<String>> {
    let mut m: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for r in got {
        m.entry(r.watch_id).or_default().push(norm(r));
    }
    m
}

/// The scenario of the main differential test; returns the recorded
/// responses grouped by watch id.
async fn scenario(s: &Server) -> BTreeMap<i64, Vec<String>> {
    let mut kv = KvClient::new(s.channel().await);
    let q = Duration::from_millis(400);
    txn(&mut kv, vec![put_op("a", b"1")]).await; // 2
    txn(&mut kv, vec![put_op("b", b"1")]).await; // 3
    txn(&mut kv, vec![put_op("a", b"2")]).await; // 4
    txn(&mut kv, vec![del_op("b")]).await; // 5
    txn(&mut kv, vec![put_op("c", b"1"), put_op("d", b"1")]).await; // 6
    kv.compact(CompactionRequest {
        revision: 3,
        physical: true,
    })
    .await
    .unwrap();
    // Server-assigned id 0: from-key watch replaying 4..=6 with prev_kv.
    let mut w = Stream::open(
        s,
        WatchCreateRequest {
            prev_kv: true,
            ..create("a", "\0", 4)
        },
    )
    .await;
    w.settle(q).await;
    // id 1: compacted start -> created, then compact_revision + canceled.
    w.create(create("a", "", 2)).await;
    w.settle(q).await;
    // Client id 100 exactly at the compaction revision.
    w.create(WatchCreateRequest {
        watch_id: 100,
        ..create("b", "", 3)
    })
    .await;
    w.settle(q).await;
    // Duplicate id and empty range: refused with etcd's reasons.
    w.create(WatchCreateRequest {
        watch_id: 100,
        ..create("x", "", 0)
    })
    .await;
    w.settle(q).await;
    w.create(create("b", "a", 0)).await;
    w.settle(q).await;
    // id 2: NOPUT filter over a range.
    w.create(WatchCreateRequest {
        filters: vec![FilterType::Noput as i32],
        ..create("a", "z", 4)
    })
    .await;
    w.settle(q).await;
    // id 3: NODELETE, live only.
    w.create(WatchCreateRequest {
        filters: vec![FilterType::Nodelete as i32],
        ..create("a", "z", 0)
    })
    .await;
    w.settle(q).await;
    // Live: one txn, several events, delivered together.
    txn(
        &mut kv,
        vec![put_op("a", b"3"), del_op("c"), put_op("b", b"2")],
    )
    .await; // 7
    txn(&mut kv, vec![put_op("zz", b"1")]).await; // 8: only id 0
    w.settle(q).await;
    w.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 0,
    }))
    .await;
    w.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 999,
    }))
    .await;
    w.settle(q).await;
    txn(&mut kv, vec![put_op("a", b"4")]).await; // 9: not to id 0
    w.settle(q).await;
    w.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    w.settle(q).await;
    by_id(&w.got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_event_streams() {
    let ours = Server::start(Kind::Ours);
    let real = Server::start(Kind::Real);
    let a = scenario(&ours).await;
    let b = scenario(&real).await;
    for (id, rs) in &a {
        eprintln!("ours {id}: {rs:#?}");
    }
    for (id, rs) in &b {
        eprintln!("real {id}: {rs:#?}");
    }
    assert_eq!(a, b);
    // Sanity: the scenario exercised what it claims.
    assert!(a[&1].iter().any(|r| r.contains("compact=3")));
    assert!(a[&-1].iter().any(|r| r.contains("duplicate watch ID")));
    assert!(a[&-1].iter().any(|r| r.contains("watcher range is empty")));
}

async fn fragment_scenario(s: &Server) -> Vec<String> {
    let mut kv = KvClient::new(s.channel().await);
    // 300 revisions of 3 KB: replayed in one response of about 900 KB,
    // above the fragment threshold (max-request-bytes + 512 KiB).
    let big = vec![b'x'; 3000];
    for i in 0..300 {
        txn(&mut kv, vec![put_op(&format!("f{i:03}"), &big)]).await;
    }
    let mut w = Stream::open(
        s,
        WatchCreateRequest {
            fragment: true,
            ..create("f", "g", 2)
        },
    )
    .await;
    w.settle(Duration::from_millis(800)).await;
    w.create(create("f", "g", 2)).await;
    w.settle(Duration::from_millis(800)).await;
    w.got
        .iter()
        .map(|r| {
            let revs: Vec<i64> = r
                .events
                .iter()
                .map(|e| e.kv.as_ref().unwrap().mod_revision)
                .collect();
            format!(
                "id={} created={} fragment={} rev={} events={} first={:?} last={:?}",
                r.watch_id,
                r.created,
                r.fragment,
                r.header.as_ref().unwrap().revision,
                revs.len(),
                revs.first(),
                revs.last()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_fragment() {
    let args = ["--max-request-bytes", "4096"];
    let ours = Server::start_with(Kind::Ours, &args);
    let real = Server::start_with(Kind::Real, &args);
    let a = fragment_scenario(&ours).await;
    let b = fragment_scenario(&real).await;
    eprintln!("ours: {a:#?}\nreal: {b:#?}");
    assert_eq!(a, b);
    assert!(a.iter().filter(|r| r.contains("fragment=true")).count() >= 1);
}

async fn progress_scenario(s: &Server) -> Vec<(i64, bool, usize, i64)> {
    let mut kv = KvClient::new(s.channel().await);
    txn(&mut kv, vec![put_op("p", b"1")]).await; // 2
    let mut w = Stream::open(
        s,
        WatchCreateRequest {
            progress_notify: true,
            ..create("p", "", 0)
        },
    )
    .await;
    w.create(create("q", "", 0)).await;
    // Notify interval 300 ms: two or three empty notifications for id 0.
    w.collect_for(Duration::from_millis(1000)).await;
    w.got
        .iter()
        .map(|r| {
            (
                r.watch_id,
                r.created,
                r.events.len(),
                r.header.as_ref().unwrap().revision,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_progress_notify() {
    let args = ["--experimental-watch-progress-notify-interval", "300ms"];
    let ours = Server::start_with(Kind::Ours, &args);
    let real = Server::start_with(Kind::Real, &args);
    let a = progress_scenario(&ours).await;
    let b = progress_scenario(&real).await;
    eprintln!("ours: {a:?}\nreal: {b:?}");
    // Created responses, then only empty notifications for watcher 0 at
    // the current revision (their number depends on timing).
    for got in [&a, &b] {
        assert_eq!(got[..2], [(0, true, 0, 2), (1, true, 0, 2)]);
        assert!(got.len() >= 3, "{got:?}");
        assert!(got[2..].iter().all(|r| *r == (0, false, 0, 2)), "{got:?}");
    }
}

/// Runs `etcdctl args` for `secs` seconds (with `stdin` lines written after
/// `delay`), returning its output; `during` runs meanwhile.
fn ctl_for(s: &Server, args: &[&str], stdin: Option<&str>, during: impl FnOnce()) -> String {
    let mut child = s
        .ctl_command(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        use std::io::Write;
        input.write_all(text.as_bytes()).unwrap();
        input.flush().unwrap();
    }
    std::thread::sleep(Duration::from_millis(700));
    during();
    std::thread::sleep(Duration::from_millis(700));
    let _ = child.kill();
    let _ = child.wait();
    drop(input);
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

fn etcdctl_session(s: &Server) -> Vec<String> {
    s.ctl_ok(&["put", "foo1", "a"]);
    s.ctl_ok(&["put", "foo2", "b"]);
    s.ctl_ok(&["put", "bar", "x"]);
    s.ctl_ok(&["del", "foo1"]);
    let mut outs = Vec::new();
    // History from revision 1 with prev-kv, then a live put.
    outs.push(ctl_for(
        s,
        &["watch", "--prefix", "foo", "--rev", "1", "--prev-kv"],
        None,
        || {
            s.ctl_ok(&["put", "foo3", "c"]);
        },
    ));
    // A single key from a revision in the middle.
    outs.push(ctl_for(s, &["watch", "foo2", "--rev", "3"], None, || {
        s.ctl_ok(&["put", "foo2", "d"]);
    }));
    // Interactive: the watch command comes on stdin.
    outs.push(ctl_for(
        s,
        &["watch", "-i"],
        Some("watch --prefix foo --prev-kv\n"),
        || {
            s.ctl_ok(&["put", "foo4", "e"]);
            s.ctl_ok(&["del", "foo", "--prefix"]);
        },
    ));
    // JSON output, events only (headers carry the raft term).
    let json = ctl_for(
        s,
        &["watch", "--prefix", "foo", "--rev", "2", "-w", "json"],
        None,
        || {},
    );
    let events: Vec<serde_json::Value> = json
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["Events"].clone())
        .collect();
    outs.push(serde_json::to_string_pretty(&events).unwrap());
    outs
}

#[test]
fn etcdctl_watch_matches_real_etcd() {
    let ours = Server::start(Kind::Ours);
    let real = Server::start(Kind::Real);
    let a = etcdctl_session(&ours);
    let b = etcdctl_session(&real);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "ours:\n{x}\nreal:\n{y}");
    }
    assert_eq!(
        a[0],
        "PUT\nfoo1\na\nPUT\nfoo2\nb\nDELETE\nfoo1\na\nfoo1\n\nPUT\nfoo3\nc\n"
    );
    assert!(a[2].contains("PUT\nfoo4\ne\n"), "{}", a[2]);
    assert!(a[3].contains("\"mod_revision\""), "{}", a[3]);
}
