//! Linearizability of a 3-member cluster under faults: six clients, two per
//! member, run random puts, linearizable gets, deletes and compare-and-set
//! txns on three shared keys while a nemesis isolates the leader, kill -9s
//! and restarts members, cuts single links (through the proxies of
//! `common::cluster`) and pauses the leader (SIGSTOP, then SIGCONT). Every call and response is recorded (a failed or
//! timed-out request has an unknown outcome: it may take effect later, or
//! never; clients of a killed member send nothing until it is back) and the history is checked with `etcd_core::linearizability`, so
//! a lost acknowledged write, a stale read served by a deposed leader or a
//! minority, or a revision handed out twice fails the test. Runs against
//! the real etcd too, which validates the test itself.
//!
//! Each fault phase lasts a minimum time (so elections happen) and until
//! [`OPS_PER_PHASE`] operations have completed; clients send at most that
//! many per phase, so the history's size does not depend on the machine's
//! speed (a time cap is only a safety net).

mod common;

use common::budget::{OpBudget, IDLE};
use common::cluster::Cluster;
use common::history::{random_input, send, KEYS};
use common::Kind;
use etcd_core::linearizability::{check, Input, KvModel, Output, Recorder, Verdict};
use etcd_server::rpc::etcdserverpb::kv_client::KvClient;
use rand::SeedableRng;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Endpoint;

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

/// Runs one client against one member until `stop`. After an unknown
/// outcome it goes on under a fresh client id (the unknown request may
/// still take effect, concurrently with what follows).
async fn client(
    url: String,
    down: Arc<AtomicBool>,
    seed: u64,
    ids: Arc<AtomicU64>,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    budget: Arc<OpBudget>,
) {
    let ch = Endpoint::from_shared(url)
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy();
    let mut kv = KvClient::new(ch);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut id = ids.fetch_add(1, Ordering::SeqCst);
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        if down.load(Ordering::SeqCst) {
            // The member is killed: nothing is sent, nothing recorded.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        if !budget.take() {
            tokio::time::sleep(IDLE).await;
            continue;
        }
        let input = random_input(&mut rng, id, n, 6);
        n += 1;
        let call = rec.call(id, input.clone());
        let out = send(&mut kv, &input, REQUEST_TIMEOUT).await;
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

/// What a nemesis gets: the cluster, the clients' operation budget and
/// each member's "down" flag (its clients send nothing while it is set).
/// It returns the faults it caused, for the report.
type Nemesis<'a> = Box<dyn FnOnce(&mut Cluster, &OpBudget, &[Arc<AtomicBool>]) -> Vec<String> + 'a>;

fn histories_under_faults(kind: Kind) {
    histories(kind, 3, Box::new(scripted_nemesis));
}

/// Records the clients' history on a `members`-member cluster while
/// `nemesis` runs, then checks it.
fn histories(kind: Kind, members: usize, nemesis: Nemesis<'_>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut c = Cluster::start(kind, members);
    let rec = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let ids = Arc::new(AtomicU64::new(0));
    let down: Vec<Arc<AtomicBool>> = (0..members)
        .map(|_| Arc::new(AtomicBool::new(false)))
        .collect();
    let budget = Arc::new(OpBudget::new());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let m = k as usize % members;
            let url = c.members[m].client_url.clone();
            let down = down[m].clone();
            let (ids, rec, stop, budget) = (ids.clone(), rec.clone(), stop.clone(), budget.clone());
            rt.spawn(client(url, down, k, ids, rec, stop, budget))
        })
        .collect();
    let log = nemesis(&mut c, &budget, &down);
    stop.store(true, Ordering::SeqCst);
    for t in clients {
        rt.block_on(t).expect("client task");
    }
    check_history(kind, &c, &rt, &rec, &log);
}

/// One fault of a nemesis, on member `.0` (a cut: between `.0` and `.1`).
enum Fault {
    Isolate(usize),
    /// kill -9, then a restart. The member's clients stop sending first
    /// (requests to a dead process would only add unknown outcomes, which
    /// widen the check's search); the requests in flight at the kill stay
    /// unknown.
    Kill(usize),
    Cut(usize, usize),
    /// SIGSTOP (a long GC or VM stall) while its clients keep sending,
    /// then SIGCONT: a paused leader resumes still believing it leads and
    /// must serve nothing stale.
    Pause(usize),
}

/// Causes `fault` (`who`: "leader" or "follower", for the report), lets
/// the clients run one phase of at least `hold`, and undoes it; what
/// happened, for the report.
fn inject(
    c: &mut Cluster,
    budget: &OpBudget,
    down: &[Arc<AtomicBool>],
    fault: Fault,
    who: &str,
    hold: Duration,
) -> String {
    let what = match fault {
        Fault::Isolate(t) => {
            c.isolate(t);
            format!("isolate {who} {t}")
        }
        Fault::Kill(t) => {
            down[t].store(true, Ordering::SeqCst);
            c.kill9(t);
            format!("kill -9 {who} {t}")
        }
        Fault::Cut(t, u) => {
            c.cut(t, u);
            format!("cut {who} {t}-{u}")
        }
        Fault::Pause(t) => {
            c.pause(t);
            format!("pause {who} {t}")
        }
    };
    phase(budget, hold);
    match fault {
        Fault::Isolate(_) | Fault::Cut(..) => c.heal(),
        Fault::Kill(t) => {
            c.restart(t);
            down[t].store(false, Ordering::SeqCst);
        }
        Fault::Pause(t) => c.resume(t),
    }
    what
}

/// The fixed sequence: leader isolated, leader killed, a link cut, a
/// follower isolated, the leader paused.
fn scripted_nemesis(c: &mut Cluster, budget: &OpBudget, down: &[Arc<AtomicBool>]) -> Vec<String> {
    let ms = Duration::from_millis;
    let mut log = Vec::new();
    phase(budget, ms(800));
    // 1. The leader is isolated, then healed.
    let l = c.wait_leader(SECS_20);
    log.push(inject(
        c,
        budget,
        down,
        Fault::Isolate(l),
        "leader",
        ms(1500),
    ));
    phase(budget, ms(800));
    // 2. The (new) leader is killed and restarted.
    let l = c.wait_leader(SECS_20);
    log.push(inject(c, budget, down, Fault::Kill(l), "leader", ms(1500)));
    phase(budget, ms(800));
    // 3. One link of the leader is cut, then a follower isolated.
    let l = c.wait_leader(SECS_20);
    let f = c.other_than(&[l]);
    log.push(inject(
        c,
        budget,
        down,
        Fault::Cut(l, f),
        "leader",
        ms(1200),
    ));
    let f = c.other_than(&[c.wait_leader(SECS_20)]);
    log.push(inject(
        c,
        budget,
        down,
        Fault::Isolate(f),
        "follower",
        ms(1200),
    ));
    phase(budget, ms(800));
    // 4. The leader is paused, then resumed.
    let l = c.wait_leader(SECS_20);
    log.push(inject(c, budget, down, Fault::Pause(l), "leader", ms(1500)));
    phase(budget, ms(800));
    log
}

/// `faults` faults, one at a time, each drawn from `seed`: which (isolate,
/// kill -9 and restart, cut one link, pause), of whom (the leader or a
/// follower) and with whom (the other end of a cut).
fn seeded_nemesis(seed: u64, faults: usize) -> Nemesis<'static> {
    Box::new(move |c, budget, down| {
        use rand::Rng;
        let ms = Duration::from_millis;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut log = vec![format!("seed {seed}")];
        let n = c.members.len();
        phase(budget, ms(800));
        for _ in 0..faults {
            let l = c.wait_leader(SECS_20);
            let t = if rng.gen_bool(0.5) {
                l
            } else {
                (l + rng.gen_range(1..n)) % n
            };
            let who = if t == l { "leader" } else { "follower" };
            let (fault, hold) = match rng.gen_range(0..4) {
                0 => (Fault::Isolate(t), ms(1500)),
                1 => (Fault::Kill(t), ms(1500)),
                2 => (Fault::Cut(t, (t + rng.gen_range(1..n)) % n), ms(1200)),
                _ => (Fault::Pause(t), ms(1500)),
            };
            log.push(inject(c, budget, down, fault, who, hold));
            phase(budget, ms(800));
        }
        log
    })
}

/// Final reads, equal HashKV on every member, then the linearizability
/// check of everything recorded (with a negative control).
fn check_history(
    kind: Kind,
    c: &Cluster,
    rt: &tokio::runtime::Runtime,
    rec: &Recorder,
    log: &[String],
) {
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

    // A read with an unknown outcome changed nothing: leave it out (it
    // would only widen the search).
    let mut history = rec.history();
    history.retain(|o| o.ret.is_some() || !matches!(o.input, Input::Get { .. }));
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
    for (i, seed) in seeds.into_iter().enumerate() {
        let n = members.unwrap_or(if i % 2 == 0 { 3 } else { 5 });
        println!("chaos: seed {seed}, {n} members, {faults} faults");
        histories(Kind::Ours, n, seeded_nemesis(seed, faults));
    }
}
