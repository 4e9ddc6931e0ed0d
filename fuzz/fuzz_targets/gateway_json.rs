//! Arbitrary request bodies through the JSON gateway's decoding (a
//! stream of JSON values into a route's request, then protobuf): must never
//! panic. The logic is `etcd_server::fuzz_request_body`, also run by its
//! unit test.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    etcd_server::fuzz_request_body(data);
});
