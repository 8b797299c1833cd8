//! `msa-streams`: makes an app's event streams and keeps them as configured, as the broker's
//! admin login (see `msa_events::keeper`). The operator runs it beside each broker it runs,
//! connected over the pod's loopback; it takes the services' own `--events-*` flags, so the
//! streams are what the services expect.

use clap::Parser;
use msa_events::EventsArgs;
use msa_events::broker::ADMIN;

#[derive(Parser)]
#[command(
    version,
    about = "Makes and keeps an msa app's event streams (the broker's admin login)"
)]
struct Flags {
    #[command(flatten)]
    events: EventsArgs,
    /// Where the readiness probe is answered (200 once every stream is as configured).
    #[arg(long, env = "MSA_PROBE_LISTEN", default_value = "0.0.0.0:8223")]
    probe_listen: std::net::SocketAddr,
    /// `json` or `text`.
    #[arg(long, env = "MSA_LOG_FORMAT", default_value = "json")]
    log_format: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let _telemetry = msa_service_kit::server::init_telemetry(
        &flags.log_format,
        "streams",
        env!("CARGO_PKG_VERSION"),
    )?;
    let settings = flags.events.settings(ADMIN)?;
    let Some(broker) = settings.broker else {
        anyhow::bail!("--nats-url is required: the broker whose streams to keep");
    };
    let probe = tokio::net::TcpListener::bind(flags.probe_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", flags.probe_listen))?;
    let streams = msa_events::keeper::Streams::default();
    tokio::spawn(msa_events::keeper::serve_readiness(probe, streams.clone()));
    let admin = msa_events::relay::connect(&broker, ADMIN).await?;
    msa_events::keeper::keep(
        admin,
        settings.app,
        settings.stream,
        streams,
        msa_service_kit::server::shutdown_signal(),
    )
    .await;
    Ok(())
}
