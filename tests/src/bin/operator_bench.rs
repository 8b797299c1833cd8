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
//! The apps are `manifests/shop.yaml`: user, order and product in StatefulSets on claims (their
//! embedded databases), the gateway in a Deployment. "Ready" for the reference is every workload
//! ready: Deployments Available, StatefulSets with every replica ready.
//!
//! ```text
//! operator-bench [--quick] [--apps N]
//! ```
//! `--quick` (2 single runs, 10 apps, 5 s of quiet; not yet part of `make test`) checks the harness and
//! prints the same table; it fails only when something never becomes Ready or a create fails.
//!
//! Every count and wait is bounded; only the loopback API server and the operator's loopback
//! metrics port are contacted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use msa_e2e::audit::{AuditLog, WRITE_VERBS};
use msa_e2e::cluster::{INSTALL_NAMESPACE, RELEASE};
use msa_e2e::{Cluster, Operator, OperatorOptions, TestNamespace, wait_until};
use msa_operator::build::{Children, Workload};
use msa_operator::crd::MicroserviceApp;

/// The operator's default `--concurrency`, used by the reference too.
const CONCURRENCY: usize = 4;
/// Workloads per shop app: three StatefulSets and the gateway's Deployment.
const WORKLOADS_PER_APP: usize = 4;

/// How much to measure: the full run, or the quick one that checks the harness.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Plan {
    single_runs: usize,
    many_apps: usize,
    converge_limit: Duration,
    quiet: Duration,
    settle: Duration,
}

impl Plan {
    const FULL: Plan = Plan {
        single_runs: 5,
        many_apps: 100,
        converge_limit: Duration::from_secs(600),
        quiet: Duration::from_secs(30),
        settle: Duration::from_secs(5),
    };
    const QUICK: Plan = Plan {
        single_runs: 2,
        many_apps: 10,
        converge_limit: Duration::from_secs(180),
        quiet: Duration::from_secs(5),
        settle: Duration::from_secs(2),
    };

    fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Plan> {
        let mut args = args.into_iter();
        let (mut quick, mut apps) = (false, None);
        while let Some(flag) = args.next() {
            match flag.as_str() {
                "--quick" => quick = true,
                "--apps" => {
                    let value = args.next().context("--apps needs a number")?;
                    let n: usize = value
                        .parse()
                        .with_context(|| format!("--apps takes a whole number, not {value:?}"))?;
                    anyhow::ensure!((1..=500).contains(&n), "--apps must be between 1 and 500");
                    apps = Some(n);
                }
                other => anyhow::bail!(
                    "unknown argument {other:?}; usage: operator-bench [--quick] [--apps N]"
                ),
            }
        }
        let mut plan = if quick { Plan::QUICK } else { Plan::FULL };
        if let Some(n) = apps {
            plan.many_apps = n;
        }
        Ok(plan)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let plan = Plan::parse(std::env::args().skip(1))?;
    let Plan {
        single_runs,
        many_apps,
        converge_limit,
        quiet,
        settle,
    } = plan;
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
    for run in 0..single_runs {
        progress(&format!("apply → Ready, run {}/{single_runs}", run + 1));
        let start = Instant::now();
        kubectl_apply(&cluster, &single_ns, &[named(&shop, &format!("one-{run}"))])?;
        via_operator
            .push(wait_apps_ready(&admin, &single_ns, run + 1, start, converge_limit).await?);

        let ref_ns = TestNamespace::create(&admin, "bench-ref-one").await?.name;
        let start = Instant::now();
        apply_children_directly(&admin, &ref_ns, &[named(&shop, "ref")], CONCURRENCY).await?;
        via_reference.push(
            wait_workloads_ready(&admin, &ref_ns, WORKLOADS_PER_APP, start, converge_limit).await?,
        );
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
    let apps: Vec<MicroserviceApp> = (0..many_apps)
        .map(|i| named(&shop, &format!("app-{i:03}")))
        .collect();
    let audit = AuditLog::new(cluster.audit_log.clone());
    let mark = audit.mark()?;
    progress(&format!("{many_apps} apps through the operator"));
    let start = Instant::now();
    kubectl_apply(&cluster, &many_ns, &apps)?;
    let many_operator = wait_apps_ready(&admin, &many_ns, many_apps, start, converge_limit).await?;
    // Ready follows the Deployments; endpoint counts in status may trail it by a moment, so the
    // writes to converge are counted after they settle, and the quiet period starts only then.
    tokio::time::sleep(settle).await;
    let busy_rss = operator.rss_kib()?;
    let reconciles = operator.metric("msa_operator_reconciles_total", "").await?;
    let metric_writes = operator.metric("msa_operator_api_writes_total", "").await?;
    let operator_user = format!("system:serviceaccount:{INSTALL_NAMESPACE}:{RELEASE}");
    let audited: Vec<_> = audit
        .writes_since(mark)?
        .into_iter()
        .filter(|w| w.username == operator_user && w.namespace.as_deref() == Some(&many_ns))
        .filter(|w| WRITE_VERBS.contains(&w.verb.as_str()))
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
        "{} s of quiet at {many_apps} converged apps",
        quiet.as_secs()
    ));
    let quiet_mark = audit.mark()?;
    let quiet_reconciles_before = operator.metric("msa_operator_reconciles_total", "").await?;
    tokio::time::sleep(quiet).await;
    let quiet_writes: Vec<String> = audit
        .writes_since(quiet_mark)?
        .into_iter()
        .filter(|w| w.username == operator_user && WRITE_VERBS.contains(&w.verb.as_str()))
        .map(|w| w.to_string())
        .collect();
    for write in &quiet_writes {
        progress(&format!("  write while quiet: {write}"));
    }
    let quiet_writes = quiet_writes.len();
    let quiet_reconciles =
        operator.metric("msa_operator_reconciles_total", "").await? - quiet_reconciles_before;
    progress(&format!(
        "{many_apps} apps' children applied directly (reference)"
    ));
    let start = Instant::now();
    apply_children_directly(&admin, &ref_ns, &apps, CONCURRENCY).await?;
    let many_reference = wait_workloads_ready(
        &admin,
        &ref_ns,
        WORKLOADS_PER_APP * many_apps,
        start,
        converge_limit,
    )
    .await?;

    let apps_left = Api::<MicroserviceApp>::namespaced(admin.clone(), &many_ns)
        .list(&ListParams::default())
        .await?;
    anyhow::ensure!(apps_left.items.len() == many_apps, "apps went missing");

    println!();
    println!(
        "msa-operator ({}) on the local control plane{}; apps: manifests/shop.yaml \
         (3 StatefulSets on claims + the gateway's Deployment)",
        msa_e2e::operator::binary().display(),
        if plan == Plan::QUICK {
            ", quick mode"
        } else {
            ""
        }
    );
    println!();
    println!(
        "| figure | msa-operator | reference: the same children applied directly, {CONCURRENCY} apps at a time |"
    );
    println!("| --- | --- | --- |");
    println!(
        "| apply → Ready, one app (median of {single_runs}; min–max) | {} | {} |",
        summary(&via_operator),
        summary(&via_reference)
    );
    println!(
        "| {many_apps} apps applied at once → all Ready | {:.1} s ({:.1} apps/s) | {:.1} s ({:.1} apps/s) |",
        many_operator.as_secs_f64(),
        many_apps as f64 / many_operator.as_secs_f64(),
        many_reference.as_secs_f64(),
        many_apps as f64 / many_reference.as_secs_f64()
    );
    println!();
    println!("| operator figure | value |");
    println!("| --- | --- |");
    println!(
        "| RSS idle (0 apps) | {:.1} MiB |",
        idle_rss as f64 / 1024.0
    );
    println!(
        "| RSS at {many_apps} converged apps | {:.1} MiB |",
        busy_rss as f64 / 1024.0
    );
    println!("| reconciles to converge {many_apps} apps | {reconciles} |");
    println!(
        "| API writes (operator metric) | {metric_writes} = {:.2} per reconcile, {:.1} per app |",
        metric_writes / reconciles,
        metric_writes / many_apps as f64
    );
    println!(
        "| API writes (audit log) | {} = {:.1} per app: {} |",
        audited.len(),
        audited.len() as f64 / many_apps as f64,
        by_resource
            .iter()
            .map(|(resource, n)| format!("{resource} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "| writes in {} s of quiet at {many_apps} converged apps, after {} s to settle (audit log) | {quiet_writes} (over {quiet_reconciles} reconciles) |",
        quiet.as_secs(),
        settle.as_secs()
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
    limit: Duration,
) -> anyhow::Result<Duration> {
    let api = Api::<MicroserviceApp>::namespaced(client.clone(), namespace);
    wait_counted("apps Ready", expected, start, limit, || async {
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
        // Every child, destructured so a new kind of child cannot be left out of the reference.
        let Children {
            workloads,
            services,
            budgets,
            service_account,
            own_service_accounts,
            service_issuer,
            role,
            role_binding,
            network_policies,
            pod_monitor,
            broker,
            component_configs,
        } = msa_operator::build::children(&app)?;
        anyhow::ensure!(
            pod_monitor.is_none(),
            "the shop renders no PodMonitor (the cluster has no monitoring.coreos.com API)"
        );
        for workload in workloads {
            match workload {
                Workload::Deployment(d) => apply_unowned(client, d).await?,
                Workload::StatefulSet(s) => apply_unowned(client, s).await?,
            }
        }
        for (_, budget) in budgets {
            apply_unowned(client, budget).await?;
        }
        for service in services {
            apply_unowned(client, service).await?;
        }
        for policy in network_policies {
            apply_unowned(client, policy).await?;
        }
        for config_map in service_issuer.into_iter().chain(component_configs) {
            apply_unowned(client, config_map).await?;
        }
        apply_unowned(client, service_account).await?;
        for account in own_service_accounts {
            apply_unowned(client, account).await?;
        }
        apply_unowned(client, role).await?;
        if let Some(broker) = broker {
            // The operator also creates the broker's credentials Secret (one POST), not counted.
            apply_unowned(client, broker.config).await?;
            apply_unowned(client, broker.service).await?;
            apply_unowned(client, broker.pods_service).await?;
            apply_unowned(client, broker.stateful_set).await?;
            if let Some(budget) = broker.budget {
                apply_unowned(client, budget).await?;
            }
            if let Some(policy) = broker.network_policy {
                apply_unowned(client, policy).await?;
            }
        }
        apply_unowned(client, role_binding).await
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

/// Polls a namespace's workloads until `expected` of them are ready: a Deployment Available
/// with every replica updated, a StatefulSet with every replica ready on the current revision.
async fn wait_workloads_ready(
    client: &kube::Client,
    namespace: &str,
    expected: usize,
    start: Instant,
    limit: Duration,
) -> anyhow::Result<Duration> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    let stateful_sets = Api::<StatefulSet>::namespaced(client.clone(), namespace);
    wait_counted("workloads ready", expected, start, limit, || async {
        let deployments = deployments.list(&ListParams::default()).await?;
        let stateful_sets = stateful_sets.list(&ListParams::default()).await?;
        let available = deployments
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
            .count();
        let ready = stateful_sets
            .items
            .iter()
            .filter(|set| {
                let wanted = set.spec.as_ref().and_then(|sp| sp.replicas).unwrap_or(1);
                set.status.as_ref().is_some_and(|s| {
                    s.ready_replicas.unwrap_or(0) == wanted
                        && s.updated_replicas.unwrap_or(0) == wanted
                        && s.observed_generation == set.metadata.generation
                })
            })
            .count();
        Ok(available + ready)
    })
    .await
}

/// Polls `count` every 100 ms until it reaches `expected` (bounded by `limit`), showing
/// progress; returns the time since `start`.
async fn wait_counted<F, Fut>(
    what: &str,
    expected: usize,
    start: Instant,
    limit: Duration,
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
            start.elapsed() < limit,
            "only {done}/{expected} {what} after {limit:?}"
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> anyhow::Result<Plan> {
        Plan::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn the_quick_plan_is_small_and_apps_can_be_chosen() {
        assert_eq!(plan(&[]).unwrap(), Plan::FULL);
        assert_eq!(plan(&["--quick"]).unwrap(), Plan::QUICK);
        assert_eq!(plan(&["--quick", "--apps", "20"]).unwrap().many_apps, 20);
        const { assert!(Plan::QUICK.many_apps < Plan::FULL.many_apps) };
        for (given, says) in [
            (&["--apps", "0"][..], "between 1 and 500"),
            (&["--apps"][..], "needs a number"),
            (&["--slow"][..], "unknown argument"),
        ] {
            let error = format!("{:#}", plan(given).unwrap_err());
            assert!(error.contains(says), "{given:?}: {error}");
        }
    }
}
