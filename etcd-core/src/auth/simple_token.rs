//! Simple tokens (etcd's `auth/simple_token.go`, `--auth-token simple`):
//! `<16 random letters>.<raft index>`, known only to the members that
//! applied the Authenticate entry that made them.
//!
//! The member serving Authenticate draws the random prefix and proposes it;
//! every member applying the entry records `prefix.index -> user`, so a
//! client may present the token to any member. A member that has not
//! applied that index yet waits for it first ([`token_index`] tells which
//! index), as etcd's `isValidSimpleToken` does.
//!
//! A token lives `--auth-token-ttl` past its last use (etcd: 300 s,
//! reset on every use), and dies with its user (deleted or password
//! changed) and when auth is disabled. Expired tokens are dropped when
//! looked up and whenever a new token is recorded, so memory stays bounded
//! by the tokens used within one TTL.

use crate::lessor::Clock;
use parking_lot::Mutex;
use rand::Rng as _;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
const PREFIX_LEN: usize = 16;

/// The random part of a new token.
pub(crate) fn gen_prefix() -> String {
    let mut rng = rand::thread_rng();
    (0..PREFIX_LEN)
        .map(|_| LETTERS[rng.gen_range(0..LETTERS.len())] as char)
        .collect()
}

/// The raft index a simple token was made at; None if `token` is not
/// shaped like one.
pub(crate) fn token_index(token: &str) -> Option<u64> {
    let (_, index) = token.split_once('.')?;
    if index.contains('.') {
        return None;
    }
    index.parse().ok()
}

/// The tokens this member knows.
pub(crate) struct SimpleTokens {
    /// Time source for expiry (the member's monotonic clock; a fake one in
    /// tests and the simulation).
    clock: Arc<dyn Clock>,
    /// `--auth-token-ttl`.
    ttl: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Tokens are only recorded while auth is enabled (etcd's keeper).
    enabled: bool,
    /// token -> (user, deadline on `clock`).
    tokens: HashMap<String, (String, Duration)>,
}

impl SimpleTokens {
    pub(crate) fn new(clock: Arc<dyn Clock>, ttl: Duration) -> SimpleTokens {
        SimpleTokens {
            clock,
            ttl,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub(crate) fn enable(&self) {
        self.inner.lock().enabled = true;
    }

    /// Forgets every token.
    pub(crate) fn disable(&self) {
        let mut g = self.inner.lock();
        g.enabled = false;
        g.tokens.clear();
    }

    /// Records the token of `user` made at raft `index` from `prefix`.
    pub(crate) fn assign(&self, user: &str, prefix: &str, index: u64) -> String {
        let token = format!("{prefix}.{index}");
        let now = self.clock.now();
        let mut g = self.inner.lock();
        if g.enabled {
            g.tokens.retain(|_, (_, deadline)| *deadline >= now);
            g.tokens
                .insert(token.clone(), (user.to_string(), now + self.ttl));
        }
        token
    }

    /// The user of a live token, extending its life.
    pub(crate) fn user(&self, token: &str) -> Option<String> {
        let now = self.clock.now();
        let mut g = self.inner.lock();
        let (user, deadline) = g.tokens.get_mut(token)?;
        if *deadline < now {
            g.tokens.remove(token);
            return None;
        }
        *deadline = now + self.ttl;
        Some(user.clone())
    }

    /// Forgets the tokens of `user`.
    pub(crate) fn invalidate_user(&self, user: &str) {
        self.inner.lock().tokens.retain(|_, (u, _)| u != user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lessor::FakeClock;

    #[test]
    fn tokens_live_ttl_past_their_last_use() {
        let clock = Arc::new(FakeClock::new());
        let t = SimpleTokens::new(clock.clone(), Duration::from_secs(10));
        // Disabled: nothing is recorded.
        let tok = t.assign("alice", "abc", 7);
        assert_eq!(tok, "abc.7");
        assert_eq!(t.user(&tok), None);
        t.enable();
        let tok = t.assign("alice", &gen_prefix(), 8);
        assert_eq!(token_index(&tok), Some(8));
        clock.advance(Duration::from_secs(9));
        assert_eq!(t.user(&tok).as_deref(), Some("alice"));
        clock.advance(Duration::from_secs(9));
        assert_eq!(t.user(&tok).as_deref(), Some("alice"), "use extends");
        clock.advance(Duration::from_secs(11));
        assert_eq!(t.user(&tok), None, "expired");
        let bob = t.assign("bob", "x", 9);
        t.invalidate_user("bob");
        assert_eq!(t.user(&bob), None);
        let carol = t.assign("carol", "y", 10);
        t.disable();
        assert_eq!(t.user(&carol), None);
    }

    #[test]
    fn token_shapes() {
        assert_eq!(token_index("abc.12"), Some(12));
        for bad in ["abc", "abc.", "a.b.1", "abc.-1", "abc.x"] {
            assert_eq!(token_index(bad), None, "{bad}");
        }
        let p = gen_prefix();
        assert_eq!(p.len(), PREFIX_LEN);
        assert!(p.bytes().all(|b| b.is_ascii_alphabetic()));
    }
}
