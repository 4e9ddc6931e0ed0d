//! A deterministic in-memory network for simulations: members' transports
//! put raft messages into one queue; the simulation moves time forward with
//! [`MemNetwork::advance`] and gets the messages due at that step.
//!
//! Faults, all drawn from one seeded RNG so a seed replays the same run:
//! - loss: each message is dropped with probability `drop`;
//! - duplication: delivered twice with probability `duplicate`, except
//!   proposals forwarded to the leader (`MsgPropose`): raft tolerates a
//!   duplicate of every message of its protocol, but a forwarded proposal
//!   is not idempotent (the leader appends each copy as a new entry, and
//!   neither raft nor etcd deduplicates them), and a real transport (a TCP
//!   stream, which never resends) does not duplicate it;
//! - delay and reordering: each copy is due `0..=max_delay` steps later;
//!   messages due at the same step are delivered in a shuffled order;
//! - partitions: [`MemNetwork::cut`] drops everything between two members
//!   (both ways), [`MemNetwork::isolate`] cuts one member from all others,
//!   [`MemNetwork::heal`] removes every cut. A cut applies when a message is
//!   sent and again when it is due, so nothing crosses a partition.
//!
//! Snapshots: a `MsgSnapshot` carries only raft's metadata here; the
//! simulation moves the image when it delivers the message (see
//! [`crate::transfer_inline`]) and reports the outcome to the sender. A lost
//! `MsgSnapshot` (fault or partition) is remembered so the simulation can
//! report the failure too ([`MemNetwork::take_failed_snapshots`]), as a real
//! transport does when its snapshot stream breaks.
//!
//! Example: with `max_delay = 2`, a message sent at step 5 is due at step
//! 5, 6 or 7; `advance()` moving to step 6 returns it if it drew 6 (or 5 and
//! was not collected yet).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use raft::eraftpb::{Message, MessageType};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::transport::Transport;

/// Fault rates of a [`MemNetwork`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Largest delay of a message, in steps (0: due at the next step).
    pub max_delay: u64,
}

/// The shared network of a simulated cluster.
pub struct MemNetwork {
    inner: Mutex<Net>,
}

struct Net {
    rng: StdRng,
    now: u64,
    faults: Faults,
    /// Undirected cuts, stored as (smaller id, larger id).
    cuts: HashSet<(u64, u64)>,
    /// Messages in flight by (due step, sequence number).
    queue: BTreeMap<(u64, u64), Message>,
    seq: u64,
    sent: u64,
    dropped: u64,
    /// (from, to) of lost snapshot messages, not yet taken.
    failed_snapshots: Vec<(u64, u64)>,
}

fn edge(a: u64, b: u64) -> (u64, u64) {
    (a.min(b), a.max(b))
}

impl Net {
    fn is_cut(&self, m: &Message) -> bool {
        self.cuts.contains(&edge(m.from, m.to))
    }

    fn lose(&mut self, m: &Message) {
        self.dropped += 1;
        if m.get_msg_type() == MessageType::MsgSnapshot {
            self.failed_snapshots.push((m.from, m.to));
        }
    }
}

/// Counters of a [`MemNetwork`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages handed to the network.
    pub sent: u64,
    /// Messages lost to faults or partitions.
    pub dropped: u64,
    /// Messages in flight.
    pub in_flight: usize,
}

impl MemNetwork {
    /// A network without faults whose random choices follow `seed`.
    pub fn new(seed: u64) -> Arc<MemNetwork> {
        Arc::new(MemNetwork {
            inner: Mutex::new(Net {
                rng: StdRng::seed_from_u64(seed),
                now: 0,
                faults: Faults::default(),
                cuts: HashSet::new(),
                queue: BTreeMap::new(),
                seq: 0,
                sent: 0,
                dropped: 0,
                failed_snapshots: Vec::new(),
            }),
        })
    }

    /// A transport that sends into this network.
    pub fn transport(self: &Arc<Self>) -> MemTransport {
        MemTransport { net: self.clone() }
    }

    /// Sets the fault rates for messages sent from now on.
    pub fn set_faults(&self, faults: Faults) {
        assert!(
            (0.0..=1.0).contains(&faults.drop),
            "drop rate {}",
            faults.drop
        );
        assert!(
            (0.0..=1.0).contains(&faults.duplicate),
            "duplicate rate {}",
            faults.duplicate
        );
        self.inner.lock().faults = faults;
    }

    /// Drops all traffic between `a` and `b`, both ways.
    pub fn cut(&self, a: u64, b: u64) {
        self.inner.lock().cuts.insert(edge(a, b));
    }

    /// Cuts `id` from every member of `all`.
    pub fn isolate(&self, id: u64, all: &[u64]) {
        let mut net = self.inner.lock();
        for &other in all.iter().filter(|&&o| o != id) {
            net.cuts.insert(edge(id, other));
        }
    }

    /// Removes every cut.
    pub fn heal(&self) {
        self.inner.lock().cuts.clear();
    }

    /// Moves to the next step and returns the messages due, in the order to
    /// deliver them.
    pub fn advance(&self) -> Vec<Message> {
        let mut net = self.inner.lock();
        net.now += 1;
        let now = net.now;
        let mut due = Vec::new();
        while let Some((&(at, _), _)) = net.queue.first_key_value() {
            if at > now {
                break;
            }
            let (_, m) = net.queue.pop_first().expect("first exists");
            if net.is_cut(&m) {
                net.lose(&m);
            } else {
                due.push(m);
            }
        }
        let Net { rng, .. } = &mut *net;
        due.shuffle(rng);
        due
    }

    /// (from, to) of every `MsgSnapshot` lost since the last call, so the
    /// simulation can report the failures to the senders.
    pub fn take_failed_snapshots(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.inner.lock().failed_snapshots)
    }

    /// Counters so far.
    pub fn stats(&self) -> NetStats {
        let net = self.inner.lock();
        NetStats {
            sent: net.sent,
            dropped: net.dropped,
            in_flight: net.queue.len(),
        }
    }

    fn send(&self, msgs: Vec<Message>) {
        let mut net = self.inner.lock();
        for m in msgs {
            net.sent += 1;
            let f = net.faults;
            if net.is_cut(&m) || net.rng.gen_bool(f.drop) {
                net.lose(&m);
                continue;
            }
            let dup = net.rng.gen_bool(f.duplicate);
            let copies = if dup && m.get_msg_type() != MessageType::MsgPropose {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let due = net.now + 1 + net.rng.gen_range(0..=f.max_delay);
                net.seq += 1;
                let seq = net.seq;
                net.queue.insert((due, seq), m.clone());
            }
        }
    }
}

/// The [`Transport`] of one member of a [`MemNetwork`].
#[derive(Clone)]
pub struct MemTransport {
    net: Arc<MemNetwork>,
}

impl Transport for MemTransport {
    fn send(&self, msgs: Vec<Message>) {
        self.net.send(msgs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(from: u64, to: u64, index: u64) -> Message {
        let mut m = Message::default();
        m.from = from;
        m.to = to;
        m.index = index;
        m
    }

    fn run(seed: u64, faults: Faults) -> Vec<(u64, u64)> {
        let net = MemNetwork::new(seed);
        net.set_faults(faults);
        let t = net.transport();
        let mut got = Vec::new();
        for step in 0..50 {
            t.send(vec![msg(1, 2, step), msg(2, 3, step)]);
            got.extend(net.advance().iter().map(|m| (m.to, m.index)));
        }
        for _ in 0..=faults.max_delay {
            got.extend(net.advance().iter().map(|m| (m.to, m.index)));
        }
        got
    }

    #[test]
    fn without_faults_everything_arrives_in_order_next_step() {
        let net = MemNetwork::new(1);
        let t = net.transport();
        t.send(vec![msg(1, 2, 1)]);
        t.send(vec![msg(1, 2, 2)]);
        let got: Vec<u64> = net.advance().iter().map(|m| m.index).collect();
        assert_eq!(got.len(), 2);
        assert!(net.advance().is_empty());
        assert_eq!(net.stats().in_flight, 0);
    }

    #[test]
    fn same_seed_same_run_and_faults_show() {
        let f = Faults {
            drop: 0.2,
            duplicate: 0.2,
            max_delay: 3,
        };
        let a = run(7, f);
        assert_eq!(a, run(7, f), "a seed replays the same run");
        assert_ne!(a, run(8, f));
        let sent = 100;
        let to3 = a.iter().filter(|(to, _)| *to == 3).count();
        assert!(
            a.len() < 2 * sent && a.len() > sent / 2,
            "{} delivered",
            a.len()
        );
        let mut idx: Vec<u64> = a.iter().filter(|(to, _)| *to == 2).map(|x| x.1).collect();
        let in_order = idx.windows(2).all(|w| w[0] <= w[1]);
        assert!(!in_order, "delays reorder messages");
        idx.sort();
        idx.dedup();
        assert!(idx.len() < 50, "some messages were lost");
        assert!(to3 > 0);
    }

    #[test]
    fn partitions_drop_both_ways_and_heal() {
        let net = MemNetwork::new(1);
        let t = net.transport();
        net.isolate(1, &[1, 2, 3]);
        t.send(vec![msg(1, 2, 1), msg(2, 1, 2), msg(2, 3, 3)]);
        let got: Vec<u64> = net.advance().iter().map(|m| m.index).collect();
        assert_eq!(got, [3]);
        // A message in flight when the cut happens is lost too.
        net.heal();
        t.send(vec![msg(1, 2, 4)]);
        net.cut(2, 1);
        assert!(net.advance().is_empty());
        net.heal();
        t.send(vec![msg(1, 2, 5)]);
        assert_eq!(net.advance().len(), 1);
        assert_eq!(net.stats().dropped, 3);
    }

    #[test]
    fn lost_snapshot_messages_are_remembered() {
        let net = MemNetwork::new(1);
        let t = net.transport();
        let snap = |from, to| {
            let mut m = msg(from, to, 0);
            m.set_msg_type(MessageType::MsgSnapshot);
            m
        };
        net.cut(1, 2);
        t.send(vec![snap(1, 2), msg(1, 2, 1), snap(1, 3)]);
        // In flight when the cut happens.
        net.cut(1, 3);
        assert!(net.advance().is_empty());
        assert_eq!(net.take_failed_snapshots(), vec![(1, 2), (1, 3)]);
        assert!(net.take_failed_snapshots().is_empty());
        net.heal();
        t.send(vec![snap(2, 3)]);
        assert_eq!(net.advance().len(), 1);
        assert!(net.take_failed_snapshots().is_empty());
    }
}
