//! The engine's [`RequestContext`] of a gRPC request, from its metadata.
//!
//! The caller's deadline (`grpc-timeout`, which clientv3 sends for a
//! context with a deadline, e.g. `etcdctl --command-timeout`), its auth
//! token (metadata `token`, as clientv3 sends it after Authenticate, else
//! `authorization`, as etcd reads it: the JSON gateway's header) and
//! the common name of its verified TLS certificate (from the connection,
//! [`ClientConnInfo`], set only under `--client-cert-auth`). The engine
//! resolves the token and checks permissions.

use crate::tls::ClientConnInfo;
use etcd_core::RequestContext;
use std::time::Duration;

/// The context of `req`.
pub fn of<T>(req: &tonic::Request<T>) -> RequestContext {
    RequestContext {
        timeout: req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout),
        token: req
            .metadata()
            .get("token")
            .or_else(|| req.metadata().get("authorization"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        cert_common_name: req
            .extensions()
            .get::<ClientConnInfo>()
            .and_then(|c| c.common_name.clone()),
        trusted: false,
    }
}

/// gRPC's `TimeoutValue TimeoutUnit`: at most 8 ASCII digits, then one of
/// `H M S m u n` (hours .. nanoseconds). None for anything else (the
/// request then waits as long as the server's own limit).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_grpc_timeout("4999m"),
            Some(Duration::from_millis(4999))
        );
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("10u"), Some(Duration::from_micros(10)));
        for bad in ["", "S", "5", "5s", "123456789S", "-1S", "1.5S", "５S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        let mut req = tonic::Request::new(());
        req.metadata_mut()
            .insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(of(&req).timeout, Some(Duration::from_millis(250)));
        assert_eq!(of(&tonic::Request::new(())), RequestContext::default());
        let mut req = tonic::Request::new(());
        req.metadata_mut()
            .insert("token", "abc.12".parse().unwrap());
        assert_eq!(of(&req).token.as_deref(), Some("abc.12"));
        // The verified client certificate's common name, from the connection.
        let mut req = tonic::Request::new(());
        req.extensions_mut().insert(ClientConnInfo {
            remote: None,
            common_name: Some("root".into()),
        });
        assert_eq!(of(&req).cert_common_name.as_deref(), Some("root"));
    }
}
