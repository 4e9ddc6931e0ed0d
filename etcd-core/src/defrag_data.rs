//! `etcdutl defrag --data-dir` (etcd's `DefragData`, and `etcdctl defrag
//! --data-dir` in 3.4): defragments the store of a data directory that no
//! server is using.
//!
//! Two kinds of data directory are accepted, as the server accepts both:
//! - **this server's** (`member/snap/db/` is a RocksDB directory): the
//!   store is opened (which waits for a running server to let go of it)
//!   and [`Store::defragment`] flushes the memtables and compacts every
//!   column family, as `etcdctl defrag` does online;
//! - **etcd's** (`member/snap/db` is a bbolt file, from a stopped etcd or
//!   `etcdctl snapshot restore`): every page is checked, then every bucket
//!   is copied in key order into a new, packed file `member/snap/db.defrag`
//!   ([`etcd_bbolt::Writer`]: no free pages, no freelist, as etcd writes it
//!   on Linux), which is synced and renamed over `db`. What etcd's
//!   `backend.defrag` does, with a copy instead of bbolt's compaction in
//!   place. A damaged file is refused before anything is written; a crash
//!   before the rename leaves `db` as it was (the next run removes the
//!   stale `db.defrag`).
//!
//! Like etcd, both wait for the server holding the store to stop: bbolt
//! files are locked with `flock` (bbolt's own lock), RocksDB directories
//! with RocksDB's `LOCK` file. `waiting` is called once when that happens
//! (etcdutl prints etcd's hint then).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_bbolt::{Reader, Writer};
use etcd_mvcc::{Store, StoreOptions};

use crate::datadir::DataDir;
use crate::error::StartError;
use crate::v3_snapshot::RemoveOnDrop;

/// The kind of store a data directory held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// This server's RocksDB store.
    Ours,
    /// etcd's bbolt file.
    Etcd,
}

/// What [`defrag_data`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Defragmented {
    /// Which store was defragmented.
    pub kind: StoreKind,
    /// The store's path (`member/snap/db`).
    pub db: PathBuf,
    /// Bytes before (bbolt: the file; RocksDB: SST files and memtables).
    pub size_before: u64,
    /// Bytes after.
    pub size_after: u64,
}

/// How long to wait between attempts to open a RocksDB store another
/// process holds (RocksDB's lock cannot be waited for).
const LOCK_RETRY: Duration = Duration::from_millis(100);

/// Defragments the store of the data directory `root` (see the module
/// doc). `waiting(db)` is called once if a running server holds the store;
/// the call then waits until it is released.
pub fn defrag_data(root: &Path, waiting: impl FnOnce(&Path)) -> Result<Defragmented, StartError> {
    let dir = DataDir::new(root);
    let db = dir.db();
    if db.is_file() {
        defrag_bbolt(&db, waiting)
    } else if db.is_dir() {
        dir.check_version()?;
        defrag_ours(&db, waiting)
    } else {
        Err(StartError::data_dir(
            &db,
            "no store here (neither an etcd database file nor this server's store)",
        ))
    }
}

/// Opens this server's store `db`, waiting while a running server holds
/// it (`waiting(db)` is called once then).
pub(crate) fn open_store_waiting(
    db: &Path,
    waiting: impl FnOnce(&Path),
) -> Result<Store, StartError> {
    let mut waiting = Some(waiting);
    loop {
        match Store::open(db, StoreOptions::default()) {
            Ok(s) => return Ok(s),
            Err(etcd_mvcc::Error::Storage(msg)) if is_lock_error(&msg) => {
                if let Some(w) = waiting.take() {
                    w(db);
                }
                std::thread::sleep(LOCK_RETRY);
            }
            Err(e) => return Err(StartError::data_dir(db, e)),
        }
    }
}

fn defrag_ours(db: &Path, waiting: impl FnOnce(&Path)) -> Result<Defragmented, StartError> {
    let store = open_store_waiting(db, waiting)?;
    let size_before = store.db_size();
    tracing::info!(db = %db.display(), "db-size-bytes" = size_before, "defragmenting");
    store
        .defragment()
        .map_err(|e| StartError::data_dir(db, e))?;
    let size_after = store.db_size();
    tracing::info!(
        db = %db.display(),
        "db-size-bytes" = size_after,
        "db-size-bytes-diff" = size_before as i64 - size_after as i64,
        "finished defragmenting"
    );
    Ok(Defragmented {
        kind: StoreKind::Ours,
        db: db.to_path_buf(),
        size_before,
        size_after,
    })
}

/// RocksDB's answer when another process holds the directory's `LOCK`.
fn is_lock_error(msg: &str) -> bool {
    msg.contains("LOCK") && (msg.contains("unavailable") || msg.contains("lock hold"))
}

fn defrag_bbolt(db: &Path, waiting: impl FnOnce(&Path)) -> Result<Defragmented, StartError> {
    let err = |e: &dyn std::fmt::Display| StartError::data_dir(db, e);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(db)
        .map_err(|e| err(&e))?;
    lock_exclusive(&file, || waiting(db)).map_err(|e| err(&e))?;
    let size_before = file.metadata().map_err(|e| err(&e))?.len();
    let src = Reader::new(file.try_clone().map_err(|e| err(&e))?).map_err(|e| err(&e))?;
    tracing::info!(db = %db.display(), "db-size-bytes" = size_before, "defragmenting: checking every page");
    src.check()
        .map_err(|e| err(&format!("database integrity check failed: {e}")))?;

    let tmp = db.with_file_name("db.defrag");
    if tmp.exists() {
        std::fs::remove_file(&tmp).map_err(|e| err(&e))?;
    }
    let out = File::create(&tmp).map_err(|e| err(&e))?;
    // Whatever fails from here on, the partial copy goes.
    let cleanup = RemoveOnDrop(Some(tmp.clone()));
    let mut w =
        Writer::new(BufWriter::new(out), src.meta().page_size as usize).map_err(|e| err(&e))?;
    let buckets = src.buckets().map_err(|e| err(&e))?;
    for b in &buckets {
        tracing::info!(
            bucket = %String::from_utf8_lossy(&b.name),
            "defragmenting: copying a bucket"
        );
        w.begin_bucket(&b.name).map_err(|e| err(&e))?;
        src.for_each(b, |k, v| w.put(k, v)).map_err(|e| err(&e))?;
    }
    let (out, written) = w.finish(src.meta().txid).map_err(|e| err(&e))?;
    let out = out.into_inner().map_err(|e| err(&e.into_error()))?;
    out.sync_all().map_err(|e| err(&e))?;
    drop(out);
    std::fs::rename(&tmp, db).map_err(|e| err(&e))?;
    cleanup.disarm();
    if let Some(parent) = db.parent() {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| StartError::data_dir(parent, e))?;
    }
    // The old file (and its lock) go now; the new one is in place.
    drop(src);
    drop(file);
    tracing::info!(
        db = %db.display(),
        "db-size-bytes" = written.size,
        "db-size-bytes-diff" = size_before as i64 - written.size as i64,
        keys = written.keys,
        "finished defragmenting"
    );
    Ok(Defragmented {
        kind: StoreKind::Etcd,
        db: db.to_path_buf(),
        size_before,
        size_after: written.size,
    })
}

/// bbolt's lock: `flock(LOCK_EX)` (std's `File::lock`), tried first
/// without blocking so the caller can say it waits.
fn lock_exclusive(file: &File, waiting: impl FnOnce()) -> std::io::Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => {
            waiting();
            file.lock()
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// bbolt's lock for a reader (`flock(LOCK_SH)`, what a read-only
/// `bolt.Open` takes): waits while etcd runs on the file.
pub(crate) fn lock_shared(file: &File, waiting: impl FnOnce()) -> std::io::Result<()> {
    match file.try_lock_shared() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => {
            waiting();
            file.lock_shared()
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data directory holding an etcd-like bbolt file of `keys` keys;
    /// returns it with its `member/snap`.
    fn etcd_data_dir(keys: u32) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let snap = dir.path().join("member/snap");
        std::fs::create_dir_all(&snap).unwrap();
        let file = File::create(snap.join("db")).unwrap();
        let mut w = Writer::new(file, etcd_bbolt::DEFAULT_PAGE_SIZE).unwrap();
        w.begin_bucket(b"key").unwrap();
        for i in 0..keys {
            w.put(format!("{i:08}").as_bytes(), &[7u8; 300]).unwrap();
        }
        w.begin_bucket(b"meta").unwrap();
        w.put(b"consistent_index", &9u64.to_be_bytes()).unwrap();
        w.finish(5).unwrap();
        (dir, snap)
    }

    fn contents(path: &Path) -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
        let r = Reader::open(path).unwrap();
        let mut all = Vec::new();
        for b in r.buckets().unwrap() {
            r.for_each(&b, |k, v| {
                all.push((b.name.clone(), k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap();
        }
        all
    }

    #[test]
    fn a_bbolt_file_is_rewritten_with_the_same_records() {
        let (dir, snap) = etcd_data_dir(500);
        let db = snap.join("db");
        let want = contents(&db);
        // Free pages at the end, as a bbolt file keeps them.
        let f = std::fs::OpenOptions::new().append(true).open(&db).unwrap();
        f.set_len(f.metadata().unwrap().len() + 64 * 4096).unwrap();
        // A copy left by an interrupted run.
        std::fs::write(snap.join("db.defrag"), b"partial").unwrap();

        let mut waited = false;
        let d = defrag_data(dir.path(), |_| waited = true).unwrap();
        assert!(!waited);
        assert_eq!(d.kind, StoreKind::Etcd);
        assert!(d.size_after < d.size_before, "{d:?}");
        assert_eq!(std::fs::metadata(&db).unwrap().len(), d.size_after);
        assert_eq!(contents(&db), want);
        assert!(!snap.join("db.defrag").exists());
    }

    #[test]
    fn a_damaged_bbolt_file_is_left_as_it_was() {
        let (dir, snap) = etcd_data_dir(500);
        let db = snap.join("db");
        let mut bytes = std::fs::read(&db).unwrap();
        // The page type of the first page past the metas.
        bytes[2 * 4096 + 8] ^= 0xff;
        std::fs::write(&db, &bytes).unwrap();
        let e = defrag_data(dir.path(), |_| {}).unwrap_err().to_string();
        assert!(e.contains("integrity check failed"), "{e}");
        assert_eq!(std::fs::read(&db).unwrap(), bytes);
        assert!(!snap.join("db.defrag").exists());
    }

    #[test]
    fn a_directory_without_a_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let e = defrag_data(dir.path(), |_| {}).unwrap_err().to_string();
        assert!(e.contains("no store here"), "{e}");
    }

    #[test]
    fn a_locked_bbolt_file_is_waited_for() {
        let (dir, snap) = etcd_data_dir(10);
        let db = snap.join("db");
        let holder = File::open(&db).unwrap();
        holder.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let root = dir.path().to_path_buf();
        let t = std::thread::spawn(move || defrag_data(&root, move |_| tx.send(()).unwrap()));
        rx.recv().unwrap(); // it says it waits ...
        drop(holder); // ... and goes on once the holder lets go
        assert_eq!(t.join().unwrap().unwrap().kind, StoreKind::Etcd);
    }
}
