//! Issuing tokens, for `msa-local` (its users' and its services' tokens) and for tests: an
//! Ed25519 key (ring), its JWKS, and JWTs signed with it (`jsonwebtoken`). A cluster issues its
//! own: an identity provider for users, the API server for ServiceAccounts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;

/// An Ed25519 signing key and the `kid` it signs under.
pub struct SigningKey {
    pkcs8: Vec<u8>,
    public: Vec<u8>,
    pub kid: String,
}

/// What a token says.
#[derive(Clone, Debug)]
pub struct Grant<'a> {
    pub issuer: &'a str,
    pub audience: &'a str,
    pub subject: &'a str,
    pub roles: &'a [&'a str],
    pub lifetime: Duration,
}

impl SigningKey {
    pub fn generate(kid: &str) -> anyhow::Result<Self> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
        Self::from_pkcs8(pkcs8.as_ref(), kid)
    }

    /// A key from its PKCS#8 document (as [`SigningKey::pkcs8`] gives it).
    pub fn from_pkcs8(pkcs8: &[u8], kid: &str) -> anyhow::Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|_| anyhow::anyhow!("not an Ed25519 PKCS#8 key"))?;
        Ok(SigningKey {
            pkcs8: pkcs8.to_vec(),
            public: pair.public_key().as_ref().to_vec(),
            kid: kid.to_owned(),
        })
    }

    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half as a JWKS document, for verifiers.
    pub fn jwks(&self) -> String {
        json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
            "kid": self.kid, "x": URL_SAFE_NO_PAD.encode(&self.public),
        }]})
        .to_string()
    }

    /// A signed token valid from now for `grant.lifetime`.
    pub fn issue(&self, grant: &Grant<'_>) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = json!({
            "iss": grant.issuer, "aud": grant.audience, "sub": grant.subject,
            "roles": grant.roles, "iat": now, "nbf": now,
            "exp": now.saturating_add(grant.lifetime.as_secs()),
        });
        self.sign(&claims)
    }

    /// A token with exactly these claims (tests use it for expired and not-yet-valid ones).
    pub fn sign(&self, claims: &serde_json::Value) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_ed_der(&self.pkcs8),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthConfig, keys_from_jwks, verify};

    #[test]
    fn issued_tokens_verify_against_the_jwks() {
        let key = SigningKey::generate("k1").unwrap();
        let again = SigningKey::from_pkcs8(key.pkcs8(), "k1").unwrap();
        let token = again
            .issue(&Grant {
                issuer: "msa-local",
                audience: "msa",
                subject: "alice",
                roles: &["admin"],
                lifetime: Duration::from_secs(60),
            })
            .unwrap();
        let config = AuthConfig {
            issuer: "msa-local".into(),
            audiences: vec!["msa".into()],
            leeway: Duration::ZERO,
            jwks_file: None,
            jwks_url: None,
            hmac_secret_file: None,
        };
        let keys = keys_from_jwks(&key.jwks()).unwrap();
        let identity = verify(&token, &keys, &config).unwrap();
        assert_eq!(identity.subject, "alice");
        assert!(identity.has_role("admin"));
    }
}
