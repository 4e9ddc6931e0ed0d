//! Cut raft traffic between members, for in-process cluster tests
//! (feature `integration`; no product build has it): etcd's integration
//! `CutPeer`/`MendPeer`, which pause the rafthttp streams to and from a
//! peer. A member drops the raft messages it would send to a cut peer and
//! those it receives from one; other peer traffic (membership queries,
//! forwarded lease renewals, probes) passes, as in etcd.
//!
//! Example: members a, b, c. `a` cuts b and c, and b and c each cut a:
//! a is isolated; it campaigns alone, b and c keep their leader. Mending
//! the same cuts heals it.

use etcd_raft_node::eraftpb::Message;
use etcd_raft_node::Transport;
use parking_lot::RwLock;
use std::collections::HashSet;
use std::sync::Arc;

/// The peers one member does not exchange raft messages with.
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerCuts(Arc<RwLock<HashSet<u64>>>);

impl PeerCuts {
    /// Cuts raft traffic (both ways, at this member) with exactly `peers`.
    pub(crate) fn set(&self, peers: HashSet<u64>) {
        *self.0.write() = peers;
    }
    /// Whether traffic with `peer` is cut.
    pub(crate) fn is_cut(&self, peer: u64) -> bool {
        self.0.read().contains(&peer)
    }
    /// `transport` without the messages to cut peers.
    pub(crate) fn filter(&self, transport: Arc<dyn Transport>) -> Arc<dyn Transport> {
        Arc::new(CutTransport {
            inner: transport,
            cuts: self.clone(),
        })
    }
}

/// A transport that drops messages to cut peers.
struct CutTransport {
    inner: Arc<dyn Transport>,
    cuts: PeerCuts,
}

impl Transport for CutTransport {
    fn send(&self, mut msgs: Vec<Message>) {
        let cuts = self.cuts.0.read();
        if !cuts.is_empty() {
            msgs.retain(|m| !cuts.contains(&m.to));
        }
        drop(cuts);
        self.inner.send(msgs);
    }
}
