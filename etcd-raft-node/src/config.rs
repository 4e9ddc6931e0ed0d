//! [`NodeConfig`]: the settings of one raft member.

use crate::{Error, Result};
use std::time::Duration;

/// Settings of one raft member. Public fields, [`Default`] and
/// [`NodeConfig::validate`], like raft-rs's `Config`.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This member's id (non-zero).
    pub id: u64,
    /// Voting members of a cluster being bootstrapped. When it is exactly
    /// `[id]`, the member campaigns at once instead of waiting for an
    /// election timeout.
    pub voters: Vec<u64>,
    /// Index of the last entry the state machine durably applied.
    pub applied: u64,
    /// Wall time of one tick (etcd's --heartbeat-interval).
    pub tick_interval: Duration,
    /// Ticks without a leader before an election (etcd's
    /// --election-timeout divided by --heartbeat-interval).
    pub election_tick: usize,
    /// Ticks between heartbeats.
    pub heartbeat_tick: usize,
    /// Range `[min, max)` raft draws its randomized election timeout from,
    /// in ticks; 0 means raft's default (`election_tick` and twice that).
    /// raft-rs draws with the thread's RNG: a simulation that must replay
    /// from a seed sets `max = min + 1` and picks `min` from its own RNG.
    pub min_election_tick: usize,
    /// See `min_election_tick`.
    pub max_election_tick: usize,
    /// Largest append message, in bytes.
    pub max_size_per_msg: u64,
    /// Most append messages in flight per follower.
    pub max_inflight_msgs: usize,
    /// Leader steps down when it loses contact with a quorum.
    pub check_quorum: bool,
    /// Pre-vote: a partitioned member does not disrupt the cluster on return.
    pub pre_vote: bool,
    /// A `Ready`'s entries are written and synced on the raft thread
    /// itself, not handed to the WAL's writer thread, when the log holds
    /// at most this many entries the application has not applied yet
    /// (light load: nothing would share the fsync, and the hand-off costs
    /// two thread wake-ups, 20-40 us, on a request's path). Above it the
    /// writer thread takes the write: while it syncs, the raft thread
    /// gathers the next proposals into a larger `Ready` (group commit).
    /// 0: always the writer thread.
    pub persist_here_max_unapplied: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            voters: vec![1],
            applied: 0,
            tick_interval: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 1,
            min_election_tick: 0,
            max_election_tick: 0,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 512,
            check_quorum: true,
            pre_vote: true,
            persist_here_max_unapplied: 2,
        }
    }
}

impl NodeConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.id == 0 {
            return Err(Error::Config("member id must not be 0".into()));
        }
        if self.tick_interval.is_zero() {
            return Err(Error::Config("tick interval must be positive".into()));
        }
        if self.election_tick <= self.heartbeat_tick {
            return Err(Error::Config(format!(
                "election tick ({}) must be greater than heartbeat tick ({})",
                self.election_tick, self.heartbeat_tick
            )));
        }
        Ok(())
    }
}
