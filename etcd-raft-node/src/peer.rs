//! The deterministic heart of a raft member: a `RawNode` over [`WalStorage`]
//! plus the bookkeeping etcd keeps around it (batched ReadIndex requests,
//! proposals that wait for a leader). It reads no clock: time passes only
//! through [`Peer::tick`], so tests can drive it step by step.
//!
//! ReadIndex batching: every read queued with [`Peer::queue_read`] between
//! two calls of [`Peer::flush_reads`] shares one ReadIndex round (one context
//! id). When raft reports the read state for that context, every callback of
//! the batch gets the same index; the caller then waits until it has applied
//! that index and serves the reads locally.
//!
//! Read contexts are unique across members and restarts (like etcd's
//! request ids): `member id | nonce drawn at start | sequence number`, 24
//! bytes. The leader keys pending reads by context and ignores a request
//! whose context it already holds, answering only the first: with
//! contexts that restart at 1, a restarted member's new read would be
//! answered with the read index of its previous incarnation's read — from
//! before writes that completed since (a stale read; found by etcd-core's
//! cluster simulation) — and two members' reads would collide.

use crate::config::NodeConfig;
use crate::snapshot::SnapshotInfo;
use crate::storage::WalStorage;
use crate::transport::Transport;
use crate::types::{CommittedEntry, EntryKind, NodeStatus, Role, ToApply};
use crate::{Error, Result};
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfState, Entry, EntryType, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole, INVALID_ID};
use std::collections::{HashMap, VecDeque};

/// Called with the read index of a batch, or why the read cannot be served.
pub type ReadCallback = Box<dyn FnOnce(Result<u64>) + Send>;
/// Called when a proposal was handed to raft, or with why it was dropped.
pub type ProposeCallback = Box<dyn FnOnce(Result<()>) + Send>;

/// What a proposal carries.
enum Payload {
    /// An application entry.
    Normal(Vec<u8>),
    /// A membership change.
    ConfChange(ConfChange),
}

/// A proposal waiting for a leader, with the tick it arrived at.
struct WaitingProposal {
    payload: Payload,
    ack: Option<ProposeCallback>,
    since_tick: u64,
}

/// Replication progress of one member, as the leader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// The member.
    pub id: u64,
    /// Highest log index known to be replicated on it.
    pub matched: u64,
    /// Whether it is a learner.
    pub is_learner: bool,
    /// Whether it was heard from within the last election timeout.
    pub recent_active: bool,
}

/// One raft member's state machine driver. Not thread-safe: owned by the
/// raft thread (or a simulation).
pub struct Peer {
    raw: RawNode<WalStorage>,
    /// Reads queued since the last flush.
    pending_reads: Vec<ReadCallback>,
    /// Reads that arrived without a leader, with the tick they arrived at.
    waiting_reads: Vec<(ReadCallback, u64)>,
    /// Read batches sent to raft, by context id.
    inflight_reads: HashMap<u64, Vec<ReadCallback>>,
    next_read_ctx: u64,
    /// Member id and this incarnation's nonce: the first 16 bytes of every
    /// read context.
    read_ctx_prefix: [u8; 16],
    /// Proposals that arrived while there was no leader.
    waiting: VecDeque<WaitingProposal>,
    /// Membership changes that reached this leader while another one was
    /// pending (raft-rs would turn them into empty entries).
    waiting_conf: VecDeque<WaitingProposal>,
    /// How many ticks a proposal may wait for a leader.
    max_wait_ticks: u64,
    ticks: u64,
    leader: u64,
    /// What the application reported applied. raft-rs is told
    /// `min(applied, committed, persisted)`: an installed snapshot image may
    /// be newer than the log (see the snapshot module).
    applied: u64,
    /// [`NodeConfig::persist_here_max_unapplied`].
    persist_here_max_unapplied: u64,
}

impl Peer {
    /// Creates the member over an opened storage. `cfg.applied` must be the
    /// state machine's durably applied index.
    pub fn new(cfg: &NodeConfig, mut storage: WalStorage) -> Result<Peer> {
        storage.set_applied(cfg.applied);
        // An image newer than the log (see the snapshot module): raft starts
        // at the last committed entry it has.
        let raft_applied = cfg
            .applied
            .min(raft::Storage::initial_state(&storage)?.hard_state.commit);
        let rc = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            min_election_tick: cfg.min_election_tick,
            max_election_tick: cfg.max_election_tick,
            applied: raft_applied,
            max_size_per_msg: cfg.max_size_per_msg,
            max_inflight_msgs: cfg.max_inflight_msgs,
            check_quorum: cfg.check_quorum,
            pre_vote: cfg.pre_vote,
            ..raft::Config::default()
        };
        rc.validate().map_err(|e| Error::Config(e.to_string()))?;
        let raw = RawNode::new(&rc, storage, &crate::logger::raft_logger(cfg.id))?;
        Ok(Peer {
            raw,
            pending_reads: Vec::new(),
            waiting_reads: Vec::new(),
            inflight_reads: HashMap::new(),
            next_read_ctx: 1,
            read_ctx_prefix: {
                let mut p = [0u8; 16];
                p[..8].copy_from_slice(&cfg.id.to_be_bytes());
                p[8..].copy_from_slice(&rand::random::<u64>().to_be_bytes());
                p
            },
            waiting: VecDeque::new(),
            waiting_conf: VecDeque::new(),
            max_wait_ticks: (cfg.election_tick * 3) as u64,
            ticks: 0,
            leader: INVALID_ID,
            applied: cfg.applied,
            persist_here_max_unapplied: cfg.persist_here_max_unapplied,
        })
    }

    /// This member's id.
    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    /// Starts an election now (a single-member cluster does so at start
    /// rather than waiting for an election timeout).
    pub fn campaign(&mut self) -> Result<()> {
        Ok(self.raw.campaign()?)
    }

    /// Advances logical time by one tick; expires proposals that waited for
    /// a leader for too long.
    pub fn tick(&mut self) {
        self.ticks += 1;
        self.raw.tick();
        self.release_waiting();
        self.release_waiting_conf();
        if self.raw.raft.leader_id != INVALID_ID {
            // A leader is known again: the waiting reads go in the next batch.
            self.pending_reads
                .extend(self.waiting_reads.drain(..).map(|(cb, _)| cb));
        } else {
            let (ticks, max) = (self.ticks, self.max_wait_ticks);
            let (expired, waiting): (Vec<_>, Vec<_>) = self
                .waiting_reads
                .drain(..)
                .partition(|(_, since)| ticks - since >= max);
            self.waiting_reads = waiting;
            for (cb, _) in expired {
                cb(Err(Error::NoLeader));
            }
        }
        for queue in [&mut self.waiting, &mut self.waiting_conf] {
            while let Some(p) = queue.front() {
                if self.ticks - p.since_tick < self.max_wait_ticks {
                    break;
                }
                let p = queue.pop_front().expect("front exists");
                if let Some(ack) = p.ack {
                    ack(Err(Error::ProposalDropped));
                }
            }
        }
    }

    /// Hands a message from another member to raft.
    pub fn step(&mut self, mut msg: Message) -> Result<()> {
        if msg.get_msg_type() == MessageType::MsgPropose && self.conf_change_pending() {
            // A member forwarded a membership change while one is pending:
            // hold it until the pending one is applied.
            let (conf, rest): (Vec<Entry>, Vec<Entry>) = msg
                .take_entries()
                .into_iter()
                .partition(|e| e.get_entry_type() == EntryType::EntryConfChange);
            for e in conf {
                if let Ok(cc) = ConfChange::parse_from_bytes(&e.data) {
                    self.waiting_conf.push_back(WaitingProposal {
                        payload: Payload::ConfChange(cc),
                        ack: None,
                        since_tick: self.ticks,
                    });
                }
            }
            if rest.is_empty() {
                return Ok(());
            }
            msg.set_entries(rest.into());
        }
        match self.raw.step(msg) {
            // Messages from unknown or removed members are dropped by raft,
            // and so are proposals forwarded to a member that is no longer
            // the leader (the proposer times out and retries, as in etcd).
            Ok(())
            | Err(raft::Error::StepPeerNotFound)
            | Err(raft::Error::StepLocalMsg)
            | Err(raft::Error::ProposalDropped) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Proposes `data`. Without a leader the proposal waits (a bounded
    /// number of ticks) instead of failing at once.
    pub fn propose(&mut self, data: Vec<u8>, ack: Option<ProposeCallback>) {
        self.propose_payload(Payload::Normal(data), ack);
    }

    /// Proposes `data` only while this member leads in `term`, as raft
    /// itself sees it now: a member that has stepped down or moved to
    /// another term drops the proposal (`NotLeader`) instead of forwarding
    /// it to the new leader. A published [`NodeStatus`] lags raft (a
    /// leader resumed after a pause still publishes Leader until it has
    /// read its peers' messages), so a decision taken from one is checked
    /// here, where it cannot race a step. Meant for what only the leader
    /// that decided it may propose: the lessor's revokes and checkpoints
    /// (a deposed leader's clock says a lease expired that the new leader
    /// has renewed). An entry appended this way in a term that another
    /// leader has superseded never commits: the newer term's voters refuse
    /// it.
    pub fn propose_as_leader(&mut self, data: Vec<u8>, term: u64) -> Result<()> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader || raft.term != term {
            return Err(Error::NotLeader(term));
        }
        self.release_waiting();
        self.raw.propose(Vec::new(), data).map_err(proposal_error)
    }

    /// Proposes a membership change (raft-rs applies one simple change at
    /// a time; a second one proposed while one is pending becomes an empty
    /// entry). Waits for a leader like [`Peer::propose`]. The change takes
    /// effect when the application calls [`Peer::apply_conf_change`] with
    /// the committed entry.
    pub fn propose_conf_change(&mut self, cc: ConfChange, ack: Option<ProposeCallback>) {
        self.propose_payload(Payload::ConfChange(cc), ack);
    }

    fn propose_payload(&mut self, payload: Payload, ack: Option<ProposeCallback>) {
        if self.raw.raft.leader_id == INVALID_ID {
            self.waiting.push_back(WaitingProposal {
                payload,
                ack,
                since_tick: self.ticks,
            });
            return;
        }
        // Earlier proposals first.
        self.release_waiting();
        self.propose_now(payload, ack);
    }

    /// Applies a committed membership change to raft and to the storage's
    /// configuration; returns the new configuration.
    pub fn apply_conf_change(&mut self, cc: &ConfChange) -> Result<ConfState> {
        let cs = self.raw.apply_conf_change(cc)?;
        self.raw.mut_store().set_conf_state(cs.clone());
        Ok(cs)
    }

    /// Asks the leader to hand leadership to `to` (ignored by a follower;
    /// raft aborts the transfer after an election timeout).
    pub fn transfer_leader(&mut self, to: u64) {
        self.raw.transfer_leader(to);
    }

    /// Replication progress of every member; empty unless this member
    /// leads.
    pub fn progress(&self) -> Vec<Progress> {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return Vec::new();
        }
        let learners = raft.prs().conf().to_conf_state().learners;
        let mut out: Vec<Progress> = raft
            .prs()
            .iter()
            .map(|(&id, p)| Progress {
                id,
                matched: p.matched,
                is_learner: learners.contains(&id),
                recent_active: p.recent_active,
            })
            .collect();
        out.sort_by_key(|p| p.id);
        out
    }

    /// raft's current configuration (voters and learners).
    pub fn conf_state(&self) -> ConfState {
        self.raw.raft.prs().conf().to_conf_state()
    }

    /// Whether this member leads and a membership change it proposed is
    /// not applied yet.
    fn conf_change_pending(&self) -> bool {
        self.raw.raft.state == StateRole::Leader && self.raw.raft.has_pending_conf()
    }

    /// Hands a payload to raft and tells `ack` whether raft took it.
    fn propose_now(&mut self, payload: Payload, ack: Option<ProposeCallback>) {
        if matches!(payload, Payload::ConfChange(_)) && self.conf_change_pending() {
            self.waiting_conf.push_back(WaitingProposal {
                payload,
                ack,
                since_tick: self.ticks,
            });
            return;
        }
        let r = match payload {
            Payload::Normal(data) => self.raw.propose(Vec::new(), data),
            Payload::ConfChange(cc) => self.raw.propose_conf_change(Vec::new(), cc),
        };
        let r = r.map_err(proposal_error);
        if let Some(ack) = ack {
            ack(r);
        }
    }

    /// Queues a linearizable read; see the module doc for batching.
    pub fn queue_read(&mut self, cb: ReadCallback) {
        self.pending_reads.push(cb);
    }

    /// Sends one ReadIndex request for every read queued since the last call.
    pub fn flush_reads(&mut self) {
        if self.pending_reads.is_empty() {
            return;
        }
        if self.raw.raft.leader_id == INVALID_ID {
            // raft-rs silently drops ReadIndex without a leader: the reads
            // wait for one (bounded, see `tick`) instead of failing at once.
            let since = self.ticks;
            self.waiting_reads
                .extend(self.pending_reads.drain(..).map(|cb| (cb, since)));
            return;
        }
        let batch = std::mem::take(&mut self.pending_reads);
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        let mut bytes = self.read_ctx_prefix.to_vec();
        bytes.extend_from_slice(&ctx.to_be_bytes());
        self.raw.read_index(bytes);
        self.inflight_reads.insert(ctx, batch);
    }

    /// Tells raft the state machine has applied up to `applied`.
    pub fn advance_applied(&mut self, applied: u64) {
        if applied > self.applied {
            self.applied = applied;
            let store = self.raw.mut_store();
            store.set_applied(applied);
            // Snapshots carry the membership as of the applied index.
            let cs = self.raw.raft.prs().conf().to_conf_state();
            self.raw.mut_store().set_conf_state(cs);
        }
        self.sync_raft_applied();
    }

    /// Moves raft-rs's applied index to what the application applied, as
    /// far as the log allows (committed and persisted).
    fn sync_raft_applied(&mut self) {
        let log = &self.raw.raft.raft_log;
        let target = self.applied.min(log.committed).min(log.persisted);
        if target > log.applied {
            self.raw.advance_apply_to(target);
        }
    }

    /// Reports whether the snapshot sent to `to` was installed (`ok`) or
    /// failed, so the leader leaves its Snapshot state for `to` (raft-rs's
    /// `report_snapshot`). Transports call it when a snapshot stream ends.
    pub fn report_snapshot(&mut self, to: u64, ok: bool) {
        let status = if ok {
            SnapshotStatus::Finish
        } else {
            SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to, status);
    }

    /// Reports that a message to `to` could not be sent (raft-rs's
    /// `report_unreachable`: the leader probes `to` again).
    pub fn report_unreachable(&mut self, to: u64) {
        self.raw.report_unreachable(to);
    }

    /// Proposes held membership changes once none is pending. Only between
    /// two Readys, like [`Peer::release_waiting`].
    fn release_waiting_conf(&mut self) {
        if self.raw.raft.state != StateRole::Leader {
            // Not leading any more: the proposers retry.
            for p in self.waiting_conf.drain(..) {
                if let Some(ack) = p.ack {
                    ack(Err(Error::ProposalDropped));
                }
            }
            return;
        }
        while !self.conf_change_pending() {
            let Some(p) = self.waiting_conf.pop_front() else {
                break;
            };
            self.propose_now(p.payload, p.ack);
        }
    }

    /// Handles one `Ready`, if any, in etcd's order (see the crate doc).
    /// Committed entries are appended to `committed` for the application.
    /// Returns whether there was a `Ready`.
    ///
    /// For members whose leader may send snapshots (raft log compaction),
    /// use [`Peer::handle_ready_applied`]: this one fails when raft installs
    /// a snapshot, since it has no way to hand it to the application.
    pub fn handle_ready(
        &mut self,
        transport: &dyn Transport,
        committed: &mut Vec<CommittedEntry>,
    ) -> Result<bool> {
        let mut out = Vec::new();
        let had = self.handle_ready_applied(transport, &mut out)?;
        for a in out {
            match a {
                ToApply::Entries(es) => committed.extend(es),
                ToApply::Snapshot(s) => {
                    return Err(Error::Snapshot(format!(
                        "raft installed snapshot {} (term {}), which handle_ready cannot hand \
                         to the application; use handle_ready_applied",
                        s.index, s.term
                    )))
                }
            }
        }
        Ok(had)
    }

    /// Handles one `Ready`, if any, in etcd's order (see the crate doc), and
    /// appends what the application must apply to `out`, in order: an
    /// installed snapshot ([`ToApply::Snapshot`], see the snapshot module)
    /// comes before the committed entries that follow it. Returns whether
    /// there was a `Ready`.
    pub fn handle_ready_applied(
        &mut self,
        transport: &dyn Transport,
        out: &mut Vec<ToApply>,
    ) -> Result<bool> {
        if !self.raw.has_ready() {
            return Ok(false);
        }
        let mut rd = self.raw.ready();
        if let Some(ss) = rd.ss() {
            self.on_leader(ss.leader_id);
        }
        // A leader sends in parallel with persisting.
        if !rd.messages().is_empty() {
            transport.send(rd.take_messages());
        }
        for rs in rd.take_read_states() {
            self.on_read_state(&rs.request_ctx, rs.index);
        }
        let mut committed = Vec::new();
        collect_committed(rd.take_committed_entries(), &mut committed);
        push_entries(out, committed);
        let mut installed = None;
        if rd.snapshot().is_empty() {
            let must_sync = rd.must_sync();
            let here = must_sync && self.light_load();
            let storage = self.raw.mut_store();
            if here {
                storage.persist_now(rd.entries(), rd.hs())?;
            } else {
                storage.persist(rd.entries(), rd.hs(), must_sync)?;
            }
        } else {
            // Snapshot before entries (raft-rs hands no committed entries
            // with a snapshot); the image behind `data` is already durable.
            let snap = rd.snapshot().clone();
            self.raw
                .mut_store()
                .apply_snapshot(&snap, rd.entries(), rd.hs())?;
            let meta = snap.get_metadata();
            installed = Some(meta.index);
            out.push(ToApply::Snapshot(SnapshotInfo {
                index: meta.index,
                term: meta.term,
                conf_state: meta.get_conf_state().clone(),
                data: snap.data.clone(),
            }));
        }
        if !rd.persisted_messages().is_empty() {
            transport.send(rd.take_persisted_messages());
        }
        // Not `advance`: it would also mark this Ready's committed entries
        // applied, but they are applied asynchronously by the application,
        // which reports progress through `advance_applied`.
        let mut light = self.raw.advance_append(rd);
        if let Some(index) = installed {
            // raft-rs counts the snapshot as applied (it slices the log from
            // its applied index, which must not point below the log).
            if index > self.raw.raft.raft_log.applied {
                self.raw.advance_apply_to(index);
            }
        }
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit);
        }
        if !light.messages().is_empty() {
            transport.send(light.take_messages());
        }
        let mut committed = Vec::new();
        collect_committed(light.take_committed_entries(), &mut committed);
        push_entries(out, committed);
        self.sync_raft_applied();
        self.release_waiting();
        self.release_waiting_conf();
        Ok(true)
    }

    /// Whether the log holds few enough unapplied entries (this `Ready`'s
    /// included) for its write to be synced on this thread; see
    /// [`NodeConfig::persist_here_max_unapplied`].
    fn light_load(&self) -> bool {
        let max = self.persist_here_max_unapplied;
        max > 0
            && self
                .raw
                .raft
                .raft_log
                .last_index()
                .saturating_sub(self.applied)
                <= max
    }

    fn on_leader(&mut self, leader: u64) {
        if leader == self.leader {
            return;
        }
        let had_leader = self.leader != INVALID_ID;
        self.leader = leader;
        // Read batches sent to the old leader may never be answered (etcd
        // answers them "leader changed").
        for (_, batch) in self.inflight_reads.drain() {
            for cb in batch {
                cb(Err(if had_leader {
                    Error::LeaderChanged
                } else {
                    Error::NoLeader
                }));
            }
        }
    }

    /// Hands proposals that waited for a leader to raft, once there is one.
    /// Only between two Readys: a proposal appends to raft's unstable log,
    /// which must not change while a Ready is being handled.
    fn release_waiting(&mut self) {
        if self.raw.raft.leader_id == INVALID_ID {
            return;
        }
        while let Some(p) = self.waiting.pop_front() {
            self.propose_now(p.payload, p.ack);
        }
    }

    fn on_read_state(&mut self, ctx: &[u8], index: u64) {
        let Some(seq) = ctx.strip_prefix(&self.read_ctx_prefix[..]) else {
            return;
        };
        let Ok(ctx) = <[u8; 8]>::try_from(seq) else {
            return;
        };
        if let Some(batch) = self.inflight_reads.remove(&u64::from_be_bytes(ctx)) {
            for cb in batch {
                cb(Ok(index));
            }
        }
    }

    /// A snapshot of this member's raft status.
    pub fn status(&self) -> NodeStatus {
        let raft = &self.raw.raft;
        NodeStatus {
            id: raft.id,
            leader_id: raft.leader_id,
            term: raft.term,
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            last_index: raft.raft_log.last_index(),
            role: match raft.state {
                StateRole::Follower => Role::Follower,
                StateRole::Candidate => Role::Candidate,
                StateRole::PreCandidate => Role::PreCandidate,
                StateRole::Leader => Role::Leader,
            },
            leader_changes: 0,
            is_learner: raft
                .prs()
                .conf()
                .to_conf_state()
                .learners
                .contains(&raft.id),
        }
    }

    /// Compacts the raft log up to `index` (see [`WalStorage::compact`]);
    /// never past what raft itself, or the application, has applied.
    pub fn compact_log(&mut self, index: u64) -> Result<()> {
        let index = index.min(self.raw.raft.raft_log.applied).min(self.applied);
        self.raw.mut_store().compact(index)
    }

    /// The storage, for metrics.
    pub fn storage(&self) -> &WalStorage {
        self.raw.store()
    }

    /// Fails everything still waiting (the node is stopping).
    pub fn fail_all(&mut self, why: impl Fn() -> Error) {
        for p in self.waiting.drain(..).chain(self.waiting_conf.drain(..)) {
            if let Some(ack) = p.ack {
                ack(Err(why()));
            }
        }
        let waiting = self.waiting_reads.drain(..).map(|(cb, _)| cb);
        for cb in self.pending_reads.drain(..).chain(waiting) {
            cb(Err(why()));
        }
        for (_, batch) in self.inflight_reads.drain() {
            for cb in batch {
                cb(Err(why()));
            }
        }
    }
}

/// Appends entries to `out`, joining them with a preceding `Entries`.
fn push_entries(out: &mut Vec<ToApply>, entries: Vec<CommittedEntry>) {
    if entries.is_empty() {
        return;
    }
    if let Some(ToApply::Entries(last)) = out.last_mut() {
        last.extend(entries);
    } else {
        out.push(ToApply::Entries(entries));
    }
}

fn collect_committed(entries: Vec<Entry>, out: &mut Vec<CommittedEntry>) {
    out.extend(entries.into_iter().map(|e| CommittedEntry {
        index: e.index,
        term: e.term,
        kind: match e.get_entry_type() {
            EntryType::EntryNormal => EntryKind::Normal,
            EntryType::EntryConfChange => EntryKind::ConfChange,
            EntryType::EntryConfChangeV2 => EntryKind::ConfChangeV2,
        },
        data: e.data,
    }));
}

/// Why raft-rs refused a proposal, as this crate says it.
fn proposal_error(e: raft::Error) -> Error {
    match e {
        raft::Error::ProposalDropped => Error::ProposalDropped,
        e => Error::Raft(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::{ConfState, MessageType};

    #[derive(Default)]
    struct Collect(parking_lot::Mutex<Vec<Message>>);

    impl Transport for Collect {
        fn send(&self, msgs: Vec<Message>) {
            self.0.lock().extend(msgs);
        }
    }

    /// A follower installs a snapshot and then, before its application
    /// reports having installed the image (apply is asynchronous), times
    /// out and campaigns: raft-rs must already count the snapshot as
    /// applied, or it would read compacted entries from its applied index.
    #[test]
    fn a_follower_installs_a_snapshot_before_the_application_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2, 3];
        let storage = WalStorage::create(dir.path(), Default::default(), b"", cs.clone()).unwrap();
        let cfg = NodeConfig {
            id: 2,
            voters: vec![1, 2, 3],
            ..NodeConfig::default()
        };
        let mut peer = Peer::new(&cfg, storage).unwrap();
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.from = 1;
        m.to = 2;
        m.term = 2;
        let meta = m.mut_snapshot().mut_metadata();
        meta.index = 50;
        meta.term = 2;
        meta.set_conf_state(cs);
        m.mut_snapshot().data = bytes::Bytes::from_static(b"token");
        peer.step(m).unwrap();
        let t = Collect::default();
        let mut out = Vec::new();
        while peer.handle_ready_applied(&t, &mut out).unwrap() {}
        assert_eq!(out.len(), 1);
        let ToApply::Snapshot(info) = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (info.index, info.term, &info.data[..]),
            (50, 2, &b"token"[..])
        );
        assert_eq!(raft::Storage::first_index(peer.storage()).unwrap(), 51);
        let acks: Vec<u64> =
            t.0.lock()
                .iter()
                .filter(|m| m.get_msg_type() == MessageType::MsgAppendResponse)
                .map(|m| m.index)
                .collect();
        assert_eq!(acks, vec![50], "the leader learns the follower is at 50");
        // The application has not installed the image yet (applied 0);
        // the leader is gone: election timeouts, campaigns.
        for _ in 0..100 {
            peer.tick();
            while peer.handle_ready_applied(&t, &mut out).unwrap() {}
        }
        assert_eq!(
            peer.status().applied_index,
            0,
            "what the application reported"
        );
        assert_ne!(peer.status().role, Role::Follower, "it campaigned");
        // The application catches up; nothing below the snapshot is asked for.
        peer.advance_applied(50);
        assert_eq!(peer.status().applied_index, 50);
        assert_eq!(peer.storage().applied(), 50);
    }

    /// Under light load a `Ready`'s entries are synced on the raft thread
    /// (`Wal::append_sync_now`); with more unapplied entries than
    /// `persist_here_max_unapplied`, or with it 0, the WAL's writer thread
    /// takes them (group commit). Either way they are durable before they
    /// are committed and handed over.
    #[test]
    fn light_load_persists_on_the_raft_thread() {
        for (max, light_goes_here) in [(2, true), (0, false)] {
            let dir = tempfile::tempdir().unwrap();
            let mut cs = ConfState::default();
            cs.voters = vec![1];
            let storage = WalStorage::create(dir.path(), Default::default(), b"", cs).unwrap();
            let cfg = NodeConfig {
                persist_here_max_unapplied: max,
                ..NodeConfig::default()
            };
            let mut peer = Peer::new(&cfg, storage).unwrap();
            peer.campaign().unwrap();
            let t = Collect::default();
            let mut out = Vec::new();
            while peer.handle_ready_applied(&t, &mut out).unwrap() {}
            let applied = |out: &mut Vec<ToApply>| -> u64 {
                let last = out
                    .drain(..)
                    .filter_map(|a| match a {
                        ToApply::Entries(es) => es.last().map(|e| e.index),
                        ToApply::Snapshot(s) => Some(s.index),
                    })
                    .max();
                last.unwrap_or(0)
            };
            let mut index = applied(&mut out);
            peer.advance_applied(index);
            let caller = |p: &Peer| p.storage().wal().metrics().caller_commits_total;
            let before = caller(&peer);

            // One proposal at a time, each applied before the next: light.
            for i in 0..3u8 {
                peer.propose(vec![i], None);
                while peer.handle_ready_applied(&t, &mut out).unwrap() {}
                let last = applied(&mut out);
                assert_eq!(last, index + 1, "committed and handed over");
                index = last;
                peer.advance_applied(index);
            }
            let light = caller(&peer) - before;
            assert_eq!(light, if light_goes_here { 3 } else { 0 }, "max {max}");

            // Three proposals in one Ready, none applied: heavier than 2.
            let before = caller(&peer);
            for i in 0..3u8 {
                peer.propose(vec![i], None);
            }
            while peer.handle_ready_applied(&t, &mut out).unwrap() {}
            assert_eq!(applied(&mut out), index + 3);
            assert_eq!(
                caller(&peer),
                before,
                "max {max}: through the writer thread"
            );
            assert_eq!(
                raft::Storage::last_index(peer.storage()).unwrap(),
                index + 3,
                "persisted"
            );
        }
    }

    fn peer(id: u64, dir: &std::path::Path) -> Peer {
        let mut cs = ConfState::default();
        cs.voters = vec![1, 2, 3];
        let storage = WalStorage::create(dir, Default::default(), b"", cs).unwrap();
        let cfg = NodeConfig {
            id,
            voters: vec![1, 2, 3],
            ..NodeConfig::default()
        };
        Peer::new(&cfg, storage).unwrap()
    }

    /// Hands every message the peers send to its addressee until none
    /// is left, except those to `deaf` (lost).
    fn pump(peers: &mut [Peer], deaf: Option<u64>) {
        loop {
            let t = Collect::default();
            for p in peers.iter_mut() {
                while p.handle_ready(&t, &mut Vec::new()).unwrap() {}
            }
            let msgs = t.0.into_inner();
            if msgs.is_empty() {
                return;
            }
            for m in msgs.into_iter().filter(|m| Some(m.to) != deaf) {
                peers[m.to as usize - 1].step(m).unwrap();
            }
        }
    }

    /// A leader deposed while it could not hear (paused, cut off) decides
    /// from what it last knew; `propose_as_leader` takes its proposal only
    /// while raft still leads in that term, and never forwards it to the
    /// new leader, as `propose` does.
    #[test]
    fn a_proposal_as_leader_of_an_old_term_is_dropped_not_forwarded() {
        let dir = tempfile::tempdir().unwrap();
        let mut peers: Vec<Peer> = (1..=3)
            .map(|id| peer(id, &dir.path().join(id.to_string())))
            .collect();
        peers[0].campaign().unwrap();
        pump(&mut peers, None);
        let old = peers[0].status();
        assert_eq!(old.role, Role::Leader);
        let last = old.last_index;
        peers[0]
            .propose_as_leader(b"mine".to_vec(), old.term)
            .unwrap();
        assert!(matches!(
            peers[0].propose_as_leader(b"later".to_vec(), old.term + 1),
            Err(Error::NotLeader(t)) if t == old.term + 1
        ));
        pump(&mut peers, None);
        assert_eq!(peers[0].status().last_index, last + 1, "one entry taken");
        // Member 2 takes over while member 1 hears nothing, then member 1
        // hears of the new term.
        peers[0].transfer_leader(2);
        pump(&mut peers, Some(1));
        assert_eq!(peers[1].status().role, Role::Leader);
        assert_eq!(peers[0].status().role, Role::Leader, "still believes it");
        // The new leader's heartbeat.
        for _ in 0..NodeConfig::default().heartbeat_tick {
            peers[1].tick();
        }
        pump(&mut peers, None);
        assert_eq!(peers[0].status().role, Role::Follower);
        let t = Collect::default();
        assert!(matches!(
            peers[0].propose_as_leader(b"stale".to_vec(), old.term),
            Err(Error::NotLeader(_))
        ));
        while peers[0].handle_ready(&t, &mut Vec::new()).unwrap() {}
        assert!(t.0.lock().is_empty(), "nothing forwarded: {:?}", t.0.lock());
        // The control: a plain proposal is forwarded to the new leader.
        peers[0].propose(b"forwarded".to_vec(), None);
        while peers[0].handle_ready(&t, &mut Vec::new()).unwrap() {}
        let sent = t.0.lock();
        assert!(
            sent.iter()
                .any(|m| m.get_msg_type() == MessageType::MsgPropose && m.to == 2),
            "{sent:?}"
        );
    }

    /// A restarted member must not reuse the read contexts of its previous
    /// incarnation (the leader may still hold one pending and would answer
    /// the new read with the old index), nor another member's.
    #[test]
    fn read_contexts_are_unique_across_members_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let a = peer(2, &dir.path().join("a"));
        let restarted = peer(2, &dir.path().join("b"));
        let other = peer(3, &dir.path().join("c"));
        assert_ne!(a.read_ctx_prefix, restarted.read_ctx_prefix);
        assert_ne!(a.read_ctx_prefix[..8], other.read_ctx_prefix[..8]);
        assert_eq!(a.read_ctx_prefix[..8], 2u64.to_be_bytes());
    }
}
