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
        Ok(DefragmentResponse {
            header: Some(self.header(self.inner.store.current_revision())),
        })
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
