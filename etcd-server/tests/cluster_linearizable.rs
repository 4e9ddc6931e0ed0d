//! A cluster under faults, checked: six clients run random puts,
//! linearizable gets, deletes and compare-and-set txns on three shared
//! keys, one watcher per member watches them, and a lease client grants,
//! keeps alive and abandons leases, while a nemesis isolates members,
//! kill -9s and restarts them, cuts links (both ways or one way, through
//! the proxies of `common::cluster`), pauses them (SIGSTOP, then SIGCONT),
//! moves the leader and replaces members. Then:
//! - every call and response of the clients is checked with
//!   `etcd_core::linearizability` (a failed or timed-out request has an
//!   unknown outcome: it may take effect later, or never; clients of a
//!   killed member send nothing until it is back), so a lost acknowledged
//!   write, a stale read served by a deposed leader or a minority, or a
//!   revision handed out twice fails the test;
//! - every member ends with the same HashKV;
//! - the watchers' streams (resumed after each break at the revision after
//!   the last one seen) keep etcd's six watch guarantees
//!   (`common::watch_check`) against a full watch of the leader;
//! - no lease expires before its TTL and every lease expires soon after
//!   the faults end (`common::lease_check`).
//!
//! Two nemeses: a scripted one on 3 members, run against the real etcd too
//! (which validates the checks), and a seeded one on 3 or 5 members (the
//! chaos run: docs/cluster_tests.md). A failed run leaves the members'
//! logs and everything recorded in an artifacts directory.
//!
//! Each fault phase lasts a minimum time (so elections happen) and until
//! [`OPS_PER_PHASE`] operations have completed; clients send at most that
//! many per phase, so the history's size does not depend on the machine's
//! speed (a time cap is only a safety net).

mod common;

use common::budget::{OpBudget, IDLE};
use common::cluster::Cluster;
use common::history::{random_input, send, KEYS};
use common::lease_check::{lease_client, Leases};
use common::watch_check::{
    check as check_watch, ev_of, wait_seen, watch_until, watcher, Record, Truth,
};
use common::Kind;
use etcd_core::linearizability::{check, Input, KvModel, Operation, Output, Recorder, Verdict};
use etcd_server::rpc::etcdserverpb::{kv_client::KvClient, PutRequest};
use rand::SeedableRng;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

const CLIENTS: u64 = 6;
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
const SECS_20: Duration = Duration::from_secs(20);
/// Operations (answered or not) per phase.
const OPS_PER_PHASE: u64 = 150;
/// Most states the checker explores. Under heavy CPU load responses
/// overlap more and histories get harder to check: 2M states gave up once
/// with two CPU hogs beside the test run on 2 cores.
const MAX_CHECK_STATES: usize = 10_000_000;
/// Safety cap on one phase.
const PHASE_CAP: Duration = Duration::from_secs(60);
/// Lease clients (`common::lease_check`).
const LEASE_CLIENTS: u64 = 2;
/// TTL of the lease clients' leases, in seconds (etcd's minimum with the
/// cluster's 500 ms election timeout is 1).
const LEASE_TTL: i64 = 2;
/// How long past its TTL a lease may outlive the end of the faults: an
/// election timeout (a new leader extends every lease by one), the
/// lessor's expiry check (every 500 ms) and the revoke's commit.
const LEASE_SLACK: Duration = Duration::from_secs(4);

/// One phase of the nemesis: allows [`OPS_PER_PHASE`] operations, then
/// waits at least `min` and until they have completed.
fn phase(budget: &OpBudget, min: Duration) {
    let start = Instant::now();
    budget.refill(OPS_PER_PHASE);
    budget.wait_done(OPS_PER_PHASE, PHASE_CAP);
    if let Some(rest) = min.checked_sub(start.elapsed()) {
        std::thread::sleep(rest);
    }
}

/// Where each client sends: slot `k` (a KV client, a watcher) is bound to
/// a member; while that member is killed its clients send nothing, and
/// when it is replaced they follow its replacement.
struct Routes(std::sync::Mutex<Vec<Route>>);

#[derive(Clone, Debug)]
struct Route {
    member: usize,
    url: String,
    /// The member is killed: send nothing (and record nothing).
    down: bool,
}

impl Routes {
    /// `slots` slots bound round-robin to the cluster's members.
    fn new(c: &Cluster, slots: usize) -> Routes {
        let n = c.members.len();
        Routes(std::sync::Mutex::new(
            (0..slots)
                .map(|k| Route {
                    member: k % n,
                    url: c.members[k % n].client_url.clone(),
                    down: false,
                })
                .collect(),
        ))
    }

    /// Where slot `k` sends now; None while its member is down.
    fn url(&self, k: usize) -> Option<String> {
        let r = self.0.lock().unwrap()[k].clone();
        (!r.down).then_some(r.url)
    }

    fn set_down(&self, member: usize, down: bool) {
        for r in self.0.lock().unwrap().iter_mut() {
            if r.member == member {
                r.down = down;
            }
        }
    }

    /// The clients of `from` (removed) go to `to` (its replacement).
    fn rebind(&self, from: usize, to: usize, url: &str) {
        for r in self.0.lock().unwrap().iter_mut() {
            if r.member == from {
                *r = Route {
                    member: to,
                    url: url.to_string(),
                    down: false,
                };
            }
        }
    }
}

/// Runs KV client `k` until `stop`, sending where its route says. After
/// an unknown outcome it goes on under a fresh client id (the unknown
/// request may still take effect, concurrently with what follows).
#[allow(clippy::too_many_arguments)]
async fn client(
    k: usize,
    routes: Arc<Routes>,
    seed: u64,
    ids: Arc<AtomicU64>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    budget: Arc<OpBudget>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut id = ids.fetch_add(1, Ordering::SeqCst);
    let mut n = 0;
    let mut conn: Option<(String, KvClient<Channel>)> = None;
    while !stop.load(Ordering::SeqCst) {
        let Some(url) = routes.url(k) else {
            // The member is killed: nothing is sent, nothing recorded.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        if conn.as_ref().map(|(u, _)| u) != Some(&url) {
            let ch = Endpoint::from_shared(url.clone())
                .unwrap()
                .connect_timeout(Duration::from_millis(500))
                .connect_lazy();
            conn = Some((url, KvClient::new(ch)));
        }
        let kv = &mut conn.as_mut().unwrap().1;
        if !budget.take() {
            tokio::time::sleep(IDLE).await;
            continue;
        }
        let input = random_input(&mut rng, id, n, 6);
        n += 1;
        let call = rec.call(id, input.clone());
        let out = send(kv, &input, REQUEST_TIMEOUT).await;
        budget.done();
        match out {
            Some(out) => rec.ret(call, out),
            None => {
                id = ids.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// What a nemesis gets: the cluster, the clients' operation budget, their
/// routes, and the log where it notes each fault as it causes it (kept
/// when the run fails midway).
type Nemesis<'a> = Box<dyn FnOnce(&mut Cluster, &OpBudget, &Routes, &mut Vec<String>) + 'a>;

fn histories_under_faults(kind: Kind) {
    histories(
        kind,
        3,
        &format!("scripted-{kind:?}"),
        Box::new(scripted_nemesis),
    );
}

/// Everything a run recorded, checked after the nemesis and written out
/// as artifacts when a check fails.
struct Run {
    rec: Arc<Recorder>,
    watches: Vec<Arc<tokio::sync::Mutex<Record>>>,
    leases: Arc<Leases>,
    log: Vec<String>,
}

/// Records the clients' history, the watchers' streams and the lease
/// client's probes on a `members`-member cluster while `nemesis` runs,
/// then checks them (see [`check_run`]). On a failure the members' logs
/// and everything recorded go to `<artifacts>/<label>/` (`CHAOS_ARTIFACTS`,
/// by default `chaos-artifacts` in the target's tmp dir).
fn histories(kind: Kind, members: usize, label: &str, nemesis: Nemesis<'_>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut c = Cluster::start(kind, members);
    let slots = CLIENTS as usize + members;
    let routes = Arc::new(Routes::new(&c, slots));
    let mut run = Run {
        rec: Arc::new(Recorder::new()),
        watches: (0..members).map(|_| Arc::default()).collect(),
        leases: Arc::default(),
        log: Vec::new(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let ids = Arc::new(AtomicU64::new(0));
    let budget = Arc::new(OpBudget::new());
    let clients: Vec<_> = (0..CLIENTS as usize)
        .map(|k| {
            let (routes, ids, rec) = (routes.clone(), ids.clone(), run.rec.clone());
            let (stop, budget) = (stop.clone(), budget.clone());
            rt.spawn(client(k, routes, k as u64, ids, rec, stop, budget))
        })
        .collect();
    let watchers: Vec<_> = run
        .watches
        .iter()
        .enumerate()
        .map(|(w, record)| {
            let routes = routes.clone();
            let url = move || routes.url(CLIENTS as usize + w);
            rt.spawn(watcher(url, "k", false, record.clone(), stop_watch.clone()))
        })
        .collect();
    let lease_tasks: Vec<_> = (1..=LEASE_CLIENTS)
        .map(|seed| {
            let routes = routes.clone();
            let url = move |n: u64| routes.url(((n + seed) % CLIENTS) as usize);
            let (leases, stop) = (run.leases.clone(), stop.clone());
            rt.spawn(lease_client(url, LEASE_TTL, seed, leases, stop))
        })
        .collect();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        nemesis(&mut c, &budget, &routes, &mut run.log);
        stop.store(true, Ordering::SeqCst);
        for t in clients {
            rt.block_on(t).expect("client task");
        }
        for t in lease_tasks {
            rt.block_on(t).expect("lease client");
        }
        check_run(kind, &c, &rt, &run, Instant::now(), &stop_watch);
        for w in watchers {
            rt.block_on(w).expect("watcher");
        }
    }));
    if let Err(panic) = outcome {
        stop.store(true, Ordering::SeqCst);
        stop_watch.store(true, Ordering::SeqCst);
        save_artifacts(&c, &rt, &run, label);
        std::panic::resume_unwind(panic);
    }
}

/// Writes the members' logs and what `run` recorded to
/// `<CHAOS_ARTIFACTS or target tmp dir/chaos-artifacts>/<label>/`.
fn save_artifacts(c: &Cluster, rt: &tokio::runtime::Runtime, run: &Run, label: &str) {
    let root = std::env::var("CHAOS_ARTIFACTS")
        .unwrap_or_else(|_| format!("{}/chaos-artifacts", env!("CARGO_TARGET_TMPDIR")));
    let dir = std::path::Path::new(&root).join(label);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).expect("artifact");
    };
    for (i, m) in c.members.iter().enumerate() {
        write(&format!("{}.log", m.name), c.log(i));
    }
    write("faults.txt", run.log.join("\n") + "\n");
    let history: Vec<String> = run.rec.history().iter().map(|o| format!("{o:?}")).collect();
    write("history.txt", history.join("\n") + "\n");
    let mut watches = String::new();
    for (w, r) in run.watches.iter().enumerate() {
        let r = rt.block_on(r.lock()).clone();
        watches += &format!("watcher {w}: {r:#?}\n");
    }
    write("watches.txt", watches);
    // A check that panicked may have held it: what it guards is whole.
    let leases = run
        .leases
        .records
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    write("leases.txt", format!("{leases:#?}\n"));
    eprintln!("chaos artifacts of {label} in {}", dir.display());
}

/// One fault of a nemesis, on member `.0` (a cut: between `.0` and `.1`).
#[derive(Clone, Copy, Debug)]
enum Fault {
    Isolate(usize),
    /// kill -9, then a restart. The member's clients stop sending first
    /// (requests to a dead process would only add unknown outcomes, which
    /// widen the check's search); the requests in flight at the kill stay
    /// unknown.
    Kill(usize),
    Cut(usize, usize),
    /// Everything `.0` sends to `.1` is dropped; `.1` still reaches `.0`.
    OneWay(usize, usize),
    /// SIGSTOP (a long GC or VM stall) while its clients keep sending,
    /// then SIGCONT: a paused leader resumes still believing it leads and
    /// must serve nothing stale.
    Pause(usize),
}

impl Fault {
    /// The members it affects.
    fn members(self) -> Vec<usize> {
        match self {
            Fault::Isolate(t) | Fault::Kill(t) | Fault::Pause(t) => vec![t],
            Fault::Cut(t, u) | Fault::OneWay(t, u) => vec![t, u],
        }
    }
}

/// A change a nemesis makes while faults hold (or between them).
#[derive(Clone, Copy, Debug)]
enum Change {
    /// `move-leader` to this member (it may fail under faults).
    Transfer(usize),
    /// This member is replaced: killed, removed, and a new member added on
    /// an empty data dir (with `learner`: added as a learner and promoted
    /// first, then the old one killed and removed). Its clients follow.
    Replace { old: usize, learner: bool },
}

/// Causes every fault of `faults` (`who`: "leader" or "follower", for the
/// report), makes `change` while they hold, lets the clients run one
/// phase of at least `hold`, and undoes the faults; notes what happened
/// in `log` as it goes.
fn inject(
    c: &mut Cluster,
    budget: &OpBudget,
    routes: &Routes,
    log: &mut Vec<String>,
    faults: &[(Fault, &str)],
    change: Option<Change>,
    hold: Duration,
) {
    let mut what = Vec::new();
    for &(fault, who) in faults {
        what.push(match fault {
            Fault::Isolate(t) => {
                c.isolate(t);
                format!("isolate {who} {t}")
            }
            Fault::Kill(t) => {
                routes.set_down(t, true);
                c.kill9(t);
                format!("kill -9 {who} {t}")
            }
            Fault::Cut(t, u) => {
                c.cut(t, u);
                format!("cut {who} {t}-{u}")
            }
            Fault::OneWay(t, u) => {
                c.cut_one_way(t, u);
                format!("cut {who} {t}->{u}")
            }
            Fault::Pause(t) => {
                c.pause(t);
                format!("pause {who} {t}")
            }
        });
    }
    log.push(what.join(" + "));
    if let Some(change) = change {
        let done = make_change(c, routes, log, change);
        *log.last_mut().unwrap() = format!("{} + {done}", what.join(" + "));
    }
    phase(budget, hold);
    for &(fault, _) in faults.iter().rev() {
        match fault {
            Fault::Isolate(_) | Fault::Cut(..) | Fault::OneWay(..) => c.heal(),
            Fault::Kill(t) => {
                c.restart(t);
                routes.set_down(t, false);
            }
            Fault::Pause(t) => c.resume(t),
        }
    }
}

/// Makes `change` (noted in `log` first, should it fail midway); what
/// happened, for the report.
fn make_change(c: &mut Cluster, routes: &Routes, log: &mut Vec<String>, change: Change) -> String {
    log.push(format!("(under way: {change:?})"));
    let done = match change {
        Change::Transfer(to) => match c.move_leader(to) {
            Ok(()) => format!("move-leader to {to}"),
            Err(e) => format!("move-leader to {to} failed ({e})"),
        },
        Change::Replace { old, learner } => {
            let name = format!("m{}", c.members.len());
            let new = if learner {
                let new = c.add_member(&name, true);
                c.promote(new);
                new
            } else {
                usize::MAX
            };
            routes.set_down(old, true);
            c.kill9(old);
            c.remove_member(c.id(old));
            let new = if learner {
                new
            } else {
                c.add_member(&name, false)
            };
            routes.rebind(old, new, &c.members[new].client_url.clone());
            let how = if learner {
                "through a learner"
            } else {
                "remove, add"
            };
            format!("replace {old} by {new} ({how})")
        }
    };
    log.pop();
    done
}

/// The fixed sequence: leader isolated, leader killed, a link cut, a
/// follower isolated, the leader paused.
fn scripted_nemesis(c: &mut Cluster, budget: &OpBudget, routes: &Routes, log: &mut Vec<String>) {
    let ms = Duration::from_millis;
    let mut fault = |c: &mut Cluster, f: Fault, who: &str, hold: u64| {
        inject(c, budget, routes, log, &[(f, who)], None, ms(hold));
        phase(budget, ms(800));
    };
    phase(budget, ms(800));
    // 1. The leader is isolated, then healed.
    let l = c.wait_leader(SECS_20);
    fault(c, Fault::Isolate(l), "leader", 1500);
    // 2. The (new) leader is killed and restarted.
    let l = c.wait_leader(SECS_20);
    fault(c, Fault::Kill(l), "leader", 1500);
    // 3. One link of the leader is cut, then a follower isolated.
    let l = c.wait_leader(SECS_20);
    let f = c.other_than(&[l]);
    fault(c, Fault::Cut(l, f), "leader", 1200);
    let f = c.other_than(&[c.wait_leader(SECS_20)]);
    fault(c, Fault::Isolate(f), "follower", 1200);
    // 4. The leader is paused, then resumed.
    let l = c.wait_leader(SECS_20);
    fault(c, Fault::Pause(l), "leader", 1500);
}

/// `faults` rounds, each drawn from `seed`: a fault (isolate, kill -9 and
/// restart, cut one link both ways or one way, pause) of the leader or of
/// a follower, or a member replaced (plain or through a learner), or a
/// leader transfer. While a fault holds, the leader may be moved (to a
/// member the fault spares), and on 5 members a second fault may hit
/// another member, or a member be replaced through a learner. A quorum
/// always stays.
fn seeded_nemesis(seed: u64, faults: usize) -> Nemesis<'static> {
    Box::new(move |c, budget, routes, log| {
        use rand::seq::SliceRandom;
        use rand::Rng;
        let ms = Duration::from_millis;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        log.push(format!("seed {seed}"));
        phase(budget, ms(800));
        for _ in 0..faults {
            let l = c.wait_leader(SECS_20);
            let live: Vec<usize> = c.running().filter(|&i| c.members[i].in_cluster).collect();
            let n = live.len();
            let pick = |rng: &mut rand::rngs::StdRng, not: &[usize]| -> Option<usize> {
                let left: Vec<usize> = live.iter().copied().filter(|i| !not.contains(i)).collect();
                left.choose(rng).copied()
            };
            let t = if rng.gen_bool(0.5) {
                l
            } else {
                pick(&mut rng, &[l]).unwrap()
            };
            let who = |i: usize| if i == l { "leader" } else { "follower" };
            let other = pick(&mut rng, &[t]).unwrap();
            let (first, hold) = match rng.gen_range(0..8) {
                0 => (Fault::Isolate(t), ms(1500)),
                1 => (Fault::Kill(t), ms(1500)),
                2 => (Fault::Cut(t, other), ms(1200)),
                3 => (Fault::OneWay(t, other), ms(1200)),
                4 => (Fault::OneWay(other, t), ms(1200)),
                5 => (Fault::Pause(t), ms(1500)),
                6 => {
                    let learner = rng.gen_bool(0.5);
                    let change = Change::Replace { old: t, learner };
                    let done = make_change(c, routes, log, change);
                    log.push(format!("{done} ({})", who(t)));
                    phase(budget, ms(800));
                    continue;
                }
                _ => {
                    let done = make_change(c, routes, log, Change::Transfer(other));
                    log.push(done);
                    phase(budget, ms(800));
                    continue;
                }
            };
            let mut set = vec![(first, who(t))];
            let hit = first.members();
            // A leader or cluster change while the fault holds. Membership
            // changes wait for an agreed leader, which a cut link may
            // deny: only with faults that take a member out entirely.
            let whole = matches!(first, Fault::Isolate(_) | Fault::Kill(_) | Fault::Pause(_));
            let mut change = None;
            if n >= 5 && rng.gen_bool(0.5) {
                let u = pick(&mut rng, &hit).unwrap();
                let second = match rng.gen_range(0..3) {
                    0 => Fault::Isolate(u),
                    1 => Fault::Kill(u),
                    _ => Fault::Pause(u),
                };
                set.push((second, who(u)));
            } else if n >= 5 && whole && rng.gen_bool(0.3) {
                // Through a learner: etcd refuses to add a voter while a
                // voter is unreachable ("unhealthy cluster"), and ours too.
                let old = pick(&mut rng, &hit).unwrap();
                change = Some(Change::Replace { old, learner: true });
            }
            let spared: Vec<usize> = set.iter().flat_map(|(f, _)| f.members()).collect();
            if change.is_none() && rng.gen_bool(0.3) {
                if let Some(to) = pick(&mut rng, &[spared.clone(), vec![l]].concat()) {
                    change = Some(Change::Transfer(to));
                }
            }
            inject(c, budget, routes, log, &set, change, hold);
            phase(budget, ms(800));
        }
    })
}

/// The checks of a run, once the faults are over (`quiet`: the clients
/// and the lease client have stopped): final reads and equal HashKV on
/// every member; the watch guarantees of every watcher's streams against
/// a full watch of the leader from revision 1; the lease expiry bounds
/// (`common::lease_check`); the linearizability of the history (with a
/// negative control).
fn check_run(
    kind: Kind,
    c: &Cluster,
    rt: &tokio::runtime::Runtime,
    run: &Run,
    quiet: Instant,
    stop_watch: &Arc<AtomicBool>,
) {
    let rec = &run.rec;
    let log = &run.log;
    // Final linearizable reads of every key through the leader.
    let l = c.wait_leader(SECS_20);
    let url = c.members[l].client_url.clone();
    rt.block_on(async {
        let ch = Endpoint::from_shared(url).unwrap().connect().await.unwrap();
        let mut kv = KvClient::new(ch);
        for key in KEYS {
            let input = Input::Get {
                key: key.as_bytes().to_vec(),
            };
            let call = rec.call(u64::MAX, input.clone());
            let out = send(&mut kv, &input, REQUEST_TIMEOUT)
                .await
                .expect("final read");
            rec.ret(call, out);
        }
    });
    c.assert_hash_kv_equal(SECS_20);
    check_watches(kind, c, rt, rec, &run.watches, stop_watch);
    check_leases(c, rt, &run.leases, quiet);

    // A read with an unknown outcome changed nothing: leave it out (it
    // would only widen the search).
    let mut history = rec.history();
    history.retain(|o| o.ret.is_some() || !matches!(o.input, Input::Get { .. }));
    history.extend(lease_writes(c, rt));
    let unknown = history.iter().filter(|o| o.ret.is_none()).count();
    let done = history.len() - unknown;
    println!(
        "{kind:?} cluster history: {} operations ({done} answered, {unknown} unknown), faults: {}",
        history.len(),
        log.join(", ")
    );
    assert!(done > 100, "too few answered operations to mean anything");
    match check(&history, &KvModel::new(), MAX_CHECK_STATES) {
        Verdict::Linearizable(_) => {
            // Negative control: had the first read that found a value
            // returned one nobody wrote, the same check must fail. (An
            // early read keeps the search small: only the operations
            // concurrent with it can be reordered before the checker
            // runs out of explanations. Corrupting the final reads
            // instead made it explore every order of the whole history,
            // and it gave up at 10M states once in CI.)
            let mut bogus = history.clone();
            let first = bogus.iter_mut().find_map(|op| match &mut op.ret {
                Some((_, Output::Get { kv: Some(kv), .. })) => Some(kv),
                _ => None,
            });
            if let Some(kv) = first {
                kv.value = b"never-written".to_vec();
                let v = check(&bogus, &KvModel::new(), MAX_CHECK_STATES);
                assert!(
                    matches!(v, Verdict::Violation { .. }),
                    "a read of a value nobody wrote went unnoticed: {v:?}"
                );
            }
        }
        v => {
            let detail: Vec<String> = match &v {
                Verdict::Violation { stuck, .. } => {
                    stuck.iter().map(|&i| format!("{:?}", history[i])).collect()
                }
                _ => Vec::new(),
            };
            panic!(
                "{kind:?} history is not linearizable: {v:?}\nstuck at:\n{}",
                detail.join("\n")
            );
        }
    }
}

/// The lease client's writes (its keys' puts and their deletes by lease
/// revokes), read from a watch of `lease/` from revision 1: each took a
/// store revision the checked keys' history must account for. They go
/// into the history as foreign writes that may have happened at any time
/// (call at the start, return after the end): the revision each took
/// places it.
fn lease_writes(c: &Cluster, rt: &tokio::runtime::Runtime) -> Vec<Operation> {
    let l = c.wait_leader(SECS_20);
    let url = c.members[l].client_url.clone();
    let revisions: std::collections::BTreeSet<i64> = rt.block_on(async {
        let ch = Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        // A marker after every lease write, to know when the watch is done.
        let marker = KvClient::new(ch)
            .put(PutRequest {
                key: b"lease/~end".to_vec().into(),
                ..Default::default()
            })
            .await
            .expect("marker write")
            .into_inner()
            .header
            .expect("header")
            .revision;
        let deadline = Instant::now() + Duration::from_secs(60);
        let r = watch_until(&url, "lease/", marker, deadline).await;
        r.streams
            .iter()
            .flat_map(|(_, rs)| rs)
            .flat_map(|r| &r.events)
            .filter_map(|e| e.kv.as_ref().map(|kv| kv.mod_revision))
            .filter(|rev| *rev != marker)
            .collect()
    });
    revisions
        .into_iter()
        .map(|revision| Operation {
            client: u64::MAX - 1,
            call: 0,
            ret: Some((u64::MAX / 2, Output::Foreign { revision })),
            input: Input::Foreign { changes: 1 },
        })
        .collect()
}

/// Stops the watchers once each has seen a last write, and checks the six
/// watch guarantees of what they recorded against a full watch of the
/// leader from revision 1 (`common::watch_check`; no compaction runs here).
fn check_watches(
    kind: Kind,
    c: &Cluster,
    rt: &tokio::runtime::Runtime,
    rec: &Recorder,
    watches: &[Arc<tokio::sync::Mutex<Record>>],
    stop_watch: &Arc<AtomicBool>,
) {
    let l = c.wait_leader(SECS_20);
    let url = c.members[l].client_url.clone();
    let (truth, recs) = rt.block_on(async {
        let ch = Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        // Recorded: the history must account for its revision.
        let input = Input::Put {
            key: b"k-end".to_vec(),
            value: b"end".to_vec(),
        };
        let call = rec.call(u64::MAX, input.clone());
        let out = send(&mut KvClient::new(ch), &input, REQUEST_TIMEOUT)
            .await
            .expect("last write");
        let Output::Put { revision: last } = out else {
            panic!("a put answered {out:?}")
        };
        rec.ret(call, out);
        let deadline = Instant::now() + Duration::from_secs(60);
        for (w, r) in watches.iter().enumerate() {
            wait_seen(r, last, deadline, &format!("watcher {w}")).await;
        }
        stop_watch.store(true, Ordering::SeqCst);
        let reference = watch_until(&url, "k", last, deadline).await;
        let mut truth = Truth::default();
        for (_, resps) in &reference.streams {
            for e in resps.iter().flat_map(|r| &r.events) {
                let rev = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                truth.known.entry(rev).or_default().push(ev_of(e));
            }
        }
        let mut recs = Vec::new();
        for w in watches {
            recs.push(w.lock().await.clone());
        }
        (truth, recs)
    });
    let mut violations = check_watch(&truth, &recs);
    if kind == Kind::Real {
        // etcd 3.4.23 (Debian's) answers a progress request with the
        // store's revision even while the watcher is still catching up
        // (etcd-io/etcd#15220, fixed in 3.4.24 by #15237): a progress
        // notification can overtake events. Every other guarantee holds.
        let before = violations.len();
        violations.retain(|v| !v.starts_with("bookmarkable"));
        if violations.len() < before {
            println!(
                "etcd 3.4's known progress bug (etcd-io/etcd#15220): {} bookmarkable violations ignored",
                before - violations.len()
            );
        }
    }
    let streams: Vec<usize> = recs.iter().map(|r| r.streams.len()).collect();
    println!(
        "watch: {} revisions of k*, streams per watcher {streams:?}",
        truth.known.len()
    );
    assert!(
        violations.is_empty(),
        "watch guarantees violated: {violations:#?}"
    );
}

/// The lease expiry bounds of `common::lease_check`: no key of a lease
/// gone before its TTL ran out, and every lease gone within its TTL plus
/// [`LEASE_SLACK`] after `quiet`.
fn check_leases(c: &Cluster, rt: &tokio::runtime::Runtime, leases: &Leases, quiet: Instant) {
    let early = leases.early_expiries();
    let l = c.wait_leader(SECS_20);
    let url = c.members[l].client_url.clone();
    let (late, took) = rt.block_on(leases.wait_all_expired(&url, quiet, LEASE_SLACK));
    {
        // Released before the assert: the artifacts are written from it.
        let records = leases.records.lock().unwrap();
        let probes: usize = records.iter().map(|r| r.probes.len()).sum();
        let renewals: usize = records.iter().map(|r| r.renewed.len()).sum();
        println!(
            "leases: {} granted, {renewals} grants and keepalives answered, {probes} probes; \
             all expired {took:?} after the end",
            records.len()
        );
    }
    assert!(
        early.is_empty() && late.is_empty(),
        "lease expiry bounds violated: {early:#?} {late:#?}"
    );
}

#[test]
fn real_histories_under_faults_are_linearizable() {
    histories_under_faults(Kind::Real)
}

#[test]
fn ours_histories_under_faults_are_linearizable() {
    histories_under_faults(Kind::Ours)
}

/// The seeded chaos run: `CHAOS_SEEDS` (`7` or `1-100`), `CHAOS_FAULTS`
/// faults per seed (default 4) on `CHAOS_MEMBERS` members (default 3 and
/// 5: one run of each). CI runs seed 1 on 3 members and seed 2 on 5; the
/// long run is documented in docs/cluster_tests.md.
#[test]
fn ours_seeded_chaos_is_linearizable() {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let faults = env("CHAOS_FAULTS").map_or(4, |f| f.parse().expect("CHAOS_FAULTS"));
    let seeds: Vec<u64> = match env("CHAOS_SEEDS") {
        None => vec![1, 2],
        Some(s) => match s.split_once('-') {
            Some((a, b)) => {
                (a.parse().expect("CHAOS_SEEDS")..=b.parse().expect("CHAOS_SEEDS")).collect()
            }
            None => vec![s.parse().expect("CHAOS_SEEDS")],
        },
    };
    let members: Option<usize> = env("CHAOS_MEMBERS").map(|m| m.parse().expect("CHAOS_MEMBERS"));
    // Every seed runs; the failed ones are listed at the end (their
    // artifacts are kept).
    let mut failed = Vec::new();
    for (i, seed) in seeds.iter().copied().enumerate() {
        let n = members.unwrap_or(if i % 2 == 0 { 3 } else { 5 });
        println!("chaos: seed {seed}, {n} members, {faults} faults");
        let label = format!("seed-{seed}-{n}m");
        let run = std::panic::catch_unwind(|| {
            histories(Kind::Ours, n, &label, seeded_nemesis(seed, faults));
        });
        if run.is_err() {
            failed.push(label);
        }
    }
    println!(
        "chaos: {} of {} seeds passed; failed: {failed:?}",
        seeds.len() - failed.len(),
        seeds.len()
    );
    assert!(failed.is_empty(), "chaos seeds failed: {failed:?}");
}
