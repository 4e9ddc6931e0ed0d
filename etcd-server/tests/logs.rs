//! `--logger zap --log-outputs stderr,<file>` on this server and the real
//! etcd 3.4: both write zap's JSON lines (keys `level`, `ts`, `caller`,
//! `msg` first, ISO-8601 `ts`) to the file as well; `--logger capnslog`
//! writes etcd 3.4's text lines.

mod common;

use common::{Kind, Server};

/// The first keys of each JSON line in `path`, and the messages.
fn zap_lines(path: &std::path::Path) -> (Vec<Vec<String>>, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut keys = Vec::new();
    let mut msgs = Vec::new();
    for line in text.lines() {
        // serde_json's map sorts keys: read the order from the text.
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        let mut first: Vec<(usize, String)> = v
            .as_object()
            .unwrap()
            .keys()
            .map(|k| (line.find(&format!("\"{k}\":")).unwrap(), k.clone()))
            .collect();
        first.sort();
        keys.push(first.into_iter().take(4).map(|(_, k)| k).collect());
        msgs.push(v["msg"].as_str().unwrap_or_default().to_string());
        let ts = v["ts"].as_str().unwrap_or_default();
        assert!(
            ts.len() >= 20 && ts.as_bytes()[10] == b'T',
            "ISO-8601 ts: {line}"
        );
    }
    (keys, msgs)
}

fn run(kind: Kind) -> (Vec<Vec<String>>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("etcd.log");
    let outputs = format!("stderr,{}", file.display());
    let mut s = Server::start_with(kind, &["--logger", "zap", "--log-outputs", &outputs]);
    assert!(s.etcdctl(&["put", "k", "v"]).status.success());
    s.terminate();
    zap_lines(&file)
}

#[test]
fn zap_json_lines_in_a_log_file_match_etcd() {
    let (ours_keys, ours_msgs) = run(Kind::Ours);
    let (real_keys, _) = run(Kind::Real);
    let want = ["level", "ts", "caller", "msg"].map(String::from).to_vec();
    assert!(
        !real_keys.is_empty() && real_keys.iter().all(|k| *k == want),
        "{real_keys:?}"
    );
    assert!(
        !ours_keys.is_empty() && ours_keys.iter().all(|k| *k == want),
        "{ours_keys:?}"
    );
    assert!(ours_msgs
        .iter()
        .any(|m| m == "ready to serve client requests"));
}

#[test]
fn capnslog_text_lines() {
    let s = Server::start_with(Kind::Ours, &["--logger", "capnslog"]);
    let text = s.log_text();
    let line = text
        .lines()
        .find(|l| l.contains("mvcc store opened"))
        .unwrap();
    // `2026-12-03 14:48:19.082058 I | etcd_mvcc::kvstore::store: mvcc store opened ...`
    let b = line.as_bytes();
    assert!(
        b[4] == b'-' && b[10] == b' ' && b[19] == b'.' && &line[26..31] == " I | ",
        "{line}"
    );
}
