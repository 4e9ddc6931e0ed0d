//! Range over the store's chunks (`apply::range`) against the
//! implementation it replaced (collect every key-value, then filter, sort and
//! limit), with every option combination that matters, over 100k keys with
//! the default chunk size and over a small store with many small chunks; the
//! limits include the chunk size, one below and one above.

use std::cmp::Ordering;

use etcd_mvcc::{RangeOptions, Store, StoreOptions};

use crate::apply::{range, View};
use crate::pb::etcdserverpb::range_request::{SortOrder, SortTarget};
use crate::pb::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use crate::pb::mvccpb::KeyValue;

/// The range of `apply.rs` before chunking, verbatim but for the store call.
fn range_before(store: &Store, r: &RangeRequest) -> RangeResponse {
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    let mut limit = r.limit;
    if r.sort_order != SortOrder::None as i32 || filtered {
        limit = 0;
    }
    if limit > 0 {
        limit += 1;
    }
    let opts = RangeOptions {
        limit,
        rev: r.revision,
        count_only: r.count_only,
    };
    let txn = store.read();
    let rr = txn.range(&r.key, &r.range_end, opts).unwrap();
    let mut kvs = rr.kvs;
    if r.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= r.max_mod_revision);
    }
    if r.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= r.min_mod_revision);
    }
    if r.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= r.max_create_revision);
    }
    if r.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= r.min_create_revision);
    }
    let mut order = r.sort_order;
    if r.sort_target != SortTarget::Key as i32 && order == SortOrder::None as i32 {
        order = SortOrder::Ascend as i32;
    }
    if order != SortOrder::None as i32 {
        let by: fn(&KeyValue, &KeyValue) -> Ordering = match r.sort_target {
            t if t == SortTarget::Version as i32 => |a, b| a.version.cmp(&b.version),
            t if t == SortTarget::Create as i32 => |a, b| a.create_revision.cmp(&b.create_revision),
            t if t == SortTarget::Mod as i32 => |a, b| a.mod_revision.cmp(&b.mod_revision),
            t if t == SortTarget::Value as i32 => |a, b| a.value.cmp(&b.value),
            _ => |a, b| a.key.cmp(&b.key),
        };
        if order == SortOrder::Descend as i32 {
            kvs.sort_by(|a, b| by(b, a));
        } else {
            kvs.sort_by(by);
        }
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() as i64 > r.limit {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value = Default::default();
        }
    }
    RangeResponse {
        header: Some(ResponseHeader {
            revision: txn.rev(),
            ..Default::default()
        }),
        kvs,
        more,
        count: rr.count,
    }
}

/// `n` keys `k000000..`, written 1000 per revision; then every 7th key is
/// updated twice, every 13th deleted and every 26th re-created, so versions,
/// create and mod revisions differ. Values repeat (sort by value ties).
fn fill(store: &Store, n: usize) {
    let key = |i: usize| format!("k{i:06}");
    let mut ci = 0;
    let mut commit = |t: etcd_mvcc::TxnWrite<'_>| {
        ci += 1;
        t.end(ci).unwrap();
    };
    for start in (0..n).step_by(1000) {
        let mut t = store.write();
        for i in start..(start + 1000).min(n) {
            t.put(key(i).as_bytes(), format!("v{}", i % 97).as_bytes(), 0)
                .unwrap();
        }
        commit(t);
    }
    for round in 0..2 {
        for start in (0..n).step_by(7 * 1000) {
            let mut t = store.write();
            for i in (start..(start + 7 * 1000).min(n)).step_by(7) {
                t.put(
                    key(i).as_bytes(),
                    format!("u{round}{}", i % 5).as_bytes(),
                    0,
                )
                .unwrap();
            }
            commit(t);
        }
    }
    for step in [13, 26] {
        for start in (0..n).step_by(step * 1000) {
            let mut t = store.write();
            for i in (start..(start + step * 1000).min(n)).step_by(step) {
                if step == 13 {
                    t.delete_range(key(i).as_bytes(), b"").unwrap();
                } else {
                    t.put(key(i).as_bytes(), b"again", 0).unwrap();
                }
            }
            commit(t);
        }
    }
}

const SORTS: [(SortOrder, SortTarget); 8] = [
    (SortOrder::None, SortTarget::Key),
    (SortOrder::Ascend, SortTarget::Key),
    (SortOrder::Descend, SortTarget::Key),
    (SortOrder::None, SortTarget::Mod),
    (SortOrder::Descend, SortTarget::Version),
    (SortOrder::Ascend, SortTarget::Create),
    (SortOrder::Ascend, SortTarget::Value),
    (SortOrder::Descend, SortTarget::Value),
];

/// Filters (min_mod, max_mod, min_create, max_create) as fractions of the
/// current revision `cur`.
fn filters(cur: i64) -> Vec<[i64; 4]> {
    vec![
        [0, 0, 0, 0],
        [cur * 3 / 4, 0, 0, 0],
        [0, cur / 3, 0, 0],
        [0, 0, 0, cur / 2],
        [cur / 4, 0, cur / 10, cur * 9 / 10],
    ]
}

fn request(
    limit: i64,
    (order, target): (SortOrder, SortTarget),
    keys_only: bool,
    f: [i64; 4],
    revision: i64,
) -> RangeRequest {
    RangeRequest {
        key: "k".into(),
        range_end: "l".into(),
        limit,
        revision,
        sort_order: order as i32,
        sort_target: target as i32,
        keys_only,
        min_mod_revision: f[0],
        max_mod_revision: f[1],
        min_create_revision: f[2],
        max_create_revision: f[3],
        ..Default::default()
    }
}

fn check(store: &Store, r: &RangeRequest) {
    let view = View::read(store);
    let got = range(&view, r).unwrap();
    drop(view);
    let want = range_before(store, r);
    assert_eq!(got.count, want.count, "{r:?}");
    assert_eq!(got.more, want.more, "{r:?}");
    assert_eq!(got.kvs.len(), want.kvs.len(), "{r:?}");
    assert!(got == want, "{r:?}");
}

#[test]
fn range_over_100k_keys_matches_the_collecting_implementation() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    fill(&store, 100_000);
    let cur = store.current_revision();
    let chunk = etcd_mvcc::RANGE_CHUNK_SIZE as i64;
    // limits around the chunk size, in key order (early stop after filters)
    for limit in [0, chunk - 1, chunk, chunk + 1] {
        for f in filters(cur) {
            for sort in &SORTS[..2] {
                check(&store, &request(limit, *sort, limit % 2 == 1, f, 0));
            }
        }
    }
    // every sort, with and without filters and keys_only
    for (i, sort) in SORTS.into_iter().enumerate() {
        check(
            &store,
            &request(chunk, sort, i % 2 == 0, filters(cur)[0], 0),
        );
        check(
            &store,
            &request(chunk, sort, i % 2 == 1, filters(cur)[4], 0),
        );
    }
    // at older revisions, count_only
    for rev in [2, cur / 2, cur - 1] {
        check(
            &store,
            &request(chunk, SORTS[0], false, filters(cur)[1], rev),
        );
        check(&store, &request(0, SORTS[6], false, [0; 4], rev));
        let mut r = request(chunk + 1, SORTS[0], false, filters(cur)[4], rev);
        r.count_only = true;
        check(&store, &r);
    }
}

#[test]
fn range_over_many_small_chunks_matches_every_combination() {
    let store = Store::open_in_memory(StoreOptions {
        range_chunk_size: 100,
        ..Default::default()
    })
    .unwrap();
    fill(&store, 3_000);
    let cur = store.current_revision();
    for limit in [0, 1, 99, 100, 101, 250, 5000] {
        for sort in SORTS {
            for keys_only in [false, true] {
                for f in filters(cur) {
                    for rev in [0, cur - 2] {
                        check(&store, &request(limit, sort, keys_only, f, rev));
                    }
                }
            }
        }
    }
}
