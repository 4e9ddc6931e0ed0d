//! Layout of a member's data directory:
//!
//! ```text
//! <data-dir>/version          on-disk format version, "1\n"
//! <data-dir>/member/wal/      raft write-ahead log (etcd-wal)
//! <data-dir>/member/snap/     raft snapshot files
//! <data-dir>/member/snap/db/  the MVCC store (RocksDB)
//! ```
//!
//! With `--wal-dir` the WAL lives in that directory instead (etcd's
//! layout too).
//!
//! A data directory written by a newer format is refused with a clear error
//! rather than misread.

use crate::error::StartError;
use std::path::{Path, PathBuf};

/// The on-disk format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Paths inside a data directory.
#[derive(Clone, Debug)]
pub struct DataDir {
    /// The data directory itself.
    pub root: PathBuf,
    /// `--wal-dir`, when the WAL is not under `root`.
    pub wal_dir: Option<PathBuf>,
}

impl DataDir {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir {
            root: root.into(),
            wal_dir: None,
        }
    }

    /// The layout under `root` with the WAL in `wal_dir` (when set).
    pub fn with_wal_dir(root: impl Into<PathBuf>, wal_dir: Option<PathBuf>) -> Self {
        DataDir {
            root: root.into(),
            wal_dir,
        }
    }

    /// `member/wal`, or `--wal-dir`.
    pub fn wal(&self) -> PathBuf {
        match &self.wal_dir {
            Some(w) => w.clone(),
            None => self.root.join("member").join("wal"),
        }
    }

    /// `member/snap`.
    pub fn snap(&self) -> PathBuf {
        self.root.join("member").join("snap")
    }

    /// `member/snap/db`.
    pub fn db(&self) -> PathBuf {
        self.snap().join("db")
    }

    fn version_file(&self) -> PathBuf {
        self.root.join("version")
    }

    /// Creates the directories (mode 0700, like etcd) and the version file.
    pub fn create(&self) -> Result<(), StartError> {
        for d in [&self.root, &self.snap()] {
            create_dir_private(d)
                .map_err(|e| self.err(format!("cannot create {}: {e}", d.display())))?;
        }
        std::fs::write(self.version_file(), format!("{FORMAT_VERSION}\n"))
            .map_err(|e| self.err(format!("cannot write the version file: {e}")))?;
        Ok(())
    }

    /// Checks the version file of an existing data directory.
    pub fn check_version(&self) -> Result<(), StartError> {
        let text = match std::fs::read_to_string(self.version_file()) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.err(format!("cannot read the version file: {e}"))),
        };
        let v: u32 = text.trim().parse().map_err(|_| {
            self.err(format!(
                "version file holds {:?}, not a number",
                text.trim()
            ))
        })?;
        if v > FORMAT_VERSION {
            return Err(self.err(format!(
                "written by a newer version (format {v}); this build reads format {FORMAT_VERSION} \
                 or older: upgrade, or restore from a snapshot"
            )));
        }
        Ok(())
    }

    fn err(&self, reason: String) -> StartError {
        StartError::data_dir(&self.root, reason)
    }
}

fn create_dir_private(path: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(path)
}
