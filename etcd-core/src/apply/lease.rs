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
//! Attachments are derived from the committed events and the lessor's own
//! key-to-lease map (etcd's `GetLease(item)`; events carry no `prev_kv` for
//! puts): a PUT attaches its key to `kv.lease`, detaching it from the lease
//! it had; a DELETE detaches it. So a put with another lease moves the
//! key, a put without a lease frees it, and `ignore_lease` (which re-puts
//! the previous lease) keeps it.

use super::view::{Applied, View};
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
        let Some(kv) = &ev.kv else { continue };
        if ev.r#type == EventType::Put as i32 {
            lessor.put_key(kv.lease, &kv.key);
        } else {
            lessor.put_key(0, &kv.key);
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
/// attachments from the live keys' lease fields (as the store's index
/// rebuild collected them, or read in pages).
pub(crate) fn restore(store: &Store, lessor: &Lessor) -> Result<()> {
    let mut records = Vec::new();
    for (k, v) in store.aux_scan(Bucket::Lease)? {
        let r = LeaseRecord::decode(&v[..])
            .map_err(|e| Error::Internal(format!("lease record {k:x?} is not readable: {e}")))?;
        records.push(r);
    }
    // What the store's index rebuild found (at open or restore), else
    // every live key read again.
    let attached = match store.take_lease_attachments() {
        Some(a) => a,
        None => scan_attachments(store)?,
    };
    tracing::info!(
        leases = records.len(),
        attached = attached.len(),
        "restored leases"
    );
    lessor.restore(records, attached);
    Ok(())
}

/// Every live key attached to a lease, read in one pass of chunks (pages
/// of a limited range would count the rest of the keyspace each time).
fn scan_attachments(store: &Store) -> Result<Vec<(bytes::Bytes, i64)>> {
    let mut attached = Vec::new();
    let read = store.read();
    let opts = RangeOptions {
        limit: 0,
        rev: read.rev(),
        count_only: false,
    };
    read.range_chunks(&[0], &[0], opts, |kvs| {
        attached.extend(
            kvs.into_iter()
                .filter(|kv| kv.lease != 0)
                .map(|kv| (kv.key, kv.lease)),
        );
        std::ops::ControlFlow::Continue(())
    })?;
    Ok(attached)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::apply;
    use crate::lessor::FakeClock;
    use crate::pb::etcdserverpb::{
        request_op, DeleteRangeRequest, LeaseCheckpoint, PutRequest, RequestOp, TxnRequest,
    };
    use crate::raft_request::RaftRequest;
    use std::sync::Arc;
    use std::time::Duration;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        lessor: Lessor,
        index: u64,
    }

    fn lessor() -> Lessor {
        Lessor::new(Arc::new(FakeClock::new()), 2, Duration::from_secs(300))
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), Default::default()).unwrap();
            Fixture {
                _dir: dir,
                store,
                lessor: lessor(),
                index: 0,
            }
        }

        fn run(&mut self, op: Op) -> Result<Applied> {
            self.index += 1;
            apply(
                &self.store,
                &self.lessor,
                self.index,
                &RaftRequest {
                    id: 1,
                    op: Some(op),
                    header: None,
                    origin: 0,
                },
            )
        }

        fn put(&mut self, key: &str, lease: i64) -> Result<Applied> {
            self.run(Op::Put(PutRequest {
                key: key.to_string().into(),
                value: "v".into(),
                lease,
                ..Default::default()
            }))
        }

        fn grant(&mut self, id: i64, ttl: i64) -> Result<Applied> {
            self.run(Op::LeaseGrant(LeaseGrantRequest { id, ttl }))
        }

        fn lease_of(&self, key: &str) -> Option<i64> {
            let rr = self
                .store
                .range(key.as_bytes(), &[], RangeOptions::default())
                .unwrap();
            rr.kvs.first().map(|kv| kv.lease)
        }
    }

    #[test]
    fn grant_checks_id_ttl_and_duplicates() {
        let mut f = Fixture::new();
        match f.grant(10, 1).unwrap() {
            Applied::LeaseGrant(r) => assert_eq!((r.id, r.ttl), (10, 2)),
            _ => panic!("not a grant"),
        }
        assert_eq!(f.grant(10, 5).err(), Some(Error::LeaseExist));
        assert_eq!(
            f.grant(11, MAX_LEASE_TTL + 1).err(),
            Some(Error::LeaseTtlTooLarge)
        );
        assert!(f.grant(11, MAX_LEASE_TTL).is_ok());
        assert_eq!(f.grant(0, 5).err(), Some(Error::LeaseNotFound));
        assert_eq!(f.store.aux_scan(Bucket::Lease).unwrap().len(), 2);
        assert_eq!(
            f.store.consistent_index(),
            f.index,
            "failed entries are recorded"
        );
    }

    #[test]
    fn puts_need_an_existing_lease_also_inside_txns() {
        let mut f = Fixture::new();
        assert_eq!(f.put("a", 5).err(), Some(Error::LeaseNotFound));
        let txn = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: "b".into(),
                    lease: 5,
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        assert_eq!(
            f.run(Op::Txn(txn.clone())).err(),
            Some(Error::LeaseNotFound)
        );
        f.grant(5, 10).unwrap();
        f.run(Op::Txn(txn)).unwrap();
        assert_eq!(f.lease_of("b"), Some(5));
        assert_eq!(f.lessor.keys(5), vec![bytes::Bytes::from_static(b"b")]);
    }

    #[test]
    fn a_key_moves_between_leases() {
        let mut f = Fixture::new();
        f.grant(1, 10).unwrap();
        f.grant(2, 10).unwrap();
        f.put("k", 1).unwrap();
        assert_eq!(f.lessor.lease_of(b"k"), 1);
        f.put("k", 2).unwrap();
        assert_eq!(f.lessor.lease_of(b"k"), 2);
        assert!(f.lessor.keys(1).is_empty());
        // ignore_lease keeps the key's lease.
        f.run(Op::Put(PutRequest {
            key: "k".into(),
            value: "w".into(),
            ignore_lease: true,
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(f.lease_of("k"), Some(2));
        assert_eq!(f.lessor.lease_of(b"k"), 2);
        // Revoking the old lease leaves the moved key alone.
        f.run(Op::LeaseRevoke(LeaseRevokeRequest { id: 1 }))
            .unwrap();
        assert_eq!(f.lease_of("k"), Some(2));
        // A put without a lease frees it; a delete detaches it.
        f.put("k", 0).unwrap();
        assert_eq!(f.lessor.lease_of(b"k"), 0);
        f.put("k", 2).unwrap();
        f.run(Op::DeleteRange(DeleteRangeRequest {
            key: "k".into(),
            ..Default::default()
        }))
        .unwrap();
        assert!(f.lessor.keys(2).is_empty());
    }

    #[test]
    fn revoke_deletes_the_keys_at_one_revision() {
        let mut f = Fixture::new();
        f.grant(9, 10).unwrap();
        for k in ["c", "a", "b"] {
            f.put(k, 9).unwrap();
        }
        f.put("other", 0).unwrap();
        let before = f.store.current_revision();
        match f
            .run(Op::LeaseRevoke(LeaseRevokeRequest { id: 9 }))
            .unwrap()
        {
            Applied::LeaseRevoke(r) => assert_eq!(r.header.unwrap().revision, before + 1),
            _ => panic!("not a revoke"),
        }
        assert_eq!(f.store.current_revision(), before + 1);
        for k in ["a", "b", "c"] {
            assert_eq!(f.lease_of(k), None, "{k} deleted");
        }
        assert_eq!(f.lease_of("other"), Some(0));
        assert!(!f.lessor.exists(9));
        assert!(f.store.aux_scan(Bucket::Lease).unwrap().is_empty());
        // History at the revoke's revision: three deletes, in key order.
        let old = f
            .store
            .range(
                b"a",
                b"d",
                RangeOptions {
                    rev: before,
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(old.count, 3);
        assert_eq!(
            f.run(Op::LeaseRevoke(LeaseRevokeRequest { id: 9 })).err(),
            Some(Error::LeaseNotFound)
        );
    }

    #[test]
    fn leases_and_attachments_are_restored_after_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut f = Fixture {
                store: Store::open(dir.path(), Default::default()).unwrap(),
                _dir: tempfile::tempdir().unwrap(),
                lessor: lessor(),
                index: 0,
            };
            f.grant(1, 600).unwrap();
            f.grant(2, 3).unwrap();
            f.grant(3, 10).unwrap();
            f.put("x", 1).unwrap();
            f.put("y", 1).unwrap();
            f.put("z", 2).unwrap();
            f.put("y", 3).unwrap();
            f.run(Op::LeaseCheckpoint(LeaseCheckpointRequest {
                checkpoints: vec![LeaseCheckpoint {
                    id: 1,
                    remaining_ttl: 250,
                }],
            }))
            .unwrap();
            f.run(Op::LeaseRevoke(LeaseRevokeRequest { id: 2 }))
                .unwrap();
            f.store.flush().unwrap();
        }
        let store = Store::open(dir.path(), Default::default()).unwrap();
        // The attachments the index rebuild found, and those read again
        // once they are taken: the same.
        let mut scanned = scan_attachments(&store).unwrap();
        scanned.sort();
        let l = lessor();
        restore(&store, &l).unwrap();
        let mut again = scan_attachments(&store).unwrap();
        again.sort();
        assert_eq!(scanned, again);
        assert_eq!(store.take_lease_attachments(), None, "taken by restore");
        assert_eq!(l.len(), 2);
        assert_eq!(l.keys(1), vec![bytes::Bytes::from_static(b"x")]);
        assert_eq!(l.keys(3), vec![bytes::Bytes::from_static(b"y")]);
        assert_eq!(l.record(1, 250).unwrap().ttl, 600);
        // Restored leases count from the checkpointed TTL once promoted.
        l.promote(Duration::from_secs(1));
        assert_eq!(l.time_to_live(1).unwrap().remaining, 251);
        assert_eq!(l.time_to_live(3).unwrap().remaining, 11);
    }
}
