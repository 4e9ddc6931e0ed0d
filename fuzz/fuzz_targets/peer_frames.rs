//! Arbitrary bytes from a peer connection through the raft frame decoder
//! (after the handshake): must never panic. The logic is
//! `etcd_raft_node::tcp_fuzzing::decode_frames`, also run by its unit test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    etcd_raft_node::tcp_fuzzing::decode_frames(data);
});
