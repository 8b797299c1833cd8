//! The product service binary.

use clap::Parser;
use msa_service_kit::config::{DatabaseArgs, ServeArgs};

/// The msa product service: products, prices and stock, with atomic stock reservations, stored in SQLite or PostgreSQL.
#[derive(Parser, Debug)]
#[command(version)]
struct Flags {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    database: DatabaseArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    msa_service_kit::server::run(
        "product",
        env!("CARGO_PKG_VERSION"),
        &flags.serve,
        &flags.database,
        &msa_product::MIGRATOR,
        |db, _| msa_product::router(db),
    )
    .await
}
