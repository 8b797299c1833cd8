//! Who is calling: JWT bearer tokens (RFC 6750, RFC 7519) verified with the `jsonwebtoken`
//! crate, by the gateway and again by every service (a request that reaches a service directly
//! cannot act as anyone either).
//!
//! Keys come from a JWKS file (a mounted Secret; RS256, ES256 and EdDSA keys) and/or an HMAC
//! secret file (HS256). Each key verifies only its own algorithm, so `alg: none` and algorithm
//! confusion (an HS256 token "signed" with a public key) find no key. `iss`, `aud`, `exp`, `nbf`
//! and `sub` are required and checked with a bounded clock skew. A token whose `kid` is unknown
//! makes the verifier read the JWKS again (at most once a second), so a rotated key works at
//! once; a periodic re-read drops retired keys. Keys may also be fetched from the issuer's JWKS
//! URL, in the same way.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;
use tracing::{info, warn};

use crate::problem::Problem;

/// Longest bearer token read (bigger ones are refused before any parsing).
pub(crate) const MAX_TOKEN: usize = 8 * 1024;
/// Most roles taken from a token, and their longest name.
const MAX_ROLES: usize = 32;
const MAX_ROLE: usize = 64;

/// Whose tokens are accepted, for whom, and where their keys are.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    pub jwks_file: Option<PathBuf>,
    /// An identity provider's `jwks_uri`.
    pub jwks_url: Option<String>,
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

impl Identity {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Why a token was refused; the text is safe to show the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Invalid(&'static str),
    /// No key has this `kid` (reading the keys again may find it).
    UnknownKey,
    /// No key has been read yet (the JWKS URL was not fetched yet).
    NoKeyYet,
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
pub fn verify<'k>(
    token: &str,
    keys: impl IntoIterator<Item = &'k VerifyKey>,
    config: &AuthConfig,
) -> Result<Identity, Refusal> {
    if token.len() > MAX_TOKEN {
        return Err(Refusal::Invalid("the token is too long"));
    }
    // `alg: none` and unknown algorithms fail here: there is no such `Algorithm`.
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| Refusal::Invalid("the token is malformed or its algorithm is not accepted"))?;
    let candidates: Vec<&VerifyKey> = keys
        .into_iter()
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

/// Largest JWKS document fetched from a URL.
const MAX_JWKS: usize = 64 * 1024;
/// How often a JWKS URL is fetched again, and at most how often an unknown `kid` may make it.
const URL_REFRESH: Duration = Duration::from_secs(300);
const URL_MIN_INTERVAL: Duration = Duration::from_secs(1);
const URL_TIMEOUT: Duration = Duration::from_secs(5);

/// One issuer's tokens and the keys that verify them, read again when they rotate: from files
/// (a mounted Secret) and/or fetched from a JWKS URL (an identity provider's `jwks_uri`).
pub struct Verifier {
    config: AuthConfig,
    file_keys: RwLock<Vec<VerifyKey>>,
    url_keys: RwLock<Vec<VerifyKey>>,
    last_read: Mutex<Instant>,
    /// When the URL was last fetched; the async lock also makes concurrent refetches wait for
    /// one fetch instead of each sending their own.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    http: reqwest::Client,
}

impl Verifier {
    /// Reads the key files and starts fetching the URL; fails when there is no key source, or
    /// only files without a usable key. Re-reads the files every 30 s and the URL every 5 min
    /// (retired keys leave the JWKS) while the returned `Arc` lives.
    pub fn start(config: AuthConfig) -> anyhow::Result<Arc<Self>> {
        let keys = read_keys(&config).map_err(anyhow::Error::msg)?;
        if keys.is_empty() && config.jwks_url.is_none() {
            anyhow::bail!(
                "no key was found for issuer {:?}: give a JWKS file or URL with RS256, ES256 or EdDSA keys, or an HMAC secret file",
                config.issuer
            );
        }
        if let Some(url) = &config.jwks_url {
            check_jwks_url(url).map_err(anyhow::Error::msg)?;
        }
        info!(
            issuer = %config.issuer,
            audiences = ?config.audiences,
            keys = keys.len(),
            jwks_url = config.jwks_url.as_deref().unwrap_or(""),
            "verifying bearer tokens"
        );
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(URL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let verifier = Arc::new(Verifier {
            config,
            file_keys: RwLock::new(keys),
            url_keys: RwLock::default(),
            last_read: Mutex::new(Instant::now()),
            last_fetch: tokio::sync::Mutex::new(None),
            http,
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            let weak = Arc::downgrade(&verifier);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(30));
                loop {
                    tick.tick().await;
                    let Some(verifier) = weak.upgrade() else {
                        return;
                    };
                    verifier.reload();
                    verifier.fetch_if_older_than(URL_REFRESH).await;
                }
            });
        }
        Ok(verifier)
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// Reads the key files again (rotation); keeps the old keys when they cannot be read.
    pub fn reload(&self) {
        *self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        if self.config.jwks_file.is_none() && self.config.hmac_secret_file.is_none() {
            return;
        }
        match read_keys(&self.config) {
            Ok(keys) if !keys.is_empty() => {
                *self
                    .file_keys
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = keys;
            }
            Ok(_) => warn!("the key files hold no usable key now; keeping the previous keys"),
            Err(error) => warn!(%error, "cannot read the keys again; keeping the previous keys"),
        }
    }

    /// Fetches the JWKS URL when it was not fetched within `age`; keeps the old keys when the
    /// fetch fails.
    async fn fetch_if_older_than(&self, age: Duration) {
        let Some(url) = &self.config.jwks_url else {
            return;
        };
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|at| at.elapsed() < age) {
            return;
        }
        *last = Some(Instant::now());
        match fetch_jwks(&self.http, url)
            .await
            .and_then(|json| keys_from_jwks(&json))
        {
            Ok(keys) if !keys.is_empty() => {
                *self
                    .url_keys
                    .write()
                    .unwrap_or_else(PoisonError::into_inner) = keys;
            }
            Ok(_) => warn!(%url, "the JWKS URL holds no usable key; keeping the previous keys"),
            Err(error) => warn!(%url, %error, "cannot fetch the JWKS; keeping the previous keys"),
        }
    }

    /// Verifies `token`; an unknown `kid` (or no key yet) makes it read the files and fetch the
    /// URL again first (each at most once a second), so a key added on rotation works at once.
    pub async fn verify(&self, token: &str) -> Result<Identity, Refusal> {
        match self.verify_now(token) {
            Err(Refusal::UnknownKey | Refusal::NoKeyYet) => {
                if self.may_reread() {
                    self.reload();
                }
                self.fetch_if_older_than(URL_MIN_INTERVAL).await;
                self.verify_now(token).map_err(|refusal| match refusal {
                    Refusal::NoKeyYet => Refusal::Invalid("no key is available yet; retry shortly"),
                    other => other,
                })
            }
            other => other,
        }
    }

    fn verify_now(&self, token: &str) -> Result<Identity, Refusal> {
        let files = self
            .file_keys
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let fetched = self.url_keys.read().unwrap_or_else(PoisonError::into_inner);
        if files.is_empty() && fetched.is_empty() {
            return Err(Refusal::NoKeyYet);
        }
        verify(token, files.iter().chain(fetched.iter()), &self.config)
    }

    fn may_reread(&self) -> bool {
        let last = *self
            .last_read
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        last.elapsed() >= Duration::from_secs(1)
    }
}

/// A JWKS URL must be https, except on a loopback address (tests, a local identity provider):
/// keys fetched in the clear could be swapped by anyone on the path.
pub fn check_jwks_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("the JWKS URL {url:?}: {e}"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    };
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(format!(
            "the JWKS URL {url:?} must be https (plain http only on a loopback address)"
        )),
    }
}

/// The JWKS document at `url`: a 200 of at most [`MAX_JWKS`] bytes.
async fn fetch_jwks(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let mut response = http.get(url).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_JWKS {
            return Err(format!("the JWKS is larger than {MAX_JWKS} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| "the JWKS is not UTF-8".to_owned())
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
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// This workload's own token in a file someone else keeps fresh (kubelet's projected
/// ServiceAccount token, `msa-local`), read again at most every 30 s.
pub struct TokenFile {
    path: PathBuf,
    cached: Mutex<Option<(Instant, HeaderValue)>>,
}

impl TokenFile {
    pub fn new(path: PathBuf) -> Self {
        TokenFile {
            path,
            cached: Mutex::new(None),
        }
    }

    /// `Bearer <token>` for an `Authorization` header; the last good one when the file cannot be
    /// read now, `None` when it never could.
    pub fn authorization(&self) -> Option<HeaderValue> {
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((read, value)) = cached.as_ref()
            && read.elapsed() < Duration::from_secs(30)
        {
            return Some(value.clone());
        }
        match std::fs::read_to_string(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|token| {
                HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                    .map_err(|e| e.to_string())
            }) {
            Ok(mut value) => {
                value.set_sensitive(true);
                *cached = Some((Instant::now(), value.clone()));
                Some(value)
            }
            Err(error) => {
                warn!(path = %self.path.display(), %error, "cannot read this service's token");
                cached.as_ref().map(|(_, value)| value.clone())
            }
        }
    }
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
        Refusal::UnknownKey | Refusal::NoKeyYet => (
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
    fn jwks_urls_are_https_except_on_loopback() {
        for ok in [
            "https://idp.example/jwks",
            "http://127.0.0.1:9/jwks",
            "http://[::1]/k",
        ] {
            assert!(check_jwks_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://idp.example/jwks",
            "http://198.18.0.1/jwks",
            "ftp://x/y",
            "jwks",
        ] {
            assert!(check_jwks_url(bad).is_err(), "{bad}");
        }
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
