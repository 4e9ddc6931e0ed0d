//! One leaf of the tree index: up to [`MAX_ENTRIES`] keys, sorted and
//! *front-coded* in one byte vector, with their histories in a parallel
//! vector of compact [`History`] values (24 bytes each, no allocation of
//! their own in the common case).
//!
//! # Front coding
//!
//! Entry `i` is stored as
//!
//! ```text
//! varint(shared) | varint(suffix_len) | suffix bytes
//! ```
//!
//! where `shared` is the length of the longest common prefix of key `i` and
//! key `i - 1` (0 for the first entry) and `suffix` is the rest of key `i`.
//! Varints are LEB128 (7 bits per byte, low bits first). Keys `a/b/1`,
//! `a/b/22`, `a/c` and `b` are stored as
//!
//! ```text
//! [0, 5, "a/b/1"] [4, 2, "22"] [2, 1, "c"] [0, 1, "b"]
//! ```
//!
//! (19 bytes instead of 15 bytes of keys plus four allocations). Decoding is
//! sequential: a [`Cursor`] keeps the current key in a buffer, truncates it
//! to `shared` and appends the suffix.
//!
//! # Invariants
//!
//! - Keys are strictly ascending; `hist.len()` is the number of entries and
//!   `hist[i]` is the history of key `i`.
//! - The first entry has `shared == 0`, so a chunk decodes on its own and can
//!   be split or appended without touching other chunks.
//! - Editing uses the identity `lcp(p, n) == min(lcp(p, k), lcp(k, n))` for
//!   sorted `p < k < n`: removing `k` re-encodes only its successor.
//! - Capacities grow by at most an eighth of the length (plus what the edit
//!   needs) and are trimmed when a chunk shrinks, so the slack stays small.

use crate::key_index::History;

/// A chunk splits when it holds more entries than this.
pub(crate) const MAX_ENTRIES: usize = 64;
/// A chunk splits (if it has two entries or more) when its encoded keys take
/// more bytes than this.
pub(crate) const MAX_KEY_BYTES: usize = 8192;
/// A chunk with fewer entries is merged with a neighbour when they fit in one.
pub(crate) const MIN_ENTRIES: usize = MAX_ENTRIES / 4;

/// Sorted, front-coded keys with their histories.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    keys: Vec<u8>,
    hist: Vec<History>,
}

/// Sequential decoder of a chunk's keys.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Byte offset of the current entry.
    start: usize,
    /// Index of the current entry (valid after a successful `advance`).
    idx: usize,
    /// Shared-prefix length of the current entry.
    shared: usize,
    key: Vec<u8>,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Cursor {
            buf,
            pos: 0,
            start: 0,
            idx: usize::MAX,
            shared: 0,
            key: Vec::new(),
        }
    }

    /// Decodes the next entry; false at the end.
    pub(crate) fn advance(&mut self) -> bool {
        if self.pos >= self.buf.len() {
            return false;
        }
        self.start = self.pos;
        let (shared, suffix, end) = parse_entry(self.buf, self.pos);
        self.key.truncate(shared);
        self.key.extend_from_slice(&self.buf[suffix..end]);
        self.shared = shared;
        self.pos = end;
        self.idx = self.idx.wrapping_add(1);
        true
    }

    /// The current key.
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }

    /// The current entry's index.
    pub(crate) fn idx(&self) -> usize {
        self.idx
    }
}

/// Parses the entry at `pos`: `(shared, suffix_start, entry_end)`.
fn parse_entry(buf: &[u8], pos: usize) -> (usize, usize, usize) {
    let (shared, p) = read_varint(buf, pos);
    let (len, p) = read_varint(buf, p);
    (shared, p, p + len)
}

fn read_varint(buf: &[u8], mut pos: usize) -> (usize, usize) {
    let mut v = 0usize;
    let mut shift = 0;
    loop {
        let b = buf[pos];
        pos += 1;
        v |= usize::from(b & 0x7f) << shift;
        if b < 0x80 {
            return (v, pos);
        }
        shift += 7;
    }
}

fn write_varint(out: &mut Vec<u8>, mut v: usize) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends the encoding of an entry whose key is `prefix_len` bytes shared
/// with its predecessor followed by `suffix`.
fn encode_entry(out: &mut Vec<u8>, shared: usize, suffix: &[u8]) {
    write_varint(out, shared);
    write_varint(out, suffix.len());
    out.extend_from_slice(suffix);
}

fn lcp(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Reserves room for `additional` more elements, growing by at most an
/// eighth of the length beyond what is needed (instead of doubling).
fn reserve_frugal<T>(v: &mut Vec<T>, additional: usize) {
    if v.capacity() - v.len() < additional {
        v.reserve_exact(additional + v.len() / 8);
    }
}

/// Gives back capacity when the slack exceeds a quarter of the length.
fn trim<T>(v: &mut Vec<T>) {
    if v.capacity() > v.len() + v.len() / 4 + 4 {
        v.shrink_to(v.len() + v.len() / 8);
    }
}

fn replace_range(v: &mut Vec<u8>, start: usize, end: usize, repl: &[u8]) {
    let removed = end - start;
    if repl.len() > removed {
        reserve_frugal(v, repl.len() - removed);
    }
    v.splice(start..end, repl.iter().copied());
}

/// Where a key is, or would be inserted, in a chunk.
pub(crate) enum Position {
    /// The key is entry `idx`.
    Found(usize),
    /// The key is absent; inserting it makes it entry `idx`.
    Absent {
        idx: usize,
        /// Byte offset of the entry that follows (the buffer's length at the end).
        start: usize,
        /// `lcp(key, previous key)` (0 for the first entry).
        lcp_prev: usize,
        /// `lcp(key, next key)` (0 at the end).
        lcp_next: usize,
    },
}

impl Chunk {
    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.hist.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.hist.is_empty()
    }

    /// Bytes of encoded keys.
    pub(crate) fn key_bytes(&self) -> usize {
        self.keys.len()
    }

    /// A decoder positioned before the first entry.
    pub(crate) fn cursor(&self) -> Cursor<'_> {
        Cursor::new(&self.keys)
    }

    pub(crate) fn history(&self, idx: usize) -> &History {
        &self.hist[idx]
    }

    pub(crate) fn history_mut(&mut self, idx: usize) -> &mut History {
        &mut self.hist[idx]
    }

    /// Heap bytes owned by the chunk (keys, histories and their boxes), from
    /// capacities.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.keys.capacity()
            + self.hist.capacity() * std::mem::size_of::<History>()
            + self.hist.iter().map(History::heap_bytes).sum::<usize>()
    }

    /// Locates `key`, without decoding keys: the comparison with each entry
    /// follows from the previous one and the entry's shared length. With
    /// `m = lcp(key, previous entry)` (the previous entry being `< key`):
    /// `shared < m` means the entry is greater than `key` (it departs from
    /// the previous entry, upwards, where `key` still agrees); `shared > m`
    /// means it is smaller (it agrees with the previous entry where that one
    /// is below `key`); `shared == m` compares the suffix with `key[m..]`.
    pub(crate) fn position(&self, key: &[u8]) -> Position {
        let buf = &self.keys[..];
        let (mut pos, mut idx, mut m) = (0, 0, 0);
        while pos < buf.len() {
            let (shared, suffix, end) = parse_entry(buf, pos);
            let (ord, l) = match shared.cmp(&m) {
                std::cmp::Ordering::Less => (std::cmp::Ordering::Greater, shared),
                std::cmp::Ordering::Greater => (std::cmp::Ordering::Less, m),
                std::cmp::Ordering::Equal => {
                    let (s, k) = (&buf[suffix..end], &key[m..]);
                    (s.cmp(k), m + lcp(s, k))
                }
            };
            match ord {
                std::cmp::Ordering::Less => m = l,
                std::cmp::Ordering::Equal => return Position::Found(idx),
                std::cmp::Ordering::Greater => {
                    return Position::Absent {
                        idx,
                        start: pos,
                        lcp_prev: m,
                        lcp_next: l,
                    }
                }
            }
            pos = end;
            idx += 1;
        }
        Position::Absent {
            idx,
            start: buf.len(),
            lcp_prev: m,
            lcp_next: 0,
        }
    }

    /// The index of `key`, if present.
    pub(crate) fn find(&self, key: &[u8]) -> Option<usize> {
        match self.position(key) {
            Position::Found(i) => Some(i),
            Position::Absent { .. } => None,
        }
    }

    /// Inserts an absent `key` at the position returned by
    /// [`position`](Self::position).
    pub(crate) fn insert(&mut self, pos: Position, key: &[u8], hist: History) {
        let Position::Absent {
            idx,
            start,
            lcp_prev,
            lcp_next,
        } = pos
        else {
            panic!("index chunk: inserting a key that is present");
        };
        let mut repl = Vec::with_capacity(key.len() + 8);
        encode_entry(&mut repl, lcp_prev, &key[lcp_prev..]);
        let end = if start < self.keys.len() {
            // Re-encode the successor against the new key. Since
            // prev < key < next, lcp(key, next) >= lcp(prev, next) = shared,
            // so the new suffix is a tail of the stored one.
            let (shared, suffix, end) = parse_entry(&self.keys, start);
            debug_assert!(lcp_next >= shared);
            encode_entry(
                &mut repl,
                lcp_next,
                &self.keys[suffix + (lcp_next - shared)..end],
            );
            end
        } else {
            start
        };
        replace_range(&mut self.keys, start, end, &repl);
        reserve_frugal(&mut self.hist, 1);
        self.hist.insert(idx, hist);
    }

    /// The key of entry `idx`, decoded.
    pub(crate) fn decode(&self, idx: usize) -> Vec<u8> {
        let mut c = self.cursor();
        while c.advance() {
            if c.idx() == idx {
                return c.key;
            }
        }
        panic!("index chunk: entry {idx} out of range");
    }

    /// Removes entry `idx`; returns its history.
    pub(crate) fn remove(&mut self, idx: usize) -> History {
        let mut c = self.cursor();
        while c.advance() && c.idx() < idx {}
        assert_eq!(c.idx(), idx, "index chunk: entry {idx} out of range");
        let (start, end, shared, key) = (c.start, c.pos, c.shared, c.key);
        let mut repl = Vec::new();
        let end = if end < self.keys.len() {
            let (n_shared, n_suffix, n_end) = parse_entry(&self.keys, end);
            let s = shared.min(n_shared);
            write_varint(&mut repl, s);
            write_varint(&mut repl, n_shared - s + (n_end - n_suffix));
            repl.extend_from_slice(&key[s..n_shared]);
            repl.extend_from_slice(&self.keys[n_suffix..n_end]);
            n_end
        } else {
            end
        };
        replace_range(&mut self.keys, start, end, &repl);
        let h = self.hist.remove(idx);
        trim(&mut self.keys);
        trim(&mut self.hist);
        h
    }

    /// Splits off entries `at..` into a new chunk; returns its first key and
    /// the chunk. Requires `0 < at < len`.
    pub(crate) fn split_off(&mut self, at: usize) -> (Vec<u8>, Chunk) {
        assert!(at > 0 && at < self.len(), "index chunk: bad split point");
        let mut c = self.cursor();
        while c.advance() && c.idx() < at {}
        let (start, end, first) = (c.start, c.pos, c.key);
        let mut keys = Vec::with_capacity(first.len() + 4 + self.keys.len() - end);
        encode_entry(&mut keys, 0, &first);
        keys.extend_from_slice(&self.keys[end..]);
        self.keys.truncate(start);
        self.keys.shrink_to_fit();
        let hist = self.hist.split_off(at);
        self.hist.shrink_to_fit();
        (first, Chunk { keys, hist })
    }

    /// Appends `other`, whose keys are all greater than this chunk's.
    pub(crate) fn append(&mut self, mut other: Chunk) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            *self = other;
            return;
        }
        let last = self.decode(self.len() - 1);
        let (shared, suffix, end) = parse_entry(&other.keys, 0);
        debug_assert_eq!(shared, 0);
        let first = &other.keys[suffix..end];
        debug_assert!(first > &last[..], "index chunk: append out of order");
        let l = lcp(&last, first);
        let mut head = Vec::new();
        encode_entry(&mut head, l, &first[l..]);
        reserve_frugal(&mut self.keys, head.len() + other.keys.len() - end);
        self.keys.extend_from_slice(&head);
        self.keys.extend_from_slice(&other.keys[end..]);
        reserve_frugal(&mut self.hist, other.hist.len());
        self.hist.append(&mut other.hist);
    }

    /// All keys, decoded (tests and debugging).
    #[cfg(test)]
    pub(crate) fn keys(&self) -> Vec<Vec<u8>> {
        let mut c = self.cursor();
        let mut out = Vec::new();
        while c.advance() {
            out.push(c.key().to_vec());
        }
        out
    }

    /// The encoded key bytes (tests).
    #[cfg(test)]
    pub(crate) fn raw(&self) -> &[u8] {
        &self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revision::Revision;

    fn h(main: i64) -> History {
        History::created(Revision::new(main, 0))
    }

    fn chunk(keys: &[&[u8]]) -> Chunk {
        let mut c = Chunk::default();
        for (i, k) in keys.iter().enumerate() {
            let pos = c.position(k);
            c.insert(pos, k, h(i as i64 + 2));
        }
        c
    }

    #[test]
    fn module_doc_example() {
        let c = chunk(&[b"a/c", b"b", b"a/b/22", b"a/b/1"]);
        let mut want = vec![0, 5];
        want.extend_from_slice(b"a/b/1");
        want.extend_from_slice(&[4, 2]);
        want.extend_from_slice(b"22");
        want.extend_from_slice(&[2, 1]);
        want.extend_from_slice(b"c");
        want.extend_from_slice(&[0, 1]);
        want.extend_from_slice(b"b");
        assert_eq!(c.raw(), &want[..]);
    }

    /// Inserting and removing in every order gives the canonical encoding
    /// (the one built by inserting in ascending order).
    #[test]
    fn edge_case_keys_round_trip() {
        let long = vec![0xffu8; 70_000];
        let mut long2 = long.clone();
        long2.push(0);
        let keys: Vec<&[u8]> = vec![
            b"",
            &[0x00],
            &[0x00, 0x00],
            b"a",
            b"ab",
            b"abc",
            b"abd",
            &[0x7f],
            &[0x80],
            &[0xff],
            &[0xff, 0xff],
            &long,
            &long2,
        ];
        let canonical = chunk(&keys);
        assert_eq!(
            canonical.keys(),
            keys.iter().map(|k| k.to_vec()).collect::<Vec<_>>()
        );
        // reverse order and an interleaved order
        let mut rev = keys.clone();
        rev.reverse();
        assert_eq!(chunk(&rev).raw(), canonical.raw());
        let inter: Vec<&[u8]> = keys
            .iter()
            .step_by(2)
            .chain(keys.iter().skip(1).step_by(2))
            .copied()
            .collect();
        assert_eq!(chunk(&inter).raw(), canonical.raw());
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(canonical.find(k), Some(i));
        }
        assert_eq!(canonical.find(b"aa"), None);
        assert_eq!(canonical.find(&[0xff, 0xff, 0xff]), None);
        // removing any one key equals building without it
        for i in 0..keys.len() {
            let mut c = chunk(&keys);
            c.remove(i);
            let mut without = keys.clone();
            without.remove(i);
            assert_eq!(c.raw(), chunk(&without).raw(), "remove {i}");
            assert_eq!(c.len(), keys.len() - 1);
        }
        // every split point, then append back
        for at in 1..keys.len() {
            let mut c = chunk(&keys);
            let (first, right) = c.split_off(at);
            assert_eq!(first, keys[at]);
            assert_eq!(c.raw(), chunk(&keys[..at]).raw());
            assert_eq!(right.raw(), chunk(&keys[at..]).raw());
            c.append(right);
            assert_eq!(c.raw(), canonical.raw());
            assert_eq!(c.history(at), &h(at as i64 + 2));
        }
    }

    #[test]
    fn varints_of_every_width() {
        for v in [
            0usize,
            1,
            127,
            128,
            16_383,
            16_384,
            1 << 21,
            usize::MAX >> 1,
        ] {
            let mut b = Vec::new();
            write_varint(&mut b, v);
            assert_eq!(read_varint(&b, 0), (v, b.len()));
        }
    }

    #[test]
    fn capacity_slack_is_bounded() {
        let mut c = Chunk::default();
        for i in 0..MAX_ENTRIES {
            let k = format!("{i:064}");
            let pos = c.position(k.as_bytes());
            c.insert(pos, k.as_bytes(), h(2));
        }
        assert!(c.keys.capacity() <= c.keys.len() + c.keys.len() / 8 + 64);
        assert!(c.hist.capacity() <= c.hist.len() + c.hist.len() / 8 + 1);
        while c.len() > 4 {
            c.remove(c.len() / 2);
        }
        assert!(c.keys.capacity() <= c.keys.len() + c.keys.len() / 4 + 4 + 64);
    }
}
