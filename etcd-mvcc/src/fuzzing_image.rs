//! Fuzzing of snapshot images (the cargo-fuzz target `snapshot_image` in
//! `fuzz/mvcc`, and a unit test over generated inputs), on the in-memory
//! backend. The first byte picks a mode:
//!
//! - **raw**: the rest is an image. [`verify_image`] and [`Store::restore`]
//!   must never panic and must agree; a refused image leaves the target
//!   store exactly as it was; an accepted one gives the store it announces.
//! - **records**: the rest describes records (any column family, any bytes,
//!   or well-formed revision records and meta values with fuzzed numbers),
//!   framed validly with [`encode_records`], so that the semantic checks
//!   are reached (random bytes rarely pass the checksums). If the image is
//!   accepted, the restored store re-exports byte-identically, serves reads
//!   and writes, and reopens to the same state.
//! - **history**: the rest is a history of puts, deletes, aux changes and
//!   compactions on a source store; its export must restore into a store
//!   with other data exactly (every range and hash at every revision, aux
//!   buckets, revisions, consistent index), and a bit flipped or a cut at a
//!   fuzzed position must be refused, leaving the target as it was.

use std::io::Cursor;
use std::io::Read;

use bytes::Bytes;
use prost::Message;

use crate::backend::{
    Cf, META_CONSISTENT_INDEX, META_FINISHED_COMPACT, META_FORMAT_VERSION, META_SCHEDULED_COMPACT,
};
use crate::{
    encode_records, verify_image, Bucket, Error, HashKv, KeyValue, MemDisk, RangeOptions,
    RangeResult, Revision, Store, StoreOptions,
};

const BUCKETS: [Bucket; 4] = [Bucket::Lease, Bucket::Auth, Bucket::Members, Bucket::Alarm];

fn opts() -> StoreOptions {
    StoreOptions {
        compaction_batch_limit: 3,
        compaction_sleep_interval: std::time::Duration::ZERO,
        range_chunk_size: 4,
    }
}

/// A byte source that yields zeros once exhausted.
struct Bytes8<'a>(&'a [u8]);

impl Bytes8<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |acc, _| (acc << 8) | self.u8() as u64)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Runs one input (see the module doc); true if an image was restored
/// (tests check that every mode reaches both outcomes).
pub fn run_image(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else {
        return false;
    };
    match mode % 3 {
        0 => raw(rest),
        1 => records(rest),
        _ => history(rest),
    }
}

/// Everything a client can observe of a store, at every uncompacted revision.
#[derive(Debug, PartialEq)]
struct Observed {
    current: i64,
    compact: i64,
    ci: u64,
    ranges: Vec<RangeResult>,
    hashes: Vec<HashKv>,
    aux: Vec<Vec<(Vec<u8>, Vec<u8>)>>,
}

fn observe(s: &Store) -> Observed {
    let (current, compact) = (s.current_revision(), s.compact_revision());
    let revs = compact.max(1)..=current;
    let all = |rev| RangeOptions {
        rev,
        ..Default::default()
    };
    Observed {
        current,
        compact,
        ci: s.consistent_index(),
        ranges: revs
            .clone()
            .map(|r| s.range(b"", &[0], all(r)).expect("range"))
            .collect(),
        hashes: revs.map(|r| s.hash_kv(r).expect("hash")).collect(),
        aux: BUCKETS
            .iter()
            .map(|b| s.aux_scan(*b).expect("aux"))
            .collect(),
    }
}

/// A small target store with its own data.
fn target() -> (MemDisk, Store) {
    let disk = MemDisk::new();
    let s = Store::open_with(Box::new(disk.backend()), opts()).expect("open");
    for i in 0..3u8 {
        let mut t = s.write();
        t.put(&[b't', i], b"target", 0).expect("put");
        t.put_aux(Bucket::Alarm, &[i], b"a");
        t.end(i as u64 + 1).expect("end");
    }
    (disk, s)
}

fn export(s: &Store, block: usize) -> Vec<u8> {
    let mut v = Vec::new();
    s.export_with_block_size(block)
        .expect("export")
        .read_to_end(&mut v)
        .expect("read export");
    v
}

/// Restores `image` into `s`: refused exactly when verification refuses
/// it, and then `s` is unchanged; returns whether it was accepted.
fn restore_checked(s: &Store, image: &[u8]) -> bool {
    let before = observe(s);
    let verified = verify_image(image);
    let restored = s.restore(Cursor::new(image));
    match (verified, restored) {
        (Ok(v), Ok(r)) => {
            assert_eq!(v, r);
            assert_eq!(s.current_revision(), r.revision);
            assert_eq!(s.compact_revision(), r.compact_revision);
            assert_eq!(s.consistent_index(), r.consistent_index);
            true
        }
        (Err(a), Err(b)) => {
            assert_eq!(a, b);
            assert!(
                matches!(a, Error::InvalidImage(_) | Error::UnsupportedFormat { .. }),
                "{a}"
            );
            assert_eq!(observe(s), before, "a refused image changed the store");
            false
        }
        (v, r) => panic!("verify {v:?} but restore {r:?}"),
    }
}

fn raw(image: &[u8]) -> bool {
    let (_disk, s) = target();
    restore_checked(&s, image)
}

fn records(data: &[u8]) -> bool {
    let mut d = Bytes8(data);
    let flags = d.u8();
    let block = 16 + d.u8() as usize * 8;
    let mut recs: Vec<(Cf, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut ci = None;
    while !d.is_empty() && recs.len() < 64 {
        let kind = d.u8();
        let rec = match kind % 4 {
            // any bytes in any column family
            0 => {
                let cf = Cf::ALL[(kind / 4) as usize % 6];
                let k = d.u8() as usize % 20;
                let key = d.take(k);
                let v = d.u8() as usize % 40;
                (cf, key, d.take(v))
            }
            // a well-formed revision record with fuzzed numbers
            1 | 2 => {
                let main = (d.u8() % 40) as i64;
                let sub = (d.u8() % 3) as i64;
                let tombstone = kind & 0x10 != 0;
                let kv = KeyValue {
                    key: Bytes::from(vec![b'k', d.u8() % 4]),
                    create_revision: (d.u8() % 42) as i64,
                    mod_revision: if kind & 0x20 != 0 {
                        main
                    } else {
                        (d.u8() % 42) as i64
                    },
                    version: (d.u8() % 4) as i64,
                    value: Bytes::from(d.take(2)),
                    lease: 0,
                };
                (
                    Cf::Key,
                    Revision::new(main, sub).to_key(tombstone),
                    kv.encode_to_vec(),
                )
            }
            // a meta record with a fuzzed value
            _ => {
                let keys = [
                    META_CONSISTENT_INDEX,
                    META_SCHEDULED_COMPACT,
                    META_FINISHED_COMPACT,
                    META_FORMAT_VERSION,
                ];
                let key = keys[(kind / 4) as usize % 4];
                let v = if kind & 0x40 != 0 {
                    d.u64()
                } else {
                    (d.u8() % 45) as u64
                };
                if key == META_CONSISTENT_INDEX {
                    ci = Some(v);
                }
                (Cf::Meta, key.to_vec(), v.to_be_bytes().to_vec())
            }
        };
        recs.push(rec);
    }
    if flags & 1 == 0 {
        // image order, no duplicates: what reaches the semantic checks
        recs.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        recs.dedup_by(|a, b| (a.0, &a.1) == (b.0, &b.1));
    }
    let header_ci = if flags & 2 == 0 {
        ci.unwrap_or(0)
    } else {
        d.u64()
    };
    let image = encode_records(header_ci, &recs, block);
    let (disk, s) = target();
    if !restore_checked(&s, &image) {
        return false;
    }
    // accepted: the same bytes come back, reads and writes work, and a
    // reopen rebuilds the same state
    let info = verify_image(&image[..]).expect("accepted");
    let again = export(&s, block);
    if info.compact_revision == info.finished_compact_revision {
        assert_eq!(again, image, "re-export differs");
    } else {
        // the restored store resumed the image's compaction meanwhile
        verify_image(&again[..]).expect("re-export");
    }
    let seen = observe(&s);
    let mut t = s.write();
    t.put(b"k\x01", b"new", 0).expect("put after restore");
    t.delete_range(b"k\x02", b"").expect("delete after restore");
    t.end(s.consistent_index().wrapping_add(1))
        .expect("write after restore");
    drop(s);
    let s = Store::open_with(Box::new(disk.backend()), opts()).expect("reopen");
    assert!(s.current_revision() >= seen.current);
    let _ = observe(&s);
    true
}

fn history(data: &[u8]) -> bool {
    let mut d = Bytes8(data);
    let block = 16 + d.u8() as usize * 4;
    let src = Store::open_in_memory(opts()).expect("open");
    let mut ci = 0u64;
    let mut steps = 0;
    while !d.is_empty() && steps < 60 {
        steps += 1;
        ci += 1;
        let op = d.u8();
        let key = [b'k', op % 5];
        match op >> 5 {
            0..=3 => {
                let mut t = src.write();
                t.put(&key, &[d.u8()], (op % 3) as i64).expect("put");
                if op & 1 != 0 {
                    t.put(&[b'j', d.u8() % 3], b"j", 0).expect("put");
                }
                t.end(ci).expect("end");
            }
            4 => {
                let mut t = src.write();
                let end = if op & 8 != 0 { &b"l"[..] } else { &b""[..] };
                t.delete_range(&key, end).expect("delete");
                t.end(ci).expect("end");
            }
            5 => {
                let mut t = src.write();
                let b = BUCKETS[(op % 4) as usize];
                if op & 4 != 0 {
                    t.delete_aux(b, &[d.u8() % 4]);
                } else {
                    t.put_aux(b, &[d.u8() % 4], &[d.u8()]);
                }
                t.end(ci).expect("end");
            }
            _ => {
                let back = (d.u8() % 8) as i64;
                let rev = src.current_revision() - back;
                if let Ok(w) = src.compact(rev, ci) {
                    if op & 1 != 0 {
                        w.wait();
                    }
                }
            }
        }
    }
    let image = export(&src, block);
    let (disk, dst) = target();
    assert!(restore_checked(&dst, &image), "a valid export was refused");
    let want = observe(&src);
    assert_eq!(observe(&dst), want);
    // damaged copies are refused and change nothing
    let pos = (d.u64() % image.len() as u64) as usize;
    let mut flipped = image.clone();
    flipped[pos] ^= 1 << (d.u8() % 8);
    assert!(
        !restore_checked(&dst, &flipped),
        "a flipped bit was accepted"
    );
    assert!(!restore_checked(&dst, &image[..pos]), "a cut was accepted");
    drop(dst);
    let dst = Store::open_with(Box::new(disk.backend()), opts()).expect("reopen");
    assert_eq!(observe(&dst), want, "after a reopen");
    true
}
