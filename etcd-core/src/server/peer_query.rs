//! Questions a member asks other members over the peer port, where etcd
//! uses its peer HTTP API (`/members`, `/members/promote/<id>`,
//! `/leases`, `/leases/internal`):
//!
//! - a member joining an existing cluster fetches the cluster id and the
//!   members from the peers named in `--initial-cluster`;
//! - a follower forwards MemberPromote to the leader (only the leader knows
//!   whether the learner caught up);
//! - a follower forwards lease keepalives and TimeToLive to the leader
//!   (only the leader's lessor knows the deadlines);
//! - the corruption checks ask every peer for its HashKV at a revision
//!   (etcd's `/members/hashkv`);
//! - the prober measures round trips to every peer (etcd's
//!   `/raft/probing`).
//!
//! Transport: [`etcd_raft_node::peer_query`] ("ETRQ" connections).
//! Payloads (protobuf, this project's own): a [`PeerRequest`] with one
//! question, answered by a [`PeerResponse`] whose `error` is the text of an
//! etcd error (with its number in `error_code`, mapped back with
//! `Error::from_wire`) or empty.

use crate::membership::Member;
use crate::pb::etcdserverpb::{
    HashKvResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, MemberPromoteResponse,
};
use std::time::Duration;

/// One question.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct PeerRequest {
    #[prost(oneof = "Ask", tags = "1, 2, 3, 4, 5, 6")]
    pub ask: Option<Ask>,
}

/// The questions.
#[derive(Clone, PartialEq, prost::Oneof)]
pub(super) enum Ask {
    /// The cluster id and members.
    #[prost(bool, tag = "1")]
    Cluster(bool),
    /// MemberPromote of this id, on the leader.
    #[prost(uint64, tag = "2")]
    Promote(u64),
    /// One keepalive of this lease, on the leader.
    #[prost(int64, tag = "3")]
    LeaseRenew(i64),
    /// LeaseTimeToLive, on the leader.
    #[prost(message, tag = "4")]
    LeaseTimeToLive(LeaseTimeToLiveRequest),
    /// HashKV at this revision (0: the current one).
    #[prost(int64, tag = "5")]
    HashKv(i64),
    /// Nothing: the prober's round trip (etcd's `/raft/probing`).
    #[prost(bool, tag = "6")]
    Probe(bool),
}

/// The answer.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct PeerResponse {
    /// etcd's error text, or empty.
    #[prost(string, tag = "1")]
    pub error: String,
    #[prost(uint64, tag = "2")]
    pub cluster_id: u64,
    #[prost(message, repeated, tag = "3")]
    pub members: Vec<Member>,
    #[prost(message, optional, tag = "4")]
    pub promote: Option<MemberPromoteResponse>,
    #[prost(int64, tag = "5")]
    pub ttl: i64,
    #[prost(message, optional, tag = "6")]
    pub lease_ttl: Option<LeaseTimeToLiveResponse>,
    /// The error's number between members (`Error::wire_code`), with
    /// `error`.
    #[prost(uint32, tag = "7")]
    pub error_code: u32,
    #[prost(message, optional, tag = "8")]
    pub hash_kv: Option<HashKvResponse>,
}

/// How long one query may take.
pub(super) const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// etcd's `leasepb.LeaseInternalRequest` (`POST /leases/internal`).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct LeaseInternalRequest {
    #[prost(message, optional, tag = "1")]
    pub lease_time_to_live_request: Option<LeaseTimeToLiveRequest>,
}

/// etcd's `leasepb.LeaseInternalResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct LeaseInternalResponse {
    #[prost(message, optional, tag = "1")]
    pub lease_time_to_live_response: Option<LeaseTimeToLiveResponse>,
}
