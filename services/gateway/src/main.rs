//! The gateway binary.

use std::sync::Arc;

use clap::{CommandFactory, FromArgMatches};
use msa_gateway::{Gateway, Route};
use msa_service_kit::config::ServeArgs;
use msa_service_kit::metrics::HttpMetrics;
use msa_service_kit::server::{self, Ops};
use msa_upstream::Upstream;
use msa_upstream::config::{DiscoveryArgs, PolicyArgs};
use msa_upstream::metrics::UpstreamMetrics;
use tracing::info;

/// mimalloc instead of glibc's allocator: the proxy allocates and frees small buffers and header
/// maps on every request, and glibc's consolidation showed up at ~13 % of its CPU time.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The msa API gateway: routes /users, /orders and /products to their services, balancing
/// across each service's endpoints, ejecting failing ones and breaking circuits client-side.
#[derive(clap::Parser, Debug)]
#[command(version)]
struct Flags {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    discovery: DiscoveryArgs,
    #[command(flatten)]
    policy: PolicyArgs,

    /// The user service: ip:port[@weight] addresses (comma-separated), or with
    /// `--discovery kubernetes` its Service name.
    #[arg(long, env = "MSA_UPSTREAM_USER", default_value = "127.0.0.1:8081")]
    upstream_user: String,
    /// The order service, likewise.
    #[arg(long, env = "MSA_UPSTREAM_ORDER", default_value = "127.0.0.1:8082")]
    upstream_order: String,
    /// The product service, likewise.
    #[arg(long, env = "MSA_UPSTREAM_PRODUCT", default_value = "127.0.0.1:8083")]
    upstream_product: String,

    /// Requests per second each client (its address) may make through this gateway replica;
    /// more get 429. Off when not given.
    #[arg(long, env = "MSA_RATE_LIMIT_PER_SECOND", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate_limit_per_second: Option<u32>,
    /// Requests a quiet client may send at once (default: the per-second rate).
    #[arg(long, env = "MSA_RATE_LIMIT_BURST", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    rate_limit_burst: Option<u32>,
    /// Most clients tracked at once; beyond, new clients share one bucket until old ones go quiet.
    #[arg(long, env = "MSA_RATE_LIMIT_CLIENTS", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    rate_limit_clients: u64,

    /// Connections one client address (an IPv6 client: its /64) may hold open at once; the
    /// next get 503 and are closed, so one client cannot take every slot of --max-connections
    /// (nginx's `limit_conn`, off there by default).
    #[arg(long, env = "MSA_MAX_CONNECTIONS_PER_CLIENT", default_value_t = msa_gateway::client_connections::DEFAULT_LIMIT, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    max_connections_per_client: u32,

    /// Routes open without a token, comma-separated `METHOD /template` (for example
    /// `POST /users,GET /products,GET /products/{id}`).
    #[arg(long, env = "MSA_AUTH_PUBLIC_ROUTES", value_delimiter = ',')]
    auth_public_routes: Vec<String>,
    /// Threads serving requests (default: one per CPU); 1 runs everything on one thread.
    #[arg(long, env = "MSA_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
}

fn main() -> anyhow::Result<()> {
    // The gateway is the outer hop: its timeouts are longer than a service's own calls.
    let matches = msa_upstream::config::with_gateway_defaults(Flags::command()).get_matches();
    let flags = Flags::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let runtime = match flags.worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build()?,
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
    };
    runtime.block_on(run(flags))
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let _telemetry = server::init_telemetry(
        &flags.serve.log_format,
        "gateway",
        env!("CARGO_PKG_VERSION"),
    )?;
    let pool = flags.policy.pool().map_err(anyhow::Error::msg)?;
    let calls = flags.policy.calls();
    let client = flags.discovery.client().await.map_err(anyhow::Error::msg)?;
    let mut metrics = HttpMetrics::for_component("gateway");
    let upstream_metrics = UpstreamMetrics::register(&mut metrics.registry);
    let mut routes = Vec::new();
    for (prefix, name, flag, value) in [
        ("/users", "user", "upstream-user", &flags.upstream_user),
        ("/orders", "order", "upstream-order", &flags.upstream_order),
        (
            "/products",
            "product",
            "upstream-product",
            &flags.upstream_product,
        ),
    ] {
        let discovery = flags
            .discovery
            .discovery(flag, value, client.as_ref())
            .map_err(anyhow::Error::msg)?;
        info!(
            route = prefix,
            upstream = name,
            source = discovery.source(),
            "route"
        );
        let upstream = Upstream::new(
            name,
            discovery,
            pool.clone(),
            calls.clone(),
            upstream_metrics.clone(),
        );
        routes.push(Route { prefix, upstream });
    }
    let rate_limit = flags.rate_limit_per_second.map(|rate| {
        let config = msa_gateway::rate_limit::RateLimitConfig {
            rate: f64::from(rate),
            burst: flags.rate_limit_burst.unwrap_or(rate),
            max_clients: usize::try_from(flags.rate_limit_clients).unwrap_or(usize::MAX),
        };
        info!(
            per_second = rate,
            burst = config.burst,
            "rate limit per client address (per gateway replica)"
        );
        Arc::new(msa_gateway::rate_limit::ClientLimiter::new(
            config,
            &mut metrics.registry,
        ))
    });
    let per_client = msa_gateway::client_connections::ClientConnections::new(
        flags.max_connections_per_client,
        &mut metrics.registry,
    );
    let ops = Ops::with_metrics(
        "gateway",
        env!("CARGO_PKG_VERSION"),
        flags.serve.instance_id(),
        None,
        metrics,
    );
    let auth = authenticator(&flags)?;
    let ops = ops.with_info(
        "authentication",
        match &flags.serve.auth.auth_issuer {
            Some(issuer) => serde_json::json!({"required": true, "issuer": issuer}),
            None => serde_json::json!({"required": false, "note": "every route is open: set --auth-issuer (spec.components.gateway.auth) to require tokens"}),
        },
    );
    let policy = msa_gateway::Policy {
        body_limit: flags.serve.body_limit_bytes,
        auth,
        rate_limit,
    };
    let gateway = Arc::new(Gateway { routes, policy });
    let router = msa_gateway::router(gateway.clone(), ops.clone(), &flags.serve)?;
    let app = msa_gateway::front::Front::new(&gateway, router, &ops, &flags.serve)?;
    let listener = tokio::net::TcpListener::bind(flags.serve.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", flags.serve.listen))?;
    info!(addr = %listener.local_addr()?, strategy = %flags.policy.lb_strategy, "gateway listening");
    let admin = server::admin_listener(
        &ops,
        &flags.serve,
        msa_gateway::admin_routes(gateway.clone()),
    )
    .await?;
    let limits = flags.serve.connection_limits();
    let front_ops = ops.clone();
    server::serve_api(
        move |stop| async move {
            msa_gateway::engine::serve(listener, app, &front_ops, limits, per_client, stop).await;
        },
        admin,
        ops,
        flags.serve.drain(5),
        limits,
        server::shutdown_signal(),
    )
    .await
}

/// The authenticator the flags describe, `None` (with a warning) when authentication is off.
fn authenticator(flags: &Flags) -> anyhow::Result<Option<Arc<msa_gateway::auth::Authenticator>>> {
    let Some(verifier) = flags.serve.auth.verifier()? else {
        tracing::warn!(
            "authentication is OFF: every route is open to anyone who reaches the gateway (set --auth-issuer to require tokens)"
        );
        return Ok(None);
    };
    let public_routes = flags
        .auth_public_routes
        .iter()
        .map(|route| {
            route
                .trim()
                .split_once(' ')
                .map(|(m, t)| (m.trim().to_ascii_uppercase(), t.trim().to_owned()))
                .ok_or_else(|| {
                    anyhow::anyhow!("--auth-public-routes: {route:?} is not `METHOD /template`")
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    info!(
        ?public_routes,
        "bearer tokens required except on the public routes"
    );
    Ok(Some(Arc::new(msa_gateway::auth::Authenticator::new(
        verifier,
        public_routes,
    ))))
}
