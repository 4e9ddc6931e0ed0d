//! The auto-compaction thread of a running member: drives
//! [`Compactor`](crate::compactor::Compactor) (the timing, etcd's
//! v3compactor) with a clock and proposes `Compact` as the leader.

use super::etcd::Etcd;
use crate::background::Background;
use crate::compactor::{AutoCompaction, Compactor};
use crate::error::Error;
use crate::lessor::Clock;
use crate::pb::etcdserverpb::CompactionRequest;
use crate::RequestContext;
use etcd_raft_node::Role;
use std::sync::Arc;

/// Runs auto-compaction for `etcd` on a thread until stopped.
pub(super) fn spawn(
    etcd: Etcd,
    mode: AutoCompaction,
    clock: Arc<dyn Clock>,
) -> std::io::Result<Background> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    tracing::info!(?mode, "auto compaction enabled");
    Background::spawn("compactor", move |stop| {
        let mut c = Compactor::new(mode, clock.now());
        loop {
            c.record(etcd.store().current_revision());
            if !crate::background::pause(&stop, c.interval()) {
                return;
            }
            if etcd.raft_status().role != Role::Leader {
                continue;
            }
            let Some(rev) = c.due(clock.now(), etcd.store().current_revision()) else {
                continue;
            };
            c.log_start(rev);
            let started = clock.now();
            let request = CompactionRequest {
                revision: rev,
                physical: false,
            };
            let result = match runtime.block_on(etcd.compact(&RequestContext::LOCAL, request)) {
                Ok(_) | Err(Error::Compacted) => Ok(()),
                Err(e) => Err(e),
            };
            c.log_result(rev, clock.now().saturating_sub(started), &result);
            if result.is_ok() {
                c.succeeded(clock.now(), rev);
            }
        }
    })
}
