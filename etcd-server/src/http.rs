//! etcd's plain HTTP endpoints, served on the client port beside gRPC
//! (HTTP/1.1 or HTTP/2):
//!
//! - `GET /health`: `{"health":"true","reason":""}` with 200 when no alarm
//!   is active and the member has a leader and can serve a linearizable
//!   read; otherwise `{"health":"false","reason":"..."}` with 503. (etcd's
//!   check is a quorum read too.) `?exclude=NOSPACE` (repeatable) ignores
//!   an alarm type, as etcd 3.4; `?serializable=true` reads locally, so a
//!   member without a leader can still be healthy, as etcd 3.5.
//! - `GET /version`: `{"etcdserver":"...","etcdcluster":"..."}`;
//! - `GET /metrics`: Prometheus text format (`metrics.rs`);
//! - `GET /livez` (a serializable read works) and `GET /readyz` (no
//!   CORRUPT alarm, serializable and linearizable reads work), as etcd
//!   3.5.11+: `ok`, or 503 with `[-]<check> failed: <why>` lines;
//!   `?verbose` lists every check, `?exclude=<check>` skips one;
//! - any other path: 404 (gRPC requests: `Unimplemented`).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use etcd_core::pb::etcdserverpb::RangeRequest;
use etcd_core::Etcd;

/// The HTTP routes, to merge with the gRPC router.
pub fn routes(etcd: Etcd) -> axum::Router {
    axum::Router::new()
        .route("/version", get(version))
        .merge(metrics_routes(etcd))
}

/// What a `--listen-metrics-urls` listener serves (etcd: `/metrics` and
/// `/health`); part of [`routes`] too.
pub fn metrics_routes(etcd: Etcd) -> axum::Router {
    let health_etcd = etcd.clone();
    let (live_etcd, ready_etcd) = (etcd.clone(), etcd.clone());
    axum::Router::new()
        .route("/metrics", get(move || crate::metrics::serve(etcd.clone())))
        .route(
            "/health",
            get(move |uri: axum::http::Uri| {
                let etcd = health_etcd.clone();
                async move { health(&etcd, uri.query().unwrap_or_default()).await }
            }),
        )
        .route(
            "/livez",
            probe_route(live_etcd, "/livez", &["serializable_read"]),
        )
        .route(
            "/readyz",
            probe_route(
                ready_etcd,
                "/readyz",
                &["data_corruption", "serializable_read", "linearizable_read"],
            ),
        )
}

fn probe_route(
    etcd: Etcd,
    path: &'static str,
    checks: &'static [&'static str],
) -> axum::routing::MethodRouter {
    get(move |uri: axum::http::Uri| {
        let etcd = etcd.clone();
        async move { probe(&etcd, path, checks, uri.query().unwrap_or_default()).await }
    })
}

/// What an unknown path gets: gRPC callers an `Unimplemented` status (as
/// any gRPC server answers an unknown method), everyone else a 404.
pub async fn fallback(req: axum::extract::Request) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        let msg = format!("unknown method {}", req.uri().path());
        return tonic::Status::unimplemented(msg).into_http();
    }
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn health(etcd: &Etcd, query: &str) -> Response {
    let params: Vec<(&str, &str)> = query.split('&').filter_map(|p| p.split_once('=')).collect();
    let excluded = |name: &str| params.iter().any(|&(k, v)| k == "exclude" && v == name);
    let serializable = params
        .iter()
        .any(|&(k, v)| k == "serializable" && v == "true");
    // etcd: an active alarm (not excluded) makes the member unhealthy.
    for a in etcd.active_alarms() {
        let name = etcd_core::alarms::alarm_name(a.alarm);
        if !excluded(name) {
            return json(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(r#"{{"health":"false","reason":"ALARM {name}"}}"#),
            );
        }
    }
    match read_probe(etcd, serializable).await {
        Ok(()) => json(StatusCode::OK, r#"{"health":"true","reason":""}"#.into()),
        Err(e) => {
            let reason = e.to_string().replace('"', "'");
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(r#"{{"health":"false","reason":"{reason}"}}"#),
            )
        }
    }
}

/// The read the health endpoints make (etcd's `checkAPI`: one key, keys
/// only; `serializable`: local, without a quorum).
async fn read_probe(etcd: &Etcd, serializable: bool) -> etcd_core::Result<()> {
    let probe = RangeRequest {
        key: "health".into(),
        keys_only: true,
        limit: 1,
        serializable,
        ..Default::default()
    };
    etcd.range(&etcd_core::RequestContext::LOCAL, probe)
        .await
        .map(drop)
}

/// A check of `/livez` and `/readyz` (etcd 3.5.11+, after Kubernetes'
/// healthz): its name and whether it passed (else why not).
async fn run_check(etcd: &Etcd, name: &str) -> Result<(), String> {
    let read = |serializable| async move {
        read_probe(etcd, serializable)
            .await
            .map_err(|e| e.to_string())
    };
    match name {
        "data_corruption" => {
            let corrupt = etcd
                .active_alarms()
                .iter()
                .any(|a| etcd_core::alarms::alarm_name(a.alarm) == "CORRUPT");
            if corrupt {
                Err("alarm activated: CORRUPT".into())
            } else {
                Ok(())
            }
        }
        "serializable_read" => read(true).await,
        "linearizable_read" => read(false).await,
        other => Err(format!("unknown check {other}")),
    }
}

/// `GET /livez` and `/readyz` (`path`), with `?verbose` and
/// `?exclude=<check>`: 200 `ok`, or 503 listing the failed checks.
async fn probe(etcd: &Etcd, path: &str, checks: &[&str], query: &str) -> Response {
    let params: Vec<(&str, &str)> = query
        .split('&')
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    let verbose = params.iter().any(|&(k, _)| k == "verbose");
    let mut lines = String::new();
    let mut failed = false;
    for name in checks {
        if params.iter().any(|&(k, v)| k == "exclude" && v == *name) {
            lines.push_str(&format!("[+]{name} excluded: ok\n"));
            continue;
        }
        match run_check(etcd, name).await {
            Ok(()) => lines.push_str(&format!("[+]{name} ok\n")),
            Err(why) => {
                failed = true;
                lines.push_str(&format!("[-]{name} failed: {why}\n"));
            }
        }
    }
    let text = |status, body: String| {
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body,
        )
            .into_response()
    };
    if failed {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{lines}{} check failed\n", &path[1..]),
        );
    }
    if verbose {
        text(
            StatusCode::OK,
            format!("{lines}{} check passed\n", &path[1..]),
        )
    } else {
        text(StatusCode::OK, "ok".into())
    }
}

async fn version() -> Response {
    let v = etcd_core::SERVER_VERSION;
    json(
        StatusCode::OK,
        format!(r#"{{"etcdserver":"{v}","etcdcluster":"{v}"}}"#),
    )
}
