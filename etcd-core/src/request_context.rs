//! Who is asking, and how long they will wait: passed with every public
//! engine call, the way etcd passes a `context.Context` carrying the
//! caller's token and deadline to `EtcdServer`.
//!
//! The gRPC layer (`etcd-server`) fills it from the request: the deadline
//! (`grpc-timeout`), the auth token (metadata `token`) and, under
//! `--client-cert-auth`, the common name of the client's verified TLS
//! certificate. The engine turns the credentials into a user and an auth
//! revision ([`crate::auth::AuthInfo`]) and checks permissions with them.
//! A program embedding the engine passes [`RequestContext::LOCAL`]: trusted,
//! as etcd's own internal requests are, so nothing is checked.
//!
//! A write carries the user and auth revision into its raft entry
//! ([`crate::raft_request::RaftRequest::header`], etcd's `RequestHeader`
//! of `InternalRaftRequest`), so that permissions are checked when the
//! entry is applied, against the auth state of that moment, as etcd does.

use std::time::Duration;

/// The caller of one engine call. [`Default`] is a caller from the network
/// without credentials; [`RequestContext::LOCAL`] is the embedding program.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// The auth token from Authenticate (gRPC metadata `token`).
    pub token: Option<String>,
    /// Common name of the client's verified TLS certificate: its identity
    /// when no token is sent (set only under `--client-cert-auth`, as
    /// etcd uses it only then).
    pub cert_common_name: Option<String>,
    /// How long the caller waits at most (gRPC's `grpc-timeout`); the
    /// engine also never waits longer than its own request timeout.
    pub timeout: Option<Duration>,
    /// The embedding program or the server itself: no credentials needed,
    /// no permission checked. Never set for a request from the network.
    pub trusted: bool,
}

impl RequestContext {
    /// The embedding program (or the server itself): trusted, no deadline
    /// of its own.
    pub const LOCAL: RequestContext = RequestContext {
        token: None,
        cert_common_name: None,
        timeout: None,
        trusted: true,
    };

    /// [`RequestContext::LOCAL`] with `ctx`'s deadline: the server acting
    /// on its own while serving `ctx`.
    pub fn with_timeout(&self, ctx: &RequestContext) -> RequestContext {
        RequestContext {
            timeout: ctx.timeout,
            ..self.clone()
        }
    }

    /// The time the engine waits for this request: the caller's timeout,
    /// capped by the engine's own `limit`.
    pub fn wait_limit(&self, limit: Duration) -> Duration {
        self.timeout.map_or(limit, |t| t.min(limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caller_deadline_never_exceeds_the_engine_limit() {
        let limit = Duration::from_secs(7);
        assert_eq!(RequestContext::LOCAL.wait_limit(limit), limit);
        let short = RequestContext {
            timeout: Some(Duration::from_millis(300)),
            ..RequestContext::default()
        };
        assert_eq!(short.wait_limit(limit), Duration::from_millis(300));
        let long = RequestContext {
            timeout: Some(Duration::from_secs(60)),
            ..RequestContext::default()
        };
        assert_eq!(long.wait_limit(limit), limit);
    }

    #[test]
    #[allow(clippy::assertions_on_constants)] // what the test pins down
    fn only_the_embedding_program_is_trusted() {
        assert!(RequestContext::LOCAL.trusted);
        assert!(!RequestContext::default().trusted);
    }
}
