//! The steps of a member's apply loop (etcd's `applyAll`: apply a snapshot
//! or a batch of committed entries, then trigger a raft log snapshot),
//! shared by the server's apply thread (`server.rs`) and the deterministic
//! cluster simulation, so that the simulation runs the code that ships.
//!
//! One batch, as raft hands it over ([`etcd_raft_node::ToApply`]):
//! - a snapshot: the leader's store image replaces the state machine
//!   ([`Applier::install_snapshot`]) and raft hears that everything up to
//!   the store's consistent index is applied;
//! - entries: each is applied in log order ([`Applier::apply_entry`]),
//!   raft hears of the last one, and every [`LogCompaction::every`]
//!   applied entries the store is flushed and the raft log cut below its
//!   durable consistent index, keeping [`LogCompaction::keep`] entries for
//!   followers to catch up without a snapshot (etcd's `--snapshot-count`
//!   and `SnapshotCatchUpEntries`).
//!
//! What only a real member does with the outcome (telling the peer
//! transport of new members, resyncing watchers after a snapshot, stopping
//! once removed) is left to the caller through [`BatchOutcome`]. Raft is
//! reached through [`RaftHandle`]: the server's threaded `RaftNode` or the
//! simulation's synchronous `Peer`.
//!
//! Worked example (snapshot count 25, catch-up 3): entries 1..=30 arrive in
//! batches of 10; after the batch ending at 30, 30 - 0 >= 25, so the store
//! is flushed (say its consistent index is 30) and the raft log is
//! compacted up to 27; the next compaction comes at 55 or later.

use crate::applier::{Applier, ConfChanger, Effect};
use crate::snapshot::StoreSnapshots;
use etcd_mvcc::Store;
use etcd_raft_node::{CommittedEntry, Peer, RaftNode};
use std::sync::Arc;

/// What the apply loop needs from raft.
pub(crate) trait RaftHandle: ConfChanger {
    /// Entries up to `index` are applied (raft-rs `advance_apply_to`).
    fn advance_applied(&mut self, index: u64);
    /// Drops the raft log up to `index` (kept in a raft snapshot).
    fn compact_log(&mut self, index: u64) -> Result<(), String>;
}

impl RaftHandle for &RaftNode {
    fn advance_applied(&mut self, index: u64) {
        self.set_applied(index);
    }
    fn compact_log(&mut self, index: u64) -> Result<(), String> {
        RaftNode::compact_log(self, index);
        Ok(())
    }
}

impl RaftHandle for Peer {
    fn advance_applied(&mut self, index: u64) {
        Peer::advance_applied(self, index);
    }
    fn compact_log(&mut self, index: u64) -> Result<(), String> {
        Peer::compact_log(self, index).map_err(|e| format!("compacting the raft log: {e}"))
    }
}

/// Sees each entry applied, before and after (the simulation records what
/// every request did; the server needs nothing).
pub(crate) trait ApplyObserver {
    /// Entry `e` is about to be applied to `store`.
    fn before(&mut self, _e: &CommittedEntry, _store: &Store) {}
    /// The entry at `index` was applied.
    fn after(&mut self, _index: u64, _store: &Store) {}
}

impl ApplyObserver for () {}

/// When to compact the raft log (etcd's `--snapshot-count`).
#[derive(Clone, Copy, Debug)]
struct LogCompaction {
    /// Applied entries between compactions.
    every: u64,
    /// Entries kept below the compaction point.
    keep: u64,
    /// Applied index at the last compaction (or at start).
    last: u64,
}

/// What applying one batch did, for the caller to act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BatchOutcome {
    /// A leader's store image was installed (or found older than the store).
    pub(crate) snapshot: bool,
    /// The image held no membership (the old one was kept).
    pub(crate) snapshot_without_members: bool,
    /// The membership changed: the peer transport must follow.
    pub(crate) members_changed: bool,
    /// This member applied its own removal: it must stop.
    pub(crate) removed: bool,
    /// The raft log was compacted.
    pub(crate) log_compacted: bool,
    /// A write took the store over its quota: raise NOSPACE.
    pub(crate) over_quota: bool,
}

/// A member's apply loop state: the applier, the store's snapshot images
/// (received images are installed from them), the applied index and the
/// log compaction schedule.
pub(crate) struct ApplySteps {
    pub(crate) applier: Applier,
    /// The store's images (shared with the transport that sends and
    /// receives them).
    snapshots: Arc<StoreSnapshots>,
    /// Last index applied (reported to raft).
    applied: u64,
    log: LogCompaction,
}

impl ApplySteps {
    /// Starts at the store's consistent index.
    pub(crate) fn new(
        applier: Applier,
        snapshots: Arc<StoreSnapshots>,
        every: u64,
        keep: u64,
    ) -> ApplySteps {
        let applied = applier.store.consistent_index();
        ApplySteps {
            applier,
            snapshots,
            applied,
            log: LogCompaction {
                every,
                keep,
                last: applied,
            },
        }
    }

    /// The last index applied.
    pub(crate) fn applied(&self) -> u64 {
        self.applied
    }

    /// The store's snapshot images (the simulation's network carries them).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn snapshots(&self) -> &Arc<StoreSnapshots> {
        &self.snapshots
    }

    /// Applies one batch from raft. An error means the state machine can
    /// no longer follow raft (an image that does not install): the member
    /// must stop, and a restart re-installs the retained image.
    pub(crate) fn apply<R: RaftHandle>(
        &mut self,
        batch: etcd_raft_node::ToApply,
        raft: &mut R,
        observer: &mut dyn ApplyObserver,
    ) -> Result<BatchOutcome, String> {
        match batch {
            etcd_raft_node::ToApply::Snapshot(info) => {
                let has_members = self
                    .applier
                    .install_snapshot(&self.snapshots.files, &info)?;
                // Entries up to the snapshot are covered; the image may be
                // newer (it is cut at the leader's applied index).
                let ci = self.applier.store.consistent_index();
                self.applied = self.applied.max(info.index).max(ci);
                raft.advance_applied(self.applied);
                self.log.last = self.applied;
                Ok(BatchOutcome {
                    snapshot: true,
                    snapshot_without_members: !has_members,
                    members_changed: true,
                    ..BatchOutcome::default()
                })
            }
            etcd_raft_node::ToApply::Entries(entries) => {
                self.apply_entries(entries, raft, observer)
            }
        }
    }

    fn apply_entries<R: RaftHandle>(
        &mut self,
        entries: Vec<CommittedEntry>,
        raft: &mut R,
        observer: &mut dyn ApplyObserver,
    ) -> Result<BatchOutcome, String> {
        let mut out = BatchOutcome::default();
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(out);
        };
        for e in entries {
            let index = e.index;
            observer.before(&e, &self.applier.store);
            match self.applier.apply_entry(e, raft) {
                Effect::None => {}
                Effect::MembersChanged => out.members_changed = true,
                Effect::RemovedSelf => out.removed = true,
                Effect::OverQuota => out.over_quota = true,
            }
            observer.after(index, &self.applier.store);
        }
        self.applied = self.applied.max(last);
        raft.advance_applied(self.applied);
        if !out.removed {
            out.log_compacted = self.maybe_compact_log(raft)?;
        }
        Ok(out)
    }

    /// Every `every` applied entries: flush the store, then cut the raft
    /// log below what it holds durably (docs/design.md, "Durability").
    fn maybe_compact_log<R: RaftHandle>(&mut self, raft: &mut R) -> Result<bool, String> {
        if self.applied - self.log.last < self.log.every {
            return Ok(false);
        }
        self.log.last = self.applied;
        let store = &self.applier.store;
        if let Err(e) = store.flush() {
            tracing::error!(error = %e, "flushing the store failed; raft log kept");
            return Ok(false);
        }
        raft.compact_log(store.consistent_index().saturating_sub(self.log.keep))?;
        Ok(true)
    }
}
