//! Multi-member harness: N processes of our `etcd-server` (or of the real
//! etcd) on loopback, bootstrapped statically, driven with the real
//! `etcdctl`, with every peer link running through an in-test TCP proxy so
//! a test can partition the network.
//!
//! # Topology
//!
//! Member `i` listens for peers on its own port (`peer_listen_url`) but
//! advertises `peer_url`, the address of proxy `i`, which forwards each
//! accepted connection to the member's real listener. Every peer connection
//! *to* member `i` therefore crosses proxy `i`; the proxy learns the sender
//! from the connection's first bytes:
//!
//! - our transport's handshake: `"ETRP"` (raft messages) or `"ETRS"`
//!   (snapshots), version u8, cluster id u64 BE, `from` u64 BE, `to` u64 BE
//!   (`"ETRQ"` queries carry no sender);
//! - etcd's peer HTTP requests: the `X-Server-From: <hex id>` header (the
//!   proxy scans the first 64 KiB sent by the client, so the header of a
//!   later request on a keep-alive connection counts too).
//!
//! [`Cluster::cut`] / [`Cluster::isolate`] close the live connections
//! between the affected pairs and make the proxies close new ones as soon
//! as the sender is known; [`Cluster::heal`] lifts every cut. A cut is
//! symmetric: `cut(i, j)` blocks both i -> j and j -> i (etcd's stream
//! connections carry messages in both directions, ours in one).
//! Connections whose sender is never identified (etcd's `GET /version`,
//! `/members`, `/raft/probing`, lease forwarding to `/leases`; our "ETRQ"
//! queries: membership fetch, MemberPromote and lease forwarding) pass,
//! except to an isolated member: an isolated member accepts nothing at
//! all, but its own unidentified requests still reach the others. Raft
//! traffic (messages, snapshots) is always identified.
//!
//! Member ids are learnt from `member list` once the cluster is up (and
//! from `member add` for added members); until then nothing is cut.
//!
//! When a test panics while a [`Cluster`] is alive, its `Drop` prints the
//! tail of every member's log to stderr (shown with the failure).
#![allow(dead_code)]

use super::{etcdctl_path, free_port, real_etcd_path, Kind};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Heartbeat and election timeout (ms) of test clusters: short, so
/// elections take about a second.
pub const HEARTBEAT_MS: u64 = 50;
pub const ELECTION_MS: u64 = 500;

/// Error texts of etcdctl worth a retry: a leader election is under way or
/// a request timed out (it may still have taken effect).
pub const TRANSIENT: &[&str] = &[
    "timed out",
    "deadline exceeded",
    "leader changed",
    "no leader",
    "Unavailable",
    "unavailable",
    "connection refused",
];

/// How many bytes a proxy inspects to find the sender of a connection.
const SNIFF_LIMIT: usize = 64 * 1024;

/// One member process and its addresses.
pub struct Member {
    pub name: String,
    pub data_dir: PathBuf,
    pub client_url: String,
    /// Where the process listens for peers.
    pub peer_listen_url: String,
    /// What it advertises: the address of its proxy.
    pub peer_url: String,
    /// Member id, once known.
    pub id: Option<u64>,
    /// False once removed with [`Cluster::remove_member`].
    pub in_cluster: bool,
    /// SIGSTOPped ([`Cluster::pause`]): it runs but answers nothing, so
    /// the leader lookups skip it.
    pub paused: bool,
    /// Flags beyond the common ones (name, bootstrap settings).
    args: Vec<String>,
    /// Environment variables: `ETCD_*` (an added member gets those
    /// printed by etcdctl), `FAILPOINTS` (tests/failpoints.rs).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
}

impl Member {
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Running and not paused: it can answer.
    pub fn responsive(&self) -> bool {
        self.running() && !self.paused
    }

    fn log_tail(&self, lines: usize) -> String {
        let bytes = match std::fs::read(&self.log) {
            Ok(b) => b,
            Err(e) => return format!("(cannot read {}: {e})", self.log.display()),
        };
        let text = String::from_utf8_lossy(&bytes);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Why a member did not come up.
struct StartError {
    /// Its log says a port was taken.
    port_in_use: bool,
    message: String,
}

/// A member's `member list` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    /// Empty while the member has not started.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// A member's `endpoint status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub cluster_id: u64,
    pub member_id: u64,
    pub leader: u64,
    pub raft_term: u64,
    pub raft_index: u64,
    pub revision: i64,
    pub is_learner: bool,
}

/// A test cluster; members are indexed in order of creation (an added
/// member gets the next index, a removed one keeps its slot).
pub struct Cluster {
    pub kind: Kind,
    pub members: Vec<Member>,
    pub token: String,
    net: Arc<Net>,
    tmp: tempfile::TempDir,
}

impl Cluster {
    /// Starts an `n`-member cluster (static bootstrap, state `new`) and
    /// waits until every member answers `endpoint health` and one leader
    /// is agreed on.
    pub fn start(kind: Kind, n: usize) -> Cluster {
        Self::start_with(kind, n, &[])
    }

    /// [`Cluster::start`] with `extra` flags for every member.
    pub fn start_with(kind: Kind, n: usize, extra: &[&str]) -> Cluster {
        // Free ports are found by binding and releasing them, so another
        // process can take one in between: start again on fresh ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(kind, n, extra) {
                Ok(c) => return c,
                Err((c, e)) if e.port_in_use && attempt < 3 => {
                    eprintln!("{}: a port was taken, starting again", e.message);
                    drop(c);
                }
                Err((c, e)) => {
                    // `c` is dropped while panicking: its Drop prints the logs.
                    let _keep = c;
                    panic!("{}", e.message);
                }
            }
        }
    }

    fn try_start(kind: Kind, n: usize, extra: &[&str]) -> Result<Cluster, (Cluster, StartError)> {
        let mut c = Self::prepare(kind, n, extra);
        for i in 0..n {
            c.spawn(i);
        }
        match c.finish_start() {
            Ok(()) => Ok(c),
            Err(e) => Err((c, e)),
        }
    }

    /// Launches only the members `running` of a new `n`-member cluster,
    /// without waiting for anything ([`Cluster::launch_rest`] starts the
    /// others).
    pub fn launch_some(kind: Kind, n: usize, running: &[usize]) -> Cluster {
        let mut c = Self::prepare(kind, n, &[]);
        for &i in running {
            c.spawn(i);
        }
        c
    }

    /// Launches the members not running yet and waits as
    /// [`Cluster::start`] does.
    pub fn launch_rest(&mut self) {
        for i in 0..self.members.len() {
            if !self.members[i].running() {
                self.spawn(i);
            }
        }
        if let Err(e) = self.finish_start() {
            panic!("{}", e.message);
        }
    }

    /// Slots, ports and flags of a new `n`-member cluster; nothing runs.
    fn prepare(kind: Kind, n: usize, extra: &[&str]) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let net = Arc::new(Net::default());
        let mut c = Cluster {
            kind,
            members: Vec::new(),
            token: format!("tok-{}", free_port()),
            net,
            tmp,
        };
        for i in 0..n {
            let name = format!("m{i}");
            c.new_member_slot(name);
        }
        let initial_cluster = c
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut c.members {
            m.args = vec![
                "--name".into(),
                m.name.clone(),
                "--initial-advertise-peer-urls".into(),
                m.peer_url.clone(),
                "--initial-cluster".into(),
                initial_cluster.clone(),
                "--initial-cluster-token".into(),
                c.token.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
            ];
            m.args.extend(extra.iter().map(|a| a.to_string()));
        }
        c
    }

    /// Waits until every member is healthy, learns their ids and waits
    /// for a leader.
    fn finish_start(&mut self) -> Result<(), StartError> {
        let n = self.members.len();
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..n {
            self.try_wait_serving(i, deadline, true)?;
        }
        let list = self.member_list();
        for info in &list {
            let i = self
                .members
                .iter()
                .position(|m| info.peer_urls.contains(&m.peer_url))
                .unwrap_or_else(|| panic!("unknown member in member list: {info:?}"));
            self.members[i].id = Some(info.id);
            self.net.set_id(info.id, i);
        }
        assert_eq!(list.len(), n, "member list: {list:?}");
        self.wait_leader(Duration::from_secs(30));
        Ok(())
    }

    /// Allocates ports, a proxy and a data dir for a new member.
    fn new_member_slot(&mut self, name: String) -> usize {
        let i = self.members.len();
        let peer_port = free_port();
        let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy_port = proxy.local_addr().unwrap().port();
        self.net
            .add_proxy(i, proxy, format!("127.0.0.1:{peer_port}"));
        self.members.push(Member {
            data_dir: self.tmp.path().join(format!("{name}.etcd")),
            log: self.tmp.path().join(format!("{name}.log")),
            name,
            client_url: format!("http://127.0.0.1:{}", free_port()),
            peer_listen_url: format!("http://127.0.0.1:{peer_port}"),
            peer_url: format!("http://127.0.0.1:{proxy_port}"),
            id: None,
            in_cluster: true,
            paused: false,
            args: Vec::new(),
            env: Vec::new(),
            child: None,
        });
        i
    }

    fn spawn(&mut self, i: usize) {
        let m = &mut self.members[i];
        let bin = match self.kind {
            Kind::Ours => super::our_binary(),
            Kind::Real => real_etcd_path().to_string(),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .unwrap();
        let child = Command::new(bin)
            .arg("--data-dir")
            .arg(&m.data_dir)
            .arg("--listen-client-urls")
            .arg(&m.client_url)
            .arg("--advertise-client-urls")
            .arg(&m.client_url)
            .arg("--listen-peer-urls")
            .arg(&m.peer_listen_url)
            .arg("--heartbeat-interval")
            .arg(HEARTBEAT_MS.to_string())
            .arg("--election-timeout")
            .arg(ELECTION_MS.to_string())
            .args(&m.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(m.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start the server binary");
        m.child = Some(child);
    }

    /// Waits until member `i` answers `endpoint health` (`healthy`: needs
    /// a quorum) or `endpoint status` (just serving), panicking with the
    /// logs at `deadline` or when the process exits.
    fn wait_serving(&mut self, i: usize, deadline: Instant, healthy: bool) {
        if let Err(e) = self.try_wait_serving(i, deadline, healthy) {
            panic!("{}", e.message);
        }
    }

    fn try_wait_serving(
        &mut self,
        i: usize,
        deadline: Instant,
        healthy: bool,
    ) -> Result<(), StartError> {
        loop {
            let exited = self.members[i]
                .child
                .as_mut()
                .expect("member not running")
                .try_wait()
                .unwrap();
            if let Some(status) = exited {
                self.members[i].child = None;
                let log = self.members[i].log_tail(20).to_lowercase();
                return Err(StartError {
                    port_in_use: log.contains("address already in use"),
                    message: format!("{:?} member {i} exited during start ({status})", self.kind),
                });
            }
            let args: &[&str] = if healthy {
                &["endpoint", "health", "--command-timeout=2s"]
            } else {
                &["endpoint", "status", "--command-timeout=2s"]
            };
            if self.ctl(i, args).status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StartError {
                    port_in_use: false,
                    message: format!(
                        "{:?} member {i} not {} in time",
                        self.kind,
                        if healthy { "healthy" } else { "serving" }
                    ),
                });
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Client URLs of the members that are running, comma-separated.
    pub fn endpoints(&self) -> String {
        self.running()
            .map(|i| self.members[i].client_url.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Indexes of the running members.
    pub fn running(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.members.len()).filter(|&i| self.members[i].running())
    }

    /// Index of the member with id `id`.
    pub fn index_of(&self, id: u64) -> Option<usize> {
        self.members.iter().position(|m| m.id == Some(id))
    }

    /// The id of member `i` (known once the cluster has started).
    pub fn id(&self, i: usize) -> u64 {
        self.members[i].id.expect("member id not known yet")
    }

    /// Runs `etcdctl --endpoints <member i> args...`.
    pub fn ctl(&self, i: usize, args: &[&str]) -> Output {
        ctl_at(&self.members[i].client_url, args)
    }

    /// Runs etcdctl against member `i`; stdout, panicking on failure.
    pub fn ctl_ok(&self, i: usize, args: &[&str]) -> String {
        let out = self.ctl(i, args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} at member {i} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs etcdctl against member `i` expecting failure; the `Error: `
    /// line of stderr (etcdctl also logs retry warnings there).
    pub fn ctl_err(&self, i: usize, args: &[&str]) -> String {
        let out = self.ctl(i, args);
        assert!(
            !out.status.success(),
            "etcdctl {args:?} at member {i} unexpectedly succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        error_line(&out)
    }

    /// Runs etcdctl against member `i` until it succeeds or its error
    /// contains none of `retry_on`; panics after `timeout`.
    pub fn ctl_retry(
        &self,
        i: usize,
        args: &[&str],
        retry_on: &[&str],
        timeout: Duration,
    ) -> Output {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.ctl(i, args);
            if out.status.success() {
                return out;
            }
            let err = error_line(&out);
            if !retry_on.iter().any(|r| err.contains(r)) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "etcdctl {args:?} at member {i} still failing after {timeout:?}: {err}"
            );
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// `put key value` through member `i`.
    pub fn put(&self, i: usize, key: &str, value: &str) {
        self.ctl_ok(i, &["put", key, value]);
    }

    /// The value of `key` read from member `i` (`serializable`: local
    /// read without quorum); None when absent.
    pub fn get(&self, i: usize, key: &str, serializable: bool) -> Option<String> {
        let c = if serializable {
            "--consistency=s"
        } else {
            "--consistency=l"
        };
        let out = self.ctl_ok(i, &["get", key, c, "--print-value-only"]);
        out.lines().next().map(str::to_string)
    }

    /// Waits until member `i`'s serializable read of `key` returns `value`.
    pub fn wait_value(&self, i: usize, key: &str, value: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.ctl(i, &["get", key, "--consistency=s", "--print-value-only"]);
            let got = String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(str::to_string);
            if got.as_deref() == Some(value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "member {i}: {key} is {got:?} after {timeout:?}, want {value:?} ({})",
                error_line(&out)
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `endpoint status` of member `i`.
    pub fn status(&self, i: usize) -> Result<Status, String> {
        let out = self.ctl(
            i,
            &["endpoint", "status", "-w", "json", "--command-timeout=2s"],
        );
        if !out.status.success() {
            return Err(error_line(&out));
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("bad endpoint status json: {e}"))?;
        let s = &v[0]["Status"];
        Ok(Status {
            cluster_id: s["header"]["cluster_id"].as_u64().unwrap_or(0),
            member_id: s["header"]["member_id"].as_u64().unwrap_or(0),
            leader: s["leader"].as_u64().unwrap_or(0),
            raft_term: s["raftTerm"].as_u64().unwrap_or(0),
            raft_index: s["raftIndex"].as_u64().unwrap_or(0),
            revision: s["header"]["revision"].as_i64().unwrap_or(0),
            is_learner: s["isLearner"].as_bool().unwrap_or(false),
        })
    }

    /// The current leader: among the running members' statuses, the member
    /// that says it leads, with the highest term (an isolated old leader
    /// may still say so for a while).
    pub fn leader(&self) -> Option<usize> {
        self.running()
            .filter(|&i| !self.members[i].paused)
            .filter_map(|i| self.status(i).ok().map(|s| (i, s)))
            .filter(|(_, s)| s.leader != 0 && s.leader == s.member_id)
            .max_by_key(|(_, s)| s.raft_term)
            .map(|(i, _)| i)
    }

    /// Waits until a leader exists and every running, non-isolated member
    /// names it; returns its index.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses: Vec<(usize, Result<Status, String>)> = self
                .running()
                .filter(|&i| !self.net.is_isolated(i) && !self.members[i].paused)
                .map(|i| (i, self.status(i)))
                .collect();
            let leaders: HashSet<u64> = statuses
                .iter()
                .map(|(_, s)| s.as_ref().map(|s| s.leader).unwrap_or(0))
                .collect();
            if leaders.len() == 1 {
                let id = *leaders.iter().next().unwrap();
                if id != 0 {
                    if let Some(i) = self.index_of(id) {
                        if !self.net.is_isolated(i) && self.members[i].responsive() {
                            return i;
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{:?}: no agreed leader after {timeout:?}: {statuses:?}",
                self.kind
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// A running member other than `not` (and not isolated or paused).
    pub fn other_than(&self, not: &[usize]) -> usize {
        self.running()
            .find(|&i| !not.contains(&i) && !self.net.is_isolated(i) && !self.members[i].paused)
            .expect("no other running member")
    }

    /// `member list -w json` through any running member.
    pub fn member_list(&self) -> Vec<MemberInfo> {
        let i = self.running().next().expect("no member running");
        self.member_list_at(i)
    }

    /// `member list -w json` through member `i`.
    pub fn member_list_at(&self, i: usize) -> Vec<MemberInfo> {
        let out = self.ctl_ok(i, &["member", "list", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let strings = |x: &serde_json::Value| -> Vec<String> {
            x.as_array()
                .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
                .unwrap_or_default()
        };
        v["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| MemberInfo {
                        id: m["ID"].as_u64().unwrap(),
                        name: m["name"].as_str().unwrap_or("").to_string(),
                        peer_urls: strings(&m["peerURLs"]),
                        client_urls: strings(&m["clientURLs"]),
                        is_learner: m["isLearner"].as_bool().unwrap_or(false),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// SIGSTOPs member `i` (a long pause: GC, a VM stall, a full disk
    /// queue); [`Cluster::resume`] continues it.
    pub fn pause(&mut self, i: usize) {
        self.signal(i, "STOP");
        self.members[i].paused = true;
    }

    /// SIGCONTs member `i` after [`Cluster::pause`].
    pub fn resume(&mut self, i: usize) {
        self.signal(i, "CONT");
        self.members[i].paused = false;
    }

    fn signal(&self, i: usize, signal: &str) {
        super::send_signal(
            self.members[i].child.as_ref().expect("member runs").id(),
            signal,
        );
    }

    /// SIGKILLs member `i`.
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.members[i].paused = false;
    }

    /// SIGTERMs member `i` and waits for it to exit (a graceful stop: a
    /// leader hands leadership over first).
    pub fn terminate(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            super::send_signal(c.id(), "TERM");
            let _ = c.wait();
        }
        self.members[i].paused = false;
    }

    /// Starts member `i` again on its data dir and ports; waits until it
    /// serves `endpoint status` (not health: it may be partitioned).
    pub fn restart(&mut self, i: usize) {
        assert!(!self.members[i].running(), "kill member {i} first");
        self.spawn(i);
        self.wait_serving(i, Instant::now() + Duration::from_secs(30), false);
    }

    /// [`Cluster::restart`] with `extra` flags for this start only.
    pub fn restart_with(&mut self, i: usize, extra: &[&str]) {
        self.spawn_only_with(i, extra);
        self.wait_serving(i, Instant::now() + Duration::from_secs(30), false);
    }

    /// [`Cluster::spawn_only`] with `extra` flags for this start only.
    pub fn spawn_only_with(&mut self, i: usize, extra: &[&str]) {
        let n = self.members[i].args.len();
        self.members[i]
            .args
            .extend(extra.iter().map(|a| a.to_string()));
        self.spawn_only(i);
        self.members[i].args.truncate(n);
    }

    /// Starts member `i`'s process again without waiting for anything.
    pub fn spawn_only(&mut self, i: usize) {
        assert!(!self.members[i].running(), "kill member {i} first");
        self.spawn(i);
    }

    /// Waits (at most `timeout`) for member `i`'s process to exit; its
    /// status, or None if it still runs.
    pub fn wait_exit(&mut self, i: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.members[i].child.as_mut()?;
            if let Some(st) = c.try_wait().unwrap() {
                self.members[i].child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Member `i`'s whole log.
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.members[i].log).unwrap_or_default()
    }

    /// `etcdctl member add <name> --peer-urls <new proxy> [--learner]`
    /// through a running member (retrying while etcd refuses with
    /// "unhealthy cluster", which it does during the first 5 s after a
    /// start), then starts the new process with the `ETCD_*` variables
    /// etcdctl printed (state `existing`) on an empty data dir. Returns
    /// the new member's index.
    pub fn add_member(&mut self, name: &str, learner: bool) -> usize {
        let i = self.new_member_slot(name.to_string());
        let via = self.wait_leader(Duration::from_secs(20));
        let peer_url = self.members[i].peer_url.clone();
        let mut args = vec!["member", "add", name, "--peer-urls", &peer_url];
        if learner {
            args.push("--learner");
        }
        let retry = [&["unhealthy cluster"][..], TRANSIENT].concat();
        let out = self.ctl_retry(via, &args, &retry, Duration::from_secs(20));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "member add failed: {}\n{stdout}",
            error_line(&out)
        );
        let (id, env) = parse_member_add(&stdout);
        assert_eq!(
            env.iter()
                .find(|(k, _)| k == "ETCD_INITIAL_CLUSTER_STATE")
                .map(|(_, v)| v.as_str()),
            Some("existing"),
            "{stdout}"
        );
        let m = &mut self.members[i];
        m.id = Some(id);
        m.env = env;
        self.net.set_id(id, i);
        self.spawn(i);
        self.wait_serving(i, Instant::now() + Duration::from_secs(30), false);
        i
    }

    /// `etcdctl member remove <id>` through a running member other than
    /// the removed one, retried on [`TRANSIENT`] errors (a leader election
    /// under way); panics on any other failure. Returns etcdctl's output,
    /// or "" when a retry found the member gone: the attempt that timed
    /// out had removed it.
    pub fn remove_member(&mut self, id: u64) -> String {
        let me = self.index_of(id);
        let not: Vec<usize> = me.into_iter().collect();
        let out = self.ctl_until_done(
            || self.other_than(&not),
            &["member", "remove", &format!("{id:x}")],
            TRANSIENT,
            |err| err.contains("member not found"),
        );
        let out = out.map_or(String::new(), |o| {
            String::from_utf8_lossy(&o.stdout).into_owned()
        });
        if let Some(i) = me {
            self.members[i].in_cluster = false;
        }
        out
    }

    /// `etcdctl member promote` of learner `i` through the leader, retried
    /// while the learner catches up and on [`TRANSIENT`] errors; panics
    /// on any other failure.
    pub fn promote(&self, i: usize) {
        let id = format!("{:x}", self.id(i));
        let retry = [&["in sync with leader"][..], TRANSIENT].concat();
        self.ctl_until_done(
            || self.wait_leader(Duration::from_secs(20)),
            &["member", "promote", &id],
            &retry,
            // A voter already: the promote that timed out took effect.
            |err| err.contains("can only promote a learner member") && !err.contains("in sync"),
        );
    }

    /// Runs etcdctl `args` at the member `via()` picks for each attempt,
    /// retried for 30 s while it fails with an error containing one of
    /// `retry_on`. Some(output) once it succeeds; None when, after a
    /// retry, the error says an earlier attempt (one that timed out) took
    /// effect (`took_effect`). Panics on any other failure.
    fn ctl_until_done(
        &self,
        via: impl Fn() -> usize,
        args: &[&str],
        retry_on: &[&str],
        took_effect: impl Fn(&str) -> bool,
    ) -> Option<Output> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut retried = false;
        loop {
            let at = via();
            let out = self.ctl(at, args);
            if out.status.success() {
                return Some(out);
            }
            let err = error_line(&out);
            if retried && took_effect(&err) {
                return None;
            }
            assert!(
                retry_on.iter().any(|r| err.contains(r)) && Instant::now() < deadline,
                "etcdctl {args:?} at member {at}: {err}"
            );
            retried = true;
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// `etcdctl move-leader` to member `to` through the current leader
    /// (waiting up to 5 s for one);
    /// etcdctl's error line when it fails (the leader changed meanwhile,
    /// the target is cut off: a transfer may fail under faults).
    pub fn move_leader(&self, to: usize) -> Result<(), String> {
        // Right after a leader was killed or paused, the rest may still be
        // electing one: wait a little for it.
        let deadline = Instant::now() + Duration::from_secs(5);
        let l = loop {
            match self.leader() {
                Some(l) => break l,
                None if Instant::now() < deadline => thread::sleep(Duration::from_millis(100)),
                None => return Err("no leader".to_string()),
            }
        };
        let out = self.ctl(l, &["move-leader", &format!("{:x}", self.id(to))]);
        if out.status.success() {
            Ok(())
        } else {
            Err(error_line(&out))
        }
    }

    /// HashKV of every running member at the leader's current revision,
    /// retried until each member has applied it (or `timeout`).
    pub fn hash_kv_all(&self, timeout: Duration) -> Vec<(usize, u64)> {
        let leader = self.wait_leader(timeout);
        let rev = self.status(leader).expect("leader status").revision;
        let deadline = Instant::now() + timeout;
        self.running()
            .map(|i| loop {
                let out = self.ctl(
                    i,
                    &["endpoint", "hashkv", "-w", "json", &format!("--rev={rev}")],
                );
                if out.status.success() {
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                    break (i, v[0]["HashKV"]["hash"].as_u64().unwrap_or(0));
                }
                assert!(
                    Instant::now() < deadline,
                    "hashkv at rev {rev} on member {i}: {}",
                    error_line(&out)
                );
                thread::sleep(Duration::from_millis(100));
            })
            .collect()
    }

    /// Asserts that every running member has the same HashKV.
    pub fn assert_hash_kv_equal(&self, timeout: Duration) {
        let hashes = self.hash_kv_all(timeout);
        let distinct: HashSet<u64> = hashes.iter().map(|(_, h)| *h).collect();
        assert_eq!(distinct.len(), 1, "HashKV differs: {hashes:?}");
    }

    /// Cuts the links between members `i` and `j` (both directions).
    pub fn cut(&self, i: usize, j: usize) {
        self.net.cut(i, j);
    }

    /// Cuts the link from member `from` to member `to` only: `to` gets
    /// nothing from `from` while `from` still hears `to`. Ours only: our
    /// peer streams are one-way, dialed by the sender, so the proxy of
    /// `to` drops exactly what `from` sends (etcd's stream connections are
    /// dialed by the receiver, and carry the other member's messages).
    pub fn cut_one_way(&self, from: usize, to: usize) {
        assert_eq!(
            self.kind,
            Kind::Ours,
            "one-way cuts work on our transport only"
        );
        self.net.cut_one_way(from, to);
    }

    /// Cuts member `i` off from everyone.
    pub fn isolate(&self, i: usize) {
        self.net.isolate(i);
    }

    /// Lifts every cut.
    pub fn heal(&self) {
        self.net.heal();
    }

    /// The last `lines` lines of every member's log.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut s = String::new();
        for (i, m) in self.members.iter().enumerate() {
            s.push_str(&format!(
                "----- {:?} member {i} ({}, id {:x?}, running {}) log tail -----\n{}\n",
                self.kind,
                m.name,
                m.id,
                m.running(),
                m.log_tail(lines)
            ));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.log_tails(40));
        }
        for i in 0..self.members.len() {
            self.kill9(i);
        }
        self.net.stop();
    }
}

/// Runs `etcdctl --endpoints <endpoints> args...`.
pub fn ctl_at(endpoints: &str, args: &[&str]) -> Output {
    Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoints)
        .args(args)
        .output()
        .expect("cannot run etcdctl")
}

/// The `Error: ...` line etcdctl printed (or all of stderr if none).
pub fn error_line(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("Error: "))
        .map(|l| l.to_string())
        .unwrap_or_else(|| stderr.trim().to_string())
}

/// Parses `member add` output: the new id and the `ETCD_*` assignments.
///
/// ```text
/// Member  6b79fa6548cb09e added to cluster 76a7d1e244d7ba8c
///
/// ETCD_NAME="d"
/// ETCD_INITIAL_CLUSTER="d=http://127.0.0.1:41031,c=http://127.0.0.1:41021"
/// ETCD_INITIAL_ADVERTISE_PEER_URLS="http://127.0.0.1:41031"
/// ETCD_INITIAL_CLUSTER_STATE="existing"
/// ```
pub fn parse_member_add(stdout: &str) -> (u64, Vec<(String, String)>) {
    let first = stdout.lines().next().unwrap_or("");
    let words: Vec<&str> = first.split_whitespace().collect();
    assert!(
        words.len() == 6 && words[0] == "Member" && words[2] == "added",
        "unexpected member add output: {stdout}"
    );
    let id = u64::from_str_radix(words[1], 16).unwrap();
    let env = stdout
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once('=')?;
            k.starts_with("ETCD_")
                .then(|| (k.to_string(), v.trim_matches('"').to_string()))
        })
        .collect();
    (id, env)
}

/// Shared state of the proxies: which member ids map to which index,
/// which links are cut, and the live proxied connections.
#[derive(Default)]
struct Net {
    state: Mutex<NetState>,
    next_conn: AtomicU64,
    stopped: AtomicBool,
}

#[derive(Default)]
struct NetState {
    ids: HashMap<u64, usize>,
    /// Cut pairs, stored as (min, max).
    cut: HashSet<(usize, usize)>,
    /// Links cut in one direction only: (from, to).
    one_way: HashSet<(usize, usize)>,
    isolated: HashSet<usize>,
    conns: HashMap<u64, Conn>,
    proxies: Vec<u16>,
}

struct Conn {
    /// The sender's member id, once sniffed (resolved to an index at each
    /// check: connections made before the ids were known count too).
    from_id: Option<u64>,
    to: usize,
    streams: [TcpStream; 2],
}

impl NetState {
    fn blocked(&self, from: Option<usize>, to: usize) -> bool {
        if self.isolated.contains(&to) {
            return true;
        }
        match from {
            None => false,
            Some(f) => {
                self.isolated.contains(&f)
                    || self.cut.contains(&(f.min(to), f.max(to)))
                    || self.one_way.contains(&(f, to))
            }
        }
    }

    fn close_blocked(&mut self) {
        let doomed: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                self.blocked(c.from_id.and_then(|id| self.ids.get(&id).copied()), c.to)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in doomed {
            if let Some(c) = self.conns.remove(&k) {
                for s in &c.streams {
                    let _ = s.shutdown(Shutdown::Both);
                }
            }
        }
    }
}

impl Net {
    fn set_id(&self, id: u64, i: usize) {
        self.state.lock().unwrap().ids.insert(id, i);
    }

    fn is_isolated(&self, i: usize) -> bool {
        self.state.lock().unwrap().isolated.contains(&i)
    }

    fn cut(&self, i: usize, j: usize) {
        let mut st = self.state.lock().unwrap();
        st.cut.insert((i.min(j), i.max(j)));
        st.close_blocked();
    }

    fn cut_one_way(&self, from: usize, to: usize) {
        let mut st = self.state.lock().unwrap();
        st.one_way.insert((from, to));
        st.close_blocked();
    }

    fn isolate(&self, i: usize) {
        let mut st = self.state.lock().unwrap();
        st.isolated.insert(i);
        st.close_blocked();
    }

    fn heal(&self) {
        let mut st = self.state.lock().unwrap();
        st.cut.clear();
        st.one_way.clear();
        st.isolated.clear();
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        let mut st = self.state.lock().unwrap();
        for port in st.proxies.clone() {
            // Wakes the accept loop so it sees `stopped`.
            let _ = TcpStream::connect(("127.0.0.1", port));
        }
        for (_, c) in st.conns.drain() {
            for s in &c.streams {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Starts proxy `to`: accepts on `listener`, forwards to `upstream`.
    fn add_proxy(self: &Arc<Self>, to: usize, listener: TcpListener, upstream: String) {
        let port = listener.local_addr().unwrap().port();
        self.state.lock().unwrap().proxies.push(port);
        let net = self.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if net.stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (net, upstream) = (net.clone(), upstream.clone());
                thread::spawn(move || net.forward(to, conn, &upstream));
            }
        });
    }

    /// Forwards one connection to member `to`, identifying its sender from
    /// the first bytes and closing it when the link is (or becomes) cut.
    fn forward(self: Arc<Self>, to: usize, mut down: TcpStream, upstream: &str) {
        if self.state.lock().unwrap().blocked(None, to) {
            return;
        }
        let Ok(mut up) = TcpStream::connect(upstream) else {
            return;
        };
        let _ = up.set_nodelay(true);
        let _ = down.set_nodelay(true);
        let key = self.next_conn.fetch_add(1, Ordering::SeqCst);
        {
            let mut st = self.state.lock().unwrap();
            st.conns.insert(
                key,
                Conn {
                    from_id: None,
                    to,
                    streams: [down.try_clone().unwrap(), up.try_clone().unwrap()],
                },
            );
        }
        let (mut d2, mut u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
        let back = thread::spawn(move || {
            let _ = std::io::copy(&mut u2, &mut d2);
            let _ = d2.shutdown(Shutdown::Both);
            let _ = u2.shutdown(Shutdown::Both);
        });
        let mut sniff = Some(Vec::new());
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match down.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if let Some(seen) = sniff.as_mut() {
                seen.extend_from_slice(&buf[..n]);
                match identify(seen) {
                    Sniffed::Pending if seen.len() < SNIFF_LIMIT => {}
                    Sniffed::Pending | Sniffed::Unknown => sniff = None,
                    Sniffed::From(id) => {
                        sniff = None;
                        let mut st = self.state.lock().unwrap();
                        let from = st.ids.get(&id).copied();
                        if let Some(c) = st.conns.get_mut(&key) {
                            c.from_id = Some(id);
                        }
                        if st.blocked(from, to) {
                            st.close_blocked();
                            break;
                        }
                    }
                }
            }
            if up.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = down.shutdown(Shutdown::Both);
        let _ = up.shutdown(Shutdown::Both);
        let _ = back.join();
        self.state.lock().unwrap().conns.remove(&key);
    }
}

enum Sniffed {
    /// Not enough bytes yet.
    Pending,
    /// The protocol carries no sender we know of.
    Unknown,
    From(u64),
}

/// The sender of a peer connection from its first bytes.
fn identify(seen: &[u8]) -> Sniffed {
    const OURS: [&[u8]; 2] = [b"ETRP", b"ETRS"];
    let prefix = &seen[..seen.len().min(4)];
    if b"ETRQ".starts_with(prefix) {
        // Queries carry no sender: "ETRQ" | version | cluster id | len | request.
        return if seen.len() < 4 {
            Sniffed::Pending
        } else {
            Sniffed::Unknown
        };
    }
    if OURS.iter().any(|m| m.starts_with(prefix)) {
        if seen.len() < 4 + 1 + 8 + 8 {
            return Sniffed::Pending;
        }
        let from = u64::from_be_bytes(seen[13..21].try_into().unwrap());
        return Sniffed::From(from);
    }
    // etcd's peer HTTP: look for the X-Server-From header.
    let lower = seen.to_ascii_lowercase();
    let needle = b"\r\nx-server-from:";
    let Some(at) = lower.windows(needle.len()).position(|w| w == needle) else {
        return Sniffed::Pending;
    };
    let rest = &seen[at + needle.len()..];
    let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
        return Sniffed::Pending;
    };
    let value = String::from_utf8_lossy(&rest[..end]).trim().to_string();
    match u64::from_str_radix(&value, 16) {
        Ok(id) => Sniffed::From(id),
        Err(_) => Sniffed::Unknown,
    }
}
