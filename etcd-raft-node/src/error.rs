//! Errors of the raft node.

/// What went wrong, phrased as what the caller must do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The WAL failed; the node cannot persist and has stopped.
    #[error("wal: {0}")]
    Wal(#[from] etcd_wal::Error),
    /// raft-rs refused an operation (e.g. an invalid configuration).
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The proposal was dropped: there is no leader to take it. Retry later.
    #[error("proposal dropped: no leader")]
    ProposalDropped,
    /// A proposal meant for the leader of this term was dropped: this
    /// member does not lead it (any more). See [`Peer::propose_as_leader`].
    ///
    /// [`Peer::propose_as_leader`]: crate::Peer::propose_as_leader
    #[error("not the leader of term {0}")]
    NotLeader(u64),
    /// There is no leader to serve a ReadIndex request. Retry later.
    #[error("no leader")]
    NoLeader,
    /// The leader changed while a ReadIndex request was in flight. Retry.
    #[error("leader changed")]
    LeaderChanged,
    /// The node has stopped.
    #[error("raft node stopped")]
    Stopped,
    /// A query to another member failed.
    #[error("{0}")]
    Peer(String),
    /// The configuration is invalid.
    #[error("invalid raft node configuration: {0}")]
    Config(String),
    /// An I/O error, e.g. in a [`SnapshotSink`](crate::SnapshotSink).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Exporting, moving or importing a state machine snapshot failed.
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
