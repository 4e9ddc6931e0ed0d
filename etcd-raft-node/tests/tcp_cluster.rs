//! A 3-member cluster of [`RaftNode`]s talking over [`TcpTransport`] on
//! loopback: a leader is elected, proposals made at any member are applied
//! everywhere in the same order, the cluster survives the loss of its
//! leader, a restarted member catches up from its WAL, and a member of
//! another cluster is refused at the handshake.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use etcd_raft_node::eraftpb::ConfState;
use etcd_raft_node::{
    Applied, NodeConfig, RaftNode, Role, TcpTransport, TcpTransportConfig, WalStorage,
};
use etcd_wal::WalOptions;
use parking_lot::Mutex;

const IDS: [u64; 3] = [1, 2, 3];

struct Member {
    node: Arc<RaftNode>,
    transport: Arc<TcpTransport>,
    /// Payloads applied, in order (leader no-ops left out).
    applied: Arc<Mutex<Vec<Vec<u8>>>>,
}

fn wal_options() -> WalOptions {
    WalOptions {
        segment_size: 1 << 20,
        fsync: false,
        ..WalOptions::default()
    }
}

fn start_member(
    id: u64,
    dir: &Path,
    listener: std::net::TcpListener,
    addrs: &HashMap<u64, String>,
    cluster_id: u64,
    fresh: bool,
) -> Member {
    let mut cs = ConfState::default();
    cs.voters = IDS.to_vec();
    let storage = if fresh {
        WalStorage::create(dir, wal_options(), b"", cs).unwrap()
    } else {
        WalStorage::open(dir, wal_options(), 0, |_| Ok(cs))
            .unwrap()
            .storage
    };
    let slot: Arc<OnceLock<Arc<RaftNode>>> = Arc::new(OnceLock::new());
    let deliver = {
        let slot = slot.clone();
        Arc::new(move |m| {
            if let Some(n) = slot.get() {
                n.step(m);
            }
        })
    };
    let transport = TcpTransport::start(
        TcpTransportConfig {
            id,
            cluster_id,
            peers: addrs.clone(),
            ..TcpTransportConfig::default()
        },
        listener,
        deliver,
    )
    .unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let cfg = NodeConfig {
        id,
        voters: IDS.to_vec(),
        tick_interval: Duration::from_millis(20),
        ..NodeConfig::default()
    };
    let node = Arc::new(RaftNode::start(cfg, storage, Some(transport.clone()), tx).unwrap());
    slot.set(node.clone()).ok().unwrap();
    let applied = Arc::new(Mutex::new(Vec::new()));
    spawn_applier(node.clone(), rx, applied.clone());
    Member {
        node,
        transport,
        applied,
    }
}

fn spawn_applier(node: Arc<RaftNode>, rx: Receiver<Applied>, out: Arc<Mutex<Vec<Vec<u8>>>>) {
    std::thread::spawn(move || {
        while let Ok(Applied::Entries(es)) = rx.recv() {
            for e in &es {
                if !e.data.is_empty() {
                    out.lock().push(e.data.to_vec());
                }
            }
            if let Some(last) = es.last() {
                node.set_applied(last.index);
            }
        }
    });
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn leader(members: &HashMap<u64, Member>) -> Option<u64> {
    members
        .iter()
        .find(|(_, m)| m.node.status().role == Role::Leader)
        .map(|(id, _)| *id)
}

#[test]
fn three_members_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let listeners: HashMap<u64, std::net::TcpListener> = IDS
        .iter()
        .map(|&id| (id, std::net::TcpListener::bind("127.0.0.1:0").unwrap()))
        .collect();
    let addrs: HashMap<u64, String> = listeners
        .iter()
        .map(|(&id, l)| (id, l.local_addr().unwrap().to_string()))
        .collect();
    let mut members: HashMap<u64, Member> = listeners
        .into_iter()
        .map(|(id, l)| {
            let d = dir.path().join(id.to_string());
            (id, start_member(id, &d, l, &addrs, 0xc1, true))
        })
        .collect();

    wait_for("a leader", Duration::from_secs(10), || {
        leader(&members).is_some()
    });
    // Proposals at every member (followers forward to the leader).
    for (i, id) in IDS.iter().enumerate() {
        members[id].node.propose(format!("p{i}").into_bytes(), None);
    }
    let all_three = |m: &Member| m.applied.lock().len() >= 3;
    wait_for("3 entries everywhere", Duration::from_secs(10), || {
        members.values().all(all_three)
    });
    let first = members[&1].applied.lock().clone();
    for m in members.values() {
        assert_eq!(*m.applied.lock(), first, "same order everywhere");
    }

    // Lose the leader: the other two elect a new one and keep committing.
    let old = leader(&members).unwrap();
    let gone = members.remove(&old).unwrap();
    gone.node.stop();
    gone.transport.shutdown();
    drop(gone);
    wait_for("a new leader", Duration::from_secs(10), || {
        leader(&members).is_some_and(|l| l != old)
    });
    let survivor = *members.keys().next().unwrap();
    members[&survivor]
        .node
        .propose(b"after failover".to_vec(), None);
    wait_for("the write after failover", Duration::from_secs(10), || {
        members
            .values()
            .all(|m| m.applied.lock().iter().any(|d| d == b"after failover"))
    });

    // The old leader comes back on its address and catches up from its WAL.
    let l = std::net::TcpListener::bind(&addrs[&old]).unwrap();
    let back = start_member(
        old,
        &dir.path().join(old.to_string()),
        l,
        &addrs,
        0xc1,
        false,
    );
    members.insert(old, back);
    wait_for(
        "the restarted member to catch up",
        Duration::from_secs(10),
        || {
            members[&old]
                .applied
                .lock()
                .iter()
                .any(|d| d == b"after failover")
        },
    );
    let logs: Vec<Vec<Vec<u8>>> = members.values().map(|m| m.applied.lock().clone()).collect();
    assert!(logs.windows(2).all(|w| w[0] == w[1]), "{logs:?}");
    for m in members.values() {
        m.node.stop();
        m.transport.shutdown();
    }
}

#[test]
fn a_member_of_another_cluster_is_refused() {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addrs: HashMap<u64, String> = [
        (1, a.local_addr().unwrap().to_string()),
        (2, b.local_addr().unwrap().to_string()),
    ]
    .into();
    let got = Arc::new(Mutex::new(0));
    let counter = |got: &Arc<Mutex<i32>>| {
        let got = got.clone();
        Arc::new(move |_| *got.lock() += 1)
    };
    let cfg = |id, cluster_id| TcpTransportConfig {
        id,
        cluster_id,
        peers: addrs.clone(),
        retry_interval: Duration::from_millis(20),
        ..TcpTransportConfig::default()
    };
    let t1 = TcpTransport::start(cfg(1, 0xaaa), a, counter(&got)).unwrap();
    let t2 = TcpTransport::start(cfg(2, 0xbbb), b, counter(&got)).unwrap();
    let mut m = etcd_raft_node::eraftpb::Message::default();
    m.from = 1;
    m.to = 2;
    use etcd_raft_node::Transport;
    t1.send(vec![m]);
    wait_for("the handshake refusal", Duration::from_secs(5), || {
        t1.peer_stats(2).unwrap().rejected > 0
    });
    assert_eq!(*got.lock(), 0, "nothing crosses clusters");
    t1.shutdown();
    t2.shutdown();
}
