//! Differential test: the same seeded random sequence of KV, txn and
//! compaction requests against this project's `etcd-server` and the real
//! etcd (Debian's 3.4), both over gRPC; every response (or error) must be
//! the same.
//!
//! Compared exactly: revisions, create/mod revisions, versions, values,
//! count, more, prev_kv(s), deleted, txn `succeeded` and nested responses,
//! and for errors the gRPC code and message. Ignored: `cluster_id`,
//! `member_id` and `raft_term` of every header (nested ones included).
//!
//! Sorting by a target other than KEY: Go's sort is not stable, so for those
//! ranges the kvs are compared as a multiset, and ours must be ordered by
//! the target. Such ranges never use `limit` (which kvs survive the cut on
//! ties is unspecified).
//!
//! Knobs: `DIFF_SEEDS` (number of seeds, default 4), `DIFF_FIRST_SEED`
//! (default 1), `DIFF_SEED` (run just this seed), `DIFF_OPS` (ops per seed,
//! default 500).
//! A failure prints the seed and op index: rerun with `DIFF_SEED=<seed>`
//! (and the same `DIFF_OPS` or more) to reproduce it.

mod common;

use common::{Kind, Server};
use etcd_mvcc::pb::mvccpb::KeyValue;
use etcd_server::rpc::etcdserverpb::compare::{CompareTarget, TargetUnion};
use etcd_server::rpc::etcdserverpb::kv_client::KvClient;
use etcd_server::rpc::etcdserverpb::range_request::{SortOrder, SortTarget};
use etcd_server::rpc::etcdserverpb::{
    request_op, response_op, CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest,
    DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, TxnRequest, TxnResponse,
};
use prost::bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The key space: small, so that requests collide a lot.
const KEYS: &[&str] = &[
    "k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7", "p/a", "p/b", "p/c", "q/x",
];
/// Keys that are never written (or are edges of the prefixes).
const OTHER_KEYS: &[&str] = &["k8", "j", "p", "p/", "q", "z"];
const PREFIXES: &[&str] = &["k", "p/", "p", "q/"];
const VALUES: &[&str] = &["", "a", "b", "bb", "c", "zz"];

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// The end of the range of every key starting with a prefix.
use etcd_core::client::prefix_end;

#[derive(Clone, Debug)]
enum Req {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRangeRequest),
    Txn(TxnRequest),
    Compact(CompactionRequest),
}

#[derive(Clone, Debug, PartialEq)]
enum Resp {
    Range(RangeResponse),
    Put(PutResponse),
    Delete(DeleteRangeResponse),
    Txn(TxnResponse),
    Compact(CompactionResponse),
}

#[derive(Clone, Debug, PartialEq)]
struct RpcError {
    code: tonic::Code,
    message: String,
}

type Outcome = Result<Resp, RpcError>;

async fn call(kv: &mut KvClient<Channel>, req: &Req) -> Outcome {
    let fut = async {
        match req.clone() {
            Req::Range(r) => kv.range(r).await.map(|r| Resp::Range(r.into_inner())),
            Req::Put(r) => kv.put(r).await.map(|r| Resp::Put(r.into_inner())),
            Req::Delete(r) => kv
                .delete_range(r)
                .await
                .map(|r| Resp::Delete(r.into_inner())),
            Req::Txn(r) => kv.txn(r).await.map(|r| Resp::Txn(r.into_inner())),
            Req::Compact(r) => kv.compact(r).await.map(|r| Resp::Compact(r.into_inner())),
        }
    };
    match tokio::time::timeout(Duration::from_secs(30), fut).await {
        Ok(r) => r.map_err(|s| RpcError {
            code: s.code(),
            message: s.message().to_string(),
        }),
        Err(_) => panic!("request timed out after 30 s: {req:?}"),
    }
}

// ---------------------------------------------------------------------------
// Generation

/// Random requests, informed by the oracle's state before each op (so that
/// compares and filters hit real values and revisions often).
struct Gen {
    rng: StdRng,
    /// Every live kv of the oracle before the op.
    kvs: Vec<KeyValue>,
    /// The oracle's revision before the op.
    rev: i64,
    /// The last successful compaction revision (0 when none).
    compact: i64,
}

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen {
            rng: StdRng::seed_from_u64(seed),
            kvs: Vec::new(),
            rev: 1,
            compact: 0,
        }
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.rng.gen_range(0..from.len())]
    }

    fn key(&mut self) -> Bytes {
        if self.rng.gen_bool(0.9) {
            b(self.pick(KEYS))
        } else {
            b(self.pick(OTHER_KEYS))
        }
    }

    fn value(&mut self) -> Bytes {
        b(self.pick(VALUES))
    }

    fn live_kv(&mut self) -> Option<KeyValue> {
        if self.kvs.is_empty() {
            None
        } else {
            Some(self.kvs[self.rng.gen_range(0..self.kvs.len())].clone())
        }
    }

    /// A `[key, range_end)`; `wide` allows from-key and whole-keyspace ranges often.
    fn range_spec(&mut self, wide: bool) -> (Bytes, Bytes) {
        let x = self.rng.gen_range(0..100);
        let (from_key, all) = if wide { (80, 92) } else { (94, 98) };
        if x < 45 {
            (self.key(), Bytes::new())
        } else if x < 65 {
            let p = b(self.pick(PREFIXES));
            let end = prefix_end(&p);
            (p, end)
        } else if x < from_key {
            // Possibly inverted, i.e. empty.
            (b(self.pick(KEYS)), b(self.pick(KEYS)))
        } else if x < all {
            (self.key(), Bytes::from_static(b"\0"))
        } else {
            (Bytes::from_static(b"\0"), Bytes::from_static(b"\0"))
        }
    }

    /// A revision for a read: mostly current, sometimes historical,
    /// compacted or future.
    fn read_revision(&mut self, p_nonzero: f64) -> i64 {
        if !self.rng.gen_bool(p_nonzero) {
            return 0;
        }
        let x = self.rng.gen_range(0..100);
        if x < 65 {
            self.rng.gen_range(self.compact.max(1)..=self.rev)
        } else if x < 82 {
            // At or below the compaction revision (compacted when below).
            self.rng.gen_range(1..=self.compact.max(1))
        } else {
            self.rev + self.rng.gen_range(1..=3)
        }
    }

    /// A revision operand for a compare or a filter.
    fn rev_operand(&mut self, kv: Option<&KeyValue>, create: bool) -> i64 {
        let x = self.rng.gen_range(0..100);
        match kv {
            Some(kv) if x < 60 => {
                let r = if create {
                    kv.create_revision
                } else {
                    kv.mod_revision
                };
                r + self.rng.gen_range(-1..=1)
            }
            _ if x < 75 => 0,
            _ => self.rng.gen_range(0..=self.rev + 1),
        }
    }

    fn range(&mut self, in_txn: bool) -> RangeRequest {
        let (key, range_end) = self.range_spec(true);
        let sort_target = if self.rng.gen_bool(0.6) {
            SortTarget::Key as i32
        } else {
            self.rng.gen_range(0..=4)
        };
        let sort_order = if self.rng.gen_bool(0.5) {
            SortOrder::None as i32
        } else {
            self.rng.gen_range(0..=2)
        };
        // No limit with a non-KEY sort: which kvs survive the cut on ties
        // is unspecified.
        let limit = if sort_target != SortTarget::Key as i32 || self.rng.gen_bool(0.5) {
            0
        } else {
            self.rng.gen_range(1..=4)
        };
        let revision = self.read_revision(if in_txn { 0.15 } else { 0.45 });
        let kv = self.live_kv();
        let filter = |g: &mut Gen, create: bool| {
            if g.rng.gen_bool(0.12) {
                g.rev_operand(kv.as_ref(), create)
            } else {
                0
            }
        };
        let min_mod_revision = filter(self, false);
        let max_mod_revision = filter(self, false);
        let min_create_revision = filter(self, true);
        let max_create_revision = filter(self, true);
        RangeRequest {
            key,
            range_end,
            limit,
            revision,
            sort_order,
            sort_target,
            serializable: self.rng.gen_bool(0.3),
            keys_only: self.rng.gen_bool(0.2),
            count_only: self.rng.gen_bool(0.12),
            min_mod_revision,
            max_mod_revision,
            min_create_revision,
            max_create_revision,
        }
    }

    fn put(&mut self, in_txn: bool) -> PutRequest {
        let mut p = PutRequest {
            key: self.key(),
            value: self.value(),
            prev_kv: self.rng.gen_bool(0.5),
            ..Default::default()
        };
        let x = self.rng.gen_range(0..if in_txn { 300 } else { 100 });
        if x < 8 {
            p.ignore_value = true;
            if self.rng.gen_bool(0.8) {
                p.value = Bytes::new();
            }
        } else if x < 14 {
            p.ignore_lease = true;
        } else if x < 17 {
            p.ignore_value = true;
            p.ignore_lease = true;
            p.value = Bytes::new();
        } else if x < 20 {
            p.lease = self.rng.gen_range(1..1_000_000);
            p.ignore_lease = self.rng.gen_bool(0.2);
        }
        if p.ignore_value || p.ignore_lease {
            // Mostly on keys that exist.
            if let Some(kv) = self.live_kv().filter(|_| self.rng.gen_bool(0.7)) {
                p.key = kv.key;
            }
        }
        p
    }

    fn delete(&mut self) -> DeleteRangeRequest {
        let (key, range_end) = self.range_spec(false);
        DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.rng.gen_bool(0.5),
        }
    }

    fn compare(&mut self) -> Compare {
        let target = self.rng.gen_range(0..=4);
        let result = self.rng.gen_range(0..=3);
        let kv = if self.rng.gen_bool(0.7) {
            self.live_kv()
        } else {
            None
        };
        let (key, range_end) = match &kv {
            Some(kv) => (kv.key.clone(), Bytes::new()),
            None if self.rng.gen_bool(0.8) => (self.key(), Bytes::new()),
            None => self.range_spec(true),
        };
        let x = self.rng.gen_range(0..100);
        let target_union = if x < 3 {
            None
        } else if x < 6 {
            // A union that does not match the target.
            Some(TargetUnion::Version(self.rng.gen_range(0..3)))
        } else {
            Some(match target {
                t if t == CompareTarget::Version as i32 => TargetUnion::Version(match &kv {
                    Some(kv) if self.rng.gen_bool(0.7) => kv.version + self.rng.gen_range(-1..=1),
                    _ => self.rng.gen_range(0..=3),
                }),
                t if t == CompareTarget::Create as i32 => {
                    TargetUnion::CreateRevision(self.rev_operand(kv.as_ref(), true))
                }
                t if t == CompareTarget::Mod as i32 => {
                    TargetUnion::ModRevision(self.rev_operand(kv.as_ref(), false))
                }
                t if t == CompareTarget::Value as i32 => TargetUnion::Value(match &kv {
                    Some(kv) if self.rng.gen_bool(0.6) => kv.value.clone(),
                    _ => self.value(),
                }),
                _ => TargetUnion::Lease(if self.rng.gen_bool(0.85) {
                    0
                } else {
                    self.rng.gen_range(1..1000)
                }),
            })
        };
        Compare {
            result,
            target,
            key,
            range_end,
            target_union,
        }
    }

    fn ops(&mut self, depth: u32) -> Vec<RequestOp> {
        let n = self.rng.gen_range(0..=3);
        let mut ops = Vec::new();
        for _ in 0..n {
            let x = self.rng.gen_range(0..100);
            let request = if x < 35 {
                let p = self.put(true);
                let key = p.key.clone();
                ops.push(RequestOp {
                    request: Some(request_op::Request::RequestPut(p)),
                });
                // Read after write in the same txn.
                if self.rng.gen_bool(0.35) {
                    let mut r = self.range(true);
                    r.key = key;
                    r.range_end = Bytes::new();
                    r.revision = 0;
                    ops.push(RequestOp {
                        request: Some(request_op::Request::RequestRange(r)),
                    });
                }
                continue;
            } else if x < 62 || (x >= 85 && depth >= 2) {
                request_op::Request::RequestRange(self.range(true))
            } else if x < 85 {
                let d = self.delete();
                let (key, end) = (d.key.clone(), d.range_end.clone());
                ops.push(RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(d)),
                });
                if self.rng.gen_bool(0.3) {
                    let mut r = self.range(true);
                    (r.key, r.range_end, r.revision) = (key, end, 0);
                    ops.push(RequestOp {
                        request: Some(request_op::Request::RequestRange(r)),
                    });
                }
                continue;
            } else {
                request_op::Request::RequestTxn(self.txn_body(depth + 1))
            };
            ops.push(RequestOp {
                request: Some(request),
            });
        }
        ops
    }

    fn txn_body(&mut self, depth: u32) -> TxnRequest {
        let ncmp = match self.rng.gen_range(0..100) {
            0..=9 => 0,
            10..=54 => 1,
            55..=84 => 2,
            _ => 3,
        };
        let compare = (0..ncmp).map(|_| self.compare()).collect();
        TxnRequest {
            compare,
            success: self.ops(depth),
            failure: self.ops(depth),
        }
    }

    fn txn(&mut self) -> TxnRequest {
        let mut t = self.txn_unchecked();
        avoid_etcd_txn_panic(&mut t);
        t
    }

    fn txn_unchecked(&mut self) -> TxnRequest {
        let x = self.rng.gen_range(0..100);
        if x < 85 {
            // Valid by a conservative version of etcd's duplicate-key rule.
            let mut t = self.txn_body(0);
            for _ in 0..30 {
                if conservatively_valid(&t) {
                    break;
                }
                t = self.txn_body(0);
            }
            t
        } else if x < 93 {
            // Anything goes (often invalid).
            self.txn_body(0)
        } else {
            self.edge_txn()
        }
    }

    /// Txns on the edges of the duplicate-key rule.
    fn edge_txn(&mut self) -> TxnRequest {
        let key = b(self.pick(KEYS));
        let put = |k: &Bytes, v: &str| RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.clone(),
                value: b(v),
                ..Default::default()
            })),
        };
        let del = |k: &Bytes, end: Bytes| RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: k.clone(),
                    range_end: end,
                    prev_kv: false,
                },
            )),
        };
        let nested = |success: Vec<RequestOp>, failure: Vec<RequestOp>| RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        };
        let compare = if self.rng.gen_bool(0.5) {
            vec![self.compare()]
        } else {
            vec![]
        };
        let branch = match self.rng.gen_range(0..8) {
            // Invalid: the same key put twice.
            0 => vec![put(&key, "x"), put(&key, "y")],
            // Invalid: put and delete of the same key.
            1 => vec![del(&key, Bytes::new()), put(&key, "x")],
            // Invalid: put inside a deleted prefix.
            2 => vec![put(&b("k3"), "x"), del(&b("k"), prefix_end(b"k"))],
            // Valid: a from-key delete ("\0" end) is taken literally.
            3 => vec![del(&b("k1"), Bytes::from_static(b"\0")), put(&b("k2"), "x")],
            // Valid: the same key in both branches of a nested txn.
            4 => vec![nested(vec![put(&key, "x")], vec![put(&key, "y")])],
            // Invalid: a nested put of a key the parent puts too.
            5 => vec![nested(vec![put(&key, "x")], vec![]), put(&key, "y")],
            // A nested delete before a sibling nested put of the same key.
            6 => vec![
                nested(vec![del(&key, Bytes::new())], vec![]),
                nested(vec![put(&key, "x")], vec![]),
            ],
            // The same, in the other order.
            _ => vec![
                nested(vec![put(&key, "x")], vec![]),
                nested(vec![del(&key, Bytes::new())], vec![]),
            ],
        };
        if self.rng.gen_bool(0.5) {
            TxnRequest {
                compare,
                success: branch,
                failure: vec![],
            }
        } else {
            TxnRequest {
                compare,
                success: vec![],
                failure: branch,
            }
        }
    }

    fn compact(&mut self) -> CompactionRequest {
        let x = self.rng.gen_range(0..100);
        let revision = if x < 75 && self.rev > self.compact {
            self.rng.gen_range(self.compact + 1..=self.rev)
        } else if x < 88 {
            self.rng.gen_range(0..=self.compact)
        } else {
            self.rev + self.rng.gen_range(1..=3)
        };
        CompactionRequest {
            revision,
            physical: self.rng.gen_bool(0.3),
        }
    }

    fn next(&mut self) -> Req {
        let x = self.rng.gen_range(0..100);
        if x < 30 {
            Req::Put(self.put(false))
        } else if x < 55 {
            let mut r = self.range(false);
            if self.rng.gen_bool(0.01) {
                r.key = Bytes::new(); // "key is not provided"
            }
            Req::Range(r)
        } else if x < 65 {
            Req::Delete(self.delete())
        } else if x < 96 {
            Req::Txn(self.txn())
        } else {
            Req::Compact(self.compact())
        }
    }
}

/// A put key and delete intervals of a branch, nested txns included (both
/// of their branches). `None` as end: the single key; `"\0"`: to the end.
fn collect(ops: &[RequestOp], puts: &mut Vec<Bytes>, dels: &mut Vec<(Bytes, Option<Bytes>)>) {
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => puts.push(p.key.clone()),
            Some(request_op::Request::RequestDeleteRange(d)) => dels.push((
                d.key.clone(),
                (!d.range_end.is_empty()).then(|| d.range_end.clone()),
            )),
            Some(request_op::Request::RequestTxn(t)) => {
                collect(&t.success, puts, dels);
                collect(&t.failure, puts, dels);
            }
            _ => {}
        }
    }
}

fn has_from_key_delete(ops: &[RequestOp]) -> bool {
    ops.iter().any(|op| match &op.request {
        Some(request_op::Request::RequestDeleteRange(d)) => &d.range_end[..] == b"\0",
        Some(request_op::Request::RequestTxn(t)) => {
            has_from_key_delete(&t.success) || has_from_key_delete(&t.failure)
        }
        _ => false,
    })
}

fn strip_ignore_flags(ops: &mut [RequestOp]) {
    for op in ops {
        match &mut op.request {
            Some(request_op::Request::RequestPut(p)) => {
                p.ignore_value = false;
                p.ignore_lease = false;
            }
            Some(request_op::Request::RequestTxn(t)) => {
                strip_ignore_flags(&mut t.success);
                strip_ignore_flags(&mut t.failure);
            }
            _ => {}
        }
    }
}

/// The real etcd (3.4, and 3.5 has the same code) panics, and then panics
/// again on every restart replaying the entry, when a txn deletes a key
/// with a from-key range (`range_end` "\0", which its duplicate-key check
/// takes literally) and then puts it with `ignore_value`/`ignore_lease`:
/// the put passed the pre-check on the state before the txn, fails during
/// apply and etcd calls that "unexpected error during txn". So txns with a
/// from-key delete get no `ignore_*` puts here; our server's behaviour in
/// that case is tested on its own in [`ignore_flag_put_after_from_key_delete_in_txn`].
fn avoid_etcd_txn_panic(t: &mut TxnRequest) {
    if has_from_key_delete(&t.success) || has_from_key_delete(&t.failure) {
        strip_ignore_flags(&mut t.success);
        strip_ignore_flags(&mut t.failure);
    }
}

/// No key put twice and no put inside a deleted interval anywhere in a
/// branch (stricter than etcd's rule).
fn conservatively_valid(t: &TxnRequest) -> bool {
    [&t.success, &t.failure].iter().all(|branch| {
        let (mut puts, mut dels) = (Vec::new(), Vec::new());
        collect(branch, &mut puts, &mut dels);
        let mut sorted = puts.clone();
        sorted.sort();
        sorted.dedup();
        sorted.len() == puts.len()
            && puts.iter().all(|k| {
                dels.iter().all(|(begin, end)| match end {
                    None => k != begin,
                    Some(end) if &end[..] == b"\0" => k < begin,
                    Some(end) => !(begin <= k && k < end),
                })
            })
    })
}

// ---------------------------------------------------------------------------
// Normalization and comparison

fn zero_header(h: &mut Option<ResponseHeader>) {
    if let Some(h) = h {
        h.cluster_id = 0;
        h.member_id = 0;
        h.raft_term = 0;
    }
}

/// Normalizes a range response: zeroed header; with a non-KEY sort target,
/// checks (ours only) that the kvs are ordered by the target and then puts
/// them in key order so that ties compare equal.
fn norm_range(q: &RangeRequest, r: &mut RangeResponse, ours: bool) -> Result<(), String> {
    zero_header(&mut r.header);
    if q.sort_target == SortTarget::Key as i32 {
        return Ok(());
    }
    if ours {
        let desc = q.sort_order == SortOrder::Descend as i32;
        let target = q.sort_target;
        let cmp = |a: &KeyValue, b: &KeyValue| match target {
            t if t == SortTarget::Version as i32 => a.version.cmp(&b.version),
            t if t == SortTarget::Create as i32 => a.create_revision.cmp(&b.create_revision),
            t if t == SortTarget::Mod as i32 => a.mod_revision.cmp(&b.mod_revision),
            _ => a.value.cmp(&b.value),
        };
        for w in r.kvs.windows(2) {
            let ord = cmp(&w[0], &w[1]);
            if (desc && ord.is_lt()) || (!desc && ord.is_gt()) {
                return Err(format!(
                    "our kvs are not ordered by sort target {target} (descending: {desc}): {:?}",
                    r.kvs
                ));
            }
        }
    }
    r.kvs.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(())
}

fn norm_txn(q: &TxnRequest, r: &mut TxnResponse, ours: bool) -> Result<(), String> {
    zero_header(&mut r.header);
    let branch = if r.succeeded { &q.success } else { &q.failure };
    for (i, resp) in r.responses.iter_mut().enumerate() {
        let op = branch.get(i).and_then(|op| op.request.as_ref());
        match (op, resp.response.as_mut()) {
            (
                Some(request_op::Request::RequestRange(q)),
                Some(response_op::Response::ResponseRange(r)),
            ) => norm_range(q, r, ours)?,
            (
                Some(request_op::Request::RequestTxn(q)),
                Some(response_op::Response::ResponseTxn(r)),
            ) => norm_txn(q, r, ours)?,
            // Mismatched shapes are reported by the comparison.
            (_, Some(response_op::Response::ResponseRange(r))) => zero_header(&mut r.header),
            (_, Some(response_op::Response::ResponsePut(r))) => zero_header(&mut r.header),
            (_, Some(response_op::Response::ResponseDeleteRange(r))) => zero_header(&mut r.header),
            (_, Some(response_op::Response::ResponseTxn(r))) => zero_header(&mut r.header),
            (_, None) => {}
        }
    }
    Ok(())
}

fn normalize(req: &Req, mut out: Outcome, ours: bool) -> Result<Outcome, String> {
    if let Ok(resp) = &mut out {
        match (req, resp) {
            (Req::Range(q), Resp::Range(r)) => norm_range(q, r, ours)?,
            (Req::Txn(q), Resp::Txn(r)) => norm_txn(q, r, ours)?,
            (_, Resp::Range(r)) => zero_header(&mut r.header),
            (_, Resp::Put(r)) => zero_header(&mut r.header),
            (_, Resp::Delete(r)) => zero_header(&mut r.header),
            (_, Resp::Txn(r)) => zero_header(&mut r.header),
            (_, Resp::Compact(r)) => zero_header(&mut r.header),
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Driver

fn everything() -> RangeRequest {
    RangeRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        ..Default::default()
    }
}

async fn state(kv: &mut KvClient<Channel>) -> RangeResponse {
    match call(kv, &Req::Range(everything())).await {
        Ok(Resp::Range(r)) => r,
        other => panic!("reading the whole keyspace failed: {other:?}"),
    }
}

/// A short label of an op and its outcome, for the statistics printed.
fn outcome_kind(req: &Req, out: &Outcome) -> String {
    let op = match req {
        Req::Range(_) => "range",
        Req::Put(_) => "put",
        Req::Delete(_) => "delete",
        Req::Txn(_) => "txn",
        Req::Compact(_) => "compact",
    };
    match out {
        Err(e) => format!("{op}: {:?} {}", e.code, e.message),
        Ok(Resp::Txn(t)) => format!("{op}: ok, succeeded={}", t.succeeded),
        Ok(_) => format!("{op}: ok"),
    }
}

/// Runs one seed; panics on the first difference.
async fn run_seed(seed: u64, nops: usize, ours: &Server, real: &Server) {
    let mut a = KvClient::new(ours.channel().await);
    let mut e = KvClient::new(real.channel().await);
    let mut g = Gen::new(seed);
    let mut stats: std::collections::BTreeMap<String, usize> = Default::default();
    for i in 0..nops {
        let st = state(&mut e).await;
        g.rev = st.header.as_ref().map_or(1, |h| h.revision);
        g.kvs = st.kvs;
        if i % 25 == 0 {
            let mut ours_st = state(&mut a).await;
            let mut etcd_st = RangeResponse {
                kvs: g.kvs.clone(),
                ..st
            };
            zero_header(&mut ours_st.header);
            zero_header(&mut etcd_st.header);
            assert_eq!(
                ours_st, etcd_st,
                "seed {seed}, before op {i}: the stores differ"
            );
        }
        let req = g.next();
        let ro = call(&mut a, &req).await;
        let re = call(&mut e, &req).await;
        if let (Req::Compact(c), Ok(_)) = (&req, &re) {
            g.compact = c.revision;
        }
        *stats.entry(outcome_kind(&req, &re)).or_default() += 1;
        let fail = |why: String, ro: &Outcome, re: &Outcome| -> ! {
            // A server that died (or broke the connection) explains itself
            // at the end of its log.
            let log_tail = |s: &Server, out: &Outcome| match out {
                Err(e)
                    if matches!(
                        e.code,
                        tonic::Code::Unknown | tonic::Code::Unavailable | tonic::Code::Internal
                    ) =>
                {
                    let log = s.log_text();
                    let tail: Vec<&str> = log.lines().rev().take(40).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    format!(
                        "\n--- {:?} server log (tail) ---\n{}",
                        s.kind,
                        tail.join("\n")
                    )
                }
                _ => String::new(),
            };
            panic!(
                "seed {seed}, op {i}: {why}\n  (reproduce: DIFF_SEED={seed} DIFF_OPS={})\nrequest: {req:?}\nours:    {ro:?}\netcd:    {re:?}{}{}",
                i + 1,
                log_tail(ours, ro),
                log_tail(real, re)
            )
        };
        let no = normalize(&req, ro.clone(), true).unwrap_or_else(|why| fail(why, &ro, &re));
        let ne = normalize(&req, re.clone(), false).unwrap_or_else(|why| fail(why, &ro, &re));
        if no != ne {
            fail("responses differ".into(), &ro, &re);
        }
    }
    let mut ours_st = state(&mut a).await;
    let mut etcd_st = state(&mut e).await;
    zero_header(&mut ours_st.header);
    zero_header(&mut etcd_st.header);
    assert_eq!(
        ours_st, etcd_st,
        "seed {seed}, after the last op: the stores differ"
    );
    eprintln!("seed {seed}: outcomes {stats:?}; final revision {}", g.rev);
}

fn env_num(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number"))
    })
}

#[test]
fn random_ops_match_real_etcd() {
    let nops = env_num("DIFF_OPS").unwrap_or(500) as usize;
    let seeds: Vec<u64> = match env_num("DIFF_SEED") {
        Some(s) => vec![s],
        None => {
            let first = env_num("DIFF_FIRST_SEED").unwrap_or(1);
            (first..first + env_num("DIFF_SEEDS").unwrap_or(4)).collect()
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for seed in seeds {
        let started = Instant::now();
        let (ours, real) = std::thread::scope(|s| {
            let ours = s.spawn(|| Server::start(Kind::Ours));
            let real = s.spawn(|| Server::start(Kind::Real));
            (ours.join().unwrap(), real.join().unwrap())
        });
        rt.block_on(run_seed(seed, nops, &ours, &real));
        eprintln!(
            "seed {seed}: {nops} ops agree in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
}

/// The case the differential test must avoid because it crashes the real
/// etcd (see [`avoid_etcd_txn_panic`]): our server must refuse the txn with
/// "key not found" and change nothing.
///
/// (etcd itself panics on it: "unexpected error during txn".)
#[test]
fn ignore_flag_put_after_from_key_delete_in_txn() {
    let ours = Server::start(Kind::Ours);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut kv = KvClient::new(ours.channel().await);
        for k in ["k6", "p/", "k1"] {
            let put = PutRequest { key: b(k), value: b("v"), ..Default::default() };
            call(&mut kv, &Req::Put(put)).await.unwrap();
        }
        let before = state(&mut kv).await;
        for (ignore_value, ignore_lease) in [(true, false), (false, true), (true, true)] {
            let txn = TxnRequest {
                compare: vec![],
                success: vec![
                    RequestOp {
                        request: Some(request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                            key: b("k6"),
                            range_end: Bytes::from_static(b"\0"),
                            prev_kv: false,
                        })),
                    },
                    RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: b("p/"),
                            value: if ignore_value { Bytes::new() } else { b("x") },
                            ignore_value,
                            ignore_lease,
                            ..Default::default()
                        })),
                    },
                ],
                failure: vec![],
            };
            let out = call(&mut kv, &Req::Txn(txn)).await;
            assert_eq!(
                out,
                Err(RpcError { code: tonic::Code::InvalidArgument, message: "etcdserver: key not found".into() })
            );
            let after = state(&mut kv).await;
            let rev = |r: &RangeResponse| r.header.as_ref().map(|h| h.revision);
            assert_eq!(
                (rev(&after), &after.kvs),
                (rev(&before), &before.kvs),
                "a refused txn (ignore_value: {ignore_value}, ignore_lease: {ignore_lease}) changed the store \
                 (left: after, right: before)"
            );
        }
    });
}
