//! etcd's v3 authentication: users with bcrypt passwords, roles with key
//! permissions, tokens, and the checks requests go through (etcd's `auth`
//! package).
//!
//! How a request gets its identity ([`crate::Etcd`] resolves it from the
//! [`crate::RequestContext`], as etcd's `AuthInfoFromCtx`):
//! 1. a token (gRPC metadata `token`, from Authenticate) names the user:
//!    a simple token at the member's current auth revision, a JWT at the
//!    revision it was issued at;
//! 2. otherwise, with `--client-cert-auth`, the common name of the verified
//!    client certificate, at the current revision;
//! 3. otherwise the caller has no identity: with auth enabled, anything
//!    needing a permission fails with "user name is empty".
//!
//! The embedding program ([`crate::RequestContext::LOCAL`]) and the
//! server's own requests are trusted and never checked.
//!
//! Files: `store.rs` (the state and its changes), `range_perm_cache.rs`
//! (merged permissions and range checks), `simple_token.rs`, `jwt.rs`,
//! `options.rs` (`--auth-token`). Where each check happens is in
//! `apply_auth.rs`.

mod jwt;
mod options;
mod range_perm_cache;
mod simple_token;
mod store;

pub use jwt::{system_unix_clock, UnixClock};
pub use options::TokenOptions;
#[cfg(any(test, feature = "testing"))]
pub(crate) use simple_token::SimpleTokens;
pub(crate) use store::{hash_password, AuthStore, Tokens};
pub use store::{AuthInfo, ROOT};
pub(crate) use store::{ROLE_PREFIX, USER_PREFIX};
