//! RocksDB backend: column families, meta records, write and flush policy.
//!
//! Column families (see `docs/mvcc.md` for the byte layouts):
//!
//! | name      | key                                   | value                        |
//! |-----------|---------------------------------------|------------------------------|
//! | `key`     | revision `main:8 BE, sub:8 BE [, 't']`| protobuf `mvccpb.KeyValue`   |
//! | `meta`    | ASCII name (see `META_*`)             | 8 bytes big-endian integer   |
//! | `lease`, `auth`, `members`, `alarm` | owned by upper layers | owned by upper layers |
//!
//! Durability model: the raft WAL is the source of durability. Batches are
//! written with the RocksDB WAL disabled and without sync; `atomic_flush`
//! makes every flush cover all column families at one sequence number, so the
//! files on disk always hold a *prefix* of the applied batches, and the
//! consistent index in `meta` says exactly which prefix. After a crash the
//! raft layer re-applies the entries after [`Store::consistent_index`].
//!
//! [`Store::consistent_index`]: crate::Store::consistent_index

use std::path::Path;

use rocksdb::{
    BottommostLevelCompaction, ColumnFamily, ColumnFamilyDescriptor, CompactOptions,
    DBCompressionType, FlushOptions, Options, WriteBatch, WriteOptions, DB,
};

use crate::error::{Error, Result};

/// Column family of key revisions.
pub(crate) const CF_KEY: &str = "key";
/// Column family of store metadata.
pub(crate) const CF_META: &str = "meta";
/// Auxiliary column families, in [`Bucket`](crate::Bucket) order.
pub(crate) const CF_LEASE: &str = "lease";
pub(crate) const CF_AUTH: &str = "auth";
pub(crate) const CF_MEMBERS: &str = "members";
pub(crate) const CF_ALARM: &str = "alarm";
const ALL_CFS: [&str; 6] = [CF_KEY, CF_META, CF_LEASE, CF_AUTH, CF_MEMBERS, CF_ALARM];

/// `meta` key: index of the last applied raft entry (u64 BE).
pub(crate) const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";
/// `meta` key: the latest scheduled compaction revision (i64 BE).
pub(crate) const META_SCHEDULED_COMPACT: &[u8] = b"scheduled_compact_rev";
/// `meta` key: the latest compaction revision whose physical removal finished (i64 BE).
pub(crate) const META_FINISHED_COMPACT: &[u8] = b"finished_compact_rev";
/// `meta` key: on-disk format version (u64 BE).
pub(crate) const META_FORMAT_VERSION: &[u8] = b"format_version";

/// The on-disk format this build writes and understands.
pub const FORMAT_VERSION: u64 = 1;

/// The RocksDB database with the store's column families.
pub(crate) struct Backend {
    pub(crate) db: DB,
}

impl Backend {
    pub(crate) fn open(dir: &Path) -> Result<Backend> {
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
        let cfs = ALL_CFS.iter().map(|name| {
            let mut o = Options::default();
            o.set_compression_type(DBCompressionType::None);
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs)?;
        let b = Backend { db };
        b.check_format()?;
        Ok(b)
    }

    fn check_format(&self) -> Result<()> {
        match self.meta_u64(META_FORMAT_VERSION)? {
            Some(v) if v > FORMAT_VERSION => Err(Error::UnsupportedFormat {
                found: v,
                supported: FORMAT_VERSION,
            }),
            Some(_) => Ok(()),
            None => {
                let mut batch = WriteBatch::default();
                batch.put_cf(
                    self.cf(CF_META),
                    META_FORMAT_VERSION,
                    FORMAT_VERSION.to_be_bytes(),
                );
                self.write(batch)?;
                // make the format version durable right away
                self.flush()
            }
        }
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| panic!("column family {name} opened"))
    }

    pub(crate) fn key_cf(&self) -> &ColumnFamily {
        self.cf(CF_KEY)
    }

    pub(crate) fn meta_cf(&self) -> &ColumnFamily {
        self.cf(CF_META)
    }

    /// Writes a batch: RocksDB WAL disabled, no sync (see the module doc).
    pub(crate) fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        wo.set_sync(false);
        self.db.write_opt(batch, &wo)?;
        Ok(())
    }

    pub(crate) fn meta_u64(&self, key: &[u8]) -> Result<Option<u64>> {
        match self.db.get_pinned_cf(self.meta_cf(), key)? {
            None => Ok(None),
            Some(v) => {
                let b: [u8; 8] = v.as_ref().try_into().map_err(|_| {
                    Error::Corruption(format!(
                        "meta record {} has {} bytes, want 8",
                        String::from_utf8_lossy(key),
                        v.len()
                    ))
                })?;
                Ok(Some(u64::from_be_bytes(b)))
            }
        }
    }

    pub(crate) fn meta_i64(&self, key: &[u8]) -> Result<Option<i64>> {
        Ok(self.meta_u64(key)?.map(|v| v as i64))
    }

    /// Flushes the memtables of all column families (atomically) and waits.
    pub(crate) fn flush(&self) -> Result<()> {
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        let mut cfs: Vec<&ColumnFamily> = ALL_CFS.iter().map(|n| self.cf(n)).collect();
        if let Some(d) = self.db.cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME) {
            cfs.push(d);
        }
        self.db.flush_cfs_opt(&cfs, &fo)?;
        Ok(())
    }

    /// Manual compaction of every column family (online: RocksDB keeps
    /// serving reads and writes).
    pub(crate) fn compact_all(&self) -> Result<()> {
        self.flush()?;
        let mut co = CompactOptions::default();
        co.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        co.set_exclusive_manual_compaction(false);
        for name in ALL_CFS {
            self.db
                .compact_range_cf_opt(self.cf(name), None::<&[u8]>, None::<&[u8]>, &co);
        }
        Ok(())
    }

    /// Estimated live bytes: live data in SST files plus memtables.
    pub(crate) fn size_in_use(&self) -> u64 {
        let mut total = 0;
        for name in ALL_CFS {
            let cf = self.cf(name);
            for prop in [
                "rocksdb.estimate-live-data-size",
                "rocksdb.cur-size-all-mem-tables",
            ] {
                total += self
                    .db
                    .property_int_value_cf(cf, prop)
                    .ok()
                    .flatten()
                    .unwrap_or(0);
            }
        }
        total
    }
}

/// Total size in bytes of the files under `dir` (the RocksDB directory).
pub(crate) fn dir_size(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else {
            return 0;
        };
        rd.flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    walk(dir)
}
