//! Who is asking, and how long they will wait: passed with every public
//! engine call, the way etcd passes a `context.Context` carrying the
//! caller's token and deadline to `EtcdServer`.
//!
//! The gRPC layer (`etcd-server`) fills it from the request's metadata
//! (`grpc-timeout` today; the auth token and the client certificate's
//! common name once TLS and auth are built); a program embedding the
//! engine passes [`RequestContext::LOCAL`], which is what an etcd server's
//! own internal requests are: no user, no deadline beyond the server's.
//!
//! A write carries the user and auth revision into its raft entry
//! ([`crate::raft_request::RaftRequest::header`], etcd's `RequestHeader`
//! of `InternalRaftRequest`), so that permissions can be checked when the
//! entry is applied, against the auth state of that moment, as etcd does.

use std::time::Duration;

/// The caller of one engine call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// The authenticated user; empty for an unauthenticated caller and for
    /// the embedding program itself.
    pub user: String,
    /// The auth store revision the user's credentials were checked at
    /// (etcd's `RequestHeader.auth_revision`); 0 without auth.
    pub auth_revision: u64,
    /// Common name of the client's verified TLS certificate, when the
    /// connection presented one (etcd's identity under
    /// `--client-cert-auth` when no token is sent).
    pub cert_common_name: Option<String>,
    /// How long the caller waits at most (gRPC's `grpc-timeout`); the
    /// engine also never waits longer than its own request timeout.
    pub timeout: Option<Duration>,
}

impl RequestContext {
    /// The embedding program (or the server itself): no user, no deadline
    /// of its own.
    pub const LOCAL: RequestContext = RequestContext {
        user: String::new(),
        auth_revision: 0,
        cert_common_name: None,
        timeout: None,
    };

    /// The time the engine waits for this request: the caller's timeout,
    /// capped by the engine's own `limit`.
    pub fn wait_limit(&self, limit: Duration) -> Duration {
        self.timeout.map_or(limit, |t| t.min(limit))
    }

    /// What travels in the raft entry of a write (None when there is
    /// nothing to carry, so entries of unauthenticated callers stay as
    /// small as before).
    pub(crate) fn raft_header(&self) -> Option<crate::raft_request::RequestHeader> {
        (!self.user.is_empty() || self.auth_revision != 0).then(|| {
            crate::raft_request::RequestHeader {
                username: self.user.clone(),
                auth_revision: self.auth_revision,
            }
        })
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
    fn only_an_identified_caller_adds_a_header_to_raft_entries() {
        assert_eq!(RequestContext::LOCAL.raft_header(), None);
        let alice = RequestContext {
            user: "alice".into(),
            auth_revision: 4,
            ..RequestContext::default()
        };
        let h = alice.raft_header().unwrap();
        assert_eq!((h.username.as_str(), h.auth_revision), ("alice", 4));
    }
}
