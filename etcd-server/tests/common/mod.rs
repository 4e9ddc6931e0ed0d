//! Shared harness of the integration tests: starts the real `etcd-server`
//! binary (or Debian's real `etcd`, for differential tests) on free
//! loopback ports and drives it with the real `etcdctl`.
#![allow(dead_code)]

pub mod budget;
pub mod cluster;
pub mod history;
pub mod lease_check;
pub mod watch_check;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Our server binary: `$ETCD_SERVER_BIN` when set (the long chaos run
/// uses a copy, so the build can change while it runs), else the one
/// cargo built for this test.
pub fn our_binary() -> String {
    std::env::var("ETCD_SERVER_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_etcd-server").to_string())
}

/// Which server binary to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// This project's `etcd-server`.
    Ours,
    /// Debian's etcd 3.4 (`/usr/bin/etcd`), the oracle.
    Real,
}

/// A running server process with its own data directory.
pub struct Server {
    pub kind: Kind,
    pub name: String,
    pub data_dir: PathBuf,
    pub client_url: String,
    pub peer_url: String,
    pub extra_args: Vec<String>,
    /// Flags every etcdctl call gets (`--cacert`, `--cert`, `--key` ...).
    pub ctl_args: Vec<String>,
    /// `--initial-cluster` when not just this member (`name=peer_url`).
    pub initial_cluster: Option<String>,
    /// Environment variables of the process (beyond PATH), from its next
    /// start on: `FAILPOINTS` (tests/failpoints.rs).
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

/// Peer URLs on free loopback ports for members `<prefix>0..<prefix>n-1`,
/// and the `--initial-cluster` naming them.
pub fn loopback_peers(prefix: &str, n: usize) -> (Vec<String>, String) {
    let peers: Vec<String> = (0..n)
        .map(|_| format!("http://127.0.0.1:{}", free_port()))
        .collect();
    let initial = peers
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{prefix}{i}={p}"))
        .collect::<Vec<_>>()
        .join(",");
    (peers, initial)
}

/// A free loopback port for a server to bind. Taken below the kernel's
/// ephemeral range (32768 and up on Linux), so that outgoing connections
/// cannot take it between this check and the server's bind, and handed out
/// once per test process (tests of one binary run in parallel).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let _ = NEXT.compare_exchange(
        0,
        12_000 + (std::process::id() % 400) * 50,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = 12_000 + (p - 12_000) % 20_000;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
}

/// Sends `signal` (a name `kill` knows: TERM, STOP, CONT...) to `pid`.
pub fn send_signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{signal} {pid} failed");
}

/// Path of `etcdctl`; panics with how to install it when missing.
pub fn etcdctl_path() -> &'static str {
    for p in ["/usr/bin/etcdctl", "/usr/local/bin/etcdctl"] {
        if Path::new(p).exists() {
            return p;
        }
    }
    panic!("etcdctl not found: apt-get install etcd-client (scripts/test does it)");
}

/// The directory of etcd 3.5's `etcd`, `etcdctl` and `etcdutl`
/// (`$ETCD35_DIR`, default `/var/tmp/etcd-3.5.1`); panics with how to
/// install them when missing.
pub fn etcd35_dir() -> PathBuf {
    let dir =
        PathBuf::from(std::env::var("ETCD35_DIR").unwrap_or_else(|_| "/var/tmp/etcd-3.5.1".into()));
    assert!(
        dir.join("etcd").exists() && dir.join("etcdutl").exists(),
        "etcd 3.5 not found in {}: `source scripts/etcd35.sh` (scripts/test does it)",
        dir.display()
    );
    dir
}

/// Path of the real etcd; panics with how to install it when missing.
pub fn real_etcd_path() -> &'static str {
    for p in ["/usr/bin/etcd", "/usr/local/bin/etcd"] {
        if Path::new(p).exists() {
            return p;
        }
    }
    panic!("etcd not found: apt-get install etcd-server (scripts/test does it)");
}

impl Server {
    /// Starts a fresh server of `kind` in a new temporary data directory.
    pub fn start(kind: Kind) -> Server {
        Self::start_with(kind, &[])
    }

    /// Like [`Server::start`] with extra flags.
    pub fn start_with(kind: Kind, extra: &[&str]) -> Server {
        Self::start_custom(kind, "http", extra, &[])
    }

    /// A server whose client URL has `scheme` (`https` with TLS flags in
    /// `extra`), driven by etcdctl with `ctl_args` on every call.
    pub fn start_custom(kind: Kind, scheme: &str, extra: &[&str], ctl_args: &[&str]) -> Server {
        Self::start_at(
            kind,
            &format!("{scheme}://127.0.0.1:{}", free_port()),
            extra,
            ctl_args,
        )
    }

    /// Like [`Server::start_custom`], serving (and driven) at `client_url`.
    pub fn start_at(kind: Kind, client_url: &str, extra: &[&str], ctl_args: &[&str]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data.etcd");
        let mut s = Server {
            kind,
            name: "default".into(),
            data_dir,
            client_url: client_url.to_string(),
            peer_url: format!("http://127.0.0.1:{}", free_port()),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            ctl_args: ctl_args.iter().map(|s| s.to_string()).collect(),
            initial_cluster: None,
            child: None,
            log: tmp.path().join("server.log"),
            _tmp: Some(tmp),
        };
        s.spawn();
        s
    }

    /// A server of `kind` on an existing data directory (what `etcdctl
    /// snapshot restore` wrote, for one), as member `name` with the peer
    /// URL it was restored with. `tmp` holds the directory and is kept.
    pub fn start_on(
        kind: Kind,
        tmp: tempfile::TempDir,
        data_dir: PathBuf,
        name: &str,
        peer_url: &str,
    ) -> Server {
        let mut s = Self::launch_on(kind, tmp, data_dir, name, peer_url, None, &[]);
        s.wait_ready();
        s
    }

    /// Like [`Server::start_on`] for a member of `initial_cluster`, with
    /// `extra` flags, without waiting until it serves (the members of a
    /// cluster are launched together, then waited for).
    pub fn launch_on(
        kind: Kind,
        tmp: tempfile::TempDir,
        data_dir: PathBuf,
        name: &str,
        peer_url: &str,
        initial_cluster: Option<&str>,
        extra: &[&str],
    ) -> Server {
        let mut s = Server {
            kind,
            name: name.into(),
            data_dir,
            client_url: format!("http://127.0.0.1:{}", free_port()),
            peer_url: peer_url.into(),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            ctl_args: Vec::new(),
            initial_cluster: initial_cluster.map(str::to_string),
            child: None,
            log: tmp.path().join("server.log"),
            _tmp: Some(tmp),
        };
        s.launch();
        s
    }

    fn spawn(&mut self) {
        self.launch();
        self.wait_ready();
    }

    fn launch(&mut self) {
        let bin = match self.kind {
            Kind::Ours => our_binary(),
            Kind::Real => real_etcd_path().to_string(),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(bin)
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen-client-urls")
            .arg(&self.client_url)
            .arg("--advertise-client-urls")
            .arg(&self.client_url)
            .arg("--listen-peer-urls")
            .arg(&self.peer_url)
            .arg("--initial-advertise-peer-urls")
            .arg(&self.peer_url)
            .arg("--initial-cluster")
            .arg(
                self.initial_cluster
                    .clone()
                    .unwrap_or_else(|| format!("{}={}", self.name, self.peer_url)),
            )
            .args(&self.extra_args)
            .env_remove("ETCDCTL_API")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start the server binary");
        self.child = Some(child);
    }

    /// Waits until `etcdctl endpoint health` succeeds (at most 60 s).
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "{:?} server exited during start ({status}); log:\n{}",
                    self.kind,
                    self.log_text()
                );
            }
            let out = self.etcdctl(&["endpoint", "health", "--command-timeout=2s"]);
            if out.status.success() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{:?} server not ready after 60 s; log:\n{}",
                    self.kind,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `etcdctl --endpoints <this server> <ctl_args> args...`, not started
    /// (for the calls that stream or run in the background).
    pub fn ctl_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(etcdctl_path());
        c.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.client_url)
            .args(&self.ctl_args)
            .args(args);
        c
    }

    /// Runs `etcdctl --endpoints <this server> args...`.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.ctl_command(args).output().expect("cannot run etcdctl")
    }

    /// Runs etcdctl with `stdin` as input.
    pub fn etcdctl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .ctl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run etcdctl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs etcdctl and returns stdout, panicking with stderr on failure.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs etcdctl expecting failure; returns stderr.
    pub fn ctl_err(&self, args: &[&str]) -> String {
        let out = self.etcdctl(args);
        assert!(
            !out.status.success(),
            "etcdctl {args:?} unexpectedly succeeded"
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Takes the temporary directory holding the data directory, so it
    /// outlives this server (another server is started on it).
    pub fn keep_dir(&mut self) -> tempfile::TempDir {
        self._tmp.take().expect("the directory is still here")
    }

    /// SIGKILLs the process (no graceful shutdown).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for a graceful exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.wait_exit(Duration::from_secs(30))
    }

    /// Sends `signal` (a name `kill` knows: TERM, INT, STOP, CONT...).
    pub fn signal(&self, signal: &str) {
        send_signal(self.child.as_ref().expect("running").id(), signal);
    }

    /// Waits for the process to exit, at most `within` (then SIGKILLs it
    /// and panics); its exit status.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "{:?} server did not exit within {within:?}; log:\n{}",
                    self.kind,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process again on the same data directory and ports.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        self.spawn();
    }

    /// A tonic channel to this server.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.client_url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

/// Standard base64 (etcdctl -w json and the JSON gateway carry keys
/// and values so).
pub fn base64(bytes: impl AsRef<[u8]>) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The bytes of standard base64 `s`.
pub fn unbase64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("not base64 ({e}): {s:?}"))
}

/// Keys a paged read asks for per Range: far below the 4 MiB gRPC message
/// limit of clients for any value size the tests write.
pub const PAGE: i64 = 500;

/// Every key-value in `[key, range_end)` at one revision, read a page of
/// [`PAGE`] keys at a time (a single Range of everything a test wrote can
/// exceed the client's message limit on a fast machine). Returns the kvs in
/// key order and the revision read at (the first page's header revision).
pub async fn range_paged(
    kv: &mut etcd_server::rpc::etcdserverpb::kv_client::KvClient<tonic::transport::Channel>,
    key: &[u8],
    range_end: &[u8],
) -> Result<(Vec<etcd_mvcc::pb::mvccpb::KeyValue>, i64), tonic::Status> {
    use etcd_server::rpc::etcdserverpb::RangeRequest;
    let mut out = Vec::new();
    let mut start = key.to_vec();
    let mut revision = 0;
    loop {
        let r = kv
            .range(RangeRequest {
                key: start.clone().into(),
                range_end: range_end.to_vec().into(),
                limit: PAGE,
                revision,
                ..Default::default()
            })
            .await?
            .into_inner();
        if revision == 0 {
            revision = r.header.as_ref().expect("range without header").revision;
        }
        let more = r.more;
        if let Some(last) = r.kvs.last() {
            // The next page starts just after the last key of this one.
            start = last.key.to_vec();
            start.push(0);
        }
        out.extend(r.kvs);
        if !more {
            return Ok((out, revision));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}
