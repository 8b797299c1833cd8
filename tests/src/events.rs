//! What the shop published on the real node: every outbox row of each service in the service's
//! stream once, in order per aggregate — read from the operator-run broker's pod with the
//! read-only observer login, the outboxes from the services' PostgreSQL databases.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;
use msa_events::broker::{self, OBSERVER};
use msa_events::testing::{assert_stream_matches_outbox, drained, read_stream};

use crate::node::{OnNode as Ctx, guarded};
use crate::postgres::Postgres;

/// How long the relays may take to publish what is waiting after the load (a busy node).
const DRAIN: Duration = Duration::from_secs(120);

/// The broker's first server, as the host reaches it (its pod address, in the guarded range).
async fn broker_address(ctx: &Ctx, ns: &str, app: &str) -> anyhow::Result<String> {
    let pod = Api::<Pod>::namespaced(ctx.admin.clone(), ns)
        .get(&format!("{app}-events-0"))
        .await?;
    let ip = pod
        .status
        .and_then(|s| s.pod_ip)
        .context("the broker's pod has no address")?;
    Ok(format!("nats://{}:4222", guarded(ip.parse()?)?))
}

/// The observer's password, from the Secret the operator made (named with the app's uid).
async fn observer_password(ctx: &Ctx, ns: &str, app: &str) -> anyhow::Result<String> {
    let uid = Api::<msa_operator::crd::MicroserviceApp>::namespaced(ctx.admin.clone(), ns)
        .get(app)
        .await?
        .metadata
        .uid
        .context("the app has no uid")?;
    let secret = Api::<Secret>::namespaced(ctx.admin.clone(), ns)
        .get(&msa_operator::build::broker::credentials_secret_name(
            app, &uid,
        ))
        .await?;
    let bytes = secret
        .data
        .and_then(|mut d| d.remove(OBSERVER))
        .context("no observer password in the broker's Secret")?;
    Ok(String::from_utf8(bytes.0)?)
}

/// Waits until each service has published everything, then checks its stream against its
/// outbox. Returns the number of events per service.
pub async fn audit_streams(
    ctx: &Ctx,
    ns: &str,
    app: &str,
    postgres: &Postgres,
    databases: &BTreeMap<&'static str, String>,
) -> anyhow::Result<BTreeMap<&'static str, usize>> {
    sqlx::any::install_default_drivers();
    let url = broker_address(ctx, ns, app).await?;
    let client = async_nats::ConnectOptions::with_user_and_password(
        broker::user(app, OBSERVER),
        observer_password(ctx, ns, app).await?,
    )
    .custom_inbox_prefix(broker::inbox_prefix(OBSERVER))
    .connection_timeout(Duration::from_secs(5))
    .request_timeout(Some(Duration::from_secs(10)))
    .connect(url.as_str())
    .await
    .with_context(|| format!("connect to the broker at {url} as the observer"))?;
    let jetstream = async_nats::jetstream::new(client);
    let mut counts = BTreeMap::new();
    for (service, database) in databases {
        let pool = sqlx::AnyPool::connect(&postgres.url(database)).await?;
        drained(&pool, DRAIN).await;
        let stream = msa_events::stream::name(app, service);
        let stored = read_stream(&jetstream, &stream).await;
        assert_stream_matches_outbox(
            &pool,
            &stored,
            &format!("msa.{app}.{service}."),
            &format!("/{app}/{service}"),
        )
        .await;
        pool.close().await;
        println!(
            "{service}: {} events in {stream}, every outbox row once, in order per aggregate",
            stored.len()
        );
        counts.insert(*service, stored.len());
    }
    Ok(counts)
}
