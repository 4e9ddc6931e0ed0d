//! etcd's v3 gRPC services over an engine, for this server and for
//! programs that embed the engine and want to expose etcd's API too.
//!
//! [`Services`] is every service (KV, Watch, Lease, Cluster, Maintenance,
//! Auth, Lock, Election and gRPC health) as one tower service, what the
//! server serves; [`router`] is the same as an axum router, to merge into
//! the program's own. [`serve`] serves it on a listener;
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

use crate::metrics::{self, GrpcMetrics};
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
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
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
/// (the server, "", is SERVING, as etcd registers it), as one axum router
/// (its fallback is [`Services`]: an unknown service is answered
/// `Unimplemented`). Requests carry their auth token in metadata `token`
/// (etcd's clients) as with the server; a deadline in `grpc-timeout`.
pub fn router(etcd: &Etcd) -> axum::Router {
    axum::Router::new().fallback_service(Services::new(etcd))
}

/// etcd's gRPC services as one tower service: a call goes to the service
/// its path names (`/etcdserverpb.KV/Put` to KV) by one string match.
///
/// Why not tonic's `Routes` (an axum router) plus an axum middleware for
/// the metrics: on the server's hot path that was two nested axum routers,
/// a boxed middleware future and a boxed service clone per call, about
/// 10 % of the server's CPU under 256 put clients (benches/RESULTS.md,
/// "Where a put's CPU goes"). Cloning `Services` (hyper clones the
/// service for every request) is two reference counts.
#[derive(Clone)]
pub struct Services {
    /// The services themselves, shared by every clone.
    servers: Arc<Servers>,
    /// Where a path that names none of the services goes (the server's
    /// HTTP routes and JSON gateway); None: answered gRPC `Unimplemented`.
    fallback: Option<axum::Router>,
}

struct Servers {
    kv: KvServer<KvService>,
    watch: WatchServer<WatchService>,
    lease: LeaseServer<LeaseService>,
    cluster: ClusterServer<ClusterService>,
    maintenance: MaintenanceServer<MaintenanceService>,
    auth: AuthServer<AuthService>,
    lock: LockServer<LockService>,
    election: ElectionServer<ElectionService>,
    health: HealthServer<HealthService>,
    /// The gRPC series every call is counted in (the server's
    /// `/metrics`); None for an embedder's router and channel.
    metrics: Option<Arc<GrpcMetrics>>,
}

/// The services' names as they lead a call's path (tonic's `NamedService`,
/// checked in a test).
const KV: &str = "etcdserverpb.KV";
const WATCH: &str = "etcdserverpb.Watch";
const LEASE: &str = "etcdserverpb.Lease";
const CLUSTER: &str = "etcdserverpb.Cluster";
const MAINTENANCE: &str = "etcdserverpb.Maintenance";
const AUTH: &str = "etcdserverpb.Auth";
const LOCK: &str = "v3lockpb.Lock";
const ELECTION: &str = "v3electionpb.Election";
const HEALTH: &str = "grpc.health.v1.Health";
const SERVICES: [&str; 9] = [
    KV,
    WATCH,
    LEASE,
    CLUSTER,
    MAINTENANCE,
    AUTH,
    LOCK,
    ELECTION,
    HEALTH,
];

impl Services {
    /// The services over `etcd`, uncounted, with no fallback.
    pub fn new(etcd: &Etcd) -> Services {
        Services::build(etcd, None)
    }

    /// The server's: every call counted in `metrics`.
    pub(crate) fn counted(etcd: &Etcd, metrics: Arc<GrpcMetrics>) -> Services {
        Services::build(etcd, Some(metrics))
    }

    fn build(etcd: &Etcd, metrics: Option<Arc<GrpcMetrics>>) -> Services {
        let max_recv = max_decoding_size(etcd);
        let servers = Arc::new(Servers {
            kv: KvServer::new(KvService(etcd.clone())).max_decoding_message_size(max_recv),
            watch: WatchServer::new(WatchService(etcd.clone())).max_decoding_message_size(max_recv),
            lease: LeaseServer::new(LeaseService(etcd.clone())),
            cluster: ClusterServer::new(ClusterService(etcd.clone())),
            maintenance: MaintenanceServer::new(MaintenanceService(etcd.clone())),
            auth: AuthServer::new(AuthService(etcd.clone())),
            lock: LockServer::new(LockService(etcd.clone())),
            election: ElectionServer::new(ElectionService(etcd.clone())),
            health: HealthServer::new(HealthService::from_health_reporter(HealthReporter::new())),
            metrics,
        });
        Services {
            servers,
            fallback: None,
        }
    }

    /// These services with `fallback` for the paths they do not serve: a
    /// new value, not a change of `self`, because the fallback (the JSON
    /// gateway) holds `self` to make its calls, and a shared fallback
    /// would make a reference cycle.
    pub(crate) fn with_fallback(&self, fallback: axum::Router) -> Services {
        Services {
            servers: self.servers.clone(),
            fallback: Some(fallback),
        }
    }
}

/// What a gRPC call's future is: every tonic-generated service answers
/// with this boxed future.
type CallFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

impl<B> tower::Service<http::Request<B>> for Services
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tower::BoxError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Dispatched;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Dispatched {
        let s = &*self.servers;
        let path = req.uri().path();
        let service = path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .map_or("", |(service, _)| service);
        let Some(&name) = SERVICES.iter().find(|&&name| name == service) else {
            let inner: CallFuture = match &self.fallback {
                Some(router) => {
                    let call = router.clone().oneshot(req.map(axum::body::Body::new));
                    Box::pin(async move {
                        let Ok(resp) = call.await;
                        Ok(resp.map(tonic::body::Body::new))
                    })
                }
                None => {
                    let status = tonic::Status::unimplemented(format!("unknown service {service}"));
                    Box::pin(std::future::ready(Ok(status.into_http())))
                }
            };
            return Dispatched { inner, call: None };
        };
        let (req, call) = match &s.metrics {
            Some(m) => m.start(req),
            None => (req.map(tonic::body::Body::new), None),
        };
        let inner = match name {
            KV => s.kv.clone().call(req),
            WATCH => s.watch.clone().call(req),
            LEASE => s.lease.clone().call(req),
            CLUSTER => s.cluster.clone().call(req),
            MAINTENANCE => s.maintenance.clone().call(req),
            AUTH => s.auth.clone().call(req),
            LOCK => s.lock.clone().call(req),
            ELECTION => s.election.clone().call(req),
            _ => s.health.clone().call(req),
        };
        Dispatched { inner, call }
    }
}

/// A call's answer on its way: the service's future, and the call's
/// counting (its response body is counted as it streams).
pub struct Dispatched {
    inner: CallFuture,
    call: Option<Arc<metrics::Call>>,
}

impl Future for Dispatched {
    type Output = Result<http::Response<tonic::body::Body>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(resp) = std::task::ready!(self.inner.as_mut().poll(cx));
        Poll::Ready(Ok(match self.call.take() {
            Some(call) => call.respond(resp),
            None => resp,
        }))
    }
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
        .serve_with_incoming_shutdown(Services::new(&etcd), incoming, shutdown)
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
    services: Services,
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
            services: Services::new(etcd),
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
        let call = self.services.call(req);
        Box::pin(async move {
            let Ok(resp) = call.await;
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::server::NamedService;

    #[test]
    fn the_dispatchers_names_are_the_services_names() {
        assert_eq!(
            SERVICES,
            [
                <KvServer<KvService> as NamedService>::NAME,
                <WatchServer<WatchService> as NamedService>::NAME,
                <LeaseServer<LeaseService> as NamedService>::NAME,
                <ClusterServer<ClusterService> as NamedService>::NAME,
                <MaintenanceServer<MaintenanceService> as NamedService>::NAME,
                <AuthServer<AuthService> as NamedService>::NAME,
                <LockServer<LockService> as NamedService>::NAME,
                <ElectionServer<ElectionService> as NamedService>::NAME,
                <HealthServer<HealthService> as NamedService>::NAME,
            ]
        );
    }
}
