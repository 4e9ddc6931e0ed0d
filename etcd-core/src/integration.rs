//! In-process clusters for tests (feature `integration`): 1, 3 or 5
//! members of this engine in the calling process, with real raft over the
//! TCP peer transport on loopback and real storage in a temporary
//! directory, which is what etcd's Go `integration` package gives Go
//! users. A test starts a cluster, waits for a leader, calls any member
//! directly (no gRPC hop), stops and restarts members to see failover and
//! catch-up, and drops the cluster to remove everything.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use etcd_core::integration::Cluster;
//! use etcd_core::pb::etcdserverpb::{PutRequest, RangeRequest};
//! use etcd_core::RequestContext;
//! use std::time::Duration;
//!
//! let ctx = &RequestContext::LOCAL;
//! let mut cluster = Cluster::start(3)?;
//! let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
//! cluster.member(leader).put(ctx, PutRequest {
//!     key: "k".into(), value: "v".into(), ..Default::default()
//! }).await?;
//!
//! // The leader goes away: the other two elect a new one and keep the key.
//! cluster.stop(leader);
//! let next = cluster.wait_leader(Duration::from_secs(10)).await?;
//! let got = cluster.member(next).range(ctx, RangeRequest {
//!     key: "k".into(), ..Default::default()
//! }).await?;
//! assert_eq!(&got.kvs[0].value[..], b"v");
//!
//! // Back on its data dir, it catches up.
//! cluster.restart(leader)?;
//! cluster.wait_leader(Duration::from_secs(10)).await?;
//! # Ok(()) }
//! ```
//!
//! Members are named `m0`, `m1`, ... and use short timings (heartbeat
//! 25 ms, election timeout 250 ms) so elections take a fraction of a
//! second; [`Cluster::start_with`] changes any [`Config`] field. A stopped
//! member keeps its data dir and peer port; [`Cluster::restart`] starts it
//! again on both. [`Cluster::add_member`] grows the cluster (a voter or a
//! learner joining with an empty data dir), [`Cluster::remove_member`]
//! shrinks it. [`Cluster::cut`], [`Cluster::isolate`] and
//! [`Cluster::heal`] partition members as etcd's `InjectPartition` /
//! `RecoverPartition` do: raft messages between them are dropped, both
//! ways; other peer traffic (membership queries, forwarded lease
//! renewals) passes, as etcd's `CutPeer` lets it. Cuts survive restarts
//! and apply to members added later.

use crate::{Config, Error, Etcd, RequestContext, StartError, StartOptions};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// One member of a [`Cluster`]: its settings and, while it runs, the
/// engine.
struct Slot {
    /// The member's config (the same on every start).
    config: Config,
    /// Where its peer listener is bound (`127.0.0.1:port`), kept across
    /// restarts: the other members know the member by this URL.
    peer_addr: String,
    /// None while stopped.
    etcd: Option<Etcd>,
    /// Its member id (known once it started).
    id: u64,
    /// Removed from the cluster ([`Cluster::remove_member`]): stopped for
    /// good, left out of a joining member's `initial_cluster`.
    removed: bool,
}

/// Why [`Cluster::add_member`] failed.
#[derive(Debug, thiserror::Error)]
pub enum AddMemberError {
    /// The leader refused the member (etcd's MemberAdd errors).
    #[error("member add: {0}")]
    Add(#[from] Error),
    /// The new member did not start.
    #[error("starting the new member: {0}")]
    Start(#[from] StartError),
}

/// An in-process cluster of members on loopback (see the module docs).
/// Dropping it stops every member and removes the data.
pub struct Cluster {
    /// Holds every member's data dir; removed on drop.
    dir: tempfile::TempDir,
    slots: Vec<Slot>,
    /// Pairs of member indexes (smaller first) whose raft traffic is cut.
    cuts: std::collections::BTreeSet<(usize, usize)>,
}

impl Cluster {
    /// Starts `n` members (static bootstrap, one cluster token) and
    /// returns once each has started; see [`Cluster::wait_leader`].
    pub fn start(n: usize) -> Result<Cluster, StartError> {
        Self::start_with(n, |_| {})
    }

    /// Like [`Cluster::start`], with every member's config changed by
    /// `tweak` (after the names, URLs and data dirs are set).
    pub fn start_with(n: usize, tweak: impl Fn(&mut Config)) -> Result<Cluster, StartError> {
        assert!(n > 0, "a cluster has at least one member");
        let dir = tempfile::tempdir().map_err(|e| StartError::Config(format!("temp dir: {e}")))?;
        let listeners: Vec<TcpListener> = (0..n)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<_>>()
            .map_err(|e| StartError::Config(format!("binding a peer port: {e}")))?;
        let addrs: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.to_string()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| StartError::Config(format!("peer port: {e}")))?;
        let initial = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("m{i}=http://{a}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            slots: Vec::with_capacity(n),
            dir,
            cuts: Default::default(),
        };
        let base = Config {
            initial_cluster_token: "integration".into(),
            heartbeat_interval: Duration::from_millis(25),
            election_timeout: Duration::from_millis(250),
            ..Config::default()
        };
        for (i, (listener, addr)) in listeners.into_iter().zip(addrs).enumerate() {
            let mut config = member_config(
                cluster.dir.path(),
                format!("m{i}"),
                &addr,
                initial.clone(),
                base.clone(),
            );
            tweak(&mut config);
            let etcd = start_member(config.clone(), listener)?;
            cluster.slots.push(Slot {
                config,
                peer_addr: addr,
                id: etcd.member_id(),
                etcd: Some(etcd),
                removed: false,
            });
        }
        Ok(cluster)
    }

    /// How many members the cluster has (running or stopped).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Member `i`. Panics if it is stopped (see [`Cluster::try_member`]).
    pub fn member(&self, i: usize) -> &Etcd {
        self.try_member(i)
            .unwrap_or_else(|| panic!("member {i} is stopped"))
    }

    /// Member `i`, or None while it is stopped.
    pub fn try_member(&self, i: usize) -> Option<&Etcd> {
        self.slots[i].etcd.as_ref()
    }

    /// Member `i`'s config.
    pub fn config(&self, i: usize) -> &Config {
        &self.slots[i].config
    }

    /// Member `i`'s data dir.
    pub fn data_dir(&self, i: usize) -> &Path {
        &self.slots[i].config.data_dir
    }

    /// The root of every member's data dir (removed on drop).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Waits until every running member names the same leader, and that
    /// leader runs; returns its index. `Error::Timeout` after `timeout`.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<usize, Error> {
        let all: Vec<usize> = (0..self.slots.len()).collect();
        self.wait_leader_of(&all, timeout).await
    }

    /// Like [`Cluster::wait_leader`], among `members` only (those running):
    /// the majority side of a partition, say.
    pub async fn wait_leader_of(
        &self,
        members: &[usize],
        timeout: Duration,
    ) -> Result<usize, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.agreed_leader(members) {
                return Ok(i);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The member every running one of `members` names as leader, if they
    /// agree and it is one of them.
    fn agreed_leader(&self, members: &[usize]) -> Option<usize> {
        let running = || {
            members
                .iter()
                .filter_map(|&i| Some((i, self.slots[i].etcd.as_ref()?)))
        };
        let mut leaders = running().map(|(_, e)| e.status(&RequestContext::LOCAL).leader);
        let first = leaders.next()?;
        if first == 0 || leaders.any(|l| l != first) {
            return None;
        }
        running()
            .find(|(_, e)| e.member_id() == first)
            .map(|(i, _)| i)
    }

    /// Stops member `i` (as [`Etcd::stop`]: raft, then the apply loop;
    /// its data dir stays). Blocks until it has stopped; no-op if it is
    /// stopped already.
    pub fn stop(&mut self, i: usize) {
        if let Some(etcd) = self.slots[i].etcd.take() {
            // Stopping joins threads; keep it off any async runtime's
            // worker.
            std::thread::spawn(move || etcd.stop())
                .join()
                .expect("stopping a member");
        }
    }

    /// Cuts raft traffic between members `i` and `j`, both ways.
    pub fn cut(&mut self, i: usize, j: usize) {
        assert_ne!(i, j, "a member is not cut from itself");
        self.cuts.insert((i.min(j), i.max(j)));
        self.apply_cuts();
    }

    /// Cuts member `i` from every other member: the others keep (or elect)
    /// a leader if they are a quorum; `i` campaigns alone.
    pub fn isolate(&mut self, i: usize) {
        for j in (0..self.slots.len()).filter(|&j| j != i) {
            self.cuts.insert((i.min(j), i.max(j)));
        }
        self.apply_cuts();
    }

    /// Lets raft traffic between `i` and `j` through again.
    pub fn mend(&mut self, i: usize, j: usize) {
        self.cuts.remove(&(i.min(j), i.max(j)));
        self.apply_cuts();
    }

    /// Ends every cut.
    pub fn heal(&mut self) {
        self.cuts.clear();
        self.apply_cuts();
    }

    /// Gives every running member the set of peers it is cut from.
    fn apply_cuts(&self) {
        for (i, slot) in self.slots.iter().enumerate() {
            let Some(etcd) = &slot.etcd else { continue };
            let peers = self
                .cuts
                .iter()
                .filter_map(|&(a, b)| match (a == i, b == i) {
                    (true, _) => Some(self.slots[b].id),
                    (_, true) => Some(self.slots[a].id),
                    _ => None,
                })
                .collect();
            etcd.inner.cuts.set(peers);
        }
    }

    /// Adds a member (a learner if `learner`) through the leader and starts
    /// it on an empty data dir, joining the existing cluster (etcd's
    /// `--initial-cluster-state existing`); returns its index once it
    /// serves ([`Etcd::ready`]). It has the
    /// timings of member 0's config. A learner is promoted with
    /// [`Etcd::member_promote`] once in sync.
    pub async fn add_member(&mut self, learner: bool) -> Result<usize, AddMemberError> {
        let leader = self.wait_leader(Duration::from_secs(10)).await?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(|e| StartError::Config(format!("binding a peer port: {e}")))?;
        let addr = listener.local_addr().map_err(StartError::Io)?.to_string();
        let url = format!("http://{addr}");
        let req = crate::pb::etcdserverpb::MemberAddRequest {
            peer_ur_ls: vec![url.clone()],
            is_learner: learner,
        };
        self.member(leader)
            .member_add(&RequestContext::LOCAL, req)
            .await?;
        let i = self.slots.len();
        let name = format!("m{i}");
        let mut initial: Vec<String> = self
            .slots
            .iter()
            .filter(|s| !s.removed)
            .map(|s| format!("{}=http://{}", s.config.name, s.peer_addr))
            .collect();
        initial.push(format!("{name}={url}"));
        let base = Config {
            initial_cluster_state: crate::ClusterState::Existing,
            ..self.slots[0].config.clone()
        };
        let config = member_config(self.dir.path(), name, &addr, initial.join(","), base);
        let start = config.clone();
        let etcd = tokio::task::spawn_blocking(move || start_member(start, listener))
            .await
            .map_err(|e| StartError::Config(format!("start task: {e}")))??;
        // Serving (published, so counted as started by the reconfiguration
        // checks), or the reason it is not.
        let ready = tokio::time::timeout(Duration::from_secs(20), etcd.ready()).await;
        if let Err(e) = ready.unwrap_or(Err(Error::Timeout)) {
            let _ = tokio::task::spawn_blocking(move || etcd.stop()).await;
            return Err(e.into());
        }
        self.slots.push(Slot {
            config,
            peer_addr: addr,
            id: etcd.member_id(),
            etcd: Some(etcd),
            removed: false,
        });
        self.apply_cuts();
        Ok(i)
    }

    /// Removes member `i` from the cluster (through a running member other
    /// than `i`, retried while leadership moves) and stops it for good.
    pub async fn remove_member(&mut self, i: usize) -> Result<(), Error> {
        let id = self.slots[i].id;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let asked = self
                .slots
                .iter()
                .enumerate()
                .find(|(j, s)| *j != i && !s.removed && s.etcd.is_some())
                .and_then(|(_, s)| s.etcd.clone())
                .ok_or(Error::NoLeader)?;
            match asked.member_remove(&RequestContext::LOCAL, id).await {
                Ok(_) | Err(Error::MemberNotFound) => break,
                Err(e) if e.code() == crate::Code::Unavailable && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            }
        }
        self.slots[i].removed = true;
        if let Some(etcd) = self.slots[i].etcd.take() {
            tokio::task::spawn_blocking(move || etcd.stop())
                .await
                .map_err(|e| Error::Internal(format!("stopping m{i}: {e}")))?;
        }
        Ok(())
    }

    /// Starts stopped member `i` again on its data dir and peer port.
    pub fn restart(&mut self, i: usize) -> Result<(), StartError> {
        self.restart_with(i, |_| {})
    }

    /// Like [`Cluster::restart`], with the member's config changed by
    /// `tweak` for this start only (a flag such as
    /// `initial_corrupt_check`).
    pub fn restart_with(
        &mut self,
        i: usize,
        tweak: impl FnOnce(&mut Config),
    ) -> Result<(), StartError> {
        assert!(self.slots[i].etcd.is_none(), "member {i} is running");
        assert!(!self.slots[i].removed, "member {i} was removed");
        // The port was this member's a moment ago: retry while the old
        // socket closes.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(&self.slots[i].peer_addr) {
                Ok(l) => break l,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => {
                    return Err(StartError::Config(format!(
                        "binding {}: {e}",
                        self.slots[i].peer_addr
                    )))
                }
            }
        };
        let mut config = self.slots[i].config.clone();
        tweak(&mut config);
        self.slots[i].etcd = Some(start_member(config, listener)?);
        self.apply_cuts();
        Ok(())
    }
}

/// Member `name`'s config: peer address `addr` (`127.0.0.1:port`), data
/// dir `dir/name`, bootstrapping from `initial_cluster`; the rest from
/// `base`.
fn member_config(
    dir: &Path,
    name: String,
    addr: &str,
    initial_cluster: String,
    base: Config,
) -> Config {
    let url = format!("http://{addr}");
    Config {
        data_dir: dir.join(&name),
        initial_cluster,
        initial_advertise_peer_urls: vec![url.clone()],
        listen_peer_urls: vec![url],
        advertise_client_urls: vec![format!("http://{name}.invalid:2379")],
        name,
        ..base
    }
}

fn start_member(config: Config, listener: TcpListener) -> Result<Etcd, StartError> {
    let opts = StartOptions {
        peer_listener: Some(listener),
        ..StartOptions::default()
    };
    Etcd::start_with(config, opts)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.slots.len() {
            self.stop(i);
        }
    }
}
