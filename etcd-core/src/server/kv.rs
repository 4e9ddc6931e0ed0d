//! The KV API (etcd's `v3_server.go`: Range, Put, DeleteRange, Txn,
//! Compact) and opening watch streams.

use super::etcd::Etcd;
use crate::apply::{self, Applied, View};
use crate::apply_auth;
use crate::auth::{AuthInfo, AuthStore};
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use crate::quota::Cost;
use crate::raft_request::Op;
use crate::request_check;
use crate::request_context::RequestContext;
use crate::watcher::WatchStream;
use crate::{Error, Result};

impl Etcd {
    /// KV.Range.
    pub async fn range(&self, ctx: &RequestContext, r: RangeRequest) -> Result<RangeResponse> {
        request_check::check_range(&r)?;
        self.inner.metrics.ranges.inc();
        if !r.serializable {
            self.linearizable_read_notify(ctx).await?;
        }
        let mut resp = self
            .serialize(
                ctx,
                |auth, ai| apply_auth::check_range(auth, ai, &r.key, &r.range_end),
                || apply::range(&View::read(&self.inner.store), &r),
            )
            .await?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// KV.Put.
    pub async fn put(&self, ctx: &RequestContext, r: PutRequest) -> Result<PutResponse> {
        request_check::check_put(&r)?;
        self.inner.metrics.puts.inc();
        self.check_quota(ctx, Cost::Put(&r)).await?;
        match self.propose(ctx, Op::Put(r)).await? {
            Applied::Put(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => unreachable!("a put applies as a put"),
        }
    }

    /// KV.DeleteRange.
    pub async fn delete_range(
        &self,
        ctx: &RequestContext,
        r: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse> {
        request_check::check_delete(&r)?;
        self.inner.metrics.deletes.inc();
        match self.propose(ctx, Op::DeleteRange(r)).await? {
            Applied::DeleteRange(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => unreachable!("a delete applies as a delete"),
        }
    }

    /// KV.Txn.
    pub async fn txn(&self, ctx: &RequestContext, r: TxnRequest) -> Result<TxnResponse> {
        request_check::check_txn(&r, self.inner.cfg.max_txn_ops)?;
        self.inner.metrics.txns.inc();
        if apply::is_read_only(&r) {
            if !is_serializable(&r) {
                self.linearizable_read_notify(ctx).await?;
            }
            let mut resp = self
                .serialize(
                    ctx,
                    |auth, ai| apply_auth::check_txn(auth, ai, &r),
                    || apply::txn(&mut View::read(&self.inner.store), &r),
                )
                .await?;
            self.fill(&mut resp.header);
            return Ok(resp);
        }
        self.check_quota(ctx, Cost::Txn(&r)).await?;
        match self.propose(ctx, Op::Txn(r)).await? {
            Applied::Txn(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => unreachable!("a txn applies as a txn"),
        }
    }

    /// KV.Compact. With `physical`, returns once the compacted revisions
    /// are removed from the store.
    pub async fn compact(
        &self,
        ctx: &RequestContext,
        r: CompactionRequest,
    ) -> Result<CompactionResponse> {
        let physical = r.physical;
        match self.propose(ctx, Op::Compaction(r)).await? {
            Applied::Compaction(mut resp, wait) => {
                if physical {
                    tokio::task::spawn_blocking(move || wait.wait())
                        .await
                        .map_err(|e| Error::Internal(format!("compaction wait failed: {e}")))?;
                }
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => unreachable!("a compaction applies as a compaction"),
        }
    }

    /// Opens a watch stream (the gRPC Watch stream's equivalent): create
    /// watchers, cancel them, request progress, receive responses. Needs a
    /// tokio runtime with the time driver.
    pub fn watch(&self, ctx: &RequestContext) -> WatchStream {
        let permit: crate::watcher::Permit = {
            let (etcd, ctx) = (self.clone(), ctx.clone());
            Box::new(move |key, end| match etcd.caller_now(&ctx)? {
                Some(ai) => apply_auth::check_range(etcd.auth(), &ai, key, end),
                None => Ok(()),
            })
        };
        let etcd = self.clone();
        WatchStream::new(
            self.inner.watch.clone(),
            Box::new(move |rev| etcd.header(rev)),
            self.inner.cfg.watch_progress_notify_interval,
            // etcd fragments above --max-request-bytes plus its gRPC
            // overhead allowance (512 KiB).
            self.inner.cfg.max_request_bytes as usize + 512 * 1024,
            Some(permit),
        )
    }
}

impl Etcd {
    /// etcd's `doSerialize`: a local read by the caller of `ctx`, after
    /// `check` passed for it; a read checked at an auth revision that
    /// changed while it ran is refused ("revision of auth store is old"),
    /// so a revoked permission never lets a read through.
    async fn serialize<T>(
        &self,
        ctx: &RequestContext,
        check: impl FnOnce(&AuthStore, &AuthInfo) -> Result<()>,
        read: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let caller = self.caller(ctx).await?;
        if let Some(ai) = &caller {
            check(self.auth(), ai)?;
        }
        let out = read()?;
        match caller {
            Some(ai) if ai.revision != 0 && ai.revision != self.auth().revision() => {
                Err(Error::AuthOldRevision)
            }
            _ => Ok(out),
        }
    }
}

/// A read-only txn is served without ReadIndex only when every range in it
/// is serializable (etcd's `isTxnSerializable`).
fn is_serializable(t: &TxnRequest) -> bool {
    use crate::pb::etcdserverpb::request_op::Request;
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(r)) => r.serializable,
            Some(Request::RequestTxn(t)) => is_serializable(t),
            _ => true,
        })
}
