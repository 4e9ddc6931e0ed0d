//! bbolt's byte format (go.etcd.io/bbolt 1.3, as etcd 3.4 and 3.5 write it),
//! little-endian, as read and written by this crate.
//!
//! A file is an array of pages of `page_size` bytes (the meta's, 4096 on
//! etcd's Linux machines). Page `n` starts at byte `n * page_size`. A page
//! whose content is larger spans `1 + overflow` consecutive pages.
//!
//! ```text
//! page header (16 bytes, every page)
//!   0  id        u64   the page's own number
//!   8  flags     u16   0x01 branch, 0x02 leaf, 0x04 meta, 0x10 freelist
//!  10  count     u16   number of elements
//!  12  overflow  u32   extra pages this page spans
//!
//! meta (pages 0 and 1, after the header)
//!   0  magic     u32   0xED0CDAED
//!   4  version   u32   2
//!   8  pageSize  u32
//!  12  flags     u32   0
//!  16  root      bucket header of the root bucket (see below)
//!  32  freelist  u64   page of the freelist, or 0xFFFF_FFFF_FFFF_FFFF when
//!                      the freelist is not stored (etcd on Linux:
//!                      NoFreelistSync; the reader then treats every page not
//!                      reachable from the root as free)
//!  40  pgid      u64   high-water mark: pages in use are [0, pgid)
//!  48  txid      u64   transaction that wrote it; the valid meta with the
//!                      higher txid is the current one
//!  56  checksum  u64   FNV-1a 64 of bytes 0..56 of the meta
//!
//! branch page: `count` elements of 16 bytes after the header, then keys
//!   0  pos       u32   offset of the key from the start of THIS element
//!   4  ksize     u32
//!   8  pgid      u64   child page; its first key is the element's key
//!
//! leaf page: `count` elements of 16 bytes after the header, then key/values
//!   0  flags     u32   0x01: the value is a nested bucket's header
//!   4  pos       u32   offset of the key from the start of THIS element
//!   8  ksize     u32
//!  12  vsize     u32   the value follows the key
//!
//! bucket header (16 bytes; a bucket's value in its parent's leaf)
//!   0  root      u64   root page of the bucket's B+tree, or 0: an *inline*
//!                      bucket whose leaf page (header and elements) follows
//!                      the 16 bytes inside the value itself
//!   8  sequence  u64   NextSequence counter (etcd does not use it)
//! ```
//!
//! Keys in a page ascend (bytewise); a branch element's key is the first
//! key of its child. etcd keeps every bucket at the top level (the root
//! bucket's leaves hold `key`, `meta`, `lease`, ... with flag 0x01).
//!
//! Worked example: a fresh file with one bucket `b` holding `k = v`, page
//! size 4096, as [`Writer`](crate::Writer) lays it out:
//!
//! ```text
//! page 0, 1  meta: root = {root: 3, sequence: 0}, freelist: NONE, pgid: 4
//! page 2     leaf of bucket b: count 1, element {flags 0, pos 16, ksize 1,
//!            vsize 1}, then "kv" at byte 32 of the page
//! page 3     leaf of the root bucket: element {flags 1, pos 16, ksize 1,
//!            vsize 16}, then "b", then the bucket header {root: 2, seq: 0}
//! ```

/// Bytes of a page header.
pub const PAGE_HEADER_SIZE: usize = 16;
/// Bytes of a branch or leaf element.
pub const ELEMENT_SIZE: usize = 16;
/// Bytes of a bucket header.
pub const BUCKET_HEADER_SIZE: usize = 16;
/// Bytes of the meta struct (including its checksum).
pub const META_SIZE: usize = 64;
/// Offset of the checksum in the meta struct (the hash covers the bytes before).
const META_CHECKSUM_OFFSET: usize = 56;

/// bbolt's magic number.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The file format version bbolt 1.3 writes.
pub const VERSION: u32 = 2;
/// The page size etcd's files have on x86-64 Linux.
pub const DEFAULT_PAGE_SIZE: usize = 4096;
/// The smallest and largest page sizes accepted (bbolt uses the OS page size).
pub const MIN_PAGE_SIZE: usize = 512;
/// See [`MIN_PAGE_SIZE`].
pub const MAX_PAGE_SIZE: usize = 1 << 16;
/// The meta's freelist page when the freelist is not stored.
pub const NO_FREELIST: u64 = u64::MAX;
/// bbolt's largest key (`MaxKeySize`).
pub const MAX_KEY_SIZE: usize = 32768;
/// bbolt's largest value (`MaxValueSize`).
pub const MAX_VALUE_SIZE: usize = (1 << 31) - 2;

/// Page flag: branch page.
pub const BRANCH_PAGE: u16 = 0x01;
/// Page flag: leaf page.
pub const LEAF_PAGE: u16 = 0x02;
/// Page flag: meta page.
pub const META_PAGE: u16 = 0x04;
/// Page flag: freelist page.
pub const FREELIST_PAGE: u16 = 0x10;
/// Leaf element flag: the value is a nested bucket.
pub const BUCKET_LEAF_FLAG: u32 = 0x01;

/// A page header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageHeader {
    /// The page's number.
    pub id: u64,
    /// [`BRANCH_PAGE`], [`LEAF_PAGE`], [`META_PAGE`] or [`FREELIST_PAGE`].
    pub flags: u16,
    /// Number of elements.
    pub count: u16,
    /// Extra pages the page spans.
    pub overflow: u32,
}

impl PageHeader {
    /// Decodes the header at the start of `b` (at least 16 bytes).
    pub fn decode(b: &[u8]) -> PageHeader {
        PageHeader {
            id: u64_at(b, 0),
            flags: u16::from_le_bytes([b[8], b[9]]),
            count: u16::from_le_bytes([b[10], b[11]]),
            overflow: u32_at(b, 12),
        }
    }

    /// Encodes the header into the first 16 bytes of `b`.
    pub fn encode(&self, b: &mut [u8]) {
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..10].copy_from_slice(&self.flags.to_le_bytes());
        b[10..12].copy_from_slice(&self.count.to_le_bytes());
        b[12..16].copy_from_slice(&self.overflow.to_le_bytes());
    }
}

/// A bucket header: where a bucket's tree is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketHeader {
    /// Root page, or 0 for an inline bucket.
    pub root: u64,
    /// The bucket's sequence counter.
    pub sequence: u64,
}

impl BucketHeader {
    /// Decodes the first 16 bytes of `b`.
    pub fn decode(b: &[u8]) -> BucketHeader {
        BucketHeader {
            root: u64_at(b, 0),
            sequence: u64_at(b, 8),
        }
    }

    /// The 16 encoded bytes.
    pub fn encode(&self) -> [u8; BUCKET_HEADER_SIZE] {
        let mut b = [0u8; BUCKET_HEADER_SIZE];
        b[0..8].copy_from_slice(&self.root.to_le_bytes());
        b[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        b
    }
}

/// The meta struct of pages 0 and 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Page size of the file.
    pub page_size: u32,
    /// Meta flags (0).
    pub flags: u32,
    /// The root bucket.
    pub root: BucketHeader,
    /// Freelist page or [`NO_FREELIST`].
    pub freelist: u64,
    /// High-water mark: pages `[0, pgid)` are in use.
    pub pgid: u64,
    /// The transaction that wrote this meta.
    pub txid: u64,
}

impl Meta {
    /// Encodes the meta struct, with magic, version and checksum.
    pub fn encode(&self) -> [u8; META_SIZE] {
        let mut b = [0u8; META_SIZE];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..32].copy_from_slice(&self.root.encode());
        b[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        b[40..48].copy_from_slice(&self.pgid.to_le_bytes());
        b[48..56].copy_from_slice(&self.txid.to_le_bytes());
        let sum = fnv64a(&b[..META_CHECKSUM_OFFSET]);
        b[56..64].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Decodes and validates a meta struct (bbolt's `meta.validate`: magic,
    /// version, checksum).
    pub fn decode(b: &[u8]) -> Result<Meta, String> {
        if b.len() < META_SIZE {
            return Err(format!("meta of {} bytes", b.len()));
        }
        let magic = u32_at(b, 0);
        if magic != MAGIC {
            return Err(format!("magic {magic:#x}, want {MAGIC:#x}"));
        }
        let version = u32_at(b, 4);
        if version != VERSION {
            return Err(format!("version {version}, want {VERSION}"));
        }
        let sum = u64_at(b, META_CHECKSUM_OFFSET);
        if sum != fnv64a(&b[..META_CHECKSUM_OFFSET]) {
            return Err("meta checksum mismatch".into());
        }
        Ok(Meta {
            page_size: u32_at(b, 8),
            flags: u32_at(b, 12),
            root: BucketHeader::decode(&b[16..32]),
            freelist: u64_at(b, 32),
            pgid: u64_at(b, 40),
            txid: u64_at(b, 48),
        })
    }
}

/// FNV-1a, 64 bits (Go's `hash/fnv.New64a`, bbolt's meta checksum).
pub fn fnv64a(b: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = fnv::FnvHasher::default();
    h.write(b);
    h.finish()
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv64a_matches_go() {
        // Go: fnv.New64a() of "" and "a".
        assert_eq!(fnv64a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn meta_round_trip_and_validation() {
        let m = Meta {
            page_size: 4096,
            flags: 0,
            root: BucketHeader {
                root: 3,
                sequence: 0,
            },
            freelist: NO_FREELIST,
            pgid: 4,
            txid: 7,
        };
        let mut b = m.encode();
        assert_eq!(Meta::decode(&b), Ok(m));
        b[40] ^= 1;
        assert_eq!(Meta::decode(&b), Err("meta checksum mismatch".to_string()));
        b[0] ^= 1;
        assert!(Meta::decode(&b).unwrap_err().starts_with("magic"));
    }
}
