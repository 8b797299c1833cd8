//! The user service binary.

use clap::Parser;
use msa_service_kit::config::{DatabaseArgs, ServeArgs};
use msa_service_kit::db::Database;
use msa_service_kit::server::{self, Ops};

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
    server::init_logging(&flags.serve.log_format);
    let db = Database::connect(&flags.database.url_for("user"), &msa_user::MIGRATOR).await?;
    let ops = Ops::new(
        "user",
        env!("CARGO_PKG_VERSION"),
        flags.serve.instance_id(),
        Some(db.clone()),
    );
    let app = server::app(msa_user::router(db), ops.clone(), &flags.serve)?;
    let listener = tokio::net::TcpListener::bind(flags.serve.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "user service listening");
    let grace = std::time::Duration::from_secs(flags.serve.shutdown_grace_seconds);
    server::serve(listener, app, ops, grace, server::shutdown_signal()).await
}
