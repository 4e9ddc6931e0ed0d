//! Arbitrary bytes from a peer connection (after the handshake) through
//! the raft frame decoder of a message stream and through the snapshot
//! stream decoder (message, image chunks, end frame with crc32c): must
//! never panic; and as an etcd member's HTTP requests to the peer listener
//! (a mixed cluster) and its answers. The logic is
//! `etcd_raft_node::tcp_fuzzing::decode_frames`, `decode_snapshot_stream`
//! and `etcd_raft_node::rafthttp::fuzzing`, also run by their unit tests.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    etcd_raft_node::tcp_fuzzing::decode_frames(data);
    etcd_raft_node::tcp_fuzzing::decode_snapshot_stream(data);
    etcd_raft_node::rafthttp::fuzzing::serve(data);
    etcd_raft_node::rafthttp::fuzzing::response(data);
});
