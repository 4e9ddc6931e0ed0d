//! Differential test of etcd v3 authentication, driven by the real
//! `etcdctl` (Debian's 3.4 client) the way operators use it: every scenario
//! runs the same etcdctl commands, one at a time, against the real etcd 3.4
//! and against our `etcd-server` (both started with exactly the same flags)
//! and requires the same exit status, stdout and stderr from both. Most steps
//! also assert what etcd answers (the error text, success), so that a step
//! that went wrong the same way on both sides (a mistyped flag) is noticed;
//! the scenarios follow etcd's `tests/e2e/ctl_v3_auth_test.go`.
//!
//! Normalized before the comparison, because they legitimately differ:
//! - the ports of the client and peer URLs, the member and cluster ids, the
//!   lease ids and the id of a member added with `member add`: each side's
//!   value becomes a placeholder (`<CLIENT-PORT>`, `<MEMBER-ID>`,
//!   `<LEASE-1>` ...); commands name them by placeholder and each side gets
//!   its own value;
//! - the per-side scratch directory (`<DIR>`);
//! - etcdctl's own JSON log lines on stderr (the gRPC client's
//!   "retrying of unary invoker failed" warnings, which carry the gRPC code
//!   and message and are compared): their `ts`, `target` (a random client
//!   UUID) and `took` fields;
//! - `took = ...` of `endpoint health`, `remaining(...)` of
//!   `lease timetolive`;
//! - `-w json` headers: `cluster_id`, `member_id` and `raft_term` (the
//!   revision is compared);
//! - `endpoint status`: the version (ours says 3.5.0), db size, raft term,
//!   raft index and applied index columns; `endpoint hashkv`: the hash (our
//!   storage is another engine);
//! - the order of members in `member list` and in `member add`'s
//!   `ETCD_INITIAL_CLUSTER` (etcd orders them by their random ids);
//! - the order of `snapshot save`'s log lines (two goroutines log them).
//!
//! Knobs: `AUTH_DIFF_OURS_KIND=etcd` starts the real etcd on the "ours"
//! side too: etcd against etcd, which validates the harness and the
//! normalization (it must pass reliably). `AUTH_DIFF_TRACE=1` prints every
//! step (ours' actual arguments and normalized outcome) to stderr.
//!
//! Not covered: `snapshot save` by an admin (our server does not serve
//! snapshots at all; the refusals of non-admins are compared); a simple
//! token or JWT expiring is only visible to etcdctl as a watch that keeps
//! working (the client re-authenticates transparently), see
//! `simple_token_ttl_expiry_is_transparent`.

mod common;

use common::{etcdctl_path, Kind, Server};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// etcdctl's credentials of the users most scenarios create.
const ROOT: &str = "--user=root:rootpw";
const ALICE: &str = "--user=alice:alicepw";

/// Generous guard against a hung etcdctl (its own timeouts are 2 s dial and
/// 5 s per command); never an expectation on speed.
const GUARD: Duration = Duration::from_secs(120);

/// What runs on the "ours" side: our server, or (`AUTH_DIFF_OURS_KIND=etcd`)
/// the real etcd, to check the harness itself.
fn ours_kind() -> Kind {
    match std::env::var("AUTH_DIFF_OURS_KIND").as_deref() {
        Err(_) | Ok("") | Ok("ours") => Kind::Ours,
        Ok("etcd") | Ok("real") => Kind::Real,
        Ok(other) => panic!("AUTH_DIFF_OURS_KIND={other}: expected `etcd` or `ours`"),
    }
}

/// One etcdctl run, normalized.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    /// Exit code; None when the test stopped the process (a watch).
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

/// One server of the comparison and what is particular to it.
struct Side {
    label: &'static str,
    srv: Server,
    /// (actual text, placeholder): outputs get the placeholder, arguments
    /// get the actual text back. Longest actual text first.
    subst: Vec<(String, String)>,
    /// The member and cluster ids and their placeholders, for `-w json`
    /// output (decimal numbers there).
    ids: Vec<(u64, &'static str)>,
    scratch: tempfile::TempDir,
}

impl Side {
    fn start(label: &'static str, kind: Kind, scheme: &str, extra: &[&str], ctl: &[&str]) -> Side {
        let srv = Server::start_custom(kind, scheme, extra, ctl);
        let scratch = tempfile::tempdir().unwrap();
        let mut side = Side {
            label,
            srv,
            subst: Vec::new(),
            ids: Vec::new(),
            scratch,
        };
        let port = |url: &str| url.rsplit(':').next().unwrap().to_string();
        let client = port(&side.srv.client_url);
        let peer = port(&side.srv.peer_url);
        side.learn(&format!("127.0.0.1:{client}"), "127.0.0.1:<CLIENT-PORT>");
        side.learn(&format!("127.0.0.1:{peer}"), "127.0.0.1:<PEER-PORT>");
        let dir = side.scratch.path().to_str().unwrap().to_string();
        side.learn(&dir, "<DIR>");
        // The ids, while auth is still off.
        let out = side.exec(
            &[
                "endpoint".into(),
                "status".into(),
                "-w".into(),
                "json".into(),
            ],
            None,
        );
        assert!(out.status.success(), "{label}: endpoint status: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let header = &v[0]["Status"]["header"];
        let member = header["member_id"].as_u64().expect("member_id");
        let cluster = header["cluster_id"].as_u64().expect("cluster_id");
        side.learn_id(member, "<MEMBER-ID>");
        side.learn_id(cluster, "<CLUSTER-ID>");
        side.ids = vec![(member, "<MEMBER-ID>"), (cluster, "<CLUSTER-ID>")];
        side
    }

    /// An id in hex, and as etcdctl's `%16x` prints it after a space
    /// (space-padded to 16: ids are random, so one side's may have a leading
    /// zero digit). The padded form is learnt with the space before it, so
    /// `"Member  abc… added"` and `"Member abcd… added"` both read
    /// `"Member <MEMBER-ID> added"`, while `"…, abc…"` in a `%x` column
    /// keeps its separator.
    fn learn_id(&mut self, id: u64, placeholder: &str) {
        let padded = format!("{id:16x}");
        if padded.starts_with(' ') {
            self.learn(&format!(" {padded}"), &format!(" {placeholder}"));
        }
        self.learn(&format!("{id:x}"), placeholder);
    }

    fn learn(&mut self, actual: &str, placeholder: &str) {
        self.subst
            .push((actual.to_string(), placeholder.to_string()));
        self.subst.sort_by_key(|(a, _)| std::cmp::Reverse(a.len()));
    }

    /// A command argument with each placeholder replaced by this side's value
    /// (an id's unpadded form: the space-padded one, learnt for output with
    /// a leading zero digit, is no argument etcdctl parses).
    fn actual(&self, arg: &str) -> String {
        let mut s = arg.to_string();
        for (actual, ph) in self.subst.iter().filter(|(a, _)| !a.starts_with(' ')) {
            s = s.replace(ph.as_str(), actual);
        }
        s
    }

    fn command(&self, args: &[String]) -> Command {
        let mut c = Command::new(etcdctl_path());
        c.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&self.srv.client_url)
            .args(&self.srv.ctl_args)
            .args(args.iter().map(|a| self.actual(a)));
        c
    }

    /// Runs etcdctl with `args` (stdin: `stdin`, or nothing: a password
    /// prompt then fails instead of reading the test's stdin).
    fn exec(&self, args: &[String], stdin: Option<&str>) -> Output {
        let mut child = self
            .command(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run etcdctl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(GUARD) {
            Ok(out) => out.unwrap(),
            Err(_) => {
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
                panic!(
                    "{}: etcdctl {args:?} still running after {GUARD:?}",
                    self.label
                );
            }
        }
    }

    fn normalize(
        &self,
        args: &[String],
        code: Option<i32>,
        stdout: &[u8],
        stderr: &[u8],
    ) -> Outcome {
        let text = |b: &[u8]| {
            let mut s = String::from_utf8_lossy(b).into_owned();
            for (actual, ph) in &self.subst {
                s = s.replace(actual.as_str(), ph);
            }
            s
        };
        let mut stdout = text(stdout);
        let mut stderr = map_lines(&text(stderr), normalize_log_line);
        let has = |w: &str| args.iter().any(|a| a == w);
        if has("snapshot") {
            // `snapshot save` logs from two goroutines: sorted log lines,
            // then etcdctl's own lines.
            let (mut logs, own): (Vec<&str>, Vec<&str>) =
                stderr.lines().partition(|l| l.starts_with('{'));
            logs.sort_unstable();
            logs.extend(own);
            stderr = logs.iter().map(|l| format!("{l}\n")).collect();
        }
        if has("timetolive") {
            stdout = map_lines(&stdout, mask_remaining);
        }
        if has("json") {
            stdout = map_lines(&stdout, |l| normalize_json_line(l, &self.ids));
        } else if has("endpoint") && has("status") {
            // endpoint, id, version, db size, is leader, is learner, raft
            // term, raft index, raft applied index, errors.
            stdout = map_lines(&stdout, |l| mask_columns(l, &[2, 3, 6, 7, 8]));
        } else if has("endpoint") && has("hashkv") {
            // endpoint, hash.
            stdout = map_lines(&stdout, |l| mask_columns(l, &[1]));
        } else if has("member") && has("list") {
            // Listed in the order of the (random) member ids.
            let mut rows: Vec<&str> = stdout.lines().collect();
            rows.sort_unstable();
            stdout = rows.iter().map(|l| format!("{l}\n")).collect();
        } else if has("member") && has("add") {
            // ETCD_INITIAL_CLUSTER lists the members in id order.
            stdout = map_lines(&stdout, |l| match l.strip_prefix("ETCD_INITIAL_CLUSTER=") {
                Some(v) => {
                    let mut m: Vec<&str> = v.trim_matches('"').split(',').collect();
                    m.sort_unstable();
                    format!("ETCD_INITIAL_CLUSTER=\"{}\"", m.join(","))
                }
                None => l.to_string(),
            });
        }
        Outcome {
            code,
            stdout,
            stderr,
        }
    }

    /// Runs `etcdctl watch ...` following `script`; see [`Pair::watch`].
    fn watch(&self, args: &[String], script: &[W]) -> Outcome {
        let interactive = script.iter().any(|s| matches!(s, W::Send(_)));
        let mut child = self
            .command(args)
            .stdin(if interactive {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run etcdctl");
        let mut stdin = child.stdin.take();
        // (stderr?, line; None at the end of the stream)
        let (tx, rx) = mpsc::channel::<(bool, Option<String>)>();
        let readers = [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, stream)| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send((i == 1, Some(line)));
                }
                let _ = tx.send((i == 1, None));
            })
        })
        .collect::<Vec<_>>();
        drop(tx);
        let deadline = Instant::now() + GUARD;
        let mut out: Vec<String> = Vec::new();
        let mut err: Vec<String> = Vec::new();
        let mut closed = [false, false];
        let receive = |out: &mut Vec<String>, err: &mut Vec<String>, closed: &mut [bool; 2]| {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((is_err, Some(l))) => {
                    if is_err {
                        err.push(l)
                    } else {
                        out.push(l)
                    }
                    true
                }
                Ok((is_err, None)) => {
                    closed[is_err as usize] = true;
                    true
                }
                Err(_) => false,
            }
        };
        let (mut want_out, mut want_err) = (0, None);
        let mut ended = false;
        for step in script {
            let done = |out: &Vec<String>, err: &Vec<String>, closed: &[bool; 2]| match step {
                W::Lines(n) => out.len() >= *n || closed[0],
                W::ErrLines(n) => err.len() >= *n || closed[1],
                W::Exit => closed[0] && closed[1],
                W::Send(_) | W::Sleep(_) => true,
            };
            match step {
                W::Send(l) => {
                    let l = format!("{}\n", self.actual(l));
                    let w = stdin.as_mut().unwrap();
                    w.write_all(l.as_bytes()).unwrap();
                    w.flush().unwrap();
                }
                W::Sleep(d) => std::thread::sleep(*d),
                W::Lines(n) => want_out = *n,
                W::ErrLines(n) => want_err = Some(*n),
                W::Exit => {}
            }
            while !done(&out, &err, &closed) {
                if !receive(&mut out, &mut err, &mut closed) {
                    let _ = child.kill();
                    panic!(
                        "{}: etcdctl {args:?}: {step:?} not reached within {GUARD:?}; stdout {out:?}, stderr {err:?}",
                        self.label
                    );
                }
            }
            if closed[0] {
                // etcdctl is exiting by itself: the rest of the script
                // cannot happen.
                ended = true;
                break;
            }
        }
        let code = if ended {
            wait_guarded(&mut child).code()
        } else {
            // Killed before its stdin closes: at EOF etcdctl would print
            // an error of its own, racing the kill.
            let _ = child.kill();
            let _ = child.wait();
            None
        };
        drop(stdin);
        while !(closed[0] && closed[1]) {
            if !receive(&mut out, &mut err, &mut closed) {
                panic!("{}: etcdctl {args:?}: output not closed", self.label);
            }
        }
        for r in readers {
            let _ = r.join();
        }
        if code.is_none() {
            // Output after what the script waited for is timing.
            out.truncate(want_out);
            if let Some(n) = want_err {
                err.truncate(n);
            }
        }
        let join = |v: &[String]| v.iter().map(|l| format!("{l}\n")).collect::<String>();
        self.normalize(args, code, join(&out).as_bytes(), join(&err).as_bytes())
    }
}

fn wait_guarded(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + GUARD;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("etcdctl did not exit within {GUARD:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A step of a watch script.
#[derive(Clone, Debug)]
enum W {
    /// Write this line to etcdctl's stdin (`watch -i`).
    Send(String),
    /// Wait until stdout has this many lines in all.
    Lines(usize),
    /// Wait until stderr has this many lines in all.
    ErrLines(usize),
    /// Wait until etcdctl exits by itself, collecting everything.
    Exit,
    /// Pause (to let a token expire).
    Sleep(Duration),
}

fn map_lines(s: &str, f: impl Fn(&str) -> String) -> String {
    let mut out: String = s.lines().map(|l| f(l) + "\n").collect();
    if !s.ends_with('\n') {
        out.pop();
    }
    out
}

/// etcdctl's zap JSON log lines: without the timestamp, the client's target
/// (it names a random client UUID) and durations.
fn normalize_log_line(line: &str) -> String {
    let line = mask_took(line);
    if !line.starts_with("{\"level\"") {
        return line;
    }
    match serde_json::from_str::<serde_json::Value>(&line) {
        Ok(serde_json::Value::Object(mut m)) => {
            for k in ["ts", "target", "took"] {
                m.remove(k);
            }
            serde_json::Value::Object(m).to_string()
        }
        _ => line,
    }
}

/// `took = 2.159108ms` (endpoint health) -> `took = <DURATION>`.
fn mask_took(line: &str) -> String {
    match line.find("took = ") {
        Some(at) => {
            let start = at + "took = ".len();
            let end = line[start..]
                .find(|c: char| c.is_whitespace() || c == ',')
                .map_or(line.len(), |e| start + e);
            format!("{}<DURATION>{}", &line[..start], &line[end..])
        }
        None => line.to_string(),
    }
}

/// `remaining(1999s)` of `lease timetolive` -> `remaining(<SECONDS>s)`:
/// the clock ticks on between the two sides.
fn mask_remaining(line: &str) -> String {
    match line.find("remaining(") {
        Some(at) => {
            let start = at + "remaining(".len();
            let end = line[start..].find('s').map_or(line.len(), |e| start + e);
            format!("{}<SECONDS>{}", &line[..start], &line[end..])
        }
        None => line.to_string(),
    }
}

/// Masks the given columns of a `, `-separated table row (simple output).
fn mask_columns(line: &str, cols: &[usize]) -> String {
    let mut fields: Vec<String> = line.split(", ").map(str::to_string).collect();
    if fields.len() <= *cols.iter().max().unwrap() {
        return line.to_string();
    }
    for &c in cols {
        fields[c] = "<MASKED>".into();
    }
    fields.join(", ")
}

/// A `-w json` line without the header fields that name the member, the
/// cluster and the raft term, with the member and cluster ids (`ids`)
/// elsewhere as placeholders, and without the fields of `endpoint status`
/// that differ between two servers.
fn normalize_json_line(line: &str, ids: &[(u64, &str)]) -> String {
    use serde_json::Value;
    fn strip(v: &mut Value, ids: &[(u64, &str)]) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(h)) = m.get_mut("header") {
                    for k in ["cluster_id", "member_id", "raft_term"] {
                        h.remove(k);
                    }
                }
                // `endpoint status -w json`.
                if m.contains_key("raftIndex") {
                    for k in [
                        "version",
                        "dbSize",
                        "dbSizeInUse",
                        "raftIndex",
                        "raftTerm",
                        "raftAppliedIndex",
                    ] {
                        if let Some(x) = m.get_mut(k) {
                            *x = Value::String("<MASKED>".into());
                        }
                    }
                }
                for (_, x) in m.iter_mut() {
                    strip(x, ids);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| strip(x, ids)),
            Value::Number(n) => {
                if let Some((_, ph)) = ids.iter().find(|(id, _)| Some(*id) == n.as_u64()) {
                    *v = Value::String(ph.to_string());
                }
            }
            _ => {}
        }
    }
    match serde_json::from_str::<Value>(line) {
        Ok(mut v) if v.is_object() || v.is_array() => {
            strip(&mut v, ids);
            v.to_string()
        }
        _ => line.to_string(),
    }
}

/// The real etcd and ours, side by side, started with the same flags.
struct Pair {
    sides: [Side; 2],
    step: usize,
    leases: usize,
    members: usize,
}

impl Pair {
    fn start(extra: &[&str]) -> Pair {
        Self::start_custom("http", extra, &[])
    }

    /// Servers whose client URL has `scheme`, both with `extra` flags;
    /// every etcdctl call gets `ctl` first (TLS flags).
    fn start_custom(scheme: &str, extra: &[&str], ctl: &[&str]) -> Pair {
        let real = Side::start("etcd 3.4", Kind::Real, scheme, extra, ctl);
        let ours_label = match ours_kind() {
            Kind::Ours => "ours",
            Kind::Real => "ours (AUTH_DIFF_OURS_KIND=etcd: the real etcd)",
        };
        let ours = Side::start(ours_label, ours_kind(), scheme, extra, ctl);
        Pair {
            sides: [real, ours],
            step: 0,
            leases: 0,
            members: 0,
        }
    }

    fn run(&mut self, args: &[&str]) -> Outcome {
        self.run_inner(args, None)
    }

    fn run_stdin(&mut self, args: &[&str], stdin: &str) -> Outcome {
        self.run_inner(args, Some(stdin))
    }

    fn run_inner(&mut self, args: &[&str], stdin: Option<&str>) -> Outcome {
        self.step += 1;
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let [a, b] = &self.sides;
        let (ra, rb) = std::thread::scope(|s| {
            let hb = s.spawn(|| b.exec(&args, stdin));
            let ra = a.exec(&args, stdin);
            (ra, hb.join().unwrap())
        });
        self.learn_ids(&args, &ra, &rb);
        let na = self.sides[0].normalize(&args, ra.status.code(), &ra.stdout, &ra.stderr);
        let nb = self.sides[1].normalize(&args, rb.status.code(), &rb.stdout, &rb.stderr);
        self.trace(&args, &nb);
        self.compare(&args, stdin, &na, &nb);
        na
    }

    fn trace(&self, args: &[String], ours: &Outcome) {
        if std::env::var_os("AUTH_DIFF_TRACE").is_some() {
            let actual: Vec<String> = args.iter().map(|a| self.sides[1].actual(a)).collect();
            eprintln!("step {}: etcdctl {actual:?} (ours) -> {ours:?}", self.step);
        }
    }

    /// Lease ids (`lease grant`) and member ids (`member add`) printed by
    /// both sides become placeholders.
    fn learn_ids(&mut self, args: &[String], a: &Output, b: &Output) {
        let has = |w: &str| args.iter().any(|a| a == w);
        let lease = |o: &Output| {
            if !(has("lease") && has("grant")) {
                return None;
            }
            let s = String::from_utf8_lossy(&o.stdout).to_string();
            let w: Vec<&str> = s.split_whitespace().collect();
            (w.len() > 2 && w[0] == "lease" && w[2] == "granted").then(|| w[1].to_string())
        };
        if let (Some(x), Some(y)) = (lease(a), lease(b)) {
            self.leases += 1;
            let ph = format!("<LEASE-{}>", self.leases);
            self.sides[0].learn(&x, &ph);
            self.sides[1].learn(&y, &ph);
        }
        let member = |o: &Output| {
            if !(has("member") && has("add")) {
                return None;
            }
            let s = String::from_utf8_lossy(&o.stdout).to_string();
            let w: Vec<&str> = s.split_whitespace().collect();
            (w.len() > 2 && w[0] == "Member" && w[2] == "added")
                .then(|| u64::from_str_radix(w[1], 16).ok())
                .flatten()
        };
        if let (Some(x), Some(y)) = (member(a), member(b)) {
            self.members += 1;
            let ph = format!("<NEW-MEMBER-{}>", self.members);
            self.sides[0].learn_id(x, &ph);
            self.sides[1].learn_id(y, &ph);
        }
    }

    fn compare(&self, args: &[String], stdin: Option<&str>, a: &Outcome, b: &Outcome) {
        if a == b {
            return;
        }
        let show = |label: &str, o: &Outcome| {
            format!(
                "--- {label} (normalized) ---\nexit code: {:?}\nstdout:\n{}\nstderr:\n{}\n",
                o.code, o.stdout, o.stderr
            )
        };
        let log = self.sides[1].srv.log_text();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "step {}: etcdctl {}{} differs\n{}{}--- {} server log tail ---\n{}\n",
            self.step,
            args.join(" "),
            stdin.map_or(String::new(), |s| format!(" (stdin {s:?})")),
            show(self.sides[0].label, a),
            show(self.sides[1].label, b),
            self.sides[1].label,
            tail.join("\n")
        );
    }

    /// Runs `args` on both sides, requires success; the stdout.
    fn ok(&mut self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.ok(),
            "step {}: etcdctl {args:?} failed on both sides: {o:?}",
            self.step
        );
        o.stdout
    }

    fn ok_stdin(&mut self, args: &[&str], stdin: &str) -> String {
        let o = self.run_stdin(args, stdin);
        assert!(
            o.ok(),
            "step {}: etcdctl {args:?} failed on both sides: {o:?}",
            self.step
        );
        o.stdout
    }

    /// Runs `args` on both sides, requires failure with `needle` on stderr.
    fn fails(&mut self, args: &[&str], needle: &str) -> Outcome {
        let o = self.run(args);
        self.check_fail(args, &o, needle);
        o
    }

    fn fails_stdin(&mut self, args: &[&str], stdin: &str, needle: &str) -> Outcome {
        let o = self.run_stdin(args, stdin);
        self.check_fail(args, &o, needle);
        o
    }

    fn check_fail(&self, args: &[&str], o: &Outcome, needle: &str) {
        assert!(
            !o.ok() && o.stderr.contains(needle),
            "step {}: etcdctl {args:?}: expected a failure with {needle:?}, etcd answered {o:?}",
            self.step
        );
    }

    /// `etcdctl txn` with `compares`, `success` and `failure` (one request
    /// a line) on stdin.
    fn txn(
        &mut self,
        user: &str,
        compares: &[&str],
        success: &[&str],
        failure: &[&str],
    ) -> Outcome {
        let section = |l: &[&str]| l.iter().map(|x| format!("{x}\n")).collect::<String>();
        let input = format!(
            "{}\n{}\n{}\n",
            section(compares),
            section(success),
            section(failure)
        );
        let mut args = vec![];
        if !user.is_empty() {
            args.push(user);
        }
        args.push("txn");
        self.run_stdin(&args, &input)
    }

    /// `etcdctl watch` on both sides following `script`: lines to send on
    /// stdin (`watch -i`), stdout line counts to wait for, pauses; etcdctl
    /// is then stopped (exit code None) unless it exited by itself.
    fn watch(&mut self, args: &[&str], script: &[W]) -> Outcome {
        self.step += 1;
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let [a, b] = &self.sides;
        let (na, nb) = std::thread::scope(|s| {
            let hb = s.spawn(|| b.watch(&args, script));
            let na = a.watch(&args, script);
            (na, hb.join().unwrap())
        });
        self.trace(&args, &nb);
        self.compare(&args, None, &na, &nb);
        na
    }

    /// Restarts both servers (SIGTERM, then the same flags and data).
    /// `ready` are etcdctl flags that let `endpoint health` pass (with auth
    /// enabled it needs a user).
    fn restart(&mut self, ready: &[&str]) {
        for side in &mut self.sides {
            let status = side.srv.terminate();
            // etcd re-raises SIGTERM after its graceful stop; ours exits 0.
            if side.srv.kind == Kind::Ours {
                assert!(status.success(), "{}: exit status {status}", side.label);
            }
            let n = side.srv.ctl_args.len();
            side.srv
                .ctl_args
                .extend(ready.iter().map(|s| s.to_string()));
            side.srv.restart();
            side.srv.ctl_args.truncate(n);
        }
    }

    /// The log of each side whose server is the real etcd.
    fn real_logs(&self) -> Vec<String> {
        self.sides
            .iter()
            .filter(|s| s.srv.kind == Kind::Real)
            .map(|s| s.srv.log_text())
            .collect()
    }
}

/// `W::Lines` steps of a watch that prints `events` events (3 lines each in
/// the simple format: type, key, value).
fn events(n: usize) -> W {
    W::Lines(3 * n)
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// Users and roles: every management command with auth disabled (anyone
/// may manage) and then, as root, with auth enabled; duplicates and
/// missing names.
#[test]
fn user_and_role_management() {
    let mut p = Pair::start(&[]);
    // Users, auth disabled.
    assert_eq!(p.ok(&["user", "add", "root:rootpw"]), "User root created\n");
    p.fails(
        &["user", "add", "root:other"],
        "Error: etcdserver: user name already exists",
    );
    p.ok(&["user", "add", "alice", "--new-user-password=alicepw"]);
    p.ok_stdin(&["user", "add", "bob", "--interactive=false"], "bobpw\n");
    p.ok(&["user", "add", "carol", "--no-password"]);
    // An empty password is accepted.
    p.ok(&["user", "add", "dave:"]);
    p.fails(
        &["user", "add", "", "--new-user-password=x"],
        "Error: etcdserver: user name is empty",
    );
    // etcdctl refuses this one itself.
    p.fails(
        &["user", "add", ":pw"],
        "Error: empty user name is not allowed",
    );
    assert_eq!(p.ok(&["user", "get", "alice"]), "User: alice\nRoles:\n");
    p.ok(&["user", "get", "alice", "--detail"]);
    p.fails(
        &["user", "get", "nobody"],
        "Error: etcdserver: user name not found",
    );
    assert_eq!(p.ok(&["user", "list"]), "alice\nbob\ncarol\ndave\nroot\n");
    p.ok(&["user", "list", "-w", "json"]);

    // Roles.
    assert_eq!(p.ok(&["role", "add", "r1"]), "Role r1 created\n");
    p.ok(&["role", "add", "r2"]);
    p.fails(
        &["role", "add", "r1"],
        "Error: etcdserver: role name already exists",
    );
    p.fails(
        &["role", "add", ""],
        "Error: etcdserver: role name is empty",
    );
    assert_eq!(
        p.ok(&["role", "get", "r1"]),
        "Role r1\nKV Read:\nKV Write:\n"
    );
    p.fails(
        &["role", "get", "nope"],
        "Error: etcdserver: role name not found",
    );
    assert_eq!(p.ok(&["role", "list"]), "r1\nr2\n");
    assert_eq!(
        p.ok(&["role", "grant-permission", "r1", "read", "k1"]),
        "Role r1 updated\n"
    );
    p.ok(&["role", "grant-permission", "r1", "write", "p/", "--prefix"]);
    p.ok(&["role", "grant-permission", "r1", "readwrite", "a", "c"]);
    p.ok(&[
        "role",
        "grant-permission",
        "r1",
        "READWRITE",
        "z",
        "--from-key",
    ]);
    p.ok(&["role", "grant-permission", "r1", "Read", "m", "n"]);
    p.fails(
        &["role", "grant-permission", "nope", "read", "k"],
        "Error: etcdserver: role name not found",
    );
    p.fails(
        &["role", "grant-permission", "r1", "bad", "k"],
        "invalid permission type",
    );
    // Sorted by key; ranges, prefixes and open ends printed apart.
    assert_eq!(
        p.ok(&["role", "get", "r1"]),
        "Role r1\nKV Read:\n\t[a, c)\n\tk1\n\t[m, n) (prefix m)\n\t[z, <open ended>\nKV Write:\n\t[a, c)\n\t[p/, p0) (prefix p/)\n\t[z, <open ended>\n"
    );
    p.ok(&["role", "get", "r1", "-w", "json"]);
    // The same key and range again replaces the type (no merge).
    p.ok(&["role", "grant-permission", "r1", "write", "k1"]);
    p.ok(&["role", "grant-permission", "r1", "write", "m", "n"]);
    p.ok(&["role", "get", "r1"]);
    // The whole key space.
    p.ok(&["role", "grant-permission", "r2", "read", "", "--prefix"]);
    p.ok(&["role", "get", "r2", "-w", "json"]);

    // Granting and revoking roles.
    assert_eq!(
        p.ok(&["user", "grant-role", "alice", "r1"]),
        "Role r1 is granted to user alice\n"
    );
    // Granting it again is no error.
    p.ok(&["user", "grant-role", "alice", "r1"]);
    p.fails(
        &["user", "grant-role", "alice", "nope"],
        "Error: etcdserver: role name not found",
    );
    p.fails(
        &["user", "grant-role", "nobody", "r1"],
        "Error: etcdserver: user name not found",
    );
    p.ok(&["user", "grant-role", "alice", "r2"]);
    p.ok(&["user", "grant-role", "bob", "r2"]);
    assert_eq!(
        p.ok(&["user", "get", "alice"]),
        "User: alice\nRoles: r1 r2\n"
    );
    p.ok(&["user", "get", "alice", "--detail"]);
    p.ok(&["user", "get", "alice", "-w", "json"]);
    assert_eq!(
        p.ok(&["user", "revoke-role", "alice", "r2"]),
        "Role r2 is revoked from user alice\n"
    );
    p.fails(
        &["user", "revoke-role", "alice", "r2"],
        "Error: etcdserver: role is not granted to the user",
    );
    p.fails(
        &["user", "revoke-role", "alice", "nope"],
        "Error: etcdserver: role is not granted to the user",
    );
    p.fails(
        &["user", "revoke-role", "nobody", "r1"],
        "Error: etcdserver: user name not found",
    );

    // Revoking permissions: exactly the key and range granted.
    assert_eq!(
        p.ok(&["role", "revoke-permission", "r1", "k1"]),
        "Permission of key k1 is revoked from role r1\n"
    );
    p.fails(
        &["role", "revoke-permission", "r1", "k1"],
        "Error: etcdserver: permission is not granted to the role",
    );
    p.fails(
        &["role", "revoke-permission", "r1", "p/"],
        "Error: etcdserver: permission is not granted to the role",
    );
    p.fails(
        &["role", "revoke-permission", "r1", "a", "b"],
        "Error: etcdserver: permission is not granted to the role",
    );
    assert_eq!(
        p.ok(&["role", "revoke-permission", "r1", "p/", "--prefix"]),
        "Permission of range [p/, p0) is revoked from role r1\n"
    );
    p.ok(&["role", "revoke-permission", "r1", "a", "c"]);
    p.ok(&["role", "revoke-permission", "r1", "z", "--from-key"]);
    p.fails(
        &["role", "revoke-permission", "nope", "k"],
        "Error: etcdserver: role name not found",
    );
    p.ok(&["role", "get", "r1"]);

    // Deleting a role takes it from its users.
    assert_eq!(p.ok(&["role", "delete", "r2"]), "Role r2 deleted\n");
    p.fails(
        &["role", "delete", "r2"],
        "Error: etcdserver: role name not found",
    );
    assert_eq!(p.ok(&["user", "get", "bob"]), "User: bob\nRoles:\n");
    p.ok(&["user", "get", "alice"]);

    // Passwords and deletion.
    assert_eq!(
        p.ok_stdin(
            &["user", "passwd", "alice", "--interactive=false"],
            "newpw\n"
        ),
        "Password updated\n"
    );
    p.fails_stdin(
        &["user", "passwd", "nobody", "--interactive=false"],
        "x\n",
        "Error: etcdserver: user name not found",
    );
    assert_eq!(p.ok(&["user", "delete", "dave"]), "User dave deleted\n");
    p.fails(
        &["user", "delete", "dave"],
        "Error: etcdserver: user name not found",
    );

    // The root role need not exist to be granted.
    p.ok(&["user", "grant-role", "root", "root"]);
    assert_eq!(p.ok(&["role", "list"]), "r1\n");
    p.run(&["user", "get", "root", "--detail"]);
    p.fails(
        &["role", "get", "root"],
        "Error: etcdserver: role name not found",
    );

    // With auth enabled, root manages the same way.
    p.ok_stdin(
        &["user", "passwd", "alice", "--interactive=false"],
        "alicepw\n",
    );
    assert_eq!(p.ok(&["auth", "enable"]), "Authentication Enabled\n");
    p.ok(&[ROOT, "user", "add", "erin:erinpw"]);
    p.fails(
        &[ROOT, "user", "add", "erin:x"],
        "Error: etcdserver: user name already exists",
    );
    p.ok(&[ROOT, "role", "add", "r3"]);
    p.fails(
        &[ROOT, "role", "add", "r3"],
        "Error: etcdserver: role name already exists",
    );
    p.ok(&[
        ROOT,
        "role",
        "grant-permission",
        "r3",
        "readwrite",
        "e/",
        "--prefix",
    ]);
    p.ok(&[ROOT, "user", "grant-role", "erin", "r3"]);
    p.ok(&[ROOT, "user", "get", "erin", "--detail"]);
    p.ok(&[ROOT, "user", "list"]);
    p.ok(&[ROOT, "role", "list"]);
    // root holds the role root, which was never added as a role.
    p.fails(
        &[ROOT, "role", "get", "root"],
        "Error: etcdserver: role name not found",
    );
    p.run(&[ROOT, "user", "get", "root", "--detail"]);
    p.fails(
        &[ROOT, "user", "get", "nobody"],
        "Error: etcdserver: user name not found",
    );
    p.fails(
        &[ROOT, "role", "get", "nope"],
        "Error: etcdserver: role name not found",
    );
    p.fails(
        &[ROOT, "role", "revoke-permission", "r3", "e/"],
        "Error: etcdserver: permission is not granted to the role",
    );
    p.ok(&[ROOT, "role", "revoke-permission", "r3", "e/", "--prefix"]);
    p.ok(&[ROOT, "user", "revoke-role", "erin", "r3"]);
    p.ok_stdin(
        &[ROOT, "user", "passwd", "erin", "--interactive=false"],
        "erin2\n",
    );
    p.ok(&["--user=erin:erin2", "user", "get", "erin"]);
    p.ok(&[ROOT, "role", "delete", "r3"]);
    p.ok(&[ROOT, "user", "delete", "erin"]);
    p.fails(
        &["--user=erin:erin2", "get", "x"],
        "authentication failed, invalid user ID or password",
    );
}

/// `auth enable` / `auth disable`: the root user and role rules, what
/// cannot be done while enabled, enabling twice, and persistence across a
/// restart.
#[test]
fn auth_enable_and_disable() {
    let mut p = Pair::start(&[]);
    p.ok(&["put", "k", "v"]);
    p.fails(
        &["auth", "enable"],
        "Error: etcdserver: root user does not exist",
    );
    p.ok(&["user", "add", "root:rootpw"]);
    // root without the root role: etcd refuses with "root user does not
    // have root role"; etcdctl then adds the role, grants it and retries
    // (the refusal shows as its retry warning on stderr).
    let o = p.ok(&["auth", "enable"]);
    assert_eq!(o, "Authentication Enabled\n");
    assert_eq!(p.ok(&[ROOT, "role", "list"]), "root\n");
    p.ok(&[ROOT, "role", "get", "root"]);
    p.ok(&[ROOT, "user", "get", "root", "--detail"]);
    // Enabled: anonymous requests are refused, root's are not.
    p.fails(&["get", "k"], "Error: etcdserver: user name is empty");
    p.fails(&["auth", "enable"], "Error: etcdserver: user name is empty");
    p.fails(&["user", "list"], "Error: etcdserver: user name is empty");
    // Enabling again is no error.
    assert_eq!(p.ok(&[ROOT, "auth", "enable"]), "Authentication Enabled\n");
    p.fails(
        &[ROOT, "user", "delete", "root"],
        "Error: etcdserver: invalid auth management",
    );
    p.fails(
        &[ROOT, "user", "revoke-role", "root", "root"],
        "Error: etcdserver: invalid auth management",
    );
    p.fails(
        &[ROOT, "role", "delete", "root"],
        "Error: etcdserver: invalid auth management",
    );
    p.ok(&[ROOT, "user", "add", "alice:alicepw"]);
    p.ok(&[ROOT, "role", "add", "ra"]);
    p.ok(&[ROOT, "role", "grant-permission", "ra", "read", "k"]);
    p.ok(&[ROOT, "user", "grant-role", "alice", "ra"]);
    p.ok(&[ALICE, "get", "k"]);
    p.fails(
        &[ALICE, "auth", "disable"],
        "Error: etcdserver: permission denied",
    );
    p.fails(
        &["auth", "disable"],
        "Error: etcdserver: user name is empty",
    );

    // Auth state and users survive a restart.
    p.restart(&[ROOT]);
    p.fails(&["get", "k"], "Error: etcdserver: user name is empty");
    p.ok(&[ALICE, "get", "k"]);
    p.fails(
        &[ALICE, "put", "k", "w"],
        "Error: etcdserver: permission denied",
    );
    p.fails(
        &["--user=alice:wrong", "get", "k"],
        "authentication failed, invalid user ID or password",
    );
    p.ok(&[ROOT, "put", "k", "v2"]);

    assert_eq!(
        p.ok(&[ROOT, "auth", "disable"]),
        "Authentication Disabled\n"
    );
    // Disabled: anyone does anything; a password is not checked (the
    // client logs "authentication is not enabled" and goes on).
    p.ok(&["get", "k"]);
    p.ok(&["put", "k", "v3"]);
    p.ok(&[ALICE, "put", "k", "v4"]);
    p.ok(&["--user=alice:wrong", "get", "k"]);
    p.ok(&["--user=nobody:x", "user", "list"]);
    assert_eq!(p.ok(&["auth", "disable"]), "Authentication Disabled\n");
    // While disabled, root may lose its role ...
    p.ok(&["user", "revoke-role", "root", "root"]);
    // ... and then etcdctl's fix-up fails: the role root exists already.
    p.fails(
        &["auth", "enable"],
        "Error: etcdserver: role name already exists",
    );
    p.ok(&["user", "grant-role", "root", "root"]);
    p.ok(&["auth", "enable"]);
    p.ok(&[ROOT, "auth", "disable"]);
    // ... or be deleted, with its role.
    p.ok(&["role", "delete", "root"]);
    p.ok(&["user", "get", "root"]);
    assert_eq!(p.ok(&["user", "delete", "root"]), "User root deleted\n");
    p.fails(
        &["auth", "enable"],
        "Error: etcdserver: root user does not exist",
    );
    p.ok(&["user", "list"]);
}

/// With auth enabled: authentication failures, what a user without the
/// permission may not do (KV, txn, watch, leases), which maintenance and
/// cluster calls need an admin, and what a user may read about itself.
#[test]
fn access_control_with_auth_enabled() {
    let mut p = Pair::start(&[]);
    for (k, v) in [("r/1", "x"), ("w/1", "y"), ("rw", "z"), ("secret", "s")] {
        p.ok(&["put", k, v]);
    }
    p.ok(&["user", "add", "root:rootpw"]);
    p.ok(&["user", "grant-role", "root", "root"]);
    p.ok(&["user", "add", "alice:alicepw"]);
    p.ok(&["user", "add", "bob:bobpw"]);
    p.ok(&["role", "add", "ra"]);
    p.ok(&["role", "grant-permission", "ra", "read", "r/", "--prefix"]);
    p.ok(&["role", "grant-permission", "ra", "write", "w/", "--prefix"]);
    p.ok(&["role", "grant-permission", "ra", "readwrite", "rw"]);
    p.ok(&["user", "grant-role", "alice", "ra"]);
    p.ok(&["auth", "enable"]);

    // Authentication.
    p.fails(&["get", "r/1"], "Error: etcdserver: user name is empty");
    p.fails(
        &["put", "r/1", "v"],
        "Error: etcdserver: user name is empty",
    );
    p.fails(
        &["--user=alice:wrong", "get", "r/1"],
        "Error: etcdserver: authentication failed, invalid user ID or password",
    );
    p.fails(
        &["--user=nobody:pw", "get", "r/1"],
        "Error: etcdserver: authentication failed, invalid user ID or password",
    );
    p.ok(&["--user=alice", "--password=alicepw", "get", "r/1"]);

    // KV.
    assert_eq!(p.ok(&[ALICE, "get", "r/1"]), "r/1\nx\n");
    p.ok(&[ALICE, "get", "r/", "--prefix"]);
    p.ok(&[ALICE, "get", "r/1", "--consistency=s"]);
    p.ok(&[ALICE, "get", "r/", "--prefix", "--rev", "2"]);
    p.fails(
        &[ALICE, "get", "w/1"],
        "Error: etcdserver: permission denied",
    );
    p.fails(
        &[ALICE, "get", "secret"],
        "Error: etcdserver: permission denied",
    );
    p.fails(
        &[ALICE, "get", "secret", "--consistency=s"],
        "Error: etcdserver: permission denied",
    );
    p.fails(
        &[ALICE, "get", "", "--from-key"],
        "Error: etcdserver: permission denied",
    );
    p.fails(
        &[ALICE, "get", "r/", "s"],
        "Error: etcdserver: permission denied",
    );
    p.fails(
        &[ALICE, "get", "r", "--prefix"],
        "Error: etcdserver: permission denied",
    );
    assert_eq!(p.ok(&[ALICE, "put", "w/2", "v"]), "OK\n");
    p.fails(
        &[ALICE, "put", "r/2", "v"],
        "Error: etcdserver: permission denied",
    );
    // --prev-kv needs read too.
    p.fails(
        &[ALICE, "put", "w/2", "v2", "--prev-kv"],
        "Error: etcdserver: permission denied",
    );
    p.ok(&[ALICE, "put", "rw", "z2", "--prev-kv"]);
    p.fails(
        &[ALICE, "del", "w/1", "--prev-kv"],
        "Error: etcdserver: permission denied",
    );
    p.fails(
        &[ALICE, "del", "r/1"],
        "Error: etcdserver: permission denied",
    );
    p.fails(
        &[ALICE, "del", "secret"],
        "Error: etcdserver: permission denied",
    );
    assert_eq!(p.ok(&[ALICE, "del", "w/2"]), "1\n");
    p.ok(&[ALICE, "del", "rw", "--prev-kv"]);
    p.ok(&[ALICE, "put", "w/3", "v"]);
    p.ok(&[ALICE, "del", "w/", "--prefix"]);
    p.fails(
        &[ALICE, "del", "w", "--prefix"],
        "Error: etcdserver: permission denied",
    );
    // A user without roles.
    p.fails(
        &["--user=bob:bobpw", "get", "r/1"],
        "Error: etcdserver: permission denied",
    );
    p.fails(
        &["--user=bob:bobpw", "put", "w/1", "v"],
        "Error: etcdserver: permission denied",
    );
    // Root may do anything.
    p.ok(&[ROOT, "get", "", "--from-key"]);
    p.ok(&[ROOT, "put", "w/1", "y2"]);
    p.ok(&[ROOT, "put", "rw", "z3"]);

    // Txn: every compare and every op of both branches is checked, taken
    // or not.
    let o = p.txn(
        ALICE,
        &[r#"value("r/1") = "x""#],
        &["put w/t ok"],
        &["get r/1"],
    );
    assert!(o.ok() && o.stdout.starts_with("SUCCESS"), "{o:?}");
    let o = p.txn(ALICE, &[r#"value("secret") = "s""#], &["put w/t ok"], &[]);
    assert!(o.stderr.contains("permission denied"), "{o:?}");
    let o = p.txn(ALICE, &[r#"value("r/1") = "x""#], &["put r/t ok"], &[]);
    assert!(o.stderr.contains("permission denied"), "{o:?}");
    let o = p.txn(
        ALICE,
        &[r#"value("r/1") = "x""#],
        &["put w/t ok"],
        &["get w/t"],
    );
    assert!(o.stderr.contains("permission denied"), "{o:?}");
    let o = p.txn(
        ALICE,
        &[r#"value("r/1") = "x""#],
        &["put w/t ok"],
        &["put secret x"],
    );
    assert!(o.stderr.contains("permission denied"), "{o:?}");
    let o = p.txn(
        ALICE,
        &[r#"value("r/1") = "x""#],
        &["del w/t --prev-kv"],
        &[],
    );
    assert!(o.stderr.contains("permission denied"), "{o:?}");
    let o = p.txn(ALICE, &[r#"value("r/1") = "x""#], &["del w/t"], &[]);
    assert!(o.ok(), "{o:?}");
    // Read-only txns.
    let o = p.txn(ALICE, &[r#"value("r/1") = "x""#], &["get r/1"], &["get rw"]);
    assert!(o.ok(), "{o:?}");
    let o = p.txn(ALICE, &[], &["get secret"], &[]);
    assert!(o.stderr.contains("permission denied"), "{o:?}");
    let o = p.txn("", &[], &["get r/1"], &[]);
    assert!(o.stderr.contains("user name is empty"), "{o:?}");

    // Watch: refused watches are canceled by the server; etcdctl prints
    // the reason and exits.
    let o = p.watch(
        &[ALICE, "watch", "r/", "--prefix", "--rev", "1"],
        &[events(1)],
    );
    assert_eq!(o.stdout, "PUT\nr/1\nx\n");
    let o = p.watch(&[ALICE, "watch", "w/1"], &[W::Exit]);
    assert!(
        o.stderr.contains("watch was canceled (rpc error: code = PermissionDenied desc = etcdserver: permission denied)"),
        "{o:?}"
    );
    p.watch(&[ALICE, "watch", "r/", "s"], &[W::Exit]);
    p.watch(&[ALICE, "watch", "", "--prefix"], &[W::Exit]);
    let o = p.watch(&["watch", "r/1"], &[W::Exit]);
    assert!(o.stderr.contains("etcdserver: user name is empty"), "{o:?}");
    // Interactive: a refused watch does not end the others.
    p.watch(
        &[ALICE, "watch", "-i"],
        &[
            W::Send("watch secret".into()),
            W::ErrLines(1),
            W::Send("watch r/1 --rev 1".into()),
            events(1),
        ],
    );

    // Leases: granting needs no permission; revoking needs write on every
    // attached key, and so does attaching a key to a lease with such keys.
    p.ok(&["lease", "grant", "1000"]);
    p.ok(&["lease", "list"]);
    p.ok(&[ROOT, "lease", "grant", "2000"]);
    p.ok(&[ROOT, "put", "secret-leased", "v", "--lease", "<LEASE-2>"]);
    p.fails(
        &[ALICE, "lease", "revoke", "<LEASE-2>"],
        "Error: failed to revoke lease (etcdserver: permission denied)",
    );
    p.fails(
        &["lease", "revoke", "<LEASE-2>"],
        "etcdserver: user name is empty",
    );
    p.ok(&[ALICE, "lease", "timetolive", "<LEASE-2>", "--keys"]);
    p.ok(&[ALICE, "lease", "keep-alive", "--once", "<LEASE-2>"]);
    p.fails(
        &[ALICE, "put", "w/l", "v", "--lease", "<LEASE-2>"],
        "Error: etcdserver: permission denied",
    );
    p.ok(&[ALICE, "lease", "grant", "3000"]);
    p.ok(&[ALICE, "put", "w/l", "v", "--lease", "<LEASE-3>"]);
    p.ok(&[ALICE, "lease", "revoke", "<LEASE-3>"]);
    p.fails(&[ALICE, "get", "w/l"], "permission denied");
    assert_eq!(p.ok(&[ROOT, "get", "w/l"]), "");
    p.ok(&[ROOT, "lease", "revoke", "<LEASE-2>"]);
    p.ok(&[ALICE, "lease", "revoke", "<LEASE-1>"]);

    // Reading about oneself.
    assert_eq!(
        p.ok(&[ALICE, "user", "get", "alice"]),
        "User: alice\nRoles: ra\n"
    );
    p.ok(&[ALICE, "user", "get", "alice", "--detail"]);
    p.fails(
        &[ALICE, "user", "get", "root"],
        "Error: etcdserver: permission denied",
    );
    p.fails(
        &[ALICE, "user", "get", "nobody"],
        "Error: etcdserver: permission denied",
    );
    p.ok(&[ALICE, "role", "get", "ra"]);
    p.fails(
        &[ALICE, "role", "get", "root"],
        "Error: etcdserver: permission denied",
    );
    p.fails(
        &[ALICE, "role", "get", "nope"],
        "Error: etcdserver: permission denied",
    );
    p.fails(
        &["user", "get", "alice"],
        "Error: etcdserver: user name is empty",
    );
    // Managing needs an admin, even one's own password.
    for args in [
        &["user", "add", "x:y"][..],
        &["user", "list"],
        &["user", "delete", "bob"],
        &["user", "grant-role", "alice", "root"],
        &["user", "revoke-role", "alice", "ra"],
        &["role", "add", "x"],
        &["role", "list"],
        &["role", "delete", "ra"],
        &["role", "grant-permission", "ra", "readwrite", "secret"],
        &["role", "revoke-permission", "ra", "rw"],
        &["auth", "disable"],
    ] {
        let mut a = vec![ALICE];
        a.extend_from_slice(args);
        p.fails(&a, "Error: etcdserver: permission denied");
    }
    p.fails_stdin(
        &[ALICE, "user", "passwd", "alice", "--interactive=false"],
        "new\n",
        "Error: etcdserver: permission denied",
    );

    // Maintenance: defrag, snapshot and hashes need an admin (refused
    // with the raw "auth: ..." error, gRPC code Unknown); status, alarms
    // and compaction need nobody.
    p.fails(&[ALICE, "defrag"], "auth: permission denied");
    p.fails(&["defrag"], "auth: user name is empty");
    p.ok(&[ROOT, "defrag"]);
    p.fails(
        &[ALICE, "snapshot", "save", "<DIR>/alice.db"],
        "auth: permission denied",
    );
    p.fails(
        &["snapshot", "save", "<DIR>/anon.db"],
        "auth: user name is empty",
    );
    p.fails(&[ALICE, "endpoint", "hashkv"], "auth: permission denied");
    p.fails(&["endpoint", "hashkv"], "auth: user name is empty");
    p.ok(&[ROOT, "endpoint", "hashkv"]);
    p.ok(&[ALICE, "endpoint", "status"]);
    p.ok(&["endpoint", "status"]);
    p.ok(&["endpoint", "status", "-w", "json"]);
    // Health: a refused put counts as healthy, a missing user not.
    p.ok(&[ALICE, "endpoint", "health"]);
    p.ok(&[ROOT, "endpoint", "health"]);
    p.fails(&["endpoint", "health"], "Error: unhealthy cluster");
    p.ok(&["alarm", "list"]);
    p.ok(&[ALICE, "alarm", "list"]);
    p.ok(&[ALICE, "alarm", "disarm"]);
    let rev = p.ok(&[ROOT, "get", "rw", "-w", "json"]);
    let rev: serde_json::Value = serde_json::from_str(rev.trim()).unwrap();
    let rev = rev["header"]["revision"].as_i64().unwrap();
    p.ok(&[ALICE, "compaction", &(rev - 3).to_string()]);
    p.ok(&["compaction", &(rev - 1).to_string()]);
    p.fails(
        &[ALICE, "get", "r/1", "--rev", "2"],
        "required revision has been compacted",
    );

    // Cluster: listing is open, changes need an admin.
    p.ok(&[ALICE, "member", "list"]);
    p.ok(&["member", "list"]);
    p.ok(&["member", "list", "-w", "json"]);
    let new_peer = format!("http://127.0.0.1:{}", common::free_port());
    p.fails(
        &[
            ALICE,
            "member",
            "add",
            "m2",
            "--learner",
            "--peer-urls",
            &new_peer,
        ],
        "Error: etcdserver: permission denied",
    );
    p.fails(
        &["member", "add", "m2", "--learner", "--peer-urls", &new_peer],
        "Error: etcdserver: user name is empty",
    );
    p.fails(
        &[
            ALICE,
            "member",
            "update",
            "<MEMBER-ID>",
            "--peer-urls",
            &new_peer,
        ],
        "Error: etcdserver: permission denied",
    );
    p.fails(
        &[ALICE, "member", "remove", "<MEMBER-ID>"],
        "Error: etcdserver: permission denied",
    );

    // Another admin: any user with the root role.
    p.ok(&[ROOT, "user", "add", "admin:adminpw"]);
    p.ok(&[ROOT, "user", "grant-role", "admin", "root"]);
    p.ok(&["--user=admin:adminpw", "user", "list"]);
    p.ok(&["--user=admin:adminpw", "get", "secret"]);
    p.ok(&["--user=admin:adminpw", "defrag"]);
    p.ok(&["--user=admin:adminpw", "user", "get", "root"]);
    p.ok(&[
        "--user=admin:adminpw",
        "user",
        "revoke-role",
        "admin",
        "root",
    ]);
    p.fails(
        &["--user=admin:adminpw", "user", "list"],
        "Error: etcdserver: permission denied",
    );

    // Last, as it changes the cluster: root adds a learner (it does not
    // count for the quorum, so the servers keep serving).
    let o = p.ok(&[
        ROOT,
        "member",
        "add",
        "m2",
        "--learner",
        "--peer-urls",
        &new_peer,
    ]);
    assert!(
        o.starts_with("Member <NEW-MEMBER-1> added to cluster <CLUSTER-ID>"),
        "{o}"
    );
    p.ok(&[ALICE, "member", "list"]);
}

/// Permissions take effect at once: granting, revoking, replacing the
/// type, prefixes, ranges, open ends, and the union of the permissions of
/// several roles (etcd merges the intervals); password changes and user
/// deletion.
#[test]
fn permission_changes_take_effect() {
    let mut p = Pair::start(&[]);
    for k in [
        "a", "b", "bz", "c", "d", "e", "f", "p/1", "p0", "y", "z1", "zz",
    ] {
        p.ok(&["put", k, "v"]);
    }
    p.ok(&["user", "add", "root:rootpw"]);
    p.ok(&["user", "grant-role", "root", "root"]);
    p.ok(&["user", "add", "alice:alicepw"]);
    p.ok(&["role", "add", "ra"]);
    p.ok(&["user", "grant-role", "alice", "ra"]);
    p.ok(&["auth", "enable"]);
    let denied = "Error: etcdserver: permission denied";

    p.fails(&[ALICE, "get", "a"], denied);
    // A range covers exactly [key, end).
    p.ok(&[ROOT, "role", "grant-permission", "ra", "read", "a", "c"]);
    for k in ["a", "b", "bz"] {
        p.ok(&[ALICE, "get", k]);
    }
    p.fails(&[ALICE, "get", "c"], denied);
    p.ok(&[ALICE, "get", "a", "c"]);
    p.ok(&[ALICE, "get", "b", "c"]);
    p.ok(&[ALICE, "get", "a", "--prefix"]);
    p.fails(&[ALICE, "get", "a", "d"], denied);
    // An empty key is refused before any permission check.
    p.fails(
        &[ALICE, "get", "", "c"],
        "Error: etcdserver: key is not provided",
    );
    p.fails(&[ALICE, "put", "a", "x"], denied);
    // The same range again replaces the type: write only now.
    p.ok(&[ROOT, "role", "grant-permission", "ra", "write", "a", "c"]);
    p.fails(&[ALICE, "get", "a"], denied);
    p.ok(&[ALICE, "put", "a", "x"]);
    p.ok(&[ALICE, "del", "a", "c"]);
    p.fails(&[ALICE, "del", "a", "d"], denied);
    p.ok(&[
        ROOT,
        "role",
        "grant-permission",
        "ra",
        "readwrite",
        "a",
        "c",
    ]);
    p.ok(&[ALICE, "put", "b", "x"]);
    p.ok(&[ALICE, "get", "a", "c"]);

    // Two roles: adjacent ranges merge.
    p.ok(&[ROOT, "role", "add", "rb"]);
    p.ok(&[ROOT, "role", "grant-permission", "rb", "read", "c", "e"]);
    p.fails(&[ALICE, "get", "a", "e"], denied);
    p.ok(&[ROOT, "user", "grant-role", "alice", "rb"]);
    p.ok(&[ALICE, "get", "a", "e"]);
    p.fails(&[ALICE, "get", "a", "f"], denied);
    p.fails(&[ALICE, "put", "c", "x"], denied);
    // Overlapping ranges of a third role merge too.
    p.ok(&[ROOT, "role", "add", "rc"]);
    p.ok(&[ROOT, "role", "grant-permission", "rc", "read", "d", "g"]);
    p.ok(&[ROOT, "user", "grant-role", "alice", "rc"]);
    p.ok(&[ALICE, "get", "a", "g"]);
    p.ok(&[ALICE, "get", "bz", "f"]);
    // A gap: [a, c) and [d, g) do not cover [a, g).
    p.ok(&[ROOT, "role", "revoke-permission", "rb", "c", "e"]);
    p.fails(&[ALICE, "get", "a", "g"], denied);
    p.fails(&[ALICE, "get", "c"], denied);
    p.ok(&[ALICE, "get", "d", "g"]);
    // Within one role, too.
    p.ok(&[ROOT, "role", "grant-permission", "ra", "read", "c", "d"]);
    p.ok(&[ALICE, "get", "a", "g"]);
    p.ok(&[ROOT, "role", "revoke-permission", "ra", "c", "d"]);

    // A prefix covers the keys under it, not its end.
    p.ok(&[
        ROOT,
        "role",
        "grant-permission",
        "ra",
        "readwrite",
        "p/",
        "--prefix",
    ]);
    p.ok(&[ALICE, "put", "p/1", "x"]);
    p.ok(&[ALICE, "put", "p/", "x"]);
    p.ok(&[ALICE, "put", "p/deeper/key", "x"]);
    p.fails(&[ALICE, "put", "p0", "x"], denied);
    p.fails(&[ALICE, "put", "p", "x"], denied);
    p.ok(&[ALICE, "get", "p/", "--prefix"]);
    p.fails(&[ALICE, "get", "p", "--prefix"], denied);
    // Open-ended.
    p.ok(&[
        ROOT,
        "role",
        "grant-permission",
        "ra",
        "read",
        "z",
        "--from-key",
    ]);
    p.ok(&[ALICE, "get", "z1"]);
    p.ok(&[ALICE, "get", "zz"]);
    p.ok(&[ALICE, "get", "z", "--from-key"]);
    p.fails(&[ALICE, "get", "y", "--from-key"], denied);
    p.ok(&[
        ROOT,
        "role",
        "grant-permission",
        "ra",
        "write",
        "z",
        "--from-key",
    ]);
    p.ok(&[ALICE, "put", "\u{ff}\u{ff}", "x"]);
    p.fails(&[ALICE, "get", "zz"], denied);
    p.ok(&[ROOT, "role", "revoke-permission", "ra", "z", "--from-key"]);
    p.fails(&[ALICE, "put", "z9", "x"], denied);
    // The whole key space, then revoked.
    p.ok(&[
        ROOT,
        "role",
        "grant-permission",
        "ra",
        "read",
        "",
        "--prefix",
    ]);
    p.ok(&[ALICE, "get", "", "--from-key", "--keys-only"]);
    p.ok(&[ROOT, "role", "get", "ra"]);
    p.ok(&[ROOT, "role", "revoke-permission", "ra", "", "--prefix"]);
    p.fails(&[ALICE, "get", "", "--from-key"], denied);
    // Revoking a prefix.
    p.ok(&[ROOT, "role", "revoke-permission", "ra", "p/", "--prefix"]);
    p.fails(&[ALICE, "put", "p/1", "x"], denied);

    // Taking a role away, deleting a role.
    p.ok(&[ROOT, "user", "revoke-role", "alice", "rc"]);
    p.fails(&[ALICE, "get", "d"], denied);
    p.ok(&[ROOT, "user", "grant-role", "alice", "rc"]);
    p.ok(&[ALICE, "get", "d"]);
    p.ok(&[ROOT, "role", "delete", "rc"]);
    p.fails(&[ALICE, "get", "d"], denied);
    p.ok(&[ROOT, "user", "get", "alice"]);

    // A new password replaces the old one.
    p.ok_stdin(
        &[ROOT, "user", "passwd", "alice", "--interactive=false"],
        "newpw\n",
    );
    p.fails(
        &[ALICE, "get", "a"],
        "authentication failed, invalid user ID or password",
    );
    p.ok(&["--user=alice:newpw", "get", "a"]);
    // A deleted user cannot log in; a new user of that name starts over.
    p.ok(&[ROOT, "user", "delete", "alice"]);
    p.fails(
        &["--user=alice:newpw", "get", "a"],
        "authentication failed, invalid user ID or password",
    );
    p.ok(&[ROOT, "user", "add", "alice:again"]);
    p.fails(&["--user=alice:again", "get", "a"], denied);
    // Root keeps all.
    p.ok(&[ROOT, "get", "", "--from-key", "--keys-only"]);
}

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    /// Client certificates by common name.
    clients: Vec<(String, (PathBuf, PathBuf))>,
}

impl Pki {
    fn client(&self, cn: &str) -> &(PathBuf, PathBuf) {
        &self.clients.iter().find(|(c, _)| c == cn).unwrap().1
    }

    /// etcdctl flags presenting the certificate of `cn` (given after the
    /// default ones, they win: the last of Go's repeated flags counts).
    fn as_cn(&self, cn: &str) -> (String, String) {
        let (c, k) = self.client(cn);
        (
            format!("--cert={}", c.display()),
            format!("--key={}", k.display()),
        )
    }
}

/// A CA, a server certificate for 127.0.0.1 and client certificates whose
/// common names are `cns` (rcgen, ECDSA P-256, as in tls.rs).
fn pki(cns: &[&str]) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(DnType::CommonName, "auth test CA");
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = p.self_signed(&ca_key).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    let issue = |file: &str, cn: &str, hosts: &[&str]| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(1);
        p.not_after = now + time::Duration::days(365);
        let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
        let (c, k) = (
            dir.path().join(format!("{file}.pem")),
            dir.path().join(format!("{file}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    };
    let server = issue("server", "etcd-server", &["127.0.0.1", "localhost"]);
    let clients = cns
        .iter()
        .map(|cn| (cn.to_string(), issue(&format!("client-{cn}"), cn, &[])))
        .collect();
    Pki {
        ca,
        server,
        clients,
        _dir: dir,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `--client-cert-auth`: without a token, the common name of the client
/// certificate is the user; a token (`--user`) wins over the certificate.
#[test]
fn client_certificate_common_name_is_the_user() {
    // "etcdctl" (the certificate of every call that names no other) is
    // no user.
    let pki = pki(&["etcdctl", "root", "alice", "carol", "nobody"]);
    let default = pki.client("etcdctl");
    let server_flags = [
        "--cert-file",
        s(&pki.server.0),
        "--key-file",
        s(&pki.server.1),
        "--trusted-ca-file",
        s(&pki.ca),
        "--client-cert-auth",
    ];
    let ctl = [
        "--cacert",
        s(&pki.ca),
        "--cert",
        s(&default.0),
        "--key",
        s(&default.1),
    ];
    let mut p = Pair::start_custom("https", &server_flags, &ctl);
    let cn = |name: &str| pki.as_cn(name);
    let (root_c, root_k) = cn("root");
    let (alice_c, alice_k) = cn("alice");
    let (carol_c, carol_k) = cn("carol");
    let (nobody_c, nobody_k) = cn("nobody");
    let as_root = [root_c.as_str(), root_k.as_str()];
    let as_alice = [alice_c.as_str(), alice_k.as_str()];
    let as_carol = [carol_c.as_str(), carol_k.as_str()];
    let as_nobody = [nobody_c.as_str(), nobody_k.as_str()];
    let with = |who: &[&str; 2], args: &[&'static str]| -> Vec<String> {
        who.iter()
            .map(|s| s.to_string())
            .chain(args.iter().map(|s| s.to_string()))
            .collect()
    };
    let run = |p: &mut Pair, v: Vec<String>| {
        let a: Vec<&str> = v.iter().map(String::as_str).collect();
        p.run(&a)
    };
    let denied = "Error: etcdserver: permission denied";

    // Auth disabled: certificates are only for TLS.
    p.ok(&["put", "a/1", "v"]);
    p.ok(&["put", "secret", "s"]);
    assert!(run(&mut p, with(&as_alice, &["get", "secret"])).ok());
    p.ok(&["user", "add", "root:rootpw"]);
    p.ok(&["user", "grant-role", "root", "root"]);
    p.ok(&["user", "add", "alice:alicepw"]);
    p.ok(&["user", "add", "carol", "--no-password"]);
    p.ok(&["role", "add", "ra"]);
    p.ok(&[
        "role",
        "grant-permission",
        "ra",
        "readwrite",
        "a/",
        "--prefix",
    ]);
    p.ok(&["user", "grant-role", "alice", "ra"]);
    p.ok(&["user", "grant-role", "carol", "ra"]);
    let o = run(&mut p, with(&as_root, &["auth", "enable"]));
    assert!(o.ok(), "{o:?}");

    // The common name is the user.
    assert!(run(&mut p, with(&as_alice, &["get", "a/1"])).ok());
    assert!(run(&mut p, with(&as_alice, &["put", "a/2", "v"])).ok());
    let o = run(&mut p, with(&as_alice, &["get", "secret"]));
    assert!(o.stderr.contains(denied), "{o:?}");
    assert!(run(&mut p, with(&as_alice, &["user", "get", "alice"])).ok());
    let o = run(&mut p, with(&as_alice, &["user", "list"]));
    assert!(o.stderr.contains(denied), "{o:?}");
    let o = run(&mut p, with(&as_alice, &["defrag"]));
    assert!(o.stderr.contains("auth: permission denied"), "{o:?}");
    assert!(run(&mut p, with(&as_root, &["get", "secret"])).ok());
    assert!(run(&mut p, with(&as_root, &["user", "list"])).ok());
    assert!(run(&mut p, with(&as_root, &["defrag"])).ok());
    assert!(run(&mut p, with(&as_root, &["member", "list"])).ok());
    // A user without a password logs in by certificate only.
    assert!(run(&mut p, with(&as_carol, &["get", "a/1"])).ok());
    let o = run(&mut p, with(&as_carol, &["--user=carol:x", "get", "a/1"]));
    assert!(
        o.stderr.contains("password was given for no password user"),
        "{o:?}"
    );
    // A common name that is no user.
    let o = run(&mut p, with(&as_nobody, &["get", "a/1"]));
    assert!(o.stderr.contains(denied), "{o:?}");
    let o = run(&mut p, with(&as_nobody, &["user", "list"]));
    assert!(!o.ok(), "{o:?}");
    let o = run(&mut p, with(&as_nobody, &["defrag"]));
    assert!(!o.ok(), "{o:?}");
    p.fails(&["get", "a/1"], denied);
    // Watches.
    let w = with(&as_alice, &["watch", "a/", "--prefix", "--rev", "1"]);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    p.watch(&w, &[events(2)]);
    let w = with(&as_alice, &["watch", "secret"]);
    let w: Vec<&str> = w.iter().map(String::as_str).collect();
    let o = p.watch(&w, &[W::Exit]);
    assert!(o.stderr.contains("permission denied"), "{o:?}");

    // A token wins over the certificate.
    assert!(run(&mut p, with(&as_alice, &[ROOT, "get", "secret"])).ok());
    assert!(run(&mut p, with(&as_alice, &[ROOT, "user", "list"])).ok());
    let o = run(&mut p, with(&as_root, &[ALICE, "get", "secret"]));
    assert!(o.stderr.contains(denied), "{o:?}");
    let o = run(
        &mut p,
        with(&as_root, &["--user=alice:wrong", "get", "a/1"]),
    );
    assert!(o.stderr.contains("authentication failed"), "{o:?}");
    assert!(run(&mut p, with(&as_nobody, &[ALICE, "get", "a/1"])).ok());
    // Permission changes apply to certificate users at once.
    assert!(run(
        &mut p,
        with(&as_root, &["user", "revoke-role", "alice", "ra"])
    )
    .ok());
    let o = run(&mut p, with(&as_alice, &["get", "a/1"]));
    assert!(o.stderr.contains(denied), "{o:?}");
    assert!(run(&mut p, with(&as_root, &["auth", "disable"])).ok());
    assert!(run(&mut p, with(&as_alice, &["get", "secret"])).ok());
}

/// The flow most deployments use: users and a role set up while auth is
/// off, `auth enable`, then a user's allowed and refused requests, a
/// watch, an admin's requests.
fn basic_flow(p: &mut Pair) {
    p.ok(&["put", "r/1", "v1"]);
    p.ok(&["put", "secret", "s"]);
    p.ok(&["user", "add", "root:rootpw"]);
    p.ok(&["user", "add", "alice:alicepw"]);
    p.ok(&["role", "add", "ra"]);
    p.ok(&["role", "grant-permission", "ra", "read", "r/", "--prefix"]);
    p.ok(&["role", "grant-permission", "ra", "write", "w/", "--prefix"]);
    p.ok(&["user", "grant-role", "alice", "ra"]);
    assert_eq!(p.ok(&["auth", "enable"]), "Authentication Enabled\n");
    let denied = "Error: etcdserver: permission denied";
    p.ok(&[ALICE, "get", "r/1"]);
    p.fails(&[ALICE, "get", "secret"], denied);
    p.ok(&[ALICE, "put", "w/1", "x"]);
    p.fails(&[ALICE, "put", "r/1", "x"], denied);
    let o = p.txn(
        ALICE,
        &[r#"value("r/1") = "v1""#],
        &["put w/2 y"],
        &["get r/1"],
    );
    assert!(o.ok(), "{o:?}");
    let o = p.txn(ALICE, &[r#"value("secret") = "s""#], &["put w/2 y"], &[]);
    assert!(o.stderr.contains("permission denied"), "{o:?}");
    p.watch(
        &[ALICE, "watch", "r/", "--prefix", "--rev", "1"],
        &[events(1)],
    );
    p.watch(&[ALICE, "watch", "secret"], &[W::Exit]);
    p.ok(&[ALICE, "user", "get", "alice"]);
    p.fails(&[ALICE, "user", "list"], denied);
    p.fails(&[ALICE, "defrag"], "auth: permission denied");
    p.ok(&[ROOT, "user", "list"]);
    p.ok(&[ROOT, "get", "secret"]);
    p.ok(&[ROOT, "defrag"]);
    p.fails(
        &["--user=alice:wrong", "get", "r/1"],
        "authentication failed, invalid user ID or password",
    );
    p.fails(&["get", "r/1"], "Error: etcdserver: user name is empty");
    // Tokens of a changed user: new logins use the new state.
    p.ok(&[ROOT, "user", "revoke-role", "alice", "ra"]);
    p.fails(&[ALICE, "get", "r/1"], denied);
    p.ok(&[ROOT, "auth", "disable"]);
    p.ok(&[ALICE, "get", "secret"]);
}

/// Simple tokens with `--auth-token-ttl 2`: an interactive watch opened
/// before its token expired keeps working after (etcd cancels the new
/// watch with "invalid auth token" and etcdctl's client logs in again and
/// resumes, which shows nowhere in etcdctl's output; the real etcd's log
/// proves the expiry happened). Nothing else of a token's lifetime is
/// visible through etcdctl, which logs in afresh for every command.
#[test]
fn simple_token_ttl_expiry_is_transparent() {
    let flags = ["--auth-token", "simple", "--auth-token-ttl", "2"];
    let mut p = Pair::start(&flags);
    p.ok(&["put", "r/1", "v1"]);
    p.ok(&["user", "add", "root:rootpw"]);
    p.ok(&["user", "add", "alice:alicepw"]);
    p.ok(&["role", "add", "ra"]);
    p.ok(&["role", "grant-permission", "ra", "read", "r/", "--prefix"]);
    p.ok(&["user", "grant-role", "alice", "ra"]);
    p.ok(&["auth", "enable"]);
    let o = p.watch(
        &[ALICE, "watch", "-i"],
        &[
            W::Send("watch r/1 --rev 1".into()),
            events(1),
            // Past the TTL (2 s, checked every second).
            W::Sleep(Duration::from_secs(5)),
            W::Send("watch r/ --prefix --rev 1".into()),
            events(2),
        ],
    );
    assert_eq!(o.stdout, "PUT\nr/1\nv1\nPUT\nr/1\nv1\n");
    for log in p.real_logs() {
        assert!(
            log.contains("invalid auth token"),
            "the token did not expire:\n{log}"
        );
    }
    p.ok(&[ALICE, "get", "r/1"]);
    p.fails(&[ALICE, "put", "r/1", "x"], "permission denied");
}

/// Path of one of the certificates Debian ships with etcd's Go sources
/// (`golang-etcd-server-dev`), which etcd's own e2e tests sign JWTs with.
fn debian_fixture(name: &str) -> String {
    let f = Path::new("/usr/share/gocode/src/go.etcd.io/etcd/integration/fixtures").join(name);
    assert!(
        f.exists(),
        "{}: apt-get install golang-etcd-server-dev (scripts/test does it)",
        f.display()
    );
    f.to_str().unwrap().to_string()
}

/// `--auth-token jwt,...,sign-method=RS256` with the RSA key pair of
/// etcd's own e2e tests (`configJWT`): the same flow as with simple tokens.
#[test]
fn jwt_rs256_tokens() {
    let opts = format!(
        "jwt,pub-key={},priv-key={},sign-method=RS256,ttl=10m",
        debian_fixture("server.crt"),
        debian_fixture("server.key.insecure")
    );
    let mut p = Pair::start(&["--auth-token", &opts]);
    basic_flow(&mut p);
}

/// `--auth-token jwt,...,sign-method=ES256` with a P-256 key made here
/// (PKCS#8 private key, SPKI public key); a short ttl expires the token of
/// an open watch, which etcdctl's client renews transparently.
#[test]
fn jwt_es256_tokens_and_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let (private, public) = (dir.path().join("jwt.key"), dir.path().join("jwt.pub"));
    std::fs::write(&private, key.serialize_pem()).unwrap();
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let opts = format!(
        "jwt,pub-key={},priv-key={},sign-method=ES256,ttl=10m",
        s(&public),
        s(&private)
    );
    let mut p = Pair::start(&["--auth-token", &opts]);
    basic_flow(&mut p);
    drop(p);

    let opts = format!(
        "jwt,pub-key={},priv-key={},sign-method=ES256,ttl=2s",
        s(&public),
        s(&private)
    );
    let mut p = Pair::start(&["--auth-token", &opts]);
    p.ok(&["put", "r/1", "v1"]);
    p.ok(&["user", "add", "root:rootpw"]);
    p.ok(&["user", "add", "alice:alicepw"]);
    p.ok(&["role", "add", "ra"]);
    p.ok(&["role", "grant-permission", "ra", "read", "r/", "--prefix"]);
    p.ok(&["user", "grant-role", "alice", "ra"]);
    p.ok(&["auth", "enable"]);
    let o = p.watch(
        &[ALICE, "watch", "-i"],
        &[
            W::Send("watch r/1 --rev 1".into()),
            events(1),
            W::Sleep(Duration::from_secs(4)),
            W::Send("watch r/ --prefix --rev 1".into()),
            events(2),
        ],
    );
    assert_eq!(o.stdout, "PUT\nr/1\nv1\nPUT\nr/1\nv1\n");
    p.ok(&[ALICE, "get", "r/1"]);
}
