//! A seeded, deterministic, in-process simulation of a multi-member
//! cluster of this engine, whose client history is checked for
//! linearizability (etcd's robustness tests, run without processes,
//! threads of our own or a clock).
//!
//! Each member is what a real member is, minus the gRPC and TCP layers:
//! a raft [`Peer`] over its own WAL (a directory under
//! [`SimConfig::dir`]), an MVCC [`Store`] on an in-memory [`MemDisk`]
//! (whose crash model loses writes that were not flushed), a [`Lessor`] on a
//! fake clock, the membership ([`RaftCluster`]) and the same [`Applier`]
//! and [`Wait`] the server uses. Requests are encoded exactly as
//! `Etcd::propose` encodes them, and linearizable reads follow the server's
//! read path: ReadIndex, wait until applied, read the local store.
//!
//! One step of the simulation, all driven from one RNG seeded with
//! [`SimConfig::seed`]:
//! 1. the [`MemNetwork`] delivers the messages due (with seeded loss,
//!    duplication, delay, reordering and partitions); a `MsgSnapshot`
//!    carries the sender's current store image ([`transfer_inline`] over
//!    the members' snapshot files) and the outcome is reported to raft;
//! 2. each member ticks with probability 1/2 (clocks drift apart);
//! 3. faults: partitions (one member isolated, or a random split), healing,
//!    crashes (the store loses what it had not flushed; the member stays
//!    down for a while, then restarts through the server's restart path,
//!    `bootstrap::reopen_wal`), leader transfers, membership changes
//!    through raft at the leader (remove a voter, add a voter or a learner
//!    — started at once with an empty store, it catches up from a
//!    snapshot — promote a learner), MVCC compactions through raft (a few
//!    revisions below the leader's current one); one seed in four is a
//!    storm (long delays, frequent quick restarts);
//! 4. clients act: each of [`SimConfig::clients`] clients has at most one
//!    request in flight (put, linearizable get, delete, compare-and-put on
//!    a few keys) at a random running member;
//! 5. each member handles its `Ready` and hands each batch to the very
//!    steps of the server's apply thread ([`ApplySteps`]): install a
//!    snapshot it received, apply the committed entries with the
//!    [`Applier`], report them applied, and every [`SNAPSHOT_COUNT`]
//!    applied entries flush its store and compact its raft log;
//! 6. clients collect results: from the proposing member's waiter, or, for
//!    reads, once the member applied the read index. A request whose member
//!    crashed, or that took more than [`SimConfig::request_timeout`] steps,
//!    has an unknown outcome (it may or may not have taken effect).
//!
//! Durability assumption: the WAL runs without fsync (for speed), but a
//! crash drops the peer, which closes the WAL cleanly, so everything handed
//! to the WAL survives — as if every append were fsynced. That is the
//! WAL's real guarantee for everything raft waits on (entries and votes
//! are synced before messages that depend on them are sent); only a commit
//! index learned later (never synced on its own) is kept too, and raft
//! recomputes it anyway. The store, which really writes without a log of
//! its own, keeps only what was flushed: the simulation flushes a member's
//! store now and then (RocksDB flushing its memtables on its own).
//!
//! Leases and watches run as in the server: each member's lessor is on a
//! clock that moves 100 ms with each of its raft ticks, and the server's
//! lease ticker code (`lease_ticker::run_once`) promotes/demotes it with
//! leadership, revokes expired leases and proposes checkpoints; a lease
//! client grants leases, attaches keys `lease/*` to them, keeps some alive
//! at the leader's lessor and revokes others (their revisions enter the
//! history as `Input::Foreign`). Each member start opens the server's
//! watch hub (`WatchableStore`) with a watcher on every key from a random
//! revision (next, recent, or below the compaction revision); a snapshot
//! install resyncs it as the server's apply loop does.
//!
//! Checked, per seed:
//! - at every step: at most one leader per term; every member applies the
//!   same entry (term and payload) at each index; every member's store
//!   publishes the same events at each revision, and each watcher gets
//!   every revision from its start once, in order, whole and equal to the
//!   store's (or a cancel naming the compaction revision);
//! - after the faults stop and the network heals: a new write succeeds, and
//!   every member of the final membership applies the same log and ends
//!   with the same MVCC hash (HashKV) at the same revision, the same
//!   lease records, the same membership, and a raft configuration that
//!   matches it; then, with nobody keeping them alive, every lease expires
//!   and disappears from every member with its keys;
//! - the whole client history is linearizable
//!   ([`crate::linearizability::check`]).
//!
//! Worked example of an unknown outcome: client 2 proposes `put(k1, v)` at
//! member 3 at step 400; member 3 crashes at step 404. The entry may have
//! reached the leader (and commit later) or not: the history records the
//! call without a return. Before checking, the simulation resolves it from
//! the applied log: if no member ever applied the request, the put is left
//! out; if one did, it gets the output applying it produced (say revision
//! 57) and no return time, so the checker must place it after step 400 at
//! revision 57 (see `Sim::resolved_history`; both only add constraints).
//!
//! Negative controls, to show the checker finds real bugs:
//! [`SimConfig::unsafe_local_reads`] is a deliberately broken read path
//! (reads served from the local store without ReadIndex: stale reads), and
//! [`SimConfig::duplicate_proposals`] delivers forwarded proposals twice
//! (a write applied twice).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use etcd_mvcc::{MemDisk, Store, StoreOptions};
use etcd_raft_node::eraftpb::MessageType;
use etcd_raft_node::{transfer_inline, ToApply};
use etcd_raft_node::{
    CommittedEntry, EntryKind, Faults, MemNetwork, MemTransport, NodeConfig, Peer, Role, WalStorage,
};
use etcd_wal::WalOptions;
use parking_lot::{Mutex, RwLock};
use prost::Message as _;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot::{self, error::TryRecvError};

use crate::applier::Applier;
use crate::apply::{self, Applied, View};
use crate::apply_loop::{ApplyObserver, ApplySteps};
use crate::cluster::{Change, RaftCluster};
use crate::lessor::{FakeClock, Lessor};
use crate::linearizability::{
    check, CallId, Input, KeyState, KvModel, Operation, Output, Recorder, Verdict,
};
use crate::membership::{Member, WalMetadata};
use crate::pb::etcdserverpb::{
    compare, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use crate::raft_request::{Op, RaftRequest};
use crate::snapshot::{SnapshotFiles, StoreSnapshots};
use crate::wait::Wait;
use crate::watchable_store::{StreamQueue, WatchSpec, WatchableStore};
use crate::watcher_group::KeyRange;
use crate::Error;

/// What a simulation run does.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Everything random follows from it.
    pub seed: u64,
    /// Members the cluster is bootstrapped with.
    pub members: u64,
    /// Where the members' WALs go (a fresh directory).
    pub dir: PathBuf,
    /// Steps with faults.
    pub fault_steps: u64,
    /// Most steps to settle, finish requests and converge afterwards.
    pub calm_steps: u64,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys the clients use.
    pub keys: usize,
    /// Steps after which a request's outcome is unknown.
    pub request_timeout: u64,
    /// Fewest voters a removal may leave.
    pub min_voters: usize,
    /// Negative control: serve linearizable reads from the local store at
    /// once, without ReadIndex. Never linearizable; the checker must see it.
    pub unsafe_local_reads: bool,
    /// Negative control: deliver forwarded proposals twice now and then
    /// (no real transport does; the leader would append both copies and
    /// the write would apply twice).
    pub duplicate_proposals: bool,
    /// Most states the linearizability checker explores.
    pub max_check_states: usize,
}

impl SimConfig {
    /// The default run of `members` members for `seed`, with WALs in `dir`.
    pub fn new(seed: u64, members: u64, dir: &Path) -> SimConfig {
        SimConfig {
            seed,
            members,
            dir: dir.to_path_buf(),
            fault_steps: 1200,
            calm_steps: 800,
            clients: 5,
            keys: 3,
            request_timeout: 120,
            min_voters: 2,
            unsafe_local_reads: false,
            duplicate_proposals: false,
            max_check_states: 2_000_000,
        }
    }
}

/// What happened in a run (for the totals printed by the tests).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stats {
    /// Steps run.
    pub steps: u64,
    /// Client requests sent.
    pub ops: u64,
    /// Requests answered (with a known outcome).
    pub ops_ok: u64,
    /// Requests with an unknown outcome.
    pub ops_unknown: u64,
    /// Writes that took effect as acknowledged (known outcome).
    pub writes_ok: u64,
    /// Linearizable reads answered.
    pub reads_ok: u64,
    /// Highest raft index applied by any member.
    pub last_index: u64,
    /// Terms in which some member led.
    pub leader_terms: u64,
    /// Member crashes (each followed by a restart).
    pub crashes: u64,
    /// Partitions made (isolations and splits).
    pub partitions: u64,
    /// Leader transfers asked for.
    pub transfers: u64,
    /// Members removed from the cluster (applied).
    pub removals: u64,
    /// Store flushes (the store's durable point moved).
    pub flushes: u64,
    /// Raft log compactions.
    pub compactions: u64,
    /// MVCC compactions proposed (KV Compact through raft, as a client's).
    pub mvcc_compactions: u64,
    /// Auth changes proposed (users, roles, permissions; many are refused
    /// as etcd refuses them, which is part of what members must agree on).
    pub auth_changes: u64,
    /// CORRUPT alarms raised or disarmed (through raft).
    pub alarm_changes: u64,
    /// Leases granted, and keepalives answered by the leader's lessor.
    pub lease_grants: u64,
    /// See `lease_grants`.
    pub lease_keepalives: u64,
    /// Writes to lease keys applied: puts with a lease, and revokes (by the
    /// lease client or on expiry) that deleted keys.
    pub lease_key_writes: u64,
    /// Leases that expired after the faults (all of them must).
    pub leases_expired: u64,
    /// Snapshots sent to followers, and installed by them.
    pub snapshots_sent: u64,
    /// See `snapshots_sent`.
    pub snapshots_installed: u64,
    /// Members added (started after their addition was applied).
    pub joins: u64,
    /// Learners promoted (applied).
    pub promotions: u64,
    /// Messages sent, and lost to faults or partitions.
    pub messages: u64,
    /// See `messages`.
    pub messages_lost: u64,
}

/// Where and when one operation of the history ran.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct OpInfo {
    /// The member the client sent it to.
    pub member: u64,
    /// Step of the call.
    pub call_step: u64,
    /// Step of the return; `None`: unknown outcome.
    pub ret_step: Option<u64>,
    /// Id of the raft request of a write (0 for a read).
    pub request: u64,
}

/// The result of a run.
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Members at bootstrap.
    pub members: u64,
    /// The recorded history.
    pub history: Vec<Operation>,
    /// Where and when each operation of `history` ran.
    pub info: Vec<OpInfo>,
    /// The checker's verdict on `history`.
    pub verdict: Verdict,
    /// Faults and membership events, by step.
    pub events: Vec<(u64, String)>,
    /// Totals.
    pub stats: Stats,
    /// The final store revision and HashKV every member agrees on.
    pub final_hash: (i64, u32),
    /// What the watchers received (outside the digest).
    pub watch: WatchStats,
    /// A digest of the history, the events and the final state: the same
    /// seed gives the same digest.
    pub digest: u64,
}

impl Outcome {
    /// A description of a violation: the operations the checker could
    /// not place, the operations on the same keys shortly before, and the
    /// faults around them.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "seed {} ({} members): {:?}",
            self.seed, self.members, self.verdict
        );
        let Verdict::Violation { placed, stuck } = &self.verdict else {
            return s;
        };
        let _ = writeln!(s, "{placed} operations placed; none of these can go next:");
        let key = |i: &Input| match i {
            Input::Put { key, .. }
            | Input::Get { key }
            | Input::Delete { key }
            | Input::PutIfModRev { key, .. } => key.clone(),
            // Revisions only: listed with every key's operations.
            Input::Foreign { .. } => Vec::new(),
        };
        let keys: BTreeSet<Vec<u8>> = stuck.iter().map(|&i| key(&self.history[i].input)).collect();
        let first_call = stuck
            .iter()
            .map(|&i| self.info[i].call_step)
            .min()
            .unwrap_or(0);
        let last = stuck
            .iter()
            .map(|&i| self.info[i].ret_step.unwrap_or(self.info[i].call_step))
            .max()
            .unwrap_or(0);
        for &i in stuck {
            let _ = writeln!(s, "  {}", self.op_line(i));
        }
        let _ = writeln!(s, "earlier operations on the same keys (newest last):");
        let earlier: Vec<usize> = (0..self.history.len())
            .filter(|&i| {
                !stuck.contains(&i)
                    && keys.contains(&key(&self.history[i].input))
                    && self.info[i].call_step <= last
            })
            .collect();
        for &i in earlier
            .iter()
            .rev()
            .take(25)
            .collect::<Vec<_>>()
            .iter()
            .rev()
        {
            let _ = writeln!(s, "  {}", self.op_line(*i));
        }
        let _ = writeln!(s, "events:");
        let from = first_call.saturating_sub(300);
        for (step, e) in self.events.iter().filter(|(t, _)| *t >= from && *t <= last) {
            let _ = writeln!(s, "  step {step}: {e}");
        }
        s
    }

    /// One line about operation `i` of the history.
    pub fn op_line(&self, i: usize) -> String {
        let op = &self.history[i];
        let info = &self.info[i];
        let ret = match (&op.ret, info.ret_step) {
            (Some((_, out)), Some(step)) => format!("-> {out:?} at step {step}"),
            (Some((_, out)), None) => format!("-> unknown to the client; applied as {out:?}"),
            _ => "-> unknown".into(),
        };
        format!(
            "#{i} client {} at member {}, step {}: {:?} {ret}",
            op.client,
            info.member,
            info.call_step,
            show(&op.input)
        )
    }
}

fn show(i: &Input) -> String {
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match i {
        Input::Put { key, value } => format!("put({}, {})", s(key), s(value)),
        Input::Get { key } => format!("get({})", s(key)),
        Input::Delete { key } => format!("delete({})", s(key)),
        Input::PutIfModRev {
            key,
            expected_mod,
            value,
        } => format!(
            "if mod({}) == {expected_mod} put({}, {})",
            s(key),
            s(key),
            s(value)
        ),
        Input::Foreign { changes } => {
            format!("{changes} change(s) outside the checked keys (lease keys, revokes)")
        }
    }
}

/// A running member.
struct Running {
    peer: Peer,
    /// The lessor's clock: moves one [`SIM_TICK`] per raft tick.
    clock: Arc<FakeClock>,
    /// The lease ticker's state (`lease_ticker::run_once`).
    promote_at: Option<u64>,
    /// The member's watch hub, as the server has it, with one stream of
    /// one watcher on every key (started at a random revision).
    watch: Arc<WatchableStore>,
    /// That stream's responses.
    queue: Arc<StreamQueue>,
    /// The revision the watcher must deliver next (revisions are dense:
    /// each one from 2 on has events); None once canceled (compaction).
    watch_next: Option<i64>,
    /// What the store's event sink published, not yet compared:
    /// (revision, digest of its events).
    published: Arc<Mutex<Vec<(i64, u64)>>>,
    /// The server's apply loop steps (applier, the store's images for
    /// snapshots sent and received, applied index, raft log compaction).
    steps: ApplySteps,
}

impl Drop for Running {
    fn drop(&mut self) {
        // A crash or a removal ends the member's watchers with it.
        self.watch.stop();
    }
}

enum State {
    Running(Box<Running>),
    /// Crashed; restarts at the given step.
    Down(u64),
    /// Stopped for good after applying its own removal.
    Removed,
}

struct Node {
    id: u64,
    wal_dir: PathBuf,
    snap_dir: PathBuf,
    disk: MemDisk,
    state: State,
    /// Incremented at each start: requests sent to an earlier incarnation
    /// have unknown outcomes.
    incarnation: u64,
}

impl Node {
    fn new(id: u64, dir: &Path) -> Node {
        Node {
            id,
            wal_dir: dir.join(format!("m{id}")),
            snap_dir: dir.join(format!("m{id}-snap")),
            disk: MemDisk::new(),
            state: State::Down(0),
            incarnation: 0,
        }
    }
}

/// How a member starts.
enum Boot {
    /// Bootstraps the initial cluster.
    New,
    /// Joins the cluster with this membership (added through raft first).
    Join(RaftCluster),
    /// Restarts from its WAL and store.
    Restart,
}

/// A client request waiting for its outcome.
enum Waiting {
    Write {
        req_id: u64,
        rx: oneshot::Receiver<crate::Result<Applied>>,
    },
    ReadIndex(Arc<Mutex<Option<etcd_raft_node::Result<u64>>>>),
    Applied(u64),
}

struct InFlight {
    call: CallId,
    index: usize,
    input: Input,
    member: u64,
    incarnation: u64,
    deadline: u64,
    waiting: Waiting,
}

struct Client {
    id: u64,
    sent: u64,
    op: Option<InFlight>,
    /// Mod revision of each key as this client last saw it.
    seen_mod: BTreeMap<Vec<u8>, i64>,
}

/// A membership change in flight (one at a time).
struct AdminOp {
    member: u64,
    incarnation: u64,
    req_id: u64,
    rx: oneshot::Receiver<crate::Result<Applied>>,
    deadline: u64,
    what: String,
}

struct Sim {
    cfg: SimConfig,
    rng: StdRng,
    net: Arc<MemNetwork>,
    transport: MemTransport,
    nodes: Vec<Node>,
    initial: RaftCluster,
    now: u64,
    next_req_id: u64,
    rec: Recorder,
    info: Vec<OpInfo>,
    clients: Vec<Client>,
    admin: Option<AdminOp>,
    events: Vec<(u64, String)>,
    stats: Stats,
    /// Leader of each term seen.
    leaders: BTreeMap<u64, u64>,
    /// What was applied at each index: (term, payload digest).
    log: BTreeMap<u64, (u64, u64)>,
    /// The requests some member applied, by id: the store revision before
    /// and after the first application (what its output was).
    applied_requests: HashMap<u64, (i64, i64)>,
    /// A storm: long delays, frequent quick restarts.
    storm: bool,
    /// Id of the next member added.
    next_member_id: u64,
    /// Leases the lease client granted (or tried to).
    leases: Vec<i64>,
    /// Indexes of the entries recorded as `Input::Foreign` operations.
    foreign_seen: BTreeSet<u64>,
    /// The events of each revision (digest), as the first member to
    /// publish it did: every member's store and watcher must agree.
    revision_events: BTreeMap<i64, u64>,
    /// Watch totals (not part of the replay digest: unsynced watchers
    /// catch up on a thread of their own, as in the server).
    watch_stats: WatchStats,
}

/// What the members' watchers received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Events delivered, checked against the store's.
    pub events: u64,
    /// Watchers created (one per member start).
    pub watchers: u64,
    /// Watchers canceled because their start was compacted.
    pub compacted: u64,
    /// Revisions at the compaction revision a watcher did not get (a
    /// delete there is compacted away; etcd behaves the same).
    pub skipped_at_compaction: u64,
}

/// Applied entries between raft log compactions (etcd's
/// `--snapshot-count`, small so that followers often need snapshots).
const SNAPSHOT_COUNT: u64 = 25;
/// Entries kept below the compaction point.
const CATCH_UP_ENTRIES: u64 = 3;
/// Most voters membership changes may grow the cluster to.
const MAX_VOTERS: usize = 7;
/// Simulated time of one raft tick (election timeout: 10 ticks).
const SIM_TICK: Duration = Duration::from_millis(100);
/// What a new primary lessor extends leases by (the election timeout).
const LEASE_EXTEND: Duration = Duration::from_secs(1);
/// Lease checkpoints every 2 s of simulated time, so they happen (and
/// cross leader changes) within a run.
const LEASE_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(2);
/// Keys the lease client attaches to leases (never touched by the checked
/// clients).
const LEASE_KEYS: usize = 3;

fn wal_options() -> WalOptions {
    WalOptions {
        segment_size: 1 << 20,
        fsync: false,
        ..WalOptions::default()
    }
}

fn digest(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn member(id: u64) -> Member {
    Member {
        id,
        name: format!("m{id}"),
        peer_urls: vec![format!("http://m{id}:2380")],
        client_urls: vec![format!("http://m{id}:2379")],
        is_learner: false,
    }
}

/// Runs one simulation. `Err` describes a broken invariant other than
/// linearizability (which is in [`Outcome::verdict`]).
pub fn run(cfg: &SimConfig) -> Result<Outcome, String> {
    let mut sim = Sim::new(cfg.clone())?;
    sim.run().map_err(|e| {
        let mut s = format!(
            "seed {} ({} members): {e}\nlast events:",
            cfg.seed, cfg.members
        );
        let from = sim.events.len().saturating_sub(40);
        for (step, ev) in &sim.events[from..] {
            let _ = write!(s, "\n  step {step}: {ev}");
        }
        s
    })
}

impl Sim {
    fn new(cfg: SimConfig) -> Result<Sim, String> {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let net = MemNetwork::new(rng.gen());
        let ids: Vec<u64> = (1..=cfg.members).collect();
        let initial = RaftCluster::new(ids.iter().map(|&id| member(id)).collect());
        let nodes = ids.iter().map(|&id| Node::new(id, &cfg.dir)).collect();
        let clients = (0..cfg.clients as u64)
            .map(|id| Client {
                id,
                sent: 0,
                op: None,
                seen_mod: BTreeMap::new(),
            })
            .collect();
        let mut sim = Sim {
            transport: net.transport(),
            net,
            rng,
            nodes,
            initial,
            now: 0,
            next_req_id: 1,
            rec: Recorder::new(),
            info: Vec::new(),
            clients,
            admin: None,
            events: Vec::new(),
            stats: Stats::default(),
            leaders: BTreeMap::new(),
            log: BTreeMap::new(),
            applied_requests: HashMap::new(),
            storm: false,
            next_member_id: cfg.members + 1,
            leases: Vec::new(),
            foreign_seen: BTreeSet::new(),
            revision_events: BTreeMap::new(),
            watch_stats: WatchStats::default(),
            cfg,
        };
        for i in 0..sim.nodes.len() {
            sim.start(i, Boot::New)?;
        }
        Ok(sim)
    }

    fn event(&mut self, e: String) {
        self.events.push((self.now, e));
    }

    /// Starts member `i`: bootstraps it with the initial members, joins it
    /// to the cluster whose membership is given (an empty log and store:
    /// the leader sends a snapshot), or restarts it from its WAL and what
    /// its store durably holds (`bootstrap::reopen_wal`, the server's
    /// restart path).
    fn start(&mut self, i: usize, boot: Boot) -> Result<(), String> {
        let election = self.rng.gen_range(10..20);
        let node = &mut self.nodes[i];
        let id = node.id;
        let store = Store::open_with(Box::new(node.disk.backend()), StoreOptions::default())
            .map_err(|e| format!("member {id}: opening the store: {e}"))?;
        let files = SnapshotFiles::open(&node.snap_dir, 2)
            .map_err(|e| format!("member {id}: snapshot files: {e}"))?;
        let meta = |members: Vec<Member>| {
            WalMetadata {
                member_id: id,
                cluster_id: 1,
                members,
            }
            .encode_to_vec()
        };
        let (cluster, storage) = match boot {
            Boot::New => {
                crate::bootstrap::init_store(
                    &store,
                    &self.initial,
                    crate::bootstrap::BOOTSTRAP_INDEX,
                )
                .map_err(|e| format!("member {id}: bootstrap: {e}"))?;
                let storage = WalStorage::create_at(
                    &node.wal_dir,
                    wal_options(),
                    &meta(self.initial.members()),
                    self.initial.conf_state(),
                    crate::bootstrap::BOOTSTRAP_INDEX,
                    1,
                )
                .map_err(|e| format!("member {id}: creating the WAL: {e}"))?;
                (self.initial.clone(), storage)
            }
            Boot::Join(cluster) => {
                let storage = WalStorage::create(
                    &node.wal_dir,
                    wal_options(),
                    &meta(cluster.members()),
                    etcd_raft_node::eraftpb::ConfState::default(),
                )
                .map_err(|e| format!("member {id}: creating the WAL: {e}"))?;
                (cluster, storage)
            }
            Boot::Restart => {
                let (storage, _, cluster) = crate::bootstrap::reopen_wal(
                    &node.wal_dir,
                    wal_options(),
                    &store,
                    &files,
                    false,
                )
                .map_err(|e| format!("member {id}: restart: {e}"))?;
                (cluster, storage)
            }
        };
        let applied = store.consistent_index();
        // A restarted member's clock starts again at zero, as a process's
        // monotonic clock does; its lessor is not primary until it leads.
        let clock = Arc::new(FakeClock::new());
        let lessor = Lessor::new(clock.clone(), 5, LEASE_CHECKPOINT_INTERVAL);
        crate::apply::lease::restore(&store, &lessor)
            .map_err(|e| format!("member {id}: restoring leases: {e}"))?;
        let peer = Peer::new(
            &NodeConfig {
                id,
                voters: cluster.conf_state().voters,
                applied,
                election_tick: 10,
                heartbeat_tick: 1,
                min_election_tick: election,
                max_election_tick: election + 1,
                ..NodeConfig::default()
            },
            storage,
        )
        .map_err(|e| format!("member {id}: starting raft: {e}"))?;
        let store = Arc::new(store);
        node.incarnation += 1;
        let snapshots = Arc::new(StoreSnapshots {
            files,
            store: store.clone(),
        });
        let applier = Applier {
            store,
            lessor: Arc::new(lessor),
            wait: Arc::new(Wait::new(self.rng.gen_range(1..=u64::MAX))),
            cluster: Arc::new(RwLock::new(cluster)),
            member_id: id,
            auth: Arc::new(crate::auth::AuthStore::new(crate::auth::Tokens::Simple(
                crate::auth::SimpleTokens::new(clock.clone(), Duration::from_secs(300)),
            ))),
            bcrypt_cost: 4,
            alarms: Arc::new(crate::alarms::AlarmStore::default()),
            quota: u64::MAX,
        };
        applier
            .auth
            .load(&applier.store)
            .map_err(|e| format!("member {id}: loading auth: {e}"))?;
        applier
            .alarms
            .load(&applier.store)
            .map_err(|e| format!("member {id}: loading alarms: {e}"))?;
        // The watch hub, then a watcher on every key from a random start:
        // the next revision, a recent one (replayed from history), or one
        // below the compaction revision (which must cancel it).
        let store = applier.store.clone();
        let watch = WatchableStore::start(store.clone())
            .map_err(|e| format!("member {id}: watch hub: {e}"))?;
        let published = Arc::new(Mutex::new(Vec::new()));
        {
            let p = published.clone();
            store.subscribe(Arc::new(move |rev, evs| {
                p.lock().push((rev, events_digest(evs)))
            }));
        }
        let (stream, queue) = watch.new_stream();
        let (current, compacted) = (store.current_revision(), store.compact_revision());
        // (Starting exactly at the compaction revision is allowed, as in
        // etcd, but its events may be gone: a delete there is compacted
        // away. Not drawn.)
        let start_rev = match self.rng.gen_range(0..10) {
            0 if compacted > 2 => compacted - 1,
            1..=5 => self.rng.gen_range((compacted + 1).max(1)..=current + 1),
            _ => 0,
        };
        watch.watch(
            WatchSpec {
                id: 0,
                stream,
                range: KeyRange::FromKey(Bytes::from_static(b"\0")),
                start_rev,
                no_put: false,
                no_delete: false,
                prev_kv: false,
            },
            &queue,
        );
        self.watch_stats.watchers += 1;
        let watch_next = Some(if start_rev == 0 {
            current + 1
        } else {
            start_rev.max(2)
        });
        let node = &mut self.nodes[i];
        node.state = State::Running(Box::new(Running {
            peer,
            clock,
            promote_at: None,
            watch,
            queue,
            watch_next,
            published,
            steps: ApplySteps::new(applier, snapshots, SNAPSHOT_COUNT, CATCH_UP_ENTRIES),
        }));
        Ok(())
    }

    fn running(&self, i: usize) -> Option<&Running> {
        match &self.nodes[i].state {
            State::Running(r) => Some(r),
            _ => None,
        }
    }

    fn running_mut(&mut self, i: usize) -> Option<&mut Running> {
        match &mut self.nodes[i].state {
            State::Running(r) => Some(r),
            _ => None,
        }
    }

    fn index_of(&self, id: u64) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    fn running_indexes(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.running(i).is_some())
            .collect()
    }

    fn leader(&self) -> Option<usize> {
        // The leader of the highest term, if it still leads.
        self.running_indexes()
            .into_iter()
            .filter(|&i| {
                self.running(i)
                    .is_some_and(|r| r.peer.status().role == Role::Leader)
            })
            .max_by_key(|&i| self.running(i).map_or(0, |r| r.peer.status().term))
    }

    fn run(&mut self) -> Result<Outcome, String> {
        // One seed in four is a storm: long message delays and frequent
        // quick restarts.
        self.storm = self.rng.gen_bool(0.25);
        let f = Faults {
            drop: self.rng.gen_range(0.0..0.1),
            duplicate: self.rng.gen_range(0.0..0.1),
            max_delay: if self.storm {
                self.rng.gen_range(5..12)
            } else {
                self.rng.gen_range(0..5)
            },
        };
        let storm = if self.storm { " (storm)" } else { "" };
        self.event(format!("network faults {f:?}{storm}"));
        self.net.set_faults(f);
        for _ in 0..self.cfg.fault_steps {
            self.step(true, true)?;
        }
        self.calm_down()?;
        let final_hash = self.converge()?;
        self.expire_leases()?;
        let st = self.net.stats();
        self.stats.messages = st.sent;
        self.stats.messages_lost = st.dropped;
        self.stats.leader_terms = self.leaders.len() as u64;
        self.stats.last_index = self.log.keys().next_back().copied().unwrap_or(0);
        self.stats.steps = self.now;
        let (history, info) = self.resolved_history()?;
        let verdict = check(&history, &KvModel::new(), self.cfg.max_check_states);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        format!("{history:?}").hash(&mut h);
        info.hash(&mut h);
        self.events.hash(&mut h);
        self.stats.hash(&mut h);
        final_hash.hash(&mut h);
        Ok(Outcome {
            seed: self.cfg.seed,
            members: self.cfg.members,
            history,
            info,
            verdict,
            events: std::mem::take(&mut self.events),
            stats: self.stats.clone(),
            final_hash,
            watch: self.watch_stats.clone(),
            digest: h.finish(),
        })
    }

    /// One step (see the module doc).
    fn step(&mut self, faults: bool, issue: bool) -> Result<(), String> {
        self.now += 1;
        for (from, to) in self.net.take_failed_snapshots() {
            self.report_snapshot(from, to, false);
        }
        for m in self.net.advance() {
            let Some(i) = self.index_of(m.to) else {
                continue;
            };
            let m = if m.get_msg_type() == MessageType::MsgSnapshot {
                // The image moves with the message (as the TCP transport's
                // snapshot stream does), from the sender's current store.
                let (from, to) = (m.from, m.to);
                let src = self
                    .index_of(from)
                    .and_then(|f| self.running(f))
                    .map(|r| r.steps.snapshots().clone());
                let dst = self.running(i).map(|r| r.steps.snapshots().clone());
                let (Some(src), Some(dst)) = (src, dst) else {
                    self.report_snapshot(from, to, false);
                    continue;
                };
                match transfer_inline(m, &*src, &*dst) {
                    Ok(m) => {
                        self.report_snapshot(from, to, true);
                        self.stats.snapshots_sent += 1;
                        m
                    }
                    Err(e) => {
                        self.event(format!("snapshot {from} -> {to} failed: {e}"));
                        self.report_snapshot(from, to, false);
                        continue;
                    }
                }
            } else {
                m
            };
            let copies = if self.cfg.duplicate_proposals
                && m.get_msg_type() == MessageType::MsgPropose
                && self.rng.gen_bool(0.3)
            {
                2
            } else {
                1
            };
            let to = m.to;
            if let Some(r) = self.running_mut(i) {
                for _ in 0..copies {
                    r.peer
                        .step(m.clone())
                        .map_err(|e| format!("member {to}: step: {e}"))?;
                }
            }
        }
        for i in 0..self.nodes.len() {
            let tick = self.rng.gen_bool(0.5);
            if let Some(r) = self.running_mut(i) {
                if tick {
                    r.peer.tick();
                    // The lessor's time and the server's lease ticker
                    // (promote/demote with leadership, revoke expired
                    // leases, propose checkpoints): the same function.
                    r.clock.advance(SIM_TICK);
                    let lessor = r.steps.applier.lessor.clone();
                    crate::lease_ticker::run_once(
                        &mut r.peer,
                        &lessor,
                        SIM_TICK,
                        LEASE_EXTEND,
                        &mut r.promote_at,
                    );
                }
            }
        }
        if faults {
            self.inject_faults()?;
            if issue {
                self.lease_client();
            }
        }
        for i in 0..self.nodes.len() {
            if matches!(self.nodes[i].state, State::Down(at) if at <= self.now) {
                self.start(i, Boot::Restart)?;
                let id = self.nodes[i].id;
                self.event(format!("member {id} restarted"));
            }
        }
        if issue {
            self.clients_send();
        }
        for i in 0..self.nodes.len() {
            if let Some(r) = self.running_mut(i) {
                r.peer.flush_reads();
            }
        }
        for i in 0..self.nodes.len() {
            self.ready(i)?;
        }
        self.clients_collect()?;
        self.admin_collect();
        self.start_added()?;
        for i in self.running_indexes() {
            let st = self.running(i).expect("running").peer.status();
            if st.role == Role::Leader {
                match self.leaders.insert(st.term, st.id) {
                    Some(other) if other != st.id => {
                        return Err(format!(
                            "two leaders in term {}: {other} and {} (step {})",
                            st.term, st.id, self.now
                        ))
                    }
                    Some(_) => {}
                    None => {
                        let e = format!("member {} leads in term {}", st.id, st.term);
                        self.event(e);
                    }
                }
            }
        }
        Ok(())
    }

    fn report_snapshot(&mut self, from: u64, to: u64, ok: bool) {
        if let Some(f) = self.index_of(from) {
            if let Some(r) = self.running_mut(f) {
                r.peer.report_snapshot(to, ok);
            }
        }
    }

    /// Handles member `i`'s Ready and applies what was committed.
    fn ready(&mut self, i: usize) -> Result<(), String> {
        let transport = self.transport.clone();
        let id = self.nodes[i].id;
        let Some(r) = self.running_mut(i) else {
            return Ok(());
        };
        let mut out: Vec<ToApply> = Vec::new();
        while r
            .peer
            .handle_ready_applied(&transport, &mut out)
            .map_err(|e| format!("member {id}: ready: {e}"))?
        {}
        // The server's apply loop steps, batch by batch; the observer
        // records what each entry was and what each request did.
        let mut seen = SeenEntries::default();
        let mut installed = 0;
        let mut removed = false;
        let mut compacted = false;
        let mut entries_seen = false;
        for a in out {
            if let ToApply::Snapshot(info) = &a {
                if entries_seen {
                    return Err(format!(
                        "member {id}: a snapshot at {} after entries in one batch",
                        info.index
                    ));
                }
            } else {
                entries_seen = true;
            }
            seen.applied = r.steps.applied();
            let o = r
                .steps
                .apply(a, &mut r.peer, &mut seen)
                .map_err(|e| format!("member {id}: {e}"))?;
            if let Some(e) = seen.error.take() {
                return Err(format!("member {id} {e}"));
            }
            if o.snapshot_without_members {
                return Err(format!("member {id}: the image holds no members"));
            }
            installed += u64::from(o.snapshot);
            if o.snapshot {
                // As the server's apply loop: watchers resync from the
                // restored store.
                r.watch.on_restore();
            }
            removed |= o.removed;
            compacted |= o.log_compacted;
        }
        let requests = seen.requests;
        self.check_watch(i)?;
        for (index, before, after) in seen.foreign {
            if self.foreign_seen.insert(index) {
                // A point in real time: applied (so committed) now, and
                // not before any member applied it (see the module doc).
                let call = self.rec.call(
                    u64::MAX,
                    Input::Foreign {
                        changes: after - before,
                    },
                );
                self.rec.ret(call, Output::Foreign { revision: after });
                self.info.push(OpInfo {
                    member: id,
                    call_step: self.now,
                    ret_step: Some(self.now),
                    request: 0,
                });
                self.stats.lease_key_writes += 1;
            }
        }
        self.stats.snapshots_installed += installed;
        if compacted {
            self.stats.compactions += 1;
        }
        for (id, revs) in requests {
            self.applied_requests.entry(id).or_insert(revs);
        }
        for (index, term, d) in seen.entries {
            match self.log.get(&index) {
                Some(&prev) if prev != (term, d) => {
                    return Err(format!(
                        "member {id} applied a different entry at index {index} \
                         (term {term}, earlier seen term {})",
                        prev.0
                    ));
                }
                Some(_) => {}
                None => {
                    self.log.insert(index, (term, d));
                }
            }
        }
        if removed {
            self.nodes[i].state = State::Removed;
            self.stats.removals += 1;
            self.event(format!("member {id} applied its own removal and stopped"));
        }
        Ok(())
    }

    fn inject_faults(&mut self) -> Result<(), String> {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        match self.rng.gen_range(0..1000) {
            0..=2 => {
                let id = *ids.choose(&mut self.rng).expect("members");
                self.net.isolate(id, &ids);
                self.stats.partitions += 1;
                self.event(format!("member {id} isolated"));
            }
            3..=4 => {
                let mut shuffled = ids.clone();
                shuffled.shuffle(&mut self.rng);
                let k = self.rng.gen_range(1..shuffled.len());
                let (a, b) = shuffled.split_at(k);
                for &x in a {
                    for &y in b {
                        self.net.cut(x, y);
                    }
                }
                self.stats.partitions += 1;
                self.event(format!("partition {a:?} | {b:?}"));
            }
            5..=12 => {
                self.net.heal();
                self.event("network healed".into());
            }
            // Crashes. Quick restarts (a supervisor restarting the process)
            // race with messages and reads still in flight from before the
            // crash; long outages make members catch up.
            13..=15 => {
                let running = self.running_indexes();
                if let Some(&i) = running.choose(&mut self.rng) {
                    let down = if self.rng.gen_bool(0.5) {
                        self.rng.gen_range(1..5)
                    } else {
                        self.rng.gen_range(5..150)
                    };
                    self.crash(i, down);
                }
            }
            16..=17 => {
                if let Some(l) = self.leader() {
                    let r = self.running(l).expect("leader runs");
                    let voters = r.steps.applier.cluster.read().conf_state().voters;
                    let me = self.nodes[l].id;
                    let others: Vec<u64> = voters.into_iter().filter(|&v| v != me).collect();
                    if let Some(&to) = others.choose(&mut self.rng) {
                        self.running_mut(l)
                            .expect("leader runs")
                            .peer
                            .transfer_leader(to);
                        self.stats.transfers += 1;
                        self.event(format!("leader {me} asked to transfer to {to}"));
                    }
                }
            }
            18..=22 => self.propose_membership(),
            23..=27 => self.propose_mvcc_compaction(),
            28..=31 => self.propose_auth_change(),
            32 => self.propose_alarm_change(),
            _ => {}
        }
        if self.storm && self.rng.gen_bool(0.025) {
            let running = self.running_indexes();
            if let Some(&i) = running.choose(&mut self.rng) {
                let down = self.rng.gen_range(1..4);
                self.crash(i, down);
            }
        }
        // The store persists what was applied now and then on its own.
        for i in 0..self.nodes.len() {
            let flush = self.rng.gen_bool(0.02);
            if let (true, Some(r)) = (flush, self.running(i)) {
                r.steps
                    .applier
                    .store
                    .flush()
                    .map_err(|e| format!("member {}: flush: {e}", self.nodes[i].id))?;
                self.stats.flushes += 1;
            }
        }
        Ok(())
    }

    /// Kills member `i`: the store keeps only what it flushed, the WAL
    /// what was handed to it (see the module doc).
    fn crash(&mut self, i: usize, down_for: u64) {
        let node = &mut self.nodes[i];
        node.disk.crash();
        node.state = State::Down(self.now + down_for);
        self.stats.crashes += 1;
        let id = node.id;
        self.event(format!("member {id} crashed for {down_for} steps"));
    }

    /// The lease client: grants leases (TTL 5..8 s), attaches keys
    /// `lease/0..` to them, keeps some alive at the leader's lessor (what
    /// `LeaseKeepAlive` does there) and revokes others, through random
    /// members. Nobody waits for these requests: their effects are checked
    /// at the end (the same lease records on every member; every lease
    /// expires once nobody keeps it alive, and its keys go with it).
    fn lease_client(&mut self) {
        use crate::pb::etcdserverpb::{
            LeaseCheckpoint, LeaseCheckpointRequest, LeaseGrantRequest, LeaseRevokeRequest,
        };
        if !self.rng.gen_bool(0.1) {
            return;
        }
        let running = self.running_indexes();
        let Some(&i) = running.choose(&mut self.rng) else {
            return;
        };
        let mut i = i;
        let op = match self.rng.gen_range(0..10) {
            0..=2 => {
                let id = 0x1000 + self.leases.len() as i64;
                self.leases.push(id);
                self.stats.lease_grants += 1;
                Op::LeaseGrant(LeaseGrantRequest {
                    ttl: self.rng.gen_range(5..=8),
                    id,
                })
            }
            3..=5 => {
                let Some(&lease) = self.leases.choose(&mut self.rng) else {
                    return;
                };
                let k = self.rng.gen_range(0..LEASE_KEYS);
                Op::Put(PutRequest {
                    key: format!("lease/{k}").into_bytes().into(),
                    value: format!("v{}", self.now).into_bytes().into(),
                    lease,
                    ..Default::default()
                })
            }
            6..=8 => {
                // A keepalive is answered by the leader's lessor (followers
                // forward it there); renewing a lease that had a remaining
                // TTL checkpointed proposes a checkpoint clearing it.
                let Some(l) = self.leader() else { return };
                let Some(&id) = self.leases.choose(&mut self.rng) else {
                    return;
                };
                let lessor = self
                    .running(l)
                    .expect("leader")
                    .steps
                    .applier
                    .lessor
                    .clone();
                match lessor.renew(id) {
                    crate::lessor::Renew::Renewed {
                        clear_checkpoint, ..
                    } => {
                        self.stats.lease_keepalives += 1;
                        if !clear_checkpoint {
                            return;
                        }
                        i = l;
                        Op::LeaseCheckpoint(LeaseCheckpointRequest {
                            checkpoints: vec![LeaseCheckpoint {
                                id,
                                remaining_ttl: 0,
                            }],
                        })
                    }
                    _ => return,
                }
            }
            _ => {
                let Some(&id) = self.leases.choose(&mut self.rng) else {
                    return;
                };
                Op::LeaseRevoke(LeaseRevokeRequest { id })
            }
        };
        let data = RaftRequest {
            id: 0,
            op: Some(op),
            header: None,
            origin: 0,
        }
        .encode_to_vec();
        if let Some(r) = self.running_mut(i) {
            r.peer.propose(data, None);
        }
    }

    /// Proposes an MVCC compaction at the leader, at a revision a few
    /// below its current one (a request nobody waits for: the outcome is
    /// checked by the final HashKV comparison, which covers the
    /// compaction revision, and by the reads that follow it).
    fn propose_mvcc_compaction(&mut self) {
        let Some(l) = self.leader() else { return };
        let store = &self.running(l).expect("leader runs").steps.applier.store;
        let (current, compacted) = (store.current_revision(), store.compact_revision());
        let low = (compacted + 1).max(current - 10).max(1);
        if low > current {
            return;
        }
        let revision = self.rng.gen_range(low..=current);
        let op = Op::Compaction(crate::pb::etcdserverpb::CompactionRequest {
            revision,
            physical: false,
        });
        self.propose_unwaited(l, op, format!("compact at revision {revision}"));
        self.stats.mvcc_compactions += 1;
    }

    /// Proposes `op` at member `l` as the server's own request (no waiter,
    /// no header), and records `what` in the event log.
    fn propose_unwaited(&mut self, l: usize, op: Op, what: String) {
        let data = RaftRequest {
            id: 0,
            op: Some(op),
            header: None,
            origin: 0,
        }
        .encode_to_vec();
        self.running_mut(l)
            .expect("member runs")
            .peer
            .propose(data, None);
        let id = self.nodes[l].id;
        self.event(format!("member {id} proposes: {what}"));
    }

    /// Proposes a random auth change at the leader (users u0..u2, roles
    /// r0..r2, permissions on small ranges), as the server's own request
    /// (no header). Outcomes are checked at the end: every member must hold
    /// the same auth state, on disk and in memory (`converge`).
    fn propose_auth_change(&mut self) {
        use crate::pb::authpb::Permission;
        use crate::pb::etcdserverpb::*;
        let Some(l) = self.leader() else { return };
        let user = format!("u{}", self.rng.gen_range(0..3));
        let role = format!("r{}", self.rng.gen_range(0..3));
        let lo = self.rng.gen_range(b'a'..=b'y');
        let (key, range_end) = match self.rng.gen_range(0..3) {
            0 => (vec![lo], vec![]),
            1 => (vec![lo], vec![self.rng.gen_range(lo + 1..=b'z')]),
            _ => (vec![lo], vec![0]),
        };
        let op = match self.rng.gen_range(0..8) {
            0 => Op::UserAdd(AuthUserAddRequest {
                name: user,
                // The proposer hashes; nothing here checks the password.
                hashed_password: "$2a$04$stand-in".into(),
                ..Default::default()
            }),
            1 => Op::UserDelete(AuthUserDeleteRequest { name: user }),
            2 => Op::RoleAdd(AuthRoleAddRequest { name: role }),
            3 => Op::RoleDelete(AuthRoleDeleteRequest { role }),
            4 => Op::UserGrantRole(AuthUserGrantRoleRequest { user, role }),
            5 => Op::UserRevokeRole(AuthUserRevokeRoleRequest { name: user, role }),
            6 => Op::RoleGrantPermission(AuthRoleGrantPermissionRequest {
                name: role,
                perm: Some(Permission {
                    perm_type: self.rng.gen_range(0..3),
                    key: key.into(),
                    range_end: range_end.into(),
                }),
            }),
            _ => Op::RoleRevokePermission(AuthRoleRevokePermissionRequest {
                role,
                key: key.into(),
                range_end: range_end.into(),
            }),
        };
        let text = format!("{op:?}");
        self.propose_unwaited(l, op, text);
        self.stats.auth_changes += 1;
    }

    /// Proposes, at the leader, disarming every alarm it has applied (a
    /// CORRUPT alarm refuses writes, as in etcd, until disarmed).
    fn disarm_alarms(&mut self) {
        use crate::pb::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
        let Some(l) = self.leader() else { return };
        let Some(r) = self.running(l) else { return };
        let active = r.steps.applier.alarms.get(AlarmType::None as i32);
        for a in active {
            let op = Op::Alarm(AlarmRequest {
                action: AlarmAction::Deactivate as i32,
                member_id: a.member_id,
                alarm: a.alarm,
            });
            self.propose_unwaited(
                l,
                op,
                format!("calm: disarm alarm {} of {}", a.alarm, a.member_id),
            );
        }
    }

    /// Proposes raising or disarming a CORRUPT alarm of a random member at
    /// the leader. While one is active every member refuses the clients'
    /// writes (definite failures); `calm_down` disarms them before its
    /// liveness write. Every member must end with the same alarms
    /// (`converge`).
    fn propose_alarm_change(&mut self) {
        use crate::pb::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
        let Some(l) = self.leader() else { return };
        let member_id = self.nodes[self.rng.gen_range(0..self.nodes.len())].id;
        let action = if self.rng.gen_bool(0.5) {
            AlarmAction::Activate
        } else {
            AlarmAction::Deactivate
        };
        let op = Op::Alarm(AlarmRequest {
            action: action as i32,
            member_id,
            alarm: AlarmType::Corrupt as i32,
        });
        self.propose_unwaited(l, op, format!("{action:?} CORRUPT of {member_id}"));
        self.stats.alarm_changes += 1;
    }

    /// Proposes a membership change at the leader: a removal, an addition
    /// (voter or learner) or a promotion, one at a time.
    fn propose_membership(&mut self) {
        if self.admin.is_some() {
            return;
        }
        let Some(l) = self.leader() else { return };
        let cluster = self
            .running(l)
            .expect("leader runs")
            .steps
            .applier
            .cluster
            .read()
            .clone();
        let cs = cluster.conf_state();
        let change = match self.rng.gen_range(0..3) {
            0 if cs.voters.len() > self.cfg.min_voters => {
                Change::Remove(*cs.voters.choose(&mut self.rng).expect("voters"))
            }
            1 if cs.voters.len() + cs.learners.len() < MAX_VOTERS => {
                let id = self.next_member_id;
                self.next_member_id += 1;
                let mut m = member(id);
                m.is_learner = self.rng.gen_bool(0.5);
                Change::Add(m)
            }
            2 if !cs.learners.is_empty() => {
                Change::Promote(*cs.learners.choose(&mut self.rng).expect("learners"))
            }
            _ => return,
        };
        let what = match &change {
            Change::Remove(id) => format!("remove member {id}"),
            Change::Add(m) if m.is_learner => format!("add learner {}", m.id),
            Change::Add(m) => format!("add member {}", m.id),
            Change::Promote(id) => format!("promote learner {id}"),
            _ => unreachable!("only raft configuration changes"),
        };
        let req_id = self.next_req_id;
        self.next_req_id += 1;
        let member = self.nodes[l].id;
        let incarnation = self.nodes[l].incarnation;
        let r = self.running_mut(l).expect("leader runs");
        let cc = change
            .to_conf_change(r.steps.applier.wait.waiter(req_id))
            .expect("a raft configuration change");
        let rx = r.steps.applier.wait.register(req_id);
        let wait = r.steps.applier.wait.clone();
        r.peer.propose_conf_change(
            cc,
            Some(Box::new(move |res| {
                if res.is_err() {
                    wait.trigger(req_id, Err(Error::NoLeader));
                }
            })),
        );
        self.event(format!("member {member} proposes: {what}"));
        self.admin = Some(AdminOp {
            member,
            incarnation,
            req_id,
            rx,
            deadline: self.now + self.cfg.request_timeout,
            what,
        });
    }

    /// Starts the members the leader's membership has and no node runs
    /// yet (as an operator starts a member right after `member add`): an
    /// empty store and log, the leader sends a snapshot.
    fn start_added(&mut self) -> Result<(), String> {
        let Some(cluster) = self.leader_membership() else {
            return Ok(());
        };
        for m in cluster.members() {
            if self.index_of(m.id).is_some() {
                continue;
            }
            self.nodes.push(Node::new(m.id, &self.cfg.dir));
            let i = self.nodes.len() - 1;
            self.start(i, Boot::Join(cluster.clone()))?;
            self.stats.joins += 1;
            let kind = if m.is_learner { "learner" } else { "member" };
            self.event(format!("new {kind} {} started", m.id));
        }
        Ok(())
    }

    fn admin_collect(&mut self) {
        let Some(mut op) = self.admin.take() else {
            return;
        };
        let node = self.index_of(op.member).and_then(|i| {
            (self.nodes[i].incarnation == op.incarnation)
                .then(|| self.running(i))
                .flatten()
        });
        let outcome = match op.rx.try_recv() {
            Ok(Ok(_)) => Some("applied".to_string()),
            Ok(Err(e)) => Some(format!("failed: {e}")),
            Err(TryRecvError::Closed) => Some("unknown (member stopped)".to_string()),
            Err(TryRecvError::Empty) => match node {
                None => Some("unknown (member stopped)".to_string()),
                Some(r) if self.now >= op.deadline => {
                    r.steps.applier.wait.cancel(op.req_id);
                    Some("unknown (timed out)".to_string())
                }
                Some(_) => None,
            },
        };
        match outcome {
            Some(o) => {
                if o == "applied" && op.what.starts_with("promote") {
                    self.stats.promotions += 1;
                }
                self.event(format!("{}: {o}", op.what));
            }
            None => self.admin = Some(op),
        }
    }

    fn random_input(&mut self, c: usize) -> Input {
        let k = self.rng.gen_range(0..self.cfg.keys);
        let key = format!("k{k}").into_bytes();
        let client = &mut self.clients[c];
        client.sent += 1;
        let value = format!("c{}-{}", client.id, client.sent).into_bytes();
        match self.rng.gen_range(0..10) {
            0..=3 => Input::Get { key },
            4..=6 => Input::Put { key, value },
            7 => Input::Delete { key },
            _ => {
                let seen = self.clients[c].seen_mod.get(&key).copied();
                let expected_mod = match seen {
                    Some(m) if self.rng.gen_bool(0.7) => m,
                    _ => self.rng.gen_range(0..(self.now as i64 / 20).max(2)),
                };
                Input::PutIfModRev {
                    key,
                    expected_mod,
                    value,
                }
            }
        }
    }

    /// Idle clients send a new request, now and then.
    fn clients_send(&mut self) {
        for c in 0..self.clients.len() {
            if self.clients[c].op.is_some() || !self.rng.gen_bool(0.3) {
                continue;
            }
            // Learners serve no client requests (etcd refuses them).
            let serving: Vec<usize> = self
                .running_indexes()
                .into_iter()
                .filter(|&i| !self.running(i).is_some_and(|r| r.peer.status().is_learner))
                .collect();
            let Some(&i) = serving.choose(&mut self.rng) else {
                return;
            };
            let input = self.random_input(c);
            self.send(c, i, input);
        }
    }

    /// Client `c` sends `input` to member `i`.
    fn send(&mut self, c: usize, i: usize, input: Input) {
        let call = self.rec.call(self.clients[c].id, input.clone());
        let index = self.info.len();
        let member = self.nodes[i].id;
        let is_read = matches!(input, Input::Get { .. });
        self.info.push(OpInfo {
            member,
            call_step: self.now,
            ret_step: None,
            request: if is_read { 0 } else { self.next_req_id },
        });
        self.stats.ops += 1;
        let incarnation = self.nodes[i].incarnation;
        let deadline = self.now + self.cfg.request_timeout;
        let req_id = self.next_req_id;
        self.next_req_id += 1;
        let local_reads = self.cfg.unsafe_local_reads;
        let r = self.running_mut(i).expect("sent to a running member");
        let b = |v: &[u8]| Bytes::copy_from_slice(v);
        let op = match &input {
            Input::Get { .. } if local_reads => {
                // The broken read path: no ReadIndex.
                Err(Waiting::Applied(0))
            }
            Input::Get { .. } => {
                let slot = Arc::new(Mutex::new(None));
                let s = slot.clone();
                r.peer
                    .queue_read(Box::new(move |res| *s.lock() = Some(res)));
                Err(Waiting::ReadIndex(slot))
            }
            Input::Put { key, value } => Ok(Op::Put(PutRequest {
                key: b(key),
                value: b(value),
                ..Default::default()
            })),
            Input::Delete { key } => Ok(Op::DeleteRange(DeleteRangeRequest {
                key: b(key),
                ..Default::default()
            })),
            Input::PutIfModRev {
                key,
                expected_mod,
                value,
            } => Ok(Op::Txn(TxnRequest {
                compare: vec![Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Mod as i32,
                    key: b(key),
                    range_end: Bytes::new(),
                    target_union: Some(compare::TargetUnion::ModRevision(*expected_mod)),
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: b(key),
                        value: b(value),
                        ..Default::default()
                    })),
                }],
                failure: vec![],
            })),
            Input::Foreign { .. } => unreachable!("clients send no foreign writes"),
        };
        let waiting = match op {
            Err(w) => w,
            Ok(op) => {
                // As `Etcd::propose`: register, then propose.
                let data = RaftRequest {
                    id: req_id,
                    op: Some(op),
                    header: None,
                    origin: r.steps.applier.wait.origin(),
                }
                .encode_to_vec();
                let rx = r.steps.applier.wait.register(req_id);
                let wait = r.steps.applier.wait.clone();
                r.peer.propose(
                    data,
                    Some(Box::new(move |res| {
                        if res.is_err() {
                            wait.trigger(req_id, Err(Error::NoLeader));
                        }
                    })),
                );
                Waiting::Write { req_id, rx }
            }
        };
        self.clients[c].op = Some(InFlight {
            call,
            index,
            input,
            member,
            incarnation,
            deadline,
            waiting,
        });
    }

    /// Clients collect their results.
    fn clients_collect(&mut self) -> Result<(), String> {
        for c in 0..self.clients.len() {
            let Some(mut op) = self.clients[c].op.take() else {
                continue;
            };
            let i = self.index_of(op.member).expect("a member");
            let alive = self.nodes[i].incarnation == op.incarnation && self.running(i).is_some();
            if !alive {
                self.unknown(op);
                continue;
            }
            let r = self.running(i).expect("alive");
            let mut done: Option<Output> = None;
            let mut failed = false;
            loop {
                match &mut op.waiting {
                    Waiting::Write { rx, .. } => match rx.try_recv() {
                        Ok(Ok(applied)) => done = Some(write_output(&op.input, applied)?),
                        // Dropped before raft took it, or failed when
                        // applied: the client sees an error.
                        Ok(Err(_)) | Err(TryRecvError::Closed) => failed = true,
                        Err(TryRecvError::Empty) => {}
                    },
                    Waiting::ReadIndex(slot) => {
                        let got = slot.lock().take();
                        match got {
                            Some(Ok(index)) => {
                                op.waiting = Waiting::Applied(index);
                                continue;
                            }
                            Some(Err(_)) => failed = true,
                            None => {}
                        }
                    }
                    Waiting::Applied(index) => {
                        if r.steps.applied() >= *index {
                            let Input::Get { key } = &op.input else {
                                unreachable!("only reads wait for an applied index")
                            };
                            done = Some(read_local(&r.steps.applier.store, key)?);
                        }
                    }
                }
                break;
            }
            if let Some(out) = done {
                self.returned(c, op, out);
            } else if failed {
                self.unknown(op);
            } else if self.now >= op.deadline {
                if let Waiting::Write { req_id, .. } = op.waiting {
                    r.steps.applier.wait.cancel(req_id);
                }
                self.unknown(op);
            } else {
                self.clients[c].op = Some(op);
            }
        }
        Ok(())
    }

    fn returned(&mut self, c: usize, op: InFlight, out: Output) {
        self.stats.ops_ok += 1;
        match (&op.input, &out) {
            (Input::Get { key }, Output::Get { kv, .. }) => {
                self.stats.reads_ok += 1;
                let m = kv.as_ref().map_or(0, |kv| kv.mod_revision);
                self.clients[c].seen_mod.insert(key.clone(), m);
            }
            (
                Input::Put { key, .. } | Input::PutIfModRev { key, .. },
                Output::Put { revision }
                | Output::PutIfModRev {
                    succeeded: true,
                    revision,
                },
            ) => {
                self.stats.writes_ok += 1;
                self.clients[c].seen_mod.insert(key.clone(), *revision);
            }
            _ => self.stats.writes_ok += 1,
        }
        self.info[op.index].ret_step = Some(self.now);
        self.rec.ret(op.call, out);
    }

    fn unknown(&mut self, _op: InFlight) {
        self.stats.ops_unknown += 1;
    }

    /// The history for the checker, with the outcome of each write whose
    /// client did not learn it (timeout, crash) resolved from the applied
    /// log:
    /// - a write no member applied did not take effect: it is left out;
    /// - a write some member applied gets the output applying it produced
    ///   (derived from the store revision before and after: every member
    ///   applies the same entries, which [`Sim::ready`] checks), and no
    ///   return time (it may take effect any time after its call); one
    ///   that changed nothing is left out too.
    ///
    /// Both only add constraints for the checker (a write that changed the
    /// store without being applied, or differently from what applying it
    /// produced, is a violation either way), and they spare it from trying
    /// every unknown write at every point of the history.
    fn resolved_history(&self) -> Result<(Vec<Operation>, Vec<OpInfo>), String> {
        let mut history = Vec::new();
        let mut info = Vec::new();
        for (mut op, i) in self
            .rec
            .history()
            .into_iter()
            .zip(self.info.iter().cloned())
        {
            if op.ret.is_none() && i.request != 0 {
                let Some(&(before, after)) = self.applied_requests.get(&i.request) else {
                    continue;
                };
                if after == before {
                    // Applied without changing the store (a failed compare,
                    // a delete of a missing key): the same as never run.
                    // Kept, it would have to be placed at exactly that
                    // revision with nothing forcing it there, and the
                    // search would backtrack far to find that out.
                    continue;
                }
                let out = match &op.input {
                    Input::Put { .. } if after == before + 1 => Output::Put { revision: after },
                    Input::Delete { .. } if after - before <= 1 => Output::Delete {
                        deleted: after - before,
                        revision: after,
                    },
                    Input::PutIfModRev { .. } if after - before <= 1 => Output::PutIfModRev {
                        succeeded: after > before,
                        revision: after,
                    },
                    input => {
                        return Err(format!(
                            "{} moved the revision from {before} to {after} when applied",
                            show(input)
                        ))
                    }
                };
                op.ret = Some((u64::MAX, out));
            }
            history.push(op);
            info.push(i);
        }
        Ok((history, info))
    }

    /// Heals everything, restarts crashed members, lets clients finish,
    /// and checks that a new write succeeds.
    fn calm_down(&mut self) -> Result<(), String> {
        self.net.heal();
        self.net.set_faults(Faults::default());
        self.event("calm: network healed, faults off".into());
        for i in 0..self.nodes.len() {
            if let State::Down(_) = self.nodes[i].state {
                self.nodes[i].state = State::Down(self.now);
            }
        }
        let half = self.cfg.calm_steps / 2;
        for _ in 0..half {
            self.step(false, true)?;
        }
        self.disarm_alarms();
        let mut left = self.cfg.calm_steps - half;
        while self.clients.iter().any(|c| c.op.is_some()) && left > 0 {
            self.step(false, false)?;
            left -= 1;
        }
        if let Some(op) = self.clients[0].op.take() {
            self.unknown(op);
        }
        // Liveness: a write after healing, to a member of the cluster,
        // must succeed.
        let cluster = self.leader_membership().ok_or("no leader after healing")?;
        let members: Vec<usize> = self
            .final_members(&cluster)
            .into_iter()
            .filter(|&i| self.running(i).is_some())
            .collect();
        let &i = members
            .choose(&mut self.rng)
            .ok_or("no member runs after healing")?;
        let input = Input::Put {
            key: b"k0".to_vec(),
            value: b"final".to_vec(),
        };
        self.send(0, i, input);
        let ok_before = self.stats.ops_ok;
        for _ in 0..self.cfg.request_timeout * 3 {
            if self.clients[0].op.is_none() {
                break;
            }
            if let Some(op) = self.clients[0].op.as_mut() {
                op.deadline = u64::MAX;
            }
            self.step(false, false)?;
        }
        if self.stats.ops_ok == ok_before {
            return Err(format!(
                "a write sent to member {} after healing did not succeed",
                self.nodes[i].id
            ));
        }
        Ok(())
    }

    /// Steps until every member of the final membership applied the same
    /// index, then compares their states. Returns (revision, HashKV).
    fn converge(&mut self) -> Result<(i64, u32), String> {
        for _ in 0..self.cfg.calm_steps {
            if self.converged() {
                break;
            }
            self.step(false, false)?;
        }
        if !self.converged() {
            let states: Vec<String> = self
                .running_indexes()
                .into_iter()
                .map(|i| format!("{:?}", self.running(i).expect("running").peer.status()))
                .collect();
            return Err(format!("members did not converge: {states:?}"));
        }
        let want_cluster = self.leader_membership().expect("converged with a leader");
        let mut want: Option<(u64, i64, u32)> = None;
        for i in self.final_members(&want_cluster) {
            let id = self.nodes[i].id;
            let r = self
                .running(i)
                .ok_or(format!("member {id} is not running"))?;
            let cluster = r.steps.applier.cluster.read().clone();
            if cluster != want_cluster {
                return Err(format!(
                    "member {id} has membership {cluster:?}, the leader {want_cluster:?}"
                ));
            }
            let raft_conf = r.peer.conf_state();
            let cs = cluster.conf_state();
            if raft_conf.voters.iter().collect::<BTreeSet<_>>()
                != cs.voters.iter().collect::<BTreeSet<_>>()
                || raft_conf.learners.iter().collect::<BTreeSet<_>>()
                    != cs.learners.iter().collect::<BTreeSet<_>>()
            {
                return Err(format!(
                    "member {id}: raft's configuration {raft_conf:?} differs from the membership {cs:?}"
                ));
            }
            let h = r
                .steps
                .applier
                .store
                .hash_kv(0)
                .map_err(|e| e.to_string())?;
            let leases = r
                .steps
                .applier
                .store
                .aux_scan(etcd_mvcc::Bucket::Lease)
                .map_err(|e| e.to_string())?;
            // The auth state, as stored and as the member holds it in
            // memory (a member that installed an image must have reloaded).
            let auth = &r.steps.applier.auth;
            let auth_state = (
                r.steps
                    .applier
                    .store
                    .aux_scan(etcd_mvcc::Bucket::Auth)
                    .map_err(|e| e.to_string())?,
                auth.revision(),
                auth.user_list(),
                auth.role_list(),
                auth.user_list()
                    .iter()
                    .map(|u| auth.user_get(u).unwrap_or_default())
                    .collect::<Vec<_>>(),
                // And the alarms, stored and in memory.
                r.steps
                    .applier
                    .store
                    .aux_scan(etcd_mvcc::Bucket::Alarm)
                    .map_err(|e| e.to_string())?,
                r.steps
                    .applier
                    .alarms
                    .get(crate::pb::etcdserverpb::AlarmType::None as i32),
            );
            let h = (
                h.revision,
                h.hash
                    ^ u32::try_from(
                        digest(&format!("{leases:?}{auth_state:?}").into_bytes()) & 0xffff_ffff,
                    )
                    .expect("masked"),
            );
            let got = (r.steps.applied(), h.0, h.1);
            match want {
                None => want = Some(got),
                Some(w) if w != got => {
                    return Err(format!(
                        "member {id} ended at (applied, revision, hash) {got:?}, another at {w:?}"
                    ))
                }
                Some(_) => {}
            }
        }
        let (_, rev, hash) = want.ok_or("no member left")?;
        Ok((rev, hash))
    }

    /// Checks what member `i`'s store published and what its watcher
    /// received since the last call: every member publishes the same
    /// events at each revision; the watcher gets every revision from its
    /// start, once, in order, each whole and as the store published it
    /// (etcd's ordered, unique, reliable and atomic guarantees), or a
    /// cancel naming the compaction revision when its start was compacted.
    /// One exception, etcd's: revisions at or below the compaction
    /// revision that compaction removed (a watcher at exactly the
    /// compaction revision is not canceled).
    fn check_watch(&mut self, i: usize) -> Result<(), String> {
        let id = self.nodes[i].id;
        let Some(r) = self.running(i) else {
            return Ok(());
        };
        let published: Vec<(i64, u64)> = std::mem::take(&mut *r.published.lock());
        let mut responses = Vec::new();
        while let Some(resp) = r.queue.try_pop() {
            responses.push(resp);
        }
        for (rev, d) in published {
            match self.revision_events.entry(rev) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(d);
                }
                std::collections::btree_map::Entry::Occupied(o) if *o.get() != d => {
                    return Err(format!(
                        "member {id} published other events at revision {rev} than another member"
                    ));
                }
                std::collections::btree_map::Entry::Occupied(_) => {}
            }
        }
        let mut next = self.running(i).expect("running").watch_next;
        for resp in responses {
            if resp.created {
                continue;
            }
            let Some(want) = next else {
                return Err(format!("member {id}: a watch response after its cancel"));
            };
            if resp.canceled {
                if resp.compact_revision < want {
                    return Err(format!(
                        "member {id}: watcher canceled with compact revision {} while it needed {want}",
                        resp.compact_revision
                    ));
                }
                self.watch_stats.compacted += 1;
                next = None;
                continue;
            }
            let mut k = 0;
            while k < resp.events.len() {
                let rev = resp.events[k].kv.as_ref().map_or(0, |kv| kv.mod_revision);
                let end = resp.events[k..]
                    .iter()
                    .position(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision) != rev)
                    .map_or(resp.events.len(), |p| k + p);
                let want = next.expect("not canceled");
                let compacted = self
                    .running(i)
                    .map_or(0, |r| r.steps.applier.store.compact_revision());
                // etcd's quirk, kept: a watcher whose next revision is the
                // compaction revision itself is not canceled, but a delete
                // at that revision is compacted away with its key. So a
                // skipped revision at or below the compaction revision is
                // allowed; one above it is a lost event.
                if rev < want || (rev > want && rev - 1 > compacted) {
                    return Err(format!(
                        "member {id}: watcher got revision {rev}, expected {want} (a gap, a repeat or a reordering; compaction revision {compacted})"
                    ));
                }
                if rev > want {
                    self.watch_stats.skipped_at_compaction += (rev - want) as u64;
                }
                let d = events_digest(&resp.events[k..end]);
                match self.revision_events.get(&rev) {
                    Some(&p) if p != d => {
                        return Err(format!(
                            "member {id}: watcher got other events at revision {rev} than the store published"
                        ))
                    }
                    Some(_) => {}
                    None => {
                        self.revision_events.insert(rev, d);
                    }
                }
                self.watch_stats.events += (end - k) as u64;
                next = Some(rev + 1);
                k = end;
            }
        }
        if let Some(r) = self.running_mut(i) {
            r.watch_next = next;
        }
        Ok(())
    }

    /// Once nobody keeps leases alive, every lease must expire on the
    /// leader's lessor, be revoked through raft, and disappear everywhere
    /// with its keys (expiry across crashes, restarts, leader changes and
    /// checkpoints).
    fn expire_leases(&mut self) -> Result<(), String> {
        // Members of the final membership (a removed member that never
        // learnt it keeps its stale state, as a real one would until told).
        let members = |sim: &Sim| -> Vec<usize> {
            let Some(cluster) = sim.leader_membership() else {
                return sim.running_indexes();
            };
            sim.final_members(&cluster)
                .into_iter()
                .filter(|&i| sim.running(i).is_some())
                .collect()
        };
        let live = |sim: &Sim| -> usize {
            members(sim)
                .into_iter()
                .map(|i| {
                    let a = &sim.running(i).expect("running").steps.applier;
                    let keys = a
                        .store
                        .range(b"lease/", b"lease0", etcd_mvcc::RangeOptions::default())
                        .map_or(usize::MAX, |r| r.kvs.len());
                    a.lessor.len() + keys
                })
                .sum()
        };
        let before: usize = self
            .running_indexes()
            .into_iter()
            .map(|i| self.running(i).expect("running").steps.applier.lessor.len())
            .max()
            .unwrap_or(0);
        // TTLs are at most 8 s: 80 ticks, about 160 steps; leader changes
        // extend them by an election timeout.
        for _ in 0..self.cfg.calm_steps {
            if live(self) == 0 && self.converged() {
                break;
            }
            self.step(false, false)?;
        }
        if live(self) != 0 {
            let left: Vec<String> = members(self)
                .into_iter()
                .map(|i| {
                    let r = self.running(i).expect("running");
                    format!(
                        "member {}: leases {:?} (primary: {})",
                        self.nodes[i].id,
                        r.steps.applier.lessor.leases(),
                        r.steps.applier.lessor.is_primary()
                    )
                })
                .collect();
            return Err(format!(
                "leases or their keys outlived their TTL with nobody keeping them alive: {left:?}"
            ));
        }
        self.stats.leases_expired = before as u64;
        Ok(())
    }

    /// The membership the current leader applied.
    fn leader_membership(&self) -> Option<RaftCluster> {
        let l = self.leader()?;
        let r = self.running(l).expect("the leader runs");
        Some(r.steps.applier.cluster.read().clone())
    }

    /// Indexes of the nodes that are members of `cluster`.
    fn final_members(&self, cluster: &RaftCluster) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| cluster.member(self.nodes[i].id).is_some())
            .collect()
    }

    fn converged(&self) -> bool {
        let Some(l) = self.leader() else { return false };
        let leader = self.running(l).expect("leader runs");
        let st = leader.peer.status();
        if leader.steps.applied() < st.commit_index || st.commit_index < st.last_index {
            return false;
        }
        let cluster = leader.steps.applier.cluster.read().clone();
        self.final_members(&cluster).into_iter().all(|i| {
            self.running(i)
                .is_some_and(|r| r.steps.applied() == leader.steps.applied())
        })
    }
}

/// What a member's apply loop applied in one `Ready`: each entry's index,
/// term and payload digest, and each request's store revision before and
/// after it was applied (what its output was).
#[derive(Default)]
struct SeenEntries {
    /// The applied index before the entry being applied.
    applied: u64,
    entries: Vec<(u64, u64, u64)>,
    requests: Vec<(u64, (i64, i64))>,
    /// A request being applied: id and revision before.
    current: Option<(u64, i64)>,
    /// Entries without a waiter (id 0: the lease client, expiry revokes,
    /// compactions) that moved the revision: (index, before, after).
    foreign: Vec<(u64, i64, i64)>,
    /// An entry applied out of order.
    error: Option<String>,
}

impl ApplyObserver for SeenEntries {
    fn before(&mut self, e: &CommittedEntry, store: &Store) {
        if e.index > self.applied + 1 && self.error.is_none() {
            self.error = Some(format!("applied index {} after {}", e.index, self.applied));
        }
        self.applied = self.applied.max(e.index);
        self.entries.push((e.index, e.term, digest(&e.data)));
        self.current = (e.kind == EntryKind::Normal
            && !e.data.is_empty()
            && e.index > store.consistent_index())
        .then(|| RaftRequest::decode(e.data.clone()).ok())
        .flatten()
        .map(|req| (req.id, store.current_revision()));
    }

    fn after(&mut self, index: u64, store: &Store) {
        if let Some((id, before)) = self.current.take() {
            let after = store.current_revision();
            if id == 0 {
                if after != before {
                    self.foreign.push((index, before, after));
                }
            } else {
                self.requests.push((id, (before, after)));
            }
        }
    }
}

/// A digest of one revision's events as a watcher sees them (without
/// `prev_kv`, which watchers get only on request).
fn events_digest(evs: &[crate::pb::mvccpb::Event]) -> u64 {
    let mut text = String::new();
    for e in evs {
        let kv = e.kv.as_ref().expect("events carry a kv");
        let _ = write!(
            text,
            "{}|{:?}|{:?}|{}|{}|{}|{};",
            e.r#type, kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease
        );
    }
    digest(text.as_bytes())
}

/// The output of an applied write.
fn write_output(input: &Input, applied: Applied) -> Result<Output, String> {
    let rev =
        |h: &Option<crate::pb::etcdserverpb::ResponseHeader>| h.as_ref().map_or(0, |h| h.revision);
    Ok(match (input, applied) {
        (Input::Put { .. }, Applied::Put(r)) => Output::Put {
            revision: rev(&r.header),
        },
        (Input::Delete { .. }, Applied::DeleteRange(r)) => Output::Delete {
            deleted: r.deleted,
            revision: rev(&r.header),
        },
        (Input::PutIfModRev { .. }, Applied::Txn(r)) => Output::PutIfModRev {
            succeeded: r.succeeded,
            revision: rev(&r.header),
        },
        (input, _) => return Err(format!("{} applied as something else", show(input))),
    })
}

/// A read of `key` from the local store (after ReadIndex, or not).
fn read_local(store: &Store, key: &[u8]) -> Result<Output, String> {
    let resp = apply::range(
        &View::read(store),
        &RangeRequest {
            key: Bytes::copy_from_slice(key),
            ..Default::default()
        },
    )
    .map_err(|e| format!("reading {key:?}: {e}"))?;
    Ok(Output::Get {
        kv: resp.kvs.first().map(|kv| KeyState {
            value: kv.value.to_vec(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
        }),
        revision: resp.header.map_or(0, |h| h.revision),
    })
}
