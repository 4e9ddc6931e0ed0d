//! Building blocks of the Lock and Election services (what etcd's servers
//! take from `clientv3/concurrency`: sessions, `waitDeletes`), run inside
//! the member instead of through a client.
//!
//! Waiting: etcd waits for key deletions with watches. Here a waiter
//! re-reads after every change of the store's revision: it remembers the
//! revision its last read saw, and [`Etcd::wait_revision_above`] returns
//! once the store is past it (woken by the apply loop's applied-index
//! channel, which is published after each applied batch, so no change is
//! missed between the read and the wait). Reads after a wake-up are
//! local (serializable): the wake-up itself comes from this member's apply
//! loop, and the first read of each operation follows a write this member
//! applied. The cost is one range per waiter per revision; the watch hub
//! can replace the wake-up later without changing the callers.
//!
//! Keys: a waiter or candidate owns `name + "/" + lease in hex` (Go's
//! `%x`), put with its lease; the owner of a lock or election is the key
//! with the smallest create revision under `name + "/"`.

use crate::lessor::DEFAULT_SESSION_TTL;
use crate::pb::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    DeleteRangeRequest, LeaseGrantRequest, RangeRequest, RangeResponse,
};
use crate::request_context::RequestContext;
use crate::{Error, Etcd, Result};
use bytes::Bytes;

impl Etcd {
    /// Waits until the store's revision is above `rev`.
    pub(crate) async fn wait_revision_above(&self, rev: i64) -> Result<()> {
        let mut applied = self.applied_index();
        loop {
            applied.borrow_and_update();
            if self.store().current_revision() > rev {
                return Ok(());
            }
            applied.changed().await.map_err(|_| Error::Stopped)?;
        }
    }
}

/// The lease of a session: `lease`, or a fresh lease of the default
/// session TTL (60 s) when 0, as clientv3's `NewSession` does. Like etcd's
/// servers, nobody keeps the fresh lease alive.
pub(crate) async fn session_lease(etcd: &Etcd, ctx: &RequestContext, lease: i64) -> Result<i64> {
    if lease != 0 {
        return Ok(lease);
    }
    let resp = etcd
        .lease_grant(
            ctx,
            LeaseGrantRequest {
                ttl: DEFAULT_SESSION_TTL,
                id: 0,
            },
        )
        .await?;
    Ok(resp.id)
}

/// `prefix + "/"`.
pub(crate) fn key_prefix(name: &[u8]) -> Vec<u8> {
    let mut p = name.to_vec();
    p.push(b'/');
    p
}

/// The key of `lease` under `prefix`, formatted like Go's `%x` of an int64.
pub(crate) fn session_key(prefix: &[u8], lease: i64) -> Bytes {
    let hex = if lease < 0 {
        format!("-{:x}", lease.unsigned_abs())
    } else {
        format!("{lease:x}")
    };
    let mut k = prefix.to_vec();
    k.extend_from_slice(hex.as_bytes());
    Bytes::from(k)
}

/// The end of the range of keys starting with `prefix` (clientv3's
/// `GetPrefixRangeEnd`).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.last_mut() {
        if *last < 0xff {
            *last += 1;
            return end;
        }
        end.pop();
    }
    vec![0]
}

/// A range over `prefix` sorted by create revision, one key: the first
/// created (`ascend`) or the last (`descend`), optionally only keys
/// created at or before `max_create_rev`.
pub(crate) fn by_create(
    prefix: &[u8],
    order: SortOrder,
    max_create_rev: i64,
    serializable: bool,
) -> RangeRequest {
    RangeRequest {
        key: Bytes::copy_from_slice(prefix),
        range_end: Bytes::from(prefix_end(prefix)),
        limit: 1,
        sort_order: order as i32,
        sort_target: SortTarget::Create as i32,
        max_create_revision: max_create_rev,
        serializable,
        ..Default::default()
    }
}

/// A local read of one key.
pub(crate) async fn get_local(
    etcd: &Etcd,
    ctx: &RequestContext,
    key: &[u8],
) -> Result<RangeResponse> {
    etcd.range(
        ctx,
        RangeRequest {
            key: Bytes::copy_from_slice(key),
            serializable: true,
            ..Default::default()
        },
    )
    .await
}

/// clientv3's `waitDeletes`: returns once no key under `prefix` has a
/// create revision at or below `max_create_rev`.
pub(crate) async fn wait_deletes(
    etcd: &Etcd,
    ctx: &RequestContext,
    prefix: &[u8],
    max_create_rev: i64,
) -> Result<()> {
    loop {
        let resp = etcd
            .range(
                ctx,
                by_create(prefix, SortOrder::Descend, max_create_rev, true),
            )
            .await?;
        if resp.kvs.is_empty() {
            return Ok(());
        }
        let seen = resp.header.map_or(0, |h| h.revision);
        etcd.wait_revision_above(seen).await?;
    }
}

/// Deletes `key` when dropped while armed: a Lock or Campaign whose
/// client went away (its future dropped) gives up its place, as etcd's
/// servers do on a cancelled context.
pub(crate) struct DeleteOnDrop {
    etcd: Etcd,
    /// The waiter's caller, without its deadline (which may be what ended
    /// the wait): the delete is made on its behalf.
    ctx: RequestContext,
    key: Option<Bytes>,
}

impl DeleteOnDrop {
    pub(crate) fn new(etcd: &Etcd, ctx: &RequestContext, key: Bytes) -> DeleteOnDrop {
        DeleteOnDrop {
            etcd: etcd.clone(),
            ctx: RequestContext {
                timeout: None,
                ..ctx.clone()
            },
            key: Some(key),
        }
    }

    /// Keeps the key.
    pub(crate) fn disarm(mut self) {
        self.key = None;
    }
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let etcd = self.etcd.clone();
        let ctx = std::mem::take(&mut self.ctx);
        rt.spawn(async move {
            let r = etcd
                .delete_range(
                    &ctx,
                    DeleteRangeRequest {
                        key,
                        ..Default::default()
                    },
                )
                .await;
            if let Err(e) = r {
                tracing::warn!("cannot delete the key of a cancelled waiter: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_prefix_ends() {
        assert_eq!(&session_key(b"l/", 0x694d)[..], b"l/694d");
        assert_eq!(&session_key(b"l/", -1)[..], b"l/-1");
        assert_eq!(prefix_end(b"ab"), b"ac");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
