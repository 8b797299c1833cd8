//! The msa-operator binary: flags, logging, the CRD check, leader election, then the controller.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context as _, bail};
use clap::Parser;
use kube::Client;
use kube::api::{Api, ListParams};
use msa_operator::controller::{self, Settings};
use msa_operator::crd::MicroserviceApp;
use msa_operator::http::{self, Health};
use msa_operator::leader::Election;
use msa_operator::metrics::Metrics;
use tracing::{error, info};

/// Runs MicroserviceApps: one Deployment and Service per component, kept converged.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Flags {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "MSA_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,

    /// Apps reconciled at once.
    #[arg(long, env = "MSA_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    concurrency: u16,

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

    /// Log format: json (default) or text.
    #[arg(long, env = "MSA_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
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
    let server = tokio::spawn(http::serve(flags.metrics_addr, health.clone()));

    let client = Client::try_default()
        .await
        .context("cannot reach Kubernetes: no in-cluster service account and no usable kubeconfig (set KUBECONFIG)")?;
    check_crd_installed(&client, flags.watch_namespace.as_deref()).await?;

    let identity = flags.identity.clone().unwrap_or_else(default_identity);
    let settings = Settings {
        namespace: flags.watch_namespace.clone(),
        concurrency: flags.concurrency,
        instance: identity.clone(),
    };

    let mut election = None;
    if flags.leader_election {
        let namespace = flags
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        let mut started = Election::start(client.clone(), &namespace, &flags.lease_name, &identity)
            .await
            .with_context(|| {
                format!(
                    "cannot use the leader Lease {namespace}/{}",
                    flags.lease_name
                )
            })?;
        health.ready.store(true, Ordering::Relaxed);
        info!(lease = %flags.lease_name, %namespace, %identity, "waiting to lead");
        tokio::select! {
            acquired = started.acquired() => if !acquired { bail!("leader election stopped before this process led") },
            () = shutdown_signal() => { started.release().await; return Ok(()) }
        }
        info!(%identity, "leading");
        election = Some(started);
    }
    metrics.leader.set(1);
    health.ready.store(true, Ordering::Relaxed);

    let run = controller::run(client, settings, metrics.clone(), shutdown_signal());
    let outcome = match election.as_mut() {
        Some(election) => tokio::select! {
            () = run => Ok(()),
            () = election.lost() => Err(anyhow::anyhow!("lost the leader Lease; exiting so that only the new leader writes")),
        },
        None => {
            run.await;
            Ok(())
        }
    };
    metrics.leader.set(0);
    if let Some(election) = election {
        election.release().await;
    }
    server.abort();
    if let Err(error) = &outcome {
        error!(%error, "stopping");
    }
    info!("stopped");
    outcome
}

/// Fails with instructions when the CRD is missing, instead of retrying watches forever.
async fn check_crd_installed(client: &Client, namespace: Option<&str>) -> anyhow::Result<()> {
    let apps: Api<MicroserviceApp> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match apps.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => bail!(
            "the MicroserviceApp CRD (microserviceapps.msa.dev) is not installed; install it with \
             `kubectl apply -f crds/microserviceapps.msa.dev.yaml` or `helm install msa-operator charts/msa-operator`"
        ),
        Err(kube::Error::Api(status)) if status.code == 403 => bail!(
            "not allowed to list MicroserviceApps ({}); grant the operator's ServiceAccount the chart's ClusterRole",
            status.message
        ),
        Err(error) => Err(error).context(
            "cannot list MicroserviceApps: the Kubernetes API server did not answer; check that the cluster is up and KUBECONFIG points at it",
        ),
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
