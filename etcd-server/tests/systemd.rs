//! Starts the way systemd runs etcd, on this server and on the real etcd
//! 3.4 alike: `Type=notify` (a `$NOTIFY_SOCKET` datagram socket that must
//! get `READY=1` once the member serves), settings from an
//! `EnvironmentFile` of `ETCD_*` variables or from `--config-file`, then
//! `etcdctl put/get`, then SIGTERM (`systemctl stop`) and a clean exit.

mod common;

use common::{free_port, real_etcd_path, Kind};
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

fn binary(kind: Kind) -> String {
    match kind {
        Kind::Ours => env!("CARGO_BIN_EXE_etcd-server").to_string(),
        Kind::Real => real_etcd_path().to_string(),
    }
}

/// The settings of a single member in `dir`, as `ETCD_*` pairs.
fn settings(dir: &std::path::Path) -> (Vec<(String, String)>, String) {
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let vars = [
        ("ETCD_NAME", "infra0".to_string()),
        ("ETCD_DATA_DIR", dir.join("data").display().to_string()),
        ("ETCD_LISTEN_CLIENT_URLS", client.clone()),
        ("ETCD_ADVERTISE_CLIENT_URLS", client.clone()),
        ("ETCD_LISTEN_PEER_URLS", peer.clone()),
        ("ETCD_INITIAL_ADVERTISE_PEER_URLS", peer.clone()),
        ("ETCD_INITIAL_CLUSTER", format!("infra0={peer}")),
        ("ETCD_INITIAL_CLUSTER_STATE", "new".to_string()),
        ("ETCD_AUTO_COMPACTION_RETENTION", "1".to_string()),
        // Debian's /etc/default/etcd style: etcd defaults spelled out.
        ("ETCD_PROXY", "off".to_string()),
    ];
    let vars = vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    (vars, client)
}

/// Waits for `READY=1` on `sock`; the datagrams received until then.
fn wait_ready(sock: &UnixDatagram, child: &mut Child) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        assert!(child.try_wait().unwrap().is_none(), "exited before READY=1");
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let ready = msg.lines().any(|l| l == "READY=1");
            got.push(msg);
            if ready {
                return got;
            }
        }
    }
    panic!("no READY=1 within 60 s; got {got:?}");
}

/// Runs one systemd-style start; returns what etcdctl read back, whether
/// SIGTERM stopped it cleanly, and the notifications seen after READY.
fn run(kind: Kind, use_config_file: bool) -> (String, bool, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let (vars, client) = settings(dir.path());
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut cmd = Command::new(binary(kind));
    cmd.env("NOTIFY_SOCKET", &sock_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap());
    if use_config_file {
        // The same settings as etcd's YAML keys.
        let yaml: String = vars
            .iter()
            .map(|(k, v)| {
                let key = k["ETCD_".len()..].to_ascii_lowercase().replace('_', "-");
                format!("{key}: '{v}'\n")
            })
            .collect();
        let path = dir.path().join("etcd.conf.yml");
        std::fs::write(&path, yaml).unwrap();
        cmd.arg("--config-file").arg(&path);
    } else {
        // systemd's EnvironmentFile=, read line by line.
        let file: String = vars.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        let path = dir.path().join("etcd.env");
        std::fs::write(&path, format!("# /etc/default/etcd\n{file}")).unwrap();
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            if let Some((k, v)) = line.split_once('=').filter(|_| !line.starts_with('#')) {
                cmd.env(k, v);
            }
        }
    }
    let mut child = cmd.spawn().unwrap();
    wait_ready(&sock, &mut child);
    let ctl = |args: &[&str]| common::cluster::ctl_at(&client, args);
    assert!(ctl(&["put", "k", "v"]).status.success(), "{kind:?}: put");
    let got = String::from_utf8(ctl(&["get", "k", "--print-value-only"]).stdout).unwrap();
    // systemctl stop: SIGTERM, then the unit waits for the exit.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{kind:?}: no exit 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut after = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        after.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    // What systemd counts as a clean stop: status 0 or death by SIGTERM
    // (etcd 3.4 re-raises the signal after its shutdown handlers).
    use std::os::unix::process::ExitStatusExt as _;
    let clean = status.code() == Some(0) || status.signal() == Some(15);
    (got, clean, after)
}

#[test]
fn type_notify_with_environment_file_matches_etcd() {
    let (ours_got, ours_status, ours_after) = run(Kind::Ours, false);
    let (real_got, real_status, _) = run(Kind::Real, false);
    assert_eq!(ours_got, "v\n");
    assert_eq!(ours_got, real_got);
    assert!(
        ours_status && real_status,
        "clean stops: {ours_status} {real_status}"
    );
    assert!(
        ours_after.iter().any(|m| m.contains("STOPPING=1")),
        "STOPPING=1 on SIGTERM: {ours_after:?}"
    );
}

#[test]
fn type_notify_with_config_file_matches_etcd() {
    let (ours_got, ours_status, _) = run(Kind::Ours, true);
    let (real_got, real_status, _) = run(Kind::Real, true);
    assert_eq!(ours_got, "v\n");
    assert_eq!(ours_got, real_got);
    assert!(
        ours_status && real_status,
        "clean stops: {ours_status} {real_status}"
    );
}
