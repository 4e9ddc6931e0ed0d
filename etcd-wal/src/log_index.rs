//! Index bookkeeping shared by append validation, the writer and replay.
//!
//! [`LogIndex`] tracks the newest snapshot marker and the index range of the
//! live entries after it, applying exactly the replay rules:
//! - an entry at or below the last live index replaces the log from that
//!   index on (raft overwrote a conflicting suffix);
//! - an entry at or below the snapshot marker is dropped (and, being a
//!   conflict, also drops every live entry);
//! - a snapshot marker drops the live entries at or below it.
//!
//! Invariant: every live index is above the snapshot index, and live indexes
//! are contiguous. Appends are held to the strict rule (the next entry is at
//! most `last_index() + 1`); replay is lenient only when there are no live
//! entries (the oldest segments may have been purged), and checks at the end
//! that the entries continue right after the snapshot marker.

/// See the module documentation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct LogIndex {
    /// Index of the newest snapshot marker.
    pub snapshot: Option<u64>,
    /// `(first, last)` live entry indexes, both above `snapshot`.
    pub live: Option<(u64, u64)>,
}

impl LogIndex {
    /// Index of the last live entry, else of the snapshot marker, else 0.
    pub fn last_index(&self) -> u64 {
        match (self.live, self.snapshot) {
            (Some((_, last)), _) => last,
            (None, Some(s)) => s,
            (None, None) => 0,
        }
    }

    /// The strict append rule: `Err` describes a gap.
    pub fn check_append(&self, index: u64) -> Result<(), String> {
        let limit = match (self.live, self.snapshot) {
            (Some((_, last)), _) => last,
            (None, Some(s)) => s,
            (None, None) => return Ok(()),
        };
        if index > limit.saturating_add(1) {
            return Err(format!("entry {index} leaves a gap after index {limit}"));
        }
        Ok(())
    }

    /// The replay rule: only a gap after live entries is an error.
    pub fn check_replay(&self, index: u64) -> Result<(), String> {
        match self.live {
            Some((_, last)) if index > last.saturating_add(1) => {
                Err(format!("entry {index} leaves a gap after entry {last}"))
            }
            _ => Ok(()),
        }
    }

    /// Records an entry (after a successful check). Returns what happened to
    /// the live entries so replay can mirror it on its vector.
    pub fn push_entry(&mut self, index: u64) -> EntryEffect {
        if let Some(s) = self.snapshot {
            if index <= s {
                self.live = None;
                return EntryEffect::DroppedAll;
            }
        }
        match self.live {
            Some((first, last)) if index <= last => {
                if index <= first {
                    self.live = Some((index, index));
                    EntryEffect::ReplacedAll
                } else {
                    self.live = Some((first, index));
                    EntryEffect::TruncatedFrom(index)
                }
            }
            Some((first, _)) => {
                self.live = Some((first, index));
                EntryEffect::Appended
            }
            None => {
                self.live = Some((index, index));
                EntryEffect::ReplacedAll
            }
        }
    }

    /// Records a snapshot marker.
    pub fn apply_snapshot(&mut self, index: u64) {
        self.snapshot = Some(index);
        if let Some((first, last)) = self.live {
            if last <= index {
                self.live = None;
            } else if first <= index {
                self.live = Some((index + 1, last));
            }
        }
    }
}

/// How [`LogIndex::push_entry`] changed the live entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryEffect {
    /// The entry follows the last live entry.
    Appended,
    /// Live entries from this index on were replaced by the entry.
    TruncatedFrom(u64),
    /// All live entries were replaced by the entry.
    ReplacedAll,
    /// The entry is at or below the snapshot: it and all live entries are gone.
    DroppedAll,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let mut l = LogIndex::default();
        assert!(l.check_append(7).is_ok());
        assert_eq!(l.push_entry(1), EntryEffect::ReplacedAll);
        assert_eq!(l.push_entry(2), EntryEffect::Appended);
        assert_eq!(l.push_entry(3), EntryEffect::Appended);
        assert!(l.check_append(5).is_err());
        assert_eq!(l.push_entry(2), EntryEffect::TruncatedFrom(2));
        assert_eq!(l.live, Some((1, 2)));
        l.apply_snapshot(1);
        assert_eq!(l.live, Some((2, 2)));
        l.apply_snapshot(5);
        assert_eq!(l.live, None);
        assert_eq!(l.last_index(), 5);
        assert!(l.check_append(7).is_err());
        assert!(l.check_replay(7).is_ok());
        assert_eq!(l.push_entry(4), EntryEffect::DroppedAll);
        assert_eq!(l.push_entry(6), EntryEffect::ReplacedAll);
        assert_eq!(l.last_index(), 6);
    }
}
