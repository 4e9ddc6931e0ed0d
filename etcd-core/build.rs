//! Generates the message types of etcd's v3 API (etcdserverpb, authpb,
//! v3lockpb, v3electionpb) with protox (pure Rust, no system protoc) and
//! prost-build. Services are NOT generated here: etcd-server generates the
//! tonic servers/clients and points at these types with extern_path.
//! mvccpb comes from etcd-mvcc (`etcd_mvcc::pb::mvccpb`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=../etcd-mvcc/proto");
    let fds = protox::compile(
        [
            "authpb/auth.proto",
            "etcdserverpb/rpc.proto",
            "v3lockpb/v3lock.proto",
            "v3electionpb/v3election.proto",
        ],
        ["proto", "../etcd-mvcc/proto"],
    )?;
    prost_build::Config::new()
        .bytes(["."])
        .extern_path(".mvccpb", "::etcd_mvcc::pb::mvccpb")
        .compile_fds(fds)?;
    Ok(())
}
