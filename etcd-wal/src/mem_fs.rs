//! The fault-injecting in-memory file system of crash tests and fuzzing
//! (see `fs.rs` for what it models: written versus durable state, crashes
//! that keep an arbitrary prefix of unsynced operations, failing fsyncs).
//! Built only for tests and the `testing` feature: no product build
//! compiles it.

use crate::fs::{DirLock, FileSystem, WalFile};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An in-memory file system that separates written from durable state; see
/// the module documentation. Clones share the same state.
#[doc(hidden)]
#[derive(Clone, Debug, Default)]
pub struct MemFs {
    state: Arc<Mutex<MemState>>,
    /// While true, file syncs wait ([`MemFs::hold_syncs`]).
    syncs_held: Arc<(Mutex<bool>, Condvar)>,
}

/// What survives a [`MemFs::crash_image`].
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashKeep {
    /// Only what was synced.
    Synced,
    /// Everything written (as if the crash happened after a full flush).
    All,
    /// A pseudo-random prefix of the unsynced operations, from this seed.
    Random(u64),
}

#[derive(Debug, Default)]
struct MemState {
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    dirs: BTreeMap<PathBuf, Dir>,
    ops: u64,
    crash_at: Option<u64>,
    syncs: u64,
    fail_sync_at: Option<u64>,
    /// Bytes handed to `write_all_at` so far, every file.
    written: u64,
    /// The name of the thread that made each file sync, in order (tests
    /// check which thread committed).
    sync_threads: Vec<String>,
}

#[derive(Clone, Debug, Default)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<FileOp>,
}

#[derive(Clone, Debug)]
enum FileOp {
    Write { off: u64, bytes: Vec<u8> },
    SetLen(u64),
}

#[derive(Clone, Debug, Default)]
struct Dir {
    names: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
    pending: Vec<DirOp>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link(String, u64),
    Unlink(String),
    Rename(String, String),
}

fn apply_file_op(data: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write { off, bytes } => {
            let off = *off as usize;
            if data.len() < off + bytes.len() {
                data.resize(off + bytes.len(), 0);
            }
            data[off..off + bytes.len()].copy_from_slice(bytes);
        }
        FileOp::SetLen(len) => data.resize(*len as usize, 0),
    }
}

fn apply_dir_op(names: &mut BTreeMap<String, u64>, op: &DirOp) {
    match op {
        DirOp::Link(name, ino) => {
            names.insert(name.clone(), *ino);
        }
        DirOp::Unlink(name) => {
            names.remove(name);
        }
        DirOp::Rename(from, to) => {
            if let Some(ino) = names.remove(from) {
                names.insert(to.clone(), ino);
            }
        }
    }
}

/// xorshift64*: deterministic randomness without a dependency.
pub(crate) struct XorShift(pub u64);

impl XorShift {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..=n`.
    pub fn upto(&mut self, n: u64) -> u64 {
        self.next_u64() % (n + 1)
    }
}

fn split(path: &Path) -> io::Result<(PathBuf, String)> {
    let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad path"))?;
    Ok((parent, name.to_owned()))
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} not found", path.display()),
    )
}

impl MemState {
    /// Counts a mutating operation; fails once the injected crash point is reached.
    fn op(&mut self) -> io::Result<()> {
        if self.crash_at.is_some_and(|c| self.ops >= c) {
            return Err(io::Error::other("injected crash: the machine is down"));
        }
        self.ops += 1;
        Ok(())
    }

    fn sync_op(&mut self) -> io::Result<()> {
        self.op()?;
        self.syncs += 1;
        if self.fail_sync_at == Some(self.syncs) {
            return Err(io::Error::other("injected fsync failure"));
        }
        Ok(())
    }

    fn dir(&mut self, dir: &Path) -> io::Result<&mut Dir> {
        self.dirs.get_mut(dir).ok_or_else(|| not_found(dir))
    }

    fn lookup(&self, path: &Path) -> io::Result<u64> {
        let (parent, name) = split(path)?;
        self.dirs
            .get(&parent)
            .and_then(|d| d.names.get(&name))
            .copied()
            .ok_or_else(|| not_found(path))
    }

    fn file_op(&mut self, ino: u64, op: FileOp) -> io::Result<()> {
        self.op()?;
        let inode = self
            .inodes
            .get_mut(&ino)
            .ok_or_else(|| io::Error::other("stale inode"))?;
        apply_file_op(&mut inode.data, &op);
        inode.pending.push(op);
        Ok(())
    }
}

impl MemFs {
    /// An empty file system.
    pub fn new() -> MemFs {
        MemFs::default()
    }

    /// Creates (durably) a file with `bytes`, creating its directories.
    pub fn put_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let (parent, name) = split(path)?;
        self.create_dir_all(&parent)?;
        let mut st = self.state.lock();
        let ino = st.next_ino;
        st.next_ino += 1;
        st.inodes.insert(
            ino,
            Inode {
                data: bytes.to_vec(),
                durable: bytes.to_vec(),
                pending: vec![],
            },
        );
        let d = st.dir(&parent)?;
        d.names.insert(name.clone(), ino);
        d.durable.insert(name, ino);
        Ok(())
    }

    /// Bytes written to files so far (every `write_all_at`).
    pub fn written_bytes(&self) -> u64 {
        self.state.lock().written
    }

    /// The name of the thread that made each successful file sync so
    /// far (`sync_data` and `sync_all`), oldest first.
    pub fn sync_threads(&self) -> Vec<String> {
        self.state.lock().sync_threads.clone()
    }

    /// Makes every file sync from now on wait until
    /// [`MemFs::release_syncs`] (a writer caught in the middle of a group
    /// commit, for tests of what queues behind it).
    pub fn hold_syncs(&self) {
        *self.syncs_held.0.lock() = true;
    }

    /// Lets held and later syncs go on (see [`MemFs::hold_syncs`]).
    pub fn release_syncs(&self) {
        *self.syncs_held.0.lock() = false;
        self.syncs_held.1.notify_all();
    }

    /// Mutating operations performed so far.
    pub fn ops(&self) -> u64 {
        self.state.lock().ops
    }

    /// Every mutating operation from the `n`-th (counting from 0 at the
    /// start of the file system's life) on fails, as if the machine died.
    pub fn crash_after_ops(&self, n: u64) {
        self.state.lock().crash_at = Some(n);
    }

    /// The `n`-th sync from now (1 = the next one) fails once.
    pub fn fail_sync(&self, n: u64) {
        let mut st = self.state.lock();
        st.fail_sync_at = Some(st.syncs + n);
    }

    /// What a reboot after a crash right now would find; see [`CrashKeep`].
    pub fn crash_image(&self, keep: CrashKeep) -> MemFs {
        let st = self.state.lock();
        let mut rng = XorShift(match keep {
            CrashKeep::Random(seed) => seed ^ 0x9e37_79b9_7f4a_7c15,
            _ => 1,
        });
        let mut out = MemState {
            next_ino: st.next_ino,
            ..MemState::default()
        };
        let mut wanted: Vec<u64> = Vec::new();
        for (path, dir) in &st.dirs {
            let mut names = dir.durable.clone();
            let n = match keep {
                CrashKeep::Synced => 0,
                CrashKeep::All => dir.pending.len(),
                CrashKeep::Random(_) => rng.upto(dir.pending.len() as u64) as usize,
            };
            for op in &dir.pending[..n] {
                apply_dir_op(&mut names, op);
            }
            wanted.extend(names.values().copied());
            out.dirs.insert(
                path.clone(),
                Dir {
                    names: names.clone(),
                    durable: names,
                    pending: vec![],
                },
            );
        }
        let mut inos: Vec<u64> = st.inodes.keys().copied().collect();
        inos.sort_unstable();
        for ino in inos {
            let inode = &st.inodes[&ino];
            let mut data = inode.durable.clone();
            let n = match keep {
                CrashKeep::Synced => 0,
                CrashKeep::All => inode.pending.len(),
                CrashKeep::Random(_) => rng.upto(inode.pending.len() as u64) as usize,
            };
            for op in &inode.pending[..n] {
                apply_file_op(&mut data, op);
            }
            if let (CrashKeep::Random(_), Some(FileOp::Write { off, bytes })) =
                (keep, inode.pending.get(n))
            {
                let part = rng.upto(bytes.len() as u64) as usize;
                apply_file_op(
                    &mut data,
                    &FileOp::Write {
                        off: *off,
                        bytes: bytes[..part].to_vec(),
                    },
                );
            }
            if wanted.contains(&ino) {
                out.inodes.insert(
                    ino,
                    Inode {
                        durable: data.clone(),
                        data,
                        pending: vec![],
                    },
                );
            }
        }
        MemFs {
            state: Arc::new(Mutex::new(out)),
            syncs_held: Arc::default(),
        }
    }

    /// Current (not necessarily durable) contents of a file.
    pub fn read_file(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.read(path)
    }

    /// Overwrites (durably) the current contents of an existing file.
    pub fn replace_file(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock();
        let ino = st.lookup(path)?;
        let inode = st.inodes.get_mut(&ino).ok_or_else(|| not_found(path))?;
        *inode = Inode {
            data: bytes.to_vec(),
            durable: bytes.to_vec(),
            pending: vec![],
        };
        Ok(())
    }
}

#[derive(Debug)]
struct MemFile {
    fs: MemFs,
    ino: u64,
}

impl FileSystem for MemFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        for anc in dir.ancestors() {
            st.dirs.entry(anc.to_path_buf()).or_default();
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state.lock();
        let d = st.dirs.get(dir).ok_or_else(|| not_found(dir))?;
        let mut names: Vec<String> = d.names.keys().cloned().collect();
        // Directories appear as entries too.
        for p in st.dirs.keys() {
            if p.parent() == Some(dir) {
                if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                    names.push(n.to_owned());
                }
            }
        }
        Ok(names)
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.state.lock();
        let ino = st.lookup(path)?;
        Ok(st.inodes[&ino].data.clone())
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let (parent, name) = split(path)?;
        let mut st = self.state.lock();
        st.op()?;
        if st.dir(&parent)?.names.contains_key(&name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ));
        }
        let ino = st.next_ino;
        st.next_ino += 1;
        st.inodes.insert(ino, Inode::default());
        let d = st.dir(&parent)?;
        d.names.insert(name.clone(), ino);
        d.pending.push(DirOp::Link(name, ino));
        Ok(Box::new(MemFile {
            fs: self.clone(),
            ino,
        }))
    }

    fn open_rw(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        let ino = self.state.lock().lookup(path)?;
        Ok(Box::new(MemFile {
            fs: self.clone(),
            ino,
        }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (p1, n1) = split(from)?;
        let (p2, n2) = split(to)?;
        if p1 != p2 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "rename across directories",
            ));
        }
        let mut st = self.state.lock();
        st.op()?;
        let d = st.dir(&p1)?;
        let ino = d.names.remove(&n1).ok_or_else(|| not_found(from))?;
        d.names.insert(n2.clone(), ino);
        d.pending.push(DirOp::Rename(n1, n2));
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let (parent, name) = split(path)?;
        let mut st = self.state.lock();
        st.op()?;
        let d = st.dir(&parent)?;
        d.names.remove(&name).ok_or_else(|| not_found(path))?;
        d.pending.push(DirOp::Unlink(name));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        st.sync_op()?;
        let d = st.dir(dir)?;
        d.durable = d.names.clone();
        d.pending.clear();
        Ok(())
    }

    fn lock_dir(&self, dir: &Path) -> io::Result<DirLock> {
        self.state.lock().dir(dir)?;
        Ok(DirLock::none())
    }
}

impl MemFile {
    fn sync(&mut self) -> io::Result<()> {
        {
            let (held, released) = &*self.fs.syncs_held;
            let mut held = held.lock();
            while *held {
                released.wait(&mut held);
            }
        }
        let mut st = self.fs.state.lock();
        st.sync_op()?;
        let thread = std::thread::current().name().unwrap_or("").to_owned();
        st.sync_threads.push(thread);
        let inode = st
            .inodes
            .get_mut(&self.ino)
            .ok_or_else(|| io::Error::other("stale inode"))?;
        inode.durable = inode.data.clone();
        inode.pending.clear();
        Ok(())
    }
}

impl WalFile for MemFile {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.fs.state.lock();
        st.written += buf.len() as u64;
        st.file_op(
            self.ino,
            FileOp::Write {
                off: offset,
                bytes: buf.to_vec(),
            },
        )
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.sync()
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.sync()
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.fs.state.lock().file_op(self.ino, FileOp::SetLen(len))
    }

    fn allocate(&mut self, len: u64) -> io::Result<()> {
        let mut st = self.fs.state.lock();
        let cur = st
            .inodes
            .get(&self.ino)
            .map(|i| i.data.len() as u64)
            .unwrap_or(0);
        if cur >= len {
            return Ok(());
        }
        st.file_op(self.ino, FileOp::SetLen(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfs_separates_written_from_durable() {
        let fs = MemFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let mut f = fs.create_new(&dir.join("a")).unwrap();
        f.write_all_at(b"hello", 0).unwrap();
        f.sync_data().unwrap();
        // The name is not durable yet.
        assert!(fs
            .crash_image(CrashKeep::Synced)
            .read(&dir.join("a"))
            .is_err());
        fs.sync_dir(dir).unwrap();
        f.write_all_at(b" world", 5).unwrap();
        assert_eq!(
            fs.crash_image(CrashKeep::Synced)
                .read(&dir.join("a"))
                .unwrap(),
            b"hello"
        );
        assert_eq!(
            fs.crash_image(CrashKeep::All).read(&dir.join("a")).unwrap(),
            b"hello world"
        );
        for seed in 0..50 {
            let got = fs
                .crash_image(CrashKeep::Random(seed))
                .read(&dir.join("a"))
                .unwrap();
            assert!(b"hello world".starts_with(&got) && got.len() >= 5);
        }
        fs.crash_after_ops(fs.ops());
        assert!(f.sync_data().is_err());
    }
}
