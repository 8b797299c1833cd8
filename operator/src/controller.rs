//! Wires the reconciler into a kube-runtime `Controller`: one watch per kind, each feeding a
//! reflector cache the reconciler reads from and triggering the owning app on any change, so
//! hand edits and deletions of children are reverted.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use std::hash::{Hash, Hasher};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, ApiResource};
use kube::core::DeserializeGuard;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{PredicateConfig, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::app_index::{IndexedStore, IndexedWriter};
use crate::config_sources::{self, SourceKind};
use crate::crd::MicroserviceApp;
use crate::labels;
use crate::metrics::Metrics;
use crate::reconcile::{Caches, Context, error_policy_object, reconcile_object};
use crate::scope::{CacheWriter, Scope, ScopedWriter};

/// An app as the controller watches it: readable, or its metadata and why it is not.
pub type WatchedApp = DeserializeGuard<MicroserviceApp>;

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The namespaces watched.
    pub scope: Scope,
    /// Apps reconciled at once.
    pub concurrency: u16,
    /// Changes to one app within this time are gathered into one reconcile.
    pub debounce: std::time::Duration,
    /// Apps the operator's own re-rendering may roll at once (see [`crate::pacing`]).
    pub rollout_slots: usize,
    /// Identifies this process in Events.
    pub instance: String,
    /// Whether Secrets named in `configFrom` are watched, so a change in one rolls the pods
    /// that read it (it needs the right to read every Secret in scope; see the chart's
    /// `watchConfigSecrets`).
    pub watch_config_secrets: bool,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// One watch per namespace of `scope` feeding `writer`'s cache (see [`crate::scope`]); the
/// stream yields what the cache applied, so a reconcile it triggers finds what triggered it.
fn scoped_cache<K, W, S>(
    scope: &Scope,
    writer: W,
    watch: impl Fn(Option<&str>) -> S,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + Send + 'static,
    W: CacheWriter<K> + Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let mut cache = ScopedWriter::new(scope, writer);
    futures::stream::select_all(scope.watches().into_iter().enumerate().map(
        |(index, namespace)| {
            watch(namespace.as_deref())
                .map_ok(move |event| (index, event))
                .boxed()
        },
    ))
    .map_ok(move |(watch, event)| {
        futures::stream::iter(cache.apply(watch, event).into_iter().map(Ok))
    })
    .try_flatten()
}

/// The watch of the objects the operator labelled as managed, in one namespace or all.
fn managed_objects<K>(
    client: &Client,
    namespace: Option<&str>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + use<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let config = watcher::Config::default()
        .any_semantic()
        .labels(&labels::managed_selector());
    watcher(api::<K>(client, namespace), config)
        .default_backoff()
        .modify(forget_managed_fields)
}

/// A cached watch of the objects the operator labelled as managed.
fn cached_watch<K>(
    client: &Client,
    scope: &Scope,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = scoped_cache(scope, writer, |namespace| {
        managed_objects::<K>(client, namespace)
    })
    .touched_objects();
    (store, stream)
}

/// Issue 28 (memory): `metadata.managedFields` is often the largest part of a child object
/// and nothing the operator reads (server-side apply computes ownership on the server), so the
/// caches never keep it.
fn forget_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// A cached watch like [`cached_watch`], indexed by app (see [`crate::app_index`]).
fn indexed_watch<K>(
    client: &Client,
    scope: &Scope,
) -> (
    IndexedStore<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let writer = IndexedWriter::default();
    let store = writer.as_reader();
    let stream = scoped_cache(scope, writer, |namespace| {
        managed_objects::<K>(client, namespace)
    })
    .touched_objects();
    (store, stream)
}

/// A cached watch of every object of a kind in scope (not only the operator's), each condensed
/// by `condense` before it is kept (see [`crate::config_sources`]). Listed from etcd 50 at a
/// time (not from the API server's cache, which before Kubernetes 1.33 ignores the page size
/// and would send a whole cluster's ConfigMaps in one answer), so no more than a page of
/// content is ever held before it is condensed. The stream yields an object only when its
/// content changed (a relabelled ConfigMap concerns no app).
fn condensed_watch<K>(
    client: &Client,
    scope: &Scope,
    condense: fn(&mut K),
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = scoped_cache(scope, writer, move |namespace| {
        watcher(
            api::<K>(client, namespace),
            watcher::Config::default().page_size(50),
        )
        .default_backoff()
        .modify(condense)
    })
    .touched_objects()
    .predicate_filter(content_changes, PredicateConfig::default());
    (store, stream)
}

/// The content hash a condensed object carries, as a predicate value.
fn content_changes<K: Resource>(object: &K) -> Option<u64> {
    let mut hasher = std::hash::DefaultHasher::new();
    config_sources::condensed_hash(object).hash(&mut hasher);
    Some(hasher.finish())
}

/// Every kind the controller watches (each namespace of its scope needs `list` and `watch` on
/// them): the apps and their children, as [`run`] watches them, and Secrets when
/// `watch_config_secrets`.
pub fn watched_kinds(watch_config_secrets: bool) -> Vec<ApiResource> {
    let mut kinds = vec![
        ApiResource::erase::<MicroserviceApp>(&()),
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<PodDisruptionBudget>(&()),
        ApiResource::erase::<PersistentVolumeClaim>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<ServiceAccount>(&()),
        ApiResource::erase::<Role>(&()),
        ApiResource::erase::<RoleBinding>(&()),
        ApiResource::erase::<NetworkPolicy>(&()),
        ApiResource::erase::<ConfigMap>(&()),
        ApiResource::erase::<EndpointSlice>(&()),
    ];
    if watch_config_secrets {
        kinds.push(ApiResource::erase::<Secret>(&()));
    }
    kinds
}

/// What a reconcile reads from the app itself besides its status: the spec (whose changes
/// bump `metadata.generation`) and whether it is being deleted. Changes to anything else —
/// above all the status the operator itself writes — do not trigger a reconcile, or every
/// status write would cause the next reconcile. An app the operator cannot read triggers on any
/// change (its resourceVersion), so a fix is seen at once.
pub fn reconcile_inputs(object: &WatchedApp) -> Option<u64> {
    let meta = object.meta();
    let mut hasher = std::hash::DefaultHasher::new();
    match &object.0 {
        // Annotations too: editing one is how people ask an operator to look again
        // (`kubectl annotate msa shop …`); the operator itself never writes them.
        Ok(_) => (
            meta.generation,
            meta.deletion_timestamp.is_some(),
            &meta.annotations,
        )
            .hash(&mut hasher),
        Err(_) => meta.resource_version.hash(&mut hasher),
    }
    Some(hasher.finish())
}

/// The app an object reports on, by its instance label: EndpointSlices copy their Service's
/// labels, claims their StatefulSet's claim template's.
fn app_of_labelled<K: Resource>(object: K) -> Option<ObjectRef<WatchedApp>> {
    let app = object.labels().get(labels::INSTANCE)?.clone();
    Some(ObjectRef::new(&app).within(&object.namespace()?))
}

/// The watch mapper of a `configFrom` kind: a change in an object concerns the apps that read it.
fn readers<K: Resource>(
    apps: &Store<WatchedApp>,
    kind: SourceKind,
) -> impl Fn(K) -> Vec<ObjectRef<WatchedApp>> + Send + Sync + 'static {
    let apps = apps.clone();
    move |object: K| {
        let namespace = object.namespace().unwrap_or_default();
        config_sources::apps_reading(&apps.state(), &namespace, kind, &object.name_any())
    }
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = &settings.scope;
    info!(namespaces = %ns.describe(), "watching MicroserviceApps");
    let (deployments, deployment_events) = cached_watch::<Deployment>(&client, ns);
    let (stateful_sets, stateful_set_events) = cached_watch::<StatefulSet>(&client, ns);
    let (budgets, budget_events) = cached_watch::<PodDisruptionBudget>(&client, ns);
    let (claims, claim_events) = cached_watch::<PersistentVolumeClaim>(&client, ns);
    let (services, service_events) = cached_watch::<Service>(&client, ns);
    let (service_accounts, service_account_events) = cached_watch::<ServiceAccount>(&client, ns);
    let (roles, role_events) = cached_watch::<Role>(&client, ns);
    let (role_bindings, role_binding_events) = cached_watch::<RoleBinding>(&client, ns);
    let (network_policies, network_policy_events) = cached_watch::<NetworkPolicy>(&client, ns);
    let (config_maps, config_map_events) = indexed_watch::<ConfigMap>(&client, ns);
    let (config_sources, config_source_events) =
        condensed_watch(&client, ns, config_sources::condense_config_map);
    let (secret_sources, secret_source_events) = if settings.watch_config_secrets {
        let (store, events) = condensed_watch(&client, ns, config_sources::condense_secret);
        (Some(store), Some(events))
    } else {
        (None, None)
    };
    let (endpoint_slices, slice_events) = indexed_watch::<EndpointSlice>(&client, ns);

    let caches = Caches {
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
    };
    let reporter = Reporter {
        controller: labels::MANAGER.to_owned(),
        instance: Some(settings.instance.clone()),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let context = Arc::new(
        Context::new(client.clone(), caches, recorder, metrics)
            .with_rollout_slots(settings.rollout_slots),
    );
    // Learn the ServiceAccount issuer before the first reconcile, so the order and product
    // services start with the check instead of rolling once it is known.
    crate::facts::learn(&client, &context).await;
    let refresher = tokio::spawn(crate::facts::keep_current(client.clone(), context.clone()));

    // Apps are read through DeserializeGuard: one the types cannot read is reported and skipped
    // instead of failing the list of every app (see crate::unreadable). The cache holds every
    // change; only changes of what a reconcile reads trigger one.
    let (apps, app_writer) = reflector::store();
    let app_changes = scoped_cache(ns, app_writer, |namespace| {
        watcher(
            api::<WatchedApp>(&client, namespace),
            watcher::Config::default().any_semantic(),
        )
        .default_backoff()
    })
    .applied_objects()
    .predicate_filter(reconcile_inputs, PredicateConfig::default());
    let controller = Controller::for_stream(app_changes, apps.clone());
    let counter = tokio::spawn(count_apps(controller.store(), context.clone()));
    controller
        .with_config(
            controller::Config::default()
                .concurrency(settings.concurrency)
                .debounce(settings.debounce),
        )
        .owns_stream(deployment_events)
        .owns_stream(stateful_set_events)
        .owns_stream(budget_events)
        .owns_stream(service_events)
        .owns_stream(service_account_events)
        .owns_stream(role_events)
        .owns_stream(role_binding_events)
        .owns_stream(network_policy_events)
        .owns_stream(config_map_events)
        .watches_stream(slice_events, app_of_labelled)
        .watches_stream(claim_events, app_of_labelled)
        .watches_stream(
            config_source_events,
            readers::<ConfigMap>(&apps, SourceKind::ConfigMap),
        )
        .watches_stream(
            futures::stream::iter(secret_source_events).flatten(),
            readers::<Secret>(&apps, SourceKind::Secret),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile_object, error_policy_object, context)
        .for_each(|result| async move {
            match result {
                Ok((app, _)) => debug!(app = %app.name, namespace = app.namespace.as_deref().unwrap_or_default(), "reconciled"),
                // Reconcile errors are logged by the error policy; these are watch and queue
                // errors, which the controller retries on its own.
                Err(controller::Error::ReconcilerFailed(..)) => {}
                Err(error) => warn!(%error, "controller stream error"),
            }
        })
        .await;
    refresher.abort();
    counter.abort();
}

/// Keeps `msa_operator_apps{ready}` and `msa_operator_unreadable_apps` current from the
/// controller's cache of apps, and forgets what the reconciler remembers of apps that are gone.
async fn count_apps(apps: Store<WatchedApp>, context: Arc<crate::reconcile::Context>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(15));
    loop {
        tick.tick().await;
        let state = apps.state();
        context
            .metrics
            .count_app_health(state.iter().map(|app| crate::unreadable::health(app)));
        context.forget_apps_except(&crate::reconcile::ExistingApps::of(
            state.iter().map(|app| app.meta()),
        ));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn watched(changes: serde_json::Value) -> WatchedApp {
        let mut app = json!({
            "apiVersion": "msa.dev/v1alpha1", "kind": "MicroserviceApp",
            "metadata": {"name": "shop", "namespace": "demo", "uid": "u", "generation": 1,
                         "resourceVersion": "10"},
            "spec": {},
        });
        merge(&mut app, changes);
        serde_json::from_value(app).unwrap()
    }

    fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(into), serde_json::Value::Object(from)) => {
                for (key, value) in from {
                    merge(into.entry(key).or_insert(serde_json::Value::Null), value);
                }
            }
            (into, from) => *into = from,
        }
    }

    /// Issue 28, L3: the operator's own status write (a new resourceVersion, the same
    /// generation) does not trigger the next reconcile; a spec change or a deletion does.
    #[test]
    fn only_changes_a_reconcile_reads_trigger_one() {
        let base = reconcile_inputs(&watched(json!({})));
        let status_written = watched(json!({
            "metadata": {"resourceVersion": "11", "managedFields": [{"manager": "msa-operator"}]},
            "status": {"observedGeneration": 1},
        }));
        let relabelled = watched(json!({"metadata": {"labels": {"team": "a"}}}));
        assert_eq!(reconcile_inputs(&status_written), base);
        assert_eq!(reconcile_inputs(&relabelled), base);
        let poked = watched(json!({"metadata": {"annotations": {"e2e.msa.dev/poke": "1"}}}));
        assert_ne!(
            reconcile_inputs(&poked),
            base,
            "an annotation asks for a look"
        );
        let edited =
            watched(json!({"metadata": {"generation": 2}, "spec": {"image": "x:{component}"}}));
        let deleting = watched(json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}));
        assert_ne!(reconcile_inputs(&edited), base);
        assert_ne!(reconcile_inputs(&deleting), base);
    }

    #[test]
    fn cached_children_keep_no_managed_fields() {
        let mut deployment: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "shop-gateway", "managedFields": [{"manager": "msa-operator", "operation": "Apply"}]},
        }))
        .unwrap();
        forget_managed_fields(&mut deployment);
        assert_eq!(deployment.metadata.managed_fields, None);
        assert_eq!(deployment.name_any(), "shop-gateway");
    }

    #[test]
    fn an_unreadable_app_triggers_on_any_change() {
        let bad = |version: &str| {
            watched(json!({
                "metadata": {"resourceVersion": version},
                "spec": {"storage": {"size": null}},
            }))
        };
        assert!(bad("10").0.is_err());
        assert_ne!(reconcile_inputs(&bad("10")), reconcile_inputs(&bad("11")));
    }
}
