//! kill -9 while the background compaction is deleting old revisions: after
//! the restart the compaction revision holds, a compaction completes again,
//! and every live key keeps its latest value and revisions.

mod common;
use common::{Kind, Server};
use etcd_server::rpc::etcdserverpb::kv_client::KvClient;
use etcd_server::rpc::etcdserverpb::maintenance_client::MaintenanceClient;
use etcd_server::rpc::etcdserverpb::{request_op, RequestOp};
use etcd_server::rpc::etcdserverpb::{
    CompactionRequest, HashKvRequest, PutRequest, RangeRequest, TxnRequest,
};
use prost::bytes::Bytes;

const KEYS: usize = 50;
/// Each txn rewrites every key: KEYS revisions of history per round.
const ROUNDS: usize = 400;

fn key(i: usize) -> Bytes {
    Bytes::from(format!("c/{i:03}"))
}

async fn live(kv: &mut KvClient<tonic::transport::Channel>) -> Vec<(Bytes, Bytes, i64, i64, i64)> {
    let r = kv
        .range(RangeRequest {
            key: "c/".into(),
            range_end: "c0".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.kvs
        .into_iter()
        .map(|kv| {
            (
                kv.key,
                kv.value,
                kv.create_revision,
                kv.mod_revision,
                kv.version,
            )
        })
        .collect()
}

#[test]
fn kill9_during_compaction_resumes_and_keeps_live_data() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut server = Server::start(Kind::Ours);
    let (before, compact_rev) = rt.block_on(async {
        let mut kv = KvClient::new(server.channel().await);
        // 20,000 superseded revisions to delete, in txns of 50 puts.
        for round in 0..ROUNDS {
            let success = (0..KEYS)
                .map(|i| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key(i),
                        value: Bytes::from(format!("round {round}")),
                        ..Default::default()
                    })),
                })
                .collect();
            kv.txn(TxnRequest {
                compare: vec![],
                success,
                failure: vec![],
            })
            .await
            .unwrap();
        }
        let before = live(&mut kv).await;
        let rev = before.iter().map(|k| k.3).max().unwrap();
        // Not physical: returns once the compaction is scheduled (durably).
        kv.compact(CompactionRequest {
            revision: rev - 1,
            physical: false,
        })
        .await
        .unwrap();
        (before, rev - 1)
    });
    // The compaction deletes in batches with pauses; kill it part-way.
    std::thread::sleep(std::time::Duration::from_millis(30));
    server.kill9();
    let killed_log = server.log_text();
    server.restart();
    // Depending on what RocksDB had flushed before the kill, the restart
    // either resumes the compaction from the scheduled revision in `meta`
    // or re-applies the compaction request while replaying the raft log.
    // Either way the interrupted compaction must run to completion.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let log = server.log_text();
        let after_restart = &log[killed_log.len().min(log.len())..];
        if after_restart.contains("mvcc compaction finished") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no compaction finished after restart:\n{after_restart}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    rt.block_on(async {
        let mut kv = KvClient::new(server.channel().await);
        assert_eq!(
            live(&mut kv).await,
            before,
            "live keys after kill -9 during compaction"
        );
        let old = kv
            .range(RangeRequest {
                key: key(0),
                revision: compact_rev - 1,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(
            old.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let again = kv
            .compact(CompactionRequest {
                revision: compact_rev,
                physical: true,
            })
            .await
            .unwrap_err();
        assert_eq!(
            again.message(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        // The history at the compaction revision (the second-to-last txn)
        // is still readable.
        let at = kv
            .range(RangeRequest {
                key: key(0),
                revision: compact_rev,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            &at.kvs[0].value[..],
            format!("round {}", ROUNDS - 2).as_bytes()
        );
        // Writes continue, and a later physical compaction completes.
        let put = kv
            .put(PutRequest {
                key: key(0),
                value: "after".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let rev = put.into_inner().header.unwrap().revision;
        kv.compact(CompactionRequest {
            revision: rev,
            physical: true,
        })
        .await
        .unwrap();
        let mut m = MaintenanceClient::new(server.channel().await);
        let h = m
            .hash_kv(HashKvRequest { revision: 0 })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(h.compact_revision, rev);
    });
}
