//! Asking other members (etcd's `cluster_util.go` and `leasehttp`
//! clients): the cluster when joining, and the leader for promotes and
//! lease keepalives; the questions are in [`peer_query`](super::peer_query).

use super::etcd::Etcd;
use super::peer_query::{Ask, PeerRequest, PeerResponse, QUERY_TIMEOUT};
use crate::config::{peer_addr, Config};
use crate::error::StartError;
use crate::membership::{self, Member};
use crate::pb::etcdserverpb::{
    HashKvResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, MemberPromoteResponse,
};
use crate::{Error, Result};
use etcd_raft_node::Role;
use prost::Message as _;
use std::time::Duration;

/// Asks the members of `initial` (from --initial-cluster) for the
/// cluster's id and members (the join path of [`crate::bootstrap`]).
pub(crate) fn fetch_cluster(
    cfg: &Config,
    tls: Option<&etcd_raft_node::PeerTlsHandle>,
    initial: &[Member],
) -> Result<(u64, Vec<Member>), StartError> {
    let req = PeerRequest {
        ask: Some(Ask::Cluster(true)),
    }
    .encode_to_vec();
    let mut failures = Vec::new();
    for round in 0..3 {
        if round > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        failures.clear();
        for m in initial.iter().filter(|m| m.name != cfg.name) {
            for url in &m.peer_urls {
                let attempt = peer_addr(url)
                    .map_err(|e| e.to_string())
                    .and_then(|addr| {
                        etcd_raft_node::peer_query::query(&addr, tls, 0, &req, QUERY_TIMEOUT)
                            .map_err(|e| e.to_string())
                    })
                    .and_then(|bytes| PeerResponse::decode(&bytes[..]).map_err(|e| e.to_string()));
                let mine = crate::bootstrap::sorted(&cfg.initial_advertise_peer_urls);
                match attempt {
                    // A member that has not applied our addition yet does
                    // not list us: ask the others, or again.
                    Ok(r)
                        if r.error.is_empty()
                            && !r
                                .members
                                .iter()
                                .any(|m| crate::bootstrap::sorted(&m.peer_urls) == mine) =>
                    {
                        failures.push(format!("{url}: does not list this member (yet)"));
                    }
                    Ok(r) if r.error.is_empty() => {
                        tracing::info!(
                            from = %url,
                            cluster = %membership::format_id(r.cluster_id),
                            members = r.members.len(),
                            "fetched the cluster's members"
                        );
                        return Ok((r.cluster_id, r.members));
                    }
                    Ok(r) => failures.push(format!("{url}: {}", r.error)),
                    Err(e) => failures.push(format!("{url}: {e}")),
                }
            }
        }
    }
    Err(StartError::Config(format!(
        "--initial-cluster-state=existing: cannot fetch the cluster's members from any peer \
         in --initial-cluster ({})",
        if failures.is_empty() {
            "it names no other member".to_string()
        } else {
            failures.join("; ")
        }
    )))
}

/// Asks member `m` `ask` over its first peer URL (blocking, bounded by
/// the query timeout).
fn ask_member(etcd: &Etcd, m: &Member, ask: Ask) -> Result<PeerResponse> {
    let tls = etcd.transport().and_then(|t| t.tls());
    ask_peer(tls.as_ref(), etcd.cluster_id(), m, ask)
}

/// [`ask_member`] for callers without an [`Etcd`] (the transport's
/// hooks, which exist before it): `tls` and `cluster_id` given.
pub(crate) fn ask_peer(
    tls: Option<&etcd_raft_node::PeerTlsHandle>,
    cluster_id: u64,
    m: &Member,
    ask: Ask,
) -> Result<PeerResponse> {
    let addr = m
        .peer_urls
        .first()
        .ok_or_else(|| Error::Internal("no peer URL".into()))
        .and_then(|u| peer_addr(u).map_err(Error::Internal))?;
    let req = PeerRequest { ask: Some(ask) }.encode_to_vec();
    let bytes = etcd_raft_node::peer_query::query(&addr, tls, cluster_id, &req, QUERY_TIMEOUT)
        .map_err(|e| Error::Internal(e.to_string()))?;
    answer(&bytes, "a peer")
}

/// A peer's answer: its response, or the etcd error it carries.
fn answer(bytes: &[u8], from: &str) -> Result<PeerResponse> {
    let r = PeerResponse::decode(bytes)
        .map_err(|e| Error::Internal(format!("unreadable answer from {from}: {e}")))?;
    if r.error.is_empty() {
        Ok(r)
    } else {
        Err(Error::from_wire(r.error_code, &r.error))
    }
}

/// One round trip to member `m` (blocking): how long an empty question
/// took to be answered.
pub(crate) fn probe(etcd: &Etcd, m: &Member) -> Result<Duration> {
    let started = std::time::Instant::now();
    ask_member(etcd, m, Ask::Probe(true))?;
    Ok(started.elapsed())
}

/// Asks every other member for its HashKV at `rev` (blocking; one
/// query per member, each bounded by the query timeout): (member, answer).
pub(crate) fn peer_hash_kvs(etcd: &Etcd, rev: i64) -> Vec<(u64, Result<HashKvResponse>)> {
    let me = etcd.member_id();
    etcd.members()
        .into_iter()
        .filter(|m| m.id != me)
        .map(|m| {
            let hash =
                ask_member(etcd, &m, Ask::HashKv(rev)).map(|r| r.hash_kv.unwrap_or_default());
            (m.id, hash)
        })
        .collect()
}

/// Asks the current leader `ask` (waiting for a leader up to the request
/// timeout).
async fn ask_leader(etcd: &Etcd, ask: Ask) -> Result<PeerResponse> {
    let deadline = tokio::time::Instant::now() + etcd.config().request_timeout();
    let leader = loop {
        let st = etcd.raft_status();
        if st.leader_id != 0 && st.role != Role::Leader {
            break st.leader_id;
        }
        if st.role == Role::Leader {
            // Leadership came here meanwhile: the caller answers itself.
            return Err(Error::LeaderChanged);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::NoLeader);
        }
        tokio::time::sleep(etcd.config().heartbeat_interval).await;
    };
    let addr = etcd
        .inner
        .cluster
        .read()
        .member(leader)
        .and_then(|m| m.peer_urls.first().cloned())
        .ok_or(Error::NoLeader)
        .and_then(|u| peer_addr(&u).map_err(Error::Internal))?;
    let cluster_id = etcd.cluster_id();
    let tls = etcd.transport().and_then(|t| t.tls());
    if etcd.transport().is_some_and(|t| t.is_etcd_peer(leader)) {
        // The leader runs etcd (a mixed cluster): its peer HTTP API.
        let from = etcd.member_id();
        return tokio::task::spawn_blocking(move || {
            ask_etcd(&addr, tls.as_ref(), (cluster_id, from), ask)
        })
        .await
        .map_err(|e| Error::Internal(format!("query task failed: {e}")))?;
    }
    let req = PeerRequest { ask: Some(ask) }.encode_to_vec();
    let bytes = tokio::task::spawn_blocking(move || {
        etcd_raft_node::peer_query::query(&addr, tls.as_ref(), cluster_id, &req, QUERY_TIMEOUT)
    })
    .await
    .map_err(|e| Error::Internal(format!("query task failed: {e}")))?
    .map_err(|e| {
        tracing::warn!(leader = %membership::format_id(leader), "forwarding to the leader failed: {e}");
        Error::Timeout
    })?;
    answer(&bytes, "the leader")
}

/// Asks an etcd member `ask` through etcd's peer HTTP API, as etcd 3.4's
/// followers ask their leader (`leasehttp.RenewHTTP`,
/// `TimeToLiveHTTP`, `promoteMemberHTTP`). Blocking.
fn ask_etcd(
    addr: &str,
    tls: Option<&etcd_raft_node::PeerTlsHandle>,
    ids: (u64, u64),
    ask: Ask,
) -> Result<PeerResponse> {
    use super::peer_query::{LeaseInternalRequest, LeaseInternalResponse};
    use crate::pb::etcdserverpb::{LeaseKeepAliveRequest, LeaseKeepAliveResponse};
    let (path, body) = match &ask {
        Ask::LeaseRenew(id) => (
            "/leases".to_string(),
            LeaseKeepAliveRequest { id: *id }.encode_to_vec(),
        ),
        Ask::LeaseTimeToLive(r) => (
            "/leases/internal".to_string(),
            LeaseInternalRequest {
                lease_time_to_live_request: Some(*r),
            }
            .encode_to_vec(),
        ),
        Ask::Promote(id) => (format!("/members/promote/{id}"), Vec::new()),
        other => {
            return Err(Error::Internal(format!(
                "{other:?} is not asked of etcd members"
            )))
        }
    };
    let (status, body) =
        etcd_raft_node::rafthttp::request(addr, tls, ids, "POST", &path, &body, QUERY_TIMEOUT)
            .map_err(|e| {
                tracing::warn!("forwarding to the leader (etcd) failed: {e}");
                Error::Timeout
            })?;
    let text = String::from_utf8_lossy(&body);
    match (status, ask) {
        (200, Ask::LeaseRenew(id)) => {
            let r = LeaseKeepAliveResponse::decode(&body[..])
                .map_err(|e| Error::Internal(format!("the leader's keep-alive answer: {e}")))?;
            if r.id != id {
                return Err(Error::Internal("lease: renew id mismatch".into()));
            }
            Ok(PeerResponse {
                ttl: r.ttl,
                ..Default::default()
            })
        }
        (200, Ask::LeaseTimeToLive(_)) => {
            let r = LeaseInternalResponse::decode(&body[..])
                .map_err(|e| Error::Internal(format!("the leader's TimeToLive answer: {e}")))?;
            Ok(PeerResponse {
                lease_ttl: r.lease_time_to_live_response,
                ..Default::default()
            })
        }
        (200, Ask::Promote(_)) => Ok(PeerResponse {
            promote: Some(Default::default()),
            ..Default::default()
        }),
        (404, Ask::LeaseRenew(_) | Ask::LeaseTimeToLive(_)) => Err(Error::LeaseNotFound),
        (404, Ask::Promote(_)) => Err(Error::MemberNotFound),
        (412, Ask::Promote(_)) if text.contains("in sync with leader") => {
            Err(Error::LearnerNotReady)
        }
        (412, Ask::Promote(_)) => Err(Error::MemberNotLearner),
        // etcd's lessor when it no longer leads: the caller retries.
        (_, _) if text.contains("not a primary lessor") => Err(Error::LeaderChanged),
        (status, _) => Err(Error::Internal(format!(
            "the leader (etcd) answered {status}: {}",
            text.trim()
        ))),
    }
}

/// Forwards MemberPromote to the leader.
pub(crate) async fn forward_promote(etcd: &Etcd, id: u64) -> Result<MemberPromoteResponse> {
    let r = ask_leader(etcd, Ask::Promote(id)).await?;
    let mut p = r.promote.unwrap_or_default();
    etcd.fill(&mut p.header);
    Ok(p)
}

/// Forwards one lease keepalive to the leader; returns the TTL.
pub(crate) async fn forward_lease_renew(etcd: &Etcd, id: i64) -> Result<i64> {
    Ok(ask_leader(etcd, Ask::LeaseRenew(id)).await?.ttl)
}

/// Forwards LeaseTimeToLive to the leader.
pub(crate) async fn forward_lease_time_to_live(
    etcd: &Etcd,
    r: LeaseTimeToLiveRequest,
) -> Result<LeaseTimeToLiveResponse> {
    let mut t = ask_leader(etcd, Ask::LeaseTimeToLive(r))
        .await?
        .lease_ttl
        .unwrap_or_default();
    etcd.fill(&mut t.header);
    Ok(t)
}
