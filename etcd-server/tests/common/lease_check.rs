//! Lease expiry bounds under faults: a client that grants leases, attaches
//! a key to each, keeps some alive for a while, then lets them expire and
//! probes the key with linearizable gets; and the checks of what it saw.
//!
//! The bounds (etcd's lessor: a lease expires no earlier than its TTL after
//! the grant or the last renewal took effect, and a new leader refreshes
//! every lease to its full TTL plus an election timeout, so leader changes
//! only postpone expiry):
//! - **lower**: a lease whose grant or keepalive was answered at call
//!   instant `c` with TTL `t` still holds its key at any get answered
//!   before `c + t` (the renewal took effect after `c`). A get that was
//!   sent after the attaching put was acknowledged and finds the key
//!   missing earlier than that is a lease that expired early: a deposed
//!   leader renewing what the new leader's lessor does not know, a clock
//!   read wrong, a revoke applied twice.
//! - **upper**: once the faults are over and the client has stopped, every
//!   lease is gone within its TTL, an election timeout and a slack for the
//!   expiry check and the revoke's commit ([`Leases::wait_all_expired`]).
//!
//! Example: TTL 3 s, granted at 0 s (call), kept alive at 1 s and 2 s
//! (calls), then left alone: a get answered at 4.9 s must find the key; one
//! answered at 5.1 s may not; `wait_all_expired` called at 6 s gives it until
//! 6 s + 3 s + 0.5 s + slack.
//!
//! The client picks its own lease ids (`LeaseGrant` with an id), so a grant
//! whose answer was lost is still known and still checked at the end.

use etcd_server::rpc::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, LeaseGrantRequest, LeaseKeepAliveRequest,
    LeaseLeasesRequest, PutRequest, RangeRequest,
};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// How long one request of the lease client may take.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
/// Keepalives at most per lease.
const MAX_KEEPALIVES: usize = 3;
/// Gap between two probes of an abandoned lease's key.
const PROBE_GAP: Duration = Duration::from_millis(250);

/// What the client did with one lease.
#[derive(Debug, Clone)]
pub struct LeaseRecord {
    pub id: i64,
    /// The TTL the grant answered (the requested one if unanswered).
    pub ttl: i64,
    /// Call instants of the grant and of every keepalive answered with a
    /// TTL above 0.
    pub renewed: Vec<Instant>,
    /// When the put attaching the key was acknowledged (None: its outcome
    /// is unknown, or it failed).
    pub attached: Option<Instant>,
    /// Answered linearizable gets of the key: (call, response, found).
    pub probes: Vec<(Instant, Instant, bool)>,
}

/// Everything the lease client recorded, shared with the test.
#[derive(Default)]
pub struct Leases {
    pub records: Mutex<Vec<LeaseRecord>>,
}

fn key(id: i64) -> String {
    format!("lease/{id:x}")
}

impl Leases {
    /// Lower-bound violations: keys found missing before their lease could
    /// have expired.
    pub fn early_expiries(&self) -> Vec<String> {
        let mut bad = Vec::new();
        for r in self.records.lock().unwrap().iter() {
            let (Some(attached), Some(last)) = (r.attached, r.renewed.iter().max()) else {
                continue;
            };
            let safe_until = *last + Duration::from_secs(r.ttl as u64);
            for &(call, resp, found) in &r.probes {
                if !found && call > attached && resp < safe_until {
                    bad.push(format!(
                        "lease {:x} (TTL {} s) expired early: its key was gone {:?} before \
                         the last renewal's TTL ran out (last renewal sent {:?} before the get)",
                        r.id,
                        r.ttl,
                        safe_until - resp,
                        call.saturating_duration_since(*last)
                    ));
                }
            }
        }
        bad
    }

    /// Leases of this client still alive on the leader at `url` after
    /// their deadline: `since` (the end of the faults and of the client)
    /// plus their TTL plus `slack`. Waits until all are gone or the last
    /// deadline passed; returns the violations and how long the last one
    /// took to go.
    pub async fn wait_all_expired(
        &self,
        url: &str,
        since: Instant,
        slack: Duration,
    ) -> (Vec<String>, Duration) {
        let ours: HashMap<i64, i64> = self
            .records
            .lock()
            .unwrap()
            .iter()
            .map(|r| (r.id, r.ttl))
            .collect();
        let max_ttl = ours.values().copied().max().unwrap_or(0);
        let deadline = since + Duration::from_secs(max_ttl as u64) + slack;
        let ch = Endpoint::from_shared(url.to_string())
            .unwrap()
            .connect_lazy();
        let mut lease = LeaseClient::new(ch);
        loop {
            let alive: Vec<i64> = match lease.lease_leases(LeaseLeasesRequest {}).await {
                Ok(r) => r
                    .into_inner()
                    .leases
                    .iter()
                    .map(|l| l.id)
                    .filter(|id| ours.contains_key(id))
                    .collect(),
                Err(_) => vec![-1], // unknown: ask again
            };
            let now = Instant::now();
            if alive.is_empty() {
                return (Vec::new(), now - since);
            }
            let late: Vec<String> = alive
                .iter()
                .filter(|id| **id >= 0)
                .filter(|id| now > since + Duration::from_secs(ours[*id] as u64) + slack)
                .map(|id| {
                    format!(
                        "lease {id:x} (TTL {} s) still alive {:?} after the faults ended",
                        ours[id],
                        now - since
                    )
                })
                .collect();
            if !late.is_empty() || now > deadline {
                return (late, now - since);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Channels by URL, made lazily.
#[derive(Default)]
struct Channels(HashMap<String, Channel>);

impl Channels {
    fn get(&mut self, url: &str) -> Channel {
        self.0
            .entry(url.to_string())
            .or_insert_with(|| {
                Endpoint::from_shared(url.to_string())
                    .unwrap()
                    .connect_timeout(Duration::from_millis(500))
                    .connect_lazy()
            })
            .clone()
    }
}

/// The lease client: until `stop`, grants a lease of `ttl` seconds with
/// an id of its own, attaches `lease/<id>`, keeps it alive 0 to
/// [`MAX_KEEPALIVES`] times (a third of the TTL apart, a probe after
/// each), then probes the key until it is gone (at most four TTLs). Each
/// request goes to the member `url(n)` names for the `n`th request
/// (`None`: skip that one), so keepalives reach followers (which forward
/// them to the leader) and the leader alike.
pub async fn lease_client(
    url: impl Fn(u64) -> Option<String>,
    ttl: i64,
    seed: u64,
    leases: Arc<Leases>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut channels = Channels::default();
    let mut n = 0u64;
    let mut next = |channels: &mut Channels| loop {
        n += 1;
        if let Some(u) = url(n) {
            return channels.get(&u);
        }
    };
    let mut serial = 0i64;
    while !stop.load(Ordering::SeqCst) {
        serial += 1;
        let id = ((seed as i64 & 0xffff) << 32) | serial;
        let call = Instant::now();
        let granted = tokio::time::timeout(
            REQUEST_TIMEOUT,
            LeaseClient::new(next(&mut channels)).lease_grant(LeaseGrantRequest { ttl, id }),
        )
        .await;
        let mut rec = LeaseRecord {
            id,
            ttl,
            renewed: Vec::new(),
            attached: None,
            probes: Vec::new(),
        };
        // Unanswered: the lease may exist; it is still checked at the end.
        if let Ok(Ok(r)) = granted {
            rec.ttl = r.into_inner().ttl;
            rec.renewed.push(call);
        }
        // One lock: two lease clients push concurrently.
        let at = {
            let mut records = leases.records.lock().unwrap();
            records.push(rec.clone());
            records.len() - 1
        };
        let update = |rec: &LeaseRecord| leases.records.lock().unwrap()[at] = rec.clone();
        if rec.renewed.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let put = tokio::time::timeout(
            REQUEST_TIMEOUT,
            KvClient::new(next(&mut channels)).put(PutRequest {
                key: key(id).into_bytes().into(),
                value: b"v".to_vec().into(),
                lease: id,
                ..Default::default()
            }),
        )
        .await;
        if let Ok(Ok(_)) = put {
            rec.attached = Some(Instant::now());
        }
        update(&rec);
        for _ in 0..rng.gen_range(0..=MAX_KEEPALIVES) {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(rec.ttl as u64 * 1000 / 3)).await;
            let call = Instant::now();
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let _ = tx.send(LeaseKeepAliveRequest { id }).await;
            let mut client = LeaseClient::new(next(&mut channels));
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let mut stream = client
                    .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .ok()?
                    .into_inner();
                stream.message().await.ok()?
            })
            .await;
            if let Ok(Some(r)) = answer {
                if r.ttl > 0 {
                    rec.renewed.push(call);
                }
            }
            rec.probes.extend(probe(next(&mut channels), id).await);
            update(&rec);
        }
        let give_up = Instant::now() + Duration::from_secs(4 * rec.ttl as u64);
        while !stop.load(Ordering::SeqCst) && Instant::now() < give_up {
            let got = probe(next(&mut channels), id).await;
            rec.probes.extend(got);
            update(&rec);
            if matches!(got, Some((_, _, false))) {
                break;
            }
            tokio::time::sleep(PROBE_GAP).await;
        }
    }
}

/// A linearizable get of lease `id`'s key: (call, response, found), or
/// None when unanswered.
async fn probe(ch: Channel, id: i64) -> Option<(Instant, Instant, bool)> {
    let call = Instant::now();
    let got = tokio::time::timeout(
        REQUEST_TIMEOUT,
        KvClient::new(ch).range(RangeRequest {
            key: key(id).into_bytes().into(),
            ..Default::default()
        }),
    )
    .await;
    match got {
        Ok(Ok(r)) => Some((call, Instant::now(), !r.into_inner().kvs.is_empty())),
        _ => None,
    }
}
