//! Request validation done before a request is proposed, mirroring etcd's
//! `v3rpc/key.go` (`checkRangeRequest`, `checkPutRequest`,
//! `checkTxnRequest`, `checkIntervals`).
//!
//! Duplicate-key rule of a txn (etcd's `checkIntervals`), per branch: no key
//! may be put twice, and no key may be both put and inside a deleted
//! interval, counting nested txns. A key put in both the success and the
//! failure branch of one nested txn is fine (only one branch runs). Deleted
//! intervals are `[key, range_end)` compared as byte strings, a missing
//! `range_end` meaning the single key; as in etcd, a `range_end` of `"\0"`
//! ("to the end of the keyspace") is taken literally there, so it conflicts
//! with no put.

use crate::pb::etcdserverpb::{
    request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::{Error, Result};
use std::collections::HashSet;

/// `checkRangeRequest`.
pub fn check_range(r: &RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if !(0..=2).contains(&r.sort_order) || !(0..=4).contains(&r.sort_target) {
        return Err(Error::InvalidSortOption);
    }
    Ok(())
}

/// `checkPutRequest`.
pub fn check_put(r: &PutRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

/// `checkDeleteRequest`.
pub fn check_delete(r: &DeleteRangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// `checkTxnRequest` followed by the duplicate-key check of both branches.
pub fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<()> {
    check_txn_ops(r, max_txn_ops as i64)?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

fn check_txn_ops(r: &TxnRequest, max_ops: i64) -> Result<()> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len()) as i64;
    if opc > max_ops {
        return Err(Error::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        check_op(op, max_ops - opc)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, max_ops: i64) -> Result<()> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => check_range(r),
        Some(request_op::Request::RequestPut(r)) => check_put(r),
        Some(request_op::Request::RequestDeleteRange(r)) => check_delete(r),
        Some(request_op::Request::RequestTxn(r)) => check_txn_ops(r, max_ops),
        None => Err(Error::KeyNotFound),
    }
}

/// A deleted interval `[begin, end)`; `end == None` is the single key.
struct Interval<'a> {
    begin: &'a [u8],
    end: Option<&'a [u8]>,
}

impl Interval<'_> {
    fn contains(&self, key: &[u8]) -> bool {
        match self.end {
            None => key == self.begin,
            Some(end) => self.begin <= key && key < end,
        }
    }
}

/// Returns the keys put and the intervals deleted by `reqs` (recursively).
fn check_intervals(reqs: &[RequestOp]) -> Result<(HashSet<&[u8]>, Vec<Interval<'_>>)> {
    let mut dels: Vec<Interval<'_>> = reqs
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some(Interval {
                begin: &d.key[..],
                end: (!d.range_end.is_empty()).then_some(&d.range_end[..]),
            }),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<&[u8]> = HashSet::new();
    for op in reqs {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k);
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || dels.iter().any(|d| d.contains(k)) {
                return Err(Error::DuplicateKey);
            }
            puts.insert(k);
        }
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in reqs {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        let k = &p.key[..];
        if puts.contains(k) || dels.iter().any(|d| d.contains(k)) {
            return Err(Error::DuplicateKey);
        }
        puts.insert(k);
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.as_bytes().to_vec().into(),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: k.as_bytes().to_vec().into(),
                    range_end: end.as_bytes().to_vec().into(),
                    ..Default::default()
                },
            )),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_puts_are_refused() {
        assert_eq!(
            check_txn(&txn(vec![put("a"), put("a")], vec![]), 128),
            Err(Error::DuplicateKey)
        );
        assert_eq!(check_txn(&txn(vec![put("a")], vec![put("a")]), 128), Ok(()));
    }

    #[test]
    fn put_inside_deleted_interval_is_refused() {
        assert_eq!(
            check_txn(&txn(vec![del("a", "c"), put("b")], vec![]), 128),
            Err(Error::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![del("a", "c"), put("c")], vec![]), 128),
            Ok(())
        );
        assert_eq!(
            check_txn(&txn(vec![del("b", ""), put("b")], vec![]), 128),
            Err(Error::DuplicateKey)
        );
        // "\0" as range end is taken literally, as etcd does.
        assert_eq!(
            check_txn(&txn(vec![del("b", "\0"), put("b")], vec![]), 128),
            Ok(())
        );
    }

    #[test]
    fn nested_txn_branches_may_share_keys_but_not_with_parent() {
        let nested = RequestOp {
            request: Some(request_op::Request::RequestTxn(txn(
                vec![put("x")],
                vec![put("x")],
            ))),
        };
        assert_eq!(check_txn(&txn(vec![nested.clone()], vec![]), 128), Ok(()));
        assert_eq!(
            check_txn(&txn(vec![nested, put("x")], vec![]), 128),
            Err(Error::DuplicateKey)
        );
    }

    #[test]
    fn too_many_ops_and_empty_keys() {
        let many: Vec<RequestOp> = (0..129).map(|i| put(&format!("k{i}"))).collect();
        assert_eq!(check_txn(&txn(many, vec![]), 128), Err(Error::TooManyOps));
        assert_eq!(
            check_txn(&txn(vec![put("")], vec![]), 128),
            Err(Error::EmptyKey)
        );
        assert_eq!(
            check_txn(&txn(vec![RequestOp { request: None }], vec![]), 128),
            Err(Error::KeyNotFound)
        );
    }
}
