//! The product service binary.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    msa_service_kit::server::run_standalone(
        "product",
        env!("CARGO_BIN_NAME"),
        env!("CARGO_PKG_VERSION"),
        "The msa product service: products, prices and stock, with atomic stock reservations, stored in SQLite or PostgreSQL.",
        &msa_product::MIGRATOR,
        msa_product::router,
    )
    .await
}
