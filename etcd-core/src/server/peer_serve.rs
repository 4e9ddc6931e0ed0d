//! Answering other members' questions (etcd's peer HTTP handlers,
//! `api/etcdhttp/peer.go` and `lease/leasehttp`); the questions are in
//! [`peer_query`](super::peer_query).

use super::etcd::{Etcd, Inner};
use super::peer_query::{
    Ask, LeaseInternalRequest, LeaseInternalResponse, PeerRequest, PeerResponse,
};
use crate::pb::etcdserverpb::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};
use crate::request_context::RequestContext;
use crate::Error;
use etcd_raft_node::rafthttp::{EtcdHttpRequest, EtcdHttpResponse};
use prost::Message as _;
use std::sync::{Arc, Weak};

/// Installs this member's answers on its peer transport.
pub(super) fn install(etcd: &Etcd) {
    let Some(t) = etcd.transport() else {
        return;
    };
    // Weak: the transport belongs to the member it would keep alive.
    let weak: Weak<Inner> = Arc::downgrade(&etcd.inner);
    let weak_http = weak.clone();
    t.set_etcd_http_handler(Arc::new(move |req| {
        let weak = weak_http.clone();
        Box::pin(async move {
            match weak.upgrade() {
                Some(inner) => answer_etcd(&Etcd { inner }, req).await,
                None => text(500, Error::Stopped.to_string()),
            }
        })
    }));
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

fn text(status: u16, body: String) -> EtcdHttpResponse {
    EtcdHttpResponse {
        status,
        content_type: "text/plain; charset=utf-8",
        body: (body + "\n").into_bytes(),
    }
}

fn protobuf(m: &impl prost::Message) -> EtcdHttpResponse {
    EtcdHttpResponse {
        status: 200,
        content_type: "application/protobuf",
        body: m.encode_to_vec(),
    }
}

/// The members as etcd's JSON array (each as etcd's `members` bucket holds it).
fn members_json(etcd: &Etcd) -> EtcdHttpResponse {
    let members: Vec<Vec<u8>> = etcd
        .members()
        .iter()
        .map(crate::bbolt_layout::member_to_json)
        .collect();
    let mut body = b"[".to_vec();
    body.extend(members.join(&b","[..]));
    body.push(b']');
    EtcdHttpResponse {
        status: 200,
        content_type: "application/json",
        body,
    }
}

/// etcd's peer HTTP API as etcd 3.4's handlers answer it (`leasehttp`,
/// `api/etcdhttp/peer.go`), for etcd members of a mixed cluster (see
/// `etcd_raft_node::rafthttp`): a follower running etcd forwards its
/// clients' lease keep-alives, TimeToLive and promotes to this member when
/// it leads.
async fn answer_etcd(etcd: &Etcd, req: EtcdHttpRequest) -> EtcdHttpResponse {
    const PROMOTE: &str = "/members/promote/";
    let ctx = &RequestContext::LOCAL;
    match (req.method.as_str(), req.path.as_str()) {
        ("POST", "/leases") => {
            let Ok(r) = LeaseKeepAliveRequest::decode(&req.body[..]) else {
                return text(400, "error unmarshalling request".into());
            };
            match etcd.lease_renew_as_leader(ctx, r.id).await {
                Ok(ttl) => protobuf(&LeaseKeepAliveResponse {
                    id: r.id,
                    ttl,
                    header: None,
                }),
                Err(Error::LeaseNotFound) => text(404, "lease not found".into()),
                Err(e) => text(400, e.to_string()),
            }
        }
        ("POST", "/leases/internal") => {
            let Ok(LeaseInternalRequest {
                lease_time_to_live_request: Some(r),
            }) = LeaseInternalRequest::decode(&req.body[..])
            else {
                return text(400, "error unmarshalling request".into());
            };
            match etcd.lease_time_to_live_as_leader(ctx, r).await {
                Ok(t) => protobuf(&LeaseInternalResponse {
                    lease_time_to_live_response: Some(t),
                }),
                Err(Error::LeaseNotFound) => text(404, "lease not found".into()),
                Err(e) => text(400, e.to_string()),
            }
        }
        ("POST", p) if p.starts_with(PROMOTE) => {
            let Ok(id) = p[PROMOTE.len()..].parse::<u64>() else {
                return text(
                    400,
                    format!("member {} not found in cluster", &p[PROMOTE.len()..]),
                );
            };
            match etcd.promote_as_leader(ctx, id).await {
                Ok(_) => members_json(etcd),
                Err(Error::MemberNotFound) => text(404, "membership: ID not found".into()),
                Err(Error::MemberNotLearner) => {
                    text(412, "membership: can only promote a learner member".into())
                }
                Err(e @ Error::LearnerNotReady) => text(412, e.to_string()),
                Err(e) => text(500, e.to_string()),
            }
        }
        ("GET", "/members") => members_json(etcd),
        (_, "/leases" | "/leases/internal" | "/members") => text(405, "Method Not Allowed".into()),
        _ => text(404, "404 page not found".into()),
    }
}
