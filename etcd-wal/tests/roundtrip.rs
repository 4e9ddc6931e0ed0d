//! Round trips through real files: create, append, reopen, overwrite, purge,
//! torn-tail and mid-file-corruption fixtures.

use bytes::Bytes;
use etcd_wal::{
    Entry, Error, HardState, RecoveryMode, SnapshotMarker, Wal, WalOptions, WriteBatch,
};
use std::path::{Path, PathBuf};

fn e(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: Bytes::from(format!(
            "entry-{index}-{term}-{}",
            "x".repeat((index % 7) as usize * 10)
        )),
    }
}

fn entries(r: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    r.map(|i| e(i, term)).collect()
}

fn tiny() -> WalOptions {
    WalOptions {
        segment_size: 1024,
        max_wals: 2,
        ..WalOptions::default()
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

#[test]
fn create_append_reopen_over_several_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    assert!(!Wal::exists(&dir));
    let wal = Wal::create(&dir, tiny(), b"meta-1").unwrap();
    assert!(Wal::exists(&dir));
    let mut hs = HardState::default();
    for i in 0..40u64 {
        hs = HardState {
            term: 1 + i / 10,
            vote: 1,
            commit: i * 3,
        };
        let t = wal
            .append(WriteBatch {
                entries: entries(i * 3 + 1..=i * 3 + 3, 1 + i / 10),
                hard_state: Some(hs),
                snapshot: None,
            })
            .unwrap();
        t.wait().unwrap();
    }
    assert!(
        wal.segment_count() > 5,
        "tiny segments: {}",
        wal.segment_count()
    );
    let m = wal.metrics();
    assert!(m.fsync_count >= 40);
    assert_eq!(m.batches_total, 40);
    assert_eq!(m.fsync_duration_buckets.len(), 14);
    wal.close().unwrap();
    assert!(segments(&dir).len() > 5);

    let (wal, rec) = Wal::open(&dir, tiny()).unwrap();
    assert_eq!(&rec.metadata[..], b"meta-1");
    assert_eq!(rec.hard_state, hs);
    assert_eq!(rec.snapshot, None);
    let want: Vec<Entry> = (0..40u64)
        .flat_map(|i| entries(i * 3 + 1..=i * 3 + 3, 1 + i / 10))
        .collect();
    assert_eq!(rec.entries, want);

    // Appends continue after reopen, and a snapshot marker drops entries.
    wal.append_sync(WriteBatch {
        entries: entries(121..=122, 5),
        snapshot: Some(SnapshotMarker {
            index: 100,
            term: 4,
        }),
        hard_state: None,
    })
    .unwrap();
    wal.close().unwrap();
    let (wal, rec) = Wal::open(&dir, tiny()).unwrap();
    assert_eq!(
        rec.snapshot,
        Some(SnapshotMarker {
            index: 100,
            term: 4
        })
    );
    assert_eq!(rec.hard_state, hs);
    assert_eq!(rec.entries.first().unwrap().index, 101);
    assert_eq!(rec.entries.last().unwrap().index, 122);
    drop(wal); // Drop also stops the writer cleanly
    let (_wal, again) = Wal::open(&dir, tiny()).unwrap();
    assert_eq!(again, rec);
}

#[test]
fn create_refuses_existing_and_open_refuses_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    assert!(matches!(Wal::open(&dir, tiny()), Err(Error::NotFound(_))));
    Wal::create(&dir, tiny(), b"m").unwrap().close().unwrap();
    assert!(matches!(
        Wal::create(&dir, tiny(), b"m"),
        Err(Error::AlreadyExists(_))
    ));
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(matches!(Wal::open(&empty, tiny()), Err(Error::NotFound(_))));
    let bad = WalOptions {
        segment_size: 10,
        ..WalOptions::default()
    };
    assert!(matches!(
        Wal::create(&empty, bad, b""),
        Err(Error::InvalidOptions(_))
    ));
}

#[test]
fn directory_is_locked_while_open() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = Wal::create(tmp.path(), tiny(), b"m").unwrap();
    assert!(matches!(
        Wal::open(tmp.path(), tiny()),
        Err(Error::Locked(_))
    ));
    wal.close().unwrap();
    let (_wal, _) = Wal::open(tmp.path(), tiny()).unwrap();
}

#[test]
fn conflicting_suffix_is_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = Wal::create(tmp.path(), tiny(), b"m").unwrap();
    wal.append_sync(WriteBatch {
        entries: entries(1..=10, 1),
        ..Default::default()
    })
    .unwrap();
    // a new leader replaces 6.. with its own entries
    wal.append_sync(WriteBatch {
        entries: entries(6..=8, 2),
        ..Default::default()
    })
    .unwrap();
    wal.append_sync(WriteBatch {
        entries: entries(9..=9, 2),
        ..Default::default()
    })
    .unwrap();
    // and again from 3 (spanning segments by now)
    wal.append_sync(WriteBatch {
        entries: entries(3..=4, 3),
        ..Default::default()
    })
    .unwrap();
    wal.close().unwrap();
    let (_wal, rec) = Wal::open(tmp.path(), tiny()).unwrap();
    let mut want = entries(1..=2, 1);
    want.extend(entries(3..=4, 3));
    assert_eq!(rec.entries, want);
}

#[test]
fn invalid_batches_are_rejected_without_poisoning() {
    let tmp = tempfile::tempdir().unwrap();
    let wal = Wal::create(tmp.path(), tiny(), b"m").unwrap();
    wal.append_sync(WriteBatch {
        entries: entries(1..=3, 1),
        ..Default::default()
    })
    .unwrap();
    let gap = WriteBatch {
        entries: entries(5..=5, 1),
        ..Default::default()
    };
    assert!(matches!(wal.append(gap), Err(Error::InvalidBatch(_))));
    let holes = WriteBatch {
        entries: vec![e(4, 1), e(6, 1)],
        ..Default::default()
    };
    assert!(matches!(wal.append(holes), Err(Error::InvalidBatch(_))));
    wal.append_sync(WriteBatch {
        snapshot: Some(SnapshotMarker { index: 2, term: 1 }),
        ..Default::default()
    })
    .unwrap();
    let older = WriteBatch {
        snapshot: Some(SnapshotMarker { index: 1, term: 1 }),
        ..Default::default()
    };
    assert!(matches!(wal.append(older), Err(Error::InvalidBatch(_))));
    // Empty batches are sync barriers.
    wal.append_sync(WriteBatch::default()).unwrap();
    wal.append_sync(WriteBatch {
        entries: entries(4..=4, 1),
        ..Default::default()
    })
    .unwrap();
    wal.close().unwrap();
    let (_wal, rec) = Wal::open(tmp.path(), tiny()).unwrap();
    assert_eq!(rec.entries, entries(3..=4, 1));
}

#[test]
fn purge_keeps_max_wals_and_live_entries() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let wal = Wal::create(dir, tiny(), b"m").unwrap();
    for i in 0..30u64 {
        wal.append_sync(WriteBatch {
            entries: entries(i * 4 + 1..=i * 4 + 4, 1),
            hard_state: Some(HardState {
                term: 1,
                vote: 0,
                commit: i * 4,
            }),
            ..Default::default()
        })
        .unwrap();
    }
    assert!(wal.segment_count() > 4);
    // Without a snapshot marker nothing may go: replay needs every entry.
    assert_eq!(wal.purge(100).unwrap(), 0);
    wal.append_sync(WriteBatch {
        snapshot: Some(SnapshotMarker { index: 60, term: 1 }),
        ..Default::default()
    })
    .unwrap();
    let before = wal.segment_count();
    let removed = wal.purge(100).unwrap();
    assert!(removed > 0);
    assert_eq!(wal.segment_count(), before - removed);
    assert_eq!(segments(dir).len(), before - removed);
    assert!(wal.segment_count() >= 2);
    // A later purge with a high index still keeps max_wals files.
    wal.append_sync(WriteBatch {
        snapshot: Some(SnapshotMarker {
            index: 120,
            term: 1,
        }),
        ..Default::default()
    })
    .unwrap();
    wal.purge(u64::MAX).unwrap();
    assert_eq!(wal.segment_count(), 2);
    wal.append_sync(WriteBatch {
        entries: entries(121..=125, 2),
        ..Default::default()
    })
    .unwrap();
    wal.close().unwrap();

    let (_wal, rec) = Wal::open(dir, tiny()).unwrap();
    assert_eq!(
        rec.snapshot,
        Some(SnapshotMarker {
            index: 120,
            term: 1
        })
    );
    assert_eq!(rec.entries, entries(121..=125, 2));
    assert_eq!(
        rec.hard_state,
        HardState {
            term: 1,
            vote: 0,
            commit: 116
        }
    );
}

#[test]
fn purge_after_snapshot_keeps_replay_contiguous() {
    // The marker is older than the oldest remaining segment's entries.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let opts = WalOptions {
        max_wals: 1,
        ..tiny()
    };
    let wal = Wal::create(dir, opts.clone(), b"m").unwrap();
    wal.append_sync(WriteBatch {
        entries: entries(1..=5, 1),
        ..Default::default()
    })
    .unwrap();
    wal.append_sync(WriteBatch {
        snapshot: Some(SnapshotMarker { index: 3, term: 1 }),
        ..Default::default()
    })
    .unwrap();
    for i in 0..20u64 {
        wal.append_sync(WriteBatch {
            entries: entries(6 + i * 3..=8 + i * 3, 1),
            ..Default::default()
        })
        .unwrap();
    }
    wal.append_sync(WriteBatch {
        snapshot: Some(SnapshotMarker { index: 40, term: 1 }),
        ..Default::default()
    })
    .unwrap();
    wal.append_sync(WriteBatch {
        entries: entries(66..=66, 1),
        ..Default::default()
    })
    .unwrap();
    assert!(wal.purge(41).unwrap() > 0);
    wal.close().unwrap();
    let (_wal, rec) = Wal::open(dir, opts).unwrap();
    assert_eq!(rec.snapshot, Some(SnapshotMarker { index: 40, term: 1 }));
    assert_eq!(rec.entries, entries(41..=66, 1));
}

fn last_segment(dir: &Path) -> PathBuf {
    segments(dir).pop().unwrap()
}

/// Writes entries 1..=n one per batch; returns the offset where the last record ends.
fn fixture(dir: &Path, n: u64) -> u64 {
    let opts = WalOptions {
        segment_size: 1 << 20,
        ..WalOptions::default()
    };
    let wal = Wal::create(dir, opts, b"m").unwrap();
    for i in 1..=n {
        wal.append_sync(WriteBatch {
            entries: vec![e(i, 1)],
            ..Default::default()
        })
        .unwrap();
    }
    wal.close().unwrap();
    let bytes = std::fs::read(last_segment(dir)).unwrap();
    // The last entry's data ends with a nonzero byte; its record ends at the
    // next 8-byte boundary (padding).
    (bytes.iter().rposition(|&b| b != 0).unwrap() as u64 + 1).next_multiple_of(8)
}

#[test]
fn truncated_mid_record_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let end = fixture(dir, 10);
    let seg = last_segment(dir);
    // A crash mid-write: the file ends inside the last record.
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(end - 5).unwrap();
    drop(f);
    let opts = WalOptions {
        segment_size: 1 << 20,
        ..WalOptions::default()
    };
    let strict = WalOptions {
        recovery_mode: RecoveryMode::AbsoluteConsistency,
        ..opts.clone()
    };
    assert!(matches!(
        Wal::open(dir, strict),
        Err(Error::Corruption { .. })
    ));
    let (wal, rec) = Wal::open(dir, opts.clone()).unwrap();
    assert_eq!(rec.entries, entries(1..=9, 1));
    wal.append_sync(WriteBatch {
        entries: entries(10..=11, 2),
        ..Default::default()
    })
    .unwrap();
    wal.close().unwrap();
    let (_wal, rec) = Wal::open(dir, opts).unwrap();
    let mut want = entries(1..=9, 1);
    want.extend(entries(10..=11, 2));
    assert_eq!(rec.entries, want);
}

#[test]
fn garbage_tail_is_repaired() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let end = fixture(dir, 10);
    let seg = last_segment(dir);
    let mut bytes = std::fs::read(&seg).unwrap();
    // half a record of garbage after the last valid one
    for (i, b) in bytes[end as usize..end as usize + 20]
        .iter_mut()
        .enumerate()
    {
        *b = 0xA5 ^ i as u8;
    }
    std::fs::write(&seg, &bytes).unwrap();
    let opts = WalOptions {
        segment_size: 1 << 20,
        ..WalOptions::default()
    };
    let (wal, rec) = Wal::open(dir, opts.clone()).unwrap();
    assert_eq!(rec.entries, entries(1..=10, 1));
    wal.close().unwrap();
    let bytes = std::fs::read(&seg).unwrap();
    assert!(
        bytes[end as usize..].iter().all(|&b| b == 0),
        "the torn bytes were zeroed"
    );
}

#[test]
fn flipped_byte_in_the_middle_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let end = fixture(dir, 20);
    let seg = last_segment(dir);
    let mut bytes = std::fs::read(&seg).unwrap();
    let mid = (end / 2) as usize;
    bytes[mid] ^= 0x10;
    std::fs::write(&seg, &bytes).unwrap();
    let opts = WalOptions {
        segment_size: 1 << 20,
        ..WalOptions::default()
    };
    match Wal::open(dir, opts) {
        Err(Error::Corruption {
            file,
            offset,
            reason,
        }) => {
            assert_eq!(file, seg);
            assert!(
                offset <= mid as u64 && offset + 200 > mid as u64,
                "offset {offset} near {mid}"
            );
            assert!(reason.contains("valid record follows"), "{reason}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // Nothing was modified by the refused open.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
}

#[test]
fn damage_in_an_older_segment_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let wal = Wal::create(dir, tiny(), b"m").unwrap();
    for i in 1..=60 {
        wal.append_sync(WriteBatch {
            entries: vec![e(i, 1)],
            ..Default::default()
        })
        .unwrap();
    }
    wal.close().unwrap();
    let segs = segments(dir);
    assert!(segs.len() >= 3);
    // truncating a non-last segment mid-record
    let victim = &segs[1];
    let len = std::fs::metadata(victim).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(victim)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    match Wal::open(dir, tiny()) {
        Err(Error::Corruption { file, .. }) => assert_eq!(&file, victim),
        other => panic!("expected corruption, got {other:?}"),
    }
    // a missing middle segment
    std::fs::remove_file(victim).unwrap();
    assert!(matches!(
        Wal::open(dir, tiny()),
        Err(Error::Corruption { .. })
    ));
}

#[test]
fn concurrent_appenders_keep_order_and_durability() {
    use std::sync::{Arc, Mutex};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let opts = WalOptions {
        segment_size: 64 * 1024,
        ..WalOptions::default()
    };
    let wal = Arc::new(Wal::create(dir, opts.clone(), b"m").unwrap());
    // Index allocation + queueing is serialized (as in a raft node); waiting is not.
    let next = Arc::new(Mutex::new(1u64));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (wal, next, acked) = (wal.clone(), next.clone(), acked.clone());
            std::thread::spawn(move || {
                for _ in 0..100 {
                    let (first, ticket) = {
                        let mut n = next.lock().unwrap();
                        let first = *n;
                        let batch = WriteBatch {
                            entries: entries(first..=first + 1, t + 1),
                            ..Default::default()
                        };
                        let ticket = wal.append(batch).unwrap();
                        *n += 2;
                        (first, ticket)
                    };
                    ticket.wait().unwrap();
                    acked.lock().unwrap().push(first);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let m = wal.metrics();
    assert_eq!(m.batches_total, 800);
    assert!(m.group_commits_total <= 800);
    eprintln!(
        "800 batches in {} group commits, {} fsyncs",
        m.group_commits_total, m.fsync_count
    );
    Arc::try_unwrap(wal).unwrap().close().unwrap();
    let (_wal, rec) = Wal::open(dir, opts).unwrap();
    assert_eq!(rec.entries.len(), 1600);
    for (i, en) in rec.entries.iter().enumerate() {
        assert_eq!(en.index, i as u64 + 1);
    }
    assert_eq!(acked.lock().unwrap().len(), 800);
}
