//! `GET /metrics` and the gRPC series etcd exports through
//! go-grpc-prometheus, with its names, labels and semantics:
//!
//! - `grpc_server_started_total`, `grpc_server_handled_total` (by
//!   `grpc_code`), `grpc_server_msg_received_total`,
//!   `grpc_server_msg_sent_total`, labelled `grpc_type`, `grpc_service`,
//!   `grpc_method`; pre-created at 0 for every method etcd registers (and
//!   every code, for `handled`), as `grpc_prometheus.Register` does;
//! - `grpc_server_handling_seconds` with `--metrics extensive` only;
//! - `etcd_network_client_grpc_{received,sent}_bytes_total`: gRPC message
//!   bytes (the 5-byte length prefixes included).
//!
//! The gRPC dispatcher (`grpc::Services`) counts a call when it starts, counts
//! messages and bytes as request and response bodies stream through, and
//! counts it handled with the status from the `grpc-status` header
//! (trailers-only errors) or trailer; a response body dropped before its
//! trailers (client gone) counts as `Canceled`. The member's own series
//! come from [`etcd_core::Etcd::gather`].

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Buf;
use etcd_core::Etcd;
use http_body::Frame;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// Every method etcd registers: (service, method, type).
const METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Compact", "unary"),
    ("etcdserverpb.KV", "DeleteRange", "unary"),
    ("etcdserverpb.KV", "Put", "unary"),
    ("etcdserverpb.KV", "Range", "unary"),
    ("etcdserverpb.KV", "Txn", "unary"),
    ("etcdserverpb.Watch", "Watch", "bidi_stream"),
    ("etcdserverpb.Lease", "LeaseGrant", "unary"),
    ("etcdserverpb.Lease", "LeaseLeases", "unary"),
    ("etcdserverpb.Lease", "LeaseRevoke", "unary"),
    ("etcdserverpb.Lease", "LeaseTimeToLive", "unary"),
    ("etcdserverpb.Lease", "LeaseKeepAlive", "bidi_stream"),
    ("etcdserverpb.Cluster", "MemberAdd", "unary"),
    ("etcdserverpb.Cluster", "MemberList", "unary"),
    ("etcdserverpb.Cluster", "MemberPromote", "unary"),
    ("etcdserverpb.Cluster", "MemberRemove", "unary"),
    ("etcdserverpb.Cluster", "MemberUpdate", "unary"),
    ("etcdserverpb.Maintenance", "Alarm", "unary"),
    ("etcdserverpb.Maintenance", "Defragment", "unary"),
    ("etcdserverpb.Maintenance", "Hash", "unary"),
    ("etcdserverpb.Maintenance", "HashKV", "unary"),
    ("etcdserverpb.Maintenance", "MoveLeader", "unary"),
    ("etcdserverpb.Maintenance", "Status", "unary"),
    ("etcdserverpb.Maintenance", "Snapshot", "server_stream"),
    ("etcdserverpb.Auth", "AuthDisable", "unary"),
    ("etcdserverpb.Auth", "AuthEnable", "unary"),
    ("etcdserverpb.Auth", "Authenticate", "unary"),
    ("etcdserverpb.Auth", "RoleAdd", "unary"),
    ("etcdserverpb.Auth", "RoleDelete", "unary"),
    ("etcdserverpb.Auth", "RoleGet", "unary"),
    ("etcdserverpb.Auth", "RoleGrantPermission", "unary"),
    ("etcdserverpb.Auth", "RoleList", "unary"),
    ("etcdserverpb.Auth", "RoleRevokePermission", "unary"),
    ("etcdserverpb.Auth", "UserAdd", "unary"),
    ("etcdserverpb.Auth", "UserChangePassword", "unary"),
    ("etcdserverpb.Auth", "UserDelete", "unary"),
    ("etcdserverpb.Auth", "UserGet", "unary"),
    ("etcdserverpb.Auth", "UserGrantRole", "unary"),
    ("etcdserverpb.Auth", "UserList", "unary"),
    ("etcdserverpb.Auth", "UserRevokeRole", "unary"),
    ("grpc.health.v1.Health", "Check", "unary"),
    ("grpc.health.v1.Health", "Watch", "server_stream"),
    ("v3electionpb.Election", "Campaign", "unary"),
    ("v3electionpb.Election", "Proclaim", "unary"),
    ("v3electionpb.Election", "Leader", "unary"),
    ("v3electionpb.Election", "Observe", "server_stream"),
    ("v3electionpb.Election", "Resign", "unary"),
    ("v3lockpb.Lock", "Lock", "unary"),
    ("v3lockpb.Lock", "Unlock", "unary"),
];

/// gRPC status code names as go-grpc-prometheus writes them, by number.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The gRPC series of one client server.
pub struct GrpcMetrics {
    started: IntCounterVec,
    handled: IntCounterVec,
    msg_received: IntCounterVec,
    msg_sent: IntCounterVec,
    /// `--metrics extensive` only (etcd's `EnableHandlingTimeHistogram`).
    handling: Option<HistogramVec>,
    received_bytes: IntCounter,
    sent_bytes: IntCounter,
    /// Every method of [`METHODS`]' series, looked up once at start by
    /// path (`/service/method`): a call then counts without hashing label
    /// strings (that lookup was measurable in a put's CPU).
    methods: HashMap<String, Arc<MethodSeries>>,
}

/// The series of one method.
struct MethodSeries {
    /// grpc_type, grpc_service, grpc_method.
    labels: [String; 3],
    started: IntCounter,
    msg_received: IntCounter,
    msg_sent: IntCounter,
    /// By code number ([`CODES`]); empty for a method etcd does not
    /// register (its `handled` series are created as codes occur).
    handled: Vec<IntCounter>,
    handling: Option<Histogram>,
}

impl MethodSeries {
    /// `kind`, `service`, `method`'s series in `m`; with `every_code`
    /// their `handled` series for every code too (created at 0).
    fn new(m: &GrpcMetrics, kind: &str, service: &str, method: &str, every_code: bool) -> Self {
        let l = [kind, service, method];
        MethodSeries {
            labels: l.map(str::to_string),
            started: m.started.with_label_values(&l),
            msg_received: m.msg_received.with_label_values(&l),
            msg_sent: m.msg_sent.with_label_values(&l),
            handled: if every_code {
                CODES
                    .iter()
                    .map(|code| m.handled.with_label_values(&[kind, service, method, code]))
                    .collect()
            } else {
                Vec::new()
            },
            handling: m.handling.as_ref().map(|h| h.with_label_values(&l)),
        }
    }
}

const LABELS: [&str; 3] = ["grpc_type", "grpc_service", "grpc_method"];

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid counter");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

impl GrpcMetrics {
    /// Registers the gRPC series in `registry` (the member's), every
    /// method's at 0.
    pub fn register(registry: &Registry, extensive: bool) -> Arc<GrpcMetrics> {
        let r = registry;
        let handled_labels = ["grpc_type", "grpc_service", "grpc_method", "grpc_code"];
        let mut m = GrpcMetrics {
            started: counter_vec(
                r,
                "grpc_server_started_total",
                "Total number of RPCs started on the server.",
                &LABELS,
            ),
            handled: counter_vec(
                r,
                "grpc_server_handled_total",
                "Total number of RPCs completed on the server, regardless of success or failure.",
                &handled_labels,
            ),
            msg_received: counter_vec(
                r,
                "grpc_server_msg_received_total",
                "Total number of RPC stream messages received on the server.",
                &LABELS,
            ),
            msg_sent: counter_vec(
                r,
                "grpc_server_msg_sent_total",
                "Total number of gRPC stream messages sent by the server.",
                &LABELS,
            ),
            handling: extensive.then(|| {
                let opts = HistogramOpts::new(
                    "grpc_server_handling_seconds",
                    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                )
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]);
                let h = HistogramVec::new(opts, &LABELS).expect("valid histogram");
                r.register(Box::new(h.clone())).expect("registered once");
                h
            }),
            received_bytes: counter(
                r,
                "etcd_network_client_grpc_received_bytes_total",
                "The total number of bytes received from grpc clients.",
            ),
            sent_bytes: counter(
                r,
                "etcd_network_client_grpc_sent_bytes_total",
                "The total number of bytes sent to grpc clients.",
            ),
            methods: HashMap::new(),
        };
        for (service, method, kind) in METHODS {
            let series = MethodSeries::new(&m, kind, service, method, true);
            m.methods
                .insert(format!("/{service}/{method}"), Arc::new(series));
        }
        Arc::new(m)
    }

    /// The series of the call to `path`; None when it is not a gRPC path.
    fn series(&self, path: &str) -> Option<Arc<MethodSeries>> {
        if let Some(s) = self.methods.get(path) {
            return Some(s.clone());
        }
        // A method etcd does not register (answered Unimplemented).
        let (service, method) = path.trim_start_matches('/').split_once('/')?;
        Some(Arc::new(MethodSeries::new(
            self, "unary", service, method, false,
        )))
    }
}

/// One call being counted.
pub(crate) struct Call {
    metrics: Arc<GrpcMetrics>,
    series: Arc<MethodSeries>,
    started: Instant,
}

impl Call {
    fn handled(&self, code: usize) {
        let s = &self.series;
        match s.handled.get(code) {
            Some(c) => c.inc(),
            None => {
                let [t, sv, m] = &s.labels;
                let name = CODES.get(code).copied().unwrap_or("Unknown");
                self.metrics
                    .handled
                    .with_label_values(&[t, sv, m, name])
                    .inc();
            }
        }
        if let Some(h) = &s.handling {
            h.observe(self.started.elapsed().as_secs_f64());
        }
    }

    /// The call's answer, counted: handled now when it is trailers-only,
    /// else as its body streams (see [`Counted`]).
    pub(crate) fn respond(
        self: Arc<Call>,
        resp: http::Response<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        if let Some(code) = grpc_status(resp.headers()) {
            // Trailers-only: the call ended here.
            self.handled(code);
            return resp;
        }
        resp.map(|inner| {
            tonic::body::Body::new(Counted {
                inner,
                call: self,
                messages: Messages::default(),
                sent: true,
                done: false,
            })
        })
    }
}

impl GrpcMetrics {
    /// Counts a gRPC call starting (see the module doc): the request with
    /// its body counted, and the call to count the answer with. `None`
    /// when the path is not a gRPC method path.
    pub(crate) fn start<B>(
        self: &Arc<Self>,
        req: http::Request<B>,
    ) -> (http::Request<tonic::body::Body>, Option<Arc<Call>>)
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<tower::BoxError>,
    {
        let Some(series) = self.series(req.uri().path()) else {
            return (req.map(tonic::body::Body::new), None);
        };
        series.started.inc();
        let call = Arc::new(Call {
            metrics: self.clone(),
            series,
            started: Instant::now(),
        });
        let req = req.map(|body| {
            tonic::body::Body::new(Counted {
                inner: tonic::body::Body::new(body),
                call: call.clone(),
                messages: Messages::default(),
                sent: false,
                done: true,
            })
        });
        (req, Some(call))
    }
}

fn grpc_status(h: &HeaderMap) -> Option<usize> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Counts whole gRPC messages in a byte stream (5-byte prefix: flag and
/// big-endian length, then the message).
#[derive(Default)]
struct Messages {
    /// Bytes of the current prefix seen so far (0..5).
    prefix: [u8; 5],
    prefix_len: usize,
    /// Message bytes still to come.
    remaining: u64,
}

impl Messages {
    /// Feeds `data`; returns the number of messages completed.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut done = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = (self.remaining as usize).min(data.len());
                self.remaining -= n as u64;
                data = &data[n..];
                if self.remaining == 0 {
                    done += 1;
                }
                continue;
            }
            let n = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + n].copy_from_slice(&data[..n]);
            self.prefix_len += n;
            data = &data[n..];
            if self.prefix_len == 5 {
                self.prefix_len = 0;
                let len = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]);
                self.remaining = u64::from(len);
                if len == 0 {
                    done += 1;
                }
            }
        }
        done
    }
}

/// A request or response body whose messages and bytes are counted; a
/// response body also counts the call handled at its trailers (or as
/// Canceled if dropped before them).
struct Counted {
    inner: tonic::body::Body,
    call: Arc<Call>,
    messages: Messages,
    /// A response body (counted in `grpc_server_msg_sent_total` and
    /// `etcd_network_client_grpc_sent_bytes_total`), else a request's
    /// (`..._received_...`).
    sent: bool,
    /// The call was counted handled (always true for request bodies).
    done: bool,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let (messages, bytes) = if this.sent {
                    (&this.call.series.msg_sent, &this.call.metrics.sent_bytes)
                } else {
                    (
                        &this.call.series.msg_received,
                        &this.call.metrics.received_bytes,
                    )
                };
                bytes.inc_by(data.len() as u64);
                messages.inc_by(this.messages.feed(data.chunk()));
            } else if let Some(trailers) = frame.trailers_ref() {
                if !this.done {
                    this.done = true;
                    this.call.handled(grpc_status(trailers).unwrap_or(2));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if !self.done {
            // The client went away before the status (gRPC's Canceled).
            self.call.handled(1);
        }
    }
}

/// `GET /metrics`: every series of the member, Prometheus text format.
pub async fn serve(etcd: Etcd) -> Response {
    let families = tokio::task::spawn_blocking(move || etcd.gather()).await;
    let Ok(families) = families else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics gathering failed\n",
        )
            .into_response();
    };
    let mut text = String::new();
    if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut text) {
        return (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_messages_across_chunks() {
        let mut m = Messages::default();
        // Two messages (3 bytes, then empty) split at awkward places.
        let bytes = [0, 0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0, 0];
        assert_eq!(m.feed(&bytes[..2]), 0);
        assert_eq!(m.feed(&bytes[2..6]), 0);
        assert_eq!(m.feed(&bytes[6..10]), 1);
        assert_eq!(m.feed(&bytes[10..]), 1);
        assert_eq!(m.feed(&bytes), 2, "both in one chunk");
    }

    #[test]
    fn every_method_starts_at_zero() {
        let r = Registry::new();
        GrpcMetrics::register(&r, false);
        let families = r.gather();
        let handled = families
            .iter()
            .find(|f| f.name() == "grpc_server_handled_total")
            .unwrap();
        assert_eq!(handled.get_metric().len(), METHODS.len() * CODES.len());
        assert!(families
            .iter()
            .all(|f| f.name() != "grpc_server_handling_seconds"));
    }
}
