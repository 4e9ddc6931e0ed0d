//! The thread that drives the [`Lessor`] in a running member (etcd's
//! `lessor.runLoop` plus the server's leader-change hook).
//!
//! Every tick (the heartbeat interval, at most 500 ms, like etcd's loop):
//! 1. follow leadership: when this member became raft leader, promote the
//!    lessor, extending every lease by the election timeout (a lease must
//!    not expire just because leadership moved); when it lost leadership,
//!    demote it (leases stop expiring here). Promotion waits until the
//!    member has applied its log up to the last index it had when it became
//!    leader (which includes every entry of earlier terms), so checkpoints
//!    and revokes committed before the election are in the lessor first;
//! 2. as primary, propose a revoke for each expired lease, at most
//!    `LEASE_REVOKE_RATE x tick` per tick (1000 revokes/s, etcd's rate);
//! 3. as primary, propose the due checkpoints (one entry of at most
//!    `MAX_CHECKPOINT_BATCH`).
//!
//! Proposals carry request id 0: nobody waits for them. They are made
//! only as the leader of the term the status showed (raft drops them
//! otherwise, never forwards them): the status lags raft, and a leader
//! resumed after a pause (SIGSTOP, a VM stall) reads Leader and a clock
//! that jumped ahead, finds leases expired that the new leader has since
//! renewed, and would have its revokes forwarded to that leader and
//! committed (a lease expired early: the chaos test's scripted pause of
//! the leader, CI of session 14; etcd 3.5 checks leadership before
//! revoking for the same reason, etcd#15247). A lost revoke
//! (leader change, dropped proposal) is retried by the lessor after
//! `EXPIRED_LEASE_RETRY`; a revoke of a lease already gone applies as
//! "lease not found" and changes nothing.

use crate::background::Background;
use crate::config::Config;
use crate::lessor::{Lessor, LEASE_REVOKE_RATE, MAX_CHECKPOINT_BATCH};
use crate::pb::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest, LeaseRevokeRequest};
use crate::raft_request::{Op, RaftRequest};
use etcd_raft_node::{NodeStatus, RaftNode, Role};
use prost::Message as _;
use std::sync::Arc;
use std::time::Duration;

/// Starts the ticker thread; stopping the returned [`Background`] ends it.
pub(crate) fn spawn(
    node: Arc<RaftNode>,
    lessor: Arc<Lessor>,
    cfg: &Config,
) -> std::io::Result<Background> {
    let tick = cfg
        .heartbeat_interval
        .clamp(Duration::from_millis(10), Duration::from_millis(500));
    let extend = cfg.election_timeout;
    Background::spawn("lease-ticker", move |stop| {
        let mut promote_at = None;
        loop {
            if !crate::background::pause(&stop, tick) {
                return;
            }
            run_once(&mut &*node, &lessor, tick, extend, &mut promote_at);
        }
    })
}

/// Most revokes proposed per tick of length `tick`.
pub(crate) fn revoke_limit(tick: Duration) -> usize {
    ((LEASE_REVOKE_RATE as f64 * tick.as_secs_f64()).ceil() as usize).max(1)
}

/// What a tick needs from raft: a running member's [`RaftNode`], or the
/// cluster simulation's `Peer` (so the simulation runs this very code).
pub(crate) trait TickerRaft {
    /// The member's raft status.
    fn status(&self) -> NodeStatus;
    /// Proposes `data` if this member still leads in `term` when raft
    /// takes it, and drops it otherwise (never forwards it); nobody waits
    /// for the outcome.
    fn propose_as_leader(&mut self, data: Vec<u8>, term: u64);
}

impl TickerRaft for &RaftNode {
    fn status(&self) -> NodeStatus {
        RaftNode::status(self)
    }
    fn propose_as_leader(&mut self, data: Vec<u8>, term: u64) {
        RaftNode::propose_as_leader(self, data, term);
    }
}

#[cfg(any(test, feature = "testing"))]
impl TickerRaft for etcd_raft_node::Peer {
    fn status(&self) -> NodeStatus {
        etcd_raft_node::Peer::status(self)
    }
    fn propose_as_leader(&mut self, data: Vec<u8>, term: u64) {
        let _ = etcd_raft_node::Peer::propose_as_leader(self, data, term);
    }
}

/// One tick. `promote_at`: the log index to apply before promoting, set
/// when leadership was first seen.
pub(crate) fn run_once(
    node: &mut impl TickerRaft,
    lessor: &Lessor,
    tick: Duration,
    extend: Duration,
    promote_at: &mut Option<u64>,
) {
    let st = node.status();
    let leader = st.role == Role::Leader;
    if !leader {
        *promote_at = None;
        if lessor.is_primary() {
            tracing::info!("lost leadership: demoting the lessor");
            lessor.demote();
        }
        return;
    }
    if !lessor.is_primary() {
        let target = *promote_at.get_or_insert(st.last_index);
        if st.applied_index < target {
            return;
        }
        *promote_at = None;
        tracing::info!(
            extend_ms = extend.as_millis() as u64,
            "became leader: promoting the lessor"
        );
        lessor.promote(extend);
    }
    let mut propose = |op: Op| {
        let data = RaftRequest {
            id: 0,
            op: Some(op),
            header: None,
            origin: 0,
        }
        .encode_to_vec();
        node.propose_as_leader(data, st.term);
    };
    for id in lessor.find_expired(revoke_limit(tick)) {
        tracing::debug!(lease = %format!("{id:x}"), "lease expired: proposing its revoke");
        propose(Op::LeaseRevoke(LeaseRevokeRequest { id }));
    }
    let due = lessor.due_checkpoints(MAX_CHECKPOINT_BATCH);
    if !due.is_empty() {
        tracing::debug!(leases = due.len(), "proposing lease checkpoints");
        propose(Op::LeaseCheckpoint(LeaseCheckpointRequest {
            checkpoints: due
                .into_iter()
                .map(|(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                .collect(),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lessor::FakeClock;

    /// A member as its published status shows it, recording what the
    /// ticker proposes and as the leader of which term.
    struct Recorded {
        status: NodeStatus,
        proposed: Vec<(Op, u64)>,
    }

    impl TickerRaft for Recorded {
        fn status(&self) -> NodeStatus {
            self.status
        }
        fn propose_as_leader(&mut self, data: Vec<u8>, term: u64) {
            let op = RaftRequest::decode(&data[..]).unwrap().op.unwrap();
            self.proposed.push((op, term));
        }
    }

    /// The ticker's revokes and checkpoints name the term in which the
    /// status showed this member leading, so that raft drops them if it
    /// has learned of a later term meanwhile (`Peer::propose_as_leader`).
    #[test]
    fn revokes_and_checkpoints_are_proposed_as_leader_of_the_status_term() {
        let clock = Arc::new(FakeClock::new());
        let lessor = Lessor::new(clock.clone(), 1, Duration::from_secs(1));
        lessor.grant(7, 2);
        lessor.grant(8, 60);
        let mut node = Recorded {
            status: NodeStatus {
                role: Role::Leader,
                term: 5,
                applied_index: 10,
                last_index: 10,
                ..NodeStatus::default()
            },
            proposed: Vec::new(),
        };
        let tick = Duration::from_millis(100);
        let mut promote_at = None;
        run_once(&mut node, &lessor, tick, tick, &mut promote_at);
        assert!(lessor.is_primary());
        clock.advance(Duration::from_secs(3));
        run_once(&mut node, &lessor, tick, tick, &mut promote_at);
        let terms: Vec<u64> = node.proposed.iter().map(|(_, t)| *t).collect();
        assert!(matches!(
            &node.proposed[0].0,
            Op::LeaseRevoke(LeaseRevokeRequest { id: 7 })
        ));
        assert!(
            matches!(&node.proposed[1].0, Op::LeaseCheckpoint(c) if c.checkpoints.iter().any(|c| c.id == 8)),
            "{:?}",
            node.proposed
        );
        assert_eq!(terms, vec![5, 5]);
    }
}
