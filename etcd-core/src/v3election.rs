//! The Election API of [`Etcd`] (etcd's `api/v3election` over clientv3's
//! `concurrency.Election`), built on leases and txns.
//!
//! A candidate's key is `name/<lease hex>` with the proclaimed value; the
//! leader is the candidate whose key has the smallest create revision.
//! Campaign puts the key (or re-proclaims an existing one) and waits until
//! every key created before it is gone. Proclaim and Resign act only while
//! the key still has the create revision in the `LeaderKey` (a txn guard),
//! so a lost leadership cannot be overwritten. Observe streams the
//! leader's values in order: every put of the leader key (found from the
//! key's history, so values proclaimed between two wake-ups are not
//! skipped), then the next leader's current value after the key is gone.

use crate::concurrency::{
    by_create, get_local, key_prefix, session_key, session_lease, wait_deletes, DeleteOnDrop,
};
use crate::pb::etcdserverpb::{
    range_request::SortOrder, request_op, DeleteRangeRequest, PutRequest, RangeRequest,
    ResponseHeader, TxnRequest,
};
use crate::pb::mvccpb::KeyValue;
use crate::pb::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use crate::request_context::RequestContext;
use crate::v3lock::{create_rev_is, op, range_of};
use crate::{Error, Etcd, Result};
use tokio::sync::mpsc;

impl Etcd {
    /// Election.Campaign: blocks until `lease` (a fresh 60 s lease when 0)
    /// leads election `name` with `value`.
    pub async fn campaign(
        &self,
        ctx: &RequestContext,
        r: CampaignRequest,
    ) -> Result<CampaignResponse> {
        let lease = session_lease(self, ctx, r.lease).await?;
        let pfx = key_prefix(&r.name);
        let key = session_key(&pfx, lease);
        let resp = self
            .txn(
                ctx,
                TxnRequest {
                    compare: vec![create_rev_is(&key, 0)],
                    success: vec![op(request_op::Request::RequestPut(PutRequest {
                        key: key.clone(),
                        value: r.value.clone(),
                        lease,
                        ..Default::default()
                    }))],
                    failure: vec![op(request_op::Request::RequestRange(RangeRequest {
                        key: key.clone(),
                        ..Default::default()
                    }))],
                },
            )
            .await?;
        let mut rev = resp.header.as_ref().map_or(0, |h| h.revision);
        let leader = |rev| LeaderKey {
            name: r.name.clone(),
            key: key.clone(),
            rev,
            lease,
        };
        if !resp.succeeded {
            let kv = range_of(&resp, 0)
                .and_then(|r| r.kvs.first())
                .ok_or(Error::ElectionNotLeader)?;
            rev = kv.create_revision;
            if kv.value != r.value {
                let proclaimed = self
                    .proclaim(
                        ctx,
                        ProclaimRequest {
                            leader: Some(leader(rev)),
                            value: r.value.clone(),
                        },
                    )
                    .await;
                if let Err(e) = proclaimed {
                    let _ = self
                        .resign(
                            ctx,
                            ResignRequest {
                                leader: Some(leader(rev)),
                            },
                        )
                        .await;
                    return Err(e);
                }
            }
        }
        let guard = DeleteOnDrop::new(self, ctx, key.clone());
        wait_deletes(self, ctx, &pfx, rev - 1).await?;
        guard.disarm();
        Ok(CampaignResponse {
            header: resp.header,
            leader: Some(leader(rev)),
        })
    }

    /// Election.Proclaim: the leader publishes a new value.
    pub async fn proclaim(
        &self,
        ctx: &RequestContext,
        r: ProclaimRequest,
    ) -> Result<ProclaimResponse> {
        let l = r.leader.ok_or(Error::MissingLeaderKey)?;
        let resp = self
            .txn(
                ctx,
                TxnRequest {
                    compare: vec![create_rev_is(&l.key, l.rev)],
                    success: vec![op(request_op::Request::RequestPut(PutRequest {
                        key: l.key.clone(),
                        value: r.value,
                        lease: l.lease,
                        ..Default::default()
                    }))],
                    failure: vec![],
                },
            )
            .await?;
        if !resp.succeeded {
            return Err(Error::ElectionNotLeader);
        }
        Ok(ProclaimResponse {
            header: resp.header,
        })
    }

    /// Election.Resign: gives leadership (or candidacy) up.
    pub async fn resign(&self, ctx: &RequestContext, r: ResignRequest) -> Result<ResignResponse> {
        let l = r.leader.ok_or(Error::MissingLeaderKey)?;
        let resp = self
            .txn(
                ctx,
                TxnRequest {
                    compare: vec![create_rev_is(&l.key, l.rev)],
                    success: vec![op(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: l.key.clone(),
                            ..Default::default()
                        },
                    ))],
                    failure: vec![],
                },
            )
            .await?;
        Ok(ResignResponse {
            header: resp.header,
        })
    }

    /// Election.Leader: the current leader's key and value.
    pub async fn leader(&self, ctx: &RequestContext, r: LeaderRequest) -> Result<LeaderResponse> {
        let pfx = key_prefix(&r.name);
        let resp = self
            .range(ctx, by_create(&pfx, SortOrder::Ascend, 0, false))
            .await?;
        let kv = resp.kvs.into_iter().next().ok_or(Error::ElectionNoLeader)?;
        Ok(LeaderResponse {
            header: resp.header,
            kv: Some(kv),
        })
    }

    /// Election.Observe: the leader's values in order, until the receiver
    /// is dropped or the member begins stopping (then a last
    /// `Error::Stopped`).
    pub fn observe(
        &self,
        ctx: &RequestContext,
        r: LeaderRequest,
    ) -> mpsc::Receiver<Result<LeaderResponse>> {
        let (tx, rx) = mpsc::channel(16);
        let etcd = self.clone();
        // The stream lives until the client goes: no per-read deadline.
        let ctx = RequestContext {
            timeout: None,
            ..ctx.clone()
        };
        let stopping = self.stopping();
        tokio::spawn(async move {
            let closed = tx.clone();
            tokio::select! {
                r = observe(&etcd, &ctx, &r.name, &tx) => {
                    if let Err(e) = r {
                        let _ = tx.send(Err(e)).await;
                    }
                }
                () = closed.closed() => {}
                // A last "server stopped", as the gRPC stream ends with.
                () = stopping => {
                    let _ = tx.send(Err(Error::Stopped)).await;
                }
            }
        });
        rx
    }
}

type Sender = mpsc::Sender<Result<LeaderResponse>>;

async fn send(tx: &Sender, header: &Option<ResponseHeader>, kv: KeyValue) -> Result<()> {
    let resp = LeaderResponse {
        header: *header,
        kv: Some(kv),
    };
    tx.send(Ok(resp)).await.map_err(|_| Error::Stopped)
}

async fn observe(etcd: &Etcd, ctx: &RequestContext, name: &[u8], tx: &Sender) -> Result<()> {
    let pfx = key_prefix(name);
    let mut serializable = false;
    loop {
        let resp = etcd
            .range(ctx, by_create(&pfx, SortOrder::Ascend, 0, serializable))
            .await?;
        serializable = true;
        let seen = resp.header.as_ref().map_or(0, |h| h.revision);
        let Some(mut last) = resp.kvs.into_iter().next() else {
            etcd.wait_revision_above(seen).await?;
            continue;
        };
        send(tx, &resp.header, last.clone()).await?;
        let mut seen = seen;
        loop {
            etcd.wait_revision_above(seen).await?;
            let now = get_local(etcd, ctx, &last.key).await?;
            seen = now.header.as_ref().map_or(seen, |h| h.revision);
            let Some(cur) = now.kvs.into_iter().next() else {
                break; // the leader key is gone: find the next leader
            };
            if cur.create_revision != last.create_revision {
                break; // deleted and re-created meanwhile
            }
            if cur.mod_revision == last.mod_revision {
                continue;
            }
            // Every put since `last`, oldest first, from the key's history.
            let mut puts = vec![cur.clone()];
            let mut at = cur.mod_revision;
            loop {
                let older = etcd
                    .range(
                        ctx,
                        RangeRequest {
                            key: last.key.clone(),
                            revision: at - 1,
                            serializable: true,
                            ..Default::default()
                        },
                    )
                    .await;
                let Some(kv) = older.ok().and_then(|r| r.kvs.into_iter().next()) else {
                    break; // compacted away: send what is left
                };
                if kv.mod_revision <= last.mod_revision {
                    break;
                }
                at = kv.mod_revision;
                puts.push(kv);
            }
            for kv in puts.into_iter().rev() {
                send(tx, &now.header, kv).await?;
            }
            last = cur;
        }
    }
}
