//! [`Etcd`], the handle of a running member, and what every API file builds
//! on: the shared state, response headers, proposing through raft and
//! waiting for the result, and linearizable reads.

use crate::apply::Applied;
use crate::auth::{AuthInfo, AuthStore};
use crate::background::Background;
use crate::cluster::RaftCluster;
use crate::config::Config;
use crate::lessor::Lessor;
use crate::pb::etcdserverpb::ResponseHeader;
use crate::raft_request::{Op, RaftRequest, RequestHeader};
use crate::request_context::RequestContext;
use crate::wait::Wait;
use crate::watchable_store::WatchableStore;
use crate::{Error, Result};
use etcd_mvcc::Store;
use etcd_raft_node::{RaftNode, TcpTransport};
use parking_lot::{Mutex, RwLock};
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
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(super) cfg: Config,
    pub(super) member_id: u64,
    pub(super) cluster_id: u64,
    pub(super) cluster: Arc<RwLock<RaftCluster>>,
    pub(super) transport: Option<Arc<TcpTransport>>,
    pub(super) removed: watch::Receiver<bool>,
    pub(super) store: Arc<Store>,
    pub(super) node: Arc<RaftNode>,
    pub(super) wait: Arc<Wait<Result<Applied>>>,
    pub(super) next_id: AtomicU64,
    pub(super) applied: watch::Receiver<u64>,
    pub(super) apply_thread: Mutex<Option<JoinHandle<()>>>,
    pub(super) watch: Arc<WatchableStore>,
    pub(super) lessor: Arc<Lessor>,
    /// Users, roles and tokens; checked by every API call.
    pub(super) auth: Arc<AuthStore>,
    /// Active alarms (NOSPACE caps writes).
    pub(super) alarms: Arc<crate::alarms::AlarmStore>,
    /// `/metrics`: this member's Prometheus series.
    pub(super) metrics: crate::metrics::Metrics,
    /// Threads to stop first in [`Etcd::stop`] (publisher, lease ticker),
    /// in the order they are stopped.
    pub(super) background: Mutex<Vec<Background>>,
    /// True once the member begins stopping ([`Etcd::begin_stop`]):
    /// endless streams end on it so that a graceful stop is bounded.
    pub(super) stopping: watch::Sender<bool>,
    /// Peers whose raft messages this member drops (in-process cluster
    /// tests: `integration::Cluster::cut`).
    #[cfg(feature = "integration")]
    pub(crate) cuts: crate::peer_cuts::PeerCuts,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("name", &self.inner.cfg.name)
            .field("member_id", &crate::format_id(self.inner.member_id))
            .field("cluster_id", &crate::format_id(self.inner.cluster_id))
            .finish_non_exhaustive()
    }
}

impl Etcd {
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

    /// This member's metrics (the server registers its gRPC series in
    /// their registry).
    pub fn metrics(&self) -> &crate::Metrics {
        &self.inner.metrics
    }

    /// Every series of this member now, for `/metrics` (encode with
    /// `prometheus::TextEncoder`).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        let inner = &self.inner;
        let mut peers = crate::metrics::PeerTraffic::default();
        if let Some(t) = &inner.transport {
            for m in self.members() {
                if let Some(s) = t.peer_stats(m.id) {
                    let failures = s.dropped + s.snapshots_failed;
                    peers.sent.push((m.id, s.sent_bytes, failures));
                }
            }
            peers.received = t.received_bytes();
        }
        inner.metrics.gather(
            &inner.node.status(),
            *inner.applied.borrow(),
            &inner.store,
            &inner.node.wal_metrics(),
            &peers,
        )
    }

    /// The MVCC store, for maintenance operations.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Announces that the member is about to stop (etcd's
    /// `StoppingNotify`): [`Etcd::stopping`] completes, so that endless
    /// streams (watches, lease keep-alives, election observers) end
    /// while unary requests still finish. [`Etcd::stop`] does it first.
    /// Idempotent.
    pub fn begin_stop(&self) {
        self.inner.stopping.send_replace(true);
    }

    /// Completes once the member begins stopping ([`Etcd::begin_stop`]).
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.stopping.subscribe();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    }

    /// Stops the member: raft, then the apply thread. Pending requests fail
    /// with "server stopped". Idempotent.
    pub fn stop(&self) {
        self.begin_stop();
        let background = std::mem::take(&mut *self.inner.background.lock());
        for task in background {
            task.stop();
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

    /// etcd's `quotaAlarmer.check`: a write costing `cost` fits under the
    /// quota, or this member raises NOSPACE (through raft, waited for; its
    /// own failure is not the caller's) and the write is refused.
    pub(crate) async fn check_quota(
        &self,
        ctx: &RequestContext,
        cost: crate::quota::Cost<'_>,
    ) -> Result<()> {
        let size = self.inner.store.db_size_estimate();
        if crate::quota::available(size, cost.bytes(), self.inner.cfg.quota_bytes()) {
            return Ok(());
        }
        tracing::warn!(
            db_size = size,
            quota = self.inner.cfg.quota_bytes(),
            "the store reached --quota-backend-bytes: raising NOSPACE; free space with \
             compact and defrag, then run `etcdctl alarm disarm`"
        );
        let raise = crate::alarms::raise_nospace(self.inner.member_id);
        let _ = self
            .propose(&RequestContext::LOCAL.with_timeout(ctx), raise)
            .await;
        Err(Error::NoSpace)
    }

    /// The cluster's members as this member last applied them.
    pub(crate) fn members(&self) -> Vec<crate::membership::Member> {
        self.inner.cluster.read().members()
    }

    /// The peer transport (None for a member without peers).
    pub(crate) fn transport(&self) -> Option<&Arc<TcpTransport>> {
        self.inner.transport.as_ref()
    }

    /// Whether some member of the cluster runs etcd itself (a rolling
    /// migration under way: `etcd_raft_node::rafthttp`).
    pub(crate) fn has_etcd_members(&self) -> bool {
        self.transport()
            .is_some_and(|t| self.members().iter().any(|m| t.is_etcd_peer(m.id)))
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
            origin: 0,
        }
        .encode_to_vec();
        self.inner.node.propose(data, None);
    }

    /// Who is calling (etcd's `AuthInfoFromCtx`): None for a trusted
    /// caller; a token's user (after waiting until this member applied the
    /// Authenticate entry of a simple token, as etcd does); else, under
    /// `--client-cert-auth`, the certificate's common name; else nobody
    /// (the default [`AuthInfo`]).
    pub(crate) async fn caller(&self, ctx: &RequestContext) -> Result<Option<AuthInfo>> {
        if let Some(index) = ctx
            .token
            .as_deref()
            .filter(|_| !ctx.trusted)
            .and_then(|t| self.inner.auth.token_index(t))
        {
            let mut applied = self.inner.applied.clone();
            let limit = ctx.wait_limit(self.inner.cfg.request_timeout());
            if !matches!(
                tokio::time::timeout(limit, applied.wait_for(|a| *a >= index)).await,
                Ok(Ok(_))
            ) {
                return Err(Error::InvalidAuthToken);
            }
        }
        self.caller_now(ctx)
    }

    /// [`Etcd::caller`] without waiting: a simple token made at an index
    /// this member has not applied yet is invalid.
    pub(crate) fn caller_now(&self, ctx: &RequestContext) -> Result<Option<AuthInfo>> {
        if ctx.trusted {
            return Ok(None);
        }
        let auth = &self.inner.auth;
        if let Some(token) = &ctx.token {
            return auth
                .token_info(token)
                .map(Some)
                .ok_or(Error::InvalidAuthToken);
        }
        Ok(Some(match &ctx.cert_common_name {
            Some(cn) => auth.cert_info(cn),
            None => AuthInfo::default(),
        }))
    }

    /// Fails unless the caller has the root role (or auth is off, or the
    /// caller is trusted): etcd's check for Snapshot, Defragment, Hash,
    /// HashKV and membership changes.
    pub async fn check_admin(&self, ctx: &RequestContext) -> Result<()> {
        self.admin(self.caller(ctx).await?)
    }

    /// etcd's `IsAdminPermitted` for a resolved caller (None: trusted).
    pub(crate) fn admin(&self, caller: Option<AuthInfo>) -> Result<()> {
        caller.map_or(Ok(()), |ai| self.inner.auth.is_admin_permitted(&ai))
    }

    /// The admin check of Defragment, Hash, HashKV and Snapshot, from a
    /// blocking context (see `Etcd::caller_now`). Its errors are etcd's
    /// raw auth errors with code Unknown (`auth: permission denied`, ...):
    /// etcd's `authMaintenanceServer` does not translate them.
    pub fn check_maintenance_admin(&self, ctx: &RequestContext) -> Result<()> {
        self.caller_now(ctx)
            .and_then(|c| self.admin(c))
            .map_err(|e| {
                Error::Unknown(
                    match e {
                        Error::UserEmpty => "auth: user name is empty",
                        Error::UserNotFound => "auth: user not found",
                        Error::InvalidAuthToken => "auth: invalid auth token",
                        _ => "auth: permission denied",
                    }
                    .into(),
                )
            })
    }

    /// The auth state.
    pub(crate) fn auth(&self) -> &AuthStore {
        &self.inner.auth
    }

    /// Proposes `op` and waits for its result.
    pub(crate) async fn propose(&self, ctx: &RequestContext, op: Op) -> Result<Applied> {
        let header = self.caller(ctx).await?.map(|ai| RequestHeader {
            username: ai.username,
            auth_revision: ai.revision,
        });
        let id = self.next_request_id();
        let data = RaftRequest {
            id,
            op: Some(op),
            header,
            origin: self.inner.wait.origin(),
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
        let _pending = crate::metrics::Pending::new(&inner.metrics.proposals_pending);
        let rx = inner.wait.register(id);
        let wait = inner.wait.clone();
        let failed = inner.metrics.proposals_failed.clone();
        send(
            &inner.node,
            Some(Box::new(move |r| {
                if let Err(e) = r {
                    failed.inc();
                    wait.trigger(id, Err(raft_error(e)));
                }
            })),
        );
        match tokio::time::timeout(ctx.wait_limit(inner.cfg.request_timeout()), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => {
                inner.metrics.proposals_failed.inc();
                Err(Error::Stopped)
            }
            Err(_) => {
                inner.metrics.proposals_failed.inc();
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
