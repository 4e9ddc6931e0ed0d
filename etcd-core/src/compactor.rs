//! Auto-compaction (etcd's `etcdserver/api/v3compactor`): the leader
//! compacts the key-value history on its own, so that it does not grow until
//! the quota. Two modes, as `--auto-compaction-mode`:
//!
//! - **periodic** (`--auto-compaction-retention=1h`, `30m`, or plain hours
//!   `"5"`): keep at least the last *period* of history. Every tenth of the
//!   period (of an hour at most) the current revision is recorded in a
//!   window that spans one period; once a period has passed since start (and
//!   then every `min(period, 1h)` after a success) the oldest revision of
//!   the window, the one current a period ago, is compacted.
//! - **revision** (`--auto-compaction-retention=1000`): every 5 minutes,
//!   compact at `current revision - retention` unless that is not positive
//!   or was the last revision compacted.
//!
//! Worked example, periodic with a 10 s period: the revision is recorded
//! every 1 s (at t=0, 1, ...) in a window of 11. At t=10 s (first due) the
//! window holds the records of t=0..9 and compaction goes to the one of
//! t=0; at t=20 s it holds t=9..19 and compaction goes to the one of t=9.
//!
//! Only the leader compacts (etcd pauses a follower's compactor, but the
//! periodic window keeps recording). A compaction that fails with
//! "required revision has been compacted" counts as done; any other failure
//! is retried at the next step. Compactions go through raft as the client
//! `Compact` request does (logical: the caller does not wait for the
//! physical removal).
//!
//! The timing decisions are [`Compactor`], a state machine driven with the
//! time from an injected clock; `server/auto_compaction.rs` runs it on a
//! thread of a running member.

use crate::error::Error;
use std::collections::VecDeque;
use std::time::Duration;

/// etcd's `revInterval`: how often revision mode checks.
pub const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);
/// Revisions recorded per period (etcd's `retryDivisor`).
const RETRY_DIVISOR: u32 = 10;
const HOUR: Duration = Duration::from_secs(3600);

/// `--auto-compaction-mode` with `--auto-compaction-retention`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AutoCompaction {
    /// Keep this much time of history.
    Periodic(Duration),
    /// Keep this many revisions of history.
    Revision(i64),
}

impl AutoCompaction {
    /// Parses the two flags as etcd does (`parseCompactionRetention`): a
    /// plain non-negative integer is hours (periodic) or a revision count
    /// (revision), anything else a Go duration. `"0"` (etcd's default)
    /// disables auto-compaction: `None`. An empty mode is periodic.
    ///
    /// Unlike etcd, a duration in revision mode is refused (etcd would take
    /// `1h` as 3.6e12 revisions) and so is a negative duration.
    pub fn parse(mode: &str, retention: &str) -> Result<Option<AutoCompaction>, String> {
        let periodic = match mode {
            "periodic" | "" => true,
            "revision" => false,
            other => return Err(format!("unknown auto-compaction-mode {other:?}")),
        };
        let retention = retention.trim();
        if let Ok(n) = retention.parse::<i64>() {
            if n >= 0 {
                return Ok(match (n, periodic) {
                    (0, _) => None,
                    (n, true) => Some(AutoCompaction::Periodic(HOUR * n as u32)),
                    (n, false) => Some(AutoCompaction::Revision(n)),
                });
            }
        }
        if !periodic {
            return Err(format!(
                "--auto-compaction-retention={retention:?}: revision mode takes a number of revisions"
            ));
        }
        let d = crate::go_duration::parse_go_duration(retention)
            .map_err(|e| format!("error parsing CompactionRetention: {e}"))?;
        Ok((!d.is_zero()).then_some(AutoCompaction::Periodic(d)))
    }
}

/// When to compact, and at which revision. Driven by [`Compactor::record`]
/// before each wait of [`Compactor::interval`] and [`Compactor::due`] after
/// it (while leading); told of successes with [`Compactor::succeeded`].
#[derive(Debug)]
pub(crate) enum Compactor {
    /// etcd's `Periodic`.
    Periodic {
        /// The retention.
        period: Duration,
        /// Revisions recorded once per interval; the front one is the
        /// revision of a period ago.
        revs: VecDeque<i64>,
        /// Start, then the time of the last successful compaction.
        last_success: Duration,
        /// Time from `last_success` to the next compaction: the period
        /// first, `min(period, 1h)` after the first one.
        base_interval: Duration,
    },
    /// etcd's `Revision`.
    Revision {
        /// Revisions kept.
        retention: i64,
        /// The last revision compacted (0: none yet).
        prev: i64,
    },
}

impl Compactor {
    /// A compactor started at `now`.
    pub fn new(mode: AutoCompaction, now: Duration) -> Compactor {
        match mode {
            AutoCompaction::Periodic(period) => Compactor::Periodic {
                period,
                revs: VecDeque::new(),
                last_success: now,
                base_interval: period,
            },
            AutoCompaction::Revision(retention) => Compactor::Revision { retention, prev: 0 },
        }
    }

    /// How long to wait between steps (etcd's retry interval, or
    /// [`REVISION_INTERVAL`]).
    pub fn interval(&self) -> Duration {
        match self {
            Compactor::Periodic { period, .. } => (*period).min(HOUR) / RETRY_DIVISOR,
            Compactor::Revision { .. } => REVISION_INTERVAL,
        }
    }

    /// Before a wait: records the current revision `rev` (periodic mode).
    pub fn record(&mut self, rev: i64) {
        let interval = self.interval();
        if let Compactor::Periodic { period, revs, .. } = self {
            let retentions = (period.as_nanos() / interval.as_nanos().max(1)) as usize + 1;
            revs.push_back(rev);
            while revs.len() > retentions {
                revs.pop_front();
            }
        }
    }

    /// After a wait, on the leader: the revision to compact now, if any.
    pub fn due(&mut self, now: Duration, rev: i64) -> Option<i64> {
        match self {
            Compactor::Periodic {
                period,
                revs,
                last_success,
                base_interval,
            } => {
                if now.saturating_sub(*last_success) < *base_interval {
                    return None;
                }
                if *base_interval == *period {
                    *base_interval = (*period).min(HOUR);
                }
                revs.front().copied()
            }
            Compactor::Revision { retention, prev } => {
                let target = rev - *retention;
                (target > 0 && target != *prev).then_some(target)
            }
        }
    }

    /// The compaction at `rev` succeeded (or found it already compacted).
    pub fn succeeded(&mut self, now: Duration, rev: i64) {
        match self {
            Compactor::Periodic { last_success, .. } => *last_success = now,
            Compactor::Revision { prev, .. } => *prev = rev,
        }
    }

    pub(crate) fn log_start(&self, rev: i64) {
        match self {
            Compactor::Periodic { period, .. } => tracing::info!(
                revision = rev,
                compact_period = ?period,
                "starting auto periodic compaction"
            ),
            Compactor::Revision { retention, .. } => tracing::info!(
                revision = rev,
                revision_compaction_retention = retention,
                "starting auto revision compaction"
            ),
        }
    }

    pub(crate) fn log_result(&self, rev: i64, took: Duration, result: &Result<(), Error>) {
        let (mode, what) = match self {
            Compactor::Periodic { period, .. } => {
                ("periodic", format!("compact-period={period:?}"))
            }
            Compactor::Revision { retention, .. } => (
                "revision",
                format!("revision-compaction-retention={retention}"),
            ),
        };
        match result {
            Ok(()) => {
                tracing::info!(revision = rev, took = ?took, "completed auto {mode} compaction ({what})")
            }
            Err(err) => tracing::warn!(
                revision = rev,
                retry_interval = ?self.interval(),
                error = %err,
                "failed auto {mode} compaction ({what})"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn parses_etcd_retention_forms() {
        let p = |m, r| AutoCompaction::parse(m, r);
        assert_eq!(p("periodic", "0"), Ok(None));
        assert_eq!(p("periodic", "1"), Ok(Some(AutoCompaction::Periodic(HOUR))));
        assert_eq!(
            p("periodic", "30m"),
            Ok(Some(AutoCompaction::Periodic(30 * 60 * S)))
        );
        assert_eq!(
            p("periodic", "1h30m"),
            Ok(Some(AutoCompaction::Periodic(90 * 60 * S)))
        );
        assert_eq!(p("", "2"), Ok(Some(AutoCompaction::Periodic(2 * HOUR))));
        assert_eq!(
            p("revision", "1000"),
            Ok(Some(AutoCompaction::Revision(1000)))
        );
        assert_eq!(p("revision", "0"), Ok(None));
        assert!(p("revision", "1h").is_err());
        assert!(p("periodic", "x")
            .unwrap_err()
            .contains("CompactionRetention"));
        assert_eq!(
            p("hourly", "1").unwrap_err(),
            "unknown auto-compaction-mode \"hourly\""
        );
    }

    /// Steps a compactor as the thread does, with revision `rev(t)` at
    /// step t; returns (time, revision) of each compaction.
    fn run(mode: AutoCompaction, steps: u32, rev: impl Fn(u32) -> i64) -> Vec<(Duration, i64)> {
        let mut c = Compactor::new(mode, Duration::ZERO);
        let mut now = Duration::ZERO;
        let mut done = Vec::new();
        for step in 0..steps {
            c.record(rev(step));
            now += c.interval();
            if let Some(r) = c.due(now, rev(step + 1)) {
                c.succeeded(now, r);
                done.push((now, r));
            }
        }
        done
    }

    #[test]
    fn periodic_compacts_the_revision_of_a_period_ago() {
        // 10 s period: a step per second, revision 100 + 10 per second.
        let done = run(AutoCompaction::Periodic(10 * S), 35, |t| {
            100 + 10 * t as i64
        });
        assert_eq!(
            done,
            vec![(10 * S, 100), (20 * S, 190), (30 * S, 290)],
            "first after a period, then every period, each at the revision of a period ago"
        );
    }

    #[test]
    fn long_periods_compact_hourly_after_the_first() {
        // 24 h period: steps of 6 min, 241 revisions kept; first compaction
        // after 24 h at the start revision, then hourly at 24 h before.
        let mut c = Compactor::new(AutoCompaction::Periodic(24 * HOUR), Duration::ZERO);
        assert_eq!(c.interval(), 6 * 60 * S);
        let mut now = Duration::ZERO;
        let mut done = Vec::new();
        for step in 0..(26 * 10) {
            c.record(step as i64);
            now += c.interval();
            if let Some(r) = c.due(now, step as i64 + 1) {
                c.succeeded(now, r);
                done.push((now.as_secs() / 3600, r));
            }
        }
        assert_eq!(done, vec![(24, 0), (25, 9), (26, 19)]);
    }

    #[test]
    fn periodic_failure_retries_at_the_next_step() {
        let mut c = Compactor::new(AutoCompaction::Periodic(10 * S), Duration::ZERO);
        for t in 0..10 {
            c.record(t);
        }
        assert_eq!(c.due(10 * S, 10), Some(0));
        // Not marked successful: due again one step later, window moved.
        c.record(10);
        assert_eq!(c.due(11 * S, 11), Some(0));
        c.succeeded(11 * S, 0);
        c.record(11);
        assert_eq!(c.due(12 * S, 12), None);
    }

    #[test]
    fn revision_mode_keeps_the_last_n_revisions() {
        let mut c = Compactor::new(AutoCompaction::Revision(100), Duration::ZERO);
        assert_eq!(c.interval(), REVISION_INTERVAL);
        assert_eq!(c.due(Duration::ZERO, 50), None, "nothing to drop yet");
        assert_eq!(c.due(Duration::ZERO, 150), Some(50));
        c.succeeded(Duration::ZERO, 50);
        assert_eq!(c.due(Duration::ZERO, 150), None, "no writes since");
        assert_eq!(c.due(Duration::ZERO, 151), Some(51));
    }
}
