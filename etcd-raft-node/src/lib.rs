//! Drives a raft-rs [`RawNode`](raft::RawNode) over the [`etcd_wal`] write-ahead log.
//!
//! The application (etcd-core) talks to a [`RaftNode`]: it proposes opaque
//! byte payloads, asks for ReadIndex reads, and receives committed entries on
//! a channel, in log order, to apply to its state machine. After applying, it
//! reports the applied index back with [`RaftNode::set_applied`].
//!
//! # The ready loop
//!
//! One thread owns the `RawNode` (see [`Peer`]). Each turn of its loop:
//!
//! 1. waits for a command (proposal, read request, peer message), bytes on
//!    a peer's message stream it reads itself ([`RaftNode::adopt_stream`])
//!    or a tick, then drains every command already queued, so that many
//!    proposals and reads share one `Ready` (and one WAL fsync, and one
//!    ReadIndex round);
//! 2. handles the `Ready` in etcd's order: messages of a leader are sent
//!    *before* persisting (in parallel with the fsync); a snapshot is saved
//!    before entries; new entries and the hard state are written to the WAL
//!    and fsynced before the in-memory log sees them; messages that must wait
//!    for persistence (a follower's votes and append responses) are sent
//!    after; committed entries go to the apply channel; then `advance`.
//!
//! Only entries that are both committed and locally persisted are ever
//! handed to the application (raft-rs guarantees this).
//!
//! # Snapshots
//!
//! When the application compacts the raft log ([`RaftNode::compact_log`]),
//! a follower behind the compaction point catches up through a state
//! machine snapshot: the application implements [`SnapshotIo`], transports
//! move the image out of band, and the follower's application receives an
//! [`ToApply::Snapshot`] before the entries after it. See the `snapshot`
//! module (`src/snapshot.rs`) for the protocol and the restart rules.
//!
//! # Example
//!
//! ```
//! use etcd_raft_node::{eraftpb::ConfState, ToApply, NodeConfig, RaftNode, WalStorage};
//! let dir = tempfile::tempdir().unwrap();
//! let mut voters = ConfState::default();
//! voters.voters = vec![1];
//! let storage =
//!     WalStorage::create(dir.path(), Default::default(), b"metadata", voters).unwrap();
//! let (apply_tx, apply_rx) = crossbeam_channel::unbounded();
//! let cfg = NodeConfig { id: 1, voters: vec![1], ..NodeConfig::default() };
//! let node = RaftNode::start(cfg, storage, None, apply_tx).unwrap();
//! node.propose(b"hello".to_vec(), None);
//! // The first committed entries are the empty entry of the new leader and
//! // then our proposal.
//! loop {
//!     let ToApply::Entries(entries) = apply_rx.recv().unwrap() else { continue };
//!     node.set_applied(entries.last().unwrap().index);
//!     if entries.iter().any(|e| &e.data[..] == b"hello") { break; }
//! }
//! node.stop();
//! ```

mod config;
mod error;
mod logger;
#[cfg(any(test, feature = "testing"))]
mod mem_network;
mod node;
mod peer;
pub mod peer_query;
mod peer_tls;
pub mod rafthttp;
mod snapshot;
mod storage;
mod tcp_inbound;
mod tcp_outbox;
mod tcp_transport;
mod transport;
mod types;

pub use config::NodeConfig;
pub use error::{Error, Result};
/// The seeded in-memory network of simulations (test support: `testing`
/// feature; no product build has it).
#[cfg(any(test, feature = "testing"))]
pub use mem_network::{Faults, MemNetwork, MemTransport, NetStats};
pub use node::RaftNode;
pub use peer::{Peer, Progress};
pub use peer::{ProposeCallback, ReadCallback};
pub use peer_query::QueryHandler;
pub use peer_tls::{PeerTls, PeerTlsHandle};
pub use snapshot::{transfer_inline, SnapshotInfo, SnapshotIo, SnapshotSink, SNAPSHOT_CHUNK_BYTES};
pub use storage::{Opened, WalRecovery, WalStorage};
pub use tcp_inbound::InboundStream;
/// Peer frame decoding from untrusted bytes, for the fuzz target
/// (`testing` feature).
#[cfg(any(test, feature = "testing"))]
pub use tcp_transport::fuzzing as tcp_fuzzing;
pub use tcp_transport::{
    AdoptStream, MemberStatus, MemberStatusFn, PeerStats, ReportSnapshot, ReportUnreachable,
    TcpTransport, TcpTransportConfig, TransportHooks,
};
pub use transport::{Deliver, NoopTransport, Transport};
pub use types::{CommittedEntry, EntryKind, NodeStatus, Role, ToApply};

/// Re-exported raft message types, for transports.
pub use raft::eraftpb;
