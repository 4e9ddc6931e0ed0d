//! A validating reader of bbolt files (etcd's `member/snap/db` and the
//! snapshots `etcdctl snapshot save` writes), one page at a time.
//!
//! Untrusted input: every page number is checked against the meta's
//! high-water mark and the file's length, every page's header against the
//! type expected there and its own number, every element against its page's
//! bounds, keys against the order bbolt keeps, and a walk refuses a page it
//! already reached (cycles, shared subtrees). Memory is one page per tree
//! level plus a bit per page of the file; nothing is mapped.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{corrupt, Error, Result};
use crate::format::{
    u32_at, u64_at, BucketHeader, Meta, PageHeader, BRANCH_PAGE, BUCKET_HEADER_SIZE,
    BUCKET_LEAF_FLAG, ELEMENT_SIZE, LEAF_PAGE, MAX_PAGE_SIZE, META_SIZE, MIN_PAGE_SIZE,
    PAGE_HEADER_SIZE,
};

/// Tree depth beyond which a file is taken as corrupt (a bbolt tree of 2^64
/// keys is far shallower).
const MAX_DEPTH: usize = 64;

/// Bytes a reader reads pages from.
#[allow(clippy::len_without_is_empty)] // a length that can fail to be read
pub trait Source {
    /// Length in bytes.
    fn len(&self) -> Result<u64>;
    /// Fills `buf` from offset `at` (the range is within `len`).
    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> Result<()>;
}

impl Source for File {
    fn len(&self) -> Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> Result<()> {
        Ok(FileExt::read_exact_at(self, buf, at)?)
    }
}

impl Source for Vec<u8> {
    fn len(&self) -> Result<u64> {
        Ok(self.as_slice().len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], at: u64) -> Result<()> {
        let at = usize::try_from(at).map_err(|_| corrupt("offset"))?;
        let src = self
            .get(at..at + buf.len())
            .ok_or_else(|| corrupt("read past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// A top-level bucket of the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketRef {
    /// The bucket's name.
    pub name: Vec<u8>,
    /// Where its tree is.
    pub header: BucketHeader,
    /// An inline bucket's leaf page (header and elements), when `header.root`
    /// is 0.
    pub inline: Option<Vec<u8>>,
}

/// A bbolt file opened for reading.
pub struct Reader<S: Source> {
    src: S,
    /// The current meta (the valid one with the higher txid).
    meta: Meta,
    page_size: usize,
}

impl Reader<File> {
    /// Opens the file at `path`.
    pub fn open(path: &Path) -> Result<Reader<File>> {
        Reader::new(File::open(path)?)
    }
}

impl Reader<Vec<u8>> {
    /// Reads a file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Reader<Vec<u8>>> {
        Reader::new(bytes)
    }
}

impl<S: Source> Reader<S> {
    /// Validates the metas of `src` and picks the current one.
    pub fn new(src: S) -> Result<Reader<S>> {
        let len = src.len()?;
        let read_meta = |at: u64| -> std::result::Result<Meta, String> {
            if at + (PAGE_HEADER_SIZE + META_SIZE) as u64 > len {
                return Err("file too short".into());
            }
            let mut b = [0u8; PAGE_HEADER_SIZE + META_SIZE];
            src.read_exact_at(&mut b, at).map_err(|e| e.to_string())?;
            Meta::decode(&b[PAGE_HEADER_SIZE..])
        };
        let meta0 = read_meta(0);
        // Meta 1 is one page further; the page size is meta 0's, or (meta 0
        // damaged) the first plausible one that gives a valid meta 1.
        let meta1 = match &meta0 {
            Ok(m) => read_meta(u64::from(m.page_size)),
            Err(_) => {
                let mut found = Err("no valid meta 1".to_string());
                let mut size = MIN_PAGE_SIZE;
                while size <= MAX_PAGE_SIZE {
                    if let Ok(m) = read_meta(size as u64) {
                        if m.page_size as usize == size {
                            found = Ok(m);
                            break;
                        }
                    }
                    size *= 2;
                }
                found
            }
        };
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(a), Err(b)) => {
                return Err(Error::InvalidMeta(format!("meta 0: {a}; meta 1: {b}")))
            }
        };
        let page_size = meta.page_size as usize;
        if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(Error::InvalidMeta(format!("page size {page_size}")));
        }
        if meta.pgid < 2
            || meta
                .pgid
                .checked_mul(page_size as u64)
                .is_none_or(|n| n > len)
        {
            return Err(corrupt(format!(
                "high-water mark of {} pages of {page_size} bytes beyond the file's {len} bytes",
                meta.pgid
            )));
        }
        Ok(Reader {
            src,
            meta,
            page_size,
        })
    }

    /// The current meta.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Bytes of the database in use (`pgid * page_size`: etcd's `Size()`).
    pub fn size(&self) -> u64 {
        self.meta.pgid * self.page_size as u64
    }

    /// The top-level buckets, in name order (non-bucket keys at the top
    /// level are an error: bbolt allows none).
    pub fn buckets(&self) -> Result<Vec<BucketRef>> {
        self.buckets_in(&mut Seen::new(self.meta.pgid))
    }

    /// Calls `f` with each key/value of `bucket` in key order (nested
    /// buckets are an error: etcd has none).
    pub fn for_each(
        &self,
        bucket: &BucketRef,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        self.for_each_in(bucket, &mut Seen::new(self.meta.pgid), &mut f)
    }

    /// Checks every page reachable from the root (bbolt's `tx.Check`
    /// without the freelist): each reached once over the whole file, well
    /// formed, keys in order. Returns the number of key/values in all
    /// buckets.
    pub fn check(&self) -> Result<u64> {
        // One `Seen` for the whole file: a page shared by two trees is
        // caught too.
        let mut seen = Seen::new(self.meta.pgid);
        let mut n = 0;
        for b in self.buckets_in(&mut seen)? {
            self.for_each_in(&b, &mut seen, &mut |_, _| {
                n += 1;
                Ok(())
            })?;
        }
        Ok(n)
    }

    /// [`buckets`](Self::buckets), marking the pages it reads in `seen`.
    fn buckets_in(&self, seen: &mut Seen) -> Result<Vec<BucketRef>> {
        let mut out = Vec::new();
        let root = BucketRef {
            name: Vec::new(),
            header: self.meta.root,
            inline: None,
        };
        self.walk(&root, seen, &mut |k, v, flags| {
            if flags & BUCKET_LEAF_FLAG == 0 {
                return Err(corrupt("a key that is not a bucket at the top level"));
            }
            out.push(bucket_ref(k, v)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// [`for_each`](Self::for_each), marking the pages it reads in `seen`.
    fn for_each_in(
        &self,
        bucket: &BucketRef,
        seen: &mut Seen,
        f: &mut dyn FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        self.walk(bucket, seen, &mut |k, v, flags| {
            if flags & BUCKET_LEAF_FLAG != 0 {
                return Err(corrupt(format!(
                    "nested bucket {:?} in bucket {:?}",
                    String::from_utf8_lossy(k),
                    String::from_utf8_lossy(&bucket.name)
                )));
            }
            f(k, v)
        })
    }

    fn walk(
        &self,
        bucket: &BucketRef,
        seen: &mut Seen,
        f: &mut dyn FnMut(&[u8], &[u8], u32) -> Result<()>,
    ) -> Result<()> {
        let mut last: Option<Vec<u8>> = None;
        if bucket.header.root == 0 {
            let page = bucket
                .inline
                .as_deref()
                .ok_or_else(|| corrupt("inline bucket without a page"))?;
            let h = page_header(page)?;
            if h.flags != LEAF_PAGE {
                return Err(corrupt(format!("inline page of flags {:#x}", h.flags)));
            }
            return visit_leaf(page, h.count, &mut last, f);
        }
        self.walk_page(bucket.header.root, 0, seen, &mut last, f)
    }

    fn walk_page(
        &self,
        id: u64,
        depth: usize,
        seen: &mut Seen,
        last: &mut Option<Vec<u8>>,
        f: &mut dyn FnMut(&[u8], &[u8], u32) -> Result<()>,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(corrupt("tree deeper than 64 levels"));
        }
        let page = self.page(id, seen)?;
        let h = page_header(&page)?;
        match h.flags {
            LEAF_PAGE => visit_leaf(&page, h.count, last, f),
            BRANCH_PAGE => {
                if h.count == 0 {
                    return Err(corrupt(format!("empty branch page {id}")));
                }
                for i in 0..h.count as usize {
                    let e = element(&page, i)?;
                    let pos = u32_at(e, 0) as usize;
                    let ksize = u32_at(e, 4) as usize;
                    let child = u64_at(e, 8);
                    // The key must be readable; order is checked on the leaves.
                    data(&page, i, pos, ksize)?;
                    self.walk_page(child, depth + 1, seen, last, f)?;
                }
                Ok(())
            }
            other => Err(corrupt(format!(
                "page {id} has flags {other:#x} where a branch or leaf page belongs"
            ))),
        }
    }

    /// Reads page `id` with its overflow pages, once per walk.
    fn page(&self, id: u64, seen: &mut Seen) -> Result<Vec<u8>> {
        if id < 2 || id >= self.meta.pgid {
            return Err(corrupt(format!(
                "page {id} outside [2, {}) of the file",
                self.meta.pgid
            )));
        }
        let ps = self.page_size as u64;
        let mut head = [0u8; PAGE_HEADER_SIZE];
        self.src.read_exact_at(&mut head, id * ps)?;
        let h = PageHeader::decode(&head);
        if h.id != id {
            return Err(corrupt(format!("page {id} says it is page {}", h.id)));
        }
        let end = id
            .checked_add(1 + u64::from(h.overflow))
            .filter(|end| *end <= self.meta.pgid)
            .ok_or_else(|| corrupt(format!("page {id} overflows past the high-water mark")))?;
        for p in id..end {
            seen.mark(p)?;
        }
        let mut page = vec![0u8; ((end - id) * ps) as usize];
        self.src.read_exact_at(&mut page, id * ps)?;
        Ok(page)
    }
}

/// Pages reached by one walk (a bit each).
struct Seen(Vec<u64>);

impl Seen {
    fn new(pages: u64) -> Seen {
        Seen(vec![0; pages.div_ceil(64) as usize])
    }

    fn mark(&mut self, page: u64) -> Result<()> {
        let (w, b) = ((page / 64) as usize, page % 64);
        if self.0[w] & (1 << b) != 0 {
            return Err(corrupt(format!("page {page} reached twice")));
        }
        self.0[w] |= 1 << b;
        Ok(())
    }
}

fn bucket_ref(name: &[u8], value: &[u8]) -> Result<BucketRef> {
    if value.len() < BUCKET_HEADER_SIZE {
        return Err(corrupt(format!(
            "bucket {:?} value of {} bytes",
            String::from_utf8_lossy(name),
            value.len()
        )));
    }
    let header = BucketHeader::decode(value);
    let inline = (header.root == 0).then(|| value[BUCKET_HEADER_SIZE..].to_vec());
    Ok(BucketRef {
        name: name.to_vec(),
        header,
        inline,
    })
}

fn page_header(page: &[u8]) -> Result<PageHeader> {
    if page.len() < PAGE_HEADER_SIZE {
        return Err(corrupt("page shorter than its header"));
    }
    Ok(PageHeader::decode(page))
}

fn element(page: &[u8], i: usize) -> Result<&[u8]> {
    let at = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
    page.get(at..at + ELEMENT_SIZE)
        .ok_or_else(|| corrupt("element past the end of its page"))
}

/// The `len` bytes at `pos` from element `i`'s start.
fn data(page: &[u8], i: usize, pos: usize, len: usize) -> Result<&[u8]> {
    let start = PAGE_HEADER_SIZE + i * ELEMENT_SIZE + pos;
    start
        .checked_add(len)
        .and_then(|end| page.get(start..end))
        .ok_or_else(|| corrupt("key or value past the end of its page"))
}

fn visit_leaf(
    page: &[u8],
    count: u16,
    last: &mut Option<Vec<u8>>,
    f: &mut dyn FnMut(&[u8], &[u8], u32) -> Result<()>,
) -> Result<()> {
    for i in 0..count as usize {
        let e = element(page, i)?;
        let flags = u32_at(e, 0);
        let pos = u32_at(e, 4) as usize;
        let ksize = u32_at(e, 8) as usize;
        let vsize = u32_at(e, 12) as usize;
        let kv = data(page, i, pos, ksize + vsize)?;
        let (k, v) = kv.split_at(ksize);
        if last.as_deref().is_some_and(|l| k <= l) {
            return Err(corrupt("keys out of order"));
        }
        *last = Some(k.to_vec());
        f(k, v, flags)?;
    }
    Ok(())
}
