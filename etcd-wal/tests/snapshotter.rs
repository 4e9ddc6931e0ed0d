//! Snapshot files: save, load, skip damaged ones, purge.

use etcd_wal::{Error, Snapshotter};

#[test]
fn save_load_newest_and_purge() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("member/snap");
    let s = Snapshotter::new(&dir).unwrap();
    assert_eq!(s.load_newest().unwrap(), None);
    for (term, index) in [(1, 10), (2, 20), (2, 30), (3, 40), (3, 50), (4, 60)] {
        s.save(term, index, format!("state@{index}").as_bytes())
            .unwrap();
    }
    let (term, index, data) = s.load_newest().unwrap().unwrap();
    assert_eq!((term, index, &data[..]), (4, 60, &b"state@60"[..]));
    assert_eq!(&s.load(2, 20).unwrap()[..], b"state@20");
    assert!(matches!(s.load(9, 9), Err(Error::NotFound(_))));

    assert_eq!(s.purge(0).unwrap(), 0, "0 = unlimited");
    assert_eq!(s.purge(5).unwrap(), 1);
    assert!(matches!(s.load(1, 10), Err(Error::NotFound(_))));
    assert_eq!(s.purge(2).unwrap(), 3);
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 2);
}

#[test]
fn damaged_newest_is_skipped_and_renamed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = Snapshotter::new(dir).unwrap();
    s.save(1, 5, b"five").unwrap();
    s.save(1, 9, b"nine").unwrap();
    let newest = dir.join("0000000000000001-0000000000000009.snap");
    let mut bytes = std::fs::read(&newest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&newest, &bytes).unwrap();
    assert!(matches!(s.load(1, 9), Err(Error::Corruption { .. })));
    let (_, index, data) = s.load_newest().unwrap().unwrap();
    assert_eq!((index, &data[..]), (5, &b"five"[..]));
    assert!(!newest.exists());
    assert!(dir
        .join("0000000000000001-0000000000000009.snap.broken")
        .exists());
    // A leftover temporary file is cleaned up by new().
    std::fs::write(
        dir.join("0000000000000002-0000000000000010.snap.tmp"),
        b"junk",
    )
    .unwrap();
    let s = Snapshotter::new(dir).unwrap();
    assert!(!dir
        .join("0000000000000002-0000000000000010.snap.tmp")
        .exists());
    assert_eq!(s.load_newest().unwrap().unwrap().1, 5);
}
