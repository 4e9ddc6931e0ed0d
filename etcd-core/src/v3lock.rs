//! The Lock API of [`Etcd`] (etcd's `api/v3lock` over clientv3's
//! `concurrency.Mutex`), built on leases and txns.
//!
//! Lock(name, lease): the waiter's key is `name/<lease hex>`, put with the
//! lease if it does not exist yet (the same lease locking twice reuses
//! it). The lock is held by the key with the smallest create revision
//! under `name/`; a waiter waits until every key created before its own is
//! deleted (unlocked, revoked or expired), then checks its own key still
//! exists ("mutex: session is expired" otherwise). Unlock deletes the key.
//!
//! Example: A locks "job" with lease 1a (key `job/1a`, created at 5); B
//! with lease 2b puts `job/2b` at 6 and waits; A unlocks (deletes `job/1a`
//! at 7); B's wait sees no key under `job/` created at or before 5 and
//! returns `job/2b`.

use crate::concurrency::{
    by_create, get_local, key_prefix, session_key, session_lease, wait_deletes, DeleteOnDrop,
};
use crate::pb::etcdserverpb::{
    compare, range_request::SortOrder, request_op, response_op, Compare, DeleteRangeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use crate::pb::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use crate::request_context::RequestContext;
use crate::{Error, Etcd, Result};
use bytes::Bytes;

/// A txn op.
pub(crate) fn op(r: request_op::Request) -> RequestOp {
    RequestOp { request: Some(r) }
}

/// `create_revision(key) == rev`.
pub(crate) fn create_rev_is(key: &Bytes, rev: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.clone(),
        target_union: Some(compare::TargetUnion::CreateRevision(rev)),
        ..Default::default()
    }
}

/// The range response of txn response op `i`.
pub(crate) fn range_of(
    resp: &crate::pb::etcdserverpb::TxnResponse,
    i: usize,
) -> Option<&crate::pb::etcdserverpb::RangeResponse> {
    match resp.responses.get(i)?.response.as_ref()? {
        response_op::Response::ResponseRange(r) => Some(r),
        _ => None,
    }
}

impl Etcd {
    /// Lock.Lock: blocks until the lock `name` is held with `lease` (a
    /// fresh 60 s lease when 0); returns the ownership key.
    pub async fn lock(&self, ctx: &RequestContext, r: LockRequest) -> Result<LockResponse> {
        let lease = session_lease(self, ctx, r.lease).await?;
        let pfx = key_prefix(&r.name);
        let my_key = session_key(&pfx, lease);
        let owner = op(request_op::Request::RequestRange(by_create(
            &pfx,
            SortOrder::Ascend,
            0,
            false,
        )));
        let resp = self
            .txn(
                ctx,
                TxnRequest {
                    compare: vec![create_rev_is(&my_key, 0)],
                    success: vec![
                        op(request_op::Request::RequestPut(PutRequest {
                            key: my_key.clone(),
                            lease,
                            ..Default::default()
                        })),
                        owner.clone(),
                    ],
                    failure: vec![
                        op(request_op::Request::RequestRange(RangeRequest {
                            key: my_key.clone(),
                            ..Default::default()
                        })),
                        owner,
                    ],
                },
            )
            .await?;
        let header_rev = resp.header.as_ref().map_or(0, |h| h.revision);
        let my_rev = if resp.succeeded {
            header_rev
        } else {
            range_of(&resp, 0)
                .and_then(|r| r.kvs.first())
                .map_or(header_rev, |kv| kv.create_revision)
        };
        let owner_rev = range_of(&resp, 1)
            .and_then(|r| r.kvs.first())
            .map(|kv| kv.create_revision);
        if owner_rev.is_none_or(|rev| rev == my_rev) {
            return Ok(LockResponse {
                header: resp.header,
                key: my_key,
            });
        }
        let guard = DeleteOnDrop::new(self, ctx, my_key.clone());
        // Errors while waiting drop the guard, which releases the key.
        wait_deletes(self, ctx, &pfx, my_rev - 1).await?;
        let got = get_local(self, ctx, &my_key).await?;
        guard.disarm();
        if got.kvs.is_empty() {
            return Err(Error::SessionExpired);
        }
        Ok(LockResponse {
            header: got.header,
            key: my_key,
        })
    }

    /// Lock.Unlock: deletes the ownership key.
    pub async fn unlock(&self, ctx: &RequestContext, r: UnlockRequest) -> Result<UnlockResponse> {
        let resp = self
            .delete_range(
                ctx,
                DeleteRangeRequest {
                    key: r.key,
                    ..Default::default()
                },
            )
            .await?;
        Ok(UnlockResponse {
            header: resp.header,
        })
    }
}
