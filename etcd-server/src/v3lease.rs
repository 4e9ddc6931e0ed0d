//! The Lease gRPC service (etcd's `v3rpc/lease.go`) over [`Etcd`].
//!
//! As in etcd: a keepalive or TimeToLive of an unknown (or expired) lease
//! is not an error: keepalive answers TTL 0, TimeToLive answers TTL -1.
//! Keepalive requests of one stream are answered in order, one at a time.

use crate::rpc::etcdserverpb::lease_server::Lease;
use crate::status::learner_guard;
use crate::status::to_status;
use etcd_core::pb::etcdserverpb::*;
use etcd_core::{Error, Etcd};
use futures::Stream;
use std::pin::Pin;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status, Streaming};

type Reply<T> = Result<Response<T>, Status>;

/// Lease service.
#[derive(Clone)]
pub struct LeaseService(pub Etcd);

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(&self, req: Request<LeaseGrantRequest>) -> Reply<LeaseGrantResponse> {
        learner_guard(&self.0)?;
        self.0
            .lease_grant(&crate::request_context::of(&req), req.into_inner())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    async fn lease_revoke(&self, req: Request<LeaseRevokeRequest>) -> Reply<LeaseRevokeResponse> {
        learner_guard(&self.0)?;
        self.0
            .lease_revoke(&crate::request_context::of(&req), req.into_inner())
            .await
            .map(Response::new)
            .map_err(to_status)
    }

    type LeaseKeepAliveStream =
        Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Reply<Self::LeaseKeepAliveStream> {
        learner_guard(&self.0)?;
        let ctx = crate::request_context::of(&req);
        let mut input = req.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let etcd = self.0.clone();
        tokio::spawn(async move {
            while let Some(r) = input.next().await {
                let out = match r {
                    Ok(r) => match etcd.lease_renew(&ctx, r.id).await {
                        Ok(ttl) => Ok(keepalive(&etcd, r.id, ttl)),
                        Err(Error::LeaseNotFound) => Ok(keepalive(&etcd, r.id, 0)),
                        Err(e) => Err(to_status(e)),
                    },
                    Err(status) => Err(status),
                };
                let failed = out.is_err();
                if tx.send(out).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(crate::status::until_stopping(
            &self.0,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Reply<LeaseTimeToLiveResponse> {
        learner_guard(&self.0)?;
        let ctx = crate::request_context::of(&req);
        let r = req.into_inner();
        let id = r.id;
        match self.0.lease_time_to_live(&ctx, r).await {
            Ok(resp) => Ok(Response::new(resp)),
            Err(Error::LeaseNotFound) => Ok(Response::new(LeaseTimeToLiveResponse {
                header: Some(self.0.header(self.0.store().current_revision())),
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            })),
            Err(e) => Err(to_status(e)),
        }
    }

    async fn lease_leases(&self, req: Request<LeaseLeasesRequest>) -> Reply<LeaseLeasesResponse> {
        learner_guard(&self.0)?;
        self.0
            .lease_leases(&crate::request_context::of(&req))
            .await
            .map(Response::new)
            .map_err(to_status)
    }
}

fn keepalive(etcd: &Etcd, id: i64, ttl: i64) -> LeaseKeepAliveResponse {
    LeaseKeepAliveResponse {
        header: Some(etcd.header(etcd.store().current_revision())),
        id,
        ttl,
    }
}
