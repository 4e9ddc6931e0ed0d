//! The Maintenance API calls served by the engine (etcd's `maintenance.go`):
//! Status, Alarm, Defragment, HashKV.

use super::etcd::{Etcd, SERVER_VERSION};
use crate::apply::Applied;
use crate::pb::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, DefragmentResponse, HashKvResponse, StatusResponse,
};
use crate::raft_request::Op;
use crate::request_context::RequestContext;
use crate::{Error, Result};

/// With `--auto-disarm-nospace`, the share of its quota a member's store
/// must fall below (after a defragmentation) for the member to disarm its
/// own NOSPACE alarm: headroom so the alarm does not flap on the next
/// writes.
pub const AUTO_DISARM_FRACTION: f64 = 0.8;

impl Etcd {
    /// Maintenance.Status.
    pub fn status(&self, _ctx: &RequestContext) -> StatusResponse {
        let st = self.inner.node.status();
        let store = &self.inner.store;
        StatusResponse {
            header: Some(self.header(store.current_revision())),
            version: SERVER_VERSION.into(),
            db_size: store.db_size() as i64,
            leader: st.leader_id,
            raft_index: st.commit_index,
            raft_term: st.term,
            raft_applied_index: *self.inner.applied.borrow(),
            // etcd: no leader, then every active alarm.
            errors: (st.leader_id == 0)
                .then(|| Error::NoLeader.to_string())
                .into_iter()
                .chain(
                    self.inner
                        .alarms
                        .get(AlarmType::None as i32)
                        .iter()
                        .map(crate::alarms::status_text),
                )
                .collect(),
            db_size_in_use: store.db_size_in_use() as i64,
            is_learner: st.is_learner,
        }
    }

    /// The active alarms as this member applied them (for `/health`).
    pub fn active_alarms(&self) -> Vec<crate::pb::etcdserverpb::AlarmMember> {
        self.inner.alarms.get(AlarmType::None as i32)
    }

    /// Maintenance.Alarm: GET lists the active alarms, ACTIVATE raises
    /// one, DEACTIVATE disarms one (`etcdctl alarm disarm` sends one per
    /// active alarm). Through raft, as in etcd.
    pub async fn alarm(&self, ctx: &RequestContext, r: AlarmRequest) -> Result<AlarmResponse> {
        match self.propose(ctx, Op::Alarm(r)).await? {
            Applied::Alarm(mut resp) => {
                self.fill(&mut resp.header);
                Ok(resp)
            }
            _ => unreachable!("an alarm request applies as one"),
        }
    }

    /// Maintenance.Defragment: compacts the store's files. Online: reads
    /// and writes continue meanwhile. Blocking; call from a blocking context.
    pub fn defragment(&self, ctx: &RequestContext) -> Result<DefragmentResponse> {
        self.check_maintenance_admin(ctx)?;
        self.inner.store.defragment()?;
        self.disarm_own_nospace_if_room();
        Ok(DefragmentResponse {
            header: Some(self.header(self.inner.store.current_revision())),
        })
    }

    /// `--auto-disarm-nospace` (beyond etcd): after a defragmentation that
    /// took this member's store below [`AUTO_DISARM_FRACTION`] of its
    /// quota, it disarms the NOSPACE alarm it raised itself, instead of
    /// waiting for an operator's `alarm disarm`.
    fn disarm_own_nospace_if_room(&self) {
        let me = self.inner.member_id;
        if !self.inner.cfg.auto_disarm_nospace
            || !self
                .inner
                .alarms
                .get(AlarmType::Nospace as i32)
                .iter()
                .any(|a| a.member_id == me)
        {
            return;
        }
        let size = self.inner.store.db_size();
        let quota = self.inner.cfg.quota_bytes();
        if (size as f64) < quota as f64 * AUTO_DISARM_FRACTION {
            tracing::warn!(
                db_size = size,
                quota,
                "store back under {}% of --quota-backend-bytes after defragmentation: \
                 disarming this member's NOSPACE alarm (--auto-disarm-nospace)",
                (AUTO_DISARM_FRACTION * 100.0) as u32
            );
            self.propose_detached(Op::Alarm(AlarmRequest {
                action: crate::pb::etcdserverpb::alarm_request::AlarmAction::Deactivate as i32,
                member_id: me,
                alarm: AlarmType::Nospace as i32,
            }));
        } else {
            tracing::warn!(
                db_size = size,
                quota,
                "NOSPACE stays: the store is still above {}% of its quota after \
                 defragmentation; compact more history and defragment again",
                (AUTO_DISARM_FRACTION * 100.0) as u32
            );
        }
    }

    /// Maintenance.HashKV: a hash of every key revision up to `revision`
    /// (0 = current), equal on members with the same history.
    pub fn hash_kv(&self, ctx: &RequestContext, revision: i64) -> Result<HashKvResponse> {
        self.check_maintenance_admin(ctx)?;
        let h = self.inner.store.hash_kv(revision)?;
        Ok(HashKvResponse {
            // etcd: the store's current revision, not the one asked for.
            header: Some(self.header(h.current_revision)),
            hash: h.hash,
            compact_revision: h.compact_revision,
            ..Default::default()
        })
    }
}
