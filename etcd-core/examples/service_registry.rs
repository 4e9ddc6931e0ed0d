//! Service registry: instances register their address under a lease they
//! keep alive; a client watches the prefix and keeps the live set. An
//! instance that deregisters disappears at once; one that crashes (stops
//! renewing) disappears when its lease expires.
//!
//! ```sh
//! cargo run --release -p etcd-core --example service_registry
//! ```
//!
//! `cargo test` runs it too (the `#[test]` below).

use etcd_core::client::{Client, GetOptions, Session, WatchOptions};
use etcd_core::pb::mvccpb::event::EventType;
use etcd_core::{Config, Etcd};
use std::collections::BTreeMap;
use std::time::Instant;

const PREFIX: &str = "services/api/";

/// Registers `instance` at `addr` for as long as the returned session
/// lives (the key is attached to the session's lease).
async fn register(client: &Client, instance: &str, addr: &str) -> etcd_core::Result<Session> {
    let session = client.session(1).await?;
    let opts = etcd_core::client::PutOptions::new().with_lease(session.lease_id());
    client
        .put(format!("{PREFIX}{instance}"), addr, Some(opts))
        .await?;
    Ok(session)
}

/// The live instances as a watcher sees them: loaded, then kept current.
struct Registry {
    live: BTreeMap<String, String>,
    events: etcd_core::client::WatchEvents,
}

impl Registry {
    async fn open(client: &Client) -> etcd_core::Result<Registry> {
        let snapshot = client
            .get(PREFIX, Some(GetOptions::new().with_prefix()))
            .await?;
        let rev = snapshot.header.unwrap_or_default().revision;
        let live = snapshot
            .kvs
            .iter()
            .map(|kv| (text(&kv.key), text(&kv.value)))
            .collect();
        // From the revision after the snapshot: no change is missed.
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1);
        let (_watcher, events) = client.watch(PREFIX, Some(opts)).await?;
        Ok(Registry { live, events })
    }

    /// Applies the next batch of changes.
    async fn update(&mut self) {
        let resp = self.events.message().await.expect("watch open");
        for e in resp.events {
            let kv = e.kv.unwrap_or_default();
            if e.r#type == EventType::Delete as i32 {
                self.live.remove(&text(&kv.key));
                println!("  - {}", text(&kv.key));
            } else {
                println!("  + {} at {}", text(&kv.key), text(&kv.value));
                self.live.insert(text(&kv.key), text(&kv.value));
            }
        }
    }

    async fn until(&mut self, n: usize) {
        while self.live.len() != n {
            self.update().await;
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let etcd = Etcd::start(Config::single("registry", dir.path()))?;
    etcd.ready().await?;
    let client = Client::new(etcd.clone());

    let a = register(&client, "a", "10.0.0.1:8080").await?;
    let mut registry = Registry::open(&client).await?;
    println!("registry opened with {:?}", registry.live);
    let b = register(&client, "b", "10.0.0.2:8080").await?;
    registry.until(2).await;

    // b crashes: it stops renewing, its lease expires after its TTL.
    let crashed = Instant::now();
    drop(b);
    registry.until(1).await;
    println!("b gone {:?} after it stopped renewing", crashed.elapsed());
    assert!(registry.live.contains_key("services/api/a"));

    // a deregisters: its lease is revoked, its key goes at once.
    a.close().await?;
    registry.until(0).await;
    println!("a deregistered; registry empty");
    etcd.stop();
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run().await
}

#[test]
fn service_registry() {
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
