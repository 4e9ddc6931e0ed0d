//! Sending raft messages to peers.
//!
//! Incoming messages are handed to the node with [`crate::RaftNode::step`].
//! A single-member cluster never sends anything and uses [`NoopTransport`].

use std::sync::Arc;

use raft::eraftpb::Message;

/// Called with every message received from a peer (by a transport's
/// runtime, or by the raft thread for the streams it reads itself).
pub type Deliver = Arc<dyn Fn(Message) + Send + Sync>;

/// Delivers raft messages to other members. Implementations must not block
/// the caller (the raft thread): queue per peer and send in the background,
/// dropping messages when a peer is slow or unreachable (raft retries).
pub trait Transport: Send + Sync + 'static {
    /// Queues `msgs` for delivery to their `to` members.
    fn send(&self, msgs: Vec<Message>);
}

/// The transport of a single-member cluster: there is nobody to send to.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopTransport;

impl Transport for NoopTransport {
    fn send(&self, msgs: Vec<Message>) {
        debug_assert!(
            msgs.is_empty(),
            "a single-member cluster tried to send {} messages",
            msgs.len()
        );
    }
}
