//! The gateway's front door. Proxy traffic is nearly all the gateway does, so requests for a
//! proxy route go straight to [`forward_to`] with only what those routes need done around it —
//! request id, RED metrics, the request span and log line, panic → 500 — instead of through
//! axum's router and the shared tower-http stack, which box a future per layer. Everything else (operational routes, the admin view, the JSON 404, paths the
//! router treats specially, and every request that carries `Origin` while CORS is configured)
//! takes the router with the full shared layers, so the two paths answer alike.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use http::{HeaderValue, header};
use msa_service_kit::Problem;
use msa_service_kit::config::ServeArgs;
use msa_service_kit::context::REQUEST_ID;
use msa_service_kit::metrics::HttpMetrics;
use msa_service_kit::server::Ops;
use msa_upstream::Upstream;
use tower::{Service, ServiceExt};
use tracing::{Instrument, info};

use crate::forwarding::ClientAddr;
use crate::{Gateway, forward_to};

/// The service the gateway serves: the proxy fast path in front of the full router.
#[derive(Clone)]
pub struct Front {
    inner: Arc<Inner>,
}

struct Inner {
    routes: Vec<FastRoute>,
    metrics: Arc<HttpMetrics>,
    router: Router,
    /// With CORS configured, requests with `Origin` go through the router's CORS layer.
    cors: bool,
    policy: crate::Policy,
    ops: Ops,
}

/// A request the fast path takes.
struct FastMatch {
    index: usize,
    /// The path is the prefix itself (route `/users`, not `/users/{*rest}`).
    exact: bool,
    client: ClientAddr,
}

struct FastRoute {
    prefix: &'static str,
    upstream: Upstream,
    /// The route templates the router uses, so both paths write the same metric series.
    exact: String,
    under: String,
}

impl Front {
    /// `router` is the gateway's full router ([`crate::router`]), used for everything the fast
    /// path does not take.
    pub fn new(
        gateway: &Gateway,
        router: Router,
        ops: &Ops,
        args: &ServeArgs,
    ) -> anyhow::Result<Self> {
        let routes = gateway
            .routes
            .iter()
            .map(|route| FastRoute {
                prefix: route.prefix,
                upstream: route.upstream.clone(),
                exact: route.prefix.to_owned(),
                under: format!("{}/{{*rest}}", route.prefix),
            })
            .collect();
        Ok(Front {
            inner: Arc::new(Inner {
                routes,
                metrics: ops.metrics.clone(),
                router,
                cors: args.cors()?.is_some(),
                policy: gateway.policy.clone(),
                ops: ops.clone(),
            }),
        })
    }

    /// The proxy route `path` (without its query) belongs to, and whether it is the prefix
    /// itself.
    pub(crate) fn route_of(&self, path: &str) -> Option<(usize, bool)> {
        self.inner.route_of(path)
    }

    /// Requests with `Origin` go through the router's CORS layer.
    pub(crate) fn cors(&self) -> bool {
        self.inner.cors
    }

    pub(crate) fn body_limit(&self) -> usize {
        self.inner.policy.body_limit
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.inner.ops.is_draining()
    }

    /// Serves `request` on proxy route `index` (see [`Front::route_of`]) for `client`.
    pub(crate) async fn proxy(
        &self,
        (index, exact): (usize, bool),
        client: &ClientAddr,
        request: Request,
    ) -> Response {
        let matched = FastMatch {
            index,
            exact,
            client: client.clone(),
        };
        self.inner.clone().proxy(matched, request).await
    }
}

impl Inner {
    fn route_of(&self, path: &str) -> Option<(usize, bool)> {
        self.routes.iter().enumerate().find_map(|(index, route)| {
            let rest = path.strip_prefix(route.prefix)?;
            let exact = rest.is_empty();
            (exact || (rest.len() > 1 && rest.starts_with('/'))).then_some((index, exact))
        })
    }

    /// When the fast path may take `request`: its route, whether its path is the prefix
    /// itself, and the client's address.
    fn fast_route(&self, request: &Request) -> Option<FastMatch> {
        if self.cors && request.headers().contains_key(header::ORIGIN) {
            return None;
        }
        let ConnectInfo(peer) = request.extensions().get::<ConnectInfo<SocketAddr>>()?;
        let (index, exact) = self.route_of(request.uri().path())?;
        Some(FastMatch {
            index,
            exact,
            client: ClientAddr::new(peer.ip()),
        })
    }

    async fn proxy(self: Arc<Self>, matched: FastMatch, mut request: Request) -> Response {
        let route = &self.routes[matched.index];
        let template = if matched.exact {
            &route.exact
        } else {
            &route.under
        };
        let started = Instant::now();
        let in_flight = self.metrics.start();
        let request_id = request_id(&mut request);
        let method = request.method().clone();
        let span = msa_telemetry::server_span(
            &method,
            request.uri().path(),
            Some(template),
            request_id.to_str().unwrap_or_default(),
        );
        msa_telemetry::continue_trace(&span, request.headers());
        // Boxed once: the wrappers below then move a pointer, not the whole exchange's state.
        let forwarded = Box::pin(forward_to(
            &route.upstream,
            &self.policy,
            &matched.client,
            request,
        ));
        let mut response = AssertUnwindSafe(forwarded.instrument(span.clone()))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                span.in_scope(|| Problem::internal(&"a handler panicked").into_response())
            });
        response
            .headers_mut()
            .entry(&REQUEST_ID)
            .or_insert(request_id);
        let latency = started.elapsed();
        let status = response.status().as_u16();
        in_flight.finish(&method, template, status, latency);
        msa_telemetry::finish_server_span(&span, status);
        span.in_scope(|| {
            info!(
                status,
                latency_ms = latency.as_secs_f64() * 1000.0,
                "handled"
            );
        });
        response
    }
}

/// The request's `x-request-id`, generated (UUID v4) when the client sent none or one that is
/// not short visible ASCII; a malformed `traceparent` is dropped.
fn request_id(request: &mut Request) -> HeaderValue {
    msa_service_kit::context::drop_unacceptable(request.headers_mut());
    if let Some(id) = request.headers().get(&REQUEST_ID) {
        return id.clone();
    }
    let id = new_request_id();
    request.headers_mut().insert(REQUEST_ID.clone(), id.clone());
    id
}

/// A fresh UUID v4 for a request. A request id correlates logs and traces; it is not a secret,
/// so its 122 random bits come from `fastrand` (wyrand, seeded per thread from the OS) rather
/// than a cryptographic generator, which cost 5 % of the gateway's instructions per request.
fn new_request_id() -> HeaderValue {
    let uuid = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    HeaderValue::from_str(uuid.hyphenated().encode_lower(&mut text))
        .expect("a UUID is a valid header value")
}

type Answer = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl Service<Request> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Answer {
        if let Some(matched) = self.inner.fast_route(&request) {
            Box::pin(self.inner.clone().proxy(matched, request).map(Ok))
        } else {
            Box::pin(self.inner.router.clone().oneshot(request))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_request_ids_are_distinct_uuid_v4s() {
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| new_request_id().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 10_000, "every generated id is new");
        for id in ids.iter().take(100) {
            let uuid = uuid::Uuid::parse_str(id).expect("a hyphenated UUID");
            assert_eq!(uuid.get_version_num(), 4);
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
        }
    }
}
