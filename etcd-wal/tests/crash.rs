//! Crash tests on the fault-injecting in-memory file system.
//!
//! `MemFs` keeps written bytes apart from durable ones. For every prefix of
//! the I/O operations of a workload we "crash" the machine (every later
//! operation fails), keep the synced state plus some prefix of what was not
//! synced yet, reopen, and check:
//! - every acknowledged batch (its ticket returned Ok) is present;
//! - what is returned is exactly the model's state after some prefix of the
//!   records written (nothing after a torn record, nothing invented).

use bytes::Bytes;
use etcd_wal::testing::{CrashKeep, MemFs};
use etcd_wal::{Entry, Error, HardState, Recovered, SnapshotMarker, Wal, WalOptions, WriteBatch};
use std::path::Path;
use std::sync::Arc;

const DIR: &str = "/data/member/wal";

fn opts() -> WalOptions {
    WalOptions {
        segment_size: 512,
        max_wals: 2,
        ..WalOptions::default()
    }
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: Bytes::from(vec![(index * 7 + term) as u8; (index % 5 * 13) as usize]),
    }
}

/// A deterministic workload: appends, hard states, an overwrite, markers.
fn workload() -> Vec<WriteBatch> {
    let mut v = Vec::new();
    let mut next = 1;
    for i in 0..40u64 {
        let mut b = WriteBatch::default();
        if i == 10 {
            next -= 3; // a new leader overwrites a suffix
        }
        if i % 9 == 8 {
            b.snapshot = Some(SnapshotMarker {
                index: next - 2,
                term: 1 + i / 8,
            });
        }
        for _ in 0..(i % 3 + 1) {
            b.entries.push(entry(next, 1 + i / 8));
            next += 1;
        }
        if i % 2 == 0 {
            b.hard_state = Some(HardState {
                term: 1 + i / 8,
                vote: 1,
                commit: next - 2,
            });
        }
        v.push(b);
    }
    v
}

/// The model's state after each record prefix: `states[k]` after k records.
fn model_states(batches: &[WriteBatch], metadata: &[u8]) -> (Vec<Recovered>, Vec<usize>) {
    let mut states = Vec::new();
    let mut cur = Recovered {
        metadata: Bytes::copy_from_slice(metadata),
        ..Recovered::default()
    };
    let mut log: std::collections::BTreeMap<u64, Entry> = Default::default();
    let snapshot_view = |log: &std::collections::BTreeMap<u64, Entry>, cur: &Recovered| {
        let mut r = cur.clone();
        let floor = cur.snapshot.map_or(0, |s| s.index);
        r.entries = log.range(floor + 1..).map(|(_, e)| e.clone()).collect();
        r
    };
    states.push(cur.clone());
    let mut ends = Vec::new(); // record count at the end of each batch
    for b in batches {
        if let Some(s) = b.snapshot {
            cur.snapshot = Some(s);
            states.push(snapshot_view(&log, &cur));
        }
        for e in &b.entries {
            log.split_off(&e.index);
            log.insert(e.index, e.clone());
            states.push(snapshot_view(&log, &cur));
        }
        if let Some(hs) = b.hard_state {
            cur.hard_state = hs;
            states.push(snapshot_view(&log, &cur));
        }
        ends.push(states.len() - 1);
    }
    (states, ends)
}

struct Run {
    created: bool,
    acked_batches: usize,
    attempted_batches: usize,
}

/// How `run` hands batches to the WAL.
#[derive(Clone, Copy, Debug)]
enum Feed {
    /// `append`, two tickets in flight: group commits by the writer thread.
    Pipelined,
    /// As `Pipelined`, but of every three batches one goes through
    /// `append_unsynced` (no fdatasync of its own) and one through
    /// `append_sync_now` (committed on the caller's thread when nothing is
    /// pending, else queued behind the pending ones).
    Mixed,
}

/// Runs the workload until the first error (the crash).
fn run(fs: &MemFs, batches: &[WriteBatch]) -> Run {
    run_fed(fs, batches, Feed::Pipelined)
}

fn run_fed(fs: &MemFs, batches: &[WriteBatch], feed: Feed) -> Run {
    let dir = Path::new(DIR);
    let Ok(wal) = Wal::create_with_fs(Arc::new(fs.clone()), dir, opts(), b"crash-meta") else {
        return Run {
            created: false,
            acked_batches: 0,
            attempted_batches: 0,
        };
    };
    let mut r = Run {
        created: true,
        acked_batches: 0,
        attempted_batches: 0,
    };
    // Pipeline two batches at a time to exercise group commit. A batch
    // known durable makes every batch before it durable.
    let mut pending = std::collections::VecDeque::new();
    for (i, b) in batches.iter().enumerate() {
        match (feed, i % 3) {
            (Feed::Mixed, 1) => {
                if wal.append_unsynced(b.clone()).is_err() {
                    break;
                }
                r.attempted_batches = i + 1;
            }
            (Feed::Mixed, 2) => {
                r.attempted_batches = i + 1;
                if wal.append_sync_now(b.clone()).is_err() {
                    return r;
                }
                r.acked_batches = i + 1;
                pending.clear();
            }
            _ => match wal.append(b.clone()) {
                Ok(t) => {
                    r.attempted_batches = i + 1;
                    pending.push_back((i, t));
                }
                Err(_) => break,
            },
        }
        if pending.len() == 2 {
            let (k, t) = pending.pop_front().expect("two pending");
            if t.wait().is_err() {
                return r;
            }
            r.acked_batches = k + 1;
        }
    }
    while let Some((k, t)) = pending.pop_front() {
        if t.wait().is_err() {
            return r;
        }
        r.acked_batches = k + 1;
    }
    // Closing syncs what unsynced batches left dirty.
    if wal.close().is_ok() {
        r.acked_batches = r.attempted_batches;
    }
    r
}

fn check_recovery(image: &MemFs, run: &Run, states: &[Recovered], ends: &[usize], what: &str) {
    let dir = Path::new(DIR);
    let res = Wal::open_with_fs(Arc::new(image.clone()), dir, opts());
    if !run.created {
        match res {
            Ok((_, rec)) => assert_eq!(rec, states[0], "{what}: a half-created wal must be empty"),
            Err(Error::NotFound(_)) => {}
            Err(e) => panic!("{what}: unexpected error after a crash during create: {e}"),
        }
        return;
    }
    let (wal, rec) = match res {
        Ok(v) => v,
        Err(e) => panic!("{what}: reopen failed: {e}"),
    };
    let min = if run.acked_batches == 0 {
        0
    } else {
        ends[run.acked_batches - 1]
    };
    let max = if run.attempted_batches == 0 {
        0
    } else {
        ends[run.attempted_batches - 1]
    };
    let found = (min..=max).find(|&k| states[k] == rec);
    assert!(
        found.is_some(),
        "{what}: recovered state matches no record prefix in {min}..={max} (acked {} batches)\nrecovered: {rec:?}",
        run.acked_batches
    );
    // The repaired log accepts appends and survives another reopen.
    let last = rec.last_index();
    wal.append_sync(WriteBatch {
        entries: vec![entry(last + 1, 99)],
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{what}: append after recovery: {e}"));
    wal.close().unwrap();
    let (_wal, again) = Wal::open_with_fs(Arc::new(image.clone()), dir, opts()).unwrap();
    let mut want = rec.entries.clone();
    want.push(entry(last + 1, 99));
    assert_eq!(again.entries, want, "{what}: second reopen");
}

#[test]
fn crash_at_every_step_keeps_acknowledged_batches() {
    crash_at_every_step(Feed::Pipelined);
}

#[test]
fn crash_at_every_step_with_commits_on_the_callers_thread() {
    crash_at_every_step(Feed::Mixed);
}

fn crash_at_every_step(feed: Feed) {
    let batches = workload();
    let (states, ends) = model_states(&batches, b"crash-meta");
    // A full run tells how many operations there are.
    let full = MemFs::new();
    let r = run_fed(&full, &batches, feed);
    assert_eq!(r.acked_batches, batches.len());
    let total = full.ops();
    assert!(total > 50, "the workload does I/O: {total} ops");
    check_recovery(
        &full.crash_image(CrashKeep::Synced),
        &r,
        &states,
        &ends,
        "full run",
    );

    let mut checked = 0;
    for crash_at in 0..=total {
        for keep in [
            CrashKeep::Synced,
            CrashKeep::All,
            CrashKeep::Random(crash_at),
            CrashKeep::Random(crash_at + 1000),
        ] {
            let fs = MemFs::new();
            fs.crash_after_ops(crash_at);
            let r = run_fed(&fs, &batches, feed);
            let image = fs.crash_image(keep);
            check_recovery(
                &image,
                &r,
                &states,
                &ends,
                &format!("crash at op {crash_at}, keep {keep:?}"),
            );
            checked += 1;
        }
    }
    eprintln!("{checked} crash images checked over {total} operations ({feed:?})");
}

#[test]
fn crash_during_repair_is_harmless() {
    let batches = workload();
    let (states, ends) = model_states(&batches, b"crash-meta");
    let dir = Path::new(DIR);
    let mut repairs = 0;
    for crash_at in [40u64, 75, 110] {
        for seed in 0..8 {
            let fs = MemFs::new();
            fs.crash_after_ops(crash_at);
            let r = run(&fs, &batches);
            let image = fs.crash_image(CrashKeep::Random(seed));
            // The reference: what a clean open of this image recovers.
            let reference =
                match Wal::open_with_fs(Arc::new(image.crash_image(CrashKeep::All)), dir, opts()) {
                    Ok((_, rec)) => rec,
                    Err(Error::NotFound(_)) => continue,
                    Err(e) => panic!("{e}"),
                };
            // Crash the repair itself at each of its operations.
            let before = image.ops();
            let probe = image.crash_image(CrashKeep::All);
            drop(Wal::open_with_fs(Arc::new(probe.clone()), dir, opts()).unwrap());
            let repair_ops = probe.ops() - before.min(probe.ops());
            if repair_ops > 0 {
                repairs += 1;
            }
            for n in 0..=repair_ops + 1 {
                let img = image.crash_image(CrashKeep::All);
                img.crash_after_ops(img.ops() + n);
                let _ = Wal::open_with_fs(Arc::new(img.clone()), dir, opts());
                for keep in [CrashKeep::Synced, CrashKeep::All, CrashKeep::Random(n)] {
                    let after = img.crash_image(keep);
                    let (_w, rec) = Wal::open_with_fs(Arc::new(after), dir, opts())
                        .unwrap_or_else(|e| panic!("reopen after a crash during repair: {e}"));
                    assert_eq!(
                        rec, reference,
                        "crash at {crash_at}, seed {seed}, repair op {n}, {keep:?}"
                    );
                }
            }
            check_recovery(&image, &r, &states, &ends, "after repair crashes");
        }
    }
    assert!(
        repairs > 0,
        "no image needed a repair: the test would be vacuous"
    );
    eprintln!("{repairs} images needed a repair");
}

#[test]
fn commits_write_zeros_ahead_of_the_log_end() {
    let zero_ahead = 1 << 20;
    for fsync in [true, false] {
        let fs = MemFs::new();
        let dir = Path::new(DIR);
        let opts = WalOptions {
            segment_size: 8 << 20,
            fsync,
            ..WalOptions::default()
        };
        let wal = Wal::create_with_fs(Arc::new(fs.clone()), dir, opts.clone(), b"m").unwrap();
        let mut log = Vec::new();
        let mut append = |index: u64| {
            let before = fs.written_bytes();
            log.push(entry(index, 1));
            wal.append_sync(WriteBatch {
                entries: vec![entry(index, 1)],
                ..Default::default()
            })
            .unwrap();
            fs.written_bytes() - before
        };
        // The first commit into the fallocated segment writes 1 MiB of
        // zeros past its record (with fsync), the next ones only records.
        let first = append(1);
        if fsync {
            assert!(first > zero_ahead, "{first} bytes");
        } else {
            assert!(first < 1024, "{first} bytes");
        }
        for i in 2..50 {
            assert!(append(i) < 1024);
        }
        wal.close().unwrap();
        // The zeros are the clean end: the log reads back the same.
        let (_wal, rec) =
            Wal::open_with_fs(Arc::new(fs.crash_image(CrashKeep::Synced)), dir, opts).unwrap();
        assert_eq!(rec.entries, log);
    }
}

/// A WAL on a fresh `MemFs` holding entry 1 (durable).
fn wal_with_entry_1() -> (MemFs, Wal) {
    let fs = MemFs::new();
    let wal = Wal::create_with_fs(Arc::new(fs.clone()), Path::new(DIR), opts(), b"m").unwrap();
    wal.append_sync(WriteBatch {
        entries: vec![entry(1, 1)],
        ..Default::default()
    })
    .unwrap();
    (fs, wal)
}

/// What a restart after a crash now recovers (only synced writes kept).
fn recover_synced(fs: &MemFs) -> Recovered {
    let image = Arc::new(fs.crash_image(CrashKeep::Synced));
    Wal::open_with_fs(image, Path::new(DIR), opts()).unwrap().1
}

#[test]
fn failed_fsync_poisons_the_wal() {
    let (fs, wal) = wal_with_entry_1();
    let dir = Path::new(DIR);
    fs.fail_sync(1);
    let t = wal
        .append(WriteBatch {
            entries: vec![entry(2, 1)],
            ..Default::default()
        })
        .unwrap();
    match t.wait() {
        Err(Error::Io(e)) => assert!(e.to_string().contains("injected fsync failure"), "{e}"),
        other => panic!("expected the fsync error, got {other:?}"),
    }
    assert!(wal.is_poisoned());
    let ops = fs.ops();
    assert!(matches!(
        wal.append(WriteBatch {
            entries: vec![entry(3, 1)],
            ..Default::default()
        }),
        Err(Error::Poisoned)
    ));
    assert!(matches!(
        wal.append_sync(WriteBatch::default()),
        Err(Error::Poisoned)
    ));
    assert!(matches!(wal.purge(1), Err(Error::Poisoned)));
    assert_eq!(
        fs.ops(),
        ops,
        "the writer never touches the file after a failed fsync (no retry)"
    );
    assert!(matches!(wal.close(), Err(Error::Poisoned)));

    // Reopening (the restart) recovers the acknowledged entry; the unsynced
    // one may or may not be there.
    let (wal, rec) =
        Wal::open_with_fs(Arc::new(fs.crash_image(CrashKeep::Synced)), dir, opts()).unwrap();
    assert_eq!(rec.entries, vec![entry(1, 1)]);
    wal.append_sync(WriteBatch {
        entries: vec![entry(2, 2)],
        ..Default::default()
    })
    .unwrap();
}

#[test]
fn batches_queued_behind_a_failed_write_are_poisoned() {
    let (fs, wal) = wal_with_entry_1();
    fs.crash_after_ops(fs.ops()); // the next write fails
    let tickets: Vec<_> = (2..40)
        .map(|i| {
            wal.append(WriteBatch {
                entries: vec![entry(i, 1)],
                ..Default::default()
            })
        })
        .take_while(|r| r.is_ok())
        .map(|r| r.unwrap())
        .collect();
    let results: Vec<_> = tickets.into_iter().map(|t| t.wait()).collect();
    assert!(matches!(results[0], Err(Error::Io(_))), "{:?}", results[0]);
    assert!(results.iter().all(|r| r.is_err()));
    assert!(
        results.iter().any(|r| matches!(r, Err(Error::Poisoned))) || results.len() < 3 || {
            // all may have been in the first group
            results.iter().all(|r| matches!(r, Err(Error::Io(_))))
        }
    );
    assert!(matches!(
        wal.append(WriteBatch::default()),
        Err(Error::Poisoned)
    ));
}

#[test]
fn append_sync_now_commits_on_the_callers_thread_only_when_idle() {
    let fs = MemFs::new();
    let dir = Path::new(DIR);
    let wal = Wal::create_with_fs(Arc::new(fs.clone()), dir, opts(), b"m").unwrap();
    let me = std::thread::current().name().unwrap().to_owned();
    let before = fs.sync_threads().len();
    for i in 1..=3 {
        wal.append_sync_now(WriteBatch {
            entries: vec![entry(i, 1)],
            ..Default::default()
        })
        .unwrap();
    }
    let syncs = fs.sync_threads();
    assert_eq!(
        syncs[before..],
        [me.clone(), me.clone(), me.clone()],
        "an idle writer: each batch committed (one sync) on the caller's thread"
    );

    // With batches pending (the writer held in its fsync), it queues
    // behind them and the writer thread commits it, after them.
    fs.hold_syncs();
    let tickets: Vec<_> = (4..=20)
        .map(|i| {
            wal.append(WriteBatch {
                entries: vec![entry(i, 1)],
                ..Default::default()
            })
            .unwrap()
        })
        .collect();
    let now = std::thread::scope(|s| {
        let now = s.spawn(|| {
            wal.append_sync_now(WriteBatch {
                entries: vec![entry(21, 1)],
                hard_state: Some(HardState {
                    term: 1,
                    vote: 1,
                    commit: 21,
                }),
                ..Default::default()
            })
        });
        // Bounded by counts, not time: the caller has queued batch 21
        // (batches 1..=21 appended) before the syncs go on.
        while wal.metrics().batches_total < 21 {
            std::thread::yield_now();
        }
        fs.release_syncs();
        now.join().unwrap()
    });
    now.unwrap();
    assert!(
        tickets.iter().all(|t| t.is_done()),
        "earlier batches are durable first"
    );
    let later = &fs.sync_threads()[before + 3..];
    assert!(
        !later.is_empty() && later.iter().all(|t| t == "etcd-wal-writer"),
        "{later:?}"
    );
    assert_eq!(wal.metrics().caller_commits_total, 3);

    // Invalid batches are refused without poisoning, like `append`.
    assert!(matches!(
        wal.append_sync_now(WriteBatch {
            entries: vec![entry(30, 1)],
            ..Default::default()
        }),
        Err(Error::InvalidBatch(_))
    ));
    wal.close().unwrap();
    let (_w, rec) =
        Wal::open_with_fs(Arc::new(fs.crash_image(CrashKeep::Synced)), dir, opts()).unwrap();
    assert_eq!(
        rec.entries,
        (1..=21).map(|i| entry(i, 1)).collect::<Vec<_>>()
    );
    assert_eq!(rec.hard_state.commit, 21);
}

#[test]
fn append_sync_now_after_a_failed_fsync_is_poisoned() {
    let fs = MemFs::new();
    let dir = Path::new(DIR);
    let wal = Wal::create_with_fs(Arc::new(fs.clone()), dir, opts(), b"m").unwrap();
    fs.fail_sync(1);
    match wal.append_sync_now(WriteBatch {
        entries: vec![entry(1, 1)],
        ..Default::default()
    }) {
        Err(Error::Io(e)) => assert!(e.to_string().contains("injected fsync failure"), "{e}"),
        other => panic!("expected the fsync error, got {other:?}"),
    }
    let ops = fs.ops();
    for b in [
        WriteBatch::default(),
        WriteBatch {
            entries: vec![entry(1, 1)],
            ..Default::default()
        },
    ] {
        assert!(matches!(
            wal.append_sync_now(b.clone()),
            Err(Error::Poisoned)
        ));
        assert!(matches!(wal.append(b), Err(Error::Poisoned)));
    }
    assert_eq!(
        fs.ops(),
        ops,
        "nothing touches the file after a failed fsync"
    );
    assert!(matches!(wal.close(), Err(Error::Poisoned)));
}

#[test]
fn unsynced_batches_wait_for_the_next_sync() {
    let (fs, wal) = wal_with_entry_1();
    let hs = |commit| HardState {
        term: 1,
        vote: 1,
        commit,
    };
    let syncs = fs.sync_threads().len();
    let written = fs.written_bytes();
    wal.append_unsynced(WriteBatch {
        hard_state: Some(hs(1)),
        ..Default::default()
    })
    .unwrap();
    while fs.written_bytes() == written {
        std::thread::yield_now();
    }
    assert_eq!(
        fs.sync_threads().len(),
        syncs,
        "no fdatasync for commit-only hard states"
    );
    let lost = recover_synced(&fs);
    assert_eq!(lost.hard_state, HardState::default(), "not durable yet");

    wal.append_sync(WriteBatch {
        entries: vec![entry(2, 1)],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(fs.sync_threads().len(), syncs + 1);
    let rec = recover_synced(&fs);
    assert_eq!(rec.hard_state, hs(1), "the next sync made it durable");
    assert_eq!(rec.entries, vec![entry(1, 1), entry(2, 1)]);

    // Close syncs an unsynced tail.
    wal.append_unsynced(WriteBatch {
        hard_state: Some(hs(2)),
        ..Default::default()
    })
    .unwrap();
    wal.close().unwrap();
    let rec = recover_synced(&fs);
    assert_eq!(rec.hard_state, hs(2));
}
