//! Client TLS, driven by the real etcdctl (`--cacert --cert --key`) the way
//! operators run it, against our server and the real etcd 3.4 side by side:
//! the same certificates, the same commands, the same outcomes. Then
//! certificate rotation without a restart (ours).
//!
//! Certificates are made with rcgen here (ECDSA P-256, like cfssl's
//! `"algo": "ecdsa"` profiles): a CA, a server certificate naming
//! 127.0.0.1, client certificates from that CA (valid, expired, revoked
//! through a CRL) and from another CA.

mod common;

use common::{etcdctl_path, Kind, Server};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use time::OffsetDateTime;

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    Ca { cert, key }
}

/// A certificate for `cn` with `hosts` as SANs, signed by `ca`; written as
/// `<dir>/<file>.pem` and `<dir>/<file>-key.pem` (cfssl's names).
fn issue(
    ca: &Ca,
    dir: &Path,
    file: &str,
    cn: &str,
    hosts: &[&str],
    serial: u64,
    expired: bool,
) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut p =
        CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.serial_number = Some(SerialNumber::from(serial));
    let now = OffsetDateTime::now_utc();
    if expired {
        p.not_before = now - time::Duration::days(30);
        p.not_after = now - time::Duration::days(1);
    } else {
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(365);
    }
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let (c, k) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}-key.pem")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn write_ca(ca: &Ca, path: &Path) -> PathBuf {
    std::fs::write(path, ca.cert.pem()).unwrap();
    path.to_path_buf()
}

fn crl(ca: &Ca, revoked_serial: u64, path: &Path) -> PathBuf {
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now - time::Duration::hours(1),
        next_update: now + time::Duration::days(30),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(revoked_serial),
            revocation_time: now - time::Duration::hours(1),
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&ca.cert, &ca.key).unwrap();
    std::fs::write(path, crl.pem().unwrap()).unwrap();
    path.to_path_buf()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// etcdctl's flags to trust `ca` and present the certificate `cert`.
fn tls_flags<'a>(ca: &'a Path, cert: &'a (PathBuf, PathBuf)) -> [&'a str; 6] {
    ["--cacert", s(ca), "--cert", s(&cert.0), "--key", s(&cert.1)]
}

/// etcdctl against `endpoint` with exactly `tls` as its TLS flags.
fn ctl(endpoint: &str, tls: &[&str], args: &[&str]) -> Output {
    Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .args(["--dial-timeout=2s", "--command-timeout=3s"])
        .args(tls)
        .args(args)
        .output()
        .unwrap()
}

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
    other_ca_client: (PathBuf, PathBuf),
    expired: (PathBuf, PathBuf),
    revoked: (PathBuf, PathBuf),
    other_ca: PathBuf,
    crl: PathBuf,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca1 = ca("etcd-rs test CA");
    let ca2 = ca("another CA");
    let hosts = ["127.0.0.1", "localhost"];
    Pki {
        ca: write_ca(&ca1, &d.join("ca.pem")),
        server: issue(&ca1, d, "server", "etcd-server", &hosts, 10, false),
        client: issue(&ca1, d, "client", "root", &[], 11, false),
        other_ca_client: issue(&ca2, d, "other", "root", &[], 12, false),
        expired: issue(&ca1, d, "expired", "root", &[], 13, true),
        revoked: issue(&ca1, d, "revoked", "root", &[], 14, false),
        other_ca: write_ca(&ca2, &d.join("other-ca.pem")),
        crl: crl(&ca1, 14, &d.join("crl.pem")),
        _dir: dir,
    }
}

/// A server's flags for `p`'s server certificate, requiring client
/// certificates of `p`'s CA.
fn mutual_tls_flags(p: &Pki) -> Vec<&str> {
    vec![
        "--cert-file",
        s(&p.server.0),
        "--key-file",
        s(&p.server.1),
        "--trusted-ca-file",
        s(&p.ca),
        "--client-cert-auth",
    ]
}

/// What each client attempt did against a server of `kind` that requires
/// client certificates: (attempt, succeeded).
fn outcomes(kind: Kind, p: &Pki) -> Vec<(&'static str, bool)> {
    let mut server_flags = mutual_tls_flags(p);
    server_flags.extend(["--client-crl-file", s(&p.crl)]);
    let good = tls_flags(&p.ca, &p.client);
    let srv = Server::start_custom(kind, "https", &server_flags, &good);
    let url = srv.client_url.clone();
    srv.ctl_ok(&["put", "tls-key", "over-tls"]);
    assert_eq!(
        srv.ctl_ok(&["get", "tls-key", "--print-value-only"]).trim(),
        "over-tls"
    );
    let with = |cert: &(PathBuf, PathBuf), cacert: &Path| {
        ctl(&url, &tls_flags(cacert, cert), &["get", "tls-key"])
            .status
            .success()
    };
    let plain = url.replacen("https://", "http://", 1);
    vec![
        ("valid client certificate", with(&p.client, &p.ca)),
        (
            "no client certificate",
            ctl(&url, &["--cacert", s(&p.ca)], &["get", "tls-key"])
                .status
                .success(),
        ),
        (
            "client certificate of another CA",
            with(&p.other_ca_client, &p.ca),
        ),
        ("expired client certificate", with(&p.expired, &p.ca)),
        ("revoked client certificate (CRL)", with(&p.revoked, &p.ca)),
        (
            "client that does not trust the server's CA",
            with(&p.client, &p.other_ca),
        ),
        (
            "plain HTTP to the TLS port",
            ctl(&plain, &[], &["get", "tls-key"]).status.success(),
        ),
        ("endpoint health", {
            let o = srv.etcdctl(&["endpoint", "health"]);
            o.status.success()
        }),
    ]
}

#[test]
fn client_certificates_are_checked_as_etcd_checks_them() {
    let p = pki();
    let ours = outcomes(Kind::Ours, &p);
    let real = outcomes(Kind::Real, &p);
    assert_eq!(ours, real, "ours vs the real etcd 3.4");
    let expected: Vec<bool> = vec![true, false, false, false, false, false, false, true];
    assert_eq!(
        ours.iter().map(|(_, ok)| *ok).collect::<Vec<_>>(),
        expected,
        "{ours:?}"
    );
}

/// The JSON gateway over TLS with `--client-cert-auth`, with curl as etcd's
/// documentation uses it: it answers; once auth is enabled, a request whose
/// certificate carries a common name is refused with etcd's 400 (the
/// gateway would not use that name as the user).
fn gateway_over_tls(kind: Kind, p: &Pki) -> Vec<(u16, String)> {
    let server_flags = mutual_tls_flags(p);
    let good = tls_flags(&p.ca, &p.client);
    let srv = Server::start_custom(kind, "https", &server_flags, &good);
    let curl = |path: &str, body: &str| {
        let out = Command::new("curl")
            .args(["-s", "-S", "-w", "\n%{http_code}", "--cacert", s(&p.ca)])
            .args(["--cert", s(&p.client.0), "--key", s(&p.client.1)])
            .args(["-X", "POST", "-d", body])
            .arg(format!("{}{path}", srv.client_url))
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, code) = text.rsplit_once('\n').unwrap();
        assert_ne!(
            code,
            "000",
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The header's ids differ between the two clusters.
        let body = match body.find(r#""revision""#) {
            Some(at) => body[at..].to_string(),
            None => body.to_string(),
        };
        (code.parse().unwrap(), body)
    };
    let mut seen = vec![curl("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#)];
    srv.ctl_ok(&["user", "add", "root:toor"]);
    srv.ctl_ok(&["user", "grant-role", "root", "root"]);
    srv.ctl_ok(&["auth", "enable"]);
    seen.push(curl("/v3/kv/range", r#"{"key":"Zm9v"}"#));
    seen
}

#[test]
fn gateway_over_tls_refuses_common_names_under_auth_like_etcd() {
    let p = pki();
    let ours = gateway_over_tls(Kind::Ours, &p);
    let real = gateway_over_tls(Kind::Real, &p);
    assert_eq!(ours, real, "ours vs the real etcd 3.4");
    assert_eq!(ours[0].0, 200, "{ours:?}");
    assert_eq!(
        ours[1],
        (
            400,
            "CommonName of client sending a request against gateway will be ignored and not used as expected\n"
                .to_string()
        )
    );
}

#[test]
fn server_tls_without_client_certificates_and_http_side_by_side() {
    // Only --cert-file/--key-file: any client that trusts the CA gets in;
    // an http:// listener beside it serves plain text.
    let p = pki();
    let plain_port = common::free_port();
    let plain = format!("http://127.0.0.1:{plain_port}");
    for kind in [Kind::Ours, Kind::Real] {
        let tls = format!("https://127.0.0.1:{}", common::free_port());
        let both = format!("{tls},{plain}");
        // Given twice, as Go's flags allow: the last one counts.
        let srv = Server::start_at(
            kind,
            &tls,
            &[
                "--cert-file",
                s(&p.server.0),
                "--key-file",
                s(&p.server.1),
                "--listen-client-urls",
                &both,
            ],
            &["--cacert", s(&p.ca)],
        );
        let _ = &srv;
        assert!(
            ctl(&tls, &["--cacert", s(&p.ca)], &["put", "a", "1"])
                .status
                .success(),
            "{kind:?}"
        );
        let got = ctl(&plain, &[], &["get", "a", "--print-value-only"]);
        assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "1", "{kind:?}");
        // A client that does not trust the server's certificate fails.
        assert!(
            !ctl(&tls, &["--cacert", s(&p.other_ca)], &["get", "a"])
                .status
                .success(),
            "{kind:?}"
        );
        drop(srv);
    }
}

#[test]
fn certificates_rotate_without_a_restart_and_no_request_fails() {
    let p = pki();
    let d = tempfile::tempdir().unwrap();
    // The files the server is started with; rotation overwrites them.
    let (cert, key) = (d.path().join("server.pem"), d.path().join("server-key.pem"));
    std::fs::copy(&p.server.0, &cert).unwrap();
    std::fs::copy(&p.server.1, &key).unwrap();
    // The new server certificate comes from a new CA; clients trust both
    // during the rotation (a CA bundle), as operators roll CAs.
    let ca3 = ca("rotated CA");
    let (new_cert, new_key) = issue(
        &ca3,
        d.path(),
        "new",
        "etcd-server",
        &["127.0.0.1"],
        20,
        false,
    );
    let ca3_file = write_ca(&ca3, &d.path().join("ca3.pem"));
    let bundle = d.path().join("bundle.pem");
    std::fs::write(
        &bundle,
        std::fs::read_to_string(&p.ca).unwrap() + &std::fs::read_to_string(&ca3_file).unwrap(),
    )
    .unwrap();
    let client = tls_flags(&bundle, &p.client);
    let srv = Server::start_custom(
        Kind::Ours,
        "https",
        &[
            "--cert-file",
            s(&cert),
            "--key-file",
            s(&key),
            "--trusted-ca-file",
            s(&p.ca),
            "--client-cert-auth",
        ],
        &client,
    );
    let run_only = |ca: &Path, args: &[&str]| {
        ctl(&srv.client_url, &tls_flags(ca, &p.client), args)
            .status
            .success()
    };
    assert!(run_only(&p.ca, &["get", "x"]));
    assert!(!run_only(&ca3_file, &["get", "x"]));

    // A watch on a connection made before the rotation.
    let mut watch = Command::new(etcdctl_path())
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &srv.client_url])
        .args(client)
        .args(["watch", "rot"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));

    // Puts before, during and after the rotation: none fails.
    for i in 0..30 {
        if i == 10 {
            std::fs::copy(&new_cert, &cert).unwrap();
            std::fs::copy(&new_key, &key).unwrap();
        }
        srv.ctl_ok(&["put", "rot", &format!("v{i}")]);
    }
    // New connections get the new certificate.
    assert!(run_only(&ca3_file, &["get", "rot"]));
    assert!(!run_only(&p.ca, &["get", "rot"]));

    // A broken file keeps the current certificate (and says why).
    std::fs::write(&cert, "not a certificate").unwrap();
    assert!(run_only(&ca3_file, &["put", "rot", "after-broken"]));
    assert!(
        srv.log_text().contains("keeping the previous certificates"),
        "{}",
        srv.log_text()
    );

    // The watch made before the rotation saw every put.
    std::thread::sleep(Duration::from_millis(500));
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for i in 0..30 {
        assert!(
            text.contains(&format!("\nv{i}\n")),
            "v{i} missing from the watch:\n{text}"
        );
    }
    assert!(text.contains("after-broken"), "{text}");
}

#[test]
fn auto_tls_serves_a_self_signed_certificate() {
    let srv = Server::start_custom(
        Kind::Ours,
        "https",
        &["--auto-tls"],
        // etcdctl 3.4 skips verification only with --insecure-transport=false.
        &["--insecure-transport=false", "--insecure-skip-tls-verify"],
    );
    srv.ctl_ok(&["put", "auto", "tls"]);
    assert!(srv.data_dir.join("fixtures/client/cert.pem").exists());
    // A client that verifies the certificate cannot trust it.
    assert!(!ctl(&srv.client_url, &[], &["get", "auto"]).status.success());
}

/// A member process of a TLS cluster.
struct TlsMember {
    child: std::process::Child,
    client_url: String,
    log: PathBuf,
}

impl Drop for TlsMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a member process of `kind` serving clients at `client_url` and
/// peers at `peer_url`, with `extra` flags (TLS).
#[allow(clippy::too_many_arguments)]
fn spawn_member(
    kind: Kind,
    dir: &Path,
    name: &str,
    client_url: String,
    peer_url: &str,
    initial_cluster: &str,
    state: &str,
    extra: &[&str],
) -> TlsMember {
    let bin = match kind {
        Kind::Ours => env!("CARGO_BIN_EXE_etcd-server").to_string(),
        Kind::Real => common::real_etcd_path().to_string(),
    };
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(bin)
        .args(["--name", name])
        .arg("--data-dir")
        .arg(dir.join(format!("{name}.etcd")))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", peer_url])
        .args(["--initial-advertise-peer-urls", peer_url])
        .args(["--initial-cluster", initial_cluster])
        .args(["--initial-cluster-state", state])
        .args(["--initial-cluster-token", "tls-cluster"])
        .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
        .args(extra)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    TlsMember {
        child,
        client_url,
        log,
    }
}

/// A member whose client and peer traffic is TLS with `peer`'s
/// certificate (the server certificate doubles as the peer one, as in the
/// guides' cfssl setup).
#[allow(clippy::too_many_arguments)]
fn tls_member(
    kind: Kind,
    dir: &Path,
    name: &str,
    client_port: u16,
    peer_port: u16,
    initial_cluster: &str,
    state: &str,
    c: &Certs,
    peer: &(PathBuf, PathBuf),
    peer_ca: &Path,
) -> TlsMember {
    spawn_member(
        kind,
        dir,
        name,
        format!("https://127.0.0.1:{client_port}"),
        &format!("https://127.0.0.1:{peer_port}"),
        initial_cluster,
        state,
        &[
            "--cert-file",
            s(&c.server.0),
            "--key-file",
            s(&c.server.1),
            "--trusted-ca-file",
            s(&c.ca),
            "--client-cert-auth",
            "--peer-cert-file",
            s(&peer.0),
            "--peer-key-file",
            s(&peer.1),
            "--peer-trusted-ca-file",
            s(peer_ca),
            "--peer-client-cert-auth",
        ],
    )
}

/// A CA, a server (and peer) certificate and a client certificate.
struct Certs {
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

impl Pki {
    fn certs(&self) -> Certs {
        Certs {
            ca: self.ca.clone(),
            server: self.server.clone(),
            client: self.client.clone(),
        }
    }
}

fn client_flags(c: &Certs) -> [&str; 6] {
    tls_flags(&c.ca, &c.client)
}

/// Starts three members with client and peer TLS from `c` (ports for a
/// fourth in `ports[3]`), checks them with etcdctl and returns them.
fn tls_cluster(
    kind: Kind,
    dir: &Path,
    ports: &[(u16, u16)],
    c: &Certs,
) -> (Vec<TlsMember>, String) {
    let initial = (0..3)
        .map(|i| format!("m{i}=https://127.0.0.1:{}", ports[i].1))
        .collect::<Vec<_>>()
        .join(",");
    let members: Vec<TlsMember> = (0..3)
        .map(|i| {
            tls_member(
                kind,
                dir,
                &format!("m{i}"),
                ports[i].0,
                ports[i].1,
                &initial,
                "new",
                c,
                &c.server,
                &c.ca,
            )
        })
        .collect();
    let tls = client_flags(c);
    for m in &members {
        assert!(
            eventually(150, || ctl(&m.client_url, &tls, &["endpoint", "health"])
                .status
                .success()),
            "{kind:?} {}: not healthy; log:\n{}",
            m.client_url,
            std::fs::read_to_string(&m.log).unwrap_or_default()
        );
    }
    let list = ctl(&members[0].client_url, &tls, &["member", "list"]);
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    assert_eq!(list.lines().count(), 3, "{kind:?}: {list}");
    assert!(
        list.lines().all(|l| l.contains("https://127.0.0.1:")),
        "{list}"
    );
    assert!(ctl(&members[0].client_url, &tls, &["put", "peer", "tls"])
        .status
        .success());
    let got = ctl(
        &members[2].client_url,
        &tls,
        &["get", "peer", "--print-value-only"],
    );
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "tls",
        "{kind:?}"
    );
    (members, initial)
}

/// Polls `f` every 200 ms, at most `tries` times.
fn eventually(tries: usize, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..tries {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// An auth session over TLS on a 3-member cluster: users and roles set up
/// through one member, used through the others with `--user`. Returns each
/// command's exit status, stdout and error line (etcdctl's `Error: ...`),
/// to compare ours with the real etcd.
fn auth_session(members: &[TlsMember], tls: &[&str]) -> Vec<(bool, String, String)> {
    let steps: &[(usize, &[&str])] = &[
        (0, &["user", "add", "root:rootpw"]),
        (0, &["user", "add", "alice:alicepw"]),
        (0, &["role", "add", "apps"]),
        (
            0,
            &[
                "role",
                "grant-permission",
                "apps",
                "readwrite",
                "--prefix",
                "app/",
            ],
        ),
        (0, &["user", "grant-role", "alice", "apps"]),
        (0, &["auth", "enable"]),
        (1, &["put", "app/x", "1"]),
        (1, &["--user", "alice:alicepw", "put", "app/x", "1"]),
        (2, &["--user", "alice:alicepw", "get", "app/x"]),
        (2, &["--user", "alice:alicepw", "put", "other", "1"]),
        (1, &["--user", "alice:wrong", "get", "app/x"]),
        (2, &["--user", "alice:alicepw", "user", "list"]),
        (
            0,
            &[
                "--user",
                "root:rootpw",
                "role",
                "revoke-permission",
                "apps",
                "app/",
                "--prefix",
            ],
        ),
        (1, &["--user", "alice:alicepw", "get", "app/x"]),
        (2, &["--user", "root:rootpw", "get", "app/x"]),
        (0, &["--user", "root:rootpw", "auth", "disable"]),
        (1, &["get", "app/x"]),
    ];
    steps
        .iter()
        .map(|(m, args)| {
            let o = ctl(&members[*m].client_url, tls, args);
            let err = String::from_utf8_lossy(&o.stderr)
                .lines()
                .filter(|l| l.starts_with("Error:"))
                .collect::<Vec<_>>()
                .join("\n");
            (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                err,
            )
        })
        .collect()
}

/// Three members with client and peer TLS (the guides' setup), driven with
/// etcdctl; ours and the real etcd 3.4 answer alike, auth included. Then
/// (ours) a member whose peer certificate comes from another CA cannot
/// join: its connections are refused before any raft message is read.
#[test]
fn three_members_with_peer_tls() {
    let p = pki();
    let other_peer = {
        // Same CA as the "other" client certificate, so a valid chain but
        // not one the cluster trusts.
        (p.other_ca_client.0.clone(), p.other_ca_client.1.clone())
    };
    let mut sessions = Vec::new();
    for kind in [Kind::Ours, Kind::Real] {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..4)
            .map(|_| (common::free_port(), common::free_port()))
            .collect();
        let certs = p.certs();
        let (members, initial) = tls_cluster(kind, dir.path(), &ports, &certs);
        let tls = client_flags(&certs);
        sessions.push(auth_session(&members, &tls));

        if kind == Kind::Ours {
            // An intruder: added as a member, started with a peer
            // certificate from a CA the cluster does not trust.
            let (cp, pp) = ports[3];
            let url = format!("https://127.0.0.1:{pp}");
            let added = ctl(
                &members[0].client_url,
                &tls,
                &[
                    "member",
                    "add",
                    "m3",
                    "--learner",
                    &format!("--peer-urls={url}"),
                ],
            );
            assert!(
                added.status.success(),
                "{}",
                String::from_utf8_lossy(&added.stderr)
            );
            let intruder = tls_member(
                kind,
                dir.path(),
                "m3",
                cp,
                pp,
                &format!("{initial},m3={url}"),
                "existing",
                &certs,
                &other_peer,
                &p.other_ca,
            );
            let refused = eventually(100, || {
                members.iter().any(|m| {
                    std::fs::read_to_string(&m.log)
                        .unwrap_or_default()
                        .contains("rejected peer connection")
                })
            });
            assert!(refused, "no member refused the intruder's connections");
            // It never serves: it cannot even fetch the cluster.
            assert!(!ctl(&intruder.client_url, &tls, &["endpoint", "status"])
                .status
                .success());
            // The cluster goes on.
            assert!(ctl(&members[1].client_url, &tls, &["put", "still", "fine"])
                .status
                .success());
        }
        drop(members);
    }
    let (ours, real) = (&sessions[0], &sessions[1]);
    for (i, (o, r)) in ours.iter().zip(real).enumerate() {
        assert_eq!(o, r, "auth step {i}: ours vs etcd 3.4");
    }
    // Not vacuous: the session saw a permission refusal and a success.
    assert!(real.iter().any(|s| s.2.contains("permission denied")));
    assert!(real[7].0, "alice's put");
}

/// The guides' workflow with Debian's cfssl (`cfssl gencert -initca`, RSA
/// 2048, a server certificate listing the members' IPs): a 3-member TLS
/// cluster of ours, driven with etcdctl.
#[test]
fn cfssl_certificates_from_the_guides() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let run = |args: &[&str], json: &str, out: &str| {
        let gen = Command::new("cfssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("cfssl not found: apt-get install golang-cfssl (scripts/test does it)");
        assert!(
            gen.status.success(),
            "cfssl {args:?}: {}",
            String::from_utf8_lossy(&gen.stderr)
        );
        let _ = json;
        let mut save = Command::new("cfssljson")
            .args(["-bare", out])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        save.stdin.take().unwrap().write_all(&gen.stdout).unwrap();
        assert!(save.wait().unwrap().success());
    };
    std::fs::write(
        dir.join("ca-csr.json"),
        r#"{"CN": "etcd-ca", "key": {"algo": "rsa", "size": 2048}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("ca-config.json"),
        r#"{"signing": {"default": {"expiry": "8760h"}, "profiles": {
  "server": {"expiry": "8760h", "usages": ["signing", "key encipherment", "server auth", "client auth"]},
  "client": {"expiry": "8760h", "usages": ["signing", "key encipherment", "client auth"]}}}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("server-csr.json"),
        r#"{"CN": "etcd", "key": {"algo": "rsa", "size": 2048}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("client-csr.json"),
        r#"{"CN": "root", "key": {"algo": "rsa", "size": 2048}}"#,
    )
    .unwrap();
    run(&["gencert", "-initca", "ca-csr.json"], "", "ca");
    run(
        &[
            "gencert",
            "-ca=ca.pem",
            "-ca-key=ca-key.pem",
            "-config=ca-config.json",
            "-profile=server",
            "-hostname=127.0.0.1,localhost",
            "server-csr.json",
        ],
        "",
        "server",
    );
    run(
        &[
            "gencert",
            "-ca=ca.pem",
            "-ca-key=ca-key.pem",
            "-config=ca-config.json",
            "-profile=client",
            "client-csr.json",
        ],
        "",
        "client",
    );
    let certs = Certs {
        ca: dir.join("ca.pem"),
        server: (dir.join("server.pem"), dir.join("server-key.pem")),
        client: (dir.join("client.pem"), dir.join("client-key.pem")),
    };
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| (common::free_port(), common::free_port()))
        .collect();
    let (members, _) = tls_cluster(Kind::Ours, dir, &ports, &certs);
    // Without a client certificate: refused.
    assert!(!ctl(
        &members[0].client_url,
        &["--cacert", s(&certs.ca)],
        &["get", "peer"]
    )
    .status
    .success());
}

/// The certificates Debian ships with etcd's Go sources
/// (`golang-etcd-server-dev`, `integration/fixtures`): server.crt serves,
/// server2.crt is a client, server-revoked.crt is in revoke.crl. Ours and
/// the real etcd 3.4 decide alike.
#[test]
fn debian_etcd_fixtures() {
    let f = Path::new("/usr/share/gocode/src/go.etcd.io/etcd/integration/fixtures");
    assert!(
        f.join("ca.crt").exists(),
        "apt-get install golang-etcd-server-dev (scripts/test does it)"
    );
    let fx = |n: &str| f.join(n).to_str().unwrap().to_string();
    // A fixture's certificate and its key (`<name>.crt`, `<name>.key.insecure`).
    let pair = |n: &str| {
        (
            f.join(format!("{n}.crt")),
            f.join(format!("{n}.key.insecure")),
        )
    };
    let ca = f.join("ca.crt");
    let mut seen = Vec::new();
    for kind in [Kind::Ours, Kind::Real] {
        let srv = Server::start_custom(
            kind,
            "https",
            &[
                "--cert-file",
                &fx("server.crt"),
                "--key-file",
                &fx("server.key.insecure"),
                "--trusted-ca-file",
                &fx("ca.crt"),
                "--client-cert-auth",
                "--client-crl-file",
                &fx("revoke.crl"),
            ],
            &tls_flags(&ca, &pair("server2")),
        );
        srv.ctl_ok(&["put", "fixture", "ok"]);
        let revoked = ctl(
            &srv.client_url,
            &tls_flags(&ca, &pair("server-revoked")),
            &["get", "fixture"],
        );
        let ecdsa = ctl(
            &srv.client_url,
            &tls_flags(&ca, &pair("server-ecdsa")),
            &["get", "fixture", "--print-value-only"],
        );
        seen.push((kind, revoked.status.success(), ecdsa.status.success()));
    }
    assert_eq!(seen, [(Kind::Ours, false, true), (Kind::Real, false, true)]);
}

/// `--peer-auto-tls`: three members encrypt peer traffic with certificates
/// they made themselves; ours and the real etcd 3.4 form the cluster alike.
#[test]
fn peer_auto_tls_cluster() {
    for kind in [Kind::Ours, Kind::Real] {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..3)
            .map(|_| (common::free_port(), common::free_port()))
            .collect();
        let initial = (0..3)
            .map(|i| format!("m{i}=https://127.0.0.1:{}", ports[i].1))
            .collect::<Vec<_>>()
            .join(",");
        let members: Vec<TlsMember> = (0..3)
            .map(|i| {
                spawn_member(
                    kind,
                    dir.path(),
                    &format!("m{i}"),
                    format!("http://127.0.0.1:{}", ports[i].0),
                    &format!("https://127.0.0.1:{}", ports[i].1),
                    &initial,
                    "new",
                    &["--peer-auto-tls"],
                )
            })
            .collect();
        for m in &members {
            assert!(
                eventually(150, || ctl(&m.client_url, &[], &["endpoint", "health"])
                    .status
                    .success()),
                "{kind:?} {}: not healthy; log:\n{}",
                m.client_url,
                std::fs::read_to_string(&m.log).unwrap_or_default()
            );
        }
        assert!(ctl(&members[0].client_url, &[], &["put", "auto", "peer"])
            .status
            .success());
        let got = ctl(
            &members[2].client_url,
            &[],
            &["get", "auto", "--print-value-only"],
        );
        assert_eq!(
            String::from_utf8_lossy(&got.stdout).trim(),
            "peer",
            "{kind:?}"
        );
        if kind == Kind::Ours {
            assert!(dir.path().join("m0.etcd/fixtures/peer/cert.pem").exists());
        }
    }
}

/// `endpoint status` of every member: (member id, is leader).
fn tls_statuses(members: &[TlsMember], tls: &[&str]) -> Vec<(u64, bool)> {
    members
        .iter()
        .map(|m| {
            let out = ctl(&m.client_url, tls, &["endpoint", "status", "-w", "json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let st = &v[0]["Status"];
            (
                st["header"]["member_id"].as_u64().unwrap_or(0),
                st["leader"].as_u64().is_some_and(|l| l != 0)
                    && st["leader"] == st["header"]["member_id"],
            )
        })
        .collect()
}

/// A running etcd 3.4 cluster with peer TLS (the guides' setup) takes a
/// member of ours on an etcd member's data directory (a rolling
/// migration's first step, tests/rolling_migration.rs has all of it):
/// raft, etcd's peer API and the lease forwarding both ways run inside
/// the same mutual TLS as etcd's own members.
#[test]
fn a_tls_etcd_cluster_takes_a_member_of_ours() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<(u16, u16)> = (0..4)
        .map(|_| (common::free_port(), common::free_port()))
        .collect();
    let certs = p.certs();
    let (mut members, initial) = tls_cluster(Kind::Real, dir.path(), &ports, &certs);
    let tls = client_flags(&certs);
    let ok = |m: &TlsMember, args: &[&str]| {
        let out = ctl(&m.client_url, &tls, args);
        assert!(
            out.status.success(),
            "{args:?} at {}: {}",
            m.client_url,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    ok(&members[1], &["put", "from-etcd", "1"]);
    // Member 0 stops (SIGTERM) and comes back as ours on its data dir.
    common::send_signal(members[0].child.id(), "TERM");
    let _ = members[0].child.wait();
    members[0] = tls_member(
        Kind::Ours,
        dir.path(),
        "m0",
        ports[0].0,
        ports[0].1,
        &initial,
        "new",
        &certs,
        &certs.server,
        &certs.ca,
    );
    assert!(
        eventually(150, || ctl(
            &members[0].client_url,
            &tls,
            &["endpoint", "health"]
        )
        .status
        .success()),
        "ours did not join: {}",
        std::fs::read_to_string(&members[0].log).unwrap_or_default()
    );
    let ours_log = std::fs::read_to_string(&members[0].log).unwrap();
    assert!(
        ours_log.contains("peer speaks etcd's protocol"),
        "{ours_log}"
    );
    ok(&members[0], &["put", "from-ours", "2"]);
    for m in &members {
        assert!(
            eventually(50, || ctl(
                &m.client_url,
                &tls,
                &["get", "from-ours", "--consistency=s"]
            )
            .stdout
            .ends_with(b"from-ours\n2\n")),
            "{} does not have our write",
            m.client_url
        );
        assert!(ok(m, &["get", "from-etcd"]).ends_with("from-etcd\n1\n"));
    }
    // Leases across kinds, both ways: first to an etcd leader through
    // ours, then (ours leading) to ours through an etcd member.
    let lease = ok(&members[1], &["lease", "grant", "300"]);
    let lease = lease.split_whitespace().nth(1).unwrap().to_string();
    assert!(ok(&members[0], &["lease", "keep-alive", "--once", &lease])
        .contains("keepalived with TTL(300)"));
    let st = tls_statuses(&members, &tls);
    let leader = st.iter().position(|s| s.1).expect("a leader");
    assert_ne!(leader, 0, "etcd handed leadership to an etcd member");
    ok(
        &members[leader],
        &["move-leader", &format!("{:x}", st[0].0)],
    );
    assert!(eventually(50, || tls_statuses(&members, &tls)[0].1));
    assert!(ok(&members[2], &["lease", "keep-alive", "--once", &lease])
        .contains("keepalived with TTL(300)"));
    ok(&members[2], &["put", "led-by-ours", "3"]);
    // The same data everywhere (etcd's HashKV on both kinds).
    let hashes: Vec<String> = members
        .iter()
        .map(|m| {
            let mut h = String::new();
            eventually(50, || {
                let out = ctl(
                    &m.client_url,
                    &tls,
                    &["get", "led-by-ours", "--consistency=s"],
                );
                if !out.stdout.ends_with(b"3\n") {
                    return false;
                }
                h = ok(m, &["endpoint", "hashkv"])
                    .split(", ")
                    .nth(1)
                    .unwrap_or("")
                    .to_string();
                true
            });
            h
        })
        .collect();
    assert!(!hashes[0].is_empty());
    assert!(hashes.iter().all(|h| h == &hashes[0]), "{hashes:?}");
}
