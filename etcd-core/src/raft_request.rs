//! The payload of a normal raft entry: one client write, tagged with the id
//! of the request waiting for it.
//!
//! Byte format: protobuf (prost), this project's own message (it only has
//! to be read back by this project; etcd's `InternalRaftRequest` is not
//! on any wire a client sees):
//!
//! ```text
//! message RaftRequest {
//!   uint64 id = 1;                                 // request id (see idgen)
//!   oneof op {
//!     etcdserverpb.PutRequest put = 2;
//!     etcdserverpb.DeleteRangeRequest delete_range = 3;
//!     etcdserverpb.TxnRequest txn = 4;
//!     etcdserverpb.CompactionRequest compaction = 5;
//!     etcdserverpb.LeaseGrantRequest lease_grant = 6;       // id chosen before proposing
//!     etcdserverpb.LeaseRevokeRequest lease_revoke = 7;     // client or expiry
//!     etcdserverpb.LeaseCheckpointRequest lease_checkpoint = 8;
//!   }
//! }
//! ```
//!
//! An entry with empty data is a new leader's no-op. Tags 9.. are reserved
//! for alarms, auth and membership.

use crate::pb::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, LeaseCheckpointRequest, LeaseGrantRequest,
    LeaseRevokeRequest, PutRequest, TxnRequest,
};

/// A write proposed through raft.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftRequest {
    /// Id of the waiting request; 0 when nobody waits.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The operation.
    #[prost(oneof = "Op", tags = "2, 3, 4, 5, 6, 7, 8")]
    pub op: Option<Op>,
}

/// The operation of a [`RaftRequest`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    /// KV.Put
    #[prost(message, tag = "2")]
    Put(PutRequest),
    /// KV.DeleteRange
    #[prost(message, tag = "3")]
    DeleteRange(DeleteRangeRequest),
    /// KV.Txn (with at least one write)
    #[prost(message, tag = "4")]
    Txn(TxnRequest),
    /// KV.Compact
    #[prost(message, tag = "5")]
    Compaction(CompactionRequest),
    /// Lease.LeaseGrant, with the lease id already chosen.
    #[prost(message, tag = "6")]
    LeaseGrant(LeaseGrantRequest),
    /// Lease.LeaseRevoke, or the revoke of an expired lease.
    #[prost(message, tag = "7")]
    LeaseRevoke(LeaseRevokeRequest),
    /// Remaining TTLs recorded by the primary lessor.
    #[prost(message, tag = "8")]
    LeaseCheckpoint(LeaseCheckpointRequest),
}
