//! Model-based checking of the store against a tiny in-memory model of etcd
//! semantics (a vector of full key-value maps, one per revision). Used by the
//! unit tests, the proptest (on both backends) and the cargo-fuzz target
//! `mvcc_model` (`run_ops`, in-memory backend).
//!
//! The model is deliberately naive: every revision keeps a complete copy of
//! the key space, ranges are linear scans, and the key-range conventions are
//! re-implemented independently of the store's helper.
//!
//! Crashes: on the in-memory backend [`Op::Crash`] drops everything not
//! flushed ([`MemDisk::crash`]) and reopens; the model then returns to the
//! state of the last flush (explicit [`Op::Flush`], or the flush at a
//! close), including the compaction revision and the consistent index.

use std::collections::BTreeMap;
#[cfg(feature = "rocksdb")]
use std::path::PathBuf;
#[cfg(feature = "rocksdb")]
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::{
    CompactWait, Error, Event, EventType, HashKv, KeyValue, MemDisk, RangeOptions, RangeResult,
    Result, Store, StoreOptions,
};

/// The keys used by the checker: short, with prefix relations.
pub const KEYS: [&[u8]; 6] = [b"a", b"ab", b"b", b"ba", b"c", b"d"];
/// Range ends: single key, "all keys from", and plain upper bounds.
pub const ENDS: [&[u8]; 6] = [b"", &[0], b"ab", b"b", b"c", b"e"];

/// One operation inside a write transaction.
#[derive(Clone, Debug)]
pub enum TxnOp {
    /// `put(KEYS[key], [value], lease = value % 3)`.
    Put {
        /// Index into [`KEYS`].
        key: u8,
        /// Single-byte value.
        value: u8,
    },
    /// `delete_range(KEYS[key], ENDS[end])`.
    Delete {
        /// Index into [`KEYS`].
        key: u8,
        /// Index into [`ENDS`].
        end: u8,
    },
    /// `range(KEYS[key], ENDS[end], {limit, rev: rev_back ago})` inside the txn.
    Range {
        /// Index into [`KEYS`].
        key: u8,
        /// Index into [`ENDS`].
        end: u8,
        /// Limit (0: none).
        limit: u8,
        /// Read `rev_back` revisions before the txn's revision (0: at it).
        rev_back: u8,
    },
}

/// One step of a checked history.
#[derive(Clone, Debug)]
pub enum Op {
    /// A write transaction with these operations (may be empty).
    Txn(Vec<TxnOp>),
    /// `compact(current - back)`; may be an error case; `wait` for the physical part.
    Compact {
        /// How far below the current revision (can go below the compaction revision).
        back: u8,
        /// Wait for the physical compaction.
        wait: bool,
    },
    /// Close and reopen the store.
    Reopen,
    /// Compare every range at every revision, and the hash stability.
    Check,
    /// Make everything so far durable (`Store::flush`).
    Flush,
    /// In memory: crash (lose everything not flushed) and reopen. On RocksDB:
    /// as [`Op::Reopen`].
    Crash,
}

/// The backend a checked history runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// [`MemDisk`]: fast, and supports [`Op::Crash`].
    Memory,
    /// RocksDB in a temporary directory.
    #[cfg(feature = "rocksdb")]
    RocksDb,
}

impl Kind {
    /// Every backend this build has.
    pub const ALL: &'static [Kind] = &[
        Kind::Memory,
        #[cfg(feature = "rocksdb")]
        Kind::RocksDb,
    ];
}

fn key(i: u8) -> &'static [u8] {
    KEYS[i as usize % KEYS.len()]
}

fn end(i: u8) -> &'static [u8] {
    ENDS[i as usize % ENDS.len()]
}

/// The model: `states[r]` is the key space at revision `r` (`states[0]` and
/// `states[1]` are empty; revision 1 is the empty store).
#[derive(Debug)]
pub struct Model {
    states: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    compact: i64,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            states: vec![BTreeMap::new(), BTreeMap::new()],
            compact: -1,
        }
    }
}

fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == [0] {
        k >= key
    } else {
        k >= key && k < end
    }
}

impl Model {
    /// The current revision.
    pub fn current(&self) -> i64 {
        self.states.len() as i64 - 1
    }

    fn range_in(
        &self,
        pending: Option<&BTreeMap<Vec<u8>, KeyValue>>,
        key: &[u8],
        end: &[u8],
        opts: RangeOptions,
    ) -> Result<RangeResult> {
        let txn_rev = self.current() + i64::from(pending.is_some());
        if opts.rev > txn_rev {
            return Err(Error::FutureRevision);
        }
        let rev = if opts.rev <= 0 { txn_rev } else { opts.rev };
        if rev < self.compact {
            return Err(Error::Compacted);
        }
        let state = match pending {
            Some(p) if rev == txn_rev => p,
            _ => &self.states[rev as usize],
        };
        let all: Vec<&KeyValue> = state
            .iter()
            .filter(|(k, _)| in_range(k, key, end))
            .map(|(_, v)| v)
            .collect();
        let count = all.len() as i64;
        let kvs = if opts.count_only {
            Vec::new()
        } else {
            let n = if opts.limit > 0 {
                opts.limit as usize
            } else {
                usize::MAX
            };
            all.into_iter().take(n).cloned().collect()
        };
        Ok(RangeResult {
            kvs,
            rev: txn_rev,
            count,
        })
    }

    /// Range as the store's `range`.
    pub fn range(&self, key: &[u8], end: &[u8], opts: RangeOptions) -> Result<RangeResult> {
        self.range_in(None, key, end, opts)
    }

    /// Compaction as the store's `compact` (logical part).
    pub fn compact(&mut self, rev: i64) -> Result<()> {
        if rev <= self.compact {
            return Err(Error::Compacted);
        }
        if rev > self.current() {
            return Err(Error::FutureRevision);
        }
        self.compact = rev;
        Ok(())
    }
}

/// Outcome of one txn op, compared between store and model.
#[derive(Debug, PartialEq)]
enum OpOut {
    Put,
    Delete(Vec<KeyValue>),
    Range(Result<RangeResult>),
}

/// Runs a transaction on the model; returns per-op outcomes and events.
fn model_txn(m: &mut Model, ops: &[TxnOp]) -> (Vec<OpOut>, Vec<Event>) {
    let rev = m.current() + 1;
    let mut work = m.states.last().expect("states").clone();
    let mut changed = false;
    let mut outs = Vec::new();
    let mut events = Vec::new();
    for op in ops {
        match *op {
            TxnOp::Put { key: k, value } => {
                let k = key(k);
                let prev = work.get(k).cloned();
                let kv = KeyValue {
                    key: Bytes::copy_from_slice(k),
                    create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                    mod_revision: rev,
                    version: prev.as_ref().map_or(1, |p| p.version + 1),
                    value: Bytes::copy_from_slice(&[value]),
                    lease: i64::from(value % 3),
                };
                work.insert(k.to_vec(), kv.clone());
                changed = true;
                events.push(Event {
                    r#type: EventType::Put as i32,
                    kv: Some(kv),
                    prev_kv: None,
                });
                outs.push(OpOut::Put);
            }
            TxnOp::Delete { key: k, end: e } => {
                let (k, e) = (key(k), end(e));
                let keys: Vec<Vec<u8>> =
                    work.keys().filter(|x| in_range(x, k, e)).cloned().collect();
                let mut deleted = Vec::new();
                for x in keys {
                    let prev = work.remove(&x).expect("present");
                    changed = true;
                    events.push(Event {
                        r#type: EventType::Delete as i32,
                        kv: Some(KeyValue {
                            key: prev.key.clone(),
                            mod_revision: rev,
                            ..Default::default()
                        }),
                        prev_kv: Some(prev.clone()),
                    });
                    deleted.push(prev);
                }
                outs.push(OpOut::Delete(deleted));
            }
            TxnOp::Range {
                key: k,
                end: e,
                limit,
                rev_back,
            } => {
                let txn_rev = if changed { rev } else { rev - 1 };
                let opts = RangeOptions {
                    limit: i64::from(limit),
                    rev: if rev_back == 0 {
                        0
                    } else {
                        txn_rev - i64::from(rev_back)
                    },
                    count_only: false,
                };
                let pending = changed.then_some(&work);
                outs.push(OpOut::Range(m.range_in(pending, key(k), end(e), opts)));
            }
        }
    }
    if changed {
        m.states.push(work);
    }
    (outs, events)
}

fn store_txn(s: &Store, ops: &[TxnOp], ci: u64) -> (Vec<OpOut>, Vec<Event>) {
    let mut txn = s.write();
    let mut outs = Vec::new();
    for op in ops {
        match *op {
            TxnOp::Put { key: k, value } => {
                txn.put(key(k), &[value], i64::from(value % 3)).unwrap();
                outs.push(OpOut::Put);
            }
            TxnOp::Delete { key: k, end: e } => {
                outs.push(OpOut::Delete(txn.delete_range(key(k), end(e)).unwrap()))
            }
            TxnOp::Range {
                key: k,
                end: e,
                limit,
                rev_back,
            } => {
                let opts = RangeOptions {
                    limit: i64::from(limit),
                    rev: if rev_back == 0 {
                        0
                    } else {
                        txn.rev() - i64::from(rev_back)
                    },
                    count_only: false,
                };
                outs.push(OpOut::Range(txn.range(key(k), end(e), opts)));
            }
        }
    }
    let events = txn.end(ci).unwrap();
    (outs, events)
}

/// A directory removed on drop (no tempfile dependency outside tests).
#[cfg(feature = "rocksdb")]
struct TempDir(PathBuf);

#[cfg(feature = "rocksdb")]
impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let p = std::env::temp_dir().join(format!(
            "etcd-mvcc-check-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

#[cfg(feature = "rocksdb")]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn test_opts() -> StoreOptions {
    StoreOptions {
        compaction_batch_limit: 3,
        compaction_sleep_interval: std::time::Duration::ZERO,
        // small chunks: ranges cross chunk boundaries all the time
        range_chunk_size: 2,
    }
}

/// Compares every range of the checker at every revision (and one past).
fn check_all(s: &Store, m: &Model) {
    assert_eq!(s.current_revision(), m.current(), "current revision");
    assert_eq!(s.compact_revision(), m.compact, "compact revision");
    let r = s.read();
    for rev in 0..=m.current() + 1 {
        for k in KEYS.iter().copied().chain([&b""[..], b"aa"]) {
            for e in ENDS {
                for (limit, count_only) in [(0, false), (1, false), (2, false), (0, true)] {
                    let opts = RangeOptions {
                        limit,
                        rev,
                        count_only,
                    };
                    let got = r.range(k, e, opts);
                    let want = m.range(k, e, opts);
                    assert_eq!(got, want, "range({k:?}, {e:?}, {opts:?})");
                }
            }
        }
    }
}

/// Where a checked store lives: reopening it finds its durable state.
enum Place {
    Memory(MemDisk),
    #[cfg(feature = "rocksdb")]
    RocksDb(TempDir),
}

impl Place {
    fn new(kind: Kind) -> Place {
        match kind {
            Kind::Memory => Place::Memory(MemDisk::new()),
            #[cfg(feature = "rocksdb")]
            Kind::RocksDb => Place::RocksDb(TempDir::new()),
        }
    }

    fn open(&self) -> Store {
        match self {
            Place::Memory(disk) => Store::open_with(Box::new(disk.backend()), test_opts()),
            #[cfg(feature = "rocksdb")]
            Place::RocksDb(dir) => Store::open(&dir.0, test_opts()),
        }
        .expect("open store")
    }
}

/// What the last flush made durable: model revisions, compaction revision,
/// consistent index, hash.
struct Durable {
    revisions: usize,
    compact: i64,
    ci: u64,
    hash: HashKv,
}

fn durable_now(s: &Store, m: &Model, ci: u64) -> Durable {
    Durable {
        revisions: m.states.len(),
        compact: m.compact,
        ci,
        hash: s.hash_kv(0).expect("hash"),
    }
}

/// Runs `ops` against a fresh in-memory store and the model, asserting they agree.
pub fn run(ops: &[Op]) {
    run_on(Kind::Memory, ops);
}

/// Runs `ops` against a fresh store on `kind` and the model, asserting they agree.
pub fn run_on(kind: Kind, ops: &[Op]) {
    let place = Place::new(kind);
    let mut store = Some(place.open());
    let mut model = Model::default();
    let mut ci = 0u64;
    let mut waits: Vec<CompactWait> = Vec::new();
    let mut durable = durable_now(store.as_ref().expect("open"), &model, ci);
    for op in ops {
        let s = store.as_ref().expect("open store");
        match op {
            Op::Txn(txn) => {
                ci += 1;
                let want = model_txn(&mut model, txn);
                let got = store_txn(s, txn, ci);
                assert_eq!(got, want, "txn {txn:?}");
                assert_eq!(s.current_revision(), model.current());
                assert_eq!(s.consistent_index(), ci);
            }
            Op::Compact { back, wait } => {
                ci += 1;
                let rev = model.current() - i64::from(*back);
                let want = model.compact(rev);
                match s.compact(rev, ci) {
                    Ok(w) => {
                        assert_eq!(want, Ok(()), "compact({rev})");
                        assert_eq!(s.consistent_index(), ci);
                        if *wait {
                            w.wait();
                            assert!(s.finished_compact_revision() >= rev);
                        } else {
                            waits.push(w);
                        }
                    }
                    Err(e) => {
                        assert_eq!(want, Err(e), "compact({rev})");
                        ci -= 1;
                    }
                }
            }
            Op::Reopen => {
                let (cur, comp) = (s.current_revision(), s.compact_revision());
                let hash = s.hash_kv(0).expect("hash");
                waits.clear();
                drop(store.take());
                let s = place.open();
                assert_eq!(s.current_revision(), cur);
                assert_eq!(s.compact_revision(), comp);
                assert_eq!(s.consistent_index(), ci);
                assert_eq!(s.hash_kv(0).expect("hash"), hash, "hash after reopen");
                durable = durable_now(&s, &model, ci);
                store = Some(s);
            }
            Op::Check => {
                let before = s.hash_kv(0).expect("hash");
                for w in waits.drain(..) {
                    w.wait();
                }
                assert_eq!(
                    s.hash_kv(before.revision).expect("hash"),
                    before,
                    "hash after physical compaction"
                );
                check_all(s, &model);
            }
            Op::Flush => {
                s.flush().expect("flush");
                durable = durable_now(s, &model, ci);
            }
            Op::Crash => {
                waits.clear();
                match &place {
                    Place::Memory(disk) => {
                        disk.crash();
                        drop(store.take());
                        model.states.truncate(durable.revisions);
                        model.compact = durable.compact;
                        ci = durable.ci;
                    }
                    #[cfg(feature = "rocksdb")]
                    Place::RocksDb(_) => drop(store.take()),
                }
                let s = place.open();
                assert_eq!(
                    s.current_revision(),
                    model.current(),
                    "revision after crash"
                );
                assert_eq!(
                    s.compact_revision(),
                    model.compact,
                    "compaction after crash"
                );
                assert_eq!(s.consistent_index(), ci, "consistent index after crash");
                if kind == Kind::Memory {
                    assert_eq!(
                        s.hash_kv(0).expect("hash"),
                        durable.hash,
                        "hash after crash"
                    );
                }
                durable = durable_now(&s, &model, ci);
                store = Some(s);
            }
        }
    }
    let s = store.as_ref().expect("open store");
    check_all(s, &model);
}

/// Interprets `data` as a sequence of operations (see [`Op`]) and checks the
/// store against the model. Any input is valid; panics on a disagreement.
pub fn run_ops(data: &[u8]) {
    run(&decode_ops(data));
}

/// Decodes fuzzer bytes into operations.
pub fn decode_ops(data: &[u8]) -> Vec<Op> {
    let mut it = data.iter().copied();
    let mut ops = Vec::new();
    while let Some(b) = it.next() {
        let mut next = || it.next().unwrap_or(0);
        match b % 16 {
            0..=9 => {
                let n = usize::from(b / 16 % 4) + 1;
                let mut txn = Vec::new();
                for _ in 0..n {
                    let a = next();
                    let (x, y) = (next(), next());
                    txn.push(match a % 8 {
                        0..=3 => TxnOp::Put { key: x, value: y },
                        4 | 5 => TxnOp::Delete { key: x, end: y },
                        _ => TxnOp::Range {
                            key: x,
                            end: y,
                            limit: a / 8 % 3,
                            rev_back: a / 32 % 3,
                        },
                    });
                }
                ops.push(Op::Txn(txn));
            }
            10 => ops.push(Op::Txn(Vec::new())),
            11 | 12 => {
                let a = next();
                ops.push(Op::Compact {
                    back: a % 6,
                    wait: a & 0x80 != 0,
                });
            }
            13 => ops.push(match b / 16 % 4 {
                0 => Op::Reopen,
                1 => Op::Crash,
                _ => Op::Flush,
            }),
            _ => ops.push(Op::Check),
        }
        if ops.len() >= 64 {
            break;
        }
    }
    ops
}
