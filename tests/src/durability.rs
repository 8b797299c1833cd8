//! No data lost and no request failed: the embedded databases on their volumes through pod loss,
//! rollouts and a node power cycle; PostgreSQL with two replicas of everything through rolling
//! updates and pod deletions, all under a bounded mixed load through the gateway's NodePort.
//!
//! Each scenario checks what it promises (the node test) and adds its figures to a table
//! (`make bench-node` prints it too).

use std::time::{Duration, Instant};

use crate::load::{self, Limits, Load, Shop, Tally};
use crate::node::{OnNode as Ctx, wait_app_ready, wait_reachable};
use crate::postgres::Postgres;
use crate::{TestNamespace, wait_until};
use anyhow::{Context, ensure};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use msa_operator::crd::MicroserviceApp;
use serde_json::{Value, json};

/// How long any one step may take to converge on a busy 2-core machine.
const WAIT: Duration = Duration::from_secs(180);

/// One scenario's figures, printed as a table row at the end.
pub struct Row {
    pub scenario: String,
    /// Absent on a per-component row (its requests are in the scenario's row).
    pub requests: Option<u64>,
    pub failed: Option<usize>,
    pub unavailable: u64,
    /// First to last `503`; absent where several rollouts' gaps would add up to a meaningless
    /// span.
    pub gap_seconds: Option<f64>,
    pub took_seconds: f64,
}

pub fn print_table(rows: &[Row]) {
    println!(
        "\n{:<62} {:>8} {:>7} {:>9} {:>7} {:>8}",
        "scenario", "requests", "failed", "503+R-A", "gap s", "took s"
    );
    let or_dash = |n: Option<String>| n.unwrap_or_else(|| "-".to_owned());
    for r in rows {
        println!(
            "{:<62} {:>8} {:>7} {:>9} {:>7} {:>8.1}",
            r.scenario,
            or_dash(r.requests.map(|n| n.to_string())),
            or_dash(r.failed.map(|n| n.to_string())),
            r.unavailable,
            or_dash(r.gap_seconds.map(|g| format!("{g:.1}"))),
            r.took_seconds
        );
    }
}

/// The row of a whole scenario; its gaps are on the rows of its rollouts.
fn row(scenario: impl Into<String>, tally: &Tally, took: Duration) -> Row {
    Row {
        scenario: scenario.into(),
        requests: Some(tally.requests),
        failed: Some(tally.failures.len()),
        unavailable: tally.unavailable() as u64,
        gap_seconds: None,
        took_seconds: took.as_secs_f64(),
    }
}

fn show_failures(tally: &Tally) -> String {
    tally
        .failures
        .iter()
        .take(10)
        .map(|f| format!("  {:.2} s {} → {}", f.at, f.request, f.outcome))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A configuration change that rolls one component's pods: `MSA_ROLLOUT_MARK` set to `mark` in
/// its env, every other entry kept.
async fn roll(ctx: &Ctx, ns: &str, app: &str, component: &str, mark: &str) -> anyhow::Result<()> {
    let apps = Api::<MicroserviceApp>::namespaced(ctx.admin.clone(), ns);
    let current = serde_json::to_value(apps.get(app).await?.spec.components)?;
    let mut env: Vec<Value> = current[component]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    env.retain(|e| e["name"] != "MSA_ROLLOUT_MARK");
    env.push(json!({"name": "MSA_ROLLOUT_MARK", "value": mark}));
    let patch = json!({"spec": {"components": {component: {"env": env}}}});
    apps.patch(app, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("rolling {component} of msa/{app}"))?;
    Ok(())
}

/// Rolls each component in turn under load; returns the tally and a row per component with the
/// time from spec change to rollout complete.
async fn rollouts_under_load(
    ctx: &Ctx,
    ns: &str,
    shop: &Shop,
    components: &[&str],
    label: &str,
    rows: &mut Vec<Row>,
) -> anyhow::Result<Tally> {
    let http = load::client(&Limits::default())?;
    let running = Load::start(http, shop.clone(), Limits::default());
    // Some load before the first change, so the tally covers steady state too.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut windows = Vec::new();
    for component in components {
        let changed = Instant::now();
        let from = running.elapsed().as_secs_f64();
        roll(ctx, ns, "shop", component, &format!("{label}-{component}")).await?;
        wait_rolled(ctx, ns, component).await?;
        wait_app_ready(&ctx.admin, ns, "shop", WAIT).await?;
        let took = changed.elapsed();
        println!(
            "{label}: {component} rolled (spec change → rollout complete) in {:.1} s, at {:.1} s of the load",
            took.as_secs_f64(),
            running.elapsed().as_secs_f64()
        );
        windows.push((*component, from, running.elapsed().as_secs_f64(), took));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tally = running.stop().await;
    for (component, from, to, took) in windows {
        let (unavailable, gap) = tally.gap_within(from, to);
        rows.push(Row {
            scenario: format!("{label}: rollout of {component} (spec → complete)"),
            requests: None,
            failed: None,
            unavailable: unavailable as u64,
            gap_seconds: Some(gap),
            took_seconds: took.as_secs_f64(),
        });
    }
    Ok(tally)
}

/// Until every pod of the component runs the changed environment and none is terminating.
async fn wait_rolled(ctx: &Ctx, ns: &str, component: &str) -> anyhow::Result<()> {
    let pods = Api::<Pod>::namespaced(ctx.admin.clone(), ns);
    let selector = format!("app.kubernetes.io/instance=shop,app.kubernetes.io/name={component}");
    wait_until(&format!("every {component} pod replaced"), WAIT, || async {
        let list = pods.list(&ListParams::default().labels(&selector)).await?;
        let all_new = !list.items.is_empty()
            && list.items.iter().all(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.spec.as_ref().is_some_and(|s| {
                        s.containers[0]
                            .env
                            .iter()
                            .flatten()
                            .any(|e| e.name == "MSA_ROLLOUT_MARK")
                    })
            });
        Ok(all_new.then_some(()))
    })
    .await?;
    Ok(())
}

/// Every order the shop's users have must be one answered `201` or `202` (in `answered`, over
/// all the loads on this shop so far), none pending, stock consistent — once the orders still in
/// their saga, and the stock they owe, have been settled by the sagas or the recoverer (looked
/// at again every 3 s for up to [`WAIT`]; nothing that would hide an order placed twice heals
/// by itself).
async fn audit_clean(
    http: &reqwest::Client,
    shop: &Shop,
    answered: &[String],
    what: &str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut audit = load::audit(http, shop, answered).await?;
    let pending_at_first = audit.pending.len();
    while !audit.is_clean() && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_secs(3)).await;
        audit = load::audit(http, shop, answered).await?;
    }
    println!(
        "{what}: {} orders stored, {} answered 201/202, {} pending at first and {} after {:.1} s, {} stock mismatches",
        audit.stored_orders,
        audit.answered,
        pending_at_first,
        audit.pending.len(),
        started.elapsed().as_secs_f64(),
        audit.stock_mismatches.len()
    );
    ensure!(
        audit.is_clean(),
        "{what}: the data does not add up: {audit:#?}"
    );
    Ok(())
}

/// The single-replica embedded default (the shop as applied from manifests/shop.yaml): data on
/// the volumes survives a rollout of each stateful component under load — whose unavoidable gap
/// is answered with 503 + Retry-After, never a failure or a hang — and a node power cycle.
pub async fn embedded_default(
    ctx: &Ctx,
    ns: &str,
    gateway: &str,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let http = load::client(&Limits::default())?;
    let shop = load::seed(&http, gateway, 2, 2, 1_000_000).await?;
    let started = Instant::now();
    let tally = rollouts_under_load(
        ctx,
        ns,
        &shop,
        &["user", "order", "product"],
        "embedded, 1 replica",
        rows,
    )
    .await?;
    println!("embedded rollouts under load: {}", tally.summary());
    rows.push(row(
        "embedded, 1 replica: rollouts of user, order, product",
        &tally,
        started.elapsed(),
    ));
    ensure!(
        tally.failures.is_empty(),
        "requests failed (only 503 with Retry-After is allowed during a one-replica rollout):\n{}",
        show_failures(&tally)
    );
    ensure!(
        !tally.orders_answered.is_empty(),
        "no order was created under load"
    );
    audit_clean(
        &http,
        &shop,
        &tally.orders_answered,
        "after the embedded rollouts",
    )
    .await?;

    // Power cycle: every process of the node ends at once; the pods come back on their volumes.
    let restarted = Instant::now();
    restart_node(ctx).await?;
    wait_all_restarted(ctx, ns).await?;
    wait_app_ready(&ctx.admin, ns, "shop", WAIT).await?;
    wait_reachable(gateway, WAIT).await?;
    println!(
        "node power-cycled; every shop pod restarted and Ready in {:.1} s",
        restarted.elapsed().as_secs_f64()
    );
    audit_clean(
        &http,
        &shop,
        &tally.orders_answered,
        "after the node restart",
    )
    .await?;
    Ok(())
}

/// `tests/cluster/cluster.sh restart-node` on the running cluster.
async fn restart_node(ctx: &Ctx) -> anyhow::Result<()> {
    crate::node::cluster_script(&ctx.cluster, "restart-node").await
}

/// Until every pod of the shop has restarted its container once more and is Ready.
async fn wait_all_restarted(ctx: &Ctx, ns: &str) -> anyhow::Result<()> {
    let pods = Api::<Pod>::namespaced(ctx.admin.clone(), ns);
    let before: std::collections::BTreeMap<String, i32> = pods
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .map(|p| (p.name_any(), restarts(p)))
        .collect();
    wait_until(
        "every shop pod to restart after the power cycle",
        WAIT,
        || async {
            let now = pods.list(&ListParams::default()).await?.items;
            let done = now.iter().all(|p| {
                crate::pod_is_ready(p) && before.get(&p.name_any()).is_none_or(|b| restarts(p) > *b)
            });
            Ok(done.then_some(()))
        },
    )
    .await
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |c| c.iter().map(|c| c.restart_count).sum())
}

/// The shop on PostgreSQL with two replicas of everything: replicas migrate an empty database
/// at once, each component has a PodDisruptionBudget, and rolling updates and pod deletions
/// under load fail no request and apply no order twice.
pub async fn replicated_on_postgres(ctx: &Ctx, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let postgres = Postgres::from_env()?;
    let ns = TestNamespace::create(&ctx.admin, "pg").await?.name;
    let databases = postgres.provision(&ctx.cluster, &ns, "shop-db")?;
    let manifest = r#"apiVersion: msa.dev/v1alpha1
kind: MicroserviceApp
metadata:
  name: shop
spec:
  database:
    secretRef: {name: shop-db}
  components:
    user: {replicas: 2}
    order:
      replicas: 2
      # The recoverer ends an order stranded by a crash within seconds here (defaults: 120 s
      # after it began, looked for every 30 s), so the crash step's audit waits for it.
      env:
        - {name: MSA_RECOVER_AFTER_MS, value: "10000"}
        - {name: MSA_RECOVERY_INTERVAL_MS, value: "2000"}
    product: {replicas: 2}
    gateway:
      replicas: 2
      service: {type: NodePort}
"#;
    ctx.cluster
        .kubectl_with_stdin(&["apply", "-n", &ns, "-f", "-"], Some(manifest))
        .ok()?;
    let started = Instant::now();
    wait_app_ready(&ctx.admin, &ns, "shop", WAIT).await?;
    println!(
        "shop on PostgreSQL, 2 replicas each: Ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Both replicas of each service started at once on an empty database.
    for (service, database) in &databases {
        let (applied, distinct) = postgres.migrations(database)?;
        ensure!(
            applied >= 1 && applied == distinct,
            "{service}: migrations applied {applied} times for {distinct} versions"
        );
    }
    let budgets = Api::<PodDisruptionBudget>::namespaced(ctx.admin.clone(), &ns)
        .list(&ListParams::default())
        .await?;
    ensure!(
        budgets.items.len() == 4,
        "expected a PodDisruptionBudget per component, got {:?}",
        budgets
            .items
            .iter()
            .map(|b| b.name_any())
            .collect::<Vec<_>>()
    );

    let gateway = ctx
        .node
        .node_port_url(&ctx.admin, &ns, "shop-gateway")
        .await?;
    wait_reachable(&gateway, WAIT).await?;
    let http = load::client(&Limits::default())?;
    let shop = load::seed(&http, &gateway, 3, 3, 1_000_000).await?;

    let started = Instant::now();
    let tally = rollouts_under_load(
        ctx,
        &ns,
        &shop,
        &["user", "order", "product", "gateway"],
        "PostgreSQL, 2 replicas",
        rows,
    )
    .await?;
    println!("rolling updates under load: {}", tally.summary());
    rows.push(row(
        "PostgreSQL, 2 replicas: rolling updates of all 4",
        &tally,
        started.elapsed(),
    ));
    ensure!(
        tally.failures.is_empty() && tally.unavailable() == 0,
        "rolling updates failed requests ({} × 503):\n{}",
        tally.unavailable(),
        show_failures(&tally)
    );
    audit_clean(
        &http,
        &shop,
        &tally.orders_answered,
        "after the rolling updates",
    )
    .await?;
    let mut created = tally.orders_answered;

    let started = Instant::now();
    let running = Load::start(http.clone(), shop.clone(), Limits::default());
    tokio::time::sleep(Duration::from_secs(3)).await;
    for component in ["user", "order", "product", "gateway"] {
        let victim = one_ready_pod(ctx, &ns, component).await?;
        // The default grace period: the pod drains as it would in any `kubectl delete pod`.
        ctx.cluster
            .kubectl(&["delete", "pod", &victim, "-n", &ns, "--timeout=120s"])
            .ok()?;
        wait_app_ready(&ctx.admin, &ns, "shop", WAIT).await?;
        println!(
            "deleted {victim}; replaced and Ready at {:.1} s of the load",
            running.elapsed().as_secs_f64()
        );
    }
    let tally = stop_without_failed_reads(
        running,
        "PostgreSQL, 2 replicas: delete one pod of each",
        started,
        rows,
    )
    .await?;
    created.extend(tally.orders_answered);
    audit_clean(&http, &shop, &created, "after the pod deletions").await?;
    created.extend(crash_an_order_pod(ctx, &ns, &http, &shop, rows).await?);
    audit_clean(&http, &shop, &created, "after the order service's crash").await?;
    // Every change of those scenarios (rollouts, deletions, a crash, two relays per service on
    // one database) is in its stream exactly once, in order per aggregate.
    let published = crate::events::audit_streams(ctx, &ns, "shop", &postgres, &databases).await?;
    ensure!(
        published.values().all(|n| *n > 0),
        "a service published nothing: {published:?}"
    );
    Ok(())
}

/// A crash, not a drain: the process of one order pod killed with SIGKILL under load, orders
/// in flight. The clients' retries (same `Idempotency-Key`) reach the other replica; what the
/// dead process left pending is ended by the recoverer. Returns the orders answered.
async fn crash_an_order_pod(
    ctx: &Ctx,
    ns: &str,
    http: &reqwest::Client,
    shop: &Shop,
    rows: &mut Vec<Row>,
) -> anyhow::Result<Vec<String>> {
    let started = Instant::now();
    let running = Load::start(http.clone(), shop.clone(), Limits::default());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let victim = one_ready_pod(ctx, ns, "order").await?;
    let pods = Api::<Pod>::namespaced(ctx.admin.clone(), ns);
    let restarted_before = restarts(&pods.get(&victim).await?);
    let killed_at = running.elapsed();
    ctx.node.kill_container(ns, &victim, "order")?;
    wait_until(
        "the killed order container to restart and be Ready",
        WAIT,
        || async {
            let pod = pods.get(&victim).await?;
            Ok((restarts(&pod) > restarted_before && crate::pod_is_ready(&pod)).then_some(()))
        },
    )
    .await?;
    println!(
        "killed the order process of {victim} (SIGKILL) at {:.1} s of the load; restarted and Ready at {:.1} s",
        killed_at.as_secs_f64(),
        running.elapsed().as_secs_f64()
    );
    let tally = stop_without_failed_reads(
        running,
        "PostgreSQL, 2 replicas: SIGKILL of an order pod",
        started,
        rows,
    )
    .await?;
    Ok(tally.orders_answered)
}

/// Ends a load 3 s after its last disruption, prints its summary and adds its row as
/// `scenario`; fails on any failed read (an idempotent request the gateway retries), and prints
/// failed order attempts (each order is sent again with its key, and the audit judges them).
async fn stop_without_failed_reads(
    running: Load,
    scenario: &str,
    started: Instant,
    rows: &mut Vec<Row>,
) -> anyhow::Result<Tally> {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tally = running.stop().await;
    println!("{scenario}: {}", tally.summary());
    rows.push(row(scenario, &tally, started.elapsed()));
    let (failed_reads, failed_orders) = tally.failed();
    ensure!(
        failed_reads == 0,
        "{scenario}: idempotent requests failed:\n{}",
        show_failures(&tally)
    );
    if failed_orders > 0 {
        println!(
            "{scenario}: order attempts that failed: {failed_orders}\n{}",
            show_failures(&tally)
        );
    }
    Ok(tally)
}

/// A Ready pod of `component` (one taking requests, so a kill meets work in flight).
async fn one_ready_pod(ctx: &Ctx, ns: &str, component: &str) -> anyhow::Result<String> {
    let pods = Api::<Pod>::namespaced(ctx.admin.clone(), ns)
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/instance=shop,app.kubernetes.io/name={component}"
        )))
        .await?;
    pods.items
        .iter()
        .find(|p| p.metadata.deletion_timestamp.is_none() && crate::pod_is_ready(p))
        .map(|p| p.name_any())
        .with_context(|| format!("no Ready {component} pod"))
}
