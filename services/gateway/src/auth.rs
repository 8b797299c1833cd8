//! The gateway's part in authentication: which routes are open without a token, and the
//! identity headers. Verification itself is [`msa_service_kit::auth`], shared with the services,
//! which verify the same token again (they do not trust these headers).
//!
//! The verified identity travels to the services in `x-msa-subject` and `x-msa-roles` for
//! their logs and for backends that cannot verify tokens; copies a client sends are always
//! removed.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use msa_service_kit::auth::{Identity, Refusal, Verifier, bearer};

pub use msa_service_kit::auth::unauthorized;

pub static SUBJECT: HeaderName = HeaderName::from_static("x-msa-subject");
pub static ROLES: HeaderName = HeaderName::from_static("x-msa-roles");

/// Removes the identity headers a client may have sent: nobody may claim an identity the
/// gateway did not verify. Usually there are none, and one pass over the few headers present
/// is cheaper than hashing both names.
pub fn remove_identity(headers: &mut HeaderMap) {
    if headers.keys().any(|name| name == SUBJECT || name == ROLES) {
        headers.remove(&SUBJECT);
        headers.remove(&ROLES);
    }
}

pub struct Authenticator {
    verifier: Arc<Verifier>,
    /// `GET /products`-style routes (method and route template) open without a token.
    public_routes: Vec<(String, String)>,
}

impl Authenticator {
    pub fn new(verifier: Arc<Verifier>, public_routes: Vec<(String, String)>) -> Self {
        Authenticator {
            verifier,
            public_routes,
        }
    }

    pub fn issuer(&self) -> &str {
        self.verifier.issuer()
    }

    /// Removes client-supplied identity headers, then, unless the route is public and no token
    /// was sent, verifies the bearer token and sets the identity headers. `Err` is answered
    /// with [`unauthorized`].
    pub async fn authenticate(
        &self,
        method: &Method,
        route: &str,
        headers: &mut HeaderMap,
    ) -> Result<Option<Identity>, Refusal> {
        remove_identity(headers);
        let token = bearer(headers);
        let public = self
            .public_routes
            .iter()
            .any(|(m, r)| m == method.as_str() && r == route);
        let Some(token) = token else {
            return if public {
                Ok(None)
            } else {
                Err(Refusal::Missing)
            };
        };
        let identity = self.verifier.verify(token).await?;
        if let Ok(subject) = HeaderValue::from_str(&identity.subject) {
            headers.insert(SUBJECT.clone(), subject);
        }
        if let Ok(roles) = HeaderValue::from_str(&identity.roles.join(",")) {
            headers.insert(ROLES.clone(), roles);
        }
        Ok(Some(identity))
    }
}
