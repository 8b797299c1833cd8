//! One reconciliation of a MicroserviceApp: the only place that writes to the API server.
//!
//! validate → render (pure) → apply each child whose cached copy differs → compute status
//! (pure) → write it if it changed → publish Events for what changed. Reads come from the
//! reflector caches, so a converged app costs no API call at all.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, info, info_span, warn};

use crate::app_index::IndexedStore;
use crate::build::config::SourceContent;
use crate::build::{self, Children, Workload, broker};
use crate::component::Component;
use crate::conditions::{self, DEGRADED, READY};
use crate::config_sources::content_in;
use crate::crd::{ConfigSource, MicroserviceApp, MicroserviceAppStatus};
use crate::error::Error;
use crate::labels::{self, MANAGER};
use crate::metrics::Metrics;
use crate::pacing::{self, RolloutSlots};
use crate::status::{self, Blocker, Observed, WorkloadState};
use crate::{drift, facts, ownership, stateful_rollout, storage, unreadable, validate};

/// How often a converged app is looked at again even if nothing announced a change.
pub const RESYNC: Duration = Duration::from_secs(300);

/// How soon an app waiting for a fact about the cluster is looked at again.
pub const FACTS_WAIT: Duration = Duration::from_secs(10);
/// How soon an app whose rollout waits for a slot (see [`crate::pacing`]) looks again.
pub const SLOT_WAIT: Duration = Duration::from_secs(30);
/// Rollout slots unless the flag says otherwise (`--max-concurrent-rollouts`).
pub const DEFAULT_ROLLOUT_SLOTS: u16 = 10;

/// How long a reconcile waits for the caches' first lists before it fails (and is retried
/// with backoff and logged) rather than waiting silently: a list the API server keeps refusing
/// (RBAC, a missing API) would otherwise hold every reconcile.
pub const CACHES_WAIT: Duration = Duration::from_secs(60);

/// Per-app retry delays after failures: doubling from the first to the cap.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(2);
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);

/// The reflector caches of everything the operator owns or reads.
#[derive(Clone)]
pub struct Caches {
    pub deployments: Store<Deployment>,
    pub stateful_sets: Store<StatefulSet>,
    pub budgets: Store<PodDisruptionBudget>,
    /// Claims of the embedded databases (created by the StatefulSets, labelled like the app).
    pub claims: Store<PersistentVolumeClaim>,
    pub services: Store<Service>,
    pub service_accounts: Store<ServiceAccount>,
    pub roles: Store<Role>,
    pub role_bindings: Store<RoleBinding>,
    pub network_policies: Store<NetworkPolicy>,
    /// Indexed by app: a component's `config` ConfigMaps are named after their content.
    pub config_maps: IndexedStore<ConfigMap>,
    /// Every ConfigMap in scope, not only the operator's, with its content replaced by a hash
    /// of it (see [`crate::controller`]): what `configFrom` names.
    pub config_sources: Store<ConfigMap>,
    /// Every Secret in scope, likewise condensed, when the operator may watch Secrets
    /// (`--watch-config-secrets`); `None` otherwise.
    pub secret_sources: Option<Store<Secret>>,
    /// Indexed by app: their names are Kubernetes' choice.
    pub endpoint_slices: IndexedStore<EndpointSlice>,
}

impl Caches {
    /// Waits until every cache has listed once, so a restart does not re-apply everything.
    ///
    /// Only one task may wait here at a time: kube-runtime's `Store::wait_until_ready` keeps a
    /// single waker (a one-shot channel's), so of several tasks waiting side by side only the
    /// last to poll is woken, and the others wait for ever. Reconciles go through
    /// [`Context::caches_listed`], which lets one of them wait and wakes the rest.
    async fn wait_until_ready(&self) -> Result<(), Error> {
        let Caches {
            deployments,
            stateful_sets,
            budgets,
            claims,
            services,
            service_accounts,
            roles,
            role_bindings,
            network_policies,
            config_maps,
            config_sources,
            secret_sources,
            endpoint_slices,
        } = self;
        let secrets_listed = async {
            match secret_sources {
                Some(store) => store.wait_until_ready().await,
                None => Ok(()),
            }
        };
        tokio::try_join!(
            deployments.wait_until_ready(),
            stateful_sets.wait_until_ready(),
            budgets.wait_until_ready(),
            claims.wait_until_ready(),
            services.wait_until_ready(),
            service_accounts.wait_until_ready(),
            roles.wait_until_ready(),
            role_bindings.wait_until_ready(),
            network_policies.wait_until_ready(),
            config_maps.store().wait_until_ready(),
            config_sources.wait_until_ready(),
            secrets_listed,
            endpoint_slices.store().wait_until_ready(),
        )
        .map(|_| ())
        .map_err(|_| Error::CacheStopped)
    }
}

/// Everything a reconciliation needs; shared by all of them.
pub struct Context {
    pub client: Client,
    pub caches: Caches,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per app, for exponential backoff.
    pub failures: Mutex<HashMap<ObjectRef<MicroserviceApp>, u32>>,
    /// The clock that stamps condition transitions (injected so tests are deterministic).
    pub now: Box<dyn Fn() -> Time + Send + Sync>,
    /// What the cluster told the operator (its ServiceAccount issuer, the PodMonitor API), kept
    /// by [`facts::keep_current`]; unknown until first read.
    pub cluster: std::sync::RwLock<facts::Learned>,
    /// The rendered hash of each app's PodMonitor as this process last applied it.
    /// Keyed by the app's uid: an app deleted and created again under its name has none yet.
    pub applied_pod_monitors: Mutex<HashMap<String, String>>,
    /// Apps (by uid) whose broker credentials Secret this process made or found: it is created
    /// once and never read (the operator may not read Secrets), so after a restart one create
    /// per app answers "already exists" and nothing more is sent.
    pub broker_credentials: Mutex<std::collections::HashSet<String>>,
    /// Kubernetes' explanation of each stuck claim as last read, by (namespace, kind, name) of
    /// the object the Events are about: read when a claim turns stuck, then at most every
    /// [`storage::EXPLANATION_TTL`], not on every reconcile.
    pub explanations: Mutex<HashMap<(String, &'static str, String), storage::Explanation>>,
    /// The fleet's slots for the operator's own rollouts (see [`crate::pacing`]).
    pub rollout_slots: Mutex<RolloutSlots>,
    /// Set once every cache has listed (see [`Context::caches_listed`]).
    listed: tokio::sync::OnceCell<()>,
}

/// The apps that exist now, by key and by uid (see [`Context::forget_apps_except`]).
#[derive(Debug, Default)]
pub struct ExistingApps {
    pub keys: std::collections::HashSet<ObjectRef<MicroserviceApp>>,
    pub uids: std::collections::HashSet<String>,
}

impl ExistingApps {
    pub fn of<'a>(apps: impl IntoIterator<Item = &'a ObjectMeta>) -> Self {
        let mut existing = Self::default();
        for meta in apps {
            existing.keys.insert(app_key(meta));
            existing.uids.extend(meta.uid.clone());
        }
        existing
    }
}

impl Context {
    pub fn new(client: Client, caches: Caches, recorder: Recorder, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            caches,
            recorder,
            metrics,
            failures: Mutex::default(),
            now: Box::new(|| Time(jiff::Timestamp::now())),
            cluster: std::sync::RwLock::default(),
            applied_pod_monitors: Mutex::default(),
            broker_credentials: Mutex::default(),
            explanations: Mutex::default(),
            rollout_slots: Mutex::new(RolloutSlots::new(usize::from(DEFAULT_ROLLOUT_SLOTS))),
            listed: tokio::sync::OnceCell::new(),
        }
    }

    /// With `limit` rollout slots (0: the operator's own rollouts are not paced).
    pub fn with_rollout_slots(self, limit: usize) -> Self {
        *lock(&self.rollout_slots) = RolloutSlots::new(limit);
        self
    }

    /// Waits until every cache has listed once, for at most [`CACHES_WAIT`]. One caller at a
    /// time waits on the caches themselves (see [`Caches::wait_until_ready`]); the others wait
    /// on the cell, which wakes all of them. At start-up every app's first reconcile waits here
    /// side by side: without the cell, all but one stalled until the process restarted.
    pub async fn caches_listed(&self) -> Result<(), Error> {
        if self.listed.initialized() {
            return Ok(());
        }
        let listed = self
            .listed
            .get_or_try_init(|| self.caches.wait_until_ready());
        match tokio::time::timeout(CACHES_WAIT, listed).await {
            Ok(result) => result.map(|_| ()),
            Err(_) => Err(Error::CachesNotListed(CACHES_WAIT)),
        }
    }

    /// Forgets what this process remembers of apps that no longer exist: failure counts (issue
    /// 28 L1: an app deleted while failing kept its entry for the life of the process) and the
    /// hash of the PodMonitor it applied (kept by uid, so also an app's earlier incarnation).
    pub fn forget_apps_except(&self, existing: &ExistingApps) {
        lock(&self.failures).retain(|key, _| existing.keys.contains(key));
        lock(&self.applied_pod_monitors).retain(|uid, _| existing.uids.contains(uid));
        lock(&self.broker_credentials).retain(|uid| existing.uids.contains(uid));
        lock(&self.rollout_slots).retain(|uid| existing.uids.contains(uid));
    }

    fn record_outcome(&self, key: &ObjectRef<MicroserviceApp>, failed: bool) {
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = key.clone();
        if failed {
            *failures.entry(key).or_insert(0) += 1;
        } else {
            failures.remove(&key);
        }
    }
}

/// Reconciles one watched object; the controller calls this. An app the operator cannot read
/// is reported and left alone until it changes (see [`crate::unreadable`]).
pub async fn reconcile_object(
    object: Arc<DeserializeGuard<MicroserviceApp>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    match &object.0 {
        Ok(app) => reconcile_app(app, &ctx).await,
        Err(invalid) => {
            report_unreadable(&ctx, invalid).await;
            Ok(Action::await_change())
        }
    }
}

/// Reconciles one app.
pub async fn reconcile(app: Arc<MicroserviceApp>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile_app(&app, &ctx).await
}

async fn reconcile_app(app: &MicroserviceApp, ctx: &Context) -> Result<Action, Error> {
    let started = Instant::now();
    // One span per reconcile: the log lines inside name the app, and with tracing on it is a
    // trace with the API requests the reconcile made.
    let name = app.name_any();
    let namespace = app.namespace().unwrap_or_default();
    let span = info_span!(
        "reconcile",
        otel.name = %format_args!("reconcile {namespace}/{name}"),
        app = %name,
        namespace = %namespace,
        generation = app.metadata.generation.unwrap_or_default(),
        otel.status_code = tracing::field::Empty,
        error.category = tracing::field::Empty,
    );
    let result = converge(app, ctx).instrument(span.clone()).await;
    if let Err(error) = &result {
        span.record("otel.status_code", "ERROR");
        span.record("error.category", error.category());
    }
    ctx.metrics.observe_reconcile(
        started.elapsed(),
        result.as_ref().err().map(Error::category),
    );
    ctx.record_outcome(&app_key(&app.metadata), result.is_err());
    result
}

/// Logs an app the operator cannot read, counts it, and publishes a Warning Event on it.
async fn report_unreadable(ctx: &Context, invalid: &InvalidObject) {
    let decided = unreadable::decide(invalid);
    warn!(app = %decided.key, error = %invalid.error, "cannot read this MicroserviceApp; skipping it until it changes");
    ctx.metrics
        .observe_reconcile(Duration::ZERO, Some(unreadable::CATEGORY));
    if let Some(regarding) = &decided.regarding {
        publish_on(
            ctx,
            regarding,
            EventType::Warning,
            unreadable::REASON,
            "Read",
            decided.note,
        )
        .await;
    }
}

/// The key of an app in the per-app failure counts.
pub(crate) fn app_key(meta: &ObjectMeta) -> ObjectRef<MicroserviceApp> {
    let name = meta.name.as_deref().unwrap_or_default();
    match meta.namespace.as_deref() {
        Some(namespace) => ObjectRef::new(name).within(namespace),
        None => ObjectRef::new(name),
    }
}

/// Decides when to retry a failed app: exponential backoff per app, so one broken app neither
/// spins nor delays the others.
pub fn error_policy(app: Arc<MicroserviceApp>, error: &Error, ctx: Arc<Context>) -> Action {
    retry_after(&app.metadata, error, &ctx)
}

/// [`error_policy`] for the watched objects (the controller calls this).
pub fn error_policy_object(
    object: Arc<DeserializeGuard<MicroserviceApp>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    retry_after(object.meta(), error, &ctx)
}

fn retry_after(meta: &ObjectMeta, error: &Error, ctx: &Context) -> Action {
    let attempts = ctx
        .failures
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&app_key(meta))
        .copied()
        .unwrap_or(1);
    let delay = spread(backoff(attempts), &app_key(meta), attempts);
    warn!(app = %meta.name.as_deref().unwrap_or_default(), namespace = meta.namespace.as_deref().unwrap_or_default(), category = error.category(), %error, retry_in_secs = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

/// Delay before retry number `attempts` (1-based): 2 s, 4 s, 8 s, ... up to 5 minutes.
pub fn backoff(attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(16));
    BACKOFF_FIRST.saturating_mul(factor).min(BACKOFF_CAP)
}

/// Shortens `delay` by up to a fifth, by a hash of the app and the attempt (issue 28 L1): apps
/// that failed together — an API server outage fails every one of them — then retry spread
/// over the last fifth of their delay instead of in lock-step. Deterministic, so testable; never
/// longer than `delay`, so the cap holds.
pub fn spread(delay: Duration, app: &ObjectRef<MicroserviceApp>, attempts: u32) -> Duration {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    (app, attempts).hash(&mut hasher);
    // A fraction in [0, 1/5) of the delay, in thousandths.
    let cut = hasher.finish() % 200;
    delay.saturating_sub(delay.saturating_mul(u32::try_from(cut).unwrap_or(0)) / 1000)
}

async fn converge(app: &MicroserviceApp, ctx: &Context) -> Result<Action, Error> {
    // Being deleted: the garbage collector removes the children (under foreground deletion,
    // Argo CD's default, while the app still exists); applying them again would fight it.
    if app.metadata.deletion_timestamp.is_some() {
        release_slot(ctx, app);
        return Ok(Action::await_change());
    }
    ctx.caches_listed().await?;

    let problems = validate::problems(app);
    if !problems.is_empty() {
        let mut observed = observe(ctx, app, BTreeMap::new()).await.observed;
        observed.blocker = Some(Blocker::InvalidSpec(problems));
        release_slot(ctx, app);
        write_status(app, ctx, &observed).await?;
        // Nothing to retry until the user edits the spec, which triggers a reconcile.
        return Ok(Action::await_change());
    }

    let learned = ctx
        .cluster
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let resolved = match facts::resolve(&learned, &live_facts(ctx, app)) {
        Ok(resolved) => resolved,
        // Rendering from a guess could roll a running app without its service identity: apply
        // nothing, say what is waited for, look again soon.
        Err(waiting_for) => {
            info!(app = %app.name_any(), namespace = app.namespace().unwrap_or_default(), %waiting_for, "not rendering the app until a fact about the cluster is known");
            let mut observed = observe(ctx, app, BTreeMap::new()).await.observed;
            observed.waiting = Some(waiting_for);
            release_slot(ctx, app);
            write_status(app, ctx, &observed).await?;
            return Ok(Action::requeue(FACTS_WAIT));
        }
    };
    let applied = async {
        let mut report = ApplyReport::default();
        let mut facts = resolved.facts.clone();
        facts.config_sources = config_sources(ctx, app);
        facts.running_sources = running_sources(ctx, app);
        prepare_broker(ctx, app, &mut facts, &mut report).await?;
        let children = build::children_in(app, &facts)?;
        apply_children(ctx, app, children, resolved.pod_monitors_known, report).await
    }
    .await;
    if applied.is_err() {
        release_slot(ctx, app);
    }
    let report = match applied {
        Ok(report) => report,
        // Missing permissions stop the reconcile where they struck (children are applied in
        // order), but a person reading the app's status must see why, not only the logs.
        Err(Error::Kube(kube::Error::Api(refused))) if refused.code == 403 => {
            let mut observed = observe(ctx, app, BTreeMap::new()).await.observed;
            observed.blocker = Some(Blocker::Forbidden(refused.message.clone()));
            if let Err(error) = write_status(app, ctx, &observed).await {
                warn!(app = %app.name_any(), %error, "could not report the refused permission in status");
            }
            return Err(Error::Kube(kube::Error::Api(refused)));
        }
        Err(error) => return Err(error),
    };
    if !report.changed.is_empty() {
        publish(
            ctx,
            app,
            EventType::Normal,
            "Applied",
            "ApplyChildren",
            format!("applied {}", report.changed.join(", ")),
        )
        .await;
    }

    let Observation {
        mut observed,
        recheck_in,
        abandoned_pods,
    } = observe(ctx, app, report.workloads).await;
    delete_abandoned_pods(ctx, app, &abandoned_pods).await;
    observed.broker = broker_state(ctx, app, report.broker.clone());
    observed.blocker =
        (!report.failed.is_empty()).then(|| Blocker::ApplyFailed(report.failed.clone()));
    if resolved.pod_monitors_known {
        observed.monitoring = build::monitoring_note(app, resolved.facts.pod_monitors);
    }
    if !report.paced.is_empty() {
        let slots = lock(&ctx.rollout_slots).limit();
        observed.paced = Some((report.paced.clone(), slots));
    }
    // The app's rollout is over — every workload's controller saw its last change and moved
    // all its pods to it (ready or not: a pod failing later is not a rollout) — or it failed:
    // its slot goes to the next app.
    let rolled_out = observed.workloads.values().all(WorkloadState::rolled_out);
    if rolled_out || !report.failed.is_empty() {
        release_slot(ctx, app);
    }
    write_status(app, ctx, &observed).await?;

    match report.failed.first() {
        Some((name, why)) => Err(Error::Apply {
            count: report.failed.len(),
            first: format!("{name}: {why}"),
        }),
        // A claim or a pod that may still turn out stuck is looked at again when its patience
        // ends.
        None if !report.paced.is_empty() => Ok(Action::requeue(SLOT_WAIT)),
        None => Ok(Action::requeue(
            recheck_in.map_or(RESYNC, |r| r.min(RESYNC)),
        )),
    }
}

/// What the cluster shows of the app, and what follows from it for this reconcile.
struct Observation {
    observed: Observed,
    /// When to look again: a claim's patience or a pod's deadline ends then.
    recheck_in: Option<Duration>,
    /// Pods of revisions their StatefulSet abandoned, to delete.
    abandoned_pods: Vec<stateful_rollout::Abandoned>,
}

/// What the caches show of the app — each component's workload (`applied`: as the applies just
/// returned them, newer than the caches), its ready endpoints, claims that are stuck, StatefulSet
/// rollouts past their deadline, and `status.monitoring` as it stands.
async fn observe(
    ctx: &Context,
    app: &MicroserviceApp,
    applied: BTreeMap<Component, WorkloadState>,
) -> Observation {
    let now = (ctx.now)();
    let findings = check_storage(app, ctx, &now);
    let described = explain(ctx, app, &findings, &now).await;
    let mut workloads = cached_workloads(ctx, app);
    workloads.extend(applied);
    let rollouts = look_at_stateful_rollouts(ctx, app, &mut workloads, &now).await;
    let observed = Observed {
        workloads,
        endpoints: ready_endpoints_by_component(&ctx.caches.endpoint_slices, app),
        storage_problem: findings.stuck.first().map(|first| {
            storage::message(
                &described,
                &first.claim,
                &app.namespace().unwrap_or_default(),
            )
        }),
        monitoring: app.status.as_ref().and_then(|s| s.monitoring.clone()),
        ..Observed::default()
    };
    Observation {
        observed,
        recheck_in: [findings.recheck_in, rollouts.recheck_in]
            .into_iter()
            .flatten()
            .min(),
        abandoned_pods: rollouts.abandoned,
    }
}

/// Judges the pods of each StatefulSet whose rollout is under way (see
/// [`stateful_rollout`]): one list of the component's pods each, none at rest. Marks the stuck
/// ones in `workloads`; returns the pods to delete and when to look again.
async fn look_at_stateful_rollouts(
    ctx: &Context,
    app: &MicroserviceApp,
    workloads: &mut BTreeMap<Component, WorkloadState>,
    now: &Time,
) -> stateful_rollout::Assessment {
    let mut found = stateful_rollout::Assessment::default();
    let Some(namespace) = app.namespace() else {
        return found;
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    for (component, state) in workloads.iter_mut() {
        let Some((uid, revision)) = state
            .stateful_rollout_pending()
            .map(|(u, r)| (u.to_owned(), r.to_owned()))
        else {
            continue;
        };
        let selector = labels::selector_query(&app.name_any(), *component);
        let listed = match pods.list(&ListParams::default().labels(&selector)).await {
            Ok(listed) => listed,
            Err(error) => {
                warn!(app = %app.name_any(), %namespace, %component, %error, "could not list the pods of a StatefulSet that is rolling out");
                continue;
            }
        };
        let facts: Vec<stateful_rollout::PodFacts> = listed.items.iter().map(Into::into).collect();
        let deadline = u64::try_from(component.spec(app).rollout.progress_deadline_seconds)
            .map_or(Duration::ZERO, Duration::from_secs);
        let judged = stateful_rollout::assess(&facts, &uid, &revision, deadline, now);
        if let Some(message) = judged.stuck {
            state.mark_past_deadline(message);
        }
        if !judged.abandoned.is_empty()
            && still_rolling_out_to(ctx, app, *component, &uid, &revision).await
        {
            found.abandoned.extend(judged.abandoned);
        }
        found.recheck_in = [found.recheck_in, judged.recheck_in]
            .into_iter()
            .flatten()
            .min();
    }
    found
}

/// Whether the StatefulSet, read from the API server now (the cache may lag behind the pods just
/// listed), is still the one judged and still rolls out to `revision`: only then may pods of
/// other revisions be deleted.
async fn still_rolling_out_to(
    ctx: &Context,
    app: &MicroserviceApp,
    component: Component,
    uid: &str,
    revision: &str,
) -> bool {
    let Some(namespace) = app.namespace() else {
        return false;
    };
    let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    match api
        .get_opt(&labels::child_name(&app.name_any(), component))
        .await
    {
        Ok(Some(live)) => {
            let state = WorkloadState::from(&live);
            state.stateful_rollout_pending() == Some((uid, revision))
        }
        Ok(None) => false,
        Err(error) => {
            warn!(app = %app.name_any(), %namespace, %component, %error, "could not read a StatefulSet before deleting a pod of an abandoned revision; not deleting it");
            false
        }
    }
}

/// Deletes pods of revisions their StatefulSet abandoned, each only if it is still the pod that
/// was judged, unchanged (its uid — the replacement has the same name — and its
/// resourceVersion). Best effort: a failure is logged and the next reconcile judges again.
async fn delete_abandoned_pods(
    ctx: &Context,
    app: &MicroserviceApp,
    pods: &[stateful_rollout::Abandoned],
) {
    let Some(namespace) = app.namespace() else {
        return;
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    for stateful_rollout::Abandoned {
        name,
        uid,
        resource_version,
    } in pods
    {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: uid.clone(),
                resource_version: resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => {
                info!(app = %app.name_any(), %namespace, pod = %name, "deleted a pod that was not Ready, of a revision its StatefulSet no longer rolls out to");
                publish(
                    ctx,
                    app,
                    EventType::Normal,
                    "ReplacedAbandonedPod",
                    "DeletePod",
                    format!(
                        "deleted pod {name}: it was not Ready and of a revision its StatefulSet \
                         no longer rolls out to (a reverted spec); the StatefulSet replaces it"
                    ),
                )
                .await;
            }
            Err(kube::Error::Api(answer)) if answer.code == 404 || answer.code == 409 => {}
            Err(error) => {
                warn!(app = %app.name_any(), %namespace, pod = %name, %error, "could not delete a pod of an abandoned revision");
            }
        }
    }
}

/// Each component's workload as cached: of the kind its spec asks for, else of the other kind
/// (while a component switches between the two, or when the spec cannot be rendered). Only
/// workloads this app controls count: an app deleted and created again under its name must not
/// report the old app's pods, still running until the garbage collector ends them, as its own.
fn cached_workloads(ctx: &Context, app: &MicroserviceApp) -> BTreeMap<Component, WorkloadState> {
    let namespace = app.namespace().unwrap_or_default();
    let app_name = app.name_any();
    Component::ALL
        .into_iter()
        .filter_map(|component| {
            let name = labels::child_name(&app_name, component);
            let deployment = || {
                ctx.caches
                    .deployments
                    .get(&ObjectRef::new(&name).within(&namespace))
                    .filter(|d| controlled_by(d.as_ref(), app))
                    .map(|d| WorkloadState::from(d.as_ref()))
            };
            let stateful_set = || {
                ctx.caches
                    .stateful_sets
                    .get(&ObjectRef::new(&name).within(&namespace))
                    .filter(|s| controlled_by(s.as_ref(), app))
                    .map(|s| WorkloadState::from(s.as_ref()))
            };
            let state = if build::has_embedded_database(app, component) {
                stateful_set().or_else(deployment)
            } else {
                deployment().or_else(stateful_set)
            };
            state.map(|state| (component, state))
        })
        .collect()
}

/// What the app's live objects say about the facts they were rendered with (see
/// [`facts::resolve`]). Only objects this app controls: an earlier app of the same name, whose
/// children linger until the garbage collector ends them, says nothing about this one.
fn live_facts(ctx: &Context, app: &MicroserviceApp) -> facts::LiveFacts {
    let namespace = app.namespace().unwrap_or_default();
    let app_name = app.name_any();
    let template = cached_pod_template(ctx, app, Component::Product);
    let keys = ObjectRef::new(&build::issuer_config_map_name(&app_name)).within(&namespace);
    facts::LiveFacts {
        product_issuer: template.as_ref().map(build::rendered_issuer),
        issuer_keys: ctx
            .caches
            .config_maps
            .store()
            .get(&keys)
            .filter(|c| controlled_by(c.as_ref(), app))
            .and_then(|c| build::published_keys(&c)),
        had_pod_monitor: build::had_pod_monitor(app),
        broker_address: ctx
            .caches
            .services
            .get(&ObjectRef::new(&broker::name(&app_name)).within(&namespace))
            .filter(|s| controlled_by(s.as_ref(), app))
            .and_then(|s| cluster_ip(&s)),
    }
}

/// What the caches know of each object the app's components name in `configFrom` (the watch
/// keeps a hash of each one's content and nothing else, see [`crate::config_sources`]).
fn config_sources(ctx: &Context, app: &MicroserviceApp) -> BTreeMap<ConfigSource, SourceContent> {
    let namespace = app.namespace().unwrap_or_default();
    Component::ALL
        .into_iter()
        .flat_map(|component| component.spec(app).config_from.iter())
        .map(|source| {
            let content = match (&source.config_map, &source.secret) {
                (Some(name), _) => content_in(&ctx.caches.config_sources, &namespace, name),
                (None, Some(name)) => match &ctx.caches.secret_sources {
                    None => SourceContent::NotWatched,
                    Some(secrets) => content_in(secrets, &namespace, name),
                },
                (None, None) => SourceContent::Absent,
            };
            (source.clone(), content)
        })
        .collect()
}

/// The sources hash each component's running pod template carries (workloads this app
/// controls only), for components that read `configFrom`.
fn running_sources(ctx: &Context, app: &MicroserviceApp) -> BTreeMap<Component, String> {
    Component::ALL
        .into_iter()
        .filter(|component| !component.spec(app).config_from.is_empty())
        .filter_map(|component| {
            let running = cached_pod_template(ctx, app, component)?
                .metadata?
                .annotations?
                .remove(labels::CONFIG_SOURCES_ANNOTATION)?;
            Some((component, running))
        })
        .collect()
}

/// The pod template of the component's cached workload (a Deployment, else a StatefulSet),
/// when this app controls it.
fn cached_pod_template(
    ctx: &Context,
    app: &MicroserviceApp,
    component: Component,
) -> Option<k8s_openapi::api::core::v1::PodTemplateSpec> {
    let namespace = app.namespace().unwrap_or_default();
    let name = labels::child_name(&app.name_any(), component);
    ctx.caches
        .deployments
        .get(&ObjectRef::new(&name).within(&namespace))
        .filter(|d| controlled_by(d.as_ref(), app))
        .and_then(|d| d.spec.as_ref().map(|s| s.template.clone()))
        .or_else(|| {
            ctx.caches
                .stateful_sets
                .get(&ObjectRef::new(&name).within(&namespace))
                .filter(|s| controlled_by(s.as_ref(), app))
                .and_then(|s| s.spec.as_ref().map(|s| s.template.clone()))
        })
}

/// The storage check over the cached StatefulSets and claims of this app (each looked up by
/// its name, never by scanning the cache; StatefulSets it controls only, so an earlier app of
/// the same name lends it no storage problem).
fn check_storage(app: &MicroserviceApp, ctx: &Context, now: &Time) -> storage::Findings {
    let namespace = app.namespace().unwrap_or_default();
    let app_name = app.name_any();
    let stateful_sets: Vec<(Component, Arc<StatefulSet>)> = Component::ALL
        .into_iter()
        .filter_map(|c| {
            let name = labels::child_name(&app_name, c);
            let found = ctx
                .caches
                .stateful_sets
                .get(&ObjectRef::new(&name).within(&namespace))
                .filter(|s| controlled_by(s.as_ref(), app))?;
            Some((c, found))
        })
        .collect();
    let claims: Vec<Arc<PersistentVolumeClaim>> = stateful_sets
        .iter()
        .filter_map(|(c, _)| {
            let name = build::claim_name(&app_name, *c, 0);
            ctx.caches
                .claims
                .get(&ObjectRef::new(&name).within(&namespace))
        })
        .collect();
    storage::check(
        app,
        &stateful_sets
            .iter()
            .map(|(c, s)| (*c, s.as_ref()))
            .collect(),
        &claims.iter().map(|c| (c.name_any(), c.as_ref())).collect(),
        now,
    )
}

/// Describes each stuck claim with Kubernetes' explanation: remembered while fresh, read again
/// otherwise; the explanations of this app's claims that are no longer stuck are forgotten.
async fn explain(
    ctx: &Context,
    app: &MicroserviceApp,
    findings: &storage::Findings,
    now: &Time,
) -> Vec<String> {
    let namespace = app.namespace().unwrap_or_default();
    let key = |(kind, name): &(&'static str, String)| (namespace.clone(), *kind, name.clone());
    let mut described = Vec::with_capacity(findings.stuck.len());
    for stuck in &findings.stuck {
        let remembered = lock(&ctx.explanations)
            .get(&key(&stuck.explained_by))
            .filter(|e| e.is_fresh(now))
            .cloned();
        let reported = match remembered {
            Some(explanation) => explanation.reported,
            None => {
                let reported = latest_warning(ctx, app, &stuck.explained_by).await;
                let mut explanations = lock(&ctx.explanations);
                // Entries of apps deleted while stuck go once they are stale.
                explanations.retain(|_, e| e.is_fresh(now));
                explanations.insert(
                    key(&stuck.explained_by),
                    storage::Explanation {
                        reported: reported.clone(),
                        read_at: now.clone(),
                    },
                );
                reported
            }
        };
        described.push(stuck.describe(reported.as_deref()));
    }
    let mut explanations = lock(&ctx.explanations);
    for explainer in storage::explainers(app) {
        if !findings.stuck.iter().any(|s| s.explained_by == explainer) {
            explanations.remove(&key(&explainer));
        }
    }
    described
}

/// The message of the latest Warning event about an object (why a claim is not bound, why a
/// StatefulSet could not create one). Best effort: only read when something is stuck.
async fn latest_warning(
    ctx: &Context,
    app: &MicroserviceApp,
    (kind, name): &(&'static str, String),
) -> Option<String> {
    let api: Api<k8s_openapi::api::core::v1::Event> =
        Api::namespaced(ctx.client.clone(), &app.namespace()?);
    let selector = format!("involvedObject.kind={kind},involvedObject.name={name},type=Warning");
    match api.list(&ListParams::default().fields(&selector)).await {
        Ok(events) => events
            .items
            .into_iter()
            .max_by_key(|e| {
                e.last_timestamp
                    .clone()
                    .or(e.event_time.clone().map(|t| Time(t.0)))
            })
            .and_then(|e| e.message)
            .map(|m| truncate(m, 300)),
        Err(error) => {
            warn!(%error, %kind, %name, "could not read events explaining a stuck claim");
            None
        }
    }
}

/// What applying the children did.
#[derive(Default)]
struct ApplyReport {
    /// `Kind/name` of every object written or deleted.
    changed: Vec<String>,
    /// Objects the API server refused, with its message.
    failed: Vec<(String, String)>,
    /// Each component's workload (as applied, or as cached when unchanged).
    workloads: BTreeMap<Component, WorkloadState>,
    /// Components whose new pod template waits for a rollout slot (left as they run).
    paced: Vec<Component>,
    /// The managed broker's StatefulSet, as applied (None when unchanged or not managed).
    broker: Option<WorkloadState>,
}

async fn apply_children(
    ctx: &Context,
    app: &MicroserviceApp,
    children: Children,
    pod_monitors_known: bool,
    mut report: ApplyReport,
) -> Result<ApplyReport, Error> {
    // Exhaustive on purpose: a new kind of child must be applied here or the build fails.
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
    } = children;
    let caches = &ctx.caches;

    // The identity first, so pods never start without their ServiceAccount.
    apply_one(ctx, &caches.service_accounts, service_account, &mut report).await?;
    for account in own_service_accounts {
        apply_one(ctx, &caches.service_accounts, account, &mut report).await?;
    }
    if let Some(config_map) = service_issuer {
        apply_one(ctx, caches.config_maps.store(), config_map, &mut report).await?;
    }
    apply_one(ctx, &caches.roles, role, &mut report).await?;
    apply_one(ctx, &caches.role_bindings, role_binding, &mut report).await?;
    for service in services {
        apply_one(ctx, &caches.services, service, &mut report).await?;
    }
    // The policies before the workloads: pods of a new release that call a component they did
    // not call before (the product service asking the order service) are admitted before they
    // start, instead of being refused until the policy is applied after them.
    if network_policies.is_empty() {
        for component in Component::ALL {
            let name = labels::child_name(&app.name_any(), component);
            delete_owned(ctx, app, &caches.network_policies, &name, &mut report).await?;
        }
    }
    for policy in network_policies {
        apply_one(ctx, &caches.network_policies, policy, &mut report).await?;
    }
    // The broker before the services that publish to it, and each component's configuration
    // before the pods that read it.
    apply_broker(ctx, app, broker, &mut report).await?;
    for config_map in component_configs {
        apply_one(ctx, caches.config_maps.store(), config_map, &mut report).await?;
    }
    for (component, workload) in Component::ALL.into_iter().zip(workloads) {
        let name = labels::child_name(&app.name_any(), component);
        // A component switching between the embedded database and PostgreSQL changes kind:
        // the other kind's object goes (the claims follow spec.storage.whenDeleted).
        let live_template = match &workload {
            Workload::Deployment(_) => cached_template(&caches.deployments, app, &name, |d| {
                d.spec.as_ref().map(|s| &s.template)
            }),
            Workload::StatefulSet(_) => cached_template(&caches.stateful_sets, app, &name, |s| {
                s.spec.as_ref().map(|s| &s.template)
            }),
        }?;
        let desired_template = match &workload {
            Workload::Deployment(d) => serde_json::to_value(d.spec.as_ref().map(|s| &s.template)),
            Workload::StatefulSet(s) => serde_json::to_value(s.spec.as_ref().map(|s| &s.template)),
        }?;
        if !may_roll(ctx, app, live_template.as_ref(), &desired_template) {
            report.paced.push(component);
            continue;
        }
        let state = match workload {
            Workload::Deployment(deployment) => {
                delete_owned(ctx, app, &caches.stateful_sets, &name, &mut report).await?;
                if component.spec(app).autoscaled {
                    hand_over_replicas(ctx, app, &deployment).await?;
                }
                apply_one(ctx, &caches.deployments, deployment, &mut report)
                    .await?
                    .map(|d| WorkloadState::from(d.as_ref()))
            }
            Workload::StatefulSet(stateful_set) => {
                delete_owned(ctx, app, &caches.deployments, &name, &mut report).await?;
                apply_one(ctx, &caches.stateful_sets, stateful_set, &mut report)
                    .await?
                    .map(|s| WorkloadState::from(s.as_ref()))
            }
        };
        if let Some(state) = state {
            report.workloads.insert(component, state);
        }
    }
    delete_unused_configs(ctx, app, &mut report).await?;
    for component in Component::ALL {
        if !budgets.iter().any(|(c, _)| *c == component) {
            let name = labels::child_name(&app.name_any(), component);
            delete_owned(ctx, app, &caches.budgets, &name, &mut report).await?;
        }
    }
    for (_, budget) in budgets {
        apply_one(ctx, &caches.budgets, budget, &mut report).await?;
    }
    // While the API's presence is not known, the PodMonitor is left as it is.
    if pod_monitors_known {
        apply_pod_monitor(ctx, app, pod_monitor, &mut report).await?;
    }
    Ok(report)
}

/// What the services need before they can be rendered with a managed broker: its credentials
/// Secret (made once) and its Service's address (applied first when it has none yet, so the
/// services start with it instead of being rolled once it is known).
async fn prepare_broker(
    ctx: &Context,
    app: &MicroserviceApp,
    facts: &mut build::ClusterFacts,
    report: &mut ApplyReport,
) -> Result<(), Error> {
    if !broker::is_managed(app) {
        return Ok(());
    }
    make_broker_credentials(ctx, app, report).await?;
    if facts.broker_address.is_none() {
        let service = broker::address_service(app)?;
        facts.broker_address = apply_one(ctx, &ctx.caches.services, service, report)
            .await?
            .and_then(|service| cluster_ip(&service));
    }
    Ok(())
}

/// A Service's ClusterIP, unless it is headless or has none yet.
fn cluster_ip(service: &Service) -> Option<String> {
    service
        .spec
        .as_ref()?
        .cluster_ip
        .clone()
        .filter(|ip| !ip.is_empty() && ip != "None")
}

/// Creates the broker's credentials Secret unless this process knows it exists. Created, never
/// applied: the passwords are made here once, and the operator neither reads nor rewrites them.
async fn make_broker_credentials(
    ctx: &Context,
    app: &MicroserviceApp,
    report: &mut ApplyReport,
) -> Result<(), Error> {
    let uid = app.uid().unwrap_or_default();
    if lock(&ctx.broker_credentials).contains(&uid) {
        return Ok(());
    }
    // The app's broker StatefulSet in the cache was made after its Secret (see
    // `prepare_broker`): a restarted operator takes it as proof and sends nothing.
    if broker_state(ctx, app, None).flatten().is_some() {
        lock(&ctx.broker_credentials).insert(uid);
        return Ok(());
    }
    let secret = broker::credentials_secret(app, msa_events::broker::password)?;
    let name = secret.name_any();
    let namespace = app.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    ctx.metrics.count_write("Secret");
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(%name, %namespace, "created the event broker's credentials");
            report.changed.push(format!("Secret/{name}"));
        }
        // Made before for this very app (its name carries the app's uid): by this operator
        // before a restart, or by its predecessor.
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(kube::Error::Api(status)) if matches!(status.code, 400 | 422) => {
            report
                .failed
                .push((format!("Secret/{name}"), status.message.clone()));
            return Ok(());
        }
        Err(other) => return Err(other.into()),
    }
    lock(&ctx.broker_credentials).insert(uid);
    Ok(())
}

/// Applies the managed broker's objects, or deletes those the spec no longer asks for.
async fn apply_broker(
    ctx: &Context,
    app: &MicroserviceApp,
    desired: Option<broker::ManagedBroker>,
    report: &mut ApplyReport,
) -> Result<(), Error> {
    let caches = &ctx.caches;
    let app_name = app.name_any();
    let name = broker::name(&app_name);
    let Some(broker::ManagedBroker {
        config,
        service,
        pods_service,
        stateful_set,
        budget,
        network_policy,
    }) = desired
    else {
        // The servers stop (their volumes follow spec.storage.whenDeleted). The two Services,
        // the ConfigMap and the Secret stay until the app goes: the operator may delete none
        // of those kinds, and they cost nothing without the servers.
        delete_owned(ctx, app, &caches.stateful_sets, &name, report).await?;
        delete_owned(ctx, app, &caches.budgets, &name, report).await?;
        delete_owned(ctx, app, &caches.network_policies, &name, report).await?;
        return Ok(());
    };
    match network_policy {
        Some(policy) => {
            apply_one(ctx, &caches.network_policies, policy, report).await?;
        }
        None => delete_owned(ctx, app, &caches.network_policies, &name, report).await?,
    }
    apply_one(ctx, ctx.caches.config_maps.store(), config, report).await?;
    apply_one(ctx, &caches.services, service, report).await?;
    apply_one(ctx, &caches.services, pods_service, report).await?;
    report.broker = apply_one(ctx, &caches.stateful_sets, stateful_set, report)
        .await?
        .map(|s| WorkloadState::from(s.as_ref()));
    match budget {
        Some(budget) => {
            apply_one(ctx, &caches.budgets, budget, report).await?;
        }
        None => delete_owned(ctx, app, &caches.budgets, &name, report).await?,
    }
    Ok(())
}

/// The managed broker's StatefulSet as just applied, else as cached (None: not managed, or not
/// there).
fn broker_state(
    ctx: &Context,
    app: &MicroserviceApp,
    applied: Option<WorkloadState>,
) -> Option<Option<WorkloadState>> {
    if !broker::is_managed(app) {
        return None;
    }
    let cached = || {
        ctx.caches
            .stateful_sets
            .get(
                &ObjectRef::new(&broker::name(&app.name_any()))
                    .within(&app.namespace().unwrap_or_default()),
            )
            .filter(|s| controlled_by(s.as_ref(), app))
            .map(|s| WorkloadState::from(s.as_ref()))
    };
    Some(applied.or_else(cached))
}

/// Frees the app's rollout slot, if it holds one (see [`crate::pacing`]).
fn release_slot(ctx: &Context, app: &MicroserviceApp) {
    lock(&ctx.rollout_slots).release(&app.uid().unwrap_or_default());
}

/// The pod template of the app's cached workload `name` of one kind, if there is one.
fn cached_template<K>(
    cache: &Store<K>,
    app: &MicroserviceApp,
    name: &str,
    template: impl Fn(&K) -> Option<&k8s_openapi::api::core::v1::PodTemplateSpec>,
) -> Result<Option<serde_json::Value>, Error>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let Some(live) = cache.get(&ObjectRef::new(name).within(&app.namespace().unwrap_or_default()))
    else {
        return Ok(None);
    };
    Ok(Some(serde_json::to_value(template(&live))?))
}

/// Whether a workload may be applied now: unless its pod template changes while the app's spec
/// is already applied (the operator's own rollout, see [`crate::pacing`]), or the app holds or
/// gets a rollout slot.
fn may_roll(
    ctx: &Context,
    app: &MicroserviceApp,
    live_template: Option<&serde_json::Value>,
    desired_template: &serde_json::Value,
) -> bool {
    let config_hash = |template: &serde_json::Value| {
        template["metadata"]["annotations"][labels::CONFIG_HASH_ANNOTATION].clone()
    };
    let changes =
        live_template.is_some_and(|live| config_hash(live) != config_hash(desired_template));
    let observed = app.status.as_ref().and_then(|s| s.observed_generation);
    if !pacing::needs_slot(
        app.metadata.generation,
        observed,
        live_template.is_some(),
        changes,
    ) {
        return true;
    }
    let now = u64::try_from((ctx.now)().0.as_second()).unwrap_or(0);
    lock(&ctx.rollout_slots).take(&app.uid().unwrap_or_default(), now)
}

/// Before a Deployment is applied without `spec.replicas` (an autoscaler owns the count), the
/// live count is applied once under a field manager of its own (issue 28 M7). Server-side apply
/// resets a field its last owner drops to the default — one replica — until the autoscaler
/// writes it again; with a second owner the field keeps its value until the autoscaler's first
/// write takes it over (Kubernetes' server-side apply docs, "Transferring ownership"). Not
/// forced: a conflict with another manager means the autoscaler owns the count already, which is
/// the goal. Fails closed: when the count could not be handed over (an error, or a conflict
/// with the operator's own manager, meaning the cached count is stale), the Deployment is not
/// applied this time round and the reconcile is retried. Nothing is sent when the Deployment
/// will not be applied, or is not this app's.
async fn hand_over_replicas(
    ctx: &Context,
    app: &MicroserviceApp,
    desired: &Deployment,
) -> Result<(), Error> {
    let name = desired.name_any();
    let namespace = desired.namespace().unwrap_or_default();
    let Some(live) = ctx
        .caches
        .deployments
        .get(&ObjectRef::new(&name).within(&namespace))
        .filter(|live| controlled_by(live.as_ref(), app))
    else {
        return Ok(());
    };
    let Some(replicas) = live.spec.as_ref().and_then(|s| s.replicas) else {
        return Ok(());
    };
    if drift::is_contained(
        &serde_json::to_value(desired)?,
        &serde_json::to_value(live.as_ref())?,
    ) {
        return Ok(());
    }
    let handover = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": replicas},
    });
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    ctx.metrics.count_write("Deployment");
    match api
        .patch(
            &name,
            &PatchParams::apply(labels::REPLICAS_HANDOVER_MANAGER),
            &Patch::Apply(&handover),
        )
        .await
    {
        Ok(_) => {
            info!(%name, %namespace, replicas, "kept the replica count for the autoscaler under a field manager of its own");
            Ok(())
        }
        Err(kube::Error::Api(status))
            if status.code == 409 && !status.message.contains(&format!("\"{MANAGER}\"")) =>
        {
            Ok(())
        }
        Err(error) => {
            warn!(%name, %namespace, %error, "could not hand the replica count over to the autoscaler; not applying the Deployment until it can be");
            Err(error.into())
        }
    }
}

/// Deletes the `config` ConfigMaps of each component that nothing needs any more. Kept: the
/// current one, the one the cached workload's template reads (a paced component still runs
/// it), and — while pods of an older revision may remain (a rollout not over, or stuck) — the
/// newest other one, which such pods most likely read. The rest go, so a component whose
/// rollout never ends does not pile up a ConfigMap per edit. Only ConfigMaps this app controls,
/// labelled and named as the operator makes them.
async fn delete_unused_configs(
    ctx: &Context,
    app: &MicroserviceApp,
    report: &mut ApplyReport,
) -> Result<(), Error> {
    let namespace = app.namespace().unwrap_or_default();
    let app_name = app.name_any();
    let configs = ctx.caches.config_maps.of_app(&namespace, &app_name);
    if configs.is_empty() {
        return Ok(());
    }
    for component in Component::ALL {
        let prefix = format!("{}-config-", labels::child_name(&app_name, component));
        let mut keep: Vec<String> = running_config(ctx, app, component);
        let config = &component.spec(app).config;
        if !config.is_empty() {
            keep.push(build::config::config_map_name(&app_name, component, config));
        }
        let mut unused: Vec<&Arc<ConfigMap>> = configs
            .iter()
            .filter(|c| {
                let labels = c.labels();
                labels.get(labels::COMPONENT_CONFIG).map(String::as_str) == Some("true")
                    && labels.get(labels::COMPONENT).map(String::as_str) == Some(component.name())
                    && c.name_any().starts_with(&prefix)
                    && !keep.contains(&c.name_any())
            })
            .collect();
        let settled = report
            .workloads
            .get(&component)
            .is_some_and(WorkloadState::only_current_pods);
        if !settled && !unused.is_empty() {
            // Newest first; it stays for the pods an unfinished rollout left.
            unused.sort_by(|a, b| {
                (b.creation_timestamp(), b.name_any()).cmp(&(a.creation_timestamp(), a.name_any()))
            });
            unused.remove(0);
        }
        for config_map in unused {
            let name = config_map.name_any();
            delete_owned(ctx, app, ctx.caches.config_maps.store(), &name, report).await?;
        }
    }
    Ok(())
}

/// The `config` ConfigMaps the component's cached workload template reads.
fn running_config(ctx: &Context, app: &MicroserviceApp, component: Component) -> Vec<String> {
    cached_pod_template(ctx, app, component)
        .and_then(|t| t.spec)
        .into_iter()
        .flat_map(|pod| pod.containers)
        .flat_map(|container| container.env.unwrap_or_default())
        .filter_map(|var| Some(var.value_from?.config_map_key_ref?.name))
        .collect()
}

/// Whether `object`'s controller reference is `app` (this very object, by uid, not its name).
fn controlled_by(object: &impl Resource, app: &MicroserviceApp) -> bool {
    ownership::controller(object.meta()).is_some_and(|uid| Some(uid) == app.metadata.uid.as_deref())
}

/// Deletes a child this app controls that its spec no longer asks for (a cached object of that
/// name whose controller reference is the app). Objects of that name not owned by the app are
/// left alone.
async fn delete_owned<K>(
    ctx: &Context,
    app: &MicroserviceApp,
    cache: &Store<K>,
    name: &str,
    report: &mut ApplyReport,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let namespace = app.namespace().unwrap_or_default();
    let Some(cached) = cache.get(&ObjectRef::new(name).within(&namespace)) else {
        return Ok(());
    };
    if !controlled_by(cached.as_ref(), app) || cached.meta().deletion_timestamp.is_some() {
        return Ok(());
    }
    let kind = K::kind(&());
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    ctx.metrics.count_write(&kind);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {
            info!(%kind, %name, %namespace, "deleted child the spec no longer asks for");
            report.changed.push(format!("deleted {kind}/{name}"));
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(other) => Err(other.into()),
    }
}

/// Applies one child unless the cache shows it already as rendered. Returns the current object
/// (None when the API server refused it; the refusal goes into the report, other children are
/// still applied). Transport and permission errors abort the reconcile (a permission error is
/// still reported in status by the caller).
async fn apply_one<K>(
    ctx: &Context,
    cache: &Store<K>,
    desired: K,
    report: &mut ApplyReport,
) -> Result<Option<Arc<K>>, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = desired.name_any();
    let namespace = desired.namespace().unwrap_or_default();
    let cached = cache.get(&ObjectRef::new(&name).within(&namespace));
    let kind = K::kind(&());
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    // Never take over an object this app did not make (issue 28 L4): applying would adopt it,
    // and the garbage collector would delete it with the app. The caches hold only objects
    // with the operator's label, so one missing from them is looked up first.
    let live_meta = match &cached {
        Some(live) => Some(live.meta().clone()),
        None => api.get_metadata_opt(&name).await?.map(|m| m.metadata),
    };
    if let ownership::Takeover::Refuse(why) = ownership::judge(live_meta.as_ref(), desired.meta()) {
        warn!(%kind, %name, %namespace, why, "an object of a child's name exists and is not this app's; leaving it alone");
        let cascade = if kind == "StatefulSet" {
            " --cascade=orphan, which keeps its pods and claims"
        } else {
            ""
        };
        report.failed.push((
            format!("{kind}/{name}"),
            format!(
                "a {kind} of this name exists and {why}; the operator takes over no object it did \
                 not make. If an earlier app of this name is being deleted, this clears once it is \
                 gone; otherwise remove the object (kubectl delete {} {name} -n {namespace}{cascade}) \
                 or give the app another name",
                kind.to_lowercase()
            ),
        ));
        return Ok(None);
    }
    if let Some(live) = &cached
        && drift::is_contained(
            &serde_json::to_value(&desired)?,
            &serde_json::to_value(live.as_ref())?,
        )
    {
        return Ok(cached);
    }
    let verb = if cached.is_some() {
        "corrected"
    } else {
        "created"
    };
    Ok(apply_patch(ctx, &api, &kind, &desired, verb, report)
        .await?
        .map(Arc::new))
}

/// One server-side apply of `desired`, counted and reported; a refusal (400, 422, or 404 where
/// the kind does not exist) is reported and `None`, anything else an error.
async fn apply_patch<K>(
    ctx: &Context,
    api: &Api<K>,
    kind: &str,
    desired: &K,
    verb: &str,
    report: &mut ApplyReport,
) -> Result<Option<K>, Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = desired.name_any();
    let namespace = desired.namespace().unwrap_or_default();
    ctx.metrics.count_write(kind);
    match api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await
    {
        Ok(applied) => {
            info!(%kind, %name, %namespace, verb, "applied child");
            report.changed.push(format!("{kind}/{name}"));
            Ok(Some(applied))
        }
        Err(kube::Error::Api(status)) if matches!(status.code, 400 | 404 | 422) => {
            warn!(%kind, %name, %namespace, message = %status.message, "API server refused child");
            report
                .failed
                .push((format!("{kind}/{name}"), status.message.clone()));
            Ok(None)
        }
        Err(other) => Err(other.into()),
    }
}

/// Applies the app's PodMonitor when it changed since this process last applied it (it is not
/// watched: the Prometheus Operator's API may be absent), or deletes one this app had before
/// and no longer asks for.
async fn apply_pod_monitor(
    ctx: &Context,
    app: &MicroserviceApp,
    desired: Option<kube::api::DynamicObject>,
    report: &mut ApplyReport,
) -> Result<(), Error> {
    let resource = build::pod_monitor_resource();
    let namespace = app.namespace().unwrap_or_default();
    let key = app.uid().unwrap_or_default();
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), &namespace, &resource);
    let name = app.name_any();
    let Some(desired) = desired else {
        let had_one = build::had_pod_monitor(app);
        let api_present = ctx
            .cluster
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pod_monitors
            == facts::Known::Is(true);
        if had_one && api_present {
            // Only the app's own (issue 28 L2): a PodMonitor of that name someone else made, or
            // an earlier app of the name left, is not this app's to delete.
            let own = match api.get_opt(&name).await? {
                Some(live) if controlled_by(&live, app) => live.uid(),
                _ => None,
            };
            if let Some(uid) = own {
                ctx.metrics.count_write("PodMonitor");
                let params = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                match api.delete(&name, &params).await {
                    Ok(_) => report.changed.push(format!("PodMonitor/{name} (deleted)")),
                    Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {}
                    Err(other) => return Err(other.into()),
                }
            }
        }
        lock(&ctx.applied_pod_monitors).remove(&key);
        return Ok(());
    };
    let hash = desired
        .annotations()
        .get(crate::labels::RENDERED_HASH_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    if lock(&ctx.applied_pod_monitors).get(&key) == Some(&hash) {
        return Ok(());
    }
    // As for every child (issue 28 L4): a PodMonitor of the app's name it did not make is left
    // alone. Looked up only when this process has not applied it yet.
    let live = api.get_opt(&name).await?;
    if let ownership::Takeover::Refuse(why) =
        ownership::judge(live.as_ref().map(|l| &l.metadata), &desired.metadata)
    {
        warn!(%name, %namespace, why, "a PodMonitor of the app's name exists and is not this app's; leaving it alone");
        report.failed.push((
            format!("PodMonitor/{name}"),
            format!(
                "a PodMonitor of this name exists and {why}; the operator takes over no object it \
                 did not make: remove it (kubectl delete podmonitor {name} -n {namespace}) or turn \
                 spec.monitoring.podMonitor off"
            ),
        ));
        return Ok(());
    }
    if apply_patch(ctx, &api, "PodMonitor", &desired, "applied", report)
        .await?
        .is_some()
    {
        lock(&ctx.applied_pod_monitors).insert(key, hash);
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Ready endpoints of each component's Service, from the app's own slices (slices copy their
/// Service's labels, so they are indexed by the app's instance label).
fn ready_endpoints_by_component(
    slices: &IndexedStore<EndpointSlice>,
    app: &MicroserviceApp,
) -> BTreeMap<Component, i32> {
    let app_name = app.name_any();
    let of_app = slices.of_app(&app.namespace().unwrap_or_default(), &app_name);
    Component::ALL
        .into_iter()
        .map(|component| {
            let service = labels::child_name(&app_name, component);
            let of_service = of_app
                .iter()
                .map(AsRef::as_ref)
                .filter(|slice: &&EndpointSlice| {
                    slice.labels().get("kubernetes.io/service-name") == Some(&service)
                });
            (component, status::ready_endpoints(of_service))
        })
        .collect()
}

/// Writes the status computed from `observed` if it differs from the stored one, and announces
/// flips of Ready and Degraded as Events.
/// Writes the app's status if it changed; returns it.
async fn write_status(
    app: &MicroserviceApp,
    ctx: &Context,
    observed: &Observed,
) -> Result<MicroserviceAppStatus, Error> {
    let now = (ctx.now)();
    let status = status::compute(app, observed, &now);
    let previous = app.status.clone().unwrap_or_default();
    if previous == status {
        return Ok(status);
    }
    let api: Api<MicroserviceApp> =
        Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
    let body = status_patch(&status);
    ctx.metrics.count_write("MicroserviceApp/status");
    api.patch_status(
        &app.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    announce_flips(app, ctx, &previous, &status).await;
    Ok(status)
}

/// The server-side-apply body for the status subresource.
pub fn status_patch(status: &MicroserviceAppStatus) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": MicroserviceApp::api_version(&()),
        "kind": MicroserviceApp::kind(&()),
        "status": status,
    })
}

async fn announce_flips(
    app: &MicroserviceApp,
    ctx: &Context,
    before: &MicroserviceAppStatus,
    after: &MicroserviceAppStatus,
) {
    for type_ in [READY, DEGRADED] {
        let old = conditions::find(&before.conditions, type_);
        let Some(new) = conditions::find(&after.conditions, type_) else {
            continue;
        };
        if old.is_some_and(|o| o.status == new.status && o.reason == new.reason) {
            continue;
        }
        let bad = (type_ == READY) != (new.status == "True");
        // A new app is naturally not ready yet; only a Degraded one is news from the start.
        if old.is_none() && !(type_ == DEGRADED && bad) {
            continue;
        }
        let kind = if bad {
            EventType::Warning
        } else {
            EventType::Normal
        };
        publish(ctx, app, kind, &new.reason, type_, new.message.clone()).await;
    }
}

async fn publish(
    ctx: &Context,
    app: &MicroserviceApp,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    publish_on(ctx, &app.object_ref(&()), type_, reason, action, note).await;
}

async fn publish_on(
    ctx: &Context,
    regarding: &ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(truncate(note, 1000)),
        action: action.to_owned(),
        secondary: None,
    };
    ctx.metrics.count_write("Event");
    if let Err(error) = ctx.recorder.publish(&event, regarding).await {
        // Events are best effort: failing to record one must not fail the reconcile.
        warn!(%error, reason, "could not publish Event");
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}
