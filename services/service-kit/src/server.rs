//! Turns a service's API router into the full HTTP service: the operational routes, the
//! middleware every service shares, and serving with a graceful drain on SIGTERM.

pub mod detach;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::HeaderValue;
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::{Span, info, warn};

use crate::caller;
use crate::config::ServeArgs;
use crate::connections::{self, ConnectionLimits};
use crate::context::{self, REQUEST_ID};
use crate::db::Database;
use crate::metrics::{self, HttpMetrics};
use crate::problem::Problem;

use self::detach::{DetachLayer, Work};

/// What the operational routes report about the service.
#[derive(Clone)]
pub struct Ops {
    pub name: &'static str,
    pub version: &'static str,
    pub instance: String,
    pub metrics: Arc<HttpMetrics>,
    pub database: Option<Database>,
    /// More members of `/info` (the gateway's authentication, for example).
    pub info: Arc<serde_json::Map<String, serde_json::Value>>,
    draining: Arc<AtomicBool>,
    /// Requests whose work is still running, answered or not (see [`detach`]).
    pub work: Arc<Work>,
}

impl Ops {
    pub fn new(
        name: &'static str,
        version: &'static str,
        instance: String,
        database: Option<Database>,
    ) -> Self {
        Self::with_metrics(
            name,
            version,
            instance,
            database,
            HttpMetrics::for_component(name),
        )
    }

    /// Like `new`, with a metrics registry the caller has added its own metrics to. The
    /// database's own metrics are added to it here.
    pub fn with_metrics(
        name: &'static str,
        version: &'static str,
        instance: String,
        database: Option<Database>,
        mut metrics: HttpMetrics,
    ) -> Self {
        if let Some(database) = &database {
            database.register_metrics(&mut metrics.registry);
        }
        Ops {
            name,
            version,
            instance,
            metrics: Arc::new(metrics),
            database,
            info: Arc::default(),
            draining: Arc::default(),
            work: Arc::default(),
        }
    }

    /// Adds `key: value` to what `/info` reports.
    pub fn with_info(mut self, key: &str, value: serde_json::Value) -> Self {
        Arc::make_mut(&mut self.info).insert(key.to_owned(), value);
        self
    }

    /// From now on `/readyz` fails, so load balancers stop sending new requests.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// The API plus `/healthz`, `/readyz`, `/info` and `/metrics` (only the probes when
/// `--admin-listen` puts the rest on their own address, see [`admin_app`]), a JSON 404, and the
/// shared layers:
/// request id (generated or kept), correlation context, tracing span with the request id,
/// metrics, panic → 500 problem, body limit (enforced by the body extractors, so an oversized
/// body is a 413 problem), CORS; and around them all, a task of its own for each request, so a
/// client that hangs up never cuts its work short (see [`detach`]).
pub fn app(api: Router, ops: Ops, args: &ServeArgs) -> anyhow::Result<Router> {
    let gate = args.gate()?;
    let router = api
        .layer(axum::middleware::from_fn_with_state(gate, caller::identify))
        .merge(if args.admin_listen.is_some() {
            probe_routes(ops.clone())
        } else {
            operational_routes(ops.clone())
        })
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "no-route",
                "no such route; see /openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "this route does not accept that method",
            )
        })
        .layer(axum::middleware::from_fn(context::scope))
        .layer(DefaultBodyLimit::max(args.body_limit_bytes));
    Ok(shared_layers(router, &ops, args)?.layer(DetachLayer::new(
        ops.work.clone(),
        usize::try_from(args.limits.max_requests_in_flight).unwrap_or(usize::MAX),
    )))
}

/// `/healthz`, `/readyz`, `/info` and `/metrics`.
pub fn operational_routes(ops: Ops) -> Router {
    probe_routes(ops.clone()).merge(
        Router::new()
            .route("/info", get(info_route))
            .route("/metrics", get(metrics_route))
            .with_state(ops),
    )
}

/// `/healthz`, `/readyz` and `/health` (the JSON form the application's first clients read),
/// which a load balancer or an old client may need on the API's own port.
pub fn probe_routes(ops: Ops) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/health", get(health))
        .with_state(ops)
}

/// The admin address's router (`--admin-listen`): the operational routes, `extra` (the
/// gateway's `/debug/endpoints`), a JSON 404, and the shared layers.
pub fn admin_app(ops: &Ops, args: &ServeArgs, extra: Router) -> anyhow::Result<Router> {
    let router = operational_routes(ops.clone())
        .merge(extra)
        .fallback(|| async {
            Problem::new(
                StatusCode::NOT_FOUND,
                "no-route",
                "the admin address serves /healthz, /readyz, /info and /metrics",
            )
        });
    let args = ServeArgs {
        cors_origins: Vec::new(),
        ..args.clone()
    };
    shared_layers(router, ops, &args)
}

/// The admin listener and its router, when `--admin-listen` is set.
pub async fn admin_listener(
    ops: &Ops,
    args: &ServeArgs,
    extra: Router,
) -> anyhow::Result<Option<(tokio::net::TcpListener, Router)>> {
    let Some(address) = args.admin_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {address} (--admin-listen): {e}"))?;
    info!(addr = %listener.local_addr()?, "admin routes (/info, /metrics) listening");
    Ok(Some((listener, admin_app(ops, args, extra)?)))
}

/// The layers every component puts around all its routes: metrics by route, panic → 500
/// problem, a tracing span and a log line per request carrying the request id, the request id
/// itself (kept from the caller or generated, and returned), CORS when configured.
pub fn shared_layers(router: Router, ops: &Ops, args: &ServeArgs) -> anyhow::Result<Router> {
    let mut router = router
        .layer(axum::middleware::from_fn_with_state(
            ops.metrics.clone(),
            metrics::track,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            Problem::internal(&"a handler panicked").into_response()
        }))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let id = request
                        .headers()
                        .get(&REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let route = request
                        .extensions()
                        .get::<MatchedPath>()
                        .map(MatchedPath::as_str);
                    let span = msa_telemetry::server_span(
                        request.method(),
                        request.uri().path(),
                        route,
                        id,
                    );
                    msa_telemetry::continue_trace(&span, request.headers());
                    span
                })
                .on_response(|response: &Response, latency: Duration, span: &Span| {
                    msa_telemetry::finish_server_span(span, response.status().as_u16());
                    info!(
                        status = response.status().as_u16(),
                        latency_ms = latency.as_secs_f64() * 1000.0,
                        "handled"
                    );
                })
                // A 5xx answer is logged where it is decided, with its cause; not again here.
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeRequestUuid))
        .layer(tower::util::MapRequestLayer::new(|mut request: Request| {
            context::drop_unacceptable(request.headers_mut());
            request
        }));
    if let Some(cors) = args.cors()? {
        router = router.layer(cors);
    }
    Ok(router)
}

/// 200 `ready`, or a 503 problem whose `reason` is `draining` or `database-unwritable`.
async fn readyz(State(ops): State<Ops>) -> Response {
    match ops.unready().await {
        Some(why) => Problem::unavailable(why.detail, 1)
            .with("reason", why.reason)
            .into_response(),
        None => "ready".into_response(),
    }
}

/// `/health` as the application's first clients read it: `{"status": "healthy", "service":
/// ...}`, 503 with `"unhealthy"` and the reason when `/readyz` would fail.
async fn health(State(ops): State<Ops>) -> Response {
    let (code, status, reason) = match ops.unready().await {
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy",
            Some(why.detail),
        ),
        None => (StatusCode::OK, "healthy", None),
    };
    let mut body = json!({"status": status, "service": ops.name, "version": ops.version});
    if let Some(reason) = reason {
        body["reason"] = json!(reason);
    }
    (code, axum::Json(body)).into_response()
}

/// Why a service should not take traffic now.
struct Unready {
    /// A stable token for machines.
    reason: &'static str,
    /// For people; never the database's own error text.
    detail: &'static str,
}

impl Ops {
    /// Why the service should not take traffic now, `None` when it may: it is draining, or it
    /// cannot begin a write (a bounded probe, see [`crate::db::readiness`], which logs why).
    async fn unready(&self) -> Option<Unready> {
        if self.is_draining() {
            return Some(Unready {
                reason: "draining",
                detail: "shutting down",
            });
        }
        if let Some(database) = &self.database
            && database.writable().await.is_err()
        {
            return Some(Unready {
                reason: "database-unwritable",
                detail: "the database cannot take a write now",
            });
        }
        None
    }

    /// Whether SIGTERM started the drain.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

async fn info_route(State(ops): State<Ops>) -> Response {
    let mut info = json!({
        "name": ops.name,
        "version": ops.version,
        "instance": ops.instance,
        "database": ops.database.as_ref().map(|d| format!("{:?}", d.backend).to_lowercase()),
    });
    if let Some(members) = info.as_object_mut() {
        members.extend(ops.info.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    axum::Json(info).into_response()
}

/// OpenMetrics when the scraper asks for it (Prometheus does), the classic text format
/// otherwise (promtool, curl): see `msa-exposition`.
async fn metrics_route(State(ops): State<Ops>, headers: http::HeaderMap) -> Response {
    let accept = headers
        .get(http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (content_type, body) = msa_exposition::negotiate(accept, ops.metrics.encode());
    let mut response = body.into_response();
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}

/// How a server stops: readiness fails at once, requests are still served for `delay` (so load
/// balancers notice), then new connections are refused and in-flight requests get `grace`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drain {
    pub delay: Duration,
    pub grace: Duration,
}

/// Serves `service` (usually a [`Router`]) until `shutdown` resolves (SIGTERM or Ctrl-C in the
/// binaries), then drains as `drain` says. Handlers can ask for the peer's address
/// (`ConnectInfo<SocketAddr>`).
pub async fn serve<S>(
    listener: tokio::net::TcpListener,
    service: S,
    admin: Option<(tokio::net::TcpListener, Router)>,
    ops: Ops,
    drain: Drain,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    let service = close_connections_while_draining(service, &ops);
    serve_api(
        move |stop| connections::serve(listener, service, limits, stop),
        admin,
        ops,
        drain,
        limits,
        shutdown,
    )
    .await
}

/// Like [`serve`], with the API's server given as a function of the stop signal (the gateway
/// serves its API with its own front, see msa-gateway's `engine`). It must mark answers
/// `Connection: close` while [`Ops::is_draining`], as [`serve`] does.
pub async fn serve_api<A, F>(
    api: A,
    admin: Option<(tokio::net::TcpListener, Router)>,
    ops: Ops,
    drain: Drain,
    limits: ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    A: FnOnce(tokio::sync::watch::Receiver<bool>) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let drain_ops = ops.clone();
    let graceful = async move {
        shutdown.await;
        drain_ops.start_draining();
        if !drain.delay.is_zero() {
            info!(
                delay_seconds = drain.delay.as_secs_f64(),
                "draining: readiness fails, still serving"
            );
            tokio::time::sleep(drain.delay).await;
        }
        info!("draining: finishing in-flight requests");
        let _ = stop_tx.send(true);
        // Keeps the sender (and so the receivers' view) alive until the server is done.
        std::future::pending::<()>().await;
    };
    let mut stopped = stop_rx.clone();
    // The admin address keeps answering (readiness fails) through the drain, and stops with
    // the API.
    let admin = admin.map(|(listener, router)| {
        tokio::spawn(connections::serve(
            listener,
            router,
            ConnectionLimits {
                max_connections: 64,
                ..limits
            },
            stop_rx.clone(),
        ))
    });
    let _admin = AbortOnDrop(admin);
    let server = tokio::spawn(api(stop_rx));
    // Requests whose client hung up are still at work (see `detach`): they get the same grace.
    let work = ops.work.clone();
    let server = async move {
        server.await?;
        if work.running() > 0 {
            info!(
                requests = work.running(),
                "draining: finishing work whose clients hung up"
            );
            work.finished().await;
        }
        anyhow::Ok(())
    };
    // Once shutdown began, give in-flight requests `grace`, then stop regardless.
    let outcome = async move {
        connections::stopped(&mut stopped).await;
        tokio::time::sleep(drain.grace).await;
    };
    tokio::select! {
        done = server => { done?; info!("stopped"); Ok(()) }
        () = outcome => { warn!(grace_seconds = drain.grace.as_secs(), "in-flight requests outlived the grace period; exiting"); Ok(()) }
        () = graceful => unreachable!("the drain never ends on its own"),
    }
}

/// Stops a spawned task when dropped.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// While draining, every answer carries `Connection: close`, so a keep-alive client opens its
/// next request on a new connection, which kube-proxy and balancers send to a pod that is not
/// stopping. Without it, a client reusing an idle connection at the moment the server closes it
/// loses that request (a POST cannot be resent safely).
pub fn close_connections_while_draining<S>(
    service: S,
    ops: &Ops,
) -> tower::util::MapResponse<S, impl Fn(Response) -> Response + Clone + use<S>>
where
    S: tower::Service<Request, Response = Response>,
{
    let draining = ops.draining.clone();
    // Bound first: passed inline, the closure would be inferred as the FnOnce map_response asks.
    let mark = move |mut response: Response| {
        if draining.load(Ordering::Relaxed) {
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    };
    tower::ServiceExt::map_response(service, mark)
}

/// SIGTERM (Kubernetes) or Ctrl-C; with `MSA_EXIT_WITH_PARENT=1` (set by `msa-local`) also the
/// death of the process that started this one, so a supervisor killed outright leaves no
/// component behind. (Polling the parent's pid needs no `unsafe`, unlike `PR_SET_PDEATHSIG`.)
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    let orphaned = async {
        if std::env::var("MSA_EXIT_WITH_PARENT").as_deref() != Ok("1") {
            return std::future::pending().await;
        }
        let parent = std::os::unix::process::parent_id();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if std::os::unix::process::parent_id() != parent {
                warn!(
                    parent,
                    "the process that started this one is gone; stopping"
                );
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
        () = orphaned => {},
    }
}

/// JSON (default) or human-readable logs, `RUST_LOG` filters (default `info`), and traces over
/// OTLP when the `OTEL_*` variables ask for them (see `msa_telemetry`). The service is known as
/// `msa-<name>` in traces unless `OTEL_SERVICE_NAME` says otherwise. Keep the guard for the
/// life of `main`: dropping it flushes the last spans.
pub fn init_telemetry(
    format: &str,
    name: &str,
    version: &str,
) -> anyhow::Result<msa_telemetry::Telemetry> {
    msa_telemetry::init(
        format,
        "info",
        &msa_telemetry::Identity {
            service: &format!("msa-{name}"),
            version,
        },
    )
}

/// The whole life of a service binary: logging, the database (connected and migrated), the
/// API with every shared layer (`api` may add metrics of its own to the registry), serving
/// until SIGTERM, and the drain.
pub async fn run(
    name: &'static str,
    version: &'static str,
    serve_args: &ServeArgs,
    database_args: &crate::config::DatabaseArgs,
    migrator: &'static sqlx::migrate::Migrator,
    api: impl FnOnce(Database, &mut prometheus_client::registry::Registry) -> Router,
) -> anyhow::Result<()> {
    let _telemetry = init_telemetry(&serve_args.log_format, name, version)?;
    let db = Database::connect(&database_args.url_for(name), migrator).await?;
    let mut metrics = HttpMetrics::for_component(name);
    let api = api(db.clone(), &mut metrics.registry);
    let ops = Ops::with_metrics(name, version, serve_args.instance_id(), Some(db), metrics);
    let app = app(api, ops.clone(), serve_args)?;
    let listener = tokio::net::TcpListener::bind(serve_args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", serve_args.listen))?;
    info!(addr = %listener.local_addr()?, service = name, version, "listening");
    let admin = admin_listener(&ops, serve_args, Router::new()).await?;
    serve(
        listener,
        app,
        admin,
        ops,
        serve_args.drain(0),
        serve_args.connection_limits(),
        shutdown_signal(),
    )
    .await
}
