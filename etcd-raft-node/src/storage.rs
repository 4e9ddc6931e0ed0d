//! `raft::Storage` backed by the write-ahead log.
//!
//! Like etcd (MemoryStorage + WAL), the raft log that raft-rs reads lives in
//! memory (a [`MemStorage`]) and every change to it is first made durable in
//! the [`Wal`]. On open, the WAL is replayed into memory.
//!
//! Invariants:
//! - an entry or hard state is in memory only after it was handed to the WAL
//!   (and, when raft requires it, fsynced);
//! - in memory, `first_index - 1` is the index of the newest snapshot marker
//!   (or 0), so raft never asks for entries the WAL does not hold.
//!
//! Each raft entry is stored as one WAL entry record whose payload is the
//! protobuf encoding of `eraftpb::Entry`; the WAL record also carries index
//! and term so the WAL can resolve overwritten suffixes without decoding.

use crate::{Error, Result};
use etcd_wal::{SnapshotMarker, Wal, WalOptions, WriteBatch};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage};
use std::path::Path;

/// The raft log: in memory for raft-rs, durable in the WAL.
pub struct WalStorage {
    mem: MemStorage,
    wal: Wal,
    /// What the application reported applied (see [`WalStorage::set_applied`]).
    applied: u64,
}

/// What [`WalStorage::open_with`] found in the WAL, for its `recover` callback.
#[derive(Clone, Debug)]
pub struct WalRecovery {
    /// The opaque metadata given to [`WalStorage::create`].
    pub metadata: bytes::Bytes,
    /// The newest snapshot marker: the log starts after `index`. When it is
    /// above the state machine's applied index, the application must
    /// re-install the image it retained for (`index`, `term`).
    pub snapshot: Option<SnapshotMarker>,
}

/// What opening a WAL-backed storage recovered besides the raft log.
pub struct Opened {
    /// The storage, ready for a `RawNode`.
    pub storage: WalStorage,
    /// The opaque metadata given to [`WalStorage::create`].
    pub metadata: bytes::Bytes,
}

/// Starts the in-memory log at a snapshot mark `(index, term)` with
/// `conf_state`. A mark at index 0 is the empty log's own start (an etcd
/// data directory imported before any write moved its consistent index):
/// only the configuration is set, raft-rs refuses a snapshot at 0.
fn install_mark(
    core: &mut raft::storage::MemStorageCore,
    index: u64,
    term: u64,
    conf_state: ConfState,
) -> Result<()> {
    if index == 0 {
        core.set_conf_state(conf_state);
        return Ok(());
    }
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = index;
    snap.mut_metadata().term = term;
    snap.mut_metadata().set_conf_state(conf_state);
    core.apply_snapshot(snap)?;
    Ok(())
}

impl WalStorage {
    /// Creates a new WAL in `dir` for a member bootstrapping a new cluster
    /// whose initial configuration is `conf_state`.
    pub fn create(
        dir: &Path,
        opts: WalOptions,
        metadata: &[u8],
        conf_state: ConfState,
    ) -> Result<WalStorage> {
        let wal = Wal::create(dir, opts, metadata)?;
        let mem = MemStorage::new_with_conf_state(conf_state);
        Ok(WalStorage {
            mem,
            wal,
            applied: 0,
        })
    }

    /// Creates a new WAL in `dir` whose log starts after a snapshot at
    /// (`index`, `term`) with configuration `conf_state`: every member
    /// bootstrapping a cluster starts from the same snapshot (the
    /// application's state machine holds the same initial image at
    /// `index`), so a member added later, whose log is empty, is sent a
    /// snapshot (with the membership in it) instead of a log without one.
    pub fn create_at(
        dir: &Path,
        opts: WalOptions,
        metadata: &[u8],
        conf_state: ConfState,
        index: u64,
        term: u64,
    ) -> Result<WalStorage> {
        let wal = Wal::create(dir, opts, metadata)?;
        let mut batch = WriteBatch::default();
        batch.snapshot = Some(etcd_wal::SnapshotMarker { index, term });
        batch.hard_state = Some(etcd_wal::HardState {
            term,
            vote: 0,
            commit: index,
        });
        wal.append_sync(batch)?;
        let mem = MemStorage::new();
        install_mark(&mut mem.wl(), index, term, conf_state)?;
        Ok(WalStorage {
            mem,
            wal,
            applied: index,
        })
    }

    /// Opens the WAL in `dir` and replays it into memory.
    ///
    /// `conf_state` derives the membership as of the state machine's
    /// applied index from the WAL's metadata (it is called once, before the
    /// log is loaded), and `applied` is the index of the last entry the
    /// state machine durably applied. See [`WalStorage::open_with`] for an
    /// application that may have to re-install a snapshot image first.
    pub fn open(
        dir: &Path,
        opts: WalOptions,
        applied: u64,
        conf_state: impl FnOnce(&bytes::Bytes) -> Result<ConfState>,
    ) -> Result<Opened> {
        Self::open_with(dir, opts, |rec| Ok((applied, conf_state(&rec.metadata)?)))
    }

    /// Opens the WAL in `dir`, replays it, and then calls `recover` with what
    /// it found *before* checking the state machine against it. `recover`
    /// returns the state machine's durably applied index and the membership
    /// as of that index.
    ///
    /// This is where the restart protocol of the snapshot module runs: when
    /// the WAL's snapshot marker is above the state machine's applied index
    /// (a crash after a received snapshot was recorded and before the
    /// application installed its image), `recover` installs the image it
    /// retained for that (index, term) and returns the new applied index.
    /// An applied index still below the marker is refused: the entries in
    /// between are gone, so the database does not belong to this WAL.
    pub fn open_with(
        dir: &Path,
        opts: WalOptions,
        recover: impl FnOnce(&WalRecovery) -> Result<(u64, ConfState)>,
    ) -> Result<Opened> {
        let (wal, rec) = Wal::open(dir, opts)?;
        let (applied, conf_state) = recover(&WalRecovery {
            metadata: rec.metadata.clone(),
            snapshot: rec.snapshot,
        })?;
        let mem = MemStorage::new();
        {
            let mut core = mem.wl();
            if let Some(marker) = rec.snapshot {
                if applied < marker.index {
                    return Err(Error::Config(format!(
                        "state machine applied index {applied} is below the WAL's snapshot index {}: \
                         the entries in between were released, so the database does not belong \
                         to this WAL (lost or replaced); restore the member from a snapshot",
                        marker.index
                    )));
                }
                install_mark(&mut core, marker.index, marker.term, conf_state.clone())?;
            }
            let mut entries = Vec::with_capacity(rec.entries.len());
            for e in &rec.entries {
                let entry = decode_entry(&e.data).map_err(|reason| {
                    Error::Config(format!(
                        "WAL entry {} (term {}) is not a raft entry: {reason}",
                        e.index, e.term
                    ))
                })?;
                assert_eq!(
                    entry.index, e.index,
                    "WAL record index disagrees with its entry"
                );
                entries.push(entry);
            }
            core.append(&entries)?;
            let mut hs = HardState::default();
            hs.term = rec.hard_state.term;
            hs.vote = rec.hard_state.vote;
            let last = rec.last_index();
            // The commit index in the WAL may lag what was applied: the
            // commit index learned in a LightReady is not fsynced on its own.
            // Everything applied was committed, so it is raised.
            if applied > rec.hard_state.commit && applied > last {
                if let Some(marker) = rec.snapshot {
                    // A snapshot image is newer than its metadata (the
                    // leader exported its current state) and the entries
                    // after the marker have not arrived yet: raft starts
                    // at the last entry, the application skips replays.
                    tracing::info!(
                        applied,
                        last,
                        snapshot = marker.index,
                        "state machine is ahead of the raft log (snapshot image newer than its index)"
                    );
                } else {
                    return Err(Error::Config(format!(
                        "state machine applied index {applied} is beyond the last WAL entry {last}: \
                         the WAL does not belong to this data directory or lost entries"
                    )));
                }
            }
            hs.commit = rec.commit_index(applied);
            core.set_hardstate(hs);
            core.set_conf_state(conf_state);
        }
        Ok(Opened {
            storage: WalStorage { mem, wal, applied },
            metadata: rec.metadata,
        })
    }

    /// The newest snapshot marker of the WAL in `dir`, if any, for an
    /// application that wants to know before opening (see the snapshot
    /// module's restart protocol). Opens and closes the WAL (repairing a torn
    /// tail); [`WalStorage::open_with`] avoids the second open.
    pub fn snapshot_marker(dir: &Path, opts: WalOptions) -> Result<Option<SnapshotMarker>> {
        let (wal, rec) = Wal::open(dir, opts)?;
        wal.close()?;
        Ok(rec.snapshot)
    }

    /// Persists new entries and/or a hard state. When `sync` is true, returns
    /// only after they are durable; otherwise the write is queued and needs
    /// no fdatasync of its own (raft's `must_sync` is false when only the
    /// commit index moved).
    pub fn persist(&mut self, entries: &[Entry], hs: Option<&HardState>, sync: bool) -> Result<()> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let batch = wal_batch(entries, hs);
        if sync {
            self.wal.append_sync(batch)?;
        } else {
            // Durability is not required (only the commit index moved):
            // written without an fdatasync, made durable by the next one
            // (etcd's `MustSync`). A failure still poisons later calls.
            self.wal.append_unsynced(batch)?;
        }
        self.remember(entries, hs)
    }

    /// [`WalStorage::persist`] with `sync`, but written and synced on the
    /// calling thread when the WAL's writer has nothing pending
    /// ([`Wal::append_sync_now`]): for a raft thread under light load,
    /// where nothing would group with this batch anyway.
    pub fn persist_now(&mut self, entries: &[Entry], hs: Option<&HardState>) -> Result<()> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        self.wal.append_sync_now(wal_batch(entries, hs))?;
        self.remember(entries, hs)
    }

    /// Makes persisted entries and hard state visible to raft.
    fn remember(&mut self, entries: &[Entry], hs: Option<&HardState>) -> Result<()> {
        let mut core = self.mem.wl();
        core.append(entries)?;
        if let Some(hs) = hs {
            core.set_hardstate(hs.clone());
        }
        Ok(())
    }

    /// Records a commit index learned after persisting (in memory only; see
    /// [`WalStorage::open`] for why that is safe).
    pub fn set_commit(&mut self, commit: u64) {
        self.mem.wl().mut_hard_state().commit = commit;
    }

    /// Compacts the raft log up to `index`, which the state machine has
    /// durably applied (the caller flushed it): records a snapshot marker
    /// in the WAL (fsynced), drops entries `<= index` from memory, and
    /// releases WAL segments that hold only entries below it.
    ///
    /// Invariant (docs/design.md): never called with an index above the
    /// store's durable consistent index, so a restart always finds the
    /// entries it must re-apply.
    pub fn compact(&mut self, index: u64) -> Result<()> {
        let first = Storage::first_index(&self.mem)?;
        let last = Storage::last_index(&self.mem)?;
        if index < first || index > last {
            return Ok(());
        }
        let term = Storage::term(&self.mem, index)?;
        let mut batch = WriteBatch::default();
        batch.snapshot = Some(etcd_wal::SnapshotMarker { index, term });
        self.wal.append_sync(batch)?;
        let keep = if index < last {
            Storage::entries(
                &self.mem,
                index + 1,
                last + 1,
                None,
                GetEntriesContext::empty(false),
            )?
        } else {
            Vec::new()
        };
        let conf_state = Storage::initial_state(&self.mem)?.conf_state;
        let mut core = self.mem.wl();
        let hs = core.hard_state().clone();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap.mut_metadata().set_conf_state(conf_state);
        core.apply_snapshot(snap)?;
        core.append(&keep)?;
        core.set_hardstate(hs);
        drop(core);
        let purged = self.wal.purge(index)?;
        tracing::info!(
            index,
            term,
            kept = keep.len(),
            purged_segments = purged,
            "compacted the raft log"
        );
        Ok(())
    }

    /// Installs a snapshot raft accepted (a `Ready`'s `snapshot()`), with the
    /// `Ready`'s entries and hard state, in etcd's order: one WAL batch holding
    /// the snapshot marker, then the entries, then the hard state, fsynced;
    /// then the in-memory log. Log entries after the snapshot index that the
    /// batch does not overwrite are dropped in the WAL too (an entry at the
    /// marker's index is written, which replay drops together with every live
    /// entry), so a restart cannot resurrect a suffix raft discarded. The
    /// image the snapshot's data names must already be durable.
    pub fn apply_snapshot(
        &mut self,
        snap: &Snapshot,
        entries: &[Entry],
        hs: Option<&HardState>,
    ) -> Result<()> {
        let (index, term) = (snap.get_metadata().index, snap.get_metadata().term);
        let mut batch = WriteBatch::default();
        batch.snapshot = Some(etcd_wal::SnapshotMarker { index, term });
        if self.last_index() > index {
            let mut cut = Entry::default();
            cut.index = index;
            cut.term = term;
            batch.entries.push(etcd_wal::Entry {
                index,
                term,
                data: encode_entry(&cut),
            });
        }
        batch
            .entries
            .extend(entries.iter().map(|e| etcd_wal::Entry {
                index: e.index,
                term: e.term,
                data: encode_entry(e),
            }));
        batch.hard_state = hs.map(|hs| etcd_wal::HardState {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
        });
        self.wal.append_sync(batch)?;
        let mut meta_only = Snapshot::default();
        meta_only.set_metadata(snap.get_metadata().clone());
        let mut core = self.mem.wl();
        core.apply_snapshot(meta_only)?;
        core.append(entries)?;
        if let Some(hs) = hs {
            core.set_hardstate(hs.clone());
        }
        drop(core);
        let purged = self.wal.purge(index)?;
        tracing::info!(
            index,
            term,
            purged_segments = purged,
            "installed a raft snapshot"
        );
        Ok(())
    }

    /// Records that the application applied every entry up to `applied`
    /// (never moves back). Snapshots sent to followers are cut at this index.
    pub fn set_applied(&mut self, applied: u64) {
        self.applied = self.applied.max(applied);
    }

    /// What the application reported applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The hard state as recovered and persisted since.
    pub fn hard_state(&self) -> HardState {
        self.mem.rl().hard_state().clone()
    }

    /// The committed entries after index `after` (the ones a restarted
    /// member applies again).
    pub fn committed_entries_after(&self, after: u64) -> Result<Vec<Entry>> {
        let commit = self.hard_state().commit;
        let first = Storage::first_index(&self.mem)?;
        let low = (after + 1).max(first);
        if low > commit {
            return Ok(Vec::new());
        }
        Ok(Storage::entries(
            &self.mem,
            low,
            commit + 1,
            None,
            GetEntriesContext::empty(false),
        )?)
    }

    /// etcd's `--force-new-cluster` (`restartAsStandaloneNode`): discards
    /// the entries after the commit index and appends `entries`
    /// (configuration changes that leave this member alone in the
    /// cluster) as committed, fsynced, before raft starts. `entries` must
    /// start right after the commit index, in the hard state's term. Raft
    /// then hands them to the application like any committed entry, and
    /// refuses to campaign until they are applied.
    pub fn force_commit(&mut self, entries: &[Entry]) -> Result<()> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let mut hs = self.hard_state();
        assert_eq!(
            entries[0].index,
            hs.commit + 1,
            "forced entries start after the commit index"
        );
        assert!(
            entries.iter().all(|e| e.term == hs.term),
            "forced entries are in the hard state's term"
        );
        hs.commit = last.index;
        // One WAL batch: the first entry, at commit + 1, overwrites the
        // uncommitted suffix on replay as it does in memory below.
        self.persist(entries, Some(&hs), true)
    }

    /// Records the membership as of the applied index (snapshots carry it).
    pub fn set_conf_state(&mut self, cs: ConfState) {
        let changed = Storage::initial_state(&self.mem).map_or(true, |rs| rs.conf_state != cs);
        if changed {
            self.mem.wl().set_conf_state(cs);
        }
    }

    /// The snapshot metadata a leader sends: at the applied index (see the
    /// snapshot module), `None` while no consistent answer exists.
    fn snapshot_metadata(&self, request_index: u64) -> Option<Snapshot> {
        let first = Storage::first_index(&self.mem).ok()?;
        let marker = first - 1;
        let rs = Storage::initial_state(&self.mem).ok()?;
        // Never above what was applied, nor above the commit index (an image
        // newer than the log is cut to the log).
        let index = self.applied.min(rs.hard_state.commit);
        if index == 0 || index < marker || index < request_index {
            // The application is still installing an image it received
            // (its applied index is below the log's snapshot marker).
            return None;
        }
        let term = Storage::term(&self.mem, index).ok()?;
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(rs.conf_state);
        Some(snap)
    }

    /// The last index of the raft log.
    pub fn last_index(&self) -> u64 {
        Storage::last_index(&self.mem).unwrap_or(0)
    }

    /// The WAL, for metrics and purging.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }
}

impl Storage for WalStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let snap = self
            .snapshot_metadata(request_index)
            .ok_or(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ))?;
        tracing::debug!(
            to,
            index = snap.get_metadata().index,
            applied = self.applied,
            "snapshot metadata for a follower"
        );
        Ok(snap)
    }
}

/// The WAL batch of raft's entries and hard state.
fn wal_batch(entries: &[Entry], hs: Option<&HardState>) -> WriteBatch {
    WriteBatch {
        entries: entries
            .iter()
            .map(|e| etcd_wal::Entry {
                index: e.index,
                term: e.term,
                data: encode_entry(e),
            })
            .collect(),
        hard_state: hs.map(|hs| etcd_wal::HardState {
            term: hs.term,
            vote: hs.vote,
            commit: hs.commit,
        }),
        ..WriteBatch::default()
    }
}

fn encode_entry(e: &Entry) -> bytes::Bytes {
    bytes::Bytes::from(
        e.write_to_bytes()
            .expect("encoding a raft entry cannot fail"),
    )
}

fn decode_entry(data: &[u8]) -> Result<Entry, String> {
    Entry::parse_from_bytes(data).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = bytes::Bytes::copy_from_slice(data);
        e
    }

    fn voters(ids: &[u64]) -> ConfState {
        let mut cs = ConfState::default();
        cs.voters = ids.to_vec();
        cs
    }

    #[test]
    fn entries_and_hard_state_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            WalStorage::create(dir.path(), WalOptions::default(), b"meta", voters(&[1])).unwrap();
        let mut hs = HardState::default();
        hs.term = 2;
        hs.vote = 1;
        hs.commit = 2;
        s.persist(&[entry(1, 1, b"a"), entry(2, 2, b"b")], Some(&hs), true)
            .unwrap();
        // A new leader overwrites index 2.
        s.persist(&[entry(2, 3, b"c"), entry(3, 3, b"d")], None, true)
            .unwrap();
        drop(s);

        let opened =
            WalStorage::open(dir.path(), WalOptions::default(), 2, |_| Ok(voters(&[1]))).unwrap();
        assert_eq!(&opened.metadata[..], b"meta");
        let s = opened.storage;
        assert_eq!(s.last_index(), 3);
        let ents = s
            .entries(1, 4, None, GetEntriesContext::empty(false))
            .unwrap();
        let datas: Vec<&[u8]> = ents.iter().map(|e| &e.data[..]).collect();
        assert_eq!(datas, vec![&b"a"[..], b"c", b"d"]);
        assert_eq!(s.term(2).unwrap(), 3);
        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state.vote, 1);
        assert_eq!(st.hard_state.commit, 2);
        assert_eq!(st.conf_state.voters, vec![1]);
    }

    #[test]
    fn forced_entries_replace_the_uncommitted_suffix_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = WalStorage::create(dir.path(), WalOptions::default(), b"m", voters(&[1, 2, 3]))
            .unwrap();
        let mut hs = HardState::default();
        hs.term = 3;
        hs.commit = 2;
        s.persist(
            &[
                entry(1, 1, b"a"),
                entry(2, 2, b"b"),
                entry(3, 2, b"uncommitted"),
            ],
            Some(&hs),
            true,
        )
        .unwrap();
        drop(s);
        let mut s = WalStorage::open(dir.path(), WalOptions::default(), 1, |_| {
            Ok(voters(&[1, 2, 3]))
        })
        .unwrap()
        .storage;
        assert_eq!(datas(&s, 2, 3), vec![b"b".to_vec()]);
        s.force_commit(&[entry(3, 3, b"rm 2"), entry(4, 3, b"rm 3")])
            .unwrap();
        drop(s);
        let s = WalStorage::open(dir.path(), WalOptions::default(), 1, |_| {
            Ok(voters(&[1, 2, 3]))
        })
        .unwrap()
        .storage;
        assert_eq!(s.last_index(), 4);
        assert_eq!(s.hard_state().commit, 4);
        assert_eq!(s.hard_state().term, 3);
        assert_eq!(
            datas(&s, 2, 5),
            vec![b"b".to_vec(), b"rm 2".to_vec(), b"rm 3".to_vec()]
        );
        assert_eq!(s.committed_entries_after(2).unwrap().len(), 2);
    }

    #[test]
    fn compaction_drops_old_entries_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            WalStorage::create(dir.path(), WalOptions::default(), b"m", voters(&[1])).unwrap();
        let ents: Vec<Entry> = (1..=10)
            .map(|i| entry(i, 1, format!("e{i}").as_bytes()))
            .collect();
        let mut hs = HardState::default();
        hs.term = 1;
        hs.commit = 10;
        s.persist(&ents, Some(&hs), true).unwrap();
        s.compact(6).unwrap();
        assert_eq!(s.first_index().unwrap(), 7);
        assert_eq!(s.last_index(), 10);
        assert_eq!(
            s.term(6).unwrap(),
            1,
            "the term at the compaction point stays known"
        );
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 10);
        assert!(s
            .entries(5, 8, None, GetEntriesContext::empty(false))
            .is_err());
        s.persist(&[entry(11, 2, b"e11")], None, true).unwrap();
        drop(s);
        let err = WalStorage::open(dir.path(), WalOptions::default(), 3, |_| Ok(voters(&[1])))
            .err()
            .expect("a store behind the snapshot marker is refused");
        assert!(
            err.to_string().contains("below the WAL's snapshot index 6"),
            "{err}"
        );

        let s = WalStorage::open(dir.path(), WalOptions::default(), 8, |_| Ok(voters(&[1])))
            .unwrap()
            .storage;
        assert_eq!(s.first_index().unwrap(), 7);
        assert_eq!(s.last_index(), 11);
        let ents = s
            .entries(7, 12, None, GetEntriesContext::empty(false))
            .unwrap();
        let datas: Vec<&[u8]> = ents.iter().map(|e| &e.data[..]).collect();
        assert_eq!(datas, vec![&b"e7"[..], b"e8", b"e9", b"e10", b"e11"]);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1]);
    }

    #[test]
    fn a_log_created_after_a_snapshot_reopens_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = WalStorage::create_at(
            dir.path(),
            WalOptions::default(),
            b"m",
            voters(&[1, 2]),
            1,
            1,
        )
        .unwrap();
        assert_eq!(s.first_index().unwrap(), 2);
        assert_eq!(s.term(1).unwrap(), 1);
        s.persist(&[entry(2, 2, b"x")], None, true).unwrap();
        drop(s);
        let s = WalStorage::open(dir.path(), WalOptions::default(), 1, |_| {
            Ok(voters(&[1, 2]))
        })
        .unwrap()
        .storage;
        assert_eq!(s.first_index().unwrap(), 2);
        assert_eq!(s.last_index(), 2);
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 1);
    }

    #[test]
    fn applied_beyond_wal_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            WalStorage::create(dir.path(), WalOptions::default(), b"", voters(&[1])).unwrap();
        s.persist(&[entry(1, 1, b"a")], None, true).unwrap();
        drop(s);
        let err = WalStorage::open(dir.path(), WalOptions::default(), 5, |_| Ok(voters(&[1])))
            .err()
            .expect("must refuse");
        assert!(
            err.to_string().contains("beyond the last WAL entry"),
            "{err}"
        );
    }

    fn snapshot_at(index: u64, term: u64, cs: ConfState) -> Snapshot {
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap.mut_metadata().set_conf_state(cs);
        snap.data = bytes::Bytes::from_static(b"token");
        snap
    }

    fn hard_state(term: u64, commit: u64) -> HardState {
        let mut hs = HardState::default();
        hs.term = term;
        hs.commit = commit;
        hs
    }

    fn datas(s: &WalStorage, low: u64, high: u64) -> Vec<Vec<u8>> {
        s.entries(low, high, None, GetEntriesContext::empty(false))
            .unwrap()
            .iter()
            .map(|e| e.data.to_vec())
            .collect()
    }

    #[test]
    fn an_installed_snapshot_replaces_the_log_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            WalStorage::create(dir.path(), WalOptions::default(), b"m", voters(&[1, 2])).unwrap();
        // Entries 1..=12 of term 1, only 3 committed: 11 and 12 conflict
        // with the leader's log, which the snapshot at 10 (term 2) replaces.
        let ents: Vec<Entry> = (1..=12)
            .map(|i| entry(i, 1, format!("old{i}").as_bytes()))
            .collect();
        s.persist(&ents, Some(&hard_state(1, 3)), true).unwrap();
        s.apply_snapshot(
            &snapshot_at(10, 2, voters(&[1, 2, 3])),
            &[],
            Some(&hard_state(2, 10)),
        )
        .unwrap();
        assert_eq!(s.first_index().unwrap(), 11);
        assert_eq!(s.last_index(), 10, "the stale suffix is gone");
        assert_eq!(s.term(10).unwrap(), 2);
        let st = s.initial_state().unwrap();
        assert_eq!(st.hard_state.commit, 10);
        assert_eq!(st.conf_state.voters, vec![1, 2, 3]);
        // The next Ready appends after it.
        s.persist(&[entry(11, 2, b"new11")], Some(&hard_state(2, 11)), true)
            .unwrap();
        drop(s);

        let cs = || Ok(voters(&[1, 2, 3]));
        let s = WalStorage::open(dir.path(), WalOptions::default(), 10, |_| cs())
            .unwrap()
            .storage;
        assert_eq!(s.first_index().unwrap(), 11);
        assert_eq!(s.last_index(), 11);
        assert_eq!(datas(&s, 11, 12), vec![b"new11".to_vec()]);
        assert_eq!(s.term(10).unwrap(), 2);
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 11);
        drop(s);

        // Without the entry after it, the stale suffix must not come back
        // either (the WAL still holds "old11" and "old12").
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            WalStorage::create(dir.path(), WalOptions::default(), b"m", voters(&[1])).unwrap();
        s.persist(&ents, Some(&hard_state(1, 3)), true).unwrap();
        s.apply_snapshot(&snapshot_at(10, 2, voters(&[1])), &[], None)
            .unwrap();
        drop(s);
        let s = WalStorage::open(dir.path(), WalOptions::default(), 10, |_| Ok(voters(&[1])))
            .unwrap()
            .storage;
        assert_eq!((s.first_index().unwrap(), s.last_index()), (11, 10));
    }

    #[test]
    fn a_snapshot_with_entries_in_the_same_ready() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            WalStorage::create(dir.path(), WalOptions::default(), b"m", voters(&[1])).unwrap();
        s.persist(&[entry(1, 1, b"a")], Some(&hard_state(1, 1)), true)
            .unwrap();
        s.apply_snapshot(
            &snapshot_at(20, 3, voters(&[1])),
            &[entry(21, 3, b"x"), entry(22, 3, b"y")],
            Some(&hard_state(3, 20)),
        )
        .unwrap();
        assert_eq!(datas(&s, 21, 23), vec![b"x".to_vec(), b"y".to_vec()]);
        drop(s);
        let s = WalStorage::open(dir.path(), WalOptions::default(), 20, |_| Ok(voters(&[1])))
            .unwrap()
            .storage;
        assert_eq!(datas(&s, 21, 23), vec![b"x".to_vec(), b"y".to_vec()]);
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 20);
    }

    /// The restart protocol: a crash after the WAL recorded a received
    /// snapshot and before the application installed its image.
    #[test]
    fn crash_between_the_marker_and_the_install() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            WalStorage::create(dir.path(), WalOptions::default(), b"m", voters(&[1])).unwrap();
        s.persist(&[entry(1, 1, b"a")], Some(&hard_state(1, 1)), true)
            .unwrap();
        s.apply_snapshot(
            &snapshot_at(10, 2, voters(&[1])),
            &[],
            Some(&hard_state(2, 10)),
        )
        .unwrap();
        drop(s);

        // The application is at 1: the plain open refuses.
        let err = WalStorage::open(dir.path(), WalOptions::default(), 1, |_| Ok(voters(&[1])))
            .err()
            .expect("refused");
        assert!(
            err.to_string()
                .contains("below the WAL's snapshot index 10"),
            "{err}"
        );
        // It can learn the marker without keeping the WAL open...
        let marker = WalStorage::snapshot_marker(dir.path(), WalOptions::default())
            .unwrap()
            .unwrap();
        assert_eq!((marker.index, marker.term), (10, 2));
        // ...or while opening: it re-installs the image it retained for
        // (10, 2), whose applied index may be newer (here 12).
        let mut seen = None;
        let s = WalStorage::open_with(dir.path(), WalOptions::default(), |rec| {
            seen = rec.snapshot.map(|m| (m.index, m.term));
            assert_eq!(&rec.metadata[..], b"m");
            Ok((12, voters(&[1])))
        })
        .unwrap()
        .storage;
        assert_eq!(seen, Some((10, 2)));
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 10);
        assert_eq!(s.applied(), 12);
        drop(s);
        // Without a retained image the application stays at 1: refused.
        let err =
            WalStorage::open_with(dir.path(), WalOptions::default(), |_| Ok((1, voters(&[1]))))
                .err()
                .expect("refused");
        assert!(err.to_string().contains("below the WAL's snapshot index"));
    }

    #[test]
    fn snapshot_metadata_is_never_above_applied() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            WalStorage::create(dir.path(), WalOptions::default(), b"m", voters(&[1, 2])).unwrap();
        let unavailable = Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable,
        ));
        // Nothing applied yet.
        assert_eq!(s.snapshot(0, 2), unavailable);
        let ents: Vec<Entry> = (1..=10).map(|i| entry(i, 1 + i / 5, b"e")).collect();
        s.persist(&ents, Some(&hard_state(3, 10)), true).unwrap();
        // Committed up to 10, but the application applied 6 only.
        s.set_applied(6);
        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!(
            (snap.get_metadata().index, snap.get_metadata().term),
            (6, 2)
        );
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2]);
        assert!(snap.data.is_empty(), "the image travels out of band");
        s.set_applied(5);
        assert_eq!(s.applied(), 6, "applied never moves back");
        // A follower asking for a newer one waits.
        assert_eq!(s.snapshot(8, 2), unavailable);
        s.compact(4).unwrap();
        assert_eq!(s.snapshot(0, 2).unwrap().get_metadata().index, 6);
        // Membership as of the applied index.
        s.set_conf_state(voters(&[1, 2, 3]));
        assert_eq!(
            s.snapshot(0, 2)
                .unwrap()
                .get_metadata()
                .get_conf_state()
                .voters,
            vec![1, 2, 3]
        );
        // A received snapshot the application has not installed yet: no
        // consistent answer until it reports.
        s.apply_snapshot(
            &snapshot_at(20, 4, voters(&[1, 2, 3])),
            &[],
            Some(&hard_state(4, 20)),
        )
        .unwrap();
        assert_eq!(s.snapshot(0, 2), unavailable);
        // An image newer than the log is cut to the log.
        s.set_applied(25);
        let snap = s.snapshot(0, 2).unwrap();
        assert_eq!(
            (snap.get_metadata().index, snap.get_metadata().term),
            (20, 4)
        );
    }

    #[test]
    fn an_image_newer_than_the_log_is_accepted_only_with_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let mut s =
            WalStorage::create(dir.path(), WalOptions::default(), b"m", voters(&[1])).unwrap();
        s.apply_snapshot(
            &snapshot_at(10, 2, voters(&[1])),
            &[],
            Some(&hard_state(2, 10)),
        )
        .unwrap();
        drop(s);
        let s = WalStorage::open(dir.path(), WalOptions::default(), 15, |_| Ok(voters(&[1])))
            .unwrap()
            .storage;
        assert_eq!(s.initial_state().unwrap().hard_state.commit, 10);
        assert_eq!(s.last_index(), 10);
    }
}
