//! Generated tonic gRPC services (servers and clients) of etcd's v3 API.
//! Message types are `etcd_core::pb::*` (re-exported below in each module
//! for convenience); see `build.rs`.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// KV, Watch, Lease, Cluster, Maintenance, Auth services.
pub mod etcdserverpb {
    pub use etcd_core::pb::etcdserverpb::*;
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

/// Lock service.
pub mod v3lockpb {
    pub use etcd_core::pb::v3lockpb::*;
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
}

/// Election service.
pub mod v3electionpb {
    pub use etcd_core::pb::v3electionpb::*;
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
}
