//! The user service binary.

use clap::Parser;
use msa_service_kit::config::{DatabaseArgs, ServeArgs};

/// The msa user service: accounts with a unique email, stored in SQLite or PostgreSQL.
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
        "user",
        env!("CARGO_PKG_VERSION"),
        &flags.serve,
        &flags.database,
        &msa_user::MIGRATOR,
        |db, _| msa_user::router(db),
    )
    .await
}
