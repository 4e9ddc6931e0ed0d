//! Revisions and their byte encoding in the `key` column family.
//!
//! A [`Revision`] is `(main, sub)`: `main` is the store revision of a write
//! transaction (one per committed `TxnWrite` with changes), `sub` numbers the
//! changes inside it (0, 1, 2, ...). Revisions are totally ordered by
//! `(main, sub)`.
//!
//! On-disk key (column family `key`), byte by byte:
//!
//! ```text
//! offset 0..8   main, i64 big-endian
//! offset 8..16  sub,  i64 big-endian
//! offset 16     b't' (0x74), present only for a tombstone (a delete)
//! ```
//!
//! Invariants: `main >= 1` and `sub >= 0` for every stored revision, so the
//! big-endian byte order equals the numeric order and a RocksDB scan of the
//! `key` column family visits revisions in ascending order. A revision is
//! stored either as a plain key or as a tombstone key, never both.

use crate::error::{Error, Result};

/// Length of an encoded revision without the tombstone marker.
pub const REV_BYTES_LEN: usize = 16;
/// Length of an encoded revision carrying the tombstone marker.
pub const MARKED_REV_BYTES_LEN: usize = REV_BYTES_LEN + 1;
/// Marker byte appended to tombstone keys.
pub const TOMBSTONE_MARK: u8 = b't';

/// A point in the store's history: main revision and sub revision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Revision {
    /// The main revision: one per write transaction with changes.
    pub main: i64,
    /// The index of the change inside its write transaction.
    pub sub: i64,
}

impl Revision {
    /// Creates a revision.
    pub const fn new(main: i64, sub: i64) -> Self {
        Revision { main, sub }
    }

    /// Encodes `main:8 BE | sub:8 BE`.
    pub fn to_bytes(self) -> [u8; REV_BYTES_LEN] {
        let mut b = [0u8; REV_BYTES_LEN];
        b[..8].copy_from_slice(&self.main.to_be_bytes());
        b[8..].copy_from_slice(&self.sub.to_be_bytes());
        b
    }

    /// Encodes the key of this revision in the `key` column family, with the
    /// tombstone marker when `tombstone` is set.
    pub fn to_key(self, tombstone: bool) -> Vec<u8> {
        let mut v = Vec::with_capacity(MARKED_REV_BYTES_LEN);
        v.extend_from_slice(&self.to_bytes());
        if tombstone {
            v.push(TOMBSTONE_MARK);
        }
        v
    }

    /// Decodes a key of the `key` column family: the revision and whether it
    /// is a tombstone.
    pub fn from_key(key: &[u8]) -> Result<(Revision, bool)> {
        let tombstone = match key.len() {
            REV_BYTES_LEN => false,
            MARKED_REV_BYTES_LEN if key[REV_BYTES_LEN] == TOMBSTONE_MARK => true,
            _ => {
                return Err(Error::Corruption(format!(
                    "invalid revision key of {} bytes: {:02x?}",
                    key.len(),
                    key
                )))
            }
        };
        let main = i64::from_be_bytes(key[..8].try_into().expect("8 bytes"));
        let sub = i64::from_be_bytes(key[8..16].try_into().expect("8 bytes"));
        Ok((Revision { main, sub }, tombstone))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for (main, sub) in [(1, 0), (2, 5), (i64::MAX, i64::MAX), (256, 1 << 40)] {
            let r = Revision::new(main, sub);
            for t in [false, true] {
                let k = r.to_key(t);
                assert_eq!(k.len(), if t { 17 } else { 16 });
                assert_eq!(Revision::from_key(&k).unwrap(), (r, t));
            }
        }
    }

    #[test]
    fn byte_order_matches_numeric_order() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(1, 255),
            Revision::new(1, 256),
            Revision::new(2, 0),
            Revision::new(255, 3),
            Revision::new(256, 0),
            Revision::new(1 << 33, 0),
        ];
        for w in revs.windows(2) {
            assert!(w[0] < w[1]);
            assert!(w[0].to_bytes() < w[1].to_bytes());
            // a tombstone key sorts right after its own plain key and before
            // the next revision
            assert!(w[0].to_key(true) < w[1].to_key(false));
        }
    }

    #[test]
    fn rejects_bad_keys() {
        assert!(Revision::from_key(&[0; 15]).is_err());
        let mut k = Revision::new(3, 0).to_key(false);
        k.push(b'x');
        assert!(matches!(Revision::from_key(&k), Err(Error::Corruption(_))));
    }
}
