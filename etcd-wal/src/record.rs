//! The record format: encoder and decoder. All integers are little-endian.
//!
//! ```text
//! offset  size  field
//!      0     4  len       u32: payload length in bytes (header and padding excluded)
//!      4     1  type      u8: 1 segment header, 2 metadata, 3 entry, 4 hard state,
//!                         5 snapshot marker (0 is never written: preallocated
//!                         space is zeros, so a zero header means "no record")
//!      5     3  reserved  zeros
//!      8     4  prev_crc  u32: `crc` of the previous record in the chain
//!                         (0 for the first record of the first segment)
//!     12     4  crc       u32: crc32c over bytes 0..8 of this header followed by
//!                         the payload, seeded with prev_crc (crc32c "append")
//!     16   len  payload
//! 16+len   0-7  padding   zeros, so every record starts 8-byte aligned
//! ```
//!
//! Chaining: a record is valid only if its `prev_crc` equals the previous
//! record's `crc`, so records cannot be reordered, dropped or spliced in. The
//! chain continues across segments: a segment's header record carries the
//! last `crc` of the previous segment.
//!
//! Storing `prev_crc` (4 bytes more than etcd's format) makes every record
//! verifiable on its own. That is what lets replay tell a torn tail (nothing
//! valid after the bad record) from damage in the middle (a bad record
//! followed by valid ones): see `segment::scan`.
//!
//! Payloads:
//! ```text
//! segment header  magic "etcdrwal" (8) | version u32 = 1 | reserved u32 = 0 |
//!                 seq u64 | first_index u64                        (32 bytes)
//! metadata        the opaque metadata given to Wal::create
//! entry           index u64 | term u64 | data
//! hard state      term u64 | vote u64 | commit u64                 (24 bytes)
//! snapshot        index u64 | term u64                             (16 bytes)
//! ```

use crate::types::{Entry, HardState, SnapshotMarker};
use bytes::Bytes;

/// Bytes in a record header.
pub(crate) const HEADER_LEN: usize = 16;
/// Records start at multiples of this.
pub(crate) const ALIGN: usize = 8;
/// Largest payload accepted (1 GiB).
pub(crate) const MAX_PAYLOAD: usize = 1 << 30;
/// Magic at the start of a segment header payload.
pub(crate) const SEGMENT_MAGIC: &[u8; 8] = b"etcdrwal";
/// Format version in the segment header.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Payload bytes of an entry record before its data.
pub(crate) const ENTRY_PREFIX: usize = 16;

/// Record types (the `type` byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum RecordType {
    SegmentHeader = 1,
    Metadata = 2,
    Entry = 3,
    HardState = 4,
    Snapshot = 5,
}

impl RecordType {
    fn from_u8(b: u8) -> Option<RecordType> {
        Some(match b {
            1 => RecordType::SegmentHeader,
            2 => RecordType::Metadata,
            3 => RecordType::Entry,
            4 => RecordType::HardState,
            5 => RecordType::Snapshot,
            _ => return None,
        })
    }
}

/// Total on-disk size of a record with `payload_len` payload bytes.
pub(crate) fn encoded_len(payload_len: usize) -> usize {
    (HEADER_LEN + payload_len).next_multiple_of(ALIGN)
}

/// Appends one record to `buf`; returns its crc (the next record's prev_crc).
pub(crate) fn encode(buf: &mut Vec<u8>, prev_crc: u32, rtype: RecordType, parts: &[&[u8]]) -> u32 {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    assert!(
        len <= MAX_PAYLOAD,
        "record payload of {len} bytes exceeds the limit (checked by append)"
    );
    let start = buf.len();
    buf.reserve(encoded_len(len));
    buf.extend_from_slice(&(len as u32).to_le_bytes());
    buf.push(rtype as u8);
    buf.extend_from_slice(&[0; 3]);
    buf.extend_from_slice(&prev_crc.to_le_bytes());
    buf.extend_from_slice(&[0; 4]); // crc, filled below
    let mut crc = crc32c::crc32c_append(prev_crc, &buf[start..start + 8]);
    for p in parts {
        buf.extend_from_slice(p);
        crc = crc32c::crc32c_append(crc, p);
    }
    buf[start + 12..start + 16].copy_from_slice(&crc.to_le_bytes());
    buf.resize(start + encoded_len(len), 0);
    crc
}

pub(crate) fn encode_segment_header(
    buf: &mut Vec<u8>,
    prev_crc: u32,
    seq: u64,
    first_index: u64,
) -> u32 {
    let mut p = [0u8; 32];
    p[0..8].copy_from_slice(SEGMENT_MAGIC);
    p[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    p[16..24].copy_from_slice(&seq.to_le_bytes());
    p[24..32].copy_from_slice(&first_index.to_le_bytes());
    encode(buf, prev_crc, RecordType::SegmentHeader, &[&p])
}

pub(crate) fn encode_metadata(buf: &mut Vec<u8>, prev_crc: u32, metadata: &[u8]) -> u32 {
    encode(buf, prev_crc, RecordType::Metadata, &[metadata])
}

pub(crate) fn encode_entry(buf: &mut Vec<u8>, prev_crc: u32, e: &Entry) -> u32 {
    let mut p = [0u8; ENTRY_PREFIX];
    p[0..8].copy_from_slice(&e.index.to_le_bytes());
    p[8..16].copy_from_slice(&e.term.to_le_bytes());
    encode(buf, prev_crc, RecordType::Entry, &[&p, &e.data])
}

pub(crate) fn encode_hard_state(buf: &mut Vec<u8>, prev_crc: u32, hs: &HardState) -> u32 {
    let mut p = [0u8; 24];
    p[0..8].copy_from_slice(&hs.term.to_le_bytes());
    p[8..16].copy_from_slice(&hs.vote.to_le_bytes());
    p[16..24].copy_from_slice(&hs.commit.to_le_bytes());
    encode(buf, prev_crc, RecordType::HardState, &[&p])
}

pub(crate) fn encode_snapshot(buf: &mut Vec<u8>, prev_crc: u32, s: &SnapshotMarker) -> u32 {
    let mut p = [0u8; 16];
    p[0..8].copy_from_slice(&s.index.to_le_bytes());
    p[8..16].copy_from_slice(&s.term.to_le_bytes());
    encode(buf, prev_crc, RecordType::Snapshot, &[&p])
}

/// A record that passed its own checks (length, type, crc).
#[derive(Debug)]
pub(crate) struct RawRecord<'a> {
    pub rtype: RecordType,
    pub prev_crc: u32,
    pub crc: u32,
    pub payload: &'a [u8],
    /// Bytes the record occupies, padding included.
    pub encoded_len: usize,
}

/// Why the bytes at an offset are not a valid record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The header or payload extends past the end of the file.
    Truncated,
    /// The header is all zeros (unwritten, preallocated space).
    ZeroHeader,
    /// The header is malformed (unknown type, nonzero reserved bytes, huge length).
    BadHeader(String),
    /// The crc does not match the contents.
    CrcMismatch { stored: u32, computed: u32 },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "record truncated by end of file"),
            DecodeError::ZeroHeader => write!(f, "zeroed record header"),
            DecodeError::BadHeader(s) => write!(f, "bad record header: {s}"),
            DecodeError::CrcMismatch { stored, computed } => {
                write!(
                    f,
                    "crc mismatch: stored {stored:#010x}, computed {computed:#010x}"
                )
            }
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes the record at `off` and checks it on its own (not its chain link).
pub(crate) fn decode_at(buf: &[u8], off: usize) -> Result<RawRecord<'_>, DecodeError> {
    debug_assert_eq!(off % ALIGN, 0, "records are aligned");
    let rest = buf.get(off..).unwrap_or(&[]);
    if rest.len() < HEADER_LEN {
        if rest.iter().all(|&b| b == 0) {
            return Err(DecodeError::ZeroHeader);
        }
        return Err(DecodeError::Truncated);
    }
    let header = &rest[..HEADER_LEN];
    if header.iter().all(|&b| b == 0) {
        return Err(DecodeError::ZeroHeader);
    }
    let len = u32_at(header, 0) as usize;
    let rtype = RecordType::from_u8(header[4])
        .ok_or_else(|| DecodeError::BadHeader(format!("unknown record type {}", header[4])))?;
    if header[5..8] != [0, 0, 0] {
        return Err(DecodeError::BadHeader("nonzero reserved bytes".into()));
    }
    if len > MAX_PAYLOAD {
        return Err(DecodeError::BadHeader(format!(
            "length {len} exceeds the limit"
        )));
    }
    let total = encoded_len(len);
    if rest.len() < total {
        return Err(DecodeError::Truncated);
    }
    let prev_crc = u32_at(header, 8);
    let stored = u32_at(header, 12);
    let payload = &rest[HEADER_LEN..HEADER_LEN + len];
    let computed = crc32c::crc32c_append(crc32c::crc32c_append(prev_crc, &header[..8]), payload);
    if computed != stored {
        return Err(DecodeError::CrcMismatch { stored, computed });
    }
    Ok(RawRecord {
        rtype,
        prev_crc,
        crc: stored,
        payload,
        encoded_len: total,
    })
}

/// A decoded record payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    SegmentHeader { seq: u64, first_index: u64 },
    Metadata(Bytes),
    Entry(Entry),
    HardState(HardState),
    Snapshot(SnapshotMarker),
}

/// Parses a record's payload (its crc already matched).
pub(crate) fn parse(raw: &RawRecord<'_>) -> Result<Record, String> {
    let p = raw.payload;
    let exact = |n: usize| {
        if p.len() == n {
            Ok(())
        } else {
            Err(format!(
                "{:?} payload is {} bytes, expected {n}",
                raw.rtype,
                p.len()
            ))
        }
    };
    Ok(match raw.rtype {
        RecordType::SegmentHeader => {
            exact(32)?;
            if &p[0..8] != SEGMENT_MAGIC {
                return Err("bad segment magic".into());
            }
            let version = u32_at(p, 8);
            if version != FORMAT_VERSION {
                return Err(format!("unsupported wal format version {version}"));
            }
            Record::SegmentHeader {
                seq: u64_at(p, 16),
                first_index: u64_at(p, 24),
            }
        }
        RecordType::Metadata => Record::Metadata(Bytes::copy_from_slice(p)),
        RecordType::Entry => {
            if p.len() < ENTRY_PREFIX {
                return Err(format!(
                    "entry payload is {} bytes, shorter than its prefix",
                    p.len()
                ));
            }
            Record::Entry(Entry {
                index: u64_at(p, 0),
                term: u64_at(p, 8),
                data: Bytes::copy_from_slice(&p[ENTRY_PREFIX..]),
            })
        }
        RecordType::HardState => {
            exact(24)?;
            Record::HardState(HardState {
                term: u64_at(p, 0),
                vote: u64_at(p, 8),
                commit: u64_at(p, 16),
            })
        }
        RecordType::Snapshot => {
            exact(16)?;
            Record::Snapshot(SnapshotMarker {
                index: u64_at(p, 0),
                term: u64_at(p, 8),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip() {
        let mut buf = Vec::new();
        let c1 = encode_segment_header(&mut buf, 0, 3, 17);
        let c2 = encode_metadata(&mut buf, c1, b"node-1");
        let e = Entry {
            index: 17,
            term: 2,
            data: Bytes::from_static(b"hello"),
        };
        let c3 = encode_entry(&mut buf, c2, &e);
        assert_eq!(buf.len() % ALIGN, 0);

        let r1 = decode_at(&buf, 0).unwrap();
        assert_eq!((r1.prev_crc, r1.crc), (0, c1));
        assert_eq!(
            parse(&r1).unwrap(),
            Record::SegmentHeader {
                seq: 3,
                first_index: 17
            }
        );
        let r2 = decode_at(&buf, r1.encoded_len).unwrap();
        assert_eq!((r2.prev_crc, r2.crc), (c1, c2));
        assert_eq!(
            parse(&r2).unwrap(),
            Record::Metadata(Bytes::from_static(b"node-1"))
        );
        let off3 = r1.encoded_len + r2.encoded_len;
        let r3 = decode_at(&buf, off3).unwrap();
        assert_eq!(r3.crc, c3);
        assert_eq!(parse(&r3).unwrap(), Record::Entry(e));
        assert_eq!(off3 + r3.encoded_len, buf.len());
        assert_eq!(
            decode_at(&buf, buf.len()).unwrap_err(),
            DecodeError::ZeroHeader
        );
    }

    #[test]
    fn damage_is_detected() {
        let mut buf = Vec::new();
        encode_hard_state(
            &mut buf,
            7,
            &HardState {
                term: 1,
                vote: 2,
                commit: 3,
            },
        );
        assert_eq!(buf.len(), HEADER_LEN + 24, "no padding");
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x40;
            assert!(decode_at(&b, 0).is_err(), "flip at {i} undetected");
        }
        assert_eq!(
            decode_at(&buf[..20], 0).unwrap_err(),
            DecodeError::Truncated
        );
    }
}
