//! A set of watchers indexed by what they watch (etcd's `watcher_group.go`),
//! so that an event's key finds its watchers without scanning all of them.
//!
//! Single-key watchers sit in a hash map from key to watcher ids; range
//! watchers (`[key, end)` or "every key >= key") in a list scanned per key.
//! Invariant: every id is in exactly one place, under the range it was
//! added with.
//!
//! ```text
//! add(1, "a", single)   add(2, "a", ["a","c"))   add(3, "b", from-key)
//! matching("a") = {1, 2}    matching("b") = {2, 3}    matching("z") = {3}
//! ```

use bytes::Bytes;
use std::collections::{HashMap, HashSet};

/// What a watcher watches (etcd's conventions after normalisation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyRange {
    /// Exactly this key.
    Single(Bytes),
    /// `[start, end)`, `start < end`.
    Range(Bytes, Bytes),
    /// Every key `>= start`.
    FromKey(Bytes),
}

impl KeyRange {
    /// Whether `key` is in the range.
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Single(k) => k == key,
            KeyRange::Range(s, e) => &s[..] <= key && key < &e[..],
            KeyRange::FromKey(s) => &s[..] <= key,
        }
    }
}

/// Watcher ids indexed by key range.
#[derive(Debug, Default)]
pub(crate) struct WatcherGroup {
    keys: HashMap<Bytes, HashSet<u64>>,
    ranges: HashMap<u64, KeyRange>,
}

impl WatcherGroup {
    pub(crate) fn add(&mut self, id: u64, r: &KeyRange) {
        match r {
            KeyRange::Single(k) => {
                self.keys.entry(k.clone()).or_default().insert(id);
            }
            other => {
                self.ranges.insert(id, other.clone());
            }
        }
    }

    pub(crate) fn remove(&mut self, id: u64, r: &KeyRange) {
        match r {
            KeyRange::Single(k) => {
                if let Some(set) = self.keys.get_mut(k) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.keys.remove(k);
                    }
                }
            }
            _ => {
                self.ranges.remove(&id);
            }
        }
    }

    /// Calls `f` with every watcher id whose range contains `key`.
    pub(crate) fn for_each_matching(&self, key: &[u8], mut f: impl FnMut(u64)) {
        if let Some(set) = self.keys.get(key) {
            set.iter().for_each(|id| f(*id));
        }
        for (id, r) in &self.ranges {
            if r.contains(key) {
                f(*id);
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matching(g: &WatcherGroup, key: &str) -> Vec<u64> {
        let mut v = Vec::new();
        g.for_each_matching(key.as_bytes(), |id| v.push(id));
        v.sort();
        v
    }

    #[test]
    fn matches_single_keys_ranges_and_from_key() {
        let mut g = WatcherGroup::default();
        let a = KeyRange::Single(Bytes::from("a"));
        let ac = KeyRange::Range(Bytes::from("a"), Bytes::from("c"));
        let b_up = KeyRange::FromKey(Bytes::from("b"));
        g.add(1, &a);
        g.add(2, &ac);
        g.add(3, &b_up);
        assert_eq!(matching(&g, "a"), [1, 2]);
        assert_eq!(matching(&g, "b"), [2, 3]);
        assert_eq!(matching(&g, "c"), [3]);
        assert_eq!(matching(&g, "0"), Vec::<u64>::new());
        g.remove(1, &a);
        g.remove(2, &ac);
        assert_eq!(matching(&g, "a"), Vec::<u64>::new());
        g.remove(3, &b_up);
        assert!(g.is_empty());
    }
}
