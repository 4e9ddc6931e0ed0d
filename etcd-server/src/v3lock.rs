//! The Lock and Election gRPC services (etcd's `api/v3lock` and
//! `api/v3election`) over [`Etcd`].
//!
//! etcd's servers run these through an in-process clientv3, so every error
//! reaches the client as gRPC code Unknown with the error's text; so do
//! these (see [`crate::status::concurrency_status`]).

use crate::rpc::v3electionpb::election_server::Election;
use crate::rpc::v3lockpb::lock_server::Lock;
use crate::status::concurrency_status;
use crate::status::learner_guard;
use etcd_core::pb::v3electionpb::*;
use etcd_core::pb::v3lockpb::*;
use etcd_core::Etcd;
use futures::Stream;
use std::pin::Pin;
use tonic::{Request, Response, Status};

type Reply<T> = Result<Response<T>, Status>;

fn reply<T>(r: etcd_core::Result<T>) -> Reply<T> {
    r.map(Response::new).map_err(concurrency_status)
}

/// Lock service.
#[derive(Clone)]
pub struct LockService(pub Etcd);

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Reply<LockResponse> {
        learner_guard(&self.0)?;
        reply(
            self.0
                .lock(&crate::request_context::of(&req), req.into_inner())
                .await,
        )
    }

    async fn unlock(&self, req: Request<UnlockRequest>) -> Reply<UnlockResponse> {
        learner_guard(&self.0)?;
        reply(
            self.0
                .unlock(&crate::request_context::of(&req), req.into_inner())
                .await,
        )
    }
}

/// Election service.
#[derive(Clone)]
pub struct ElectionService(pub Etcd);

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(&self, req: Request<CampaignRequest>) -> Reply<CampaignResponse> {
        learner_guard(&self.0)?;
        reply(
            self.0
                .campaign(&crate::request_context::of(&req), req.into_inner())
                .await,
        )
    }

    async fn proclaim(&self, req: Request<ProclaimRequest>) -> Reply<ProclaimResponse> {
        learner_guard(&self.0)?;
        reply(
            self.0
                .proclaim(&crate::request_context::of(&req), req.into_inner())
                .await,
        )
    }

    async fn leader(&self, req: Request<LeaderRequest>) -> Reply<LeaderResponse> {
        learner_guard(&self.0)?;
        reply(
            self.0
                .leader(&crate::request_context::of(&req), req.into_inner())
                .await,
        )
    }

    type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

    async fn observe(&self, req: Request<LeaderRequest>) -> Reply<Self::ObserveStream> {
        learner_guard(&self.0)?;
        let rx = self
            .0
            .observe(&crate::request_context::of(&req), req.into_inner());
        let stream =
            tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |r| {
                r.map_err(concurrency_status)
            });
        Ok(Response::new(crate::status::until_stopping(
            &self.0, stream,
        )))
    }

    async fn resign(&self, req: Request<ResignRequest>) -> Reply<ResignResponse> {
        learner_guard(&self.0)?;
        reply(
            self.0
                .resign(&crate::request_context::of(&req), req.into_inner())
                .await,
        )
    }
}
