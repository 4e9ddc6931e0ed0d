//! The file-system seam: a real implementation here, and a fault-injecting
//! in-memory one for crash tests in `mem_fs.rs` (built for tests and the
//! `testing` feature only).
//!
//! Everything the WAL does to the disk goes through [`FileSystem`] and
//! [`WalFile`], so tests can run the real code against `MemFs`, which keeps
//! what was *written* apart from what is *durable*:
//! - file writes and length changes are durable only after `sync_data` /
//!   `sync_all` on that file;
//! - creating, renaming and removing names are durable only after `sync_dir`
//!   on the directory (directories themselves are created durably);
//! - a "crash" (`MemFs::crash_image`) keeps the durable state plus, per
//!   file and per directory, an arbitrary prefix of the operations not yet
//!   synced, the last of which may be a partial write (a byte prefix).
//!
//! `MemFs::crash_after_ops` makes every mutating operation from the n-th on
//! fail (the machine is down), and `MemFs::fail_sync` makes one fsync fail.
//!
//! The real implementation preallocates with `fallocate(2)` through `rustix`
//! (safe bindings; this crate has no `unsafe`), falling back to
//! `File::set_len` (a sparse file) where the file system does not support it,
//! and locks the WAL directory with a non-blocking `flock(2)`.

use std::fmt::Debug;
use std::io;
use std::path::Path;

/// Directory-level operations.
#[doc(hidden)]
pub trait FileSystem: Send + Sync + Debug + 'static {
    /// Creates `dir` and its parents.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names of the entries in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// The whole contents of a file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Creates a new, empty file (error if it exists).
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WalFile>>;
    /// Opens an existing file for writing.
    fn open_rw(&self, path: &Path) -> io::Result<Box<dyn WalFile>>;
    /// Atomically renames a file within its directory.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on `dir`, held until the guard drops. Fails
    /// with `WouldBlock` if another handle holds it.
    fn lock_dir(&self, dir: &Path) -> io::Result<DirLock>;
}

/// An open file of the WAL.
#[doc(hidden)]
pub trait WalFile: Send + Sync + Debug {
    /// Writes all of `buf` at `offset`.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync.
    fn sync_data(&mut self) -> io::Result<()>;
    /// fsync.
    fn sync_all(&mut self) -> io::Result<()>;
    /// Truncates or extends (with zeros).
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Makes the file at least `len` bytes long (zeros), reserving blocks
    /// where the file system allows.
    fn allocate(&mut self, len: u64) -> io::Result<()>;
}

/// Guard of [`FileSystem::lock_dir`].
#[doc(hidden)]
#[derive(Debug)]
pub struct DirLock {
    _file: Option<std::fs::File>,
}

impl DirLock {
    /// A guard that holds no lock (for file systems without `flock`, such
    /// as the in-memory one).
    pub fn none() -> DirLock {
        DirLock { _file: None }
    }
}

/// The operating system's file system.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile(std::fs::File);

impl FileSystem for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(RealFile(f)))
    }

    fn open_rw(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Box::new(RealFile(f)))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<DirLock> {
        let f = std::fs::File::open(dir)?;
        #[cfg(unix)]
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                if e == rustix::io::Errno::WOULDBLOCK {
                    io::Error::new(io::ErrorKind::WouldBlock, "directory is locked")
                } else {
                    io::Error::from(e)
                }
            },
        )?;
        Ok(DirLock { _file: Some(f) })
    }
}

impl WalFile for RealFile {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        #[cfg(unix)]
        {
            std::os::unix::fs::FileExt::write_all_at(&self.0, buf, offset)
        }
        #[cfg(not(unix))]
        {
            use std::io::{Seek, SeekFrom, Write};
            self.0.seek(SeekFrom::Start(offset))?;
            self.0.write_all(buf)
        }
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.0.sync_all()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn allocate(&mut self, len: u64) -> io::Result<()> {
        let cur = self.0.metadata()?.len();
        if cur >= len {
            return Ok(());
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            use rustix::fs::{fallocate, FallocateFlags};
            use rustix::io::Errno;
            match fallocate(&self.0, FallocateFlags::empty(), cur, len - cur) {
                Ok(()) => return Ok(()),
                Err(e) if e == Errno::OPNOTSUPP || e == Errno::NOSYS || e == Errno::INVAL => {}
                Err(e) => return Err(e.into()),
            }
        }
        self.0.set_len(len)
    }
}
