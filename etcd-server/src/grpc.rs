//! etcd's v3 gRPC services over an engine, for this server and for
//! programs that embed the engine and want to expose etcd's API too.
//!
//! [`router`] is every service (KV, Watch, Lease, Cluster, Maintenance,
//! Auth, Lock, Election and gRPC health) as one axum router, to serve or
//! to merge into the program's own. [`serve`] serves it on a listener;
//! [`InMemoryChannel`] calls it without a socket: give it to a tonic
//! client (ours in [`crate::rpc`], or the `etcd-client` crate's
//! `Channel::Custom` with its `raw-channel` feature).
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use etcd_core::{Config, Etcd};
//! let etcd = Etcd::start(Config::single("embedded", "/tmp/embedded.etcd"))?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:2379").await?;
//! // etcdctl --endpoints 127.0.0.1:2379 get --prefix "" now works.
//! etcd_server::grpc::serve(etcd.clone(), listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```

use crate::rpc::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use crate::rpc::v3electionpb::election_server::ElectionServer;
use crate::rpc::v3lockpb::lock_server::LockServer;
use crate::{
    AuthService, ClusterService, ElectionService, KvService, LeaseService, LockService,
    MaintenanceService, WatchService,
};
use etcd_core::Etcd;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::ServiceExt;

/// etcd's default --grpc-keepalive-min-time: clients pinging more often
/// are told `too_many_pings`.
const DEFAULT_PING_MIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// gRPC framing headroom above --max-request-bytes (etcd allows 512 KiB).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// The largest request message the services decode: the member's
/// `max_request_bytes` plus gRPC's framing headroom.
pub fn max_decoding_size(etcd: &Etcd) -> usize {
    etcd.config().max_request_bytes as usize + GRPC_OVERHEAD_BYTES
}

/// Every gRPC service of etcd's v3 API over `etcd`, and gRPC health
/// (the server, "", is SERVING, as etcd registers it). Requests carry
/// their auth token in metadata `token` (etcd's clients) as with the
/// server; a deadline in `grpc-timeout`.
pub fn router(etcd: &Etcd) -> axum::Router {
    let max_recv = max_decoding_size(etcd);
    let mut grpc = tonic::service::Routes::builder();
    grpc.add_service(KvServer::new(KvService(etcd.clone())).max_decoding_message_size(max_recv))
        .add_service(MaintenanceServer::new(MaintenanceService(etcd.clone())))
        .add_service(ClusterServer::new(ClusterService(etcd.clone())))
        .add_service(AuthServer::new(AuthService(etcd.clone())))
        .add_service(
            WatchServer::new(WatchService(etcd.clone())).max_decoding_message_size(max_recv),
        )
        .add_service(LeaseServer::new(LeaseService(etcd.clone())))
        .add_service(LockServer::new(LockService(etcd.clone())))
        .add_service(ElectionServer::new(ElectionService(etcd.clone())))
        .add_service(tonic_health::server::health_reporter().1);
    grpc.routes().into_axum_router()
}

/// Serves [`router`] over plaintext HTTP/2 on `listener` until `shutdown`
/// completes (then in-flight calls finish; endless streams end when the
/// member stops). Connections are handled as the server's (the same
/// HTTP/2 shim and keepalive policy). For TLS, flags, metrics and the
/// JSON gateway, run the whole server ([`crate::run`]).
pub async fn serve(
    etcd: Etcd,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // Connections are read as the server reads them (etcd-h2-shim:
    // etcdctl 3.4's `:authority`, grpc-go's keepalive policy with etcd's
    // default --grpc-keepalive-min-time), TCP_NODELAY set.
    let incoming = crate::accept_loop(listener, None, Some(DEFAULT_PING_MIN_TIME), None);
    tonic::transport::Server::builder()
        .add_routes(tonic::service::Routes::from(router(&etcd)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

/// A gRPC channel to the services of an embedded member without a socket
/// or HTTP/2: each call is handed to [`router`] in-process (streams
/// included). Usable wherever tonic wants a channel:
///
/// ```no_run
/// # async fn demo(etcd: etcd_core::Etcd) -> Result<(), tonic::Status> {
/// use etcd_server::rpc::etcdserverpb::{kv_client::KvClient, RangeRequest};
/// let mut kv = KvClient::new(etcd_server::grpc::InMemoryChannel::new(&etcd));
/// let resp = kv.range(RangeRequest { key: "k".into(), ..Default::default() }).await?;
/// # let _ = resp; Ok(()) }
/// ```
///
/// With the `etcd-client` crate (feature `raw-channel`):
/// `Client::from_channel(Channel::Custom(BoxCloneSyncService::new(ch)), None)`.
#[derive(Clone)]
pub struct InMemoryChannel {
    /// The services the calls go to.
    router: axum::Router,
}

impl std::fmt::Debug for InMemoryChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryChannel").finish_non_exhaustive()
    }
}

impl InMemoryChannel {
    /// A channel to `etcd`'s services.
    pub fn new(etcd: &Etcd) -> InMemoryChannel {
        InMemoryChannel {
            router: router(etcd),
        }
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for InMemoryChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tower::BoxError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let router = self.router.clone();
        Box::pin(async move {
            let Ok(resp) = router.oneshot(req.map(axum::body::Body::new)).await;
            Ok(resp.map(tonic::body::Body::new))
        })
    }
}
