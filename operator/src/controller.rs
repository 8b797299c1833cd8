//! Wires the reconciler into a kube-runtime `Controller`: one watch per kind, each feeding a
//! reflector cache the reconciler reads from and triggering the owning app on any change, so
//! hand edits and deletions of children are reverted.

use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::Api;
use kube::core::DeserializeGuard;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use crate::crd::MicroserviceApp;
use crate::labels;
use crate::metrics::Metrics;
use crate::reconcile::{Caches, Context, error_policy_object, reconcile_object};

/// An app as the controller watches it: readable, or its metadata and why it is not.
type WatchedApp = DeserializeGuard<MicroserviceApp>;

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace to watch; all namespaces when None.
    pub namespace: Option<String>,
    /// Apps reconciled at once.
    pub concurrency: u16,
    /// Identifies this process in Events.
    pub instance: String,
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

/// A cached watch of the objects the operator labelled as managed.
fn cached_watch<K>(
    client: &Client,
    namespace: Option<&str>,
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
    let config = watcher::Config::default()
        .any_semantic()
        .labels(&labels::managed_selector());
    let stream = watcher(api::<K>(client, namespace), config)
        .default_backoff()
        .reflect(writer)
        .touched_objects();
    (store, stream)
}

/// The app an object reports on, by its instance label: EndpointSlices copy their Service's
/// labels, claims their StatefulSet's claim template's.
fn app_of_labelled<K: Resource>(object: K) -> Option<ObjectRef<WatchedApp>> {
    let app = object.labels().get(labels::INSTANCE)?.clone();
    Some(ObjectRef::new(&app).within(&object.namespace()?))
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = settings.namespace.as_deref();
    let (deployments, deployment_events) = cached_watch::<Deployment>(&client, ns);
    let (stateful_sets, stateful_set_events) = cached_watch::<StatefulSet>(&client, ns);
    let (budgets, budget_events) = cached_watch::<PodDisruptionBudget>(&client, ns);
    let (claims, claim_events) = cached_watch::<PersistentVolumeClaim>(&client, ns);
    let (services, service_events) = cached_watch::<Service>(&client, ns);
    let (service_accounts, service_account_events) = cached_watch::<ServiceAccount>(&client, ns);
    let (roles, role_events) = cached_watch::<Role>(&client, ns);
    let (role_bindings, role_binding_events) = cached_watch::<RoleBinding>(&client, ns);
    let (network_policies, network_policy_events) = cached_watch::<NetworkPolicy>(&client, ns);
    let (config_maps, config_map_events) = cached_watch::<ConfigMap>(&client, ns);
    let (endpoint_slices, slice_events) = cached_watch::<EndpointSlice>(&client, ns);

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
        endpoint_slices,
    };
    let reporter = Reporter {
        controller: labels::MANAGER.to_owned(),
        instance: Some(settings.instance.clone()),
    };
    let recorder = Recorder::new(client.clone(), reporter);
    let context = Arc::new(Context::new(client.clone(), caches, recorder, metrics));
    // Learn the ServiceAccount issuer before the first reconcile, so the product services
    // start with the check instead of rolling once it is known.
    crate::facts::learn(&client, &context).await;
    let refresher = tokio::spawn(crate::facts::keep_current(client.clone(), context.clone()));

    // Apps are read through DeserializeGuard: one the types cannot read is reported and skipped
    // instead of failing the list of every app (see crate::unreadable).
    let controller = Controller::new(
        api::<WatchedApp>(&client, ns),
        watcher::Config::default().any_semantic(),
    );
    let counter = tokio::spawn(count_apps(controller.store(), context.metrics.clone()));
    controller
        .with_config(controller::Config::default().concurrency(settings.concurrency))
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
/// controller's cache of apps.
async fn count_apps(apps: Store<WatchedApp>, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(15));
    loop {
        tick.tick().await;
        metrics.count_app_health(
            apps.state()
                .iter()
                .map(|app| crate::unreadable::health(app)),
        );
    }
}
