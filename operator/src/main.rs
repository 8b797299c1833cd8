//! The msa-operator binary: flags, logging, API clients with timeouts, the CRD check, leader
//! election, then the controller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use http::{HeaderValue, header};
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams};
use kube::client::ClientBuilder;
use kube::client::retry::RetryPolicy;
use msa_operator::controller::{self, Settings};
use msa_operator::crd::MicroserviceApp;
use msa_operator::crd_upgrade;
use msa_operator::http::{self as endpoints, Health};
use msa_operator::leader::{self, Election, FenceLayer, TermEnd};
use msa_operator::lease::{Elector, Timing};
use msa_operator::metrics::Metrics;
use msa_operator::scope::Scope;
use tracing::{error, info};

/// Connecting to the API server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Sending a request (a write that cannot progress means a dead connection).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest silence while reading one response. Watches are streamed responses that may be
/// quiet until kube-runtime's watcher ends them (a 290 s server-side timeout, and its own idle
/// limit of 295 s), so this must be longer, or a quiet, healthy watch would be cut.
const READ_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest wait for a response's head, for every request: the API server sends a watch's
/// head at once and gives up on any other request after its own 60 s request timeout, so a
/// little more never cuts a request the server is still working on, and ends one stuck on a
/// dead connection.
const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(65);
/// The start-up check that the CRD is installed.
const STARTUP_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs MicroserviceApps: one Deployment and Service per component, kept converged.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Flags {
    #[command(subcommand)]
    command: Option<Command>,

    /// Watch only these namespaces (repeat the flag or separate them with commas; default: all
    /// namespaces). The operator then needs a Role in each instead of a ClusterRole.
    #[arg(long, global = true, env = "MSA_WATCH_NAMESPACE", value_delimiter = ',', value_parser = namespace_name)]
    watch_namespace: Vec<String>,

    /// Apps reconciled at once.
    #[arg(long, env = "MSA_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,

    /// Milliseconds a burst of changes to one app and its children is gathered into one
    /// reconcile (trailing edge: the reconcile runs once the app has been quiet that long). While
    /// an app's workloads come up, each of their status updates would otherwise cost a reconcile
    /// and a status write: at 100 apps, 250–300 ms cut reconciles by 80 % and the operator's
    /// writes by a quarter, for about half a second more create → Ready (BENCHMARKS.md). Off by
    /// default: kube-runtime's debounce has no maximum wait, so an app whose children change
    /// more often than this (a large scale-out) is not reconciled until they calm down.
    #[arg(long, env = "MSA_DEBOUNCE_MS", default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=5000))]
    debounce_ms: u64,

    /// Apps whose pods the operator itself re-renders (a new operator version, a changed
    /// ServiceAccount issuer) that may roll out at once; the others keep their pods until a
    /// rollout ends. A change to an app's own spec is never held back. 0: no pacing.
    #[arg(long, env = "MSA_MAX_CONCURRENT_ROLLOUTS", default_value_t = msa_operator::reconcile::DEFAULT_ROLLOUT_SLOTS, value_parser = clap::value_parser!(u16).range(0..=1000))]
    max_concurrent_rollouts: u16,

    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "MSA_METRICS_ADDR", default_value = "127.0.0.1:8080")]
    metrics_addr: SocketAddr,

    /// Compete for a Lease so only one replica reconciles.
    #[arg(long, env = "MSA_LEADER_ELECTION", default_value_t = false)]
    leader_election: bool,

    /// Name of the leader Lease.
    #[arg(long, env = "MSA_LEASE_NAME", default_value = "msa-operator")]
    lease_name: String,

    /// Namespace of the leader Lease (default: the pod's namespace, else "default").
    #[arg(long, env = "MSA_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,

    /// This process's name in the Lease and in Events (default: the pod name or host name).
    #[arg(long, env = "MSA_POD_NAME")]
    identity: Option<String>,

    /// Seconds a Lease lasts after its holder's last renewal, counted by each standby on its own
    /// clock from when it saw that renewal.
    #[arg(long, env = "MSA_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_duration_seconds: u64,

    /// A leader that has not renewed the Lease within this many seconds of its last successful
    /// renewal stops reconciling and exits; less than the lease duration.
    #[arg(long, env = "MSA_LEASE_RENEW_DEADLINE_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_renew_deadline_seconds: u64,

    /// Seconds between two renewals by the leader, and two reads of the Lease by a standby;
    /// less than the renew deadline.
    #[arg(long, env = "MSA_LEASE_RETRY_PERIOD_SECONDS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_retry_period_seconds: u64,

    /// Keep the MicroserviceApp CRD current: once leading, apply the CRD this operator was built
    /// with, unless a newer operator wrote the one in the cluster (Helm never upgrades a chart's
    /// CRDs). Needs get and patch on that CustomResourceDefinition.
    #[arg(long, env = "MSA_MANAGE_CRD", default_value_t = false)]
    manage_crd: bool,

    /// Watch the Secrets apps name in `configFrom`, so a change in one rolls the pods that read
    /// it. Off by default: it needs list and watch on every Secret in the watched
    /// namespaces (the chart grants them only with watchConfigSecrets=true). Without it such a
    /// Secret is read when a pod starts: roll by hand with `kubectl rollout restart`.
    #[arg(long, env = "MSA_WATCH_CONFIG_SECRETS", default_value_t = false)]
    watch_config_secrets: bool,

    /// Log format: json (default) or text.
    #[arg(long, env = "MSA_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Check an installed operator, as the chart's `helm test` does in the cluster: its /readyz
    /// answers 200, and its ServiceAccount (this pod's) may list MicroserviceApps in the
    /// namespaces it watches (--watch-namespace, or every namespace).
    Check {
        /// The operator's metrics address, http://<host>:<port> or tcp://<host>:<port> (the
        /// chart passes its metrics Service's `<NAME>_PORT`). Without it only the listing is
        /// checked.
        #[arg(long)]
        metrics_url: Option<String>,
    },
}

impl Flags {
    fn timing(&self) -> anyhow::Result<Timing> {
        Timing::new(
            Duration::from_secs(self.lease_duration_seconds),
            Duration::from_secs(self.lease_renew_deadline_seconds),
            Duration::from_secs(self.lease_retry_period_seconds),
        )
        .context("invalid leader election timing (--lease-duration-seconds, --lease-renew-deadline-seconds, --lease-retry-period-seconds)")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    if let Some(Command::Check { metrics_url }) = &flags.command {
        return check_install(metrics_url.as_deref(), &flags.watch_namespace).await;
    }
    let timing = flags.timing()?;
    // Logs, and traces of every reconcile when the OTEL_* variables configure an exporter.
    let _telemetry = msa_telemetry::init(
        &flags.log_format,
        "info,kube=warn",
        &msa_telemetry::Identity {
            service: "msa-operator",
            version: env!("CARGO_PKG_VERSION"),
        },
    )?;

    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health {
        metrics: metrics.clone(),
        ready: false.into(),
    });
    let server = tokio::spawn(endpoints::serve(flags.metrics_addr, health.clone()));

    let identity = flags.identity.clone().unwrap_or_else(default_identity);
    let config = kube::Config::infer()
        .await
        .context("cannot reach Kubernetes: no in-cluster service account and no usable kubeconfig (set KUBECONFIG)")?;
    // With leader election, the controller's writes pass a fence that closes when the term ends.
    let term = flags.leader_election.then(TermEnd::default);
    let client = controller_client(config.clone(), &identity, term.as_ref().map(TermEnd::fence))?;
    let namespaces = tokio::time::timeout(
        STARTUP_CHECK_TIMEOUT,
        watchable_namespaces(&client, &flags.watch_namespace, flags.watch_config_secrets),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "the Kubernetes API server did not answer within {STARTUP_CHECK_TIMEOUT:?}; check that the cluster is up and KUBECONFIG points at it"
        )
    })??;

    let settings = Settings {
        scope: Scope::namespaces(namespaces),
        concurrency: flags.concurrency,
        debounce: Duration::from_millis(flags.debounce_ms),
        rollout_slots: usize::from(flags.max_concurrent_rollouts),
        instance: identity.clone(),
        watch_config_secrets: flags.watch_config_secrets,
    };

    let mut election = None;
    if let Some(term) = term {
        let namespace = flags
            .lease_namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let leases = Api::namespaced(lease_client(config, &identity, timing)?, &namespace);
        let elector = Elector::new(
            identity.clone(),
            namespace.clone(),
            flags.lease_name.clone(),
            timing,
        );
        let mut started = Election::start(leases, elector, term.clone());
        health.ready.store(true, Ordering::Relaxed);
        info!(lease = %flags.lease_name, %namespace, %identity, "waiting to lead");
        tokio::select! {
            acquired = started.acquired() => if !acquired { bail!("leader election stopped before this process led") },
            () = shutdown_signal() => { started.release().await; return Ok(()) }
        }
        leader::spawn_watchdog(term, timing.watchdog_grace())
            .context("cannot start the leader term watchdog thread")?;
        info!(%identity, "leading");
        election = Some(started);
    }
    metrics.leader.set(1);
    health.ready.store(true, Ordering::Relaxed);
    if flags.manage_crd
        && tokio::time::timeout(STARTUP_CHECK_TIMEOUT, crd_upgrade::ensure(&client))
            .await
            .is_err()
    {
        tracing::warn!(
            "the CRD could not be checked within {STARTUP_CHECK_TIMEOUT:?}; running on it as it is"
        );
    }

    let run = controller::run(client, settings, metrics.clone(), shutdown_signal());
    // When the term ends, `select!` drops the controller, which aborts every reconcile in flight,
    // before anything else happens.
    let outcome = match election.as_mut() {
        Some(election) => tokio::select! {
            () = run => Ok(()),
            () = election.lost() => Err(anyhow::anyhow!(
                "lost the leader Lease (not renewed within the renew deadline, or another replica holds it); stopped reconciling and exiting so that only the new leader writes"
            )),
        },
        None => {
            run.await;
            Ok(())
        }
    };
    metrics.leader.set(0);
    // Released only after a graceful stop (nothing reconciles any more); a lost Lease is not ours.
    if let (Ok(()), Some(election)) = (&outcome, election) {
        election.release().await;
    }
    server.abort();
    if let Err(error) = &outcome {
        error!(%error, "stopping");
    }
    info!("stopped");
    outcome
}

/// `msa-operator check`: one line per finding on stdout; the first failure ends it with an error
/// saying what to do.
async fn check_install(metrics_url: Option<&str>, namespaces: &[String]) -> anyhow::Result<()> {
    use msa_operator::install_check;
    match metrics_url {
        Some(url) => {
            let base = install_check::metrics_base(url)?;
            println!(
                "{}",
                install_check::operator_ready(&base, install_check::READY_WITHIN).await?
            );
        }
        None => println!(
            "the operator's readiness is not checked: no --metrics-url (the chart passes one when metrics.service.enabled)"
        ),
    }
    let mut config = kube::Config::infer()
        .await
        .context("cannot reach Kubernetes: no in-cluster service account and no usable kubeconfig (set KUBECONFIG)")?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(RESPONSE_HEAD_TIMEOUT);
    let client = Client::try_from(config).context("cannot build the Kubernetes client")?;
    for line in install_check::list_apps(&client, namespaces).await? {
        println!("{line}");
    }
    println!("msa-operator check: passed");
    Ok(())
}

/// The client of the controller's watches and reconciles: connect, write and read timeouts on
/// the connection, a deadline on every response's head, kube's retry of 429/503/504 answers,
/// and, with leader election, the fence refusing writes outside the leader's term. The retry
/// wraps the fence, so a write retried after a backoff is checked again.
fn controller_client(
    mut config: kube::Config,
    identity: &str,
    fence: Option<FenceLayer>,
) -> anyhow::Result<Client> {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.write_timeout = Some(WRITE_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    // Count the read timeout from when a request is sent, not from when its pooled connection
    // went idle.
    config.reset_reader_on_write = true;
    // Retried below, outside the fence.
    config.default_retry = false;
    name_requests(&mut config, identity);
    let builder = ClientBuilder::try_from(config).context("cannot build the Kubernetes client")?;
    let layers = tower::ServiceBuilder::new()
        .layer(tower::timeout::TimeoutLayer::new(RESPONSE_HEAD_TIMEOUT))
        .layer(tower::retry::RetryLayer::new(RetryPolicy::server_retry()))
        // The retry needs a service it can clone.
        .layer(tower::buffer::BufferLayer::new(1024))
        .option_layer(fence)
        .into_inner();
    Ok(builder.with_layer(&layers).build())
}

/// The leader election's own client: its own connections (a renewal never waits behind the
/// controller's requests on a connection gone bad), every timeout the per-call deadline.
fn lease_client(
    mut config: kube::Config,
    identity: &str,
    timing: Timing,
) -> anyhow::Result<Client> {
    let call = timing.call_timeout();
    config.connect_timeout = Some(call);
    config.write_timeout = Some(call);
    config.read_timeout = Some(call);
    config.reset_reader_on_write = true;
    name_requests(&mut config, identity);
    let builder = ClientBuilder::try_from(config).context("cannot build the Kubernetes client")?;
    Ok(builder
        .with_layer(&tower::timeout::TimeoutLayer::new(call))
        .build())
}

/// Names this process in every request's User-Agent, so the API server's audit log tells the
/// replicas apart (they share one ServiceAccount).
fn name_requests(config: &mut kube::Config, identity: &str) {
    let agent = format!("msa-operator/{} ({identity})", env!("CARGO_PKG_VERSION"));
    let agent = HeaderValue::from_str(&agent).unwrap_or_else(|_| {
        HeaderValue::from_static(concat!("msa-operator/", env!("CARGO_PKG_VERSION")))
    });
    config.headers.push((header::USER_AGENT, agent));
}

/// A namespace name as Kubernetes allows it (an RFC 1123 label), checked before any watch.
fn namespace_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{name:?} is not a namespace name: up to 63 lower-case letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// Fails with instructions when the CRD is missing, instead of retrying watches forever; with
/// a list of namespaces, returns the ones the operator may watch. A namespace where it may not
/// list every kind it watches (its Role is missing or trimmed, say, because the namespace was
/// deleted or a tenant removed the binding) is left out with an error naming what is missing:
/// its watch could never list, and the others would wait for it.
async fn watchable_namespaces(
    client: &Client,
    namespaces: &[String],
    watch_config_secrets: bool,
) -> anyhow::Result<Vec<String>> {
    if namespaces.is_empty() {
        check_apps_listable(Api::all(client.clone())).await?;
        if watch_config_secrets {
            check_secrets_listable(Api::all(client.clone())).await?;
        }
        return Ok(Vec::new());
    }
    let mut watchable = Vec::new();
    for namespace in namespaces {
        match missing_permission(client, namespace, watch_config_secrets).await? {
            None => watchable.push(namespace.clone()),
            Some(refused) => error!(
                namespace,
                %refused,
                "not watching this namespace: the operator may not list everything it watches there; give its ServiceAccount the chart's Role in it (helm upgrade with the namespace in watchNamespaces) and restart the operator. The other namespaces are watched"
            ),
        }
    }
    if watchable.is_empty() {
        bail!(
            "the operator may not list what it watches in any of the namespaces {}; install the chart with them in watchNamespaces (a Role in each)",
            namespaces.join(",")
        );
    }
    Ok(watchable)
}

/// The first kind the operator watches that it may not list in `namespace`, with the API
/// server's answer; None when it may list them all.
async fn missing_permission(
    client: &Client,
    namespace: &str,
    watch_config_secrets: bool,
) -> anyhow::Result<Option<String>> {
    for resource in controller::watched_kinds(watch_config_secrets) {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
        match api.list_metadata(&ListParams::default().limit(1)).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 403 => {
                return Ok(Some(format!("{}: {}", resource.plural, status.message)));
            }
            Err(kube::Error::Api(status)) if status.code == 404 && resource.group == "msa.dev" => {
                bail!(
                    "the MicroserviceApp CRD (microserviceapps.msa.dev) is not installed; install it with \
                     `kubectl apply -f crds/microserviceapps.msa.dev.yaml` or `helm install msa-operator charts/msa-operator`"
                )
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!("cannot list {} in namespace {namespace}: the Kubernetes API server did not answer; check that the cluster is up", resource.plural)
                });
            }
        }
    }
    Ok(None)
}

async fn check_apps_listable(apps: Api<MicroserviceApp>) -> anyhow::Result<()> {
    match apps.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => bail!(
            "the MicroserviceApp CRD (microserviceapps.msa.dev) is not installed; install it with \
             `kubectl apply -f crds/microserviceapps.msa.dev.yaml` or `helm install msa-operator charts/msa-operator`"
        ),
        Err(kube::Error::Api(status)) if status.code == 403 => bail!(
            "not allowed to list MicroserviceApps in every namespace ({}); grant the operator's ServiceAccount the chart's ClusterRole, or watch a list of namespaces (--watch-namespace, chart watchNamespaces) with a Role in each",
            status.message
        ),
        Err(error) => Err(error).context(
            "cannot list MicroserviceApps: the Kubernetes API server did not answer; check that the cluster is up and KUBECONFIG points at it",
        ),
    }
}

/// With `--watch-config-secrets`, a Secret watch the operator may not list would keep every
/// reconcile waiting for its cache: say so at start instead.
async fn check_secrets_listable(
    secrets: Api<k8s_openapi::api::core::v1::Secret>,
) -> anyhow::Result<()> {
    match secrets.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 403 => bail!(
            "--watch-config-secrets is on but the operator may not list Secrets ({}); install the chart with watchConfigSecrets=true (it grants list and watch on Secrets), or turn the flag off",
            status.message
        ),
        Err(error) => Err(error).context("cannot list Secrets for --watch-config-secrets"),
    }
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "msa-operator".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    info!("shutdown requested; finishing reconciles in flight");
}
