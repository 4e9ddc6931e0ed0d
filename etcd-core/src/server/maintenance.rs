//! The Maintenance API calls served by the engine (etcd's `maintenance.go`):
//! Status, Alarm, Defragment, HashKV.

use super::etcd::{Etcd, SERVER_VERSION};
use crate::pb::etcdserverpb::{
    AlarmMember, AlarmResponse, DefragmentResponse, HashKvResponse, StatusResponse,
};
use crate::request_context::RequestContext;
use crate::Result;

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
            errors: Vec::new(),
            db_size_in_use: store.db_size_in_use() as i64,
            is_learner: st.is_learner,
        }
    }

    /// Maintenance.Alarm with action GET: the active alarms (none can be
    /// raised yet: quota overruns are refused per request).
    pub fn alarm_list(&self, _ctx: &RequestContext) -> AlarmResponse {
        AlarmResponse {
            header: Some(self.header(self.inner.store.current_revision())),
            alarms: Vec::<AlarmMember>::new(),
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
            header: Some(self.header(h.revision)),
            hash: h.hash,
            compact_revision: h.compact_revision,
            ..Default::default()
        })
    }
}
