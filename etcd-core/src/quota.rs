//! The space quota (etcd's `etcdserver/quota.go`): a write is accepted
//! while the store's size plus the write's estimated cost stays below
//! `--quota-backend-bytes`. Otherwise the member raises a NOSPACE alarm
//! through raft (which caps writes on every member, see `alarms.rs`) and
//! refuses the write with "database space exceeded".
//!
//! Costs are etcd's estimates: a put is its key and value plus 256 bytes
//! of overhead; a txn costs its more expensive branch (top-level puts, as
//! etcd counts); a lease grant 64 bytes.

use crate::pb::etcdserverpb::{request_op::Request, PutRequest, RequestOp, TxnRequest};

const KV_OVERHEAD: u64 = 256;
const LEASE_OVERHEAD: u64 = 64;

/// What a write costs (see the module doc).
pub(crate) enum Cost<'a> {
    Put(&'a PutRequest),
    Txn(&'a TxnRequest),
    LeaseGrant,
}

impl Cost<'_> {
    pub(crate) fn bytes(&self) -> u64 {
        fn put(p: &PutRequest) -> u64 {
            KV_OVERHEAD + p.key.len() as u64 + p.value.len() as u64
        }
        fn branch(ops: &[RequestOp]) -> u64 {
            ops.iter()
                .map(|o| match &o.request {
                    Some(Request::RequestPut(p)) => put(p),
                    _ => 0,
                })
                .sum()
        }
        match self {
            Cost::Put(p) => put(p),
            Cost::Txn(t) => branch(&t.success).max(branch(&t.failure)),
            Cost::LeaseGrant => LEASE_OVERHEAD,
        }
    }
}

/// etcd's `backendQuota.Available`: a request that adds nothing (a txn
/// of deletes and reads) always passes.
pub(crate) fn available(db_size: u64, cost: u64, quota: u64) -> bool {
    cost == 0 || db_size.saturating_add(cost) < quota
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_as_etcd_estimates_them() {
        let p = PutRequest {
            key: b"k".to_vec().into(),
            value: vec![0; 10].into(),
            ..Default::default()
        };
        assert_eq!(Cost::Put(&p).bytes(), 267);
        let op = RequestOp {
            request: Some(Request::RequestPut(p)),
        };
        let t = TxnRequest {
            success: vec![op.clone(), op.clone()],
            failure: vec![op],
            ..Default::default()
        };
        assert_eq!(Cost::Txn(&t).bytes(), 534);
        assert_eq!(Cost::LeaseGrant.bytes(), 64);
        assert!(available(100, 267, 368));
        assert!(!available(101, 267, 368));
        assert!(available(1000, 0, 368), "nothing added: no quota check");
    }
}
