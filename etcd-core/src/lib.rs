//! The embeddable etcd-compatible engine.
//!
//! Start a member with [`Etcd::start`] and call the KV API directly, with
//! etcd's semantics and error messages:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use etcd_core::{pb::etcdserverpb::{PutRequest, RangeRequest}, Config, Etcd, RequestContext};
//! let etcd = Etcd::start(Config::single("demo", "/tmp/demo.etcd"))?;
//! // Every call says who asks; the embedding program itself is LOCAL.
//! let ctx = &RequestContext::LOCAL;
//! etcd.put(ctx, PutRequest { key: "k".into(), value: "v".into(), ..Default::default() }).await?;
//! let resp = etcd.range(ctx, RangeRequest { key: "k".into(), ..Default::default() }).await?;
//! assert_eq!(&resp.kvs[0].value[..], b"v");
//! etcd.stop();
//! # Ok(()) }
//! ```
//!
//! Layers underneath: `etcd-raft-node` (raft-rs over `etcd-wal`) and
//! `etcd-mvcc` (the MVCC store on RocksDB). See docs/design.md.

#![warn(missing_docs)]

pub mod alarms;
mod applier;
mod apply;
mod apply_auth;
mod apply_loop;
#[cfg(test)]
mod apply_range_tests;
pub mod auth;
mod background;
pub mod backup;
pub mod bbolt_layout;
mod bootstrap;
pub mod client;
mod cluster;
mod compactor;
mod concurrency;
mod config;
mod datadir;
mod db_stream;
pub use db_stream::wait_for_snapshot_threads;
pub mod defrag_data;
mod error;
mod etcd_entries;
mod etcd_import;
pub mod failpoints;
pub mod fatal;
/// Request decoding and apply from untrusted bytes, for the fuzz target
/// (test support: `testing` feature; no product build has it).
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fuzzing;
mod go_duration;
#[cfg(feature = "integration")]
pub mod integration;
mod lease_ticker;
pub mod lessor;
/// A linearizability checker for recorded client histories (test support:
/// `testing` feature).
#[cfg(any(test, feature = "testing"))]
#[allow(missing_docs)]
pub mod linearizability;
mod membership;
mod metrics;
pub mod pb;
#[cfg(feature = "integration")]
mod peer_cuts;
mod quota;
mod raft_request;
mod request_check;
mod request_context;
mod server;
/// The deterministic cluster simulation (test support: `testing` feature).
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod simulation;
pub mod snapshot;
pub mod v3_snapshot;
mod v3election;
mod v3lease;
mod v3lock;
mod wait;
mod watchable_store;
mod watcher;
mod watcher_group;

pub use compactor::{AutoCompaction, REVISION_INTERVAL as AUTO_COMPACTION_REVISION_INTERVAL};
pub use config::{ClusterState, Config, DEFAULT_QUOTA_BYTES};
pub use datadir::{DataDir, FORMAT_VERSION};
pub use error::{Code, Error, Result, StartError, WatchError};
/// TLS for peer connections (see [`StartOptions::peer_tls`]).
pub use etcd_raft_node::{PeerTls, PeerTlsHandle};
pub use go_duration::parse_go_duration;
pub use membership::{cluster_id, format_id, member_id, parse_initial_cluster, Member};
pub use metrics::Metrics;
pub use request_context::RequestContext;
pub use server::{Etcd, SnapshotDb, StartOptions, SERVER_VERSION, SNAPSHOT_CHUNK};
pub use watcher::WatchStream;
