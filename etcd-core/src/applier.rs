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
//! touching the store — unless it was refused when first applied (a
//! refused change changes nothing, not even raft's configuration; the
//! store records refusals by index, see `cluster::record_refused`, since
//! the image's membership is the one after the change).
//!
//! The applier is shared by the member's apply thread (`server.rs`) and the
//! deterministic cluster simulation; raft is reached through
//! [`ConfChanger`] so both can plug in what drives their raft.

use crate::alarms::AlarmStore;
use crate::apply::{self, Applied};
use crate::apply_auth;
use crate::auth::AuthStore;
use crate::cluster::{decode_conf_change, record_refused, was_refused, Change, RaftCluster};
use crate::lessor::Lessor;
use crate::membership::Member;
use crate::pb::etcdserverpb::{AlarmRequest, AlarmResponse, AlarmType};
use crate::raft_request::{Op, RaftRequest};
use crate::snapshot::SnapshotFiles;
use crate::wait::Wait;
use crate::{Error, Result};
use etcd_mvcc::Store;
use etcd_raft_node::eraftpb::{ConfChange, ConfState};
use etcd_raft_node::{CommittedEntry, EntryKind, Peer, RaftNode, SnapshotInfo};
use parking_lot::RwLock;
use prost::Message as _;
use std::sync::Arc;

/// What applying `op` costs when it needs space (None: it does not):
/// refused while a NOSPACE alarm is active (etcd's `applierV3Capped`:
/// puts, txns with a put — nested ones too, which etcd 3.4 lets through —
/// and lease grants).
/// What etcd's `applierV3Corrupt` refuses (reads are served outside the
/// log, so every range and txn reaching here writes or compares-and-writes).
fn refused_while_corrupt(op: &Op) -> bool {
    matches!(
        op,
        Op::Put(_)
            | Op::DeleteRange(_)
            | Op::Txn(_)
            | Op::Compaction(_)
            | Op::LeaseGrant(_)
            | Op::LeaseRevoke(_)
    )
}

fn needs_space(op: &Op) -> Option<crate::quota::Cost<'_>> {
    fn txn_puts(t: &crate::pb::etcdserverpb::TxnRequest) -> bool {
        use crate::pb::etcdserverpb::request_op::Request;
        t.success
            .iter()
            .chain(&t.failure)
            .any(|o| match &o.request {
                Some(Request::RequestPut(_)) => true,
                Some(Request::RequestTxn(t)) => txn_puts(t),
                _ => false,
            })
    }
    match op {
        Op::Put(p) => Some(crate::quota::Cost::Put(p)),
        Op::LeaseGrant(_) => Some(crate::quota::Cost::LeaseGrant),
        Op::Txn(t) if txn_puts(t) => Some(crate::quota::Cost::Txn(t)),
        _ => None,
    }
}

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
    /// A write took this member's store over its quota while no NOSPACE
    /// alarm is active: the member must raise one (etcd's
    /// `quotaApplierV3`).
    OverQuota,
}

/// Applies committed entries (see the module doc).
pub(crate) struct Applier {
    pub(crate) store: Arc<Store>,
    pub(crate) lessor: Arc<Lessor>,
    pub(crate) wait: Arc<Wait<Result<Applied>>>,
    pub(crate) cluster: Arc<RwLock<RaftCluster>>,
    pub(crate) member_id: u64,
    /// Auth state: changed by Auth entries, consulted by every checked one.
    pub(crate) auth: Arc<AuthStore>,
    /// `--bcrypt-cost`, for a password a proposer did not hash.
    pub(crate) bcrypt_cost: u32,
    /// Active alarms: changed by Alarm entries; NOSPACE caps writes.
    pub(crate) alarms: Arc<AlarmStore>,
    /// This member's `--quota-backend-bytes` (`Config::quota_bytes`),
    /// checked again when applying writes.
    pub(crate) quota: u64,
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

    /// Replaces the state machine with the image of raft snapshot `info`
    /// (unless the store is already as new: images can be newer than their
    /// raft index), then reloads what lives beside the store: the
    /// membership and the leases. Returns whether the image held members
    /// (without, the membership is left as it was).
    pub(crate) fn install_snapshot(
        &self,
        files: &SnapshotFiles,
        info: &SnapshotInfo,
    ) -> std::result::Result<bool, String> {
        let store = &self.store;
        if info.index <= store.consistent_index() {
            tracing::info!(
                index = info.index,
                applied = store.consistent_index(),
                "skipping a snapshot image older than the store"
            );
        } else {
            tracing::info!(
                index = info.index,
                term = info.term,
                "installing a snapshot image from the leader"
            );
            files.install(store, &info.data).map_err(|e| {
                format!(
                    "cannot install the snapshot image at index {}: {e}",
                    info.index
                )
            })?;
        }
        let members = RaftCluster::load(store)
            .map_err(|e| format!("cannot read the membership of a snapshot image: {e}"))?;
        let has_members = members.is_some();
        if let Some(c) = members {
            *self.cluster.write() = c;
        }
        crate::apply::lease::restore(store, &self.lessor)
            .map_err(|e| format!("cannot restore the leases of a snapshot image: {e}"))?;
        self.auth
            .load(store)
            .map_err(|e| format!("cannot load the auth state of a snapshot image: {e}"))?;
        self.alarms
            .load(store)
            .map_err(|e| format!("cannot load the alarms of a snapshot image: {e}"))?;
        Ok(has_members)
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
            _ => self.apply_checked(e.index, &req),
        };
        fail::fail_point!("apply::entry::after_store");
        if let Err(Error::Internal(msg)) = &result {
            // The store failed (I/O, full disk, corruption) or a bug
            // reached the apply path. Going on would apply the next
            // entries without this one, and this member would diverge
            // from the others: fail-stop (see `fatal.rs`). A restart
            // replays the entry unless its index was recorded.
            panic!("applying raft entry {} failed: {msg}", e.index);
        }
        self.wait.trigger_applied(req.waiter(), result);
        effect
    }

    /// A KV, lease, alarm or auth request: permission check (with the
    /// caller in the entry's header), then the request. A write that
    /// needs space is refused while NOSPACE is active (etcd's
    /// `applierV3Capped`); otherwise, one that takes this member's store
    /// over its quota is applied and asks for a NOSPACE alarm (etcd's
    /// `quotaApplierV3`, which also answers the writer with an error
    /// although the write was applied; here the writer gets the result).
    fn apply_checked(&self, index: u64, req: &RaftRequest) -> (Result<Applied>, Effect) {
        if let Err(e) = apply_auth::check(&self.auth, &self.lessor, req) {
            self.persist_index_only(index, "request refused by auth");
            return (Err(e), Effect::None);
        }
        let applied = match &req.op {
            Some(op) if apply_auth::is_auth_op(op) => {
                apply_auth::apply(&self.auth, &self.store, index, op, self.bcrypt_cost)
            }
            Some(Op::Alarm(a)) => Ok(Applied::Alarm(self.apply_alarm(index, a))),
            Some(op) if refused_while_corrupt(op) && self.alarms.corrupt() => {
                self.persist_index_only(index, "request refused: CORRUPT alarm");
                return (Err(Error::Corrupt), Effect::None);
            }
            Some(op) => match needs_space(op) {
                Some(_) if self.alarms.no_space() => {
                    self.persist_index_only(index, "write refused: NOSPACE alarm");
                    return (Err(Error::NoSpace), Effect::None);
                }
                Some(cost) => {
                    let fits = crate::quota::available(
                        self.store.db_size_estimate(),
                        cost.bytes(),
                        self.quota,
                    );
                    let r = apply::apply(&self.store, &self.lessor, index, req);
                    if r.is_ok() && !fits {
                        return (r, Effect::OverQuota);
                    }
                    r
                }
                None => apply::apply(&self.store, &self.lessor, index, req),
            },
            None => apply::apply(&self.store, &self.lessor, index, req),
        };
        (applied, Effect::None)
    }

    /// etcd's `applierV3backend.Alarm` (GET goes through raft too, so it
    /// answers the alarms as of its place in the log).
    fn apply_alarm(&self, index: u64, a: &AlarmRequest) -> AlarmResponse {
        use crate::pb::etcdserverpb::alarm_request::AlarmAction;
        let mut w = self.store.write();
        let alarms = match AlarmAction::try_from(a.action) {
            Ok(AlarmAction::Get) => self.alarms.get(a.alarm),
            Ok(AlarmAction::Activate) if a.alarm != AlarmType::None as i32 => {
                vec![self.alarms.activate(&mut w, a.member_id, a.alarm)]
            }
            Ok(AlarmAction::Deactivate) => self
                .alarms
                .deactivate(&mut w, a.member_id, a.alarm)
                .into_iter()
                .collect(),
            _ => Vec::new(),
        };
        if let Err(e) = w.end(index) {
            panic!("cannot persist the alarm change at index {index}: {e}");
        }
        AlarmResponse {
            header: None,
            alarms,
        }
    }

    fn apply_conf_change(
        &self,
        e: &CommittedEntry,
        replayed: bool,
        raft: &mut dyn ConfChanger,
    ) -> Effect {
        let (cc, waiter, change) = decode_conf_change(&e.data).unwrap_or_else(|err| {
            panic!(
                "raft entry {} is not a configuration change this build understands: {err}",
                e.index
            )
        });
        if replayed {
            // The store already holds the change (see the module doc);
            // raft hears of it unless it was refused when first applied.
            let refused = was_refused(&self.store, e.index).unwrap_or_else(|err| {
                panic!("cannot read the membership at entry {}: {err}", e.index)
            });
            if !refused {
                if let Err(err) = raft.apply_conf_change(cc) {
                    tracing::warn!(index = e.index, "replayed configuration change: {err}");
                }
            }
            return Effect::None;
        }
        let (result, effect) = self.change_members(e.index, &change, Some((cc, raft)));
        self.wait.trigger_applied(waiter, result);
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
            if raft.is_some() {
                let mut w = self.store.write();
                record_refused(&mut w, index);
                if let Err(e) = w.end(index) {
                    panic!("cannot persist consistent index {index} (refused change): {e}");
                }
            } else {
                self.persist_index_only(index, "refused membership change");
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lessor::FakeClock;
    use crate::wait::Waiter;
    use etcd_mvcc::StoreOptions;
    use protobuf::Message as _;

    /// Records the raft configuration changes it is handed.
    #[derive(Default)]
    struct Raft(Vec<u64>);

    impl ConfChanger for Raft {
        fn apply_conf_change(&mut self, cc: ConfChange) -> etcd_raft_node::Result<ConfState> {
            self.0.push(cc.node_id);
            Ok(ConfState::default())
        }
    }

    fn member(id: u64, learner: bool) -> Member {
        Member {
            id,
            name: format!("m{id}"),
            peer_urls: vec![format!("http://m{id}:2380")],
            client_urls: vec![],
            is_learner: learner,
        }
    }

    fn add(index: u64, m: Member) -> CommittedEntry {
        let cc = Change::Add(m).to_conf_change(Waiter::default()).unwrap();
        CommittedEntry {
            index,
            term: 1,
            kind: EntryKind::ConfChange,
            data: cc.write_to_bytes().unwrap().into(),
        }
    }

    /// An applier of member 1, alone in its cluster, over a fresh
    /// in-memory store, with the quota `quota(store)`.
    fn single_member_applier(quota: impl Fn(&Store) -> u64) -> (Arc<Store>, Applier) {
        applier_over(
            Store::open_in_memory(StoreOptions::default()).unwrap(),
            quota,
        )
    }

    /// [`single_member_applier`] over `store`.
    fn applier_over(store: Store, quota: impl Fn(&Store) -> u64) -> (Arc<Store>, Applier) {
        let store = Arc::new(store);
        let cluster = RaftCluster::new(vec![member(1, false)]);
        crate::bootstrap::init_store(&store, &cluster, 1).unwrap();
        let clock = Arc::new(FakeClock::new());
        let applier = Applier {
            store: store.clone(),
            lessor: Arc::new(Lessor::new(
                clock.clone(),
                5,
                std::time::Duration::from_secs(300),
            )),
            wait: Arc::new(Wait::new(1)),
            cluster: Arc::new(RwLock::new(cluster)),
            member_id: 1,
            auth: Arc::new(AuthStore::new(crate::auth::Tokens::Simple(
                crate::auth::SimpleTokens::new(clock, std::time::Duration::from_secs(300)),
            ))),
            bcrypt_cost: 4,
            alarms: Arc::new(AlarmStore::default()),
            quota: quota(&store),
        };
        (store, applier)
    }

    /// A store that fails under the apply loop stops the member instead
    /// of skipping the entry (which would make it diverge).
    #[test]
    #[should_panic(expected = "applying raft entry 2 failed: mvcc: storage error")]
    fn a_store_failure_is_fatal() {
        let disk = etcd_mvcc::MemDisk::new();
        let store = Store::open_with(Box::new(disk.backend()), StoreOptions::default()).unwrap();
        let (_, applier) = applier_over(store, |_| u64::MAX);
        disk.crash();
        let put = RaftRequest {
            op: Some(Op::Put(crate::pb::etcdserverpb::PutRequest {
                key: "k".into(),
                value: "v".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let entry = CommittedEntry {
            index: 2,
            term: 1,
            kind: EntryKind::Normal,
            data: put.encode_to_vec().into(),
        };
        applier.apply_entry(entry, &mut Raft::default());
    }

    /// A replayed configuration change (below the consistent index, after
    /// a snapshot image newer than its raft metadata) reaches raft only if
    /// it was accepted when first applied. Found by the cluster simulation
    /// (a learner refused as one too many ended up in raft's configuration
    /// of a member that had installed such an image).
    #[test]
    fn replayed_changes_reach_raft_only_if_accepted() {
        let (store, applier) = single_member_applier(|_| u64::MAX);
        let mut raft = Raft::default();
        applier.apply_entry(add(2, member(6, true)), &mut raft);
        // One learner at most: refused, raft not told.
        applier.apply_entry(add(3, member(7, true)), &mut raft);
        assert_eq!(raft.0, vec![6]);
        assert_eq!(store.consistent_index(), 3);
        // Replayed (as after installing an image at index 3 whose raft
        // snapshot was at index 1).
        let mut replay = Raft::default();
        applier.apply_entry(add(2, member(6, true)), &mut replay);
        applier.apply_entry(add(3, member(7, true)), &mut replay);
        assert_eq!(replay.0, vec![6], "the refused change is not replayed");
        assert!(RaftCluster::load(&store)
            .unwrap()
            .unwrap()
            .member(7)
            .is_none());
    }

    fn normal(index: u64, op: Op) -> CommittedEntry {
        let data = RaftRequest {
            id: 0,
            op: Some(op),
            header: None,
            origin: 0,
        };
        CommittedEntry {
            index,
            term: 1,
            kind: EntryKind::Normal,
            data: prost::Message::encode_to_vec(&data).into(),
        }
    }

    /// A write that takes the store over this member's quota is applied
    /// and asks for a NOSPACE alarm; once the alarm is applied, writes
    /// needing space are refused (the index still advances), deletes are
    /// not, and disarming lifts the cap.
    #[test]
    fn quota_and_the_nospace_cap() {
        use crate::pb::etcdserverpb::{alarm_request::AlarmAction, DeleteRangeRequest, PutRequest};
        let (store, applier) = single_member_applier(|store| store.db_size() + 1000);
        let put = |k: &str, n: usize| {
            Op::Put(PutRequest {
                key: k.as_bytes().to_vec().into(),
                value: vec![b'v'; n].into(),
                ..Default::default()
            })
        };
        let mut raft = Raft::default();
        assert_eq!(
            applier.apply_entry(normal(2, put("small", 10)), &mut raft),
            Effect::None
        );
        assert_eq!(
            applier.apply_entry(normal(3, put("big", 5000)), &mut raft),
            Effect::OverQuota
        );
        assert_eq!(
            store.current_revision(),
            3,
            "the write that went over is applied"
        );
        let alarm = |index, action: AlarmAction| {
            normal(
                index,
                Op::Alarm(AlarmRequest {
                    action: action as i32,
                    member_id: 1,
                    alarm: AlarmType::Nospace as i32,
                }),
            )
        };
        applier.apply_entry(alarm(4, AlarmAction::Activate), &mut raft);
        assert!(applier.alarms.no_space());
        applier.apply_entry(normal(5, put("more", 1)), &mut raft);
        assert_eq!(store.current_revision(), 3, "capped: not applied");
        assert_eq!(store.consistent_index(), 5);
        let del = Op::DeleteRange(DeleteRangeRequest {
            key: b"big".to_vec().into(),
            ..Default::default()
        });
        applier.apply_entry(normal(6, del), &mut raft);
        assert_eq!(store.current_revision(), 4, "deletes still apply");
        applier.apply_entry(alarm(7, AlarmAction::Deactivate), &mut raft);
        assert!(!applier.alarms.no_space());
    }
}
