//! The Auth gRPC service over [`Etcd`]: each method unwraps the request,
//! calls the engine with the caller's [`crate::request_context`] and
//! translates errors (the engine does every check).

use crate::rpc::etcdserverpb::auth_server::Auth;
use crate::status::{learner_guard, to_status};
use etcd_core::pb::etcdserverpb::*;
use etcd_core::Etcd;
use tonic::{Request, Response, Status};

type Reply<T> = Result<Response<T>, Status>;

/// Auth service.
#[derive(Clone)]
pub struct AuthService(pub Etcd);

/// Calls `$method` of the engine with the request's context and body.
macro_rules! call {
    ($self:ident, $req:ident, $method:ident) => {{
        learner_guard(&$self.0)?;
        let ctx = crate::request_context::of(&$req);
        $self
            .0
            .$method(&ctx, $req.into_inner())
            .await
            .map(Response::new)
            .map_err(to_status)
    }};
    ($self:ident, $req:ident, $method:ident, no_body) => {{
        learner_guard(&$self.0)?;
        let ctx = crate::request_context::of(&$req);
        $self
            .0
            .$method(&ctx)
            .await
            .map(Response::new)
            .map_err(to_status)
    }};
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(&self, req: Request<AuthEnableRequest>) -> Reply<AuthEnableResponse> {
        call!(self, req, auth_enable, no_body)
    }

    async fn auth_disable(&self, req: Request<AuthDisableRequest>) -> Reply<AuthDisableResponse> {
        call!(self, req, auth_disable, no_body)
    }

    async fn auth_status(&self, req: Request<AuthStatusRequest>) -> Reply<AuthStatusResponse> {
        call!(self, req, auth_status, no_body)
    }

    async fn authenticate(&self, req: Request<AuthenticateRequest>) -> Reply<AuthenticateResponse> {
        call!(self, req, authenticate)
    }

    async fn user_add(&self, req: Request<AuthUserAddRequest>) -> Reply<AuthUserAddResponse> {
        call!(self, req, user_add)
    }

    async fn user_get(&self, req: Request<AuthUserGetRequest>) -> Reply<AuthUserGetResponse> {
        call!(self, req, user_get)
    }

    async fn user_list(&self, req: Request<AuthUserListRequest>) -> Reply<AuthUserListResponse> {
        call!(self, req, user_list, no_body)
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Reply<AuthUserDeleteResponse> {
        call!(self, req, user_delete)
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Reply<AuthUserChangePasswordResponse> {
        call!(self, req, user_change_password)
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Reply<AuthUserGrantRoleResponse> {
        call!(self, req, user_grant_role)
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Reply<AuthUserRevokeRoleResponse> {
        call!(self, req, user_revoke_role)
    }

    async fn role_add(&self, req: Request<AuthRoleAddRequest>) -> Reply<AuthRoleAddResponse> {
        call!(self, req, role_add)
    }

    async fn role_get(&self, req: Request<AuthRoleGetRequest>) -> Reply<AuthRoleGetResponse> {
        call!(self, req, role_get)
    }

    async fn role_list(&self, req: Request<AuthRoleListRequest>) -> Reply<AuthRoleListResponse> {
        call!(self, req, role_list, no_body)
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Reply<AuthRoleDeleteResponse> {
        call!(self, req, role_delete)
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Reply<AuthRoleGrantPermissionResponse> {
        call!(self, req, role_grant_permission)
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Reply<AuthRoleRevokePermissionResponse> {
        call!(self, req, role_revoke_permission)
    }
}
