//! Applying committed raft entries, in log order, to the state machine:
//! the MVCC store, the lessor and the membership (etcd's `applyEntries`,
//! `applyEntryNormal` and `applyConfChange` in `server.go`).
//!
//! Every entry advances the store's consistent index in the same write as
//! its effects, whatever the outcome, so replaying the log after a crash
//! applies nothing twice: an entry at or below the consistent index is
//! skipped. The one exception is a configuration change below the
//! consistent index (possible right after a state machine snapshot was
//! installed, whose image is newer than its raft metadata): raft's
//! configuration still has to hear of it, so it is handed to raft without
//! touching the store.
//!
//! The applier is shared by the member's apply thread (`server.rs`) and the
//! deterministic cluster simulation; raft is reached through
//! [`ConfChanger`] so both can plug in what drives their raft.

use crate::apply::{self, Applied};
use crate::cluster::{decode_conf_change, Change, RaftCluster};
use crate::lessor::Lessor;
use crate::membership::Member;
use crate::raft_request::{Op, RaftRequest};
use crate::wait::Wait;
use crate::{Error, Result};
use etcd_mvcc::Store;
use etcd_raft_node::eraftpb::{ConfChange, ConfState};
use etcd_raft_node::{CommittedEntry, EntryKind, Peer, RaftNode};
use parking_lot::RwLock;
use prost::Message as _;
use std::sync::Arc;

/// Hands committed configuration changes to raft.
pub(crate) trait ConfChanger {
    /// raft-rs `apply_conf_change`.
    fn apply_conf_change(&mut self, cc: ConfChange) -> etcd_raft_node::Result<ConfState>;
}

impl ConfChanger for &RaftNode {
    fn apply_conf_change(&mut self, cc: ConfChange) -> etcd_raft_node::Result<ConfState> {
        RaftNode::apply_conf_change(self, cc)
    }
}

impl ConfChanger for Peer {
    fn apply_conf_change(&mut self, cc: ConfChange) -> etcd_raft_node::Result<ConfState> {
        Peer::apply_conf_change(self, &cc)
    }
}

/// What the caller has to do after an entry was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Nothing beyond the apply itself.
    None,
    /// The membership changed: update the peer transport.
    MembersChanged,
    /// This member was removed from the cluster: it must stop.
    RemovedSelf,
}

/// Applies committed entries (see the module doc).
pub(crate) struct Applier {
    pub(crate) store: Arc<Store>,
    pub(crate) lessor: Arc<Lessor>,
    pub(crate) wait: Arc<Wait<Result<Applied>>>,
    pub(crate) cluster: Arc<RwLock<RaftCluster>>,
    pub(crate) member_id: u64,
}

impl Applier {
    /// Applies one committed entry.
    pub(crate) fn apply_entry(&self, e: CommittedEntry, raft: &mut dyn ConfChanger) -> Effect {
        let replayed = e.index <= self.store.consistent_index();
        match e.kind {
            EntryKind::ConfChange => self.apply_conf_change(&e, replayed, raft),
            EntryKind::ConfChangeV2 => {
                // Never proposed by this project (every change is simple).
                if !replayed {
                    tracing::error!(index = e.index, "ignoring a ConfChangeV2 entry");
                    self.persist_index_only(e.index, "ConfChangeV2");
                }
                Effect::None
            }
            _ if replayed => Effect::None,
            EntryKind::Normal if e.data.is_empty() => {
                self.persist_index_only(e.index, "leader no-op");
                Effect::None
            }
            EntryKind::Normal => self.apply_normal(&e),
        }
    }

    fn persist_index_only(&self, index: u64, why: &str) {
        if let Err(err) = self.store.write().end(index) {
            panic!("cannot persist consistent index {index} ({why}): {err}");
        }
    }

    fn apply_normal(&self, e: &CommittedEntry) -> Effect {
        let req = RaftRequest::decode(e.data.clone()).unwrap_or_else(|err| {
            panic!(
                "raft entry {} is not a request this build understands: {err}",
                e.index
            )
        });
        let (result, effect) = match &req.op {
            Some(Op::MemberUpdate(u)) => {
                let change = Change::UpdatePeerUrls(u.id, u.peer_ur_ls.clone());
                self.change_members(e.index, &change, None)
            }
            Some(Op::MemberAttributes(a)) => {
                let change = Change::Publish {
                    id: a.id,
                    name: a.name.clone(),
                    client_urls: a.client_urls.clone(),
                };
                self.change_members(e.index, &change, None)
            }
            _ => (
                apply::apply(&self.store, &self.lessor, e.index, &req),
                Effect::None,
            ),
        };
        if let Err(Error::Internal(msg)) = &result {
            tracing::error!(index = e.index, "applying entry failed: {msg}");
        }
        self.wait.trigger(req.id, result);
        effect
    }

    fn apply_conf_change(
        &self,
        e: &CommittedEntry,
        replayed: bool,
        raft: &mut dyn ConfChanger,
    ) -> Effect {
        let (cc, request_id, change) = decode_conf_change(&e.data).unwrap_or_else(|err| {
            panic!(
                "raft entry {} is not a configuration change this build understands: {err}",
                e.index
            )
        });
        if replayed {
            // The store already holds the change (see the module doc).
            if let Err(err) = raft.apply_conf_change(cc) {
                tracing::warn!(index = e.index, "replayed configuration change: {err}");
            }
            return Effect::None;
        }
        let (result, effect) = self.change_members(e.index, &change, Some((cc, raft)));
        self.wait.trigger(request_id, result);
        effect
    }

    /// Validates and applies a membership change at `index`; a raft
    /// configuration change goes to raft first.
    fn change_members(
        &self,
        index: u64,
        change: &Change,
        raft: Option<(ConfChange, &mut dyn ConfChanger)>,
    ) -> (Result<Applied>, Effect) {
        let mut cluster = self.cluster.write();
        if let Err(err) = cluster.validate(change) {
            drop(cluster);
            tracing::warn!(index, ?change, "refused membership change: {err}");
            self.persist_index_only(index, "refused membership change");
            return (Err(err), Effect::None);
        }
        if let Some((cc, raft)) = raft {
            if let Err(err) = raft.apply_conf_change(cc) {
                // raft stopped: nothing more will be applied.
                tracing::error!(index, "raft refused a configuration change: {err}");
                return (Err(Error::Stopped), Effect::None);
            }
        }
        let mut w = self.store.write();
        cluster.apply(change, &mut w);
        if let Err(err) = w.end(index) {
            panic!("cannot persist membership change at {index}: {err}");
        }
        let added: Option<Member> = match change {
            Change::Add(m) => cluster.member(m.id).cloned(),
            _ => None,
        };
        let members = cluster.members();
        drop(cluster);
        tracing::info!(index, ?change, "applied membership change");
        let effect = match change {
            Change::Remove(id) if *id == self.member_id => Effect::RemovedSelf,
            Change::Publish { .. } => Effect::None,
            _ => Effect::MembersChanged,
        };
        (Ok(Applied::Members(added, members)), effect)
    }
}
