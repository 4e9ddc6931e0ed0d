//! The in-memory backend: persistent ordered maps (`imbl::OrdMap`, O(1)
//! clones, so a snapshot is six pointer copies) with a crash model, for tests
//! and the fuzz target.
//!
//! Crash model (like redb's crash-test backend): a [`MemDisk`] is the "disk"
//! and holds only the *durable* state; a [`MemBackend`] attached to it is the
//! "process" and holds the *written* state. `write` changes the written
//! state; `flush` copies it to the disk. [`MemDisk::crash`] (or an injected
//! fault, [`MemDisk::crash_after_writes`]) kills the process: its later
//! writes and flushes fail with [`Error::Storage`] and never reach the disk,
//! and a store reopened on the disk ([`MemDisk::backend`]) sees exactly what
//! was flushed. [`MemDisk::set_auto_flush`] makes every write durable at once,
//! which models RocksDB persisting any prefix of the batches on its own.
//!
//! ```
//! use etcd_mvcc::{MemDisk, Store, StoreOptions};
//!
//! let disk = MemDisk::new();
//! let store = Store::open_with(Box::new(disk.backend()), StoreOptions::default()).unwrap();
//! let mut txn = store.write();
//! txn.put(b"a", b"1", 0).unwrap();
//! txn.end(1).unwrap();
//! store.flush().unwrap(); // revision 2 is durable
//! let mut txn = store.write();
//! txn.put(b"a", b"2", 0).unwrap();
//! txn.end(2).unwrap(); // revision 3 is not
//! disk.crash();
//! drop(store); // its flush at close fails: the process is dead
//! let store = Store::open_with(Box::new(disk.backend()), StoreOptions::default()).unwrap();
//! assert_eq!((store.current_revision(), store.consistent_index()), (2, 1));
//! ```

use std::sync::Arc;

use bytes::Bytes;
use imbl::OrdMap;
use parking_lot::Mutex;

use crate::backend::{scan_bounds, Backend, BatchOp, Cf, ScanIter, Snapshot, WriteBatch};
use crate::error::{Error, Result};

type Map = OrdMap<Bytes, Bytes>;

/// The column families' maps and the bytes they hold.
#[derive(Clone, Default)]
struct Tables {
    cfs: [Map; 6],
    bytes: u64,
}

impl Tables {
    fn apply(&mut self, batch: WriteBatch) {
        for op in batch.into_ops() {
            match op {
                BatchOp::Put { cf, key, value } => {
                    let (key, value) = (Bytes::from(key), Bytes::from(value));
                    self.bytes += (key.len() + value.len()) as u64;
                    if let Some(old) = self.cfs[cf as usize].insert(key.clone(), value) {
                        self.bytes -= (key.len() + old.len()) as u64;
                    }
                }
                BatchOp::Delete { cf, key } => {
                    if let Some(old) = self.cfs[cf as usize].remove(&key[..]) {
                        self.bytes -= (key.len() + old.len()) as u64;
                    }
                }
            }
        }
    }
}

struct Disk {
    durable: Tables,
    /// Incremented by every attach and crash; only the backend attached
    /// with the current epoch may write and flush.
    epoch: u64,
    auto_flush: bool,
    /// Writes still allowed before an injected crash.
    crash_after: Option<u64>,
    writes: u64,
}

/// The durable state of an in-memory store and its fault injection. Cheap to
/// clone (shared); outlives the stores opened on it.
#[derive(Clone)]
pub struct MemDisk {
    disk: Arc<Mutex<Disk>>,
}

impl Default for MemDisk {
    fn default() -> Self {
        MemDisk::new()
    }
}

impl std::fmt::Debug for MemDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.disk.lock();
        f.debug_struct("MemDisk")
            .field("epoch", &d.epoch)
            .field("durable_bytes", &d.durable.bytes)
            .field("writes", &d.writes)
            .finish()
    }
}

impl MemDisk {
    /// An empty disk.
    pub fn new() -> MemDisk {
        MemDisk {
            disk: Arc::new(Mutex::new(Disk {
                durable: Tables::default(),
                epoch: 0,
                auto_flush: false,
                crash_after: None,
                writes: 0,
            })),
        }
    }

    /// Starts a "process" on the disk: a backend whose written state is the
    /// durable state. A backend attached earlier is cut off (as after a crash).
    pub fn backend(&self) -> MemBackend {
        let mut d = self.disk.lock();
        d.epoch += 1;
        MemBackend {
            disk: self.disk.clone(),
            epoch: d.epoch,
            written: Mutex::new(d.durable.clone()),
        }
    }

    /// Crashes the attached backend: everything it wrote and did not flush
    /// is lost; its later writes and flushes fail without reaching the disk.
    pub fn crash(&self) {
        self.disk.lock().epoch += 1;
    }

    /// Makes every successful write durable immediately (off by default).
    pub fn set_auto_flush(&self, on: bool) {
        self.disk.lock().auto_flush = on;
    }

    /// Lets the next `n` writes succeed; the one after crashes the disk (see
    /// [`crash`](Self::crash)) and fails.
    pub fn crash_after_writes(&self, n: u64) {
        self.disk.lock().crash_after = Some(n);
    }

    /// Number of successful writes to the disk's backends so far.
    pub fn writes(&self) -> u64 {
        self.disk.lock().writes
    }
}

/// An in-memory backend attached to a [`MemDisk`] (see the module doc).
pub struct MemBackend {
    disk: Arc<Mutex<Disk>>,
    epoch: u64,
    written: Mutex<Tables>,
}

impl std::fmt::Debug for MemBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemBackend")
            .field("epoch", &self.epoch)
            .finish()
    }
}

fn crashed() -> Error {
    Error::Storage("in-memory backend crashed (fault injection)".into())
}

impl Backend for MemBackend {
    fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut d = self.disk.lock();
        if d.epoch != self.epoch {
            return Err(crashed());
        }
        match d.crash_after {
            Some(0) => {
                d.crash_after = None;
                d.epoch += 1;
                return Err(crashed());
            }
            Some(n) => d.crash_after = Some(n - 1),
            None => {}
        }
        let mut w = self.written.lock();
        w.apply(batch);
        d.writes += 1;
        if d.auto_flush {
            d.durable = w.clone();
        }
        Ok(())
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.written.lock().cfs[cf as usize].get(key).cloned())
    }

    fn snapshot(&self) -> Box<dyn Snapshot + '_> {
        Box::new(MemSnapshot {
            tables: self.written.lock().clone(),
        })
    }

    fn flush(&self) -> Result<()> {
        let mut d = self.disk.lock();
        if d.epoch != self.epoch {
            return Err(crashed());
        }
        d.durable = self.written.lock().clone();
        Ok(())
    }

    /// Nothing to reclaim: the maps hold live records only.
    fn defragment(&self) -> Result<()> {
        Ok(())
    }

    /// Key and value bytes of all records.
    fn size(&self) -> u64 {
        self.written.lock().bytes
    }

    fn size_in_use(&self) -> u64 {
        self.size()
    }

    fn describe(&self) -> String {
        format!("memory (epoch {})", self.epoch)
    }
}

/// A snapshot: clones of the maps (they share their nodes).
struct MemSnapshot {
    tables: Tables,
}

impl Snapshot for MemSnapshot {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self.tables.cfs[cf as usize].get(key).cloned())
    }

    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>) -> ScanIter<'_> {
        if end.is_some_and(|e| e <= start) {
            return Box::new(std::iter::empty());
        }
        let map = &self.tables.cfs[cf as usize];
        Box::new(
            map.range::<_, [u8]>(scan_bounds(start, end))
                .map(|(k, v)| Ok((k.clone(), v.clone()))),
        )
    }
}
