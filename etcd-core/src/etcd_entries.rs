//! Log entries between this server's members and etcd 3.4 members of the
//! same running cluster (`etcd_raft_node::rafthttp`): raft replicates
//! entries without looking into them, so each kind of member keeps its own
//! encoding and the transport translates the entries of every message
//! that crosses.
//!
//! etcd -> ours is the import's `translate_entry` (etcd's
//! `InternalRaftRequest` field numbers to our `RaftRequest`, etcd 3.4's v2
//! publish to `MemberAttributes`, etcd's conf change type numbers and JSON
//! contexts to ours). Ours -> etcd, below, is its inverse:
//!
//! | ours | etcd 3.4 |
//! |---|---|
//! | `RaftRequest { id, op, header, origin }` | `InternalRaftRequest { ID: id, header: {ID: id, username, auth_revision}, <op> }`, `origin` in field 25 (unknown to etcd, kept in its log, read back here) |
//! | `MemberAttributes` | `V2: Request { PUT /0/members/<hex id>/attributes, {"name","clientURLs"} }` (etcd 3.4's publish) |
//! | `MemberUpdate` (a normal entry) | `ConfChange { UpdateNode (2), context: member JSON }` |
//! | conf change add / add learner | `ConfChange { ID: request id, AddNode (0) / AddLearnerNode (3), context: member JSON }` |
//! | conf change promote | `ConfChange { AddNode, context: {"id", "peerURLs", "isPromote": true} }` |
//! | conf change remove | `ConfChange { RemoveNode (1) }` |
//! | the `origin` of a conf change or `MemberUpdate` | `"etcdRsOrigin"` in the context JSON (etcd ignores it) |
//!
//! Known difference: etcd 3.4 has no `hashedPassword` in `AuthUserAdd` /
//! `AuthUserChangePassword` (ours hashes before proposing, etcd 3.4 when
//! applying), so a user added or changed through this server's members
//! while etcd members remain gets no usable password on the etcd members.

use std::collections::BTreeSet;
use std::sync::Arc;

use etcd_raft_node::eraftpb::{Entry, EntryType};
use etcd_raft_node::rafthttp::EtcdEntryCodec;
use etcd_wal::etcd_decoder::EtcdEntry;
use parking_lot::RwLock;
use prost::Message;

use crate::cluster::{decode_conf_change, Change, RaftCluster};
use crate::etcd_import::{
    translate_running_entry, EtcdConfChange, EtcdInternalAuthenticateRequest,
    EtcdInternalRaftRequest, EtcdRequestHeader, EtcdV2Request, ORIGIN_JSON,
};
use crate::raft_request::{Op, RaftRequest};

/// The translation, with the membership it needs (etcd tells a promote
/// from an add by whether the member is a learner), and the image files
/// an etcd leader's snapshot is imported into.
pub(crate) struct EtcdEntries {
    pub cluster: Arc<RwLock<RaftCluster>>,
    pub snapshots: Arc<crate::snapshot::StoreSnapshots>,
}

impl EtcdEntryCodec for EtcdEntries {
    fn entry_to_etcd(&self, e: &Entry) -> Entry {
        let mut out = e.clone();
        match to_etcd(e, &self.cluster.read()) {
            Ok(Some((t, data))) => {
                out.set_entry_type(t);
                out.data = data.into();
            }
            Ok(None) => {}
            Err(why) => {
                // Our own log entry does not decode: a bug. etcd members get
                // a no-op in its place rather than bytes they cannot parse.
                tracing::error!(
                    index = e.index,
                    "entry not translatable for etcd members: {why}"
                );
                out.set_entry_type(EntryType::EntryNormal);
                out.data = Default::default();
            }
        }
        out
    }

    fn entry_from_etcd(&self, e: &Entry) -> Result<Entry, String> {
        // Only a conf change needs the learners (every entry of an etcd
        // leader's appends comes through here).
        let mut learners: BTreeSet<u64> = if e.get_entry_type() == EntryType::EntryConfChange {
            self.cluster
                .read()
                .members()
                .iter()
                .filter(|m| m.is_learner)
                .map(|m| m.id)
                .collect()
        } else {
            BTreeSet::new()
        };
        let ee = EtcdEntry {
            entry_type: e.get_entry_type() as i32,
            term: e.term,
            index: e.index,
            data: e.data.to_vec(),
        };
        translate_running_entry(&ee, &mut learners)
    }

    fn scratch_dir(&self) -> std::path::PathBuf {
        self.snapshots.files.dir().to_path_buf()
    }

    /// etcd's database, as starting on an etcd data directory converts it
    /// (`bbolt_layout::etcd_member_db_to_image`: keys, leases, auth,
    /// members), streamed into an image file like a snapshot from one of
    /// ours.
    fn import_etcd_snapshot(
        &self,
        index: u64,
        term: u64,
        db: &std::path::Path,
    ) -> Result<Vec<u8>, String> {
        use etcd_raft_node::SnapshotIo;
        let reader = etcd_bbolt::Reader::open(db).map_err(|e| e.to_string())?;
        reader.check().map_err(|e| e.to_string())?;
        let sink = self
            .snapshots
            .import(index, term)
            .map_err(|e| e.to_string())?;
        let (w, imported, ci, members) =
            crate::bbolt_layout::etcd_member_db_to_image(&reader, SinkWriter(sink))
                .map_err(|e| e.to_string())?;
        tracing::info!(
            index,
            term,
            "consistent-index" = ci,
            revisions = imported.revisions,
            members = members.len(),
            "converted an etcd member's snapshot"
        );
        w.0.finish().map_err(|e| e.to_string())
    }
}

/// An image sink as a `Write`.
struct SinkWriter(Box<dyn etcd_raft_node::SnapshotSink>);

impl std::io::Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_chunk(buf).map_err(std::io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Our entry `e` in etcd's encoding: its type and data, or None when the
/// bytes are the same (a leader's empty entry).
fn to_etcd(e: &Entry, cluster: &RaftCluster) -> Result<Option<(EntryType, Vec<u8>)>, String> {
    match e.get_entry_type() {
        EntryType::EntryNormal if e.data.is_empty() => Ok(None),
        EntryType::EntryNormal => {
            let r = RaftRequest::decode(&e.data[..]).map_err(|e| e.to_string())?;
            normal_to_etcd(r).map(Some)
        }
        EntryType::EntryConfChange => {
            let (_, waiter, change) = decode_conf_change(&e.data)?;
            let (change_type, node_id, mut context) = match change {
                Change::Add(m) => (
                    if m.is_learner { 3 } else { 0 },
                    m.id,
                    crate::bbolt_layout::member_json_value(&m),
                ),
                Change::Promote(id) => {
                    let peer_urls = cluster
                        .member(id)
                        .map(|m| m.peer_urls.clone())
                        .unwrap_or_default();
                    let ctx = serde_json::json!({
                        "id": id,
                        "peerURLs": peer_urls,
                        "isPromote": true,
                    });
                    (0, id, ctx)
                }
                Change::Remove(id) => (1, id, serde_json::json!({})),
                other => return Err(format!("a conf change entry holding {other:?}")),
            };
            if waiter.origin != 0 {
                context[ORIGIN_JSON] = waiter.origin.into();
            }
            let context = if context.as_object().is_some_and(|o| o.is_empty()) {
                Vec::new()
            } else {
                context.to_string().into_bytes()
            };
            let cc = EtcdConfChange {
                id: waiter.id,
                change_type,
                node_id,
                context,
            };
            Ok(Some((EntryType::EntryConfChange, cc.encode_to_vec())))
        }
        EntryType::EntryConfChangeV2 => Err("conf change v2 entries are not used".into()),
    }
}

fn normal_to_etcd(r: RaftRequest) -> Result<(EntryType, Vec<u8>), String> {
    let mut out = EtcdInternalRaftRequest {
        id: r.id,
        origin: r.origin,
        ..Default::default()
    };
    if let Some(h) = &r.header {
        out.header = Some(EtcdRequestHeader {
            id: r.id,
            username: h.username.clone(),
            auth_revision: h.auth_revision,
        });
    } else {
        out.header = Some(EtcdRequestHeader {
            id: r.id,
            ..Default::default()
        });
    }
    match r.op.ok_or("a request without an operation")? {
        Op::Put(p) => out.put = Some(p),
        Op::DeleteRange(d) => out.delete_range = Some(d),
        Op::Txn(t) => out.txn = Some(t),
        Op::Compaction(c) => out.compaction = Some(c),
        Op::LeaseGrant(g) => out.lease_grant = Some(g),
        Op::LeaseRevoke(v) => out.lease_revoke = Some(v),
        Op::LeaseCheckpoint(c) => out.lease_checkpoint = Some(c),
        Op::Alarm(a) => out.alarm = Some(a),
        Op::AuthEnable(a) => out.auth_enable = Some(a),
        Op::AuthDisable(a) => out.auth_disable = Some(a),
        Op::Authenticate(a) => {
            out.authenticate = Some(EtcdInternalAuthenticateRequest {
                name: a.name,
                password: String::new(),
                simple_token: a.simple_token,
            })
        }
        Op::UserAdd(a) => out.auth_user_add = Some(a),
        Op::UserDelete(a) => out.auth_user_delete = Some(a),
        Op::UserChangePassword(a) => out.auth_user_change_password = Some(a),
        Op::UserGrantRole(a) => out.auth_user_grant_role = Some(a),
        Op::UserRevokeRole(a) => out.auth_user_revoke_role = Some(a),
        Op::RoleAdd(a) => out.auth_role_add = Some(a),
        Op::RoleDelete(a) => out.auth_role_delete = Some(a),
        Op::RoleGrantPermission(a) => out.auth_role_grant_permission = Some(a),
        Op::RoleRevokePermission(a) => out.auth_role_revoke_permission = Some(a),
        Op::MemberAttributes(a) => {
            // etcd 3.4's publish: a v2 PUT of the attributes JSON.
            let val = serde_json::json!({ "name": a.name, "clientURLs": a.client_urls });
            out.header = None;
            out.v2 = Some(EtcdV2Request {
                id: r.id,
                method: "PUT".into(),
                path: format!("/0/members/{:x}/attributes", a.id),
                val: val.to_string(),
            });
        }
        Op::MemberUpdate(u) => {
            let mut json = serde_json::json!({ "id": u.id, "peerURLs": u.peer_ur_ls });
            if r.origin != 0 {
                json[ORIGIN_JSON] = r.origin.into();
            }
            let cc = EtcdConfChange {
                id: r.id,
                change_type: 2,
                node_id: u.id,
                context: json.to_string().into_bytes(),
            };
            return Ok((EntryType::EntryConfChange, cc.encode_to_vec()));
        }
    }
    Ok((EntryType::EntryNormal, out.encode_to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Member;
    use crate::pb::etcdserverpb::{MemberUpdateRequest, PutRequest};
    use crate::raft_request::{MemberAttributes, RequestHeader};
    use crate::wait::Waiter;
    use protobuf::Message as _;

    fn codec(members: Vec<Member>) -> (EtcdEntries, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let files = crate::snapshot::SnapshotFiles::open(dir.path(), 2).unwrap();
        let store = etcd_mvcc::Store::open_in_memory(Default::default()).unwrap();
        let codec = EtcdEntries {
            cluster: Arc::new(RwLock::new(RaftCluster::new(members))),
            snapshots: Arc::new(crate::snapshot::StoreSnapshots {
                files,
                store: Arc::new(store),
            }),
        };
        (codec, dir)
    }

    fn normal(r: &RaftRequest) -> Entry {
        let mut e = Entry::default();
        e.index = 7;
        e.term = 3;
        e.data = r.encode_to_vec().into();
        e
    }

    /// Every kind of entry goes to etcd's encoding and back unchanged.
    #[test]
    fn entries_round_trip_through_etcds_encoding() {
        let member = Member {
            id: 0x42,
            name: "n".into(),
            peer_urls: vec!["http://127.0.0.1:2380".into()],
            client_urls: vec!["http://127.0.0.1:2379".into()],
            is_learner: true,
        };
        let (c, _dir) = codec(vec![member.clone()]);
        let reqs = [
            RaftRequest {
                id: 9,
                op: Some(Op::Put(PutRequest {
                    key: b"k".to_vec().into(),
                    value: b"v".to_vec().into(),
                    ..Default::default()
                })),
                header: Some(RequestHeader {
                    username: "u".into(),
                    auth_revision: 4,
                }),
                origin: 0xabc,
            },
            RaftRequest {
                id: 10,
                op: Some(Op::MemberAttributes(MemberAttributes {
                    id: 0x42,
                    name: "n".into(),
                    client_urls: vec!["http://127.0.0.1:2379".into()],
                })),
                header: None,
                origin: 0xdef,
            },
            RaftRequest {
                id: 11,
                op: Some(Op::MemberUpdate(MemberUpdateRequest {
                    id: 0x42,
                    peer_ur_ls: vec!["http://127.0.0.1:2390".into()],
                })),
                header: None,
                origin: 0x123,
            },
        ];
        for r in &reqs {
            let e = normal(r);
            let etcd = c.entry_to_etcd(&e);
            assert_eq!((etcd.index, etcd.term), (7, 3));
            let back = c.entry_from_etcd(&etcd).unwrap();
            let got = RaftRequest::decode(&back.data[..]).unwrap();
            let mut want = r.clone();
            if want.header.is_none()
                && !matches!(want.op, Some(Op::MemberAttributes(_) | Op::MemberUpdate(_)))
            {
                want.header = Some(RequestHeader::default());
            }
            assert_eq!(got, want, "{r:?}");
        }
        // Conf changes: add a learner, promote it, remove it.
        for change in [
            Change::Add(member.clone()),
            Change::Promote(0x42),
            Change::Remove(0x42),
        ] {
            let cc = change.to_conf_change(Waiter { origin: 77, id: 5 }).unwrap();
            let mut e = Entry::default();
            e.set_entry_type(EntryType::EntryConfChange);
            e.index = 8;
            e.data = cc.write_to_bytes().unwrap().into();
            let etcd = c.entry_to_etcd(&e);
            let back = c.entry_from_etcd(&etcd).unwrap();
            let (_, waiter, got) = decode_conf_change(&back.data).unwrap();
            assert_eq!(got, change);
            assert_eq!((waiter.id, waiter.origin), (5, 77));
        }
        // The empty entry of a new leader stays empty.
        let e = Entry::default();
        assert!(c.entry_to_etcd(&e).data.is_empty());
    }
}
