//! Raft snapshot files (etcd's `member/snap/*.snap`).
//!
//! A snapshot is saved as `<term:016x>-<index:016x>.snap` (etcd's naming):
//!
//! ```text
//! offset  size  field (little-endian)
//!      0     8  magic "etcdrsnp"
//!      8     4  version u32 = 1
//!     12     4  crc32c of bytes 16.. (term, index, length, data)
//!     16     8  term u64
//!     24     8  index u64
//!     32     8  data length u64
//!     40     n  data (opaque: the caller's encoded snapshot)
//! ```
//!
//! Invariants:
//! - a `.snap` file is complete: it is written as `<name>.tmp`, fsynced,
//!   renamed, and the directory fsynced; leftover `.tmp` files are removed;
//! - a file whose crc, length or name disagrees with its contents is never
//!   returned: `load_newest` logs it, renames it to `<name>.broken` (kept
//!   for forensics, ignored afterwards) and tries the next older one.

use crate::error::{Error, Result};
use bytes::Bytes;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"etcdrsnp";
const VERSION: u32 = 1;
const HEADER: usize = 40;
const EXT: &str = ".snap";
const TMP_EXT: &str = ".tmp";
const BROKEN_EXT: &str = ".broken";

/// Saves and loads raft snapshot files in one directory (`member/snap`).
#[derive(Debug)]
pub struct Snapshotter {
    dir: PathBuf,
}

fn snap_name(term: u64, index: u64) -> String {
    format!("{term:016x}-{index:016x}{EXT}")
}

fn parse_snap_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(EXT)?;
    let (a, b) = stem.split_once('-')?;
    let hex = |s: &str| {
        if s.len() == 16 && s.bytes().all(|c| c.is_ascii_hexdigit()) {
            u64::from_str_radix(s, 16).ok()
        } else {
            None
        }
    };
    Some((hex(a)?, hex(b)?))
}

fn encode(term: u64, index: u64, data: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(HEADER + data.len());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&VERSION.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&term.to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(&(data.len() as u64).to_le_bytes());
    buf.extend_from_slice(data);
    let crc = crc32c::crc32c(&buf[16..]);
    buf[12..16].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Checks a file's bytes against the (term, index) of its name.
fn decode(bytes: &[u8], term: u64, index: u64) -> Result<Bytes, String> {
    if bytes.len() < HEADER {
        return Err(format!(
            "file is {} bytes, shorter than the header",
            bytes.len()
        ));
    }
    if &bytes[0..8] != MAGIC {
        return Err("bad magic".into());
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if u32_at(8) != VERSION {
        return Err(format!("unsupported snapshot file version {}", u32_at(8)));
    }
    let stored = u32_at(12);
    let computed = crc32c::crc32c(&bytes[16..]);
    if stored != computed {
        return Err(format!(
            "crc mismatch: stored {stored:#010x}, computed {computed:#010x}"
        ));
    }
    if (u64_at(16), u64_at(24)) != (term, index) {
        return Err(format!(
            "contents say term {} index {}, the file name says term {term} index {index}",
            u64_at(16),
            u64_at(24)
        ));
    }
    let len = u64_at(32);
    if len != (bytes.len() - HEADER) as u64 {
        return Err(format!("length field {len} disagrees with the file size"));
    }
    Ok(Bytes::copy_from_slice(&bytes[HEADER..]))
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

impl Snapshotter {
    /// Uses `dir` (created if missing) and removes leftover temporary files.
    pub fn new(dir: &Path) -> Result<Snapshotter> {
        std::fs::create_dir_all(dir)?;
        let s = Snapshotter {
            dir: dir.to_path_buf(),
        };
        let mut removed = false;
        for name in s.names()? {
            if name.ends_with(TMP_EXT) {
                std::fs::remove_file(dir.join(&name))?;
                removed = true;
            }
        }
        if removed {
            sync_dir(dir)?;
        }
        Ok(s)
    }

    /// The snapshot directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Some(n) = entry?.file_name().to_str() {
                names.push(n.to_owned());
            }
        }
        Ok(names)
    }

    /// Valid-looking snapshot names as (term, index), newest first.
    fn snapshots(&self) -> Result<Vec<(u64, u64)>> {
        let mut v: Vec<(u64, u64)> = self
            .names()?
            .iter()
            .filter_map(|n| parse_snap_name(n))
            .collect();
        v.sort_by_key(|&(term, index)| std::cmp::Reverse((index, term)));
        Ok(v)
    }

    /// Saves a snapshot durably: write tmp, fsync, rename, fsync dir.
    pub fn save(&self, term: u64, index: u64, data: &[u8]) -> Result<()> {
        use std::io::Write;
        let name = snap_name(term, index);
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!("{name}{TMP_EXT}"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&encode(term, index, data))?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        sync_dir(&self.dir)
    }

    /// The newest snapshot that verifies, as (term, index, data). Files that
    /// fail verification are logged and renamed to `.broken`.
    pub fn load_newest(&self) -> Result<Option<(u64, u64, Bytes)>> {
        for (term, index) in self.snapshots()? {
            match self.read_verified(term, index)? {
                Ok(data) => return Ok(Some((term, index, data))),
                Err(reason) => self.quarantine(term, index, &reason)?,
            }
        }
        Ok(None)
    }

    /// The snapshot at exactly (term, index): [`Error::NotFound`] if absent,
    /// [`Error::Corruption`] if it fails verification (left in place).
    pub fn load(&self, term: u64, index: u64) -> Result<Bytes> {
        let path = self.dir.join(snap_name(term, index));
        if !path.exists() {
            return Err(Error::NotFound(path));
        }
        self.read_verified(term, index)?
            .map_err(|reason| Error::corruption(path, 0, reason))
    }

    fn read_verified(&self, term: u64, index: u64) -> Result<Result<Bytes, String>> {
        let bytes = std::fs::read(self.dir.join(snap_name(term, index)))?;
        Ok(decode(&bytes, term, index))
    }

    fn quarantine(&self, term: u64, index: u64, reason: &str) -> Result<()> {
        let name = snap_name(term, index);
        let path = self.dir.join(&name);
        tracing::warn!(file = %path.display(), reason, "snap: skipping a damaged snapshot file, renaming it to .broken");
        std::fs::rename(&path, self.dir.join(format!("{name}{BROKEN_EXT}")))?;
        sync_dir(&self.dir)
    }

    /// Removes all but the newest `keep` snapshot files (like etcd's
    /// `--max-snapshots`; 0 = unlimited, nothing removed). Returns how many
    /// were removed.
    pub fn purge(&self, keep: usize) -> Result<usize> {
        if keep == 0 {
            return Ok(0);
        }
        let snaps = self.snapshots()?;
        let mut removed = 0;
        for &(term, index) in snaps.iter().skip(keep) {
            std::fs::remove_file(self.dir.join(snap_name(term, index)))?;
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = snap_name(2, 0x10);
        assert_eq!(n, "0000000000000002-0000000000000010.snap");
        assert_eq!(parse_snap_name(&n), Some((2, 0x10)));
        assert_eq!(parse_snap_name("x.snap"), None);
    }

    #[test]
    fn decode_rejects_damage() {
        let b = encode(3, 9, b"state");
        assert_eq!(&decode(&b, 3, 9).unwrap()[..], b"state");
        assert!(decode(&b, 3, 10).is_err());
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 1;
            assert!(decode(&c, 3, 9).is_err(), "flip at {i}");
        }
        assert!(decode(&b[..b.len() - 1], 3, 9).is_err());
    }
}
