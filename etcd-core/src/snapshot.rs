//! Raft snapshot files of the state machine (etcd's `snap/db.go`): the
//! MVCC store's snapshot images kept in the data directory's `member/snap/`.
//!
//! ```text
//! <data-dir>/member/snap/<term:016x>-<index:016x>.snap.db      a received (or retained) image
//! <data-dir>/member/snap/<term:016x>-<index:016x>.snap.db.<n>.tmp  while it is being received
//! <data-dir>/member/snap/db/                                   the store itself (RocksDB)
//! ```
//!
//! The raft layer's snapshot I/O, in the shapes of etcd-raft-node's
//! `SnapshotIo` / `SnapshotSink` (the trait impls are added where the
//! server wires the raft node):
//!
//! - leader: [`SnapshotFiles::export`] streams the store's current image
//!   ([`Store::export`]: one consistent backend snapshot, consistent index
//!   `>=` the raft snapshot's index);
//! - follower: [`SnapshotFiles::import`] gives a [`SnapSink`] that writes the
//!   received chunks to a temporary file; [`SnapSink::finish`] fsyncs it,
//!   verifies the whole image ([`etcd_mvcc::verify_image`]: checksums,
//!   trailer, consistency), renames it to its final name and fsyncs the
//!   directory, and returns the file name as the *token*;
//!   [`SnapshotFiles::install`] restores the store from the token's file
//!   ([`Store::restore`], in place) and purges older images.
//!
//! Invariants:
//! - a `.snap.db` file is always a complete, verified image (written under
//!   a temporary name, renamed only after fsync and verification; the
//!   rename is made durable by an fsync of the directory);
//! - the newest `retain` images are kept: a crash during `install` leaves
//!   the store incomplete ([`etcd_mvcc::Error::RestoreIncomplete`] at the
//!   next open) and the image it was restoring still on disk. Restart
//!   recovery: raft's latest snapshot `(index, term)` -> [`SnapshotFiles::find`]
//!   -> [`Store::open_to_restore`] -> [`SnapshotFiles::install`];
//! - leftover temporary files (a crash while receiving) are removed by
//!   [`SnapshotFiles::open`].
//!
//! Errors are the store's ([`etcd_mvcc::Error`]): `InvalidImage` for a bad
//! image or token, `Storage` for I/O.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use etcd_mvcc::{Error, ImageInfo, Result, Store};

use crate::datadir::DataDir;

/// Suffix of a complete image file.
pub const SNAP_DB_SUFFIX: &str = ".snap.db";
/// Images kept by default (the newest ones).
pub const DEFAULT_RETAIN: usize = 3;
const TMP_SUFFIX: &str = ".tmp";
/// Read buffer of an install (the restore reads the file twice).
const READ_BUFFER: usize = 1 << 20;

/// A retained image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapFile {
    /// Raft term of the snapshot.
    pub term: u64,
    /// Raft index of the snapshot.
    pub index: u64,
    /// The file.
    pub path: PathBuf,
}

impl SnapFile {
    /// The token of this file for [`SnapshotFiles::install`] (its name).
    pub fn token(&self) -> Vec<u8> {
        SnapshotFiles::file_name(self.term, self.index).into_bytes()
    }
}

/// The image files in a `member/snap/` directory (module doc).
#[derive(Debug)]
pub struct SnapshotFiles {
    dir: PathBuf,
    retain: usize,
    next_tmp: AtomicU64,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("{what} {}: {e}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot fsync directory", dir, e))
}

/// `(term, index)` of a complete image's file name.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SNAP_DB_SUFFIX)?;
    let (t, i) = stem.split_once('-')?;
    if t.len() != 16 || i.len() != 16 {
        return None;
    }
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
    };
    Some((hex(t)?, hex(i)?))
}

impl SnapshotFiles {
    /// The image files in `dir` (created if missing), keeping the newest
    /// `retain` (at least 1). Removes temporary files left by a crash.
    pub fn open(dir: impl Into<PathBuf>, retain: usize) -> Result<SnapshotFiles> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io_err("cannot create", &dir, e))?;
        for entry in fs::read_dir(&dir).map_err(|e| io_err("cannot list", &dir, e))? {
            let entry = entry.map_err(|e| io_err("cannot list", &dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.contains(SNAP_DB_SUFFIX) && name.ends_with(TMP_SUFFIX) {
                tracing::info!(file = %name, "removing a partly received snapshot image");
                fs::remove_file(entry.path())
                    .map_err(|e| io_err("cannot remove", &entry.path(), e))?;
            }
        }
        Ok(SnapshotFiles {
            dir,
            retain: retain.max(1),
            next_tmp: AtomicU64::new(0),
        })
    }

    /// The image files of a data directory (`member/snap/`).
    pub fn for_data_dir(data_dir: &DataDir, retain: usize) -> Result<SnapshotFiles> {
        SnapshotFiles::open(data_dir.snap(), retain)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<term:016x>-<index:016x>.snap.db`
    pub fn file_name(term: u64, index: u64) -> String {
        format!("{term:016x}-{index:016x}{SNAP_DB_SUFFIX}")
    }

    /// The store's current image (raft's `SnapshotIo::export`): its
    /// consistent index must be at least `index`, the raft snapshot's.
    pub fn export(&self, store: &Store, index: u64) -> Result<Box<dyn Read + Send>> {
        let image = store.export()?;
        if image.consistent_index() < index {
            return Err(Error::Storage(format!(
                "snapshot requested at index {index}, but the state machine has applied only up to {}",
                image.consistent_index()
            )));
        }
        Ok(Box::new(image))
    }

    /// A sink receiving the image of the raft snapshot `(index, term)`
    /// (raft's `SnapshotIo::import`).
    pub fn import(&self, index: u64, term: u64) -> Result<Box<SnapSink>> {
        let name = SnapshotFiles::file_name(term, index);
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("{name}.{n}{TMP_SUFFIX}"));
        let file = File::create(&tmp).map_err(|e| io_err("cannot create", &tmp, e))?;
        Ok(Box::new(SnapSink {
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp,
            path: self.dir.join(&name),
            dir: self.dir.clone(),
            index,
            bytes: 0,
        }))
    }

    /// Restores `store` in place from the image a [`SnapSink::finish`]
    /// returned `token` for (see [`Store::restore`]), then purges older
    /// images. Returns what the image held.
    pub fn install(&self, store: &Store, token: &[u8]) -> Result<ImageInfo> {
        let path = self.path_of(token)?;
        let file = File::open(&path).map_err(|e| io_err("cannot open", &path, e))?;
        let info = store.restore(BufReader::with_capacity(READ_BUFFER, file))?;
        tracing::info!(
            file = %path.display(),
            consistent_index = info.consistent_index,
            revision = info.revision,
            "state machine restored from a snapshot image"
        );
        self.purge()?;
        Ok(info)
    }

    /// The file a token names (a bare `*.snap.db` name in this directory).
    fn path_of(&self, token: &[u8]) -> Result<PathBuf> {
        let name = std::str::from_utf8(token)
            .ok()
            .filter(|n| parse_name(n).is_some())
            .ok_or_else(|| {
                Error::InvalidImage(format!(
                    "not a snapshot image token: {:?}",
                    String::from_utf8_lossy(token)
                ))
            })?;
        Ok(self.dir.join(name))
    }

    /// The complete images, oldest first (by index, then term).
    pub fn list(&self) -> Result<Vec<SnapFile>> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(|e| io_err("cannot list", &self.dir, e))? {
            let entry = entry.map_err(|e| io_err("cannot list", &self.dir, e))?;
            if let Some((term, index)) = parse_name(&entry.file_name().to_string_lossy()) {
                files.push(SnapFile {
                    term,
                    index,
                    path: entry.path(),
                });
            }
        }
        files.sort_by_key(|f| (f.index, f.term));
        Ok(files)
    }

    /// The retained image of the raft snapshot at `index` (the highest
    /// term if several), for restart recovery.
    pub fn find(&self, index: u64) -> Result<Option<SnapFile>> {
        Ok(self.list()?.into_iter().rev().find(|f| f.index == index))
    }

    /// The newest retained image.
    pub fn latest(&self) -> Result<Option<SnapFile>> {
        Ok(self.list()?.pop())
    }

    /// Removes all but the newest `retain` images; returns the removed files.
    pub fn purge(&self) -> Result<Vec<PathBuf>> {
        let files = self.list()?;
        let excess = files.len().saturating_sub(self.retain);
        let mut removed = Vec::new();
        for f in files.into_iter().take(excess) {
            fs::remove_file(&f.path).map_err(|e| io_err("cannot remove", &f.path, e))?;
            tracing::info!(file = %f.path.display(), "purged an old snapshot image");
            removed.push(f.path);
        }
        if !removed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}

/// Receives one image ([`SnapshotFiles::import`]): chunks go to a temporary
/// file; dropped without [`finish`](Self::finish), the file is removed.
#[derive(Debug)]
pub struct SnapSink {
    file: Option<BufWriter<File>>,
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
    index: u64,
    bytes: u64,
}

impl SnapSink {
    /// Appends the next chunk of the image.
    pub fn write_chunk(&mut self, chunk: &[u8]) -> Result<()> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| Error::Storage("snapshot sink already failed".into()))?;
        if let Err(e) = f.write_all(chunk) {
            self.file = None;
            return Err(io_err("cannot write", &self.tmp, e));
        }
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    /// Makes the image durable and verifies it; returns the token for
    /// [`SnapshotFiles::install`] (the file name). On error nothing is left
    /// behind.
    // Boxed: the shape of raft's `SnapshotSink::finish` (a trait object).
    #[allow(clippy::boxed_local)]
    pub fn finish(mut self: Box<Self>) -> Result<Vec<u8>> {
        let f = self
            .file
            .take()
            .ok_or_else(|| Error::Storage("snapshot sink already failed".into()))?;
        let file = f
            .into_inner()
            .map_err(|e| io_err("cannot write", &self.tmp, e.into_error()))?;
        file.sync_all()
            .map_err(|e| io_err("cannot fsync", &self.tmp, e))?;
        drop(file);
        let reader = File::open(&self.tmp).map_err(|e| io_err("cannot open", &self.tmp, e))?;
        let info = etcd_mvcc::verify_image(BufReader::with_capacity(READ_BUFFER, reader))?;
        if info.consistent_index < self.index {
            return Err(Error::InvalidImage(format!(
                "the image of snapshot index {} holds consistent index {} only",
                self.index, info.consistent_index
            )));
        }
        fs::rename(&self.tmp, &self.path).map_err(|e| io_err("cannot rename", &self.tmp, e))?;
        sync_dir(&self.dir)?;
        tracing::info!(
            file = %self.path.display(),
            bytes = self.bytes,
            consistent_index = info.consistent_index,
            "received a snapshot image"
        );
        let name = self
            .path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        // renamed: nothing for Drop to remove
        self.tmp = PathBuf::new();
        Ok(name.into_bytes())
    }
}

impl Drop for SnapSink {
    fn drop(&mut self) {
        if self.tmp.as_os_str().is_empty() {
            return;
        }
        self.file = None;
        if let Err(e) = fs::remove_file(&self.tmp) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %self.tmp.display(), error = %e, "cannot remove a partial snapshot image");
            }
        }
    }
}

/// The raft node's snapshot I/O over a member's store and its image files.
pub(crate) struct StoreSnapshots {
    pub(crate) files: SnapshotFiles,
    pub(crate) store: std::sync::Arc<Store>,
}

fn raft_err(e: Error) -> etcd_raft_node::Error {
    etcd_raft_node::Error::Snapshot(e.to_string())
}

impl etcd_raft_node::SnapshotIo for StoreSnapshots {
    fn export(&self, index: u64) -> etcd_raft_node::Result<Box<dyn Read + Send>> {
        self.files.export(&self.store, index).map_err(raft_err)
    }

    fn import(
        &self,
        index: u64,
        term: u64,
    ) -> etcd_raft_node::Result<Box<dyn etcd_raft_node::SnapshotSink>> {
        Ok(self.files.import(index, term).map_err(raft_err)?)
    }
}

impl etcd_raft_node::SnapshotSink for SnapSink {
    fn write_chunk(&mut self, chunk: &[u8]) -> etcd_raft_node::Result<()> {
        SnapSink::write_chunk(self, chunk).map_err(raft_err)
    }

    fn finish(self: Box<Self>) -> etcd_raft_node::Result<Vec<u8>> {
        SnapSink::finish(self).map_err(raft_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_mvcc::{Bucket, RangeOptions, StoreOptions};

    fn fill(s: &Store, prefix: &str, n: usize) {
        for i in 0..n {
            let mut t = s.write();
            t.put(
                format!("{prefix}{}", i % 17).as_bytes(),
                format!("v{i}").as_bytes(),
                0,
            )
            .unwrap();
            t.put_aux(Bucket::Lease, format!("{prefix}{i}").as_bytes(), b"l");
            t.end(s.consistent_index() + 1).unwrap();
        }
        s.compact(s.current_revision() - 5, s.consistent_index() + 1)
            .unwrap()
            .wait();
    }

    fn same(a: &Store, b: &Store) {
        assert_eq!(a.current_revision(), b.current_revision());
        assert_eq!(a.compact_revision(), b.compact_revision());
        assert_eq!(a.consistent_index(), b.consistent_index());
        assert_eq!(a.hash_kv(0).unwrap(), b.hash_kv(0).unwrap());
        let all = RangeOptions::default();
        assert_eq!(
            a.range(b"", &[0], all).unwrap(),
            b.range(b"", &[0], all).unwrap()
        );
        assert_eq!(
            a.aux_scan(Bucket::Lease).unwrap(),
            b.aux_scan(Bucket::Lease).unwrap()
        );
    }

    /// Sends `src`'s image through a sink in uneven chunks.
    fn transfer(files: &SnapshotFiles, src: &Store, index: u64, term: u64) -> Vec<u8> {
        let mut image = files.export(src, index).unwrap();
        let mut sink = files.import(index, term).unwrap();
        let mut buf = vec![0u8; 777];
        loop {
            let n = image.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            sink.write_chunk(&buf[..n]).unwrap();
        }
        sink.finish().unwrap()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn export_import_install_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let leader = DataDir::new(tmp.path().join("leader"));
        let follower = DataDir::new(tmp.path().join("follower"));
        leader.create().unwrap();
        follower.create().unwrap();
        let src = Store::open(&leader.db(), StoreOptions::default()).unwrap();
        fill(&src, "k", 60);
        let dst = Store::open(&follower.db(), StoreOptions::default()).unwrap();
        fill(&dst, "other", 90);

        let lfiles = SnapshotFiles::for_data_dir(&leader, DEFAULT_RETAIN).unwrap();
        let ffiles = SnapshotFiles::for_data_dir(&follower, DEFAULT_RETAIN).unwrap();
        let ci = src.consistent_index();
        let token = transfer(&ffiles, &src, ci, 3);
        assert_eq!(token, SnapshotFiles::file_name(3, ci).into_bytes());
        assert_eq!(
            String::from_utf8(token.clone()).unwrap(),
            format!("0000000000000003-{ci:016x}.snap.db")
        );
        // the image, the store's directory, nothing temporary
        assert_eq!(
            names(&follower.snap()),
            vec![String::from_utf8(token.clone()).unwrap(), "db".into()]
        );
        let info = ffiles.install(&dst, &token).unwrap();
        assert_eq!(info.consistent_index, ci);
        same(&src, &dst);
        // durable
        drop(dst);
        let dst = Store::open(&follower.db(), StoreOptions::default()).unwrap();
        same(&src, &dst);
        // the leader cannot serve an index it has not applied
        assert!(lfiles.export(&src, ci + 1).is_err());
        // a bad token
        assert!(matches!(
            ffiles.install(&dst, b"../../etc/passwd"),
            Err(Error::InvalidImage(_))
        ));
    }

    #[test]
    fn corrupt_or_short_transfers_leave_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let src = Store::open(&tmp.path().join("src"), StoreOptions::default()).unwrap();
        fill(&src, "k", 30);
        let files = SnapshotFiles::open(tmp.path().join("snap"), 2).unwrap();
        let mut image = Vec::new();
        files
            .export(&src, 0)
            .unwrap()
            .read_to_end(&mut image)
            .unwrap();
        // a flipped bit
        let mut bad = image.clone();
        bad[image.len() / 2] ^= 1;
        let mut sink = files.import(10, 1).unwrap();
        sink.write_chunk(&bad).unwrap();
        assert!(matches!(sink.finish(), Err(Error::InvalidImage(_))));
        assert!(names(files.dir()).is_empty(), "{:?}", names(files.dir()));
        // a short one
        let mut sink = files.import(10, 1).unwrap();
        sink.write_chunk(&image[..image.len() - 3]).unwrap();
        let e = sink.finish().unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        assert!(names(files.dir()).is_empty());
        // an image older than the snapshot it claims to be
        let mut sink = files.import(src.consistent_index() + 5, 1).unwrap();
        sink.write_chunk(&image).unwrap();
        assert!(sink.finish().is_err());
        // abandoned half-way
        let mut sink = files.import(10, 1).unwrap();
        sink.write_chunk(&image[..100]).unwrap();
        assert_eq!(names(files.dir()).len(), 1);
        drop(sink);
        assert!(names(files.dir()).is_empty());
        // a crash while receiving leaves a temporary file: removed at open
        fs::write(
            files
                .dir()
                .join("0000000000000001-000000000000000a.snap.db.7.tmp"),
            b"x",
        )
        .unwrap();
        let files = SnapshotFiles::open(files.dir(), 2).unwrap();
        assert!(names(files.dir()).is_empty());
    }

    #[test]
    fn retains_the_newest_and_finds_by_index() {
        let tmp = tempfile::tempdir().unwrap();
        let src = Store::open(&tmp.path().join("src"), StoreOptions::default()).unwrap();
        let files = SnapshotFiles::open(tmp.path().join("snap"), 2).unwrap();
        let mut tokens = Vec::new();
        for round in 0..4u64 {
            fill(&src, &format!("r{round}/"), 10);
            let ci = src.consistent_index();
            tokens.push((ci, transfer(&files, &src, ci, round + 1)));
        }
        assert_eq!(files.list().unwrap().len(), 4);
        // installing the newest purges all but two
        let dst = Store::open(&tmp.path().join("dst"), StoreOptions::default()).unwrap();
        let (ci, token) = tokens.last().unwrap().clone();
        files.install(&dst, &token).unwrap();
        same(&src, &dst);
        let kept: Vec<u64> = files.list().unwrap().iter().map(|f| f.index).collect();
        assert_eq!(kept, vec![tokens[2].0, ci]);
        assert_eq!(files.find(tokens[0].0).unwrap(), None);
        let found = files.find(ci).unwrap().unwrap();
        assert_eq!((found.index, found.term), (ci, 4));
        assert_eq!(found.token(), token);
        assert_eq!(files.latest().unwrap(), Some(found));
    }

    /// Restart after a crash during install: the store refuses to open
    /// (RestoreIncomplete) or is old; either way the retained image restores it.
    #[test]
    fn restart_recovery_from_the_retained_image() {
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::new(tmp.path().join("member0"));
        data.create().unwrap();
        let src = Store::open(&tmp.path().join("src"), StoreOptions::default()).unwrap();
        fill(&src, "k", 40);
        let files = SnapshotFiles::for_data_dir(&data, DEFAULT_RETAIN).unwrap();
        let ci = src.consistent_index();
        transfer(&files, &src, ci, 2);
        {
            let old = Store::open(&data.db(), StoreOptions::default()).unwrap();
            fill(&old, "old", 5);
        }
        // on restart: raft says the latest snapshot is (ci, 2)
        let snap = files.find(ci).unwrap().expect("retained");
        let store = match Store::open(&data.db(), StoreOptions::default()) {
            Ok(s) if s.consistent_index() >= ci => s,
            Ok(s) => {
                drop(s);
                Store::open_to_restore(&data.db(), StoreOptions::default()).unwrap()
            }
            Err(Error::RestoreIncomplete) => {
                Store::open_to_restore(&data.db(), StoreOptions::default()).unwrap()
            }
            Err(e) => panic!("{e}"),
        };
        files.install(&store, &snap.token()).unwrap();
        same(&src, &store);
    }
}
