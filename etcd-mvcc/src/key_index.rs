//! The history of one key: generations of revisions (etcd's `keyIndex`).
//!
//! A key's life is split into *generations*. A generation starts with the
//! put that creates the key and ends with the delete (a *tombstone*) that
//! removes it; the next put starts a new generation. Every revision of the
//! key (puts and the tombstone) is recorded in its generation, in order.
//! `version` counts the revisions of the current generation, so it is 1
//! after the creating put and resets with the next generation.
//!
//! # Worked example
//!
//! Key `k` is put at revision 2 and 4, deleted at 6 and put again at 8
//! (`6t` marks the tombstone):
//!
//! ```text
//! generations: [ {created: 2, ver: 3, revs: [2, 4, 6t]},
//!                {created: 8, ver: 1, revs: [8]} ]
//! ```
//!
//! Reading `k` "as of" a revision finds the generation alive at that revision
//! and the latest revision `<=` it in that generation:
//!
//! - at rev 3: revision 2, create_revision 2, version 1;
//! - at rev 5: revision 4, create_revision 2, version 2;
//! - at rev 7: nothing: the first generation ended at 6 and the next starts at 8;
//! - at rev 8 or later: revision 8, create_revision 8, version 1.
//!
//! Compaction at revision `c` keeps, per key, the latest revision `<= c`
//! (still needed to answer reads at `c` and later) unless it is a tombstone,
//! and forgets everything older: finished generations whose tombstone is
//! `<= c` are dropped whole, and the revisions before the kept one are
//! trimmed from the first remaining generation:
//!
//! - `compact(5)` keeps 4 (latest `<= 5`): generations become
//!   `[{created 2, ver 3, revs [4, 6t]}, {8}]`; revision 2 can be removed from disk.
//! - `compact(6)`: the latest revision `<= 6` is the tombstone 6t, which is not
//!   kept: generations become `[{8}]`; 2, 4 and 6t can be removed.
//! - `compact(7)` also leaves `[{8}]`: the whole first generation is older.
//!
//! If after compaction only one empty generation is left, the key index is
//! *empty* and the tree index drops the key.
//!
//! # Invariants
//!
//! - Revisions of a key strictly increase across all generations (a put with a
//!   revision not above `modified` is a bug and panics).
//! - Every generation but the last is non-empty and ends with a tombstone;
//!   the last generation is empty exactly when the key is currently deleted.
//! - `ver` of a generation is the number of revisions appended to it since its
//!   creation, including those later removed by compaction, so
//!   `ver - (revs.len() - 1 - i)` is the version of `revs[i]`.
//!
//! # Compact form
//!
//! The tree index does not store `KeyIndex` values directly but
//! [`History`]: 24 bytes holding the common case inline (one live generation
//! with one revision: a key put once, or any live key after compaction) and
//! a boxed `KeyIndex` otherwise. Every change goes through
//! [`History::update`], which applies the `KeyIndex` operation and picks the
//! form again, so the semantics are defined here once.

use std::collections::HashSet;

use crate::revision::Revision;

/// One life of a key: from its creation to its deletion (tombstone).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Generation {
    /// Number of revisions appended to this generation (the key's version).
    pub(crate) ver: i64,
    /// Revision of the put that created this generation.
    pub(crate) created: Revision,
    /// Revisions of this generation, ascending; the last one of a finished
    /// generation is the tombstone.
    pub(crate) revs: Vec<Revision>,
}

impl Generation {
    fn is_empty(&self) -> bool {
        self.revs.is_empty()
    }

    /// Index of the latest revision with `main <= at_rev`.
    fn walk_le(&self, at_rev: i64) -> Option<usize> {
        self.revs.iter().rposition(|r| r.main <= at_rev)
    }
}

/// Result of a successful [`KeyIndex::get`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyAt {
    /// Revision of the last modification at or before the requested revision.
    pub(crate) modified: Revision,
    /// Revision that created the generation.
    pub(crate) created: Revision,
    /// Version of the key at `modified`.
    pub(crate) version: i64,
}

/// History of one key (the key itself is the map key in the tree index).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyIndex {
    /// The latest revision of the key (put or tombstone).
    pub(crate) modified: Revision,
    pub(crate) generations: Vec<Generation>,
}

impl KeyIndex {
    /// A key index rebuilt from a stored key-value whose older history was
    /// compacted away: one generation created at `created`, whose latest
    /// revision is `modified` with version `ver`.
    pub(crate) fn restored(created: Revision, modified: Revision, ver: i64) -> Self {
        KeyIndex {
            modified,
            generations: vec![Generation {
                ver,
                created,
                revs: vec![modified],
            }],
        }
    }

    /// True when only one empty generation is left (the key can be dropped).
    pub(crate) fn is_empty(&self) -> bool {
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    /// True when the key currently exists (its last generation is live).
    #[cfg(test)]
    pub(crate) fn is_live(&self) -> bool {
        self.generations.last().is_some_and(|g| !g.is_empty())
    }

    /// Records a put at `rev`.
    pub(crate) fn put(&mut self, rev: Revision) {
        assert!(
            rev > self.modified,
            "mvcc: put with revision {rev:?} not above the key's latest {:?}",
            self.modified
        );
        if self.generations.is_empty() {
            self.generations.push(Generation::default());
        }
        let g = self.generations.last_mut().expect("non-empty");
        if g.is_empty() {
            g.created = rev;
        }
        g.revs.push(rev);
        g.ver += 1;
        self.modified = rev;
    }

    /// Records a delete at `rev`: appends the tombstone and starts a new,
    /// empty generation. Returns false (and changes nothing) if the key is
    /// not live.
    pub(crate) fn tombstone(&mut self, rev: Revision) -> bool {
        assert!(!self.is_empty(), "mvcc: tombstone on an empty key index");
        if self.generations.last().is_none_or(Generation::is_empty) {
            return false;
        }
        self.put(rev);
        self.generations.push(Generation::default());
        true
    }

    /// Undoes the latest [`put`](Self::put) at `rev` (rollback of an
    /// unfinished write transaction). Returns true when the key index became
    /// empty and must be dropped.
    pub(crate) fn undo_put(&mut self, rev: Revision, prev_modified: Revision) -> bool {
        let g = self
            .generations
            .last_mut()
            .expect("undo_put on a key without history");
        assert_eq!(
            g.revs.last(),
            Some(&rev),
            "mvcc: undo_put of a revision that is not the latest"
        );
        g.revs.pop();
        g.ver -= 1;
        self.modified = prev_modified;
        self.generations.len() == 1 && self.generations[0].is_empty()
    }

    /// Undoes the latest [`tombstone`](Self::tombstone) at `rev`.
    pub(crate) fn undo_tombstone(&mut self, rev: Revision, prev_modified: Revision) -> bool {
        let last = self
            .generations
            .pop()
            .expect("undo_tombstone without generations");
        assert!(
            last.is_empty(),
            "mvcc: undo_tombstone but the last generation is not empty"
        );
        self.undo_put(rev, prev_modified)
    }

    /// The key as of revision `at_rev`, or None if it did not exist then.
    pub(crate) fn get(&self, at_rev: i64) -> Option<KeyAt> {
        let g = self.find_generation(at_rev)?;
        let n = g.walk_le(at_rev)?;
        Some(KeyAt {
            modified: g.revs[n],
            created: g.created,
            version: g.ver - (g.revs.len() - n - 1) as i64,
        })
    }

    /// The generation alive at `rev`, if any.
    fn find_generation(&self, rev: i64) -> Option<&Generation> {
        let last = self.generations.len().checked_sub(1)?;
        for (i, g) in self.generations.iter().enumerate().rev() {
            if g.is_empty() {
                continue;
            }
            if i != last {
                let tomb = g.revs.last().expect("non-empty").main;
                if tomb <= rev {
                    // the key was deleted at or before `rev` and not re-created
                    return None;
                }
            }
            if g.revs[0].main <= rev {
                return Some(g);
            }
        }
        None
    }

    /// Skips the finished generations whose tombstone is `<= at_rev` (none
    /// of their revisions is needed at `at_rev` or later), then finds the
    /// latest revision `<= at_rev` of the first remaining generation, which is
    /// added to `keep`.
    ///
    /// Note: etcd compares `tomb >= at_rev` here and then drops the tombstone
    /// found by the walk. That is equivalent only when no generation starts in
    /// the same main revision as the previous one ends; here one transaction
    /// may delete and re-create a key (`7/0`, `7/1t`, `7/2`), so the
    /// generation is skipped instead.
    fn do_compact(&self, at_rev: i64, keep: &mut HashSet<Revision>) -> (usize, Option<usize>) {
        let mut gen_idx = 0;
        while gen_idx + 1 < self.generations.len() {
            let tomb = self.generations[gen_idx]
                .revs
                .last()
                .expect("finished generation")
                .main;
            if tomb > at_rev {
                break;
            }
            gen_idx += 1;
        }
        let g = &self.generations[gen_idx];
        let rev_idx = g.walk_le(at_rev);
        if let Some(i) = rev_idx {
            keep.insert(g.revs[i]);
        }
        (gen_idx, rev_idx)
    }

    /// Removes the history older than `at_rev` (see the module doc) and adds
    /// the revision kept for this key, if any, to `keep`.
    pub(crate) fn compact(&mut self, at_rev: i64, keep: &mut HashSet<Revision>) {
        assert!(!self.is_empty(), "mvcc: compact on an empty key index");
        let (mut gen_idx, rev_idx) = self.do_compact(at_rev, keep);
        let last = self.generations.len() - 1;
        let g = &mut self.generations[gen_idx];
        if !g.is_empty() {
            if let Some(i) = rev_idx {
                g.revs.drain(..i);
            }
            // a single revision left in a finished generation is its tombstone
            if g.revs.len() == 1 && gen_idx != last {
                keep.remove(&g.revs[0]);
                gen_idx += 1;
            }
        }
        self.generations.drain(..gen_idx);
    }

    /// Adds to `keep` the revision that [`compact`](Self::compact) at `at_rev`
    /// would keep, without changing anything.
    pub(crate) fn keep(&self, at_rev: i64, keep: &mut HashSet<Revision>) {
        if self.is_empty() {
            return;
        }
        let (gen_idx, rev_idx) = self.do_compact(at_rev, keep);
        let g = &self.generations[gen_idx];
        if let Some(i) = rev_idx {
            if i == g.revs.len() - 1 && gen_idx != self.generations.len() - 1 {
                keep.remove(&g.revs[i]);
            }
        }
    }
}

/// The history of one key as the tree index stores it: [`KeyIndex`] in
/// 24 bytes, without a heap allocation, in the common case of one live
/// generation with a single revision left (a key put once, or a key whose
/// older revisions were compacted away); boxed otherwise.
///
/// Invariant: [`History::Single`] is used exactly when the key index has one
/// generation holding one revision and the numbers fit the narrow fields
/// (`sub` and the creating `sub` `<= u16::MAX`, `main - created.main` and the
/// version `<= u32::MAX`, `main >= 0`); [`History::from_key_index`] chooses,
/// so two equal key indexes always get the same form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum History {
    /// One live generation whose only revision left is `(main, sub)`,
    /// created at `(main - age, created_sub)`, at version `ver`.
    Single {
        main: i64,
        sub: u16,
        created_sub: u16,
        age: u32,
        ver: u32,
    },
    /// Every other history (several revisions or generations, a tombstone,
    /// or numbers too large for `Single`).
    Full(Box<KeyIndex>),
}

impl History {
    /// The history of a key created by a put at `rev` (version 1).
    pub(crate) fn created(rev: Revision) -> Self {
        Self::from_key_index(KeyIndex::restored(rev, rev, 1))
    }

    /// The compact form of `ki` (see the type's invariant).
    pub(crate) fn from_key_index(ki: KeyIndex) -> Self {
        if let [g] = ki.generations.as_slice() {
            if let [rev] = g.revs.as_slice() {
                let fits = (|| {
                    Some(History::Single {
                        main: (rev.main >= 0).then_some(rev.main)?,
                        sub: u16::try_from(rev.sub).ok()?,
                        created_sub: u16::try_from(g.created.sub).ok()?,
                        age: u32::try_from(rev.main.checked_sub(g.created.main)?).ok()?,
                        ver: u32::try_from(g.ver).ok()?,
                    })
                })();
                if let Some(h) = fits {
                    return h;
                }
            }
        }
        History::Full(Box::new(ki))
    }

    /// The equivalent [`KeyIndex`].
    pub(crate) fn to_key_index(&self) -> KeyIndex {
        match self {
            History::Single {
                main,
                sub,
                created_sub,
                age,
                ver,
            } => KeyIndex::restored(
                Revision::new(main - i64::from(*age), i64::from(*created_sub)),
                Revision::new(*main, i64::from(*sub)),
                i64::from(*ver),
            ),
            History::Full(ki) => (**ki).clone(),
        }
    }

    /// Applies `f` to the equivalent [`KeyIndex`] and stores the result back
    /// in compact form; returns `f`'s result.
    pub(crate) fn update<T>(&mut self, f: impl FnOnce(&mut KeyIndex) -> T) -> T {
        if let History::Full(ki) = self {
            // in place: no allocation unless the result fits `Single`
            let out = f(ki);
            if matches!(ki.generations.as_slice(), [g] if g.revs.len() == 1) {
                let ki = std::mem::take(&mut **ki);
                *self = History::from_key_index(ki);
            }
            return out;
        }
        let mut ki = self.to_key_index();
        let out = f(&mut ki);
        *self = History::from_key_index(ki);
        out
    }

    /// The latest revision of the key (put or tombstone).
    pub(crate) fn modified(&self) -> Revision {
        match self {
            History::Single { main, sub, .. } => Revision::new(*main, i64::from(*sub)),
            History::Full(ki) => ki.modified,
        }
    }

    /// See [`KeyIndex::get`].
    pub(crate) fn get(&self, at_rev: i64) -> Option<KeyAt> {
        match self {
            History::Single {
                main,
                sub,
                created_sub,
                age,
                ver,
            } => (*main <= at_rev).then(|| KeyAt {
                modified: Revision::new(*main, i64::from(*sub)),
                created: Revision::new(main - i64::from(*age), i64::from(*created_sub)),
                version: i64::from(*ver),
            }),
            History::Full(ki) => ki.get(at_rev),
        }
    }

    /// See [`KeyIndex::is_empty`].
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            History::Single { .. } => false,
            History::Full(ki) => ki.is_empty(),
        }
    }

    /// See [`KeyIndex::compact`]. A single live revision is never removed
    /// (it is the key's current value), so `Single` only adds to `keep`.
    pub(crate) fn compact(&mut self, at_rev: i64, keep: &mut HashSet<Revision>) {
        match self {
            History::Single { .. } => self.keep(at_rev, keep),
            History::Full(_) => self.update(|ki| ki.compact(at_rev, keep)),
        }
    }

    /// See [`KeyIndex::keep`].
    pub(crate) fn keep(&self, at_rev: i64, keep: &mut HashSet<Revision>) {
        match self {
            History::Single { main, sub, .. } => {
                if *main <= at_rev {
                    keep.insert(Revision::new(*main, i64::from(*sub)));
                }
            }
            History::Full(ki) => ki.keep(at_rev, keep),
        }
    }

    /// Heap bytes owned by this history (0 for `Single`), from capacities.
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            History::Single { .. } => 0,
            History::Full(ki) => {
                std::mem::size_of::<KeyIndex>()
                    + ki.generations.capacity() * std::mem::size_of::<Generation>()
                    + ki.generations
                        .iter()
                        .map(|g| g.revs.capacity() * std::mem::size_of::<Revision>())
                        .sum::<usize>()
            }
        }
    }
}

// The compact form is the point of `History`: keep it at 24 bytes.
const _: () = assert!(std::mem::size_of::<History>() == 24);

#[cfg(test)]
mod tests {
    use super::*;

    fn r(main: i64) -> Revision {
        Revision::new(main, 0)
    }

    /// put 2, put 4, delete 6, put 8 (the module doc example).
    fn example() -> KeyIndex {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(4));
        assert!(ki.tombstone(r(6)));
        ki.put(r(8));
        ki
    }

    fn at(ki: &KeyIndex, rev: i64) -> Option<(i64, i64, i64)> {
        ki.get(rev)
            .map(|k| (k.modified.main, k.created.main, k.version))
    }

    #[test]
    fn generations_of_the_example() {
        let ki = example();
        assert_eq!(ki.generations.len(), 2);
        assert_eq!(ki.generations[0].revs, vec![r(2), r(4), r(6)]);
        assert_eq!(ki.generations[0].ver, 3);
        assert_eq!(ki.generations[1].revs, vec![r(8)]);
        assert_eq!(ki.generations[1].created, r(8));
        assert_eq!(ki.modified, r(8));
        assert!(ki.is_live());
    }

    #[test]
    fn get_at_revisions() {
        let ki = example();
        assert_eq!(at(&ki, 1), None);
        assert_eq!(at(&ki, 2), Some((2, 2, 1)));
        assert_eq!(at(&ki, 3), Some((2, 2, 1)));
        assert_eq!(at(&ki, 4), Some((4, 2, 2)));
        assert_eq!(at(&ki, 5), Some((4, 2, 2)));
        assert_eq!(at(&ki, 6), None);
        assert_eq!(at(&ki, 7), None);
        assert_eq!(at(&ki, 8), Some((8, 8, 1)));
        assert_eq!(at(&ki, 100), Some((8, 8, 1)));
    }

    #[test]
    fn tombstone_of_deleted_key_is_refused() {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        assert!(ki.tombstone(r(3)));
        assert!(!ki.is_live());
        assert!(!ki.tombstone(r(4)));
        assert_eq!(ki.modified, r(3));
    }

    #[test]
    #[should_panic(expected = "not above")]
    fn put_with_old_revision_panics() {
        let mut ki = example();
        ki.put(r(7));
    }

    fn compacted(at_rev: i64) -> (KeyIndex, HashSet<Revision>) {
        let mut ki = example();
        let mut keep = HashSet::new();
        let mut keep2 = HashSet::new();
        ki.keep(at_rev, &mut keep2);
        ki.compact(at_rev, &mut keep);
        assert_eq!(keep, keep2, "keep() agrees with compact() at {at_rev}");
        (ki, keep)
    }

    #[test]
    fn compact_keeps_latest_non_tombstone() {
        let (ki, keep) = compacted(1);
        assert_eq!(ki, example());
        assert!(keep.is_empty());

        for c in [2, 3] {
            let (ki, keep) = compacted(c);
            assert_eq!(ki, example(), "compact({c}) keeps everything");
            assert_eq!(keep, HashSet::from([r(2)]));
        }

        for c in [4, 5] {
            let (ki, keep) = compacted(c);
            assert_eq!(ki.generations[0].revs, vec![r(4), r(6)]);
            assert_eq!(ki.generations[0].ver, 3);
            assert_eq!(keep, HashSet::from([r(4)]));
            assert_eq!(at(&ki, 5), Some((4, 2, 2)));
            assert_eq!(at(&ki, 7), None);
            assert_eq!(at(&ki, 9), Some((8, 8, 1)));
        }

        for c in [6, 7] {
            let (ki, keep) = compacted(c);
            assert_eq!(ki.generations.len(), 1);
            assert_eq!(ki.generations[0].revs, vec![r(8)]);
            assert!(keep.is_empty(), "tombstone is not kept at {c}");
            assert_eq!(at(&ki, 7), None);
        }

        for c in [8, 9] {
            let (ki, keep) = compacted(c);
            assert_eq!(ki.generations[0].revs, vec![r(8)]);
            assert_eq!(keep, HashSet::from([r(8)]));
        }
    }

    #[test]
    fn compact_deleted_key_becomes_empty() {
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(r(3));
        assert!(ki.tombstone(r(4)));
        let mut keep = HashSet::new();
        ki.compact(3, &mut keep);
        assert!(!ki.is_empty());
        assert_eq!(keep, HashSet::from([r(3)]));
        let mut keep = HashSet::new();
        ki.compact(4, &mut keep);
        assert!(ki.is_empty());
        assert!(keep.is_empty());
    }

    #[test]
    fn compact_is_idempotent_and_monotonic() {
        for c in 1..10 {
            let (mut ki, keep) = compacted(c);
            let mut keep2 = HashSet::new();
            ki.compact(c, &mut keep2);
            assert_eq!(keep, keep2);
            for rev in c..12 {
                assert_eq!(
                    at(&ki, rev),
                    at(&example(), rev),
                    "compact({c}) then get({rev})"
                );
            }
        }
    }

    #[test]
    fn undo_restores_previous_state() {
        let mut ki = example();
        let before = ki.clone();
        ki.put(r(9));
        assert!(ki.tombstone(r(9).max(Revision::new(9, 1))));
        assert!(!ki.undo_tombstone(Revision::new(9, 1), r(9)));
        assert!(!ki.undo_put(r(9), r(8)));
        assert_eq!(ki, before);

        let mut fresh = KeyIndex::default();
        fresh.put(r(3));
        assert!(fresh.undo_put(r(3), Revision::default()));
    }

    #[test]
    fn delete_and_recreate_in_one_revision() {
        // one transaction at main revision 7: put, delete, put
        let mut ki = KeyIndex::default();
        ki.put(r(2));
        ki.put(Revision::new(7, 0));
        assert!(ki.tombstone(Revision::new(7, 1)));
        ki.put(Revision::new(7, 2));
        assert_eq!(ki.get(7).unwrap().modified, Revision::new(7, 2));
        assert_eq!(ki.get(7).unwrap().version, 1);
        assert_eq!(ki.get(6).unwrap().modified, r(2));
        for c in [7, 8] {
            let mut ki = ki.clone();
            let mut keep = HashSet::new();
            let mut keep2 = HashSet::new();
            ki.keep(c, &mut keep2);
            ki.compact(c, &mut keep);
            assert_eq!(keep, HashSet::from([Revision::new(7, 2)]));
            assert_eq!(keep, keep2);
            assert_eq!(ki.generations.len(), 1);
            assert_eq!(ki.get(c).unwrap().modified, Revision::new(7, 2));
        }
        let mut keep = HashSet::new();
        ki.compact(6, &mut keep);
        assert_eq!(keep, HashSet::from([r(2)]));
        assert_eq!(ki.get(7).unwrap().modified, Revision::new(7, 2));
    }

    #[test]
    fn restored_key_index() {
        let ki = KeyIndex::restored(r(2), r(4), 2);
        assert_eq!(at(&ki, 4), Some((4, 2, 2)));
        assert_eq!(at(&ki, 3), None);
    }
}
