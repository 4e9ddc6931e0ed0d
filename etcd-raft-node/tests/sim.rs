//! Seeded simulation of 3- and 5-member raft clusters of [`Peer`]s over a
//! [`MemNetwork`], each member with its own WAL: message loss, duplication,
//! delay/reordering, random partitions and member crashes (down for up to
//! 150 steps), while clients propose at random members.
//!
//! Each member's state machine is a toy ([`Toy`]): the list of entries it
//! applied. It "flushes" (makes durable) every few entries and then
//! compacts its raft log, keeping only a few entries, so members that were
//! down or partitioned for long catch up through state machine snapshots:
//! the image is the serialized list, moved by [`transfer_inline`] when the
//! `MsgSnapshot` is delivered; a crash loses what was not flushed. Some
//! members crash right after raft recorded a snapshot and before the toy
//! installed it, and recover by the restart protocol (`open_with`).
//!
//! Checked at every step:
//!
//! - state machine safety: every member applies, at each index, the same
//!   entry (term and payload) as every other member ever did, with no gaps,
//!   and every entry of an installed image is that entry too (after an
//!   install, the member's state is the image);
//! - after the faults stop and the network heals, a proposal commits and
//!   every member ends with the same applied log;
//! - snapshots were really installed (counted over all seeds).
//!
//! A failing seed replays exactly: `SIM_SEED=<n> cargo test --release -p
//! etcd-raft-node --test sim -- --nocapture`. `SIM_SEEDS` sets how many
//! seeds each test runs (default 100).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use etcd_raft_node::eraftpb::{ConfState, Message, MessageType};
use etcd_raft_node::{
    transfer_inline, CommittedEntry, EntryKind, Faults, MemNetwork, MemTransport, NodeConfig, Peer,
    Role, SnapshotInfo, SnapshotIo, SnapshotSink, ToApply, WalStorage,
};
use etcd_wal::WalOptions;
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Steps with faults, then steps to converge.
const FAULT_STEPS: u64 = 1500;
const CALM_STEPS: u64 = 600;

fn wal_options() -> WalOptions {
    WalOptions {
        segment_size: 1 << 20,
        fsync: false,
        ..WalOptions::default()
    }
}

fn conf_state(voters: &[u64]) -> ConfState {
    let mut cs = ConfState::default();
    cs.voters = voters.to_vec();
    cs
}

/// Entries between two flushes of a toy state machine.
const FLUSH_EVERY: u64 = 8;
/// Entries kept in the raft log below the flushed index.
const KEEP_ENTRIES: u64 = 4;

type AppliedEntry = (u64, u64, Vec<u8>);

/// A toy state machine: the entries applied so far. The first `flushed`
/// of them are durable (a crash keeps them); images received for snapshots
/// are retained (durably) by (index, term) until installed.
#[derive(Clone, Default)]
struct Toy {
    state: Arc<Mutex<ToyState>>,
}

#[derive(Default)]
struct ToyState {
    applied: Vec<AppliedEntry>,
    flushed: usize,
    retained: BTreeMap<(u64, u64), Vec<u8>>,
}

impl ToyState {
    fn last(&self) -> u64 {
        self.applied.last().map_or(0, |e| e.0)
    }
}

fn encode_image(entries: &[AppliedEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (index, term, data) in entries {
        out.extend_from_slice(&index.to_be_bytes());
        out.extend_from_slice(&term.to_be_bytes());
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(data);
    }
    out
}

fn decode_image(mut b: &[u8]) -> Vec<AppliedEntry> {
    let mut out = Vec::new();
    let take = |n: usize, b: &mut &[u8]| {
        let (h, t) = b.split_at(n);
        *b = t;
        h.to_vec()
    };
    while !b.is_empty() {
        let index = u64::from_be_bytes(take(8, &mut b).try_into().unwrap());
        let term = u64::from_be_bytes(take(8, &mut b).try_into().unwrap());
        let len = u32::from_be_bytes(take(4, &mut b).try_into().unwrap()) as usize;
        out.push((index, term, take(len, &mut b)));
    }
    out
}

struct ToySink {
    toy: Toy,
    key: (u64, u64),
    buf: Vec<u8>,
}

impl SnapshotIo for Toy {
    fn export(&self, index: u64) -> etcd_raft_node::Result<Box<dyn Read + Send>> {
        let st = self.state.lock();
        if st.last() < index {
            return Err(etcd_raft_node::Error::Snapshot(format!(
                "image at {} is older than {index}",
                st.last()
            )));
        }
        Ok(Box::new(std::io::Cursor::new(encode_image(&st.applied))))
    }

    fn import(&self, index: u64, term: u64) -> etcd_raft_node::Result<Box<dyn SnapshotSink>> {
        Ok(Box::new(ToySink {
            toy: self.clone(),
            key: (index, term),
            buf: Vec::new(),
        }))
    }
}

impl SnapshotSink for ToySink {
    fn write_chunk(&mut self, chunk: &[u8]) -> etcd_raft_node::Result<()> {
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    fn finish(self: Box<Self>) -> etcd_raft_node::Result<Vec<u8>> {
        let (index, term) = self.key;
        self.toy.state.lock().retained.insert(self.key, self.buf);
        Ok(format!("{index}:{term}").into_bytes())
    }
}

struct Member {
    id: u64,
    dir: PathBuf,
    peer: Option<Peer>,
    toy: Toy,
    /// Crashed until this step.
    down_until: Option<u64>,
}

fn open_peer(id: u64, dir: &Path, voters: &[u64], fresh: bool, toy: &Toy) -> (Peer, bool) {
    let mut reinstalled = false;
    let (storage, applied) = if fresh {
        let s =
            WalStorage::create(dir, wal_options(), b"sim", conf_state(voters)).expect("create wal");
        (s, 0)
    } else {
        let mut applied = 0;
        let opened = WalStorage::open_with(dir, wal_options(), |rec| {
            let mut st = toy.state.lock();
            // The restart protocol: the WAL recorded a snapshot the toy has
            // not installed; install the image retained for it.
            if let Some(m) = rec.snapshot {
                if st.last() < m.index {
                    let image = st
                        .retained
                        .get(&(m.index, m.term))
                        .cloned()
                        .expect("the image of a recorded snapshot is retained");
                    install(&mut st, (m.index, m.term), &image);
                    reinstalled = true;
                }
            }
            applied = st.last();
            Ok((applied, conf_state(voters)))
        })
        .expect("reopen wal");
        (opened.storage, applied)
    };
    let cfg = NodeConfig {
        id,
        voters: voters.to_vec(),
        applied,
        election_tick: 10,
        heartbeat_tick: 1,
        ..NodeConfig::default()
    };
    (Peer::new(&cfg, storage).expect("peer"), reinstalled)
}

/// Replaces the toy's state with an image (durably, as one step).
fn install(st: &mut ToyState, key: (u64, u64), image: &[u8]) {
    let entries = decode_image(image);
    assert!(
        entries.last().map_or(0, |e| e.0) >= key.0,
        "image older than its snapshot {key:?}"
    );
    assert!(
        entries.iter().enumerate().all(|(i, e)| e.0 == i as u64 + 1),
        "image with gaps"
    );
    st.applied = entries;
    st.flushed = st.applied.len();
    st.retained.retain(|k, _| k.0 > key.0);
}

struct Sim {
    seed: u64,
    rng: StdRng,
    net: Arc<MemNetwork>,
    transport: MemTransport,
    ids: Vec<u64>,
    members: Vec<Member>,
    /// What any member applied at each index: (term, payload).
    committed: BTreeMap<u64, (u64, Vec<u8>)>,
    proposals: u64,
    restarts: u64,
    /// Snapshots installed by toys, and re-installed on restart.
    installs: u64,
    reinstalls: u64,
    /// Crash members right after raft recorded a snapshot.
    crash_on_snapshot: bool,
    _dir: tempfile::TempDir,
}

impl Sim {
    fn new(seed: u64, n: u64) -> Sim {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids: Vec<u64> = (1..=n).collect();
        let members = ids
            .iter()
            .map(|&id| {
                let d = dir.path().join(format!("m{id}"));
                let toy = Toy::default();
                Member {
                    id,
                    peer: Some(open_peer(id, &d, &ids, true, &toy).0),
                    toy,
                    dir: d,
                    down_until: None,
                }
            })
            .collect();
        let net = MemNetwork::new(seed);
        Sim {
            seed,
            rng: StdRng::seed_from_u64(seed ^ 0x5eed),
            transport: net.transport(),
            net,
            ids,
            members,
            committed: BTreeMap::new(),
            proposals: 0,
            restarts: 0,
            installs: 0,
            reinstalls: 0,
            crash_on_snapshot: false,
            _dir: dir,
        }
    }

    fn member(&mut self, id: u64) -> &mut Member {
        &mut self.members[(id - 1) as usize]
    }

    /// Delivers a message; a snapshot's image moves from the sender's toy to
    /// the receiver's, and the outcome is reported to the sender.
    fn deliver(&mut self, m: Message) {
        let (from, to) = (m.from, m.to);
        if self.member(to).peer.is_none() {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.report_snapshot(from, to, false);
            }
            return;
        }
        let m = if m.get_msg_type() == MessageType::MsgSnapshot {
            let src = self.member(from).toy.clone();
            let dst = self.member(to).toy.clone();
            match transfer_inline(m, &src, &dst) {
                Ok(m) => {
                    self.report_snapshot(from, to, true);
                    m
                }
                Err(_) => {
                    self.report_snapshot(from, to, false);
                    return;
                }
            }
        } else {
            m
        };
        let peer = self.member(to).peer.as_mut().expect("up");
        peer.step(m).expect("step");
    }

    fn report_snapshot(&mut self, from: u64, to: u64, ok: bool) {
        if let Some(p) = self.member(from).peer.as_mut() {
            p.report_snapshot(to, ok);
        }
    }

    /// One step: revive members, deliver due messages, tick every other
    /// step, handle every member's Ready and apply what it hands over.
    fn step(&mut self, n: u64) {
        for i in 0..self.members.len() {
            if self.members[i].down_until.is_some_and(|t| t <= n) {
                self.revive(self.members[i].id);
            }
        }
        for m in self.net.advance() {
            self.deliver(m);
        }
        for (from, to) in self.net.take_failed_snapshots() {
            self.report_snapshot(from, to, false);
        }
        for i in 0..self.members.len() {
            let Some(peer) = self.members[i].peer.as_mut() else {
                continue;
            };
            if n.is_multiple_of(2) {
                peer.tick();
            }
            let mut out: Vec<ToApply> = Vec::new();
            while peer
                .handle_ready_applied(&self.transport, &mut out)
                .expect("ready")
            {}
            for a in out {
                match a {
                    ToApply::Entries(es) => {
                        for e in es {
                            self.apply(i, e);
                        }
                    }
                    ToApply::Snapshot(info) => {
                        if self.crash_on_snapshot && self.rng.gen_bool(0.2) {
                            // Crash between the WAL marker and the install:
                            // the rest of this Ready is lost too.
                            let id = self.members[i].id;
                            self.crash(id, n);
                            self.revive(id);
                            break;
                        }
                        self.install_snapshot(i, &info);
                    }
                }
            }
            self.flush_and_compact(i);
        }
    }

    fn install_snapshot(&mut self, i: usize, info: &SnapshotInfo) {
        let seed = self.seed;
        let key = {
            let s = std::str::from_utf8(&info.data).expect("token");
            let (a, b) = s.split_once(':').expect("token");
            (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap())
        };
        assert_eq!(key, (info.index, info.term), "seed {seed}: token");
        let toy = self.members[i].toy.clone();
        let mut st = toy.state.lock();
        let image = st.retained.get(&key).cloned().expect("retained image");
        install(&mut st, key, &image);
        assert_eq!(
            encode_image(&st.applied),
            image,
            "seed {seed}: state after install equals the image"
        );
        for (index, term, data) in st.applied.clone() {
            self.check(self.members[i].id, index, (term, data));
        }
        self.installs += 1;
    }

    /// Makes the toy durable every few entries and compacts the raft log.
    fn flush_and_compact(&mut self, i: usize) {
        let m = &mut self.members[i];
        let Some(peer) = m.peer.as_mut() else { return };
        let mut st = m.toy.state.lock();
        let last = st.last();
        peer.advance_applied(last);
        let flushed = st.flushed.checked_sub(1).map_or(0, |k| st.applied[k].0);
        if last >= flushed + FLUSH_EVERY {
            st.flushed = st.applied.len();
            peer.compact_log(last.saturating_sub(KEEP_ENTRIES))
                .expect("compact");
        }
    }

    /// Safety: what `id` applied at `index` is what everybody applied there.
    fn check(&mut self, id: u64, index: u64, entry: (u64, Vec<u8>)) {
        match self.committed.get(&index) {
            Some(c) => assert_eq!(
                *c, entry,
                "seed {}: member {id} applied a different entry at index {index}",
                self.seed
            ),
            None => {
                self.committed.insert(index, entry);
            }
        }
    }

    fn apply(&mut self, i: usize, e: CommittedEntry) {
        let seed = self.seed;
        let id = self.members[i].id;
        assert_eq!(
            e.kind,
            EntryKind::Normal,
            "seed {seed}: no conf changes here"
        );
        let entry = (e.term, e.data.to_vec());
        self.check(id, e.index, entry.clone());
        let toy = self.members[i].toy.clone();
        let mut st = toy.state.lock();
        let last = st.last();
        if e.index <= last {
            // Replayed below an installed image's applied index: skipped.
            return;
        }
        assert_eq!(
            e.index,
            last + 1,
            "seed {seed}: member {id} applied out of order"
        );
        st.applied.push((e.index, entry.0, entry.1));
    }

    fn propose(&mut self) {
        let id = self.ids[self.rng.gen_range(0..self.ids.len())];
        self.proposals += 1;
        let data = format!("p{}", self.proposals).into_bytes();
        if let Some(p) = self.member(id).peer.as_mut() {
            p.propose(data, None);
        }
    }

    /// Crashes `id` until step `until`: its peer (and WAL) closes, its toy
    /// loses what was not flushed.
    fn crash(&mut self, id: u64, until: u64) {
        let m = self.member(id);
        if m.peer.is_none() {
            return;
        }
        m.peer = None;
        let mut st = m.toy.state.lock();
        let keep = st.flushed;
        st.applied.truncate(keep);
        drop(st);
        m.down_until = Some(until);
        self.restarts += 1;
    }

    fn revive(&mut self, id: u64) {
        let ids = self.ids.clone();
        let m = self.member(id);
        m.down_until = None;
        let (peer, reinstalled) = open_peer(id, &m.dir, &ids, false, &m.toy);
        m.peer = Some(peer);
        if reinstalled {
            self.reinstalls += 1;
        }
    }

    fn run_faults(&mut self) {
        self.crash_on_snapshot = true;
        self.net.set_faults(Faults {
            drop: 0.05,
            duplicate: 0.05,
            max_delay: 3,
        });
        for n in 0..FAULT_STEPS {
            if self.rng.gen_bool(0.3) {
                self.propose();
            }
            match self.rng.gen_range(0..1000) {
                // Partition: isolate a member, or split in two.
                0..=4 => {
                    let id = self.ids[self.rng.gen_range(0..self.ids.len())];
                    self.net.isolate(id, &self.ids.clone());
                }
                5..=7 => {
                    let k = self.rng.gen_range(1..self.ids.len());
                    let (a, b) = self.ids.split_at(k);
                    for &x in a {
                        for &y in b {
                            self.net.cut(x, y);
                        }
                    }
                }
                8..=17 => self.net.heal(),
                18..=21 => {
                    let id = self.ids[self.rng.gen_range(0..self.ids.len())];
                    let until = n + self.rng.gen_range(1..150);
                    self.crash(id, until);
                }
                _ => {}
            }
            self.step(n);
        }
    }

    fn calm_down(&mut self) {
        self.crash_on_snapshot = false;
        for id in self.ids.clone() {
            if self.member(id).peer.is_none() {
                self.revive(id);
            }
        }
        self.net.heal();
        self.net.set_faults(Faults::default());
        for n in 0..CALM_STEPS {
            if n == CALM_STEPS / 2 {
                // A proposal after healing must commit everywhere.
                self.proposals += 1;
                let data = b"final".to_vec();
                let leader = self.members.iter().find_map(|m| {
                    let p = m.peer.as_ref()?;
                    (p.status().role == Role::Leader).then_some(m.id)
                });
                let id = leader.unwrap_or_else(|| {
                    panic!("seed {}: no leader after {} calm steps", self.seed, n)
                });
                self.member(id).peer.as_mut().unwrap().propose(data, None);
            }
            self.step(FAULT_STEPS + n);
        }
        let logs: Vec<Vec<AppliedEntry>> = self
            .members
            .iter()
            .map(|m| m.toy.state.lock().applied.clone())
            .collect();
        for (m, log) in self.members.iter().zip(&logs) {
            assert_eq!(
                *log, logs[0],
                "seed {}: member {} ended with a different applied log",
                self.seed, m.id
            );
        }
        assert!(
            logs[0].iter().any(|e| e.2 == b"final"),
            "seed {}: the proposal after healing did not commit",
            self.seed
        );
    }
}

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("SIM_SEED") {
        return vec![s.parse().expect("SIM_SEED")];
    }
    let n = std::env::var("SIM_SEEDS").map_or(100, |v| v.parse().expect("SIM_SEEDS"));
    (0..n).collect()
}

fn run(members: u64) {
    let (mut entries, mut restarts, mut dropped, mut sent) = (0, 0, 0, 0);
    let (mut installs, mut reinstalls) = (0, 0);
    let seeds = seeds();
    for &seed in &seeds {
        let mut sim = Sim::new(seed, members);
        sim.run_faults();
        sim.calm_down();
        entries += sim.committed.len();
        restarts += sim.restarts;
        installs += sim.installs;
        reinstalls += sim.reinstalls;
        let st = sim.net.stats();
        dropped += st.dropped;
        sent += st.sent;
    }
    eprintln!(
        "{members} members, {} seeds: {entries} entries committed, {restarts} restarts, \
         {dropped} of {sent} messages lost, {installs} snapshots installed, \
         {reinstalls} re-installed after a crash before the install",
        seeds.len()
    );
    if seeds.len() >= 20 {
        assert!(
            installs > 0,
            "no snapshot was installed: the path is not exercised"
        );
        assert!(reinstalls > 0, "the restart protocol was not exercised");
    }
}

#[test]
fn three_members_stay_consistent_under_faults() {
    run(3);
}

#[test]
fn five_members_stay_consistent_under_faults() {
    run(5);
}
