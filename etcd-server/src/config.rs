//! etcd's command-line flags and `ETCD_*` environment variables.
//!
//! Rules, as etcd applies them:
//! - every flag `--foo-bar` can also be given as `ETCD_FOO_BAR`;
//! - a setting given both ways is an error naming both;
//! - an `ETCD_*` variable that matches no flag is reported (a warning);
//! - Go's flag syntax with one dash (`-name infra0`, `-name=infra0`) works
//!   as well as two;
//! - unknown flags fail with a clear message.

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use etcd_core::ClusterState;
use std::ffi::OsString;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// The flags of `etcd-server` (the subset of etcd's that this build serves).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "etcd-server",
    about = "An etcd-compatible consensus key-value store (etcd v3 API)",
    disable_version_flag = true
)]
pub struct Flags {
    /// Path to the server configuration file (YAML, etcd's keys). Other
    /// command-line flags and environment variables are then ignored.
    #[arg(long, env = "ETCD_CONFIG_FILE")]
    pub config_file: Option<String>,
    /// Human-readable name for this member.
    #[arg(long, env = "ETCD_NAME", default_value = "default")]
    pub name: String,
    /// Path to the data directory (default: ${name}.etcd).
    #[arg(long, env = "ETCD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Path to a dedicated WAL directory (default: in the data directory).
    #[arg(long, env = "ETCD_WAL_DIR")]
    pub wal_dir: Option<String>,
    /// List of URLs to listen on for client traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub listen_client_urls: String,
    /// List of this member's client URLs to advertise to the public.
    #[arg(
        long,
        env = "ETCD_ADVERTISE_CLIENT_URLS",
        default_value = "http://localhost:2379"
    )]
    pub advertise_client_urls: String,
    /// List of URLs to listen on for peer traffic.
    #[arg(
        long,
        env = "ETCD_LISTEN_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub listen_peer_urls: String,
    /// List of this member's peer URLs to advertise to the rest of the cluster.
    #[arg(
        long,
        env = "ETCD_INITIAL_ADVERTISE_PEER_URLS",
        default_value = "http://localhost:2380"
    )]
    pub initial_advertise_peer_urls: String,
    /// Initial cluster configuration for bootstrapping (name=url,...).
    #[arg(long, env = "ETCD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Initial cluster state ('new' or 'existing').
    #[arg(long, env = "ETCD_INITIAL_CLUSTER_STATE", default_value = "new")]
    pub initial_cluster_state: String,
    /// Initial cluster token for the etcd cluster during bootstrap.
    #[arg(
        long,
        env = "ETCD_INITIAL_CLUSTER_TOKEN",
        default_value = "etcd-cluster"
    )]
    pub initial_cluster_token: String,
    /// Time (in milliseconds) of a heartbeat interval.
    #[arg(long, env = "ETCD_HEARTBEAT_INTERVAL", default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Time (in milliseconds) for an election to timeout.
    #[arg(long, env = "ETCD_ELECTION_TIMEOUT", default_value_t = 1000)]
    pub election_timeout: u64,
    /// Maximum client request size in bytes the server will accept.
    #[arg(long, env = "ETCD_MAX_REQUEST_BYTES", default_value_t = 1536 * 1024)]
    pub max_request_bytes: u64,
    /// Maximum number of operations permitted in a transaction.
    #[arg(long, env = "ETCD_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,
    /// Duration of periodic watch progress notifications (Go duration, e.g. '10m', '500ms').
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_WATCH_PROGRESS_NOTIFY_INTERVAL",
        default_value = "10m",
        value_parser = etcd_core::parse_go_duration
    )]
    pub experimental_watch_progress_notify_interval: Duration,
    /// Number of committed transactions to trigger a raft log compaction.
    #[arg(long, env = "ETCD_SNAPSHOT_COUNT", default_value_t = 100_000)]
    pub snapshot_count: u64,
    /// Entries kept in the raft log after a compaction, for slow followers.
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_SNAPSHOT_CATCHUP_ENTRIES",
        default_value_t = 5_000
    )]
    pub experimental_snapshot_catchup_entries: u64,
    /// Force to create a new one member cluster.
    #[arg(
        long,
        env = "ETCD_FORCE_NEW_CLUSTER",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub force_new_cluster: bool,
    /// Reject reconfiguration requests that would cause quorum loss.
    #[arg(
        long,
        env = "ETCD_STRICT_RECONFIG_CHECK",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub strict_reconfig_check: bool,
    /// Raise alarms when backend size exceeds the given quota (0 defaults to 2 GiB; negative disables the quota).
    #[arg(
        long,
        env = "ETCD_QUOTA_BACKEND_BYTES",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub quota_backend_bytes: i64,
    /// Specify auth token specific options: 'simple', or
    /// 'jwt,pub-key=<file>,priv-key=<file>,sign-method=<alg>,ttl=<duration>'.
    // The text is also --help's (clap), so it stays as etcd writes it.
    #[allow(rustdoc::invalid_html_tags)]
    #[arg(long, env = "ETCD_AUTH_TOKEN", default_value = "simple")]
    pub auth_token: String,
    /// The lifetime in seconds of a simple auth token (extended by every use).
    #[arg(long, env = "ETCD_AUTH_TOKEN_TTL", default_value_t = 300)]
    pub auth_token_ttl: u64,
    /// Specify bcrypt algorithm cost factor for auth password hashing (4 to 31).
    #[arg(long, env = "ETCD_BCRYPT_COST", default_value_t = 10)]
    pub bcrypt_cost: u32,
    /// Enable GRPC gateway (the JSON API under /v3/ on the client URLs).
    #[arg(
        long,
        env = "ETCD_ENABLE_GRPC_GATEWAY",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub enable_grpc_gateway: bool,
    /// Maximum concurrent streams that each client can open at a time.
    #[arg(long, env = "ETCD_MAX_CONCURRENT_STREAMS", default_value_t = u32::MAX)]
    pub max_concurrent_streams: u32,
    /// Minimum interval duration that a client should wait before pinging
    /// server.
    #[arg(
        long,
        env = "ETCD_GRPC_KEEPALIVE_MIN_TIME",
        default_value = "5s",
        value_parser = etcd_core::parse_go_duration
    )]
    pub grpc_keepalive_min_time: Duration,
    /// Frequency duration of server-to-client ping to check if a connection
    /// is alive (0 to disable).
    #[arg(
        long,
        env = "ETCD_GRPC_KEEPALIVE_INTERVAL",
        default_value = "2h",
        value_parser = etcd_core::parse_go_duration
    )]
    pub grpc_keepalive_interval: Duration,
    /// Additional duration of wait before closing a non-responsive
    /// connection (0 to disable).
    #[arg(
        long,
        env = "ETCD_GRPC_KEEPALIVE_TIMEOUT",
        default_value = "20s",
        value_parser = etcd_core::parse_go_duration
    )]
    pub grpc_keepalive_timeout: Duration,
    /// Enable to check data corruption before serving any client/peer traffic.
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_INITIAL_CORRUPT_CHECK",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub experimental_initial_corrupt_check: bool,
    /// Duration of time between cluster corruption check passes (0s: off).
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_CORRUPT_CHECK_TIME",
        default_value = "0s",
        value_parser = etcd_core::parse_go_duration
    )]
    pub experimental_corrupt_check_time: Duration,
    /// Beyond etcd: a member whose store a defragmentation takes back under
    /// 80% of --quota-backend-bytes disarms its own NOSPACE alarm (etcd
    /// waits for `etcdctl alarm disarm`).
    #[arg(
        long,
        env = "ETCD_AUTO_DISARM_NOSPACE",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub auto_disarm_nospace: bool,
    /// Set level of detail for exported metrics, specify 'extensive' to
    /// include server side grpc histogram metrics.
    #[arg(long, env = "ETCD_METRICS", default_value = "basic")]
    pub metrics: String,
    /// List of URLs to listen on for the metrics and health endpoints.
    #[arg(long, env = "ETCD_LISTEN_METRICS_URLS", default_value = "")]
    pub listen_metrics_urls: String,
    /// Interpret 'auto-compaction-retention' one of: periodic|revision.
    /// 'periodic' for duration based retention, defaulting to hours if no
    /// time unit is provided (e.g. '5m'). 'revision' for revision number
    /// based retention.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_MODE", default_value = "periodic")]
    pub auto_compaction_mode: String,
    /// Auto compaction retention for mvcc key value store. 0 means disable
    /// auto compaction.
    #[arg(long, env = "ETCD_AUTO_COMPACTION_RETENTION", default_value = "0")]
    pub auto_compaction_retention: String,
    /// Interval of lease remaining-TTL checkpoints through raft (Go duration, e.g. 5m0s).
    #[arg(
        long,
        env = "ETCD_EXPERIMENTAL_LEASE_CHECKPOINT_INTERVAL",
        default_value = "5m0s",
        value_parser = etcd_core::parse_go_duration
    )]
    pub experimental_lease_checkpoint_interval: Duration,
    /// Configures log level: debug, info, warn, error, panic, or fatal.
    #[arg(long, env = "ETCD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Logger: 'zap' (JSON lines, etcd 3.5's default) or 'capnslog' (etcd
    /// 3.4's text lines).
    #[arg(long, env = "ETCD_LOGGER", default_value = "zap")]
    pub logger: String,
    /// Where to write logs: comma-separated 'default', 'stderr', 'stdout'
    /// or file paths.
    #[arg(long, env = "ETCD_LOG_OUTPUTS", default_value = "default")]
    pub log_outputs: String,
    /// Path to the client server TLS cert file.
    #[arg(long, env = "ETCD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Path to the client server TLS key file.
    #[arg(long, env = "ETCD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// Path to the client server TLS trusted CA cert file (requires client certificates).
    #[arg(long, env = "ETCD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Enable client cert authentication.
    #[arg(
        long,
        env = "ETCD_CLIENT_CERT_AUTH",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub client_cert_auth: bool,
    /// Path to the client certificate revocation list file.
    #[arg(long, env = "ETCD_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<PathBuf>,
    /// Allowed TLS hostname for client cert authentication.
    #[arg(long, env = "ETCD_CLIENT_CERT_ALLOWED_HOSTNAME")]
    pub client_cert_allowed_hostname: Option<String>,
    /// Client TLS using generated certificates.
    #[arg(
        long,
        env = "ETCD_AUTO_TLS",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub auto_tls: bool,
    /// The validity period of the self-signed certificate, in years.
    #[arg(long, env = "ETCD_SELF_SIGNED_CERT_VALIDITY", default_value_t = 1)]
    pub self_signed_cert_validity: u32,
    /// Comma-separated list of supported TLS cipher suites between client/server and peers.
    #[arg(long, env = "ETCD_CIPHER_SUITES")]
    pub cipher_suites: Option<String>,
    /// Minimum TLS version supported by etcd (TLS1.2 or TLS1.3).
    #[arg(long, env = "ETCD_TLS_MIN_VERSION")]
    pub tls_min_version: Option<String>,
    /// Maximum TLS version supported by etcd (TLS1.2 or TLS1.3).
    #[arg(long, env = "ETCD_TLS_MAX_VERSION")]
    pub tls_max_version: Option<String>,
    /// Path to the peer server TLS cert file.
    #[arg(long, env = "ETCD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Path to the peer server TLS key file.
    #[arg(long, env = "ETCD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Path to the peer server TLS trusted CA file.
    #[arg(long, env = "ETCD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Enable peer client cert authentication.
    #[arg(
        long,
        env = "ETCD_PEER_CLIENT_CERT_AUTH",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub peer_client_cert_auth: bool,
    /// Path to the peer certificate revocation list file.
    #[arg(long, env = "ETCD_PEER_CRL_FILE")]
    pub peer_crl_file: Option<PathBuf>,
    /// Peer TLS using self-generated certificates if --peer-key-file and --peer-cert-file are not provided.
    #[arg(
        long,
        env = "ETCD_PEER_AUTO_TLS",
        default_value_t = false,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub peer_auto_tls: bool,
    /// Allowed CN for inter peer authentication.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,
    /// Allowed TLS hostname for inter peer authentication.
    #[arg(long, env = "ETCD_PEER_CERT_ALLOWED_HOSTNAME")]
    pub peer_cert_allowed_hostname: Option<String>,
    /// Print the version and exit.
    #[arg(long)]
    pub version: bool,
}

/// Settings derived from the flags, checked and ready to run.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The engine's settings.
    pub core: etcd_core::Config,
    /// Where to serve clients.
    pub client_listeners: Vec<ClientListener>,
    /// Client TLS (`--cert-file` ...), when any TLS flag is set.
    pub client_tls: Option<crate::tls::TlsSettings>,
    /// Peer TLS (`--peer-cert-file` ...), when the peer URLs are https.
    pub peer_tls: Option<crate::tls::PeerTlsSettings>,
    /// `--logger`, `--log-level`, `--log-outputs`.
    pub log: crate::logging::LogSettings,
    /// `--metrics extensive`: also `grpc_server_handling_seconds`.
    pub metrics_extensive: bool,
    /// `--max-concurrent-streams`: HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// `--enable-grpc-gateway`: serve the JSON gateway (`/v3/*`).
    pub enable_grpc_gateway: bool,
    /// `--grpc-keepalive-min-time`: clients pinging more often are sent
    /// GOAWAY `too_many_pings` (grpc-go's policy, `keepalive.rs`).
    pub grpc_keepalive_min_time: Duration,
    /// `--grpc-keepalive-interval`: server pings an idle connection this
    /// often (None: never).
    pub grpc_keepalive_interval: Option<Duration>,
    /// `--grpc-keepalive-timeout`: and closes it when the ping is not
    /// answered within this long.
    pub grpc_keepalive_timeout: Option<Duration>,
}

/// One `--listen-client-urls` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientListener {
    /// The URL as given.
    pub url: String,
    /// The address to bind.
    pub addr: SocketAddr,
    /// `https://`: TLS with the client TLS settings.
    pub tls: bool,
    /// A `--listen-metrics-urls` URL: serves `/metrics` and `/health` only.
    pub metrics_only: bool,
}

/// What the command line asked for.
pub enum Command {
    /// Run the server.
    Run(Box<ServerConfig>),
    /// Print the version and exit.
    Version,
}

/// Parses arguments (without the program name handling: `args` includes
/// it) and the environment given as `(name, value)` pairs.
pub fn parse<I, E>(args: I, env: E) -> Result<(Command, Vec<String>), String>
where
    I: IntoIterator<Item = OsString>,
    E: IntoIterator<Item = (String, String)>,
{
    let env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| k.starts_with("ETCD_"))
        .collect();
    // (flag id, --long, ETCD_ name) of every flag that has an env var.
    let vars: Vec<(String, String, String)> = Flags::command()
        .get_arguments()
        .filter_map(|a| {
            let var = a.get_env()?.to_string_lossy().into_owned();
            Some((a.get_id().to_string(), a.get_long()?.to_string(), var))
        })
        .collect();
    // clap would read the process environment itself; the environment is
    // applied here instead, from `env`, so parsing depends only on inputs.
    // A flag given twice: the last one counts, as with Go's flag package.
    let command = || {
        Flags::command()
            .args_override_self(true)
            .mut_args(|a| a.env(clap::builder::Resettable::Reset))
    };
    let longs: Vec<String> = command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    let args: Vec<OsString> = args
        .into_iter()
        .map(|a| single_dash_to_double(a, &longs))
        .collect();
    let cli = command()
        .try_get_matches_from(&args)
        .map_err(|e| e.to_string())?;
    let mut with_env = args[..1.min(args.len())].to_vec();
    for (id, long, var) in &vars {
        let Some((_, value)) = env.iter().find(|(k, _)| k == var) else {
            continue;
        };
        if cli.value_source(id) == Some(ValueSource::CommandLine) {
            // A setting given both ways is an error naming both.
            return Err(format!(
                "conflicting environment variable {var:?} is shadowed by corresponding \
                 command-line flag --{long} (either unset environment variable or disable flag)"
            ));
        }
        with_env.push(OsString::from(format!("--{long}={value}")));
    }
    let program = args[..1.min(args.len())].to_vec();
    with_env.extend(args.into_iter().skip(1));
    let matches = command()
        .try_get_matches_from(with_env)
        .map_err(|e| e.to_string())?;
    let mut warnings = Vec::new();
    for (k, v) in &env {
        if vars.iter().any(|(_, _, var)| var == k)
            || k == "ETCD_VERSION"
            || k == "ETCD_UNSUPPORTED_ARCH"
        {
            continue;
        }
        let flag = k["ETCD_".len()..].to_ascii_lowercase().replace('_', "-");
        if unsupported_default(&flag) == Some(v.as_str()) {
            warnings.push(format!("{k}={v}: etcd's default; nothing to do"));
            continue;
        }
        if ETCD_FLAGS.contains(&flag.as_str()) {
            // An etcd setting this server would not honour: refusing to
            // start beats silently running without it.
            return Err(format!(
                "{k}={v}: etcd's --{flag} is not supported by this server; unset {k} to start"
            ));
        }
        // Like etcd: a variable that is no etcd flag at all is only reported.
        warnings.push(format!("unrecognized environment variable {k}={v}"));
    }
    let flags = Flags::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    if flags.version {
        return Ok((Command::Version, warnings));
    }
    if let Some(path) = &flags.config_file {
        return parse_config_file(path, &program, &longs);
    }
    Ok((Command::Run(Box::new(flags.into_config()?)), warnings))
}

/// `--config-file`: the file's settings alone (see `config_file.rs`).
fn parse_config_file(
    path: &str,
    program: &[OsString],
    longs: &[String],
) -> Result<(Command, Vec<String>), String> {
    let mut warnings = vec![format!(
        "loading server configuration from {path:?}; other configuration command line \
         flags and environment variables will be ignored if provided"
    )];
    let mut args = program.to_vec();
    for arg in crate::config_file::args(path)? {
        let s = arg.to_string_lossy().into_owned();
        let (flag, value) = s[2..].split_once('=').expect("--flag=value");
        if longs.iter().any(|l| l == flag) {
            args.push(arg);
        } else if unsupported_default(flag) == Some(value) {
            warnings.push(format!("{flag}: {value} is etcd's default; nothing to do"));
        } else if ETCD_FLAGS.contains(&flag) {
            return Err(format!(
                "--config-file {path}: {flag}: etcd's --{flag} is not supported by this server; \
                 remove it to start"
            ));
        } else {
            return Err(format!("--config-file {path}: unknown key {flag:?}"));
        }
    }
    let (command, more) = parse(args, std::iter::empty())?;
    warnings.extend(more);
    Ok((command, warnings))
}

/// etcd's default value of an etcd flag this server does not have, for
/// the flags whose default asks for nothing (no proxy, no discovery, no
/// pprof ...): setting one of them to its default (as etcd's sample config
/// file does) is accepted.
pub(crate) fn unsupported_default(flag: &str) -> Option<&'static str> {
    const DEFAULTS: &[(&str, &str)] = &[
        ("max-snapshots", "5"),
        ("max-wals", "5"),
        ("cors", ""),
        ("discovery", ""),
        ("discovery-fallback", "proxy"),
        ("discovery-proxy", ""),
        ("discovery-srv", ""),
        ("discovery-srv-name", ""),
        ("enable-pprof", "false"),
        ("proxy", "off"),
        ("proxy-failure-wait", "5000"),
        ("proxy-refresh-interval", "30000"),
        ("proxy-dial-timeout", "1000"),
        ("proxy-write-timeout", "5000"),
        ("proxy-read-timeout", "0"),
        ("debug", "false"),
        ("enable-v2", "false"),
        ("log-package-levels", ""),
        ("unsafe-no-fsync", "false"),
    ];
    DEFAULTS.iter().find(|(f, _)| *f == flag).map(|(_, d)| *d)
}

/// Every flag of etcd 3.4 (`etcd --help`) and the 3.5 flags operators
/// carry over: an `ETCD_*` variable naming one this server does not
/// define is a startup error, not a silent ignore.
const ETCD_FLAGS: &[&str] = &[
    "advertise-client-urls",
    "auth-token",
    "auth-token-ttl",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "auto-tls",
    "backend-batch-interval",
    "backend-batch-limit",
    "bcrypt-cost",
    "cert-file",
    "cipher-suites",
    "client-cert-allowed-hostname",
    "client-cert-auth",
    "client-crl-file",
    "config-file",
    "cors",
    "data-dir",
    "debug",
    "discovery",
    "discovery-fallback",
    "discovery-proxy",
    "discovery-srv",
    "discovery-srv-name",
    "election-timeout",
    "enable-grpc-gateway",
    "enable-log-rotation",
    "enable-pprof",
    "enable-v2",
    "experimental-backend-bbolt-freelist-type",
    "experimental-compact-hash-check-enabled",
    "experimental-compact-hash-check-time",
    "experimental-compaction-batch-limit",
    "experimental-compaction-sleep-interval",
    "experimental-corrupt-check-time",
    "experimental-downgrade-check-time",
    "experimental-enable-distributed-tracing",
    "experimental-enable-lease-checkpoint",
    "experimental-enable-lease-checkpoint-persist",
    "experimental-enable-v2v3",
    "experimental-initial-corrupt-check",
    "experimental-lease-checkpoint-interval",
    "experimental-memory-mlock",
    "experimental-peer-skip-client-san-verification",
    "experimental-snapshot-catchup-entries",
    "experimental-txn-mode-write-with-shared-buffer",
    "experimental-warning-apply-duration",
    "experimental-warning-unary-request-duration",
    "experimental-watch-progress-notify-interval",
    "force-new-cluster",
    "grpc-keepalive-interval",
    "grpc-keepalive-min-time",
    "grpc-keepalive-timeout",
    "heartbeat-interval",
    "host-whitelist",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "initial-election-tick-advance",
    "key-file",
    "listen-client-http-urls",
    "listen-client-urls",
    "listen-metrics-urls",
    "listen-peer-urls",
    "log-level",
    "log-outputs",
    "log-package-levels",
    "log-rotation-config-json",
    "logger",
    "max-concurrent-streams",
    "max-request-bytes",
    "max-snapshots",
    "max-txn-ops",
    "max-wals",
    "metrics",
    "name",
    "peer-auto-tls",
    "peer-cert-allowed-cn",
    "peer-cert-allowed-hostname",
    "peer-cert-file",
    "peer-client-cert-auth",
    "peer-crl-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "pre-vote",
    "proxy",
    "proxy-dial-timeout",
    "proxy-failure-wait",
    "proxy-read-timeout",
    "proxy-refresh-interval",
    "proxy-write-timeout",
    "quota-backend-bytes",
    "self-signed-cert-validity",
    "snapshot-count",
    "socket-reuse-address",
    "socket-reuse-port",
    "strict-reconfig-check",
    "tls-max-version",
    "tls-min-version",
    "unsafe-no-fsync",
    "wal-dir",
];

/// Go's flag package accepts `-name`; clap wants `--name`.
fn single_dash_to_double(arg: OsString, longs: &[String]) -> OsString {
    let Some(s) = arg.to_str() else { return arg };
    if s.starts_with("--") || !s.starts_with('-') {
        return arg;
    }
    let name = s[1..].split('=').next().unwrap_or("");
    if longs.iter().any(|l| l == name) {
        OsString::from(format!("-{s}"))
    } else {
        arg
    }
}

fn split_urls(flag: &str, s: &str) -> Result<Vec<String>, String> {
    let urls: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(format!("--{flag} must not be empty"));
    }
    for u in &urls {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            return Err(format!(
                "--{flag}: URL {u:?} must start with http:// or https://"
            ));
        }
    }
    Ok(urls)
}

/// The host of a URL (`scheme://host:port/...`), brackets removed.
fn url_host(url: &str) -> Option<String> {
    let rest = url.split("://").nth(1)?;
    let hostport = rest.split('/').next()?;
    let host = match hostport.rsplit_once(':') {
        Some((h, _)) => h,
        None => hostport,
    };
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
}

/// Resolves an `http://host:port` or `https://host:port` URL to the
/// address to bind.
fn listen_addr(flag: &str, url: &str) -> Result<SocketAddr, String> {
    let hostport = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    if hostport.contains('/') {
        return Err(format!("--{flag}: URL {url:?} must not have a path"));
    }
    let addrs: Vec<SocketAddr> = hostport
        .to_socket_addrs()
        .map_err(|e| format!("--{flag}: cannot resolve {url:?}: {e}"))?
        .collect();
    // Like Go's net.Listen on "localhost": prefer IPv4.
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("--{flag}: {url:?} resolves to no address"))
}

impl Flags {
    /// `--cipher-suites`, split at commas.
    fn cipher_suite_list(&self) -> Vec<String> {
        self.cipher_suites
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// The client TLS settings, or None when no listener uses https (etcd
    /// then ignores the TLS files, with a warning).
    fn client_tls(
        &self,
        listeners: &[ClientListener],
        data_dir: &std::path::Path,
    ) -> Result<Option<crate::tls::TlsSettings>, String> {
        let auto = (self.auto_tls && self.cert_file.is_none()).then(|| crate::tls::AutoTls {
            dir: data_dir.join("fixtures").join("client"),
            hosts: listeners
                .iter()
                .map(|l| l.addr.ip().to_string())
                .chain(["localhost".to_string()])
                .collect(),
            validity_years: self.self_signed_cert_validity,
        });
        if self.auto_tls && self.cert_file.is_some() {
            tracing::warn!("ignoring client auto TLS since certs given");
        }
        let settings = crate::tls::TlsSettings {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            trusted_ca_file: self.trusted_ca_file.clone(),
            client_cert_auth: self.client_cert_auth,
            crl_file: self.client_crl_file.clone(),
            allowed_hostname: self.client_cert_allowed_hostname.clone(),
            auto_tls: auto,
            cipher_suites: self.cipher_suite_list(),
            min_version: self.tls_min_version.clone(),
            max_version: self.tls_max_version.clone(),
        };
        settings.validate()?;
        let https: Vec<&str> = listeners
            .iter()
            .filter(|l| l.tls)
            .map(|l| l.url.as_str())
            .collect();
        if https.is_empty() {
            if settings.has_server_cert() {
                tracing::warn!(
                    "client TLS settings are given but no --listen-client-urls is https://; serving plain HTTP only"
                );
            }
            return Ok(None);
        }
        if !settings.has_server_cert() {
            return Err(format!(
                "--listen-client-urls: {} needs TLS: give --cert-file and --key-file (or --auto-tls)",
                https.join(",")
            ));
        }
        Ok(Some(settings))
    }

    /// Checks the flags and derives the server settings.
    pub fn into_config(self) -> Result<ServerConfig, String> {
        let log =
            crate::logging::LogSettings::parse(&self.logger, &self.log_level, &self.log_outputs)?;
        let initial_cluster_state = match self.initial_cluster_state.as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => {
                return Err(format!(
                    "--initial-cluster-state={other:?}: must be 'new' or 'existing'"
                ))
            }
        };
        let listen = split_urls("listen-client-urls", &self.listen_client_urls)?;
        let client_listeners = listen
            .iter()
            .map(|u| {
                listen_addr("listen-client-urls", u).map(|addr| ClientListener {
                    url: u.clone(),
                    addr,
                    tls: u.starts_with("https://"),
                    metrics_only: false,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut client_listeners = client_listeners;
        if !self.listen_metrics_urls.is_empty() {
            for u in split_urls("listen-metrics-urls", &self.listen_metrics_urls)? {
                client_listeners.push(ClientListener {
                    addr: listen_addr("listen-metrics-urls", &u)?,
                    tls: u.starts_with("https://"),
                    url: u,
                    metrics_only: true,
                });
            }
        }
        let metrics_extensive = match self.metrics.as_str() {
            "basic" => false,
            "extensive" => true,
            other => {
                return Err(format!(
                    "--metrics={other:?}: must be 'basic' or 'extensive'"
                ))
            }
        };
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{}.etcd", self.name)));
        let client_tls = self.client_tls(&client_listeners, &data_dir)?;
        let cipher_suites = self.cipher_suite_list();
        let advertise_client_urls =
            split_urls("advertise-client-urls", &self.advertise_client_urls)?;
        let listen_peer_urls = split_urls("listen-peer-urls", &self.listen_peer_urls)?;
        let peer_urls = split_urls(
            "initial-advertise-peer-urls",
            &self.initial_advertise_peer_urls,
        )?;
        let initial_cluster = self.initial_cluster.unwrap_or_else(|| {
            // etcd's default: this member at each of its advertised peer URLs.
            peer_urls
                .iter()
                .map(|u| format!("{}={u}", self.name))
                .collect::<Vec<_>>()
                .join(",")
        });

        let peer_https = listen_peer_urls
            .iter()
            .chain(&peer_urls)
            .any(|u| u.starts_with("https://"));
        let peer_tls = crate::tls::PeerTlsSettings {
            files: crate::tls::TlsSettings {
                cert_file: self.peer_cert_file,
                key_file: self.peer_key_file,
                trusted_ca_file: self.peer_trusted_ca_file,
                client_cert_auth: self.peer_client_cert_auth,
                crl_file: self.peer_crl_file,
                // Shared with the client side, as in etcd, whether or not
                // any client URL is https.
                cipher_suites,
                min_version: self.tls_min_version.clone(),
                max_version: self.tls_max_version.clone(),
                auto_tls: self.peer_auto_tls.then(|| crate::tls::AutoTls {
                    dir: data_dir.join("fixtures").join("peer"),
                    hosts: listen_peer_urls
                        .iter()
                        .chain(&peer_urls)
                        .filter_map(|u| url_host(u))
                        .chain(["localhost".to_string()])
                        .collect(),
                    validity_years: self.self_signed_cert_validity,
                }),
                ..Default::default()
            },
            allowed_cn: self.peer_cert_allowed_cn,
            allowed_hostname: self.peer_cert_allowed_hostname,
        };
        let peer_tls = if peer_https {
            peer_tls.validate().map_err(|e| {
                format!("--listen-peer-urls/--initial-advertise-peer-urls are https: {e}")
            })?;
            Some(peer_tls)
        } else {
            // The cipher and version flags are shared with the client side:
            // they alone do not ask for peer TLS.
            let mut peer_only = peer_tls.clone();
            peer_only.files.cipher_suites = Default::default();
            peer_only.files.min_version = None;
            peer_only.files.max_version = None;
            if peer_only != crate::tls::PeerTlsSettings::default() {
                return Err(
                    "--peer-* TLS flags are set but the peer URLs are http://; use https://".into(),
                );
            }
            None
        };
        let core = etcd_core::Config {
            name: self.name,
            data_dir,
            // Empty (etcd's sample configuration): in the data directory.
            wal_dir: self.wal_dir.filter(|w| !w.is_empty()).map(PathBuf::from),
            initial_cluster,
            initial_cluster_state,
            initial_cluster_token: self.initial_cluster_token,
            initial_advertise_peer_urls: peer_urls,
            listen_peer_urls,
            strict_reconfig_check: self.strict_reconfig_check,
            force_new_cluster: self.force_new_cluster,
            advertise_client_urls,
            heartbeat_interval: Duration::from_millis(self.heartbeat_interval),
            election_timeout: Duration::from_millis(self.election_timeout),
            max_request_bytes: self.max_request_bytes,
            lease_checkpoint_interval: self.experimental_lease_checkpoint_interval,
            max_txn_ops: self.max_txn_ops,
            watch_progress_notify_interval: self.experimental_watch_progress_notify_interval,
            snapshot_count: self.snapshot_count,
            snapshot_catch_up_entries: self.experimental_snapshot_catchup_entries,
            // etcd: negative disables the quota.
            quota_backend_bytes: u64::try_from(self.quota_backend_bytes).unwrap_or(u64::MAX),
            auth_token: etcd_core::auth::TokenOptions::parse(&self.auth_token)?,
            auth_token_ttl: Duration::from_secs(self.auth_token_ttl),
            bcrypt_cost: self.bcrypt_cost,
            initial_corrupt_check: self.experimental_initial_corrupt_check,
            auto_disarm_nospace: self.auto_disarm_nospace,
            corrupt_check_time: self.experimental_corrupt_check_time,
            auto_compaction: etcd_core::AutoCompaction::parse(
                &self.auto_compaction_mode,
                &self.auto_compaction_retention,
            )?,
        };
        core.validate().map_err(|e| e.to_string())?;
        Ok(ServerConfig {
            core,
            client_listeners,
            metrics_extensive,
            max_concurrent_streams: self.max_concurrent_streams,
            enable_grpc_gateway: self.enable_grpc_gateway,
            grpc_keepalive_min_time: self.grpc_keepalive_min_time,
            grpc_keepalive_interval: (!self.grpc_keepalive_interval.is_zero())
                .then_some(self.grpc_keepalive_interval),
            grpc_keepalive_timeout: (!self.grpc_keepalive_timeout.is_zero())
                .then_some(self.grpc_keepalive_timeout),
            client_tls,
            peer_tls,
            log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etcd_core::parse_go_duration;

    #[test]
    fn go_durations() {
        let d = |s| parse_go_duration(s).unwrap();
        assert_eq!(d("10m"), Duration::from_secs(600));
        assert_eq!(d("1m30s"), Duration::from_secs(90));
        assert_eq!(d("250ms"), Duration::from_millis(250));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d("0"), Duration::ZERO);
        assert!(parse_go_duration("10").is_err());
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("5x").is_err());
        assert_eq!(d("5m0s"), Duration::from_secs(300));
        assert_eq!(d("1h2m"), Duration::from_secs(3720));
    }

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<(Command, Vec<String>), String> {
        let args = std::iter::once("etcd-server")
            .chain(args.iter().copied())
            .map(OsString::from);
        parse(
            args,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> ServerConfig {
        match run(args, env) {
            Ok((Command::Run(c), _)) => *c,
            Ok(_) => panic!("not a run"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn defaults_match_etcd() {
        let c = config(&[], &[]);
        assert_eq!(c.core.name, "default");
        assert_eq!(c.core.data_dir, PathBuf::from("default.etcd"));
        assert_eq!(c.core.initial_cluster, "default=http://localhost:2380");
        assert_eq!(c.core.max_request_bytes, 1572864);
        assert_eq!(c.client_listeners[0].addr.port(), 2379);
        assert!(c.client_listeners[0].addr.ip().is_loopback());
    }

    #[test]
    fn gateway_and_ping_policy_flags() {
        let c = config(&[], &[]);
        assert!(c.enable_grpc_gateway);
        assert_eq!(c.grpc_keepalive_min_time, Duration::from_secs(5));
        let c = config(
            &[
                "--enable-grpc-gateway=false",
                "--grpc-keepalive-min-time",
                "1m",
            ],
            &[],
        );
        assert!(!c.enable_grpc_gateway);
        assert_eq!(c.grpc_keepalive_min_time, Duration::from_secs(60));
        let c = config(&[], &[("ETCD_ENABLE_GRPC_GATEWAY", "false")]);
        assert!(!c.enable_grpc_gateway);
    }

    #[test]
    fn data_dir_follows_name_and_env_works() {
        let c = config(&["--name", "infra0"], &[]);
        assert_eq!(c.core.data_dir, PathBuf::from("infra0.etcd"));
        let c = config(
            &[],
            &[("ETCD_NAME", "fromenv"), ("ETCD_MAX_REQUEST_BYTES", "100")],
        );
        assert_eq!(c.core.name, "fromenv");
        assert_eq!(c.core.max_request_bytes, 100);
    }

    #[test]
    fn flag_and_env_together_is_an_error_naming_both() {
        let err = run(&["--name", "a"], &[("ETCD_NAME", "b")]).err().unwrap();
        assert!(err.contains("ETCD_NAME") && err.contains("--name"), "{err}");
    }

    #[test]
    fn single_dash_flags_work() {
        let c = config(&["-name", "x", "-data-dir=/tmp/x"], &[]);
        assert_eq!(c.core.name, "x");
        assert_eq!(c.core.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn wal_dir_from_flag_or_env() {
        assert_eq!(config(&[], &[]).core.wal_dir, None);
        let c = config(&["--wal-dir", "/wal/x"], &[]);
        assert_eq!(c.core.wal_dir, Some(PathBuf::from("/wal/x")));
        let c = config(&[], &[("ETCD_WAL_DIR", "/wal/y")]);
        assert_eq!(c.core.wal_dir, Some(PathBuf::from("/wal/y")));
        assert_eq!(config(&["--wal-dir="], &[]).core.wal_dir, None);
    }

    #[test]
    fn unknown_flags_and_env_vars() {
        let err = run(&["--no-such-flag"], &[]).err().unwrap();
        assert!(err.contains("--no-such-flag"), "{err}");
        let (_, warnings) = run(&[], &[("ETCD_NO_SUCH", "1")]).unwrap();
        assert_eq!(
            warnings,
            vec!["unrecognized environment variable ETCD_NO_SUCH=1".to_string()]
        );
    }

    #[test]
    fn an_etcd_setting_we_do_not_honour_is_a_startup_error() {
        // The operator who sets it must not silently run without it.
        let err = run(&[], &[("ETCD_DISCOVERY", "https://x")]).err().unwrap();
        assert!(
            err.contains("ETCD_DISCOVERY") && err.contains("--discovery"),
            "{err}"
        );
        let err = run(&[], &[("ETCD_ENABLE_V2", "true")]).err().unwrap();
        assert!(err.contains("not supported"), "{err}");
        // Flags this server has are honoured from the environment.
        let c = config(
            &[],
            &[
                ("ETCD_CLIENT_CERT_AUTH", "true"),
                ("ETCD_TRUSTED_CA_FILE", "/ca.pem"),
                ("ETCD_CERT_FILE", "/c.pem"),
                ("ETCD_KEY_FILE", "/k.pem"),
                ("ETCD_LISTEN_CLIENT_URLS", "https://127.0.0.1:2379"),
            ],
        );
        let tls = c.client_tls.unwrap();
        assert!(tls.client_cert_auth);
        assert_eq!(tls.trusted_ca_file, Some(PathBuf::from("/ca.pem")));
        assert!(c.client_listeners[0].tls);
    }

    #[test]
    fn quota_flag() {
        assert_eq!(config(&[], &[]).core.quota_bytes(), 2 << 30);
        let c = config(&["--quota-backend-bytes", "-1"], &[]);
        assert_eq!(c.core.quota_bytes(), u64::MAX, "negative: no quota");
        let c = config(&[], &[("ETCD_QUOTA_BACKEND_BYTES", "16777216")]);
        assert_eq!(c.core.quota_bytes(), 16 << 20);
    }

    /// A config file and the flags it stands for give the same settings;
    /// the file wins over flags and environment; etcd's sample file (with
    /// pprof off) is accepted.
    #[test]
    fn config_file_is_equivalent_to_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("etcd.conf.yml");
        std::fs::write(
            &path,
            "name: infra1\n\
             data-dir: /var/lib/etcd\n\
             listen-client-urls: https://127.0.0.1:2379\n\
             advertise-client-urls: https://127.0.0.1:2379\n\
             initial-cluster: infra1=http://127.0.0.1:2380\n\
             heartbeat-interval: 200\n\
             election-timeout: 2000\n\
             quota-backend-bytes: 4294967296\n\
             auto-compaction-retention: \"1\"\n\
             log-outputs: [stderr]\n\
             proxy: 'off'\n\
             max-wals: 5\n\
             client-transport-security:\n  cert-file: /c.pem\n  key-file: /k.pem\n  \
             client-cert-auth: true\n  trusted-ca-file: /ca.pem\n",
        )
        .unwrap();
        let flags = config(
            &[
                "--name=infra1",
                "--data-dir=/var/lib/etcd",
                "--listen-client-urls=https://127.0.0.1:2379",
                "--advertise-client-urls=https://127.0.0.1:2379",
                "--initial-cluster=infra1=http://127.0.0.1:2380",
                "--heartbeat-interval=200",
                "--election-timeout=2000",
                "--quota-backend-bytes=4294967296",
                "--auto-compaction-retention=1",
                "--log-outputs=stderr",
                "--cert-file=/c.pem",
                "--key-file=/k.pem",
                "--client-cert-auth",
                "--trusted-ca-file=/ca.pem",
            ],
            &[],
        );
        let p = path.to_str().unwrap();
        let file = config(
            &["--config-file", p, "--name=ignored"],
            &[("ETCD_DATA_DIR", "/x")],
        );
        assert_eq!(format!("{file:?}"), format!("{flags:?}"));
        let env = config(&[], &[("ETCD_CONFIG_FILE", p)]);
        assert_eq!(format!("{env:?}"), format!("{flags:?}"));
        // etcd's sample, as shipped but for pprof.
        let sample = include_str!("../tests/fixtures/etcd.conf.yml.sample");
        std::fs::write(&path, sample).unwrap();
        let err = run(&["--config-file", p], &[]).err().unwrap();
        assert!(err.contains("enable-pprof"), "{err}");
        std::fs::write(
            &path,
            sample.replace("enable-pprof: true", "enable-pprof: false"),
        )
        .unwrap();
        let c = config(&["--config-file", p], &[]);
        assert_eq!(
            c.core.auto_compaction,
            Some(etcd_core::AutoCompaction::Periodic(Duration::from_secs(
                3600
            )))
        );
        assert_eq!(c.core.snapshot_count, 10000);
        // Unsupported etcd settings at their default are fine in the
        // environment too.
        config(&[], &[("ETCD_PROXY", "off"), ("ETCD_MAX_WALS", "5")]);
        assert!(run(&[], &[("ETCD_PROXY", "on")]).is_err());
    }

    #[test]
    fn auto_compaction_flags() {
        use etcd_core::AutoCompaction;
        assert_eq!(
            config(&[], &[]).core.auto_compaction,
            None,
            "etcd's default: off"
        );
        let c = config(&["--auto-compaction-retention", "1"], &[]);
        assert_eq!(
            c.core.auto_compaction,
            Some(AutoCompaction::Periodic(Duration::from_secs(3600)))
        );
        let c = config(
            &[],
            &[
                ("ETCD_AUTO_COMPACTION_MODE", "revision"),
                ("ETCD_AUTO_COMPACTION_RETENTION", "1000"),
            ],
        );
        assert_eq!(c.core.auto_compaction, Some(AutoCompaction::Revision(1000)));
        let err = run(
            &[
                "--auto-compaction-mode",
                "hourly",
                "--auto-compaction-retention",
                "1",
            ],
            &[],
        )
        .err()
        .unwrap();
        assert!(err.contains("unknown auto-compaction-mode"), "{err}");
    }

    #[test]
    fn auth_flags() {
        let c = config(&[], &[]);
        assert_eq!(c.core.auth_token, etcd_core::auth::TokenOptions::Simple);
        assert_eq!(c.core.auth_token_ttl, Duration::from_secs(300));
        assert_eq!(c.core.bcrypt_cost, 10);
        let c = config(
            &["--auth-token-ttl", "20", "--bcrypt-cost", "4"],
            &[(
                "ETCD_AUTH_TOKEN",
                "jwt,pub-key=/p.pem,priv-key=/k.pem,sign-method=RS256,ttl=10m",
            )],
        );
        assert_eq!(
            c.core.auth_token,
            etcd_core::auth::TokenOptions::Jwt {
                sign_method: "RS256".into(),
                pub_key: Some("/p.pem".into()),
                priv_key: Some("/k.pem".into()),
                ttl: Duration::from_secs(600),
            }
        );
        assert_eq!(c.core.auth_token_ttl, Duration::from_secs(20));
        assert_eq!(c.core.bcrypt_cost, 4);
        for (args, want) in [
            (&["--auth-token", "jwt"][..], "sign-method"),
            (&["--auth-token", "tls"][..], "unknown token type"),
            (&["--bcrypt-cost", "3"][..], "--bcrypt-cost"),
            (&["--auth-token-ttl", "0"][..], "--auth-token-ttl"),
        ] {
            let err = run(args, &[]).err().unwrap();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn tls_flags_are_checked() {
        for (args, want) in [
            (
                &["--listen-client-urls", "https://127.0.0.1:2379"][..],
                "needs TLS",
            ),
            (&["--cert-file", "/c.pem"][..], "--key-file"),
            (
                &[
                    "--client-cert-auth",
                    "--cert-file",
                    "/c",
                    "--key-file",
                    "/k",
                ][..],
                "--trusted-ca-file",
            ),
            (&["--tls-min-version", "TLS1.1"][..], "below 1.2"),
            (
                &["--tls-min-version", "TLS1.3", "--tls-max-version", "TLS1.2"][..],
                "above",
            ),
            (
                &["--cipher-suites", "TLS_RSA_WITH_RC4_128_SHA"][..],
                "not supported",
            ),
        ] {
            let err = run(args, &[]).err().unwrap();
            assert!(err.contains(want), "{args:?}: {err}");
        }
        // Both schemes side by side; --auto-tls makes the certificate.
        let c = config(
            &[
                "--listen-client-urls",
                "http://127.0.0.1:2379,https://127.0.0.1:2381",
                "--auto-tls",
                "--data-dir",
                "/d",
            ],
            &[],
        );
        assert_eq!(
            c.client_listeners.iter().map(|l| l.tls).collect::<Vec<_>>(),
            [false, true]
        );
        let auto = c.client_tls.unwrap().auto_tls.unwrap();
        assert_eq!(auto.dir, PathBuf::from("/d/fixtures/client"));
        // No https listener: no TLS.
        assert!(config(&["--auto-tls"], &[]).client_tls.is_none());
        // Peers get --cipher-suites and the TLS versions even when every
        // client URL is plain http.
        let c = config(
            &[
                "--listen-peer-urls",
                "https://127.0.0.1:2380",
                "--initial-advertise-peer-urls",
                "https://127.0.0.1:2380",
                "--peer-cert-file",
                "/p.pem",
                "--peer-key-file",
                "/pk.pem",
                "--peer-trusted-ca-file",
                "/ca.pem",
                "--cipher-suites",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "--tls-max-version",
                "TLS1.2",
            ],
            &[],
        );
        assert!(c.client_tls.is_none());
        let peer = c.peer_tls.unwrap().files;
        assert_eq!(
            peer.cipher_suites,
            ["TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"]
        );
        assert_eq!(peer.max_version.as_deref(), Some("TLS1.2"));
    }

    #[test]
    fn bad_values_are_explained() {
        for (args, want) in [
            (
                &["--initial-cluster-state", "old"][..],
                "must be 'new' or 'existing'",
            ),
            (&["--log-level", "loud"][..], "--log-level"),
            (&["--listen-client-urls", "localhost:2379"][..], "http://"),
            (
                &["--listen-client-urls", "https://localhost:2379"][..],
                "needs TLS",
            ),
            (&["--election-timeout", "100"][..], "at least as 5 times"),
        ] {
            let err = run(args, &[]).err().unwrap();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn version_flag() {
        assert!(matches!(
            run(&["--version"], &[]),
            Ok((Command::Version, _))
        ));
    }
}
