//! The API gateway: `/users`, `/orders` and `/products` (and everything under them) go to their
//! service through the shared client stack; everything else is a JSON 404. Besides the
//! operational routes every component has, `/debug/endpoints` shows each upstream's endpoints
//! with their load, latency, ejection and breaker state.

pub mod auth;
pub mod client_connections;
pub mod engine;
pub mod forwarding;
pub mod front;
pub mod rate_limit;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use http::{StatusCode, Uri};
use hyper::body::Body as _;
use msa_service_kit::Problem;
use msa_service_kit::config::ServeArgs;
use msa_service_kit::server::{self, Ops};
use msa_upstream::{CallError, Upstream, deadline};
use serde_json::{Value, json};
use tracing::{info, warn};

/// A path prefix and the service behind it.
#[derive(Clone)]
pub struct Route {
    pub prefix: &'static str,
    pub upstream: Upstream,
}

/// The gateway's routes, in the order they are shown, and what it checks before forwarding.
pub struct Gateway {
    pub routes: Vec<Route>,
    pub policy: Policy,
}

/// What the gateway checks before forwarding a request: its caller (when authentication is
/// on), the caller's rate (when limited), its body's size.
#[derive(Clone)]
pub struct Policy {
    pub body_limit: usize,
    pub auth: Option<Arc<auth::Authenticator>>,
    pub rate_limit: Option<Arc<rate_limit::ClientLimiter>>,
}

#[derive(Clone)]
struct Proxy {
    upstream: Upstream,
    policy: Policy,
}

/// Every route of the gateway with the layers all components share.
pub fn router(gateway: Arc<Gateway>, ops: Ops, args: &ServeArgs) -> anyhow::Result<Router> {
    let mut router = Router::new();
    for route in &gateway.routes {
        let proxy = Proxy {
            upstream: route.upstream.clone(),
            policy: gateway.policy.clone(),
        };
        router = router.merge(
            Router::new()
                .route(route.prefix, any(forward))
                .route(&format!("{}/{{*rest}}", route.prefix), any(forward))
                .with_state(proxy),
        );
    }
    let prefixes: Vec<&'static str> = gateway.routes.iter().map(|r| r.prefix).collect();
    // With an admin address, the API's port keeps only the probes.
    let router = if args.admin_listen.is_some() {
        router.merge(server::probe_routes(ops.clone()))
    } else {
        router
            .merge(admin_routes(gateway))
            .merge(server::operational_routes(ops.clone()))
    };
    let served: Vec<&'static str> = prefixes.clone();
    let front_ops = ops.clone();
    let router = router.route(
        "/",
        get(move || async move { axum::Json(front_page(&front_ops, &served)) }),
    );
    let router = router.fallback(move |uri: Uri| async move {
        Problem::new(
            StatusCode::NOT_FOUND,
            "no-route",
            format!(
                "no route for {:?}; the gateway serves {} and everything under them",
                uri.path().chars().take(100).collect::<String>(),
                prefixes.join(", ")
            ),
        )
    });
    server::shared_layers(router, &ops, args)
}

/// `GET /`: what this is, whether it is taking traffic, and the routes it serves (the
/// application's first client starts here).
fn front_page(ops: &Ops, prefixes: &[&str]) -> Value {
    json!({
        "name": "msa-gateway",
        "version": ops.version,
        "status": if ops.is_draining() { "draining" } else { "ok" },
        // Each prefix and everything under it.
        "routes": prefixes,
        "health": "/health",
    })
}

/// The gateway's own admin routes (besides `/info` and `/metrics`): `/debug/endpoints`.
pub fn admin_routes(gateway: Arc<Gateway>) -> Router {
    Router::new().route("/debug/endpoints", get(endpoints_view).with_state(gateway))
}

/// The proxy routes' axum handler (the path taken when the fast path in [`front`] steps aside).
async fn forward(
    State(proxy): State<Proxy>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let client = forwarding::ClientAddr::new(client.ip());
    forward_to(&proxy.upstream, &proxy.policy, &client, request).await
}

/// Passes the request on to `upstream` and its answer back: body limit, forwarding headers;
/// hop-by-hop headers stripped from the answer; failures as problems. A client's
/// `x-msa-timeout-ms` (a trusted internal caller's remaining time) can only shorten the call:
/// the upstream is sent the gateway's own value in its place.
pub(crate) async fn forward_to(
    upstream: &Upstream,
    policy: &Policy,
    client: &forwarding::ClientAddr,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let deadline = match parts
        .headers
        .get(&deadline::TIMEOUT_HEADER)
        .map(deadline::parse)
    {
        None => None,
        Some(Ok(wait)) => Some(std::time::Instant::now() + wait),
        Some(Err(invalid)) => {
            return Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-timeout",
                invalid.to_string(),
            )
            .into_response();
        }
    };
    let route = routes::template(parts.uri.path());
    let identity = match &policy.auth {
        Some(auth) => match auth
            .authenticate(&parts.method, route, &mut parts.headers)
            .await
        {
            Ok(identity) => identity,
            Err(refusal) => {
                // Refused tokens count against the address: guessing is rate-limited too.
                if let Some(limiter) = &policy.rate_limit
                    && let Some(too_fast) = limiter.refusal(&rate_limit::Client::Address(client.ip))
                {
                    return too_fast;
                }
                return auth::unauthorized(&refusal);
            }
        },
        None => {
            auth::remove_identity(&mut parts.headers);
            None
        }
    };
    if let Some(limiter) = &policy.rate_limit {
        let caller = match identity {
            Some(identity) => rate_limit::Client::Subject(identity.subject),
            None => rate_limit::Client::Address(client.ip),
        };
        if let Some(refusal) = limiter.refusal(&caller) {
            return refusal;
        }
    }
    let limit = policy.body_limit as u64;
    let size = body.size_hint();
    if size.lower() > limit {
        return Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            format!(
                "the request body is {} bytes; at most {limit} are accepted",
                size.lower()
            ),
        )
        .into_response();
    }
    // A body of unknown length is cut off at the limit while it streams.
    let body = match size.upper() {
        Some(_) => body,
        None => Body::new(http_body_util::Limited::new(body, policy.body_limit)),
    };
    // (The client stack sends the URI in origin form, whatever form it arrived in.)
    forwarding::request_headers(&mut parts.headers, client);
    if retried_with_its_key(&parts.method, route, &parts.headers) {
        parts.extensions.insert(msa_upstream::RetrySafe);
    }
    let scope = msa_upstream::BreakerScope {
        method: msa_service_kit::metrics::method_label(&parts.method),
        route,
    };
    match upstream
        .send_scoped(Request::from_parts(parts, body), scope, deadline)
        .await
    {
        Ok(response) => {
            let (mut parts, body) = response.into_parts();
            forwarding::remove_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, Body::new(body))
        }
        Err(error) => failure(&error),
    }
}

/// Routes that honour `Idempotency-Key` (the same key and body give the same result), so the
/// gateway may send such a request to another endpoint when an attempt failed; without a key a
/// POST goes once, as before.
const HONOUR_IDEMPOTENCY_KEYS: [(http::Method, &str); 1] = [(http::Method::POST, "/orders")];

/// Whether a non-idempotent request may be retried: it targets a route that honours
/// `Idempotency-Key` and carries exactly one (the service refuses a malformed one with 400,
/// which is never retried).
fn retried_with_its_key(method: &http::Method, route: &str, headers: &http::HeaderMap) -> bool {
    HONOUR_IDEMPOTENCY_KEYS
        .iter()
        .any(|(m, r)| m == method && *r == route)
        && headers.get_all("idempotency-key").iter().count() == 1
}

/// 503 (+ `Retry-After`) when the service cannot be called now (breaker open, no endpoint, no
/// endpoint accepting connections), 504 on timeout, 502 when an exchange broke off or it
/// answered badly; the problem names the upstream.
fn failure(error: &CallError) -> Response {
    if error.status().is_server_error() {
        warn!(%error, "upstream call failed");
    } else {
        info!(%error, "request refused");
    }
    let mut problem = Problem::new(error.status(), error.kind(), error.public_detail())
        .retry_after(error.retry_after_secs());
    if let Some(upstream) = error.upstream() {
        problem = problem.with("upstream", upstream);
    }
    if let CallError::CircuitOpen { scope, .. } = error
        && *scope != msa_upstream::BreakerScope::WHOLE
    {
        problem = problem.with("route", scope.to_string());
    }
    problem.into_response()
}

/// Every upstream's endpoints as the gateway sees them now.
async fn endpoints_view(State(gateway): State<Arc<Gateway>>) -> axum::Json<Value> {
    let upstreams: Vec<Value> = gateway
        .routes
        .iter()
        .map(|route| {
            let mut view = serde_json::to_value(route.upstream.view()).unwrap_or_default();
            if let Some(fields) = view.as_object_mut() {
                fields.insert("name".into(), json!(route.upstream.name()));
                fields.insert("route".into(), json!(route.prefix));
                fields.insert("source".into(), json!(route.upstream.source()));
            }
            view
        })
        .collect();
    axum::Json(json!({ "upstreams": upstreams }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_order_placement_with_one_key_may_be_retried() {
        let with = |keys: &[&str]| {
            let mut headers = http::HeaderMap::new();
            for key in keys {
                headers.append("idempotency-key", key.parse().unwrap());
            }
            headers
        };
        let post = http::Method::POST;
        assert!(retried_with_its_key(&post, "/orders", &with(&["k"])));
        assert!(!retried_with_its_key(&post, "/orders", &with(&[])));
        assert!(!retried_with_its_key(&post, "/orders", &with(&["k", "l"])));
        assert!(
            !retried_with_its_key(&post, "/users", &with(&["k"])),
            "not honoured there"
        );
        assert!(!retried_with_its_key(
            &http::Method::PUT,
            "/orders",
            &with(&["k"])
        ));
    }
}
