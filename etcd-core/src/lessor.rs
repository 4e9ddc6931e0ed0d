//! The lease manager (etcd's `lease/lessor.go`).
//!
//! A lease is `(id, ttl)` plus the set of keys attached to it. Every member
//! keeps the same set of leases and attachments: they change only when a
//! committed raft entry is applied (grant, revoke, checkpoint, and puts or
//! deletes of keys with a lease). Expiry is the *primary*'s business (the
//! raft leader): only the primary keeps deadlines; it proposes a revoke
//! through raft for each expired lease, and serves keepalives.
//!
//! Invariants:
//! - `key_lease[k] == id` exactly when `k` is in `leases[id].keys`;
//! - a lease has a deadline (`expiry = Some`) only while this lessor is
//!   primary; a non-primary lease never expires ("forever", as in etcd);
//! - `expiry_queue` holds exactly one entry `(next_check, id)` per lease
//!   with a deadline; `checkpoint_queue` at most one per lease;
//! - all times come from the injected [`Clock`]; nothing here reads the
//!   wall clock, so tests drive time with a fake clock
//!   (`FakeClock`, test support).
//!
//! Expiry is rate-limited like etcd (`leaseRevokeRate` = 1000 revokes per
//! second): [`Lessor::find_expired`] hands out at most `limit` leases per
//! call, the caller (the ticker in `server.rs`) sizes `limit` from the
//! rate and its tick. A lease handed out and not revoked within
//! [`EXPIRED_LEASE_RETRY`] (its revoke was lost, e.g. on a leader change) is
//! handed out again.
//!
//! Checkpoints: a primary schedules a checkpoint `checkpoint_interval`
//! after a lease is granted, promoted or checkpointed, when the lease has
//! more than that interval to live; a due checkpoint proposes the lease's
//! remaining TTL through raft. Applying it records `remaining_ttl` on every
//! member (and on disk), so the next primary (or this member after a
//! restart) counts from the remaining TTL instead of the full TTL. A renew
//! clears it again (the caller proposes a checkpoint of 0).
//!
//! Worked example (min TTL 2 s, checkpoint interval 300 s, `extend` 1 s):
//!
//! ```text
//! t=0     grant(7, ttl 600) while primary -> expiry 600, checkpoint at 300
//! t=300   due_checkpoints -> [(7, 300)]; applying it sets remaining_ttl 300
//! t=310   member restarts; restore -> lease 7 ttl 600, remaining 300, no expiry
//! t=312   promote(1 s) -> expiry 312 + 1 + 300 = 613
//! t=400   renew(7) -> expiry 1000, ttl 600; asks to clear remaining_ttl
//! ```

use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// etcd's `MaxLeaseTTL`: larger TTLs are refused ("too large lease TTL").
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;
/// etcd's `leaseRevokeRate`: expired leases revoked per second at most.
pub const LEASE_REVOKE_RATE: usize = 1000;
/// etcd's `expiredLeaseRetryInterval`: an expired lease handed out for
/// revoking is handed out again after this long if it still exists.
pub const EXPIRED_LEASE_RETRY: Duration = Duration::from_secs(3);
/// etcd's `maxLeaseCheckpointBatchSize`.
pub const MAX_CHECKPOINT_BATCH: usize = 1000;
/// etcd's default `--experimental-lease-checkpoint-interval`.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);
/// TTL of the lease a Lock or Campaign request without a lease gets
/// (clientv3 concurrency's default session TTL).
pub const DEFAULT_SESSION_TTL: i64 = 60;

/// A monotonic clock. `now` is the time since an arbitrary fixed origin.
pub trait Clock: Send + Sync {
    /// The current monotonic time.
    fn now(&self) -> Duration;
}

/// The real monotonic clock ([`Instant`] since creation).
pub struct MonotonicClock(Instant);

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> MonotonicClock {
        MonotonicClock(Instant::now())
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock that only moves when told to (test support: `testing` feature).
#[cfg(any(test, feature = "testing"))]
#[derive(Default)]
pub struct FakeClock(Mutex<Duration>);

#[cfg(any(test, feature = "testing"))]
impl FakeClock {
    /// A fake clock at time zero.
    pub fn new() -> FakeClock {
        FakeClock::default()
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        *self.0.lock() += d;
    }
}

#[cfg(any(test, feature = "testing"))]
impl Clock for FakeClock {
    fn now(&self) -> Duration {
        *self.0.lock()
    }
}

/// The on-disk record of a lease in `Bucket::Lease` (etcd's
/// `leasepb.Lease`), keyed by the id as 8 big-endian bytes.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct LeaseRecord {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// The key of a lease in `Bucket::Lease`.
pub(crate) fn record_key(id: i64) -> [u8; 8] {
    id.to_be_bytes()
}

/// What [`Lessor::renew`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Renew {
    /// Renewed: the lease's TTL; `clear_checkpoint` asks the caller to
    /// propose a checkpoint of 0 (the lease had a remaining TTL recorded).
    Renewed {
        /// The TTL the lease was renewed for.
        ttl: i64,
        /// Whether a checkpoint of 0 is to be proposed.
        clear_checkpoint: bool,
    },
    /// No such lease.
    NotFound,
    /// The lease expired and waits for its revoke: ask again once it is
    /// applied (then the answer is `NotFound`).
    Expired,
    /// This lessor is not the primary.
    NotPrimary,
}

/// A lease as seen by LeaseTimeToLive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    /// Whole seconds left (truncated, like etcd); `i64::MAX`-ish when the
    /// lease has no deadline (not primary).
    pub remaining: i64,
    /// The TTL it was granted with (raised to the minimum).
    pub granted: i64,
    /// Attached keys, sorted.
    pub keys: Vec<Bytes>,
}

struct Lease {
    ttl: i64,
    /// Checkpointed remaining TTL in seconds; 0 = none.
    remaining_ttl: i64,
    /// Deadline; `None` = forever (not primary).
    expiry: Option<Duration>,
    /// Time of this lease's entry in the expiry queue.
    next_check: Option<Duration>,
    /// Time of this lease's entry in the checkpoint queue.
    next_checkpoint: Option<Duration>,
    keys: BTreeSet<Bytes>,
}

impl Lease {
    /// The TTL counted from on refresh: the checkpointed remaining TTL if
    /// any, else the full TTL.
    fn remaining_or_ttl(&self) -> i64 {
        if self.remaining_ttl > 0 {
            self.remaining_ttl
        } else {
            self.ttl
        }
    }
}

#[derive(Default)]
struct State {
    leases: HashMap<i64, Lease>,
    key_lease: HashMap<Bytes, i64>,
    primary: bool,
    expiry_queue: BTreeSet<(Duration, i64)>,
    checkpoint_queue: BTreeSet<(Duration, i64)>,
}

/// The lease manager. Thread-safe; shared by the apply thread, the lease
/// ticker and the request handlers.
pub struct Lessor {
    clock: Arc<dyn Clock>,
    min_ttl: i64,
    checkpoint_interval: Duration,
    state: Mutex<State>,
}

/// etcd's minimum lease TTL: 1.5 election timeouts, rounded up to seconds.
pub fn min_lease_ttl(election_timeout: Duration) -> i64 {
    let ms = election_timeout.as_millis() as i64 * 3 / 2;
    (ms + 999) / 1000
}

impl Lessor {
    /// An empty lessor, not primary.
    pub fn new(clock: Arc<dyn Clock>, min_ttl: i64, checkpoint_interval: Duration) -> Lessor {
        Lessor {
            clock,
            min_ttl: min_ttl.max(1),
            checkpoint_interval,
            state: Mutex::new(State::default()),
        }
    }

    /// The minimum TTL; smaller requested TTLs are raised to it.
    pub fn min_ttl(&self) -> i64 {
        self.min_ttl
    }

    /// The TTL a grant of `ttl` gets.
    pub fn effective_ttl(&self, ttl: i64) -> i64 {
        ttl.max(self.min_ttl)
    }

    /// Whether lease `id` exists.
    pub fn exists(&self, id: i64) -> bool {
        self.state.lock().leases.contains_key(&id)
    }

    /// Whether this lessor is the primary (the leader's).
    pub fn is_primary(&self) -> bool {
        self.state.lock().primary
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.state.lock().leases.len()
    }

    /// Whether there are no leases.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rebuilds the leases from their records and the keys' lease fields
    /// (at start, and after a snapshot image replaced the store: whatever
    /// was known before is dropped). A key naming an unknown lease is
    /// reported and left unattached, as etcd does. A primary stays primary
    /// and starts the restored leases' clocks afresh.
    pub(crate) fn restore(&self, records: Vec<LeaseRecord>, attached: Vec<(Bytes, i64)>) {
        let mut st = self.state.lock();
        let primary = st.primary;
        *st = State::default();
        for r in records {
            st.leases.insert(
                r.id,
                Lease {
                    ttl: r.ttl.max(self.min_ttl),
                    remaining_ttl: r.remaining_ttl,
                    expiry: None,
                    next_check: None,
                    next_checkpoint: None,
                    keys: BTreeSet::new(),
                },
            );
        }
        for (key, id) in attached {
            attach(&mut st, id, key);
        }
        drop(st);
        if primary {
            self.promote(Duration::ZERO);
        }
    }

    // ----- apply side: called after the entry's store batch is committed ---

    /// Applies a committed grant (the id was checked to be free).
    pub(crate) fn grant(&self, id: i64, ttl: i64) {
        let now = self.clock.now();
        let mut st = self.state.lock();
        let primary = st.primary;
        let lease = st.leases.entry(id).or_insert(Lease {
            ttl: self.effective_ttl(ttl),
            remaining_ttl: 0,
            expiry: None,
            next_check: None,
            next_checkpoint: None,
            keys: BTreeSet::new(),
        });
        if primary {
            let expiry = now + secs(lease.remaining_or_ttl());
            set_expiry(&mut st, id, Some(expiry));
            self.schedule_checkpoint(&mut st, id, now);
        }
    }

    /// The keys attached to `id`, sorted (what a revoke deletes).
    pub(crate) fn keys(&self, id: i64) -> Vec<Bytes> {
        let st = self.state.lock();
        st.leases
            .get(&id)
            .map(|l| l.keys.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Applies a committed revoke: forgets the lease and its attachments.
    pub(crate) fn remove(&self, id: i64) {
        let mut st = self.state.lock();
        set_expiry(&mut st, id, None);
        set_checkpoint(&mut st, id, None);
        if let Some(l) = st.leases.remove(&id) {
            for k in l.keys {
                st.key_lease.remove(&k);
            }
        }
    }

    /// A committed put of `key` with lease `id`, or (`id` 0) a put without
    /// a lease or a delete: moves the key from the lease it had, if any.
    pub(crate) fn put_key(&self, id: i64, key: &Bytes) {
        let mut st = self.state.lock();
        if id != 0 {
            attach(&mut st, id, key.clone());
        } else {
            detach(&mut st, key);
        }
    }

    /// Applies a committed checkpoint: records the remaining TTL (0
    /// clears it) and, on the primary, schedules the next checkpoint.
    pub(crate) fn checkpoint(&self, id: i64, remaining_ttl: i64) {
        let now = self.clock.now();
        let mut st = self.state.lock();
        let Some(l) = st.leases.get_mut(&id) else {
            return;
        };
        l.remaining_ttl = remaining_ttl.max(0);
        if st.primary {
            self.schedule_checkpoint(&mut st, id, now);
        }
    }

    /// The record to persist for `id` with `remaining_ttl`.
    pub(crate) fn record(&self, id: i64, remaining_ttl: i64) -> Option<LeaseRecord> {
        let st = self.state.lock();
        st.leases.get(&id).map(|l| LeaseRecord {
            id,
            ttl: l.ttl,
            remaining_ttl,
        })
    }

    // ----- primary side ---------------------------------------------------

    /// Becomes primary: every lease gets a deadline `extend` plus its
    /// remaining (or full) TTL from now; when many leases would expire
    /// together, later ones are spread out so that expiry stays within
    /// the revoke rate (etcd's `Promote`).
    pub fn promote(&self, extend: Duration) {
        let now = self.clock.now();
        let mut st = self.state.lock();
        st.primary = true;
        let ids: Vec<i64> = st.leases.keys().copied().collect();
        for &id in &ids {
            let ttl = st.leases[&id].remaining_or_ttl();
            set_expiry(&mut st, id, Some(now + extend + secs(ttl)));
            self.schedule_checkpoint(&mut st, id, now);
        }
        if ids.len() < LEASE_REVOKE_RATE {
            return;
        }
        // Spread pile-ups: at most 3/4 of the revoke rate per second.
        let mut by_expiry: Vec<(Duration, i64)> = ids
            .iter()
            .map(|id| (st.leases[id].expiry.expect("just set"), *id))
            .collect();
        by_expiry.sort();
        let target = (3 * LEASE_REVOKE_RATE / 4) as f64;
        let mut base = by_expiry[0].0;
        let mut next_window = base + Duration::from_secs(1);
        let mut expires = 0usize;
        for (expiry, id) in by_expiry {
            if expiry > next_window {
                base = expiry;
                next_window = base + Duration::from_secs(1);
                expires = 1;
                continue;
            }
            expires += 1;
            if expires as f64 <= target {
                continue;
            }
            let delay = (expires as f64 / target - (expiry - base).as_secs_f64()).max(0.0);
            let delay = Duration::from_secs_f64(delay);
            next_window = base + delay;
            let ttl = st.leases[&id].remaining_or_ttl();
            set_expiry(&mut st, id, Some(now + delay + extend + secs(ttl)));
        }
    }

    /// Stops being primary: every lease lives forever until promoted again.
    pub fn demote(&self) {
        let mut st = self.state.lock();
        st.primary = false;
        let ids: Vec<i64> = st.leases.keys().copied().collect();
        for id in ids {
            set_expiry(&mut st, id, None);
            set_checkpoint(&mut st, id, None);
        }
    }

    /// Keepalive: a new deadline `ttl` from now.
    pub fn renew(&self, id: i64) -> Renew {
        let now = self.clock.now();
        let mut st = self.state.lock();
        if !st.primary {
            return Renew::NotPrimary;
        }
        let Some(l) = st.leases.get_mut(&id) else {
            return Renew::NotFound;
        };
        if l.expiry.is_some_and(|e| e <= now) {
            return Renew::Expired;
        }
        let clear_checkpoint = l.remaining_ttl > 0;
        let ttl = l.ttl;
        set_expiry(&mut st, id, Some(now + secs(ttl)));
        Renew::Renewed {
            ttl,
            clear_checkpoint,
        }
    }

    /// Up to `limit` expired leases to revoke, oldest deadline first. Each
    /// is handed out again after [`EXPIRED_LEASE_RETRY`] if it still exists.
    pub fn find_expired(&self, limit: usize) -> Vec<i64> {
        let now = self.clock.now();
        let mut st = self.state.lock();
        if !st.primary {
            return Vec::new();
        }
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(id) = pop_due(&mut st.expiry_queue, now) else {
                break;
            };
            let expired = st
                .leases
                .get(&id)
                .and_then(|l| l.expiry)
                .is_some_and(|e| e <= now);
            if !expired {
                // Renewed since this entry (cannot happen: entries are replaced).
                if let Some(l) = st.leases.get_mut(&id) {
                    l.next_check = None;
                }
                continue;
            }
            let retry = now + EXPIRED_LEASE_RETRY;
            st.expiry_queue.insert((retry, id));
            st.leases.get_mut(&id).expect("checked").next_check = Some(retry);
            out.push(id);
        }
        out
    }

    /// Up to `limit` due checkpoints: `(id, remaining TTL in whole seconds,
    /// rounded up)`, skipping leases with nothing to record.
    pub fn due_checkpoints(&self, limit: usize) -> Vec<(i64, i64)> {
        let now = self.clock.now();
        let mut st = self.state.lock();
        if !st.primary {
            return Vec::new();
        }
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(id) = pop_due(&mut st.checkpoint_queue, now) else {
                break;
            };
            let Some(l) = st.leases.get_mut(&id) else {
                continue;
            };
            l.next_checkpoint = None;
            let Some(expiry) = l.expiry else { continue };
            let left = expiry.saturating_sub(now);
            let remaining = left.as_secs() as i64 + i64::from(left.subsec_nanos() > 0);
            if remaining >= l.ttl {
                // Nothing to record yet (just promoted with an extension):
                // look again an interval later (etcd drops it until the
                // next promote or renew).
                self.schedule_checkpoint(&mut st, id, now);
                continue;
            }
            out.push((id, remaining));
        }
        out
    }

    /// LeaseTimeToLive.
    pub fn time_to_live(&self, id: i64) -> Option<LeaseStatus> {
        let now = self.clock.now();
        let st = self.state.lock();
        let l = st.leases.get(&id)?;
        let remaining = match l.expiry {
            // Go's int64(time.Duration.Seconds()) truncates toward zero.
            Some(e) if e >= now => (e - now).as_secs() as i64,
            Some(e) => -((now - e).as_secs() as i64),
            None => i64::MAX / 1_000_000_000,
        };
        Some(LeaseStatus {
            remaining,
            granted: l.ttl,
            keys: l.keys.iter().cloned().collect(),
        })
    }

    /// LeaseLeases: every lease id, soonest deadline first (then by id).
    pub fn leases(&self) -> Vec<i64> {
        let st = self.state.lock();
        let mut v: Vec<(Option<Duration>, i64)> =
            st.leases.iter().map(|(id, l)| (l.expiry, *id)).collect();
        // Leases without a deadline sort last.
        v.sort_by_key(|(e, id)| (e.is_none(), *e, *id));
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// The lease `key` is attached to (0: none).
    pub fn lease_of(&self, key: &[u8]) -> i64 {
        self.state.lock().key_lease.get(key).copied().unwrap_or(0)
    }

    fn schedule_checkpoint(&self, st: &mut State, id: i64, now: Duration) {
        if self.checkpoint_interval.is_zero() {
            return;
        }
        let Some(l) = st.leases.get(&id) else { return };
        if secs(l.remaining_or_ttl()) > self.checkpoint_interval {
            set_checkpoint(st, id, Some(now + self.checkpoint_interval));
        }
    }
}

fn secs(s: i64) -> Duration {
    Duration::from_secs(s.max(0) as u64)
}

fn attach(st: &mut State, id: i64, key: Bytes) {
    if st.key_lease.get(&key) == Some(&id) {
        return;
    }
    detach(st, &key);
    match st.leases.get_mut(&id) {
        Some(l) => {
            l.keys.insert(key.clone());
            st.key_lease.insert(key, id);
        }
        None => {
            tracing::error!(
                lease = %format!("{id:x}"),
                key = %String::from_utf8_lossy(&key),
                "key names a lease that does not exist; left unattached"
            );
        }
    }
}

/// Detaches `key` from the lease it is attached to, if any.
fn detach(st: &mut State, key: &[u8]) {
    if st.key_lease.is_empty() {
        return; // no key has a lease (the common case): nothing to hash
    }
    if let Some(old) = st.key_lease.remove(key) {
        if let Some(l) = st.leases.get_mut(&old) {
            l.keys.remove(key);
        }
    }
}

fn set_expiry(st: &mut State, id: i64, expiry: Option<Duration>) {
    let Some(l) = st.leases.get_mut(&id) else {
        return;
    };
    l.expiry = expiry;
    if let Some(old) = l.next_check.take() {
        st.expiry_queue.remove(&(old, id));
    }
    if let Some(e) = expiry {
        l.next_check = Some(e);
        st.expiry_queue.insert((e, id));
    }
}

fn set_checkpoint(st: &mut State, id: i64, at: Option<Duration>) {
    let Some(l) = st.leases.get_mut(&id) else {
        return;
    };
    if let Some(old) = l.next_checkpoint.take() {
        st.checkpoint_queue.remove(&(old, id));
    }
    if let Some(t) = at {
        l.next_checkpoint = Some(t);
        st.checkpoint_queue.insert((t, id));
    }
}

/// Removes and returns the lease of the earliest entry of `queue` if it is
/// due at `now`.
fn pop_due(queue: &mut BTreeSet<(Duration, i64)>, now: Duration) -> Option<i64> {
    let &(t, id) = queue.first()?;
    if t > now {
        return None;
    }
    queue.pop_first();
    Some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const S: Duration = Duration::from_secs(1);

    fn lessor(checkpoint: Duration) -> (Arc<FakeClock>, Lessor) {
        let clock = Arc::new(FakeClock::new());
        (clock.clone(), Lessor::new(clock, 2, checkpoint))
    }

    #[test]
    fn min_ttl_follows_the_election_timeout() {
        assert_eq!(min_lease_ttl(Duration::from_millis(1000)), 2);
        assert_eq!(min_lease_ttl(Duration::from_millis(100)), 1);
        assert_eq!(min_lease_ttl(Duration::from_millis(5000)), 8);
        let (_, l) = lessor(Duration::ZERO);
        l.grant(1, 1);
        assert_eq!(l.time_to_live(1).unwrap().granted, 2);
    }

    #[test]
    fn primary_expires_leases_at_their_deadline_and_retries() {
        let (clock, l) = lessor(Duration::ZERO);
        l.promote(Duration::ZERO);
        l.grant(7, 10);
        clock.advance(10 * S - MS);
        assert!(l.find_expired(100).is_empty());
        assert_eq!(l.time_to_live(7).unwrap().remaining, 0);
        clock.advance(MS);
        assert_eq!(l.find_expired(100), vec![7]);
        // Handed out once; again only after the retry interval.
        assert!(l.find_expired(100).is_empty());
        assert_eq!(l.renew(7), Renew::Expired);
        clock.advance(EXPIRED_LEASE_RETRY);
        assert_eq!(l.find_expired(100), vec![7]);
        l.remove(7);
        clock.advance(EXPIRED_LEASE_RETRY);
        assert!(l.find_expired(100).is_empty());
        assert_eq!(l.renew(7), Renew::NotFound);
    }

    #[test]
    fn non_primary_leases_never_expire_until_promoted_with_extension() {
        let (clock, l) = lessor(Duration::ZERO);
        l.grant(1, 5);
        clock.advance(1000 * S);
        assert!(l.find_expired(100).is_empty());
        assert_eq!(l.renew(1), Renew::NotPrimary);
        l.promote(S);
        clock.advance(6 * S - MS);
        assert!(l.find_expired(100).is_empty());
        clock.advance(MS);
        assert_eq!(l.find_expired(100), vec![1]);
        l.demote();
        clock.advance(100 * S);
        assert!(l.find_expired(100).is_empty());
    }

    #[test]
    fn renew_moves_the_deadline() {
        let (clock, l) = lessor(Duration::ZERO);
        l.promote(Duration::ZERO);
        l.grant(3, 4);
        clock.advance(3 * S);
        assert_eq!(
            l.renew(3),
            Renew::Renewed {
                ttl: 4,
                clear_checkpoint: false
            }
        );
        clock.advance(3 * S);
        assert!(l.find_expired(10).is_empty());
        assert_eq!(l.time_to_live(3).unwrap().remaining, 1);
        clock.advance(S);
        assert_eq!(l.find_expired(10), vec![3]);
    }

    #[test]
    fn revokes_are_rate_limited() {
        let (clock, l) = lessor(Duration::ZERO);
        l.promote(Duration::ZERO);
        for id in 1..=2500 {
            l.grant(id, 5);
        }
        clock.advance(5 * S);
        let tick = Duration::from_millis(500);
        let limit = crate::lease_ticker::revoke_limit(tick);
        assert_eq!(limit, LEASE_REVOKE_RATE / 2);
        let first = l.find_expired(limit);
        assert_eq!(first.len(), 500);
        let second = l.find_expired(limit);
        assert_eq!(second.len(), 500);
        assert!(first.iter().all(|id| !second.contains(id)));
    }

    #[test]
    fn promote_spreads_a_pile_up_over_the_revoke_rate() {
        let (clock, l) = lessor(Duration::ZERO);
        for id in 1..=3000 {
            l.grant(id, 10);
        }
        l.promote(S);
        clock.advance(11 * S);
        let first = l.find_expired(usize::MAX);
        let in_first_second = first.len();
        for id in first {
            l.remove(id); // revoked
        }
        assert!(
            in_first_second <= 3 * LEASE_REVOKE_RATE / 4 + 1,
            "{in_first_second} leases expire in the first second"
        );
        clock.advance(4 * S);
        assert_eq!(l.find_expired(usize::MAX).len(), 3000 - in_first_second);
    }

    #[test]
    fn checkpoints_record_the_remaining_ttl_for_the_next_primary() {
        let (clock, l) = lessor(Duration::from_secs(300));
        l.promote(Duration::ZERO);
        l.grant(9, 600);
        l.grant(10, 100); // shorter than the interval: never checkpointed
        clock.advance(300 * S - MS);
        assert!(l.due_checkpoints(10).is_empty());
        clock.advance(MS);
        let due = l.due_checkpoints(10);
        assert_eq!(due, vec![(9, 300)]);
        for (id, rem) in due {
            l.checkpoint(id, rem);
        }
        assert_eq!(l.record(9, 300).unwrap().remaining_ttl, 300);
        // Leadership moves away and back (or the member restarts).
        l.demote();
        clock.advance(50 * S);
        l.promote(S);
        assert_eq!(l.time_to_live(9).unwrap().remaining, 301);
        assert_eq!(l.time_to_live(9).unwrap().granted, 600);
        // A renew counts from the full TTL and asks to clear the checkpoint.
        assert_eq!(
            l.renew(9),
            Renew::Renewed {
                ttl: 600,
                clear_checkpoint: true
            }
        );
        l.checkpoint(9, 0);
        assert_eq!(
            l.renew(9),
            Renew::Renewed {
                ttl: 600,
                clear_checkpoint: false
            }
        );
    }

    #[test]
    fn a_checkpoint_skipped_after_promotion_is_rescheduled() {
        let (clock, l) = lessor(Duration::from_secs(1));
        l.grant(4, 30);
        l.promote(S); // deadline 31 s: after 1 s, 30 s are left (not < ttl)
        clock.advance(S);
        assert!(l.due_checkpoints(10).is_empty());
        clock.advance(S);
        assert_eq!(l.due_checkpoints(10), vec![(4, 29)]);
    }

    #[test]
    fn keys_move_between_leases() {
        let (_, l) = lessor(Duration::ZERO);
        l.grant(1, 10);
        l.grant(2, 10);
        let k = Bytes::from_static(b"k");
        l.put_key(1, &k);
        assert_eq!(l.lease_of(b"k"), 1);
        l.put_key(2, &k);
        assert_eq!(l.lease_of(b"k"), 2);
        assert!(l.keys(1).is_empty());
        assert_eq!(l.keys(2), vec![k.clone()]);
        l.put_key(0, &k); // a put without a lease, or a delete
        assert_eq!(l.lease_of(b"k"), 0);
        assert!(l.keys(2).is_empty());
        l.put_key(0, &k); // nothing to detach
        assert_eq!(l.lease_of(b"k"), 0);
        l.put_key(3, &k); // unknown lease: left unattached
        assert_eq!(l.lease_of(b"k"), 0);
    }

    #[test]
    fn leases_are_listed_soonest_deadline_first() {
        let (_, l) = lessor(Duration::ZERO);
        l.promote(Duration::ZERO);
        l.grant(5, 30);
        l.grant(6, 10);
        l.grant(4, 20);
        assert_eq!(l.leases(), vec![6, 4, 5]);
        assert!(l.time_to_live(99).is_none());
    }
}
