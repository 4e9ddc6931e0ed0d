//! Distributed lock: four workers increment one counter with
//! read-modify-write, each holding the lock "counter" while it does.
//! Without the lock, concurrent increments would overwrite each other;
//! with it none is lost. Each worker holds the lock through a session, so
//! a worker that crashed would release it when its lease expired.
//!
//! ```sh
//! cargo run --release -p etcd-core --example distributed_lock
//! ```
//!
//! `cargo test` runs it too (the `#[test]` below).

use etcd_core::client::Client;
use etcd_core::{Config, Etcd};

const WORKERS: usize = 4;
const INCREMENTS: usize = 10;

async fn worker(client: Client, id: usize) -> etcd_core::Result<()> {
    let session = client.session(5).await?;
    for _ in 0..INCREMENTS {
        let held = client.lock("counter", session.lease_id()).await?;
        let current = client.get("count", None).await?;
        let n: usize = current.kvs.first().map_or(0, |kv| {
            String::from_utf8_lossy(&kv.value).parse().unwrap_or(0)
        });
        // Another task gets to run here; the lock keeps it out.
        tokio::task::yield_now().await;
        client.put("count", (n + 1).to_string(), None).await?;
        client.unlock(&held).await?;
    }
    println!("worker {id} done");
    session.close().await
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let etcd = Etcd::start(Config::single("lock", dir.path()))?;
    etcd.ready().await?;
    let client = Client::new(etcd.clone());
    let workers: Vec<_> = (0..WORKERS)
        .map(|id| tokio::spawn(worker(client.clone(), id)))
        .collect();
    for w in workers {
        w.await??;
    }
    let count = client.get("count", None).await?;
    let value = String::from_utf8_lossy(&count.kvs[0].value).into_owned();
    println!("count = {value} ({WORKERS} workers x {INCREMENTS} increments)");
    assert_eq!(value, (WORKERS * INCREMENTS).to_string());
    etcd.stop();
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run().await
}

#[test]
fn distributed_lock() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(60), run())
            .await
            .expect("done within 60 s")
            .unwrap()
    });
}
