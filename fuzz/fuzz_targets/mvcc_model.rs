//! Arbitrary bytes as a history of MVCC operations (multi-op write
//! transactions with puts, deletes and ranges, compactions, reopens, flushes,
//! crashes, full checks), run against the store on the in-memory backend and
//! a naive model of etcd semantics: every outcome, event and range at every
//! revision must agree, and a crash must return to the last flushed state.
//! The logic is `etcd_mvcc::fuzzing::run_ops` (also run by the unit tests).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    etcd_mvcc::fuzzing::run_ops(data);
});
