//! Arbitrary bytes as a client request (first byte picks Range, Put,
//! DeleteRange, Txn or the raft envelope): validation then apply to a real
//! store must never panic, and a failed request must change nothing. The
//! logic is `etcd_core::fuzzing::RequestFuzzer`, also run by its unit test.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Mutex;

static FUZZER: Mutex<Option<(tempfile::TempDir, etcd_core::fuzzing::RequestFuzzer)>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = FUZZER.lock().unwrap();
    let (_, f) = guard.get_or_insert_with(|| {
        let dir = tempfile::tempdir().unwrap();
        let f = etcd_core::fuzzing::RequestFuzzer::new(dir.path());
        (dir, f)
    });
    f.run(data);
});
