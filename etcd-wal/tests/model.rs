//! Property test: random batch sequences (appends, overwrites, snapshot
//! markers, hard states), reopens and purges, compared with a simple model.

use bytes::Bytes;
use etcd_wal::testing::MemFs;
use etcd_wal::{Entry, HardState, Recovered, SnapshotMarker, Wal, WalOptions, WriteBatch};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

#[derive(Clone, Debug)]
enum Op {
    /// Entries starting `back` below the next index (clamped), `n` of them.
    Append {
        back: u8,
        n: u8,
        hs: bool,
        marker: Option<u8>,
        len: u8,
        /// Through `append_sync_now` instead of `append_sync`.
        now: bool,
    },
    Reopen,
    Purge(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..6, 0u8..5, any::<bool>(), proptest::option::weighted(0.15, 0u8..8), 0u8..60, any::<bool>())
            .prop_map(|(back, n, hs, marker, len, now)| Op::Append { back, n, hs, marker, len, now }),
        1 => Just(Op::Reopen),
        1 => (0u8..40).prop_map(Op::Purge),
    ]
}

#[derive(Default)]
struct Model {
    log: BTreeMap<u64, Entry>,
    snapshot: Option<SnapshotMarker>,
    hs: HardState,
}

impl Model {
    fn floor(&self) -> u64 {
        self.snapshot.map_or(0, |s| s.index)
    }

    fn last_index(&self) -> u64 {
        self.log
            .range(self.floor() + 1..)
            .next_back()
            .map_or(self.floor(), |(i, _)| *i)
    }

    fn recovered(&self) -> Recovered {
        Recovered {
            metadata: Bytes::from_static(b"model"),
            hard_state: self.hs,
            snapshot: self.snapshot,
            entries: self
                .log
                .range(self.floor() + 1..)
                .map(|(_, e)| e.clone())
                .collect(),
        }
    }
}

fn opts() -> WalOptions {
    WalOptions {
        segment_size: 600,
        max_wals: 1,
        ..WalOptions::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn replay_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = Path::new("/m/wal");
        let fs = Arc::new(MemFs::new());
        let mut wal = Some(Wal::create_with_fs(fs.clone(), dir, opts(), b"model").unwrap());
        let mut m = Model::default();
        let mut term = 1;
        for op in ops {
            match op {
                Op::Append { back, n, hs, marker, len, now } => {
                    let mut b = WriteBatch::default();
                    if let Some(ahead) = marker {
                        let idx = (m.last_index() + u64::from(ahead)).saturating_sub(3).max(m.floor());
                        let s = SnapshotMarker { index: idx, term };
                        b.snapshot = Some(s);
                        m.snapshot = Some(s);
                    }
                    let start = (m.last_index() + 1).saturating_sub(u64::from(back)).max(1);
                    if back > 0 { term += 1; }
                    for i in start..start + u64::from(n) {
                        let e = Entry { index: i, term, data: Bytes::from(vec![i as u8; usize::from(len)]) };
                        m.log.split_off(&i);
                        m.log.insert(i, e.clone());
                        b.entries.push(e);
                    }
                    if hs {
                        m.hs = HardState { term, vote: 1, commit: m.last_index() / 2 };
                        b.hard_state = Some(m.hs);
                    }
                    let w = wal.as_ref().unwrap();
                    if now { w.append_sync_now(b).unwrap() } else { w.append_sync(b).unwrap() }
                }
                Op::Reopen => {
                    wal.take().unwrap().close().unwrap();
                    let (w, rec) = Wal::open_with_fs(fs.clone(), dir, opts()).unwrap();
                    prop_assert_eq!(rec, m.recovered());
                    wal = Some(w);
                }
                Op::Purge(i) => {
                    wal.as_ref().unwrap().purge(u64::from(i)).unwrap();
                }
            }
        }
        wal.take().unwrap().close().unwrap();
        let (_w, rec) = Wal::open_with_fs(fs, dir, opts()).unwrap();
        prop_assert_eq!(rec, m.recovered());
    }
}
