//! Unit tests of the store (put/range/delete/txn semantics, compaction,
//! reopen, aux buckets, hash) and the model checker over random inputs, each
//! run on both backends (`<test>::memory`, `<test>::rocksdb`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::META_FORMAT_VERSION;
use crate::*;

/// Where a test's store lives; opening it again finds what was flushed.
pub(crate) enum Env {
    Memory(MemDisk),
    #[cfg(feature = "rocksdb")]
    RocksDb(tempfile::TempDir),
}

impl Env {
    pub(crate) fn memory() -> Env {
        Env::Memory(MemDisk::new())
    }

    #[cfg(feature = "rocksdb")]
    pub(crate) fn rocksdb() -> Env {
        Env::RocksDb(tempfile::tempdir().unwrap())
    }

    /// A second, empty place of the same kind.
    pub(crate) fn fresh(&self) -> Env {
        match self {
            Env::Memory(_) => Env::memory(),
            #[cfg(feature = "rocksdb")]
            Env::RocksDb(_) => Env::rocksdb(),
        }
    }

    /// The raw backend (the store must be closed).
    pub(crate) fn backend(&self) -> Box<dyn Backend> {
        match self {
            Env::Memory(disk) => Box::new(disk.backend()),
            #[cfg(feature = "rocksdb")]
            Env::RocksDb(dir) => Box::new(RocksBackend::open(dir.path()).unwrap()),
        }
    }

    pub(crate) fn open_opts(&self, opts: StoreOptions) -> Result<Store> {
        Store::open_with(self.backend(), opts)
    }

    pub(crate) fn open(&self) -> Store {
        self.open_opts(StoreOptions::default()).unwrap()
    }
}

/// `mod <test> { fn memory(); fn rocksdb(); }` running `fn <test>(Env)` on each backend.
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
    empty_store,
    put_versions_and_revisions,
    txn_shares_main_revision_and_returns_events,
    key_revisions_agree_with_range,
    delete_and_recreate_in_one_txn_survives_compaction,
    range_options_and_end_conventions,
    txn_write_reads_own_writes_and_readers_are_isolated,
    dropped_txn_is_rolled_back,
    compacted_and_future_errors,
    compaction_removes_superseded_revisions_only,
    reopen_restores_everything,
    reopen_after_everything_compacted_keeps_revision,
    compaction_resumes_after_reopen,
    aux_buckets_commit_with_the_txn,
    hash_kv_is_stable_and_sensitive,
    refuses_newer_format,
    maintenance_sizes_defragment_flush,
    concurrent_readers_during_writes_and_compaction,
    fuzzing_run_ops_random_inputs,
    range_pages_and_a_compaction_between_them,
    reopen_finds_lease_attachments,
);

/// A range is read a page at a time: every page boundary gives the same
/// result as one pass, and a compaction that overtakes a historical read
/// between two pages fails it with `Compacted`.
fn range_pages_and_a_compaction_between_them(env: Env) {
    let s = env
        .open_opts(StoreOptions {
            range_chunk_size: 3,
            ..Default::default()
        })
        .unwrap();
    for i in 0..10 {
        put(&s, &[(&format!("k{i}"), "v1")]);
    }
    let old = s.current_revision();
    for i in 0..10 {
        put(&s, &[(&format!("k{i}"), "v2")]);
    }
    for limit in [0, 1, 2, 3, 4, 6, 9, 10, 11] {
        let r = s
            .range(
                b"k",
                b"l",
                RangeOptions {
                    limit,
                    rev: old,
                    ..Default::default()
                },
            )
            .unwrap();
        let want = if limit == 0 {
            10
        } else {
            limit.min(10) as usize
        };
        assert_eq!(r.kvs.len(), want, "limit {limit}");
        assert_eq!(r.count, 10);
        assert!(r.kvs.iter().all(|kv| &kv.value[..] == b"v1"));
        let names: Vec<String> = (0..want).map(|i| format!("k{i}")).collect();
        assert_eq!(keys(&r), names, "limit {limit}");
    }
    let t = s.read();
    let mut pages = 0;
    let r = t.range_chunks(b"k", b"l", ro(old), |chunk| {
        pages += 1;
        assert_eq!(chunk.len(), 3);
        drop(s.compact(old + 1, 100).unwrap());
        std::ops::ControlFlow::Continue(())
    });
    assert_eq!(r, Err(Error::Compacted));
    assert_eq!(pages, 1);
}

fn ro(rev: i64) -> RangeOptions {
    RangeOptions {
        rev,
        ..Default::default()
    }
}

/// One txn putting each (key, value); returns its revision.
fn put(s: &Store, kvs: &[(&str, &str)]) -> i64 {
    let mut t = s.write();
    for (k, v) in kvs {
        t.put(k.as_bytes(), v.as_bytes(), 0).unwrap();
    }
    let ci = s.consistent_index() + 1;
    t.end(ci).unwrap();
    s.current_revision()
}

fn del(s: &Store, key: &str, end: &[u8]) -> Vec<KeyValue> {
    let mut t = s.write();
    let d = t.delete_range(key.as_bytes(), end).unwrap();
    let ci = s.consistent_index() + 1;
    t.end(ci).unwrap();
    d
}

fn keys(r: &RangeResult) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.to_vec()).unwrap())
        .collect()
}

fn get(s: &Store, key: &str, rev: i64) -> Option<KeyValue> {
    let r = s.range(key.as_bytes(), b"", ro(rev)).unwrap();
    assert!(r.kvs.len() <= 1);
    r.kvs.into_iter().next()
}

/// Number of revisions stored in the `key` column family.
pub(crate) fn raw_revisions(s: &Store) -> Vec<(Revision, bool)> {
    let snap = s.inner.backend.snapshot();
    snap.scan(Cf::Key, &[], None)
        .map(|kv| Revision::from_key(&kv.unwrap().0).unwrap())
        .collect()
}

fn wait_finished(s: &Store, rev: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while s.finished_compact_revision() < rev {
        assert!(Instant::now() < deadline, "compaction did not finish");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn empty_store(env: Env) {
    let s = env.open();
    assert_eq!(s.current_revision(), 1);
    assert_eq!(
        s.compact_revision(),
        -1,
        "never compacted, like etcd's compactMainRev"
    );
    assert_eq!(s.consistent_index(), 0);
    let r = s.range(b"a", &[0], RangeOptions::default()).unwrap();
    assert_eq!(
        r,
        RangeResult {
            kvs: vec![],
            rev: 1,
            count: 0
        }
    );
    assert_eq!(s.read().rev(), 1);
}

fn put_versions_and_revisions(env: Env) {
    let s = env.open();
    assert_eq!(put(&s, &[("foo", "v1")]), 2);
    let kv = get(&s, "foo", 0).unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
    assert_eq!(&kv.value[..], b"v1");

    assert_eq!(put(&s, &[("foo", "v2")]), 3);
    let kv = get(&s, "foo", 0).unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    // history
    assert_eq!(&get(&s, "foo", 2).unwrap().value[..], b"v1");

    let d = del(&s, "foo", b"");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].mod_revision, 3);
    assert_eq!(s.current_revision(), 4);
    assert!(get(&s, "foo", 0).is_none());
    assert!(get(&s, "foo", 4).is_none());
    assert_eq!(get(&s, "foo", 3).unwrap().version, 2);

    // re-created: new generation
    assert_eq!(put(&s, &[("foo", "v3")]), 5);
    let kv = get(&s, "foo", 0).unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));

    // deleting nothing does not bump the revision
    assert!(del(&s, "nope", b"").is_empty());
    assert_eq!(s.current_revision(), 5);
    // an empty txn neither, but records the consistent index
    let ci = s.consistent_index();
    s.write().end(ci + 10).unwrap();
    assert_eq!(s.current_revision(), 5);
    assert_eq!(s.consistent_index(), ci + 10);
}

fn txn_shares_main_revision_and_returns_events(env: Env) {
    let s = env.open();
    put(&s, &[("a", "0"), ("b", "0")]);
    let mut t = s.write();
    assert_eq!(t.rev(), 2);
    t.put(b"c", b"1", 7).unwrap();
    assert_eq!(t.rev(), 3);
    t.put(b"a", b"1", 0).unwrap();
    let seen = |t: &crate::TxnWrite<'_>| {
        let kv = t.range(b"a", b"", RangeOptions::default()).unwrap().kvs;
        (kv[0].value.clone(), kv[0].version)
    };
    assert_eq!(seen(&t), (bytes::Bytes::from_static(b"1"), 2));
    t.put(b"a", b"2", 0).unwrap();
    assert_eq!(
        seen(&t),
        (bytes::Bytes::from_static(b"2"), 3),
        "the txn sees its own earlier put"
    );
    let deleted = t.delete_range(b"b", b"c").unwrap();
    assert_eq!(deleted.len(), 1);
    let events = t.end(42).unwrap();
    assert_eq!(events.len(), 4);
    assert_eq!(s.current_revision(), 3);
    assert_eq!(s.consistent_index(), 42);

    let e0 = &events[0];
    assert_eq!(e0.r#type(), EventType::Put);
    let kv = e0.kv.as_ref().unwrap();
    assert_eq!(
        (
            &kv.key[..],
            kv.create_revision,
            kv.mod_revision,
            kv.version,
            kv.lease
        ),
        (&b"c"[..], 3, 3, 1, 7)
    );
    assert!(e0.prev_kv.is_none());
    let kv = events[2].kv.as_ref().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 3));
    assert_eq!(events[2].prev_kv, None, "a put's event carries no prev_kv");
    let e3 = &events[3];
    assert_eq!(e3.r#type(), EventType::Delete);
    assert_eq!(
        e3.kv.as_ref().unwrap(),
        &KeyValue {
            key: bytes::Bytes::from_static(b"b"),
            mod_revision: 3,
            ..Default::default()
        }
    );
    assert_eq!(e3.prev_kv.as_ref().unwrap().mod_revision, 2);

    // sub revisions 0..4 of main revision 3 on disk, the delete as tombstone
    let raw = raw_revisions(&s);
    let at3: Vec<_> = raw.iter().filter(|(r, _)| r.main == 3).collect();
    assert_eq!(at3.len(), 4);
    for (i, (r, t)) in at3.iter().enumerate() {
        assert_eq!(r.sub, i as i64);
        assert_eq!(*t, i == 3);
    }
    let r = s.range(b"a", &[0], RangeOptions::default()).unwrap();
    assert_eq!(keys(&r), ["a", "c"]);
    assert_eq!(r.kvs[0].version, 3);
}

/// `key_revisions` (the index alone) says what `range` says of every key's
/// revisions and version: read transactions, a write transaction's own
/// pending puts and deletes, ranges and missing keys.
fn key_revisions_agree_with_range(env: Env) {
    let s = env.open();
    put(&s, &[("a", "0"), ("b", "0"), ("c", "0")]); // 2
    put(&s, &[("b", "1")]); // 3
    del(&s, "c", b""); // 4
    put(&s, &[("c", "2")]); // 5: c again, a new generation
    let from_range = |r: RangeResult| {
        r.kvs
            .iter()
            .map(|kv| KeyRevisions {
                create_revision: kv.create_revision,
                mod_revision: kv.mod_revision,
                version: kv.version,
            })
            .collect::<Vec<_>>()
    };
    let ranges: [(&[u8], &[u8]); 5] = [
        (b"a", b""),
        (b"b", b""),
        (b"x", b""),
        (b"a", b"c"),
        (b"\0", b"\0"),
    ];
    let r = s.read();
    for (k, e) in ranges {
        let want = from_range(r.range(k, e, RangeOptions::default()).unwrap());
        assert_eq!(r.key_revisions(k, e).unwrap(), want, "{k:?}..{e:?}");
    }
    assert_eq!(
        r.key_revisions(b"b", b"").unwrap(),
        [KeyRevisions {
            create_revision: 2,
            mod_revision: 3,
            version: 2
        }]
    );
    drop(r);
    let mut t = s.write();
    t.put(b"a", b"1", 0).unwrap();
    t.delete_range(b"b", b"").unwrap();
    t.put(b"d", b"0", 0).unwrap();
    for (k, e) in ranges {
        let want = from_range(t.range(k, e, RangeOptions::default()).unwrap());
        assert_eq!(t.key_revisions(k, e).unwrap(), want, "pending {k:?}..{e:?}");
    }
    assert_eq!(t.key_revisions(b"b", b"").unwrap(), []);
    assert_eq!(
        t.key_revisions(b"a", b"").unwrap(),
        [KeyRevisions {
            create_revision: 2,
            mod_revision: 6,
            version: 2
        }]
    );
}

fn delete_and_recreate_in_one_txn_survives_compaction(env: Env) {
    let s = env.open();
    put(&s, &[("d", "0")]); // 2
    let mut t = s.write();
    t.put(b"d", b"1", 0).unwrap();
    assert_eq!(t.delete_range(b"d", b"").unwrap().len(), 1);
    assert!(t
        .range(b"d", b"", RangeOptions::default())
        .unwrap()
        .kvs
        .is_empty());
    t.put(b"d", b"2", 0).unwrap();
    let ev = t.end(1).unwrap();
    assert_eq!(ev.len(), 3);
    let kv = get(&s, "d", 3).unwrap();
    assert_eq!(
        (&kv.value[..], kv.create_revision, kv.version),
        (&b"2"[..], 3, 1)
    );
    s.compact(3, 2).unwrap().wait();
    let kv = get(&s, "d", 3).unwrap();
    assert_eq!(&kv.value[..], b"2");
    assert_eq!(raw_revisions(&s), vec![(Revision::new(3, 2), false)]);
}

fn range_options_and_end_conventions(env: Env) {
    let s = env.open();
    put(
        &s,
        &[("a", "1"), ("ab", "1"), ("b", "1"), ("c", "1"), ("d", "1")],
    ); // rev 2
    put(&s, &[("b", "2")]); // rev 3
    del(&s, "c", b""); // rev 4

    let r = s.range(b"a", b"", RangeOptions::default()).unwrap();
    assert_eq!((keys(&r), r.count, r.rev), (vec!["a".to_string()], 1, 4));
    let r = s.range(b"b", &[0], RangeOptions::default()).unwrap();
    assert_eq!(keys(&r), ["b", "d"]);
    let r = s.range(&[0], &[0], RangeOptions::default()).unwrap();
    assert_eq!(keys(&r), ["a", "ab", "b", "d"]);
    let r = s.range(b"a", b"b", RangeOptions::default()).unwrap();
    assert_eq!(keys(&r), ["a", "ab"]);
    let r = s.range(b"b", b"a", RangeOptions::default()).unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 0));

    // limit keeps count
    let r = s
        .range(
            b"a",
            &[0],
            RangeOptions {
                limit: 2,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        (keys(&r), r.count),
        (vec!["a".to_string(), "ab".to_string()], 4)
    );
    let r = s
        .range(
            b"a",
            &[0],
            RangeOptions {
                limit: -1,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.kvs.len(), 4);
    // count_only
    let r = s
        .range(
            b"a",
            &[0],
            RangeOptions {
                count_only: true,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        r,
        RangeResult {
            kvs: vec![],
            rev: 4,
            count: 4
        }
    );
    // at an older revision: c still there, b at version 1; rev is the current one
    let r = s.range(b"a", &[0], ro(2)).unwrap();
    assert_eq!(keys(&r), ["a", "ab", "b", "c", "d"]);
    assert_eq!(r.rev, 4);
    assert_eq!(r.kvs[2].version, 1);
    let r = s
        .range(
            b"a",
            &[0],
            RangeOptions {
                rev: 3,
                count_only: true,
                limit: 1,
            },
        )
        .unwrap();
    assert_eq!(r.count, 5);
    let r = s.range(b"a", &[0], ro(1)).unwrap();
    assert_eq!(r.count, 0);
    // future
    assert_eq!(s.range(b"a", b"", ro(5)), Err(Error::FutureRevision));
    assert_eq!(
        Error::FutureRevision.to_string(),
        "mvcc: required revision is a future revision"
    );
}

fn txn_write_reads_own_writes_and_readers_are_isolated(env: Env) {
    let s = Arc::new(env.open());
    put(&s, &[("a", "1")]); // rev 2
    let pinned = s.read();
    let mut t = s.write();
    t.put(b"b", b"1", 0).unwrap();
    t.delete_range(b"a", b"").unwrap();
    let r = t.range(b"a", &[0], RangeOptions::default()).unwrap();
    assert_eq!((keys(&r), r.rev), (vec!["b".to_string()], 3));
    // older revision from inside the txn
    let r = t.range(b"a", &[0], ro(2)).unwrap();
    assert_eq!(keys(&r), ["a"]);
    assert_eq!(t.range(b"a", b"", ro(4)), Err(Error::FutureRevision));
    // other readers (other threads) do not see the pending txn
    let s2 = s.clone();
    let seen =
        std::thread::spawn(move || keys(&s2.range(b"a", &[0], RangeOptions::default()).unwrap()))
            .join()
            .unwrap();
    assert_eq!(seen, ["a"]);
    t.end(5).unwrap();
    // a read txn created before stays pinned
    assert_eq!(pinned.rev(), 2);
    assert_eq!(
        keys(&pinned.range(b"a", &[0], RangeOptions::default()).unwrap()),
        ["a"]
    );
    assert_eq!(
        keys(&s.range(b"a", &[0], RangeOptions::default()).unwrap()),
        ["b"]
    );
}

fn dropped_txn_is_rolled_back(env: Env) {
    let s = env.open();
    put(&s, &[("a", "1"), ("b", "1")]);
    del(&s, "b", b""); // rev 3
    {
        let mut t = s.write();
        t.put(b"a", b"x", 0).unwrap();
        t.put(b"b", b"x", 0).unwrap();
        t.put(b"new", b"x", 0).unwrap();
        t.delete_range(b"a", &[0]).unwrap();
        t.put(b"a", b"y", 0).unwrap();
        // dropped without end
    }
    assert_eq!(s.current_revision(), 3);
    assert_eq!(s.index_len(), 2);
    let r = s.range(b"a", &[0], RangeOptions::default()).unwrap();
    assert_eq!(keys(&r), ["a"]);
    assert_eq!(r.kvs[0].version, 1);
    // the next txn reuses revision 4 cleanly
    assert_eq!(put(&s, &[("b", "2")]), 4);
    let kv = get(&s, "b", 0).unwrap();
    assert_eq!((kv.create_revision, kv.version), (4, 1));
    assert_eq!(get(&s, "a", 0).unwrap().version, 1);
}

fn compacted_and_future_errors(env: Env) {
    let s = env.open();
    for i in 0..5 {
        put(&s, &[("k", &i.to_string())]); // revs 2..=6
    }
    assert_eq!(s.compact(7, 1).unwrap_err(), Error::FutureRevision);
    s.compact(4, 10).unwrap().wait();
    assert_eq!(s.compact_revision(), 4);
    assert_eq!(s.consistent_index(), 10);
    assert_eq!(s.compact(4, 11).unwrap_err(), Error::Compacted);
    assert_eq!(s.compact(3, 11).unwrap_err(), Error::Compacted);
    assert_eq!(s.range(b"k", b"", ro(3)), Err(Error::Compacted));
    assert_eq!(
        Error::Compacted.to_string(),
        "mvcc: required revision has been compacted"
    );
    // rev == compact revision is allowed
    assert_eq!(&get(&s, "k", 4).unwrap().value[..], b"2");
    assert_eq!(&get(&s, "k", 0).unwrap().value[..], b"4");
    // inside a write txn too
    let t = s.write();
    assert_eq!(t.range(b"k", b"", ro(2)), Err(Error::Compacted));
    drop(t);
    // compaction at the current revision
    s.compact(6, 12).unwrap().wait();
    assert_eq!(get(&s, "k", 6).unwrap().version, 5);
}

fn compaction_removes_superseded_revisions_only(env: Env) {
    let s = env
        .open_opts(StoreOptions {
            compaction_batch_limit: 2,
            compaction_sleep_interval: Duration::ZERO,
            ..Default::default()
        })
        .unwrap();
    put(&s, &[("a", "1"), ("b", "1"), ("c", "1")]); // 2
    put(&s, &[("a", "2")]); // 3
    del(&s, "b", b""); // 4
    put(&s, &[("a", "3")]); // 5
    del(&s, "c", b""); // 6
    put(&s, &[("c", "2")]); // 7
    assert_eq!(raw_revisions(&s).len(), 8);
    let before: Vec<_> = (5..=7)
        .map(|r| s.range(b"a", &[0], ro(r)).unwrap())
        .collect();
    s.compact(5, 1).unwrap().wait();
    // kept: a@5 (latest <= 5), c@2 (latest <= 5 in a generation deleted at 6),
    // tombstone c@6 and c@7 (newer); b's history (2, 4t) and a@2, a@3 are gone
    let raw: Vec<(i64, i64, bool)> = raw_revisions(&s)
        .iter()
        .map(|(r, t)| (r.main, r.sub, *t))
        .collect();
    assert_eq!(
        raw,
        vec![(2, 2, false), (5, 0, false), (6, 0, true), (7, 0, false)]
    );
    let after: Vec<_> = (5..=7)
        .map(|r| s.range(b"a", &[0], ro(r)).unwrap())
        .collect();
    assert_eq!(before, after);
    assert_eq!(s.index_len(), 2, "b dropped from the index");
    assert_eq!(s.finished_compact_revision(), 5);

    // compacting at the tombstone of c removes c's first generation
    s.compact(6, 2).unwrap().wait();
    let raw: Vec<i64> = raw_revisions(&s).iter().map(|(r, _)| r.main).collect();
    assert_eq!(raw, vec![5, 7]);
    assert_eq!(keys(&s.range(b"a", &[0], ro(6)).unwrap()), ["a"]);
}

fn reopen_restores_everything(env: Env) {
    let (hash, all) = {
        let s = env.open();
        put(&s, &[("a", "1"), ("b", "1")]);
        put(&s, &[("a", "2")]);
        del(&s, "b", b"");
        put(&s, &[("b", "3"), ("c", "3")]);
        let mut t = s.write();
        t.put_aux(Bucket::Lease, b"l1", b"lease-1");
        t.put_aux(Bucket::Members, b"m1", b"member-1");
        t.end(99).unwrap();
        s.compact(3, 100).unwrap().wait();
        let all: Vec<_> = (3..=5)
            .map(|r| s.range(b"", &[0], ro(r)).unwrap())
            .collect();
        (s.hash_kv(0).unwrap(), all)
    };
    let s = env.open();
    assert_eq!(s.current_revision(), 5);
    assert_eq!(s.compact_revision(), 3);
    assert_eq!(s.consistent_index(), 100);
    let again: Vec<_> = (3..=5)
        .map(|r| s.range(b"", &[0], ro(r)).unwrap())
        .collect();
    assert_eq!(all, again);
    assert_eq!(s.hash_kv(0).unwrap(), hash);
    assert_eq!(
        s.aux_get(Bucket::Lease, b"l1").unwrap().as_deref(),
        Some(&b"lease-1"[..])
    );
    assert_eq!(
        s.aux_scan(Bucket::Members).unwrap(),
        vec![(b"m1".to_vec(), b"member-1".to_vec())]
    );
    assert_eq!(s.range(b"a", b"", ro(2)), Err(Error::Compacted));
    // writes continue from the restored revision
    assert_eq!(put(&s, &[("a", "4")]), 6);
    let kv = get(&s, "a", 0).unwrap();
    assert_eq!((kv.create_revision, kv.version), (2, 3));
}

fn reopen_after_everything_compacted_keeps_revision(env: Env) {
    {
        let s = env.open();
        put(&s, &[("a", "1")]);
        del(&s, "a", b""); // rev 3
        s.compact(3, 1).unwrap().wait();
        assert!(raw_revisions(&s).is_empty());
    }
    let s = env.open();
    assert_eq!(s.current_revision(), 3);
    assert_eq!(put(&s, &[("a", "2")]), 4);
}

fn compaction_resumes_after_reopen(env: Env) {
    {
        // one revision per batch and a long pause: closing interrupts it
        let s = env
            .open_opts(StoreOptions {
                compaction_batch_limit: 1,
                compaction_sleep_interval: Duration::from_secs(3600),
                ..Default::default()
            })
            .unwrap();
        for i in 0..10 {
            put(&s, &[("k", &i.to_string())]); // 2..=11
        }
        let _w = s.compact(10, 7).unwrap();
        assert_eq!(s.finished_compact_revision(), -1);
    }
    let s = env
        .open_opts(StoreOptions {
            compaction_batch_limit: 1,
            compaction_sleep_interval: Duration::ZERO,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(s.compact_revision(), 10);
    assert_eq!(s.consistent_index(), 7);
    assert_eq!(s.range(b"k", b"", ro(9)), Err(Error::Compacted));
    wait_finished(&s, 10);
    let raw: Vec<i64> = raw_revisions(&s).iter().map(|(r, _)| r.main).collect();
    assert_eq!(raw, vec![10, 11]);
    assert_eq!(&get(&s, "k", 10).unwrap().value[..], b"8");
    drop(s);
    let s = env.open();
    assert_eq!(s.finished_compact_revision(), 10);
}

fn aux_buckets_commit_with_the_txn(env: Env) {
    let s = env.open();
    let mut t = s.write();
    t.put_aux(Bucket::Auth, b"user/root", b"x");
    t.put_aux(Bucket::Alarm, b"1", b"nospace");
    t.put(b"k", b"v", 0).unwrap();
    assert_eq!(
        s.aux_get(Bucket::Auth, b"user/root").unwrap(),
        None,
        "not before end"
    );
    t.end(1).unwrap();
    assert_eq!(
        s.aux_get(Bucket::Auth, b"user/root").unwrap(),
        Some(b"x".to_vec())
    );
    assert_eq!(
        s.aux_get(Bucket::Lease, b"user/root").unwrap(),
        None,
        "buckets are separate"
    );
    let mut t = s.write();
    t.delete_aux(Bucket::Alarm, b"1");
    t.put_aux(Bucket::Alarm, b"2", b"corrupt");
    t.end(2).unwrap();
    assert_eq!(
        s.current_revision(),
        2,
        "aux changes do not bump the revision"
    );
    assert_eq!(
        s.aux_scan(Bucket::Alarm).unwrap(),
        vec![(b"2".to_vec(), b"corrupt".to_vec())]
    );
    // a dropped txn writes nothing
    let mut t = s.write();
    t.put_aux(Bucket::Alarm, b"3", b"x");
    drop(t);
    assert_eq!(s.aux_get(Bucket::Alarm, b"3").unwrap(), None);
}

fn hash_kv_is_stable_and_sensitive(env: Env) {
    let env2 = env.fresh();
    let s1 = env.open();
    let s2 = env2
        .open_opts(StoreOptions {
            compaction_batch_limit: 1,
            compaction_sleep_interval: Duration::from_secs(3600),
            ..Default::default()
        })
        .unwrap();
    for s in [&s1, &s2] {
        put(s, &[("a", "1"), ("b", "1")]);
        put(s, &[("a", "2")]);
        del(s, "b", b"");
        put(s, &[("c", "1")]);
    }
    assert_eq!(s1.hash_kv(0).unwrap(), s2.hash_kv(0).unwrap());
    assert_eq!(s1.hash_kv(3).unwrap(), s2.hash_kv(3).unwrap());
    assert_ne!(s1.hash_kv(3).unwrap().hash, s1.hash_kv(4).unwrap().hash);
    assert_eq!(s1.hash_kv(0).unwrap().revision, 5);
    // s1 compacts fully, s2 is stuck after its first batch: same hash
    s1.compact(4, 9).unwrap().wait();
    let _w = s2.compact(4, 9).unwrap();
    let h = s1.hash_kv(0).unwrap();
    assert_eq!(h.compact_revision, 4);
    assert_eq!(h, s2.hash_kv(0).unwrap());
    assert_eq!(s1.hash_kv(3), Err(Error::Compacted));
    assert_eq!(s1.hash_kv(6), Err(Error::FutureRevision));
    // different history -> different hash
    put(&s1, &[("d", "1")]);
    put(&s2, &[("d", "2")]);
    assert_ne!(s1.hash_kv(0).unwrap().hash, s2.hash_kv(0).unwrap().hash);
}

fn refuses_newer_format(env: Env) {
    drop(env.open());
    {
        let b = env.backend();
        let mut batch = WriteBatch::default();
        batch.put(
            Cf::Meta,
            META_FORMAT_VERSION,
            (FORMAT_VERSION + 1).to_be_bytes(),
        );
        b.write(batch).unwrap();
        b.flush().unwrap();
    }
    let err = env.open_opts(StoreOptions::default()).unwrap_err();
    assert!(matches!(err, Error::UnsupportedFormat { found, .. } if found == FORMAT_VERSION + 1));
    assert!(err.to_string().contains("newer version"), "{err}");
}

fn maintenance_sizes_defragment_flush(env: Env) {
    let s = env.open();
    let v = vec![7u8; 1000];
    for i in 0..200 {
        let mut t = s.write();
        t.put(format!("key{i:04}").as_bytes(), &v, 0).unwrap();
        t.end(i + 1).unwrap();
    }
    s.flush().unwrap();
    assert!(s.db_size() > 200 * 1000, "db size {}", s.db_size());
    assert!(s.db_size_in_use() > 0);
    s.compact(s.current_revision(), 300).unwrap().wait();
    s.defragment().unwrap();
    assert_eq!(
        s.range(b"key", &[0], RangeOptions::default())
            .unwrap()
            .count,
        200
    );
}

fn concurrent_readers_during_writes_and_compaction(env: Env) {
    let s = Arc::new(
        env.open_opts(StoreOptions {
            compaction_batch_limit: 7,
            compaction_sleep_interval: Duration::ZERO,
            ..Default::default()
        })
        .unwrap(),
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (s, stop) = (s.clone(), stop.clone());
        readers.push(std::thread::spawn(move || {
            let mut n = 0;
            // At least one successful read, however the threads are scheduled.
            while n == 0 || !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = s.read();
                let rev = r.rev();
                match r.range(b"k", &[0], RangeOptions::default()) {
                    Ok(res) => {
                        // every key was written in every txn: all at the same revision
                        for kv in &res.kvs {
                            assert_eq!(kv.mod_revision, rev);
                        }
                        n += 1;
                    }
                    // a pinned reader overtaken by a compaction
                    Err(Error::Compacted) if rev < s.compact_revision() => {}
                    Err(e) => panic!("read at revision {rev} failed: {e}"),
                }
            }
            n
        }));
    }
    for i in 0..300u64 {
        let mut t = s.write();
        for k in 0..10 {
            t.put(format!("k{k}").as_bytes(), &i.to_be_bytes(), 0)
                .unwrap();
        }
        t.end(i + 1).unwrap();
        if i % 50 == 49 {
            let _ = s.compact(s.current_revision() - 5, i + 1).unwrap();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }
}

/// xorshift64*: deterministic pseudo-random bytes for the model checker.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn fuzzing_run_ops_random_inputs(env: Env) {
    let kind = match env {
        Env::Memory(_) => fuzzing::Kind::Memory,
        #[cfg(feature = "rocksdb")]
        Env::RocksDb(_) => fuzzing::Kind::RocksDb,
    };
    let run = |data: &[u8]| fuzzing::run_on(kind, &fuzzing::decode_ops(data));
    run(&[]);
    run(&[13, 14, 11, 0x85, 14]);
    // put, flush, put, crash (loses the second put), check
    run(&[0, 0, 1, 1, 0x2d, 0, 0, 2, 2, 0x1d, 14]);
    assert!(matches!(
        fuzzing::decode_ops(&[0, 0, 1, 1, 0x2d, 0, 0, 2, 2, 0x1d, 14])[..],
        [
            fuzzing::Op::Txn(_),
            fuzzing::Op::Flush,
            fuzzing::Op::Txn(_),
            fuzzing::Op::Crash,
            fuzzing::Op::Check
        ]
    ));
    for seed in 0..150 {
        let len = 1 + (seed as usize * 7) % 160;
        run(&random_bytes(seed, len));
    }
}

// ---- crash tests (in-memory backend: everything not flushed is lost) ----

fn mem_opts(batch: usize) -> StoreOptions {
    StoreOptions {
        compaction_batch_limit: batch,
        compaction_sleep_interval: Duration::ZERO,
        ..Default::default()
    }
}

fn open_on(disk: &MemDisk, opts: StoreOptions) -> Store {
    Store::open_with(Box::new(disk.backend()), opts).unwrap()
}

fn all_at(s: &Store, revs: std::ops::RangeInclusive<i64>) -> Vec<RangeResult> {
    revs.map(|r| s.range(b"", &[0], ro(r)).unwrap()).collect()
}

#[test]
fn crash_between_applies_reopens_at_the_flushed_prefix() {
    let disk = MemDisk::new();
    let s = open_on(&disk, mem_opts(1000));
    put(&s, &[("a", "1"), ("b", "1")]); // 2, ci 1
    put(&s, &[("a", "2")]); // 3, ci 2
    let mut t = s.write();
    t.put_aux(Bucket::Lease, b"l", b"1");
    t.end(3).unwrap(); // ci 3, no revision
    s.flush().unwrap();
    let flushed = (all_at(&s, 2..=3), s.hash_kv(0).unwrap());
    // applied but not durable: lost by the crash
    del(&s, "b", b""); // 4, ci 4
    let lost_events = {
        let mut t = s.write();
        t.put(b"c", b"1", 0).unwrap();
        t.put_aux(Bucket::Lease, b"l", b"2");
        t.end(5).unwrap() // 5, ci 5
    };
    disk.crash();
    // the dead process cannot write any more
    let mut t = s.write();
    t.put(b"x", b"1", 0).unwrap();
    assert!(matches!(t.end(6), Err(Error::Storage(_))));
    assert!(s.flush().is_err());
    drop(s);

    let s = open_on(&disk, mem_opts(1000));
    assert_eq!(
        (s.current_revision(), s.consistent_index()),
        (3, 3),
        "state of the flush"
    );
    assert_eq!((all_at(&s, 2..=3), s.hash_kv(0).unwrap()), flushed);
    assert_eq!(s.aux_get(Bucket::Lease, b"l").unwrap(), Some(b"1".to_vec()));
    // the raft layer re-applies entries 4 and 5: same revisions, same events
    del(&s, "b", b"");
    let mut t = s.write();
    t.put(b"c", b"1", 0).unwrap();
    t.put_aux(Bucket::Lease, b"l", b"2");
    assert_eq!(t.end(5).unwrap(), lost_events);
    assert_eq!((s.current_revision(), s.consistent_index()), (5, 5));
    assert_eq!(s.aux_get(Bucket::Lease, b"l").unwrap(), Some(b"2".to_vec()));
}

#[test]
fn failed_batch_changes_nothing() {
    let disk = MemDisk::new();
    let s = open_on(&disk, mem_opts(1000));
    put(&s, &[("a", "1")]); // 2
    disk.crash_after_writes(0);
    let mut t = s.write();
    t.put(b"a", b"2", 0).unwrap();
    t.put(b"b", b"2", 0).unwrap();
    assert!(matches!(t.end(2), Err(Error::Storage(_))));
    // in memory: the index changes were undone
    assert_eq!((s.current_revision(), s.consistent_index()), (2, 1));
    assert_eq!(keys(&s.range(b"", &[0], ro(0)).unwrap()), ["a"]);
    assert!(matches!(s.compact(2, 2), Err(Error::Storage(_))));
    assert_eq!(
        s.compact_revision(),
        -1,
        "a failed compact schedules nothing"
    );
    drop(s);
    let s = open_on(&disk, mem_opts(1000));
    assert_eq!(s.current_revision(), 1, "nothing was flushed");
}

/// History used by the compaction crash test: 5 keys, 4 versions each,
/// some deleted; returns the revision to compact at.
fn compaction_history(s: &Store) -> i64 {
    for round in 0..4 {
        let mut t = s.write();
        for k in 0..5 {
            t.put(format!("k{k}").as_bytes(), format!("{round}").as_bytes(), 0)
                .unwrap();
        }
        t.end(s.consistent_index() + 1).unwrap();
        if round == 1 {
            del(s, "k3", b"");
        }
    }
    del(s, "k4", b"");
    put(s, &[("k9", "x")]);
    s.current_revision() - 2
}

#[test]
fn crash_at_every_write_of_a_compaction_resumes_it() {
    // reference: the same history compacted without a crash
    let (want_raw, want_ranges, want_hash, compact_at) = {
        let s = open_on(&MemDisk::new(), mem_opts(1));
        let c = compaction_history(&s);
        s.compact(c, 100).unwrap().wait();
        (
            raw_revisions(&s),
            all_at(&s, c..=s.current_revision()),
            s.hash_kv(0).unwrap(),
            c,
        )
    };
    let mut crashes = 0;
    for k in 1.. {
        let disk = MemDisk::new();
        // every write durable at once: any prefix of the compaction's
        // batches can be what survives
        disk.set_auto_flush(true);
        let s = open_on(&disk, mem_opts(1));
        assert_eq!(compaction_history(&s), compact_at);
        // the schedule record is write 1; then the deletes, then "finished"
        disk.crash_after_writes(k);
        s.compact(compact_at, 100).unwrap().wait();
        let finished = s.finished_compact_revision() == compact_at;
        drop(s);

        let s = open_on(&disk, mem_opts(1));
        assert_eq!(s.compact_revision(), compact_at, "crash after {k} writes");
        assert_eq!(s.consistent_index(), 100);
        assert_eq!(
            s.range(b"", &[0], ro(compact_at - 1)),
            Err(Error::Compacted)
        );
        // reads at revisions >= the compaction agree before it finishes...
        assert_eq!(all_at(&s, compact_at..=s.current_revision()), want_ranges);
        assert_eq!(s.hash_kv(0).unwrap(), want_hash);
        // ...and the compaction resumes from the scheduled revision
        wait_finished(&s, compact_at);
        assert_eq!(raw_revisions(&s), want_raw, "crash after {k} writes");
        assert_eq!(all_at(&s, compact_at..=s.current_revision()), want_ranges);
        assert_eq!(s.hash_kv(0).unwrap(), want_hash);
        if finished {
            break;
        }
        crashes += 1;
    }
    assert!(crashes > 5, "crashed inside the compaction {crashes} times");
}

#[test]
fn crash_before_the_compaction_schedule_is_flushed_forgets_it() {
    let disk = MemDisk::new();
    let s = open_on(&disk, mem_opts(1));
    let c = compaction_history(&s);
    let ci = s.consistent_index();
    s.flush().unwrap();
    let before = all_at(&s, 2..=s.current_revision());
    s.compact(c, ci + 1).unwrap().wait();
    disk.crash();
    drop(s);
    let s = open_on(&disk, mem_opts(1));
    assert_eq!((s.compact_revision(), s.consistent_index()), (-1, ci));
    assert_eq!(all_at(&s, 2..=s.current_revision()), before);
    // the raft layer re-applies the compaction
    s.compact(c, ci + 1).unwrap().wait();
    assert_eq!(s.finished_compact_revision(), c);
}

// ---- chunked ranges ----

#[test]
fn range_chunks_are_bounded_and_stop_early() {
    let s = Store::open_in_memory(StoreOptions {
        range_chunk_size: 3,
        ..Default::default()
    })
    .unwrap();
    let names: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let kvs: Vec<(&str, &str)> = names.iter().map(|k| (k.as_str(), "v")).collect();
    put(&s, &kvs); // 2
    del(&s, "k4", b""); // 3
    let r = s.read();
    let mut chunks = Vec::new();
    let h = r
        .range_chunks(b"k", b"l", ro(0), |c| {
            chunks.push(c.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>());
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(h, RangeHeader { rev: 3, count: 9 });
    assert_eq!(
        chunks.iter().map(Vec::len).collect::<Vec<_>>(),
        [3, 3, 3],
        "chunks of at most 3"
    );
    assert_eq!(
        chunks.concat(),
        r.range(b"k", b"l", ro(0))
            .unwrap()
            .kvs
            .iter()
            .map(|kv| kv.key.clone())
            .collect::<Vec<_>>()
    );
    // stopping after the first chunk: count still covers the whole range
    let mut calls = 0;
    let h = r
        .range_chunks(b"k", b"l", ro(2), |_| {
            calls += 1;
            std::ops::ControlFlow::Break(())
        })
        .unwrap();
    assert_eq!((calls, h.count), (1, 10));
    // limit 4: chunks 3 + 1
    let mut sizes = Vec::new();
    r.range_chunks(
        b"k",
        b"l",
        RangeOptions {
            limit: 4,
            ..Default::default()
        },
        |c| {
            sizes.push(c.len());
            std::ops::ControlFlow::Continue(())
        },
    )
    .unwrap();
    assert_eq!(sizes, [3, 1]);
    // count_only and empty ranges call f never; errors come first
    let never = |_: Vec<KeyValue>| -> std::ops::ControlFlow<()> { panic!("no chunk expected") };
    let h = r
        .range_chunks(
            b"k",
            b"l",
            RangeOptions {
                count_only: true,
                ..Default::default()
            },
            never,
        )
        .unwrap();
    assert_eq!(h.count, 9);
    assert_eq!(r.range_chunks(b"x", b"y", ro(0), never).unwrap().count, 0);
    assert_eq!(
        r.range_chunks(b"k", b"l", ro(4), never),
        Err(Error::FutureRevision)
    );
    drop(r);
    // a write txn's chunks mix its own pending changes with stored values
    let mut t = s.write();
    t.put(b"k5", b"new", 0).unwrap();
    t.put(b"k40", b"new", 0).unwrap();
    let mut got = Vec::new();
    t.range_chunks(b"k", b"l", ro(0), |c| {
        got.extend(c.into_iter().map(|kv| (kv.key, kv.mod_revision)));
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    let want: Vec<(bytes::Bytes, i64)> = [
        ("k0", 2),
        ("k1", 2),
        ("k2", 2),
        ("k3", 2),
        ("k40", 4),
        ("k5", 4),
        ("k6", 2),
        ("k7", 2),
        ("k8", 2),
        ("k9", 2),
    ]
    .iter()
    .map(|(k, r)| (bytes::Bytes::from_static(k.as_bytes()), *r))
    .collect();
    assert_eq!(got, want);
}

/// The size quota checks read grows with every commit and is the exact
/// size again once `REFRESH_EVERY` commits have passed since the last
/// exact read, and
/// right after a defragmentation.
#[test]
fn size_estimate_follows_commits() {
    let s = Store::open_in_memory(StoreOptions::default()).unwrap();
    let start = s.db_size_estimate();
    assert_eq!(start, s.db_size());
    let value = "v".repeat(100);
    for i in 0..10 {
        put(&s, &[(&format!("k{i}"), &value)]);
    }
    let est = s.db_size_estimate();
    assert!(est >= start + 10 * 100, "{start} -> {est}");
    let every = super::inner::SizeEstimate::REFRESH_EVERY;
    for i in 10..every + 10 {
        put(&s, &[(&format!("k{i}"), &value)]);
    }
    assert_eq!(
        s.db_size_estimate(),
        s.db_size(),
        "read again after REFRESH_EVERY commits"
    );
    put(&s, &[("one-more", &value)]);
    s.defragment().unwrap();
    assert_eq!(
        s.db_size_estimate(),
        s.db_size(),
        "read again after a defrag"
    );
}

/// The index rebuild at open hands over the live keys attached to leases
/// (the latest record of each key decides), once, and not after a write.
fn reopen_finds_lease_attachments(env: Env) {
    {
        let s = env.open();
        let mut t = s.write();
        t.put(b"a", b"1", 7).unwrap(); // stays attached
        t.put(b"b", b"1", 7).unwrap(); // re-put without a lease below
        t.put(b"c", b"1", 8).unwrap(); // deleted below
        t.put(b"d", b"1", 0).unwrap(); // attached below
        t.end(1).unwrap();
        let mut t = s.write();
        t.put(b"b", b"2", 0).unwrap();
        t.put(b"d", b"2", 9).unwrap();
        t.end(2).unwrap();
        del(&s, "c", b"");
        s.flush().unwrap();
    }
    let s = env.open();
    let mut got = s.take_lease_attachments().expect("found at open");
    got.sort();
    assert_eq!(
        got,
        [
            (bytes::Bytes::from_static(b"a"), 7),
            (bytes::Bytes::from_static(b"d"), 9)
        ]
    );
    assert_eq!(s.take_lease_attachments(), None, "handed over once");
    drop(s);
    let s = env.open();
    put(&s, &[("e", "1")]);
    assert_eq!(s.take_lease_attachments(), None, "stale after a write");
}
