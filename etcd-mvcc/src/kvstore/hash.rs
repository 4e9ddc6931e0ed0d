//! Hash of the key-value history (etcd's `hash.go`), for corruption checks
//! between members.
//!
//! The hash is etcd's: a CRC-32C (Castagnoli) over the bytes `"key"`
//! followed by every `(revision key, stored value)` with main revision
//! `<= rev`, in revision order, skipping the revisions `<=` the compaction
//! revision that compaction does not keep. The revision keys are hashed in
//! etcd's layout (`main:8 BE | '_' | sub:8 BE [| 't']`, where ours has no
//! `'_'`) and the values are the same `mvccpb.KeyValue` bytes, so a member
//! of this server and an etcd member holding the same history give the
//! same hash (a mixed cluster's corruption check compares them). It
//! depends only on the history and the compaction revision, not on how far
//! the physical compaction has progressed.

use std::sync::atomic::Ordering;

use super::inner::Inner;
use crate::backend::Cf;
use crate::error::{Error, Result};
use crate::revision::Revision;

/// Result of [`Store::hash_kv`](crate::Store::hash_kv).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HashKv {
    /// CRC-32C of the history up to `revision`, as etcd computes it.
    pub hash: u32,
    /// The compaction revision when the hash was computed.
    pub compact_revision: i64,
    /// The revision the hash covers (the requested one, or the current one).
    pub revision: i64,
    /// The store's current revision when the hash was computed (what etcd
    /// reports in HashKV's header, whatever revision was asked for).
    pub current_revision: i64,
}

pub(super) fn hash_kv(inner: &Inner, rev: i64) -> Result<HashKv> {
    // Under the index read lock no compaction can start or advance in the
    // index, so `keep` and the snapshot agree with `compact`.
    // A restore writes only under the index write lock: the snapshot taken
    // below is never a half-restored backend.
    let index = inner.index.read();
    inner.check_complete()?;
    let current = inner.current_rev.load(Ordering::Acquire);
    let compact = inner.compact_rev.load(Ordering::Acquire);
    if rev > current {
        return Err(Error::FutureRevision);
    }
    let rev = if rev <= 0 { current } else { rev };
    if rev < compact {
        return Err(Error::Compacted);
    }
    let snap = inner.backend.snapshot();
    let keep = index.keep(compact);
    drop(index);

    let mut h = crc32c::crc32c(b"key");
    let upper = Revision::new(rev + 1, 0).to_bytes();
    for item in snap.scan(Cf::Key, &[], Some(&upper)) {
        let (k, v) = item?;
        let (r, _) = Revision::from_key(&k)?;
        if r.main > compact || keep.contains(&r) {
            h = crc32c::crc32c_append(h, &k[..8]);
            h = crc32c::crc32c_append(h, b"_");
            h = crc32c::crc32c_append(h, &k[8..]);
            h = crc32c::crc32c_append(h, &v);
        }
    }
    Ok(HashKv {
        hash: h,
        compact_revision: compact,
        revision: rev,
        current_revision: current,
    })
}
