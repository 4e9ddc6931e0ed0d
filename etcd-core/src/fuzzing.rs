//! Entry points for fuzzing the decoders of untrusted request bytes. Each
//! is called by a cargo-fuzz target in `fuzz/` and, over generated and
//! mutated inputs, by the unit tests below, so CI exercises them on stable.

use crate::apply::{self, View};
use crate::lessor::{FakeClock, Lessor};
use crate::pb::etcdserverpb::{DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest};
use crate::raft_request::{Op, RaftRequest};
use crate::request_check;
use etcd_mvcc::{Store, StoreOptions};
use prost::Message as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Decodes `data` as a client request (the first byte picks the message),
/// validates it as the server would, and, when valid, applies it to a real
/// store. Must never panic; a request either fails validation with an
/// error or applies.
pub struct RequestFuzzer {
    store: Store,
    lessor: Lessor,
    index: u64,
}

impl RequestFuzzer {
    /// A fuzzer over a fresh store in `dir`.
    pub fn new(dir: &Path) -> RequestFuzzer {
        RequestFuzzer {
            store: Store::open(dir, StoreOptions::default()).expect("open store"),
            lessor: Lessor::new(Arc::new(FakeClock::new()), 2, Duration::ZERO),
            index: 0,
        }
    }

    /// Runs one input.
    pub fn run(&mut self, data: &[u8]) {
        let Some((&sel, rest)) = data.split_first() else {
            return;
        };
        let op = match sel % 5 {
            0 => {
                let Ok(r) = RangeRequest::decode(rest) else {
                    return;
                };
                if request_check::check_range(&r).is_ok() {
                    let _ = apply::range(&View::read(&self.store), &r);
                }
                return;
            }
            1 => match PutRequest::decode(rest) {
                Ok(r) if request_check::check_put(&r).is_ok() => Op::Put(r),
                _ => return,
            },
            2 => match DeleteRangeRequest::decode(rest) {
                Ok(r) if request_check::check_delete(&r).is_ok() => Op::DeleteRange(r),
                _ => return,
            },
            3 => match TxnRequest::decode(rest) {
                Ok(r) if request_check::check_txn(&r, 128).is_ok() => {
                    if apply::is_read_only(&r) {
                        let _ = apply::txn(&mut View::read(&self.store), &r);
                        return;
                    }
                    Op::Txn(r)
                }
                _ => return,
            },
            _ => match RaftRequest::decode(rest) {
                Ok(RaftRequest { op: Some(op), .. }) => match &op {
                    Op::Put(r) if request_check::check_put(r).is_err() => return,
                    Op::DeleteRange(r) if request_check::check_delete(r).is_err() => return,
                    Op::Txn(r) if request_check::check_txn(r, 128).is_err() => return,
                    _ => op,
                },
                _ => return,
            },
        };
        self.index += 1;
        let before = self.store.current_revision();
        let result = apply::apply(
            &self.store,
            &self.lessor,
            self.index,
            &RaftRequest {
                id: 1,
                op: Some(op),
                header: None,
                origin: 0,
            },
        );
        assert_eq!(
            self.store.consistent_index(),
            self.index,
            "every applied entry is recorded"
        );
        if result.is_err() {
            assert_eq!(
                self.store.current_revision(),
                before,
                "a failed request changes nothing"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{compare, request_op, Compare, RequestOp};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn upto(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }
    }

    fn key(rng: &mut Rng) -> bytes::Bytes {
        format!("k{}", rng.upto(6)).into_bytes().into()
    }

    fn op(rng: &mut Rng, depth: u32) -> RequestOp {
        let request = match rng.upto(if depth > 1 { 3 } else { 4 }) {
            0 => request_op::Request::RequestRange(RangeRequest {
                key: key(rng),
                range_end: if rng.upto(2) == 0 {
                    "k9".into()
                } else {
                    Default::default()
                },
                revision: rng.upto(6) as i64,
                sort_order: rng.upto(3) as i32,
                sort_target: rng.upto(5) as i32,
                limit: rng.upto(3) as i64,
                ..Default::default()
            }),
            1 => request_op::Request::RequestPut(PutRequest {
                key: key(rng),
                value: "v".into(),
                prev_kv: rng.upto(2) == 0,
                ignore_lease: rng.upto(5) == 0,
                ..Default::default()
            }),
            2 => request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: key(rng),
                range_end: if rng.upto(2) == 0 {
                    "k3".into()
                } else {
                    Default::default()
                },
                prev_kv: true,
            }),
            _ => request_op::Request::RequestTxn(txn(rng, depth + 1)),
        };
        RequestOp {
            request: Some(request),
        }
    }

    fn txn(rng: &mut Rng, depth: u32) -> TxnRequest {
        let compare = (0..rng.upto(3))
            .map(|_| Compare {
                key: key(rng),
                result: rng.upto(4) as i32,
                target: rng.upto(5) as i32,
                target_union: Some(compare::TargetUnion::Version(rng.upto(3) as i64)),
                ..Default::default()
            })
            .collect();
        TxnRequest {
            compare,
            success: (0..rng.upto(4)).map(|_| op(rng, depth)).collect(),
            failure: (0..rng.upto(3)).map(|_| op(rng, depth)).collect(),
        }
    }

    #[test]
    fn generated_and_mutated_requests_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = RequestFuzzer::new(dir.path());
        let mut rng = Rng(0x5eed);
        for i in 0..3000u64 {
            let sel = (i % 5) as u8;
            let mut data = vec![sel];
            match sel {
                0..=3 => {
                    let t = txn(&mut rng, 0);
                    match sel {
                        3 => t.encode(&mut data).unwrap(),
                        _ => match op(&mut rng, 2).request.unwrap() {
                            request_op::Request::RequestRange(r) => r.encode(&mut data).unwrap(),
                            request_op::Request::RequestPut(r) => r.encode(&mut data).unwrap(),
                            request_op::Request::RequestDeleteRange(r) => {
                                r.encode(&mut data).unwrap()
                            }
                            request_op::Request::RequestTxn(r) => r.encode(&mut data).unwrap(),
                        },
                    }
                }
                _ => RaftRequest {
                    id: i,
                    op: Some(Op::Txn(txn(&mut rng, 0))),
                    header: None,
                    origin: 0,
                }
                .encode(&mut data)
                .unwrap(),
            }
            if i % 3 == 1 && data.len() > 1 {
                let at = 1 + rng.upto(data.len() as u64 - 1) as usize;
                data[at] ^= 1 << rng.upto(8);
            }
            if i % 7 == 2 {
                data.truncate(1 + rng.upto(data.len() as u64) as usize);
            }
            f.run(&data);
        }
        assert!(f.store.current_revision() > 1, "some writes applied");
    }
}
