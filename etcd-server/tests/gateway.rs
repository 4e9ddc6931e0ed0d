//! The JSON gateway (`/v3/*`) against the real etcd 3.4's, with curl: the
//! requests of etcd's documentation and of its e2e tests
//! (`tests/e2e/v3_curl_test.go`), the same on both servers, answers
//! compared (HTTP status, JSON body). Compared exactly but for what two
//! clusters cannot share: the header's `cluster_id`, `member_id` and
//! `raft_term`, auth tokens, and, where the two JSON decoders word a
//! malformed body differently, the message (status and code still must
//! match).
//!
//! Also: the streams (watch, lease keepalive, snapshot) line by line, and
//! `Maintenance.Hash` (through the gateway) as etcd computes it.

mod common;

use common::cluster::Cluster;
use common::{Kind, Server};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// `curl -X <method> <url><path> -d <body>` with extra headers: (HTTP
/// status, body).
fn curl(url: &str, method: &str, path: &str, body: &str, headers: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-S", "-X", method, "-w", "\n%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if !body.is_empty() {
        cmd.args(["-d", body]);
    }
    let out = cmd.arg(format!("{url}{path}")).output().expect("curl");
    assert!(out.status.success(), "curl {path}: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// A body with what differs between two clusters blanked: header ids and
/// terms (nested headers too), auth tokens.
fn normalized(body: &str) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    match k.as_str() {
                        "cluster_id" | "member_id" | "raft_term" | "token" => {
                            *v = Value::String("_".into())
                        }
                        _ => walk(v),
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut v: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"));
    walk(&mut v);
    v
}

/// How a request's answers are compared.
#[derive(Clone, Copy, PartialEq)]
enum Compare {
    /// Status and normalized JSON body.
    Exact,
    /// Status, JSON `code`, and an `error` field on both (the messages of
    /// two JSON decoders).
    CodeOnly,
    /// Status and body text (plain-text answers).
    Text,
    /// As `Exact` without the top-level header: etcd 3.4 leaves it out
    /// of Alarm answers, etcd 3.5 fills it in, as this server does.
    NoHeader,
}

/// The same request to both servers; the answers compared. Returns ours.
fn both(real: &Server, ours: &Server, path: &str, body: &str, how: Compare) -> (u16, String) {
    both_method(real, ours, "POST", path, body, how)
}

fn both_method(
    real: &Server,
    ours: &Server,
    method: &str,
    path: &str,
    body: &str,
    how: Compare,
) -> (u16, String) {
    let (rs, rb) = curl(&real.client_url, method, path, body, &[]);
    let (os, ob) = curl(&ours.client_url, method, path, body, &[]);
    let what = format!("{method} {path} {body}\n etcd: {rs} {rb}\n ours: {os} {ob}");
    assert_eq!(rs, os, "HTTP status differs: {what}");
    match how {
        Compare::Exact => assert_eq!(normalized(&rb), normalized(&ob), "body differs: {what}"),
        Compare::CodeOnly => {
            let (r, o) = (normalized(&rb), normalized(&ob));
            assert_eq!(r["code"], o["code"], "code differs: {what}");
            assert!(r["error"].is_string() && o["error"].is_string(), "{what}");
        }
        Compare::Text => assert_eq!(rb, ob, "body differs: {what}"),
        Compare::NoHeader => {
            let (mut r, mut o) = (normalized(&rb), normalized(&ob));
            assert!(o["header"]["revision"].is_string(), "{what}");
            r.as_object_mut().unwrap().remove("header");
            o.as_object_mut().unwrap().remove("header");
            assert_eq!(r, o, "body differs: {what}");
        }
    }
    (os, ob)
}

#[test]
fn kv_lease_txn_and_errors_answer_like_etcd() {
    let real = Server::start(Kind::Real);
    let ours = Server::start(Kind::Ours);
    let exact = Compare::Exact;
    // etcd's documentation (dev-guide/api_grpc_gateway.md) and e2e tests.
    both(
        &real,
        &ours,
        "/v3/kv/put",
        r#"{"key": "Zm9v", "value": "YmFy"}"#,
        exact,
    );
    both(&real, &ours, "/v3/kv/range", r#"{"key": "Zm9v"}"#, exact);
    both(
        &real,
        &ours,
        "/v3beta/kv/range",
        r#"{"key": "Zm9v"}"#,
        exact,
    );
    both(
        &real,
        &ours,
        "/v3/kv/put",
        r#"{"key":"Zm9v","value":"YmF6","prev_kv":true}"#,
        exact,
    );
    for (k, v) in [("a", "MQ=="), ("b", "Mg=="), ("c", "Mw==")] {
        let body = format!(r#"{{"key":"{}","value":"{v}"}}"#, common::base64(k));
        both(&real, &ours, "/v3/kv/put", &body, exact);
    }
    // Ranges: prefix, limit, count only, keys only, descending, camelCase
    // names and numbers in the request.
    let (a, d) = (common::base64("a"), common::base64("d"));
    for body in [
        format!(r#"{{"key":"{a}","range_end":"{d}"}}"#),
        format!(r#"{{"key":"{a}","range_end":"{d}","limit":"2"}}"#),
        format!(r#"{{"key":"{a}","rangeEnd":"{d}","limit":2,"count_only":true}}"#),
        format!(
            r#"{{"key":"{a}","range_end":"{d}","keys_only":true,"sort_order":"DESCEND","sort_target":"MOD"}}"#
        ),
        format!(r#"{{"key":"{a}","range_end":"{d}","sort_order":2,"revision":"4"}}"#),
        // Unknown fields are ignored; only the first JSON value is read.
        format!(r#"{{"key":"{a}","bogus":[1]}} trailing"#),
    ] {
        both(&real, &ours, "/v3/kv/range", &body, exact);
    }
    // The e2e txn and its malformed twin ("was crashing etcd server").
    let txn = r#"{"compare":[{"key":"Zm9v","result":"EQUAL","target":"CREATE","create_revision":"0"}],"success":[{"request_put":{"key":"Zm9v","value":"YmFy"}}],"failure":[{"request_range":{"key":"Zm9v"}}]}"#;
    both(&real, &ours, "/v3/kv/txn", txn, exact);
    let malformed = r#"{"compare":[{"result":0,"target":1,"key":"Zm9v","TargetUnion":null}],"success":[{"Request":{"RequestPut":{"key":"Zm9v","value":"YmFy"}}}]}"#;
    both(&real, &ours, "/v3/kv/txn", malformed, exact);
    both(
        &real,
        &ours,
        "/v3/kv/deleterange",
        &format!(r#"{{"key":"{a}","range_end":"{d}","prev_kv":true}}"#),
        exact,
    );
    // Errors with their gRPC code and HTTP status.
    both(&real, &ours, "/v3/kv/range", "", exact); // key is not provided
    both(
        &real,
        &ours,
        "/v3/kv/compaction",
        r#"{"revision":"100"}"#,
        exact,
    );
    both(
        &real,
        &ours,
        "/v3/kv/compaction",
        r#"{"revision":"3","physical":true}"#,
        exact,
    );
    both(
        &real,
        &ours,
        "/v3/kv/range",
        r#"{"key":"Zm9v","revision":"2"}"#,
        exact,
    );
    both(
        &real,
        &ours,
        "/v3/kv/put",
        r#"{"key":"Zm9v","value":"YmFy","lease":"99"}"#,
        exact,
    );
    both(
        &real,
        &ours,
        "/v3/kv/range",
        r#"{"key": nope}"#,
        Compare::CodeOnly,
    );
    both(
        &real,
        &ours,
        "/v3/kv/range",
        r#"{"key":"Zm9v","limit":"x"}"#,
        Compare::CodeOnly,
    );
    // Leases, under both paths of etcd.
    both(
        &real,
        &ours,
        "/v3/lease/grant",
        r#"{"TTL":"60","ID":"1234"}"#,
        exact,
    );
    both(
        &real,
        &ours,
        "/v3/kv/put",
        r#"{"key":"bGVhc2Vk","value":"dg==","lease":"1234"}"#,
        exact,
    );
    both(
        &real,
        &ours,
        "/v3/lease/grant",
        r#"{"TTL":"60","ID":"1234"}"#,
        exact,
    ); // exists
       // The remaining TTL may be a second apart: left out.
    let ttl = |s: &Server| {
        let (code, b) = curl(
            &s.client_url,
            "POST",
            "/v3/kv/lease/timetolive",
            r#"{"ID":"1234","keys":true}"#,
            &[],
        );
        let mut v = normalized(&b);
        v["TTL"] = Value::Null;
        (code, v)
    };
    let (r, o) = (ttl(&real), ttl(&ours));
    assert_eq!(r, o);
    assert_eq!(o.1["keys"], serde_json::json!(["bGVhc2Vk"]), "{o:?}");
    both(&real, &ours, "/v3/lease/leases", "{}", exact);
    both(&real, &ours, "/v3/kv/lease/leases", "{}", exact);
    both(&real, &ours, "/v3/lease/revoke", r#"{"ID":"1234"}"#, exact);
    both(
        &real,
        &ours,
        "/v3/kv/lease/revoke",
        r#"{"ID":"1234"}"#,
        exact,
    ); // not found
       // Alarms, elections and locks (e2e).
    both(
        &real,
        &ours,
        "/v3/maintenance/alarm",
        r#"{"action":"GET"}"#,
        Compare::NoHeader,
    );
    both(
        &real,
        &ours,
        "/v3/maintenance/alarm",
        r#"{"action":"DEACTIVATE","memberID":"1","alarm":"NOSPACE"}"#,
        Compare::NoHeader,
    );
    both(
        &real,
        &ours,
        "/v3/election/proclaim",
        r#"{"value":"djI="}"#,
        exact,
    );
    both(&real, &ours, "/v3/election/resign", "{}", exact);
    both(
        &real,
        &ours,
        "/v3/lease/grant",
        r#"{"TTL":"60","ID":"77"}"#,
        exact,
    );
    let campaign = r#"{"name":"L2VsZWN0aW9uLXByZWZpeA==","value":"djE=","lease":"77"}"#;
    let (_, c) = both(&real, &ours, "/v3/election/campaign", campaign, exact);
    let leader = normalized(&c)["leader"].clone();
    let proclaim = serde_json::json!({"leader": leader, "value": "djI="}).to_string();
    both(&real, &ours, "/v3/election/proclaim", &proclaim, exact);
    both(
        &real,
        &ours,
        "/v3/election/leader",
        r#"{"name":"L2VsZWN0aW9uLXByZWZpeA=="}"#,
        exact,
    );
    let resign = serde_json::json!({"leader": leader}).to_string();
    both(&real, &ours, "/v3/election/resign", &resign, exact);
    let (_, l) = both(
        &real,
        &ours,
        "/v3/lock/lock",
        r#"{"name":"bXktbG9jaw==","lease":"77"}"#,
        exact,
    );
    let key = normalized(&l)["key"].clone();
    both(
        &real,
        &ours,
        "/v3/lock/unlock",
        &serde_json::json!({ "key": key }).to_string(),
        exact,
    );
    // What is not a route.
    both(&real, &ours, "/v3/kv/nothing", "{}", Compare::Text);
    both_method(&real, &ours, "GET", "/v3/kv/range", "", Compare::Text);
    let (_, cors) = curl_headers(&ours.client_url, "/v3/kv/range", r#"{"key":"Zm9v"}"#);
    for h in [
        "access-control-allow-origin: *",
        "access-control-allow-methods: POST, GET, OPTIONS, PUT, DELETE",
        "access-control-allow-headers: accept, content-type, authorization",
        "grpc-metadata-content-type: application/grpc",
        "content-type: application/json",
    ] {
        let found = cors.lines().any(|l| {
            let (name, value) = l.split_once(": ").unwrap_or((l, ""));
            format!("{}: {value}", name.to_ascii_lowercase()) == h
        });
        assert!(found, "{h} missing: {cors}");
    }
}

/// `curl -i`: (status line, headers).
fn curl_headers(url: &str, path: &str, body: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "-i", "-X", "POST", "-d", body])
        .arg(format!("{url}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (head, _) = text.split_once("\r\n\r\n").unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap();
    (status.to_string(), headers.to_string())
}

/// `/v3/auth/authenticate` as `name`: (the answer, its token).
fn login(s: &Server, name: &str, password: &str) -> (String, String) {
    let body = serde_json::json!({ "name": name, "password": password }).to_string();
    let (code, answer) = curl(&s.client_url, "POST", "/v3/auth/authenticate", &body, &[]);
    assert_eq!(code, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    (answer, token)
}

#[test]
fn auth_through_the_gateway_answers_like_etcd() {
    let real = Server::start(Kind::Real);
    let ours = Server::start(Kind::Ours);
    let exact = Compare::Exact;
    // e2e testV3CurlAuth.
    both(
        &real,
        &ours,
        "/v3/auth/user/add",
        r#"{"name":"root","password":"toor"}"#,
        exact,
    );
    both(
        &real,
        &ours,
        "/v3/auth/role/add",
        r#"{"name":"root"}"#,
        exact,
    );
    both(
        &real,
        &ours,
        "/v3/auth/user/grant",
        r#"{"user":"root","role":"root"}"#,
        exact,
    );
    both(
        &real,
        &ours,
        "/v3/auth/user/add",
        r#"{"name":"u","password":"p"}"#,
        exact,
    );
    both(&real, &ours, "/v3/auth/role/add", r#"{"name":"r"}"#, exact);
    let perm = r#"{"name":"r","perm":{"permType":"READWRITE","key":"Zm9v","range_end":"Zm9w"}}"#;
    both(&real, &ours, "/v3/auth/role/grant", perm, exact);
    both(
        &real,
        &ours,
        "/v3/auth/user/grant",
        r#"{"user":"u","role":"r"}"#,
        exact,
    );
    both(&real, &ours, "/v3/auth/role/get", r#"{"role":"r"}"#, exact);
    both(&real, &ours, "/v3/auth/user/list", "{}", exact);
    both(&real, &ours, "/v3/auth/enable", "{}", exact);
    // Without a token; with a wrong password; then with each one's token.
    both(
        &real,
        &ours,
        "/v3/kv/put",
        r#"{"key":"Zm9v","value":"YmFy"}"#,
        exact,
    );
    both(
        &real,
        &ours,
        "/v3/auth/authenticate",
        r#"{"name":"u","password":"nope"}"#,
        exact,
    );
    let (real_tok, rt) = login(&real, "u", "p");
    let (our_tok, ot) = login(&ours, "u", "p");
    assert_eq!(normalized(&real_tok), normalized(&our_tok));
    let answer = |url: &str, tok: &str, path: &str, body: &str| {
        let h = format!("Authorization: {tok}");
        let (s, b) = curl(url, "POST", path, body, &[&h]);
        (s, normalized(&b))
    };
    for (path, body) in [
        ("/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#),
        ("/v3/kv/range", r#"{"key":"Zm9v"}"#),
        ("/v3/kv/put", r#"{"key":"b3RoZXI=","value":"YmFy"}"#), // no permission
        ("/v3/auth/disable", "{}"),                             // not root
    ] {
        assert_eq!(
            answer(&real.client_url, &rt, path, body),
            answer(&ours.client_url, &ot, path, body),
            "{path} {body}"
        );
    }
    // The token as gRPC metadata, the way grpc-gateway passes any.
    let h = format!("Grpc-Metadata-Token: {ot}");
    let (s, b) = curl(
        &ours.client_url,
        "POST",
        "/v3/kv/range",
        r#"{"key":"Zm9v"}"#,
        &[&h],
    );
    assert_eq!(s, 200, "{b}");
    let (_, real_root) = login(&real, "root", "toor");
    let (_, our_root) = login(&ours, "root", "toor");
    assert_eq!(
        answer(&real.client_url, &real_root, "/v3/auth/disable", "{}"),
        answer(&ours.client_url, &our_root, "/v3/auth/disable", "{}"),
    );
}

/// `curl -N` of a streaming route, read line by line as the answers come
/// (bounded by count: a watch never ends by itself).
struct Stream {
    child: std::process::Child,
    reader: BufReader<std::process::ChildStdout>,
}

impl Stream {
    fn open(url: &str, path: &str, body: &str) -> Stream {
        let mut child = Command::new("curl")
            .args(["-s", "-N", "-X", "POST", "-d", body])
            .arg(format!("{url}{path}"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let reader = BufReader::new(child.stdout.take().unwrap());
        Stream { child, reader }
    }

    /// The next line; None when the answer ended.
    fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line).unwrap() {
            0 => None,
            _ => Some(line.trim_end().to_string()),
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first `lines` lines of a streaming route (fewer if it ends).
fn stream_lines(url: &str, path: &str, body: &str, lines: usize) -> Vec<String> {
    let mut s = Stream::open(url, path, body);
    std::iter::from_fn(|| s.line()).take(lines).collect()
}

#[test]
fn streams_answer_like_etcd() {
    let real = Server::start(Kind::Real);
    let ours = Server::start(Kind::Ours);
    for s in [&real, &ours] {
        for v in ["YmFy", "YmF6"] {
            let (code, b) = curl(
                &s.client_url,
                "POST",
                "/v3/kv/put",
                &format!(r#"{{"key":"Zm9v","value":"{v}"}}"#),
                &[],
            );
            assert_eq!(code, 200, "{b}");
        }
    }
    // Watch from history: created, then both events; the stream stays
    // open after the body ends (read by count, then dropped).
    let watch = r#"{"create_request":{"key":"Zm9v","start_revision":"2"}}"#;
    let norm = |v: Vec<String>| v.iter().map(|l| normalized(l)).collect::<Vec<_>>();
    let r = norm(stream_lines(&real.client_url, "/v3/watch", watch, 2));
    let o = norm(stream_lines(&ours.client_url, "/v3/watch", watch, 2));
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r, o);
    // A compacted start revision: created, then canceled with the
    // compaction revision.
    for s in [&real, &ours] {
        curl(
            &s.client_url,
            "POST",
            "/v3/kv/compaction",
            r#"{"revision":"3"}"#,
            &[],
        );
    }
    let r = norm(stream_lines(&real.client_url, "/v3/watch", watch, 2));
    let o = norm(stream_lines(&ours.client_url, "/v3/watch", watch, 2));
    assert_eq!(r, o);
    // Two requests in one body (a stream of JSON values); a put after
    // both are created is seen live by the second.
    let two =
        r#"{"create_request":{"key":"eA=="}} {"create_request":{"key":"Zm9v","watch_id":"7"}}"#;
    let mut answers = Vec::new();
    for s in [&real, &ours] {
        let mut w = Stream::open(&s.client_url, "/v3/watch", two);
        let mut lines: Vec<Value> = (0..2).map(|_| normalized(&w.line().unwrap())).collect();
        curl(
            &s.client_url,
            "POST",
            "/v3/kv/put",
            r#"{"key":"Zm9v","value":"bGl2ZQ=="}"#,
            &[],
        );
        lines.push(normalized(&w.line().unwrap()));
        answers.push(lines);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[1][2]["result"]["watch_id"], "7", "{answers:?}");
    assert_eq!(
        answers[1][2]["result"]["events"][0]["kv"]["value"],
        "bGl2ZQ=="
    );
    // Lease keepalive: one answer per request; the stream ends with the
    // body.
    for s in [&real, &ours] {
        curl(
            &s.client_url,
            "POST",
            "/v3/lease/grant",
            r#"{"TTL":"60","ID":"5"}"#,
            &[],
        );
    }
    let ka = r#"{"ID":"5"} {"ID":"5"}"#;
    let r = stream_lines(&real.client_url, "/v3/lease/keepalive", ka, 10);
    let o = stream_lines(&ours.client_url, "/v3/lease/keepalive", ka, 10);
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(norm(r), norm(o));
    // An unknown lease: TTL 0 (etcd answers, it does not fail).
    let r = stream_lines(&real.client_url, "/v3/lease/keepalive", r#"{"ID":"6"}"#, 10);
    let o = stream_lines(&ours.client_url, "/v3/lease/keepalive", r#"{"ID":"6"}"#, 10);
    assert_eq!(norm(r), norm(o));
    // A snapshot as result lines: blobs that make a bbolt file, then its
    // sha256 (etcd's bytes differ; ours are checked).
    let lines = stream_lines(
        &ours.client_url,
        "/v3/maintenance/snapshot",
        "{}",
        usize::MAX,
    );
    let mut file = Vec::new();
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap();
        let blob = v["result"]["blob"].as_str().unwrap_or_default();
        file.extend(decode_base64(blob));
    }
    let (db, sha) = file.split_at(file.len() - 32);
    assert_eq!(
        ring::digest::digest(&ring::digest::SHA256, db).as_ref(),
        sha
    );
    etcd_bbolt::Reader::from_bytes(db.to_vec())
        .unwrap()
        .check()
        .unwrap();
    let last: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert!(last["result"].get("remaining_bytes").is_none(), "{last}");
}

fn decode_base64(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | A.iter().position(|&a| a == c).unwrap() as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// `Maintenance.Hash` is etcd's hash of its whole backend: over our
/// snapshot file (etcd's buckets) it is what etcd's `backend.Hash` folds,
/// and the members of a cluster agree.
#[test]
fn maintenance_hash_is_etcds_backend_hash() {
    let c = Cluster::start(Kind::Ours, 3);
    for i in 0..20 {
        c.put(0, &format!("k{i}"), "v");
    }
    c.ctl_ok(0, &["lease", "grant", "100"]);
    c.ctl_ok(0, &["compact", "5"]);
    c.put(0, "last", "v");
    for i in 0..3 {
        c.wait_value(i, "last", "v", std::time::Duration::from_secs(30));
    }
    let hashes: Vec<Value> = (0..3)
        .map(|i| {
            let url = c.members[i].client_url.clone();
            let (code, b) = curl(&url, "POST", "/v3/maintenance/hash", "{}", &[]);
            assert_eq!(code, 200, "{b}");
            let v = normalized(&b);
            assert_eq!(v["header"]["revision"], "22", "{b}");
            v["hash"].clone()
        })
        .collect();
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    // Timed as etcd times it (and HashKV too).
    let url = c.members[0].client_url.clone();
    curl(&url, "POST", "/v3/maintenance/hashkv", "{}", &[]);
    let (_, metrics) = curl(&url, "GET", "/metrics", "", &[]);
    for series in [
        "etcd_mvcc_hash_duration_seconds_count 1",
        "etcd_mvcc_hash_duration_seconds_bucket{le=\"163.84\"} 1",
        "etcd_mvcc_hash_rev_duration_seconds_bucket{le=\"0.01\"}",
    ] {
        assert!(metrics.contains(series), "{series} not in /metrics");
    }
    // etcd's fold over the snapshot's buckets, consistent_index left out.
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("s.db");
    c.ctl_ok(0, &["snapshot", "save", snap.to_str().unwrap()]);
    let mut bytes = std::fs::read(&snap).unwrap();
    bytes.truncate(bytes.len() - 32);
    let db = etcd_bbolt::Reader::from_bytes(bytes).unwrap();
    let mut crc = 0u32;
    for b in db.buckets().unwrap() {
        crc = crc32c::crc32c_append(crc, &b.name);
        db.for_each(&b, |k, v| {
            if !(b.name == b"meta" && k == b"consistent_index") {
                crc = crc32c::crc32c_append(crc, k);
                crc = crc32c::crc32c_append(crc, v);
            }
            Ok(())
        })
        .unwrap();
    }
    assert_eq!(
        hashes[0],
        Value::from(crc),
        "our hash vs etcd's fold of our snapshot"
    );
}

/// The JSON keys of a body, recursively (`a.b`), for answers whose values
/// two servers cannot share (sizes, versions, ids).
fn shape(body: &str) -> Vec<String> {
    fn walk(v: &Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let p = format!("{prefix}{k}");
                    out.push(p.clone());
                    walk(v, &format!("{p}."), out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, prefix, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&normalized(body), "", &mut out);
    out.sort();
    out.dedup();
    out
}

#[test]
fn cluster_and_maintenance_routes_answer_like_etcd() {
    let real = Server::start(Kind::Real);
    let ours = Server::start(Kind::Ours);
    both(
        &real,
        &ours,
        "/v3/kv/put",
        r#"{"key":"Zm9v","value":"YmFy"}"#,
        Compare::Exact,
    );
    both(
        &real,
        &ours,
        "/v3/maintenance/defragment",
        "{}",
        Compare::Exact,
    );
    for (path, body) in [
        ("/v3/cluster/member/list", "{}"),
        ("/v3/maintenance/status", "{}"),
        ("/v3/maintenance/hash", "{}"),
    ] {
        let (rs, rb) = curl(&real.client_url, "POST", path, body, &[]);
        let (os, ob) = curl(&ours.client_url, "POST", path, body, &[]);
        assert_eq!(
            (rs, shape(&rb)),
            (os, shape(&ob)),
            "{path}\n etcd: {rb}\n ours: {ob}"
        );
    }
    // The member list names this member with its URLs.
    let (_, list) = curl(
        &ours.client_url,
        "POST",
        "/v3/cluster/member/list",
        "{}",
        &[],
    );
    let list = normalized(&list);
    assert_eq!(list["members"][0]["name"], "default", "{list}");
    assert_eq!(
        list["members"][0]["clientURLs"][0],
        ours.client_url.as_str(),
        "{list}"
    );
    // Adding a learner and removing it again through the gateway.
    let add = r#"{"peerURLs":["http://127.0.0.1:1"],"isLearner":true}"#;
    let (s, added) = curl(&ours.client_url, "POST", "/v3/cluster/member/add", add, &[]);
    assert_eq!(s, 200, "{added}");
    let added = normalized(&added);
    assert_eq!(added["member"]["isLearner"], true, "{added}");
    let id = added["member"]["ID"].as_str().unwrap().to_string();
    let remove = serde_json::json!({ "ID": id }).to_string();
    let (s, b) = curl(
        &ours.client_url,
        "POST",
        "/v3/cluster/member/remove",
        &remove,
        &[],
    );
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        normalized(&b)["members"].as_array().unwrap().len(),
        1,
        "{b}"
    );
}

#[test]
fn a_disabled_gateway_is_not_served() {
    let real = Server::start_with(Kind::Real, &["--enable-grpc-gateway=false"]);
    let ours = Server::start_with(Kind::Ours, &["--enable-grpc-gateway=false"]);
    for s in [&real, &ours] {
        let (code, b) = curl(
            &s.client_url,
            "POST",
            "/v3/kv/range",
            r#"{"key":"Zm9v"}"#,
            &[],
        );
        assert_eq!(code, 404, "{:?}: {b}", s.kind);
    }
}
