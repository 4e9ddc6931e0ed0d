//! Linearizability across kill -9: concurrent clients run random puts,
//! linearizable gets, deletes and compare-and-set txns on a few shared keys
//! while the server is SIGKILLed and restarted on the same data directory.
//! Every call and response is recorded (a request that fails has an unknown
//! outcome) and the whole history is checked with
//! `etcd_core::linearizability`: a lost acknowledged write, a stale read or
//! a revision handed out twice makes the check fail. Each cycle is bounded
//! by counts (the kill comes after [`OPS_PER_CYCLE`] completed operations,
//! at most twice that many are sent), so the history's size, and the cost
//! of checking it, do not depend on the machine's speed.

mod common;

use common::budget::{OpBudget, IDLE};
use common::history::{random_input, send, KEYS};
use common::{Kind, Server};
use etcd_core::linearizability::{check, CallId, Input, KvModel, Output, Recorder, Verdict};
use etcd_server::rpc::etcdserverpb::kv_client::KvClient;
use rand::SeedableRng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

const CLIENTS: u64 = 6;
const CYCLES: usize = 3;
/// Completed operations per cycle before the SIGKILL.
const OPS_PER_CYCLE: u64 = 800;
/// Safety cap on a cycle (a machine too slow for the count).
const CYCLE_CAP: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one client until `stop`, recording every call, while `budget`
/// allows. After a failed call the client gives up for this cycle (the
/// server is gone).
async fn client(
    ch: Channel,
    id: u64,
    seed: u64,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    budget: Arc<OpBudget>,
) {
    let mut kv = KvClient::new(ch);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        if !budget.take() {
            tokio::time::sleep(IDLE).await;
            continue;
        }
        let input = random_input(&mut rng, id, n, 4);
        n += 1;
        let call: CallId = rec.call(id, input.clone());
        match send(&mut kv, &input, REQUEST_TIMEOUT).await {
            Some(out) => {
                rec.ret(call, out);
                budget.done();
            }
            None => return,
        }
    }
}

#[test]
fn histories_across_kill9_are_linearizable() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut server = Server::start(Kind::Ours);
    let rec = Arc::new(Recorder::new());
    for cycle in 0..CYCLES as u64 {
        let stop = Arc::new(AtomicBool::new(false));
        let budget = Arc::new(OpBudget::new());
        budget.refill(2 * OPS_PER_CYCLE);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|id| {
                let ch = rt.block_on(server.channel());
                let seed = cycle * 1000 + id;
                let (rec, stop, budget) = (rec.clone(), stop.clone(), budget.clone());
                rt.spawn(client(ch, id, seed, rec, stop, budget))
            })
            .collect();
        let done = budget.wait_done(OPS_PER_CYCLE, CYCLE_CAP);
        assert!(
            done >= OPS_PER_CYCLE,
            "cycle {cycle}: only {done} operations in {CYCLE_CAP:?}"
        );
        // Kill while requests are in flight; clients see errors and stop.
        server.kill9();
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            rt.block_on(c).expect("client task");
        }
        server.restart();
    }
    // A final read of every key after the last restart.
    rt.block_on(async {
        let mut kv = KvClient::new(server.channel().await);
        for key in KEYS {
            let input = Input::Get {
                key: key.as_bytes().to_vec(),
            };
            let call = rec.call(CLIENTS, input.clone());
            let out = send(&mut kv, &input, REQUEST_TIMEOUT)
                .await
                .expect("read after restart");
            rec.ret(call, out);
        }
    });
    let history = rec.history();
    let unknown = history.iter().filter(|o| o.ret.is_none()).count();
    let writes = history
        .iter()
        .filter(|o| !matches!(o.input, Input::Get { .. }))
        .count();
    eprintln!(
        "{} operations ({writes} writes, {unknown} with unknown outcome) over {CYCLES} kill -9 cycles",
        history.len()
    );
    assert!(history.len() > 100, "too few operations to mean anything");
    match check(&history, &KvModel::new(), 1_000_000) {
        Verdict::Linearizable(_) => {
            // Negative control: had the final reads found a surviving key
            // missing (a lost write), the same check must fail.
            let mut lost = history.clone();
            let n = lost.len();
            let mut changed = false;
            for op in &mut lost[n - KEYS.len()..] {
                if let Some((_, Output::Get { kv, .. })) = &mut op.ret {
                    changed |= kv.take().is_some();
                }
            }
            if changed {
                let v = check(&lost, &KvModel::new(), 1_000_000);
                assert!(
                    matches!(v, Verdict::Violation { .. }),
                    "a lost write went unnoticed: {v:?}"
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
                "history is not linearizable: {v:?}\nstuck at:\n{}",
                detail.join("\n")
            );
        }
    }
}
