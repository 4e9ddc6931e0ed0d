//! The in-memory tree index: key -> [`KeyIndex`] (etcd's `treeIndex`),
//! stored compactly.
//!
//! # Layout
//!
//! The keys are split into *chunks* of at most [`MAX_ENTRIES`] sorted keys
//! (see `index_chunk`): each chunk stores its keys front-coded in one byte
//! vector and their histories as 24-byte [`History`] values (one live
//! revision inline, anything else boxed). The chunks sit in a `BTreeMap`
//! keyed by a *separator*: the chunk under separator `s` holds the keys
//! `>= s` and below the next separator, and the first separator is the empty
//! key, so every key has exactly one chunk: the one with the greatest
//! separator `<=` it. A lookup is one B-tree search plus a sequential scan
//! of at most 64 entries that compares only suffixes (see
//! `Chunk::position`: no key is decoded).
//!
//! - Insert: the key goes into its chunk; a chunk over [`MAX_ENTRIES`]
//!   entries (or [`MAX_KEY_BYTES`] of encoded keys, with two entries or more)
//!   splits: in the middle, or, when the key was appended at the chunk's end
//!   (ascending loads, restores), just before the new key, so ascending loads
//!   leave full chunks behind. The right part's first key becomes its
//!   separator.
//! - Remove (a history became empty, after a compaction or an undone put):
//!   a chunk left with fewer than [`MIN_ENTRIES`] entries is merged with its
//!   right neighbour, or else its left one, when the two fit in one chunk; an
//!   empty chunk always merges away. The first separator (the empty key) is
//!   never removed while keys remain, and stale separators are harmless: a
//!   separator is only a lower bound of its chunk's keys.
//!
//! # Worked example
//!
//! With chunks of at most 4 entries (64 in the code), keys `a`, `b`, `c`,
//! `d` put at revisions 2..5 fill the first chunk; putting `e` appends, so the
//! chunk splits before `e`; putting `bb` then splits the first chunk in the
//! middle:
//!
//! ```text
//! {"": [a b c d]}                    -> {"": [a b c d], "e": [e]}
//! {"": [a b bb c d], "e": [e]}       -> {"": [a b], "bb": [bb c d], "e": [e]}
//! ```
//!
//! Reading `c` searches the map for the greatest separator `<= "c"` (`"bb"`)
//! and decodes that chunk from its start until it meets `c` (stored as
//! `[0, 1, "c"]`: nothing shared with `bb`). Deleting and compacting `bb`, `c` and `d` leaves their chunk
//! empty; it merges with `e`'s chunk: `{"": [a b], "bb": [e]}` (`"bb"` is now
//! a stale but valid separator).
//!
//! # Invariants
//!
//! - The map holds exactly the keys that have some history that is not
//!   compacted away; a key whose history became empty is removed.
//! - Every chunk in the map is non-empty; the first separator is empty;
//!   each chunk's keys are `>=` its separator and `<` the next one.
//! - Keys are iterated in ascending byte order, so range results are sorted.
//! - The index may contain revisions above the store's current revision while
//!   a write transaction is open (they belong to that transaction); readers
//!   always pass an explicit revision `<=` the current one and so never see them.
//!
//! # Memory
//!
//! [`TreeIndex::heap_bytes`] adds the capacities of every chunk's vectors,
//! the boxed histories and the separators, and estimates the `BTreeMap`'s
//! nodes. For 1M 64-byte keys with one version each it is about 31 B/key for
//! keys sharing a long prefix and 97 B/key for random keys (etcd: ~218 B/key);
//! `etcd-mvcc/tests/index_memory.rs` checks it against a counting allocator.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;

use bytes::Bytes;

use crate::index_chunk::{Chunk, Position, MAX_ENTRIES, MAX_KEY_BYTES, MIN_ENTRIES};
use crate::key_index::{History, KeyAt, KeyIndex};
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

/// True when a chunk must split: too many entries, or too many key bytes
/// with at least two entries.
fn overflows(c: &Chunk) -> bool {
    c.len() > MAX_ENTRIES || (c.key_bytes() > MAX_KEY_BYTES && c.len() >= 2)
}

/// Key -> history of the key, in front-coded chunks (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct TreeIndex {
    /// Separator -> chunk. A chunk holds the keys `>= separator` and below
    /// the next separator; the first separator is the empty key.
    chunks: BTreeMap<Box<[u8]>, Chunk>,
    /// Number of keys.
    len: usize,
}

impl TreeIndex {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Heap bytes held by the index: the chunks' key bytes, histories and
    /// boxed histories (exact, from capacities), the separators (exact) and
    /// the B-tree of chunks (estimated from the node layout of std's
    /// `BTreeMap`, 11 entries per node, assuming nodes two-thirds full).
    pub(crate) fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<Box<[u8]>>() + std::mem::size_of::<Chunk>();
        let map = self.chunks.len() * entry * 3 / 2;
        map + self
            .chunks
            .iter()
            .map(|(sep, c)| sep.len() + c.heap_bytes())
            .sum::<usize>()
    }

    /// Number of chunks (tests).
    #[cfg(test)]
    pub(crate) fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// Checks the structural invariants (tests): the first separator is
    /// empty, every chunk is non-empty and within its bounds, keys ascend
    /// strictly across chunks and each chunk's keys are `>=` its separator,
    /// no history is empty, and `len` is the number of keys.
    #[cfg(test)]
    pub(crate) fn check(&self) {
        let mut prev: Option<Vec<u8>> = None;
        let mut n = 0;
        for (i, (sep, c)) in self.chunks.iter().enumerate() {
            if i == 0 {
                assert!(sep.is_empty(), "first separator is empty");
            }
            assert!(!c.is_empty(), "chunk {i} is empty");
            assert!(
                c.len() <= MAX_ENTRIES && (c.key_bytes() <= MAX_KEY_BYTES || c.len() == 1),
                "chunk {i} too big"
            );
            let keys = c.keys();
            assert!(
                keys[0].as_slice() >= &sep[..],
                "chunk {i} below its separator"
            );
            for k in keys {
                if let Some(p) = &prev {
                    assert!(p < &k, "keys ascend: {p:?} {k:?}");
                }
                prev = Some(k);
            }
            for j in 0..c.len() {
                assert!(!c.history(j).is_empty());
                let h = c.history(j);
                assert_eq!(
                    &History::from_key_index(h.to_key_index()),
                    h,
                    "canonical form"
                );
            }
            n += c.len();
        }
        assert_eq!(n, self.len);
    }

    /// The chunk that holds (or would hold) `key`: the one with the greatest
    /// separator `<= key`.
    fn chunk_of(&self, key: &[u8]) -> Option<(&[u8], &Chunk)> {
        self.chunks
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .map(|(s, c)| (&s[..], c))
    }

    fn chunk_of_mut(&mut self, key: &[u8]) -> Option<(&[u8], &mut Chunk)> {
        self.chunks
            .range_mut::<[u8], _>((Bound::Unbounded, Bound::Included(key)))
            .next_back()
            .map(|(s, c)| (&s[..], c))
    }

    #[cfg(test)]
    fn history(&self, key: &[u8]) -> Option<&History> {
        let (_, c) = self.chunk_of(key)?;
        c.find(key).map(|i| c.history(i))
    }

    /// Applies `f` to the history of `key` (None if absent); removes the key
    /// if its history became empty.
    fn with_history<T>(&mut self, key: &[u8], f: impl FnOnce(&mut History) -> T) -> Option<T> {
        let (sep, c) = self.chunk_of_mut(key)?;
        let i = c.find(key)?;
        let h = c.history_mut(i);
        let out = f(h);
        if h.is_empty() {
            c.remove(i);
            let sep = Box::<[u8]>::from(sep);
            self.len -= 1;
            self.rebalance(sep);
        }
        Some(out)
    }

    /// Inserts an absent key.
    fn insert(&mut self, key: &[u8], hist: History) {
        if self.chunks.is_empty() {
            self.chunks.insert(Box::default(), Chunk::default());
        }
        self.len += 1;
        let (sep, c) = self
            .chunk_of_mut(key)
            .expect("the first separator is empty");
        let pos = c.position(key);
        let at_end = matches!(pos, Position::Absent { idx, .. } if idx == c.len());
        c.insert(pos, key, hist);
        if overflows(c) {
            let sep = Box::<[u8]>::from(sep);
            self.split(sep, at_end);
        }
    }

    /// Splits the chunk at `sep` until no part overflows. Appending
    /// (ascending loads, restore of sequential keys) splits just before the
    /// appended key, leaving the old chunk full; otherwise in the middle.
    fn split(&mut self, sep: Box<[u8]>, appended: bool) {
        let c = self.chunks.get_mut(&sep).expect("present");
        if !overflows(c) {
            return;
        }
        let at = if appended { c.len() - 1 } else { c.len() / 2 };
        let (first, right) = c.split_off(at);
        let first = first.into_boxed_slice();
        self.chunks.insert(first.clone(), right);
        // a very long key can leave a half still over MAX_KEY_BYTES
        self.split(sep, false);
        self.split(first, false);
    }

    /// Merges the chunk at `sep` with a neighbour if it became small.
    fn rebalance(&mut self, sep: Box<[u8]>) {
        let (len, bytes) = match self.chunks.get(&sep) {
            Some(c) => (c.len(), c.key_bytes()),
            None => return,
        };
        if len >= MIN_ENTRIES {
            return;
        }
        let fits = |c: &Chunk| {
            c.len() + len <= MAX_ENTRIES && c.key_bytes() + bytes <= MAX_KEY_BYTES || len == 0
        };
        let next = self
            .chunks
            .range::<[u8], _>((Bound::Excluded(&sep[..]), Bound::Unbounded))
            .next()
            .filter(|(_, c)| fits(c))
            .map(|(s, _)| s.clone());
        if let Some(next) = next {
            let right = self.chunks.remove(&next).expect("present");
            self.chunks.get_mut(&sep).expect("present").append(right);
            return;
        }
        let prev = self
            .chunks
            .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(&sep[..])))
            .next_back()
            .filter(|(_, c)| fits(c))
            .map(|(s, _)| s.clone());
        if let Some(prev) = prev {
            let right = self.chunks.remove(&sep).expect("present");
            self.chunks.get_mut(&prev).expect("present").append(right);
            return;
        }
        if len == 0 {
            // the only chunk
            self.chunks.remove(&sep);
        }
    }

    /// Calls `f` on each key in the range with its history, in key order,
    /// while it returns true.
    fn visit(&self, key: &[u8], end: &[u8], mut f: impl FnMut(&[u8], &History) -> bool) {
        let Some((lo, hi)) = range_bounds(key, end) else {
            return;
        };
        let Bound::Included(lo) = lo else {
            unreachable!("range_bounds starts at an included key")
        };
        let Some((first, _)) = self.chunk_of(lo) else {
            return;
        };
        let beyond = |k: &[u8]| match hi {
            Bound::Included(h) => k > h,
            Bound::Excluded(h) => k >= h,
            Bound::Unbounded => false,
        };
        for (sep, c) in self
            .chunks
            .range::<[u8], _>((Bound::Included(first), Bound::Unbounded))
        {
            if beyond(sep) {
                return;
            }
            let mut cur = c.cursor();
            while cur.advance() {
                let k = cur.key();
                if k < lo {
                    continue;
                }
                if beyond(k) || !f(k, c.history(cur.idx())) {
                    return;
                }
            }
        }
    }

    /// The key as of `at_rev`.
    #[cfg(test)]
    pub(crate) fn get(&self, key: &[u8], at_rev: i64) -> Option<KeyAt> {
        self.history(key)?.get(at_rev)
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
        self.visit(key, end, |k, h| {
            if let Some(at) = h.get(at_rev) {
                if limit == 0 || out.len() < limit {
                    out.push((Bytes::copy_from_slice(k), at.modified));
                }
                total += 1;
            }
            true
        });
        (out, total)
    }

    /// One page of a range: up to `max` live keys at `at_rev` in the range
    /// `(from, end)` (etcd's conventions), with their revisions. The next
    /// page starts at the smallest key after the last one returned.
    pub(crate) fn revisions_page(
        &self,
        from: &[u8],
        end: &[u8],
        at_rev: i64,
        max: usize,
    ) -> Vec<(Bytes, Revision)> {
        let mut out = Vec::new();
        if max == 0 {
            return out;
        }
        self.visit(from, end, |k, h| {
            if let Some(at) = h.get(at_rev) {
                out.push((Bytes::copy_from_slice(k), at.modified));
            }
            out.len() < max
        });
        out
    }

    /// The live keys in the range at `at_rev`, in key order, as the index
    /// knows them (their revisions and versions; no values).
    pub(crate) fn states(&self, key: &[u8], end: &[u8], at_rev: i64) -> Vec<KeyAt> {
        let mut out = Vec::new();
        self.visit(key, end, |_, h| {
            out.extend(h.get(at_rev));
            true
        });
        out
    }

    /// Number of live keys in the range at `at_rev`.
    pub(crate) fn count(&self, key: &[u8], end: &[u8], at_rev: i64) -> i64 {
        let mut n = 0;
        self.visit(key, end, |_, h| {
            n += i64::from(h.get(at_rev).is_some());
            true
        });
        n
    }

    /// Records a put at `rev`; returns the key as of `at_rev` before the
    /// put (what [`get`](Self::get) would have said) and the key's
    /// previous latest revision (`Revision::default()` for a new key),
    /// needed to undo it. One lookup for both: a write transaction's put
    /// needs the key's state and then records the put.
    pub(crate) fn get_and_put(
        &mut self,
        key: &Bytes,
        rev: Revision,
        at_rev: i64,
    ) -> (Option<KeyAt>, Revision) {
        if let Some(out) = self.with_history(key, |h| {
            let at = h.get(at_rev);
            let prev = h.modified();
            h.update(|ki| ki.put(rev));
            (at, prev)
        }) {
            return out;
        }
        self.insert(key, History::created(rev));
        (None, Revision::default())
    }

    /// [`get_and_put`](Self::get_and_put)'s previous revision alone.
    #[cfg(test)]
    fn put(&mut self, key: &Bytes, rev: Revision) -> Revision {
        self.get_and_put(key, rev, rev.main).1
    }

    /// Records a delete of a live key; returns the previous latest revision,
    /// or None if the key is not live (nothing changed).
    pub(crate) fn tombstone(&mut self, key: &[u8], rev: Revision) -> Option<Revision> {
        self.with_history(key, |h| {
            let prev = h.modified();
            h.update(|ki| ki.tombstone(rev)).then_some(prev)
        })
        .flatten()
    }

    /// Undoes a [`put`](Self::put).
    pub(crate) fn undo_put(&mut self, key: &[u8], rev: Revision, prev: Revision) {
        self.with_history(key, |h| h.update(|ki| ki.undo_put(rev, prev)))
            .expect("undo_put: key missing from the index");
    }

    /// Undoes a [`tombstone`](Self::tombstone).
    pub(crate) fn undo_tombstone(&mut self, key: &[u8], rev: Revision, prev: Revision) {
        self.with_history(key, |h| h.update(|ki| ki.undo_tombstone(rev, prev)))
            .expect("undo_tombstone: key missing from the index");
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
        let found = self.with_history(&key, |h| {
            if tombstone {
                if !h.update(|ki| ki.tombstone(rev)) {
                    tracing::warn!(
                        ?rev,
                        "mvcc restore: tombstone of a key that is not live; ignored"
                    );
                }
            } else {
                h.update(|ki| ki.put(rev));
            }
        });
        // A tombstone whose generation start was already compacted away
        // (interrupted physical compaction): nothing to restore.
        if found.is_none() && !tombstone {
            let ki = KeyIndex::restored(Revision::new(created, 0), rev, version);
            self.insert(&key, History::from_key_index(ki));
        }
    }

    /// Up to `limit` keys `>= start`, in order (compaction walks the index
    /// with it a chunk at a time instead of copying every key at once).
    pub(crate) fn keys_from(&self, start: &[u8], limit: usize) -> Vec<Bytes> {
        let mut out = Vec::with_capacity(limit.min(self.len));
        self.visit(start, &[0], |k, _| {
            out.push(Bytes::copy_from_slice(k));
            out.len() < limit
        });
        out
    }

    /// Every key, in order (tests).
    #[cfg(test)]
    pub(crate) fn keys(&self) -> Vec<Bytes> {
        self.keys_from(&[], usize::MAX)
    }

    /// Compacts the given keys at `at_rev`, adding the kept revisions to `keep`.
    pub(crate) fn compact_keys(
        &mut self,
        keys: &[Bytes],
        at_rev: i64,
        keep: &mut HashSet<Revision>,
    ) {
        for k in keys {
            self.with_history(k, |h| h.compact(at_rev, keep));
        }
    }

    /// The revisions a compaction at `at_rev` keeps.
    pub(crate) fn keep(&self, at_rev: i64) -> HashSet<Revision> {
        let mut keep = HashSet::new();
        for c in self.chunks.values() {
            for i in 0..c.len() {
                c.history(i).keep(at_rev, &mut keep);
            }
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

    /// A reference model: the plain map of key indexes.
    type Model = BTreeMap<Vec<u8>, KeyIndex>;

    fn model_put(m: &mut Model, k: &[u8], rev: Revision) -> Revision {
        let ki = m.entry(k.to_vec()).or_default();
        let prev = ki.modified;
        ki.put(rev);
        prev
    }

    /// The model's entries in the range, with `range_bounds`' conventions.
    fn model_range<'a>(
        m: &'a Model,
        key: &[u8],
        end: &[u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a KeyIndex)> + 'a {
        let own = |b: Bound<&[u8]>| b.map(<[u8]>::to_vec);
        range_bounds(key, end)
            .map(|(lo, hi)| m.range((own(lo), own(hi))))
            .into_iter()
            .flatten()
    }

    fn assert_same(ti: &TreeIndex, m: &Model, rev: i64) {
        ti.check();
        assert_eq!(ti.len(), m.len());
        let keys: Vec<Vec<u8>> = ti.keys().iter().map(|k| k.to_vec()).collect();
        assert_eq!(keys, m.keys().cloned().collect::<Vec<_>>());
        for (k, ki) in m {
            for r in [rev / 2, rev - 1, rev] {
                assert_eq!(ti.get(k, r), ki.get(r), "get {k:?} at {r}");
            }
        }
    }

    /// Deterministic xorshift generator (no dependency, reproducible).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Keys of awkward shapes: empty, prefixes of each other, 0x00 and 0xff
    /// bytes, long shared prefixes, very long keys.
    fn awkward_key(rng: &mut Rng) -> Vec<u8> {
        match rng.below(8) {
            0 => Vec::new(),
            1 => vec![0xff; rng.below(6) as usize],
            2 => vec![0x00; rng.below(6) as usize],
            3 => {
                let mut k = b"/registry/pods/default/".to_vec();
                k.extend(format!("{}", rng.below(300)).bytes());
                k
            }
            4 => {
                let mut k = vec![b'x'; 2000 + rng.below(3000) as usize];
                k.push(rng.below(256) as u8);
                k
            }
            5 => (0..rng.below(4))
                .map(|_| [0x00, 0x7f, 0x80, 0xff][rng.below(4) as usize])
                .collect(),
            _ => (0..1 + rng.below(3))
                .map(|_| b'a' + rng.below(3) as u8)
                .collect(),
        }
    }

    #[test]
    fn matches_plain_map_under_random_operations() {
        for seed in 1..=4u64 {
            let mut rng = Rng(seed * 0x9e37_79b9_7f4a_7c15);
            let mut ti = TreeIndex::default();
            let mut m = Model::new();
            let mut rev = 1;
            for step in 0..4000 {
                rev += 1;
                let r = Revision::new(rev, 0);
                let k = awkward_key(&mut rng);
                match rng.below(10) {
                    0..=4 => {
                        let before = ti.get(&k, rev);
                        let (at, prev) = ti.get_and_put(&Bytes::from(k.clone()), r, rev);
                        assert_eq!(at, before);
                        assert_eq!(prev, model_put(&mut m, &k, r));
                    }
                    5..=6 => {
                        let want = m.get_mut(&k).and_then(|ki| {
                            let prev = ki.modified;
                            ki.tombstone(r).then_some(prev)
                        });
                        assert_eq!(ti.tombstone(&k, r), want);
                    }
                    7 => {
                        // a put undone (aborted transaction)
                        let prev = ti.put(&Bytes::from(k.clone()), r);
                        ti.undo_put(&k, r, prev);
                    }
                    8 => {
                        let (a, b) = (awkward_key(&mut rng), awkward_key(&mut rng));
                        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                        for limit in [0, 1, 3] {
                            let (got, total) = ti.revisions(&lo, &hi, rev, limit);
                            let live: Vec<(Vec<u8>, Revision)> = model_range(&m, &lo, &hi)
                                .filter_map(|(k, ki)| ki.get(rev).map(|a| (k.clone(), a.modified)))
                                .collect();
                            assert_eq!(total, live.len() as i64);
                            assert_eq!(ti.count(&lo, &hi, rev), live.len() as i64);
                            let n = if limit == 0 {
                                live.len()
                            } else {
                                limit.min(live.len())
                            };
                            let got: Vec<(Vec<u8>, Revision)> =
                                got.into_iter().map(|(k, r)| (k.to_vec(), r)).collect();
                            assert_eq!(got, live[..n].to_vec());
                        }
                        let all = ti.revisions(&lo, &[0], rev, 0).1;
                        let want = m
                            .range(lo.clone()..)
                            .filter(|(_, ki)| ki.get(rev).is_some())
                            .count();
                        assert_eq!(all, want as i64);
                    }
                    _ => {
                        let at = rev - rng.below(50) as i64;
                        let mut keep = HashSet::new();
                        let keys = ti.keys();
                        assert_eq!(ti.keep(at), {
                            let mut k = HashSet::new();
                            m.values().for_each(|ki| ki.keep(at, &mut k));
                            k
                        });
                        ti.compact_keys(&keys, at, &mut keep);
                        let mut want = HashSet::new();
                        m.retain(|_, ki| {
                            ki.compact(at, &mut want);
                            !ki.is_empty()
                        });
                        assert_eq!(keep, want, "compaction at {at}");
                    }
                }
                if step % 97 == 0 {
                    assert_same(&ti, &m, rev);
                }
            }
            assert_same(&ti, &m, rev);
            // delete everything: chunks merge away to nothing
            let keys = ti.keys();
            for k in &keys {
                rev += 1;
                ti.tombstone(k, Revision::new(rev, 0));
            }
            let mut keep = HashSet::new();
            ti.compact_keys(&keys, rev, &mut keep);
            assert!(keep.is_empty());
            assert_eq!(ti.len(), 0);
            assert_eq!(ti.chunk_count(), 0);
            assert_eq!(ti.heap_bytes(), 0);
        }
    }

    #[test]
    fn chunks_split_and_merge_at_their_bounds() {
        let key = |i: usize| format!("k{i:05}").into_bytes();
        let mut ti = TreeIndex::default();
        // ascending load: full chunks, the last one takes the overflow
        for i in 0..MAX_ENTRIES {
            ti.put(&Bytes::from(key(i)), Revision::new(i as i64 + 2, 0));
        }
        assert_eq!(ti.chunk_count(), 1);
        ti.put(&Bytes::from(key(MAX_ENTRIES)), Revision::new(100, 0));
        assert_eq!(ti.chunk_count(), 2);
        ti.check();
        let sizes: Vec<usize> = ti.chunks.values().map(Chunk::len).collect();
        assert_eq!(sizes, vec![MAX_ENTRIES, 1]);
        // an insert in the middle of a full chunk splits it in halves
        ti.put(&Bytes::from_static(b"k00010a"), Revision::new(101, 0));
        let sizes: Vec<usize> = ti.chunks.values().map(Chunk::len).collect();
        assert_eq!(sizes, vec![32, 33, 1]);
        ti.check();
        // deleting and compacting the front keys merges chunks back
        let mut rev = 200;
        for i in 0..30 {
            rev += 1;
            ti.tombstone(&key(i), Revision::new(rev, 0)).unwrap();
        }
        let mut keep = HashSet::new();
        ti.compact_keys(&ti.keys(), rev, &mut keep);
        ti.check();
        assert_eq!(ti.len(), MAX_ENTRIES + 2 - 30);
        let sizes: Vec<usize> = ti.chunks.values().map(Chunk::len).collect();
        // 17 removals left 15 (< MIN_ENTRIES) in the first chunk, which then
        // took in the next one; the last chunk was not touched
        assert_eq!(sizes, vec![32 + 33 - 30, 1]);
        // a key below every separator goes to the first chunk
        ti.put(&Bytes::from_static(b""), Revision::new(rev + 1, 0));
        ti.check();
        assert_eq!(ti.revisions(b"", &[0], rev + 1, 1).0[0].0, "");
    }

    #[test]
    fn long_keys_split_by_bytes() {
        let mut ti = TreeIndex::default();
        for i in 0..10u8 {
            let mut k = vec![i; 3000];
            k.push(0xff);
            ti.put(&Bytes::from(k), Revision::new(i64::from(i) + 2, 0));
        }
        ti.check();
        assert!(
            ti.chunk_count() >= 4,
            "chunks of at most {MAX_KEY_BYTES} bytes"
        );
        let big = Bytes::from(vec![0xff; 100_000]);
        ti.put(&big, Revision::new(20, 0));
        ti.check();
        assert_eq!(ti.get(&big, 20).unwrap().modified, Revision::new(20, 0));
        assert_eq!(ti.count(b"", &[0], 20), 11);

        // a key longer than a chunk's byte budget landing in the middle of a
        // chunk of small keys: the halves split again until none overflows
        let mut ti = TreeIndex::default();
        for i in 0..60u32 {
            ti.put(
                &Bytes::from(format!("k{i:03}")),
                Revision::new(i64::from(i) + 2, 0),
            );
        }
        let mut huge = b"k030".to_vec();
        huge.extend(std::iter::repeat_n(b'z', 3 * MAX_KEY_BYTES));
        ti.put(&Bytes::from(huge.clone()), Revision::new(100, 0));
        ti.check();
        assert_eq!(ti.get(&huge, 100).unwrap().modified, Revision::new(100, 0));
        assert_eq!(ti.count(b"", &[0], 100), 61);
    }

    #[test]
    fn heap_bytes_follow_the_content() {
        let mut ti = TreeIndex::default();
        assert_eq!(ti.heap_bytes(), 0);
        for i in 0..10_000u32 {
            let k = format!("/registry/key/{i:010}");
            ti.put(&Bytes::from(k), Revision::new(i64::from(i) + 2, 0));
        }
        let b = ti.heap_bytes();
        // front-coded keys (a few bytes each) and 24-byte histories
        assert!(b > 10_000 * 24 && b < 10_000 * 40, "{b} bytes");
        // a second revision boxes the history
        ti.put(
            &Bytes::from_static(b"/registry/key/0000000000"),
            Revision::new(20_000, 0),
        );
        assert!(ti.heap_bytes() > b + std::mem::size_of::<KeyIndex>());
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
