//! Arbitrary bytes against the snapshot image decoder and the in-place
//! restore of the MVCC store (in-memory backend): as a raw image, as
//! validly framed arbitrary records, or as a history whose export must
//! round-trip and whose damaged copies must be refused. Nothing may panic;
//! a refused image must leave the target store unchanged. The logic is
//! `etcd_mvcc::fuzzing_image::run_image` (also run by the unit tests).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    etcd_mvcc::fuzzing_image::run_image(data);
});
