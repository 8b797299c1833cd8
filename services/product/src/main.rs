//! The product service binary.

use std::time::Duration;

use clap::Parser;
use msa_product::expiry::{ExpirySettings, ProductMetrics};
use msa_service_kit::config::{DatabaseArgs, ServeArgs};

/// The msa product service: products, prices and stock, with atomic stock reservations, stored
/// in SQLite or PostgreSQL.
#[derive(Parser, Debug)]
#[command(name = "msa-product", version)]
struct Flags {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    database: DatabaseArgs,

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
            tokio::spawn(msa_product::expiry::run(
                db.clone(),
                expiry,
                metrics.clone(),
            ));
            msa_product::router_with(db, metrics)
        },
    )
    .await
}
