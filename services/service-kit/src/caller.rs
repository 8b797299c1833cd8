//! Who a request comes from, and the authorization rules every service applies to it.
//!
//! [`Gate`] reads the bearer token once per request (a layer in [`crate::server::app`]) and
//! puts a [`Caller`] in the request; handlers take it as an extractor and ask it plain
//! questions (`may_act_for(owner)`, `require_admin()`), which are pure and unit-tested here.
//! Services trust only tokens they verify themselves, never headers another hop set.
//!
//! Two kinds of token: a user's (the app's issuer; `sub` is the user's id, `roles` may hold
//! `admin`) and a service's (the cluster's ServiceAccount issuer, or `msa-local`'s; `sub` names
//! the calling workload, the audience is this service).

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::StatusCode;
use http::request::Parts;

use crate::auth::{Identity, Refusal, Verifier, bearer, unauthorized};
use crate::problem::Problem;

/// The role that may act on anyone's resources and run the shop (ship orders, set stock).
pub const ADMIN: &str = "admin";

/// Who is calling, as far as this service could verify.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    /// User authentication is off (the open demo): the user rules let everything through.
    Unchecked,
    /// No token, where tokens are required.
    Anonymous,
    User(Identity),
    /// Another workload proven by its service token; `trusted` when this service accepts its
    /// subject for internal calls.
    Service {
        subject: String,
        trusted: bool,
    },
}

/// The caller of this request and whether this service verifies service identities.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub who: Who,
    services_verified: bool,
}

impl Caller {
    pub fn new(who: Who, services_verified: bool) -> Self {
        Caller {
            who,
            services_verified,
        }
    }

    /// The open demo's caller: no authentication anywhere.
    pub fn unchecked() -> Self {
        Self::new(Who::Unchecked, false)
    }

    pub fn is_admin(&self) -> bool {
        match &self.who {
            Who::Unchecked => true,
            Who::User(identity) => identity.has_role(ADMIN),
            Who::Anonymous | Who::Service { .. } => false,
        }
    }

    /// The verified user's id (`sub`), `None` for anyone else.
    pub fn user(&self) -> Option<&str> {
        match &self.who {
            Who::User(identity) => Some(&identity.subject),
            _ => None,
        }
    }

    /// Whether the caller may see and change what belongs to the user `owner`: that user, an
    /// admin, or anyone when authentication is off.
    pub fn may_act_for(&self, owner: &str) -> bool {
        self.is_admin() || self.user() == Some(owner)
    }

    /// A signed-in user (or the open demo): 401 without a token, 403 for a service.
    pub fn require_user(&self) -> Result<(), Problem> {
        match &self.who {
            Who::Unchecked | Who::User(_) => Ok(()),
            Who::Anonymous => Err(sign_in()),
            Who::Service { .. } => Err(forbidden("this route is for users, not services")),
        }
    }

    /// An admin (or the open demo): 401 without a token, 403 otherwise; `action` says what
    /// needed it.
    pub fn require_admin(&self, action: &str) -> Result<(), Problem> {
        self.require_user()?;
        if self.is_admin() {
            Ok(())
        } else {
            Err(forbidden(&format!("{action} needs the `{ADMIN}` role")))
        }
    }

    /// A resource of `owner`: after [`Caller::require_user`], anyone who may not act for the
    /// owner gets the same 404 as for a resource that does not exist, so ids cannot be probed.
    pub fn require_owner(&self, owner: &str, kind: &str, id: &str) -> Result<(), Problem> {
        self.require_user()?;
        if self.may_act_for(owner) {
            Ok(())
        } else {
            Err(Problem::not_found(kind, id))
        }
    }

    /// An internal route: only a trusted service, when this service verifies service
    /// identities; open otherwise (the service warns at start-up).
    pub fn require_service(&self) -> Result<(), Problem> {
        if !self.services_verified {
            return Ok(());
        }
        match &self.who {
            Who::Service { trusted: true, .. } => Ok(()),
            Who::Anonymous | Who::Unchecked => Err(Problem::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this internal route needs a service token",
            )),
            Who::Service { subject, .. } => Err(forbidden(&format!(
                "{subject:?} may not call this internal route"
            ))),
            Who::User(_) => Err(forbidden("this internal route is for services, not users")),
        }
    }
}

fn sign_in() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "sign in: send `Authorization: Bearer <token>`",
    )
}

fn forbidden(detail: &str) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "forbidden", detail)
}

/// What this service accepts: users' tokens and/or services' tokens.
#[derive(Clone, Default)]
pub struct Gate {
    pub users: Option<Arc<Verifier>>,
    pub services: Option<ServiceTrust>,
}

/// The issuer of service tokens, and the subjects this service takes internal calls from.
#[derive(Clone)]
pub struct ServiceTrust {
    pub verifier: Arc<Verifier>,
    pub callers: Vec<String>,
}

impl Gate {
    /// Who sent a request with these headers; `Err` for a token that does not verify.
    pub async fn identify(&self, headers: &http::HeaderMap) -> Result<Caller, Refusal> {
        let services_verified = self.services.is_some();
        let caller = |who| Ok(Caller::new(who, services_verified));
        let Some(token) = bearer(headers) else {
            return caller(if self.users.is_some() {
                Who::Anonymous
            } else {
                Who::Unchecked
            });
        };
        // The issuer picks the verifier, so a user's token never makes the service-key
        // verifier re-read its keys (and the other way round).
        if let Some(trust) = &self.services
            && unverified_issuer(token).as_deref() == Some(trust.verifier.issuer())
        {
            let identity = trust.verifier.verify(token).await?;
            let trusted = trust.callers.contains(&identity.subject);
            return caller(Who::Service {
                subject: identity.subject,
                trusted,
            });
        }
        match &self.users {
            Some(users) => caller(Who::User(users.verify(token).await?)),
            // Authentication is off: a token changes nothing (the demo's clients may send one).
            None => caller(Who::Unchecked),
        }
    }
}

/// The `iss` a token claims, read without verifying anything (only to choose a verifier).
fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Claims {
        iss: String,
    }
    if token.len() > crate::auth::MAX_TOKEN {
        return None;
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Claims>(&bytes).ok().map(|c| c.iss)
}

/// The layer: identifies the caller, or answers 401 for a token that does not verify.
pub async fn identify(
    axum::extract::State(gate): axum::extract::State<Gate>,
    mut request: Request,
    next: Next,
) -> Response {
    match gate.identify(request.headers()).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refusal) => unauthorized(&refusal),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    /// Fails closed: a router built without the layer refuses instead of letting anyone in.
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            Problem::internal(&"a route asked for its caller, but the identify layer is missing")
                .into_response()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(subject: &str, roles: &[&str]) -> Caller {
        Caller::new(
            Who::User(Identity {
                subject: subject.into(),
                roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            }),
            true,
        )
    }

    fn service(subject: &str, trusted: bool) -> Caller {
        Caller::new(
            Who::Service {
                subject: subject.into(),
                trusted,
            },
            true,
        )
    }

    #[test]
    fn users_act_for_themselves_and_admins_for_anyone() {
        let alice = user("alice", &["customer"]);
        assert!(alice.may_act_for("alice"));
        assert!(!alice.may_act_for("bob"));
        assert_eq!(
            alice.require_owner("bob", "order", "7").unwrap_err().status,
            404
        );
        assert!(alice.require_owner("alice", "order", "7").is_ok());
        assert_eq!(alice.require_admin("shipping").unwrap_err().status, 403);
        let admin = user("root", &[ADMIN]);
        assert!(admin.may_act_for("bob") && admin.require_admin("shipping").is_ok());
    }

    #[test]
    fn anonymous_callers_are_asked_to_sign_in_and_services_are_not_users() {
        let anonymous = Caller::new(Who::Anonymous, true);
        assert_eq!(anonymous.require_user().unwrap_err().status, 401);
        assert_eq!(
            anonymous
                .require_owner("a", "user", "a")
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(anonymous.require_admin("x").unwrap_err().status, 401);
        assert!(!anonymous.may_act_for(""));
        let order = service("order", true);
        assert_eq!(order.require_user().unwrap_err().status, 403);
        assert!(!order.is_admin());
    }

    #[test]
    fn internal_routes_take_trusted_services_only_when_identities_are_verified() {
        assert!(service("order", true).require_service().is_ok());
        assert_eq!(
            service("gateway", false)
                .require_service()
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(
            user("root", &[ADMIN]).require_service().unwrap_err().status,
            403
        );
        assert_eq!(
            Caller::new(Who::Anonymous, true)
                .require_service()
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(
            Caller::new(Who::Unchecked, true)
                .require_service()
                .unwrap_err()
                .status,
            401
        );
        // Without service identities configured the route is open, as the service warns.
        assert!(Caller::new(Who::Anonymous, false).require_service().is_ok());
        assert!(Caller::unchecked().require_service().is_ok());
    }

    #[test]
    fn the_open_demo_allows_everything_users_may_do() {
        let open = Caller::unchecked();
        assert!(open.require_admin("x").is_ok() && open.require_owner("a", "b", "c").is_ok());
    }

    #[test]
    fn the_issuer_is_read_without_trusting_the_token() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"iss":"svc"}"#);
        assert_eq!(
            unverified_issuer(&format!("x.{payload}.y")).as_deref(),
            Some("svc")
        );
        assert_eq!(unverified_issuer("garbage"), None);
        assert_eq!(unverified_issuer("a.!!!.b"), None);
    }
}
