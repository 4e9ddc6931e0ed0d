//! What the raft member hands to the application: committed entries,
//! installed snapshots and its status. Shared by [`Peer`](crate::Peer) (the
//! synchronous state machine driver) and [`RaftNode`](crate::RaftNode) (the
//! thread that owns one).

use crate::snapshot::SnapshotInfo;

/// The kind of a committed entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// An application payload (empty for a new leader's no-op entry).
    Normal,
    /// A membership change (raft `ConfChange`).
    ConfChange,
    /// A membership change (raft `ConfChangeV2`).
    ConfChangeV2,
}

/// A committed, locally durable log entry for the application to apply.
#[derive(Clone, Debug)]
pub struct CommittedEntry {
    /// Log index.
    pub index: u64,
    /// Term of the leader that created it.
    pub term: u64,
    /// What the payload is.
    pub kind: EntryKind,
    /// The payload as proposed.
    pub data: bytes::Bytes,
}

/// What the raft thread hands to the application, in log order.
#[derive(Debug)]
pub enum ToApply {
    /// Entries to apply, in order.
    Entries(Vec<CommittedEntry>),
    /// A snapshot raft installed (durable in the WAL): replace the state
    /// machine with the image its token names, then go on with the entries
    /// that follow (skipping those at or below the image's applied index).
    /// See the snapshot module for the restart protocol.
    Snapshot(SnapshotInfo),
}

/// A member's role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Role {
    /// Following a leader (or waiting for one).
    #[default]
    Follower,
    /// Asking for votes.
    Candidate,
    /// Checking whether an election could be won (pre-vote).
    PreCandidate,
    /// Leading.
    Leader,
}

/// A snapshot of the member's raft status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeStatus {
    /// This member.
    pub id: u64,
    /// The leader this member knows of, 0 if none.
    pub leader_id: u64,
    /// Current term.
    pub term: u64,
    /// Highest committed index.
    pub commit_index: u64,
    /// Highest index applied by the state machine.
    pub applied_index: u64,
    /// Last index in the log.
    pub last_index: u64,
    /// Role.
    pub role: Role,
    /// Whether this member is a learner.
    pub is_learner: bool,
    /// Times this member saw a new leader since it started (etcd's
    /// `etcd_server_leader_changes_seen_total`); kept by [`RaftNode`]
    /// (zero in a bare `Peer`'s status).
    ///
    /// [`RaftNode`]: crate::RaftNode
    pub leader_changes: u64,
}
