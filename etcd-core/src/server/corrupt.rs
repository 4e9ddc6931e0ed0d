//! Corruption checks (etcd's `etcdserver/corrupt.go`): members compare the
//! hash of their key-value history (HashKV) at equal revisions, asked over
//! the peer port ([`peer_client::peer_hash_kvs`]).
//!
//! - `--experimental-initial-corrupt-check`: at start, before serving, the
//!   member compares its hash at its current revision with every peer's at
//!   that revision. A peer with the same compaction revision and another
//!   hash fails the start ("found data inconsistency with peers"); a peer
//!   that is behind (future revision), ahead of a compaction, or
//!   unreachable is logged and skipped, as etcd does.
//! - `--experimental-corrupt-check-time`: every interval, the leader takes
//!   its hash (h, rev, crev), asks the peers for theirs at rev, waits for a
//!   linearizable read, and hashes again. It raises a CORRUPT alarm through
//!   raft when its own two hashes differ at the same revision, when a peer
//!   reports a revision or compaction revision beyond the leader's, or when
//!   a peer with the same compaction revision has another hash.
//!
//! While CORRUPT is active every member refuses writes, compactions and
//! lease grants/revokes with "etcdserver: corrupt cluster" (the applier);
//! reads go on, so an operator can inspect and restore from a snapshot.

use super::etcd::Etcd;
use super::peer_client::peer_hash_kvs;
use crate::background::Background;
use crate::error::{Error, StartError};
use crate::membership::format_id;
use etcd_raft_node::Role;
use std::time::Duration;

/// etcd's `CheckInitialHashKV`.
pub(super) fn check_initial_hash_kv(etcd: &Etcd) -> Result<(), StartError> {
    let me = format_id(etcd.member_id());
    tracing::info!(local_member_id = %me, "starting initial corruption check");
    let own = etcd.inner.store.hash_kv(0).map_err(StartError::Mvcc)?;
    let mut mismatch = 0;
    for (peer, answer) in peer_hash_kvs(etcd, own.revision) {
        let peer = format_id(peer);
        match answer {
            Ok(p) if p.hash == own.hash => {}
            Ok(p) if p.compact_revision == own.compact_revision => {
                tracing::warn!(
                    local_member_id = %me,
                    local_member_revision = own.revision,
                    local_member_compact_revision = own.compact_revision,
                    local_member_hash = own.hash,
                    remote_peer_id = %peer,
                    remote_peer_revision = p.header.map_or(0, |h| h.revision),
                    remote_peer_compact_revision = p.compact_revision,
                    remote_peer_hash = p.hash,
                    "found different hash values from remote peer"
                );
                mismatch += 1;
            }
            Ok(p) => tracing::warn!(
                local_member_id = %me,
                local_member_compact_revision = own.compact_revision,
                remote_peer_id = %peer,
                remote_peer_compact_revision = p.compact_revision,
                "found different compact revision values from remote peer"
            ),
            Err(Error::FutureRevision) => tracing::warn!(
                local_member_id = %me,
                local_member_revision = own.revision,
                remote_peer_id = %peer,
                "cannot fetch hash from slow remote peer"
            ),
            Err(Error::Compacted) => tracing::warn!(
                local_member_id = %me,
                local_member_revision = own.revision,
                remote_peer_id = %peer,
                "cannot fetch hash from remote peer; local member is behind"
            ),
            Err(e) => tracing::warn!(
                local_member_id = %me,
                remote_peer_id = %peer,
                "cannot fetch hash from remote peer: {e}"
            ),
        }
    }
    if mismatch > 0 {
        return Err(StartError::Config(format!(
            "{me} found data inconsistency with peers (--experimental-initial-corrupt-check)"
        )));
    }
    tracing::info!(local_member_id = %me, "initial corruption checking passed; no corruption");
    Ok(())
}

/// etcd's `monitorKVHash`: the leader's periodic check on a thread.
pub(super) fn spawn_monitor(etcd: Etcd, interval: Duration) -> std::io::Result<Background> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    tracing::info!(
        local_member_id = %format_id(etcd.member_id()),
        ?interval,
        "enabled corruption checking"
    );
    Background::spawn("corrupt-check", move |stop| loop {
        if !crate::background::pause(&stop, interval) {
            return;
        }
        if etcd.raft_status().role != Role::Leader {
            continue;
        }
        if let Err(e) = check_hash_kv(&etcd, &runtime) {
            tracing::warn!("failed to check hash KV: {e}");
        }
    })
}

/// etcd's `checkHashKV` (see the module doc).
fn check_hash_kv(etcd: &Etcd, runtime: &tokio::runtime::Runtime) -> crate::Result<()> {
    let store = &etcd.inner.store;
    let first = store.hash_kv(0)?;
    let peers = peer_hash_kvs(etcd, first.revision);
    let ctx = crate::RequestContext::LOCAL;
    runtime.block_on(etcd.linearizable_read_notify(&ctx))?;
    let second = store.hash_kv(0)?;
    let mut alarmed = false;
    let mut mismatch = |who: u64, why: String| {
        tracing::warn!(member = %format_id(who), "{why}");
        if !alarmed {
            alarmed = true;
            etcd.propose_detached(crate::alarms::raise_corrupt());
        }
    };
    if second.hash != first.hash
        && second.revision == first.revision
        && second.compact_revision == first.compact_revision
    {
        mismatch(
            etcd.member_id(),
            format!(
                "found hash mismatch: {} then {} at revision {}",
                first.hash, second.hash, first.revision
            ),
        );
    }
    let mut checked = 0;
    for (peer, answer) in peers {
        let Ok(p) = answer else { continue };
        checked += 1;
        let peer_rev = p.header.as_ref().map_or(0, |h| h.revision);
        if peer_rev > second.revision {
            mismatch(
                peer,
                format!(
                    "revision from follower must be less than or equal to leader's \
                     (leader {}, follower {peer_rev})",
                    second.revision
                ),
            );
        }
        if p.compact_revision > second.compact_revision {
            mismatch(
                peer,
                format!(
                    "compact revision from follower must be less than or equal to leader's \
                     (leader {}, follower {})",
                    second.compact_revision, p.compact_revision
                ),
            );
        }
        if p.compact_revision == first.compact_revision && p.hash != first.hash {
            mismatch(
                peer,
                format!(
                    "same compact revision then hashes must match (leader {}, follower {} at \
                     revision {})",
                    first.hash, p.hash, first.revision
                ),
            );
        }
    }
    tracing::info!(
        number_of_peers_checked = checked,
        "finished peer corruption check"
    );
    Ok(())
}
