//! The etcd-compatible server: etcd's v3 gRPC API over [`etcd_core`],
//! configured with etcd's flags and `ETCD_*` environment variables.
//!
//! The binary only parses flags and calls [`run`]; tests call [`run`] too.

mod auth;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub use gateway::fuzz_request_body;
pub mod config;
mod config_file;
pub mod etcdutl;
mod gateway;
pub mod grpc;
mod http;
pub mod logging;
mod metrics;
mod request_context;
pub mod rpc;
mod services;
mod status;
pub mod tls;
mod v3lease;
mod v3lock;
mod watch;

pub use auth::AuthService;
pub use config::{Command, Flags, ServerConfig};
pub use services::{ClusterService, KvService, MaintenanceService};
pub use status::to_status;
pub use v3lease::LeaseService;
pub use v3lock::{ElectionService, LockService};
pub use watch::WatchService;

use anyhow::Context as _;
use etcd_core::Etcd;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Starts the member, serves clients until `shutdown` completes, then stops
/// gracefully (in-flight requests finish, the member closes its stores).
pub async fn run(cfg: ServerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let tls = match &cfg.client_tls {
        Some(settings) => Some(Arc::new(
            tls::TlsReloader::new(settings.clone())
                .map_err(|e| anyhow::anyhow!("client TLS: {e}"))?,
        )),
        None => None,
    };
    let mut listeners = Vec::new();
    for l in &cfg.client_listeners {
        let listener = TcpListener::bind(l.addr)
            .await
            .with_context(|| format!("cannot listen on {} ({})", l.url, l.addr))?;
        let tls = if l.tls { tls.clone() } else { None };
        if l.tls && tls.is_none() {
            anyhow::bail!(
                "{}: https needs --cert-file/--key-file or --auto-tls",
                l.url
            );
        }
        listeners.push((l.url.clone(), listener, tls, l.metrics_only));
    }
    let peer_tls = match &cfg.peer_tls {
        Some(settings) => Some(etcd_raft_node_tls(settings)?),
        None => None,
    };
    let core = cfg.core.clone();
    let opts = etcd_core::StartOptions {
        peer_tls,
        ..etcd_core::StartOptions::default()
    };
    let etcd = tokio::task::spawn_blocking(move || Etcd::start_with(core, opts))
        .await
        .context("start task failed")?
        .context("cannot start the member")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Clients are served once this member's publish (its name and client
    // URLs) is committed, as etcd's `ReadyNotify`: until then `member
    // list` would show it without client URLs. The listeners are bound
    // already; connections wait in their backlog.
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let grpc_metrics =
        metrics::GrpcMetrics::register(etcd.metrics().registry(), cfg.metrics_extensive);
    for (url, listener, tls, metrics_only) in listeners {
        let local = listener.local_addr()?;
        let what = if metrics_only {
            "metrics"
        } else {
            "client traffic"
        };
        match &tls {
            Some(_) => tracing::info!(%url, address = %local, "serving {what} over TLS"),
            None => {
                tracing::info!(%url, address = %local, "serving {what} insecurely (no TLS)")
            }
        }
        if metrics_only {
            let router = tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(tonic::service::Routes::from(
                    http::metrics_routes(etcd.clone()).fallback(http::fallback),
                ));
            let mut stop = stop_rx.clone();
            servers.spawn(async move {
                router
                    .serve_with_incoming_shutdown(
                        accept_loop(listener, tls, None, None),
                        async move {
                            let _ = stop.wait_for(|s| *s).await;
                        },
                    )
                    .await
            });
            continue;
        }
        let services = grpc::Services::counted(&etcd, grpc_metrics.clone());
        let mut routes = http::routes(etcd.clone());
        if cfg.enable_grpc_gateway {
            let client_cert_auth = cfg.client_tls.as_ref().is_some_and(|t| t.client_cert_auth);
            let gateway = gateway::Gateway::new(
                services.clone(),
                etcd.clone(),
                grpc::max_decoding_size(&etcd),
                client_cert_auth,
            )
            .map_err(|e| anyhow::anyhow!("the JSON gateway's routes: {e}"))?;
            routes = routes.merge(gateway.router());
        }
        // gRPC calls go straight to their service; everything else (HTTP
        // endpoints, the JSON gateway, 404s) through the axum router.
        let services = services.with_fallback(routes.fallback(http::fallback));
        let server = tonic::transport::Server::builder()
            .accept_http1(true)
            .max_concurrent_streams(cfg.max_concurrent_streams)
            .http2_keepalive_interval(cfg.grpc_keepalive_interval)
            .http2_keepalive_timeout(cfg.grpc_keepalive_timeout);
        let mut stop = stop_rx.clone();
        let ping_min_time = Some(cfg.grpc_keepalive_min_time);
        let ready = Some(ready_rx.clone());
        servers.spawn(async move {
            let incoming = accept_loop(listener, tls, ping_min_time, ready);
            server
                .serve_with_incoming_shutdown(services, incoming, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
    }
    // systemd Type=notify: READY=1 once the member is published (etcd
    // notifies after ReadyNotify, i.e. after joining with a quorum).
    let published = etcd.clone();
    let name = cfg.core.name.clone();
    tokio::spawn(async move {
        while !published.is_published() {
            if ready_tx.is_closed() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tracing::info!(
            %name,
            member = %etcd_core::format_id(published.member_id()),
            cluster = %etcd_core::format_id(published.cluster_id()),
            "ready to serve client requests"
        );
        ready_tx.send_replace(true);
        notify_systemd(sd_notify::NotifyState::Ready, "READY=1");
    });
    drop(ready_rx);
    let mut removed = etcd.removed();
    let mut removed_from_cluster = false;
    tokio::select! {
        () = shutdown => tracing::info!("received shutdown signal; stopping gracefully"),
        Ok(_) = removed.wait_for(|r| *r) => {
            tracing::error!("this member was removed from the cluster; shutting down");
            removed_from_cluster = true;
        }
        Some(r) = servers.join_next() => {
            tracing::error!("a client listener stopped unexpectedly: {r:?}");
        }
    }
    notify_systemd(sd_notify::NotifyState::Stopping, "STOPPING=1");
    // etcd's stopServers: stop accepting and let in-flight requests
    // finish, for at most the request timeout; endless streams end at
    // once with "server stopped" (clients retry elsewhere); whatever is
    // left after the grace period is cut.
    etcd.begin_stop();
    let _ = stop_tx.send(true);
    let grace = cfg.core.request_timeout();
    let drained = tokio::time::timeout(grace, async {
        while let Some(r) = servers.join_next().await {
            if let Ok(Err(e)) = r {
                tracing::warn!("client listener ended with: {e}");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("client requests still running after {grace:?}; closing their connections");
        servers.shutdown().await;
    }
    tokio::task::spawn_blocking(move || etcd.stop())
        .await
        .context("stop task failed")?;
    tracing::info!("stopped");
    if removed_from_cluster {
        // etcd 3.4 exits with status 0 here: a supervisor's
        // Restart=on-failure must not start a removed member again.
        tracing::error!("the member has been permanently removed from the cluster; exiting");
    }
    Ok(())
}

/// Tells systemd (when `$NOTIFY_SOCKET` is set) about `state`.
fn notify_systemd(state: sd_notify::NotifyState, what: &str) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    match sd_notify::notify(false, &[state]) {
        Ok(()) => tracing::info!("notified systemd: {what}"),
        Err(e) => tracing::warn!("cannot notify systemd ({what}): {e}"),
    }
}

/// Accepts connections on `listener` (TLS handshakes each on a task of
/// its own, so a slow client delays no other) and yields them to the
/// gRPC/HTTP server, from when `ready` turns true (at once without it).
/// Ends when the server stops reading.
pub(crate) fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<tls::TlsReloader>>,
    ping_min_time: Option<std::time::Duration>,
    ready: Option<tokio::sync::watch::Receiver<bool>>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<tls::ClientConn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        if let Some(mut ready) = ready {
            tokio::select! {
                r = ready.wait_for(|r| *r) => if r.is_err() { return },
                () = tx.closed() => return,
            }
        }
        loop {
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: etcd's listener
                    // backs off and goes on too.
                    tracing::warn!("accepting a client connection failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Like Go's default: small gRPC frames go out at once
            // (otherwise Nagle + delayed ACK add ~40 ms).
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::warn!("cannot set TCP_NODELAY: {e}");
            }
            match &tls {
                None => {
                    if tx
                        .send(Ok(tls::ClientConn::plain(tcp, remote, ping_min_time)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Some(tls) => {
                    let (tls, tx) = (tls.clone(), tx.clone());
                    tokio::spawn(async move {
                        if let Some(conn) = tls.accept(tcp, remote, ping_min_time).await {
                            let _ = tx.send(Ok(conn)).await;
                        }
                    });
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The peer TLS provider the engine's transport uses.
fn etcd_raft_node_tls(settings: &tls::PeerTlsSettings) -> anyhow::Result<etcd_core::PeerTlsHandle> {
    let files =
        tls::PeerTlsFiles::new(settings.clone()).map_err(|e| anyhow::anyhow!("peer TLS: {e}"))?;
    Ok(etcd_core::PeerTlsHandle(Arc::new(files)))
}
