//! Maintenance.Snapshot's database, streamed as it is written: no
//! temporary file, no copy of the store in memory.
//!
//! Every response carries the bytes still to come (`remaining_bytes`), so
//! the size of the whole bbolt file must be known before the first chunk,
//! and the file's two meta pages (page 0 and 1) are only known once the
//! last page is written ([`etcd_bbolt::Writer`] writes them last, over
//! zeros). Both come from a first pass over the same store view:
//!
//! ```text
//! thread "db-snapshot", one StoreView (a RocksDB snapshot) for both passes
//!   pass 1  write_db -> Measure: counts bytes, keeps the final meta pages
//!           -> sends (size) to the caller, which starts answering
//!   pass 2  write_db -> Stream: bytes in file order, the metas of pass 1
//!           instead of the zeros at the start, cut into 32 KiB chunks
//!           -> bounded channel (4 chunks) -> gRPC responses
//! ```
//!
//! The view is a point in time, so both passes produce the same bytes;
//! pass 2 checks it (the meta pages it writes last must be pass 1's, its
//! size pass 1's). Memory is a few chunks and one pending page per B+tree
//! level; the disk is only read; writes go on meanwhile; a client that
//! goes away ends the thread at its next chunk.

use std::io::{Seek, SeekFrom, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use etcd_mvcc::Store;

use crate::{Error, Result};

/// Chunks queued between the writing thread and the gRPC stream.
const QUEUE: usize = 4;

/// What the writing thread sends: the size first, then the chunks.
pub(crate) enum Msg {
    /// Pass 1 is done: bytes of the file.
    Size { bytes: u64 },
    /// The next bytes of the file.
    Chunk(Vec<u8>),
    /// Writing failed; nothing follows.
    Failed(Error),
}

/// Starts writing `store`'s database in etcd's layout on a thread of its
/// own; returns the channel it sends [`Msg`]s on, in `chunk`-byte chunks.
pub(crate) fn spawn(store: Arc<Store>, page_size: usize, chunk: usize) -> Result<Receiver<Msg>> {
    let (tx, rx) = sync_channel(QUEUE);
    RUNNING.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let started = std::thread::Builder::new()
        .name("db-snapshot".into())
        .spawn(move || {
            // Declared first, so dropped last: the store (maybe its last
            // handle, whose drop closes RocksDB) goes before the count does.
            let _running = Running;
            let (store, tx) = (store, tx);
            if let Err(e) = write(&store, page_size, chunk, &tx) {
                let _ = tx.send(Msg::Failed(e));
            }
        });
    if let Err(e) = started {
        RUNNING.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        return Err(Error::Internal(format!(
            "starting the snapshot thread: {e}"
        )));
    }
    Ok(rx)
}

/// Snapshot threads still running: a process must not exit under one (its
/// RocksDB iterator would outlive RocksDB's static state: `pthread lock:
/// Invalid argument`, SIGABRT).
static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Counts a snapshot thread down when it ends, however it ends.
struct Running;

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Waits (at most `limit`) for the database snapshot threads to end; true
/// when none runs. Call it before the process exits, once the streams'
/// receivers are gone (a thread ends at its next chunk then): a stream
/// cut by a graceful stop otherwise races the process's exit.
pub fn wait_for_snapshot_threads(limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while RUNNING.load(std::sync::atomic::Ordering::Acquire) > 0 {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    true
}

fn write(store: &Store, page_size: usize, chunk: usize, tx: &SyncSender<Msg>) -> Result<()> {
    let view = store.view()?;
    tracing::info!(
        revision = view.revision(),
        "database snapshot: measuring the file (pass 1 of 2)"
    );
    let (measured, first) = crate::bbolt_layout::write_db(
        &view,
        Measure::new(2 * page_size),
        page_size,
        &mut |bucket, keys| tracing::debug!(bucket, keys, "database snapshot: measuring"),
    )?;
    if tx.send(Msg::Size { bytes: first.size }).is_err() {
        return Ok(());
    }
    tracing::info!(
        "total-bytes" = first.size,
        keys = first.keys,
        "database snapshot: streaming the file (pass 2 of 2)"
    );
    let stream = Stream {
        metas: measured.metas,
        pos: 0,
        emitted: 0,
        chunk: Vec::with_capacity(chunk),
        chunk_size: chunk,
        tx: tx.clone(),
    };
    let (mut stream, second) =
        crate::bbolt_layout::write_db(&view, stream, page_size, &mut |bucket, keys| {
            tracing::debug!(bucket, keys, "database snapshot: streaming")
        })?;
    if second != first {
        return Err(Error::Internal(format!(
            "the database snapshot changed between its passes: {first:?} then {second:?}"
        )));
    }
    stream.send_rest().map_err(io_error)?;
    Ok(())
}

fn io_error(e: std::io::Error) -> Error {
    Error::Internal(format!("writing the database snapshot: {e}"))
}

/// Pass 1's output: only counts, and keeps what is written over the first
/// `metas.len()` bytes (the meta pages, written last).
struct Measure {
    pos: u64,
    metas: Vec<u8>,
}

impl Measure {
    fn new(meta_bytes: usize) -> Measure {
        Measure {
            pos: 0,
            metas: vec![0; meta_bytes],
        }
    }
}

impl Write for Measure {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let start = self.pos as usize;
        if start < self.metas.len() {
            let n = buf.len().min(self.metas.len() - start);
            self.metas[start..start + n].copy_from_slice(&buf[..n]);
        }
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for Measure {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = seek_target(self.pos, to)?;
        Ok(self.pos)
    }
}

/// Pass 2's output: the file's bytes in order, pass 1's meta pages in
/// place of the zeros written first; a rewrite of bytes already sent (the
/// metas, at the end) must repeat them.
struct Stream {
    /// The file's first bytes, from pass 1.
    metas: Vec<u8>,
    /// Where the writer is.
    pos: u64,
    /// Bytes of the file handed to the channel or the pending chunk.
    emitted: u64,
    /// The chunk being filled.
    chunk: Vec<u8>,
    chunk_size: usize,
    tx: SyncSender<Msg>,
}

impl Stream {
    /// Sends the last, partial chunk.
    fn send_rest(&mut self) -> std::io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let last = std::mem::take(&mut self.chunk);
        self.tx.send(Msg::Chunk(last)).map_err(|_| gone())
    }

    fn emit(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let n = bytes.len().min(self.chunk_size - self.chunk.len());
            self.chunk.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.chunk.len() == self.chunk_size {
                let full = std::mem::replace(&mut self.chunk, Vec::with_capacity(self.chunk_size));
                self.tx.send(Msg::Chunk(full)).map_err(|_| gone())?;
            }
        }
        Ok(())
    }
}

/// The client went away: the receiving end is gone.
fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the snapshot stream ended")
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let start = self.pos;
        let end = start + buf.len() as u64;
        let meta_end = self.metas.len() as u64;
        if start < self.emitted {
            // A rewrite: only of the meta pages, with pass 1's bytes.
            let same = end <= meta_end && self.metas[start as usize..end as usize] == *buf;
            if !same || end > self.emitted {
                return Err(std::io::Error::other(format!(
                    "the database snapshot rewrote bytes {start}..{end} differently from its first pass"
                )));
            }
        } else if start == self.emitted {
            if start < meta_end {
                // The zeros the writer reserves for the metas: pass 1's metas.
                let n = (meta_end - start).min(buf.len() as u64) as usize;
                let metas = self.metas[start as usize..start as usize + n].to_vec();
                self.emit(&metas)?;
                self.emit(&buf[n..])?;
            } else {
                self.emit(buf)?;
            }
            self.emitted = end;
        } else {
            return Err(std::io::Error::other(format!(
                "the database snapshot skipped bytes {}..{start}",
                self.emitted
            )));
        }
        self.pos = end;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for Stream {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = seek_target(self.pos, to)?;
        Ok(self.pos)
    }
}

fn seek_target(pos: u64, to: SeekFrom) -> std::io::Result<u64> {
    match to {
        SeekFrom::Start(n) => Ok(n),
        SeekFrom::Current(d) => pos
            .checked_add_signed(d)
            .ok_or_else(|| std::io::Error::other("seek before the start")),
        SeekFrom::End(_) => Err(std::io::Error::other("seek from the end of a stream")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_mvcc::StoreOptions;

    /// The streamed bytes are exactly the file `write_db` writes to a
    /// seekable file, in chunks of the asked size, after the right size.
    #[test]
    fn the_stream_is_the_file() {
        let store = Arc::new(Store::open_in_memory(StoreOptions::default()).unwrap());
        for i in 0..3000u32 {
            let mut w = store.write();
            w.put(
                format!("key/{i:05}").as_bytes(),
                &vec![b'v'; (i % 700) as usize],
                0,
            )
            .unwrap();
            w.end(u64::from(i) + 1).unwrap();
        }
        let view = store.view().unwrap();
        let (file, written) = crate::bbolt_layout::write_db(
            &view,
            std::io::Cursor::new(Vec::new()),
            4096,
            &mut |_, _| {},
        )
        .unwrap();
        drop(view);
        let want = file.into_inner();
        assert_eq!(want.len() as u64, written.size);

        let rx = spawn(store, 4096, 10_000).unwrap();
        let Msg::Size { bytes } = rx.recv().unwrap() else {
            panic!("the size comes first")
        };
        assert_eq!(bytes, written.size);
        let mut got = Vec::new();
        let mut sizes = Vec::new();
        for m in rx {
            match m {
                Msg::Chunk(c) => {
                    sizes.push(c.len());
                    got.extend(c);
                }
                Msg::Size { .. } => panic!("one size"),
                Msg::Failed(e) => panic!("{e}"),
            }
        }
        assert!(got == want, "streamed bytes differ from the file");
        let (last, full) = sizes.split_last().unwrap();
        assert!(full.iter().all(|&n| n == 10_000) && *last <= 10_000);
        etcd_bbolt::Reader::from_bytes(got)
            .unwrap()
            .check()
            .unwrap();
    }

    /// A receiver that goes away ends the thread (it does not block).
    #[test]
    fn a_client_that_goes_away_ends_the_stream() {
        let store = Arc::new(Store::open_in_memory(StoreOptions::default()).unwrap());
        let mut w = store.write();
        for i in 0..2000u32 {
            w.put(format!("k{i}").as_bytes(), &[0; 512], 0).unwrap();
        }
        w.end(1).unwrap();
        let rx = spawn(store.clone(), 4096, 4096).unwrap();
        assert!(matches!(rx.recv().unwrap(), Msg::Size { .. }));
        drop(rx);
        // The thread's view is released once it notices.
        for _ in 0..500 {
            if Arc::strong_count(&store) == 1 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the snapshot thread still holds the store");
    }
}
