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

use crate::apply::{self, Applied, View};
use crate::config::{ClusterState, Config};
use crate::datadir::DataDir;
use crate::error::StartError;
use crate::lessor::{min_lease_ttl, Clock, Lessor, MonotonicClock};
use crate::membership::{self, Member, WalMetadata};
use crate::pb::etcdserverpb::{
    AlarmMember, AlarmResponse, CompactionRequest, CompactionResponse, DefragmentResponse,
    DeleteRangeRequest, DeleteRangeResponse, HashKvResponse, MemberListResponse,
    MoveLeaderResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader,
    StatusResponse, TxnRequest, TxnResponse,
};
use crate::raft_request::{Op, RaftRequest};
use crate::request_check;
use crate::wait::Wait;
use crate::watchable_store::WatchableStore;
use crate::watcher::WatchStream;
use crate::{Error, Result};
use etcd_mvcc::{Store, StoreOptions};
use etcd_raft_node::{
    eraftpb::ConfState, CommittedEntry, EntryKind, NodeConfig, RaftNode, WalStorage,
};
use parking_lot::Mutex;
use prost::Message as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use tokio::sync::{oneshot, watch};

/// The API version this engine implements (reported by Status).
pub const SERVER_VERSION: &str = "3.5.0";

/// A running member. Cheap to clone; all clones share the member.
#[derive(Clone)]
pub struct Etcd {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Config,
    member_id: u64,
    cluster_id: u64,
    members: Vec<Member>,
    store: Arc<Store>,
    node: Arc<RaftNode>,
    wait: Arc<Wait<Result<Applied>>>,
    next_id: AtomicU64,
    applied: watch::Receiver<u64>,
    apply_thread: Mutex<Option<JoinHandle<()>>>,
    watch: Arc<WatchableStore>,
    lessor: Arc<Lessor>,
    lease_ticker: Mutex<Option<crate::lease_ticker::Ticker>>,
}

impl Etcd {
    /// Starts a member: bootstraps a new single-member cluster in an empty
    /// data directory, or restarts from what the data directory holds
    /// (ignoring the `initial_*` settings, as etcd does).
    ///
    /// Threads are started here; the async API needs a tokio runtime with
    /// the time driver.
    pub fn start(cfg: Config) -> Result<Etcd, StartError> {
        Self::start_with_clock(cfg, Arc::new(MonotonicClock::new()))
    }

    /// Like [`Etcd::start`], with the monotonic clock lease deadlines are
    /// measured on.
    pub fn start_with_clock(cfg: Config, clock: Arc<dyn Clock>) -> Result<Etcd, StartError> {
        cfg.validate()?;
        let dir = DataDir::new(&cfg.data_dir);
        let wal_opts = etcd_wal::WalOptions::default();
        let restarting = etcd_wal::Wal::exists(&dir.wal());
        let (storage, meta, store) = if restarting {
            dir.check_version()?;
            let store = Store::open(&dir.db(), StoreOptions::default())?;
            let applied = store.consistent_index();
            // The WAL metadata names the members, from which the WAL is
            // replayed with its configuration.
            let mut meta = None;
            let opened = WalStorage::open(&dir.wal(), wal_opts, applied, |bytes| {
                let m = WalMetadata::decode(bytes.clone()).map_err(|e| {
                    etcd_raft_node::Error::Config(format!("WAL metadata is not readable: {e}"))
                })?;
                let cs = conf_state(&m);
                meta = Some(m);
                Ok(cs)
            })?;
            let meta = meta.expect("metadata decoded before the log is loaded");
            tracing::info!(
                member = %membership::format_id(meta.member_id),
                cluster = %membership::format_id(meta.cluster_id),
                applied,
                "restarting member from {}",
                cfg.data_dir.display()
            );
            (opened.storage, meta, store)
        } else {
            let meta = bootstrap_metadata(&cfg)?;
            dir.create()?;
            let store = Store::open(&dir.db(), StoreOptions::default())?;
            let storage = WalStorage::create(
                &dir.wal(),
                wal_opts,
                &meta.encode_to_vec(),
                conf_state(&meta),
            )?;
            tracing::info!(
                member = %membership::format_id(meta.member_id),
                cluster = %membership::format_id(meta.cluster_id),
                "bootstrapped a new single-member cluster in {}",
                cfg.data_dir.display()
            );
            (storage, meta, store)
        };
        let store = Arc::new(store);
        // Subscribed before the apply thread starts: it sees every revision.
        let watch = WatchableStore::start(store.clone())?;
        let applied = store.consistent_index();
        let lessor = Arc::new(Lessor::new(
            clock,
            min_lease_ttl(cfg.election_timeout),
            cfg.lease_checkpoint_interval,
        ));
        crate::apply_lease::restore(&store, &lessor)
            .map_err(|e| StartError::Config(format!("cannot restore leases: {e}")))?;
        let tick = cfg.heartbeat_interval;
        let node_cfg = NodeConfig {
            id: meta.member_id,
            voters: meta
                .members
                .iter()
                .filter(|m| !m.is_learner)
                .map(|m| m.id)
                .collect(),
            applied,
            tick_interval: tick,
            election_tick: (cfg.election_timeout.as_millis() / tick.as_millis()).max(2) as usize,
            heartbeat_tick: 1,
            ..NodeConfig::default()
        };
        let (apply_tx, apply_rx) = crossbeam_channel::unbounded();
        let node = Arc::new(RaftNode::start(node_cfg, storage, None, apply_tx)?);
        let wait = Arc::new(Wait::new());
        let (applied_tx, applied_rx) = watch::channel(applied);
        let apply_thread = {
            let (store, node, wait) = (store.clone(), node.clone(), wait.clone());
            let lessor = lessor.clone();
            let log = LogCompaction {
                every: cfg.snapshot_count,
                keep: cfg.snapshot_catch_up_entries,
                last: applied,
            };
            std::thread::Builder::new()
                .name("apply".into())
                .spawn(move || {
                    apply_loop(apply_rx, &store, &lessor, &node, &wait, &applied_tx, log)
                })?
        };
        let mut members = meta.members.clone();
        for m in &mut members {
            if m.id == meta.member_id {
                m.name = cfg.name.clone();
                m.client_urls = cfg.advertise_client_urls.clone();
            }
        }
        let start_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let lease_ticker = crate::lease_ticker::Ticker::spawn(node.clone(), lessor.clone(), &cfg)?;
        Ok(Etcd {
            inner: Arc::new(Inner {
                member_id: meta.member_id,
                cluster_id: meta.cluster_id,
                members,
                store,
                node,
                wait,
                // etcd's idutil: member id's low 16 bits, then a time-based counter.
                next_id: AtomicU64::new(
                    ((meta.member_id & 0xffff) << 48) | ((start_ms & 0xff_ffff_ffff) << 8),
                ),
                applied: applied_rx,
                apply_thread: Mutex::new(Some(apply_thread)),
                watch,
                lease_ticker: Mutex::new(Some(lease_ticker)),
                lessor,
                cfg,
            }),
        })
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
    pub async fn range(&self, r: RangeRequest) -> Result<RangeResponse> {
        request_check::check_range(&r)?;
        if !r.serializable {
            self.linearizable_read_notify().await?;
        }
        let mut resp = apply::range(&View::read(&self.inner.store), &r)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// KV.Put.
    pub async fn put(&self, r: PutRequest) -> Result<PutResponse> {
        request_check::check_put(&r)?;
        self.check_quota()?;
        match self.propose(Op::Put(r)).await? {
            Applied::Put(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => unreachable!("a put applies as a put"),
        }
    }

    /// KV.DeleteRange.
    pub async fn delete_range(&self, r: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        request_check::check_delete(&r)?;
        match self.propose(Op::DeleteRange(r)).await? {
            Applied::DeleteRange(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => unreachable!("a delete applies as a delete"),
        }
    }

    /// KV.Txn.
    pub async fn txn(&self, r: TxnRequest) -> Result<TxnResponse> {
        request_check::check_txn(&r, self.inner.cfg.max_txn_ops)?;
        if apply::is_read_only(&r) {
            if !is_serializable(&r) {
                self.linearizable_read_notify().await?;
            }
            let mut resp = apply::txn(&mut View::read(&self.inner.store), &r)?;
            self.fill(&mut resp.header);
            return Ok(resp);
        }
        self.check_quota()?;
        match self.propose(Op::Txn(r)).await? {
            Applied::Txn(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => unreachable!("a txn applies as a txn"),
        }
    }

    /// KV.Compact. With `physical`, returns once the compacted revisions
    /// are removed from the store.
    pub async fn compact(&self, r: CompactionRequest) -> Result<CompactionResponse> {
        let physical = r.physical;
        match self.propose(Op::Compaction(r)).await? {
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
    pub fn status(&self) -> StatusResponse {
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

    /// Cluster.MemberList.
    pub fn member_list(&self) -> MemberListResponse {
        MemberListResponse {
            header: Some(self.header(self.inner.store.current_revision())),
            members: self
                .inner
                .members
                .iter()
                .map(|m| crate::pb::etcdserverpb::Member {
                    id: m.id,
                    name: m.name.clone(),
                    peer_ur_ls: m.peer_urls.clone(),
                    client_ur_ls: m.client_urls.clone(),
                    is_learner: m.is_learner,
                })
                .collect(),
        }
    }

    /// Maintenance.Alarm with action GET: the active alarms (none can be
    /// raised yet: quota overruns are refused per request).
    pub fn alarm_list(&self) -> AlarmResponse {
        AlarmResponse {
            header: Some(self.header(self.inner.store.current_revision())),
            alarms: Vec::<AlarmMember>::new(),
        }
    }

    /// Maintenance.Defragment: compacts the store's files. Online: reads
    /// and writes continue meanwhile. Blocking; call from a blocking context.
    pub fn defragment(&self) -> Result<DefragmentResponse> {
        self.inner.store.defragment()?;
        Ok(DefragmentResponse {
            header: Some(self.header(self.inner.store.current_revision())),
        })
    }

    /// Maintenance.HashKV: a hash of every key revision up to `revision`
    /// (0 = current), equal on members with the same history.
    pub fn hash_kv(&self, revision: i64) -> Result<HashKvResponse> {
        let h = self.inner.store.hash_kv(revision)?;
        Ok(HashKvResponse {
            header: Some(self.header(h.revision)),
            hash: h.hash,
            compact_revision: h.compact_revision,
            ..Default::default()
        })
    }

    /// Maintenance.MoveLeader: transfers leadership to `target`.
    pub async fn move_leader(&self, target: u64) -> Result<MoveLeaderResponse> {
        let st = self.inner.node.status();
        if st.leader_id != self.inner.member_id {
            return Err(Error::NotLeader);
        }
        if !self
            .inner
            .members
            .iter()
            .any(|m| m.id == target && !m.is_learner)
        {
            return Err(Error::BadLeaderTransferee);
        }
        // In a single-member cluster the only voter is already the leader.
        Ok(MoveLeaderResponse {
            header: Some(self.header(self.inner.store.current_revision())),
        })
    }

    /// Opens a watch stream (the gRPC Watch stream's equivalent): create
    /// watchers, cancel them, request progress, receive responses. Needs a
    /// tokio runtime with the time driver.
    pub fn watch(&self) -> WatchStream {
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
        if let Some(t) = self.inner.lease_ticker.lock().take() {
            t.stop();
        }
        self.inner.node.stop();
        if let Some(t) = self.inner.apply_thread.lock().take() {
            let _ = t.join();
        }
        self.inner.watch.stop();
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
        }
        .encode_to_vec();
        self.inner.node.propose(data, None);
    }

    /// Proposes `op` and waits for its result.
    pub(crate) async fn propose(&self, op: Op) -> Result<Applied> {
        let inner = &self.inner;
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let data = RaftRequest { id, op: Some(op) }.encode_to_vec();
        if data.len() as u64 > inner.cfg.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        let rx = inner.wait.register(id);
        let wait = inner.wait.clone();
        inner.node.propose(
            data,
            Some(Box::new(move |r| {
                if let Err(e) = r {
                    wait.trigger(id, Err(raft_error(e)));
                }
            })),
        );
        match tokio::time::timeout(inner.cfg.request_timeout(), rx).await {
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
    async fn linearizable_read_notify(&self) -> Result<()> {
        let inner = &self.inner;
        let (tx, rx) = oneshot::channel();
        inner.node.read_index(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        let timeout = inner.cfg.request_timeout();
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

fn conf_state(meta: &WalMetadata) -> ConfState {
    let mut cs = ConfState::default();
    cs.voters = meta
        .members
        .iter()
        .filter(|m| !m.is_learner)
        .map(|m| m.id)
        .collect();
    cs.learners = meta
        .members
        .iter()
        .filter(|m| m.is_learner)
        .map(|m| m.id)
        .collect();
    cs
}

/// Works out ids and members for a member bootstrapping a new cluster.
fn bootstrap_metadata(cfg: &Config) -> Result<WalMetadata, StartError> {
    if cfg.initial_cluster_state == ClusterState::Existing {
        return Err(StartError::Config(
            "--initial-cluster-state=existing: joining an existing cluster needs cluster \
             membership, which this build does not support yet; start with state 'new'"
                .into(),
        ));
    }
    let members =
        membership::parse_initial_cluster(&cfg.initial_cluster, &cfg.initial_cluster_token)
            .map_err(StartError::Config)?;
    let Some(me) = members.iter().find(|m| m.name == cfg.name) else {
        return Err(StartError::Config(format!(
            "couldn't find local name {:?} in the initial cluster configuration {:?}",
            cfg.name, cfg.initial_cluster
        )));
    };
    let mut mine = me.peer_urls.clone();
    let mut advertised = cfg.initial_advertise_peer_urls.clone();
    mine.sort();
    advertised.sort();
    if mine != advertised {
        return Err(StartError::Config(format!(
            "--initial-cluster has {}={} but missing from --initial-advertise-peer-urls={} \
             (the peer URLs of this member must match)",
            me.name,
            me.peer_urls.join(","),
            cfg.initial_advertise_peer_urls.join(",")
        )));
    }
    if members.len() > 1 {
        return Err(StartError::Config(format!(
            "--initial-cluster names {} members: multi-member clusters are not supported by \
             this build yet; give only this member",
            members.len()
        )));
    }
    let member_id = me.id;
    let cluster_id = membership::cluster_id(&members.iter().map(|m| m.id).collect::<Vec<_>>());
    Ok(WalMetadata {
        member_id,
        cluster_id,
        members,
    })
}

/// When to compact the raft log (etcd's `--snapshot-count`).
struct LogCompaction {
    /// Applied entries between compactions.
    every: u64,
    /// Entries kept below the compaction point.
    keep: u64,
    /// Applied index at the last compaction (or at start).
    last: u64,
}

/// Applies committed entries in order until raft stops.
fn apply_loop(
    rx: crossbeam_channel::Receiver<etcd_raft_node::Applied>,
    store: &Store,
    lessor: &Lessor,
    node: &RaftNode,
    wait: &Wait<Result<Applied>>,
    applied_tx: &watch::Sender<u64>,
    mut log: LogCompaction,
) {
    while let Ok(etcd_raft_node::Applied::Entries(entries)) = rx.recv() {
        let Some(last) = entries.last().map(|e| e.index) else {
            continue;
        };
        for e in entries {
            apply_entry(store, lessor, wait, e);
        }
        node.set_applied(last);
        applied_tx.send_replace(last);
        if last - log.last >= log.every {
            log.last = last;
            // The raft log may only be cut below what the store holds
            // durably: flush first (docs/design.md, "Durability").
            match store.flush() {
                Ok(()) => node.compact_log(store.consistent_index().saturating_sub(log.keep)),
                Err(e) => tracing::error!(error = %e, "flushing the store failed; raft log kept"),
            }
        }
    }
}

fn apply_entry(store: &Store, lessor: &Lessor, wait: &Wait<Result<Applied>>, e: CommittedEntry) {
    if e.index <= store.consistent_index() {
        // Applied before a restart: the store already holds its effects.
        return;
    }
    let persist_index_only = |why: &str| {
        if let Err(err) = store.write().end(e.index) {
            panic!("cannot persist consistent index {} ({why}): {err}", e.index);
        }
    };
    match e.kind {
        EntryKind::Normal if e.data.is_empty() => persist_index_only("leader no-op"),
        EntryKind::Normal => {
            let req = RaftRequest::decode(e.data.clone()).unwrap_or_else(|err| {
                panic!(
                    "raft entry {} is not a request this build understands: {err}",
                    e.index
                )
            });
            let result = apply::apply(store, lessor, e.index, &req);
            if let Err(Error::Internal(msg)) = &result {
                tracing::error!(index = e.index, "applying entry failed: {msg}");
            }
            wait.trigger(req.id, result);
        }
        EntryKind::ConfChange | EntryKind::ConfChangeV2 => {
            tracing::warn!(
                index = e.index,
                "ignoring a membership change entry: not supported yet"
            );
            persist_index_only("membership change");
        }
    }
}
