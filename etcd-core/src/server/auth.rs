//! The Auth API (etcd's `v3_server.go` auth calls): enable/disable,
//! authenticate, users and roles.
//!
//! Changes go through raft and are checked and applied by every member
//! (`apply_auth.rs`, `auth/store.rs`). Two things happen before proposing,
//! on the member serving the call, so that no password reaches the raft
//! log: UserAdd and UserChangePassword hash the password (bcrypt, on a
//! blocking thread, after checking the caller is an admin so nobody else
//! can make the member burn CPU), and Authenticate checks it. Reads (get,
//! list, status) are served locally after a ReadIndex round, with the
//! same permission rules etcd applies to them.

use super::etcd::Etcd;
use crate::apply::Applied;
use crate::auth::{hash_password, AuthInfo};
use crate::pb::etcdserverpb::*;
use crate::raft_request::{InternalAuthenticateRequest, Op};
use crate::request_context::RequestContext;
use crate::{Error, Result};

impl Etcd {
    /// Proposes an auth change; the response header is filled by the caller.
    async fn propose_auth(&self, ctx: &RequestContext, op: Op) -> Result<Option<ResponseHeader>> {
        match self.propose(ctx, op).await? {
            Applied::Auth => Ok(Some(self.header(self.store().current_revision()))),
            _ => unreachable!("an auth change applies as one"),
        }
    }

    /// Runs `f` (bcrypt) on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::Internal(format!("password task failed: {e}")))?
    }

    /// The bcrypt hash of a password to propose, made only for an admin
    /// (whom the entry needs anyway).
    async fn hash_for_proposal(&self, ctx: &RequestContext, password: &str) -> Result<String> {
        self.check_admin(ctx).await?;
        let (password, cost) = (password.to_string(), self.config().bcrypt_cost);
        self.blocking(move || hash_password(&password, cost)).await
    }

    /// Clears a password whose hash goes into the log instead, unless
    /// members running etcd 3.4 remain (a rolling migration): etcd 3.4
    /// applies only the password itself (it has no `hashedPassword`) and
    /// logs it, so the entry carries it for them, as their own would.
    fn keep_password_for_etcd_members(&self, password: &mut String) {
        if self.has_etcd_members() && !password.is_empty() {
            tracing::warn!(
                "members running etcd 3.4 are in the cluster: the password goes into the raft \
                 log for them (etcd 3.4 logs passwords in clear)"
            );
        } else {
            password.clear();
        }
    }

    /// Auth.AuthEnable: needs a user `root` with the role `root`.
    pub async fn auth_enable(&self, ctx: &RequestContext) -> Result<AuthEnableResponse> {
        let header = self
            .propose_auth(ctx, Op::AuthEnable(AuthEnableRequest {}))
            .await?;
        Ok(AuthEnableResponse { header })
    }

    /// Auth.AuthDisable.
    pub async fn auth_disable(&self, ctx: &RequestContext) -> Result<AuthDisableResponse> {
        let header = self
            .propose_auth(ctx, Op::AuthDisable(AuthDisableRequest {}))
            .await?;
        Ok(AuthDisableResponse { header })
    }

    /// Whether auth is enabled on this member now (its applied state; no
    /// read barrier).
    pub fn auth_enabled(&self) -> bool {
        self.auth().is_enabled()
    }

    /// Auth.AuthStatus (etcd 3.5): whether auth is on, and its revision.
    pub async fn auth_status(&self, ctx: &RequestContext) -> Result<AuthStatusResponse> {
        self.linearizable_read_notify(ctx).await?;
        Ok(AuthStatusResponse {
            header: Some(self.header(self.store().current_revision())),
            enabled: self.auth().is_enabled(),
            auth_revision: self.auth().revision(),
        })
    }

    /// Auth.Authenticate: checks the password here, then proposes the
    /// token through raft so that every member knows it; retried if the
    /// auth state changed in between (etcd's loop).
    pub async fn authenticate(
        &self,
        ctx: &RequestContext,
        r: AuthenticateRequest,
    ) -> Result<AuthenticateResponse> {
        self.linearizable_read_notify(ctx).await?;
        // A stale token must not stop its owner from getting a new one.
        let anonymous = RequestContext {
            token: None,
            cert_common_name: None,
            ..ctx.clone()
        };
        loop {
            let checked = {
                let (etcd, name, password) = (self.clone(), r.name.clone(), r.password.clone());
                self.blocking(move || etcd.auth().check_password(&name, &password))
                    .await
                    .inspect_err(|e| {
                        if *e != Error::AuthNotEnabled {
                            tracing::warn!(user = %r.name, "invalid authentication was requested: {e}");
                        }
                    })?
            };
            let op = Op::Authenticate(InternalAuthenticateRequest {
                name: r.name.clone(),
                simple_token: self.auth().gen_token_prefix(),
            });
            let token = match self.propose(&anonymous, op).await? {
                Applied::AuthToken(t) => t,
                _ => unreachable!("authenticate applies as a token"),
            };
            if checked == self.auth().revision() {
                return Ok(AuthenticateResponse {
                    header: Some(self.header(self.store().current_revision())),
                    token,
                });
            }
            tracing::info!("revision when password checked became stale; retrying");
        }
    }

    /// Auth.UserAdd.
    pub async fn user_add(
        &self,
        ctx: &RequestContext,
        mut r: AuthUserAddRequest,
    ) -> Result<AuthUserAddResponse> {
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        if !no_password && r.hashed_password.is_empty() {
            r.hashed_password = self.hash_for_proposal(ctx, &r.password).await?;
        }
        self.keep_password_for_etcd_members(&mut r.password);
        let header = self.propose_auth(ctx, Op::UserAdd(r)).await?;
        Ok(AuthUserAddResponse { header })
    }

    /// Auth.UserChangePassword.
    pub async fn user_change_password(
        &self,
        ctx: &RequestContext,
        mut r: AuthUserChangePasswordRequest,
    ) -> Result<AuthUserChangePasswordResponse> {
        if r.hashed_password.is_empty() {
            r.hashed_password = self.hash_for_proposal(ctx, &r.password).await?;
        }
        self.keep_password_for_etcd_members(&mut r.password);
        let header = self.propose_auth(ctx, Op::UserChangePassword(r)).await?;
        Ok(AuthUserChangePasswordResponse { header })
    }

    /// The caller of an auth read, after a ReadIndex round (etcd sends
    /// these through raft).
    async fn auth_reader(&self, ctx: &RequestContext) -> Result<Option<AuthInfo>> {
        self.linearizable_read_notify(ctx).await?;
        self.caller(ctx).await
    }

    /// Auth.UserGet: admins, and every user about itself.
    pub async fn user_get(
        &self,
        ctx: &RequestContext,
        r: AuthUserGetRequest,
    ) -> Result<AuthUserGetResponse> {
        if let Some(ai) = self.auth_reader(ctx).await? {
            if let Err(e) = self.auth().is_admin_permitted(&ai) {
                if ai.username != r.name {
                    return Err(e);
                }
            }
        }
        Ok(AuthUserGetResponse {
            header: Some(self.header(self.store().current_revision())),
            roles: self.auth().user_get(&r.name)?,
        })
    }

    /// Auth.UserList: admins only.
    pub async fn user_list(&self, ctx: &RequestContext) -> Result<AuthUserListResponse> {
        self.admin(self.auth_reader(ctx).await?)?;
        Ok(AuthUserListResponse {
            header: Some(self.header(self.store().current_revision())),
            users: self.auth().user_list(),
        })
    }

    /// Auth.RoleGet: admins, and users holding the role.
    pub async fn role_get(
        &self,
        ctx: &RequestContext,
        r: AuthRoleGetRequest,
    ) -> Result<AuthRoleGetResponse> {
        if let Some(ai) = self.auth_reader(ctx).await? {
            if let Err(e) = self.auth().is_admin_permitted(&ai) {
                if !self.auth().has_role(&ai.username, &r.role) {
                    return Err(e);
                }
            }
        }
        Ok(AuthRoleGetResponse {
            header: Some(self.header(self.store().current_revision())),
            perm: self.auth().role_get(&r.role)?,
        })
    }

    /// Auth.RoleList: admins only.
    pub async fn role_list(&self, ctx: &RequestContext) -> Result<AuthRoleListResponse> {
        self.admin(self.auth_reader(ctx).await?)?;
        Ok(AuthRoleListResponse {
            header: Some(self.header(self.store().current_revision())),
            roles: self.auth().role_list(),
        })
    }
}

/// The auth changes proposed as they come (no password to hash): each is
/// `pub async fn name(&self, ctx, request) -> Result<response>`.
macro_rules! auth_changes {
    ($($(#[$doc:meta])* $name:ident($req:ident) => $op:ident, $resp:ident;)*) => {
        impl Etcd {
            $(
                $(#[$doc])*
                pub async fn $name(&self, ctx: &RequestContext, r: $req) -> Result<$resp> {
                    let header = self.propose_auth(ctx, Op::$op(r)).await?;
                    Ok($resp { header })
                }
            )*
        }
    };
}

auth_changes! {
    /// Auth.UserDelete.
    user_delete(AuthUserDeleteRequest) => UserDelete, AuthUserDeleteResponse;
    /// Auth.UserGrantRole.
    user_grant_role(AuthUserGrantRoleRequest) => UserGrantRole, AuthUserGrantRoleResponse;
    /// Auth.UserRevokeRole.
    user_revoke_role(AuthUserRevokeRoleRequest) => UserRevokeRole, AuthUserRevokeRoleResponse;
    /// Auth.RoleAdd.
    role_add(AuthRoleAddRequest) => RoleAdd, AuthRoleAddResponse;
    /// Auth.RoleDelete.
    role_delete(AuthRoleDeleteRequest) => RoleDelete, AuthRoleDeleteResponse;
    /// Auth.RoleGrantPermission.
    role_grant_permission(AuthRoleGrantPermissionRequest) => RoleGrantPermission, AuthRoleGrantPermissionResponse;
    /// Auth.RoleRevokePermission.
    role_revoke_permission(AuthRoleRevokePermissionRequest) => RoleRevokePermission, AuthRoleRevokePermissionResponse;
}
