//! Applying lease entries (etcd's `applierV3backend.LeaseGrant`,
//! `LeaseRevoke`, `LeaseCheckpoint`) and keeping the lessor's key
//! attachments in step with committed puts and deletes.
//!
//! Order of effects for one entry: the store changes (keys and the
//! `Bucket::Lease` record) go into the entry's single `TxnWrite`; only after
//! it committed does [`after_commit`] update the in-memory [`Lessor`]. A
//! revoke deletes every attached key in that one transaction, so all of
//! them disappear at one revision (sorted by key, like etcd).
//!
//! Attachments are derived from the committed events: a PUT attaches its
//! key to `kv.lease` and detaches it from `prev_kv.lease`; a DELETE
//! detaches it from `prev_kv.lease`. So a put with another lease moves the
//! key, a put without a lease frees it, and `ignore_lease` (which re-puts
//! the previous lease) keeps it.

use crate::apply::{Applied, View};
use crate::lessor::{record_key, LeaseRecord, Lessor, MAX_LEASE_TTL};
use crate::pb::etcdserverpb::{
    LeaseCheckpointRequest, LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest,
    LeaseRevokeResponse, ResponseHeader,
};
use crate::raft_request::Op;
use crate::{Error, Result};
use etcd_mvcc::{Bucket, Event, EventType, RangeOptions, Store};
use prost::Message as _;

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// LeaseGrant: checks the id and TTL, persists the lease record.
pub(crate) fn grant(
    view: &mut View<'_>,
    lessor: &Lessor,
    g: &LeaseGrantRequest,
) -> Result<Applied> {
    if g.id == 0 {
        // The id is chosen before proposing; 0 is etcd's NoLease.
        return Err(Error::LeaseNotFound);
    }
    if g.ttl > MAX_LEASE_TTL {
        return Err(Error::LeaseTtlTooLarge);
    }
    if lessor.exists(g.id) {
        return Err(Error::LeaseExist);
    }
    let ttl = lessor.effective_ttl(g.ttl);
    let record = LeaseRecord {
        id: g.id,
        ttl,
        remaining_ttl: 0,
    };
    view.write_txn()
        .put_aux(Bucket::Lease, &record_key(g.id), &record.encode_to_vec());
    Ok(Applied::LeaseGrant(LeaseGrantResponse {
        header: header(view.rev()),
        id: g.id,
        ttl,
        error: String::new(),
    }))
}

/// LeaseRevoke: deletes the attached keys and the lease record.
pub(crate) fn revoke(
    view: &mut View<'_>,
    lessor: &Lessor,
    r: &LeaseRevokeRequest,
) -> Result<Applied> {
    if !lessor.exists(r.id) {
        return Err(Error::LeaseNotFound);
    }
    let txn = view.write_txn();
    for key in lessor.keys(r.id) {
        txn.delete_range(&key, &[])?;
    }
    txn.delete_aux(Bucket::Lease, &record_key(r.id));
    Ok(Applied::LeaseRevoke(LeaseRevokeResponse {
        header: header(view.rev()),
    }))
}

/// LeaseCheckpoint: persists each known lease's remaining TTL.
pub(crate) fn checkpoint(
    view: &mut View<'_>,
    lessor: &Lessor,
    c: &LeaseCheckpointRequest,
) -> Result<Applied> {
    for cp in &c.checkpoints {
        if let Some(record) = lessor.record(cp.id, cp.remaining_ttl.max(0)) {
            view.write_txn()
                .put_aux(Bucket::Lease, &record_key(cp.id), &record.encode_to_vec());
        }
    }
    Ok(Applied::LeaseCheckpoint)
}

/// Updates the lessor once the entry's transaction is committed.
pub(crate) fn after_commit(lessor: &Lessor, op: &Op, events: &[Event]) {
    for ev in events {
        let Some(prev) = &ev.prev_kv else {
            if ev.r#type == EventType::Put as i32 {
                if let Some(kv) = ev.kv.as_ref().filter(|kv| kv.lease != 0) {
                    lessor.attach(kv.lease, kv.key.clone());
                }
            }
            continue;
        };
        let new_lease = match (&ev.kv, ev.r#type == EventType::Put as i32) {
            (Some(kv), true) => kv.lease,
            _ => 0,
        };
        if prev.lease != 0 && prev.lease != new_lease {
            lessor.detach(prev.lease, &prev.key);
        }
        if new_lease != 0 && new_lease != prev.lease {
            lessor.attach(new_lease, prev.key.clone());
        }
    }
    match op {
        Op::LeaseGrant(g) => lessor.grant(g.id, g.ttl),
        Op::LeaseRevoke(r) => lessor.remove(r.id),
        Op::LeaseCheckpoint(c) => {
            for cp in &c.checkpoints {
                lessor.checkpoint(cp.id, cp.remaining_ttl);
            }
        }
        _ => {}
    }
}

/// Rebuilds `lessor` from the store: lease records from `Bucket::Lease`,
/// attachments from the live keys' lease fields (read in pages).
pub(crate) fn restore(store: &Store, lessor: &Lessor) -> Result<()> {
    let mut records = Vec::new();
    for (k, v) in store.aux_scan(Bucket::Lease)? {
        let r = LeaseRecord::decode(&v[..])
            .map_err(|e| Error::Internal(format!("lease record {k:x?} is not readable: {e}")))?;
        records.push(r);
    }
    let mut attached = Vec::new();
    const PAGE: i64 = 1000;
    let read = store.read();
    let mut from: Vec<u8> = vec![0];
    loop {
        let opts = RangeOptions {
            limit: PAGE,
            rev: read.rev(),
            count_only: false,
        };
        let rr = read.range(&from, &[0], opts)?;
        let n = rr.kvs.len();
        for kv in rr.kvs {
            if kv.lease != 0 {
                attached.push((kv.key.clone(), kv.lease));
            }
            from = kv.key.to_vec();
        }
        if (n as i64) < PAGE {
            break;
        }
        from.push(0);
    }
    tracing::info!(
        leases = records.len(),
        attached = attached.len(),
        "restored leases"
    );
    lessor.restore(records, attached);
    Ok(())
}
