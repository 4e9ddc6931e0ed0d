//! Snapshot files on disk (etcd's `snapshot/v3_snapshot.go`, what
//! `etcdutl snapshot status|restore` do): the files `etcdctl snapshot save`
//! writes, from the real etcd or from this server (a bbolt database in
//! etcd's layout, then the SHA-256 of the database as a 32-byte trailer).
//!
//! - [`status`]: etcd's figures for a file (crc32c hash over every bucket
//!   name, key and value; the last revision of the `key` bucket; the number
//!   of keys in all buckets; the database size), after checking every
//!   page.
//! - [`restore`]: a new data directory of this server from a file: the
//!   state machine (keys with their history from the compaction on,
//!   leases, users, roles, alarms) imported, and the member bootstrapped
//!   into the new cluster `--initial-cluster` describes, as `etcdctl
//!   snapshot restore` does for etcd. Everything is built in a sibling
//!   directory and renamed into place at the end: a failed or interrupted
//!   restore leaves no data directory (starting the server then bootstraps
//!   an empty one, or the operator runs the restore again).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use etcd_bbolt::Reader;

use crate::bbolt_layout::{etcd_db_to_image, Imported};
use crate::config::{ClusterState, Config};
use crate::datadir::DataDir;
use crate::error::StartError;

/// Bytes of the SHA-256 trailer.
const SHA256_LEN: u64 = 32;

/// etcd's `snapshot.Status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// crc32c (Castagnoli) of every bucket name, then its keys and values.
    pub hash: u32,
    /// Main revision of the last record of the `key` bucket.
    pub revision: i64,
    /// Keys in all buckets.
    pub total_key: u64,
    /// Bytes of the database (pages in use).
    pub total_size: u64,
}

/// etcd's `snapshot status` of the file at `path`.
pub fn status(path: &Path) -> Result<Status, StartError> {
    let db = Reader::open(path).map_err(|e| StartError::data_dir(path, e))?;
    db.check().map_err(|e| {
        StartError::data_dir(path, format!("snapshot file integrity check failed: {e}"))
    })?;
    let mut h = 0u32;
    let mut st = Status {
        hash: 0,
        revision: 0,
        total_key: 0,
        total_size: db.size(),
    };
    for b in db.buckets().map_err(|e| StartError::data_dir(path, e))? {
        h = crc32c::crc32c_append(h, &b.name);
        let is_key = b.name == b"key";
        db.for_each(&b, |k, v| {
            h = crc32c::crc32c_append(h, k);
            h = crc32c::crc32c_append(h, v);
            if is_key && k.len() >= 8 {
                st.revision = i64::from_be_bytes(k[..8].try_into().expect("8 bytes"));
            }
            st.total_key += 1;
            Ok(())
        })
        .map_err(|e| StartError::data_dir(path, e))?;
    }
    st.hash = h;
    Ok(st)
}

/// Checks the SHA-256 trailer of a snapshot file, as etcd's restore does:
/// a file whose length is 32 past a multiple of 512 carries one, and it
/// must match the database before it; a file without one is refused
/// unless `skip_hash_check` (a database copied out of a data directory).
/// Returns the database's length.
fn check_hash(path: &Path, f: &mut File, skip_hash_check: bool) -> Result<u64, StartError> {
    let io = |e: std::io::Error| StartError::data_dir(path, e);
    let len = f.metadata().map_err(io)?.len();
    let has_hash = len % 512 == SHA256_LEN;
    if !has_hash {
        if skip_hash_check {
            return Ok(len);
        }
        return Err(StartError::data_dir(
            path,
            "snapshot missing hash but --skip-hash-check=false",
        ));
    }
    let db_len = len - SHA256_LEN;
    if skip_hash_check {
        return Ok(db_len);
    }
    let mut want = [0u8; SHA256_LEN as usize];
    f.seek(SeekFrom::Start(db_len)).map_err(io)?;
    f.read_exact(&mut want).map_err(io)?;
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut left = db_len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        f.read_exact(&mut buf[..n]).map_err(io)?;
        ctx.update(&buf[..n]);
        left -= n as u64;
    }
    let got = ctx.finish();
    if got.as_ref() != want {
        return Err(StartError::data_dir(
            path,
            format!("expected sha256 {want:?}, got {:?}", got.as_ref()),
        ));
    }
    Ok(db_len)
}

/// What [`restore`] did.
#[derive(Clone, Debug)]
pub struct Restored {
    /// The data directory written.
    pub data_dir: PathBuf,
    /// The store's revision after the import.
    pub revision: i64,
    /// What was carried over.
    pub imported: Imported,
}

/// Restores the snapshot file at `path` into a new data directory of this
/// server, `cfg.data_dir`, for member `cfg.name` of the new cluster
/// `cfg.initial_cluster` / `cfg.initial_cluster_token` (see the module
/// doc). `cfg.data_dir` must not exist.
pub fn restore(path: &Path, cfg: &Config, skip_hash_check: bool) -> Result<Restored, StartError> {
    if cfg.data_dir.exists() {
        return Err(StartError::data_dir(&cfg.data_dir, "data-dir exists"));
    }
    let mut f = File::open(path).map_err(|e| StartError::data_dir(path, e))?;
    check_hash(path, &mut f, skip_hash_check)?;
    let db = Reader::new(f).map_err(|e| StartError::data_dir(path, e))?;
    db.check().map_err(|e| {
        StartError::data_dir(path, format!("snapshot file integrity check failed: {e}"))
    })?;

    // Built beside the target, renamed into place at the end.
    let mut tmp_cfg = cfg.clone();
    let mut name = cfg
        .data_dir
        .file_name()
        .ok_or_else(|| StartError::data_dir(&cfg.data_dir, "not a directory name"))?
        .to_os_string();
    name.push(".restoring");
    tmp_cfg.data_dir = cfg.data_dir.with_file_name(name);
    tmp_cfg.initial_cluster_state = ClusterState::New;
    if tmp_cfg.data_dir.exists() {
        // Left by an interrupted restore: never a data directory in use.
        std::fs::remove_dir_all(&tmp_cfg.data_dir)
            .map_err(|e| StartError::data_dir(&tmp_cfg.data_dir, e))?;
    }
    let dir = DataDir::new(&tmp_cfg.data_dir);
    dir.create()?;
    // Whatever fails from here on, the half-built directory goes.
    let cleanup = RemoveOnDrop(Some(tmp_cfg.data_dir.clone()));
    tracing::info!(
        snapshot = %path.display(),
        "data-dir" = %cfg.data_dir.display(),
        "restoring a snapshot: converting etcd's database"
    );
    let (info, imported) = crate::etcd_import::install_image(&dir, |image| {
        etcd_db_to_image(&db, image).map_err(|e| StartError::data_dir(path, e))
    })?;
    drop(db);
    tracing::info!(
        revision = info.revision,
        "compact-revision" = info.compact_revision,
        revisions = imported.revisions,
        leases = imported.leases,
        "auth-records" = imported.auth,
        alarms = imported.alarms,
        "restoring a snapshot: imported the state machine; bootstrapping the member"
    );
    let revision = info.revision;
    // The new cluster: members at consistent index 1 on top of the
    // imported state, the WAL after them.
    let booted = crate::bootstrap::boot(&tmp_cfg, |_| {
        Err(StartError::Config(
            "a restore bootstraps a new cluster".into(),
        ))
    })?;
    booted.store.flush()?;
    drop(booted);
    std::fs::rename(&tmp_cfg.data_dir, &cfg.data_dir)
        .map_err(|e| StartError::data_dir(&cfg.data_dir, e))?;
    cleanup.disarm();
    if let Some(parent) = cfg.data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| StartError::data_dir(parent, e))?;
    }
    tracing::info!(
        "data-dir" = %cfg.data_dir.display(),
        revision,
        "restored the snapshot"
    );
    Ok(Restored {
        data_dir: cfg.data_dir.clone(),
        revision,
        imported,
    })
}

/// Removes a half-built directory or file when dropped, unless disarmed
/// (a restore's staging directory, a defragmentation's copy).
pub(crate) struct RemoveOnDrop(pub(crate) Option<PathBuf>);

impl RemoveOnDrop {
    /// The work is in place: keep it.
    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let r = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if let Err(e) = r {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove a half-built file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file whose pages are sound but whose records are not etcd's (a
    /// `key` record that is no `mvccpb.KeyValue`): the import's
    /// verification refuses it, and nothing is left behind.
    #[test]
    fn a_malformed_record_fails_the_restore_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.db");
        let mut w =
            etcd_bbolt::Writer::new(File::create(&file).unwrap(), etcd_bbolt::DEFAULT_PAGE_SIZE)
                .unwrap();
        w.begin_bucket(b"key").unwrap();
        let mut k = 2i64.to_be_bytes().to_vec();
        k.push(b'_');
        k.extend_from_slice(&0i64.to_be_bytes());
        w.put(&k, b"\xff\xff not a KeyValue").unwrap();
        w.finish(1).unwrap();
        let data_dir = dir.path().join("m.etcd");
        let mut cfg = Config::single("m", &data_dir);
        cfg.initial_cluster = "m=http://127.0.0.1:2380".into();
        cfg.initial_advertise_peer_urls = vec!["http://127.0.0.1:2380".into()];
        let err = restore(&file, &cfg, true).unwrap_err().to_string();
        assert!(err.contains("snapshot image"), "{err}");
        assert!(!data_dir.exists());
        assert!(!dir.path().join("m.etcd.restoring").exists());
        // Without --skip-hash-check the file (no trailer) is refused first.
        let err = restore(&file, &cfg, false).unwrap_err().to_string();
        assert!(err.contains("snapshot missing hash"), "{err}");
    }
}
