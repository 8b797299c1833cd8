//! The order service binary.

use std::time::Duration;

use clap::Parser;
use msa_order::peers::{Peers, Upstream};
use msa_service_kit::config::{DatabaseArgs, ServeArgs};

/// The msa order service: places orders through a saga over the user and product services,
/// stored in SQLite or PostgreSQL.
#[derive(Parser, Debug)]
#[command(version)]
struct Flags {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    database: DatabaseArgs,

    /// The user service: http://host:port addresses (comma-separated), or its Service name.
    #[arg(
        long,
        env = "MSA_UPSTREAM_USER",
        default_value = "http://127.0.0.1:8081"
    )]
    user_url: String,

    /// The product service: http://host:port addresses (comma-separated), or its Service name.
    #[arg(
        long,
        env = "MSA_UPSTREAM_PRODUCT",
        default_value = "http://127.0.0.1:8083"
    )]
    product_url: String,

    /// Connect timeout for calls to the user and product services.
    #[arg(long, env = "MSA_TIMEOUT_CONNECT_MS", default_value_t = 1000)]
    connect_timeout_ms: u64,

    /// Overall timeout of one call to the user or product service.
    #[arg(long, env = "MSA_TIMEOUT_REQUEST_MS", default_value_t = 5000)]
    request_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let peers = Peers::new(
        Upstream::parse("user", &flags.user_url)?,
        Upstream::parse("product", &flags.product_url)?,
        Duration::from_millis(flags.connect_timeout_ms),
        Duration::from_millis(flags.request_timeout_ms),
    )?;
    msa_service_kit::server::run(
        "order",
        env!("CARGO_PKG_VERSION"),
        &flags.serve,
        &flags.database,
        &msa_order::MIGRATOR,
        |db| {
            tokio::spawn(msa_order::saga::release_pending_stock(
                db.clone(),
                peers.clone(),
                Duration::from_secs(5),
            ));
            msa_order::router(db, peers)
        },
    )
    .await
}
