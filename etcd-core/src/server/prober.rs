//! The peer prober (etcd's `rafthttp/probing_status.go`): every
//! [`PROBE_INTERVAL`] each peer gets an empty question over the peer port
//! ([`peer_client::probe`]); the round trips feed a smoothed RTT per peer
//! (go-probing's: the first sample, then `srtt += (rtt - srtt) / 8`),
//! observed into `etcd_network_peer_round_trip_time_seconds{To}` every
//! [`MONITOR_INTERVAL`] while the peer answers. A peer that stops
//! answering is logged ("prober detected unhealthy status") every
//! [`ERROR_INTERVAL`] until it answers again.

use super::etcd::Etcd;
use super::peer_client;
use crate::background::Background;
use crate::membership::format_id;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// etcd's `proberInterval` (its peer read timeout less a second).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(4);
/// etcd's `statusMonitoringInterval`.
pub const MONITOR_INTERVAL: Duration = Duration::from_secs(30);
/// etcd's `statusErrorInterval` (also the first report's delay).
pub const ERROR_INTERVAL: Duration = Duration::from_secs(5);

/// What the prober knows of one peer.
struct Peer {
    /// Smoothed round trip time; None before the first answer.
    srtt: Option<Duration>,
    /// The last probe failed: why.
    error: Option<String>,
    /// When to report next (observe the RTT, or log the failure).
    report_at: Instant,
}

impl Peer {
    fn sample(&mut self, rtt: Duration) {
        self.error = None;
        self.srtt = Some(match self.srtt {
            None => rtt,
            Some(s) => s.mul_f64(0.875) + rtt.mul_f64(0.125),
        });
    }
}

/// Probes `etcd`'s peers on a thread until stopped.
pub(super) fn spawn(etcd: Etcd) -> std::io::Result<Background> {
    Background::spawn("prober", move |stop| {
        let mut peers: HashMap<u64, Peer> = HashMap::new();
        loop {
            if !crate::background::pause(&stop, PROBE_INTERVAL) {
                return;
            }
            let me = etcd.member_id();
            let members = etcd.members();
            peers.retain(|id, _| members.iter().any(|m| m.id == *id));
            for m in members.iter().filter(|m| m.id != me) {
                // Stopping does not wait for the remaining probes.
                if !matches!(stop.try_recv(), Err(crossbeam_channel::TryRecvError::Empty)) {
                    return;
                }
                let now = Instant::now();
                let p = peers.entry(m.id).or_insert(Peer {
                    srtt: None,
                    error: None,
                    report_at: now + ERROR_INTERVAL,
                });
                match peer_client::probe(&etcd, m) {
                    Ok(rtt) => p.sample(rtt),
                    Err(e) => p.error = Some(e.to_string()),
                }
                if Instant::now() < p.report_at {
                    continue;
                }
                match (&p.error, p.srtt) {
                    (None, Some(srtt)) => {
                        etcd.metrics().observe_peer_rtt(m.id, srtt);
                        p.report_at = Instant::now() + MONITOR_INTERVAL;
                    }
                    (error, _) => {
                        tracing::warn!(
                            remote_peer_id = %format_id(m.id),
                            rtt = ?p.srtt.unwrap_or_default(),
                            error = error.as_deref().unwrap_or("no answer yet"),
                            "prober detected unhealthy status"
                        );
                        p.report_at = Instant::now() + ERROR_INTERVAL;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooths_like_go_probing() {
        let mut p = Peer {
            srtt: None,
            error: Some("down".into()),
            report_at: Instant::now(),
        };
        p.sample(Duration::from_millis(8));
        assert_eq!(p.srtt, Some(Duration::from_millis(8)));
        assert!(p.error.is_none());
        p.sample(Duration::from_millis(16));
        assert_eq!(p.srtt, Some(Duration::from_millis(9)));
    }
}
