//! Stopping and starting the way operators do, with clients attached.
//!
//! - SIGTERM (`systemctl stop`, a rolling restart) while `etcdctl` holds a
//!   watch, a lease keep-alive and an election observer open and a write
//!   load runs: the real etcd 3.4 and this server both exit on their own
//!   (ours with status 0, its streams ended with "server stopped" rather
//!   than cut at the end of the grace period), and every acknowledged
//!   write is there after the restart.
//! - A request that keeps running (a snapshot download the client does
//!   not read) holds the graceful stop for the request timeout at most,
//!   then is cut; a second SIGTERM ends the process at once.
//! - A member serves clients only once its own attributes are committed
//!   (etcd's `ReadyNotify`): alone out of three, neither etcd nor ours
//!   answers `member list`; once a quorum runs, every member in the list
//!   has its client URLs.

mod common;

use common::cluster::Cluster;
use common::{etcdctl_path, Kind, Server};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A long-running `etcdctl` (watch, keep-alive, observe) whose output
/// lines arrive on the returned channel.
fn spawn_ctl(s: &Server, args: &[&str]) -> (Child, mpsc::Receiver<String>) {
    let mut child = s
        .ctl_command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run etcdctl");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Waits (at most a minute) for a line containing `what`.
fn wait_line(rx: &mpsc::Receiver<String>, what: &str, who: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains(what) => return,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("{who}: no line with {what:?} within a minute");
}

#[test]
fn sigterm_with_open_streams_and_a_write_load() {
    for kind in [Kind::Real, Kind::Ours] {
        let mut s = Server::start(kind);
        let (mut watch, watched) = spawn_ctl(&s, &["watch", "--prefix", "load/"]);
        let granted = s.ctl_ok(&["lease", "grant", "600"]);
        let lease = granted
            .split_whitespace()
            .nth(1)
            .expect("lease id")
            .to_string();
        let (mut keepalive, kept) = spawn_ctl(&s, &["lease", "keep-alive", &lease]);
        // The campaigner holds the leadership until it is killed.
        let (mut campaign, elected) = spawn_ctl(&s, &["elect", "e", "leader-a"]);
        wait_line(&elected, "leader-a", "campaigner");
        let (mut observe, observed) = spawn_ctl(&s, &["elect", "-l", "e"]);
        // The load: one put after another until the server is gone.
        let load = {
            let url = s.client_url.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0.. {
                    let key = format!("load/{i:05}");
                    let ok = Command::new(etcdctl_path())
                        .env("ETCDCTL_API", "3")
                        .args(["--endpoints", &url, "--dial-timeout=2s"])
                        .args(["--command-timeout=5s", "put", &key, "v"])
                        .output()
                        .is_ok_and(|o| o.status.success());
                    if !ok {
                        return acked;
                    }
                    acked.push(key);
                }
                unreachable!()
            })
        };
        // Puts are sequential: seeing load/00002 means load/00000 and
        // load/00001 were acknowledged (seeing load/00001 alone did not: its
        // put can still be waiting for its answer when the signal lands).
        wait_line(&watched, "load/00002", "watch");
        wait_line(&kept, "keepalived", "lease keep-alive");
        wait_line(&observed, "leader-a", "election observer");

        let status = s.terminate();
        let acked = load.join().unwrap();
        let log = s.log_text();
        match kind {
            // etcd re-raises the signal after stopping cleanly.
            Kind::Real => assert!(
                status.success() || status.signal() == Some(15),
                "etcd: {status}"
            ),
            Kind::Ours => {
                assert!(status.success(), "ours: {status}; log:\n{log}");
                assert!(
                    !log.contains("closing their connections"),
                    "streams were cut at the end of the grace period, not ended:\n{log}"
                );
            }
        }
        for c in [&mut watch, &mut keepalive, &mut campaign, &mut observe] {
            let _ = c.kill();
            let _ = c.wait();
        }

        s.restart();
        let keys = s.ctl_ok(&["get", "--prefix", "load/", "--keys-only"]);
        let present: std::collections::HashSet<&str> =
            keys.lines().filter(|l| !l.is_empty()).collect();
        let lost: Vec<_> = acked
            .iter()
            .filter(|k| !present.contains(k.as_str()))
            .collect();
        assert!(
            acked.len() >= 2 && lost.is_empty(),
            "{kind:?}: {} acknowledged, lost {lost:?}",
            acked.len()
        );
    }
}

/// A snapshot stream the client stops reading (a flow-control window of
/// 64 KiB and a database of several MiB): the graceful stop waits for it.
async fn stalled_snapshot(
    s: &Server,
) -> etcd_server::rpc::etcdserverpb::maintenance_client::MaintenanceClient<tonic::transport::Channel>
{
    use etcd_server::rpc::etcdserverpb::{
        kv_client::KvClient, maintenance_client::MaintenanceClient, PutRequest, SnapshotRequest,
    };
    let mut kv = KvClient::new(s.channel().await);
    for i in 0..8 {
        kv.put(PutRequest {
            key: format!("big/{i}").into(),
            value: vec![b'x'; 1 << 20].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let channel = tonic::transport::Endpoint::from_shared(s.client_url.clone())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let mut m = MaintenanceClient::new(channel);
    let mut stream = m.snapshot(SnapshotRequest {}).await.unwrap().into_inner();
    // One message read, the rest left unread.
    stream.message().await.unwrap().expect("a first chunk");
    std::mem::forget(stream);
    m
}

#[test]
fn a_stalled_request_is_cut_after_the_grace_period() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Request timeout = 5 s + 2 election timeouts = 5.2 s.
    let mut s = Server::start_with(
        Kind::Ours,
        &["--election-timeout=100", "--heartbeat-interval=10"],
    );
    let _client = rt.block_on(stalled_snapshot(&s));
    let status = s.terminate();
    let log = s.log_text();
    assert!(status.success(), "{status}; log:\n{log}");
    assert!(
        log.contains("client requests still running after 5.2s; closing their connections"),
        "{log}"
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut s = Server::start(Kind::Ours);
    let _client = rt.block_on(stalled_snapshot(&s));
    s.signal("TERM");
    // The graceful stop now waits up to 7 s for the snapshot stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !s.log_text().contains("stopping gracefully") {
        assert!(std::time::Instant::now() < deadline, "{}", s.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    s.signal("TERM");
    let status = s.wait_exit(Duration::from_secs(30));
    let log = s.log_text();
    assert_eq!(status.code(), Some(1), "{status}; log:\n{log}");
    assert!(log.contains("second shutdown signal"), "{log}");
    assert!(!log.contains("closing their connections"), "{log}");
}

#[test]
fn members_serve_clients_once_published() {
    for kind in [Kind::Real, Kind::Ours] {
        // Alone, a fresh member of a new 3-member cluster cannot publish:
        // it does not serve clients at all.
        let mut lone = Cluster::launch_some(kind, 3, &[0]);
        let out = lone.ctl(
            0,
            &[
                "member",
                "list",
                "--dial-timeout=2s",
                "--command-timeout=3s",
            ],
        );
        assert!(
            !out.status.success(),
            "{kind:?}: a member without quorum answered: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        lone.launch_rest();
        let list = lone.member_list_at(0);
        assert_eq!(list.len(), 3, "{kind:?}: {list:?}");
        for m in list {
            assert!(!m.client_urls.is_empty(), "{kind:?}: {m:?}");
        }
    }
}

/// A member that ran with `--wal-dir` and is started without it finds no
/// WAL; it refuses to bootstrap again over its store (which would throw
/// the log away) and names the flag.
#[test]
fn a_forgotten_wal_dir_is_a_startup_error() {
    let wal = tempfile::tempdir().unwrap();
    let wal_dir = wal.path().join("wal");
    let mut s = Server::start_with(Kind::Ours, &["--wal-dir", wal_dir.to_str().unwrap()]);
    for i in 0..5 {
        s.ctl_ok(&["put", &format!("k{i}"), "v"]);
    }
    assert!(s.terminate().success());
    let out = Command::new(env!("CARGO_BIN_EXE_etcd-server"))
        .arg("--data-dir")
        .arg(&s.data_dir)
        .args(["--listen-client-urls", &s.client_url])
        .args(["--advertise-client-urls", &s.client_url])
        .args(["--listen-peer-urls", &s.peer_url])
        .args(["--initial-advertise-peer-urls", &s.peer_url])
        .args(["--initial-cluster", &format!("default={}", s.peer_url)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("no WAL in") && stderr.contains("--wal-dir it ran with"),
        "{stderr}"
    );
    // With it, everything is there.
    s.restart();
    assert_eq!(s.ctl_ok(&["get", "k4", "--print-value-only"]), "v\n");
}
