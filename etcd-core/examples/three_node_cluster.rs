//! A 3-member cluster in one process (`etcd_core::integration`): a write,
//! the leader stopped, the key read from the new leader, the old leader
//! back and caught up.
//!
//! ```sh
//! cargo run --release -p etcd-core --example three_node_cluster
//! ```
//!
//! `cargo test` runs it too (the `#[test]` below).

use etcd_core::integration::Cluster;
use etcd_core::pb::etcdserverpb::{PutRequest, RangeRequest};
use etcd_core::RequestContext;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = &RequestContext::LOCAL;
    let started = Instant::now();
    let mut cluster = Cluster::start(3)?;
    let leader = cluster.wait_leader(WAIT).await?;
    println!(
        "3 members up, m{leader} leads after {:?}",
        started.elapsed()
    );

    let put = PutRequest {
        key: "greeting".into(),
        value: "hello".into(),
        ..Default::default()
    };
    let rev = cluster
        .member(leader)
        .put(ctx, put)
        .await?
        .header
        .unwrap_or_default()
        .revision;
    println!("put greeting=hello at revision {rev}");

    cluster.stop(leader);
    let stopped = Instant::now();
    let next = cluster.wait_leader(WAIT).await?;
    println!(
        "m{leader} stopped; m{next} leads after {:?}",
        stopped.elapsed()
    );
    let get = RangeRequest {
        key: "greeting".into(),
        ..Default::default()
    };
    let got = cluster.member(next).range(ctx, get.clone()).await?;
    assert_eq!(&got.kvs[0].value[..], b"hello");
    println!("linearizable get at m{next}: hello");

    cluster.restart(leader)?;
    cluster.wait_leader(WAIT).await?;
    // The restarted member has the key once it has caught up.
    let deadline = Instant::now() + WAIT;
    let serializable = RangeRequest {
        serializable: true,
        ..get
    };
    while cluster
        .member(leader)
        .range(ctx, serializable.clone())
        .await?
        .kvs
        .is_empty()
    {
        assert!(Instant::now() < deadline, "m{leader} did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("m{leader} restarted and caught up");
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run().await
}

#[test]
fn three_node_cluster() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run()).unwrap();
}
