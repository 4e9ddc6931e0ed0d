//! State machine snapshots: how a follower behind the leader's log
//! compaction point catches up.
//!
//! Raft only moves *metadata* (`Snapshot { index, term, conf_state }`); the
//! state machine image travels out of band, streamed, never whole in memory:
//!
//! - **Leader.** [`WalStorage`](crate::WalStorage)'s `raft::Storage::snapshot`
//!   answers metadata at the index the application has *applied* (reported
//!   with `RaftNode::set_applied` / `Peer::advance_applied`), never above it
//!   (raft-rs's `MemStorage` would use the commit index, which with an
//!   asynchronous apply names entries the image does not hold yet). While the
//!   application is behind the log's own snapshot marker (it has not
//!   installed an image it received) the answer is "temporarily unavailable"
//!   and raft retries later. When a transport sends the `MsgSnapshot` it calls
//!   [`SnapshotIo::export`] for a reader over the *current* image, whose
//!   applied index is at or above the metadata index: the image may be newer
//!   than the metadata (etcd does the same), which is harmless because the
//!   application skips replayed entries at or below its consistent index.
//! - **Wire.** The TCP transport sends the message and the image on a
//!   connection of its own (see [`crate::TcpTransport`]'s module doc);
//!   simulations use [`transfer_inline`]. The receiving side writes the image
//!   into a [`SnapshotSink`] from [`SnapshotIo::import`]; `finish` makes it
//!   durable and returns a *token*, which replaces the message's
//!   `snapshot.data` before the message is stepped into raft. The sender
//!   learns the outcome and reports it to raft (`report_snapshot`), so the
//!   leader leaves its Snapshot state for that follower.
//! - **Follower.** When raft accepts the snapshot, [`Peer`](crate::Peer)
//!   writes the WAL snapshot marker (index, term) with the hard state (and
//!   drops any log entries after it), fsyncs, applies it to the in-memory
//!   log, and hands the application an [`ToApply::Snapshot`](crate::ToApply)
//!   carrying a [`SnapshotInfo`] (the token included) *before* any committed
//!   entry that follows it. raft-rs is then told the snapshot index is
//!   applied; the application installs the image (atomically setting its
//!   consistent index to the image's applied index), then reports progress as
//!   usual, skipping entries at or below its consistent index.
//!
//! # Restart protocol
//!
//! The order on the follower is: image durable (`finish`), then WAL marker
//! durable, then the application installs the image. A crash can hit any
//! gap:
//!
//! 1. before the WAL marker: the retained image is garbage (raft will send a
//!    new snapshot if still needed); the application deletes images at or
//!    below its applied index, or that do not match the WAL's marker, once
//!    it runs again;
//! 2. after the WAL marker, before the install: the WAL's marker is above
//!    the application's applied index. [`WalStorage::open_with`] hands the
//!    recovery callback the marker (index, term) *before* it checks the
//!    applied index; the application finds the image it retained for that
//!    (index, term) (it got both in [`SnapshotIo::import`]), installs it and
//!    returns its new applied index. If it has no such image the database
//!    genuinely does not belong to the WAL and open refuses, as before.
//!    [`WalStorage::snapshot_marker`] gives the same answer without keeping
//!    the WAL open;
//! 3. after the install: nothing to do. The image may be newer than the
//!    WAL's last entry; open accepts that when the WAL has a snapshot marker
//!    and raft is started at the last entry (the application skips what it
//!    already has).
//!
//! So an application retains every finished image until it has durably
//! installed it (or a newer one), and a [`SnapshotSink`] dropped without
//! `finish` discards what it wrote. Raft may also ignore a snapshot whose
//! image was finished (it became stale on the way): such images are
//! garbage once the applied index passes them.
//!
//! An image whose applied index is below the application's own (possible
//! when an earlier image was newer than its metadata and a lagging new
//! leader sends another) may be skipped: both are prefixes of the same
//! committed log, and the entries after the snapshot follow either way.
//!
//! [`WalStorage::open_with`]: crate::WalStorage::open_with
//! [`WalStorage::snapshot_marker`]: crate::WalStorage::snapshot_marker

use std::io::Read;

use raft::eraftpb::{ConfState, Message, MessageType};

use crate::{Error, Result};

/// Chunk size used to move images (TCP frames and [`transfer_inline`]).
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// The application's side of snapshots: export its image, import one.
/// Called from transport threads (never the raft thread); calls may block.
pub trait SnapshotIo: Send + Sync + 'static {
    /// A reader over the *current* state machine image; its applied index
    /// must be at or above `index` (the metadata index raft sends with it).
    /// Fail rather than return an older image.
    fn export(&self, index: u64) -> Result<Box<dyn Read + Send>>;

    /// A sink for an incoming image belonging to raft snapshot
    /// (`index`, `term`).
    fn import(&self, index: u64, term: u64) -> Result<Box<dyn SnapshotSink>>;
}

/// Where an incoming image is written. Dropped without [`finish`], it must
/// discard what it wrote.
///
/// [`finish`]: SnapshotSink::finish
pub trait SnapshotSink: Send {
    /// Appends the next bytes of the image.
    fn write_chunk(&mut self, chunk: &[u8]) -> Result<()>;

    /// Makes the image durable (fsync) and returns an opaque token that
    /// travels in raft's `Snapshot.data` back to the application when raft
    /// installs it ([`SnapshotInfo::data`]).
    fn finish(self: Box<Self>) -> Result<Vec<u8>>;
}

/// A raft snapshot installed by this member: the application must replace
/// its state machine with the image the token names before applying the
/// entries that follow.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotInfo {
    /// Last log index the snapshot covers (the image may be newer).
    pub index: u64,
    /// Term of that index.
    pub term: u64,
    /// Membership as of `index`.
    pub conf_state: ConfState,
    /// The token [`SnapshotSink::finish`] returned for the image.
    pub data: bytes::Bytes,
}

/// Moves the image of a `MsgSnapshot` from `src` (the sender's application)
/// into `dst` (the receiver's) in [`SNAPSHOT_CHUNK_BYTES`] chunks and returns the
/// message with the token in `snapshot.data`, ready to step into the
/// receiver. For simulations over [`crate::MemNetwork`]; the TCP transport
/// does the same over a connection.
pub fn transfer_inline(
    mut msg: Message,
    src: &dyn SnapshotIo,
    dst: &dyn SnapshotIo,
) -> Result<Message> {
    if msg.get_msg_type() != MessageType::MsgSnapshot {
        return Err(Error::Snapshot(format!(
            "{:?} is not a snapshot message",
            msg.get_msg_type()
        )));
    }
    let (index, term) = {
        let meta = msg.get_snapshot().get_metadata();
        (meta.index, meta.term)
    };
    let mut reader = src.export(index)?;
    let mut sink = dst.import(index, term)?;
    let mut buf = vec![0; SNAPSHOT_CHUNK_BYTES];
    loop {
        let n = read_full(&mut *reader, &mut buf)?;
        if n == 0 {
            break;
        }
        sink.write_chunk(&buf[..n])?;
    }
    let token = sink.finish()?;
    msg.mut_snapshot().data = token.into();
    Ok(msg)
}

/// Reads until `buf` is full or the reader ends; returns how much it read.
pub(crate) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Snapshot(format!("reading the image: {e}"))),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::sync::Arc;

    /// Images are byte vectors; finished ones are kept by token.
    #[derive(Default)]
    struct VecIo {
        image: Vec<u8>,
        finished: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    struct VecSink {
        buf: Vec<u8>,
        chunks: usize,
        finished: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl SnapshotIo for VecIo {
        fn export(&self, _index: u64) -> Result<Box<dyn Read + Send>> {
            Ok(Box::new(std::io::Cursor::new(self.image.clone())))
        }
        fn import(&self, _index: u64, _term: u64) -> Result<Box<dyn SnapshotSink>> {
            Ok(Box::new(VecSink {
                buf: Vec::new(),
                chunks: 0,
                finished: self.finished.clone(),
            }))
        }
    }

    impl SnapshotSink for VecSink {
        fn write_chunk(&mut self, chunk: &[u8]) -> Result<()> {
            assert!(chunk.len() <= SNAPSHOT_CHUNK_BYTES);
            self.chunks += 1;
            self.buf.extend_from_slice(chunk);
            Ok(())
        }
        fn finish(self: Box<Self>) -> Result<Vec<u8>> {
            let mut f = self.finished.lock();
            f.push(self.buf);
            Ok(format!("img{}:{}", f.len() - 1, self.chunks).into_bytes())
        }
    }

    #[test]
    fn transfer_inline_moves_the_image_in_chunks() {
        let src = VecIo {
            image: (0..(2 * SNAPSHOT_CHUNK_BYTES + 5))
                .map(|i| i as u8)
                .collect(),
            ..VecIo::default()
        };
        let dst = VecIo::default();
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.mut_snapshot().mut_metadata().index = 7;
        let out = transfer_inline(m, &src, &dst).unwrap();
        assert_eq!(&out.get_snapshot().data[..], b"img0:3");
        assert_eq!(out.get_snapshot().get_metadata().index, 7);
        assert_eq!(dst.finished.lock()[0], src.image);

        let not_snap = Message::default();
        assert!(transfer_inline(not_snap, &src, &dst).is_err());
    }
}
