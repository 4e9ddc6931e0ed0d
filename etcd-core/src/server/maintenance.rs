//! The Maintenance API calls served by the engine (etcd's `maintenance.go`):
//! Status, Alarm, Defragment, HashKV, Snapshot.
//!
//! Snapshot: the store, read from one consistent view, is streamed in
//! etcd's bbolt layout ([`crate::bbolt_layout`]) as it is written
//! ([`crate::db_stream`]: bounded memory, no temporary file, writers not
//! blocked), in 32 KiB chunks with the bytes still to come, then a last
//! message with the SHA-256 of the whole file (what `etcdctl snapshot
//! restore` verifies).

use super::etcd::{Etcd, SERVER_VERSION};
use crate::apply::Applied;
use crate::pb::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, DefragmentResponse, HashKvResponse, HashResponse,
    SnapshotResponse, StatusResponse,
};
use crate::raft_request::Op;
use crate::request_context::RequestContext;
use crate::{Error, Result};

/// With `--auto-disarm-nospace`, the share of its quota a member's store
/// must fall below (after a defragmentation) for the member to disarm its
/// own NOSPACE alarm: headroom so the alarm does not flap on the next
/// writes.
pub const AUTO_DISARM_FRACTION: f64 = 0.8;

/// Bytes of database per SnapshotResponse (etcd's `snapshotSendBufferSize`).
pub const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// A database snapshot being written and sent (Maintenance.Snapshot): an
/// iterator of the responses, file chunks then the SHA-256. Dropping it
/// stops the writing.
pub struct SnapshotDb {
    /// The chunks, from the thread writing them ([`crate::db_stream`]).
    chunks: std::sync::mpsc::Receiver<crate::db_stream::Msg>,
    /// Bytes of the database.
    size: u64,
    /// Bytes handed out so far.
    sent: u64,
    /// SHA-256 of the bytes handed out.
    sha: ring::digest::Context,
    /// The checksum message was handed out: the stream is over.
    done: bool,
    /// When sending started (for the log line at the end).
    started: std::time::Instant,
}

impl SnapshotDb {
    /// Bytes of the database (the checksum message not counted).
    pub fn size(&self) -> u64 {
        self.size
    }

    fn next_chunk(&mut self) -> Result<SnapshotResponse> {
        use crate::db_stream::Msg;
        let blob = match self.chunks.recv() {
            Ok(Msg::Chunk(c)) => c,
            Ok(Msg::Failed(e)) => return Err(e),
            Ok(Msg::Size { .. }) | Err(_) => {
                return Err(Error::Internal("the database snapshot ended early".into()))
            }
        };
        self.sent += blob.len() as u64;
        if self.sent > self.size {
            return Err(Error::Internal(format!(
                "the database snapshot is longer than its {} bytes",
                self.size
            )));
        }
        self.sha.update(&blob);
        Ok(SnapshotResponse {
            header: None,
            remaining_bytes: self.size - self.sent,
            blob: blob.into(),
        })
    }
}

impl Iterator for SnapshotDb {
    type Item = Result<SnapshotResponse>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.sent < self.size {
            let r = self.next_chunk();
            if r.is_err() {
                self.done = true;
            }
            return Some(r);
        }
        self.done = true;
        let sha = self.sha.clone().finish();
        tracing::info!(
            "total-bytes" = self.size,
            "took-ms" = self.started.elapsed().as_millis() as u64,
            "sent the database snapshot and its sha256 checksum to the client"
        );
        Some(Ok(SnapshotResponse {
            header: None,
            remaining_bytes: 0,
            blob: sha.as_ref().to_vec().into(),
        }))
    }
}

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
        // No header, as etcd (3.4 to 3.6) answers.
        Ok(DefragmentResponse { header: None })
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

    /// Maintenance.Snapshot: starts streaming the store as of now in etcd's
    /// bbolt layout and returns the responses to send. Blocking (the file
    /// is measured in a first pass over the store before the first chunk:
    /// its size goes in every response); call from a blocking context.
    pub fn snapshot(&self, ctx: &RequestContext) -> Result<SnapshotDb> {
        use crate::db_stream::Msg;
        self.check_maintenance_admin(ctx)?;
        let started = std::time::Instant::now();
        let chunks = crate::db_stream::spawn(
            self.inner.store.clone(),
            etcd_bbolt::DEFAULT_PAGE_SIZE,
            SNAPSHOT_CHUNK,
        )?;
        let size = match chunks.recv() {
            Ok(Msg::Size { bytes }) => bytes,
            Ok(Msg::Failed(e)) => return Err(e),
            Ok(Msg::Chunk(_)) | Err(_) => {
                return Err(Error::Internal(
                    "the database snapshot thread ended early".into(),
                ))
            }
        };
        Ok(SnapshotDb {
            chunks,
            size,
            sent: 0,
            sha: ring::digest::Context::new(&ring::digest::SHA256),
            done: false,
            started,
        })
    }

    /// Maintenance.Hash: etcd's hash of its whole backend (every bucket of
    /// etcd's layout but the consistent index, see
    /// [`crate::bbolt_layout::BackendHash`]) over one view of the store.
    /// Members with the same data, membership and alarms agree. Blocking
    /// (reads the whole store); call from a blocking context.
    pub fn hash(&self, ctx: &RequestContext) -> Result<HashResponse> {
        self.check_maintenance_admin(ctx)?;
        let _timer = self.inner.metrics.hash_seconds.start_timer();
        let view = self.inner.store.view()?;
        let hash = crate::bbolt_layout::backend_hash(&view)?;
        Ok(HashResponse {
            header: Some(self.header(view.revision())),
            hash,
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
        })
    }
}
