//! Arbitrary bytes as the only segment of a WAL: `Wal::open` must return Ok
//! or `Error::Corruption`, never panic, and a successful open must leave a
//! log that accepts appends and reopens. The logic is in
//! `etcd_wal::fuzzing::decode_segment` (an in-memory file system, so no disk
//! I/O per input).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    etcd_wal::fuzzing::decode_segment(data);
});
