//! The real `etcdctl` (Debian's etcd-client, v3.4) against the real
//! `etcd-server` binary, the way an operator uses it.

mod common;
use common::{Kind, Server};
use std::process::Command;

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn put_get_with_options() {
    let s = Server::start(Kind::Ours);
    assert_eq!(s.ctl_ok(&["put", "foo", "bar"]), "OK\n");
    assert_eq!(s.ctl_ok(&["get", "foo"]), "foo\nbar\n");
    for (k, v) in [("foo1", "a"), ("foo2", "b"), ("fop", "c"), ("zzz", "d")] {
        s.ctl_ok(&["put", k, v]);
    }
    assert_eq!(
        s.ctl_ok(&["get", "foo", "--prefix", "--keys-only"]),
        "foo\n\nfoo1\n\nfoo2\n\n"
    );
    assert_eq!(
        s.ctl_ok(&["get", "foo", "--prefix", "--limit", "2"]),
        "foo\nbar\nfoo1\na\n"
    );
    assert_eq!(
        s.ctl_ok(&["get", "fop", "--from-key", "--print-value-only"]),
        "c\nd\n"
    );
    assert_eq!(
        s.ctl_ok(&[
            "get",
            "foo",
            "--prefix",
            "--sort-by",
            "VALUE",
            "--order",
            "DESCEND",
            "--print-value-only"
        ]),
        "bar\nb\na\n"
    );
    // History: revision 2 is the first put.
    s.ctl_ok(&["put", "foo", "baz"]);
    assert_eq!(s.ctl_ok(&["get", "foo", "--rev", "2"]), "foo\nbar\n");
    assert_eq!(s.ctl_ok(&["get", "foo"]), "foo\nbaz\n");

    let j = json(&s.ctl_ok(&["get", "foo", "--prefix", "--limit", "1", "-w", "json"]));
    assert_eq!(j["header"]["revision"], 7);
    assert_eq!(j["count"], 3);
    assert_eq!(j["more"], true);
    let kv = &j["kvs"][0];
    assert_eq!(kv["key"], common::base64("foo"));
    assert_eq!(kv["value"], common::base64("baz"));
    assert_eq!(kv["create_revision"], 2);
    assert_eq!(kv["mod_revision"], 7);
    assert_eq!(kv["version"], 2);

    // (etcdctl 3.4 has no --count-only; count_only is covered by the
    // differential test over gRPC.)

    let err = s.ctl_err(&["get", "foo", "--rev", "100"]);
    assert!(
        err.contains("etcdserver: mvcc: required revision is a future revision"),
        "{err}"
    );
}

#[test]
fn delete_with_prefix_and_prev_kv() {
    let s = Server::start(Kind::Ours);
    for (k, v) in [("a/1", "x"), ("a/2", "y"), ("b", "z")] {
        s.ctl_ok(&["put", k, v]);
    }
    assert_eq!(
        s.ctl_ok(&["del", "a/", "--prefix", "--prev-kv"]),
        "2\na/1\nx\na/2\ny\n"
    );
    assert_eq!(s.ctl_ok(&["del", "nothing"]), "0\n");
    assert_eq!(s.ctl_ok(&["get", "", "--from-key", "--keys-only"]), "b\n\n");
    let j = json(&s.ctl_ok(&["get", "b", "-w", "json"]));
    // The empty delete did not bump the revision: 3 puts + 1 delete.
    assert_eq!(j["header"]["revision"], 5);
}

#[test]
fn txn_from_stdin() {
    let s = Server::start(Kind::Ours);
    s.ctl_ok(&["put", "key1", "v1"]);
    let input = "mod(\"key1\") > \"0\"\n\nput key1 \"overwrote-key1\"\nget key1\n\nput key1 \"created-key1\"\n\n";
    let out = s.etcdctl_stdin(&["txn"], input);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "SUCCESS\n\nOK\n\nkey1\noverwrote-key1\n"
    );

    let input = "value(\"key1\") = \"nope\"\n\nput key1 \"x\"\n\nput key2 \"failure-branch\"\n\n";
    let out = s.etcdctl_stdin(&["txn"], input);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "FAILURE\n\nOK\n");
    assert_eq!(
        s.ctl_ok(&["get", "key2", "--print-value-only"]),
        "failure-branch\n"
    );

    // Interactive mode reads the same sections from stdin.
    let input = "version(\"key2\") = \"1\"\n\ndel key2\n\n\n";
    let out = s.etcdctl_stdin(&["txn", "-i"], input);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("SUCCESS") && stdout.contains("\n1\n"),
        "{stdout}"
    );
}

#[test]
fn compaction_then_old_revisions_fail() {
    let s = Server::start(Kind::Ours);
    for v in ["1", "2", "3", "4"] {
        s.ctl_ok(&["put", "k", v]);
    }
    assert_eq!(s.ctl_ok(&["compaction", "3"]), "compacted revision 3\n");
    let err = s.ctl_err(&["get", "k", "--rev", "2"]);
    assert!(
        err.contains("etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
    assert_eq!(
        s.ctl_ok(&["get", "k", "--rev", "3", "--print-value-only"]),
        "2\n"
    );
    let err = s.ctl_err(&["compaction", "2"]);
    assert!(
        err.contains("required revision has been compacted"),
        "{err}"
    );
    assert_eq!(
        s.ctl_ok(&["compaction", "--physical", "4"]),
        "compacted revision 4\n"
    );
    assert_eq!(s.ctl_ok(&["get", "k", "--print-value-only"]), "4\n");
}

#[test]
fn endpoint_status_health_and_member_list() {
    let s = Server::start(Kind::Ours);
    s.ctl_ok(&["put", "a", "b"]);
    // etcdctl 3.4 prints the health line on stderr.
    let out = s.etcdctl(&["endpoint", "health"]);
    let health = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && health.contains("is healthy"),
        "{health}"
    );
    let table = s.ctl_ok(&["endpoint", "status", "-w", "table"]);
    assert!(table.contains(&s.client_url), "{table}");
    assert!(table.contains("IS LEADER"), "{table}");
    let j = json(&s.ctl_ok(&["endpoint", "status", "-w", "json"]));
    let st = &j[0]["Status"];
    assert_eq!(st["leader"], st["header"]["member_id"]);
    assert!(st["raftIndex"].as_u64().unwrap() >= 2);
    assert!(st["dbSize"].as_u64().unwrap() > 0);
    let members = s.ctl_ok(&["member", "list", "-w", "table"]);
    assert!(
        members.contains("default")
            && members.contains(&s.peer_url)
            && members.contains(&s.client_url),
        "{members}"
    );
    assert!(members.contains("started"), "{members}");
    let alarms = s.ctl_ok(&["alarm", "list"]);
    assert_eq!(alarms, "");
}

#[test]
fn kill_9_and_restart_keeps_data_and_revisions() {
    let mut s = Server::start(Kind::Ours);
    for i in 0..20 {
        s.ctl_ok(&["put", &format!("k{i:02}"), &format!("v{i}")]);
    }
    s.ctl_ok(&["del", "k00"]);
    let before = s.ctl_ok(&["get", "k", "--prefix", "-w", "json"]);
    s.kill9();
    s.restart();
    let after = s.ctl_ok(&["get", "k", "--prefix", "-w", "json"]);
    let (b, a) = (json(&before), json(&after));
    assert_eq!(b["kvs"], a["kvs"]);
    assert_eq!(b["header"]["revision"], a["header"]["revision"]);
    assert_eq!(a["header"]["revision"], 22);
    // And it keeps going from there.
    s.ctl_ok(&["put", "k99", "x"]);
    let j = json(&s.ctl_ok(&["get", "k99", "-w", "json"]));
    assert_eq!(j["kvs"][0]["mod_revision"], 23);
}

#[test]
fn sigterm_stops_gracefully_and_restart_works() {
    let mut s = Server::start(Kind::Ours);
    s.ctl_ok(&["put", "a", "1"]);
    let status = s.terminate();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        s.log_text()
    );
    s.restart();
    assert_eq!(s.ctl_ok(&["get", "a", "--print-value-only"]), "1\n");
}

#[test]
fn flag_and_env_conflict_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_etcd-server"))
        .args(["--name", "a"])
        .env("ETCD_NAME", "b")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ETCD_NAME") && err.contains("--name"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_etcd-server"))
        .arg("--bogus")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--bogus"));
    let out = Command::new(env!("CARGO_BIN_EXE_etcd-server"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("etcd Version: "));
}

#[test]
fn oversized_requests_are_refused_with_etcds_error() {
    let s = Server::start_with(Kind::Ours, &["--max-request-bytes", "1024"]);
    let big = "x".repeat(2000);
    let out = s.etcdctl_stdin(&["put", "big"], &big);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcdserver: request is too large"), "{err}");
    // Nothing was written, and smaller requests still work.
    assert_eq!(s.ctl_ok(&["get", "big"]), "");
    let out = s.etcdctl_stdin(&["put", "small"], &"y".repeat(500));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn http_get(url: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    conn.read_to_string(&mut resp).unwrap();
    let status = resp.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

#[test]
fn http_health_version_and_unknown_paths() {
    let s = Server::start(Kind::Ours);
    let (code, body) = http_get(&s.client_url, "/health");
    assert_eq!(code, 200);
    assert!(body.contains(r#"{"health":"true","reason":""}"#), "{body}");
    let (code, body) = http_get(&s.client_url, "/version");
    assert_eq!(code, 200);
    let v = json(body.trim().lines().find(|l| l.starts_with('{')).unwrap());
    assert_eq!(v["etcdserver"], "3.5.0");
    assert_eq!(http_get(&s.client_url, "/no-such-path").0, 404);
    // gRPC keeps working on the same port afterwards.
    assert_eq!(s.ctl_ok(&["put", "k", "v"]), "OK\n");
}

#[test]
fn raft_log_compaction_keeps_data_across_kill_9() {
    let mut s = Server::start_with(
        Kind::Ours,
        &[
            "--snapshot-count",
            "20",
            "--experimental-snapshot-catchup-entries",
            "5",
        ],
    );
    for i in 0..100 {
        s.ctl_ok(&["put", &format!("k{i:03}"), &format!("v{i}")]);
    }
    assert!(
        s.log_text().contains("compacted the raft log"),
        "{}",
        s.log_text()
    );
    let before = s.ctl_ok(&["get", "k", "--prefix", "-w", "json"]);
    s.kill9();
    s.restart();
    let after = s.ctl_ok(&["get", "k", "--prefix", "-w", "json"]);
    let (b, a) = (json(&before), json(&after));
    assert_eq!(b["kvs"], a["kvs"]);
    assert_eq!(a["header"]["revision"], 101);
    for i in 100..150 {
        s.ctl_ok(&["put", &format!("k{i:03}"), "x"]);
    }
    assert!(s.terminate().success());
    s.restart();
    let j = json(&s.ctl_ok(&["get", "k", "--prefix", "-w", "json"]));
    assert_eq!(j["count"], 150);
    assert_eq!(j["header"]["revision"], 151);
}

/// grpc.health.v1.Health answers SERVING for the server (""), as etcd's
/// does (gRPC health probes, load balancers); an unknown service is
/// NOT_FOUND on both.
#[test]
fn grpc_health_service_is_serving() {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut answers = Vec::new();
    for kind in [Kind::Ours, Kind::Real] {
        let s = Server::start(kind);
        answers.push(rt.block_on(async {
            let mut h = HealthClient::new(s.channel().await);
            let all = h
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status);
            let other = h
                .check(HealthCheckRequest {
                    service: "no.such.Service".into(),
                })
                .await
                .map_err(|e| e.code());
            (
                all.map_err(|e| e.code()),
                other.map(|r| r.into_inner().status),
            )
        }));
    }
    assert_eq!(answers[0], answers[1], "ours vs etcd 3.4");
    assert_eq!(answers[1].0, Ok(1), "SERVING");
    assert_eq!(answers[1].1, Err(tonic::Code::NotFound));
}
