//! Seeded simulations of 3- and 5-member clusters under faults (message
//! loss, duplication, delay and reordering, partitions, crashes with
//! restarts, leader transfers, member removals), each client history
//! checked for linearizability; see `etcd_core::simulation`.
//!
//! - `SIM_SEED=<n>`: run one seed and print its events and totals;
//! - `SIM_HISTORY=1` with `SIM_SEED`: print the whole history too;
//! - `SIM_CHECK_STATES=<n>`: the checker's state budget;
//! - `SIM_SEEDS=<k>`: seeds per cluster size (default 300; long mode e.g.
//!   `SIM_SEEDS=5000`).
//!
//! `cargo test --release -p etcd-core --test cluster_sim -- --nocapture`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use etcd_core::simulation::{run, Outcome, SimConfig, Stats};

const DEFAULT_SEEDS: u64 = 300;

fn seeds() -> Vec<u64> {
    if let Ok(s) = std::env::var("SIM_SEED") {
        return vec![s.parse().expect("SIM_SEED is a number")];
    }
    let n = std::env::var("SIM_SEEDS")
        .map_or(DEFAULT_SEEDS, |v| v.parse().expect("SIM_SEEDS is a number"));
    (0..n).collect()
}

fn one(seed: u64, members: u64, tune: impl Fn(&mut SimConfig)) -> Result<Outcome, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = SimConfig::new(seed, members, dir.path());
    if let Ok(n) = std::env::var("SIM_CHECK_STATES") {
        cfg.max_check_states = n.parse().expect("SIM_CHECK_STATES is a number");
    }
    tune(&mut cfg);
    run(&cfg)
}

/// Runs every seed on a few threads; returns the outcomes by seed and the
/// errors.
fn run_seeds(
    seeds: &[u64],
    members: u64,
    tune: &(impl Fn(&mut SimConfig) + Sync),
) -> (Vec<Outcome>, Vec<String>) {
    let workers = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(seeds.len().max(1));
    let next = AtomicUsize::new(0);
    let outcomes = Mutex::new(Vec::new());
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else { break };
                match one(seed, members, tune) {
                    Ok(o) => outcomes.lock().unwrap().push(o),
                    Err(e) => errors.lock().unwrap().push(e),
                }
            });
        }
    });
    let mut outcomes = outcomes.into_inner().unwrap();
    outcomes.sort_by_key(|o| o.seed);
    (outcomes, errors.into_inner().unwrap())
}

fn add(total: &mut Stats, s: &Stats) {
    total.steps += s.steps;
    total.ops += s.ops;
    total.ops_ok += s.ops_ok;
    total.ops_unknown += s.ops_unknown;
    total.writes_ok += s.writes_ok;
    total.reads_ok += s.reads_ok;
    total.last_index += s.last_index;
    total.leader_terms += s.leader_terms;
    total.crashes += s.crashes;
    total.partitions += s.partitions;
    total.transfers += s.transfers;
    total.removals += s.removals;
    total.flushes += s.flushes;
    total.compactions += s.compactions;
    total.mvcc_compactions += s.mvcc_compactions;
    total.auth_changes += s.auth_changes;
    total.alarm_changes += s.alarm_changes;
    total.lease_grants += s.lease_grants;
    total.lease_keepalives += s.lease_keepalives;
    total.lease_key_writes += s.lease_key_writes;
    total.leases_expired += s.leases_expired;
    total.snapshots_sent += s.snapshots_sent;
    total.snapshots_installed += s.snapshots_installed;
    total.joins += s.joins;
    total.promotions += s.promotions;
    total.messages += s.messages;
    total.messages_lost += s.messages_lost;
}

fn check_cluster(members: u64) {
    let seeds = seeds();
    let verbose = seeds.len() == 1;
    let started = std::time::Instant::now();
    let (outcomes, mut failures) = run_seeds(&seeds, members, &|_| {});
    let mut total = Stats::default();
    let (mut watchers, mut watch_events, mut watch_compacted, mut skipped) = (0, 0, 0, 0);
    for o in &outcomes {
        add(&mut total, &o.stats);
        watchers += o.watch.watchers;
        watch_events += o.watch.events;
        watch_compacted += o.watch.compacted;
        skipped += o.watch.skipped_at_compaction;
        if verbose {
            for (step, e) in &o.events {
                eprintln!("step {step}: {e}");
            }
            if std::env::var_os("SIM_HISTORY").is_some() {
                for i in 0..o.history.len() {
                    eprintln!("{}", o.op_line(i));
                }
            }
            eprintln!("{:?}\nfinal (revision, hash): {:?}", o.stats, o.final_hash);
        }
        if !o.verdict.is_linearizable() {
            failures.push(o.describe());
        }
        // Not vacuous: writes and reads went through.
        if o.stats.writes_ok == 0 || o.stats.reads_ok == 0 {
            failures.push(format!(
                "seed {} ({members} members): nothing succeeded: {:?}",
                o.seed, o.stats
            ));
        }
    }
    eprintln!(
        "{members} members, {} seeds in {:.1?}: {} ops ({} ok: {} writes, {} reads; {} unknown), \
         {} raft entries, {} leader terms, {} crashes, {} partitions, {} leader transfers, \
         {} members removed, {} added, {} learners promoted, {} store flushes, {} log compactions, \
         {} MVCC compactions, {} auth changes, {} alarm changes, {} leases granted, {} keepalives, {} lease key writes, \
         {} leases expired at the end, {} watchers ({} events checked, {} canceled by compaction, \
         {} revisions at the compaction revision skipped), \
         {} snapshots sent, {} installed, {} of {} messages lost",
        seeds.len(),
        started.elapsed(),
        total.ops,
        total.ops_ok,
        total.writes_ok,
        total.reads_ok,
        total.ops_unknown,
        total.last_index,
        total.leader_terms,
        total.crashes,
        total.partitions,
        total.transfers,
        total.removals,
        total.joins,
        total.promotions,
        total.flushes,
        total.compactions,
        total.mvcc_compactions,
        total.auth_changes,
        total.alarm_changes,
        total.lease_grants,
        total.lease_keepalives,
        total.lease_key_writes,
        total.leases_expired,
        watchers,
        watch_events,
        watch_compacted,
        skipped,
        total.snapshots_sent,
        total.snapshots_installed,
        total.messages_lost,
        total.messages,
    );
    assert!(
        failures.is_empty(),
        "{} of {} seeds failed; replay one with SIM_SEED=<seed>:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n")
    );
}

#[test]
fn three_member_histories_are_linearizable() {
    check_cluster(3);
}

#[test]
fn five_member_histories_are_linearizable() {
    check_cluster(5);
}

#[test]
fn a_seed_replays_exactly() {
    let a = one(7, 3, |_| {}).expect("seed 7");
    let b = one(7, 3, |_| {}).expect("seed 7 again");
    assert_eq!(a.history.len(), b.history.len());
    assert_eq!(a.events, b.events);
    assert_eq!(a.digest, b.digest, "the same seed gave different histories");
    let c = one(8, 3, |_| {}).expect("seed 8");
    assert_ne!(a.digest, c.digest);
}

/// Negative control: reads served from the local store without ReadIndex
/// are stale now and then, and the checker must notice.
#[test]
fn reads_without_read_index_are_caught() {
    let seeds: Vec<u64> = (0..20).collect();
    let (outcomes, errors) = run_seeds(&seeds, 3, &|c: &mut SimConfig| {
        c.unsafe_local_reads = true;
    });
    assert!(errors.is_empty(), "{errors:?}");
    let caught: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.verdict.is_linearizable())
        .collect();
    eprintln!(
        "reads without ReadIndex: {} of {} seeds caught",
        caught.len(),
        seeds.len()
    );
    if let Some(o) = caught.first() {
        eprintln!("{}", o.describe());
    }
    assert!(
        !caught.is_empty(),
        "stale reads went unnoticed in every seed"
    );
}

/// Negative control: a forwarded proposal delivered twice is appended and
/// applied twice; the checker must see the extra revision.
#[test]
fn proposals_applied_twice_are_caught() {
    let seeds: Vec<u64> = (0..20).collect();
    let (outcomes, errors) = run_seeds(&seeds, 3, &|c: &mut SimConfig| {
        c.duplicate_proposals = true;
    });
    assert!(errors.is_empty(), "{errors:?}");
    let caught = outcomes
        .iter()
        .filter(|o| !o.verdict.is_linearizable())
        .count();
    eprintln!(
        "duplicated proposals: {caught} of {} seeds caught",
        seeds.len()
    );
    assert!(caught > 0, "double applies went unnoticed in every seed");
}
