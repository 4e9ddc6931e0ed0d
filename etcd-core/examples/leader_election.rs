//! Leader election with failover: three candidates campaign for
//! "scheduler"; the leader proclaims its progress; an observer follows the
//! leaders. The leader crashes (stops renewing its session): once its
//! lease expires the next candidate leads. Then that one resigns cleanly
//! and the last takes over at once.
//!
//! ```sh
//! cargo run --release -p etcd-core --example leader_election
//! ```
//!
//! `cargo test` runs it too (the `#[test]` below).

use etcd_core::client::Client;
use etcd_core::{Config, Etcd};
use std::time::Instant;
use tokio::sync::mpsc;

const ELECTION: &str = "scheduler";

/// What a candidate reports once it leads: its name and how to make it
/// step down (crash or resign).
struct Leading {
    name: String,
    step_down: tokio::sync::oneshot::Sender<bool>,
}

/// A candidate: campaigns with a session of its own, proclaims once
/// elected, then crashes (`true`: drops its session unrevoked) or resigns
/// (`false`) when told.
async fn candidate(client: Client, name: String, leading: mpsc::Sender<Leading>) {
    let session = client.session(1).await.expect("session");
    let lead = client
        .campaign(ELECTION, format!("{name}: elected"), session.lease_id())
        .await
        .expect("campaign");
    client
        .proclaim(&lead, format!("{name}: scheduling"))
        .await
        .expect("proclaim");
    let (step_down, told) = tokio::sync::oneshot::channel();
    let _ = leading.send(Leading { name, step_down }).await;
    if told.await.unwrap_or(true) {
        drop(session); // a crash: nobody renews or revokes the lease
    } else {
        client.resign(&lead).await.expect("resign");
        session.close().await.expect("close");
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let etcd = Etcd::start(Config::single("election", dir.path()))?;
    etcd.ready().await?;
    let client = Client::new(etcd.clone());

    let mut observe = client.observe(ELECTION);
    let (tx, mut leaders) = mpsc::channel(3);
    let mut tasks = Vec::new();
    for name in ["alpha", "beta", "gamma"] {
        tasks.push(tokio::spawn(candidate(
            client.clone(),
            name.into(),
            tx.clone(),
        )));
    }
    let mut seen = Vec::new();
    let mut stepped_down: Option<Instant> = None;
    for crash in [true, false, false] {
        let leader = leaders.recv().await.expect("a leader");
        if let Some(at) = stepped_down {
            println!(
                "{} leads {:?} after its predecessor stepped down",
                leader.name,
                at.elapsed()
            );
        }
        // The observer sees each leader's proclamation.
        loop {
            let kv = observe.message().await.expect("observing")?;
            let value = String::from_utf8_lossy(&kv.value).into_owned();
            println!("observed {value}");
            if value == format!("{}: scheduling", leader.name) {
                break;
            }
        }
        assert!(!seen.contains(&leader.name), "one term per candidate");
        seen.push(leader.name.clone());
        let _ = leader.step_down.send(crash);
        stepped_down = Some(Instant::now());
        println!(
            "{} {}",
            leader.name,
            if crash { "crashed" } else { "resigned" }
        );
    }
    for t in tasks {
        t.await?;
    }
    assert_eq!(seen.len(), 3);
    assert_eq!(client.leader(ELECTION).await?, None);
    etcd.stop();
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run().await
}

#[test]
fn leader_election() {
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
