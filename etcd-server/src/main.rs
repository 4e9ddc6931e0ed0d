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
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // Colors only on a terminal: logs in files or journald stay plain text.
    if cfg.log_to_stdout {
        builder
            .with_ansi(std::io::stdout().is_terminal())
            .with_writer(std::io::stdout)
            .init();
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init();
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
