//! etcd's JSON gateway on the client port: `POST /v3/kv/range` with
//! `{"key":"Zm9v"}` answers what the gRPC call answers, in JSON, as etcd's
//! grpc-gateway (v1, `runtime.JSONPb{OrigName: true}`) does.
//!
//! Nothing here is written per route. The routes are the `google.api.http`
//! options of etcd's protos (`etcd-core/proto`, the same paths as etcd),
//! read at startup from the descriptor set `build.rs` embeds; the JSON <->
//! protobuf mapping is `prost-reflect`'s over the same descriptors. A
//! request becomes a real gRPC call to this server's own gRPC router, in
//! process (etcd's gateway dials its own gRPC port): the same auth,
//! deadlines, request checks, metrics and errors as any gRPC client.
//!
//! What etcd's gateway does, and so this one:
//! - JSON field names as in the protos (`create_revision`), 64-bit
//!   integers as strings, bytes as base64, enums by name, zero values
//!   left out; requests may also use lowerCamel names and numbers for
//!   64-bit integers and enums; unknown fields are ignored; an empty body
//!   is the empty request; only the body's first JSON value is read.
//! - Worked example: `{"key":"Zm9v","value":"YmFy"}` to `/v3/kv/put`
//!   answers `{"header":{"cluster_id":"...","member_id":"...",
//!   "revision":"2","raft_term":"2"}}`.
//! - Errors: the gRPC status mapped to an HTTP status
//!   ([`http_status`]) with `{"error":msg,"message":msg,"code":N}`.
//! - Streams (`/v3/watch`, `/v3/lease/keepalive`, `/v3/election/observe`,
//!   `/v3/maintenance/snapshot`): one `{"result":{...}}` line per response;
//!   a stream that fails after its first response ends with
//!   `{"error":{"grpc_code":N,"http_code":N,"message":...,"http_status":...}}`.
//!   A request stream is the body's JSON values one after another; when the
//!   body ends the call half-closes (a watch keeps running, as with etcd).
//! - Headers: `Authorization` is the auth token (metadata `authorization`),
//!   `Grpc-Metadata-<key>` passes `<key>` as metadata, `Grpc-Timeout` is
//!   the deadline; the gRPC response headers come back as
//!   `Grpc-Metadata-<key>`; every answer carries etcd's CORS headers
//!   (`--cors` is `*`) and `OPTIONS` gets 200.
//! - `/v3beta/...` is `/v3/...` (etcd 3.4 rewrites it); an unknown path is
//!   404 `Not Found`, another method than POST 405.
//! - Under `--client-cert-auth` with auth enabled, a request whose
//!   certificate has a common name is refused with etcd's 400: the gateway
//!   authenticates by token only (etcd's gateway connection does not carry
//!   the client's certificate either).
//!
//! Not served: etcd's websocket upgrade of the streams (grpc-websocket-proxy).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions, Value,
};
use tonic::Code;
use tower::ServiceExt;

use crate::tls::ClientConnInfo;

/// etcd's services and their imports, with options (see `build.rs`).
static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/etcd_api.binpb"));

/// The services in etcd's registration order (`embed/serve.go`): on a
/// path two methods claim, the first one registered answers.
const SERVICES: &[&str] = &[
    "etcdserverpb.KV",
    "etcdserverpb.Watch",
    "etcdserverpb.Lease",
    "etcdserverpb.Cluster",
    "etcdserverpb.Maintenance",
    "etcdserverpb.Auth",
    "v3lockpb.Lock",
    "v3electionpb.Election",
];

/// grpc-gateway's JSON: proto names, 64-bit integers as strings, enum
/// names, zero values left out.
const JSON_OUT: SerializeOptions = SerializeOptions::new()
    .use_proto_field_name(true)
    .stringify_64_bit_integers(true)
    .skip_default_fields(true);
/// Unknown fields are ignored, as etcd 3.4's gateway ignores them.
const JSON_IN: DeserializeOptions = DeserializeOptions::new().deny_unknown_fields(false);

/// One route: a gRPC method and how its messages map.
#[derive(Debug)]
pub struct Route {
    /// The gRPC path, `/etcdserverpb.KV/Range`.
    pub grpc_path: String,
    /// The request message.
    input: MessageDescriptor,
    /// The response message.
    output: MessageDescriptor,
    /// Requests stream (Watch, LeaseKeepAlive).
    pub client_streaming: bool,
    /// Responses stream (`{"result":...}` lines).
    pub server_streaming: bool,
}

/// The route table: HTTP path (`/v3/kv/range`) -> route.
#[derive(Debug)]
pub struct Routes(HashMap<String, Arc<Route>>);

impl Routes {
    /// The routes of the embedded descriptors' `google.api.http` options.
    pub fn from_descriptors() -> Result<Routes, String> {
        let pool = DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string())?;
        let http = pool
            .get_extension_by_name("google.api.http")
            .ok_or("the descriptors lack the google.api.http option")?;
        let mut routes = HashMap::new();
        for name in SERVICES {
            let service = pool
                .get_service_by_name(name)
                .ok_or_else(|| format!("service {name} is not in the descriptors"))?;
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&http) {
                    continue;
                }
                let route = Arc::new(Route {
                    grpc_path: format!("/{}/{}", service.full_name(), method.name()),
                    input: method.input(),
                    output: method.output(),
                    client_streaming: method.is_client_streaming(),
                    server_streaming: method.is_server_streaming(),
                });
                let Value::Message(rule) = options.get_extension(&http).into_owned() else {
                    return Err(format!(
                        "{}: google.api.http is not a message",
                        route.grpc_path
                    ));
                };
                for path in post_paths(&rule) {
                    routes.entry(path).or_insert_with(|| route.clone());
                }
            }
        }
        Ok(Routes(routes))
    }

    /// The route of `path` (`/v3beta/` read as `/v3/`).
    pub fn get(&self, path: &str) -> Option<&Arc<Route>> {
        match path.strip_prefix("/v3beta/") {
            Some(rest) => self.0.get(&format!("/v3/{rest}")),
            None => self.0.get(path),
        }
    }

    /// Every HTTP path, sorted.
    #[cfg(test)]
    pub fn paths(&self) -> Vec<&str> {
        let mut paths: Vec<&str> = self.0.keys().map(String::as_str).collect();
        paths.sort_unstable();
        paths
    }
}

/// The `post:` paths of an `HttpRule` and of its additional bindings.
fn post_paths(rule: &DynamicMessage) -> Vec<String> {
    let mut paths = Vec::new();
    if let Some(Value::String(p)) = rule.get_field_by_name("post").map(|v| v.into_owned()) {
        if !p.is_empty() {
            paths.push(p);
        }
    }
    if let Some(Value::List(more)) = rule
        .get_field_by_name("additional_bindings")
        .map(|v| v.into_owned())
    {
        for m in more {
            if let Value::Message(m) = m {
                paths.extend(post_paths(&m));
            }
        }
    }
    paths
}

/// What a gateway request needs besides itself.
#[derive(Clone)]
pub struct Gateway {
    /// The route table.
    routes: Arc<Routes>,
    /// This server's gRPC services (calls counted in its metrics): every
    /// request becomes a call to them.
    grpc: crate::grpc::Services,
    /// Largest request body read (one JSON value): the gRPC limit of a
    /// message, base64 and JSON overhead included.
    max_body: usize,
    /// The member: whether auth is enabled, for the check below.
    etcd: etcd_core::Etcd,
    /// `--client-cert-auth`: while auth is enabled, a gateway request whose
    /// certificate has a common name is refused (etcd's check).
    client_cert_auth: bool,
}

impl Gateway {
    /// A gateway calling `grpc`; `max_recv` is the gRPC message limit.
    pub fn new(
        grpc: crate::grpc::Services,
        etcd: etcd_core::Etcd,
        max_recv: usize,
        client_cert_auth: bool,
    ) -> Result<Gateway, String> {
        Ok(Gateway {
            routes: Arc::new(Routes::from_descriptors()?),
            grpc,
            max_body: max_recv.saturating_mul(2).saturating_add(64 << 10),
            etcd,
            client_cert_auth,
        })
    }

    /// The route of `req`, or the answer it gets without a call (OPTIONS,
    /// an unknown path, another method, etcd's common-name check).
    #[allow(clippy::result_large_err)] // the Err is the answer itself
    fn route(&self, req: &Request) -> Result<Arc<Route>, Response> {
        if req.method() == Method::OPTIONS {
            return Err(plain(StatusCode::OK, ""));
        }
        let Some(route) = self.routes.get(req.uri().path()).cloned() else {
            return Err(plain(StatusCode::NOT_FOUND, "Not Found\n"));
        };
        if req.method() != Method::POST {
            return Err(plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "Method Not Allowed\n",
            ));
        }
        let cn = req
            .extensions()
            .get::<ClientConnInfo>()
            .and_then(|c| c.common_name.as_ref());
        if self.client_cert_auth && cn.is_some_and(|cn| !cn.is_empty()) && self.etcd.auth_enabled()
        {
            return Err(plain(
                StatusCode::BAD_REQUEST,
                "CommonName of client sending a request against gateway will be ignored and not used as expected\n",
            ));
        }
        Ok(route)
    }

    /// The axum routes (`/v3/*`, `/v3beta/*`), to merge with the client
    /// port's router.
    pub fn router(self) -> axum::Router {
        let gw = Arc::new(self);
        let handler = move |req: Request| {
            let gw = gw.clone();
            async move { with_cors(gw.serve(req).await) }
        };
        axum::Router::new()
            .route("/v3/{*rest}", axum::routing::any(handler.clone()))
            .route("/v3beta/{*rest}", axum::routing::any(handler))
    }

    #[allow(clippy::result_large_err)] // the Err is the answer itself
    async fn serve(&self, req: Request) -> Response {
        let checked = self.route(&req).and_then(|route| {
            Ok((
                route,
                metadata(req.headers()).map_err(|s| error_response(&s))?,
            ))
        });
        let (route, metadata) = match checked {
            Ok(ok) => ok,
            Err(answer) => {
                // Answered without a call; the body is read first (up to
                // the limit): an HTTP/2 client still sending it would
                // otherwise see its stream reset under the answer.
                let _ = axum::body::to_bytes(req.into_body(), self.max_body).await;
                return answer;
            }
        };
        let body = req.into_body();
        let grpc_body = if route.client_streaming {
            match request_stream(&route, body, self.max_body).await {
                Ok(b) => b,
                Err(status) => return error_response(&status),
            }
        } else {
            match first_value(&route.input, body, self.max_body).await {
                Ok(msg) => Body::from(frame(&msg)),
                Err(status) => return error_response(&status),
            }
        };
        let mut call = http::Request::builder()
            .method(Method::POST)
            .uri(&route.grpc_path)
            .version(http::Version::HTTP_2)
            .body(grpc_body)
            .expect("a valid request");
        *call.headers_mut() = metadata;
        let headers = call.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        let Ok(resp) = self.grpc.clone().oneshot(call).await;
        let (parts, body) = resp.into_parts();
        let mut reader = GrpcReader::new(&parts.headers, Body::new(body));
        let forwarded = forwarded_headers(&parts.headers);
        if route.server_streaming {
            stream_response(route, reader, forwarded).await
        } else {
            let msg = match reader.next().await {
                Ok(Some(msg)) => msg,
                Ok(None) => {
                    return error_response(&tonic::Status::internal(
                        "the call ended without a response",
                    ))
                }
                Err(status) => return error_response(&status),
            };
            if let Err(status) = reader.finish().await {
                return error_response(&status);
            }
            match to_json(&route.output, msg) {
                Ok(json) => {
                    let mut resp = json_response(StatusCode::OK, json);
                    resp.headers_mut().extend(forwarded);
                    resp
                }
                Err(status) => error_response(&status),
            }
        }
    }
}

/// The gRPC metadata of a gateway request (grpc-gateway's
/// `AnnotateContext`): the token, `Grpc-Metadata-*`, the deadline.
fn metadata(headers: &HeaderMap) -> Result<HeaderMap, tonic::Status> {
    let mut md = HeaderMap::new();
    for (name, value) in headers {
        if name == header::AUTHORIZATION {
            md.append(HeaderName::from_static("authorization"), value.clone());
        } else if let Some(key) = name.as_str().strip_prefix("grpc-metadata-") {
            if let Ok(key) = HeaderName::from_bytes(key.as_bytes()) {
                md.append(key, value.clone());
            }
        } else if name == "grpc-timeout" {
            let valid = value
                .to_str()
                .ok()
                .and_then(crate::request_context::parse_grpc_timeout)
                .is_some();
            if !valid {
                let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
                return Err(tonic::Status::invalid_argument(format!(
                    "invalid grpc-timeout: {v}"
                )));
            }
            md.insert(name.clone(), value.clone());
        }
    }
    Ok(md)
}

/// The gRPC response headers as grpc-gateway returns them:
/// `Grpc-Metadata-<key>`.
fn forwarded_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in headers {
        if name.as_str().starts_with("grpc-") {
            continue; // the status of a trailers-only answer
        }
        if let Ok(n) = HeaderName::from_bytes(format!("grpc-metadata-{name}").as_bytes()) {
            out.append(n, value.clone());
        }
    }
    out
}

/// A gRPC message frame: uncompressed flag, big-endian length, bytes.
fn frame(msg: &DynamicMessage) -> Bytes {
    let len = msg.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    msg.encode(&mut out).expect("BytesMut grows");
    out.freeze()
}

/// The request of a unary or server-streaming call: the body's first JSON
/// value (an empty body is the empty request).
async fn first_value(
    desc: &MessageDescriptor,
    body: Body,
    max: usize,
) -> Result<DynamicMessage, tonic::Status> {
    let bytes = axum::body::to_bytes(body, max)
        .await
        .map_err(|e| body_error(&e, max))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(desc.clone()));
    }
    let mut de = serde_json::Deserializer::from_slice(&bytes);
    DynamicMessage::deserialize_with_options(desc.clone(), &mut de, &JSON_IN)
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))
}

fn body_error(e: &dyn std::fmt::Display, max: usize) -> tonic::Status {
    let text = e.to_string();
    if text.contains("length limit") {
        tonic::Status::resource_exhausted(format!("gateway: request body larger than {max} bytes"))
    } else {
        tonic::Status::invalid_argument(format!("reading the request body: {text}"))
    }
}

/// The request stream of a bidirectional call: the body's JSON values one
/// after another, each sent as it completes. The first value is read
/// before the call (grpc-gateway: a first value that does not decode fails
/// the request; a later one ends the stream, as the body's end does).
async fn request_stream(route: &Route, body: Body, max: usize) -> Result<Body, tonic::Status> {
    let mut values = JsonValues {
        body: body.into_data_stream(),
        buf: BytesMut::new(),
        max,
        eof: false,
    };
    let desc = route.input.clone();
    let first = match values.next().await {
        Ok(None) => None,
        Ok(Some(v)) => Some(
            DynamicMessage::deserialize_with_options(desc.clone(), v, &JSON_IN)
                .map_err(|e| tonic::Status::unknown(e.to_string()))?,
        ),
        Err(e) => return Err(tonic::Status::unknown(e)),
    };
    let first = first.map(|m| frame(&m));
    let rest = futures::stream::unfold((values, desc), |(mut values, desc)| async move {
        let v = values.next().await.ok()??;
        let msg = DynamicMessage::deserialize_with_options(desc.clone(), v, &JSON_IN).ok()?;
        Some((Ok::<_, Infallible>(frame(&msg)), (values, desc)))
    });
    let frames = futures::stream::iter(first.map(Ok)).chain(rest);
    Ok(Body::from_stream(frames))
}

/// JSON values read one after another from a request body.
struct JsonValues {
    /// The body's bytes as they arrive.
    body: axum::body::BodyDataStream,
    /// Bytes not yet decoded.
    buf: BytesMut,
    /// Largest value.
    max: usize,
    /// The body has ended.
    eof: bool,
}

impl JsonValues {
    /// The next value; None at the end of the body.
    async fn next(&mut self) -> Result<Option<serde_json::Value>, String> {
        loop {
            let start = self.buf.iter().position(|b| !b.is_ascii_whitespace());
            match start {
                Some(n) => self.buf.advance(n),
                None => self.buf.clear(),
            }
            if !self.buf.is_empty() {
                let mut it = serde_json::Deserializer::from_slice(&self.buf)
                    .into_iter::<serde_json::Value>();
                match it.next() {
                    Some(Ok(v)) => {
                        let used = it.byte_offset();
                        self.buf.advance(used);
                        return Ok(Some(v));
                    }
                    Some(Err(e)) if !e.is_eof() || self.eof => return Err(e.to_string()),
                    _ => {}
                }
            }
            if self.eof {
                return Ok(None);
            }
            if self.buf.len() > self.max {
                return Err(format!("a request larger than {} bytes", self.max));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(e.to_string()),
                None => self.eof = true,
            }
        }
    }
}

/// Reads the messages and the status of a gRPC response.
struct GrpcReader {
    /// The response body (data frames, then trailers).
    body: Body,
    /// Bytes of a message not complete yet.
    buf: BytesMut,
    /// The call's status once known (trailers, or the headers of a
    /// trailers-only answer).
    status: Option<tonic::Status>,
}

impl GrpcReader {
    fn new(headers: &HeaderMap, body: Body) -> GrpcReader {
        GrpcReader {
            body,
            buf: BytesMut::new(),
            status: tonic::Status::from_header_map(headers),
        }
    }

    /// The next message; None once the call ended well; the status if it
    /// failed.
    async fn next(&mut self) -> Result<Option<Bytes>, tonic::Status> {
        loop {
            if self.buf.len() >= 5 {
                if self.buf[0] != 0 {
                    return Err(tonic::Status::internal("compressed gRPC message"));
                }
                let len = u32::from_be_bytes(self.buf[1..5].try_into().expect("4 bytes")) as usize;
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    return Ok(Some(self.buf.split_to(len).freeze()));
                }
            }
            if let Some(status) = &self.status {
                return match status.code() {
                    Code::Ok => Ok(None),
                    _ => Err(status.clone()),
                };
            }
            match self.body.frame().await {
                Some(Ok(f)) => match f.into_data() {
                    Ok(data) => self.buf.extend_from_slice(&data),
                    Err(f) => {
                        if let Some(t) = f.trailers_ref() {
                            self.status =
                                Some(tonic::Status::from_header_map(t).unwrap_or_else(|| {
                                    tonic::Status::unknown("trailers without grpc-status")
                                }));
                        }
                    }
                },
                Some(Err(e)) => return Err(tonic::Status::unknown(e.to_string())),
                None => {
                    self.status = Some(tonic::Status::unknown("the call ended without a status"));
                }
            }
        }
    }

    /// After a unary call's message: the status.
    async fn finish(&mut self) -> Result<(), tonic::Status> {
        match self.next().await? {
            None => Ok(()),
            Some(_) => Err(tonic::Status::internal("a unary call answered twice")),
        }
    }
}

/// A gRPC response message as grpc-gateway's JSON.
fn to_json(desc: &MessageDescriptor, msg: Bytes) -> Result<Vec<u8>, tonic::Status> {
    let msg = DynamicMessage::decode(desc.clone(), msg)
        .map_err(|e| tonic::Status::internal(format!("decoding the response: {e}")))?;
    let mut out = serde_json::Serializer::new(Vec::new());
    msg.serialize_with_options(&mut out, &JSON_OUT)
        .map_err(|e| tonic::Status::internal(format!("encoding the response: {e}")))?;
    Ok(out.into_inner())
}

/// A streamed answer: the HTTP status waits for the first response (an
/// immediate failure is an error answer, as grpc-gateway's), then one
/// `{"result":...}` line per response and a last `{"error":...}` if the
/// call fails.
async fn stream_response(
    route: Arc<Route>,
    mut reader: GrpcReader,
    headers: HeaderMap,
) -> Response {
    let first = match reader.next().await {
        Err(status) => {
            let mut resp = json_response(http_status(status.code()), stream_error(&status));
            resp.headers_mut().extend(headers);
            return resp;
        }
        Ok(first) => first,
    };
    let lines = futures::stream::unfold(
        (Some(first), reader, route, false),
        |(pending, mut reader, route, done)| async move {
            if done {
                return None;
            }
            let next = match pending {
                Some(p) => Ok(p),
                None => reader.next().await,
            };
            let (line, done) = match next {
                Ok(None) => return None,
                Ok(Some(msg)) => match to_json(&route.output, msg) {
                    Ok(json) => {
                        let mut line = Vec::with_capacity(json.len() + 12);
                        line.extend_from_slice(b"{\"result\":");
                        line.extend_from_slice(&json);
                        line.extend_from_slice(b"}\n");
                        (line, false)
                    }
                    Err(status) => (stream_error(&status), true),
                },
                Err(status) => (stream_error(&status), true),
            };
            Some((
                Ok::<_, Infallible>(Bytes::from(line)),
                (None, reader, route, done),
            ))
        },
    );
    let mut resp = Response::new(Body::from_stream(lines));
    resp.headers_mut().extend(headers);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// grpc-gateway's last chunk of a failed stream.
fn stream_error(status: &tonic::Status) -> Vec<u8> {
    let http = http_status(status.code());
    serde_json::to_vec(&serde_json::json!({
        "error": {
            "grpc_code": status.code() as i32,
            "http_code": http.as_u16(),
            "message": status.message(),
            "http_status": http.canonical_reason().unwrap_or_default(),
        }
    }))
    .expect("JSON of strings and numbers")
}

/// grpc-gateway's error answer: `{"error","message","code"}`.
fn error_response(status: &tonic::Status) -> Response {
    #[derive(serde::Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
        message: &'a str,
        code: i32,
    }
    let body = serde_json::to_vec(&ErrorBody {
        error: status.message(),
        message: status.message(),
        code: status.code() as i32,
    })
    .expect("JSON of strings and a number");
    json_response(http_status(status.code()), body)
}

/// grpc-gateway's `HTTPStatusFromCode`.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Go's `http.Error`.
fn plain(status: StatusCode, text: &'static str) -> Response {
    let mut resp = Response::new(Body::from(text));
    *resp.status_mut() = status;
    if !text.is_empty() {
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(
            HeaderName::from_static("x-content-type-options"),
            HeaderValue::from_static("nosniff"),
        );
    }
    resp
}

/// etcd's CORS headers (`addCORSHeader`, origin `*`).
fn with_cors(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert("access-control-allow-origin", HeaderValue::from_static("*"));
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    resp
}

/// Fuzz entry point: `data` as the request body of a gateway route (the
/// first byte picks the route), split into chunks as a network would, read
/// as a stream of JSON values, each decoded into the route's request and
/// encoded as protobuf. Must never panic (any client sends the body).
/// Test support (`testing` feature).
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub fn fuzz_request_body(data: &[u8]) {
    use std::sync::OnceLock;
    static ROUTES: OnceLock<Vec<Arc<Route>>> = OnceLock::new();
    let routes = ROUTES.get_or_init(|| {
        let r = Routes::from_descriptors().expect("embedded descriptors");
        let mut v: Vec<_> = r.0.into_values().collect();
        v.sort_by(|a, b| a.grpc_path.cmp(&b.grpc_path));
        v
    });
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let route = &routes[pick as usize % routes.len()];
    let chunks: Vec<Result<Bytes, Infallible>> = body
        .chunks(1 + pick as usize % 7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let mut values = JsonValues {
        body: Body::from_stream(futures::stream::iter(chunks)).into_data_stream(),
        buf: BytesMut::new(),
        max: 1 << 16,
        eof: false,
    };
    futures::executor::block_on(async {
        while let Ok(Some(v)) = values.next().await {
            if let Ok(m) =
                DynamicMessage::deserialize_with_options(route.input.clone(), v, &JSON_IN)
            {
                let _ = frame(&m);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arbitrary_bodies_never_panic() {
        let seeds: &[&[u8]] = &[
            br#"{"key":"Zm9v","range_end":"AA==","limit":"-1","sort_order":"DESCEND"}"#,
            br#"{"create_request":{"key":"eA==","filters":["NOPUT"],"start_revision":9}} {"cancel_request":{"watch_id":"1"}}"#,
            br#"{"compare":[{"key":"eA==","result":"GREATER","target":"VERSION","version":"1"}],"success":[{"request_txn":{"success":[{"request_delete_range":{"key":"eA=="}}]}}]}"#,
            br#"{"ID":"18446744073709551616","TTL":1e99,"keys":null,"perm":{"permType":7}}"#,
        ];
        let mut x = 0x2545f4914f6cdd1du64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..4000 {
            let mut data = vec![next() as u8];
            let mut body = seeds[i % seeds.len()].to_vec();
            for _ in 0..next() % 4 {
                let at = next() as usize % body.len();
                match next() % 3 {
                    0 => body[at] = next() as u8,
                    1 => body.truncate(at),
                    _ => body.insert(at, b"{}[]\",:0\\"[(next() % 9) as usize]),
                }
                if body.is_empty() {
                    break;
                }
            }
            data.extend(body);
            fuzz_request_body(&data);
        }
    }

    /// The routes are etcd's (`rpc.pb.gw.go` of etcd 3.5, 3.4's plus
    /// `/v3/auth/status`, `/v3/maintenance/hashkv`, `/downgrade`).
    #[test]
    fn routes_are_etcds() {
        let routes = Routes::from_descriptors().unwrap();
        let expected = [
            "/v3/auth/authenticate",
            "/v3/auth/disable",
            "/v3/auth/enable",
            "/v3/auth/role/add",
            "/v3/auth/role/delete",
            "/v3/auth/role/get",
            "/v3/auth/role/grant",
            "/v3/auth/role/list",
            "/v3/auth/role/revoke",
            "/v3/auth/status",
            "/v3/auth/user/add",
            "/v3/auth/user/changepw",
            "/v3/auth/user/delete",
            "/v3/auth/user/get",
            "/v3/auth/user/grant",
            "/v3/auth/user/list",
            "/v3/auth/user/revoke",
            "/v3/cluster/member/add",
            "/v3/cluster/member/list",
            "/v3/cluster/member/promote",
            "/v3/cluster/member/remove",
            "/v3/cluster/member/update",
            "/v3/election/campaign",
            "/v3/election/leader",
            "/v3/election/observe",
            "/v3/election/proclaim",
            "/v3/election/resign",
            "/v3/kv/compaction",
            "/v3/kv/deleterange",
            "/v3/kv/lease/leases",
            "/v3/kv/lease/revoke",
            "/v3/kv/lease/timetolive",
            "/v3/kv/put",
            "/v3/kv/range",
            "/v3/kv/txn",
            "/v3/lease/grant",
            "/v3/lease/keepalive",
            "/v3/lease/leases",
            "/v3/lease/revoke",
            "/v3/lease/timetolive",
            "/v3/lock/lock",
            "/v3/lock/unlock",
            "/v3/maintenance/alarm",
            "/v3/maintenance/defragment",
            "/v3/maintenance/downgrade",
            "/v3/maintenance/hash",
            "/v3/maintenance/hashkv",
            "/v3/maintenance/snapshot",
            "/v3/maintenance/status",
            "/v3/maintenance/transfer-leadership",
            "/v3/watch",
        ];
        assert_eq!(routes.paths(), expected);
        let watch = routes.get("/v3beta/watch").unwrap();
        assert_eq!(watch.grpc_path, "/etcdserverpb.Watch/Watch");
        assert!(watch.client_streaming && watch.server_streaming);
        let revoke = routes.get("/v3/kv/lease/revoke").unwrap();
        assert_eq!(revoke.grpc_path, "/etcdserverpb.Lease/LeaseRevoke");
        assert!(routes.get("/v3alpha/kv/range").is_none());
    }

    /// grpc-gateway's JSON both ways.
    #[test]
    fn json_is_grpc_gateways() {
        let routes = Routes::from_descriptors().unwrap();
        let range = routes.get("/v3/kv/range").unwrap();
        let mut de = serde_json::Deserializer::from_str(
            r#"{"key":"Zm9v","rangeEnd":"Zm9w","limit":"5","sort_order":"DESCEND","bogus":1} trailing"#,
        );
        let req = DynamicMessage::deserialize_with_options(range.input.clone(), &mut de, &JSON_IN)
            .unwrap();
        let req = etcd_core::pb::etcdserverpb::RangeRequest::decode(req.encode_to_vec().as_slice())
            .unwrap();
        assert_eq!(
            (&req.key[..], &req.range_end[..], req.limit),
            (&b"foo"[..], &b"fop"[..], 5)
        );
        assert_eq!(req.sort_order, 2);
        let resp = etcd_core::pb::etcdserverpb::RangeResponse {
            header: Some(etcd_core::pb::etcdserverpb::ResponseHeader {
                cluster_id: 14841639068965178418,
                member_id: 1,
                revision: 2,
                raft_term: 2,
            }),
            kvs: vec![etcd_core::pb::mvccpb::KeyValue {
                key: b"foo".to_vec().into(),
                create_revision: 2,
                mod_revision: 2,
                version: 1,
                value: b"bar".to_vec().into(),
                lease: 0,
            }],
            more: false,
            count: 1,
        };
        let json = to_json(&range.output, resp.encode_to_vec().into()).unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            r#"{"header":{"cluster_id":"14841639068965178418","member_id":"1","revision":"2","raft_term":"2"},"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"2","version":"1","value":"YmFy"}],"count":"1"}"#
        );
    }

    #[tokio::test]
    async fn json_values_arrive_in_pieces() {
        let chunks: Vec<Result<Bytes, Infallible>> = vec![
            Ok(Bytes::from_static(b" {\"a\":")),
            Ok(Bytes::from_static(b"1}{\"b\"")),
            Ok(Bytes::from_static(b":2}\n")),
        ];
        let mut values = JsonValues {
            body: Body::from_stream(futures::stream::iter(chunks)).into_data_stream(),
            buf: BytesMut::new(),
            max: 100,
            eof: false,
        };
        assert_eq!(values.next().await.unwrap().unwrap()["a"], 1);
        assert_eq!(values.next().await.unwrap().unwrap()["b"], 2);
        assert_eq!(values.next().await.unwrap(), None);
        let mut bad = JsonValues {
            body: Body::from("{\"a\":1} {nope").into_data_stream(),
            buf: BytesMut::new(),
            max: 100,
            eof: false,
        };
        assert!(bad.next().await.unwrap().is_some());
        assert!(bad.next().await.is_err());
    }
}
