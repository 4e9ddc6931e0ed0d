//! Settings of an embedded member, named after etcd's flags.

use crate::error::StartError;
use std::path::PathBuf;
use std::time::Duration;

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrap a new cluster.
    #[default]
    New,
    /// Join an existing cluster.
    Existing,
}

/// Settings of one member. Public fields, [`Default`] (etcd's defaults) and
/// [`Config::validate`].
#[derive(Clone, Debug)]
pub struct Config {
    /// `--name`.
    pub name: String,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--wal-dir`: the WAL in a directory of its own (a dedicated disk,
    /// as etcd's tuning guide advises); None: `<data-dir>/member/wal`.
    pub wal_dir: Option<PathBuf>,
    /// `--initial-cluster`: `name=peer-url,...`.
    pub initial_cluster: String,
    /// `--initial-cluster-state`.
    pub initial_cluster_state: ClusterState,
    /// `--initial-cluster-token`.
    pub initial_cluster_token: String,
    /// `--initial-advertise-peer-urls`.
    pub initial_advertise_peer_urls: Vec<String>,
    /// `--listen-peer-urls`: where peers' raft traffic is accepted (the
    /// first URL is bound). Empty: no peer listener, which only a
    /// single-member cluster can do without (the embedded default).
    pub listen_peer_urls: Vec<String>,
    /// `--force-new-cluster`: restart a member on its data directory as
    /// the only member of its cluster (disaster recovery after a quorum
    /// is lost for good): uncommitted entries are dropped and the other
    /// members removed through the log. No effect on an empty data
    /// directory; harmless on later restarts (nobody is left to remove).
    pub force_new_cluster: bool,
    /// `--strict-reconfig-check`: refuse membership changes that would
    /// leave too few started members for a quorum.
    pub strict_reconfig_check: bool,
    /// `--advertise-client-urls`.
    pub advertise_client_urls: Vec<String>,
    /// `--heartbeat-interval`.
    pub heartbeat_interval: Duration,
    /// `--election-timeout`.
    pub election_timeout: Duration,
    /// `--max-request-bytes`: largest request accepted.
    pub max_request_bytes: u64,
    /// `--max-txn-ops`: most operations in one txn.
    pub max_txn_ops: usize,
    /// `--experimental-watch-progress-notify-interval`: how often watchers
    /// created with `progress_notify` get an empty response (etcd: 10 min).
    pub watch_progress_notify_interval: Duration,
    /// `--snapshot-count`: applied entries between raft log compactions.
    pub snapshot_count: u64,
    /// Entries kept in the raft log below a compaction point, for
    /// followers that lag (etcd keeps 5000).
    pub snapshot_catch_up_entries: u64,
    /// `--quota-backend-bytes`: writes fail with "database space exceeded"
    /// once the database is this large (0 = the default, 2 GiB;
    /// `u64::MAX` = no quota, what etcd's negative values mean).
    pub quota_backend_bytes: u64,
    /// `--experimental-lease-checkpoint-interval`: how often the leader
    /// records leases' remaining TTLs through raft (zero: never).
    pub lease_checkpoint_interval: Duration,
    /// `--auth-token`: the tokens Authenticate issues (`simple`, or
    /// `jwt,...` with keys read at start).
    pub auth_token: crate::auth::TokenOptions,
    /// `--auth-token-ttl`: how long a simple token lives past its last use
    /// (etcd: 300 s).
    pub auth_token_ttl: Duration,
    /// `--bcrypt-cost`: cost of the password hashes (etcd: 10; 4..=31).
    pub bcrypt_cost: u32,
    /// `--auto-compaction-mode` and `--auto-compaction-retention`: how much
    /// history the leader keeps when it compacts on its own (`None`: never,
    /// etcd's default).
    pub auto_compaction: Option<crate::AutoCompaction>,
    /// `--experimental-initial-corrupt-check`: compare this member's
    /// HashKV with its peers' before serving; a mismatch fails the start.
    pub initial_corrupt_check: bool,
    /// `--experimental-corrupt-check-time`: how often the leader compares
    /// HashKVs and raises CORRUPT on a mismatch (zero: never).
    pub corrupt_check_time: Duration,
    /// `--auto-disarm-nospace` (beyond etcd, off by default): a member
    /// whose store a defragmentation took back under 80% of its quota
    /// disarms the NOSPACE alarm it raised.
    pub auto_disarm_nospace: bool,
}

/// The largest quota etcd recommends (8 GiB): above it, a warning at start.
pub const MAX_QUOTA_BYTES: u64 = 8 * 1024 * 1024 * 1024;

/// etcd's default `--quota-backend-bytes` (2 GiB).
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;

impl Default for Config {
    fn default() -> Self {
        Config {
            name: "default".into(),
            data_dir: PathBuf::from("default.etcd"),
            wal_dir: None,
            initial_cluster: "default=http://localhost:2380".into(),
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".into(),
            initial_advertise_peer_urls: vec!["http://localhost:2380".into()],
            listen_peer_urls: Vec::new(),
            force_new_cluster: false,
            strict_reconfig_check: true,
            advertise_client_urls: vec!["http://localhost:2379".into()],
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            watch_progress_notify_interval: Duration::from_secs(600),
            snapshot_count: 100_000,
            snapshot_catch_up_entries: 5_000,
            quota_backend_bytes: 0,
            lease_checkpoint_interval: crate::lessor::DEFAULT_CHECKPOINT_INTERVAL,
            auth_token: crate::auth::TokenOptions::Simple,
            auth_token_ttl: Duration::from_secs(300),
            bcrypt_cost: 10,
            auto_compaction: None,
            initial_corrupt_check: false,
            corrupt_check_time: Duration::ZERO,
            auto_disarm_nospace: false,
        }
    }
}

impl Config {
    /// A config for a single member named `name` with its data in `data_dir`.
    pub fn single(name: &str, data_dir: impl Into<PathBuf>) -> Config {
        Config {
            name: name.into(),
            data_dir: data_dir.into(),
            initial_cluster: format!("{name}=http://localhost:2380"),
            ..Config::default()
        }
    }

    /// Checks the settings; the error names the setting at fault.
    pub fn validate(&self) -> Result<(), StartError> {
        let bad = |s: String| Err(StartError::Config(s));
        if self.name.is_empty() {
            return bad("--name must not be empty".into());
        }
        if self.heartbeat_interval.is_zero() {
            return bad("--heartbeat-interval must be positive".into());
        }
        if self.election_timeout < self.heartbeat_interval * 5 {
            return bad(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout.as_millis(),
                self.heartbeat_interval.as_millis()
            ));
        }
        if self.election_timeout > Duration::from_millis(50_000) {
            return bad(format!(
                "--election-timeout[{}ms] is too long, and should be set less than 50000ms",
                self.election_timeout.as_millis()
            ));
        }
        if self.max_request_bytes == 0 {
            return bad("--max-request-bytes must be positive".into());
        }
        if self.snapshot_count == 0 {
            return bad("--snapshot-count must be positive".into());
        }
        if self.watch_progress_notify_interval.is_zero() {
            return bad("--experimental-watch-progress-notify-interval must be positive".into());
        }
        if self.max_txn_ops == 0 {
            return bad("--max-txn-ops must be positive".into());
        }
        if !(4..=31).contains(&self.bcrypt_cost) {
            return bad(format!(
                "--bcrypt-cost {} is out of range (4 to 31)",
                self.bcrypt_cost
            ));
        }
        if self.auth_token_ttl.is_zero() {
            return bad("--auth-token-ttl must be positive".into());
        }
        for u in &self.listen_peer_urls {
            if let Err(e) = peer_addr(u) {
                return bad(format!("--listen-peer-urls: {e}"));
            }
        }
        Ok(())
    }

    /// The effective quota in bytes.
    pub fn quota_bytes(&self) -> u64 {
        if self.quota_backend_bytes == 0 {
            DEFAULT_QUOTA_BYTES
        } else {
            self.quota_backend_bytes
        }
    }

    /// How long a request may wait to be applied (etcd: 5 s plus two
    /// election timeouts).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(5) + self.election_timeout * 2
    }
}

/// The `host:port` of a peer URL (`http://host:port` or
/// `https://host:port`; whether peer traffic is TLS is the transport's
/// setting, [`StartOptions::peer_tls`](crate::StartOptions::peer_tls)).
pub(crate) fn peer_addr(url: &str) -> Result<String, String> {
    let rest = if let Some(r) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    {
        r
    } else {
        return Err(format!("{url:?} must start with http:// or https://"));
    };
    let hostport = rest.split('/').next().unwrap_or_default();
    if hostport.is_empty() || !hostport.contains(':') {
        return Err(format!("{url:?} must name a host and a port"));
    }
    Ok(hostport.to_string())
}
