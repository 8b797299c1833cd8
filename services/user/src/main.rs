//! The user service binary.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    msa_service_kit::server::run_standalone(
        "user",
        env!("CARGO_BIN_NAME"),
        env!("CARGO_PKG_VERSION"),
        "The msa user service: accounts with a unique email, stored in SQLite or PostgreSQL.",
        &msa_user::MIGRATOR,
        msa_user::router,
    )
    .await
}
