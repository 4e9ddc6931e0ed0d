//! Keeping leases alive: [`KeepAlive`] renews a lease from a task of its
//! own (what clientv3's `KeepAlive` does), [`Session`] is a lease kept
//! alive for as long as the program holds it (clientv3's
//! `concurrency.Session`), the lease locks and elections hang on.

use crate::pb::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest};
use crate::{Error, Etcd, RequestContext, Result};
use std::time::Duration;
use tokio::sync::watch;

/// How soon a renewal that failed (no leader, say) is tried again.
const RETRY: Duration = Duration::from_millis(500);

/// A lease kept alive by a background task until this is dropped (or
/// [`stop`](KeepAlive::stop)ped). Renewals go out a third of the TTL after
/// the previous answer, as clientv3's.
#[derive(Debug)]
pub struct KeepAlive {
    /// The lease.
    id: i64,
    /// The TTL of the last renewal; 0 once the lease is gone.
    ttl: watch::Receiver<i64>,
    /// The renewing task (aborted on drop).
    task: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    /// Starts renewing `id` (the first renewal goes out at once).
    pub(crate) fn start(etcd: Etcd, ctx: RequestContext, id: i64) -> KeepAlive {
        let (tx, ttl) = watch::channel(-1);
        let stopping = etcd.stopping();
        let renew = async move {
            loop {
                let wait = match etcd.lease_renew(&ctx, id).await {
                    Ok(ttl) => {
                        tx.send_replace(ttl);
                        Duration::from_secs(u64::try_from(ttl).unwrap_or(0)) / 3
                    }
                    Err(Error::LeaseNotFound) => {
                        tx.send_replace(0);
                        return;
                    }
                    Err(Error::Stopped) => return,
                    Err(e) => {
                        tracing::debug!(lease = id, "lease renewal failed, retrying: {e}");
                        RETRY
                    }
                };
                tokio::time::sleep(wait.max(RETRY)).await;
            }
        };
        // Ends when the member begins stopping too (and lets go of it).
        let task = tokio::spawn(async move {
            tokio::select! {
                () = renew => {}
                () = stopping => {}
            }
        });
        KeepAlive { id, ttl, task }
    }

    /// The lease.
    pub fn id(&self) -> i64 {
        self.id
    }
    /// The TTL the last renewal granted (-1 before the first answer, 0
    /// once the lease is gone).
    pub fn ttl(&self) -> i64 {
        *self.ttl.borrow()
    }
    /// Waits until the lease is gone (expired or revoked), or the renewals
    /// ended because the member is stopping.
    pub async fn expired(&self) {
        let mut ttl = self.ttl.clone();
        // An error: the task ended (member stopping).
        let _ = ttl.wait_for(|t| *t == 0).await;
    }
    /// Stops renewing (the lease then expires after its TTL).
    pub fn stop(self) {}
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A lease kept alive while the session lives: the owner of locks and
/// election candidacies (`Client::lock`, `Client::campaign`), which end
/// with it. Made by `Client::session`. Dropping the session stops the renewals (the lease then
/// expires after its TTL); [`close`](Session::close) revokes it at once.
#[derive(Debug)]
pub struct Session {
    /// The member and context the session's lease was granted with.
    etcd: Etcd,
    ctx: RequestContext,
    /// Renews the lease.
    keep_alive: KeepAlive,
}

impl Session {
    /// A session on a fresh lease of `ttl` seconds.
    pub(crate) async fn new(etcd: Etcd, ctx: RequestContext, ttl: i64) -> Result<Session> {
        let lease = etcd
            .lease_grant(&ctx, LeaseGrantRequest { ttl, id: 0 })
            .await?;
        Ok(Session {
            keep_alive: KeepAlive::start(etcd.clone(), ctx.clone(), lease.id),
            etcd,
            ctx,
        })
    }
    /// The session's lease.
    pub fn lease_id(&self) -> i64 {
        self.keep_alive.id()
    }
    /// Waits until the session's lease is gone (revoked by someone else,
    /// or expired while the member could not renew it).
    pub async fn done(&self) {
        self.keep_alive.expired().await;
    }
    /// Ends the session: revokes its lease, releasing what it holds.
    pub async fn close(self) -> Result<()> {
        let id = self.lease_id();
        drop(self.keep_alive);
        match self
            .etcd
            .lease_revoke(&self.ctx, LeaseRevokeRequest { id })
            .await
        {
            Ok(_) | Err(Error::LeaseNotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
