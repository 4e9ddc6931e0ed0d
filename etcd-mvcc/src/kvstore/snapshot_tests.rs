//! Tests of snapshot images: export, restore in place (round trip into a
//! store with other data, refused images, crashes at every write, failures
//! half-way, concurrent readers, a running compaction, watch sinks, a large
//! image), on both backends where the backend matters.

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::tests::{raw_revisions, Env};
use crate::*;

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn memory() {
                    super::$name(super::Env::memory());
                }

                #[cfg(feature = "rocksdb")]
                #[test]
                fn rocksdb() {
                    super::$name(super::Env::rocksdb());
                }
            }
        )*
    };
}

on_both_backends!(
    round_trip_into_a_store_with_other_data,
    invalid_images_are_refused_and_leave_the_target_usable,
    failure_half_way_leaves_the_store_incomplete_until_restored,
    export_is_one_consistent_snapshot_under_writes,
    unfinished_compaction_in_the_image_resumes,
    restore_abandons_a_running_compaction,
    readers_never_see_a_mix,
    watch_sinks_see_no_events_and_the_epoch_changes,
    large_image_round_trip,
);

const BUCKETS: [Bucket; 4] = [Bucket::Lease, Bucket::Auth, Bucket::Members, Bucket::Alarm];

fn ro(rev: i64) -> RangeOptions {
    RangeOptions {
        rev,
        ..Default::default()
    }
}

fn next_ci(s: &Store) -> u64 {
    s.consistent_index() + 1
}

fn put(s: &Store, kvs: &[(&str, &str)]) {
    let mut t = s.write();
    for (k, v) in kvs {
        t.put(k.as_bytes(), v.as_bytes(), 0).unwrap();
    }
    t.end(next_ci(s)).unwrap();
}

fn del(s: &Store, key: &str, end: &[u8]) {
    let mut t = s.write();
    t.delete_range(key.as_bytes(), end).unwrap();
    t.end(next_ci(s)).unwrap();
}

fn export(s: &Store) -> Vec<u8> {
    let mut v = Vec::new();
    s.export().unwrap().read_to_end(&mut v).unwrap();
    v
}

fn export_blocks(s: &Store, block: usize) -> Vec<u8> {
    let mut v = Vec::new();
    s.export_with_block_size(block)
        .unwrap()
        .read_to_end(&mut v)
        .unwrap();
    v
}

/// A history with puts (with leases), deletes, a multi-op txn that deletes
/// and re-creates, aux records in every bucket, a compaction, and more.
fn build_source(s: &Store) {
    for i in 0..20 {
        let mut t = s.write();
        t.put(
            format!("key/{}", i % 7).as_bytes(),
            format!("v{i}").as_bytes(),
            (i % 3) as i64,
        )
        .unwrap();
        t.put(format!("other/{i}").as_bytes(), b"x", 0).unwrap();
        t.put_aux(BUCKETS[i % 4], format!("aux{i}").as_bytes(), b"a");
        t.end(next_ci(s)).unwrap();
        if i % 5 == 4 {
            del(s, &format!("other/{}", i - 2), b"");
        }
    }
    del(s, "other/1", b"other/5");
    let mut t = s.write();
    t.delete_range(b"key/3", b"").unwrap();
    t.put(b"key/3", b"again", 0).unwrap();
    t.put(b"fresh", b"1", 0).unwrap();
    t.delete_aux(Bucket::Lease, b"aux0");
    t.end(next_ci(s)).unwrap();
    // an aux-only txn: no revision, a new consistent index
    let mut t = s.write();
    t.put_aux(Bucket::Members, b"m1", b"member");
    t.end(next_ci(s)).unwrap();
    let c = s.current_revision() - 8;
    s.compact(c, next_ci(s)).unwrap().wait();
    for i in 0..6 {
        put(s, &[(&format!("key/{i}"), "after")]);
    }
    del(s, "fresh", b"");
}

/// Other data: different keys and aux records, more revisions, compacted.
fn build_other(s: &Store) {
    for i in 0..40 {
        put(s, &[(&format!("zz/{i}"), "z"), ("key/1", &format!("o{i}"))]);
        let mut t = s.write();
        t.put_aux(BUCKETS[i % 4], format!("other-aux{i}").as_bytes(), b"o");
        t.end(next_ci(s)).unwrap();
    }
    s.compact(30, next_ci(s)).unwrap().wait();
}

/// Everything observable is equal: revisions, consistent index, every range
/// and hash at every uncompacted revision, aux buckets, history.
fn assert_same(a: &Store, b: &Store) {
    assert_eq!(
        a.current_revision(),
        b.current_revision(),
        "current revision"
    );
    assert_eq!(
        a.compact_revision(),
        b.compact_revision(),
        "compact revision"
    );
    assert_eq!(
        a.consistent_index(),
        b.consistent_index(),
        "consistent index"
    );
    assert_eq!(a.index_len(), b.index_len(), "keys in the index");
    let from = a.compact_revision().max(1);
    for rev in from..=a.current_revision() {
        assert_eq!(
            a.range(b"", &[0], ro(rev)).unwrap(),
            b.range(b"", &[0], ro(rev)).unwrap(),
            "range at {rev}"
        );
        assert_eq!(
            a.hash_kv(rev).unwrap(),
            b.hash_kv(rev).unwrap(),
            "hash at {rev}"
        );
    }
    if from > 1 {
        assert_eq!(b.range(b"", &[0], ro(from - 1)), Err(Error::Compacted));
        assert_eq!(b.hash_kv(from - 1), Err(Error::Compacted));
    }
    for bucket in BUCKETS {
        assert_eq!(
            a.aux_scan(bucket).unwrap(),
            b.aux_scan(bucket).unwrap(),
            "{bucket:?}"
        );
    }
    assert_eq!(
        a.history(from, 1000).unwrap(),
        b.history(from, 1000).unwrap()
    );
}

fn round_trip_into_a_store_with_other_data(env: Env) {
    let src = env.open();
    build_source(&src);
    let image = export(&src);
    let info = verify_image(&image[..]).unwrap();
    assert_eq!(info.consistent_index, src.consistent_index());
    assert_eq!(info.revision, src.current_revision());
    assert_eq!(info.compact_revision, src.compact_revision());
    assert_eq!(info.bytes, image.len() as u64);

    let target_env = env.fresh();
    let dst = target_env.open();
    build_other(&dst);
    assert!(dst.current_revision() > src.current_revision());
    let got = dst.restore(Cursor::new(&image)).unwrap();
    assert_eq!(got, info);
    assert_same(&src, &dst);
    // keys, revisions and aux records absent from the image are gone
    assert_eq!(dst.range(b"zz/", b"zz0", ro(0)).unwrap().count, 0);
    assert_eq!(dst.aux_get(Bucket::Alarm, b"other-aux3").unwrap(), None);
    assert_eq!(raw_revisions(&src), raw_revisions(&dst));
    // the same image again: still the same
    dst.restore(Cursor::new(&image)).unwrap();
    assert_same(&src, &dst);

    // both apply the same next entries alike: same revisions, same events
    for s in [&src, &dst] {
        let mut t = s.write();
        t.put(b"key/1", b"next", 0).unwrap();
        t.delete_range(b"other/", b"other0").unwrap();
        t.put_aux(Bucket::Auth, b"u", b"1");
        t.end(next_ci(s)).unwrap();
        s.compact(s.current_revision() - 2, next_ci(s))
            .unwrap()
            .wait();
    }
    assert_same(&src, &dst);
    // a re-export of the restored store is byte-identical to the source's
    assert_eq!(export(&src), export(&dst));

    // durable: reopened, the restored store is the same
    drop(dst);
    let dst = target_env.open();
    assert_same(&src, &dst);
}

fn flip_positions(len: usize) -> Vec<usize> {
    let mut v = vec![
        0,
        8,
        12,
        20,
        27,
        28,
        29,
        33,
        40,
        41,
        len / 3,
        len / 2,
        len - 30,
        len - 5,
        len - 1,
    ];
    v.retain(|&p| p < len);
    v
}

fn invalid_images_are_refused_and_leave_the_target_usable(env: Env) {
    let src = env.open();
    build_source(&src);
    let image = export_blocks(&src, 300);
    assert!(verify_image(&image[..]).unwrap().blocks > 3);
    let dst_env = env.fresh();

    let dst = dst_env.open();
    build_other(&dst);
    let before = (
        dst.hash_kv(0).unwrap(),
        dst.consistent_index(),
        dst.range(b"", &[0], ro(0)).unwrap(),
    );
    let check_untouched = |what: &str| {
        let now = (
            dst.hash_kv(0).unwrap(),
            dst.consistent_index(),
            dst.range(b"", &[0], ro(0)).unwrap(),
        );
        assert_eq!(now, before, "{what}");
    };
    for cut in [
        0,
        5,
        27,
        28,
        40,
        image.len() / 2,
        image.len() - 45,
        image.len() - 1,
    ] {
        let e = dst.restore(Cursor::new(&image[..cut])).unwrap_err();
        assert!(matches!(e, Error::InvalidImage(_)), "cut at {cut}: {e}");
        assert!(e.to_string().contains("truncated") || cut < 8, "{e}");
        check_untouched("after a truncated image");
    }
    for pos in flip_positions(image.len()) {
        let mut bad = image.clone();
        bad[pos] ^= 0x10;
        let e = dst.restore(Cursor::new(&bad)).unwrap_err();
        assert!(matches!(e, Error::InvalidImage(_)), "flip at {pos}: {e}");
        check_untouched("after a corrupted image");
    }
    // garbage
    let e = dst
        .restore(Cursor::new(b"not an image at all, just text"))
        .unwrap_err();
    assert!(e.to_string().contains("not a snapshot image"), "{e}");
    // still fully usable: writes, compaction, then a good restore
    put(&dst, &[("still", "works")]);
    dst.compact(dst.current_revision(), next_ci(&dst))
        .unwrap()
        .wait();
    dst.restore(Cursor::new(&image)).unwrap();
    assert_same(&src, &dst);
}

/// A `Read + Seek` over bytes whose second pass fails after `fail_at` bytes.
struct FailSecondPass {
    data: Cursor<Vec<u8>>,
    passes: usize,
    fail_at: u64,
}

impl Read for FailSecondPass {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.passes >= 1 && self.data.position() >= self.fail_at {
            return Err(std::io::Error::other("disk read error (injected)"));
        }
        let max = if self.passes >= 1 {
            buf.len()
                .min((self.fail_at - self.data.position()) as usize)
        } else {
            buf.len()
        };
        self.data.read(&mut buf[..max])
    }
}

impl Seek for FailSecondPass {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        if pos == SeekFrom::Start(0) {
            self.passes += 1;
        }
        self.data.seek(pos)
    }
}

fn failure_half_way_leaves_the_store_incomplete_until_restored(env: Env) {
    let src = env.open();
    build_source(&src);
    let image = export_blocks(&src, 200);
    let dst_env = env.fresh();
    let dst = dst_env.open();
    build_other(&dst);
    let reader = FailSecondPass {
        data: Cursor::new(image.clone()),
        passes: 0,
        fail_at: image.len() as u64 / 2,
    };
    let e = dst.restore(reader).unwrap_err();
    assert!(matches!(e, Error::Storage(_)), "{e}");
    assert!(dst.is_restore_incomplete());
    assert_eq!(dst.range(b"", &[0], ro(0)), Err(Error::RestoreIncomplete));
    assert_eq!(dst.hash_kv(0), Err(Error::RestoreIncomplete));
    assert_eq!(dst.history(1, 10), Err(Error::RestoreIncomplete));
    assert_eq!(dst.aux_scan(Bucket::Lease), Err(Error::RestoreIncomplete));
    assert!(matches!(dst.compact(1, 1), Err(Error::RestoreIncomplete)));
    assert!(matches!(dst.export(), Err(Error::RestoreIncomplete)));
    let mut t = dst.write();
    t.put(b"x", b"y", 0).unwrap();
    assert_eq!(t.end(1).err(), Some(Error::RestoreIncomplete));
    // reopening refuses it (the marker was written)
    dst.flush().unwrap();
    drop(dst);
    assert_eq!(
        dst_env.open_opts(StoreOptions::default()).err(),
        Some(Error::RestoreIncomplete)
    );
    // the recovery path
    let dst = Store::open_with_to_restore(dst_env.backend(), StoreOptions::default()).unwrap();
    assert!(dst.is_restore_incomplete());
    dst.restore(Cursor::new(&image)).unwrap();
    assert!(!dst.is_restore_incomplete());
    assert_same(&src, &dst);
    drop(dst);
    assert_same(&src, &dst_env.open());
}

fn export_is_one_consistent_snapshot_under_writes(env: Env) {
    let src = Arc::new(env.open());
    for i in 0..50 {
        put(&src, &[(&format!("k{i}"), "0")]);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (src, stop) = (src.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            // bounded, so that the exports stay small
            while !stop.load(Ordering::Relaxed) && i < 5000 {
                let mut t = src.write();
                t.put(
                    format!("k{}", i % 50).as_bytes(),
                    format!("{i}").as_bytes(),
                    0,
                )
                .unwrap();
                t.put_aux(
                    Bucket::Lease,
                    format!("l{}", i % 10).as_bytes(),
                    format!("{i}").as_bytes(),
                );
                t.end(src.consistent_index() + 1).unwrap();
                i += 1;
                std::thread::yield_now();
            }
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    let mut images = Vec::new();
    for _ in 0..3 {
        let mut e = src.export_with_block_size(256).unwrap();
        let ci = e.consistent_index();
        let mut v = Vec::new();
        // read slowly: writes continue meanwhile
        let mut buf = [0u8; 1000];
        loop {
            let n = e.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            v.extend_from_slice(&buf[..n]);
            std::thread::yield_now();
        }
        images.push((ci, v));
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    for (ci, image) in images {
        let dst_env = env.fresh();

        let dst = dst_env.open();
        let info = dst.restore(Cursor::new(&image)).unwrap();
        assert_eq!(info.consistent_index, ci);
        // every write put one revision with ci = its number: so the image is
        // the source at revision rev
        let rev = dst.current_revision();
        assert_eq!(rev as u64, ci + 1);
        assert_eq!(
            src.range(b"", &[0], ro(rev)).unwrap().kvs,
            dst.range(b"", &[0], ro(0)).unwrap().kvs
        );
        assert_eq!(src.hash_kv(rev).unwrap().hash, dst.hash_kv(0).unwrap().hash);
        // the lease bucket matches the values at that revision
        for (k, v) in dst.aux_scan(Bucket::Lease).unwrap() {
            assert!(
                String::from_utf8(v).unwrap().parse::<i64>().unwrap() + 51 <= rev,
                "{k:?}"
            );
        }
    }
}

fn slow_compaction() -> StoreOptions {
    StoreOptions {
        compaction_batch_limit: 2,
        compaction_sleep_interval: Duration::from_millis(20),
        ..Default::default()
    }
}

fn unfinished_compaction_in_the_image_resumes(env: Env) {
    let src = env.open_opts(slow_compaction()).unwrap();
    for i in 0..30 {
        put(
            &src,
            &[("a", &i.to_string()), (&format!("b{}", i % 4), "x")],
        );
    }
    let c = src.current_revision() - 3;
    let _ = src.compact(c, next_ci(&src)).unwrap();
    let image = export(&src);
    let info = verify_image(&image[..]).unwrap();
    assert_eq!(info.compact_revision, c);
    assert!(info.finished_compact_revision < c, "{info:?}");
    let dst_env = env.fresh();

    let dst = dst_env.open_opts(slow_compaction()).unwrap();
    dst.restore(Cursor::new(&image)).unwrap();
    assert_same(&src, &dst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while dst.finished_compact_revision() < c || src.finished_compact_revision() < c {
        assert!(Instant::now() < deadline, "compaction did not resume");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(raw_revisions(&src), raw_revisions(&dst));
    assert_same(&src, &dst);
}

fn restore_abandons_a_running_compaction(env: Env) {
    // The image has many revisions the target's compaction would remove if
    // it went on after the restore.
    let src = env.open();
    for i in 0..40 {
        put(&src, &[("k", &i.to_string()), (&format!("u{i}"), "v")]);
    }
    let image = export(&src);
    let dst_env = env.fresh();

    let dst = dst_env.open_opts(slow_compaction()).unwrap();
    for i in 0..60 {
        put(&dst, &[("k", &i.to_string()), (&format!("u{i}"), "w")]);
    }
    let wait = dst.compact(55, next_ci(&dst)).unwrap();
    std::thread::sleep(Duration::from_millis(50)); // it is running
    dst.restore(Cursor::new(&image)).unwrap();
    wait.wait(); // returns: the restore voided it
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(raw_revisions(&src), raw_revisions(&dst));
    assert_eq!(dst.compact_revision(), -1);
    assert_same(&src, &dst);
    // compaction works on the restored store
    dst.compact(20, next_ci(&dst)).unwrap().wait();
    src.compact(20, next_ci(&src)).unwrap().wait();
    assert_eq!(dst.finished_compact_revision(), 20);
    assert_same(&src, &dst);
    assert_eq!(raw_revisions(&src), raw_revisions(&dst));
}

/// Two unrelated stores with the same keys and revisions and different
/// values: concurrent readers see one or the other, never a mix (or
/// `Compacted` for a range a restore overtook between pages).
fn readers_never_see_a_mix(env: Env) {
    let opts = StoreOptions {
        range_chunk_size: 7,
        ..Default::default()
    };
    let mk = |value: &str| {
        let e = env.fresh();
        let s = e.open_opts(opts.clone()).unwrap();
        for t in 0..10 {
            let kvs: Vec<(String, String)> = (0..30)
                .map(|i| (format!("k{:02}", t * 30 + i), value.to_string()))
                .collect();
            let refs: Vec<(&str, &str)> =
                kvs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            put(&s, &refs);
        }
        (export_blocks(&s, 512), s.hash_kv(0).unwrap())
    };
    let (img_a, hash_a) = mk("a");
    let (img_b, hash_b) = mk("b");
    let s = Arc::new(env.open_opts(opts.clone()).unwrap());
    s.restore(Cursor::new(&img_a)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]);
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let (s, stop, outcomes) = (s.clone(), stop.clone(), outcomes.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match r {
                        0 => {
                            // a read transaction that may straddle a restore
                            let t = s.read();
                            std::thread::yield_now();
                            match t.range(b"k", b"l", RangeOptions::default()) {
                                Ok(res) => {
                                    assert_eq!(res.kvs.len(), 300);
                                    assert_eq!(res.count, 300);
                                    let first = res.kvs[0].value.clone();
                                    assert!(res.kvs.iter().all(|kv| kv.value == first), "a mix");
                                    outcomes[0].fetch_add(1, Ordering::Relaxed);
                                }
                                Err(Error::Compacted) => {
                                    outcomes[1].fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                        1 => {
                            let h = s.hash_kv(0).unwrap();
                            assert!(h == hash_a || h == hash_b, "{h:?}");
                            outcomes[2].fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            let History::Events(b) = s.history(1, 1000).unwrap() else {
                                panic!("not compacted")
                            };
                            assert_eq!(b.events.len(), 300);
                            let first = b.events[0].kv.as_ref().unwrap().value.clone();
                            assert!(b
                                .events
                                .iter()
                                .all(|e| e.kv.as_ref().unwrap().value == first));
                        }
                    }
                }
            })
        })
        .collect();
    for i in 0..20 {
        let img = if i % 2 == 0 { &img_b } else { &img_a };
        s.restore(Cursor::new(img)).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    assert!(outcomes[0].load(Ordering::Relaxed) > 0);
    assert!(outcomes[2].load(Ordering::Relaxed) > 0);
    assert_eq!(s.restore_epoch(), 21);
}

fn watch_sinks_see_no_events_and_the_epoch_changes(env: Env) {
    let src = env.open();
    build_source(&src);
    let image = export(&src);
    let dst_env = env.fresh();

    let dst = dst_env.open();
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sink = seen.clone();
    dst.subscribe(Arc::new(move |rev, evs: &[Event]| {
        sink.lock().push((rev, evs.len()))
    }));
    put(&dst, &[("a", "1")]);
    assert_eq!(dst.restore_epoch(), 0);
    dst.restore(Cursor::new(&image)).unwrap();
    assert_eq!(dst.restore_epoch(), 1);
    assert_eq!(*seen.lock(), vec![(2, 1)], "the restore publishes nothing");
    put(&dst, &[("a", "2")]);
    assert_eq!(seen.lock().last(), Some(&(src.current_revision() + 1, 1)));
    // a watcher resyncs from history: the image's events above its compaction
    let History::Events(b) = dst.history(src.compact_revision(), 1000).unwrap() else {
        panic!()
    };
    assert!(!b.events.is_empty());
    assert_eq!(
        dst.history(2, 10).unwrap(),
        History::Compacted {
            compact_revision: src.compact_revision()
        }
    );
}

fn large_image_round_trip(env: Env) {
    const KEYS: usize = 200_000;
    let src = env.open();
    let t0 = Instant::now();
    for chunk in 0..KEYS / 1000 {
        let mut t = src.write();
        for i in 0..1000 {
            let k = format!(
                "/registry/pods/ns-{:03}/pod-{:07}",
                chunk % 100,
                chunk * 1000 + i
            );
            t.put(k.as_bytes(), &[b'v'; 64], 0).unwrap();
        }
        t.end(next_ci(&src)).unwrap();
    }
    let filled = t0.elapsed();
    let t0 = Instant::now();
    let image = export(&src);
    let exported = t0.elapsed();
    let info = verify_image(&image[..]).unwrap();
    assert_eq!(info.records as usize, KEYS + 2); // + consistent index, format version
    assert!(info.blocks >= (image.len() / BLOCK_TARGET) as u64);
    // what the decoder buffers: one block, at most the target
    assert!(info.max_block_len <= BLOCK_TARGET, "{info:?}");
    let dst_env = env.fresh();

    let dst = dst_env.open();
    put(&dst, &[("old", "data")]);
    let t0 = Instant::now();
    dst.restore(Cursor::new(&image)).unwrap();
    let restored = t0.elapsed();
    assert_eq!(dst.index_len(), KEYS);
    assert_eq!(src.hash_kv(0).unwrap(), dst.hash_kv(0).unwrap());
    assert_eq!(
        dst.range(
            b"",
            &[0],
            RangeOptions {
                count_only: true,
                ..Default::default()
            }
        )
        .unwrap()
        .count,
        KEYS as i64
    );
    eprintln!(
        "large image: {KEYS} keys, {} bytes, {} blocks; fill {filled:?}, export {exported:?}, restore {restored:?}",
        image.len(),
        info.blocks
    );
}

// ---- crashes (in memory) ----

#[test]
fn crash_at_every_write_of_a_restore() {
    let src = Store::open_in_memory(StoreOptions::default()).unwrap();
    build_source(&src);
    let image = export_blocks(&src, 300);
    assert!(verify_image(&image[..]).unwrap().blocks > 5);
    for auto_flush in [false, true] {
        let (mut old, mut incomplete) = (0, 0);
        for n in 0.. {
            let disk = MemDisk::new();
            let dst = Store::open_with(Box::new(disk.backend()), StoreOptions::default()).unwrap();
            build_other(&dst);
            dst.flush().unwrap();
            let want_old = (
                dst.current_revision(),
                dst.consistent_index(),
                dst.hash_kv(0).unwrap(),
                dst.range(b"", &[0], ro(0)).unwrap(),
                dst.aux_scan(Bucket::Alarm).unwrap(),
            );
            disk.set_auto_flush(auto_flush);
            disk.crash_after_writes(n);
            let res = dst.restore_with_batch(Cursor::new(&image), 5);
            if res.is_ok() {
                assert!(n > 10, "only {n} writes");
                assert_same(&src, &dst);
                break;
            }
            disk.crash();
            drop(dst);
            match Store::open_with(Box::new(disk.backend()), StoreOptions::default()) {
                Ok(s) => {
                    old += 1;
                    let got = (
                        s.current_revision(),
                        s.consistent_index(),
                        s.hash_kv(0).unwrap(),
                        s.range(b"", &[0], ro(0)).unwrap(),
                        s.aux_scan(Bucket::Alarm).unwrap(),
                    );
                    assert_eq!(got, want_old, "crash after {n} writes: the old store");
                    // and it can still be restored
                    s.restore(Cursor::new(&image)).unwrap();
                    assert_same(&src, &s);
                }
                Err(Error::RestoreIncomplete) => {
                    incomplete += 1;
                    let s = Store::open_with_to_restore(
                        Box::new(disk.backend()),
                        StoreOptions::default(),
                    )
                    .unwrap();
                    s.restore(Cursor::new(&image)).unwrap();
                    assert_same(&src, &s);
                    drop(s);
                    let s = Store::open_with(Box::new(disk.backend()), StoreOptions::default())
                        .unwrap();
                    assert_same(&src, &s);
                }
                Err(e) => panic!("crash after {n} writes: {e}"),
            }
        }
        if auto_flush {
            assert!(incomplete > 10 && old == 1, "{old} {incomplete}");
        } else {
            assert!(old > 10 && incomplete == 0, "{old} {incomplete}");
        }
    }
}

#[cfg(feature = "rocksdb")]
#[test]
fn rocksdb_marker_makes_open_fail_and_open_to_restore_recovers() {
    let src = Store::open_in_memory(StoreOptions::default()).unwrap();
    build_source(&src);
    let image = export(&src);
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        build_other(&s);
        // what a crash right after step 2 (the marker) leaves
        let mut b = WriteBatch::default();
        b.put(Cf::Meta, crate::backend::META_RESTORING, 1u64.to_be_bytes());
        s.inner.backend.write(b).unwrap();
    }
    assert_eq!(
        Store::open(dir.path(), StoreOptions::default()).err(),
        Some(Error::RestoreIncomplete)
    );
    {
        let s = Store::open_to_restore(dir.path(), StoreOptions::default()).unwrap();
        s.restore(Cursor::new(&image)).unwrap();
        assert_same(&src, &s);
    }
    let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
    assert_same(&src, &s);
}

#[test]
fn export_reader_dropped_early_releases_the_store() {
    let s = Store::open_in_memory(StoreOptions::default()).unwrap();
    for i in 0..2000 {
        put(&s, &[(&format!("k{i}"), "v")]);
    }
    let mut e = s.export_with_block_size(100).unwrap();
    let mut buf = [0u8; 10];
    e.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[..8], &IMAGE_MAGIC);
    drop(e);
    // writers go on; the export thread exits on its own
    put(&s, &[("k0", "w")]);
    let image = export(&s);
    assert_eq!(
        verify_image(&image[..]).unwrap().consistent_index,
        s.consistent_index()
    );
}

/// The fuzz target's logic over generated inputs: every mode, many seeds.
#[test]
fn fuzzing_run_image_random_inputs() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
    };
    crate::fuzzing_image::run_image(&[]);
    for mode in 0..3u8 {
        crate::fuzzing_image::run_image(&[mode]);
    }
    let mut accepted = [0usize; 3];
    for seed in 0..900usize {
        let len = 1 + (seed * 13) % 300;
        let mut data: Vec<u8> = (0..len).map(|_| next()).collect();
        data[0] = (seed % 3) as u8;
        if crate::fuzzing_image::run_image(&data) {
            accepted[seed % 3] += 1;
        }
    }
    // random bytes are never an image; generated records sometimes are
    assert_eq!(accepted[0], 0);
    assert!(accepted[1] > 10 && accepted[1] < 250, "{accepted:?}");
    assert_eq!(accepted[2], 300);
    // a valid image with one bit flipped, as raw input
    let s = Store::open_in_memory(StoreOptions::default()).unwrap();
    build_source(&s);
    let image = export_blocks(&s, 100);
    for i in (0..image.len()).step_by(37) {
        let mut data = vec![0u8];
        data.extend_from_slice(&image);
        data[1 + i] ^= 4;
        assert!(!crate::fuzzing_image::run_image(&data));
    }
    let mut data = vec![0u8];
    data.extend_from_slice(&image);
    assert!(crate::fuzzing_image::run_image(&data));
}
