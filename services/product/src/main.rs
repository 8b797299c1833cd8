//! The product service binary.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use msa_product::expiry::{ExpirySettings, ProductMetrics};
use msa_product::orders::OrderClient;
use msa_service_kit::config::{DatabaseArgs, ServeArgs};
use msa_upstream::Upstream;
use msa_upstream::config::{DiscoveryArgs, PolicyArgs};
use msa_upstream::metrics::UpstreamMetrics;

/// The msa product service: products, prices and stock, with atomic stock reservations, stored
/// in SQLite or PostgreSQL.
#[derive(Parser, Debug)]
#[command(name = "msa-product", version)]
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

    /// The order service, asked whether an order was really cancelled or failed before its
    /// sold stock comes back: ip:port[@weight] addresses (comma-separated), `file:<path>` (a
    /// file listing them, read again when it changes), or with `--discovery kubernetes` its
    /// Service name.
    #[arg(long, env = "MSA_UPSTREAM_ORDER", default_value = "127.0.0.1:8082")]
    order_url: String,

    /// This service's token for the order service's internal route (in a pod: a projected
    /// ServiceAccount token for the order service's audience), read again as it rotates.
    #[arg(long, env = "MSA_SERVICE_TOKEN_FILE")]
    service_token_file: Option<std::path::PathBuf>,

    /// A reservation neither committed nor released within this time is released and its stock
    /// given back. Keep it above the order service's `--recover-after-ms`.
    #[arg(long, env = "MSA_RESERVATION_TTL_MS", default_value_t = 600_000, value_parser = clap::value_parser!(u64).range(100..=604_800_000))]
    reservation_ttl_ms: u64,

    /// Time between checks for expired reservations.
    #[arg(long, env = "MSA_RESERVATION_SWEEP_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(50..=3_600_000))]
    reservation_sweep_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let events = flags.events.settings("product")?;
    let pool = flags.policy.pool().map_err(anyhow::Error::msg)?;
    let client = flags.discovery.client().await.map_err(anyhow::Error::msg)?;
    let orders = flags
        .discovery
        .discovery("order-url", &flags.order_url, client.as_ref())
        .map_err(anyhow::Error::msg)?;
    let calls = flags.policy.calls();
    let token = flags
        .service_token_file
        .clone()
        .map(|path| Arc::new(msa_service_kit::auth::TokenFile::new(path)));
    let expiry = ExpirySettings {
        ttl: Duration::from_millis(flags.reservation_ttl_ms),
        every: Duration::from_millis(flags.reservation_sweep_ms),
    };
    msa_service_kit::server::run(
        "product",
        env!("CARGO_PKG_VERSION"),
        &flags.serve,
        &flags.database,
        &msa_product::MIGRATOR,
        |db, registry| {
            let metrics = ProductMetrics::register(registry);
            msa_events::relay::spawn(
                db.clone(),
                events,
                msa_events::metrics::RelayMetrics::register(registry),
            );
            let orders = OrderClient::new(
                Upstream::new(
                    "order",
                    orders,
                    pool,
                    calls,
                    UpstreamMetrics::register(registry),
                ),
                token,
            );
            tokio::spawn(msa_product::expiry::run(
                db.clone(),
                expiry,
                metrics.clone(),
            ));
            msa_product::router_with(db, orders, metrics)
        },
    )
    .await
}
