//! Pure rendering of every child object from a validated MicroserviceApp: no client, no clock.
//! What these functions return is exactly what the operator sends with server-side apply.

pub mod broker;
pub mod config;
mod container;
mod deployment;
mod disruption;
mod hash;
mod identity;
mod monitoring;
mod network;
mod pod;
mod rbac;
mod service;
mod statefulset;
pub mod telemetry;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::component::Component;
use crate::crd::MicroserviceApp;

pub use container::{ADMIN_PORT, ADMIN_PORT_NAME};
pub use disruption::needs_budget;
pub use hash::{short_hash, stamp_rendered_hash};
pub use identity::{
    ClusterFacts, ServiceIssuer, audience, issuer_config_map_name, own_account, published_keys,
    rendered_issuer,
};
pub use monitoring::{had_pod_monitor, pod_monitor_resource, status_note as monitoring_note};
pub use network::callers;
pub use pod::has_embedded_database;
pub use statefulset::claim_name;

/// Every object the operator keeps for one app. Consumers destructure it exhaustively, so a
/// new kind of child cannot be silently skipped when applying.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// One per component, in [`Component::ALL`] order.
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    /// Only for components that can have more than one pod ([`needs_budget`]).
    pub budgets: Vec<(Component, PodDisruptionBudget)>,
    /// The discovering components' identity (the gateway's).
    pub service_account: ServiceAccount,
    /// The order and product services' own identities: both discover, and each one's tokens
    /// prove to the other who is calling ([`identity`]). In [`Component::ALL`] order.
    pub own_service_accounts: Vec<ServiceAccount>,
    /// The ServiceAccount issuer's keys for the services that check their peers' tokens, once
    /// the operator knows them.
    pub service_issuer: Option<ConfigMap>,
    pub role: Role,
    pub role_binding: RoleBinding,
    /// One per component, in [`Component::ALL`] order; none when `spec.networkPolicy.enabled`
    /// is false.
    pub network_policies: Vec<NetworkPolicy>,
    /// When `spec.monitoring.podMonitor.enabled` and the cluster has the API.
    pub pod_monitor: Option<kube::api::DynamicObject>,
    /// The event broker the operator runs for the app (`spec.events`, see [`broker`]).
    pub broker: Option<broker::ManagedBroker>,
    /// Each component's `config` as an immutable ConfigMap (see [`config`]), for the
    /// components that have one, in [`Component::ALL`] order.
    pub component_configs: Vec<ConfigMap>,
}

impl Children {
    /// Number of objects: each is one apply when the app is new.
    pub fn count(&self) -> usize {
        let Children {
            workloads,
            services,
            budgets,
            service_account: _,
            own_service_accounts,
            service_issuer,
            role: _,
            role_binding: _,
            network_policies,
            pod_monitor,
            broker,
            component_configs,
        } = self;
        workloads.len()
            + component_configs.len()
            + services.len()
            + budgets.len()
            + network_policies.len()
            + own_service_accounts.len()
            + usize::from(service_issuer.is_some())
            + usize::from(pod_monitor.is_some())
            + broker.as_ref().map_or(0, broker::ManagedBroker::count)
            // The discovery ServiceAccount, its Role and RoleBinding.
            + 3
    }
}

/// What runs a component's pods.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    /// Interchangeable replicas: the gateway, and services whose data is in PostgreSQL.
    Deployment(Deployment),
    /// One pod with its own volume: a service with an embedded database.
    StatefulSet(StatefulSet),
}

/// Why an app could not be rendered (only objects not yet stored by the API server lack these).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("MicroserviceApp has no {0}; it must come from the API server")]
    MissingMetadata(&'static str),
}

/// The identity of the app every child refers back to.
pub(crate) struct Owner {
    pub name: String,
    pub namespace: String,
    pub reference: OwnerReference,
    /// What the cluster told the operator (rendering stays a pure function of it).
    pub cluster: ClusterFacts,
}

impl Owner {
    fn of(app: &MicroserviceApp, cluster: &ClusterFacts) -> Result<Self, BuildError> {
        let namespace = app
            .namespace()
            .ok_or(BuildError::MissingMetadata("namespace"))?;
        let mut reference = app
            .controller_owner_ref(&())
            .ok_or(BuildError::MissingMetadata("uid"))?;
        // As controller-runtime's SetControllerReference: under foreground deletion (Argo CD's
        // default prune) the app is gone only once its children are (issue 28 L4).
        reference.block_owner_deletion = Some(true);
        Ok(Self {
            name: app.name_any(),
            namespace,
            reference,
            cluster: cluster.clone(),
        })
    }

    /// Metadata of a component's object: named `<app>-<component>`, with the component's
    /// labels (its extra ones included).
    fn component_metadata(&self, app: &MicroserviceApp, component: Component) -> ObjectMeta {
        let labels =
            crate::labels::component_labels(&self.name, component, &component.spec(app).labels);
        self.metadata(crate::labels::child_name(&self.name, component), labels)
    }

    /// A component's workload: its metadata plus the component's extra annotations.
    fn workload_metadata(&self, app: &MicroserviceApp, component: Component) -> ObjectMeta {
        let mut metadata = self.component_metadata(app, component);
        let annotations = &component.spec(app).annotations;
        if !annotations.is_empty() {
            metadata.annotations = Some(annotations.clone());
        }
        metadata
    }

    /// Metadata every child carries: name, namespace, labels and the controller reference that
    /// lets Kubernetes' garbage collector delete it with the app.
    fn metadata(
        &self,
        name: String,
        labels: std::collections::BTreeMap<String, String>,
    ) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.reference.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// Renders every child of the app, as on a cluster whose ServiceAccount issuer is not known.
pub fn children(app: &MicroserviceApp) -> Result<Children, BuildError> {
    children_in(app, &ClusterFacts::default())
}

/// Renders every child of the app for a cluster with these facts.
pub fn children_in(app: &MicroserviceApp, cluster: &ClusterFacts) -> Result<Children, BuildError> {
    let owner = Owner::of(app, cluster)?;
    Ok(Children {
        workloads: Component::ALL
            .into_iter()
            .map(|c| workload(app, &owner, c))
            .collect(),
        services: Component::ALL
            .into_iter()
            .map(|c| stamp_rendered_hash(service::service(app, &owner, c)))
            .collect(),
        budgets: Component::ALL
            .into_iter()
            .filter(|c| needs_budget(app, *c))
            .map(|c| (c, stamp_rendered_hash(disruption::budget(app, &owner, c))))
            .collect(),
        service_account: stamp_rendered_hash(rbac::service_account(&owner)),
        own_service_accounts: rbac::own_service_accounts(&owner)
            .into_iter()
            .map(stamp_rendered_hash)
            .collect(),
        service_issuer: identity::issuer_config_map(&owner).map(stamp_rendered_hash),
        role: stamp_rendered_hash(rbac::role(&owner)),
        role_binding: stamp_rendered_hash(rbac::role_binding(&owner)),
        pod_monitor: monitoring::pod_monitor(app, &owner).map(stamp_rendered_hash),
        network_policies: if app.spec.network_policy.enabled {
            Component::ALL
                .into_iter()
                .map(|c| stamp_rendered_hash(network::policy(app, &owner, c)))
                .collect()
        } else {
            Vec::new()
        },
        broker: broker::managed(app, &owner).map(|b| broker::ManagedBroker {
            config: stamp_rendered_hash(b.config),
            service: stamp_rendered_hash(b.service),
            pods_service: stamp_rendered_hash(b.pods_service),
            stateful_set: stamp_rendered_hash(b.stateful_set),
            budget: b.budget.map(stamp_rendered_hash),
            network_policy: b.network_policy.map(stamp_rendered_hash),
        }),
        component_configs: Component::ALL
            .into_iter()
            .filter_map(|c| config::config_map(app, &owner, c))
            .map(stamp_rendered_hash)
            .collect(),
    })
}

fn workload(app: &MicroserviceApp, owner: &Owner, component: Component) -> Workload {
    if has_embedded_database(app, component) {
        Workload::StatefulSet(stamp_rendered_hash(statefulset::stateful_set(
            app, owner, component,
        )))
    } else {
        Workload::Deployment(stamp_rendered_hash(deployment::deployment(
            app, owner, component,
        )))
    }
}

/// The gateway's in-cluster URL, as reported in status (never dialled by the operator).
pub fn gateway_url(app: &MicroserviceApp) -> Option<String> {
    let namespace = app.namespace()?;
    let name = crate::labels::child_name(&app.name_any(), Component::Gateway);
    let port = app.spec.components.gateway.service.port;
    Some(if port == 80 {
        format!("http://{name}.{namespace}.svc")
    } else {
        format!("http://{name}.{namespace}.svc:{port}")
    })
}
