//! The etcd v3 gRPC services over an [`Etcd`] handle. Each method only
//! unwraps the request, calls the engine and translates errors.

use crate::rpc::etcdserverpb::{
    cluster_server::Cluster, kv_server::Kv, maintenance_server::Maintenance,
};
use crate::status::learner_guard;
use crate::status::{to_status, unsupported};
use etcd_core::pb::etcdserverpb::*;
use etcd_core::Etcd;
use tonic::{Request, Response, Status};

type Reply<T> = Result<Response<T>, Status>;

fn reply<T>(r: etcd_core::Result<T>) -> Reply<T> {
    r.map(Response::new).map_err(to_status)
}

/// Runs `call` (one that reads or rewrites the whole store) on a blocking
/// thread for the caller of `req`; `what` names it if the task dies.
async fn blocking<T: Send + 'static>(
    etcd: &Etcd,
    req: &Request<impl Sized>,
    what: &str,
    call: impl FnOnce(&Etcd, &etcd_core::RequestContext) -> etcd_core::Result<T> + Send + 'static,
) -> Result<T, Status> {
    let (etcd, ctx) = (etcd.clone(), crate::request_context::of(req));
    tokio::task::spawn_blocking(move || call(&etcd, &ctx))
        .await
        .map_err(|e| Status::internal(format!("{what} task failed: {e}")))?
        .map_err(to_status)
}

/// KV service.
#[derive(Clone)]
pub struct KvService(pub Etcd);

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Reply<RangeResponse> {
        if !req.get_ref().serializable {
            learner_guard(&self.0)?;
        }
        reply(
            self.0
                .range(&crate::request_context::of(&req), req.into_inner())
                .await,
        )
    }

    async fn put(&self, req: Request<PutRequest>) -> Reply<PutResponse> {
        learner_guard(&self.0)?;
        reply(
            self.0
                .put(&crate::request_context::of(&req), req.into_inner())
                .await,
        )
    }

    async fn delete_range(&self, req: Request<DeleteRangeRequest>) -> Reply<DeleteRangeResponse> {
        learner_guard(&self.0)?;
        reply(
            self.0
                .delete_range(&crate::request_context::of(&req), req.into_inner())
                .await,
        )
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Reply<TxnResponse> {
        learner_guard(&self.0)?;
        reply(
            self.0
                .txn(&crate::request_context::of(&req), req.into_inner())
                .await,
        )
    }

    async fn compact(&self, req: Request<CompactionRequest>) -> Reply<CompactionResponse> {
        learner_guard(&self.0)?;
        reply(
            self.0
                .compact(&crate::request_context::of(&req), req.into_inner())
                .await,
        )
    }
}

/// Maintenance service.
#[derive(Clone)]
pub struct MaintenanceService(pub Etcd);

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Reply<AlarmResponse> {
        learner_guard(&self.0)?;
        let ctx = crate::request_context::of(&req);
        reply(self.0.alarm(&ctx, req.into_inner()).await)
    }

    async fn status(&self, req: Request<StatusRequest>) -> Reply<StatusResponse> {
        Ok(Response::new(
            self.0.status(&crate::request_context::of(&req)),
        ))
    }

    async fn defragment(&self, req: Request<DefragmentRequest>) -> Reply<DefragmentResponse> {
        learner_guard(&self.0)?;
        tracing::info!("defragmenting the store (online: reads and writes continue)");
        let r = blocking(&self.0, &req, "defragment", Etcd::defragment).await?;
        Ok(Response::new(r))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Reply<HashResponse> {
        learner_guard(&self.0)?;
        Ok(Response::new(
            blocking(&self.0, &req, "hash", Etcd::hash).await?,
        ))
    }

    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Reply<HashKvResponse> {
        learner_guard(&self.0)?;
        reply(
            self.0
                .hash_kv(&crate::request_context::of(&req), req.into_inner().revision),
        )
    }

    type SnapshotStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

    async fn snapshot(&self, req: Request<SnapshotRequest>) -> Reply<Self::SnapshotStream> {
        learner_guard(&self.0)?;
        let ctx = crate::request_context::of(&req);
        self.0.check_maintenance_admin(&ctx).map_err(to_status)?;
        let db = blocking(&self.0, &req, "snapshot", Etcd::snapshot).await?;
        // Chunks are read as the client takes them (a few in flight).
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            for chunk in db {
                if tx.blocking_send(chunk.map_err(to_status)).is_err() {
                    tracing::warn!("the client went away during a database snapshot");
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn move_leader(&self, req: Request<MoveLeaderRequest>) -> Reply<MoveLeaderResponse> {
        learner_guard(&self.0)?;
        reply(
            self.0
                .move_leader(
                    &crate::request_context::of(&req),
                    req.into_inner().target_id,
                )
                .await,
        )
    }

    async fn downgrade(&self, _req: Request<DowngradeRequest>) -> Reply<DowngradeResponse> {
        learner_guard(&self.0)?;
        Err(unsupported("downgrade"))
    }
}

/// Cluster service.
#[derive(Clone)]
pub struct ClusterService(pub Etcd);

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(&self, req: Request<MemberAddRequest>) -> Reply<MemberAddResponse> {
        learner_guard(&self.0)?;
        reply(
            self.0
                .member_add(&crate::request_context::of(&req), req.into_inner())
                .await,
        )
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Reply<MemberRemoveResponse> {
        learner_guard(&self.0)?;
        reply(
            self.0
                .member_remove(&crate::request_context::of(&req), req.into_inner().id)
                .await,
        )
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Reply<MemberUpdateResponse> {
        learner_guard(&self.0)?;
        reply(
            self.0
                .member_update(&crate::request_context::of(&req), req.into_inner())
                .await,
        )
    }

    async fn member_list(&self, req: Request<MemberListRequest>) -> Reply<MemberListResponse> {
        learner_guard(&self.0)?;
        reply(
            self.0
                .member_list(
                    &crate::request_context::of(&req),
                    req.into_inner().linearizable,
                )
                .await,
        )
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Reply<MemberPromoteResponse> {
        learner_guard(&self.0)?;
        reply(
            self.0
                .member_promote(&crate::request_context::of(&req), req.into_inner().id)
                .await,
        )
    }
}
