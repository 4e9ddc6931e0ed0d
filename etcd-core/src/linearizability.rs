//! A linearizability checker for histories of KV operations with etcd's
//! revisions (a Porcupine-style search, after Wing & Gong and Lowe), used by
//! the fault tests: clients record what they called and what came back,
//! and [`check`] searches for a sequential order that (a) respects real
//! time — an operation that returned before another was called comes first —
//! and (b) explains every output with the sequential [`KvModel`].
//!
//! Recording: [`Recorder::call`] takes a logical timestamp before the request
//! is sent, [`Recorder::ret`] another after the response arrived (one shared
//! atomic counter, so no wall clock is needed). A request whose outcome is
//! unknown (timeout, connection lost) is left without a return: it may have
//! taken effect at any time after its call, or never.
//!
//! The model is etcd's store reduced to what clients observe: the store
//! revision and, per key, value, create/mod revision and version. Revisions
//! pin writes tightly (a put answering revision 7 must be the 7th change),
//! so the search rarely backtracks far.
//!
//! Worked example: clients A and B, `put(x,1)` by A returns revision 2;
//! meanwhile B's `get(x)` is called before A's put returns and answers
//! "absent, revision 1". Both orders respect real time; only "get, then put"
//! explains both outputs, so the history is linearizable. Had B's get been
//! called *after* A's put returned, the only real-time order is "put, get",
//! under which the get must see revision 2: the checker reports a violation.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// What a client asked.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Input {
    /// `put(key, value)`.
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Linearizable `get(key)`.
    Get { key: Vec<u8> },
    /// `delete(key)` (a single key).
    Delete { key: Vec<u8> },
    /// Txn: if `mod_revision(key) == expected_mod` then `put(key, value)`.
    /// A missing key has mod revision 0.
    PutIfModRev {
        key: Vec<u8>,
        expected_mod: i64,
        value: Vec<u8>,
    },
    /// Writes outside the checked keys (lease-attached keys, lease
    /// revokes) that moved the store revision by `changes`: recorded so
    /// the revisions they took are accounted for.
    Foreign { changes: i64 },
}

/// A key's state as a client sees it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyState {
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
}

/// What came back (the header revision is the store revision the response
/// was produced at).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    Put { revision: i64 },
    Get { kv: Option<KeyState>, revision: i64 },
    Delete { deleted: i64, revision: i64 },
    PutIfModRev { succeeded: bool, revision: i64 },
    Foreign { revision: i64 },
}

/// One recorded operation. `ret == None`: the outcome is unknown.
#[derive(Clone, Debug)]
pub struct Operation {
    pub client: u64,
    pub call: u64,
    pub ret: Option<(u64, Output)>,
    pub input: Input,
}

/// The sequential specification: etcd's revisioned KV store.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KvModel {
    /// Current store revision (1 for an empty store).
    pub revision: i64,
    pub keys: BTreeMap<Vec<u8>, KeyState>,
}

impl KvModel {
    /// An empty store at revision 1, as etcd starts.
    pub fn new() -> Self {
        KvModel {
            revision: 1,
            keys: BTreeMap::new(),
        }
    }

    /// Applies `input`, returning the new state and the output etcd gives.
    pub fn apply(&self, input: &Input) -> (KvModel, Output) {
        let mut next = self.clone();
        let out = match input {
            Input::Put { key, value } => {
                next.put(key, value);
                Output::Put {
                    revision: next.revision,
                }
            }
            Input::Get { key } => Output::Get {
                kv: self.keys.get(key).cloned(),
                revision: self.revision,
            },
            Input::Delete { key } => {
                let deleted = i64::from(next.keys.remove(key).is_some());
                next.revision += deleted;
                Output::Delete {
                    deleted,
                    revision: next.revision,
                }
            }
            Input::PutIfModRev {
                key,
                expected_mod,
                value,
            } => {
                let current = self.keys.get(key).map_or(0, |k| k.mod_revision);
                let succeeded = current == *expected_mod;
                if succeeded {
                    next.put(key, value);
                }
                Output::PutIfModRev {
                    succeeded,
                    revision: next.revision,
                }
            }
            Input::Foreign { changes } => {
                next.revision += changes;
                Output::Foreign {
                    revision: next.revision,
                }
            }
        };
        (next, out)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.revision += 1;
        let rev = self.revision;
        let k = self.keys.entry(key.to_vec()).or_insert(KeyState {
            value: Vec::new(),
            create_revision: rev,
            mod_revision: rev,
            version: 0,
        });
        k.value = value.to_vec();
        k.mod_revision = rev;
        k.version += 1;
    }
}

/// Records a history from concurrent clients.
#[derive(Debug, Default)]
pub struct Recorder {
    clock: AtomicU64,
    ops: Mutex<Vec<Operation>>,
}

/// Handle of a call in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallId(usize);

impl Recorder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the call of `input` by `client`, before the request is sent.
    pub fn call(&self, client: u64, input: Input) -> CallId {
        let call = self.clock.fetch_add(1, Ordering::SeqCst);
        let mut ops = self.ops.lock();
        ops.push(Operation {
            client,
            call,
            ret: None,
            input,
        });
        CallId(ops.len() - 1)
    }

    /// Records the response of a call, after it arrived.
    pub fn ret(&self, id: CallId, out: Output) {
        let t = self.clock.fetch_add(1, Ordering::SeqCst);
        let mut ops = self.ops.lock();
        let op = &mut ops[id.0];
        assert!(op.ret.is_none(), "call {id:?} returned twice");
        op.ret = Some((t, out));
    }

    /// The history so far (calls without a return have unknown outcomes).
    pub fn history(&self) -> Vec<Operation> {
        self.ops.lock().clone()
    }
}

/// Result of [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A witness order exists: indices into the history, in order
    /// (unknown-outcome operations that did not take effect are absent).
    Linearizable(Vec<usize>),
    /// No order explains the history. `stuck` lists operations the deepest
    /// search could not place next (the likely culprits), with how many
    /// operations were placed before them.
    Violation { placed: usize, stuck: Vec<usize> },
    /// The search gave up after exploring `states` states.
    GaveUp { states: usize },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable(_))
    }
}

/// Searches for a linearization of `history` starting from `init`,
/// exploring at most `max_states` distinct (placed set, state) pairs.
pub fn check(history: &[Operation], init: &KvModel, max_states: usize) -> Verdict {
    Search::new(history, max_states).run(init.clone())
}

/// The DFS state: which operations are placed, in which order.
///
/// Operations with a known output are *required*: the search succeeds once
/// all of them are placed. An operation with an unknown outcome is
/// *optional*: it may be placed (it took effect) or never placed (it did
/// not); a read with an unknown outcome changes nothing and is dropped.
struct Search<'a> {
    ops: &'a [Operation],
    /// Return time of each required op.
    ret: Vec<u64>,
    /// Unplaced operations (required and optional), by call time.
    by_call: BTreeSet<(u64, usize)>,
    /// Unplaced required operations, by return time.
    by_ret: BTreeSet<(u64, usize)>,
    /// Random 128-bit key per op; the placed set is known by their XOR
    /// (Zobrist hashing), so a visited state costs 16 bytes plus the model.
    zobrist: Vec<u128>,
    placed_hash: u128,
    seen: HashSet<(u128, KvModel)>,
    /// Revisions produced by required writes: each revision is produced
    /// by exactly one write, so optional ones can only fill the others.
    claimed: HashSet<i64>,
    max_states: usize,
    deepest: usize,
    stuck: Vec<usize>,
}

/// One level of the DFS: the state before it and the candidates to try.
struct Frame {
    state: KvModel,
    candidates: Vec<usize>,
    next: usize,
    /// The op placed from this frame whose subtree is being explored.
    placed: Option<usize>,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [Operation], max_states: usize) -> Self {
        let ret: Vec<u64> = ops
            .iter()
            .map(|o| o.ret.as_ref().map_or(u64::MAX, |r| r.0))
            .collect();
        let live = |o: &Operation| o.ret.is_some() || !matches!(o.input, Input::Get { .. });
        // splitmix64: a fixed, well-mixed sequence (reproducible verdicts).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let zobrist = ops
            .iter()
            .map(|_| (u128::from(next()) << 64) | u128::from(next()))
            .collect();
        Search {
            by_call: ops
                .iter()
                .enumerate()
                .filter(|(_, o)| live(o))
                .map(|(i, o)| (o.call, i))
                .collect(),
            by_ret: ops
                .iter()
                .enumerate()
                .filter(|(_, o)| o.ret.is_some())
                .map(|(i, _)| (ret[i], i))
                .collect(),
            ret,
            ops,
            zobrist,
            placed_hash: 0,
            seen: HashSet::new(),
            claimed: ops
                .iter()
                .flat_map(|o| match (&o.input, &o.ret) {
                    (Input::Foreign { changes }, Some((_, Output::Foreign { revision }))) => {
                        (revision - changes + 1..=*revision).collect()
                    }
                    _ => Vec::new(),
                })
                .chain(ops.iter().filter_map(|o| match &o.ret {
                    Some((_, Output::Put { revision }))
                    | Some((
                        _,
                        Output::PutIfModRev {
                            succeeded: true,
                            revision,
                        },
                    ))
                    | Some((
                        _,
                        Output::Delete {
                            deleted: 1..,
                            revision,
                        },
                    )) => Some(*revision),
                    _ => None,
                }))
                .collect(),
            max_states,
            deepest: 0,
            stuck: Vec::new(),
        }
    }

    /// Unplaced operations that may go next: called before the earliest
    /// return among unplaced required ones (anything called later must
    /// follow that one). Required ones are tried first, then optional ones
    /// (unknown outcomes), each group in call order: the search is as
    /// exhaustive either way, but trying first what must be placed anyway
    /// finds a witness without wandering through every point where an
    /// unknown write could have taken effect (a history of 1,200 operations
    /// with 15 unknown ones went past 10M states in call order).
    fn candidates(&self) -> Vec<usize> {
        let min_ret = self.by_ret.first().map_or(u64::MAX, |&(r, _)| r);
        let (mut required, optional): (Vec<usize>, Vec<usize>) = self
            .by_call
            .iter()
            .take_while(|(call, _)| *call < min_ret)
            .map(|&(_, i)| i)
            .partition(|&i| self.ops[i].ret.is_some());
        required.extend(optional);
        required
    }

    fn set_placed(&mut self, i: usize, on: bool) {
        self.placed_hash ^= self.zobrist[i];
        let required = self.ops[i].ret.is_some();
        if on {
            self.by_call.remove(&(self.ops[i].call, i));
            if required {
                self.by_ret.remove(&(self.ret[i], i));
            }
        } else {
            self.by_call.insert((self.ops[i].call, i));
            if required {
                self.by_ret.insert((self.ret[i], i));
            }
        }
    }

    /// The state after op `i` at `state`, if its output (when known) is
    /// what the model gives.
    fn step(&self, state: &KvModel, i: usize) -> Option<KvModel> {
        let op = &self.ops[i];
        let (next, got) = state.apply(&op.input);
        match &op.ret {
            Some((_, want)) => (got == *want).then_some(next),
            // An optional op that changes nothing (a failed compare, a
            // delete of a missing key) is the same as one never executed;
            // one that changes the store takes the next revision, which
            // must not be one a known write already took.
            None => (next != *state
                && (next.revision == state.revision || !self.claimed.contains(&next.revision)))
            .then_some(next),
        }
    }

    fn run(mut self, init: KvModel) -> Verdict {
        let mut order: Vec<usize> = Vec::new();
        let mut stack = vec![Frame {
            candidates: self.candidates(),
            state: init,
            next: 0,
            placed: None,
        }];
        while let Some(frame) = stack.last_mut() {
            if let Some(i) = frame.placed.take() {
                // Back from a subtree without success: unplace its op.
                order.pop();
                self.set_placed(i, false);
            }
            if self.by_ret.is_empty() {
                return Verdict::Linearizable(order);
            }
            let Some(&cand) = frame.candidates.get(frame.next) else {
                if order.len() >= self.deepest {
                    self.deepest = order.len();
                    self.stuck = frame.candidates.clone();
                }
                stack.pop();
                continue;
            };
            frame.next += 1;
            let Some(next_state) = self.step(&frame.state, cand) else {
                continue;
            };
            frame.placed = Some(cand);
            self.set_placed(cand, true);
            order.push(cand);
            if !self.seen.insert((self.placed_hash, next_state.clone())) {
                // Explored from here before: undo at once.
                continue;
            }
            if self.seen.len() > self.max_states {
                return Verdict::GaveUp {
                    states: self.seen.len(),
                };
            }
            let candidates = self.candidates();
            stack.push(Frame {
                state: next_state,
                candidates,
                next: 0,
                placed: None,
            });
        }
        Verdict::Violation {
            placed: self.deepest,
            stuck: self.stuck,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn op(
        client: u64,
        call: u64,
        ret: Option<u64>,
        input: Input,
        out: Option<Output>,
    ) -> Operation {
        Operation {
            client,
            call,
            ret: ret.map(|t| (t, out.expect("output of a returned call"))),
            input,
        }
    }

    fn put(k: &str, v: &str) -> Input {
        Input::Put {
            key: k.into(),
            value: v.into(),
        }
    }

    fn get(k: &str) -> Input {
        Input::Get { key: k.into() }
    }

    fn kv(v: &str, create: i64, m: i64, version: i64) -> Option<KeyState> {
        Some(KeyState {
            value: v.into(),
            create_revision: create,
            mod_revision: m,
            version,
        })
    }

    const MAX: usize = 1_000_000;

    #[test]
    fn the_module_example() {
        // B's get overlaps A's put and sees the old state: fine.
        let h = vec![
            op(
                1,
                0,
                Some(3),
                put("x", "1"),
                Some(Output::Put { revision: 2 }),
            ),
            op(
                2,
                1,
                Some(2),
                get("x"),
                Some(Output::Get {
                    kv: None,
                    revision: 1,
                }),
            ),
        ];
        assert!(check(&h, &KvModel::new(), MAX).is_linearizable());
        // B's get starts after A's put returned: a stale read.
        let h = vec![
            op(
                1,
                0,
                Some(1),
                put("x", "1"),
                Some(Output::Put { revision: 2 }),
            ),
            op(
                2,
                2,
                Some(3),
                get("x"),
                Some(Output::Get {
                    kv: None,
                    revision: 1,
                }),
            ),
        ];
        assert_eq!(
            check(&h, &KvModel::new(), MAX),
            Verdict::Violation {
                placed: 1,
                stuck: vec![1]
            }
        );
    }

    #[test]
    fn unknown_outcomes_may_or_may_not_have_happened() {
        // The put timed out; a later read sees it.
        let h = vec![
            op(1, 0, None, put("x", "1"), None),
            op(
                2,
                5,
                Some(6),
                get("x"),
                Some(Output::Get {
                    kv: kv("1", 2, 2, 1),
                    revision: 2,
                }),
            ),
        ];
        assert!(check(&h, &KvModel::new(), MAX).is_linearizable());
        // ... or does not see it.
        let h = vec![
            op(1, 0, None, put("x", "1"), None),
            op(
                2,
                5,
                Some(6),
                get("x"),
                Some(Output::Get {
                    kv: None,
                    revision: 1,
                }),
            ),
        ];
        assert!(check(&h, &KvModel::new(), MAX).is_linearizable());
        // But it cannot be seen and then unseen.
        let h = vec![
            op(1, 0, None, put("x", "1"), None),
            op(
                2,
                5,
                Some(6),
                get("x"),
                Some(Output::Get {
                    kv: kv("1", 2, 2, 1),
                    revision: 2,
                }),
            ),
            op(
                2,
                7,
                Some(8),
                get("x"),
                Some(Output::Get {
                    kv: None,
                    revision: 1,
                }),
            ),
        ];
        assert!(!check(&h, &KvModel::new(), MAX).is_linearizable());
    }

    #[test]
    fn revisions_pin_the_order_of_concurrent_writes() {
        // Two overlapping puts to different keys: revisions decide the order,
        // and a read must agree with it.
        let h = vec![
            op(
                1,
                0,
                Some(4),
                put("a", "1"),
                Some(Output::Put { revision: 3 }),
            ),
            op(
                2,
                1,
                Some(3),
                put("b", "1"),
                Some(Output::Put { revision: 2 }),
            ),
            op(
                3,
                5,
                Some(6),
                get("b"),
                Some(Output::Get {
                    kv: kv("1", 2, 2, 1),
                    revision: 3,
                }),
            ),
        ];
        assert!(check(&h, &KvModel::new(), MAX).is_linearizable());
        let mut bad = h.clone();
        bad[2].ret = Some((
            6,
            Output::Get {
                kv: kv("1", 3, 3, 1),
                revision: 3,
            },
        ));
        assert!(!check(&bad, &KvModel::new(), MAX).is_linearizable());
    }

    #[test]
    fn deletes_of_missing_keys_do_not_bump_the_revision() {
        let h = vec![
            op(
                1,
                0,
                Some(1),
                Input::Delete { key: "x".into() },
                Some(Output::Delete {
                    deleted: 0,
                    revision: 1,
                }),
            ),
            op(
                1,
                2,
                Some(3),
                put("x", "v"),
                Some(Output::Put { revision: 2 }),
            ),
            op(
                1,
                4,
                Some(5),
                Input::Delete { key: "x".into() },
                Some(Output::Delete {
                    deleted: 1,
                    revision: 3,
                }),
            ),
            op(
                1,
                6,
                Some(7),
                Input::PutIfModRev {
                    key: "x".into(),
                    expected_mod: 0,
                    value: "w".into(),
                },
                Some(Output::PutIfModRev {
                    succeeded: true,
                    revision: 4,
                }),
            ),
        ];
        assert!(check(&h, &KvModel::new(), MAX).is_linearizable());
    }

    /// Random sequential executions, stretched into overlapping intervals
    /// that contain their linearization point, are linearizable; changing
    /// one returned revision makes most of them not.
    #[test]
    fn random_histories() {
        let mut rejected = 0;
        for seed in 0..200u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut state = KvModel::new();
            let mut h = Vec::new();
            // Linearization points at even times 2, 4, ...; each op's call
            // and return are chosen around its point.
            for n in 0..40u64 {
                let key = ["a", "b", "c"][rng.gen_range(0..3)];
                let input = match rng.gen_range(0..4) {
                    0 => put(key, &n.to_string()),
                    1 => get(key),
                    2 => Input::Delete { key: key.into() },
                    _ => Input::PutIfModRev {
                        key: key.into(),
                        expected_mod: state.keys.get(key.as_bytes()).map_or(0, |k| k.mod_revision)
                            - rng.gen_range(0..2),
                        value: "c".into(),
                    },
                };
                let (next, out) = state.apply(&input);
                state = next;
                let point = 1000 + 10 * n;
                let call = point - rng.gen_range(1..40);
                let unknown = rng.gen_ratio(1, 15) && !matches!(input, Input::Get { .. });
                let ret = (!unknown).then(|| (point + rng.gen_range(1..40), out));
                h.push(Operation {
                    client: n % 5,
                    call: call * 2 + n % 2,
                    ret: ret.map(|(t, o)| (t * 2 + 1, o)),
                    input,
                });
            }
            let v = check(&h, &KvModel::new(), MAX);
            assert!(v.is_linearizable(), "seed {seed}: {v:?}");
            // Corrupt one returned revision: +1 is sometimes still
            // explainable (a read overlapping a write of another key may
            // move after it); a revision no write reached never is.
            let i = rng.gen_range(0..h.len());
            let mut plus_one = h.clone();
            if let Some((_, out)) = &mut plus_one[i].ret {
                *revision_of(out) += 1;
                if !check(&plus_one, &KvModel::new(), MAX).is_linearizable() {
                    rejected += 1;
                }
            }
            if let Some((_, out)) = &mut h[i].ret {
                *revision_of(out) = 1_000;
                let v = check(&h, &KvModel::new(), MAX);
                assert!(matches!(v, Verdict::Violation { .. }), "seed {seed}: {v:?}");
            }
        }
        assert!(
            rejected > 100,
            "only {rejected} of 200 off-by-one revisions rejected"
        );
    }

    fn revision_of(out: &mut Output) -> &mut i64 {
        match out {
            Output::Put { revision }
            | Output::Get { revision, .. }
            | Output::Delete { revision, .. }
            | Output::PutIfModRev { revision, .. }
            | Output::Foreign { revision } => revision,
        }
    }

    #[test]
    fn foreign_writes_account_for_the_revisions_they_took() {
        // put(x) at 2, a lease key write took 3, get(x) reads revision 3.
        let ops = vec![
            op(
                1,
                0,
                Some(1),
                put("x", "1"),
                Some(Output::Put { revision: 2 }),
            ),
            Operation {
                client: 9,
                call: 2,
                ret: Some((3, Output::Foreign { revision: 3 })),
                input: Input::Foreign { changes: 1 },
            },
            op(
                2,
                4,
                Some(5),
                get("x"),
                Some(Output::Get {
                    kv: kv("1", 2, 2, 1),
                    revision: 3,
                }),
            ),
        ];
        assert!(check(&ops, &KvModel::new(), 1000).is_linearizable());
        // Without the foreign write, revision 3 is unexplained.
        let without: Vec<Operation> = [ops[0].clone(), ops[2].clone()].into();
        assert!(!check(&without, &KvModel::new(), 1000).is_linearizable());
    }
}
