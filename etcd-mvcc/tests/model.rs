//! Property test: random histories of puts, deletes, multi-op transactions,
//! compactions, reopens, flushes and crashes, checked against the model of
//! etcd semantics in `etcd_mvcc::fuzzing` (every range at every revision,
//! including the `Compacted`/`FutureRevision` errors, events, prev kvs, hash
//! stability, and after a crash of the in-memory backend the state of the
//! last flush), on every backend of the build.

use etcd_mvcc::fuzzing::{run_on, Kind, Op, TxnOp};
use proptest::prelude::*;

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        4 => (any::<u8>(), any::<u8>()).prop_map(|(key, value)| TxnOp::Put { key, value }),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(key, end)| TxnOp::Delete { key, end }),
        1 => (any::<u8>(), any::<u8>(), 0u8..3, 0u8..4)
            .prop_map(|(key, end, limit, rev_back)| TxnOp::Range { key, end, limit, rev_back }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => prop::collection::vec(txn_op(), 0..5).prop_map(Op::Txn),
        2 => (0u8..8, any::<bool>()).prop_map(|(back, wait)| Op::Compact { back, wait }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Check),
        1 => Just(Op::Flush),
        1 => Just(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model_in_memory(ops in prop::collection::vec(op(), 1..60)) {
        run_on(Kind::Memory, &ops);
    }

    #[test]
    fn store_matches_model_on_every_backend(ops in prop::collection::vec(op(), 1..60)) {
        for kind in Kind::ALL {
            run_on(*kind, &ops);
        }
    }
}
