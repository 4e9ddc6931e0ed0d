//! The engine handle: starts a member and serves the KV, Maintenance and
//! Cluster APIs (etcd's `etcdserver` package).
//!
//! Write path: validate -> encode a [`RaftRequest`] with a fresh id ->
//! register a waiter -> propose to raft -> the apply thread applies the
//! committed entry to the MVCC store and triggers the waiter with the
//! response.
//!
//! Read path: serializable reads run on the local store at once;
//! linearizable reads first get a ReadIndex from raft (batched with other
//! reads), wait until the apply thread has applied that index, then run
//! locally. Read-only txns take the read path too, as in etcd.

//!
//! Files (none depends on one listed after it):
//! - `etcd`: [`Etcd`], its shared state, proposing and linearizable reads;
//! - `peer_query`: the messages members exchange besides raft;
//! - `peer_client`: asking other members (joining, forwarding to the leader);
//! - `kv`, `maintenance`, `cluster`, `auth`: the APIs, as `impl Etcd` blocks
//!   (the lease, lock and election APIs are `v3lease`, `v3lock`,
//!   `v3election` beside this directory);
//! - `peer_serve`: answering other members;
//! - `publish`: publishing this member's attributes;
//! - `start`: [`Etcd::start`], wiring all of the above together.

mod auth;
mod auto_compaction;
mod cluster;
mod corrupt;
mod etcd;
mod kv;
mod maintenance;
mod peer_client;
mod peer_query;
mod peer_serve;
mod prober;
mod publish;
mod start;

pub use etcd::{Etcd, SERVER_VERSION};
pub use maintenance::{SnapshotDb, SNAPSHOT_CHUNK};
pub(crate) use peer_client::{forward_lease_renew, forward_lease_time_to_live};
pub use start::StartOptions;
