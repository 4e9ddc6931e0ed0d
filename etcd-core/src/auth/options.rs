//! `--auth-token`: which tokens the member issues (etcd's
//! `decomposeOpts` and `auth/options.go`).
//!
//! `simple` (the default) or `jwt,<option>=<value>,...` with options
//! `sign-method` (required), `pub-key`, `priv-key` (files) and `ttl` (a Go
//! duration such as `5m` or `1h30m`, default 5 minutes). A repeated or
//! malformed option is an error, as in etcd; unlike etcd (which warns), an
//! unknown option is an error too, so a typo never silently drops a key.

use super::jwt::{JwtTokens, UnixClock};
use std::path::PathBuf;
use std::time::Duration;

/// The parsed `--auth-token`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenOptions {
    /// Simple tokens (TTL: `--auth-token-ttl`).
    Simple,
    /// Signed JWTs.
    Jwt {
        /// `sign-method`, e.g. `RS256`.
        sign_method: String,
        /// `pub-key`.
        pub_key: Option<PathBuf>,
        /// `priv-key`.
        priv_key: Option<PathBuf>,
        /// `ttl` (default 5 minutes).
        ttl: Duration,
    },
}

impl TokenOptions {
    /// Parses `--auth-token`.
    pub fn parse(s: &str) -> Result<TokenOptions, String> {
        let bad = |why: String| Err(format!("--auth-token {s:?}: {why}"));
        let mut parts = s.split(',');
        let kind = parts.next().unwrap_or_default();
        let mut opts: Vec<(&str, &str)> = Vec::new();
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                return bad(format!("option {p:?} is not key=value"));
            };
            if v.contains('=') {
                return bad(format!("option {p:?} is not key=value"));
            }
            if opts.iter().any(|(o, _)| *o == k) {
                return bad(format!("option {k:?} is given twice"));
            }
            opts.push((k, v));
        }
        match kind {
            "simple" if opts.is_empty() => Ok(TokenOptions::Simple),
            "simple" => bad("simple tokens take no options".into()),
            "jwt" => {
                let (mut sign_method, mut pub_key, mut priv_key, mut ttl) =
                    (None, None, None, Duration::from_secs(300));
                for (k, v) in opts {
                    match k {
                        "sign-method" => sign_method = Some(v.to_string()),
                        "pub-key" => pub_key = Some(PathBuf::from(v)),
                        "priv-key" => priv_key = Some(PathBuf::from(v)),
                        "ttl" => match crate::go_duration::parse_go_duration(v) {
                            Ok(d) => ttl = d,
                            Err(e) => return bad(format!("ttl: {e}")),
                        },
                        _ => return bad(format!("unknown option {k:?}")),
                    }
                }
                let Some(sign_method) = sign_method else {
                    return bad("jwt needs sign-method".into());
                };
                Ok(TokenOptions::Jwt {
                    sign_method,
                    pub_key,
                    priv_key,
                    ttl,
                })
            }
            _ => bad(format!("unknown token type {kind:?} (simple or jwt)")),
        }
    }

    /// Loads the JWT keys (None for simple tokens).
    pub(crate) fn jwt(&self, now: UnixClock) -> Result<Option<JwtTokens>, String> {
        let TokenOptions::Jwt {
            sign_method,
            pub_key,
            priv_key,
            ttl,
        } = self
        else {
            return Ok(None);
        };
        let read = |p: &Option<PathBuf>| {
            p.as_ref()
                .map(|p| {
                    std::fs::read(p).map_err(|e| format!("--auth-token: {}: {e}", p.display()))
                })
                .transpose()
        };
        let (pubk, privk) = (read(pub_key)?, read(priv_key)?);
        JwtTokens::new(sign_method, pubk.as_deref(), privk.as_deref(), *ttl, now).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_options() {
        assert_eq!(TokenOptions::parse("simple"), Ok(TokenOptions::Simple));
        assert_eq!(
            TokenOptions::parse("jwt,pub-key=/a.pub,priv-key=/a,sign-method=RS256,ttl=10m"),
            Ok(TokenOptions::Jwt {
                sign_method: "RS256".into(),
                pub_key: Some("/a.pub".into()),
                priv_key: Some("/a".into()),
                ttl: Duration::from_secs(600),
            })
        );
        for bad in [
            "",
            "simplex",
            "simple,ttl=1s",
            "jwt",
            "jwt,sign-method",
            "jwt,sign-method=RS256,sign-method=RS256",
            "jwt,sign-method=RS256,ttl=forever",
            "jwt,sign-method=RS256,pubkey=/x",
        ] {
            assert!(TokenOptions::parse(bad).is_err(), "{bad}");
        }
    }
}
