//! Generated protobuf message types of etcd's v3 API (wire-compatible with
//! etcd 3.5). See `proto/` and `build.rs`. gRPC services live in
//! `etcd_server::rpc`.
#![allow(clippy::all, clippy::pedantic, missing_docs, non_camel_case_types)]

pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
}

pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
}

pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
}

pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
}

pub use etcd_mvcc::pb::mvccpb;
