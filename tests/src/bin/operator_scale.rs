//! The operator at scale, measured the way Knative measures its controllers
//! (`make bench-operator-scale`, issue 28 §3): create N MicroserviceApps at a steady rate, read
//! each app's `Ready` `lastTransitionTime` against its `creationTimestamp`, and report what the
//! operator spent doing it — memory, CPU, API requests — then what it costs at rest and after a
//! restart.
//!
//! ```text
//! operator-scale [--apps N] [--rate PER_SECOND] [--quick] [--storage database|embedded]
//!                [--quiet-seconds S] [--limit-seconds S] [--concurrency C]
//! ```
//!
//! Phases, each bounded in time (the run fails with what it was waiting for past its bound):
//! 1. enough kwok nodes for 4 pods per app (each carries 2,000 pods); a fresh namespace whose
//!    pods go to kwok; the operator (release build from `MSA_E2E_OPERATOR`) watching it as the
//!    chart's ServiceAccount.
//! 2. N apps created at `--rate` per second; a watch records when each is first seen Ready.
//! 3. settle (the operator's write counter still for a few seconds), then a quiet window: writes
//!    and reconciles while nothing changes.
//! 4. restart: SIGKILL and start again; time until every app has been reconciled again, and the
//!    writes that cost.
//!
//! Figures are printed beside the issue's goals and never asserted: the run exits non-zero only
//! when an app is not Ready within the bound, the operator dies, a create fails or the restarted
//! operator does not catch up. `--quick` (50 apps, short windows) checks the harness (not yet part of `make test`).
//!
//! Only the loopback API server and the operator's loopback metrics port are contacted.

use msa_e2e::audit::WRITE_VERBS;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use msa_e2e::cluster::{INSTALL_NAMESPACE, RELEASE};
use msa_e2e::{Cluster, Operator, OperatorOptions, Placement, TestNamespace, wait_until};
use serde_json::{Value, json};

/// Pods per app with the benchmark's spec: one replica of each of the four components.
const PODS_PER_APP: usize = 4;
/// The kwok nodes' pod capacity (`tests/cluster/kwok.yaml`), used until a node reports its own.
const KWOK_NODE_PODS: usize = 2000;
/// The write verbs, as the audit log names them.
/// Every kind the operator caches, by the name the API lists it under.
const CACHED_KINDS: [&str; 11] = [
    "deployments",
    "statefulsets",
    "poddisruptionbudgets",
    "persistentvolumeclaims",
    "services",
    "serviceaccounts",
    "roles",
    "rolebindings",
    "networkpolicies",
    "configmaps",
    "endpointslices",
];

#[tokio::main]
async fn main() {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("operator-scale: {error:#}\n\n{}", Args::USAGE);
            std::process::exit(2);
        }
    };
    match run(&args).await {
        Ok(report) => {
            report.print();
            if !report.failures.is_empty() {
                for failure in &report.failures {
                    eprintln!("operator-scale: FAILED: {failure}");
                }
                std::process::exit(1);
            }
        }
        Err(error) => {
            eprintln!("operator-scale: FAILED: {error:#}");
            std::process::exit(1);
        }
    }
}

/// Command-line settings, validated before anything touches the cluster.
#[derive(Clone, Debug, PartialEq)]
struct Args {
    apps: usize,
    rate: f64,
    quick: bool,
    storage: Storage,
    quiet: Duration,
    /// Bound of the whole run; each wait also has its own.
    limit: Duration,
    concurrency: u16,
    /// The operator's `--debounce-ms`, when not its default.
    debounce_ms: Option<u64>,
}

/// How the apps keep their data, which decides their workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Storage {
    /// `spec.database` set: four Deployments, no claims (the default here; see [`app_spec`]).
    Database,
    /// No `spec.database`: three StatefulSets with a claim each, bound by the test cluster's
    /// provisioner, and the gateway's Deployment.
    Embedded,
}

impl Args {
    const USAGE: &str = "usage: operator-scale [--apps N (1-5000, default 100; --quick: 50)] \
        [--rate PER_SECOND (0.1-100, default 10)] [--quick] [--storage database|embedded] \
        [--quiet-seconds S (1-600, default 60; --quick: 10)] \
        [--limit-seconds S (60-3600, default 900; --quick: 300)] [--concurrency C (1-64, default 4)] \
        [--debounce-ms MS (0-5000, default the operator's)]";

    fn parse(args: impl IntoIterator<Item = String>) -> anyhow::Result<Self> {
        let mut args = args.into_iter();
        let (mut apps, mut quiet, mut limit) = (None, None, None);
        let mut parsed = Args {
            apps: 0,
            rate: 10.0,
            quick: false,
            storage: Storage::Database,
            quiet: Duration::ZERO,
            limit: Duration::ZERO,
            concurrency: 4,
            debounce_ms: None,
        };
        while let Some(flag) = args.next() {
            let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--quick" => parsed.quick = true,
                "--apps" => apps = Some(bounded(&flag, &value()?, 1, 5000)?),
                "--rate" => {
                    let rate: f64 = value()?
                        .parse()
                        .context("--rate takes a number of apps per second")?;
                    ensure!(
                        (0.1..=100.0).contains(&rate),
                        "--rate must be between 0.1 and 100 apps per second"
                    );
                    parsed.rate = rate;
                }
                "--storage" => {
                    parsed.storage = match value()?.as_str() {
                        "database" => Storage::Database,
                        "embedded" => Storage::Embedded,
                        other => bail!("--storage is database or embedded, not {other:?}"),
                    }
                }
                "--quiet-seconds" => quiet = Some(bounded(&flag, &value()?, 1, 600)?),
                "--limit-seconds" => limit = Some(bounded(&flag, &value()?, 60, 3600)?),
                "--concurrency" => {
                    parsed.concurrency = u16::try_from(bounded(&flag, &value()?, 1, 64)?)?
                }
                "--debounce-ms" => {
                    parsed.debounce_ms = Some(bounded(&flag, &value()?, 0, 5000)? as u64)
                }
                other => bail!("unknown argument {other:?}"),
            }
        }
        parsed.apps = apps.unwrap_or(if parsed.quick { 50 } else { 100 });
        parsed.quiet =
            Duration::from_secs(quiet.unwrap_or(if parsed.quick { 10 } else { 60 }) as u64);
        parsed.limit =
            Duration::from_secs(limit.unwrap_or(if parsed.quick { 300 } else { 900 }) as u64);
        Ok(parsed)
    }

    /// How long the operator's write counter must stand still to call the apps settled.
    fn settle_stillness(&self) -> Duration {
        Duration::from_secs(if self.quick { 3 } else { 5 })
    }

    /// Time after catching up in which a restarted operator's writes are still counted.
    fn after_restart(&self) -> Duration {
        Duration::from_secs(if self.quick { 5 } else { 15 })
    }

    /// How long no new app may be reconciled by a restarted operator before the rest are
    /// called missing.
    fn stall(&self) -> Duration {
        Duration::from_secs(if self.quick { 10 } else { 30 })
    }

    /// Bound on first create → all Ready: creating takes apps/rate; the rest is generous on
    /// purpose (three minutes, or half a second per app), since it is a failure, not a figure.
    fn ready_bound(&self) -> Duration {
        let creating = Duration::from_secs_f64(self.apps as f64 / self.rate);
        creating + Duration::from_secs(180).max(Duration::from_millis(500) * self.apps as u32)
    }
}

fn bounded(flag: &str, value: &str, min: usize, max: usize) -> anyhow::Result<usize> {
    let n: usize = value
        .parse()
        .with_context(|| format!("{flag} takes a whole number, not {value:?}"))?;
    ensure!(
        (min..=max).contains(&n),
        "{flag} must be between {min} and {max}"
    );
    Ok(n)
}

/// The spec every benchmark app gets; printed with the results.
fn app_spec(storage: Storage) -> Value {
    match storage {
        // Four Deployments of one replica (every component's default), no claims: kwok runs the
        // pods, and no volume has to be provisioned, so the figures are the operator's and the
        // control plane's rather than the test cluster's one-folder-per-claim provisioner's
        // (a client-go client at its default 5 requests/s, hack/provisioner).
        Storage::Database => json!({"database": {"secretRef": {"name": "scale-db"}}}),
        // The default app: user, order and product in StatefulSets on claims.
        Storage::Embedded => json!({}),
    }
}

fn describe_spec(storage: Storage) -> &'static str {
    match storage {
        Storage::Database => {
            "`spec.database.secretRef` set, everything else default: 4 Deployments of 1 replica, \
             4 Services, 4 NetworkPolicies, 3 ServiceAccounts, a Role and a RoleBinding per app; \
             no claims"
        }
        Storage::Embedded => {
            "the default spec (`spec: {}`): 3 StatefulSets on a claim each (provisioned by the \
             test cluster's hostPath provisioner) and the gateway's Deployment, 1 replica each"
        }
    }
}

fn app_resource() -> ApiResource {
    ApiResource {
        group: "msa.dev".into(),
        version: "v1alpha1".into(),
        api_version: "msa.dev/v1alpha1".into(),
        kind: "MicroserviceApp".into(),
        plural: "microserviceapps".into(),
    }
}

fn app_name(index: usize) -> String {
    format!("app-{index:04}")
}

async fn run(args: &Args) -> anyhow::Result<Report> {
    let deadline = Instant::now() + args.limit;
    let cluster = Cluster::from_env();
    progress(&format!(
        "{} apps at {}/s ({} storage), quiet window {} s, bound {} s",
        args.apps,
        args.rate,
        match args.storage {
            Storage::Database => "database",
            Storage::Embedded => "embedded",
        },
        args.quiet.as_secs(),
        args.limit.as_secs()
    ));
    progress("installing the chart");
    let chart = cluster.clone();
    tokio::task::spawn_blocking(move || chart.install_chart()).await??;
    let admin = cluster.admin().await?;
    ensure_kwok_capacity(&admin, args.apps * PODS_PER_APP, deadline).await?;
    let ns = TestNamespace::create_on(&admin, "scale", Placement::Kwok)
        .await?
        .name;
    if args.storage == Storage::Database {
        create_database_secret(&admin, &ns).await?;
    }
    let token = cluster.service_account_kubeconfig(INSTALL_NAMESPACE, RELEASE)?;
    let mut options = OperatorOptions::new(token, format!("{ns}-scale"))
        .watching(&ns)
        .concurrency(args.concurrency);
    if let Some(debounce) = args.debounce_ms {
        options = options.env("MSA_DEBOUNCE_MS", &debounce.to_string());
    }
    let audit = Audit::new(cluster.audit_log.clone());

    let mut operator = start_operator(&cluster, &options).await?;
    let idle = ProcessSample::of(operator.pid())?;
    let mut report = Report {
        args: args.clone(),
        namespace: ns.clone(),
        idle_rss_kib: idle.rss_kib,
        ..Report::default()
    };

    // 2. Create at a steady rate; a watch notes when each app is first seen Ready.
    let apps = Api::<DynamicObject>::namespaced_with(admin.clone(), &ns, &app_resource());
    let ready_seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = tokio::spawn(record_ready(apps.clone(), ready_seen.clone()));
    let workloads_seen: Arc<Mutex<HashMap<String, Workloads>>> = Arc::default();
    let workload_watch = tokio::spawn(record_workloads(
        Api::namespaced(admin.clone(), &ns),
        workloads_seen.clone(),
    ));
    let converge_mark = audit.mark()?;
    let control_plane_before = ControlPlaneCpu::sample();
    let converge_started = Instant::now();
    let created = create_apps(&apps, args, &mut operator).await?;
    report.creating = created.took;
    progress(&format!(
        "created {} apps in {:.1} s; waiting for Ready",
        args.apps,
        created.took.as_secs_f64()
    ));
    let ready_bound = created.first + args.ready_bound();
    let all_ready = wait_all_ready(
        &ready_seen,
        args.apps,
        ready_bound.min(deadline),
        &mut operator,
    )
    .await;
    watch.abort();
    workload_watch.abort();
    let all_ready = match all_ready {
        Ok(at) => at,
        Err(error) => {
            report.print_partial(ready_seen.lock().expect("not poisoned").len());
            return Err(error);
        }
    };
    report.all_ready_watched = all_ready.duration_since(created.first);
    report.watched = latencies_watched(&created.sent, &ready_seen.lock().expect("not poisoned"));
    report.phases = Phases::of(
        &created.sent,
        &workloads_seen.lock().expect("not poisoned"),
        &ready_seen.lock().expect("not poisoned"),
    );
    report.control_plane = ControlPlaneCpu::sample().since(&control_plane_before);
    report.control_plane_wall = converge_started.elapsed();
    let listed = apps.list(&ListParams::default()).await?;
    report.api = latencies_from_timestamps(&listed.items)?;

    // 3. Settle, then the quiet window.
    let settling = Instant::now();
    report.settled_after = match settle(&operator, args.settle_stillness(), deadline).await {
        Ok(after) => after,
        Err(error) => {
            report.failures.push(format!("{error:#}"));
            settling.elapsed()
        }
    };
    let converge_end = audit.mark()?;
    let busy = ProcessSample::of(operator.pid())?;
    report.converge_requests = audit.requests(converge_mark, converge_end)?;
    report.converge_cpu = busy.cpu - idle.cpu;
    report.peak_rss_kib = busy.peak_rss_kib;
    report.reconciles = operator.metric("msa_operator_reconciles_total", "").await?;
    progress(&format!("{} s of quiet", args.quiet.as_secs()));
    ensure_before(deadline, args.quiet, "the quiet window")?;
    let reconciles_before = report.reconciles;
    tokio::time::sleep(args.quiet).await;
    ensure_alive(&mut operator)?;
    let quiet_end = audit.mark()?;
    let rested = ProcessSample::of(operator.pid())?;
    report.quiet_requests = audit.requests(converge_end, quiet_end)?;
    report.quiet_reconciles =
        operator.metric("msa_operator_reconciles_total", "").await? - reconciles_before;
    report.quiet_cpu = rested.cpu - busy.cpu;
    report.settled_rss_kib = rested.rss_kib;
    report.caches = cache_contents(&admin, &ns).await?;

    // 4. Restart: a new process (its own log, which names each app it reconciles) must
    // reconcile every app again, and should need to write nothing.
    progress("restarting the operator (SIGKILL, then a new process)");
    operator.kill_hard();
    drop(operator);
    let restart_mark = audit.mark()?;
    let restarted_at = k8s_openapi::jiff::Timestamp::now();
    let mut restart_options = options
        .clone()
        .env("RUST_LOG", "info,msa_operator::controller=debug");
    restart_options.identity = format!("{ns}-scale-restarted");
    let mut operator = Operator::start(&cluster, &restart_options)?;
    let bound = Duration::from_secs(180).min(deadline.saturating_duration_since(Instant::now()));
    let names: Vec<String> = (0..args.apps).map(app_name).collect();
    let catch_up = wait_caught_up(&mut operator, &names, restarted_at, args.stall(), bound).await?;
    if !catch_up.missing.is_empty() {
        report.failures.push(format!(
            "after the restart {} of {} apps were never reconciled within {:?} ({}): a change \
             to them would not be acted on",
            catch_up.missing.len(),
            args.apps,
            catch_up.waited,
            catch_up
                .missing
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    report.catch_up = Some(catch_up);
    tokio::time::sleep(args.after_restart()).await;
    ensure_alive(&mut operator)?;
    let after = ProcessSample::of(operator.pid())?;
    report.restart_requests = audit.requests(restart_mark, audit.mark()?)?;
    report.restart_reconciles = operator.metric("msa_operator_reconciles_total", "").await?;
    report.restart_cpu = after.cpu;
    report.restart_peak_rss_kib = after.peak_rss_kib;
    report.restart_rss_kib = after.rss_kib;
    drop(operator);
    Ok(report)
}

/// How a restarted operator caught up.
#[derive(Clone, Debug, Default, PartialEq)]
struct CatchUp {
    /// From the restart to the first reconcile of the last app to be reconciled.
    last_first_reconcile: Duration,
    reconciled: usize,
    /// Apps never reconciled before the wait ended.
    missing: Vec<String>,
    waited: Duration,
}

/// Waits until the restarted operator's log shows a reconcile of every app, or until no new app
/// has been reconciled for `stall` (or `bound` has passed): then the rest are reported missing.
async fn wait_caught_up(
    operator: &mut Operator,
    names: &[String],
    restarted_at: k8s_openapi::jiff::Timestamp,
    stall: Duration,
    bound: Duration,
) -> anyhow::Result<CatchUp> {
    let started = Instant::now();
    let (mut seen_count, mut last_progress) = (0, Instant::now());
    loop {
        ensure_alive(operator)?;
        let seen = reconciled_apps(&operator.log_text());
        let missing: Vec<String> = names
            .iter()
            .filter(|name| !seen.contains_key(*name))
            .cloned()
            .collect();
        if seen.len() != seen_count {
            seen_count = seen.len();
            last_progress = Instant::now();
        }
        let stalled = last_progress.elapsed() >= stall || started.elapsed() >= bound;
        if missing.is_empty() || stalled {
            let last = names
                .iter()
                .filter_map(|name| seen.get(name))
                .max()
                .map(|last| last.duration_since(restarted_at))
                .and_then(|took| Duration::try_from(took).ok())
                .unwrap_or_default();
            return Ok(CatchUp {
                last_first_reconcile: last,
                reconciled: names.len() - missing.len(),
                missing,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The apps an operator's JSON log says it reconciled (successfully or not), each with the
/// time of its first reconcile: `reconciled` lines (debug, `msa_operator::controller`) and
/// `reconcile failed` warnings.
fn reconciled_apps(log: &str) -> HashMap<String, k8s_openapi::jiff::Timestamp> {
    let mut seen = HashMap::new();
    for line in log.lines() {
        let Ok(entry) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let fields = &entry["fields"];
        if !matches!(
            fields["message"].as_str(),
            Some("reconciled" | "reconcile failed")
        ) {
            continue;
        }
        let (Some(app), Some(at)) = (
            fields["app"].as_str(),
            entry["timestamp"]
                .as_str()
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok()),
        ) else {
            continue;
        };
        seen.entry(app.to_owned()).or_insert(at);
    }
    seen
}

/// Starts the operator and waits for its metrics to answer (its watches are then starting).
async fn start_operator(cluster: &Cluster, options: &OperatorOptions) -> anyhow::Result<Operator> {
    let mut operator = Operator::start(cluster, options)?;
    let started = Instant::now();
    while operator.metrics().await.is_err() {
        ensure_alive(&mut operator)?;
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the operator's metrics did not answer within 30 s; its log: {}",
            operator.log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(operator)
}

fn ensure_alive(operator: &mut Operator) -> anyhow::Result<()> {
    if let Some(status) = operator.exited() {
        let log = operator.log_text();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        bail!(
            "the operator exited ({status}); last lines of {}:\n{}",
            operator.log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(())
}

fn ensure_before(deadline: Instant, needed: Duration, what: &str) -> anyhow::Result<()> {
    ensure!(
        Instant::now() + needed <= deadline,
        "no time left for {what} within --limit-seconds"
    );
    Ok(())
}

/// Adds kwok nodes (copies of `kwok-node-0`: same labels, taints and pod range) until the kwok
/// nodes can hold `pods` more pods, and waits for them to be Ready.
async fn ensure_kwok_capacity(
    admin: &kube::Client,
    pods: usize,
    deadline: Instant,
) -> anyhow::Result<()> {
    let nodes = Api::<Node>::all(admin.clone());
    let kwok = nodes
        .list(&ListParams::default().labels("type=kwok"))
        .await?;
    let template = kwok
        .items
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some("kwok-node-0"))
        .context("no node kwok-node-0: is this the test cluster (tests/cluster/cluster.sh)?")?
        .clone();
    let per_node = pod_capacity(&template).unwrap_or(KWOK_NODE_PODS);
    let on_kwok = Api::<Pod>::all(admin.clone())
        .list_metadata(&ListParams::default())
        .await?
        .items
        .len();
    let wanted = nodes_for(pods + on_kwok, per_node);
    let have = kwok.items.len();
    if wanted <= have {
        return Ok(());
    }
    progress(&format!(
        "adding {} kwok node(s) for {pods} pods ({per_node} each)",
        wanted - have
    ));
    let mut added = Vec::new();
    for index in have..wanted {
        let name = format!("kwok-scale-{index}");
        let mut labels = template.metadata.labels.clone().unwrap_or_default();
        labels.insert("kubernetes.io/hostname".into(), name.clone());
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                annotations: template.metadata.annotations.clone(),
                ..Default::default()
            },
            spec: template.spec.clone().map(|mut spec| {
                spec.provider_id = None;
                spec.unschedulable = None;
                spec
            }),
            status: None,
        };
        nodes.create(&PostParams::default(), &node).await?;
        added.push(name);
    }
    let bound = Duration::from_secs(60).min(deadline.saturating_duration_since(Instant::now()));
    wait_until("the added kwok nodes to be Ready", bound, || async {
        for name in &added {
            let node = nodes.get(name).await?;
            let ready = node
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if !ready {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })
    .await
}

fn pod_capacity(node: &Node) -> Option<usize> {
    node.status
        .as_ref()?
        .allocatable
        .as_ref()?
        .get("pods")?
        .0
        .parse()
        .ok()
}

/// Nodes needed for `pods` pods at `per_node` each (at least one).
fn nodes_for(pods: usize, per_node: usize) -> usize {
    pods.div_ceil(per_node.max(1)).max(1)
}

/// The Secret `spec.database.secretRef` names. Nothing connects to it: kwok runs no container.
async fn create_database_secret(admin: &kube::Client, ns: &str) -> anyhow::Result<()> {
    let urls = ["user", "order", "product"].map(|service| {
        (
            service.to_owned(),
            format!("postgres://{service}:unused@198.18.250.1:26432/{service}"),
        )
    });
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("scale-db".into()),
            ..Default::default()
        },
        string_data: Some(urls.into_iter().collect()),
        ..Default::default()
    };
    Api::<Secret>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await?;
    Ok(())
}

struct Created {
    first: Instant,
    took: Duration,
    /// When each create was sent.
    sent: HashMap<String, Instant>,
}

/// Creates the apps at `args.rate` per second, each create in its own task so a slow answer
/// does not slow the rate; fails on the first refused create.
async fn create_apps(
    apps: &Api<DynamicObject>,
    args: &Args,
    operator: &mut Operator,
) -> anyhow::Result<Created> {
    let spec = app_spec(args.storage);
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut ticks = tokio::time::interval(period);
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = HashMap::new();
    let first = Instant::now();
    for index in 0..args.apps {
        ticks.tick().await;
        if index % 100 == 0 {
            ensure_alive(operator)?;
        }
        let name = app_name(index);
        let object: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "msa.dev/v1alpha1",
            "kind": "MicroserviceApp",
            "metadata": {"name": name, "labels": {"msa.dev/bench": "scale"}},
            "spec": spec,
        }))?;
        sent.insert(name.clone(), Instant::now());
        let apps = apps.clone();
        tasks.spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(30),
                apps.create(&PostParams::default(), &object),
            )
            .await
            .with_context(|| format!("creating {name} took over 30 s"))?
            .with_context(|| format!("creating {name}"))
            .map(drop)
        });
        while let Some(done) = tasks.try_join_next() {
            done??;
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(Created {
        first,
        took: first.elapsed(),
        sent,
    })
}

/// What a watch of an app's Deployments saw, to tell the operator's time from the cluster's.
#[derive(Default)]
struct Workloads {
    /// When the first of them was seen (the operator's first apply of a workload).
    first: Option<Instant>,
    /// Those seen Available with every replica updated.
    available: std::collections::BTreeSet<String>,
    /// When the last of the app's four became available.
    all_available: Option<Instant>,
}

/// Watches the namespace's Deployments and notes, per app (its instance label), when its first
/// one appears and when all four are available.
async fn record_workloads(
    deployments: Api<Deployment>,
    seen: Arc<Mutex<HashMap<String, Workloads>>>,
) {
    let mut events = watcher(deployments, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = events.next().await {
        let Ok(deployment) = event else { continue };
        let Some(app) = deployment
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app.kubernetes.io/instance"))
            .cloned()
        else {
            continue;
        };
        let now = Instant::now();
        let mut seen = seen.lock().expect("not poisoned");
        let entry = seen.entry(app).or_default();
        entry.first.get_or_insert(now);
        let desired = deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        let status = deployment.status.as_ref();
        let available = status.is_some_and(|s| {
            s.observed_generation >= deployment.metadata.generation
                && s.updated_replicas.unwrap_or(0) >= desired
                && s.available_replicas.unwrap_or(0) >= desired
        });
        if available && let Some(name) = deployment.metadata.name.clone() {
            entry.available.insert(name);
            if entry.available.len() >= PODS_PER_APP {
                entry.all_available.get_or_insert(now);
            }
        }
    }
}

/// Create → Ready cut in three, per app, as the watches saw it: until the operator applied
/// the first workload; until Kubernetes (controllers, scheduler, kwok) made all four available;
/// until the operator reported the app Ready.
#[derive(Clone, Debug, Default)]
struct Phases {
    to_first_apply: Quantiles,
    to_available: Quantiles,
    to_ready: Quantiles,
}

impl Phases {
    fn of(
        sent: &HashMap<String, Instant>,
        workloads: &HashMap<String, Workloads>,
        ready: &HashMap<String, Instant>,
    ) -> Self {
        let mut phases = (Vec::new(), Vec::new(), Vec::new());
        for (name, sent) in sent {
            let Some(w) = workloads.get(name) else {
                continue;
            };
            let (Some(first), Some(available), Some(ready)) =
                (w.first, w.all_available, ready.get(name))
            else {
                continue;
            };
            phases.0.push(first.saturating_duration_since(*sent));
            phases.1.push(available.saturating_duration_since(first));
            phases.2.push(ready.saturating_duration_since(available));
        }
        Phases {
            to_first_apply: Quantiles::of(phases.0),
            to_available: Quantiles::of(phases.1),
            to_ready: Quantiles::of(phases.2),
        }
    }
}

/// CPU time of the control plane's processes on this machine, by command name.
#[derive(Clone, Debug, Default)]
struct ControlPlaneCpu(BTreeMap<String, Duration>);

impl ControlPlaneCpu {
    const NAMES: [&str; 5] = [
        "kube-apiserver",
        "etcd",
        "kube-controller",
        "kube-scheduler",
        "kwok",
    ];

    fn sample() -> Self {
        let mut cpu = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return ControlPlaneCpu(cpu);
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
                continue;
            };
            let comm = comm.trim();
            let Some(name) = Self::NAMES.iter().find(|n| comm.starts_with(**n)) else {
                continue;
            };
            let Some(ticks) = std::fs::read_to_string(path.join("stat"))
                .ok()
                .and_then(|stat| cpu_ticks(&stat))
            else {
                continue;
            };
            *cpu.entry((*name).to_owned()).or_default() +=
                Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second() as f64);
        }
        ControlPlaneCpu(cpu)
    }

    fn since(&self, before: &ControlPlaneCpu) -> Self {
        ControlPlaneCpu(
            self.0
                .iter()
                .map(|(name, now)| {
                    let then = before.0.get(name).copied().unwrap_or_default();
                    (name.clone(), now.saturating_sub(then))
                })
                .collect(),
        )
    }

    fn total(&self) -> Duration {
        self.0.values().sum()
    }
}

/// Watches the apps and notes the first moment each is seen with `Ready=True`.
async fn record_ready(apps: Api<DynamicObject>, seen: Arc<Mutex<HashMap<String, Instant>>>) {
    let mut events = watcher(apps, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = events.next().await {
        let Ok(app) = event else { continue };
        if is_ready(&app.data)
            && let Some(name) = app.metadata.name
        {
            seen.lock()
                .expect("not poisoned")
                .entry(name)
                .or_insert_with(Instant::now);
        }
    }
}

fn ready_condition(app: &Value) -> Option<&Value> {
    app["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

fn is_ready(app: &Value) -> bool {
    ready_condition(app).is_some_and(|c| c["status"] == "True")
}

/// Waits until `expected` apps were seen Ready; fails past `until` or when the operator dies.
async fn wait_all_ready(
    seen: &Mutex<HashMap<String, Instant>>,
    expected: usize,
    until: Instant,
    operator: &mut Operator,
) -> anyhow::Result<Instant> {
    let mut shown = 0;
    loop {
        let (count, last) = {
            let seen = seen.lock().expect("not poisoned");
            (seen.len(), seen.values().max().copied())
        };
        if count >= shown + expected.div_ceil(4) || (count == expected && shown < expected) {
            shown = count;
            progress(&format!("  {count}/{expected} Ready"));
        }
        if count >= expected {
            return Ok(last.unwrap_or_else(Instant::now));
        }
        ensure_alive(operator)?;
        ensure!(
            Instant::now() < until,
            "only {count}/{expected} apps Ready within the bound; the operator's log says why"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the operator's write counter has not moved for `stillness`; returns how long
/// that took (bounded by two minutes and the run's deadline).
async fn settle(
    operator: &Operator,
    stillness: Duration,
    deadline: Instant,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let bound = Duration::from_secs(120).min(deadline.saturating_duration_since(start));
    let mut last = operator.metric("msa_operator_api_writes_total", "").await?;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let writes = operator.metric("msa_operator_api_writes_total", "").await?;
        if writes != last {
            last = writes;
            since = Instant::now();
        } else if since.elapsed() >= stillness {
            return Ok(since.duration_since(start));
        }
        ensure!(
            start.elapsed() < bound,
            "the operator kept writing for {bound:?} after every app was Ready"
        );
    }
}

/// Quantiles of a set of durations (nearest rank).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Quantiles {
    p50: Duration,
    p95: Duration,
    max: Duration,
    count: usize,
}

impl Quantiles {
    fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let rank = |p: f64| -> Duration {
            if samples.is_empty() {
                return Duration::ZERO;
            }
            let index = ((p * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            samples[index - 1]
        };
        Quantiles {
            p50: rank(0.50),
            p95: rank(0.95),
            max: rank(1.0),
            count: samples.len(),
        }
    }
}

fn latencies_watched(
    sent: &HashMap<String, Instant>,
    ready: &HashMap<String, Instant>,
) -> Quantiles {
    Quantiles::of(
        sent.iter()
            .filter_map(|(name, at)| Some(ready.get(name)?.saturating_duration_since(*at)))
            .collect(),
    )
}

/// What the API says, the way Knative measures it: Ready's `lastTransitionTime` minus
/// `creationTimestamp` (both in whole seconds), and the span from the first creation to the
/// last transition.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct ApiLatencies {
    each: Quantiles,
    all: Duration,
}

fn latencies_from_timestamps(apps: &[DynamicObject]) -> anyhow::Result<ApiLatencies> {
    let mut each = Vec::new();
    let mut first_created: Option<k8s_openapi::jiff::Timestamp> = None;
    let mut last_ready: Option<k8s_openapi::jiff::Timestamp> = None;
    for app in apps {
        let name = app.metadata.name.as_deref().unwrap_or("?");
        let created = app
            .metadata
            .creation_timestamp
            .as_ref()
            .with_context(|| format!("{name} has no creationTimestamp"))?
            .0;
        let ready: k8s_openapi::jiff::Timestamp = ready_condition(&app.data)
            .filter(|c| c["status"] == "True")
            .and_then(|c| c["lastTransitionTime"].as_str())
            .with_context(|| format!("{name} is not Ready in the API"))?
            .parse()
            .with_context(|| format!("{name}'s Ready lastTransitionTime"))?;
        let took = ready.duration_since(created);
        each.push(Duration::try_from(took).unwrap_or(Duration::ZERO));
        first_created = Some(first_created.map_or(created, |first| created.min(first)));
        last_ready = Some(last_ready.map_or(ready, |last| ready.max(last)));
    }
    let all = match (first_created, last_ready) {
        (Some(first), Some(last)) => {
            Duration::try_from(last.duration_since(first)).unwrap_or(Duration::ZERO)
        }
        _ => Duration::ZERO,
    };
    Ok(ApiLatencies {
        each: Quantiles::of(each),
        all,
    })
}

/// Memory and CPU of a process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
struct ProcessSample {
    rss_kib: u64,
    peak_rss_kib: u64,
    /// User + system CPU time so far.
    cpu: Duration,
}

impl ProcessSample {
    fn of(pid: u32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let ticks = cpu_ticks(&stat).context("cannot read utime and stime in /proc/<pid>/stat")?;
        Ok(ProcessSample {
            rss_kib: status_kib(&status, "VmRSS").context("no VmRSS in /proc/<pid>/status")?,
            peak_rss_kib: status_kib(&status, "VmHWM").context("no VmHWM in /proc/<pid>/status")?,
            cpu: Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second() as f64),
        })
    }
}

/// A `kB` field of /proc/<pid>/status.
fn status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// utime + stime (fields 14 and 15) of /proc/<pid>/stat, in clock ticks. The command name (field
/// 2) may contain spaces and parentheses, so fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Cores this process may run on.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn clock_ticks_per_second() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|ticks| *ticks > 0)
            .unwrap_or(100)
    })
}

/// The API server's audit log; the cluster logs every request of the operator's
/// ServiceAccount (reads and watches too) and everyone's writes (`tests/cluster/cluster.sh`).
struct Audit {
    path: PathBuf,
    user: String,
}

/// The operator's requests in a window of the audit log.
#[derive(Clone, Debug, Default, PartialEq)]
struct Requests {
    by_verb: BTreeMap<String, usize>,
    /// Writes by `resource[/subresource]`.
    writes_by_resource: BTreeMap<String, usize>,
    /// Each write, for printing when there should be none.
    writes: Vec<String>,
}

impl Requests {
    fn total(&self) -> usize {
        self.by_verb.values().sum()
    }

    fn write_count(&self) -> usize {
        self.writes.len()
    }

    /// Counts one audit event if it is a request of `user`: every verb once — a watch when
    /// it starts, anything else when it completes.
    fn count(&mut self, event: &Value, user: &str) {
        if event["user"]["username"] != user {
            return;
        }
        let Some(verb) = event["verb"].as_str() else {
            return;
        };
        let counted_stage = if verb == "watch" {
            "ResponseStarted"
        } else {
            "ResponseComplete"
        };
        if event["stage"] != counted_stage {
            return;
        }
        *self.by_verb.entry(verb.to_owned()).or_default() += 1;
        if WRITE_VERBS.contains(&verb) {
            let object = &event["objectRef"];
            let resource = object["resource"].as_str().unwrap_or("?");
            let key = match object["subresource"].as_str() {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.to_owned(),
            };
            *self.writes_by_resource.entry(key.clone()).or_default() += 1;
            self.writes.push(format!(
                "{verb} {key} {}/{} → {}",
                object["namespace"].as_str().unwrap_or("-"),
                object["name"].as_str().unwrap_or("-"),
                event["responseStatus"]["code"]
            ));
        }
    }

    fn verbs(&self) -> String {
        join_counts(&self.by_verb)
    }
}

fn join_counts(counts: &BTreeMap<String, usize>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(key, n)| format!("{key} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Audit {
    fn new(path: PathBuf) -> Self {
        Audit {
            path,
            user: format!("system:serviceaccount:{INSTALL_NAMESPACE}:{RELEASE}"),
        }
    }

    /// The current end of the log.
    fn mark(&self) -> anyhow::Result<u64> {
        Ok(std::fs::metadata(&self.path)?.len())
    }

    /// The operator's requests logged between two marks.
    fn requests(&self, from: u64, to: u64) -> anyhow::Result<Requests> {
        let text = read_range(&self.path, from, to)?;
        let mut requests = Requests::default();
        for line in text.lines() {
            // The API server writes one event per line; a line cut at a mark is skipped.
            if let Ok(event) = serde_json::from_str::<Value>(line) {
                requests.count(&event, &self.user);
            }
        }
        Ok(requests)
    }
}

fn read_range(path: &Path, from: u64, to: u64) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(to.saturating_sub(from)).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// What the operator's caches hold, estimated from the API: the objects of each cached kind
/// that carry the operator's label, and their JSON size with and without `managedFields`.
#[derive(Clone, Debug, Default)]
struct CacheKind {
    kind: String,
    objects: usize,
    json_bytes: usize,
    without_managed_fields: usize,
}

async fn cache_contents(admin: &kube::Client, ns: &str) -> anyhow::Result<Vec<CacheKind>> {
    let managed = ListParams::default().labels(&msa_operator::labels::managed_selector());
    let mut kinds = Vec::new();
    for plural in CACHED_KINDS {
        let resource = cached_kind_resource(plural)?;
        let api = Api::<DynamicObject>::namespaced_with(admin.clone(), ns, &resource);
        kinds.push(measure(plural, api.list(&managed).await?.items)?);
    }
    let apps = Api::<DynamicObject>::namespaced_with(admin.clone(), ns, &app_resource());
    kinds.push(measure(
        "microserviceapps",
        apps.list(&ListParams::default()).await?.items,
    )?);
    Ok(kinds)
}

fn cached_kind_resource(plural: &str) -> anyhow::Result<ApiResource> {
    Ok(match plural {
        "deployments" => ApiResource::erase::<Deployment>(&()),
        "statefulsets" => ApiResource::erase::<StatefulSet>(&()),
        "poddisruptionbudgets" => ApiResource::erase::<PodDisruptionBudget>(&()),
        "persistentvolumeclaims" => ApiResource::erase::<PersistentVolumeClaim>(&()),
        "services" => ApiResource::erase::<Service>(&()),
        "serviceaccounts" => ApiResource::erase::<ServiceAccount>(&()),
        "roles" => ApiResource::erase::<Role>(&()),
        "rolebindings" => ApiResource::erase::<RoleBinding>(&()),
        "networkpolicies" => ApiResource::erase::<NetworkPolicy>(&()),
        "configmaps" => ApiResource::erase::<ConfigMap>(&()),
        "endpointslices" => ApiResource::erase::<EndpointSlice>(&()),
        other => bail!("no cached kind {other}"),
    })
}

fn measure(kind: &str, items: Vec<DynamicObject>) -> anyhow::Result<CacheKind> {
    let mut measured = CacheKind {
        kind: kind.to_owned(),
        objects: items.len(),
        ..CacheKind::default()
    };
    for mut item in items {
        measured.json_bytes += serde_json::to_vec(&item)?.len();
        item.metadata.managed_fields = None;
        measured.without_managed_fields += serde_json::to_vec(&item)?.len();
    }
    Ok(measured)
}

/// Everything one run measured.
#[derive(Default)]
struct Report {
    args: Args,
    namespace: String,
    creating: Duration,
    watched: Quantiles,
    api: ApiLatencies,
    all_ready_watched: Duration,
    phases: Phases,
    /// The control plane's CPU from the first create until every app was Ready, and that time.
    control_plane: ControlPlaneCpu,
    control_plane_wall: Duration,
    settled_after: Duration,
    idle_rss_kib: u64,
    peak_rss_kib: u64,
    settled_rss_kib: u64,
    converge_cpu: Duration,
    quiet_cpu: Duration,
    reconciles: f64,
    quiet_reconciles: f64,
    converge_requests: Requests,
    quiet_requests: Requests,
    caches: Vec<CacheKind>,
    catch_up: Option<CatchUp>,
    restart_requests: Requests,
    restart_reconciles: f64,
    restart_cpu: Duration,
    restart_peak_rss_kib: u64,
    restart_rss_kib: u64,
    /// What makes the run fail (printed after the table).
    failures: Vec<String>,
}

impl Default for Args {
    fn default() -> Self {
        Args::parse(Vec::new()).expect("the defaults are valid")
    }
}

impl Report {
    fn print_partial(&self, ready: usize) {
        println!();
        println!(
            "operator-scale: {ready}/{} apps Ready within the bound (namespace {}, created in {:.1} s)",
            self.args.apps,
            self.namespace,
            self.creating.as_secs_f64()
        );
    }

    fn print(&self) {
        let n = self.args.apps;
        let mib = |kib: u64| kib as f64 / 1024.0;
        let secs = |d: Duration| d.as_secs_f64();
        let q = |q: &Quantiles| {
            format!(
                "{:.2} / {:.2} / {:.2} s",
                secs(q.p50),
                secs(q.p95),
                secs(q.max)
            )
        };
        let per_app = |kib: u64| {
            format!(
                "{:.1} KiB per app above idle, {:.1} KiB per app in all",
                kib.saturating_sub(self.idle_rss_kib) as f64 / n as f64,
                kib as f64 / n as f64
            )
        };
        println!();
        println!(
            "## msa-operator at {n} apps ({}, created at {}/s{})",
            msa_e2e::operator::binary().display(),
            self.args.rate,
            if self.args.quick { ", quick mode" } else { "" }
        );
        println!();
        println!("App spec: {}.", describe_spec(self.args.storage));
        println!(
            "Operator: `--watch-namespace {}`, `--concurrency {}`, `--debounce-ms {}`, as the chart's ServiceAccount.",
            self.namespace,
            self.args.concurrency,
            self.args
                .debounce_ms
                .map_or_else(|| "(default)".to_owned(), |d| d.to_string())
        );
        println!();
        println!("| figure | value | goal |");
        println!("| --- | --- | --- |");
        println!(
            "| create → Ready p50 / p95 / max (API: Ready `lastTransitionTime` − `creationTimestamp`, whole seconds) | {} | p95 ≤ 5 s |",
            q(&self.api.each)
        );
        println!(
            "| create → Ready p50 / p95 / max (sent → first seen Ready by a watch) | {} | |",
            q(&self.watched)
        );
        println!(
            "| first create → all Ready (API / watched) | {:.0} s / {:.1} s (creating took {:.1} s) | ≤ 120 s |",
            secs(self.api.all),
            secs(self.all_ready_watched),
            secs(self.creating)
        );
        println!(
            "| … of which: create → the operator's first workload seen | {} | |",
            q(&self.phases.to_first_apply)
        );
        println!(
            "| … of which: first workload → all four Available (Kubernetes: controllers, scheduler, kwok) | {} | |",
            q(&self.phases.to_available)
        );
        println!(
            "| … of which: all four Available → Ready seen (the operator's status) | {} | |",
            q(&self.phases.to_ready)
        );
        let wall = secs(self.control_plane_wall);
        println!(
            "| control-plane CPU, first create → all Ready ({wall:.1} s; {:.1} s of CPU available on {} cores) | {:.1} s: {} | |",
            wall * cores() as f64,
            cores(),
            secs(self.control_plane.total()),
            self.control_plane
                .0
                .iter()
                .map(|(name, cpu)| format!("{name} {:.1} s", secs(*cpu)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "| RSS idle / peak / settled | {:.1} / {:.1} / {:.1} MiB | settled ≤ 100 MiB |",
            mib(self.idle_rss_kib),
            mib(self.peak_rss_kib),
            mib(self.settled_rss_kib)
        );
        println!(
            "| RSS per app, settled | {} | ≤ 0.1 MiB (100 MiB at 1,000) |",
            per_app(self.settled_rss_kib)
        );
        println!(
            "| operator CPU to converge (start of creates → settled, {:.1} s after all Ready) | {:.2} s ({:.1} ms per app) | |",
            secs(self.settled_after),
            secs(self.converge_cpu),
            secs(self.converge_cpu) * 1000.0 / n as f64
        );
        println!(
            "| reconciles to converge | {} ({:.1} per app) | |",
            self.reconciles,
            self.reconciles / n as f64
        );
        println!(
            "| API requests to converge, by verb (audit) | {} = {:.1} per app: {} | |",
            self.converge_requests.total(),
            self.converge_requests.total() as f64 / n as f64,
            self.converge_requests.verbs()
        );
        println!(
            "| writes to converge, by resource (audit) | {} = {:.1} per app: {} | |",
            self.converge_requests.write_count(),
            self.converge_requests.write_count() as f64 / n as f64,
            join_counts(&self.converge_requests.writes_by_resource)
        );
        println!(
            "| writes in {} s of quiet (audit) | {} (requests: {}; {} reconciles; CPU {:.2} s) | 0 |",
            self.args.quiet.as_secs(),
            self.quiet_requests.write_count(),
            self.quiet_requests.verbs(),
            self.quiet_reconciles,
            secs(self.quiet_cpu)
        );
        let catch_up = self.catch_up.clone().unwrap_or_default();
        println!(
            "| restart (SIGKILL, new process) → every app reconciled again | {} | |",
            if catch_up.missing.is_empty() {
                format!("{:.1} s", secs(catch_up.last_first_reconcile))
            } else {
                format!(
                    "**never: {} of {n} apps** (last at {:.1} s; waited {:.0} s)",
                    catch_up.reconciled,
                    secs(catch_up.last_first_reconcile),
                    secs(catch_up.waited)
                )
            }
        );
        println!(
            "| restart: writes until {} s after catching up (audit) | {} | 0 |",
            self.args.after_restart().as_secs(),
            self.restart_requests.write_count()
        );
        println!(
            "| restart: requests by verb / reconciles / CPU | {} / {} / {:.2} s | |",
            self.restart_requests.verbs(),
            self.restart_reconciles,
            secs(self.restart_cpu)
        );
        println!(
            "| restart: RSS peak / after | {:.1} / {:.1} MiB | |",
            mib(self.restart_peak_rss_kib),
            mib(self.restart_rss_kib)
        );
        for (window, requests) in [
            ("quiet", &self.quiet_requests),
            ("after the restart", &self.restart_requests),
        ] {
            for write in requests.writes.iter().take(20) {
                println!("write while {window}: {write}");
            }
        }
        println!();
        println!(
            "What the operator caches (objects carrying its label in the namespace, as JSON):"
        );
        println!();
        println!("| kind | objects | JSON | of which managedFields |");
        println!("| --- | ---: | ---: | ---: |");
        let (mut objects, mut bytes, mut without) = (0, 0, 0);
        for kind in &self.caches {
            objects += kind.objects;
            bytes += kind.json_bytes;
            without += kind.without_managed_fields;
            println!(
                "| {} | {} | {:.0} KiB | {:.0} % |",
                kind.kind,
                kind.objects,
                kind.json_bytes as f64 / 1024.0,
                percent(
                    kind.json_bytes - kind.without_managed_fields,
                    kind.json_bytes
                )
            );
        }
        println!(
            "| all | {objects} | {:.1} MiB ({:.1} KiB per app) | {:.0} % |",
            bytes as f64 / 1024.0 / 1024.0,
            bytes as f64 / 1024.0 / n as f64,
            percent(bytes - without, bytes)
        );
    }
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

fn progress(message: &str) {
    eprintln!(">> {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> anyhow::Result<Args> {
        Args::parse(list.iter().map(|s| s.to_string()))
    }

    #[test]
    fn quick_mode_means_fifty_apps_and_short_windows_unless_told_otherwise() {
        let quick = args(&["--quick"]).unwrap();
        assert_eq!(quick.apps, 50);
        assert_eq!(quick.quiet, Duration::from_secs(10));
        assert_eq!(quick.limit, Duration::from_secs(300));
        assert_eq!(quick.ready_bound(), Duration::from_secs(185));
        assert_eq!(
            args(&["--apps", "1000"]).unwrap().ready_bound(),
            Duration::from_secs(600)
        );
        let full = args(&[]).unwrap();
        assert_eq!((full.apps, full.rate), (100, 10.0));
        assert_eq!(full.quiet, Duration::from_secs(60));
        let chosen = args(&["--apps", "1000", "--quick", "--quiet-seconds", "30"]).unwrap();
        assert_eq!((chosen.apps, chosen.quiet.as_secs()), (1000, 30));
    }

    #[test]
    fn out_of_range_or_unknown_arguments_are_refused_with_the_range() {
        for (given, says) in [
            (&["--apps", "0"][..], "between 1 and 5000"),
            (&["--apps", "lots"][..], "whole number"),
            (&["--rate", "1000"][..], "between 0.1 and 100"),
            (&["--storage", "tmpfs"][..], "database or embedded"),
            (&["--limit-seconds", "5"][..], "between 60 and 3600"),
            (&["--apps"][..], "needs a value"),
            (&["--fast"][..], "unknown argument"),
        ] {
            let error = format!("{:#}", args(given).unwrap_err());
            assert!(error.contains(says), "{given:?}: {error}");
        }
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=20).map(Duration::from_secs).collect();
        let q = Quantiles::of(samples);
        assert_eq!(q.p50, Duration::from_secs(10));
        assert_eq!(q.p95, Duration::from_secs(19));
        assert_eq!(q.max, Duration::from_secs(20));
        assert_eq!(Quantiles::of(vec![Duration::from_secs(3)]).p95.as_secs(), 3);
        assert_eq!(Quantiles::of(Vec::new()).max, Duration::ZERO);
    }

    #[test]
    fn cpu_ticks_are_read_after_a_command_name_with_spaces() {
        let stat = "4242 (msa op) erator)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 9 0 12345 1000000 2000 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(325));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_fields_are_read_in_kib() {
        let status = "Name:\tmsa-operator\nVmHWM:\t   80124 kB\nVmRSS:\t   61440 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(61440));
        assert_eq!(status_kib(status, "VmHWM"), Some(80124));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn catching_up_is_read_from_the_reconciles_the_log_names() {
        let log = [
            r#"{"timestamp":"2026-12-01T10:00:01.5Z","level":"INFO","fields":{"message":"what the cluster offers"},"target":"msa_operator::facts"}"#,
            r#"{"timestamp":"2026-12-01T10:00:02Z","level":"DEBUG","fields":{"message":"reconciled","app":"app-0001","namespace":"n"},"target":"msa_operator::controller"}"#,
            r#"{"timestamp":"2026-12-01T10:00:03Z","level":"WARN","fields":{"message":"reconcile failed","app":"app-0002","namespace":"n"},"target":"msa_operator::reconcile"}"#,
            r#"{"timestamp":"2026-12-01T10:00:04Z","level":"DEBUG","fields":{"message":"reconciled","app":"app-0001","namespace":"n"},"target":"msa_operator::controller"}"#,
            r#"{"timestamp":"2026-12-01T10:00:05Z","level":"DEBUG","fields":{"message":"reconc"#,
        ]
        .join("\n");
        let seen = reconciled_apps(&log);
        assert_eq!(seen.len(), 2);
        assert_eq!(
            seen["app-0001"],
            "2026-12-01T10:00:02Z"
                .parse::<k8s_openapi::jiff::Timestamp>()
                .unwrap(),
            "the first reconcile counts"
        );
        assert!(seen.contains_key("app-0002"));
    }

    #[test]
    fn nodes_cover_the_pods() {
        assert_eq!(nodes_for(200, 2000), 1);
        assert_eq!(nodes_for(4000, 2000), 2);
        assert_eq!(nodes_for(4050, 2000), 3);
        assert_eq!(nodes_for(0, 2000), 1);
    }

    fn event(stage: &str, verb: &str, user: &str, resource: &str, sub: Option<&str>) -> Value {
        json!({
            "stage": stage, "verb": verb, "user": {"username": user},
            "objectRef": {"resource": resource, "subresource": sub, "namespace": "ns", "name": "a"},
            "responseStatus": {"code": 200},
        })
    }

    #[test]
    fn the_operators_requests_are_counted_once_each_and_writes_kept_apart() {
        let me = "system:serviceaccount:msa-system:msa-operator";
        let mut requests = Requests::default();
        for e in [
            event("ResponseStarted", "watch", me, "deployments", None),
            event("ResponseComplete", "watch", me, "deployments", None),
            event("ResponseComplete", "list", me, "deployments", None),
            event(
                "ResponseComplete",
                "patch",
                me,
                "microserviceapps",
                Some("status"),
            ),
            event("ResponseComplete", "patch", me, "services", None),
            event("ResponseComplete", "create", "admin", "services", None),
        ] {
            requests.count(&e, me);
        }
        assert_eq!(requests.verbs(), "list 1, patch 2, watch 1");
        assert_eq!(requests.total(), 4);
        assert_eq!(requests.write_count(), 2);
        assert_eq!(
            join_counts(&requests.writes_by_resource),
            "microserviceapps/status 1, services 1"
        );
        assert_eq!(
            requests.writes[0],
            "patch microserviceapps/status ns/a → 200"
        );
    }

    fn app(created: &str, ready: Option<(&str, &str)>) -> DynamicObject {
        let conditions: Vec<Value> = ready
            .map(|(status, at)| {
                json!({"type": "Ready", "status": status, "lastTransitionTime": at,
                       "reason": "r", "message": "m"})
            })
            .into_iter()
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "msa.dev/v1alpha1", "kind": "MicroserviceApp",
            "metadata": {"name": "a", "creationTimestamp": created},
            "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    #[test]
    fn latencies_come_from_the_ready_transition_and_the_creation() {
        let apps = [
            app(
                "2026-12-01T10:00:00Z",
                Some(("True", "2026-12-01T10:00:02Z")),
            ),
            app(
                "2026-12-01T10:00:01Z",
                Some(("True", "2026-12-01T10:00:07Z")),
            ),
        ];
        let measured = latencies_from_timestamps(&apps).unwrap();
        assert_eq!(measured.each.p50, Duration::from_secs(2));
        assert_eq!(measured.each.max, Duration::from_secs(6));
        assert_eq!(measured.all, Duration::from_secs(7));
        assert!(is_ready(&apps[0].data));
    }

    #[test]
    fn an_app_that_is_not_ready_is_an_error_not_a_figure() {
        let apps = [app(
            "2026-12-01T10:00:00Z",
            Some(("False", "2026-12-01T10:00:02Z")),
        )];
        assert!(!is_ready(&apps[0].data));
        let error = latencies_from_timestamps(&apps).unwrap_err().to_string();
        assert!(error.contains("not Ready"), "{error}");
        assert!(latencies_from_timestamps(&[app("2026-12-01T10:00:00Z", None)]).is_err());
    }
}
