//! etcd's WAL files from a data directory being imported: the decoder must
//! answer with records or an error, never panic or allocate without bound.
//! The input is split into two "files" at its first byte, so the chain
//! between files and the torn-tail rule of the last file are reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let at = (cut as usize * rest.len()) / 256;
    let (a, b) = rest.split_at(at);
    if let Ok(wal) =
        etcd_wal::etcd_decoder::decode_etcd_wal(&[(Path::new("0.wal"), a), (Path::new("1.wal"), b)])
    {
        // Entries are consecutive.
        for w in wal.entries.windows(2) {
            assert_eq!(w[0].index + 1, w[1].index);
        }
        let _ = wal.term_at(wal.hard_state.commit);
    }
});
