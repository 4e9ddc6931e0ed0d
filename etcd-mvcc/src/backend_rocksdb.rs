//! The RocksDB backend (cargo feature `rocksdb`): one column family per
//! [`Cf`], write and flush policy.
//!
//! Durability model: the raft WAL is the source of durability. Batches are
//! written with the RocksDB WAL disabled and without sync; `atomic_flush`
//! makes every flush cover all column families at one sequence number, so the
//! files on disk always hold a *prefix* of the applied batches, and the
//! consistent index in `meta` says exactly which prefix. After a crash the
//! raft layer re-applies the entries after
//! [`Store::consistent_index`](crate::Store::consistent_index).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use rocksdb::{
    BottommostLevelCompaction, ColumnFamily, ColumnFamilyDescriptor, CompactOptions,
    DBCompressionType, Direction, FlushOptions, IteratorMode, Options, ReadOptions,
    SnapshotWithThreadMode, WriteOptions, DB,
};

use crate::backend::{Backend, BatchOp, Cf, ScanIter, Snapshot, WriteBatch};
use crate::error::{Error, Result};

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Storage(e.into_string())
    }
}

/// The RocksDB database in a directory, with the store's column families.
pub struct RocksBackend {
    db: DB,
    dir: PathBuf,
}

impl std::fmt::Debug for RocksBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksBackend")
            .field("dir", &self.dir)
            .finish()
    }
}

impl RocksBackend {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<RocksBackend> {
        std::fs::create_dir_all(dir)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_atomic_flush(true);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(4);
        opts.set_max_log_file_size(16 << 20);
        opts.set_compression_type(DBCompressionType::None);
        // RocksDB's default `avoid_flush_during_shutdown = false` flushes the
        // memtables at close, which matters with the WAL disabled; Store's
        // Drop also flushes explicitly.
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut o = Options::default();
            o.set_compression_type(DBCompressionType::None);
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        Ok(RocksBackend {
            db,
            dir: dir.to_path_buf(),
        })
    }

    fn cf(&self, cf: Cf) -> &ColumnFamily {
        self.db
            .cf_handle(cf.name())
            .unwrap_or_else(|| panic!("column family {} opened", cf.name()))
    }
}

impl Backend for RocksBackend {
    /// One RocksDB `WriteBatch`, RocksDB WAL disabled, no sync (see the module doc).
    fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut rb = rocksdb::WriteBatch::default();
        for op in batch.ops() {
            match op {
                BatchOp::Put { cf, key, value } => rb.put_cf(self.cf(*cf), key, value),
                BatchOp::Delete { cf, key } => rb.delete_cf(self.cf(*cf), key),
            }
        }
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        wo.set_sync(false);
        self.db.write_opt(rb, &wo)?;
        Ok(())
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(cf), key)?
            .map(|v| Bytes::copy_from_slice(&v)))
    }

    fn snapshot(&self) -> Box<dyn Snapshot + '_> {
        Box::new(RocksSnapshot {
            backend: self,
            snap: self.db.snapshot(),
        })
    }

    /// Flushes the memtables of all column families (atomically) and waits.
    fn flush(&self) -> Result<()> {
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        let mut cfs: Vec<&ColumnFamily> = Cf::ALL.iter().map(|cf| self.cf(*cf)).collect();
        if let Some(d) = self.db.cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME) {
            cfs.push(d);
        }
        self.db.flush_cfs_opt(&cfs, &fo)?;
        Ok(())
    }

    /// Flush, then a manual compaction of every column family (bottommost
    /// level forced). Online: RocksDB keeps serving reads and writes.
    fn defragment(&self) -> Result<()> {
        self.flush()?;
        let mut co = CompactOptions::default();
        co.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        co.set_exclusive_manual_compaction(false);
        for cf in Cf::ALL {
            self.db
                .compact_range_cf_opt(self.cf(cf), None::<&[u8]>, None::<&[u8]>, &co);
            fail::fail_point!("defrag::mid");
        }
        Ok(())
    }

    /// SST files (live, or kept for an older version) plus the memtables
    /// not flushed yet (with RocksDB's WAL off, recent writes live only
    /// there): so the size never reads below what is in use, and the quota
    /// counts unflushed data too. From RocksDB's in-memory accounting:
    /// walking the directory (a `stat` per file) cost more CPU than a put,
    /// and every write asks (the quota check before proposing and at
    /// apply). MANIFEST, OPTIONS and info LOG files are left out.
    fn size(&self) -> u64 {
        self.cf_property_sum("rocksdb.total-sst-files-size")
            + self.cf_property_sum("rocksdb.cur-size-all-mem-tables")
    }

    /// Live data in SST files plus memtables (RocksDB's estimates).
    fn size_in_use(&self) -> u64 {
        self.cf_property_sum("rocksdb.estimate-live-data-size")
            + self.cf_property_sum("rocksdb.cur-size-all-mem-tables")
    }

    fn describe(&self) -> String {
        format!("rocksdb:{}", self.dir.display())
    }
}

impl RocksBackend {
    /// An integer property summed over every column family (0 where unknown).
    fn cf_property_sum(&self, prop: &str) -> u64 {
        Cf::ALL
            .iter()
            .map(|&cf| {
                self.db
                    .property_int_value_cf(self.cf(cf), prop)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            })
            .sum()
    }
}

/// A RocksDB snapshot (sequence number pinned until dropped).
struct RocksSnapshot<'a> {
    backend: &'a RocksBackend,
    snap: SnapshotWithThreadMode<'a, DB>,
}

impl Snapshot for RocksSnapshot<'_> {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Bytes>> {
        Ok(self
            .snap
            .get_pinned_cf_opt(self.backend.cf(cf), key, ReadOptions::default())?
            .map(|v| Bytes::copy_from_slice(&v)))
    }

    fn multi_get(&self, cf: Cf, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&self.snap);
        self.backend
            .db
            .batched_multi_get_cf_opt(self.backend.cf(cf), keys.iter(), false, &ro)
            .into_iter()
            .map(|v| Ok(v?.map(|v| Bytes::copy_from_slice(&v))))
            .collect()
    }

    fn scan(&self, cf: Cf, start: &[u8], end: Option<&[u8]>) -> ScanIter<'_> {
        let mut ro = ReadOptions::default();
        if let Some(end) = end {
            ro.set_iterate_upper_bound(end.to_vec());
        }
        let it = self.snap.iterator_cf_opt(
            self.backend.cf(cf),
            ro,
            IteratorMode::From(start, Direction::Forward),
        );
        Box::new(it.map(|r| {
            let (k, v) = r?;
            Ok((Bytes::from(k), Bytes::from(v)))
        }))
    }
}
