//! Config watcher: a program loads its settings from keys under
//! `config/`, then follows every change live (put, update, delete, a
//! transaction changing several at one revision), without polling and
//! without missing a change between the load and the watch.
//!
//! ```sh
//! cargo run --release -p etcd-core --example config_watcher
//! ```
//!
//! `cargo test` runs it too (the `#[test]` below).

use etcd_core::client::{Client, GetOptions, Txn, TxnOp, WatchOptions};
use etcd_core::pb::mvccpb::event::EventType;
use etcd_core::{Config, Etcd};
use std::collections::BTreeMap;

const PREFIX: &str = "config/";

/// The settings as loaded, and the revision they are current at.
#[derive(Debug, Default, PartialEq)]
struct Settings {
    values: BTreeMap<String, String>,
    revision: i64,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn load(client: &Client) -> etcd_core::Result<Settings> {
    let resp = client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(Settings {
        values: resp
            .kvs
            .iter()
            .map(|kv| (text(&kv.key), text(&kv.value)))
            .collect(),
        revision: resp.header.unwrap_or_default().revision,
    })
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let etcd = Etcd::start(Config::single("config", dir.path()))?;
    etcd.ready().await?;
    let client = Client::new(etcd.clone());
    client.put("config/log_level", "info", None).await?;
    client.put("config/workers", "4", None).await?;

    let mut settings = load(&client).await?;
    println!(
        "loaded at revision {}: {:?}",
        settings.revision, settings.values
    );
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(settings.revision + 1);
    let (_watcher, mut changes) = client.watch(PREFIX, Some(opts)).await?;

    // Someone else changes the configuration meanwhile.
    let admin = client.clone();
    let changer = tokio::spawn(async move {
        // Every write of the changer, or the first error.
        let changes: etcd_core::Result<()> = async {
            admin.put("config/log_level", "debug", None).await?;
            admin.put("config/timeout", "30s", None).await?;
            admin.delete("config/workers", None).await?;
            let both = Txn::new().and_then([
                TxnOp::put("config/log_level", "warn", None),
                TxnOp::put("config/timeout", "10s", None),
            ]);
            admin.txn(both).await?;
            Ok(())
        }
        .await;
        changes
    });

    // Follow until the watcher has seen every change the changer made.
    changer.await??;
    let target = load(&client).await?;
    while settings.revision < target.revision {
        let resp = changes.message().await.expect("watch open");
        for e in &resp.events {
            let kv = e.kv.clone().unwrap_or_default();
            if e.r#type == EventType::Delete as i32 {
                settings.values.remove(&text(&kv.key));
            } else {
                settings.values.insert(text(&kv.key), text(&kv.value));
            }
            settings.revision = kv.mod_revision;
        }
        println!("revision {}: {:?}", settings.revision, settings.values);
    }
    assert_eq!(settings, target);
    println!(
        "watched settings equal a fresh load at revision {}",
        target.revision
    );
    etcd.stop();
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run().await
}

#[test]
fn config_watcher() {
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
