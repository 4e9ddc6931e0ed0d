//! The in-memory tree index: key -> [`KeyIndex`] (etcd's `treeIndex`).
//!
//! Invariants:
//! - The map holds exactly the keys that have some history that is not
//!   compacted away; a key whose [`KeyIndex`] became empty is removed.
//! - Keys are iterated in ascending byte order, so range results are sorted.
//! - The index may contain revisions above the store's current revision while
//!   a write transaction is open (they belong to that transaction); readers
//!   always pass an explicit revision `<=` the current one and so never see them.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use bytes::Bytes;

use crate::key_index::{KeyAt, KeyIndex};
use crate::revision::Revision;

/// Bounds of a key range in the tree.
pub(crate) type KeyBounds<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The key range selected by `(key, end)`, with etcd's conventions:
/// - `end` empty: the single key `key`;
/// - `end == [0]`: every key `>= key`;
/// - otherwise the half-open interval `[key, end)` (empty if `end <= key`).
///
/// Returns None for an empty interval.
pub(crate) fn range_bounds<'a>(key: &'a [u8], end: &'a [u8]) -> Option<KeyBounds<'a>> {
    if end.is_empty() {
        Some((Bound::Included(key), Bound::Included(key)))
    } else if end == [0] {
        Some((Bound::Included(key), Bound::Unbounded))
    } else if end <= key {
        None
    } else {
        Some((Bound::Included(key), Bound::Excluded(end)))
    }
}

/// Key -> history of the key.
#[derive(Debug, Default)]
pub(crate) struct TreeIndex {
    tree: BTreeMap<Bytes, KeyIndex>,
}

impl TreeIndex {
    pub(crate) fn len(&self) -> usize {
        self.tree.len()
    }

    fn visit<'a>(
        &'a self,
        key: &'a [u8],
        end: &'a [u8],
    ) -> impl Iterator<Item = (&'a Bytes, &'a KeyIndex)> + 'a {
        range_bounds(key, end)
            .map(|b| self.tree.range::<[u8], _>(b))
            .into_iter()
            .flatten()
    }

    /// The key as of `at_rev`.
    pub(crate) fn get(&self, key: &[u8], at_rev: i64) -> Option<KeyAt> {
        self.tree.get(key)?.get(at_rev)
    }

    /// Live keys in the range at `at_rev` with their revision: at most
    /// `limit` pairs (`limit == 0`: all) and the total number of live keys.
    pub(crate) fn revisions(
        &self,
        key: &[u8],
        end: &[u8],
        at_rev: i64,
        limit: usize,
    ) -> (Vec<(Bytes, Revision)>, i64) {
        let mut out = Vec::new();
        let mut total = 0i64;
        for (k, ki) in self.visit(key, end) {
            if let Some(at) = ki.get(at_rev) {
                if limit == 0 || out.len() < limit {
                    out.push((k.clone(), at.modified));
                }
                total += 1;
            }
        }
        (out, total)
    }

    /// Number of live keys in the range at `at_rev`.
    pub(crate) fn count(&self, key: &[u8], end: &[u8], at_rev: i64) -> i64 {
        self.visit(key, end)
            .filter(|(_, ki)| ki.get(at_rev).is_some())
            .count() as i64
    }

    /// Records a put; returns the key's previous latest revision
    /// (`Revision::default()` for a new key), needed to undo it.
    pub(crate) fn put(&mut self, key: &Bytes, rev: Revision) -> Revision {
        let ki = self.tree.entry(key.clone()).or_default();
        let prev = ki.modified;
        ki.put(rev);
        prev
    }

    /// Records a delete of a live key; returns the previous latest revision,
    /// or None if the key is not live (nothing changed).
    pub(crate) fn tombstone(&mut self, key: &[u8], rev: Revision) -> Option<Revision> {
        let ki = self.tree.get_mut(key)?;
        let prev = ki.modified;
        ki.tombstone(rev).then_some(prev)
    }

    /// Undoes a [`put`](Self::put).
    pub(crate) fn undo_put(&mut self, key: &[u8], rev: Revision, prev: Revision) {
        let ki = self
            .tree
            .get_mut(key)
            .expect("undo_put: key missing from the index");
        if ki.undo_put(rev, prev) {
            self.tree.remove(key);
        }
    }

    /// Undoes a [`tombstone`](Self::tombstone).
    pub(crate) fn undo_tombstone(&mut self, key: &[u8], rev: Revision, prev: Revision) {
        let ki = self
            .tree
            .get_mut(key)
            .expect("undo_tombstone: key missing from the index");
        if ki.undo_tombstone(rev, prev) {
            self.tree.remove(key);
        }
    }

    /// Rebuild: applies one stored revision while scanning the `key` column
    /// family in revision order.
    pub(crate) fn restore(
        &mut self,
        key: Bytes,
        rev: Revision,
        tombstone: bool,
        created: i64,
        version: i64,
    ) {
        match self.tree.get_mut(&key) {
            Some(ki) => {
                if tombstone {
                    if !ki.tombstone(rev) {
                        tracing::warn!(
                            ?rev,
                            "mvcc restore: tombstone of a key that is not live; ignored"
                        );
                    }
                } else {
                    ki.put(rev);
                }
            }
            // A tombstone whose generation start was already compacted away
            // (interrupted physical compaction): nothing to restore.
            None if tombstone => {}
            None => {
                self.tree.insert(
                    key,
                    KeyIndex::restored(Revision::new(created, 0), rev, version),
                );
            }
        }
    }

    /// All keys (for chunked compaction).
    pub(crate) fn keys(&self) -> Vec<Bytes> {
        self.tree.keys().cloned().collect()
    }

    /// Compacts the given keys at `at_rev`, adding the kept revisions to `keep`.
    pub(crate) fn compact_keys(
        &mut self,
        keys: &[Bytes],
        at_rev: i64,
        keep: &mut HashSet<Revision>,
    ) {
        for k in keys {
            if let Some(ki) = self.tree.get_mut(k) {
                ki.compact(at_rev, keep);
                if ki.is_empty() {
                    self.tree.remove(k);
                }
            }
        }
    }

    /// The revisions a compaction at `at_rev` keeps.
    pub(crate) fn keep(&self, at_rev: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        for ki in self.tree.values() {
            ki.keep(at_rev, &mut keep);
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_conventions() {
        assert_eq!(
            range_bounds(b"a", b""),
            Some((Bound::Included(&b"a"[..]), Bound::Included(&b"a"[..])))
        );
        assert_eq!(
            range_bounds(b"a", &[0]),
            Some((Bound::Included(&b"a"[..]), Bound::Unbounded))
        );
        assert_eq!(
            range_bounds(b"a", b"c"),
            Some((Bound::Included(&b"a"[..]), Bound::Excluded(&b"c"[..])))
        );
        assert_eq!(range_bounds(b"c", b"a"), None);
        assert_eq!(range_bounds(b"a", b"a"), None);
    }

    #[test]
    fn revisions_and_count() {
        let mut ti = TreeIndex::default();
        for (i, k) in ["a", "b", "c", "d"].iter().enumerate() {
            ti.put(
                &Bytes::from_static(k.as_bytes()),
                Revision::new(i as i64 + 2, 0),
            );
        }
        ti.tombstone(b"b", Revision::new(6, 0)).unwrap();
        let (revs, total) = ti.revisions(b"a", &[0], 6, 2);
        assert_eq!(total, 3);
        assert_eq!(revs.len(), 2);
        assert_eq!(revs[0].0, "a");
        assert_eq!(revs[1].0, "c");
        assert_eq!(ti.count(b"a", &[0], 5), 4);
        assert_eq!(ti.count(b"b", b"d", 6), 1);
        assert_eq!(ti.count(b"d", b"b", 6), 0);
        assert!(ti.tombstone(b"b", Revision::new(7, 0)).is_none());
        assert!(ti.tombstone(b"zz", Revision::new(7, 0)).is_none());

        let mut keep = HashSet::new();
        let keys = ti.keys();
        assert_eq!(
            ti.keep(6),
            HashSet::from([
                Revision::new(2, 0),
                Revision::new(4, 0),
                Revision::new(5, 0)
            ])
        );
        ti.compact_keys(&keys, 6, &mut keep);
        assert_eq!(ti.len(), 3, "deleted key b dropped");
        assert_eq!(keep.len(), 3);
    }
}
