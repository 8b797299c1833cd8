//! The order service binary.

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use msa_order::peers::Peers;
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
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
    msa_service_kit::server::run(
        "order",
        env!("CARGO_PKG_VERSION"),
        &flags.serve,
        &flags.database,
        &msa_order::MIGRATOR,
        |db, registry| {
            let metrics = UpstreamMetrics::register(registry);
            let peers = Peers::new(
                Upstream::new("user", users, pool.clone(), calls.clone(), metrics.clone()),
                Upstream::new("product", products, pool, calls, metrics),
            )
            .with_service_token(
                service_token_file
                    .map(|path| Arc::new(msa_service_kit::auth::TokenFile::new(path))),
            );
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
