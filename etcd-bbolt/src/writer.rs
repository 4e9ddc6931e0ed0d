//! A streaming bulk writer: buckets and keys given in ascending order become
//! a bbolt file in one pass (etcd's `tx.WriteTo` shape, without a bbolt
//! database to copy from).
//!
//! Each bucket's B+tree is built bottom-up: leaf pages are filled and
//! written as keys arrive; each written page adds one element (its first key
//! and page number) to the pending page of the level above, which is written
//! when full in turn. Memory is one pending page per tree level, whatever
//! the number of keys. Pages are written in the order they fill, so
//! children come before their parents; bbolt does not care. The two meta
//! pages are written last, over the two pages reserved at the start, so a
//! file cut short by a crash has no valid meta and is refused by bbolt and
//! by [`Reader`](crate::Reader).
//!
//! Invariants: keys within a bucket and top-level bucket names strictly
//! ascend (bytewise), as bbolt keeps them; a page holds at least one
//! element and at most what fits in `page_size` bytes, or one element
//! spanning overflow pages.

use std::io::{Seek, SeekFrom, Write};

use crate::error::{Error, Result};
use crate::format::{
    BucketHeader, Meta, PageHeader, BRANCH_PAGE, BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG,
    ELEMENT_SIZE, LEAF_PAGE, MAX_KEY_SIZE, MAX_PAGE_SIZE, MAX_VALUE_SIZE, META_PAGE, MIN_PAGE_SIZE,
    NO_FREELIST, PAGE_HEADER_SIZE,
};

/// What [`Writer::finish`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrittenFile {
    /// Bytes of the file (`pages * page_size`).
    pub size: u64,
    /// Pages of the file (the meta's high-water mark).
    pub pages: u64,
    /// Key/value pairs written, over all buckets.
    pub keys: u64,
}

/// Writes a bbolt file of top-level buckets.
///
/// ```
/// use etcd_bbolt::{Reader, Writer};
///
/// let mut w = Writer::new(std::io::Cursor::new(Vec::new()), 4096).unwrap();
/// w.begin_bucket(b"key").unwrap();
/// w.put(b"a", b"1").unwrap();
/// w.put(b"b", b"2").unwrap();
/// w.begin_bucket(b"meta").unwrap();
/// w.put(b"consistent_index", &7u64.to_be_bytes()).unwrap();
/// let (file, written) = w.finish(1).unwrap();
/// assert_eq!(written.keys, 3);
///
/// let r = Reader::from_bytes(file.into_inner()).unwrap();
/// let buckets = r.buckets().unwrap();
/// assert_eq!(buckets.iter().map(|b| &b.name[..]).collect::<Vec<_>>(), [&b"key"[..], b"meta"]);
/// let mut kvs = Vec::new();
/// r.for_each(&buckets[0], |k, v| { kvs.push((k.to_vec(), v.to_vec())); Ok(()) }).unwrap();
/// assert_eq!(kvs, [(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())]);
/// ```
pub struct Writer<W: Write + Seek> {
    /// The file, positioned at the end of the last page written.
    out: W,
    /// Bytes per page.
    page_size: usize,
    /// Next free page number (pages 0 and 1 are the metas).
    next_page: u64,
    /// The root bucket's tree: one element per top-level bucket.
    root: TreeBuilder,
    /// The bucket being written: its name and tree.
    current: Option<(Vec<u8>, TreeBuilder)>,
    /// Pairs written so far.
    keys: u64,
}

impl<W: Write + Seek> Writer<W> {
    /// A writer of a new file into `out` (written from its current start:
    /// pass an empty file) with pages of `page_size` bytes.
    pub fn new(mut out: W, page_size: usize) -> Result<Writer<W>> {
        if !(MIN_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(Error::Usage(format!("page size {page_size}")));
        }
        // The meta pages are written by `finish`; zeros until then.
        out.write_all(&vec![0u8; 2 * page_size])?;
        Ok(Writer {
            out,
            page_size,
            next_page: 2,
            root: TreeBuilder::default(),
            current: None,
            keys: 0,
        })
    }

    /// Starts the next top-level bucket (ends the previous one). Names must
    /// ascend.
    pub fn begin_bucket(&mut self, name: &[u8]) -> Result<()> {
        if name.is_empty() || name.len() > MAX_KEY_SIZE {
            return Err(Error::Usage(format!("bucket name of {} bytes", name.len())));
        }
        self.end_bucket()?;
        if let Some(last) = &self.root.last_key {
            if name <= &last[..] {
                return Err(Error::Usage(format!(
                    "bucket {:?} after {:?}",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(last)
                )));
            }
        }
        self.current = Some((name.to_vec(), TreeBuilder::default()));
        Ok(())
    }

    /// Adds `key = value` to the current bucket. Keys must ascend.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if key.is_empty() || key.len() > MAX_KEY_SIZE || value.len() > MAX_VALUE_SIZE {
            return Err(Error::Usage(format!(
                "key of {} bytes, value of {} bytes",
                key.len(),
                value.len()
            )));
        }
        let Some((_, tree)) = self.current.as_mut() else {
            return Err(Error::Usage("put outside a bucket".into()));
        };
        let mut pages = Pages {
            out: &mut self.out,
            page_size: self.page_size,
            next_page: &mut self.next_page,
        };
        tree.add_leaf(&mut pages, key, value, 0)?;
        self.keys += 1;
        Ok(())
    }

    fn end_bucket(&mut self) -> Result<()> {
        if let Some((name, tree)) = self.current.take() {
            let mut pages = Pages {
                out: &mut self.out,
                page_size: self.page_size,
                next_page: &mut self.next_page,
            };
            let root = tree.finish(&mut pages)?;
            let header = BucketHeader { root, sequence: 0 }.encode();
            debug_assert_eq!(header.len(), BUCKET_HEADER_SIZE);
            self.root
                .add_leaf(&mut pages, &name, &header, BUCKET_LEAF_FLAG)?;
        }
        Ok(())
    }

    /// Ends the last bucket, writes the root bucket's tree and both meta
    /// pages (transaction `txid`), flushes, and returns the output.
    /// The caller makes it durable (fsync) if it needs to.
    pub fn finish(mut self, txid: u64) -> Result<(W, WrittenFile)> {
        self.end_bucket()?;
        let root_tree = std::mem::take(&mut self.root);
        let mut pages = Pages {
            out: &mut self.out,
            page_size: self.page_size,
            next_page: &mut self.next_page,
        };
        let root = root_tree.finish(&mut pages)?;
        let pgid = self.next_page;
        let meta = Meta {
            page_size: self.page_size as u32,
            flags: 0,
            root: BucketHeader { root, sequence: 0 },
            freelist: NO_FREELIST,
            pgid,
            txid,
        };
        self.out.flush()?;
        for id in 0..2u64 {
            let mut page = vec![0u8; self.page_size];
            PageHeader {
                id,
                flags: META_PAGE,
                count: 0,
                overflow: 0,
            }
            .encode(&mut page);
            page[PAGE_HEADER_SIZE..PAGE_HEADER_SIZE + meta.encode().len()]
                .copy_from_slice(&meta.encode());
            self.out.seek(SeekFrom::Start(id * self.page_size as u64))?;
            self.out.write_all(&page)?;
        }
        self.out
            .seek(SeekFrom::Start(pgid * self.page_size as u64))?;
        self.out.flush()?;
        Ok((
            self.out,
            WrittenFile {
                size: pgid * self.page_size as u64,
                pages: pgid,
                keys: self.keys,
            },
        ))
    }
}

/// Where pages go: the file and the next free page number.
struct Pages<'a, W: Write> {
    out: &'a mut W,
    page_size: usize,
    next_page: &'a mut u64,
}

impl<W: Write> Pages<'_, W> {
    /// Writes a page of `body` (elements and data, after the header) with
    /// `flags` and `count`; returns its number.
    fn write(&mut self, flags: u16, count: usize, body: &[u8]) -> Result<u64> {
        let len = PAGE_HEADER_SIZE + body.len();
        let spans = len.div_ceil(self.page_size);
        let id = *self.next_page;
        let count = u16::try_from(count).map_err(|_| Error::Usage("page count".into()))?;
        let mut head = [0u8; PAGE_HEADER_SIZE];
        PageHeader {
            id,
            flags,
            count,
            overflow: (spans - 1) as u32,
        }
        .encode(&mut head);
        self.out.write_all(&head)?;
        self.out.write_all(body)?;
        self.out
            .write_all(&vec![0u8; spans * self.page_size - len])?;
        *self.next_page += spans as u64;
        Ok(id)
    }
}

/// One pending page: its elements (key, value or child page, flags).
#[derive(Default)]
struct PendingPage {
    /// (key, leaf value or empty for branches, leaf flags, child page)
    elems: Vec<(Vec<u8>, Vec<u8>, u32, u64)>,
    /// Bytes the page would take, header included.
    bytes: usize,
    /// Pages written from this level so far.
    written: u64,
}

impl PendingPage {
    fn new() -> PendingPage {
        PendingPage {
            bytes: PAGE_HEADER_SIZE,
            ..Default::default()
        }
    }

    /// Encodes the elements as a branch or leaf page body.
    fn body(&self, leaf: bool) -> Vec<u8> {
        let n = self.elems.len();
        let mut body = vec![0u8; n * ELEMENT_SIZE];
        for (i, (k, v, flags, child)) in self.elems.iter().enumerate() {
            // pos counts from the element's own start (page-relative
            // offsets: element at 16 + 16 i, data at 16 + body.len()).
            let pos = (body.len() - i * ELEMENT_SIZE) as u32;
            let e = &mut body[i * ELEMENT_SIZE..(i + 1) * ELEMENT_SIZE];
            if leaf {
                e[0..4].copy_from_slice(&flags.to_le_bytes());
                e[4..8].copy_from_slice(&pos.to_le_bytes());
                e[8..12].copy_from_slice(&(k.len() as u32).to_le_bytes());
                e[12..16].copy_from_slice(&(v.len() as u32).to_le_bytes());
            } else {
                e[0..4].copy_from_slice(&pos.to_le_bytes());
                e[4..8].copy_from_slice(&(k.len() as u32).to_le_bytes());
                e[8..16].copy_from_slice(&child.to_le_bytes());
            }
            body.extend_from_slice(k);
            body.extend_from_slice(v);
        }
        body
    }
}

/// A B+tree being built bottom-up (see the module doc).
#[derive(Default)]
struct TreeBuilder {
    /// levels[0] is the pending leaf; levels[i] the pending branch page
    /// over level i-1.
    levels: Vec<PendingPage>,
    /// The last key added (order check).
    last_key: Option<Vec<u8>>,
}

impl TreeBuilder {
    fn add_leaf<W: Write>(
        &mut self,
        pages: &mut Pages<'_, W>,
        key: &[u8],
        value: &[u8],
        flags: u32,
    ) -> Result<()> {
        if let Some(last) = &self.last_key {
            if key <= &last[..] {
                return Err(Error::Usage(format!(
                    "key {:?} after {:?}: keys must ascend",
                    String::from_utf8_lossy(key),
                    String::from_utf8_lossy(last)
                )));
            }
        }
        self.last_key = Some(key.to_vec());
        let size = ELEMENT_SIZE + key.len() + value.len();
        self.add(pages, 0, (key.to_vec(), value.to_vec(), flags, 0), size)
    }

    /// Adds an element to the pending page of `level`, writing that page
    /// first if the element does not fit.
    fn add<W: Write>(
        &mut self,
        pages: &mut Pages<'_, W>,
        level: usize,
        elem: (Vec<u8>, Vec<u8>, u32, u64),
        size: usize,
    ) -> Result<()> {
        if self.levels.len() <= level {
            self.levels.push(PendingPage::new());
        }
        let p = &self.levels[level];
        if !p.elems.is_empty() && p.bytes + size > pages.page_size {
            self.flush(pages, level)?;
        }
        let p = &mut self.levels[level];
        p.elems.push(elem);
        p.bytes += size;
        Ok(())
    }

    /// Writes the pending page of `level` and adds it to the level above.
    fn flush<W: Write>(&mut self, pages: &mut Pages<'_, W>, level: usize) -> Result<()> {
        let id = self.write_level(pages, level)?;
        let p = std::mem::replace(&mut self.levels[level], PendingPage::new());
        self.levels[level].written = p.written + 1;
        let first = p
            .elems
            .into_iter()
            .next()
            .expect("a written page has elements")
            .0;
        let size = ELEMENT_SIZE + first.len();
        self.add(pages, level + 1, (first, Vec::new(), 0, id), size)
    }

    fn write_level<W: Write>(&self, pages: &mut Pages<'_, W>, level: usize) -> Result<u64> {
        let p = &self.levels[level];
        let (flags, leaf) = if level == 0 {
            (LEAF_PAGE, true)
        } else {
            (BRANCH_PAGE, false)
        };
        pages.write(flags, p.elems.len(), &p.body(leaf))
    }

    /// Writes what is pending and returns the tree's root page.
    fn finish<W: Write>(mut self, pages: &mut Pages<'_, W>) -> Result<u64> {
        if self.levels.is_empty() {
            // An empty bucket: one empty leaf page.
            self.levels.push(PendingPage::new());
        }
        let mut level = 0;
        loop {
            let p = &self.levels[level];
            if p.written == 0 {
                if level > 0 && p.elems.len() == 1 {
                    // The level below wrote exactly one page: the root.
                    return Ok(p.elems[0].3);
                }
                return self.write_level(pages, level);
            }
            self.flush(pages, level)?;
            level += 1;
        }
    }
}
