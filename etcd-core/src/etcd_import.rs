//! Starting on a data directory a stopped etcd (3.4 or 3.5) left: its
//! state is imported once into this server's format, with the whole raft
//! state, so a cluster stopped as a whole restarts as this server's
//! cluster with the same cluster and member ids, terms and logs.
//!
//! What an etcd member holds, and where it goes:
//!
//! | etcd                                   | here                                           |
//! |----------------------------------------|------------------------------------------------|
//! | `member/snap/db` (bbolt) at consistent index CI | the store, restored from an image at CI (keys, leases, auth, alarms, members, removed members) |
//! | `member/wal/*.wal` metadata            | our WAL's metadata (member id, cluster id, members) |
//! | the WAL's term at CI                   | our WAL's snapshot mark (CI, term); raft's configuration from the members |
//! | entries after CI (applied by etcd or not) | the same indexes and terms in our WAL, translated ([`translate_entry`]) |
//! | the last hard state (term, vote, commit) | the same hard state                          |
//! | `member/snap/*.snap` (v2 store)        | not needed: etcd 3.4+ keeps members in the db  |
//!
//! Keeping the entries after CI matters: they may be committed by a quorum
//! that includes this member, and are re-applied here as etcd would have.
//!
//! Crash safety (the etcd files are never modified):
//!
//! ```text
//! <data-dir>/member/                 etcd's, untouched until step 3
//! 1. <data-dir>/import.staging/      our data directory is built here (any crash: deleted, redone)
//! 2. <data-dir>/member -> <data-dir>/member.etcd        (etcd's files kept aside)
//! 3. <data-dir>/import.staging/member -> <data-dir>/member, version file likewise
//! 4. <data-dir>/import.staging removed
//! ```
//!
//! A start finding `member.etcd` and `import.staging/member` but no
//! `member` finishes step 3; finding `import.staging` next to etcd's
//! `member` deletes it and imports again.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Seek};
use std::path::Path;

use etcd_raft_node::eraftpb;
use etcd_wal::etcd_decoder::{read_etcd_wal_from, EtcdEntry, EtcdWal};
use prost::Message;
use protobuf::Message as _;
use serde::Deserialize;

use crate::cluster::{Change, RaftCluster};
use crate::datadir::DataDir;
use crate::error::StartError;
use crate::membership::WalMetadata;
use crate::pb::etcdserverpb::{
    AlarmRequest, AuthDisableRequest, AuthEnableRequest, AuthRoleAddRequest, AuthRoleDeleteRequest,
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest, AuthUserDeleteRequest, AuthUserGrantRoleRequest,
    AuthUserRevokeRoleRequest, CompactionRequest, DeleteRangeRequest, LeaseCheckpointRequest,
    LeaseGrantRequest, LeaseRevokeRequest, MemberUpdateRequest, PutRequest, TxnRequest,
};
use crate::raft_request::{
    InternalAuthenticateRequest, MemberAttributes, Op, RaftRequest, RequestHeader,
};

const STAGING: &str = "import.staging";
/// The JSON field of a conf change context that carries this server's
/// `origin` through etcd members' logs (see `etcd_entries`).
pub(crate) const ORIGIN_JSON: &str = "etcdRsOrigin";
const ETCD_ASIDE: &str = "member.etcd";

/// etcd's `InternalRaftRequest` (etcdserverpb/raft_internal.proto): the
/// fields a v3 server proposes. Read-only requests etcd 3.4 also sent
/// through raft (range, auth gets and lists) carry nothing to apply.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EtcdInternalRaftRequest {
    #[prost(message, optional, tag = "100")]
    pub(crate) header: Option<EtcdRequestHeader>,
    #[prost(uint64, tag = "1")]
    pub(crate) id: u64,
    #[prost(message, optional, tag = "2")]
    pub(crate) v2: Option<EtcdV2Request>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub(crate) range: Option<Vec<u8>>,
    #[prost(message, optional, tag = "4")]
    pub(crate) put: Option<PutRequest>,
    #[prost(message, optional, tag = "5")]
    pub(crate) delete_range: Option<DeleteRangeRequest>,
    #[prost(message, optional, tag = "6")]
    pub(crate) txn: Option<TxnRequest>,
    #[prost(message, optional, tag = "7")]
    pub(crate) compaction: Option<CompactionRequest>,
    #[prost(message, optional, tag = "8")]
    pub(crate) lease_grant: Option<LeaseGrantRequest>,
    #[prost(message, optional, tag = "9")]
    pub(crate) lease_revoke: Option<LeaseRevokeRequest>,
    #[prost(message, optional, tag = "10")]
    pub(crate) alarm: Option<AlarmRequest>,
    #[prost(message, optional, tag = "11")]
    pub(crate) lease_checkpoint: Option<LeaseCheckpointRequest>,
    #[prost(message, optional, tag = "1000")]
    pub(crate) auth_enable: Option<AuthEnableRequest>,
    #[prost(message, optional, tag = "1011")]
    pub(crate) auth_disable: Option<AuthDisableRequest>,
    #[prost(message, optional, tag = "1012")]
    pub(crate) authenticate: Option<EtcdInternalAuthenticateRequest>,
    #[prost(message, optional, tag = "1100")]
    pub(crate) auth_user_add: Option<AuthUserAddRequest>,
    #[prost(message, optional, tag = "1101")]
    pub(crate) auth_user_delete: Option<AuthUserDeleteRequest>,
    #[prost(bytes = "vec", optional, tag = "1102")]
    pub(crate) auth_user_get: Option<Vec<u8>>,
    #[prost(message, optional, tag = "1103")]
    pub(crate) auth_user_change_password: Option<AuthUserChangePasswordRequest>,
    #[prost(message, optional, tag = "1104")]
    pub(crate) auth_user_grant_role: Option<AuthUserGrantRoleRequest>,
    #[prost(message, optional, tag = "1105")]
    pub(crate) auth_user_revoke_role: Option<AuthUserRevokeRoleRequest>,
    #[prost(bytes = "vec", optional, tag = "1106")]
    pub(crate) auth_user_list: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "1107")]
    pub(crate) auth_role_list: Option<Vec<u8>>,
    #[prost(message, optional, tag = "1200")]
    pub(crate) auth_role_add: Option<AuthRoleAddRequest>,
    #[prost(message, optional, tag = "1201")]
    pub(crate) auth_role_delete: Option<AuthRoleDeleteRequest>,
    #[prost(bytes = "vec", optional, tag = "1202")]
    pub(crate) auth_role_get: Option<Vec<u8>>,
    #[prost(message, optional, tag = "1203")]
    pub(crate) auth_role_grant_permission: Option<AuthRoleGrantPermissionRequest>,
    #[prost(message, optional, tag = "1204")]
    pub(crate) auth_role_revoke_permission: Option<AuthRoleRevokePermissionRequest>,
    #[prost(bytes = "vec", optional, tag = "1300")]
    pub(crate) cluster_version_set: Option<Vec<u8>>,
    /// This server's `RaftRequest::origin` (no field of etcd's: etcd
    /// members keep it in their logs without reading it).
    #[prost(fixed64, tag = "25")]
    pub(crate) origin: u64,
    #[prost(message, optional, tag = "1301")]
    pub(crate) cluster_member_attr_set: Option<EtcdMemberAttrSet>,
    #[prost(bytes = "vec", optional, tag = "1302")]
    pub(crate) downgrade_info_set: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EtcdRequestHeader {
    #[prost(uint64, tag = "1")]
    pub(crate) id: u64,
    #[prost(string, tag = "2")]
    pub(crate) username: String,
    #[prost(uint64, tag = "3")]
    pub(crate) auth_revision: u64,
}

/// etcd's v2 `Request`: only the fields a v3 cluster proposes (publish,
/// cluster version).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EtcdV2Request {
    #[prost(uint64, tag = "1")]
    pub(crate) id: u64,
    #[prost(string, tag = "2")]
    pub(crate) method: String,
    #[prost(string, tag = "3")]
    pub(crate) path: String,
    #[prost(string, tag = "4")]
    pub(crate) val: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EtcdInternalAuthenticateRequest {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(string, tag = "2")]
    pub(crate) password: String,
    #[prost(string, tag = "3")]
    pub(crate) simple_token: String,
}

/// etcd 3.5's `ClusterMemberAttrSetRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EtcdMemberAttrSet {
    #[prost(uint64, tag = "1")]
    pub(crate) member_id: u64,
    #[prost(message, optional, tag = "2")]
    pub(crate) attributes: Option<EtcdAttributes>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EtcdAttributes {
    #[prost(string, tag = "1")]
    pub(crate) name: String,
    #[prost(string, repeated, tag = "2")]
    pub(crate) client_urls: Vec<String>,
}

/// etcd's `raftpb.ConfChange` (its type numbers: AddNode 0, RemoveNode 1,
/// UpdateNode 2, AddLearnerNode 3; raft-rs numbers AddLearnerNode 2).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EtcdConfChange {
    #[prost(uint64, tag = "1")]
    pub(crate) id: u64,
    #[prost(int32, tag = "2")]
    pub(crate) change_type: i32,
    #[prost(uint64, tag = "3")]
    pub(crate) node_id: u64,
    #[prost(bytes = "vec", tag = "4")]
    pub(crate) context: Vec<u8>,
}

/// etcd's v2 attributes JSON (publish).
#[derive(Deserialize)]
pub(crate) struct EtcdAttributesJson {
    #[serde(default)]
    pub(crate) name: String,
    #[serde(rename = "clientURLs", default)]
    pub(crate) client_urls: Vec<String>,
}

/// One etcd entry as an entry of our log: the same index and term, our
/// encoding of the same change. `learners` is the set of learners as of
/// the entry (kept up to date through the conf changes it sees), to tell
/// etcd's promote (an AddNode of a learner) from an add.
pub(crate) fn translate_entry(
    e: &EtcdEntry,
    learners: &mut BTreeSet<u64>,
) -> Result<eraftpb::Entry, String> {
    translate(e, learners, false)
}

/// [`translate_entry`] for a running mixed cluster (`etcd_entries`): a
/// user's password stays in the entry beside its hash, because a leader
/// of ours may send the entry on to etcd 3.4 members, which hash it
/// themselves (and, like etcd 3.4's own entries, keep it in their logs).
pub(crate) fn translate_running_entry(
    e: &EtcdEntry,
    learners: &mut BTreeSet<u64>,
) -> Result<eraftpb::Entry, String> {
    translate(e, learners, true)
}

fn translate(
    e: &EtcdEntry,
    learners: &mut BTreeSet<u64>,
    keep_passwords: bool,
) -> Result<eraftpb::Entry, String> {
    let mut out = eraftpb::Entry::default();
    out.index = e.index;
    out.term = e.term;
    match e.entry_type {
        0 => {
            out.set_entry_type(eraftpb::EntryType::EntryNormal);
            if !e.data.is_empty() {
                if let Some(r) = translate_normal(&e.data, keep_passwords)? {
                    out.data = r.encode_to_vec().into();
                }
            }
        }
        1 => {
            let cc =
                EtcdConfChange::decode(&e.data[..]).map_err(|e| format!("conf change: {e}"))?;
            let change = match cc.change_type {
                0 if learners.contains(&cc.node_id) => Change::Promote(cc.node_id),
                0 | 3 => {
                    let mut m = crate::bbolt_layout::member_from_json(&cc.context)?;
                    m.is_learner = cc.change_type == 3;
                    Change::Add(m)
                }
                1 => Change::Remove(cc.node_id),
                2 => {
                    // UpdateNode: a normal entry here (new peer URLs).
                    let m = crate::bbolt_layout::member_from_json(&cc.context)?;
                    out.set_entry_type(eraftpb::EntryType::EntryNormal);
                    out.data = RaftRequest {
                        id: cc.id,
                        op: Some(Op::MemberUpdate(MemberUpdateRequest {
                            id: cc.node_id,
                            peer_ur_ls: m.peer_urls,
                        })),
                        header: None,
                        origin: context_origin(&cc.context),
                    }
                    .encode_to_vec()
                    .into();
                    return Ok(out);
                }
                t => return Err(format!("conf change of type {t}")),
            };
            match &change {
                Change::Add(m) if m.is_learner => {
                    learners.insert(m.id);
                }
                Change::Promote(id) | Change::Remove(id) => {
                    learners.remove(id);
                }
                _ => {}
            }
            // The waiter: etcd's request id, and the origin a member of
            // ours proposing through an etcd leader put in the context
            // (`etcd_entries`; etcd ignores the field).
            let waiter = crate::wait::Waiter {
                id: cc.id,
                origin: context_origin(&cc.context),
            };
            let ours = change
                .to_conf_change(waiter)
                .expect("adds, promotes and removes are conf changes");
            out.set_entry_type(eraftpb::EntryType::EntryConfChange);
            out.data = ours.write_to_bytes().map_err(|e| e.to_string())?.into();
        }
        t => {
            return Err(format!(
                "entry of type {t} (conf change v2) is not imported"
            ))
        }
    }
    Ok(out)
}

/// The origin a member of ours put in a conf change context it proposed
/// through an etcd leader (`etcd_entries`); 0 in etcd's own.
fn context_origin(context: &[u8]) -> u64 {
    serde_json::from_slice::<serde_json::Value>(context)
        .ok()
        .and_then(|v| v.get(ORIGIN_JSON)?.as_u64())
        .unwrap_or(0)
}

/// An etcd `InternalRaftRequest` as our `RaftRequest`; None for what has
/// nothing to apply here (reads, v2 requests other than publish, the
/// cluster version).
fn translate_normal(data: &[u8], keep_passwords: bool) -> Result<Option<RaftRequest>, String> {
    // etcd's `pbutil.MaybeUnmarshal`: what is not an InternalRaftRequest
    // is a bare v2 `Request` (etcd 3.4 proposes its publish and cluster
    // version that way).
    let r = match EtcdInternalRaftRequest::decode(data) {
        Ok(r) => r,
        Err(e) => {
            let v2 = EtcdV2Request::decode(data).map_err(|_| format!("request: {e}"))?;
            EtcdInternalRaftRequest {
                id: v2.id,
                v2: Some(v2),
                ..Default::default()
            }
        }
    };
    let header = r.header.as_ref().map(|h| RequestHeader {
        username: h.username.clone(),
        auth_revision: h.auth_revision,
    });
    let id = r.header.as_ref().map_or(r.id, |h| h.id.max(r.id));
    let op = if let Some(p) = r.put {
        Op::Put(p)
    } else if let Some(d) = r.delete_range {
        Op::DeleteRange(d)
    } else if let Some(t) = r.txn {
        Op::Txn(t)
    } else if let Some(c) = r.compaction {
        Op::Compaction(c)
    } else if let Some(g) = r.lease_grant {
        Op::LeaseGrant(g)
    } else if let Some(v) = r.lease_revoke {
        Op::LeaseRevoke(v)
    } else if let Some(a) = r.alarm {
        Op::Alarm(a)
    } else if let Some(c) = r.lease_checkpoint {
        Op::LeaseCheckpoint(c)
    } else if let Some(a) = r.auth_enable {
        Op::AuthEnable(a)
    } else if let Some(a) = r.auth_disable {
        Op::AuthDisable(a)
    } else if let Some(a) = r.authenticate {
        Op::Authenticate(InternalAuthenticateRequest {
            name: a.name,
            simple_token: a.simple_token,
        })
    } else if let Some(mut a) = r.auth_user_add {
        // etcd 3.4 logs the password and hashes it when applying; ours
        // are hashed before they reach the log.
        hash_password(&mut a.password, &mut a.hashed_password, keep_passwords)?;
        Op::UserAdd(a)
    } else if let Some(a) = r.auth_user_delete {
        Op::UserDelete(a)
    } else if let Some(mut a) = r.auth_user_change_password {
        hash_password(&mut a.password, &mut a.hashed_password, keep_passwords)?;
        Op::UserChangePassword(a)
    } else if let Some(a) = r.auth_user_grant_role {
        Op::UserGrantRole(a)
    } else if let Some(a) = r.auth_user_revoke_role {
        Op::UserRevokeRole(a)
    } else if let Some(a) = r.auth_role_add {
        Op::RoleAdd(a)
    } else if let Some(a) = r.auth_role_delete {
        Op::RoleDelete(a)
    } else if let Some(a) = r.auth_role_grant_permission {
        Op::RoleGrantPermission(a)
    } else if let Some(a) = r.auth_role_revoke_permission {
        Op::RoleRevokePermission(a)
    } else if let Some(m) = r.cluster_member_attr_set {
        let a = m.attributes.unwrap_or_default();
        Op::MemberAttributes(MemberAttributes {
            id: m.member_id,
            name: a.name,
            client_urls: a.client_urls,
        })
    } else if let Some(v2) = r.v2 {
        // etcd's publish: PUT /0/members/<hex id>/attributes.
        let Some(hex) = v2
            .path
            .strip_prefix("/0/members/")
            .and_then(|p| p.strip_suffix("/attributes"))
            .filter(|_| v2.method == "PUT")
        else {
            return Ok(None);
        };
        let id = u64::from_str_radix(hex, 16).map_err(|_| format!("publish of member {hex}"))?;
        let a: EtcdAttributesJson =
            serde_json::from_str(&v2.val).map_err(|e| format!("publish JSON: {e}"))?;
        Op::MemberAttributes(MemberAttributes {
            id,
            name: a.name,
            client_urls: a.client_urls,
        })
    } else if r.range.is_some()
        || r.auth_user_get.is_some()
        || r.auth_user_list.is_some()
        || r.auth_role_list.is_some()
        || r.auth_role_get.is_some()
        || r.cluster_version_set.is_some()
        || r.downgrade_info_set.is_some()
    {
        return Ok(None);
    } else {
        return Err("a request of a kind this server does not know".into());
    };
    Ok(Some(RaftRequest {
        id,
        op: Some(op),
        header,
        origin: r.origin,
    }))
}

fn hash_password(password: &mut String, hashed: &mut String, keep: bool) -> Result<(), String> {
    if hashed.is_empty() && !password.is_empty() {
        *hashed =
            bcrypt::hash(password.as_str(), bcrypt::DEFAULT_COST).map_err(|e| e.to_string())?;
    }
    if !keep {
        password.clear();
    }
    Ok(())
}

/// Whether `dir` holds etcd's files rather than ours: etcd's database is a
/// file where ours is a directory, or an import stopped half-way.
pub(crate) fn needs_import(dir: &DataDir) -> bool {
    dir.db().is_file() || (!dir.root.join("member").exists() && dir.root.join(ETCD_ASIDE).exists())
}

/// Imports the etcd member in `dir` (see the module doc), resuming or
/// redoing an interrupted import.
pub(crate) fn import(dir: &DataDir) -> Result<(), StartError> {
    let root = &dir.root;
    let staging = root.join(STAGING);
    let member = root.join("member");
    let aside = root.join(ETCD_ASIDE);
    if !member.exists() && aside.exists() {
        // Crashed between steps 2 and 3.
        return commit(root, &staging);
    }
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|e| StartError::data_dir(&staging, e))?;
    }
    let started = std::time::Instant::now();
    tracing::info!(
        "data-dir" = %root.display(),
        "this data directory was written by etcd: importing it (etcd's files are kept in {})",
        aside.display()
    );
    build(dir, &DataDir::new(&staging))?;
    std::fs::rename(&member, &aside).map_err(|e| StartError::data_dir(&member, e))?;
    sync_dir(root)?;
    commit(root, &staging)?;
    tracing::info!(
        "data-dir" = %root.display(),
        "took-ms" = started.elapsed().as_millis() as u64,
        "imported etcd's data directory"
    );
    Ok(())
}

/// Steps 3 and 4.
fn commit(root: &Path, staging: &Path) -> Result<(), StartError> {
    let from = staging.join("member");
    std::fs::rename(&from, root.join("member")).map_err(|e| StartError::data_dir(&from, e))?;
    std::fs::rename(staging.join("version"), root.join("version"))
        .map_err(|e| StartError::data_dir(staging, e))?;
    sync_dir(root)?;
    std::fs::remove_dir_all(staging).map_err(|e| StartError::data_dir(staging, e))?;
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StartError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StartError::data_dir(dir, e))
}

/// Writes a store image with `write` into an unnamed temporary file in
/// `dir`'s `member/snap/` and installs it as `dir`'s (new) store: the
/// common step of this import and of `etcdutl snapshot restore`
/// (`v3_snapshot`). Returns what the restore installed and what `write`
/// returned.
pub(crate) fn install_image<T>(
    dir: &DataDir,
    write: impl FnOnce(BufWriter<File>) -> Result<(BufWriter<File>, T), StartError>,
) -> Result<(etcd_mvcc::ImageInfo, T), StartError> {
    let io = |e: std::io::Error| StartError::data_dir(&dir.root, e);
    let tmp = tempfile::tempfile_in(dir.snap()).map_err(io)?;
    let (image, written) = write(BufWriter::new(tmp))?;
    // into_inner flushes the buffer.
    let mut image = image.into_inner().map_err(|e| io(e.into_error()))?;
    image.rewind().map_err(io)?;
    let store = etcd_mvcc::Store::open(&dir.db(), etcd_mvcc::StoreOptions::default())?;
    let info = store.restore(BufReader::new(image))?;
    Ok((info, written))
}

/// Step 1: our data directory in `out`, from etcd's in `etcd`.
pub(crate) fn build(etcd: &DataDir, out: &DataDir) -> Result<(), StartError> {
    let db_path = etcd.db();
    let db = etcd_bbolt::Reader::open(&db_path).map_err(|e| StartError::data_dir(&db_path, e))?;
    db.check().map_err(|e| StartError::data_dir(&db_path, e))?;
    // Only the WAL's entries from the database's index on are kept (the
    // older ones are checked and dropped: etcd keeps up to 5 files of
    // 64 MB).
    let db_ci = crate::bbolt_layout::etcd_consistent_index(&db)
        .map_err(|e| StartError::data_dir(&db_path, e))?;
    let wal_dir = etcd.wal();
    let wal: EtcdWal =
        read_etcd_wal_from(&wal_dir, db_ci).map_err(|e| StartError::data_dir(&wal_dir, e))?;
    let md = wal
        .metadata
        .ok_or_else(|| StartError::data_dir(&wal_dir, "the WAL has no metadata record"))?;

    // The store, at CI.
    out.create()?;
    let (info, (imported, ci, members)) = install_image(out, |image| {
        let (image, imported, ci, members) =
            crate::bbolt_layout::etcd_member_db_to_image(&db, image)
                .map_err(|e| StartError::data_dir(&db_path, e))?;
        Ok((image, (imported, ci, members)))
    })?;
    drop(db);
    // etcd's legacy `etcdctl backup` strips the membership from the
    // database and cuts the configuration changes out of the log,
    // renumbering the entries after them, so the log can end below the
    // database's index. Its entries were all applied (a backup is of a
    // stopped member): the raft log restarts at the database's index, in
    // the last term. Such a directory is started with --force-new-cluster,
    // which adds this member to the empty membership.
    let backup = members.is_empty();
    let term = match wal.term_at(ci) {
        Some(t) => t,
        None if backup && wal.entries.last().is_none_or(|e| e.index < ci) => {
            tracing::info!(
                "consistent-index" = ci,
                "wal-last-index" = wal.entries.last().map_or(0, |e| e.index),
                "a backup written by etcdctl backup: its raft log restarts at the database's index"
            );
            wal.hard_state
                .term
                .max(wal.entries.last().map_or(0, |e| e.term))
        }
        None => {
            return Err(StartError::data_dir(
                &wal_dir,
                format!(
                "the WAL does not hold the database's consistent index {ci} (nor a snapshot at it)"
            ),
            ))
        }
    };
    if !backup && !members.iter().any(|m| m.id == md.node_id) {
        return Err(StartError::data_dir(
            &db_path,
            format!(
                "member {:x} of the WAL is not among the database's members",
                md.node_id
            ),
        ));
    }
    let mut learners: BTreeSet<u64> = members
        .iter()
        .filter(|m| m.is_learner)
        .map(|m| m.id)
        .collect();
    let tail: Vec<&EtcdEntry> = wal.entries.iter().filter(|e| e.index > ci).collect();
    if let Some(first) = tail.first() {
        if first.index != ci + 1 {
            return Err(StartError::data_dir(
                &wal_dir,
                format!(
                    "the WAL's entries after the database's index {ci} start at {}",
                    first.index
                ),
            ));
        }
    }
    let entries = tail
        .iter()
        .map(|e| {
            translate_entry(e, &mut learners)
                .map_err(|m| StartError::data_dir(&wal_dir, format!("entry {}: {m}", e.index)))
        })
        .collect::<Result<Vec<_>, _>>()?;

    // The raft log: a snapshot mark at CI, the entries after, etcd's hard state.
    let cluster = RaftCluster::new(members.clone());
    let meta = WalMetadata {
        member_id: md.node_id,
        cluster_id: md.cluster_id,
        members,
    }
    .encode_to_vec();
    let mut storage = etcd_raft_node::WalStorage::create_at(
        &out.wal(),
        etcd_wal::WalOptions::default(),
        &meta,
        cluster.conf_state(),
        ci,
        term,
    )?;
    let last = entries.last().map_or(ci, |e| e.index);
    let mut hs = etcd_raft_node::eraftpb::HardState::default();
    hs.term = wal.hard_state.term.max(term);
    hs.vote = wal.hard_state.vote;
    hs.commit = wal.hard_state.commit.clamp(ci, last);
    storage.persist(&entries, Some(&hs), true)?;
    drop(storage);
    tracing::info!(
        member = %crate::membership::format_id(md.node_id),
        cluster = %crate::membership::format_id(md.cluster_id),
        "consistent-index" = ci,
        term,
        revision = info.revision,
        "wal-entries-after" = entries.len(),
        "hard-state" = ?(hs.term, hs.vote, hs.commit),
        revisions = imported.revisions,
        leases = imported.leases,
        "imported etcd's state"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_raft_node::eraftpb::ConfChangeType;

    #[test]
    fn etcd_requests_become_ours() {
        let put = EtcdInternalRaftRequest {
            header: Some(EtcdRequestHeader {
                id: 42,
                username: "alice".into(),
                auth_revision: 3,
            }),
            put: Some(PutRequest {
                key: b"k".to_vec().into(),
                value: b"v".to_vec().into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = translate_normal(&put.encode_to_vec(), false)
            .unwrap()
            .unwrap();
        assert_eq!(r.id, 42);
        assert_eq!(r.header.unwrap().username, "alice");
        assert!(matches!(r.op, Some(Op::Put(p)) if &p.key[..] == b"k"));

        let publish = EtcdInternalRaftRequest {
            v2: Some(EtcdV2Request {
                id: 0,
                method: "PUT".into(),
                path: "/0/members/8e9e05c52164694d/attributes".into(),
                val: r#"{"name":"default","clientURLs":["http://localhost:2379"]}"#.into(),
            }),
            ..Default::default()
        };
        let r = translate_normal(&publish.encode_to_vec(), false)
            .unwrap()
            .unwrap();
        assert!(matches!(r.op, Some(Op::MemberAttributes(a))
            if a.id == 0x8e9e05c52164694d && a.name == "default"));

        // etcd 3.4's publish as it proposes it: a bare v2 Request.
        let bare = EtcdV2Request {
            id: 7,
            method: "PUT".into(),
            path: "/0/members/8e9e05c52164694d/attributes".into(),
            val: r#"{"name":"default","clientURLs":["http://localhost:2379"]}"#.into(),
        };
        let r = translate_normal(&bare.encode_to_vec(), false)
            .unwrap()
            .unwrap();
        assert!(matches!(r.op, Some(Op::MemberAttributes(a))
            if a.id == 0x8e9e05c52164694d && a.name == "default"));
        assert_eq!(r.id, 7);

        let version = EtcdInternalRaftRequest {
            v2: Some(EtcdV2Request {
                id: 0,
                method: "PUT".into(),
                path: "/0/version".into(),
                val: "3.4.0".into(),
            }),
            ..Default::default()
        };
        assert_eq!(
            translate_normal(&version.encode_to_vec(), false).unwrap(),
            None
        );

        let mut add = AuthUserAddRequest {
            name: "bob".into(),
            password: "pw".into(),
            ..Default::default()
        };
        add.password = "pw".into();
        let user = EtcdInternalRaftRequest {
            auth_user_add: Some(add),
            ..Default::default()
        };
        let r = translate_normal(&user.encode_to_vec(), false)
            .unwrap()
            .unwrap();
        let Some(Op::UserAdd(a)) = r.op else { panic!() };
        assert!(a.password.is_empty());
        assert!(bcrypt::verify("pw", &a.hashed_password).unwrap());
    }

    #[test]
    fn etcd_conf_changes_become_ours() {
        let json = br#"{"id":5,"peerURLs":["http://127.0.0.1:2380"],"isLearner":true}"#;
        let entry = |t: i32, ctx: &[u8]| EtcdEntry {
            entry_type: 1,
            term: 2,
            index: 9,
            data: EtcdConfChange {
                id: 1,
                change_type: t,
                node_id: 5,
                context: ctx.to_vec(),
            }
            .encode_to_vec(),
        };
        let mut learners = BTreeSet::new();
        // etcd's AddLearnerNode is 3; ours (raft-rs) is 2.
        let e = translate_entry(&entry(3, json), &mut learners).unwrap();
        let (cc, _, change) = crate::cluster::decode_conf_change(&e.data).unwrap();
        assert_eq!(cc.get_change_type(), ConfChangeType::AddLearnerNode);
        assert!(matches!(change, Change::Add(m) if m.is_learner && m.id == 5));
        assert_eq!((e.index, e.term), (9, 2));
        // An AddNode of a learner is a promote.
        let e = translate_entry(&entry(0, json), &mut learners).unwrap();
        let (_, _, change) = crate::cluster::decode_conf_change(&e.data).unwrap();
        assert_eq!(change, Change::Promote(5));
        assert!(learners.is_empty());
        // UpdateNode becomes a normal MemberUpdate entry.
        let e = translate_entry(&entry(2, json), &mut learners).unwrap();
        assert_eq!(e.get_entry_type(), eraftpb::EntryType::EntryNormal);
        let r = RaftRequest::decode(&e.data[..]).unwrap();
        assert!(matches!(r.op, Some(Op::MemberUpdate(u)) if u.id == 5));
    }
}

#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Entries from a damaged or hostile WAL: an error or an entry, never
    /// a panic (a seeded stream of random and mutated inputs; counts, not
    /// time).
    #[test]
    fn arbitrary_entry_bytes_do_not_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let seeds: Vec<Vec<u8>> = vec![
            EtcdInternalRaftRequest {
                put: Some(PutRequest {
                    key: b"k".to_vec().into(),
                    ..Default::default()
                }),
                ..Default::default()
            }
            .encode_to_vec(),
            EtcdConfChange {
                id: 1,
                change_type: 0,
                node_id: 2,
                context: br#"{"id":2,"peerURLs":["http://a:1"]}"#.to_vec(),
            }
            .encode_to_vec(),
        ];
        let mut learners = BTreeSet::new();
        for i in 0..20_000u32 {
            let mut data = if i % 2 == 0 {
                seeds[(i as usize / 2) % seeds.len()].clone()
            } else {
                (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect()
            };
            if !data.is_empty() {
                for _ in 0..rng.gen_range(0..4) {
                    let at = rng.gen_range(0..data.len());
                    data[at] ^= rng.gen::<u8>();
                }
            }
            let e = EtcdEntry {
                entry_type: rng.gen_range(0..3),
                term: 1,
                index: 1,
                data,
            };
            let _ = translate_entry(&e, &mut learners);
        }
    }
}
