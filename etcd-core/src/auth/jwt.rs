//! JWT tokens (etcd's `auth/jwt.go`, `--auth-token
//! jwt,pub-key=<file>,priv-key=<file>,sign-method=<alg>,ttl=<duration>`).
//!
//! A token is a JWT signed by the member that served Authenticate, with
//! etcd's claims `{"username": .., "revision": <auth revision>, "exp":
//! <unix seconds>}`, so every member with the same key verifies it without
//! having applied anything. Unlike simple tokens, the revision travels in
//! the token: a token issued before a permission change fails with "revision
//! of auth store is old" and the client authenticates again.
//!
//! Keys: RSA (RS256/384/512, PS256/384/512), ECDSA (ES256/384) in PEM,
//! or a shared secret file for HMAC (HS256/384/512). With only `pub-key`
//! the member verifies but cannot issue (etcd's verify-only mode); with only
//! `priv-key` the verifying key is derived from it.
//!
//! Time: `exp` is absolute, so issuing and checking need the wall clock;
//! it is injected ([`UnixClock`]) and jsonwebtoken's own expiry check is
//! off.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use std::sync::Arc;
use std::time::Duration;

/// Seconds since the Unix epoch.
pub type UnixClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system's wall clock.
pub fn system_unix_clock() -> UnixClock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// Issues and verifies JWT tokens.
pub(crate) struct JwtTokens {
    alg: Algorithm,
    /// None in verify-only mode.
    sign: Option<EncodingKey>,
    verify: DecodingKey,
    ttl: Duration,
    now: UnixClock,
}

impl JwtTokens {
    /// Loads the keys named by the options (`sign-method`, `pub-key`,
    /// `priv-key`, `ttl` already parsed by [`super::options`]).
    pub(crate) fn new(
        method: &str,
        pub_key: Option<&[u8]>,
        priv_key: Option<&[u8]>,
        ttl: Duration,
        now: UnixClock,
    ) -> Result<JwtTokens, String> {
        let alg: Algorithm = method
            .parse()
            .map_err(|_| format!("auth: invalid auth signature method {method:?}"))?;
        use Algorithm::*;
        let (sign, verify) = match alg {
            HS256 | HS384 | HS512 => {
                let secret = priv_key.ok_or("auth: missing key data (priv-key)")?;
                (
                    Some(EncodingKey::from_secret(secret)),
                    DecodingKey::from_secret(secret),
                )
            }
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => {
                let sign = priv_key
                    .map(EncodingKey::from_rsa_pem)
                    .transpose()
                    .map_err(|e| format!("auth: priv-key is not an RSA private key: {e}"))?;
                let verify = match (pub_key, priv_key) {
                    (Some(p), _) => DecodingKey::from_rsa_pem(p)
                        .map_err(|e| format!("auth: pub-key is not an RSA public key: {e}"))?,
                    (None, Some(k)) => DecodingKey::from_rsa_der(&rsa_public_der(k)?),
                    (None, None) => return Err("auth: missing key data".into()),
                };
                (sign, verify)
            }
            ES256 | ES384 => {
                let sign = priv_key
                    .map(EncodingKey::from_ec_pem)
                    .transpose()
                    .map_err(|e| {
                        format!("auth: priv-key is not a PKCS#8 ECDSA private key: {e}")
                    })?;
                let verify = match (pub_key, priv_key) {
                    (Some(p), _) => DecodingKey::from_ec_pem(p)
                        .map_err(|e| format!("auth: pub-key is not an ECDSA public key: {e}"))?,
                    (None, Some(k)) => DecodingKey::from_ec_der(&ec_public_point(alg, k)?),
                    (None, None) => return Err("auth: missing key data".into()),
                };
                (sign, verify)
            }
            EdDSA => return Err("auth: invalid auth signature method \"EdDSA\"".into()),
        };
        Ok(JwtTokens {
            alg,
            sign,
            verify,
            ttl,
            now,
        })
    }

    /// A token for `user` at auth `revision`.
    pub(crate) fn assign(&self, user: &str, revision: u64) -> crate::Result<String> {
        let key = self.sign.as_ref().ok_or(crate::Error::VerifyOnly)?;
        let claims = Claims {
            username: user.to_string(),
            revision,
            exp: (self.now)() + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(self.alg), &claims, key)
            .map_err(|e| crate::Error::Internal(format!("cannot sign a JWT: {e}")))
    }

    /// The user and auth revision of a valid, unexpired token.
    pub(crate) fn info(&self, token: &str) -> Option<(String, u64)> {
        let mut v = Validation::new(self.alg);
        v.validate_exp = false;
        v.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(token, &self.verify, &v).ok()?;
        if data.claims.exp < (self.now)() {
            return None;
        }
        Some((data.claims.username, data.claims.revision))
    }
}

fn pem_der(key: &[u8]) -> Result<pem::Pem, String> {
    pem::parse(key).map_err(|e| format!("auth: priv-key is not PEM: {e}"))
}

/// The PKCS#1 public key of an RSA private key (PKCS#1 or PKCS#8 PEM).
fn rsa_public_der(key: &[u8]) -> Result<Vec<u8>, String> {
    let p = pem_der(key)?;
    let pair = match p.tag() {
        "RSA PRIVATE KEY" => ring::rsa::KeyPair::from_der(p.contents()),
        _ => ring::rsa::KeyPair::from_pkcs8(p.contents()),
    }
    .map_err(|e| format!("auth: priv-key is not an RSA private key: {e}"))?;
    Ok(ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .to_vec())
}

/// The public point of a PKCS#8 ECDSA private key.
fn ec_public_point(alg: Algorithm, key: &[u8]) -> Result<Vec<u8>, String> {
    let p = pem_der(key)?;
    let curve = if alg == Algorithm::ES256 {
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING
    } else {
        &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING
    };
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        curve,
        p.contents(),
        &ring::rand::SystemRandom::new(),
    )
    .map_err(|e| format!("auth: priv-key is not a PKCS#8 ECDSA private key: {e}"))?;
    Ok(ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn clock() -> (Arc<AtomicU64>, UnixClock) {
        let t = Arc::new(AtomicU64::new(1_000_000));
        let c = t.clone();
        (t, Arc::new(move || c.load(Ordering::Relaxed)))
    }

    #[test]
    fn hmac_tokens_carry_user_and_revision_and_expire() {
        let (t, now) = clock();
        let j =
            JwtTokens::new("HS256", None, Some(b"secret"), Duration::from_secs(60), now).unwrap();
        let tok = j.assign("alice", 7).unwrap();
        assert_eq!(j.info(&tok), Some(("alice".into(), 7)));
        assert_eq!(j.info(&format!("{tok}x")), None, "bad signature");
        t.fetch_add(61, Ordering::Relaxed);
        assert_eq!(j.info(&tok), None, "expired");
    }

    #[test]
    fn ecdsa_keys_from_rcgen_sign_and_verify() {
        let (_, now) = clock();
        let kp = rcgen_key();
        let j = JwtTokens::new(
            "ES256",
            None,
            Some(kp.as_bytes()),
            Duration::from_secs(60),
            now.clone(),
        )
        .unwrap();
        let tok = j.assign("bob", 3).unwrap();
        assert_eq!(j.info(&tok), Some(("bob".into(), 3)));
        // Another algorithm's verifier refuses it.
        let h = JwtTokens::new("HS256", None, Some(b"k"), Duration::from_secs(60), now).unwrap();
        assert_eq!(h.info(&tok), None);
    }

    /// A PKCS#8 P-256 private key in PEM, made with ring.
    fn rcgen_key() -> String {
        let rng = ring::rand::SystemRandom::new();
        let der = ring::signature::EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        pem::encode(&pem::Pem::new("PRIVATE KEY", der.as_ref().to_vec()))
    }

    #[test]
    fn bad_options_are_refused() {
        let (_, now) = clock();
        for (m, k) in [("XX256", Some(&b"k"[..])), ("HS256", None), ("RS256", None)] {
            assert!(JwtTokens::new(m, None, k, Duration::from_secs(1), now.clone()).is_err());
        }
        let verify_only =
            JwtTokens::new("ES256", Some(b"not pem"), None, Duration::from_secs(1), now);
        assert!(verify_only.is_err());
    }
}
