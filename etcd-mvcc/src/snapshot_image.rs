//! The snapshot image: a self-checking byte stream holding the whole store
//! (every column family), as sent to a follower that is too far behind (the
//! role of the bbolt file in etcd's `snap/db.go`). Written by
//! [`Store::export`](crate::Store::export), read by
//! [`Store::restore`](crate::Store::restore) and [`verify_image`].
//!
//! # Format (version 1)
//!
//! All integers are big-endian. `crc32c` is CRC-32C (Castagnoli).
//!
//! ```text
//! header   (28 bytes)
//!   0..8    magic "ETCDRSDB"
//!   8..12   image format version, u32 = 1
//!   12..16  flags, u32 = 0 (reserved; a reader refuses other values)
//!   16..24  consistent index of the image, u64
//!   24..28  crc32c of bytes 0..24
//! block    (repeated; block i has seq = i, starting at 0)
//!   0       kind, u8: 1 = records, 2 = trailer (the last block)
//!   1..5    seq, u32
//!   5..9    count, u32: records in the payload (0 for the trailer)
//!   9..13   len, u32: payload bytes (at most 1 GiB)
//!   13..    payload
//!   +len    crc32c of the block header (13 bytes) and the payload, u32
//! record   (inside a records block's payload; never split across blocks)
//!   cf u8 | key_len u32 | value_len u32 | key | value
//!   cf: 0 key, 1 meta, 2 lease, 3 auth, 4 members, 5 alarm
//! trailer payload (40 bytes)
//!   records u64 | record blocks u64 | consistent index u64 |
//!   revision i64 | compact revision i64 (-1: never compacted)
//! end of stream right after the trailer block
//! ```
//!
//! Records come in `(cf, key)` order, strictly increasing: column families
//! in the order above, keys ascending inside each. The encoder closes a
//! records block before it would exceed [`BLOCK_TARGET`] payload bytes, so
//! a block is at most `BLOCK_TARGET` bytes unless it holds a single record
//! larger than that; the decoder holds one block at a time (and reads a
//! block's payload as it arrives, never trusting `len` for an allocation).
//!
//! # What the decoder checks (everything, before anything is applied)
//!
//! - magic, version, flags and the header checksum; each block's checksum,
//!   kind and sequence number; the payload length limit; that records fill
//!   their payload exactly and match `count`; the strict `(cf, key)` order;
//!   the trailer's counts; no bytes after the trailer. A truncated stream, a
//!   flipped bit anywhere, a dropped, repeated or reordered block: all are
//!   refused with [`Error::InvalidImage`] naming the block and the offset.
//! - the `key` column family: valid revision keys with `1 <= main <= 2^62`,
//!   `sub >= 0`, strictly increasing revisions; values that decode as
//!   `mvccpb.KeyValue` with a non-empty key; a put has `mod_revision ==
//!   main`, `1 <= create_revision <= main` and `version >= 1`;
//! - `meta`: the known records are 8 bytes; compaction revisions in
//!   `0..=2^62`, finished `<=` scheduled; the format version is supported
//!   ([`Error::UnsupportedFormat`] otherwise); the consistent index equals
//!   the header's; no `restore_in_progress` record;
//! - the trailer's consistent index, revision (`max(highest main revision,
//!   scheduled compaction, 1)`, what [`Store::open`](crate::Store::open)
//!   would compute) and compaction revision equal the ones computed from the
//!   records.
//!
//! So a restore from a verified image cannot hit an invariant of the key
//! index, and the restored store reports the revisions the trailer names.

use std::io::Read;

use bytes::Bytes;
use prost::Message;

use crate::backend::{
    Cf, FORMAT_VERSION, META_CONSISTENT_INDEX, META_FINISHED_COMPACT, META_FORMAT_VERSION,
    META_RESTORING, META_SCHEDULED_COMPACT,
};
use crate::error::{Error, Result};
use crate::pb::mvccpb::KeyValue;
use crate::revision::Revision;

/// First bytes of every image.
pub const IMAGE_MAGIC: [u8; 8] = *b"ETCDRSDB";
/// The image format version this build writes and reads.
pub const IMAGE_VERSION: u32 = 1;
/// Payload bytes after which the encoder closes a records block.
pub const BLOCK_TARGET: usize = 256 * 1024;
/// Largest payload a decoder accepts (a single huge record).
pub const MAX_BLOCK_LEN: u32 = 1 << 30;

pub(crate) const HEADER_LEN: usize = 28;
const BLOCK_HEADER_LEN: usize = 13;
const RECORD_HEADER_LEN: usize = 9;
const TRAILER_LEN: usize = 40;
const KIND_RECORDS: u8 = 1;
const KIND_TRAILER: u8 = 2;
/// Highest revision an image may carry (keeps `revision + 1` far from overflow).
const MAX_REV: i64 = 1 << 62;

/// What an image holds, from its trailer (checked against its records).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageInfo {
    /// Index of the last raft entry applied to the image's state.
    pub consistent_index: u64,
    /// The store's current revision once restored.
    pub revision: i64,
    /// The scheduled compaction revision (-1: never compacted).
    pub compact_revision: i64,
    /// The finished compaction revision (-1: none); below `compact_revision`
    /// when the source was still removing revisions: the restored store
    /// resumes that compaction.
    pub finished_compact_revision: i64,
    /// Records (of all column families).
    pub records: u64,
    /// Records blocks (the trailer not counted).
    pub blocks: u64,
    /// Bytes of the whole image.
    pub bytes: u64,
    /// Largest block payload met (what a decoder buffers at most).
    pub max_block_len: usize,
}

fn cf_code(cf: Cf) -> u8 {
    cf as u8
}

fn cf_from_code(c: u8) -> Option<Cf> {
    Cf::ALL.get(c as usize).copied()
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidImage(msg.into())
}

fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().expect("8 bytes"))
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().expect("4 bytes"))
}

/// The image's summary, accumulated from its records by the encoder and the
/// decoder alike; the decoder also validates each record (module doc).
#[derive(Clone, Debug)]
pub(crate) struct Summary {
    pub(crate) consistent_index: u64,
    pub(crate) scheduled: i64,
    pub(crate) finished: i64,
    pub(crate) max_rev: i64,
    last_rev: Option<Revision>,
    pub(crate) records: u64,
}

impl Default for Summary {
    fn default() -> Self {
        Summary {
            consistent_index: 0,
            scheduled: -1,
            finished: -1,
            max_rev: 0,
            last_rev: None,
            records: 0,
        }
    }
}

impl Summary {
    /// The current revision of a store holding these records (as `Store::open`).
    pub(crate) fn revision(&self) -> i64 {
        self.max_rev.max(self.scheduled).max(1)
    }

    /// Accounts one record (in image order) and checks it.
    pub(crate) fn observe(&mut self, cf: Cf, key: &[u8], value: &[u8]) -> Result<()> {
        self.records += 1;
        match cf {
            Cf::Key => self.observe_revision(key, value),
            Cf::Meta => self.observe_meta(key, value),
            _ => Ok(()),
        }
    }

    fn observe_revision(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let (rev, tombstone) =
            Revision::from_key(key).map_err(|e| invalid(format!("key column family: {e}")))?;
        if !(1..=MAX_REV).contains(&rev.main) || !(0..=MAX_REV).contains(&rev.sub) {
            return Err(invalid(format!("revision {rev:?} out of range")));
        }
        if self.last_rev.is_some_and(|l| rev <= l) {
            return Err(invalid(format!(
                "revision {rev:?} not above the previous one {:?}",
                self.last_rev
            )));
        }
        self.last_rev = Some(rev);
        let kv = KeyValue::decode(value)
            .map_err(|e| invalid(format!("undecodable key-value at {rev:?}: {e}")))?;
        if kv.key.is_empty() {
            return Err(invalid(format!("key-value at {rev:?} has an empty key")));
        }
        if !tombstone
            && (kv.mod_revision != rev.main
                || !(1..=rev.main).contains(&kv.create_revision)
                || kv.version < 1)
        {
            return Err(invalid(format!(
                "key-value at {rev:?} has mod_revision {}, create_revision {}, version {}",
                kv.mod_revision, kv.create_revision, kv.version
            )));
        }
        self.max_rev = rev.main;
        Ok(())
    }

    fn observe_meta(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        let known = [
            META_CONSISTENT_INDEX,
            META_SCHEDULED_COMPACT,
            META_FINISHED_COMPACT,
            META_FORMAT_VERSION,
        ];
        if key == META_RESTORING {
            return Err(invalid(
                "the image holds a restore-in-progress marker (taken from an incomplete store)",
            ));
        }
        if !known.contains(&key) {
            return Ok(()); // opaque
        }
        let v: [u8; 8] = value.try_into().map_err(|_| {
            invalid(format!(
                "meta record {} has {} bytes, want 8",
                String::from_utf8_lossy(key),
                value.len()
            ))
        })?;
        let v = u64::from_be_bytes(v);
        let compact_rev = |v: u64| -> Result<i64> {
            let r = v as i64;
            if (0..=MAX_REV).contains(&r) {
                Ok(r)
            } else {
                Err(invalid(format!(
                    "meta {} = {r} out of range",
                    String::from_utf8_lossy(key)
                )))
            }
        };
        if key == META_CONSISTENT_INDEX {
            self.consistent_index = v;
        } else if key == META_SCHEDULED_COMPACT {
            self.scheduled = compact_rev(v)?;
        } else if key == META_FINISHED_COMPACT {
            self.finished = compact_rev(v)?;
        } else if v > FORMAT_VERSION {
            return Err(Error::UnsupportedFormat {
                found: v,
                supported: FORMAT_VERSION,
            });
        }
        Ok(())
    }

    /// Checks that hold only for the whole image.
    fn check_complete(&self) -> Result<()> {
        if self.finished > self.scheduled {
            return Err(invalid(format!(
                "finished compaction revision {} is above the scheduled one {}",
                self.finished, self.scheduled
            )));
        }
        Ok(())
    }
}

/// The encoder: records in image order in, framed bytes out.
pub(crate) struct Encoder {
    block: Vec<u8>,
    count: u32,
    seq: u32,
    target: usize,
    summary: Summary,
    blocks: u64,
}

impl Encoder {
    /// A new encoder closing blocks at `target` payload bytes.
    pub(crate) fn new(target: usize) -> Encoder {
        Encoder {
            block: Vec::new(),
            count: 0,
            seq: 0,
            target: target.max(1),
            summary: Summary::default(),
            blocks: 0,
        }
    }

    /// The header of an image with this consistent index.
    pub(crate) fn header(consistent_index: u64) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(&IMAGE_MAGIC);
        h.extend_from_slice(&IMAGE_VERSION.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes());
        h.extend_from_slice(&consistent_index.to_be_bytes());
        let crc = crc32c::crc32c(&h);
        h.extend_from_slice(&crc.to_be_bytes());
        h
    }

    /// Adds a record (in image order); returns a finished block when the
    /// current one would exceed the target.
    pub(crate) fn push(&mut self, cf: Cf, key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
        // Accounting only (the decoder refuses what does not check): an
        // exporter's records come from a valid store.
        let _ = self.summary.observe(cf, key, value);
        let len = RECORD_HEADER_LEN + key.len() + value.len();
        let out = if self.count > 0 && self.block.len() + len > self.target {
            Some(self.close_block())
        } else {
            None
        };
        self.block.push(cf_code(cf));
        self.block
            .extend_from_slice(&(key.len() as u32).to_be_bytes());
        self.block
            .extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.block.extend_from_slice(key);
        self.block.extend_from_slice(value);
        self.count += 1;
        out
    }

    fn frame(kind: u8, seq: u32, count: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::with_capacity(BLOCK_HEADER_LEN + payload.len() + 4);
        b.push(kind);
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&count.to_be_bytes());
        b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        b.extend_from_slice(payload);
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }

    fn close_block(&mut self) -> Vec<u8> {
        let b = Encoder::frame(KIND_RECORDS, self.seq, self.count, &self.block);
        self.seq += 1;
        self.blocks += 1;
        self.count = 0;
        self.block.clear();
        b
    }

    /// The last records block (if any) and the trailer.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        let mut out = if self.count > 0 {
            self.close_block()
        } else {
            Vec::new()
        };
        let s = &self.summary;
        let mut t = Vec::with_capacity(TRAILER_LEN);
        t.extend_from_slice(&s.records.to_be_bytes());
        t.extend_from_slice(&self.blocks.to_be_bytes());
        t.extend_from_slice(&s.consistent_index.to_be_bytes());
        t.extend_from_slice(&s.revision().to_be_bytes());
        t.extend_from_slice(&s.scheduled.to_be_bytes());
        out.extend(Encoder::frame(KIND_TRAILER, self.seq, 0, &t));
        out
    }
}

/// Writes an image record by record: what an import from another format
/// (etcd's bbolt files) produces before [`Store::restore`](crate::Store::restore)
/// verifies and applies it. Records must come in image order (column
/// family, then key, strictly increasing); the restore's verification
/// refuses anything else. Memory: one block.
pub struct ImageWriter<W: std::io::Write> {
    /// Where the image goes.
    out: W,
    /// Blocks being filled.
    enc: Encoder,
}

impl<W: std::io::Write> ImageWriter<W> {
    /// Starts an image of a store at `consistent_index`.
    pub fn new(mut out: W, consistent_index: u64) -> std::io::Result<ImageWriter<W>> {
        out.write_all(&Encoder::header(consistent_index))?;
        Ok(ImageWriter {
            out,
            enc: Encoder::new(BLOCK_TARGET),
        })
    }

    /// Adds a record of `cf`.
    pub fn push(&mut self, cf: Cf, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        if let Some(block) = self.enc.push(cf, key, value) {
            self.out.write_all(&block)?;
        }
        Ok(())
    }

    /// Writes the last block and the trailer; returns the output.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.write_all(&self.enc.finish())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Encodes `records` (in image order) as a whole image (tests, fuzzing).
#[doc(hidden)]
pub fn encode_records(
    consistent_index: u64,
    records: &[(Cf, Vec<u8>, Vec<u8>)],
    block_target: usize,
) -> Vec<u8> {
    let mut out = Encoder::header(consistent_index);
    let mut e = Encoder::new(block_target);
    for (cf, k, v) in records {
        if let Some(b) = e.push(*cf, k, v) {
            out.extend(b);
        }
    }
    out.extend(e.finish());
    out
}

/// One decoded record.
pub(crate) type ImageRecord = (Cf, Bytes, Bytes);

/// The streaming decoder: one block in memory at a time, every check of the
/// module doc.
pub(crate) struct Decoder<R> {
    r: R,
    offset: u64,
    seq: u32,
    header_ci: u64,
    summary: Summary,
    last: Option<(u8, Bytes)>,
    blocks: u64,
    max_block_len: usize,
    done: bool,
}

impl<R: Read> Decoder<R> {
    /// Reads and checks the header.
    pub(crate) fn new(mut r: R) -> Result<Decoder<R>> {
        let mut h = [0u8; HEADER_LEN];
        read_full(&mut r, &mut h, 0, "header")?;
        if h[..8] != IMAGE_MAGIC {
            return Err(invalid(format!(
                "not a snapshot image (magic {:02x?})",
                &h[..8]
            )));
        }
        if crc32c::crc32c(&h[..24]) != be_u32(&h[24..]) {
            return Err(invalid("header checksum mismatch"));
        }
        let version = be_u32(&h[8..]);
        if version != IMAGE_VERSION {
            return Err(invalid(format!(
                "image format version {version}; this build reads version {IMAGE_VERSION}"
            )));
        }
        let flags = be_u32(&h[12..]);
        if flags != 0 {
            return Err(invalid(format!("unknown header flags {flags:#x}")));
        }
        Ok(Decoder {
            r,
            offset: HEADER_LEN as u64,
            seq: 0,
            header_ci: be_u64(&h[16..]),
            summary: Summary::default(),
            last: None,
            blocks: 0,
            max_block_len: 0,
            done: false,
        })
    }

    /// The consistent index the header announces.
    pub(crate) fn consistent_index(&self) -> u64 {
        self.header_ci
    }

    /// The records of the next block (never empty), or None once the
    /// trailer was read and checked and the stream ended.
    pub(crate) fn next_block(&mut self) -> Result<Option<Vec<ImageRecord>>> {
        if self.done {
            return Ok(None);
        }
        let at = self.offset;
        let seq = self.seq;
        let ctx = |msg: String| invalid(format!("block {seq} at offset {at}: {msg}"));
        let mut h = [0u8; BLOCK_HEADER_LEN];
        read_full(&mut self.r, &mut h, at, "block header")?;
        let kind = h[0];
        let got_seq = be_u32(&h[1..]);
        let count = be_u32(&h[5..]);
        let len = be_u32(&h[9..]);
        if len > MAX_BLOCK_LEN {
            return Err(ctx(format!("payload length {len} above the limit")));
        }
        let mut payload = Vec::with_capacity((len as usize).min(BLOCK_TARGET));
        let n = (&mut self.r).take(len as u64).read_to_end(&mut payload)?;
        if n < len as usize {
            return Err(ctx(format!(
                "truncated: payload of {len} bytes, stream ended after {n}"
            )));
        }
        let mut c = [0u8; 4];
        read_full(
            &mut self.r,
            &mut c,
            at + (BLOCK_HEADER_LEN + n) as u64,
            "block checksum",
        )?;
        let mut crc = crc32c::crc32c(&h);
        crc = crc32c::crc32c_append(crc, &payload);
        if crc != be_u32(&c) {
            return Err(ctx("checksum mismatch".into()));
        }
        if got_seq != seq {
            return Err(ctx(format!(
                "sequence number {got_seq}: a block is missing or repeated"
            )));
        }
        self.offset += (BLOCK_HEADER_LEN + n + 4) as u64;
        self.seq = seq.wrapping_add(1);
        self.max_block_len = self.max_block_len.max(n);
        match kind {
            KIND_RECORDS => {
                if count == 0 {
                    return Err(ctx("empty records block".into()));
                }
                self.blocks += 1;
                let records = self
                    .records(Bytes::from(payload), count)
                    .map_err(|e| match e {
                        Error::InvalidImage(m) => ctx(m),
                        other => other,
                    })?;
                Ok(Some(records))
            }
            KIND_TRAILER => {
                self.trailer(&payload, count).map_err(|e| match e {
                    Error::InvalidImage(m) => ctx(m),
                    other => other,
                })?;
                let mut extra = [0u8; 1];
                if read_some(&mut self.r, &mut extra)? != 0 {
                    return Err(invalid(format!(
                        "bytes after the trailer at offset {}",
                        self.offset
                    )));
                }
                self.done = true;
                Ok(None)
            }
            k => Err(ctx(format!("unknown block kind {k}"))),
        }
    }

    fn records(&mut self, payload: Bytes, count: u32) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::with_capacity((count as usize).min(payload.len() / RECORD_HEADER_LEN));
        let mut pos = 0usize;
        for i in 0..count {
            let rest = payload.len() - pos;
            if rest < RECORD_HEADER_LEN {
                return Err(invalid(format!(
                    "record {i} of {count} overruns the payload"
                )));
            }
            let code = payload[pos];
            let klen = be_u32(&payload[pos + 1..]) as usize;
            let vlen = be_u32(&payload[pos + 5..]) as usize;
            if klen.saturating_add(vlen) > rest - RECORD_HEADER_LEN {
                return Err(invalid(format!(
                    "record {i} of {count} overruns the payload"
                )));
            }
            let cf = cf_from_code(code)
                .ok_or_else(|| invalid(format!("record {i}: unknown column family {code}")))?;
            let kstart = pos + RECORD_HEADER_LEN;
            let key = payload.slice(kstart..kstart + klen);
            let value = payload.slice(kstart + klen..kstart + klen + vlen);
            pos = kstart + klen + vlen;
            if let Some((lc, lk)) = &self.last {
                if (*lc, &lk[..]) >= (code, &key[..]) {
                    return Err(invalid(format!(
                        "record {i} ({} {:02x?}) is not after the previous one",
                        cf.name(),
                        &key[..key.len().min(32)]
                    )));
                }
            }
            self.summary.observe(cf, &key, &value)?;
            self.last = Some((code, key.clone()));
            out.push((cf, key, value));
        }
        if pos != payload.len() {
            return Err(invalid(format!(
                "{} bytes after the last of {count} records",
                payload.len() - pos
            )));
        }
        Ok(out)
    }

    fn trailer(&mut self, t: &[u8], count: u32) -> Result<()> {
        if t.len() != TRAILER_LEN || count != 0 {
            return Err(invalid(format!(
                "trailer of {} bytes and {count} records",
                t.len()
            )));
        }
        let s = &self.summary;
        s.check_complete()?;
        let (records, blocks, ci) = (be_u64(t), be_u64(&t[8..]), be_u64(&t[16..]));
        let (rev, compact) = (be_u64(&t[24..]) as i64, be_u64(&t[32..]) as i64);
        let want = [
            ("records", records as i64, s.records as i64),
            ("blocks", blocks as i64, self.blocks as i64),
            ("consistent index", ci as i64, s.consistent_index as i64),
            ("revision", rev, s.revision()),
            ("compaction revision", compact, s.scheduled),
        ];
        for (what, said, found) in want {
            if said != found {
                return Err(invalid(format!(
                    "the trailer says {what} {said}, the image holds {found}"
                )));
            }
        }
        if self.header_ci != s.consistent_index {
            return Err(invalid(format!(
                "the header says consistent index {}, the image holds {}",
                self.header_ci, s.consistent_index
            )));
        }
        Ok(())
    }

    /// The summary of a fully read image.
    pub(crate) fn info(&self) -> ImageInfo {
        let s = &self.summary;
        ImageInfo {
            consistent_index: s.consistent_index,
            revision: s.revision(),
            compact_revision: s.scheduled,
            finished_compact_revision: s.finished,
            records: s.records,
            blocks: self.blocks,
            bytes: self.offset,
            max_block_len: self.max_block_len,
        }
    }
}

/// `read_exact`, with an end of stream reported as a truncated image.
fn read_full(r: &mut impl Read, buf: &mut [u8], at: u64, what: &str) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match read_some(r, &mut buf[got..])? {
            0 => {
                return Err(invalid(format!(
                    "truncated: the stream ends inside the {what} at offset {}",
                    at + got as u64
                )))
            }
            n => got += n,
        }
    }
    Ok(())
}

fn read_some(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads a whole image and checks everything (module doc) without applying
/// it; memory: one block. Returns what it holds.
pub fn verify_image(image: impl Read) -> Result<ImageInfo> {
    let mut d = Decoder::new(image)?;
    while d.next_block()?.is_some() {}
    Ok(d.info())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(k: &[u8], v: u64) -> (Cf, Vec<u8>, Vec<u8>) {
        (Cf::Meta, k.to_vec(), v.to_be_bytes().to_vec())
    }

    fn put_rec(main: i64, key: &str, created: i64, ver: i64) -> (Cf, Vec<u8>, Vec<u8>) {
        let kv = KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            create_revision: created,
            mod_revision: main,
            version: ver,
            value: Bytes::from_static(b"v"),
            lease: 0,
        };
        (
            Cf::Key,
            Revision::new(main, 0).to_key(false),
            kv.encode_to_vec(),
        )
    }

    fn sample(n: i64) -> Vec<(Cf, Vec<u8>, Vec<u8>)> {
        let mut v: Vec<_> = (2..n + 2)
            .map(|i| put_rec(i, &format!("k{i}"), i, 1))
            .collect();
        v.push(meta(META_CONSISTENT_INDEX, 7));
        v.push(meta(META_SCHEDULED_COMPACT, 3));
        v.push((Cf::Lease, b"l1".to_vec(), b"x".to_vec()));
        v
    }

    #[test]
    fn round_trip_and_summary() {
        let img = encode_records(7, &sample(100), 512);
        let info = verify_image(&img[..]).unwrap();
        assert_eq!(info.consistent_index, 7);
        assert_eq!(info.revision, 101);
        assert_eq!(info.compact_revision, 3);
        assert_eq!(info.finished_compact_revision, -1);
        assert_eq!(info.records, 103);
        assert!(info.blocks > 5);
        assert_eq!(info.bytes, img.len() as u64);
        assert!(info.max_block_len <= 512);
        // an empty image is valid too: header and trailer, 85 bytes
        let empty = encode_records(0, &[], 512);
        assert_eq!(empty.len(), 85);
        let info = verify_image(&empty[..]).unwrap();
        assert_eq!(
            (info.records, info.revision, info.compact_revision),
            (0, 1, -1)
        );
    }

    #[test]
    fn blocks_stay_within_the_target_unless_one_record_is_larger() {
        let mut recs = sample(2000);
        recs.push((Cf::Alarm, b"big".to_vec(), vec![7u8; 3 * BLOCK_TARGET]));
        let img = encode_records(7, &recs, BLOCK_TARGET);
        let mut d = Decoder::new(&img[..]).unwrap();
        let mut counts = Vec::new();
        while let Some(b) = d.next_block().unwrap() {
            counts.push(b.len());
        }
        let info = d.info();
        assert_eq!(info.records, 2004);
        // the big record got a block of its own
        assert_eq!(counts.last(), Some(&1));
        assert_eq!(info.max_block_len, 3 * BLOCK_TARGET + RECORD_HEADER_LEN + 3);
        let small = encode_records(7, &sample(20000), BLOCK_TARGET);
        let info = verify_image(&small[..]).unwrap();
        assert!(
            info.blocks > 1 && info.max_block_len <= BLOCK_TARGET,
            "{info:?}"
        );
    }

    #[test]
    fn every_truncation_and_bit_flip_is_refused() {
        let img = encode_records(7, &sample(30), 256);
        for cut in 0..img.len() {
            let e = verify_image(&img[..cut]).unwrap_err();
            assert!(matches!(e, Error::InvalidImage(_)), "cut {cut}: {e}");
        }
        for i in 0..img.len() {
            for bit in [0, 3, 7] {
                let mut bad = img.clone();
                bad[i] ^= 1 << bit;
                let e = verify_image(&bad[..]).unwrap_err();
                assert!(matches!(e, Error::InvalidImage(_)), "byte {i}: {e}");
            }
        }
        let mut long = img.clone();
        long.push(0);
        assert!(verify_image(&long[..])
            .unwrap_err()
            .to_string()
            .contains("after the trailer"));
    }

    #[test]
    fn dropped_or_repeated_blocks_are_refused() {
        let img = encode_records(7, &sample(30), 256);
        // split into header and frames
        let mut frames = Vec::new();
        let mut pos = HEADER_LEN;
        while pos < img.len() {
            let len = be_u32(&img[pos + 9..]) as usize;
            let end = pos + BLOCK_HEADER_LEN + len + 4;
            frames.push(img[pos..end].to_vec());
            pos = end;
        }
        assert!(frames.len() > 3);
        let join = |fs: &[Vec<u8>]| {
            let mut v = img[..HEADER_LEN].to_vec();
            for f in fs {
                v.extend_from_slice(f);
            }
            v
        };
        let mut dropped = frames.clone();
        dropped.remove(1);
        let e = verify_image(&join(&dropped)[..]).unwrap_err().to_string();
        assert!(e.contains("sequence number"), "{e}");
        let mut repeated = frames.clone();
        repeated.insert(1, frames[1].clone());
        assert!(verify_image(&join(&repeated)[..]).is_err());
    }

    #[test]
    fn semantic_checks() {
        let check = |recs: Vec<(Cf, Vec<u8>, Vec<u8>)>, ci: u64, want: &str| {
            let img = encode_records(ci, &recs, 1 << 20);
            let e = verify_image(&img[..]).unwrap_err().to_string();
            assert!(e.contains(want), "{e} does not say {want}");
        };
        check(vec![put_rec(3, "a", 4, 1)], 0, "create_revision");
        check(vec![put_rec(3, "a", 3, 0)], 0, "version");
        check(
            vec![(Cf::Key, vec![1, 2, 3], vec![])],
            0,
            "invalid revision key",
        );
        check(
            vec![(Cf::Key, Revision::new(-5, 0).to_key(false), vec![])],
            0,
            "out of range",
        );
        check(
            vec![
                (
                    Cf::Key,
                    Revision::new(3, 0).to_key(false),
                    put_rec(3, "a", 3, 1).2,
                ),
                (
                    Cf::Key,
                    Revision::new(3, 0).to_key(true),
                    put_rec(3, "a", 3, 1).2,
                ),
            ],
            0,
            "not above",
        );
        check(vec![meta(META_CONSISTENT_INDEX, 5)], 6, "header says");
        check(vec![meta(META_RESTORING, 1)], 0, "restore-in-progress");
        check(
            vec![
                meta(META_FINISHED_COMPACT, 4),
                meta(META_SCHEDULED_COMPACT, 3),
            ],
            0,
            "above the scheduled",
        );
        let img = encode_records(0, &[meta(META_FORMAT_VERSION, FORMAT_VERSION + 1)], 64);
        assert!(matches!(
            verify_image(&img[..]),
            Err(Error::UnsupportedFormat { .. })
        ));
        // out of order
        let img = encode_records(
            0,
            &[
                (Cf::Lease, b"b".to_vec(), vec![]),
                (Cf::Lease, b"b".to_vec(), vec![]),
            ],
            64,
        );
        assert!(verify_image(&img[..])
            .unwrap_err()
            .to_string()
            .contains("not after"));
    }
}
