//! Alarms raised by members (etcd's `etcdserver/api/v3alarm/alarms.go`):
//! NOSPACE when a member's store reaches `--quota-backend-bytes`, CORRUPT
//! for a hash mismatch.
//!
//! Alarms are raft state: raised and disarmed by `Alarm` entries applied on
//! every member, persisted in the `alarm` column family in the same write as
//! the entry's index, reloaded at start and after a snapshot image. While a
//! NOSPACE alarm is active on any member, every member refuses puts, txns
//! with a put and lease grants when applying them ("database space
//! exceeded"): reads, deletes, compaction and defragmentation still work,
//! which is how an operator frees space before `alarm disarm`.
//!
//! Byte format: key = etcd's `AlarmMember` protobuf (`memberID = 1`,
//! `alarm = 2`), value empty — etcd's `alarm` bucket exactly.

use crate::pb::etcdserverpb::{AlarmMember, AlarmType};
use crate::Result;
use etcd_mvcc::{Bucket, Store, TxnWrite};
use parking_lot::RwLock;
use prost::Message as _;
use std::collections::BTreeSet;

/// The active alarms of the cluster, as this member applied them.
#[derive(Default)]
pub(crate) struct AlarmStore {
    /// (alarm type, member id), sorted.
    active: RwLock<BTreeSet<(i32, u64)>>,
}

fn record(member: u64, alarm: i32) -> Vec<u8> {
    AlarmMember {
        member_id: member,
        alarm,
    }
    .encode_to_vec()
}

impl AlarmStore {
    /// (Re)loads the alarms from the store: at start and after a snapshot
    /// image was installed.
    pub(crate) fn load(&self, store: &Store) -> Result<()> {
        let mut active = BTreeSet::new();
        for (k, _) in store.aux_scan(Bucket::Alarm)? {
            let m = AlarmMember::decode(&k[..]).map_err(|e| {
                crate::Error::Internal(format!("alarm record {k:x?} is not readable: {e}"))
            })?;
            active.insert((m.alarm, m.member_id));
        }
        *self.active.write() = active;
        Ok(())
    }

    /// Raises `alarm` for `member`; returns it (also when it was already
    /// active).
    pub(crate) fn activate(&self, w: &mut TxnWrite<'_>, member: u64, alarm: i32) -> AlarmMember {
        if self.active.write().insert((alarm, member)) {
            w.put_aux(Bucket::Alarm, &record(member, alarm), &[]);
            tracing::warn!(
                alarm = alarm_name(alarm),
                from = %crate::format_id(member),
                "alarm raised"
            );
        }
        AlarmMember {
            member_id: member,
            alarm,
        }
    }

    /// Disarms `alarm` of `member`; None when it was not active.
    pub(crate) fn deactivate(
        &self,
        w: &mut TxnWrite<'_>,
        member: u64,
        alarm: i32,
    ) -> Option<AlarmMember> {
        if !self.active.write().remove(&(alarm, member)) {
            return None;
        }
        w.delete_aux(Bucket::Alarm, &record(member, alarm));
        tracing::warn!(
            alarm = alarm_name(alarm),
            from = %crate::format_id(member),
            "alarm disarmed"
        );
        Some(AlarmMember {
            member_id: member,
            alarm,
        })
    }

    /// The active alarms of type `alarm` (every type for NONE).
    pub(crate) fn get(&self, alarm: i32) -> Vec<AlarmMember> {
        self.active
            .read()
            .iter()
            .filter(|(a, _)| alarm == AlarmType::None as i32 || *a == alarm)
            .map(|&(alarm, member_id)| AlarmMember { member_id, alarm })
            .collect()
    }

    /// Whether a CORRUPT alarm is active on some member (writes, compaction
    /// and lease grants/revokes are refused, as etcd's `applierV3Corrupt`).
    pub(crate) fn corrupt(&self) -> bool {
        self.active
            .read()
            .iter()
            .any(|(a, _)| *a == AlarmType::Corrupt as i32)
    }

    /// Whether writes that need space are refused (a NOSPACE alarm is
    /// active on some member).
    pub(crate) fn no_space(&self) -> bool {
        self.active
            .read()
            .iter()
            .any(|(a, _)| *a == AlarmType::Nospace as i32)
    }
}

/// etcd's name of an alarm type (`NOSPACE`, `CORRUPT`).
pub fn alarm_name(alarm: i32) -> &'static str {
    AlarmType::try_from(alarm).map_or("NONE", |t| t.as_str_name())
}

/// The Alarm entry by which `member` raises NOSPACE (when a write it
/// serves would exceed its quota, or one it applied did).
pub(crate) fn raise_nospace(member: u64) -> crate::raft_request::Op {
    raise(member, AlarmType::Nospace)
}

/// The entry raising CORRUPT (etcd 3.4 raises it with member id 0, not the
/// member found corrupt).
pub(crate) fn raise_corrupt() -> crate::raft_request::Op {
    raise(0, AlarmType::Corrupt)
}

fn raise(member: u64, alarm: AlarmType) -> crate::raft_request::Op {
    crate::raft_request::Op::Alarm(crate::pb::etcdserverpb::AlarmRequest {
        action: crate::pb::etcdserverpb::alarm_request::AlarmAction::Activate as i32,
        member_id: member,
        alarm: alarm as i32,
    })
}

/// An alarm as etcd prints it in `Status.errors` (gogo-protobuf's text
/// form of `AlarmMember`, trailing space included).
pub(crate) fn status_text(m: &AlarmMember) -> String {
    format!("memberID:{} alarm:{} ", m.member_id, alarm_name(m.alarm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_mvcc::StoreOptions;

    #[test]
    fn alarms_persist_and_reload() {
        let store = Store::open_in_memory(StoreOptions::default()).unwrap();
        let a = AlarmStore::default();
        let nospace = AlarmType::Nospace as i32;
        let mut w = store.write();
        a.activate(&mut w, 7, nospace);
        a.activate(&mut w, 7, nospace);
        a.activate(&mut w, 9, AlarmType::Corrupt as i32);
        w.end(1).unwrap();
        assert!(a.no_space());
        assert_eq!(a.get(AlarmType::None as i32).len(), 2);
        assert_eq!(a.get(nospace).len(), 1);
        let b = AlarmStore::default();
        b.load(&store).unwrap();
        assert_eq!(b.get(AlarmType::None as i32), a.get(AlarmType::None as i32));
        let mut w = store.write();
        assert!(a.deactivate(&mut w, 7, nospace).is_some());
        assert!(a.deactivate(&mut w, 7, nospace).is_none());
        w.end(2).unwrap();
        assert!(!a.no_space());
        b.load(&store).unwrap();
        assert!(!b.no_space());
        assert_eq!(
            status_text(&b.get(AlarmType::None as i32)[0]),
            "memberID:9 alarm:CORRUPT "
        );
    }
}
