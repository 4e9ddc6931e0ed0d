//! A 3-member cluster of [`RaftNode`]s talking over [`TcpTransport`] on
//! loopback: a leader is elected, proposals made at any member are applied
//! everywhere in the same order, the cluster survives the loss of its
//! leader, a restarted member catches up from its WAL, and a member of
//! another cluster is refused at the handshake. With log compaction, a
//! follower that was down while the leader compacted past it catches up
//! through a state machine snapshot streamed in 1 MiB chunks, and snapshot
//! outcomes (installed, refused, failed) reach the sender's report hook.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use etcd_raft_node::eraftpb::ConfState;
use etcd_raft_node::{
    NodeConfig, RaftNode, Role, SnapshotIo, SnapshotSink, TcpTransport, TcpTransportConfig,
    ToApply, TransportHooks, WalStorage,
};
use etcd_wal::WalOptions;
use parking_lot::Mutex;

const IDS: [u64; 3] = [1, 2, 3];

struct Member {
    node: Arc<RaftNode>,
    transport: Arc<TcpTransport>,
    /// Payloads applied, in order (leader no-ops left out).
    applied: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Message streams its raft thread took over.
    adopted: Arc<AtomicU64>,
}

fn wal_options() -> WalOptions {
    WalOptions {
        segment_size: 1 << 20,
        fsync: false,
        ..WalOptions::default()
    }
}

/// How the members' peer streams run.
#[derive(Clone, Default)]
struct Net {
    /// The raft thread reads accepted message streams itself
    /// (`TransportHooks::adopt`), as etcd-core's members do; otherwise the
    /// transport's runtime reads them.
    raft_thread_reads: bool,
    tls: Option<etcd_raft_node::PeerTlsHandle>,
}

fn start_member(
    id: u64,
    dir: &Path,
    listener: std::net::TcpListener,
    addrs: &HashMap<u64, String>,
    cluster_id: u64,
    fresh: bool,
    net: &Net,
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
    let adopted = Arc::new(AtomicU64::new(0));
    let adopt: Option<etcd_raft_node::AdoptStream> = net.raft_thread_reads.then(|| {
        let (slot, adopted) = (slot.clone(), adopted.clone());
        Arc::new(move |s| {
            let taken = slot
                .get()
                .is_some_and(|n: &Arc<RaftNode>| n.adopt_stream(s));
            adopted.fetch_add(u64::from(taken), Ordering::Relaxed);
            taken
        }) as etcd_raft_node::AdoptStream
    });
    let transport = TcpTransport::start_with(
        TcpTransportConfig {
            id,
            cluster_id,
            peers: addrs.clone(),
            tls: net.tls.clone(),
            ..TcpTransportConfig::default()
        },
        listener,
        deliver,
        TransportHooks {
            adopt,
            ..TransportHooks::default()
        },
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
        adopted,
    }
}

fn spawn_applier(node: Arc<RaftNode>, rx: Receiver<ToApply>, out: Arc<Mutex<Vec<Vec<u8>>>>) {
    std::thread::spawn(move || {
        while let Ok(ToApply::Entries(es)) = rx.recv() {
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
    three_members(Net::default());
}

#[test]
fn three_members_whose_raft_threads_read_their_peers() {
    three_members(Net {
        raft_thread_reads: true,
        tls: None,
    });
}

#[test]
fn three_members_whose_raft_threads_read_their_peers_over_tls() {
    three_members(Net {
        raft_thread_reads: true,
        tls: Some(test_tls()),
    });
}

fn three_members(net: Net) {
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
            (id, start_member(id, &d, l, &addrs, 0xc1, true, &net))
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
    // An entry of 3 MiB: its frames span many reads (and, with TLS,
    // records) and outgrow the receivers' first buffers.
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    members[&IDS[0]].node.propose(big.clone(), None);
    wait_for("the big entry everywhere", Duration::from_secs(20), || {
        members
            .values()
            .all(|m| m.applied.lock().last().is_some_and(|d| *d == big))
    });
    // The leader heard from both followers, each follower from the leader.
    let l = leader(&members).unwrap();
    for (id, m) in &members {
        let from: Vec<u64> = m.transport.received_bytes().iter().map(|r| r.0).collect();
        let heard = |p: u64| from.contains(&p);
        let ok = if *id == l {
            IDS.iter().all(|&p| p == l || heard(p))
        } else {
            heard(l)
        };
        assert!(ok, "member {id} (leader {l}) counted bytes from {from:?}");
        let adopted = m.adopted.load(Ordering::Relaxed);
        assert_eq!(
            net.raft_thread_reads,
            adopted > 0,
            "{adopted} streams adopted"
        );
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
        &net,
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

/// Two bound listeners on loopback (members 1 and 2) and their addresses.
fn two_listeners() -> (
    std::net::TcpListener,
    std::net::TcpListener,
    HashMap<u64, String>,
) {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addrs = [
        (1, a.local_addr().unwrap().to_string()),
        (2, b.local_addr().unwrap().to_string()),
    ]
    .into();
    (a, b, addrs)
}

/// A transport config of member `id` among `peers`, retrying fast.
fn pair_cfg(id: u64, cluster_id: u64, peers: &HashMap<u64, String>) -> TcpTransportConfig {
    TcpTransportConfig {
        id,
        cluster_id,
        peers: peers.clone(),
        retry_interval: Duration::from_millis(20),
        ..TcpTransportConfig::default()
    }
}

#[test]
fn a_member_of_another_cluster_is_refused() {
    let (a, b, addrs) = two_listeners();
    let got = Arc::new(Mutex::new(0));
    let counter = |got: &Arc<Mutex<i32>>| {
        let got = got.clone();
        Arc::new(move |_| *got.lock() += 1)
    };
    let t1 = TcpTransport::start(pair_cfg(1, 0xaaa, &addrs), a, counter(&got)).unwrap();
    let t2 = TcpTransport::start(pair_cfg(2, 0xbbb, &addrs), b, counter(&got)).unwrap();
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

/// A self-signed certificate for 127.0.0.1, trusted by the dialer.
struct TestTls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl etcd_raft_node::PeerTls for TestTls {
    fn server(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }
    fn client(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }
    fn check_peer(&self, _leaf: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

fn test_tls() -> etcd_raft_node::PeerTlsHandle {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = ck.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.key_pair.serialize_der()).unwrap();
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    etcd_raft_node::PeerTlsHandle(Arc::new(TestTls {
        server: Arc::new(server),
        client: Arc::new(client),
    }))
}

/// The sender writes frames on its own thread once connected
/// (`tcp_outbox`): while the receiver stops reading, what the socket does
/// not take waits in the outbox (not counted as sent), and once the
/// receiver reads again every message arrives, in order, none dropped;
/// plain TCP and TLS.
fn messages_survive_a_full_socket(tls: Option<etcd_raft_node::PeerTlsHandle>) {
    let (a, b, addrs) = two_listeners();
    let cfg = |id| TcpTransportConfig {
        tls: tls.clone(),
        ..pair_cfg(id, 7, &addrs)
    };
    // The receiver records each message's index; while `stalled` is set
    // its (only) runtime thread blocks in the first delivery, so nothing
    // more is read from the socket.
    let got = Arc::new(Mutex::new(Vec::<u64>::new()));
    let stalled = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let deliver = {
        let (got, stalled) = (got.clone(), stalled.clone());
        Arc::new(move |m: etcd_raft_node::eraftpb::Message| {
            let (lock, cv) = &*stalled;
            let mut s = lock.lock().unwrap();
            while *s {
                s = cv.wait(s).unwrap();
            }
            got.lock().push(m.index);
        })
    };
    let t1 = TcpTransport::start(cfg(1), a, Arc::new(|_| {})).unwrap();
    let t2 = TcpTransport::start(cfg(2), b, deliver).unwrap();
    let msg = |index: u64, payload: usize| {
        let mut m = etcd_raft_node::eraftpb::Message::default();
        m.from = 1;
        m.to = 2;
        m.index = index;
        let mut e = etcd_raft_node::eraftpb::Entry::default();
        e.data = vec![index as u8; payload].into();
        m.set_entries(vec![e].into());
        m
    };
    use etcd_raft_node::Transport;
    // Connected: the first message arrives.
    t1.send(vec![msg(0, 1)]);
    wait_for("the first message", Duration::from_secs(10), || {
        got.lock().len() == 1
    });
    *stalled.0.lock().unwrap() = true;
    // 40 MiB in 160 messages of 256 KiB, sent by this thread as the raft
    // thread would: far more than loopback socket buffers hold.
    const N: u64 = 160;
    for i in 1..=N {
        t1.send(vec![msg(i, 256 << 10)]);
    }
    let stats = t1.peer_stats(2).unwrap();
    assert!(
        stats.sent < N + 1,
        "the stalled receiver left frames in the outbox: {stats:?}"
    );
    assert_eq!(stats.dropped, 0);
    {
        let (lock, cv) = &*stalled;
        *lock.lock().unwrap() = false;
        cv.notify_all();
    }
    wait_for("every message", Duration::from_secs(30), || {
        got.lock().len() as u64 == N + 1
    });
    assert_eq!(*got.lock(), (0..=N).collect::<Vec<_>>(), "in order");
    wait_for("the sent count", Duration::from_secs(5), || {
        t1.peer_stats(2).unwrap().sent == N + 1
    });
    assert_eq!(t1.peer_stats(2).unwrap().dropped, 0);
    t1.shutdown();
    t2.shutdown();
}

#[test]
fn messages_survive_a_full_socket_plain() {
    messages_survive_a_full_socket(None);
}

#[test]
fn messages_survive_a_full_socket_tls() {
    messages_survive_a_full_socket(Some(test_tls()));
}

// ---------------------------------------------------------------------------
// Snapshots over TCP.

/// Payload entries of 64 KiB: 100 of them make an image of 6.4 MiB.
const BIG: usize = 64 << 10;

/// A toy state machine: (index, payload) of non-empty entries applied, and
/// the applied index. Survives a member's restart (as if durable). Images
/// received are files under `dir`.
struct Toy {
    dir: std::path::PathBuf,
    state: Mutex<ToyState>,
    /// Chunks written into sinks, and images installed.
    chunks: AtomicU64,
    installs: AtomicU64,
}

#[derive(Default, Clone, PartialEq, Debug)]
struct ToyState {
    applied: u64,
    entries: Vec<(u64, Vec<u8>)>,
}

impl ToyState {
    fn encode(&self) -> Vec<u8> {
        let mut out = self.applied.to_be_bytes().to_vec();
        for (i, d) in &self.entries {
            out.extend_from_slice(&i.to_be_bytes());
            out.extend_from_slice(&(d.len() as u32).to_be_bytes());
            out.extend_from_slice(d);
        }
        out
    }

    fn decode(b: &[u8]) -> ToyState {
        let u64_at = |i: usize| u64::from_be_bytes(b[i..i + 8].try_into().unwrap());
        let mut st = ToyState {
            applied: u64_at(0),
            entries: Vec::new(),
        };
        let mut at = 8;
        while at < b.len() {
            let index = u64_at(at);
            let len = u32::from_be_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
            st.entries.push((index, b[at + 12..at + 12 + len].to_vec()));
            at += 12 + len;
        }
        st
    }
}

struct ToySink {
    tmp: std::path::PathBuf,
    done: std::path::PathBuf,
    file: Option<std::fs::File>,
    toy: Arc<Toy>,
}

/// The toy's [`SnapshotIo`].
struct ToyIo(Arc<Toy>);

impl SnapshotIo for ToyIo {
    fn export(&self, index: u64) -> etcd_raft_node::Result<Box<dyn std::io::Read + Send>> {
        let st = self.0.state.lock();
        if st.applied < index {
            return Err(etcd_raft_node::Error::Snapshot(format!(
                "applied {} is below {index}",
                st.applied
            )));
        }
        Ok(Box::new(std::io::Cursor::new(st.encode())))
    }

    fn import(&self, index: u64, term: u64) -> etcd_raft_node::Result<Box<dyn SnapshotSink>> {
        let tmp = self.0.dir.join(format!("{term:016x}-{index:016x}.tmp"));
        let file = std::fs::File::create(&tmp)?;
        Ok(Box::new(ToySink {
            done: tmp.with_extension("img"),
            tmp,
            file: Some(file),
            toy: self.0.clone(),
        }))
    }
}

impl SnapshotSink for ToySink {
    fn write_chunk(&mut self, chunk: &[u8]) -> etcd_raft_node::Result<()> {
        use std::io::Write;
        self.toy.chunks.fetch_add(1, Ordering::Relaxed);
        self.file.as_mut().unwrap().write_all(chunk)?;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> etcd_raft_node::Result<Vec<u8>> {
        let f = self.file.take().unwrap();
        f.sync_all()?;
        std::fs::rename(&self.tmp, &self.done)?;
        Ok(self.done.to_str().unwrap().as_bytes().to_vec())
    }
}

impl Drop for ToySink {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl Toy {
    fn new(dir: &Path) -> Arc<Toy> {
        std::fs::create_dir_all(dir).unwrap();
        Arc::new(Toy {
            dir: dir.to_path_buf(),
            state: Mutex::new(ToyState::default()),
            chunks: AtomicU64::new(0),
            installs: AtomicU64::new(0),
        })
    }

    fn install(&self, token: &[u8]) {
        let image = std::fs::read(std::str::from_utf8(token).unwrap()).unwrap();
        *self.state.lock() = ToyState::decode(&image);
        self.installs.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the image the WAL recorded must be installed (the restart
    /// protocol), and the applied index to open with.
    fn recover(&self, marker: Option<etcd_wal::SnapshotMarker>) -> u64 {
        if let Some(m) = marker {
            if self.state.lock().applied < m.index {
                let path = self
                    .dir
                    .join(format!("{:016x}-{:016x}.img", m.term, m.index));
                self.install(path.to_str().unwrap().as_bytes());
            }
        }
        self.state.lock().applied
    }
}

struct SnapMember {
    node: Arc<RaftNode>,
    transport: Arc<TcpTransport>,
    toy: Arc<Toy>,
}

fn start_snap_member(
    id: u64,
    dir: &Path,
    listener: std::net::TcpListener,
    addrs: &HashMap<u64, String>,
    toy: Arc<Toy>,
    fresh: bool,
) -> SnapMember {
    let mut cs = ConfState::default();
    cs.voters = IDS.to_vec();
    let wal_dir = dir.join("wal");
    let (storage, applied) = if fresh {
        (
            WalStorage::create(&wal_dir, wal_options(), b"", cs).unwrap(),
            0,
        )
    } else {
        let mut applied = 0;
        let opened = WalStorage::open_with(&wal_dir, wal_options(), |rec| {
            applied = toy.recover(rec.snapshot);
            Ok((applied, cs))
        })
        .unwrap();
        (opened.storage, applied)
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
    let report = {
        let slot = slot.clone();
        Arc::new(move |to, ok| {
            if let Some(n) = slot.get() {
                n.report_snapshot(to, ok);
            }
        })
    };
    let unreachable = {
        let slot = slot.clone();
        Arc::new(move |to| {
            if let Some(n) = slot.get() {
                n.report_unreachable(to);
            }
        })
    };
    let transport = TcpTransport::start_with(
        TcpTransportConfig {
            id,
            cluster_id: 0x5a,
            peers: addrs.clone(),
            retry_interval: Duration::from_millis(50),
            ..TcpTransportConfig::default()
        },
        listener,
        deliver,
        TransportHooks {
            snapshots: Some(Arc::new(ToyIo(toy.clone()))),
            report_snapshot: Some(report),
            report_unreachable: Some(unreachable),
            ..TransportHooks::default()
        },
    )
    .unwrap();
    let (tx, rx) = crossbeam_channel::unbounded();
    let cfg = NodeConfig {
        id,
        voters: IDS.to_vec(),
        applied,
        tick_interval: Duration::from_millis(20),
        ..NodeConfig::default()
    };
    let node = Arc::new(RaftNode::start(cfg, storage, Some(transport.clone()), tx).unwrap());
    slot.set(node.clone()).ok().unwrap();
    spawn_toy_applier(node.clone(), rx, toy.clone());
    SnapMember {
        node,
        transport,
        toy,
    }
}

/// Applies to the toy, and every 10 entries "flushes" and compacts the raft
/// log keeping 2 entries.
fn spawn_toy_applier(node: Arc<RaftNode>, rx: Receiver<ToApply>, toy: Arc<Toy>) {
    std::thread::spawn(move || {
        let mut compacted = 0;
        while let Ok(a) = rx.recv() {
            match a {
                ToApply::Snapshot(info) => {
                    toy.install(&info.data);
                    assert!(toy.state.lock().applied >= info.index);
                }
                ToApply::Entries(es) => {
                    let mut st = toy.state.lock();
                    for e in es {
                        if e.index <= st.applied {
                            continue; // below the installed image
                        }
                        assert_eq!(e.index, st.applied + 1, "applied in order");
                        st.applied = e.index;
                        if !e.data.is_empty() {
                            st.entries.push((e.index, e.data.to_vec()));
                        }
                    }
                }
            }
            let applied = toy.state.lock().applied;
            node.set_applied(applied);
            if applied >= compacted + 10 {
                compacted = applied;
                node.compact_log(applied - 2);
            }
        }
    });
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let listeners: HashMap<u64, std::net::TcpListener> = IDS
        .iter()
        .map(|&id| (id, std::net::TcpListener::bind("127.0.0.1:0").unwrap()))
        .collect();
    let addrs: HashMap<u64, String> = listeners
        .iter()
        .map(|(&id, l)| (id, l.local_addr().unwrap().to_string()))
        .collect();
    let member_dir = |id: u64| dir.path().join(id.to_string());
    let mut members: HashMap<u64, SnapMember> = listeners
        .into_iter()
        .map(|(id, l)| {
            let toy = Toy::new(&member_dir(id).join("snap"));
            (
                id,
                start_snap_member(id, &member_dir(id), l, &addrs, toy, true),
            )
        })
        .collect();
    let leader_of = |members: &HashMap<u64, SnapMember>| {
        members
            .iter()
            .find(|(_, m)| m.node.status().role == Role::Leader)
            .map(|(id, _)| *id)
    };
    wait_for("a leader", Duration::from_secs(10), || {
        leader_of(&members).is_some()
    });
    for i in 0..5 {
        let l = leader_of(&members).unwrap();
        members[&l]
            .node
            .propose(format!("small{i}").into_bytes(), None);
    }
    wait_for("5 entries everywhere", Duration::from_secs(10), || {
        members
            .values()
            .all(|m| m.toy.state.lock().entries.len() >= 5)
    });

    // Stop a follower; its toy state machine stays (it is "durable").
    let l = leader_of(&members).unwrap();
    let f = *IDS.iter().find(|&&id| id != l).unwrap();
    let gone = members.remove(&f).unwrap();
    gone.node.stop();
    gone.transport.shutdown();
    let f_toy = gone.toy.clone();
    drop(gone);
    let f_applied = f_toy.state.lock().applied;

    // 100 entries of 64 KiB: the leader's log is compacted far past the
    // follower, and the image (6.4 MiB) spans several 1 MiB chunks.
    for i in 0..100u32 {
        let mut data = vec![(i % 251) as u8; BIG];
        data[..4].copy_from_slice(&i.to_be_bytes());
        members[&l].node.propose(data, None);
        if i % 10 == 9 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    wait_for(
        "100 big entries on the two left",
        Duration::from_secs(30),
        || {
            members
                .values()
                .all(|m| m.toy.state.lock().entries.len() >= 105)
        },
    );
    assert!(
        members[&l].toy.state.lock().applied >= f_applied + 100,
        "the leader moved on"
    );

    // The follower comes back and catches up by a snapshot.
    let listener = std::net::TcpListener::bind(&addrs[&f]).unwrap();
    let back = start_snap_member(f, &member_dir(f), listener, &addrs, f_toy.clone(), false);
    members.insert(f, back);
    let leader_state = || members[&l].toy.state.lock().clone();
    wait_for(
        "the restarted follower to catch up",
        Duration::from_secs(30),
        || f_toy.state.lock().entries == leader_state().entries,
    );
    assert!(
        f_toy.installs.load(Ordering::Relaxed) >= 1,
        "caught up by a snapshot"
    );
    assert!(
        f_toy.chunks.load(Ordering::Relaxed) >= 7,
        "the 6.4 MiB image came in 1 MiB chunks: {}",
        f_toy.chunks.load(Ordering::Relaxed)
    );
    let stats = members[&l].transport.peer_stats(f).unwrap();
    assert!(stats.snapshots_sent >= 1, "{stats:?}");
    // Writes after the catch-up reach it through the log as usual.
    members[&l].node.propose(b"after".to_vec(), None);
    wait_for(
        "the write after catching up",
        Duration::from_secs(10),
        || {
            members.values().all(|m| {
                m.toy
                    .state
                    .lock()
                    .entries
                    .last()
                    .is_some_and(|e| e.1 == b"after")
            })
        },
    );
    let states: Vec<Vec<(u64, Vec<u8>)>> = members
        .values()
        .map(|m| m.toy.state.lock().entries.clone())
        .collect();
    assert!(states.windows(2).all(|w| w[0] == w[1]), "all equal");
    for m in members.values() {
        m.node.stop();
        m.transport.shutdown();
    }
}

/// An image source that fails on import (or never), to check reports.
struct FailingIo {
    fail_import: bool,
}

impl SnapshotIo for FailingIo {
    fn export(&self, _index: u64) -> etcd_raft_node::Result<Box<dyn std::io::Read + Send>> {
        Ok(Box::new(std::io::Cursor::new(vec![7u8; 3 << 20])))
    }

    fn import(&self, _index: u64, _term: u64) -> etcd_raft_node::Result<Box<dyn SnapshotSink>> {
        if self.fail_import {
            return Err(etcd_raft_node::Error::Snapshot("disk full".into()));
        }
        struct Count(u64);
        impl SnapshotSink for Count {
            fn write_chunk(&mut self, c: &[u8]) -> etcd_raft_node::Result<()> {
                self.0 += c.len() as u64;
                Ok(())
            }
            fn finish(self: Box<Self>) -> etcd_raft_node::Result<Vec<u8>> {
                Ok(self.0.to_string().into_bytes())
            }
        }
        Ok(Box::new(Count(0)))
    }
}

#[test]
fn snapshot_outcomes_reach_the_report_hook() {
    for receiver in ["ok", "import fails", "no snapshots"] {
        let (a, b, addrs) = two_listeners();
        let cfg = |id| pair_cfg(id, 9, &addrs);
        let reports = Arc::new(Mutex::new(Vec::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let hooks1 = TransportHooks {
            snapshots: Some(Arc::new(FailingIo { fail_import: false })),
            report_snapshot: Some({
                let reports = reports.clone();
                Arc::new(move |to, ok| reports.lock().push((to, ok)))
            }),
            report_unreachable: None,
            ..TransportHooks::default()
        };
        let t1 = TcpTransport::start_with(cfg(1), a, Arc::new(|_| {}), hooks1).unwrap();
        let hooks2 = TransportHooks {
            snapshots: match receiver {
                "no snapshots" => None,
                r => Some(Arc::new(FailingIo {
                    fail_import: r == "import fails",
                }) as Arc<dyn SnapshotIo>),
            },
            ..TransportHooks::default()
        };
        let deliver = {
            let got = got.clone();
            Arc::new(move |m: etcd_raft_node::eraftpb::Message| got.lock().push(m))
        };
        let t2 = TcpTransport::start_with(cfg(2), b, deliver, hooks2).unwrap();
        let mut m = etcd_raft_node::eraftpb::Message::default();
        m.set_msg_type(etcd_raft_node::eraftpb::MessageType::MsgSnapshot);
        m.from = 1;
        m.to = 2;
        m.mut_snapshot().mut_metadata().index = 42;
        m.mut_snapshot().mut_metadata().term = 3;
        use etcd_raft_node::Transport;
        t1.send(vec![m]);
        wait_for("the snapshot report", Duration::from_secs(10), || {
            !reports.lock().is_empty()
        });
        let ok = receiver == "ok";
        assert_eq!(*reports.lock(), vec![(2, ok)], "{receiver}");
        if ok {
            let got = got.lock();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].get_snapshot().get_metadata().index, 42);
            assert_eq!(&got[0].get_snapshot().data[..], b"3145728", "the token");
        } else {
            assert!(got.lock().is_empty(), "{receiver}: nothing delivered");
        }
        let st = t1.peer_stats(2).unwrap();
        assert_eq!(
            (st.snapshots_sent, st.snapshots_failed),
            (ok as u64, !ok as u64)
        );
        t1.shutdown();
        t2.shutdown();
    }
}

/// The listener refuses a member it removed and tells it so
/// (`report_removed`); a sender it does not know (added after what it
/// applied) gets in, and the host hears of it (`unknown_sender`).
#[test]
fn a_removed_member_is_refused_and_told_an_unknown_one_heard() {
    use etcd_raft_node::{MemberStatus, Transport};
    for (status, removed_reported) in [
        (MemberStatus::Member, false),
        (MemberStatus::Unknown, false),
        (MemberStatus::Removed, true),
    ] {
        let (a, b, addrs) = two_listeners();
        let cfg = |id| pair_cfg(id, 9, &addrs);
        let told = Arc::new(Mutex::new(0u32));
        let hooks1 = TransportHooks {
            report_removed: Some({
                let told = told.clone();
                Arc::new(move || *told.lock() += 1)
            }),
            ..TransportHooks::default()
        };
        let t1 = TcpTransport::start_with(cfg(1), a, Arc::new(|_| {}), hooks1).unwrap();
        let got = Arc::new(Mutex::new(0u32));
        let unknown = Arc::new(Mutex::new(0u32));
        let hooks2 = TransportHooks {
            member_status: Some(Arc::new(move |id| {
                assert_eq!(id, 1, "the dialer's id");
                status
            })),
            unknown_sender: Some({
                let unknown = unknown.clone();
                Arc::new(move |id| {
                    assert_eq!(id, 1, "the dialer's id");
                    *unknown.lock() += 1;
                })
            }),
            ..TransportHooks::default()
        };
        let deliver = {
            let got = got.clone();
            Arc::new(move |_m: etcd_raft_node::eraftpb::Message| *got.lock() += 1)
        };
        let t2 = TcpTransport::start_with(cfg(2), b, deliver, hooks2).unwrap();
        let mut m = etcd_raft_node::eraftpb::Message::default();
        m.set_msg_type(etcd_raft_node::eraftpb::MessageType::MsgHeartbeat);
        m.from = 1;
        m.to = 2;
        // Until the stream is up (or refused a few times).
        wait_for("a delivery or refusals", Duration::from_secs(10), || {
            t1.send(vec![m.clone()]);
            *got.lock() > 0 || t1.peer_stats(2).unwrap().rejected >= 3
        });
        let delivered = *got.lock() > 0;
        assert_eq!(delivered, status != MemberStatus::Removed, "{status:?}");
        assert_eq!(
            *unknown.lock() > 0,
            status == MemberStatus::Unknown,
            "{status:?}"
        );
        assert_eq!(*told.lock() > 0, removed_reported, "{status:?}");
        t1.shutdown();
        t2.shutdown();
    }
}
