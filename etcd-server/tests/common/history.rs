//! Recording clients for linearizability tests: random operations on a few
//! shared keys, sent over gRPC and turned into the checker's inputs and
//! outputs (`etcd_core::linearizability`).

use etcd_core::linearizability::{Input, KeyState, Output};
use etcd_server::rpc::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcd_server::rpc::etcdserverpb::kv_client::KvClient;
use etcd_server::rpc::etcdserverpb::{
    request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use prost::bytes::Bytes;
use rand::Rng;
use std::time::Duration;
use tonic::transport::Channel;

/// The keys the clients share.
pub const KEYS: [&str; 3] = ["k0", "k1", "k2"];

/// A random operation of `client`'s `n`th request; a compare-and-put
/// guesses a mod revision below `max_guess`.
pub fn random_input(rng: &mut impl Rng, client: u64, n: u64, max_guess: i64) -> Input {
    let key = KEYS[rng.gen_range(0..KEYS.len())].as_bytes().to_vec();
    let value = format!("c{client}-{n}").into_bytes();
    match rng.gen_range(0..10) {
        0..=3 => Input::Get { key },
        4..=6 => Input::Put { key, value },
        7 => Input::Delete { key },
        // A guess of the mod revision: right now and then.
        _ => Input::PutIfModRev {
            key,
            expected_mod: rng.gen_range(0..max_guess),
            value,
        },
    }
}

/// Sends `input`; `None` when the outcome is unknown.
pub async fn send(kv: &mut KvClient<Channel>, input: &Input, timeout: Duration) -> Option<Output> {
    let b = |v: &[u8]| Bytes::copy_from_slice(v);
    let fut = async {
        Ok::<_, tonic::Status>(match input {
            Input::Foreign { .. } => unreachable!("clients send no foreign writes"),
            Input::Get { key } => {
                let r = kv
                    .range(RangeRequest {
                        key: b(key),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Output::Get {
                    kv: r.kvs.first().map(|kv| KeyState {
                        value: kv.value.to_vec(),
                        create_revision: kv.create_revision,
                        mod_revision: kv.mod_revision,
                        version: kv.version,
                    }),
                    revision: r.header.expect("header").revision,
                }
            }
            Input::Put { key, value } => {
                let r = kv
                    .put(PutRequest {
                        key: b(key),
                        value: b(value),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Output::Put {
                    revision: r.header.expect("header").revision,
                }
            }
            Input::Delete { key } => {
                let r = kv
                    .delete_range(DeleteRangeRequest {
                        key: b(key),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                Output::Delete {
                    deleted: r.deleted,
                    revision: r.header.expect("header").revision,
                }
            }
            Input::PutIfModRev {
                key,
                expected_mod,
                value,
            } => {
                let r = kv
                    .txn(TxnRequest {
                        compare: vec![Compare {
                            result: CompareResult::Equal as i32,
                            target: CompareTarget::Mod as i32,
                            key: b(key),
                            range_end: Bytes::new(),
                            target_union: Some(TargetUnion::ModRevision(*expected_mod)),
                        }],
                        success: vec![RequestOp {
                            request: Some(request_op::Request::RequestPut(PutRequest {
                                key: b(key),
                                value: b(value),
                                ..Default::default()
                            })),
                        }],
                        failure: vec![],
                    })
                    .await?
                    .into_inner();
                Output::PutIfModRev {
                    succeeded: r.succeeded,
                    revision: r.header.expect("header").revision,
                }
            }
        })
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(out)) => Some(out),
        _ => None,
    }
}
