//! Arbitrary client bytes through the HTTP/2 `:authority` rewriter that
//! reads every client connection: must never panic. The logic is
//! `etcd_server::fuzz_client_bytes`, also run by its unit test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    input.extend_from_slice(data);
    etcd_server::fuzz_client_bytes(&input);
});
