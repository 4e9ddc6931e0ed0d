//! Auth on an embedded member with JWT tokens: a token carries the auth
//! revision it was issued at, so after a permission change every request
//! with an older token is refused with "revision of auth store is old"
//! (writes when applied, reads before and after reading), until the client
//! authenticates again.

use etcd_core::auth::TokenOptions;
use etcd_core::pb::authpb::{permission::Type as PermType, Permission};
use etcd_core::pb::etcdserverpb::{
    AuthRoleAddRequest, AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest,
    AuthUserAddRequest, AuthUserGrantRoleRequest, AuthenticateRequest, PutRequest, RangeRequest,
};
use etcd_core::{Config, Error, Etcd, RequestContext};
use std::time::Duration;

async fn login(e: &Etcd, user: &str) -> RequestContext {
    let r = AuthenticateRequest {
        name: user.into(),
        password: "pw".into(),
    };
    let token = e
        .authenticate(&RequestContext::default(), r)
        .await
        .unwrap()
        .token;
    RequestContext {
        token: Some(token),
        ..RequestContext::default()
    }
}

async fn put(e: &Etcd, ctx: &RequestContext, k: &str) -> Result<(), Error> {
    let p = PutRequest {
        key: k.as_bytes().to_vec().into(),
        value: b"v".to_vec().into(),
        ..Default::default()
    };
    e.put(ctx, p).await.map(|_| ())
}

async fn get(e: &Etcd, ctx: &RequestContext, k: &str) -> Result<(), Error> {
    let r = RangeRequest {
        key: k.as_bytes().to_vec().into(),
        ..Default::default()
    };
    e.range(ctx, r).await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_from_an_older_auth_revision_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, b"a shared HMAC secret").unwrap();
    let mut cfg = Config::single("a", dir.path().join("data"));
    cfg.heartbeat_interval = Duration::from_millis(10);
    cfg.election_timeout = Duration::from_millis(100);
    cfg.bcrypt_cost = 4;
    cfg.auth_token = TokenOptions::parse(&format!(
        "jwt,priv-key={},sign-method=HS256,ttl=5m",
        secret.display()
    ))
    .unwrap();
    let e = Etcd::start(cfg).unwrap();
    let local = &RequestContext::LOCAL;
    for u in ["root", "alice"] {
        let r = AuthUserAddRequest {
            name: u.into(),
            password: "pw".into(),
            ..Default::default()
        };
        e.user_add(local, r).await.unwrap();
    }
    e.role_add(local, AuthRoleAddRequest { name: "rw".into() })
        .await
        .unwrap();
    let perm = |k: &str| Permission {
        perm_type: PermType::Readwrite as i32,
        key: k.as_bytes().to_vec().into(),
        range_end: vec![].into(),
    };
    for k in ["a", "b"] {
        let g = AuthRoleGrantPermissionRequest {
            name: "rw".into(),
            perm: Some(perm(k)),
        };
        e.role_grant_permission(local, g).await.unwrap();
    }
    for (user, role) in [("root", "root"), ("alice", "rw")] {
        let r = AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        e.user_grant_role(local, r).await.unwrap();
    }
    e.auth_enable(local).await.unwrap();

    let old = login(&e, "alice").await;
    put(&e, &old, "a").await.unwrap();
    get(&e, &old, "a").await.unwrap();
    // A permission change (on another key) bumps the auth revision.
    let root = login(&e, "root").await;
    let revoke = AuthRoleRevokePermissionRequest {
        role: "rw".into(),
        key: b"b".to_vec().into(),
        range_end: vec![].into(),
    };
    e.role_revoke_permission(&root, revoke).await.unwrap();
    assert_eq!(put(&e, &old, "a").await, Err(Error::AuthOldRevision));
    assert_eq!(get(&e, &old, "a").await, Err(Error::AuthOldRevision));
    // Authenticating again is all it takes.
    let new = login(&e, "alice").await;
    put(&e, &new, "a").await.unwrap();
    assert_eq!(put(&e, &new, "b").await, Err(Error::PermissionDenied));
    // A token signed with another key is no token.
    let forged = RequestContext {
        token: Some(format!("{}x", new.token.as_deref().unwrap())),
        ..RequestContext::default()
    };
    assert_eq!(get(&e, &forged, "a").await, Err(Error::InvalidAuthToken));
    std::thread::spawn(move || e.stop()).join().unwrap();
}
