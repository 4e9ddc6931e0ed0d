//! Arbitrary client bytes through the shim that reads every client
//! connection (`:authority` rewrite, ping policy, limits): must never panic,
//! whatever a client sends. The logic is `etcd_h2_shim::fuzz_client_bytes`,
//! also run by its unit test. Built alone from `fuzz/h2` (no RocksDB) and
//! run by scripts/fuzz.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    input.extend_from_slice(data);
    etcd_h2_shim::fuzz_client_bytes(&input);
});
