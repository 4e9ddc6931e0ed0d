//! etcd's six watch guarantees (ordered, unique, reliable, atomic,
//! resumable, bookmarkable; etcd's "API guarantees" page): a watcher that
//! records every response of every stream it opens, resuming after broken
//! streams, and a checker of what watchers recorded against the writes
//! that happened (tests/watch_guarantees.rs, tests/cluster_linearizable.rs).
//!
//! Checks, per watcher, over all its streams:
//! - **atomic**: the events of a revision arrive in one response and equal
//!   the acknowledged txn's operations (or one ambiguous txn's operations,
//!   the same for every watcher that sees it);
//! - **ordered / unique**: revisions strictly increase across responses;
//! - **reliable / resumable**: between the start and the last revision a
//!   watcher saw, it saw every revision of the ground truth (plus every
//!   ambiguous txn some watcher saw), except below a `compact_revision` the
//!   server reported (then the watcher resumed from there);
//! - **bookmarkable**: a progress response at revision R comes after every
//!   ground-truth revision `<= R` (from the watcher's start) was delivered,
//!   and no later event has a revision `<= R`.

use etcd_server::rpc::etcdserverpb::{
    watch_client::WatchClient, watch_request::RequestUnion, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// One event as the checker compares it: (is_put, key, value).
pub type Ev = (bool, String, String);

/// What the writers know.
#[derive(Default, Debug)]
pub struct Truth {
    /// Acknowledged txns: revision -> events.
    pub known: BTreeMap<i64, Vec<Ev>>,
    /// Txns whose outcome is unknown, by their first unique value.
    pub ambiguous: Vec<Vec<Ev>>,
}

/// What one watcher recorded.
#[derive(Default, Debug, Clone)]
pub struct Record {
    /// (start revision, responses) per stream, in order.
    pub streams: Vec<(i64, Vec<WatchResponse>)>,
}

impl Record {
    /// The highest revision of an event this watcher received.
    pub fn highest_seen(&self) -> i64 {
        self.streams
            .iter()
            .flat_map(|(_, rs)| rs)
            .flat_map(|r| &r.events)
            .filter_map(|e| e.kv.as_ref().map(|kv| kv.mod_revision))
            .max()
            .unwrap_or(0)
    }
}

pub fn ev_of(e: &etcd_core::pb::mvccpb::Event) -> Ev {
    let kv = e.kv.clone().unwrap_or_default();
    (
        e.r#type == 0,
        String::from_utf8_lossy(&kv.key).into_owned(),
        String::from_utf8_lossy(&kv.value).into_owned(),
    )
}

/// The checker. Returns the violations found (empty: all six hold).
pub fn check(truth: &Truth, records: &[Record]) -> Vec<String> {
    let mut bad = Vec::new();
    // Revisions seen by watchers that no writer acknowledged: each must be
    // one ambiguous txn, the same for every watcher.
    let mut extra: BTreeMap<i64, Vec<Ev>> = BTreeMap::new();
    for (wi, rec) in records.iter().enumerate() {
        for (_, resps) in &rec.streams {
            for r in resps {
                let mut by_rev: BTreeMap<i64, Vec<Ev>> = BTreeMap::new();
                for e in &r.events {
                    let rev = e.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                    by_rev.entry(rev).or_default().push(ev_of(e));
                }
                for (rev, evs) in by_rev {
                    match truth.known.get(&rev) {
                        Some(want) if *want != evs => bad.push(format!(
                            "atomic: watcher {wi} rev {rev}: got {evs:?}, acknowledged {want:?}"
                        )),
                        Some(_) => {}
                        None => {
                            if !truth.ambiguous.contains(&evs) {
                                bad.push(format!(
                                    "atomic: watcher {wi} rev {rev}: {evs:?} matches no write"
                                ));
                            }
                            match extra.get(&rev) {
                                Some(prev) if *prev != evs => bad.push(format!(
                                    "atomic: rev {rev} differs between watchers: {prev:?} / {evs:?}"
                                )),
                                _ => {
                                    extra.insert(rev, evs);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let mut all: BTreeMap<i64, Vec<Ev>> = truth.known.clone();
    all.extend(extra);
    for (wi, rec) in records.iter().enumerate() {
        // Revisions in delivery order with the response index they came in.
        let mut seen: Vec<i64> = Vec::new();
        let mut first_start = None;
        let mut compacted_to = i64::MIN;
        let mut gaps_ok: Vec<(i64, i64)> = Vec::new();
        // The revision after the last event (before any: the first start).
        let mut after_event = None;
        for (start, resps) in &rec.streams {
            first_start.get_or_insert(*start);
            let lowest = *after_event.get_or_insert(*start);
            if let Some(last) = seen.last() {
                // From the revision after the last event, or up to the one
                // after a later progress notification (nothing watched
                // changed in between).
                if !(lowest..=last + 1).contains(start) && *start > compacted_to {
                    bad.push(format!(
                        "resumable: watcher {wi} resumed at {start}, last seen {last}"
                    ));
                }
            }
            for r in resps {
                if r.compact_revision != 0 {
                    // Resumed from the compaction revision: no gap check below it.
                    gaps_ok.push((*start, r.compact_revision));
                    compacted_to = r.compact_revision;
                    continue;
                }
                let revs: Vec<i64> = r
                    .events
                    .iter()
                    .map(|e| e.kv.as_ref().map_or(0, |kv| kv.mod_revision))
                    .collect();
                if !revs.windows(2).all(|w| w[0] <= w[1]) {
                    bad.push(format!("ordered: watcher {wi}: {revs:?} within a response"));
                }
                let mut distinct = revs.clone();
                distinct.dedup();
                for rev in distinct {
                    if let Some(last) = seen.last() {
                        if rev <= *last {
                            bad.push(format!(
                                "ordered/unique: watcher {wi}: rev {rev} after {last}"
                            ));
                        }
                    }
                    seen.push(rev);
                    after_event = Some(rev + 1);
                }
                if r.events.is_empty() && !r.created && !r.canceled {
                    // A progress notification (bookmark).
                    let at = r.header.as_ref().map_or(0, |h| h.revision);
                    let from = seen.last().copied().unwrap_or(*start - 1);
                    if at < from {
                        bad.push(format!(
                            "bookmarkable: watcher {wi}: progress at {at} after rev {from}: {r:?}"
                        ));
                        continue;
                    }
                    let behind = if at > from {
                        all.range(from + 1..=at).count()
                    } else {
                        0
                    };
                    for rev in all.range(from + 1..).take(behind).map(|(r, _)| *r) {
                        if rev >= *start {
                            bad.push(format!(
                                "bookmarkable: watcher {wi}: progress at {at} before rev {rev}"
                            ));
                        }
                    }
                    seen.push(at); // later events must be above it
                }
            }
        }
        // Reliable: every revision between the start and the last event.
        let (Some(start), Some(last)) = (first_start, seen.last()) else {
            continue;
        };
        if *last < start {
            continue;
        }
        let got: std::collections::HashSet<i64> = seen.iter().copied().collect();
        for rev in all.range(start..=*last).map(|(r, _)| *r) {
            let excused = gaps_ok.iter().any(|(from, to)| rev >= *from && rev < *to);
            if !got.contains(&rev) && !excused {
                bad.push(format!("reliable: watcher {wi} missed rev {rev}"));
            }
        }
    }
    bad
}

pub async fn connect(url: &str) -> Option<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(3))
        .connect()
        .await
        .ok()
}

/// One watcher of the keys starting with `prefix` (`k`: the checked
/// keys), resuming after broken streams at the member `url()` names then
/// (`None`: none for now, try later). A slow watcher takes 5 ms over each
/// response.
pub async fn watcher(
    url: impl Fn() -> Option<String>,
    prefix: &str,
    slow: bool,
    rec: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
) {
    let mut next = 1i64;
    while !stop.load(Ordering::Relaxed) {
        let Some(url) = url() else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Some(ch) = connect(&url).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let create = WatchCreateRequest {
            key: prefix.as_bytes().to_vec().into(),
            range_end: prefix_end(prefix).into(),
            start_revision: next,
            ..Default::default()
        };
        let _ = tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(create)),
            })
            .await;
        let mut client = WatchClient::new(ch);
        let Ok(resp) = tokio::time::timeout(
            Duration::from_secs(3),
            client.watch(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .await
        else {
            continue;
        };
        let Ok(resp) = resp else { continue };
        let mut stream = resp.into_inner();
        let idx = {
            let mut r = rec.lock().await;
            r.streams.push((next, Vec::new()));
            r.streams.len() - 1
        };
        let mut ticks = 0u64;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let m = tokio::time::timeout(Duration::from_millis(200), stream.message()).await;
            let r = match m {
                Err(_) => {
                    ticks += 1;
                    if ticks.is_multiple_of(3) {
                        let _ = tx.try_send(WatchRequest {
                            request_union: Some(RequestUnion::ProgressRequest(
                                WatchProgressRequest {},
                            )),
                        });
                    }
                    continue;
                }
                Ok(Ok(Some(r))) => r,
                Ok(_) => break, // stream broken: resume
            };
            if slow {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if let Some(last) = r
                .events
                .last()
                .and_then(|e| e.kv.as_ref())
                .map(|kv| kv.mod_revision)
            {
                next = last + 1;
            }
            if r.compact_revision != 0 {
                next = r.compact_revision;
            }
            let compacted = r.compact_revision != 0;
            rec.lock().await.streams[idx].1.push(r);
            if compacted {
                break;
            }
        }
    }
}

/// The range end of the keys starting with `prefix` (not empty, last
/// byte below 0xff).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("a prefix") += 1;
    end
}

/// Waits until `rec` has an event at revision `rev` or later; panics
/// at `deadline` (`who` names the watcher).
pub async fn wait_seen(rec: &Mutex<Record>, rev: i64, deadline: Instant, who: &str) {
    while rec.lock().await.highest_seen() < rev {
        assert!(
            Instant::now() < deadline,
            "{who} did not see revision {rev} in time: last stream (start, responses) {:?}",
            rec.lock()
                .await
                .streams
                .last()
                .map(|(s, rs)| (*s, rs.len()))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a watch of the keys under `prefix` at `url` from revision 1
/// delivers up to revision `rev` (which must hold such a key); panics if
/// that is not done by `deadline`.
pub async fn watch_until(url: &str, prefix: &'static str, rev: i64, deadline: Instant) -> Record {
    let rec: Arc<Mutex<Record>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let url = url.to_string();
    let task = tokio::spawn(watcher(
        move || Some(url.clone()),
        prefix,
        false,
        rec.clone(),
        stop.clone(),
    ));
    wait_seen(&rec, rev, deadline, &format!("a watch of {prefix}")).await;
    stop.store(true, Ordering::SeqCst);
    task.await.unwrap();
    let r = rec.lock().await.clone();
    r
}
