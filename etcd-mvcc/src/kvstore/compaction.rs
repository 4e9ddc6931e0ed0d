//! Background compaction (etcd's `kvstore_compaction.go`).
//!
//! [`Store::compact`](crate::Store::compact) only records the scheduled
//! revision `C` (in `meta`, with the consistent index) and raises the
//! compaction revision; one background thread then:
//!
//! 1. compacts the key index in chunks of `compaction_batch_limit` keys, each
//!    chunk under the writer mutex and the index write lock (so an open
//!    `TxnWrite` is never interleaved with it), collecting the revisions to
//!    keep (per key the latest revision `<= C` unless it is a tombstone);
//! 2. scans the `key` column family from the first revision up to `C`
//!    in batches of `compaction_batch_limit` revisions, deleting each revision
//!    not kept, one backend batch each, pausing `compaction_sleep_interval`
//!    in between;
//! 3. records `C` as the finished compaction revision in `meta`.
//!
//! Invariants:
//! - Reads at revisions `>= C` give the same results before, during and after
//!   the compaction: only revisions no such read can return are deleted.
//! - Deletes are written in revision order and the finished revision last, so
//!   any persisted prefix is a valid state; if the store is closed or crashes
//!   before step 3, [`Store::open`](crate::Store::open) sees
//!   `scheduled > finished` and runs the compaction again (it is idempotent).
//! - Jobs are processed in order; if several are pending only the highest
//!   runs (it covers the lower ones).
//! - A restore from a snapshot image ([`Store::restore`](crate::Store::restore))
//!   replaces the history underneath: each job carries the store's restore
//!   epoch, checked under the writer mutex (index chunks) or the restore
//!   gate (physical batches, the finished mark), so a job started before a
//!   restore stops at its next step without touching the restored data;
//!   [`CompactWait`]s of that epoch return.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;

use super::inner::Inner;
use crate::backend::{Cf, WriteBatch, META_FINISHED_COMPACT};
use crate::error::Result;
use crate::revision::Revision;

pub(super) fn spawn(inner: Arc<Inner>) -> Result<JoinHandle<()>> {
    Ok(std::thread::Builder::new()
        .name("mvcc-compaction".into())
        .spawn(move || {
            while let Some((rev, epoch)) = inner.compaction.next_job() {
                match run(&inner, rev, epoch) {
                    Ok(Outcome::Finished) => {
                        tracing::info!(revision = rev, "mvcc compaction finished");
                        inner.size.invalidate();
                        inner.compaction.done(rev, true, epoch);
                    }
                    Ok(Outcome::Shutdown) => return, // resumes at next open
                    Ok(Outcome::Restored) => {
                        tracing::info!(
                            revision = rev,
                            "mvcc compaction abandoned: the store was restored from a snapshot"
                        );
                        inner.compaction.done(rev, false, epoch);
                    }
                    Err(e) => {
                        tracing::error!(revision = rev, error = %e, "mvcc compaction failed");
                        inner.compaction.done(rev, false, epoch);
                    }
                }
            }
        })?)
}

/// How a compaction job ended.
enum Outcome {
    Finished,
    /// The store is closing.
    Shutdown,
    /// A restore replaced the store (its epoch changed).
    Restored,
}

/// Runs one compaction of the store as of restore epoch `epoch`.
fn run(inner: &Inner, rev: i64, epoch: u64) -> Result<Outcome> {
    let limit = inner.opts.compaction_batch_limit.max(1);
    let stopping = || inner.shutdown.load(Ordering::Acquire);
    let restored = || inner.epoch.load(Ordering::Acquire) != epoch;

    // 1. key index, in chunks of keys
    // Each chunk's keys are read under the index read lock and compacted
    // under the writer mutex: no lock is held for more than one chunk, so
    // writers wait at most one chunk however large the index is.
    let mut keep: HashSet<Revision> = HashSet::new();
    let mut start: Vec<u8> = Vec::new(); // the empty key: the first
    loop {
        if stopping() {
            return Ok(Outcome::Shutdown);
        }
        let chunk = inner.index.read().keys_from(&start, limit);
        let Some(last) = chunk.last() else { break };
        start = last.to_vec();
        start.push(0); // the smallest key after `last`
        let _writer = inner.writer.lock();
        if restored() {
            return Ok(Outcome::Restored);
        }
        inner.index.write().compact_keys(&chunk, rev, &mut keep);
        drop(_writer);
        std::thread::yield_now();
    }

    // 2. physical removal of superseded revisions <= rev
    let b = &inner.backend;
    let upper = Revision::new(rev + 1, 0).to_bytes();
    let mut start: Vec<u8> = Vec::new();
    let mut removed = 0usize;
    loop {
        if stopping() {
            return Ok(Outcome::Shutdown);
        }
        let mut batch = WriteBatch::default();
        let mut scanned = 0;
        let mut last: Option<Bytes> = None;
        let mut more = false;
        // The restore gate from the epoch check to the write: a restore
        // either finished before (the check fails) or starts after it.
        let gate = inner.gate.read();
        if restored() {
            return Ok(Outcome::Restored);
        }
        {
            // A fresh snapshot per batch: it sees the previous batch's deletes.
            let snap = b.snapshot();
            for item in snap.scan(Cf::Key, &start, Some(&upper)) {
                let (k, _) = item?;
                if scanned == limit {
                    more = true;
                    break;
                }
                let (r, _) = Revision::from_key(&k)?;
                debug_assert!(r.main <= rev);
                if !keep.contains(&r) {
                    batch.delete(Cf::Key, k.to_vec());
                    removed += 1;
                }
                last = Some(k);
                scanned += 1;
            }
        }
        if !batch.is_empty() {
            b.write(batch)?;
            fail::fail_point!("compact::mid");
        }
        drop(gate);
        if !more {
            break;
        }
        let mut next = last.expect("scanned at least one key").to_vec();
        next.push(0); // the smallest key after `last`
        start = next;
        if inner.compaction.sleep(inner.opts.compaction_sleep_interval) {
            return Ok(Outcome::Shutdown);
        }
    }

    // 3. done
    let gate = inner.gate.read();
    if restored() {
        return Ok(Outcome::Restored);
    }
    let mut batch = WriteBatch::default();
    batch.put(Cf::Meta, META_FINISHED_COMPACT, rev.to_be_bytes());
    b.write(batch)?;
    drop(gate);
    tracing::debug!(
        revision = rev,
        removed,
        kept = keep.len(),
        "mvcc physical compaction done"
    );
    Ok(Outcome::Finished)
}
