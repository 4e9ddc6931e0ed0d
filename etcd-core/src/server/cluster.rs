//! The Cluster API and leadership operations of a member (etcd's
//! `AddMember`, `RemoveMember`, `UpdateMember`, `PromoteMember`,
//! `MoveLeader` in `server.go`).
//!
//! Checks made before proposing, as etcd makes them with
//! `--strict-reconfig-check` (the default):
//! - adding a voter needs the started voters to stay a quorum of the
//!   larger cluster, and (on the leader) every voter recently active;
//! - removing a voter needs the remaining started voters to be a quorum,
//!   and (on the leader) enough active voters left;
//! - promoting needs the learner's replicated index within 90% of the
//!   leader's. Only the leader knows that; other members ask it
//!   ([`peer_client`](super::peer_client)).
//!
//! The change itself is validated again when applied (cluster.rs).

use super::etcd::Etcd;
use super::peer_client;
use crate::apply::Applied;
use crate::cluster::Change;
use crate::membership::{self, Member};
use crate::pb::etcdserverpb::{
    self as pb, MemberAddRequest, MemberAddResponse, MemberListResponse, MemberPromoteResponse,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse, MoveLeaderResponse,
};
use crate::raft_request::Op;
use crate::request_context::RequestContext;
use crate::{Error, Result};
use etcd_raft_node::Role;

/// A learner may be promoted once it has replicated this share of the
/// leader's log (etcd's `readyPercent`).
const LEARNER_READY_PERCENT: f64 = 0.9;

fn to_pb(m: Member) -> pb::Member {
    pb::Member {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

impl Etcd {
    /// Whether this member is a learner (a non-voting member).
    pub fn is_learner(&self) -> bool {
        self.raft_status().is_learner
    }

    /// The members as this member knows them; its own name and client
    /// URLs are shown even before its publication has been applied.
    fn members_pb(&self, members: Vec<Member>) -> Vec<pb::Member> {
        let me = self.inner.member_id;
        members
            .into_iter()
            .map(|mut m| {
                if m.id == me && m.name.is_empty() {
                    m.name = self.inner.cfg.name.clone();
                    m.client_urls = self.inner.cfg.advertise_client_urls.clone();
                }
                to_pb(m)
            })
            .collect()
    }

    /// The header of Cluster responses: etcd's `ClusterServer.header()`
    /// sets no revision.
    fn cluster_header(&self) -> crate::pb::etcdserverpb::ResponseHeader {
        self.header(0)
    }

    /// Cluster.MemberList; with `linearizable`, after a ReadIndex round.
    pub async fn member_list(
        &self,
        ctx: &RequestContext,
        linearizable: bool,
    ) -> Result<MemberListResponse> {
        if linearizable {
            self.linearizable_read_notify(ctx).await?;
        }
        let members = self.inner.cluster.read().members();
        Ok(MemberListResponse {
            header: Some(self.cluster_header()),
            members: self.members_pb(members),
        })
    }

    /// Cluster.MemberAdd: a new voter, or a learner.
    pub async fn member_add(
        &self,
        ctx: &RequestContext,
        r: MemberAddRequest,
    ) -> Result<MemberAddResponse> {
        self.check_admin(ctx).await?;
        check_urls(&r.peer_ur_ls)?;
        let id = loop {
            let id = rand::random::<u64>();
            let c = self.inner.cluster.read();
            if id != 0 && c.member(id).is_none() && !c.is_removed(id) {
                break id;
            }
        };
        let m = Member {
            id,
            name: String::new(),
            peer_urls: r.peer_ur_ls.clone(),
            client_urls: Vec::new(),
            is_learner: r.is_learner,
        };
        if self.inner.cfg.strict_reconfig_check && !r.is_learner {
            if !self.inner.cluster.read().ready_to_add_voter() {
                return Err(Error::NotEnoughStartedMembers);
            }
            self.check_all_voters_active().await?;
        }
        let (added, members) = self.propose_change(ctx, Change::Add(m)).await?;
        Ok(MemberAddResponse {
            header: Some(self.cluster_header()),
            member: added.map(to_pb),
            members: self.members_pb(members),
        })
    }

    /// Cluster.MemberRemove.
    pub async fn member_remove(
        &self,
        ctx: &RequestContext,
        id: u64,
    ) -> Result<MemberRemoveResponse> {
        self.check_admin(ctx).await?;
        let is_learner = {
            let c = self.inner.cluster.read();
            match c.member(id) {
                Some(m) => m.is_learner,
                None => return Err(Error::MemberNotFound),
            }
        };
        if self.inner.cfg.strict_reconfig_check && !is_learner {
            if !self.inner.cluster.read().ready_to_remove_voter(id) {
                return Err(Error::NotEnoughStartedMembers);
            }
            self.check_quorum_after_removing(id).await?;
        }
        let (_, members) = self.propose_change(ctx, Change::Remove(id)).await?;
        Ok(MemberRemoveResponse {
            header: Some(self.cluster_header()),
            members: self.members_pb(members),
        })
    }

    /// Cluster.MemberUpdate: new peer URLs for a member.
    pub async fn member_update(
        &self,
        ctx: &RequestContext,
        r: MemberUpdateRequest,
    ) -> Result<MemberUpdateResponse> {
        self.check_admin(ctx).await?;
        check_urls(&r.peer_ur_ls)?;
        match self.propose(ctx, Op::MemberUpdate(r)).await? {
            Applied::Members(_, members) => Ok(MemberUpdateResponse {
                header: Some(self.cluster_header()),
                members: self.members_pb(members),
            }),
            _ => unreachable!("a member update applies as a membership change"),
        }
    }

    /// Cluster.MemberPromote: a learner that caught up becomes a voter.
    pub async fn member_promote(
        &self,
        ctx: &RequestContext,
        id: u64,
    ) -> Result<MemberPromoteResponse> {
        self.check_admin(ctx).await?;
        if self.raft_status().role != Role::Leader {
            match peer_client::forward_promote(self, id).await {
                Err(Error::LeaderChanged) => {}
                r => return r,
            }
        }
        self.promote_as_leader(ctx, id).await
    }

    /// [`Etcd::member_promote`] on the leader.
    pub(crate) async fn promote_as_leader(
        &self,
        ctx: &RequestContext,
        id: u64,
    ) -> Result<MemberPromoteResponse> {
        self.check_learner_ready(id).await?;
        if self.inner.cfg.strict_reconfig_check && !self.inner.cluster.read().ready_to_promote() {
            return Err(Error::NotEnoughStartedMembers);
        }
        let (_, members) = self.propose_change(ctx, Change::Promote(id)).await?;
        Ok(MemberPromoteResponse {
            header: Some(self.cluster_header()),
            members: self.members_pb(members),
        })
    }

    /// Maintenance.MoveLeader: hands leadership to the voter `target`;
    /// returns once it leads.
    pub async fn move_leader(
        &self,
        ctx: &RequestContext,
        target: u64,
    ) -> Result<MoveLeaderResponse> {
        let me = self.inner.member_id;
        if self.raft_status().leader_id != me {
            return Err(Error::NotLeader);
        }
        let voter = self
            .inner
            .cluster
            .read()
            .member(target)
            .is_some_and(|m| !m.is_learner);
        if !voter {
            return Err(Error::BadLeaderTransferee);
        }
        // etcd answers an empty MoveLeaderResponse (no header).
        let response = || MoveLeaderResponse { header: None };
        if target == me {
            return Ok(response());
        }
        tracing::info!(
            from = %membership::format_id(me),
            to = %membership::format_id(target),
            "transferring leadership"
        );
        self.inner.node.transfer_leader(target);
        let deadline =
            tokio::time::Instant::now() + ctx.wait_limit(self.inner.cfg.request_timeout());
        let tick = self.inner.cfg.heartbeat_interval;
        while self.raft_status().leader_id != target {
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::LeaderTransferTimeout);
            }
            tokio::time::sleep(tick).await;
        }
        tracing::info!(leader = %membership::format_id(target), "leadership transferred");
        Ok(response())
    }

    /// Proposes a raft configuration change and waits until it applied.
    async fn propose_change(
        &self,
        ctx: &RequestContext,
        change: Change,
    ) -> Result<(Option<Member>, Vec<Member>)> {
        let id = self.next_request_id();
        let cc = change
            .to_conf_change(self.inner.wait.waiter(id))
            .expect("only configuration changes are proposed here");
        match self
            .propose_with(ctx, id, |node, ack| node.propose_conf_change(cc, ack))
            .await?
        {
            Applied::Members(added, members) => Ok((added, members)),
            _ => unreachable!("a configuration change applies as a membership change"),
        }
    }

    /// The leader's view of every member's progress (empty on a follower).
    async fn progress(&self) -> Result<Vec<etcd_raft_node::Progress>> {
        let node = self.inner.node.clone();
        tokio::task::spawn_blocking(move || node.progress())
            .await
            .map_err(|e| Error::Internal(format!("progress task failed: {e}")))?
            .map_err(|_| Error::Stopped)
    }

    /// etcd's `isConnectedFullySince`, as far as the leader can tell.
    async fn check_all_voters_active(&self) -> Result<()> {
        let progress = self.progress().await?;
        let me = self.inner.member_id;
        if progress
            .iter()
            .any(|p| !p.is_learner && p.id != me && !p.recent_active)
        {
            return Err(Error::Unhealthy);
        }
        Ok(())
    }

    /// etcd's check that removing an active voter leaves a quorum active.
    async fn check_quorum_after_removing(&self, id: u64) -> Result<()> {
        let progress = self.progress().await?;
        let me = self.inner.member_id;
        let voters: Vec<_> = progress.iter().filter(|p| !p.is_learner).collect();
        let Some(target) = voters.iter().find(|p| p.id == id) else {
            return Ok(());
        };
        if id != me && !target.recent_active {
            // A member that is down is safe to remove.
            return Ok(());
        }
        let active = voters
            .iter()
            .filter(|p| p.id == me || p.recent_active)
            .count();
        if active - 1 < 1 + (voters.len() - 1) / 2 {
            return Err(Error::Unhealthy);
        }
        Ok(())
    }

    /// etcd's `isLearnerReady` (leader only).
    pub(crate) async fn check_learner_ready(&self, id: u64) -> Result<()> {
        let progress = self.progress().await?;
        let me = self.inner.member_id;
        let Some(leader) = progress.iter().find(|p| p.id == me) else {
            return Err(Error::NotLeader);
        };
        if let Some(learner) = progress.iter().find(|p| p.id == id) {
            if (learner.matched as f64) < (leader.matched as f64) * LEARNER_READY_PERCENT {
                return Err(Error::LearnerNotReady);
            }
        }
        Ok(())
    }
}

fn check_urls(urls: &[String]) -> Result<()> {
    if urls.is_empty() || urls.iter().any(|u| crate::config::peer_addr(u).is_err()) {
        return Err(Error::MemberBadUrls);
    }
    Ok(())
}
