//! Applying requests to the MVCC store, mirroring etcd's `apply.go`
//! (`applierV3backend`): Range, Put, DeleteRange, Txn, Compaction.
//!
//! A txn runs in three steps, like etcd: (1) evaluate the compares of the
//! txn and of every nested txn on the chosen branches, all against the state
//! *before* the txn (the "path"); (2) check every op on the path (ranges at
//! valid revisions; puts with existing keys for `ignore_*` and existing
//! leases), so that a txn which would fail changes nothing; (3) run the ops.
//! Ops see the txn's own earlier writes, and all writes of one request share
//! one main revision.
//!
//! Headers: only the revision is set here. A nested response gets a header
//! with its revision (a nested txn's header stays empty, as in etcd); the
//! caller fills the top-level header's cluster, member and term.
//!
//! Files: `view.rs` (the transaction requests run in, and what applying
//! produces), this file (dispatch and the KV requests), `lease.rs` (lease
//! grant, revoke and checkpoint, and restoring the lessor from the store).
//! Both depend on `view.rs`, not on each other.

pub(crate) mod lease;
mod view;

pub(crate) use view::{Applied, View};

use crate::lessor::Lessor;
use crate::pb::etcdserverpb::{
    compare, range_request, request_op, response_op, CompactionRequest, CompactionResponse,
    Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::pb::mvccpb::KeyValue;
use crate::raft_request::{Op, RaftRequest};
use crate::{Error, Result};
use etcd_mvcc::{RangeOptions, Store};
use std::cmp::Ordering;
use std::ops::ControlFlow;

/// Applies a committed request at raft index `index`. The consistent index
/// is persisted whatever the outcome, so replay after a crash is idempotent.
/// `lessor` is updated only after the store committed the entry.
pub(crate) fn apply(
    store: &Store,
    lessor: &Lessor,
    index: u64,
    req: &RaftRequest,
) -> Result<Applied> {
    let Some(op) = &req.op else {
        store.write().end(index)?;
        return Err(Error::Internal("raft request without an operation".into()));
    };
    if let Op::Compaction(c) = op {
        return compaction(store, index, c);
    }
    let mut view = View::write(store).with_lessor(lessor);
    let out = match op {
        Op::Put(p) => check_put_lease(&view, p)
            .and_then(|()| put(&mut view, p))
            .map(Applied::Put),
        Op::DeleteRange(d) => delete_range(&mut view, d).map(Applied::DeleteRange),
        Op::Txn(t) => txn(&mut view, t).map(Applied::Txn),
        Op::Compaction(_) => unreachable!("handled above"),
        // Membership, auth and alarm requests have appliers of their own.
        Op::MemberUpdate(_) | Op::MemberAttributes(_) => Err(Error::Internal(
            "a membership request reached the KV applier".into(),
        )),
        Op::LeaseGrant(g) => lease::grant(&mut view, lessor, g),
        Op::LeaseRevoke(r) => lease::revoke(&mut view, lessor, r),
        Op::LeaseCheckpoint(c) => lease::checkpoint(&mut view, lessor, c),
        _ => Err(Error::Internal(format!(
            "an auth or alarm request reached the KV applier: {op:?}"
        ))),
    };
    match out {
        Ok(applied) => {
            let events = view.end(index)?;
            lease::after_commit(lessor, op, &events);
            Ok(applied)
        }
        Err(e) => {
            // A request that fails part-way changes nothing: dropping the
            // transaction discards its writes; only the index is recorded.
            drop(view);
            store.write().end(index)?;
            Err(e)
        }
    }
}

fn compaction(store: &Store, index: u64, c: &CompactionRequest) -> Result<Applied> {
    match store.compact(c.revision, index) {
        Ok(wait) => {
            let header = Some(ResponseHeader {
                revision: store.current_revision(),
                ..Default::default()
            });
            Ok(Applied::Compaction(CompactionResponse { header }, wait))
        }
        Err(e) => {
            store.write().end(index)?;
            Err(e.into())
        }
    }
}

fn check_put_lease(view: &View<'_>, p: &PutRequest) -> Result<()> {
    if p.lease != 0 && !view.lessor.is_some_and(|l| l.exists(p.lease)) {
        return Err(Error::LeaseNotFound);
    }
    Ok(())
}

/// The header of a nested response: the revision only.
fn rev_header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// `applierV3backend.Range`.
///
/// Consumes the store's range in chunks (`TxnRead::range_chunks`): the
/// min/max create/mod revision filters and `keys_only` are applied to each
/// chunk, so filtered-out key-values never accumulate, and unless a sort
/// other than by key ascending is asked for, the read stops as soon as
/// `limit + 1` key-values passed the filters (the extra one says `more`).
/// Sorting by another target (or by key descending) needs every key-value
/// that passed the filters at once, as in etcd. `count` is the store's: all
/// keys in the range at the revision, before filters and limit (as etcd).
pub(crate) fn range(view: &View<'_>, r: &RangeRequest) -> Result<RangeResponse> {
    use range_request::{SortOrder, SortTarget};
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    let mut order = r.sort_order;
    if r.sort_target != SortTarget::Key as i32 && order == SortOrder::None as i32 {
        // Any target but the key defaults to ascending.
        order = SortOrder::Ascend as i32;
    }
    // The store yields key order: only other orders need a sort.
    let sort = order != SortOrder::None as i32
        && !(r.sort_target == SortTarget::Key as i32 && order == SortOrder::Ascend as i32);
    let mut limit = r.limit;
    if (sort && r.sort_order != SortOrder::None as i32) || filtered {
        // Everything is needed to sort; with filters we stop early ourselves
        // (if there is no sort). Like etcd, a target other than the key
        // without an explicit order sorts only the first `limit + 1` keys
        // when there is no filter.
        limit = 0;
    }
    if limit > 0 {
        // One extra to learn whether there is more.
        limit += 1;
    }
    let opts = RangeOptions {
        limit,
        rev: r.revision,
        count_only: r.count_only,
    };
    // Without a sort, limit + 1 key-values that pass the filters are enough.
    let enough = (!sort && r.limit > 0).then(|| r.limit as usize + 1);
    // Sorting by value needs the values: clear them after the sort then.
    let clear_values_early = r.keys_only && !(sort && r.sort_target == SortTarget::Value as i32);
    let mut kvs: Vec<KeyValue> = Vec::new();
    let header = view.range_chunks(&r.key, &r.range_end, opts, |mut chunk| {
        if filtered {
            chunk.retain(|kv| range_filter_passes(r, kv));
        }
        if clear_values_early {
            for kv in &mut chunk {
                kv.value = Default::default();
            }
        }
        kvs.extend(chunk);
        match enough {
            Some(n) if kvs.len() >= n => {
                kvs.truncate(n);
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        }
    })?;
    if sort {
        let by: fn(&KeyValue, &KeyValue) -> Ordering = match r.sort_target {
            t if t == SortTarget::Version as i32 => |a, b| a.version.cmp(&b.version),
            t if t == SortTarget::Create as i32 => |a, b| a.create_revision.cmp(&b.create_revision),
            t if t == SortTarget::Mod as i32 => |a, b| a.mod_revision.cmp(&b.mod_revision),
            t if t == SortTarget::Value as i32 => |a, b| a.value.cmp(&b.value),
            _ => |a, b| a.key.cmp(&b.key),
        };
        if order == SortOrder::Descend as i32 {
            kvs.sort_by(|a, b| by(b, a));
        } else {
            kvs.sort_by(by);
        }
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() as i64 > r.limit {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only && !clear_values_early {
        for kv in &mut kvs {
            kv.value = Default::default();
        }
    }
    Ok(RangeResponse {
        header: rev_header(view.rev()),
        kvs,
        more,
        count: header.count,
    })
}

/// The min/max mod/create revision filters of a range (0: no bound).
fn range_filter_passes(r: &RangeRequest, kv: &KeyValue) -> bool {
    (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
        && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
        && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
        && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
}

/// `applierV3backend.Put` (the lease was checked before).
fn put(view: &mut View<'_>, p: &PutRequest) -> Result<PutResponse> {
    let mut prev = None;
    if p.ignore_value || p.ignore_lease || p.prev_kv {
        prev = view
            .range(&p.key, &[], RangeOptions::default())?
            .kvs
            .into_iter()
            .next();
    }
    let (mut value, mut lease) = (&p.value[..], p.lease);
    if p.ignore_value || p.ignore_lease {
        let Some(prev) = &prev else {
            return Err(Error::KeyNotFound);
        };
        if p.ignore_value {
            value = &prev.value[..];
        }
        if p.ignore_lease {
            lease = prev.lease;
        }
    }
    let value = value.to_vec();
    let txn = view.write_txn();
    txn.put(&p.key, &value, lease)?;
    Ok(PutResponse {
        header: rev_header(txn.rev()),
        prev_kv: if p.prev_kv { prev } else { None },
    })
}

/// `applierV3backend.DeleteRange`.
fn delete_range(view: &mut View<'_>, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
    let txn = view.write_txn();
    let deleted = txn.delete_range(&d.key, &d.range_end)?;
    Ok(DeleteRangeResponse {
        header: rev_header(txn.rev()),
        deleted: deleted.len() as i64,
        prev_kvs: if d.prev_kv { deleted } else { Vec::new() },
    })
}

/// Whether a txn writes nothing on any branch (`isTxnReadonly`).
pub(crate) fn is_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestRange(_)) => true,
            Some(request_op::Request::RequestTxn(t)) => is_read_only(t),
            _ => false,
        })
}

/// `applierV3backend.Txn`.
pub(crate) fn txn(view: &mut View<'_>, t: &TxnRequest) -> Result<TxnResponse> {
    let mut path = Vec::new();
    compare_to_path(view, t, &mut path)?;
    // Like etcd: every put on the path is checked before any range.
    check_ops(view, t, &mut &path[..], Check::Puts)?;
    check_ops(view, t, &mut &path[..], Check::Ranges)?;
    let mut resp = run_txn(view, t, &mut &path[..])?;
    resp.header = rev_header(view.rev());
    Ok(resp)
}

/// Evaluates the compares of `t` and of the nested txns on its chosen
/// branch, depth first, against the state before the txn.
fn compare_to_path(view: &View<'_>, t: &TxnRequest, path: &mut Vec<bool>) -> Result<()> {
    let mut ok = true;
    for c in &t.compare {
        if !apply_compare(view, c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    for op in if ok { &t.success } else { &t.failure } {
        if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
            compare_to_path(view, nested, path)?;
        }
    }
    Ok(())
}

/// `applyCompare`: true when every key in the compare's range satisfies it.
///
/// A compare on a key's create revision, mod revision or version (the
/// shape of every Kubernetes update: `mod_revision == N`) is answered by
/// the key index alone; etcd reads the whole key-value, and so do value
/// and lease compares here.
fn apply_compare(view: &View<'_>, c: &Compare) -> Result<bool> {
    use compare::CompareTarget;
    let by_index = [
        CompareTarget::Create,
        CompareTarget::Mod,
        CompareTarget::Version,
    ]
    .iter()
    .any(|t| *t as i32 == c.target);
    let kvs = if by_index {
        view.key_revisions(&c.key, &c.range_end)?
            .into_iter()
            .map(|k| KeyValue {
                create_revision: k.create_revision,
                mod_revision: k.mod_revision,
                version: k.version,
                ..Default::default()
            })
            .collect()
    } else {
        view.range(&c.key, &c.range_end, RangeOptions::default())?
            .kvs
    };
    if kvs.is_empty() {
        // A value compare on a missing key always fails (no way to tell a
        // missing value from an empty one); other targets compare zero.
        if c.target == CompareTarget::Value as i32 {
            return Ok(false);
        }
        return Ok(compare_kv(c, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(c, kv)))
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let ord = match c.target {
        t if t == CompareTarget::Value as i32 => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value[..].cmp(v)
        }
        t => {
            let (actual, want) = match (t, &c.target_union) {
                (t, Some(TargetUnion::CreateRevision(r))) if t == CompareTarget::Create as i32 => {
                    (kv.create_revision, *r)
                }
                (t, _) if t == CompareTarget::Create as i32 => (kv.create_revision, 0),
                (t, Some(TargetUnion::ModRevision(r))) if t == CompareTarget::Mod as i32 => {
                    (kv.mod_revision, *r)
                }
                (t, _) if t == CompareTarget::Mod as i32 => (kv.mod_revision, 0),
                (t, Some(TargetUnion::Version(v))) if t == CompareTarget::Version as i32 => {
                    (kv.version, *v)
                }
                (t, _) if t == CompareTarget::Version as i32 => (kv.version, 0),
                (t, Some(TargetUnion::Lease(l))) if t == CompareTarget::Lease as i32 => {
                    (kv.lease, *l)
                }
                (t, _) if t == CompareTarget::Lease as i32 => (kv.lease, 0),
                // An unknown target: etcd compares nothing and succeeds.
                _ => return true,
            };
            actual.cmp(&want)
        }
    };
    match c.result {
        r if r == CompareResult::Equal as i32 => ord == Ordering::Equal,
        r if r == CompareResult::NotEqual as i32 => ord != Ordering::Equal,
        r if r == CompareResult::Greater as i32 => ord == Ordering::Greater,
        r if r == CompareResult::Less as i32 => ord == Ordering::Less,
        _ => true,
    }
}

/// Which ops [`check_ops`] checks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// `checkRequestPut`: `ignore_*` needs the key, a lease must exist.
    Puts,
    /// `checkRequestRange`: the revision must be neither compacted nor future.
    Ranges,
}

/// `checkRequests` with `checkRequestPut` or `checkRequestRange`.
fn check_ops(view: &View<'_>, t: &TxnRequest, path: &mut &[bool], check: Check) -> Result<()> {
    let (&ok, rest) = path.split_first().expect("path covers every txn on it");
    *path = rest;
    for op in if ok { &t.success } else { &t.failure } {
        match &op.request {
            Some(request_op::Request::RequestTxn(nested)) => check_ops(view, nested, path, check)?,
            Some(request_op::Request::RequestPut(p)) if check == Check::Puts => {
                if p.ignore_value || p.ignore_lease {
                    let rr = view.range(&p.key, &[], RangeOptions::default())?;
                    if rr.kvs.is_empty() {
                        return Err(Error::KeyNotFound);
                    }
                }
                check_put_lease(view, p)?;
            }
            Some(request_op::Request::RequestRange(r))
                if check == Check::Ranges && r.revision != 0 =>
            {
                if r.revision > view.rev() {
                    return Err(Error::FutureRevision);
                }
                if r.revision < view.compact_rev {
                    return Err(Error::Compacted);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn run_txn(view: &mut View<'_>, t: &TxnRequest, path: &mut &[bool]) -> Result<TxnResponse> {
    let (&ok, rest) = path.split_first().expect("path covers every txn on it");
    *path = rest;
    let mut responses = Vec::new();
    for op in if ok { &t.success } else { &t.failure } {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                response_op::Response::ResponseRange(range(view, r)?)
            }
            Some(request_op::Request::RequestPut(p)) => {
                response_op::Response::ResponsePut(put(view, p)?)
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                response_op::Response::ResponseDeleteRange(delete_range(view, d)?)
            }
            Some(request_op::Request::RequestTxn(nested)) => {
                response_op::Response::ResponseTxn(run_txn(view, nested, path)?)
            }
            None => return Err(Error::KeyNotFound),
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: Some(ResponseHeader::default()),
        succeeded: ok,
        responses,
    })
}
