//! Who is calling: JWT bearer tokens verified at the gateway (RFC 6750, RFC 7519), with the
//! `jsonwebtoken` crate.
//!
//! Keys come from a JWKS file (a mounted Secret; RS256, ES256 and EdDSA keys) and/or an HMAC
//! secret file (HS256). Each key verifies only its own algorithm, so `alg: none` and algorithm
//! confusion (an HS256 token "signed" with a public key) find no key. `iss`, `aud`, `exp`, `nbf`
//! and `sub` are required and checked with a bounded clock skew. A token whose `kid` is unknown
//! makes the gateway read the JWKS again (at most once a second), so a rotated key works at
//! once; a periodic re-read drops retired keys.
//!
//! The verified identity travels to the services in `x-msa-subject` and `x-msa-roles`, which
//! the gateway sets itself: copies a client sends are always removed.

use std::path::PathBuf;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use msa_service_kit::Problem;
use serde::Deserialize;
use tracing::{info, warn};

pub static SUBJECT: HeaderName = HeaderName::from_static("x-msa-subject");
pub static ROLES: HeaderName = HeaderName::from_static("x-msa-roles");

/// Longest bearer token read (bigger ones are refused before any parsing).
const MAX_TOKEN: usize = 8 * 1024;
/// Most roles taken from a token, and their longest name.
const MAX_ROLES: usize = 32;
const MAX_ROLE: usize = 64;

/// What the gateway accepts.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// `GET /products`-style routes (method and route template) open without a token.
    pub public_routes: Vec<(String, String)>,
    pub jwks_file: Option<PathBuf>,
    pub hmac_secret_file: Option<PathBuf>,
}

/// One key and the one algorithm it verifies.
pub struct VerifyKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
}

/// A verified caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub roles: Vec<String>,
}

/// Why a token was refused; the text is safe to show the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Invalid(&'static str),
    /// No key has this `kid` (reading the keys again may find it).
    UnknownKey,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
}

/// The keys of a JWKS document: each with the algorithm its `alg` names, or the one its type
/// implies (RSA → RS256, P-256 → ES256, Ed25519 → EdDSA). Symmetric keys in a JWKS are skipped:
/// an HMAC secret is configured on its own.
pub fn keys_from_jwks(json: &str) -> Result<Vec<VerifyKey>, String> {
    let set: JwkSet =
        serde_json::from_str(json).map_err(|e| format!("the JWKS is not valid JSON: {e}"))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let implied = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Some(Algorithm::ES256)
            }
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Some(Algorithm::EdDSA)
            }
            _ => None,
        };
        let named = jwk.common.key_algorithm.and_then(|a| match a {
            KeyAlgorithm::RS256 => Some(Algorithm::RS256),
            KeyAlgorithm::RS384 => Some(Algorithm::RS384),
            KeyAlgorithm::RS512 => Some(Algorithm::RS512),
            KeyAlgorithm::PS256 => Some(Algorithm::PS256),
            KeyAlgorithm::ES256 => Some(Algorithm::ES256),
            KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
            _ => None,
        });
        let (Some(algorithm), Ok(key)) = (named.or(implied), DecodingKey::from_jwk(jwk)) else {
            continue;
        };
        keys.push(VerifyKey {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
        });
    }
    Ok(keys)
}

/// An HS256 key from a shared secret (at least 32 bytes: shorter ones are guessable).
pub fn key_from_secret(secret: &[u8]) -> Result<VerifyKey, String> {
    if secret.len() < 32 {
        return Err("the HMAC secret must be at least 32 bytes".into());
    }
    Ok(VerifyKey {
        kid: None,
        algorithm: Algorithm::HS256,
        key: DecodingKey::from_secret(secret),
    })
}

/// Verifies `token` against `keys` as `config` says.
pub fn verify(token: &str, keys: &[VerifyKey], config: &AuthConfig) -> Result<Identity, Refusal> {
    if token.len() > MAX_TOKEN {
        return Err(Refusal::Invalid("the token is too long"));
    }
    // `alg: none` and unknown algorithms fail here: there is no such `Algorithm`.
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| Refusal::Invalid("the token is malformed or its algorithm is not accepted"))?;
    let candidates: Vec<&VerifyKey> = keys
        .iter()
        .filter(|k| k.algorithm == header.alg)
        .filter(|k| match (&header.kid, &k.kid) {
            (Some(wanted), Some(kid)) => wanted == kid,
            _ => true,
        })
        .collect();
    if candidates.is_empty() {
        return Err(if header.kid.is_some() {
            Refusal::UnknownKey
        } else {
            Refusal::Invalid("no key verifies tokens of this algorithm")
        });
    }
    let mut refusal = Refusal::Invalid("the token's signature does not verify");
    for key in candidates {
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&config.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
            Ok(data) => return identity(data.claims),
            Err(error) => {
                refusal = Refusal::Invalid(match error.kind() {
                    ErrorKind::ExpiredSignature => "the token has expired",
                    ErrorKind::ImmatureSignature => "the token is not valid yet",
                    ErrorKind::InvalidAudience => "the token is for another audience",
                    ErrorKind::InvalidIssuer => "the token is from another issuer",
                    ErrorKind::MissingRequiredClaim(_) => {
                        "the token lacks a required claim (exp, iss, aud, sub)"
                    }
                    ErrorKind::InvalidSignature => "the token's signature does not verify",
                    _ => "the token is invalid",
                });
                // A bad signature may suit another key with the same algorithm; anything else
                // (expiry, audience) would fail the same way with every key.
                if !matches!(error.kind(), ErrorKind::InvalidSignature) {
                    break;
                }
            }
        }
    }
    Err(refusal)
}

/// The claims as headers may carry them: a visible, bounded subject and role names.
fn identity(claims: Claims) -> Result<Identity, Refusal> {
    let visible = |s: &str| !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b));
    let Some(subject) = claims.sub else {
        return Err(Refusal::Invalid(
            "the token lacks a required claim (exp, iss, aud, sub)",
        ));
    };
    if subject.len() > 255 || !visible(&subject) {
        return Err(Refusal::Invalid(
            "the token's subject must be 1-255 visible ASCII characters",
        ));
    }
    if claims.roles.len() > MAX_ROLES
        || claims
            .roles
            .iter()
            .any(|r| r.len() > MAX_ROLE || !visible(r) || r.contains(','))
    {
        return Err(Refusal::Invalid("the token's roles are not acceptable"));
    }
    Ok(Identity {
        subject,
        roles: claims.roles,
    })
}

/// The gateway's side: the keys (re-read on rotation), the public routes, and the answers.
pub struct Authenticator {
    config: AuthConfig,
    keys: RwLock<Vec<VerifyKey>>,
    last_read: Mutex<Instant>,
}

impl Authenticator {
    /// Reads the keys; fails when there are none.
    pub fn new(config: AuthConfig) -> anyhow::Result<Self> {
        let keys = read_keys(&config).map_err(anyhow::Error::msg)?;
        if keys.is_empty() {
            anyhow::bail!(
                "authentication is on but no key was found: give --auth-jwks-file with RS256, ES256 or EdDSA keys, or --auth-hmac-secret-file"
            );
        }
        info!(
            issuer = %config.issuer,
            audiences = ?config.audiences,
            keys = keys.len(),
            public_routes = ?config.public_routes,
            "authentication on: bearer tokens required"
        );
        Ok(Authenticator {
            config,
            keys: RwLock::new(keys),
            last_read: Mutex::new(Instant::now()),
        })
    }

    /// Reads the keys again (rotation); keeps the old ones when the files cannot be read.
    pub fn reload(&self) {
        *self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        match read_keys(&self.config) {
            Ok(keys) if !keys.is_empty() => {
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = keys;
            }
            Ok(_) => warn!("the key files hold no usable key now; keeping the previous keys"),
            Err(error) => warn!(%error, "cannot read the keys again; keeping the previous keys"),
        }
    }

    /// Removes client-supplied identity headers, then, unless the route is public, verifies
    /// the bearer token and sets the identity headers. `Err` is answered with [`unauthorized`].
    pub fn authenticate(
        &self,
        method: &Method,
        route: &str,
        headers: &mut HeaderMap,
    ) -> Result<Option<Identity>, Refusal> {
        headers.remove(&SUBJECT);
        headers.remove(&ROLES);
        let token = bearer(headers);
        let public = self
            .config
            .public_routes
            .iter()
            .any(|(m, r)| m == method.as_str() && r == route);
        if public && token.is_none() {
            return Ok(None);
        }
        let Some(token) = token else {
            return Err(Refusal::Missing);
        };
        let verified = {
            let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
            verify(token, &keys, &self.config)
        };
        let verified = match verified {
            Err(Refusal::UnknownKey) if self.may_reread() => {
                self.reload();
                let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
                verify(token, &keys, &self.config)
            }
            other => other,
        };
        let identity = verified?;
        if let Ok(subject) = HeaderValue::from_str(&identity.subject) {
            headers.insert(SUBJECT.clone(), subject);
        }
        if let Ok(roles) = HeaderValue::from_str(&identity.roles.join(",")) {
            headers.insert(ROLES.clone(), roles);
        }
        Ok(Some(identity))
    }

    fn may_reread(&self) -> bool {
        let last = *self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.elapsed() >= Duration::from_secs(1)
    }
}

fn read_keys(config: &AuthConfig) -> Result<Vec<VerifyKey>, String> {
    let mut keys = Vec::new();
    if let Some(path) = &config.jwks_file {
        let json = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the JWKS {}: {e}", path.display()))?;
        keys.extend(keys_from_jwks(&json)?);
    }
    if let Some(path) = &config.hmac_secret_file {
        let secret = std::fs::read(path)
            .map_err(|e| format!("cannot read the HMAC secret {}: {e}", path.display()))?;
        keys.push(key_from_secret(secret.trim_ascii())?);
    }
    Ok(keys)
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// 401 with `WWW-Authenticate` as RFC 6750 §3 has it: no error code when no token was sent.
pub fn unauthorized(refusal: &Refusal) -> Response {
    let (detail, challenge) = match refusal {
        Refusal::Missing => (
            "this route needs a bearer token: send `Authorization: Bearer <token>`",
            "Bearer realm=\"msa\"".to_owned(),
        ),
        Refusal::Invalid(why) => (
            *why,
            format!("Bearer realm=\"msa\", error=\"invalid_token\", error_description=\"{why}\""),
        ),
        Refusal::UnknownKey => (
            "no key verifies this token",
            "Bearer realm=\"msa\", error=\"invalid_token\", error_description=\"no key verifies this token\"".to_owned(),
        ),
    };
    let mut response =
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail).into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_come_from_their_own_kind_only() {
        let jwks = r#"{"keys": [
            {"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0", "kid": "sym"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "ed"}
        ]}"#;
        let keys = keys_from_jwks(jwks).unwrap();
        assert_eq!(keys.len(), 1, "a symmetric key in a JWKS is not trusted");
        assert_eq!(
            (keys[0].kid.as_deref(), keys[0].algorithm),
            (Some("ed"), Algorithm::EdDSA)
        );
        assert!(keys_from_jwks("{").is_err());
        assert!(key_from_secret(b"short").is_err());
        assert!(key_from_secret(&[7u8; 32]).is_ok());
    }

    #[test]
    fn identities_are_bounded_and_visible() {
        let claims = |sub: Option<&str>, roles: Vec<String>| Claims {
            sub: sub.map(str::to_owned),
            roles,
        };
        assert!(identity(claims(Some("alice"), vec!["admin".into()])).is_ok());
        for bad in [
            claims(None, vec![]),
            claims(Some("a b"), vec![]),
            claims(Some(&"x".repeat(256)), vec![]),
            claims(Some("a"), vec!["x,admin".into()]),
            claims(Some("a"), (0..33).map(|i| i.to_string()).collect()),
        ] {
            assert!(identity(bad).is_err());
        }
    }
}
