//! `etcd-server`: parses etcd's flags and environment, then runs the server.

use etcd_server::{config, Command};
use std::process::ExitCode;

/// jemalloc instead of glibc's malloc: every request allocates (frames,
/// protobufs, futures); glibc spent ~16 % of the CPU of a put under load.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let (cmd, warnings) = match config::parse(std::env::args_os(), std::env::vars()) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("etcd-server: {}", e.trim_end());
            return ExitCode::from(2);
        }
    };
    let cfg = match cmd {
        Command::Version => {
            println!("etcd Version: {}", etcd_core::SERVER_VERSION);
            println!("etcd-server (Rust) Version: {}", env!("CARGO_PKG_VERSION"));
            println!("API Version: 3.5");
            return ExitCode::SUCCESS;
        }
        Command::Run(cfg) => *cfg,
    };
    if let Err(e) = cfg.log.init() {
        eprintln!("etcd-server: {e}");
        return ExitCode::from(2);
    }
    for w in warnings {
        tracing::warn!("{w}");
    }
    // Fail-stop: a panic anywhere (a fatal WAL, apply or snapshot error
    // among them) ends the process with a fatal log line and status 1.
    etcd_core::fatal::exit_on_panic();
    // Crash tests only: a no-op in product builds (see the module).
    etcd_core::failpoints::from_env();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("etcd-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(etcd_server::run(cfg, shutdown_signal()));
    // Connection tasks cut at the end of the grace period are dropped here.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    // A database snapshot cut by the stop ends at its next chunk; exiting
    // before would abort in RocksDB.
    if !etcd_core::wait_for_snapshot_threads(std::time::Duration::from_secs(5)) {
        tracing::warn!("a database snapshot thread is still running at exit");
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("etcd-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGTERM or SIGINT (the server then stops
/// gracefully, within its request timeout); a second one ends the
/// process at once with status 1.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    next_signal(&mut term).await;
    tokio::spawn(async move {
        next_signal(&mut term).await;
        tracing::warn!("second shutdown signal; exiting without waiting");
        etcd_core::fatal::exit_now(1);
    });
}

/// Waits for SIGTERM (on `term`) or SIGINT.
async fn next_signal(term: &mut tokio::signal::unix::Signal) {
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
