//! The user service binary.

use clap::Parser;
use msa_events::EventsArgs;
use msa_events::metrics::RelayMetrics;
use msa_service_kit::config::{DatabaseArgs, ServeArgs};

/// The msa user service: accounts with a unique email, stored in SQLite or PostgreSQL; every
/// change is published as an event.
#[derive(Parser, Debug)]
#[command(version)]
struct Flags {
    #[command(flatten)]
    serve: ServeArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    events: EventsArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let events = flags.events.settings("user")?;
    msa_service_kit::server::run(
        "user",
        env!("CARGO_PKG_VERSION"),
        &flags.serve,
        &flags.database,
        &msa_user::MIGRATOR,
        |db, registry| {
            msa_events::relay::spawn(db.clone(), events, RelayMetrics::register(registry));
            msa_user::router(db)
        },
    )
    .await
}
