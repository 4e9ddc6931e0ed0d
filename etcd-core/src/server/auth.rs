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
            self.check_admin(ctx).await?;
            let (password, cost) = (std::mem::take(&mut r.password), self.config().bcrypt_cost);
            r.hashed_password = self
                .blocking(move || hash_password(&password, cost))
                .await?;
        }
        r.password.clear();
        let header = self.propose_auth(ctx, Op::UserAdd(r)).await?;
        Ok(AuthUserAddResponse { header })
    }

    /// Auth.UserDelete.
    pub async fn user_delete(
        &self,
        ctx: &RequestContext,
        r: AuthUserDeleteRequest,
    ) -> Result<AuthUserDeleteResponse> {
        let header = self.propose_auth(ctx, Op::UserDelete(r)).await?;
        Ok(AuthUserDeleteResponse { header })
    }

    /// Auth.UserChangePassword.
    pub async fn user_change_password(
        &self,
        ctx: &RequestContext,
        mut r: AuthUserChangePasswordRequest,
    ) -> Result<AuthUserChangePasswordResponse> {
        if r.hashed_password.is_empty() {
            self.check_admin(ctx).await?;
            let (password, cost) = (std::mem::take(&mut r.password), self.config().bcrypt_cost);
            r.hashed_password = self
                .blocking(move || hash_password(&password, cost))
                .await?;
        }
        r.password.clear();
        let header = self.propose_auth(ctx, Op::UserChangePassword(r)).await?;
        Ok(AuthUserChangePasswordResponse { header })
    }

    /// Auth.UserGrantRole.
    pub async fn user_grant_role(
        &self,
        ctx: &RequestContext,
        r: AuthUserGrantRoleRequest,
    ) -> Result<AuthUserGrantRoleResponse> {
        let header = self.propose_auth(ctx, Op::UserGrantRole(r)).await?;
        Ok(AuthUserGrantRoleResponse { header })
    }

    /// Auth.UserRevokeRole.
    pub async fn user_revoke_role(
        &self,
        ctx: &RequestContext,
        r: AuthUserRevokeRoleRequest,
    ) -> Result<AuthUserRevokeRoleResponse> {
        let header = self.propose_auth(ctx, Op::UserRevokeRole(r)).await?;
        Ok(AuthUserRevokeRoleResponse { header })
    }

    /// Auth.RoleAdd.
    pub async fn role_add(
        &self,
        ctx: &RequestContext,
        r: AuthRoleAddRequest,
    ) -> Result<AuthRoleAddResponse> {
        let header = self.propose_auth(ctx, Op::RoleAdd(r)).await?;
        Ok(AuthRoleAddResponse { header })
    }

    /// Auth.RoleDelete.
    pub async fn role_delete(
        &self,
        ctx: &RequestContext,
        r: AuthRoleDeleteRequest,
    ) -> Result<AuthRoleDeleteResponse> {
        let header = self.propose_auth(ctx, Op::RoleDelete(r)).await?;
        Ok(AuthRoleDeleteResponse { header })
    }

    /// Auth.RoleGrantPermission.
    pub async fn role_grant_permission(
        &self,
        ctx: &RequestContext,
        r: AuthRoleGrantPermissionRequest,
    ) -> Result<AuthRoleGrantPermissionResponse> {
        let header = self.propose_auth(ctx, Op::RoleGrantPermission(r)).await?;
        Ok(AuthRoleGrantPermissionResponse { header })
    }

    /// Auth.RoleRevokePermission.
    pub async fn role_revoke_permission(
        &self,
        ctx: &RequestContext,
        r: AuthRoleRevokePermissionRequest,
    ) -> Result<AuthRoleRevokePermissionResponse> {
        let header = self.propose_auth(ctx, Op::RoleRevokePermission(r)).await?;
        Ok(AuthRoleRevokePermissionResponse { header })
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
        if let Some(ai) = self.auth_reader(ctx).await? {
            self.auth().is_admin_permitted(&ai)?;
        }
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
        if let Some(ai) = self.auth_reader(ctx).await? {
            self.auth().is_admin_permitted(&ai)?;
        }
        Ok(AuthRoleListResponse {
            header: Some(self.header(self.store().current_revision())),
            roles: self.auth().role_list(),
        })
    }
}
