//! Read and write transactions (etcd's `kvstore_txn.go`).
//!
//! Invariants:
//! - A [`TxnRead`] is pinned at the revision current when it was created and
//!   reads values from a backend snapshot taken right after: later writes and
//!   compactions never change what it returns (reads below a compaction that
//!   happened meanwhile fail with `Compacted`, like etcd).
//! - A [`TxnWrite`] holds the store's writer mutex. All its changes get main
//!   revision `begin + 1` and sub revisions 0, 1, 2, ... in order. They go
//!   into the key index immediately (so its own reads see them; other readers
//!   never ask for a revision above the current one) and into the backend
//!   only at [`TxnWrite::end`], in one batch with the consistent index. A
//!   transaction dropped without `end`, or whose batch fails, removes its
//!   changes from the index again (undo in reverse order).
//! - Range checks: `rev > current` -> `FutureRevision` first, then
//!   `rev < compact_revision` -> `Compacted`, checked under the index read
//!   lock.
//!
//! Ranges in pages: one allocation-free walk of the index under its read
//! lock checks the read revision and counts the range; then the keys are
//! resolved a page of [`StoreOptions::range_chunk_size`](crate::StoreOptions)
//! keys at a time, each page under the read lock (released before its values
//! are fetched from the snapshot) and handed to the caller
//! ([`TxnRead::range_chunks`]). So a range over millions of keys neither
//! holds its keys or key-values at once nor blocks writers for long, and a
//! caller that stops early (a `limit` reached after filtering) looks up and
//! fetches no more. A historical read that a compaction overtakes between
//! two pages fails with `Compacted`, as it would have had it started later.
//!
//! Restores ([`Store::restore`](crate::Store::restore)): a restore holds the
//! writer mutex (so no [`TxnWrite`] is open during it), the restore gate
//! (so no [`TxnRead`] is created during it: `TxnRead::new` waits) and the
//! index write lock (so no index lookup runs during it) while it rewrites
//! the backend. A read transaction created before keeps reading its own
//! snapshot with the old index until the restore swaps the index; its next
//! lookup then sees the restore epoch changed. If that lookup is the
//! range's first (the count), the transaction re-pins to a snapshot of the
//! restored store, at the same revision: `FutureRevision` if the restored
//! store is behind it, `Compacted` if the image is compacted past it, else
//! the restored store's answer (in a raft group the image is a later state
//! of the same history, so the same answer). If the range had already
//! counted or returned pages from the old store, it fails with `Compacted`
//! (as when a compaction overtakes it): a range never mixes the two.
//! While a failed restore left the store incomplete, reads fail with
//! `RestoreIncomplete`.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard, RwLockReadGuard};
use prost::Message;

use super::events;
use super::inner::{decode_kv, Inner};
use super::options::Bucket;
use crate::backend::{Cf, Snapshot, WriteBatch, META_CONSISTENT_INDEX};
use crate::error::{Error, Result};
use crate::index::TreeIndex;
use crate::pb::mvccpb::{event::EventType, Event, KeyValue};
use crate::revision::Revision;

/// Options of a range read.
#[derive(Clone, Copy, Debug, Default)]
pub struct RangeOptions {
    /// Maximum number of key-values returned; 0 (or negative): no limit.
    pub limit: i64,
    /// Revision to read at; 0: the transaction's revision.
    pub rev: i64,
    /// Return only `count`, no key-values.
    pub count_only: bool,
}

/// Result of a range read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RangeResult {
    /// The key-values, sorted by key, at most `limit`.
    pub kvs: Vec<KeyValue>,
    /// The transaction's revision (the store revision of the response
    /// header), not the revision read at.
    pub rev: i64,
    /// Number of keys in the range at the read revision, ignoring `limit`.
    pub count: i64,
}

/// What a chunked range returns besides its chunks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeHeader {
    /// The transaction's revision, as [`RangeResult::rev`].
    pub rev: i64,
    /// Number of keys in the range at the read revision, ignoring `limit`
    /// (and however early the caller stopped), as [`RangeResult::count`].
    pub count: i64,
}

/// Resolves the read revision, checks it against the current and the
/// compaction revision, and counts the range.
fn count_range<'a>(
    inner: &'a Inner,
    src: &Source<'_, 'a>,
    txn_rev: i64,
    key: &[u8],
    end: &[u8],
    opts: RangeOptions,
) -> Result<RangeHeader> {
    if opts.rev > txn_rev {
        return Err(Error::FutureRevision);
    }
    let rev = if opts.rev <= 0 { txn_rev } else { opts.rev };
    let index = index_at(inner, Some(src), rev)?;
    Ok(RangeHeader {
        rev: txn_rev,
        count: index.count(key, end, rev),
    })
}

/// The key index, read-locked for a first read at `rev`: `src` checks a
/// read transaction's restore epoch (None: a write transaction, during
/// which no restore runs), and `rev` must not be compacted.
fn index_at<'i>(
    inner: &'i Inner,
    src: Option<&Source<'_, 'i>>,
    rev: i64,
) -> Result<RwLockReadGuard<'i, TreeIndex>> {
    let index = inner.index.read();
    match src {
        Some(src) => src.check(inner, rev, true)?,
        None => inner.check_complete()?,
    }
    if rev < inner.compact_rev.load(Ordering::Acquire) {
        return Err(Error::Compacted);
    }
    Ok(index)
}

/// What the key index alone says of a live key: enough for a txn compare
/// on its create revision, mod revision or version, without reading its
/// value from the backend (etcd's `applyCompare` reads the whole key-value).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyRevisions {
    /// The revision that created the key's current generation.
    pub create_revision: i64,
    /// The revision of its latest change.
    pub mod_revision: i64,
    /// Its number of changes since creation.
    pub version: i64,
}

/// [`TxnRead::key_revisions`] and [`TxnWrite::key_revisions`]: the index's
/// state of every live key in the range at `rev` (`src` as in [`index_at`]).
fn key_revisions_in<'a>(
    inner: &'a Inner,
    src: Option<&Source<'_, 'a>>,
    rev: i64,
    key: &[u8],
    end: &[u8],
) -> Result<Vec<KeyRevisions>> {
    Ok(index_at(inner, src, rev)?
        .states(key, end, rev)
        .into_iter()
        .map(|at| KeyRevisions {
            create_revision: at.created.main,
            mod_revision: at.modified.main,
            version: at.version,
        })
        .collect())
}

/// The pending changes of a write transaction: its main revision and changes.
type Pending<'c> = Option<(i64, &'c [Change])>;

/// A read transaction's backend snapshot and the restore epoch it belongs to.
struct Pinned<'a> {
    epoch: u64,
    snap: Box<dyn Snapshot + 'a>,
}

/// Where a range reads its values from.
enum Source<'s, 'a> {
    /// A write transaction's snapshot: no restore runs while it is open.
    Fixed(&'s dyn Snapshot),
    /// A read transaction's snapshot, re-pinned after a restore.
    Pinned(&'s Mutex<Pinned<'a>>),
}

impl<'a> Source<'_, 'a> {
    /// Under the index read lock: fails while the store is incomplete, and
    /// handles a read transaction whose snapshot predates a restore (the
    /// index now belongs to the restored store): at the range's first
    /// lookup (`first`) it re-pins, checking `rev` against the restored
    /// store; later, it fails with `Compacted` (module doc). Taking a
    /// snapshot here is safe: a restore writes only under the index write
    /// lock, and changes the epoch after its writes.
    fn check(&self, inner: &'a Inner, rev: i64, first: bool) -> Result<()> {
        inner.check_complete()?;
        if let Source::Pinned(p) = self {
            let mut p = p.lock();
            let epoch = inner.epoch.load(Ordering::Acquire);
            if p.epoch != epoch {
                if !first {
                    return Err(Error::Compacted);
                }
                p.snap = inner.backend.snapshot();
                p.epoch = epoch;
                if rev > inner.current_rev.load(Ordering::Acquire) {
                    return Err(Error::FutureRevision);
                }
            }
        }
        Ok(())
    }

    fn fetch(&self, pairs: &[(Bytes, Revision)], pending: Pending<'_>) -> Result<Vec<KeyValue>> {
        match self {
            Source::Fixed(s) => fetch(*s, pairs, pending),
            Source::Pinned(p) => fetch(&*p.lock().snap, pairs, pending),
        }
    }
}

/// Fetches the values of `pairs` in order: revisions of the pending write
/// transaction from its changes, the others with one multi-get from `snap`.
fn fetch(
    snap: &dyn Snapshot,
    pairs: &[(Bytes, Revision)],
    pending: Pending<'_>,
) -> Result<Vec<KeyValue>> {
    let own = |r: &Revision| pending.is_some_and(|(w, _)| r.main == w);
    let keys: Vec<[u8; 16]> = pairs
        .iter()
        .filter(|(_, r)| !own(r))
        .map(|(_, r)| r.to_bytes())
        .collect();
    let refs: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    let mut values = snap.multi_get(Cf::Key, &refs)?.into_iter();
    pairs
        .iter()
        .map(|(k, r)| match pending {
            Some((w, changes)) if r.main == w => {
                let c = &changes[r.sub as usize];
                assert!(
                    !c.tombstone && c.kv.key == k,
                    "mvcc: index points to a wrong pending change"
                );
                Ok(c.kv.clone())
            }
            _ => decode_kv(k, *r, values.next().expect("one value per pair").as_deref()),
        })
        .collect()
}

/// The chunked range shared by both transaction kinds.
#[allow(clippy::too_many_arguments)]
fn range_chunks_in<'a, F>(
    inner: &'a Inner,
    txn_rev: i64,
    src: Source<'_, 'a>,
    pending: Pending<'_>,
    key: &[u8],
    end: &[u8],
    opts: RangeOptions,
    mut f: F,
) -> Result<RangeHeader>
where
    F: FnMut(Vec<KeyValue>) -> ControlFlow<()>,
{
    // The count (and the read revision checks) in one allocation-free pass,
    // then the keys a page at a time: each page is looked up under the index
    // read lock, which is released before its values are fetched, so a
    // range over millions of keys neither blocks writers for long nor holds
    // all of its keys at once.
    let header = count_range(inner, &src, txn_rev, key, end, opts)?;
    if opts.count_only {
        return Ok(header);
    }
    let rev = if opts.rev <= 0 { txn_rev } else { opts.rev };
    let page = inner.opts.range_chunk_size.max(1);
    let mut left = if opts.limit > 0 {
        opts.limit as usize
    } else {
        usize::MAX
    };
    let mut from = key.to_vec();
    while left > 0 {
        let pairs = {
            let index = inner.index.read();
            src.check(inner, rev, false)?;
            if rev < inner.compact_rev.load(Ordering::Acquire) {
                // A compaction (or a restore) overtook this historical read
                // between pages.
                return Err(Error::Compacted);
            }
            index.revisions_page(&from, end, rev, page.min(left))
        };
        let Some((last, _)) = pairs.last() else { break };
        from = last.to_vec();
        from.push(0); // the smallest key after `last`
        left -= pairs.len();
        let full = pairs.len() == page;
        if f(src.fetch(&pairs, pending)?).is_break() || !full || end.is_empty() {
            break;
        }
    }
    Ok(header)
}

/// Collects the chunks of a range into a [`RangeResult`].
fn collect(
    chunks: impl FnOnce(&mut dyn FnMut(Vec<KeyValue>) -> ControlFlow<()>) -> Result<RangeHeader>,
) -> Result<RangeResult> {
    let mut kvs = Vec::new();
    let h = chunks(&mut |chunk| {
        kvs.extend(chunk);
        ControlFlow::Continue(())
    })?;
    Ok(RangeResult {
        kvs,
        rev: h.rev,
        count: h.count,
    })
}

/// A read transaction pinned at one revision.
pub struct TxnRead<'a> {
    inner: &'a Inner,
    rev: i64,
    pinned: Mutex<Pinned<'a>>,
}

impl<'a> TxnRead<'a> {
    pub(super) fn new(inner: &'a Inner) -> Self {
        // Under the restore gate (waits for a running restore): load the
        // revision first, then snapshot: the snapshot then contains every
        // batch up to `rev` (published after its write).
        let _gate = inner.gate.read();
        let epoch = inner.epoch.load(Ordering::Acquire);
        let rev = inner.current_rev.load(Ordering::Acquire);
        let snap = inner.backend.snapshot();
        TxnRead {
            inner,
            rev,
            pinned: Mutex::new(Pinned { epoch, snap }),
        }
    }

    /// The revision this transaction reads at.
    pub fn rev(&self) -> i64 {
        self.rev
    }

    /// Keys in the range at `opts.rev` (0: this transaction's revision).
    /// `end` empty: the single key `key`; `end == [0]`: all keys `>= key`;
    /// otherwise `[key, end)`. Collects [`range_chunks`](Self::range_chunks).
    pub fn range(&self, key: &[u8], end: &[u8], opts: RangeOptions) -> Result<RangeResult> {
        collect(|f| self.range_chunks(key, end, opts, f))
    }

    /// The revisions and versions of the live keys in the range (same
    /// conventions as [`range`](Self::range)) at this transaction's
    /// revision, in key order, from the key index alone: no value is read.
    pub fn key_revisions(&self, key: &[u8], end: &[u8]) -> Result<Vec<KeyRevisions>> {
        key_revisions_in(
            self.inner,
            Some(&Source::Pinned(&self.pinned)),
            self.rev,
            key,
            end,
        )
    }

    /// [`range`](Self::range) in chunks: calls `f` with the key-values in
    /// key order, at most `range_chunk_size` at a time (never with an empty
    /// chunk), until they are exhausted or `f` returns `Break`. Errors
    /// (`FutureRevision`, `Compacted`) come before any chunk; a
    /// `count_only` read calls `f` never. The returned `count` covers the
    /// whole range however early `f` stopped. See the module doc for the
    /// memory and locking this bounds.
    pub fn range_chunks<F>(
        &self,
        key: &[u8],
        end: &[u8],
        opts: RangeOptions,
        f: F,
    ) -> Result<RangeHeader>
    where
        F: FnMut(Vec<KeyValue>) -> ControlFlow<()>,
    {
        range_chunks_in(
            self.inner,
            self.rev,
            Source::Pinned(&self.pinned),
            None,
            key,
            end,
            opts,
            f,
        )
    }
}

/// One change of a write transaction; its revision is `(begin + 1, position)`.
struct Change {
    /// The stored key-value (for a delete: only the key, like etcd).
    kv: KeyValue,
    /// The deleted key-value (a delete reads it anyway); None for a put.
    prev: Option<KeyValue>,
    tombstone: bool,
    /// The key's latest revision before the change (for undo).
    prev_modified: Revision,
}

/// The exclusive write transaction.
pub struct TxnWrite<'a> {
    inner: &'a Inner,
    _writer: MutexGuard<'a, ()>,
    begin_rev: i64,
    changes: Vec<Change>,
    aux: Vec<(Bucket, Vec<u8>, Option<Vec<u8>>)>,
    done: bool,
}

impl<'a> TxnWrite<'a> {
    pub(super) fn new(inner: &'a Inner) -> Self {
        let writer = inner.writer.lock();
        let begin_rev = inner.current_rev.load(Ordering::Acquire);
        TxnWrite {
            inner,
            _writer: writer,
            begin_rev,
            changes: Vec::new(),
            aux: Vec::new(),
            done: false,
        }
    }

    /// The revision this transaction's reads see: the current revision, or
    /// current + 1 once it has changes.
    pub fn rev(&self) -> i64 {
        if self.changes.is_empty() {
            self.begin_rev
        } else {
            self.begin_rev + 1
        }
    }

    fn write_rev(&self) -> i64 {
        self.begin_rev + 1
    }

    /// Value of `rev` of `key`: from this transaction or from RocksDB.
    fn kv_at(&self, key: &[u8], rev: Revision) -> Result<KeyValue> {
        if rev.main == self.write_rev() {
            let c = &self.changes[rev.sub as usize];
            assert!(
                !c.tombstone && c.kv.key == key,
                "mvcc: index points to a wrong pending change"
            );
            Ok(c.kv.clone())
        } else {
            self.inner.get_kv(key, rev)
        }
    }

    /// Like [`TxnRead::range`], at [`rev`](Self::rev) by default; sees this
    /// transaction's own earlier puts and deletes.
    pub fn range(&self, key: &[u8], end: &[u8], opts: RangeOptions) -> Result<RangeResult> {
        collect(|f| self.range_chunks(key, end, opts, f))
    }

    /// Like [`TxnRead::key_revisions`], at [`rev`](Self::rev); sees this
    /// transaction's own earlier puts and deletes (the index holds them).
    pub fn key_revisions(&self, key: &[u8], end: &[u8]) -> Result<Vec<KeyRevisions>> {
        key_revisions_in(self.inner, None, self.rev(), key, end)
    }

    /// Like [`TxnRead::range_chunks`], at [`rev`](Self::rev) by default;
    /// sees this transaction's own earlier puts and deletes.
    pub fn range_chunks<F>(
        &self,
        key: &[u8],
        end: &[u8],
        opts: RangeOptions,
        f: F,
    ) -> Result<RangeHeader>
    where
        F: FnMut(Vec<KeyValue>) -> ControlFlow<()>,
    {
        // Snapshot before the index lookup (see TxnRead::new): protects reads
        // of old revisions against a concurrent physical compaction.
        let snap = self.inner.backend.snapshot();
        let pending = Some((self.write_rev(), &self.changes[..]));
        range_chunks_in(
            self.inner,
            self.rev(),
            Source::Fixed(&*snap),
            pending,
            key,
            end,
            opts,
            f,
        )
    }

    /// Puts `key = value` with `lease` (0: none). The new key-value gets
    /// `mod_revision = rev()`, keeps the `create_revision` of a live key and
    /// increments its version.
    ///
    /// The previous value is not read (its PUT event carries no `prev_kv`):
    /// reading it was a backend get per put that almost no put needs. As in
    /// etcd, who wants it reads the key at `mod_revision - 1` (a
    /// `prev_kv` put response reads it before the put; the watch hub only
    /// for watchers that asked).
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<()> {
        let rev = self.write_rev();
        let key = Bytes::copy_from_slice(key);
        let idx_rev = Revision::new(rev, self.changes.len() as i64);
        let (prev_at, prev_modified) = self.inner.index.write().get_and_put(&key, idx_rev, rev);
        let (create_revision, version) = match prev_at {
            Some(at) => (at.created.main, at.version + 1),
            None => (rev, 1),
        };
        self.changes.push(Change {
            kv: KeyValue {
                key,
                create_revision,
                mod_revision: rev,
                version,
                value: Bytes::copy_from_slice(value),
                lease,
            },
            prev: None,
            tombstone: false,
            prev_modified,
        });
        Ok(())
    }

    /// Deletes the keys in the range (same conventions as `range`); returns
    /// the deleted key-values. Deleting nothing changes nothing (the revision
    /// is not bumped).
    pub fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Result<Vec<KeyValue>> {
        let (pairs, _) = self.inner.index.read().revisions(key, end, self.rev(), 0);
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let prevs = pairs
            .iter()
            .map(|(k, r)| self.kv_at(k, *r))
            .collect::<Result<Vec<_>>>()?;
        let rev = self.write_rev();
        let mut index = self.inner.index.write();
        for ((k, _), prev) in pairs.into_iter().zip(prevs.iter()) {
            let idx_rev = Revision::new(rev, self.changes.len() as i64);
            let prev_modified = index
                .tombstone(&k, idx_rev)
                .expect("mvcc: deleting a key the index just returned as live");
            self.changes.push(Change {
                kv: KeyValue {
                    key: k,
                    ..Default::default()
                },
                prev: Some(prev.clone()),
                tombstone: true,
                prev_modified,
            });
        }
        Ok(prevs)
    }

    /// Puts a record into an auxiliary bucket (written at `end`).
    pub fn put_aux(&mut self, b: Bucket, key: &[u8], value: &[u8]) {
        self.aux.push((b, key.to_vec(), Some(value.to_vec())));
    }

    /// Deletes a record of an auxiliary bucket (at `end`).
    pub fn delete_aux(&mut self, b: Bucket, key: &[u8]) {
        self.aux.push((b, key.to_vec(), None));
    }

    /// Commits: ONE backend batch with all key changes, aux changes and the
    /// consistent index (always written, even without changes). Returns the
    /// events in order: PUT with `kv` (no `prev_kv`, see [`put`](Self::put));
    /// DELETE with `kv = {key, mod_revision}` and `prev_kv`.
    ///
    /// On error nothing is committed and the index changes are undone.
    pub fn end(mut self, consistent_index: u64) -> Result<Vec<Event>> {
        self.inner.check_complete()?; // Drop undoes the index changes
        let rev = self.write_rev();
        let mut batch = WriteBatch::default();
        for (i, c) in self.changes.iter().enumerate() {
            let mut buf = Vec::with_capacity(c.kv.encoded_len());
            c.kv.encode(&mut buf).expect("Vec grows");
            batch.put(
                Cf::Key,
                Revision::new(rev, i as i64).to_key(c.tombstone),
                buf,
            );
        }
        for (bucket, k, v) in std::mem::take(&mut self.aux) {
            match v {
                Some(v) => batch.put(bucket.cf(), k, v),
                None => batch.delete(bucket.cf(), k),
            }
        }
        batch.put(
            Cf::Meta,
            META_CONSISTENT_INDEX,
            consistent_index.to_be_bytes(),
        );
        let timer = self.inner.commit_seconds.start_timer();
        let bytes = batch.bytes();
        self.inner.backend.write(batch)?; // on error, Drop undoes the index changes
        timer.observe_duration();
        self.inner.size.committed(bytes);
        self.done = true;
        if !self.changes.is_empty() {
            self.inner.current_rev.store(rev, Ordering::Release);
        }
        self.inner
            .consistent_index
            .store(consistent_index, Ordering::Release);
        let changes = std::mem::take(&mut self.changes);
        let events: Vec<Event> = changes
            .into_iter()
            .map(|c| {
                if c.tombstone {
                    Event {
                        r#type: EventType::Delete as i32,
                        kv: Some(KeyValue {
                            key: c.kv.key,
                            mod_revision: rev,
                            ..Default::default()
                        }),
                        prev_kv: c.prev,
                    }
                } else {
                    Event {
                        r#type: EventType::Put as i32,
                        kv: Some(c.kv),
                        prev_kv: c.prev,
                    }
                }
            })
            .collect();
        if !events.is_empty() {
            // Still under the writer mutex: subscribers see revisions in order.
            events::publish(&self.inner.subscribers.read(), rev, &events);
        }
        Ok(events)
    }
}

impl Drop for TxnWrite<'_> {
    fn drop(&mut self) {
        if self.done || self.changes.is_empty() {
            return;
        }
        // Not committed: remove this transaction's revisions from the index.
        let rev = self.write_rev();
        let mut index = self.inner.index.write();
        for (i, c) in self.changes.iter().enumerate().rev() {
            let r = Revision::new(rev, i as i64);
            if c.tombstone {
                index.undo_tombstone(&c.kv.key, r, c.prev_modified);
            } else {
                index.undo_put(&c.kv.key, r, c.prev_modified);
            }
        }
    }
}
