//! Answering other members' questions (etcd's peer HTTP handlers,
//! `api/etcdhttp/peer.go` and `lease/leasehttp`); the questions are in
//! [`peer_query`](super::peer_query).

use super::etcd::{Etcd, Inner};
use super::peer_query::{Ask, PeerRequest, PeerResponse};
use crate::request_context::RequestContext;
use crate::Error;
use prost::Message as _;
use std::sync::{Arc, Weak};

/// Installs this member's answers on its peer transport.
pub(super) fn install(etcd: &Etcd) {
    let Some(t) = etcd.transport() else {
        return;
    };
    // Weak: the transport belongs to the member it would keep alive.
    let weak: Weak<Inner> = Arc::downgrade(&etcd.inner);
    t.set_query_handler(Arc::new(move |req| {
        let weak = weak.clone();
        Box::pin(async move {
            let resp = match weak.upgrade() {
                Some(inner) => answer(&Etcd { inner }, &req).await,
                None => error_response(Error::Stopped),
            };
            resp.encode_to_vec()
        })
    }));
}

pub(super) fn error_response(e: Error) -> PeerResponse {
    PeerResponse {
        error: e.to_string(),
        error_code: e.wire_code(),
        ..Default::default()
    }
}

async fn answer(etcd: &Etcd, req: &[u8]) -> PeerResponse {
    let Ok(PeerRequest { ask: Some(ask) }) = PeerRequest::decode(req) else {
        return error_response(Error::Internal("unreadable peer request".into()));
    };
    let r = match ask {
        Ask::Cluster(_) => Ok(PeerResponse {
            cluster_id: etcd.cluster_id(),
            members: etcd.members(),
            ..Default::default()
        }),
        Ask::Promote(id) => etcd
            .promote_as_leader(&RequestContext::LOCAL, id)
            .await
            .map(|p| PeerResponse {
                promote: Some(p),
                ..Default::default()
            }),
        Ask::LeaseRenew(id) => etcd
            .lease_renew_as_leader(&RequestContext::LOCAL, id)
            .await
            .map(|ttl| PeerResponse {
                ttl,
                ..Default::default()
            }),
        Ask::Probe(_) => Ok(PeerResponse::default()),
        Ask::HashKv(rev) => etcd
            .hash_kv(&RequestContext::LOCAL, rev)
            .map(|h| PeerResponse {
                hash_kv: Some(h),
                ..Default::default()
            }),
        Ask::LeaseTimeToLive(r) => etcd
            .lease_time_to_live_as_leader(&RequestContext::LOCAL, r)
            .await
            .map(|t| PeerResponse {
                lease_ttl: Some(t),
                ..Default::default()
            }),
    };
    r.unwrap_or_else(error_response)
}
