//! The engine handle: starts a member and serves the KV, Maintenance and
//! Cluster APIs (etcd's `etcdserver` package).
//!
//! Write path: validate -> encode a [`RaftRequest`] with a fresh id ->
//! register a waiter -> propose to raft -> the apply thread applies the
//! committed entry to the MVCC store and triggers the waiter with the
//! response.
//!
//! Read path: serializable reads run on the local store at once;
//! linearizable reads first get a ReadIndex from raft (batched with other
//! reads), wait until the apply thread has applied that index, then run
//! locally. Read-only txns take the read path too, as in etcd.

use crate::applier::Applier;
use crate::apply::{self, Applied, View};
use crate::apply_loop::ApplySteps;
use crate::cluster::RaftCluster;
use crate::config::Config;
use crate::error::StartError;
use crate::lessor::{min_lease_ttl, Clock, Lessor, MonotonicClock};
use crate::membership;
use crate::pb::etcdserverpb::{
    AlarmMember, AlarmResponse, CompactionRequest, CompactionResponse, DefragmentResponse,
    DeleteRangeRequest, DeleteRangeResponse, HashKvResponse, PutRequest, PutResponse, RangeRequest,
    RangeResponse, ResponseHeader, StatusResponse, TxnRequest, TxnResponse,
};
use crate::raft_request::{Op, RaftRequest};
use crate::request_check;
use crate::request_context::RequestContext;
use crate::snapshot::StoreSnapshots;
use crate::wait::Wait;
use crate::watchable_store::WatchableStore;
use crate::watcher::WatchStream;
use crate::{Error, Result};
use etcd_mvcc::Store;
use etcd_raft_node::{NodeConfig, RaftNode, TcpTransport, TcpTransportConfig, TransportHooks};
use parking_lot::{Mutex, RwLock};
use prost::Message as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use tokio::sync::{oneshot, watch};

/// The API version this engine implements (reported by Status).
pub const SERVER_VERSION: &str = "3.5.0";

/// A running member. Cheap to clone; all clones share the member.
#[derive(Clone)]
pub struct Etcd {
    pub(crate) inner: Arc<Inner>,
}

/// How a member is started, beyond its [`Config`].
pub struct StartOptions {
    /// The monotonic clock lease deadlines are measured on.
    pub clock: Arc<dyn Clock>,
    /// An already bound listener for peer traffic (tests bind port 0);
    /// without one, the first of `listen_peer_urls` is bound.
    pub peer_listener: Option<std::net::TcpListener>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            clock: Arc::new(MonotonicClock::new()),
            peer_listener: None,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) cfg: Config,
    pub(crate) member_id: u64,
    pub(crate) cluster_id: u64,
    pub(crate) cluster: Arc<RwLock<RaftCluster>>,
    pub(crate) transport: Option<Arc<TcpTransport>>,
    pub(crate) removed: watch::Receiver<bool>,
    pub(crate) publisher: Mutex<Option<crate::server_cluster::Publisher>>,
    store: Arc<Store>,
    pub(crate) node: Arc<RaftNode>,
    wait: Arc<Wait<Result<Applied>>>,
    next_id: AtomicU64,
    applied: watch::Receiver<u64>,
    apply_thread: Mutex<Option<JoinHandle<()>>>,
    watch: Arc<WatchableStore>,
    lessor: Arc<Lessor>,
    lease_ticker: Mutex<Option<crate::lease_ticker::Ticker>>,
}

impl Etcd {
    /// Starts a member: bootstraps a new cluster from the `initial_*`
    /// settings in an empty data directory, joins an existing one
    /// (`initial_cluster_state = Existing`), or restarts from what the data
    /// directory holds (ignoring the `initial_*` settings, as etcd does).
    ///
    /// Threads are started here; the async API needs a tokio runtime with
    /// the time driver.
    pub fn start(cfg: Config) -> Result<Etcd, StartError> {
        Self::start_with(cfg, StartOptions::default())
    }

    /// Like [`Etcd::start`], with the monotonic clock lease deadlines are
    /// measured on.
    pub fn start_with_clock(cfg: Config, clock: Arc<dyn Clock>) -> Result<Etcd, StartError> {
        Self::start_with(
            cfg,
            StartOptions {
                clock,
                ..StartOptions::default()
            },
        )
    }

    /// Like [`Etcd::start`], with [`StartOptions`].
    pub fn start_with(cfg: Config, opts: StartOptions) -> Result<Etcd, StartError> {
        cfg.validate()?;
        let peer_listener = match opts.peer_listener {
            Some(l) => Some(l),
            None => match cfg.listen_peer_urls.first() {
                Some(url) => {
                    let addr = crate::config::peer_addr(url).map_err(StartError::Config)?;
                    Some(std::net::TcpListener::bind(&addr).map_err(|e| {
                        StartError::Config(format!("cannot listen for peers on {url}: {e}"))
                    })?)
                }
                None => None,
            },
        };
        let booted = crate::bootstrap::boot(&cfg, |initial| {
            crate::peer_query::fetch_cluster(&cfg, initial)
        })?;
        let member_id = booted.member_id;
        let cluster_id = booted.cluster_id;
        let voters = booted.cluster.conf_state().voters;
        if voters.len() > 1 && peer_listener.is_none() {
            return Err(StartError::Config(format!(
                "the cluster has {} voting members but no --listen-peer-urls to talk to them",
                voters.len()
            )));
        }
        let store = Arc::new(booted.store);
        // Subscribed before the apply thread starts: it sees every revision.
        let watch = WatchableStore::start(store.clone())?;
        let applied = store.consistent_index();
        let lessor = Arc::new(Lessor::new(
            opts.clock,
            min_lease_ttl(cfg.election_timeout),
            cfg.lease_checkpoint_interval,
        ));
        crate::apply::lease::restore(&store, &lessor)
            .map_err(|e| StartError::Config(format!("cannot restore leases: {e}")))?;
        let cluster = Arc::new(RwLock::new(booted.cluster));
        // Messages that arrive before the node exists are dropped (raft
        // retransmits).
        let node_slot: Arc<OnceLock<Arc<RaftNode>>> = Arc::new(OnceLock::new());
        let snapshots = Arc::new(StoreSnapshots {
            files: booted.files,
            store: store.clone(),
        });
        let transport = match peer_listener {
            Some(listener) => {
                let (deliver, reported, unreachable) =
                    (node_slot.clone(), node_slot.clone(), node_slot.clone());
                let t = TcpTransport::start_with(
                    TcpTransportConfig {
                        id: member_id,
                        cluster_id,
                        peers: peer_addresses(&cluster.read().members(), member_id),
                        ..TcpTransportConfig::default()
                    },
                    listener,
                    Arc::new(move |msg| {
                        if let Some(node) = deliver.get() {
                            node.step(msg);
                        }
                    }),
                    TransportHooks {
                        snapshots: Some(snapshots.clone()),
                        report_snapshot: Some(Arc::new(move |to, ok| {
                            if let Some(node) = reported.get() {
                                node.report_snapshot(to, ok);
                            }
                        })),
                        report_unreachable: Some(Arc::new(move |to| {
                            if let Some(node) = unreachable.get() {
                                node.report_unreachable(to);
                            }
                        })),
                    },
                )?;
                tracing::info!(address = %t.local_addr(), "listening for peers");
                Some(t)
            }
            None => None,
        };
        let tick = cfg.heartbeat_interval;
        let node_cfg = NodeConfig {
            id: member_id,
            voters,
            applied,
            tick_interval: tick,
            election_tick: (cfg.election_timeout.as_millis() / tick.as_millis()).max(2) as usize,
            heartbeat_tick: 1,
            ..NodeConfig::default()
        };
        let (apply_tx, apply_rx) = crossbeam_channel::unbounded();
        let node = Arc::new(RaftNode::start(
            node_cfg,
            booted.storage,
            transport
                .clone()
                .map(|t| t as Arc<dyn etcd_raft_node::Transport>),
            apply_tx,
        )?);
        let _ = node_slot.set(node.clone());
        let wait = Arc::new(Wait::new());
        let (applied_tx, applied_rx) = watch::channel(applied);
        let (removed_tx, removed_rx) = watch::channel(false);
        let apply_thread = {
            let applier = Applier {
                store: store.clone(),
                lessor: lessor.clone(),
                wait: wait.clone(),
                cluster: cluster.clone(),
                member_id,
            };
            let steps = ApplySteps::new(
                applier,
                snapshots,
                cfg.snapshot_count,
                cfg.snapshot_catch_up_entries,
            );
            let ctx = ApplyLoop {
                node: node.clone(),
                watch: watch.clone(),
                transport: transport.clone(),
                applied_tx,
                removed_tx,
            };
            std::thread::Builder::new()
                .name("apply".into())
                .spawn(move || ctx.run(apply_rx, steps))?
        };
        let start_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let lease_ticker = crate::lease_ticker::Ticker::spawn(node.clone(), lessor.clone(), &cfg)?;
        let etcd = Etcd {
            inner: Arc::new(Inner {
                member_id,
                cluster_id,
                cluster,
                transport,
                store,
                node,
                wait,
                // etcd's idutil: member id's low 16 bits, then a time-based counter.
                next_id: AtomicU64::new(
                    ((member_id & 0xffff) << 48) | ((start_ms & 0xff_ffff_ffff) << 8),
                ),
                applied: applied_rx,
                removed: removed_rx,
                apply_thread: Mutex::new(Some(apply_thread)),
                publisher: Mutex::new(None),
                watch,
                lease_ticker: Mutex::new(Some(lease_ticker)),
                lessor,
                cfg,
            }),
        };
        crate::peer_query::install(&etcd);
        let publisher = crate::server_cluster::Publisher::spawn(etcd.clone())?;
        *etcd.inner.publisher.lock() = Some(publisher);
        Ok(etcd)
    }

    /// This member's id.
    pub fn member_id(&self) -> u64 {
        self.inner.member_id
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.inner.cluster_id
    }

    /// The configuration the member runs with.
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// A response header at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.inner.cluster_id,
            member_id: self.inner.member_id,
            revision,
            raft_term: self.inner.node.status().term,
        }
    }

    pub(crate) fn fill(&self, h: &mut Option<ResponseHeader>) {
        let rev = h.as_ref().map(|h| h.revision).filter(|r| *r != 0);
        *h = Some(self.header(rev.unwrap_or_else(|| self.inner.store.current_revision())));
    }

    /// KV.Range.
    pub async fn range(&self, ctx: &RequestContext, r: RangeRequest) -> Result<RangeResponse> {
        request_check::check_range(&r)?;
        if !r.serializable {
            self.linearizable_read_notify(ctx).await?;
        }
        let mut resp = apply::range(&View::read(&self.inner.store), &r)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// KV.Put.
    pub async fn put(&self, ctx: &RequestContext, r: PutRequest) -> Result<PutResponse> {
        request_check::check_put(&r)?;
        self.check_quota()?;
        match self.propose(ctx, Op::Put(r)).await? {
            Applied::Put(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => unreachable!("a put applies as a put"),
        }
    }

    /// KV.DeleteRange.
    pub async fn delete_range(
        &self,
        ctx: &RequestContext,
        r: DeleteRangeRequest,
    ) -> Result<DeleteRangeResponse> {
        request_check::check_delete(&r)?;
        match self.propose(ctx, Op::DeleteRange(r)).await? {
            Applied::DeleteRange(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => unreachable!("a delete applies as a delete"),
        }
    }

    /// KV.Txn.
    pub async fn txn(&self, ctx: &RequestContext, r: TxnRequest) -> Result<TxnResponse> {
        request_check::check_txn(&r, self.inner.cfg.max_txn_ops)?;
        if apply::is_read_only(&r) {
            if !is_serializable(&r) {
                self.linearizable_read_notify(ctx).await?;
            }
            let mut resp = apply::txn(&mut View::read(&self.inner.store), &r)?;
            self.fill(&mut resp.header);
            return Ok(resp);
        }
        self.check_quota()?;
        match self.propose(ctx, Op::Txn(r)).await? {
            Applied::Txn(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => unreachable!("a txn applies as a txn"),
        }
    }

    /// KV.Compact. With `physical`, returns once the compacted revisions
    /// are removed from the store.
    pub async fn compact(
        &self,
        ctx: &RequestContext,
        r: CompactionRequest,
    ) -> Result<CompactionResponse> {
        let physical = r.physical;
        match self.propose(ctx, Op::Compaction(r)).await? {
            Applied::Compaction(mut resp, wait) => {
                if physical {
                    tokio::task::spawn_blocking(move || wait.wait())
                        .await
                        .map_err(|e| Error::Internal(format!("compaction wait failed: {e}")))?;
                }
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => unreachable!("a compaction applies as a compaction"),
        }
    }

    /// Maintenance.Status.
    pub fn status(&self, _ctx: &RequestContext) -> StatusResponse {
        let st = self.inner.node.status();
        let store = &self.inner.store;
        StatusResponse {
            header: Some(self.header(store.current_revision())),
            version: SERVER_VERSION.into(),
            db_size: store.db_size() as i64,
            leader: st.leader_id,
            raft_index: st.commit_index,
            raft_term: st.term,
            raft_applied_index: *self.inner.applied.borrow(),
            errors: Vec::new(),
            db_size_in_use: store.db_size_in_use() as i64,
            is_learner: st.is_learner,
        }
    }

    /// Maintenance.Alarm with action GET: the active alarms (none can be
    /// raised yet: quota overruns are refused per request).
    pub fn alarm_list(&self, _ctx: &RequestContext) -> AlarmResponse {
        AlarmResponse {
            header: Some(self.header(self.inner.store.current_revision())),
            alarms: Vec::<AlarmMember>::new(),
        }
    }

    /// Maintenance.Defragment: compacts the store's files. Online: reads
    /// and writes continue meanwhile. Blocking; call from a blocking context.
    pub fn defragment(&self, _ctx: &RequestContext) -> Result<DefragmentResponse> {
        self.inner.store.defragment()?;
        Ok(DefragmentResponse {
            header: Some(self.header(self.inner.store.current_revision())),
        })
    }

    /// Maintenance.HashKV: a hash of every key revision up to `revision`
    /// (0 = current), equal on members with the same history.
    pub fn hash_kv(&self, _ctx: &RequestContext, revision: i64) -> Result<HashKvResponse> {
        let h = self.inner.store.hash_kv(revision)?;
        Ok(HashKvResponse {
            header: Some(self.header(h.revision)),
            hash: h.hash,
            compact_revision: h.compact_revision,
            ..Default::default()
        })
    }

    /// Opens a watch stream (the gRPC Watch stream's equivalent): create
    /// watchers, cancel them, request progress, receive responses. Needs a
    /// tokio runtime with the time driver.
    pub fn watch(&self, _ctx: &RequestContext) -> WatchStream {
        let etcd = self.clone();
        WatchStream::new(
            self.inner.watch.clone(),
            Box::new(move |rev| etcd.header(rev)),
            self.inner.cfg.watch_progress_notify_interval,
            // etcd fragments above --max-request-bytes plus its gRPC
            // overhead allowance (512 KiB).
            self.inner.cfg.max_request_bytes as usize + 512 * 1024,
        )
    }

    /// The MVCC store, for maintenance operations.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Stops the member: raft, then the apply thread. Pending requests fail
    /// with "server stopped". Idempotent.
    pub fn stop(&self) {
        if let Some(p) = self.inner.publisher.lock().take() {
            p.stop();
        }
        if let Some(t) = self.inner.lease_ticker.lock().take() {
            t.stop();
        }
        self.inner.node.stop();
        if let Some(t) = self.inner.apply_thread.lock().take() {
            let _ = t.join();
        }
        self.inner.watch.stop();
        if let Some(t) = &self.inner.transport {
            t.shutdown();
        }
    }

    /// Becomes true when this member learns it was removed from the
    /// cluster; it has stopped serving (etcd exits then).
    pub fn removed(&self) -> watch::Receiver<bool> {
        self.inner.removed.clone()
    }

    pub(crate) fn check_quota(&self) -> Result<()> {
        if self.inner.store.db_size() >= self.inner.cfg.quota_bytes() {
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    /// The lease manager.
    pub(crate) fn lessor(&self) -> &Lessor {
        &self.inner.lessor
    }

    /// The applied raft index, updated after every applied batch.
    pub(crate) fn applied_index(&self) -> watch::Receiver<u64> {
        self.inner.applied.clone()
    }

    /// Raft status of this member.
    pub(crate) fn raft_status(&self) -> etcd_raft_node::NodeStatus {
        self.inner.node.status()
    }

    /// A fresh request id (etcd's idutil).
    pub(crate) fn next_request_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Proposes `op` without waiting for it (request id 0: no waiter).
    pub(crate) fn propose_detached(&self, op: Op) {
        let data = RaftRequest {
            id: 0,
            op: Some(op),
            header: None,
        }
        .encode_to_vec();
        self.inner.node.propose(data, None);
    }

    /// Proposes `op` and waits for its result.
    pub(crate) async fn propose(&self, ctx: &RequestContext, op: Op) -> Result<Applied> {
        let id = self.next_request_id();
        let data = RaftRequest {
            id,
            op: Some(op),
            header: ctx.raft_header(),
        }
        .encode_to_vec();
        if data.len() as u64 > self.inner.cfg.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        self.propose_with(ctx, id, move |node, ack| node.propose(data, ack))
            .await
    }

    /// Registers a waiter for request `id`, hands the proposal to raft
    /// with `send`, and waits for the applied result.
    pub(crate) async fn propose_with(
        &self,
        ctx: &RequestContext,
        id: u64,
        send: impl FnOnce(&RaftNode, Option<etcd_raft_node::ProposeCallback>),
    ) -> Result<Applied> {
        let inner = &self.inner;
        let rx = inner.wait.register(id);
        let wait = inner.wait.clone();
        send(
            &inner.node,
            Some(Box::new(move |r| {
                if let Err(e) = r {
                    wait.trigger(id, Err(raft_error(e)));
                }
            })),
        );
        match tokio::time::timeout(ctx.wait_limit(inner.cfg.request_timeout()), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => {
                inner.wait.cancel(id);
                Err(Error::Timeout)
            }
        }
    }

    /// Waits until this member has applied everything committed before
    /// the call (ReadIndex, batched by the raft thread).
    pub(crate) async fn linearizable_read_notify(&self, ctx: &RequestContext) -> Result<()> {
        let inner = &self.inner;
        let (tx, rx) = oneshot::channel();
        inner.node.read_index(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        let timeout = ctx.wait_limit(inner.cfg.request_timeout());
        let index = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(index))) => index,
            Ok(Ok(Err(e))) => return Err(raft_error(e)),
            Ok(Err(_)) => return Err(Error::Stopped),
            Err(_) => return Err(Error::Timeout),
        };
        let mut applied = inner.applied.clone();
        let waited = tokio::time::timeout(timeout, applied.wait_for(|a| *a >= index))
            .await
            .map(|r| r.map(|_| ()));
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => Err(Error::Timeout),
        }
    }
}

fn raft_error(e: etcd_raft_node::Error) -> Error {
    match e {
        etcd_raft_node::Error::ProposalDropped | etcd_raft_node::Error::NoLeader => Error::NoLeader,
        etcd_raft_node::Error::LeaderChanged => Error::LeaderChanged,
        etcd_raft_node::Error::Stopped => Error::Stopped,
        other => Error::Internal(other.to_string()),
    }
}

/// A read-only txn is served without ReadIndex only when every range in it
/// is serializable (etcd's `isTxnSerializable`).
fn is_serializable(t: &TxnRequest) -> bool {
    use crate::pb::etcdserverpb::request_op::Request;
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(Request::RequestRange(r)) => r.serializable,
            Some(Request::RequestTxn(t)) => is_serializable(t),
            _ => true,
        })
}

/// Peers' addresses (first peer URL of each member but `me`).
pub(crate) fn peer_addresses(
    members: &[crate::membership::Member],
    me: u64,
) -> std::collections::HashMap<u64, String> {
    members
        .iter()
        .filter(|m| m.id != me)
        .filter_map(|m| {
            let url = m.peer_urls.first()?;
            match crate::config::peer_addr(url) {
                Ok(a) => Some((m.id, a)),
                Err(e) => {
                    tracing::warn!(member = %membership::format_id(m.id), "unusable peer URL: {e}");
                    None
                }
            }
        })
        .collect()
}

/// The apply thread: applies committed entries in order until raft stops
/// (the steps are `apply_loop::ApplySteps`, shared with the simulation),
/// and does what only a running member does with the outcome: tell the
/// peer transport of membership changes, resync watchers after a snapshot,
/// stop once removed.
struct ApplyLoop {
    node: Arc<RaftNode>,
    watch: Arc<WatchableStore>,
    transport: Option<Arc<TcpTransport>>,
    applied_tx: watch::Sender<u64>,
    removed_tx: watch::Sender<bool>,
}

impl ApplyLoop {
    fn run(self, rx: crossbeam_channel::Receiver<etcd_raft_node::Applied>, mut steps: ApplySteps) {
        let mut peers = self
            .transport
            .as_ref()
            .map(|_| {
                peer_addresses(
                    &steps.applier.cluster.read().members(),
                    steps.applier.member_id,
                )
            })
            .unwrap_or_default();
        let mut raft = &*self.node;
        while let Ok(batch) = rx.recv() {
            let out = match steps.apply(batch, &mut raft, &mut ()) {
                Ok(out) => out,
                // The store may now be incomplete; a restart re-installs the
                // retained image (bootstrap.rs). Going on would apply entries
                // to a store that is not there.
                Err(e) => panic!("{e}"),
            };
            if out.snapshot_without_members {
                tracing::error!("the snapshot image holds no members");
            }
            if out.snapshot {
                self.watch.on_restore();
            }
            if out.members_changed {
                self.update_peers(&steps.applier, &mut peers);
            }
            self.applied_tx.send_replace(steps.applied());
            if out.removed {
                tracing::error!(
                    "this member has been permanently removed from the cluster; stopping"
                );
                self.removed_tx.send_replace(true);
                self.node.stop();
                return;
            }
        }
    }

    fn update_peers(&self, applier: &Applier, peers: &mut std::collections::HashMap<u64, String>) {
        let Some(t) = &self.transport else { return };
        let now = peer_addresses(&applier.cluster.read().members(), applier.member_id);
        for (id, addr) in &now {
            if peers.get(id) != Some(addr) {
                t.add_peer(*id, addr.clone());
            }
        }
        for id in peers.keys() {
            if !now.contains_key(id) {
                t.remove_peer(*id);
            }
        }
        *peers = now;
    }
}
