//! `etcdutl`: etcd 3.5's offline tool, for the commands that work on files.
//!
//! - `etcdutl snapshot status <file> [-w simple|json|table|fields]`: etcd's
//!   figures for a snapshot file (ours or the real etcd's), printed as
//!   etcd prints them.
//! - `etcdutl snapshot restore <file> --data-dir ... --name ...
//!   --initial-cluster ... --initial-cluster-token ...
//!   --initial-advertise-peer-urls ... [--skip-hash-check]`: a data
//!   directory of THIS server from a snapshot file (see
//!   `etcd_core::v3_snapshot`); start `etcd-server` on it with the same
//!   flags, as the operator guides do with etcd.
//!
//! - `etcdutl backup --data-dir ... --backup-dir ... [--wal-dir ...]
//!   [--backup-wal-dir ...]`: a copy of a stopped member (ours or etcd's)
//!   with new ids and no membership, started once with
//!   `--force-new-cluster` (see `etcd_core::backup`).
//! - `etcdutl defrag --data-dir ...` (see `etcd_core::defrag_data`).
//!
//! Flags etcd has that are not supported here (`--wal-dir`,
//! `--mark-compacted`, `--bump-revision`) are refused, never ignored.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "etcdutl",
    about = "An administrative command line tool for etcd-server's files (etcd 3.5's etcdutl)",
    version = etcd_core::SERVER_VERSION
)]
struct Cli {
    /// Output format: simple, json, table or fields.
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        default_value = "simple"
    )]
    write_out: WriteOut,
    #[command(subcommand)]
    command: Top,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum WriteOut {
    Simple,
    Json,
    Table,
    Fields,
}

#[derive(Subcommand, Debug)]
enum Top {
    /// Manages etcd node snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Defragments the storage of an etcd member's data directory while no server runs on it.
    Defrag {
        /// The data directory (this server's, or a stopped etcd's).
        #[arg(long = "data-dir")]
        data_dir: PathBuf,
    },
    /// [legacy] offline backup of etcd directory: a copy that starts, with
    /// --force-new-cluster, as a new one-member cluster.
    Backup {
        /// Path to the etcd data dir (this server's, or a stopped etcd's).
        #[arg(long = "data-dir")]
        data_dir: PathBuf,
        /// Path to the etcd wal dir.
        #[arg(long = "wal-dir")]
        wal_dir: Option<PathBuf>,
        /// Path to the backup dir.
        #[arg(long = "backup-dir")]
        backup_dir: PathBuf,
        /// Path to the backup wal dir.
        #[arg(long = "backup-wal-dir")]
        backup_wal_dir: Option<PathBuf>,
        /// Backup v3 backend data. Note -with-v3=false is not supported since etcd v3.5.0.
        #[arg(
            long = "with-v3",
            default_value_t = true,
            action = clap::ArgAction::Set,
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true"
        )]
        with_v3: bool,
    },
    /// Prints the version of etcdutl.
    Version,
}

#[derive(Subcommand, Debug)]
enum SnapshotCmd {
    /// Gets backend snapshot status of a given file.
    Status {
        /// The snapshot file.
        filename: PathBuf,
    },
    /// Restores an etcd member snapshot to an etcd-server data directory.
    Restore {
        /// The snapshot file.
        filename: PathBuf,
        /// Path to the data directory (default: <name>.etcd).
        #[arg(long = "data-dir", default_value = "")]
        data_dir: String,
        /// Path to the WAL directory (not supported: the WAL stays in the data directory).
        #[arg(long = "wal-dir")]
        wal_dir: Option<String>,
        /// Human-readable name for this member.
        #[arg(long, default_value = "default")]
        name: String,
        /// Initial cluster configuration for restore bootstrap.
        #[arg(
            long = "initial-cluster",
            default_value = "default=http://localhost:2380"
        )]
        initial_cluster: String,
        /// Initial cluster token for the etcd cluster during restore bootstrap.
        #[arg(long = "initial-cluster-token", default_value = "etcd-cluster")]
        initial_cluster_token: String,
        /// List of this member's peer URLs to advertise to the rest of the cluster.
        #[arg(
            long = "initial-advertise-peer-urls",
            default_value = "http://localhost:2380"
        )]
        initial_advertise_peer_urls: String,
        /// Ignore snapshot integrity hash value (required if copied from data directory).
        #[arg(long = "skip-hash-check")]
        skip_hash_check: bool,
        /// Not supported (etcd 3.5.x: bump the revision of the restored store).
        #[arg(long = "bump-revision")]
        bump_revision: Option<u64>,
        /// Not supported (etcd 3.5.x: mark the bumped revisions compacted).
        #[arg(long = "mark-compacted")]
        mark_compacted: bool,
    },
}

/// Parses `args` and runs the command; what `main` returns.
pub fn run(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false)
        .try_init();
    let r = match cli.command {
        Top::Version => {
            println!("etcdutl version: {}", etcd_core::SERVER_VERSION);
            println!("API version: 3.5");
            Ok(())
        }
        Top::Defrag { data_dir } => defrag(&data_dir),
        Top::Backup {
            data_dir,
            wal_dir,
            backup_dir,
            backup_wal_dir,
            with_v3,
        } => {
            if !with_v3 {
                Err("-with-v3=false is not supported since etcd v3.5.0".to_string())
            } else {
                backup(etcd_core::backup::BackupOptions {
                    data_dir,
                    wal_dir,
                    backup_dir,
                    backup_wal_dir,
                })
            }
        }
        Top::Snapshot(SnapshotCmd::Status { filename }) => status(&filename, cli.write_out),
        Top::Snapshot(SnapshotCmd::Restore {
            filename,
            data_dir,
            wal_dir,
            name,
            initial_cluster,
            initial_cluster_token,
            initial_advertise_peer_urls,
            skip_hash_check,
            bump_revision,
            mark_compacted,
        }) => {
            if wal_dir.is_some() {
                Err("--wal-dir is not supported: the WAL stays in the data directory".to_string())
            } else if bump_revision.is_some() || mark_compacted {
                Err("--bump-revision and --mark-compacted are not supported".to_string())
            } else {
                let data_dir = if data_dir.is_empty() {
                    format!("{name}.etcd")
                } else {
                    data_dir
                };
                let mut cfg = etcd_core::Config::single(&name, data_dir);
                cfg.initial_cluster = initial_cluster;
                cfg.initial_cluster_token = initial_cluster_token;
                cfg.initial_advertise_peer_urls = initial_advertise_peer_urls
                    .split(',')
                    .map(str::to_string)
                    .collect();
                etcd_core::v3_snapshot::restore(&filename, &cfg, skip_hash_check)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::from(1)
        }
    }
}

/// etcd 3.5's `etcdutl defrag`: its hint while a server holds the store,
/// its message on failure; nothing on stdout on success.
fn defrag(data_dir: &Path) -> Result<(), String> {
    etcd_core::defrag_data::defrag_data(data_dir, |db| {
        eprintln!(
            "waiting for etcd to close and release its lock on {:?}. \
             To defrag a running etcd instance, use `etcdctl defrag` instead.",
            db.display().to_string()
        );
    })
    .map(|_| ())
    .map_err(|e| {
        format!(
            "Failed to defragment etcd data[{}] ({e})",
            data_dir.display()
        )
    })
}

/// `etcdutl backup`: progress and the result in the log (stderr), as
/// etcd's; the same hint as defrag while a server holds the store.
fn backup(opts: etcd_core::backup::BackupOptions) -> Result<(), String> {
    etcd_core::backup::backup(&opts, |db| {
        eprintln!(
            "waiting for etcd to close and release its lock on {:?}",
            db.display().to_string()
        );
    })
    .map(|_| ())
    .map_err(|e| e.to_string())
}

fn status(path: &Path, out: WriteOut) -> Result<(), String> {
    let st = etcd_core::v3_snapshot::status(path).map_err(|e| e.to_string())?;
    let size = humanize_bytes(st.total_size);
    match out {
        WriteOut::Simple => println!("{:x}, {}, {}, {}", st.hash, st.revision, st.total_key, size),
        WriteOut::Json => println!(
            "{}",
            serde_json::json!({
                "hash": st.hash,
                "revision": st.revision,
                "totalKey": st.total_key,
                "totalSize": st.total_size,
            })
        ),
        WriteOut::Table => print!(
            "{}",
            table(
                &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
                &[
                    format!("{:x}", st.hash),
                    st.revision.to_string(),
                    st.total_key.to_string(),
                    size,
                ],
            )
        ),
        WriteOut::Fields => {
            println!("\"Hash\" : {}", st.hash);
            println!("\"Revision\" : {}", st.revision);
            println!("\"Keys\" : {}", st.total_key);
            println!("\"Size\" : {}", st.total_size);
        }
    }
    Ok(())
}

/// go-humanize's `Bytes`: SI units, one decimal under 10.
fn humanize_bytes(s: u64) -> String {
    const SIZES: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if s < 10 {
        return format!("{s} B");
    }
    let e = ((s as f64).ln() / 1000f64.ln()).floor();
    let val = ((s as f64) / 1000f64.powf(e) * 10.0 + 0.5).floor() / 10.0;
    let suffix = SIZES[e as usize];
    if val < 10.0 {
        format!("{val:.1} {suffix}")
    } else {
        format!("{val:.0} {suffix}")
    }
}

/// A one-row table as etcdctl's tablewriter draws it: headers centred,
/// values right-aligned, one space of padding.
fn table(headers: &[&str], row: &[String]) -> String {
    let widths: Vec<usize> = headers
        .iter()
        .zip(row)
        .map(|(h, v)| h.len().max(v.len()))
        .collect();
    let line: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let head: String = headers
        .iter()
        .zip(&widths)
        .map(|(h, w)| {
            let gap = w - h.len();
            format!("| {}{h}{} ", " ".repeat(gap / 2), " ".repeat(gap - gap / 2))
        })
        .collect::<String>()
        + "|\n";
    let values: String = row
        .iter()
        .zip(&widths)
        .map(|(v, w)| format!("| {v:>w$} "))
        .collect::<String>()
        + "|\n";
    format!("{line}{head}{line}{values}{line}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanize_as_go() {
        assert_eq!(humanize_bytes(5), "5 B");
        assert_eq!(humanize_bytes(53_248), "53 kB");
        assert_eq!(humanize_bytes(1_500), "1.5 kB");
        assert_eq!(humanize_bytes(20_480), "20 kB");
        assert_eq!(humanize_bytes(2_147_483_648), "2.1 GB");
    }

    #[test]
    fn table_as_etcdctl() {
        let t = table(
            &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
            &["b434ba78".into(), "54".into(), "63".into(), "53 kB".into()],
        );
        assert_eq!(
            t,
            "+----------+----------+------------+------------+\n\
             |   HASH   | REVISION | TOTAL KEYS | TOTAL SIZE |\n\
             +----------+----------+------------+------------+\n\
             | b434ba78 |       54 |         63 |      53 kB |\n\
             +----------+----------+------------+------------+\n"
        );
    }
}
