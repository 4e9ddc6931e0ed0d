//! Entry points for fuzzing (used by `fuzz/fuzz_targets/wal_decode.rs` and by
//! this crate's unit tests, so CI exercises them without a nightly toolchain).
//! Not a stable API.

use crate::error::Error;
use crate::mem_fs::MemFs;
use crate::segment::segment_file_name;
use crate::types::{Entry, HardState, SnapshotMarker, WalOptions, WriteBatch};
use crate::wal::Wal;
use bytes::Bytes;
use std::path::Path;
use std::sync::Arc;

const DIR: &str = "/fuzz/wal";

fn opts() -> WalOptions {
    WalOptions {
        segment_size: 4096,
        ..WalOptions::default()
    }
}

/// Writes `data` as the only segment of a WAL (in memory) and opens it.
/// Panics if opening panics, returns an error other than
/// [`Error::Corruption`], or returns a result that breaks the replay
/// invariants; after a successful open, appends an entry, closes, reopens
/// and checks that the repaired log plus that entry come back.
pub fn decode_segment(data: &[u8]) {
    let dir = Path::new(DIR);
    let fs = MemFs::new();
    fs.put_file(&dir.join(segment_file_name(0, 0)), data)
        .expect("in-memory file system");
    let (wal, rec) = match Wal::open_with_fs(Arc::new(fs.clone()), dir, opts()) {
        Ok(v) => v,
        Err(Error::Corruption { .. }) => return,
        Err(e) => panic!("open returned an unexpected error: {e}"),
    };
    if let Some(s) = rec.snapshot {
        assert!(
            rec.entries.iter().all(|e| e.index > s.index),
            "entries at or below the snapshot marker"
        );
        if let Some(first) = rec.entries.first() {
            assert_eq!(
                first.index,
                s.index + 1,
                "entries do not follow the snapshot marker"
            );
        }
    }
    for w in rec.entries.windows(2) {
        assert_eq!(w[1].index, w[0].index + 1, "entries are not contiguous");
    }
    let last = rec.last_index();
    let Some(next) = last.checked_add(1) else {
        return;
    };
    let e = Entry {
        index: next,
        term: 1,
        data: Bytes::from_static(b"after-repair"),
    };
    wal.append_sync(WriteBatch {
        entries: vec![e.clone()],
        ..Default::default()
    })
    .expect("append after a successful open");
    wal.close().expect("close");
    let (wal, again) = Wal::open_with_fs(Arc::new(fs), dir, opts()).expect("reopen after repair");
    let mut expected = rec.entries;
    expected.push(e);
    assert_eq!(again.entries, expected);
    assert_eq!(again.metadata, rec.metadata);
    assert_eq!(again.snapshot, rec.snapshot);
    assert_eq!(again.hard_state, rec.hard_state);
    wal.close().expect("close");
}

/// A valid segment with a few records of every kind (a seed for mutation).
pub fn sample_segment(seed: u64) -> Vec<u8> {
    let dir = Path::new(DIR);
    let fs = MemFs::new();
    let opts = WalOptions {
        segment_size: 1 << 20,
        ..WalOptions::default()
    };
    let wal = Wal::create_with_fs(Arc::new(fs.clone()), dir, opts, b"fuzz-meta").expect("create");
    let mut rng = crate::mem_fs::XorShift(seed.wrapping_mul(31).wrapping_add(7));
    let mut next = 1;
    let mut snap = 0;
    for _ in 0..(1 + rng.upto(6)) {
        let mut b = WriteBatch::default();
        if rng.upto(4) == 0 && next - 1 > snap {
            snap = next - 1;
            b.snapshot = Some(SnapshotMarker {
                index: snap,
                term: 1,
            });
        }
        if rng.upto(3) == 0 && next > 2 {
            next -= rng.upto(2); // overwrite a suffix
        }
        for _ in 0..rng.upto(4) {
            let len = rng.upto(40) as usize;
            b.entries.push(Entry {
                index: next,
                term: 1,
                data: Bytes::from(vec![next as u8; len]),
            });
            next += 1;
        }
        if rng.upto(1) == 0 {
            b.hard_state = Some(HardState {
                term: 1,
                vote: 1,
                commit: next - 1,
            });
        }
        wal.append_sync(b).expect("append");
    }
    wal.close().expect("close");
    let mut bytes = fs
        .read_file(&dir.join(segment_file_name(0, 0)))
        .expect("segment");
    // Keep a little preallocated space, not the whole MiB.
    let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    bytes.truncate((used + 64).min(bytes.len()));
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem_fs::XorShift;

    #[test]
    fn decode_segment_survives_random_and_mutated_inputs() {
        let mut rng = XorShift(0xfeed);
        for i in 0..3000u64 {
            let mut data = sample_segment(i % 64);
            match i % 6 {
                0 => {}
                1 => {
                    let at = rng.upto(data.len() as u64 - 1) as usize;
                    data[at] ^= 1 << rng.upto(7);
                }
                2 => {
                    let at = rng.upto(data.len() as u64) as usize;
                    data.truncate(at);
                }
                3 => {
                    for _ in 0..1 + rng.upto(8) {
                        let at = rng.upto(data.len() as u64 - 1) as usize;
                        data[at] = rng.next_u64() as u8;
                    }
                }
                4 => {
                    let at = rng.upto(data.len() as u64) as usize;
                    let junk: Vec<u8> = (0..rng.upto(64)).map(|_| rng.next_u64() as u8).collect();
                    data.splice(at..at, junk);
                }
                _ => {
                    data = (0..rng.upto(256)).map(|_| rng.next_u64() as u8).collect();
                }
            }
            decode_segment(&data);
        }
    }
}
