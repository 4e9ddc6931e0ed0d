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
//!     etcdserverpb.MemberUpdateRequest member_update = 9;  // new peer URLs
//!     MemberAttributes member_attributes = 10;              // a member publishes itself
//!     etcdserverpb.AlarmRequest alarm = 11;                // GET, ACTIVATE, DEACTIVATE
//!     etcdserverpb.AuthEnableRequest auth_enable = 12;
//!     etcdserverpb.AuthDisableRequest auth_disable = 13;
//!     InternalAuthenticateRequest authenticate = 14;       // password already checked
//!     etcdserverpb.AuthUserAddRequest user_add = 15;        // hashedPassword set, password empty
//!     etcdserverpb.AuthUserDeleteRequest user_delete = 16;
//!     etcdserverpb.AuthUserChangePasswordRequest user_change_password = 17;  // hashed, as user_add
//!     etcdserverpb.AuthUserGrantRoleRequest user_grant_role = 18;
//!     etcdserverpb.AuthUserRevokeRoleRequest user_revoke_role = 19;
//!     etcdserverpb.AuthRoleAddRequest role_add = 21;
//!     etcdserverpb.AuthRoleDeleteRequest role_delete = 22;
//!     etcdserverpb.AuthRoleGrantPermissionRequest role_grant_permission = 23;
//!     etcdserverpb.AuthRoleRevokePermissionRequest role_revoke_permission = 24;
//!   }
//!   RequestHeader header = 20;                     // the caller, when identified
//!   fixed64 origin = 25;                           // the proposing process (wait.rs); 0: none
//! }
//! message MemberAttributes { uint64 id = 1; string name = 2; repeated string client_urls = 3; }
//! message RequestHeader { string username = 1; uint64 auth_revision = 2; }  // etcd's RequestHeader
//! message InternalAuthenticateRequest { string name = 1; string simple_token = 2; }  // etcd's
//! ```
//!
//! `header` is absent for the server's own requests (lease expiry,
//! checkpoints, publishing), which no permission check applies to, and
//! present (possibly empty) for every client request.
//!
//! An entry with empty data is a new leader's no-op. Passwords never reach
//! the log: the proposer hashes them (bcrypt) and checks them. Membership changes that change raft's configuration
//! travel as raft `ConfChange` entries instead (cluster.rs).

use crate::pb::etcdserverpb::{
    AlarmRequest, AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGrantRoleRequest,
    AuthUserRevokeRoleRequest, CompactionRequest, DeleteRangeRequest, LeaseCheckpointRequest,
    LeaseGrantRequest, LeaseRevokeRequest, MemberUpdateRequest, PutRequest, TxnRequest,
};

/// A write proposed through raft.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RaftRequest {
    /// Id of the waiting request; 0 when nobody waits.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The operation.
    #[prost(
        oneof = "Op",
        tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 22, 23, 24"
    )]
    pub op: Option<Op>,
    /// Who proposed it (`RequestContext`), for permission checks at apply
    /// time; absent for unidentified callers and the server's own requests.
    #[prost(message, optional, tag = "20")]
    pub header: Option<RequestHeader>,
    /// The process that proposed it and waits for `id` (see `wait.rs`:
    /// request ids alone can collide between members and restarts).
    #[prost(fixed64, tag = "25")]
    pub origin: u64,
}

impl RaftRequest {
    /// Who waits for this entry.
    pub(crate) fn waiter(&self) -> crate::wait::Waiter {
        crate::wait::Waiter {
            origin: self.origin,
            id: self.id,
        }
    }
}

/// The caller of a proposed write (etcd's `RequestHeader` in
/// `InternalRaftRequest`).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RequestHeader {
    /// The authenticated user.
    #[prost(string, tag = "1")]
    pub username: String,
    /// The auth revision the user was authenticated at.
    #[prost(uint64, tag = "2")]
    pub auth_revision: u64,
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
    /// Cluster.MemberUpdate: a member's new peer URLs.
    #[prost(message, tag = "9")]
    MemberUpdate(MemberUpdateRequest),
    /// A started member's name and client URLs.
    #[prost(message, tag = "10")]
    MemberAttributes(MemberAttributes),
    /// Maintenance.Alarm (and a member raising NOSPACE at its quota).
    #[prost(message, tag = "11")]
    Alarm(AlarmRequest),
    /// Auth.AuthEnable
    #[prost(message, tag = "12")]
    AuthEnable(AuthEnableRequest),
    /// Auth.AuthDisable
    #[prost(message, tag = "13")]
    AuthDisable(AuthDisableRequest),
    /// Auth.Authenticate, after the proposer checked the password.
    #[prost(message, tag = "14")]
    Authenticate(InternalAuthenticateRequest),
    /// Auth.UserAdd (password hashed by the proposer).
    #[prost(message, tag = "15")]
    UserAdd(AuthUserAddRequest),
    /// Auth.UserDelete
    #[prost(message, tag = "16")]
    UserDelete(AuthUserDeleteRequest),
    /// Auth.UserChangePassword (password hashed by the proposer).
    #[prost(message, tag = "17")]
    UserChangePassword(AuthUserChangePasswordRequest),
    /// Auth.UserGrantRole
    #[prost(message, tag = "18")]
    UserGrantRole(AuthUserGrantRoleRequest),
    /// Auth.UserRevokeRole
    #[prost(message, tag = "19")]
    UserRevokeRole(AuthUserRevokeRoleRequest),
    /// Auth.RoleAdd
    #[prost(message, tag = "21")]
    RoleAdd(AuthRoleAddRequest),
    /// Auth.RoleDelete
    #[prost(message, tag = "22")]
    RoleDelete(AuthRoleDeleteRequest),
    /// Auth.RoleGrantPermission
    #[prost(message, tag = "23")]
    RoleGrantPermission(AuthRoleGrantPermissionRequest),
    /// Auth.RoleRevokePermission
    #[prost(message, tag = "24")]
    RoleRevokePermission(AuthRoleRevokePermissionRequest),
}

/// Authenticate as applied (etcd's `InternalAuthenticateRequest`): the
/// password was checked by the proposing member and is not in the log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct InternalAuthenticateRequest {
    /// The user.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The random prefix of the simple token (empty for JWTs).
    #[prost(string, tag = "2")]
    pub simple_token: String,
}

/// What a member publishes about itself once it runs (etcd's `publish`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MemberAttributes {
    /// The member.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Its --name.
    #[prost(string, tag = "2")]
    pub name: String,
    /// Its --advertise-client-urls.
    #[prost(string, repeated, tag = "3")]
    pub client_urls: Vec<String>,
}
