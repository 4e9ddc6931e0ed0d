//! A typed client of an embedded member: etcd's v3 API as Rust calls, in
//! the shape of the `etcd-client` crate (the same method names and option
//! builders), without a network hop.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use etcd_core::client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
//! use etcd_core::{Config, Etcd};
//!
//! let dir = tempfile::tempdir()?;
//! let etcd = Etcd::start(Config::single("demo", dir.path()))?;
//! etcd.ready().await?; // elected and published: serving
//! let client = Client::new(etcd.clone());
//!
//! client.put("app/a", "1", None).await?;
//! client.put("app/b", "2", None).await?;
//! let resp = client.get("app/", Some(GetOptions::new().with_prefix())).await?;
//! assert_eq!(resp.kvs.len(), 2);
//!
//! // Compare-and-swap: set "app/a" to 10 only if it is still "1".
//! let txn = Txn::new()
//!     .when([Compare::value("app/a", CompareOp::Equal, "1")])
//!     .and_then([TxnOp::put("app/a", "10", None)]);
//! assert!(client.txn(txn).await?.succeeded);
//! etcd.stop();
//! # Ok(()) }
//! ```
//!
//! Every call runs with the client's [`RequestContext`]:
//! [`RequestContext::LOCAL`] (the embedding program, trusted, no auth
//! check) for [`Client::new`]; a user's token for
//! [`Client::with_context`]. Errors are [`Error`]s: etcd's messages, with
//! [`Error::code`] giving etcd's gRPC code. The protobuf requests stay
//! available on [`Etcd`] itself, and each option builder has a
//! `request()` giving its protobuf request.

mod kv;
mod lease;
mod txn;
mod watch;

pub use kv::{prefix_end, DeleteOptions, GetOptions, PutOptions, SortOrder, SortTarget};
pub use lease::{KeepAlive, Session};
pub use txn::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse, TxnResponses};
pub use watch::{WatchEvents, WatchOptions, Watcher};
// `Observe` is defined below.

use crate::pb::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse,
    DefragmentResponse, DeleteRangeResponse, HashKvResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse, MemberAddRequest, MemberAddResponse, MemberListResponse,
    MemberPromoteResponse, MemberRemoveResponse, MoveLeaderResponse, PutResponse, RangeResponse,
    StatusResponse, TxnResponse,
};
use crate::pb::mvccpb::KeyValue;
use crate::pb::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest, ResignRequest,
};
use crate::pb::v3lockpb::{LockRequest, UnlockRequest};
use crate::{Error, Etcd, RequestContext, Result};
use bytes::Bytes;
use futures_core::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A client of one embedded member. Cheap to clone; every clone talks to
/// the same member with the same context.
#[derive(Clone, Debug)]
pub struct Client {
    /// The member every call goes to.
    etcd: Etcd,
    /// Who asks (auth) and the deadline of each call.
    ctx: RequestContext,
}

fn bytes(b: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(b.as_ref())
}

impl Client {
    /// A client acting as the embedding program itself
    /// ([`RequestContext::LOCAL`]: no auth checks).
    pub fn new(etcd: Etcd) -> Client {
        Client::with_context(etcd, RequestContext::LOCAL)
    }
    /// A client acting as `ctx` says (a user's token, a deadline).
    pub fn with_context(etcd: Etcd, ctx: RequestContext) -> Client {
        Client { etcd, ctx }
    }
    /// The member this client talks to (its protobuf API).
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }
    /// The context of every call.
    pub fn context(&self) -> &RequestContext {
        &self.ctx
    }

    // KV

    /// Sets `key` to `value`.
    pub async fn put(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: Option<PutOptions>,
    ) -> Result<PutResponse> {
        let req = opts
            .unwrap_or_default()
            .request(key.as_ref(), value.as_ref());
        self.etcd.put(&self.ctx, req).await
    }
    /// Reads `key` (or a range of keys, see [`GetOptions`]).
    pub async fn get(
        &self,
        key: impl AsRef<[u8]>,
        opts: Option<GetOptions>,
    ) -> Result<RangeResponse> {
        let req = opts.unwrap_or_default().request(key.as_ref());
        self.etcd.range(&self.ctx, req).await
    }
    /// Deletes `key` (or a range of keys, see [`DeleteOptions`]).
    pub async fn delete(
        &self,
        key: impl AsRef<[u8]>,
        opts: Option<DeleteOptions>,
    ) -> Result<DeleteRangeResponse> {
        let req = opts.unwrap_or_default().request(key.as_ref());
        self.etcd.delete_range(&self.ctx, req).await
    }
    /// Runs a transaction at one revision.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse> {
        self.etcd.txn(&self.ctx, txn.into_pb()).await
    }
    /// Drops the history before `revision`; with `physical`, returns once
    /// it is removed from the store.
    pub async fn compact(&self, revision: i64, physical: bool) -> Result<CompactionResponse> {
        let req = CompactionRequest { revision, physical };
        self.etcd.compact(&self.ctx, req).await
    }

    // Watch

    /// Watches `key` (or a range, see [`WatchOptions`]); returns once the
    /// watch is created. Needs a tokio runtime.
    pub async fn watch(
        &self,
        key: impl AsRef<[u8]>,
        opts: Option<WatchOptions>,
    ) -> Result<(Watcher, WatchEvents)> {
        let mut stream = self.etcd.watch(&self.ctx);
        stream.create(opts.unwrap_or_default().request(key.as_ref()));
        let first = stream.recv().await.ok_or(Error::Stopped)?;
        Ok(watch::start(stream, first, self.etcd.stopping()))
    }

    // Lease

    /// Grants a lease of `ttl` seconds (raised to the member's minimum)
    /// with an id the member picks.
    pub async fn lease_grant(&self, ttl: i64) -> Result<LeaseGrantResponse> {
        let req = LeaseGrantRequest { ttl, id: 0 };
        self.etcd.lease_grant(&self.ctx, req).await
    }
    /// Revokes lease `id`, deleting its keys.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse> {
        let req = LeaseRevokeRequest { id };
        self.etcd.lease_revoke(&self.ctx, req).await
    }
    /// Renews lease `id` once; its TTL.
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<i64> {
        self.etcd.lease_renew(&self.ctx, id).await
    }
    /// A [`Session`]: a fresh lease of `ttl` seconds (clientv3's default
    /// is 60) kept alive until the session is dropped or closed.
    pub async fn session(&self, ttl: i64) -> Result<Session> {
        Session::new(self.etcd.clone(), self.ctx.clone(), ttl).await
    }
    /// Keeps lease `id` alive from a task until the [`KeepAlive`] is
    /// dropped. Needs a tokio runtime.
    pub fn keep_alive(&self, id: i64) -> KeepAlive {
        KeepAlive::start(self.etcd.clone(), self.ctx.clone(), id)
    }
    /// The remaining and granted TTL of lease `id` (-1 once gone), with
    /// its keys if asked.
    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse> {
        let req = LeaseTimeToLiveRequest { id, keys };
        self.etcd.lease_time_to_live(&self.ctx, req).await
    }
    /// Every lease.
    pub async fn lease_leases(&self) -> Result<LeaseLeasesResponse> {
        self.etcd.lease_leases(&self.ctx).await
    }

    // Lock and election (etcd's v3lock and v3election services)

    /// Waits until `lease` (usually a [`Session`]'s) holds lock `name`;
    /// the key that holds it (for [`Client::unlock`]).
    pub async fn lock(&self, name: impl AsRef<[u8]>, lease: i64) -> Result<Bytes> {
        let req = LockRequest {
            name: bytes(name),
            lease,
        };
        Ok(self.etcd.lock(&self.ctx, req).await?.key)
    }
    /// Releases the lock held by `key`.
    pub async fn unlock(&self, key: impl AsRef<[u8]>) -> Result<()> {
        let req = UnlockRequest { key: bytes(key) };
        self.etcd.unlock(&self.ctx, req).await.map(drop)
    }
    /// Waits until `lease` leads election `name`, announcing `value`; the
    /// leadership, for [`proclaim`](Client::proclaim) and
    /// [`resign`](Client::resign).
    pub async fn campaign(
        &self,
        name: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        lease: i64,
    ) -> Result<LeaderKey> {
        let req = CampaignRequest {
            name: bytes(name),
            lease,
            value: bytes(value),
        };
        let resp = self.etcd.campaign(&self.ctx, req).await?;
        resp.leader
            .ok_or_else(|| Error::Internal("campaign answered without a leader key".into()))
    }
    /// The leader announces a new value; `ElectionNotLeader` once it lost
    /// the leadership.
    pub async fn proclaim(&self, leader: &LeaderKey, value: impl AsRef<[u8]>) -> Result<()> {
        let req = ProclaimRequest {
            leader: Some(leader.clone()),
            value: bytes(value),
        };
        self.etcd.proclaim(&self.ctx, req).await.map(drop)
    }
    /// Gives the leadership up.
    pub async fn resign(&self, leader: &LeaderKey) -> Result<()> {
        let req = ResignRequest {
            leader: Some(leader.clone()),
        };
        self.etcd.resign(&self.ctx, req).await.map(drop)
    }
    /// The current leader's key and value; None while nobody leads.
    pub async fn leader(&self, name: impl AsRef<[u8]>) -> Result<Option<KeyValue>> {
        let req = LeaderRequest { name: bytes(name) };
        match self.etcd.leader(&self.ctx, req).await {
            Ok(LeaderResponse { kv, .. }) => Ok(kv),
            Err(Error::ElectionNoLeader) => Ok(None),
            Err(e) => Err(e),
        }
    }
    /// The successive leaders' key and value of election `name`, from the
    /// current one on. Needs a tokio runtime.
    pub fn observe(&self, name: impl AsRef<[u8]>) -> Observe {
        let req = LeaderRequest { name: bytes(name) };
        Observe {
            leaders: self.etcd.observe(&self.ctx, req),
        }
    }

    // Cluster and maintenance

    /// The members; with `linearizable`, after a ReadIndex round.
    pub async fn member_list(&self, linearizable: bool) -> Result<MemberListResponse> {
        self.etcd.member_list(&self.ctx, linearizable).await
    }
    /// Adds a member (a voter, or a learner) with `peer_urls`.
    pub async fn member_add(
        &self,
        peer_urls: impl IntoIterator<Item = impl Into<String>>,
        is_learner: bool,
    ) -> Result<MemberAddResponse> {
        let req = MemberAddRequest {
            peer_ur_ls: peer_urls.into_iter().map(Into::into).collect(),
            is_learner,
        };
        self.etcd.member_add(&self.ctx, req).await
    }
    /// Removes member `id`.
    pub async fn member_remove(&self, id: u64) -> Result<MemberRemoveResponse> {
        self.etcd.member_remove(&self.ctx, id).await
    }
    /// Makes learner `id` a voter (once it caught up with the leader).
    pub async fn member_promote(&self, id: u64) -> Result<MemberPromoteResponse> {
        self.etcd.member_promote(&self.ctx, id).await
    }
    /// Hands the leadership to voter `target` (asked of the leader).
    pub async fn move_leader(&self, target: u64) -> Result<MoveLeaderResponse> {
        self.etcd.move_leader(&self.ctx, target).await
    }
    /// This member's status: version, database size, leader, raft index.
    pub fn status(&self) -> StatusResponse {
        self.etcd.status(&self.ctx)
    }
    /// The active alarms (NOSPACE, CORRUPT).
    pub async fn alarm_list(&self) -> Result<AlarmResponse> {
        let req = AlarmRequest {
            action: AlarmAction::Get as i32,
            ..Default::default()
        };
        self.etcd.alarm(&self.ctx, req).await
    }
    /// Rewrites this member's store compactly.
    pub fn defragment(&self) -> Result<DefragmentResponse> {
        self.etcd.defragment(&self.ctx)
    }
    /// The hash of the keys' history up to `revision` (0: latest), to
    /// compare members.
    pub fn hash_kv(&self, revision: i64) -> Result<HashKvResponse> {
        self.etcd.hash_kv(&self.ctx, revision)
    }
}

/// The leaders of an election, from [`Client::observe`]: each new leader's
/// key and value, and each value it proclaims.
#[derive(Debug)]
pub struct Observe {
    leaders: tokio::sync::mpsc::Receiver<Result<LeaderResponse>>,
}

impl Observe {
    /// The next leader (`StreamExt::next` without the import).
    pub async fn message(&mut self) -> Option<Result<KeyValue>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for Observe {
    type Item = Result<KeyValue>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<KeyValue>>> {
        self.leaders.poll_recv(cx).map(|r| {
            r.map(|r| {
                r.and_then(|l| {
                    l.kv.ok_or_else(|| Error::Internal("observe answered without a key".into()))
                })
            })
        })
    }
}
