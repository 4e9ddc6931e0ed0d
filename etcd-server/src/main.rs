//! `etcd-server`: parses etcd's flags and environment, then runs the server.

use etcd_server::{config, Command};
use std::process::ExitCode;

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
    match runtime.block_on(etcd_server::run(cfg, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("etcd-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
