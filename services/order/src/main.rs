//! The order service binary.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use msa_order::peers::Peers;
use msa_order::recovery::{RecoveryMetrics, RecoverySettings};
use msa_service_kit::config::{DatabaseArgs, ServeArgs};
use msa_upstream::Upstream;
use msa_upstream::config::{DiscoveryArgs, PolicyArgs};
use msa_upstream::metrics::UpstreamMetrics;

/// The msa order service: places orders through a saga over the user and product services,
/// stored in SQLite or PostgreSQL.
#[derive(Parser, Debug)]
#[command(version)]
struct Flags {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    discovery: DiscoveryArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    events: msa_events::EventsArgs,

    /// The user service: ip:port[@weight] addresses (comma-separated), or with
    /// `--discovery kubernetes` its Service name.
    #[arg(long, env = "MSA_UPSTREAM_USER", default_value = "127.0.0.1:8081")]
    user_url: String,

    /// The product service: ip:port[@weight] addresses (comma-separated), or with
    /// `--discovery kubernetes` its Service name.
    #[arg(long, env = "MSA_UPSTREAM_PRODUCT", default_value = "127.0.0.1:8083")]
    product_url: String,

    /// This service's token for the product service's reservation routes (in a pod: a
    /// projected ServiceAccount token for the product service's audience), read again as it
    /// rotates.
    #[arg(long, env = "MSA_SERVICE_TOKEN_FILE")]
    service_token_file: Option<std::path::PathBuf>,

    /// The longest `POST /orders` waits for its saga before answering 202 Accepted with the
    /// pending order (less when the caller's `x-msa-timeout-ms` says it waits less).
    #[arg(long, env = "MSA_ORDER_WAIT_MAX_MS", default_value_t = 4_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    order_wait_max_ms: u64,

    /// An order pending longer than this is finished by the recoverer (the saga gives up on the
    /// product service at half of it). Keep it below the product service's reservation TTL.
    #[arg(long, env = "MSA_RECOVER_AFTER_MS", default_value_t = 120_000, value_parser = clap::value_parser!(u64).range(200..=86_400_000))]
    recover_after_ms: u64,

    /// Time between recovery rounds (one also runs at start).
    #[arg(long, env = "MSA_RECOVERY_INTERVAL_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(50..=3_600_000))]
    recovery_interval_ms: u64,

    /// How long a replica holds the recovery lease without renewing it; after a crash, another
    /// replica (or the restarted one) takes over once it expires.
    #[arg(long, env = "MSA_RECOVERY_LEASE_MS", default_value_t = 60_000, value_parser = clap::value_parser!(u64).range(200..=3_600_000))]
    recovery_lease_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let events = flags.events.settings("order")?;
    let pool = flags.policy.pool().map_err(anyhow::Error::msg)?;
    let client = flags.discovery.client().await.map_err(anyhow::Error::msg)?;
    let users = flags
        .discovery
        .discovery("user-url", &flags.user_url, client.as_ref())
        .map_err(anyhow::Error::msg)?;
    let products = flags
        .discovery
        .discovery("product-url", &flags.product_url, client.as_ref())
        .map_err(anyhow::Error::msg)?;
    let calls = flags.policy.calls();
    let service_token_file = flags.service_token_file.clone();
    let settings = msa_order::Settings {
        wait_max: Duration::from_millis(flags.order_wait_max_ms),
        recover_after: Duration::from_millis(flags.recover_after_ms),
    };
    let recovery = RecoverySettings {
        after: settings.recover_after,
        every: Duration::from_millis(flags.recovery_interval_ms),
        lease: Duration::from_millis(flags.recovery_lease_ms),
    };
    msa_service_kit::server::run(
        "order",
        env!("CARGO_PKG_VERSION"),
        &flags.serve,
        &flags.database,
        &msa_order::MIGRATOR,
        |db, registry| {
            let metrics = UpstreamMetrics::register(registry);
            msa_events::relay::spawn(
                db.clone(),
                events,
                msa_events::metrics::RelayMetrics::register(registry),
            );
            let peers = Peers::new(
                Upstream::new("user", users, pool.clone(), calls.clone(), metrics.clone()),
                Upstream::new("product", products, pool, calls, metrics),
            )
            .with_service_token(
                service_token_file
                    .map(|path| Arc::new(msa_service_kit::auth::TokenFile::new(path))),
            );
            tokio::spawn(msa_order::recovery::run(
                db.clone(),
                peers.clone(),
                recovery,
                RecoveryMetrics::register(registry),
            ));
            msa_order::router_with(db, peers, settings)
        },
    )
    .await
}
