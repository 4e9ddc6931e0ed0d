//! The writer's files read back by the reader; damaged files refused with
//! an error, never a panic.

use std::collections::BTreeMap;
use std::io::Cursor;

use etcd_bbolt::{Error, Reader, Writer};
use proptest::prelude::*;

type Db = BTreeMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>;

fn write(db: &Db, page_size: usize) -> Vec<u8> {
    let mut w = Writer::new(Cursor::new(Vec::new()), page_size).unwrap();
    for (name, kvs) in db {
        w.begin_bucket(name).unwrap();
        for (k, v) in kvs {
            w.put(k, v).unwrap();
        }
    }
    let (out, written) = w.finish(5).unwrap();
    let bytes = out.into_inner();
    assert_eq!(bytes.len() as u64, written.size);
    assert_eq!(
        written.keys,
        db.values().map(|b| b.len() as u64).sum::<u64>()
    );
    bytes
}

fn read(bytes: Vec<u8>) -> etcd_bbolt::Result<Db> {
    let r = Reader::from_bytes(bytes)?;
    let mut db = Db::new();
    for b in r.buckets()? {
        let mut kvs = BTreeMap::new();
        r.for_each(&b, |k, v| {
            kvs.insert(k.to_vec(), v.to_vec());
            Ok(())
        })?;
        db.insert(b.name.clone(), kvs);
    }
    Ok(db)
}

fn db_strategy() -> impl Strategy<Value = Db> {
    let kvs = prop::collection::btree_map(
        prop::collection::vec(any::<u8>(), 1..40),
        prop_oneof![
            8 => prop::collection::vec(any::<u8>(), 0..64),
            1 => prop::collection::vec(any::<u8>(), 0..3000),
        ],
        0..400,
    );
    prop::collection::btree_map(prop::collection::vec(any::<u8>(), 1..12), kvs, 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn written_files_read_back(db in db_strategy(), small in any::<bool>()) {
        let page_size = if small { 512 } else { 4096 };
        let bytes = write(&db, page_size);
        prop_assert_eq!(read(bytes).unwrap(), db);
    }

    #[test]
    fn damaged_files_are_errors_not_panics(
        db in db_strategy(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = write(&db, 512);
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x.max(1);
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len()));
        }
        // Whatever it says, it must say it without panicking.
        let _ = read(bytes);
    }
}

#[test]
fn many_keys_make_a_deep_tree_and_large_values_overflow() {
    let mut db = Db::new();
    let key: BTreeMap<_, _> = (0u64..50_000)
        .map(|i| (i.to_be_bytes().to_vec(), format!("value-{i}").into_bytes()))
        .collect();
    db.insert(b"key".to_vec(), key);
    let big: BTreeMap<_, _> = (0u8..3).map(|i| (vec![i], vec![i; 100_000])).collect();
    db.insert(b"big".to_vec(), big);
    db.insert(b"empty".to_vec(), BTreeMap::new());
    let bytes = write(&db, 512);
    assert_eq!(read(bytes).unwrap(), db);
}

#[test]
fn a_file_without_its_metas_is_refused() {
    let mut db = Db::new();
    db.insert(
        b"b".to_vec(),
        BTreeMap::from([(b"k".to_vec(), b"v".to_vec())]),
    );
    let mut bytes = write(&db, 4096);
    bytes[..8192].fill(0);
    assert!(matches!(read(bytes), Err(Error::InvalidMeta(_))));
}

#[test]
fn one_damaged_meta_falls_back_to_the_other() {
    let mut db = Db::new();
    db.insert(
        b"b".to_vec(),
        BTreeMap::from([(b"k".to_vec(), b"v".to_vec())]),
    );
    let mut bytes = write(&db, 4096);
    bytes[20] ^= 0xff;
    assert_eq!(read(bytes).unwrap(), db);
}

#[test]
fn a_page_reached_twice_is_refused() {
    // Two buckets whose headers point at the same page.
    let mut db = Db::new();
    db.insert(
        b"a".to_vec(),
        BTreeMap::from([(b"k".to_vec(), b"v".to_vec())]),
    );
    db.insert(
        b"b".to_vec(),
        BTreeMap::from([(b"k".to_vec(), b"v".to_vec())]),
    );
    let mut bytes = write(&db, 4096);
    // Pages: 2 = leaf of a, 3 = leaf of b, 4 = root leaf. Point b at 2.
    let root = 4 * 4096;
    let count = u16::from_le_bytes([bytes[root + 10], bytes[root + 11]]);
    assert_eq!(count, 2);
    // Element 1's value: pos at element offset + 4, ksize at + 8.
    let e = root + 16 + 16;
    let pos = u32::from_le_bytes(bytes[e + 4..e + 8].try_into().unwrap()) as usize;
    let v = e + pos + 1;
    bytes[v..v + 8].copy_from_slice(&2u64.to_le_bytes());
    let r = Reader::from_bytes(bytes).unwrap();
    // Each bucket alone reads; the whole-file check sees page 2 twice.
    assert_eq!(r.buckets().unwrap()[1].header.root, 2);
    let err = r.check().unwrap_err().to_string();
    assert!(err.contains("page 2 reached twice"), "{err}");
}
