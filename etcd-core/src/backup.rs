//! `etcdutl backup` (etcd's `backup_command.go`): a copy of a stopped
//! member's data directory that starts as a NEW one-member cluster, for
//! disaster recovery and for cloning a cluster's data.
//!
//! As etcd's, the backup keeps the data and the raft log and drops the
//! identity: new member and cluster ids (random), no membership, no vote.
//! It is started once with `--force-new-cluster` (a start without it is
//! refused, saying so), which adds the member to its empty membership with
//! its `--initial-advertise-peer-urls` and becomes a cluster of one; more
//! members are then added with `etcdctl member add`.
//!
//! ```text
//! source (this server's, or etcd's: imported first into a staging dir)
//!   member/snap/db   store at consistent index CI  --export/restore-->  backup's store,
//!                                                                       Members bucket emptied
//!   member/wal       metadata (ids, members)       -->  new ids, no members
//!                    snapshot mark, entries <= commit, hard state
//!                                                  -->  same mark, entries and term;
//!                                                       vote 0, commit as a restart computes it
//! ```
//!
//! Unlike etcd's, configuration change entries in the log are kept, not
//! cut out and the log renumbered: `--force-new-cluster` removes whatever
//! members they add. The entries after the commit index are not copied
//! (`--force-new-cluster` drops them anyway).
//!
//! The source is never written: its store is opened (waiting while a
//! server holds it, as `etcdutl defrag` does), exported from one
//! consistent snapshot, and its WAL is read without repairing a torn
//! tail. The backup directories must not exist or be empty. The backup is
//! built in `<backup-dir>.partial` (and `<backup-wal-dir>.partial`),
//! renamed into place at the end (the WAL directory last): a failed backup
//! removes what it wrote, a killed one leaves only `.partial` directories,
//! which the next run deletes.

use std::path::{Path, PathBuf};

use etcd_mvcc::{Bucket, Store, StoreOptions};
use etcd_wal::{Wal, WalOptions, WriteBatch};
use prost::Message as _;

use crate::datadir::DataDir;
use crate::error::StartError;
use crate::membership::{format_id, WalMetadata};
use crate::v3_snapshot::RemoveOnDrop;

/// Where to read and where to write (etcdutl's flags).
#[derive(Clone, Debug)]
pub struct BackupOptions {
    /// `--data-dir`: the stopped member's data directory.
    pub data_dir: PathBuf,
    /// `--wal-dir`: its WAL, when not in the data directory.
    pub wal_dir: Option<PathBuf>,
    /// `--backup-dir`: the backup's data directory (absent or empty).
    pub backup_dir: PathBuf,
    /// `--backup-wal-dir`: the backup's WAL, when not in `backup_dir`
    /// (start the server with `--wal-dir` then).
    pub backup_wal_dir: Option<PathBuf>,
}

/// What [`backup`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    /// The backup's member id (new).
    pub member_id: u64,
    /// The backup's cluster id (new).
    pub cluster_id: u64,
    /// The store's revision.
    pub revision: i64,
    /// The store's consistent index (raft index applied).
    pub consistent_index: u64,
    /// Raft entries copied (applied or committed, after the log's
    /// snapshot mark).
    pub entries: usize,
}

/// Writes the backup (see the module doc). `waiting(db)` is called once
/// if a running server holds the source's store; the call then waits.
pub fn backup(opts: &BackupOptions, waiting: impl FnOnce(&Path)) -> Result<Backup, StartError> {
    let src = DataDir::with_wal_dir(&opts.data_dir, opts.wal_dir.clone());
    let dst = DataDir::with_wal_dir(&opts.backup_dir, opts.backup_wal_dir.clone());
    for d in std::iter::once(&dst.root).chain(&dst.wal_dir) {
        if d.exists() && std::fs::read_dir(d).map_or(true, |mut e| e.next().is_some()) {
            return Err(StartError::data_dir(
                d,
                "the backup directory exists and is not empty",
            ));
        }
    }
    if !src.root.is_dir() {
        return Err(StartError::data_dir(&src.root, "no such data directory"));
    }
    // Built beside the targets; whatever fails from here on, it goes.
    let staged = DataDir::with_wal_dir(partial(&dst.root), dst.wal_dir.as_deref().map(partial));
    for d in std::iter::once(&staged.root).chain(&staged.wal_dir) {
        if d.exists() {
            // Left by a killed backup: never a directory in use.
            std::fs::remove_dir_all(d).map_err(|e| StartError::data_dir(d, e))?;
        }
    }
    let cleanup = (
        RemoveOnDrop(Some(staged.root.clone())),
        RemoveOnDrop(staged.wal_dir.clone()),
    );
    let mut waiting = Some(waiting);
    // etcd's files are imported into a staging directory first (the
    // import of a start, which reads and never writes them).
    let staging;
    let src = if crate::etcd_import::needs_import(&src) {
        let db = src.db();
        let file = std::fs::File::open(&db).map_err(|e| StartError::data_dir(&db, e))?;
        crate::defrag_data::lock_shared(&file, || {
            if let Some(w) = waiting.take() {
                w(&db)
            }
        })
        .map_err(|e| StartError::data_dir(&db, e))?;
        tracing::info!(
            "data-dir" = %src.root.display(),
            "backup: the data directory is etcd's: converting it first"
        );
        let parent = dst.root.parent().filter(|p| !p.as_os_str().is_empty());
        staging = tempfile::Builder::new()
            .prefix(".etcdutl-backup")
            .tempdir_in(parent.unwrap_or(Path::new(".")))
            .map_err(|e| StartError::data_dir(&dst.root, e))?;
        let out = DataDir::new(staging.path().join("member-data"));
        crate::etcd_import::build(&src, &out)?;
        drop(file);
        out
    } else {
        src.check_version()?;
        src
    };
    let store = crate::defrag_data::open_store_waiting(&src.db(), |db| {
        if let Some(w) = waiting.take() {
            w(db)
        }
    })?;
    let wal_dir = src.wal();
    let rec = Wal::read(&wal_dir, WalOptions::default())
        .map_err(|e| StartError::data_dir(&wal_dir, e))?;
    let ci = store.consistent_index();
    if let Some(mark) = rec.snapshot.filter(|m| m.index > ci) {
        return Err(StartError::data_dir(
            &src.root,
            format!(
                "the member stopped while installing a snapshot (raft log from index {}, \
                 store at {ci}): start it once so that it finishes, then back it up",
                mark.index
            ),
        ));
    }
    // The commit index as a restart computes it (`WalStorage::open_with`).
    let commit = rec.commit_index(ci);
    let entries: Vec<etcd_wal::Entry> = rec
        .entries
        .into_iter()
        .filter(|e| e.index <= commit)
        .collect();
    tracing::info!(
        "data-dir" = %src.root.display(),
        "backup-dir" = %dst.root.display(),
        "consistent-index" = ci,
        revision = store.current_revision(),
        "backup: copying the store"
    );

    staged.create()?;
    let (info, ()) = crate::etcd_import::install_image(&staged, |mut image| {
        let mut export = store.export()?;
        std::io::copy(&mut export, &mut image).map_err(|e| StartError::data_dir(&src.root, e))?;
        Ok((image, ()))
    })?;
    drop(store);
    // etcd's saveDB: "remove membership information; should be clobbered
    // by --force-new-cluster".
    let out = Store::open(&staged.db(), StoreOptions::default())?;
    let mut w = out.write();
    for (k, _) in out.aux_scan(Bucket::Members)? {
        w.delete_aux(Bucket::Members, &k);
    }
    w.end(out.consistent_index())?;
    out.flush()?;
    drop(out);

    let member_id = new_id();
    let cluster_id = new_id();
    let meta = WalMetadata {
        member_id,
        cluster_id,
        members: Vec::new(),
    }
    .encode_to_vec();
    let wal_err = |e: etcd_wal::Error| StartError::data_dir(&staged.wal(), e);
    let wal = Wal::create(&staged.wal(), WalOptions::default(), &meta).map_err(wal_err)?;
    let copied = entries.len();
    let mut batch = WriteBatch::default();
    batch.entries = entries;
    batch.hard_state = Some(etcd_wal::HardState {
        term: rec.hard_state.term,
        vote: 0,
        commit,
    });
    batch.snapshot = rec.snapshot;
    wal.append_sync(batch).map_err(wal_err)?;
    wal.close().map_err(wal_err)?;
    // Into place: an empty target directory is replaced by the rename.
    let renames = std::iter::once((&staged.root, &dst.root))
        .chain(staged.wal_dir.as_ref().zip(dst.wal_dir.as_ref()));
    for (from, to) in renames {
        std::fs::rename(from, to).map_err(|e| StartError::data_dir(to, e))?;
    }
    for d in [&dst.root, &dst.wal()] {
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::File::open(parent)
                .and_then(|f| f.sync_all())
                .map_err(|e| StartError::data_dir(parent, e))?;
        }
    }
    let (a, b) = cleanup;
    a.disarm();
    b.disarm();
    tracing::info!(
        "backup-dir" = %dst.root.display(),
        member = %format_id(member_id),
        cluster = %format_id(cluster_id),
        revision = info.revision,
        entries = copied,
        "backup written: start it with --force-new-cluster"
    );
    Ok(Backup {
        member_id,
        cluster_id,
        revision: info.revision,
        consistent_index: ci,
        entries: copied,
    })
}

/// `<dir>.partial`: where a backup into `dir` is built.
fn partial(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_os_string();
    name.push(".partial");
    PathBuf::from(name)
}

/// A random, non-zero id (etcd's `idutil` generator is time-based).
fn new_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}
