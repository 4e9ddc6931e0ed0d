//! Permission checks where etcd makes them (etcd's
//! `etcdserver/apply_auth.go`), and applying the Auth requests.
//!
//! A write is checked when its entry is applied, against the auth state of
//! that moment and the caller in the entry's header (`RaftRequest.header`):
//! a permission revoked between proposing and applying stops the write.
//! Reads are checked by the member serving them, before and after reading
//! (see `server/kv.rs`). An entry without a header is the server's own
//! (lease expiry, checkpoints) and is not checked.
//!
//! | request | needs |
//! |---|---|
//! | Put | WRITE on the key; with `prev_kv` also READ; with a lease, WRITE on every key already attached to it |
//! | DeleteRange | WRITE on the range; with `prev_kv` also READ |
//! | Txn | READ on every compare's range, and each op on both branches as above (nested txns too) |
//! | Range, Watch | READ on the range |
//! | LeaseRevoke | WRITE on every attached key |
//! | auth management, Defragment, Snapshot, Hash(KV), membership | the root role |
//! | UserGet / RoleGet | the root role, or asking about oneself / one's own role |
//!
//! One deliberate difference from etcd 3.4: ops of a nested txn are
//! checked too (3.4 skipped them, so a nested txn could write anywhere;
//! etcd 3.5 checks them as we do).

use crate::apply::Applied;
use crate::auth::{AuthInfo, AuthStore};
use crate::lessor::Lessor;
use crate::pb::authpb::permission::Type as PermType;
use crate::pb::etcdserverpb::{request_op::Request, RequestOp, TxnRequest};
use crate::raft_request::{Op, RaftRequest};
use crate::{Error, Result};
use etcd_mvcc::Store;

/// Checks the permissions a committed request needs (see the table).
pub(crate) fn check(auth: &AuthStore, lessor: &Lessor, req: &RaftRequest) -> Result<()> {
    let (Some(h), Some(op)) = (&req.header, &req.op) else {
        return Ok(());
    };
    let ai = AuthInfo {
        username: h.username.clone(),
        revision: h.auth_revision,
    };
    if needs_admin(op) {
        return auth.is_admin_permitted(&ai);
    }
    match op {
        Op::Put(p) => {
            auth.is_op_permitted(&ai, PermType::Write, &p.key, &[])?;
            check_lease_puts(auth, lessor, &ai, p.lease)?;
            if p.prev_kv {
                auth.is_op_permitted(&ai, PermType::Read, &p.key, &[])?;
            }
            Ok(())
        }
        Op::DeleteRange(d) => {
            auth.is_op_permitted(&ai, PermType::Write, &d.key, &d.range_end)?;
            if d.prev_kv {
                auth.is_op_permitted(&ai, PermType::Read, &d.key, &d.range_end)?;
            }
            Ok(())
        }
        Op::Txn(t) => check_txn(auth, &ai, t),
        Op::LeaseRevoke(r) => check_lease_puts(auth, lessor, &ai, r.id),
        _ => Ok(()),
    }
}

/// READ on a range (Range, Watch).
pub(crate) fn check_range(auth: &AuthStore, ai: &AuthInfo, key: &[u8], end: &[u8]) -> Result<()> {
    auth.is_op_permitted(ai, PermType::Read, key, end)
}

/// etcd's `checkTxnAuth`, descending into nested txns.
pub(crate) fn check_txn(auth: &AuthStore, ai: &AuthInfo, t: &TxnRequest) -> Result<()> {
    for c in &t.compare {
        auth.is_op_permitted(ai, PermType::Read, &c.key, &c.range_end)?;
    }
    check_ops(auth, ai, &t.success)?;
    check_ops(auth, ai, &t.failure)
}

fn check_ops(auth: &AuthStore, ai: &AuthInfo, ops: &[RequestOp]) -> Result<()> {
    for op in ops {
        match &op.request {
            Some(Request::RequestRange(r)) => {
                auth.is_op_permitted(ai, PermType::Read, &r.key, &r.range_end)?
            }
            Some(Request::RequestPut(p)) => {
                auth.is_op_permitted(ai, PermType::Write, &p.key, &[])?;
                if p.prev_kv {
                    auth.is_op_permitted(ai, PermType::Read, &p.key, &[])?;
                }
            }
            Some(Request::RequestDeleteRange(d)) => {
                if d.prev_kv {
                    auth.is_op_permitted(ai, PermType::Read, &d.key, &d.range_end)?;
                }
                auth.is_op_permitted(ai, PermType::Write, &d.key, &d.range_end)?;
            }
            Some(Request::RequestTxn(t)) => check_txn(auth, ai, t)?,
            None => {}
        }
    }
    Ok(())
}

/// A lease's keys may only be touched (revoked, or joined by another key)
/// by a user who may write all of them.
fn check_lease_puts(auth: &AuthStore, lessor: &Lessor, ai: &AuthInfo, lease: i64) -> Result<()> {
    if lease == 0 || !auth.is_enabled() {
        return Ok(());
    }
    for key in lessor.keys(lease) {
        auth.is_op_permitted(ai, PermType::Write, &key, &[])?;
    }
    Ok(())
}

/// etcd's `needAdminPermission`.
fn needs_admin(op: &Op) -> bool {
    matches!(
        op,
        Op::AuthEnable(_)
            | Op::AuthDisable(_)
            | Op::UserAdd(_)
            | Op::UserDelete(_)
            | Op::UserChangePassword(_)
            | Op::UserGrantRole(_)
            | Op::UserRevokeRole(_)
            | Op::RoleAdd(_)
            | Op::RoleDelete(_)
            | Op::RoleGrantPermission(_)
            | Op::RoleRevokePermission(_)
    )
}

/// Whether `op` is an Auth request (applied by [`apply`]).
pub(crate) fn is_auth_op(op: &Op) -> bool {
    needs_admin(op) || matches!(op, Op::Authenticate(_))
}

/// Applies an Auth request at raft `index` (the permission check already
/// passed). The consistent index is persisted whatever the outcome.
pub(crate) fn apply(
    auth: &AuthStore,
    store: &Store,
    index: u64,
    op: &Op,
    bcrypt_cost: u32,
) -> Result<Applied> {
    let mut w = store.write();
    let r = match op {
        Op::AuthEnable(_) => auth.enable(&mut w).map(|()| Applied::Auth),
        Op::AuthDisable(_) => {
            auth.disable(&mut w);
            Ok(Applied::Auth)
        }
        Op::Authenticate(a) => auth
            .authenticate(&a.name, &a.simple_token, index)
            .map(Applied::AuthToken),
        Op::UserAdd(u) => auth
            .user_add(&mut w, u, bcrypt_cost)
            .map(|()| Applied::Auth),
        Op::UserDelete(u) => auth.user_delete(&mut w, &u.name).map(|()| Applied::Auth),
        Op::UserChangePassword(u) => {
            let hashed = if u.hashed_password.is_empty() {
                crate::auth::hash_password(&u.password, bcrypt_cost)
            } else {
                Ok(u.hashed_password.clone())
            };
            hashed
                .and_then(|h| auth.user_change_password(&mut w, &u.name, h))
                .map(|()| Applied::Auth)
        }
        Op::UserGrantRole(g) => auth
            .user_grant_role(&mut w, &g.user, &g.role)
            .map(|()| Applied::Auth),
        Op::UserRevokeRole(r) => auth
            .user_revoke_role(&mut w, &r.name, &r.role)
            .map(|()| Applied::Auth),
        Op::RoleAdd(r) => auth.role_add(&mut w, &r.name).map(|()| Applied::Auth),
        Op::RoleDelete(r) => auth.role_delete(&mut w, &r.role).map(|()| Applied::Auth),
        Op::RoleGrantPermission(g) => auth
            .role_grant_permission(&mut w, g)
            .map(|()| Applied::Auth),
        Op::RoleRevokePermission(r) => auth
            .role_revoke_permission(&mut w, r)
            .map(|()| Applied::Auth),
        _ => Err(Error::Internal("not an auth request".into())),
    };
    // A failed request wrote nothing to `w` (every change checks first).
    // The in-memory auth state already changed: failing to persist it
    // must not leave the member running with a state its disk lacks.
    if let Err(e) = w.end(index) {
        panic!("cannot persist the auth change at index {index}: {e}");
    }
    r
}
