//! Operator figures on the local control plane (`make bench-operator`), printed side by side with
//! a reference: the operator's own rendering of the same children server-side-applied straight
//! from a client, as many apps at once as the operator's `--concurrency` — no watches, no status,
//! no operator. That is the floor the control plane itself sets (API writes, scheduling, kwok,
//! the Deployment controller), so the difference is what the operator costs.
//!
//! 1. `kubectl apply` → Ready for one app (median of several), operator vs reference.
//! 2. 100 apps applied at once: time until all are Ready, apps per second, operator vs reference.
//! 3. Operator RSS idle and at 100 apps.
//! 4. API writes per reconcile and per app (operator metrics and the API server's audit log),
//!    and writes during a quiet period at 100 converged apps.
//!
//! Every count and wait is bounded; only the loopback API server and the operator's loopback
//! metrics port are contacted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use msa_e2e::audit::AuditLog;
use msa_e2e::cluster::{INSTALL_NAMESPACE, RELEASE};
use msa_e2e::{Cluster, Operator, OperatorOptions, TestNamespace, wait_until};
use msa_operator::build::Workload;
use msa_operator::crd::MicroserviceApp;

const SINGLE_RUNS: usize = 5;
const MANY_APPS: usize = 100;
const CONVERGE_LIMIT: Duration = Duration::from_secs(600);
const QUIET: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(5);
/// The operator's default `--concurrency`, used by the reference too.
const CONCURRENCY: usize = 4;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cluster = Cluster::from_env();
    progress("installing the chart");
    cluster.install_chart()?;
    let admin = cluster.admin().await?;
    let token = cluster.service_account_kubeconfig(INSTALL_NAMESPACE, RELEASE)?;
    let shop = std::fs::read_to_string(cluster.repo_path("manifests/shop.yaml"))?;
    let shop: MicroserviceApp = serde_yaml::from_str(&shop)?;

    // 1. One app at a time.
    let single_ns = TestNamespace::create(&admin, "bench-one").await?.name;
    let operator = Operator::start(
        &cluster,
        &OperatorOptions::new(token.clone(), "bench-one")
            .watching(&single_ns)
            .concurrency(CONCURRENCY as u16),
    )?;
    wait_until(
        "the operator's metrics",
        Duration::from_secs(30),
        || async { Ok(operator.metrics().await.ok().map(drop)) },
    )
    .await?;
    let idle_rss = operator.rss_kib()?;
    let mut via_operator = Vec::new();
    let mut via_reference = Vec::new();
    for run in 0..SINGLE_RUNS {
        progress(&format!("apply → Ready, run {}/{SINGLE_RUNS}", run + 1));
        let start = Instant::now();
        kubectl_apply(&cluster, &single_ns, &[named(&shop, &format!("one-{run}"))])?;
        via_operator.push(wait_apps_ready(&admin, &single_ns, run + 1, start).await?);

        let ref_ns = TestNamespace::create(&admin, "bench-ref-one").await?.name;
        let start = Instant::now();
        apply_children_directly(&admin, &ref_ns, &[named(&shop, "ref")], CONCURRENCY).await?;
        via_reference.push(wait_deployments_available(&admin, &ref_ns, 4, start).await?);
    }
    drop(operator);

    // 2-4. A hundred apps at once, on a fresh operator in its own namespace.
    let many_ns = TestNamespace::create(&admin, "bench-many").await?.name;
    let ref_ns = TestNamespace::create(&admin, "bench-ref").await?.name;
    let operator = Operator::start(
        &cluster,
        &OperatorOptions::new(token, "bench-many")
            .watching(&many_ns)
            .concurrency(CONCURRENCY as u16),
    )?;
    wait_until(
        "the operator's metrics",
        Duration::from_secs(30),
        || async { Ok(operator.metrics().await.ok().map(drop)) },
    )
    .await?;
    let apps: Vec<MicroserviceApp> = (0..MANY_APPS)
        .map(|i| named(&shop, &format!("app-{i:03}")))
        .collect();
    let audit = AuditLog::new(cluster.audit_log.clone());
    let mark = audit.mark()?;
    progress(&format!("{MANY_APPS} apps through the operator"));
    let start = Instant::now();
    kubectl_apply(&cluster, &many_ns, &apps)?;
    let many_operator = wait_apps_ready(&admin, &many_ns, MANY_APPS, start).await?;
    // Ready follows the Deployments; endpoint counts in status may trail it by a moment, so the
    // writes to converge are counted after they settle, and the quiet period starts only then.
    tokio::time::sleep(SETTLE).await;
    let busy_rss = operator.rss_kib()?;
    let reconciles = operator.metric("msa_operator_reconciles_total", "").await?;
    let metric_writes = operator.metric("msa_operator_api_writes_total", "").await?;
    let operator_user = format!("system:serviceaccount:{INSTALL_NAMESPACE}:{RELEASE}");
    let audited: Vec<_> = audit
        .writes_since(mark)?
        .into_iter()
        .filter(|w| w.username == operator_user && w.namespace.as_deref() == Some(&many_ns))
        .collect();
    let mut by_resource: BTreeMap<String, usize> = BTreeMap::new();
    for write in &audited {
        let key = match &write.subresource {
            Some(sub) => format!("{}/{sub}", write.resource),
            None => write.resource.clone(),
        };
        *by_resource.entry(key).or_default() += 1;
    }
    progress(&format!(
        "{} s of quiet at {MANY_APPS} converged apps",
        QUIET.as_secs()
    ));
    let quiet_mark = audit.mark()?;
    let quiet_reconciles_before = operator.metric("msa_operator_reconciles_total", "").await?;
    tokio::time::sleep(QUIET).await;
    let quiet_writes: Vec<String> = audit
        .writes_since(quiet_mark)?
        .into_iter()
        .filter(|w| w.username == operator_user)
        .map(|w| w.to_string())
        .collect();
    for write in &quiet_writes {
        progress(&format!("  write while quiet: {write}"));
    }
    let quiet_writes = quiet_writes.len();
    let quiet_reconciles =
        operator.metric("msa_operator_reconciles_total", "").await? - quiet_reconciles_before;
    progress(&format!(
        "{MANY_APPS} apps' children applied directly (reference)"
    ));
    let start = Instant::now();
    apply_children_directly(&admin, &ref_ns, &apps, CONCURRENCY).await?;
    let many_reference = wait_deployments_available(&admin, &ref_ns, 4 * MANY_APPS, start).await?;

    let apps_left = Api::<MicroserviceApp>::namespaced(admin.clone(), &many_ns)
        .list(&ListParams::default())
        .await?;
    anyhow::ensure!(apps_left.items.len() == MANY_APPS, "apps went missing");

    println!();
    println!(
        "msa-operator ({}) on the local control plane",
        msa_e2e::operator::binary().display()
    );
    println!();
    println!(
        "| figure | msa-operator | reference: the same children applied directly, {CONCURRENCY} apps at a time |"
    );
    println!("| --- | --- | --- |");
    println!(
        "| apply → Ready, one app (median of {SINGLE_RUNS}; min–max) | {} | {} |",
        summary(&via_operator),
        summary(&via_reference)
    );
    println!(
        "| {MANY_APPS} apps applied at once → all Ready | {:.1} s ({:.1} apps/s) | {:.1} s ({:.1} apps/s) |",
        many_operator.as_secs_f64(),
        MANY_APPS as f64 / many_operator.as_secs_f64(),
        many_reference.as_secs_f64(),
        MANY_APPS as f64 / many_reference.as_secs_f64()
    );
    println!();
    println!("| operator figure | value |");
    println!("| --- | --- |");
    println!(
        "| RSS idle (0 apps) | {:.1} MiB |",
        idle_rss as f64 / 1024.0
    );
    println!(
        "| RSS at {MANY_APPS} converged apps | {:.1} MiB |",
        busy_rss as f64 / 1024.0
    );
    println!("| reconciles to converge {MANY_APPS} apps | {reconciles} |");
    println!(
        "| API writes (operator metric) | {metric_writes} = {:.2} per reconcile, {:.1} per app |",
        metric_writes / reconciles,
        metric_writes / MANY_APPS as f64
    );
    println!(
        "| API writes (audit log) | {} = {:.1} per app: {} |",
        audited.len(),
        audited.len() as f64 / MANY_APPS as f64,
        by_resource
            .iter()
            .map(|(resource, n)| format!("{resource} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| writes in {} s of quiet at {MANY_APPS} converged apps, after {} s to settle (audit log) | {quiet_writes} (over {quiet_reconciles} reconciles) |",
        QUIET.as_secs(),
        SETTLE.as_secs()
    );
    Ok(())
}

/// A copy of the shop app under another name.
fn named(template: &MicroserviceApp, name: &str) -> MicroserviceApp {
    let mut app = template.clone();
    app.metadata.name = Some(name.to_owned());
    app
}

/// `kubectl apply` of the apps, as a user would.
fn kubectl_apply(
    cluster: &Cluster,
    namespace: &str,
    apps: &[MicroserviceApp],
) -> anyhow::Result<()> {
    cluster
        .kubectl_with_stdin(
            &["apply", "-n", namespace, "-f", "-"],
            Some(&yaml_stream(apps)?),
        )
        .ok()
        .map(drop)
}

/// Polls a namespace's apps until `expected` of them are Ready; the time is measured from `start`.
async fn wait_apps_ready(
    client: &kube::Client,
    namespace: &str,
    expected: usize,
    start: Instant,
) -> anyhow::Result<Duration> {
    let api = Api::<MicroserviceApp>::namespaced(client.clone(), namespace);
    wait_counted("apps Ready", expected, start, || async {
        let apps = api.list(&ListParams::default()).await?;
        Ok(apps
            .items
            .iter()
            .filter(|app| {
                app.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
            .count())
    })
    .await
}

/// The reference: every app's children, rendered by the operator's pure builders, minus the
/// owner reference, server-side-applied from one client with `concurrency` apps in flight.
async fn apply_children_directly(
    client: &kube::Client,
    namespace: &str,
    apps: &[MicroserviceApp],
    concurrency: usize,
) -> anyhow::Result<()> {
    futures::stream::iter(apps.iter().cloned().map(|mut app| async move {
        app.metadata.namespace = Some(namespace.to_owned());
        app.metadata.uid = Some("00000000-0000-0000-0000-000000000000".into());
        let children = msa_operator::build::children(&app)?;
        for workload in children.workloads {
            match workload {
                Workload::Deployment(d) => apply_unowned(client, d).await?,
                Workload::StatefulSet(s) => apply_unowned(client, s).await?,
            }
        }
        for (_, budget) in children.budgets {
            apply_unowned(client, budget).await?;
        }
        for service in children.services {
            apply_unowned(client, service).await?;
        }
        apply_unowned(client, children.service_account).await?;
        apply_unowned(client, children.role).await?;
        apply_unowned(client, children.role_binding).await
    }))
    .buffer_unordered(concurrency)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

/// Server-side applies one rendered child without its owner reference (its owner does not exist).
async fn apply_unowned<K>(client: &kube::Client, mut object: K) -> anyhow::Result<()>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    object.meta_mut().owner_references = None;
    let namespace = object
        .namespace()
        .context("rendered children are namespaced")?;
    let api = Api::<K>::namespaced(client.clone(), &namespace);
    let params = PatchParams::apply("bench-reference").force();
    api.patch(&object.name_any(), &params, &Patch::Apply(&object))
        .await?;
    Ok(())
}

/// Polls a namespace's Deployments until `expected` of them are Available.
async fn wait_deployments_available(
    client: &kube::Client,
    namespace: &str,
    expected: usize,
    start: Instant,
) -> anyhow::Result<Duration> {
    let api = Api::<Deployment>::namespaced(client.clone(), namespace);
    wait_counted("Deployments Available", expected, start, || async {
        let deployments = api.list(&ListParams::default()).await?;
        Ok(deployments
            .items
            .iter()
            .filter(|d| {
                d.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .flatten()
                        .any(|c| c.type_ == "Available" && c.status == "True")
                        && s.updated_replicas == d.spec.as_ref().and_then(|sp| sp.replicas)
                })
            })
            .count())
    })
    .await
}

/// Polls `count` every 100 ms until it reaches `expected` (bounded by CONVERGE_LIMIT), showing
/// progress; returns the time since `start`.
async fn wait_counted<F, Fut>(
    what: &str,
    expected: usize,
    start: Instant,
    mut count: F,
) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<usize>>,
{
    let mut shown = 0;
    loop {
        let done = count().await?;
        if expected >= 10 && done >= shown + expected / 4 {
            shown = done;
            progress(&format!(
                "  {done}/{expected} {what} after {:.1} s",
                start.elapsed().as_secs_f64()
            ));
        }
        if done >= expected {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < CONVERGE_LIMIT,
            "only {done}/{expected} {what} after {CONVERGE_LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn yaml_stream(apps: &[MicroserviceApp]) -> anyhow::Result<String> {
    let mut out = String::new();
    for app in apps {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(app)?);
    }
    Ok(out)
}

fn summary(samples: &[Duration]) -> String {
    let mut sorted = samples.to_vec();
    sorted.sort();
    format!(
        "{:.2} s ({:.2}–{:.2})",
        sorted[sorted.len() / 2].as_secs_f64(),
        sorted[0].as_secs_f64(),
        sorted[sorted.len() - 1].as_secs_f64()
    )
}

fn progress(message: &str) {
    eprintln!(">> {message}");
}
