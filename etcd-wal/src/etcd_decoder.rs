//! etcd's own WAL files (go.etcd.io/etcd `wal` package, 3.4 and 3.5), read
//! only: what a stopped etcd member left in `member/wal/`, for an import.
//! Not this crate's format (that one is in `docs/wal.md`).
//!
//! ```text
//! file      <seq:016x>-<index:016x>.wal, in name order; the last may end
//!           in preallocated zeros or a torn record
//! frame     len u64 LE: low 56 bits = record bytes n; if the top bit is
//!           set, bits 56..59 = padding p (zeros after the record, to an
//!           8-byte boundary); then n record bytes and p padding bytes.
//!           len 0 (or end of file) ends the file.
//! record    walpb.Record protobuf { int64 type = 1; uint32 crc = 2; bytes data = 3; }
//! crc       crc32c (Castagnoli) running over the `data` of every record
//!           but type 4; each such record's `crc` is the running value
//!           after its data. A type 4 record (first in each file) carries
//!           the running value so far and restarts the chain from it.
//! types     1 metadata  etcdserverpb.Metadata { uint64 NodeID = 1; uint64 ClusterID = 2; }
//!           2 entry     raftpb.Entry { EntryType Type = 1; uint64 Term = 2; uint64 Index = 3; bytes Data = 4; }
//!           3 state     raftpb.HardState { uint64 term = 1; uint64 vote = 2; uint64 commit = 3; }
//!           4 crc       (see crc)
//!           5 snapshot  walpb.Snapshot { uint64 index = 1; uint64 term = 2; ... }
//! ```
//!
//! Entries are kept as raft keeps them: an entry at an index at or below
//! the last one read replaces it and drops the ones after (a new leader
//! overwrote them). A record that fails its checksum or does not decode is
//! an error, except at the end of the last file, where it is a write torn
//! by a crash and ends the log (etcd's repair does the same).

use std::path::{Path, PathBuf};

use prost::Message;

use crate::error::{Error, Result};

/// etcd's largest record (`maxWALEntrySizeLimit`, 10 MiB).
const MAX_RECORD: u64 = 10 * 1024 * 1024;

const METADATA: i64 = 1;
const ENTRY: i64 = 2;
const STATE: i64 = 3;
const CRC: i64 = 4;
const SNAPSHOT: i64 = 5;

/// `walpb.Record`.
#[derive(Clone, PartialEq, prost::Message)]
struct Record {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(uint32, tag = "2")]
    crc: u32,
    #[prost(bytes = "vec", tag = "3")]
    data: Vec<u8>,
}

/// `raftpb.Entry`, as etcd writes it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EtcdEntry {
    /// 0 normal (an `InternalRaftRequest`, or empty: a leader's no-op),
    /// 1 conf change (`raftpb.ConfChange`), 2 conf change v2.
    #[prost(int32, tag = "1")]
    pub entry_type: i32,
    /// Raft term.
    #[prost(uint64, tag = "2")]
    pub term: u64,
    /// Raft index.
    #[prost(uint64, tag = "3")]
    pub index: u64,
    /// Payload.
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
}

/// `raftpb.HardState`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct EtcdHardState {
    /// Current term.
    #[prost(uint64, tag = "1")]
    pub term: u64,
    /// Member voted for in `term` (0: none).
    #[prost(uint64, tag = "2")]
    pub vote: u64,
    /// Highest index known committed.
    #[prost(uint64, tag = "3")]
    pub commit: u64,
}

/// `etcdserverpb.Metadata`: who wrote the WAL.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct EtcdMetadata {
    /// The member's id.
    #[prost(uint64, tag = "1")]
    pub node_id: u64,
    /// The cluster's id.
    #[prost(uint64, tag = "2")]
    pub cluster_id: u64,
}

/// `walpb.Snapshot`: a raft snapshot was taken at this point.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct EtcdSnapshotMark {
    /// Index of the snapshot.
    #[prost(uint64, tag = "1")]
    pub index: u64,
    /// Term of the snapshot.
    #[prost(uint64, tag = "2")]
    pub term: u64,
}

/// Everything an etcd WAL holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EtcdWal {
    /// The metadata record (the same in every file).
    pub metadata: Option<EtcdMetadata>,
    /// The last hard state written.
    pub hard_state: EtcdHardState,
    /// Snapshot marks, in order.
    pub snapshots: Vec<EtcdSnapshotMark>,
    /// Entries, consecutive indexes.
    pub entries: Vec<EtcdEntry>,
    /// A torn record ended the last file (a crash while writing).
    pub torn_tail: bool,
}

impl EtcdWal {
    /// The term of the entry at `index`, from the entries or a snapshot mark.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        self.entries
            .iter()
            .find(|e| e.index == index)
            .map(|e| e.term)
            .or_else(|| {
                self.snapshots
                    .iter()
                    .rev()
                    .find(|s| s.index == index)
                    .map(|s| s.term)
            })
    }
}

fn corrupt(file: &Path, offset: u64, reason: impl Into<String>) -> Error {
    Error::Corruption {
        file: file.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

/// The `.wal` files of `dir`, in name (sequence) order.
pub fn etcd_wal_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::NotFound(dir.to_path_buf()));
    }
    Ok(files)
}

/// Reads the etcd WAL in `dir`, every entry kept.
pub fn read_etcd_wal(dir: &Path) -> Result<EtcdWal> {
    read_etcd_wal_from(dir, 0)
}

/// Reads the etcd WAL in `dir` one file at a time, keeping the entries from
/// index `keep_from` on: the earlier ones are checked (checksums, order)
/// and dropped. An import needs the entries from the database's consistent
/// index on, while etcd keeps hundreds of megabytes of older ones.
pub fn read_etcd_wal_from(dir: &Path, keep_from: u64) -> Result<EtcdWal> {
    let files = etcd_wal_files(dir)?;
    let mut d = Decoder::new(keep_from);
    for (i, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f)?;
        d.feed(f, &bytes, i + 1 == files.len())?;
    }
    Ok(d.wal)
}

/// Decodes WAL files given as (name, bytes), in order, every entry kept
/// (what [`read_etcd_wal`] does with the files it reads; the fuzz
/// target's entry).
pub fn decode_etcd_wal(files: &[(&Path, &[u8])]) -> Result<EtcdWal> {
    let mut d = Decoder::new(0);
    for (i, (name, bytes)) in files.iter().enumerate() {
        d.feed(name, bytes, i + 1 == files.len())?;
    }
    Ok(d.wal)
}

/// The decoding state carried from one file to the next.
struct Decoder {
    /// What was read so far.
    wal: EtcdWal,
    /// The running crc32c of the chain.
    crc: u32,
    /// Entries below this index are dropped once checked.
    keep_from: u64,
    /// The index of the last entry read (kept or not): the next one may
    /// not leave a gap after it.
    last_index: Option<u64>,
}

impl Decoder {
    fn new(keep_from: u64) -> Decoder {
        Decoder {
            wal: EtcdWal::default(),
            crc: 0,
            keep_from,
            last_index: None,
        }
    }

    /// Decodes one file; `last_file` allows a torn tail.
    fn feed(&mut self, name: &Path, bytes: &[u8], last_file: bool) -> Result<()> {
        let mut off = 0u64;
        loop {
            let at = off as usize;
            let Some(len_bytes) = bytes.get(at..at + 8) else {
                if at < bytes.len() && !last_file {
                    return Err(corrupt(name, off, "a frame length cut short"));
                }
                self.wal.torn_tail |= at < bytes.len();
                return Ok(());
            };
            let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
            if len == 0 {
                return Ok(()); // end of the file, or preallocated space
            }
            let n = len & !(0xff << 56);
            let pad = if len >> 63 == 1 { (len >> 56) & 0x7 } else { 0 };
            if n + pad >= MAX_RECORD {
                return Err(corrupt(name, off, format!("a record of {n} bytes")));
            }
            let start = at + 8;
            let Some(frame) = bytes.get(start..start + (n + pad) as usize) else {
                if last_file {
                    self.wal.torn_tail = true;
                    return Ok(());
                }
                return Err(corrupt(name, off, "a record cut short"));
            };
            let decoded = Record::decode(&frame[..n as usize]);
            let rec = match decoded {
                Ok(r) => r,
                Err(_) if last_file => {
                    self.wal.torn_tail = true;
                    return Ok(());
                }
                Err(e) => return Err(corrupt(name, off, format!("record: {e}"))),
            };
            if rec.r#type == CRC {
                if self.crc != 0 && rec.crc != self.crc {
                    return Err(corrupt(name, off, "crc chain broken between files"));
                }
                self.crc = rec.crc;
            } else {
                self.crc = crc32c::crc32c_append(self.crc, &rec.data);
                if rec.crc != self.crc {
                    if last_file {
                        self.wal.torn_tail = true;
                        return Ok(());
                    }
                    return Err(corrupt(name, off, "record checksum mismatch"));
                }
            }
            self.apply(&rec).map_err(|e| corrupt(name, off, e))?;
            off = (start as u64) + n + pad;
        }
    }

    fn apply(&mut self, rec: &Record) -> std::result::Result<(), String> {
        let wal = &mut self.wal;
        match rec.r#type {
            ENTRY => {
                let e = EtcdEntry::decode(&rec.data[..]).map_err(|e| format!("entry: {e}"))?;
                if let Some(last) = self.last_index.filter(|&l| e.index > l + 1) {
                    return Err(format!("entry {} after entry {last}: a gap", e.index));
                }
                // An entry at or below the last one replaces it and drops
                // the ones after (a new leader overwrote them).
                if let Some(first) = wal.entries.first().map(|f| f.index) {
                    if e.index < first {
                        wal.entries.clear();
                    } else {
                        wal.entries.truncate((e.index - first) as usize);
                    }
                }
                self.last_index = Some(e.index);
                if e.index >= self.keep_from {
                    wal.entries.push(e);
                }
            }
            STATE => {
                wal.hard_state =
                    EtcdHardState::decode(&rec.data[..]).map_err(|e| format!("hard state: {e}"))?;
            }
            METADATA => {
                let m =
                    EtcdMetadata::decode(&rec.data[..]).map_err(|e| format!("metadata: {e}"))?;
                if wal.metadata.is_some_and(|old| old != m) {
                    return Err("metadata differs between files".into());
                }
                wal.metadata = Some(m);
            }
            SNAPSHOT => {
                let s = EtcdSnapshotMark::decode(&rec.data[..])
                    .map_err(|e| format!("snapshot: {e}"))?;
                wal.snapshots.push(s);
            }
            CRC => {}
            other => return Err(format!("unknown record type {other}")),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record framed as etcd's encoder frames it.
    fn frame(crc: &mut u32, ty: i64, data: Vec<u8>) -> Vec<u8> {
        if ty != CRC {
            *crc = crc32c::crc32c_append(*crc, &data);
        }
        let rec = Record {
            r#type: ty,
            crc: *crc,
            data,
        }
        .encode_to_vec();
        let n = rec.len() as u64;
        let pad = (8 - n % 8) % 8;
        let len = if pad > 0 { n | ((0x80 | pad) << 56) } else { n };
        let mut out = len.to_le_bytes().to_vec();
        out.extend(rec);
        out.extend(vec![0; pad as usize]);
        out
    }

    fn entry(index: u64, term: u64, data: &[u8]) -> Vec<u8> {
        EtcdEntry {
            entry_type: 0,
            term,
            index,
            data: data.to_vec(),
        }
        .encode_to_vec()
    }

    #[test]
    fn entries_state_metadata_and_overwrites() {
        let mut crc = 0;
        let mut f1 = frame(&mut crc, CRC, vec![]);
        let md = EtcdMetadata {
            node_id: 7,
            cluster_id: 9,
        }
        .encode_to_vec();
        f1.extend(frame(&mut crc, METADATA, md.clone()));
        f1.extend(frame(
            &mut crc,
            SNAPSHOT,
            EtcdSnapshotMark { index: 0, term: 0 }.encode_to_vec(),
        ));
        for i in 1..=5 {
            f1.extend(frame(&mut crc, ENTRY, entry(i, 1, b"x")));
        }
        // A second file starts with the chain's value so far.
        let mut crc2 = crc;
        let mut f2 = frame(&mut crc2, CRC, vec![]);
        f2.extend(frame(&mut crc2, METADATA, md));
        // Term 2 overwrites from index 4.
        f2.extend(frame(&mut crc2, ENTRY, entry(4, 2, b"y")));
        f2.extend(frame(
            &mut crc2,
            STATE,
            EtcdHardState {
                term: 2,
                vote: 7,
                commit: 4,
            }
            .encode_to_vec(),
        ));
        f2.extend(vec![0; 64]); // preallocated space
        let wal = decode_etcd_wal(&[(Path::new("a.wal"), &f1), (Path::new("b.wal"), &f2)]).unwrap();
        assert_eq!(
            wal.metadata,
            Some(EtcdMetadata {
                node_id: 7,
                cluster_id: 9
            })
        );
        let got: Vec<(u64, u64)> = wal.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, [(1, 1), (2, 1), (3, 1), (4, 2)]);
        assert_eq!(wal.hard_state.commit, 4);
        assert_eq!(wal.term_at(3), Some(1));
        assert!(!wal.torn_tail);

        // Read from files on disk, entries kept from 3 on (the overwrite
        // still applies); a gap is still found among dropped entries.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("0000000000000000-0000000000000000.wal"),
            &f1,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("0000000000000001-0000000000000005.wal"),
            &f2,
        )
        .unwrap();
        let from3 = read_etcd_wal_from(dir.path(), 3).unwrap();
        let got: Vec<(u64, u64)> = from3.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, [(3, 1), (4, 2)]);
        assert_eq!(
            (from3.hard_state, from3.metadata),
            (wal.hard_state, wal.metadata)
        );
        let from9 = read_etcd_wal_from(dir.path(), 9).unwrap();
        assert!(from9.entries.is_empty());
        let mut c = 0;
        let mut gap = frame(&mut c, CRC, vec![]);
        gap.extend(frame(&mut c, ENTRY, entry(1, 1, b"x")));
        gap.extend(frame(&mut c, ENTRY, entry(3, 1, b"x")));
        let mut d = Decoder::new(10);
        let err = d.feed(Path::new("gap.wal"), &gap, true).unwrap_err();
        assert!(err.to_string().contains("a gap"), "{err}");

        // A torn last record ends the log; the same damage in a file that
        // is not the last is corruption.
        let mut torn = f2.clone();
        let cut = f2.len() - 64 - 3;
        torn.truncate(cut);
        let wal =
            decode_etcd_wal(&[(Path::new("a.wal"), &f1), (Path::new("b.wal"), &torn)]).unwrap();
        assert!(wal.torn_tail);
        assert_eq!(wal.hard_state, EtcdHardState::default());
        let mut bad = f1.clone();
        let l = bad.len();
        bad[l - 10] ^= 0xff; // inside the last record (padding is at most 7 bytes)
        let err = decode_etcd_wal(&[(Path::new("a.wal"), &bad), (Path::new("b.wal"), &f2)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("a.wal"), "{err}");
    }
}
