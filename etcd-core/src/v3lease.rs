//! The Lease API of [`Etcd`] (etcd's `v3_server.go` LeaseGrant, LeaseRevoke,
//! LeaseRenew, LeaseTimeToLive, LeaseLeases).
//!
//! Grant and revoke go through raft. Renew (keepalive) and TimeToLive are
//! served by the primary lessor, i.e. the raft leader, after this member
//! has applied everything committed when the call arrived (etcd's
//! `waitAppliedIndex`), so a keepalive right after a grant finds the lease.
//! A renewal also confirms leadership first with a ReadIndex round, as
//! etcd 3.5.8 does: a deposed leader must not renew what the new leader
//! has revoked.
//! A follower forwards them to the leader over the peer port
//! ([`crate::server`]'s peer queries; etcd uses its peer HTTP API). Without a leader
//! the member waits for one up to the request timeout and then answers
//! "no leader".

use crate::apply::Applied;
use crate::lessor::Renew;
use crate::pb::etcdserverpb::{
    LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::raft_request::Op;
use crate::request_context::RequestContext;
use crate::{Error, Etcd, Result};
use etcd_raft_node::Role;
use std::time::Duration;
use tokio::time::Instant;

/// How often a non-primary member looks again for leadership.
const PRIMARY_POLL: Duration = Duration::from_millis(20);

impl Etcd {
    /// Lease.LeaseGrant. An id of 0 lets the server choose one (positive);
    /// a TTL below the minimum (1.5 election timeouts) is raised to it.
    pub async fn lease_grant(
        &self,
        ctx: &RequestContext,
        mut r: LeaseGrantRequest,
    ) -> Result<LeaseGrantResponse> {
        while r.id == 0 {
            r.id = (self.next_request_id() & (i64::MAX as u64)) as i64;
        }
        self.check_quota(ctx, crate::quota::Cost::LeaseGrant)
            .await?;
        match self.propose(ctx, Op::LeaseGrant(r)).await? {
            Applied::LeaseGrant(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => unreachable!("a lease grant applies as a lease grant"),
        }
    }

    /// Lease.LeaseRevoke: deletes the lease and, at one revision, its keys.
    pub async fn lease_revoke(
        &self,
        ctx: &RequestContext,
        r: LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse> {
        match self.propose(ctx, Op::LeaseRevoke(r)).await? {
            Applied::LeaseRevoke(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => unreachable!("a lease revoke applies as a lease revoke"),
        }
    }

    /// One keepalive of Lease.LeaseKeepAlive: the lease's TTL, or
    /// `LeaseNotFound` for an unknown lease and for an expired one (once
    /// its revoke is applied, as etcd waits for it).
    pub async fn lease_renew(&self, ctx: &RequestContext, id: i64) -> Result<i64> {
        let deadline = Instant::now() + ctx.wait_limit(self.config().request_timeout());
        loop {
            let r = if self.forwards_to_leader() {
                crate::server::forward_lease_renew(self, id).await
            } else {
                self.lease_renew_as_leader(ctx, id).await
            };
            match r {
                // The leader changed under the request: ask the new one.
                Err(Error::LeaderChanged) if Instant::now() < deadline => {
                    tokio::time::sleep(PRIMARY_POLL).await;
                }
                r => return r,
            }
        }
    }

    /// Confirms that this member still leads before its lessor renews a
    /// lease (etcd 3.5's `ensureLeadership`, etcd#15247). A leader paused
    /// or cut off past an election may still believe it leads while
    /// another leader's lessor has let the lease expire and revoked it; a
    /// renewal here would tell the client its lease lives when it is gone.
    /// One ReadIndex round (a heartbeat acknowledged by a quorum) settles
    /// it: a deposed member fails it with `LeaderChanged`, and the caller
    /// asks the new leader. A single member has no one to lose to.
    async fn ensure_leadership(&self, ctx: &RequestContext) -> Result<()> {
        if self.transport().is_none() {
            return Ok(());
        }
        self.linearizable_read_notify(ctx).await?;
        if self.raft_status().role != Role::Leader {
            return Err(Error::LeaderChanged);
        }
        Ok(())
    }

    /// Whether lease requests go to another member (this one has peers
    /// and does not lead).
    fn forwards_to_leader(&self) -> bool {
        self.transport().is_some() && self.raft_status().role != Role::Leader
    }

    /// [`Etcd::lease_renew`] on the member that holds the primary lessor.
    pub(crate) async fn lease_renew_as_leader(&self, ctx: &RequestContext, id: i64) -> Result<i64> {
        let deadline = Instant::now() + ctx.wait_limit(self.config().request_timeout());
        loop {
            self.wait_primary(deadline).await?;
            self.ensure_leadership(ctx).await?;
            match self.lessor().renew(id) {
                Renew::Renewed {
                    ttl,
                    clear_checkpoint,
                } => {
                    // etcd 3.5's Renew waits for this checkpoint (`le.cp`)
                    // before answering: answered first, a leader killed
                    // in between left the old remaining TTL for the next
                    // leader, which expired the lease early (chaos seed 2).
                    if clear_checkpoint {
                        let clear = Op::LeaseCheckpoint(LeaseCheckpointRequest {
                            checkpoints: vec![LeaseCheckpoint {
                                id,
                                remaining_ttl: 0,
                            }],
                        });
                        self.propose(&RequestContext::LOCAL.with_timeout(ctx), clear)
                            .await?;
                    }
                    return Ok(ttl);
                }
                Renew::NotFound => return Err(Error::LeaseNotFound),
                Renew::NotPrimary => continue,
                Renew::Expired => {
                    // Its revoke is on the way: wait for the next apply.
                    let mut applied = self.applied_index();
                    applied.borrow_and_update();
                    if !self.lessor().exists(id) {
                        return Err(Error::LeaseNotFound);
                    }
                    match tokio::time::timeout_at(deadline, applied.changed()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Err(Error::Stopped),
                        Err(_) => return Err(Error::Timeout),
                    }
                }
            }
        }
    }

    /// Lease.LeaseTimeToLive; `LeaseNotFound` for an unknown lease (the
    /// gRPC layer answers that with TTL -1, as etcd does).
    pub async fn lease_time_to_live(
        &self,
        ctx: &RequestContext,
        r: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        if self.forwards_to_leader() {
            match crate::server::forward_lease_time_to_live(self, r).await {
                Err(Error::LeaderChanged) => {}
                r => return r,
            }
        }
        self.lease_time_to_live_as_leader(ctx, r).await
    }

    /// [`Etcd::lease_time_to_live`] on the member that holds the primary
    /// lessor.
    pub(crate) async fn lease_time_to_live_as_leader(
        &self,
        ctx: &RequestContext,
        r: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        let deadline = Instant::now() + ctx.wait_limit(self.config().request_timeout());
        self.wait_primary(deadline).await?;
        let st = self
            .lessor()
            .time_to_live(r.id)
            .ok_or(Error::LeaseNotFound)?;
        let mut resp = LeaseTimeToLiveResponse {
            header: None,
            id: r.id,
            ttl: st.remaining,
            granted_ttl: st.granted,
            keys: if r.keys {
                st.keys.into_iter().collect()
            } else {
                Vec::new()
            },
        };
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// Lease.LeaseLeases: every lease this member knows.
    pub async fn lease_leases(&self, _ctx: &RequestContext) -> Result<LeaseLeasesResponse> {
        let mut resp = LeaseLeasesResponse {
            header: None,
            leases: self
                .lessor()
                .leases()
                .into_iter()
                .map(|id| LeaseStatus { id })
                .collect(),
        };
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// Waits until this member's lessor is primary and has applied what
    /// was committed at the call (etcd's `waitAppliedIndex`).
    async fn wait_primary(&self, deadline: Instant) -> Result<()> {
        while !self.lessor().is_primary() {
            if Instant::now() >= deadline {
                return Err(Error::NoLeader);
            }
            tokio::time::sleep(PRIMARY_POLL).await;
        }
        let commit = self.raft_status().commit_index;
        let mut applied = self.applied_index();
        let waited = tokio::time::timeout_at(deadline, async {
            applied.wait_for(|a| *a >= commit).await.map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }
}
