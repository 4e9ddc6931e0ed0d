//! Seeded simulation of 3- and 5-member raft clusters of [`Peer`]s over a
//! [`MemNetwork`], each member with its own WAL: message loss, duplication,
//! delay/reordering, random partitions and member restarts, while clients
//! propose at random members. Checked at every step:
//!
//! - state machine safety: every member applies, at each index, the same
//!   entry (term and payload) as every other member ever did, with no gaps;
//! - after the faults stop and the network heals, a proposal commits and
//!   every member ends with the same applied log.
//!
//! A failing seed replays exactly: `SIM_SEED=<n> cargo test --release -p
//! etcd-raft-node --test sim -- --nocapture`. `SIM_SEEDS` sets how many
//! seeds each test runs (default 100).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use etcd_raft_node::eraftpb::ConfState;
use etcd_raft_node::{
    CommittedEntry, EntryKind, Faults, MemNetwork, MemTransport, NodeConfig, Peer, Role, WalStorage,
};
use etcd_wal::WalOptions;
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

struct Member {
    id: u64,
    dir: PathBuf,
    peer: Option<Peer>,
    /// Applied entries: (index, term, payload).
    applied: Vec<(u64, u64, Vec<u8>)>,
}

fn open_peer(id: u64, dir: &Path, voters: &[u64], fresh: bool) -> Peer {
    let storage = if fresh {
        WalStorage::create(dir, wal_options(), b"sim", conf_state(voters)).expect("create wal")
    } else {
        WalStorage::open(dir, wal_options(), 0, |_| Ok(conf_state(voters)))
            .expect("reopen wal")
            .storage
    };
    let cfg = NodeConfig {
        id,
        voters: voters.to_vec(),
        election_tick: 10,
        heartbeat_tick: 1,
        ..NodeConfig::default()
    };
    Peer::new(&cfg, storage).expect("peer")
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
                Member {
                    id,
                    peer: Some(open_peer(id, &d, &ids, true)),
                    dir: d,
                    applied: Vec::new(),
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
            _dir: dir,
        }
    }

    fn member(&mut self, id: u64) -> &mut Member {
        &mut self.members[(id - 1) as usize]
    }

    /// One step: deliver due messages, tick every other step, handle every
    /// member's Ready and check what it applied.
    fn step(&mut self, n: u64) {
        for m in self.net.advance() {
            if let Some(p) = self.member(m.to).peer.as_mut() {
                p.step(m).expect("step");
            }
        }
        for i in 0..self.members.len() {
            let Some(peer) = self.members[i].peer.as_mut() else {
                continue;
            };
            if n.is_multiple_of(2) {
                peer.tick();
            }
            let mut committed: Vec<CommittedEntry> = Vec::new();
            while peer
                .handle_ready(&self.transport, &mut committed)
                .expect("ready")
            {}
            if let Some(last) = committed.last() {
                peer.advance_applied(last.index);
            }
            for e in committed {
                self.apply(i, e);
            }
        }
    }

    fn apply(&mut self, i: usize, e: CommittedEntry) {
        let seed = self.seed;
        let m = &mut self.members[i];
        let expected = m.applied.last().map_or(1, |x| x.0 + 1);
        assert_eq!(
            e.index, expected,
            "seed {seed}: member {} applied out of order",
            m.id
        );
        assert_eq!(
            e.kind,
            EntryKind::Normal,
            "seed {seed}: no conf changes here"
        );
        let entry = (e.term, e.data.to_vec());
        match self.committed.get(&e.index) {
            Some(c) => assert_eq!(
                *c, entry,
                "seed {seed}: member {} applied a different entry at index {}",
                m.id, e.index
            ),
            None => {
                self.committed.insert(e.index, entry.clone());
            }
        }
        m.applied.push((e.index, entry.0, entry.1));
    }

    fn propose(&mut self) {
        let id = self.ids[self.rng.gen_range(0..self.ids.len())];
        self.proposals += 1;
        let data = format!("p{}", self.proposals).into_bytes();
        if let Some(p) = self.member(id).peer.as_mut() {
            p.propose(data, None);
        }
    }

    fn restart(&mut self, id: u64) {
        let ids = self.ids.clone();
        let m = self.member(id);
        // Dropping the peer closes its WAL; reopen and re-apply from 1.
        m.peer = None;
        m.applied.clear();
        m.peer = Some(open_peer(id, &m.dir, &ids, false));
        self.restarts += 1;
    }

    fn run_faults(&mut self) {
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
                    self.restart(id);
                }
                _ => {}
            }
            self.step(n);
        }
    }

    fn calm_down(&mut self) {
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
        let logs: Vec<&Vec<(u64, u64, Vec<u8>)>> =
            self.members.iter().map(|m| &m.applied).collect();
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
    let seeds = seeds();
    for &seed in &seeds {
        let mut sim = Sim::new(seed, members);
        sim.run_faults();
        sim.calm_down();
        entries += sim.committed.len();
        restarts += sim.restarts;
        let st = sim.net.stats();
        dropped += st.dropped;
        sent += st.sent;
    }
    eprintln!(
        "{members} members, {} seeds: {entries} entries committed, {restarts} restarts, \
         {dropped} of {sent} messages lost",
        seeds.len()
    );
}

#[test]
fn three_members_stay_consistent_under_faults() {
    run(3);
}

#[test]
fn five_members_stay_consistent_under_faults() {
    run(5);
}
