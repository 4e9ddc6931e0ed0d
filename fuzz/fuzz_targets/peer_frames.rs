//! Arbitrary bytes from a peer connection (after the handshake) through
//! the raft frame decoder of a message stream and through the snapshot
//! stream decoder (message, image chunks, end frame with crc32c): must
//! never panic. The logic is `etcd_raft_node::tcp_fuzzing::decode_frames`
//! and `decode_snapshot_stream`, also run by their unit tests.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    etcd_raft_node::tcp_fuzzing::decode_frames(data);
    etcd_raft_node::tcp_fuzzing::decode_snapshot_stream(data);
});
