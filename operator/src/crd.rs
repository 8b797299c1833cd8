//! The `MicroserviceApp` custom resource (`msa.dev/v1alpha1`).
//!
//! Doc comments on these types are the text `kubectl explain microserviceapp.spec...` shows, so
//! they are written for the person editing the resource. Defaults and ranges live in the schema
//! (the API server enforces them); rules that span fields are CEL (`x-kubernetes-validations`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference, ResourceRequirements};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSON, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The image used for a component when neither `spec.image` nor the component sets one.
pub const DEFAULT_IMAGE_PATTERN: &str = "ghcr.io/msa-dev/msa-{component}:0.2.0";

/// The placeholder in `spec.image` replaced by the component name.
pub const COMPONENT_PLACEHOLDER: &str = "{component}";

/// A whole microservice application: user, order and product services behind an API gateway.
///
/// The operator keeps one workload (a Deployment, or a StatefulSet for an embedded database) and
/// one Service per component, named `<app>-<component>`, converged to this spec.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "msa.dev",
    version = "v1alpha1",
    kind = "MicroserviceApp",
    plural = "microserviceapps",
    shortname = "msa",
    category = "all",
    namespaced,
    status = "MicroserviceAppStatus",
    derive = "PartialEq",
    doc = "A microservice application (user, order and product services behind an API gateway), run and kept converged by msa-operator.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1"
    ),
    printcolumn(name = "Gateway", type_ = "string", json_path = ".status.gateway.url"),
    printcolumn(
        name = "Auth",
        type_ = "string",
        json_path = ".spec.components.gateway.auth.issuer",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message(
        "metadata.name must be lowercase letters, digits and '-', starting with a letter and not ending with '-': it names the app's Services and is a token of its event subjects"
    ),
    validation = Rule::new("size(self.metadata.name) <= 53").message(
        "metadata.name must be at most 53 characters: child objects are named <name>-<component> (up to <name>-discovery) and must fit in 63"
    ),
    validation = Rule::new("has(self.spec.events) && (!self.spec.events.enabled || has(self.spec.events.external)) || size(self.metadata.name) <= 45").message(
        "metadata.name must be at most 45 characters while the operator runs the event broker: it runs in a StatefulSet named <name>-events, whose pods carry a revision label <name>-events-<hash> that must fit in 63; shorten the name, set spec.events.external or spec.events.enabled: false"
    ),
    validation = Rule::new("has(self.spec.database) || size(self.metadata.name) <= 44").message(
        "metadata.name must be at most 44 characters without spec.database: the embedded databases run in StatefulSets named <name>-<component>, whose pods carry a revision label <name>-<component>-<hash> that must fit in 63"
    )
)]
#[x_kube(
    cel,
    validation = Rule::new("self.components.user.replicas <= 1 && !self.components.user.autoscaled || has(self.database)")
        .message("spec.components.user: more than one replica (or autoscaling) needs spec.database, because the embedded SQLite database is per pod and replicas would diverge; set spec.database.secretRef or use 1 replica")
        .field_path(".components.user.replicas")
        .reason(kube::core::Reason::FieldValueForbidden),
    validation = Rule::new("self.components.order.replicas <= 1 && !self.components.order.autoscaled || has(self.database)")
        .message("spec.components.order: more than one replica (or autoscaling) needs spec.database, because the embedded SQLite database is per pod and replicas would diverge; set spec.database.secretRef or use 1 replica")
        .field_path(".components.order.replicas")
        .reason(kube::core::Reason::FieldValueForbidden),
    validation = Rule::new("self.components.product.replicas <= 1 && !self.components.product.autoscaled || has(self.database)")
        .message("spec.components.product: more than one replica (or autoscaling) needs spec.database, because the embedded SQLite database is per pod and replicas would diverge; set spec.database.secretRef or use 1 replica")
        .field_path(".components.product.replicas")
        .reason(kube::core::Reason::FieldValueForbidden),
)]
#[serde(rename_all = "camelCase")]
pub struct MicroserviceAppSpec {
    /// Image pattern for every component; `{component}` is replaced by the component name
    /// (`user`, `order`, `product`, `gateway`). A component's own `image` takes precedence.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// When the kubelet pulls images. Defaults to Kubernetes' own rule (Always for `:latest`,
    /// IfNotPresent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Secrets used to pull the images from a private registry (at most 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("maxItems" = 16))]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Per-component settings. Every component runs even when it is not listed here.
    #[serde(default)]
    pub components: Components,

    /// External PostgreSQL for the stateful services (then each runs as a Deployment and may
    /// scale out). Absent: user, order and product each keep an embedded SQLite database on a
    /// PersistentVolume, in a one-replica StatefulSet (`spec.storage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseSpec>,

    /// The volumes of the embedded databases (used only without `spec.database`).
    #[serde(default)]
    pub storage: StorageSpec,

    /// Who may connect to whom, as NetworkPolicies (enforced only where the cluster's network
    /// plugin enforces them).
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,

    /// How Prometheus finds the app's pods.
    #[serde(default)]
    pub monitoring: MonitoringSpec,

    /// Traces: every component exports OpenTelemetry spans to this OTLP receiver. Absent:
    /// no component traces (nor spends anything on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,

    /// Events: every change the user, order and product services make is written, in the
    /// change's own transaction, to the service's outbox and published once to a NATS JetStream
    /// stream `msa-<app>-<service>` (subjects `msa.<app>.<service>.<type>`). By default the
    /// operator runs the broker (`<app>-events`); `external` names one instead.
    #[serde(default)]
    pub events: EventsSpec,
}

/// Where the services' events go, and how long they are kept.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.replicas == 1 || self.replicas == 3")
        .message("spec.events.replicas must be 1 or 3: a stream kept by 2 servers stops when either is down")
        .field_path(".replicas")
        .reason(kube::core::Reason::FieldValueInvalid),
    validation = Rule::new("!self.enabled || !oldSelf.enabled || has(self.external) || has(oldSelf.external) || self.replicas == oldSelf.replicas")
        .message("spec.events.replicas cannot change while the broker runs: a standalone server's streams are not those of a cluster (joining would drop them). Set enabled: false, delete the claims data-<app>-events-*, then enable it with the new count")
        .field_path(".replicas")
        .reason(kube::core::Reason::FieldValueForbidden),
)]
pub struct EventsSpec {
    /// Publish events (default). False: no broker runs and nothing is published; each service
    /// still writes every change's event to its outbox and deletes it after an hour.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// An existing NATS server (JetStream enabled) to publish to, instead of one the operator
    /// runs. Its administrator makes the streams and the logins (services/README.md, "Events").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalBrokerSpec>,

    /// Servers the operator runs (1 or 3), each with its own volume; every stream keeps this
    /// many copies (with 3, one server may be down). Three servers find each other by the
    /// cluster's DNS names of their pods. Fixed while the broker runs.
    #[serde(default = "default_events_replicas")]
    pub replicas: i32,

    /// The volume of each server the operator runs (`data-<app>-events-<n>`).
    #[serde(default)]
    pub storage: BrokerStorageSpec,

    /// CPU and memory of each server the operator runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Image of the servers the operator runs. Default: `spec.image` with `{component}` = `nats`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// How much each stream keeps; the oldest events go first.
    #[serde(default)]
    pub retention: EventsRetentionSpec,
}

impl Default for EventsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            external: None,
            replicas: default_events_replicas(),
            storage: BrokerStorageSpec::default(),
            resources: None,
            image: None,
            retention: EventsRetentionSpec::default(),
        }
    }
}

fn default_events_replicas() -> i32 {
    1
}

/// A NATS server the operator does not run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.url.matches('^(nats|tls)://[^@/ ]+:[0-9]{1,5}$')")
        .message("spec.events.external.url must be nats://host:port or tls://host:port (the passwords go in the Secret)")
        .field_path(".url")
        .reason(kube::core::Reason::FieldValueInvalid),
)]
pub struct ExternalBrokerSpec {
    /// `nats://host:port` or `tls://host:port`.
    #[schemars(length(min = 1, max = 512))]
    pub url: String,
    /// A Secret in the app's namespace holding each service's password under the keys `user`,
    /// `order` and `product`; the logins are `<app>-user`, `<app>-order` and `<app>-product`.
    pub credentials_secret_ref: SecretReference,
}

/// The volumes of the broker the operator runs. Like `spec.storage`, fixed once made.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!isQuantity(string(oldSelf.size)) || (isQuantity(string(self.size)) && quantity(string(self.size)).compareTo(quantity(string(oldSelf.size))) == 0)")
        .message("spec.events.storage.size cannot change once the volumes exist; resize the claims data-<app>-events-<n> directly (if their StorageClass allows expansion)")
        .reason(kube::core::Reason::FieldValueForbidden),
    validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)")
        .message("spec.events.storage.storageClassName cannot change once the volumes exist")
        .reason(kube::core::Reason::FieldValueForbidden),
)]
pub struct BrokerStorageSpec {
    /// Size requested for each server's volume (a quantity: 1Gi, 500Mi). The streams of the
    /// app together must fit: each keeps at most `retention.maxMegabytes`.
    #[serde(default = "default_storage_size")]
    #[schemars(schema_with = "broker_storage_size_schema")]
    pub size: Quantity,
    /// StorageClass of the volumes; the cluster's default class when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

impl Default for BrokerStorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

/// Limits of each service's stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventsRetentionSpec {
    /// Megabytes (MiB) each stream keeps at most (default 256). The app's three streams
    /// together must fit in nine tenths of `storage.size` of the broker the operator runs.
    #[serde(default = "default_retention_megabytes")]
    #[schemars(range(min = 1, max = 1_048_576))]
    pub max_megabytes: i32,
    /// Hours each stream keeps an event at most (at least 1: the stream also remembers event
    /// ids for 15 minutes to drop a republished one).
    #[serde(default = "default_retention_hours")]
    #[schemars(range(min = 1, max = 87_600))]
    pub max_age_hours: i32,
}

impl Default for EventsRetentionSpec {
    fn default() -> Self {
        Self {
            max_megabytes: default_retention_megabytes(),
            max_age_hours: default_retention_hours(),
        }
    }
}

/// Three streams of 256 MiB fit in nine tenths of the default 1Gi volume.
fn default_retention_megabytes() -> i32 {
    256
}

fn default_retention_hours() -> i32 {
    24 * 7
}

/// Where the components send spans, and how many traces they start.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    /// An OTLP/HTTP receiver (`http://`, usually port 4318), for example
    /// `http://otel-collector.monitoring:4318`; spans go to `<endpoint>/v1/traces`. TLS is not
    /// supported: run the collector in the cluster.
    #[schemars(
        length(min = 8, max = 2048),
        regex(pattern = r"^http://[^\s/]+(/\S*)?$")
    )]
    pub endpoint: String,
    /// The share of new traces recorded, from 0 to 1 (default 1). A request that arrives with
    /// a recorded trace is always recorded (parent-based sampling), so traces stay whole.
    #[serde(default = "default_sampling_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sampling_ratio: f64,
}

fn default_sampling_ratio() -> f64 {
    1.0
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// A PodMonitor (Prometheus Operator) scraping every pod's admin port.
    #[serde(default)]
    pub pod_monitor: PodMonitorSpec,
}

/// Rendered only where the `monitoring.coreos.com` API exists; elsewhere `status.monitoring`
/// says so and nothing fails.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodMonitorSpec {
    #[serde(default)]
    pub enabled: bool,
    /// Scrape interval (a Prometheus duration such as `30s` or `1m`).
    #[serde(default = "default_scrape_interval")]
    #[schemars(length(min = 2, max = 8), regex(pattern = r"^[1-9][0-9]{0,4}(s|m)$"))]
    pub interval: String,
    /// Labels of the PodMonitor (for the Prometheus that selects PodMonitors by label).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub labels: BTreeMap<String, String>,
}

impl Default for PodMonitorSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: default_scrape_interval(),
            labels: BTreeMap::new(),
        }
    }
}

fn default_scrape_interval() -> String {
    "30s".to_owned()
}

/// One NetworkPolicy per component, admitting only its callers: the order service only from
/// the gateway and the product service; the user and product services only from the gateway
/// and the order service;
/// the gateway from anywhere, or from `gatewayFrom`. Egress is not restricted (the services
/// reach PostgreSQL, the discovering ones the API server).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Render the policies (default). Turning it off deletes them.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Who may reach the gateway (for example an ingress controller's namespace); empty: anyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub gateway_from: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>,

    /// Namespace whose pods may scrape every component's metrics (on the component's port, where
    /// `/metrics` is served); none when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub monitoring_namespace: Option<String>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self {
            enabled: true,
            gateway_from: Vec::new(),
            monitoring_namespace: None,
        }
    }
}

fn default_true() -> bool {
    true
}

/// One PersistentVolumeClaim per stateful component, named `data-<app>-<component>-0`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    // By value: `1Gi` -> `1024Mi` changes nothing (the API server stores both as 1Gi, and the
    // operator compares quantities by value). A size stored before `isQuantity` was checked may
    // be replaced by a valid one.
    validation = Rule::new("!isQuantity(string(oldSelf.size)) || (isQuantity(string(self.size)) && quantity(string(self.size)).compareTo(quantity(string(oldSelf.size))) == 0)")
        .message("spec.storage.size cannot change once the volumes exist; resize the claims data-<app>-<component>-0 directly (if their StorageClass allows expansion)")
        .reason(kube::core::Reason::FieldValueForbidden),
    validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)")
        .message("spec.storage.storageClassName cannot change once the volumes exist; create a new app and copy the data")
        .reason(kube::core::Reason::FieldValueForbidden),
)]
pub struct StorageSpec {
    /// Size requested for each volume (a quantity: 1Gi, 500Mi).
    #[serde(default = "default_storage_size")]
    #[schemars(schema_with = "storage_size_schema")]
    pub size: Quantity,
    /// StorageClass of the volumes; the cluster's default class when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// What happens to the volumes when the app is deleted, or when a component switches to
    /// `spec.database`: Retain (default; the claims stay, and an app of the same name finds its
    /// data again) or Delete.
    #[serde(default)]
    pub when_deleted: VolumeRetention,
}

/// `Quantity`'s own schema (int or string: apps stored with a number stay readable and
/// editable), with the API server checking that it is a positive quantity: one that is not
/// would be refused only later, by the StatefulSet's claim template.
fn storage_size_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    positive_quantity_schema("spec.storage.size")
}

fn broker_storage_size_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    positive_quantity_schema("spec.events.storage.size")
}

fn positive_quantity_schema(field: &str) -> schemars::Schema {
    schemars::json_schema!({
        "x-kubernetes-int-or-string": true,
        "x-kubernetes-validations": [{
            "rule": "isQuantity(string(self)) && quantity(string(self)).isGreaterThan(quantity('0'))",
            "message": format!("{field} must be a positive quantity such as 1Gi or 500Mi"),
        }],
    })
}

fn default_storage_size() -> Quantity {
    Quantity("1Gi".to_owned())
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
            when_deleted: VolumeRetention::default(),
        }
    }
}

/// Fate of the embedded databases' volumes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum VolumeRetention {
    /// Keep the claims (and so the data).
    #[default]
    Retain,
    /// Delete the claims with the StatefulSet; the data is lost.
    Delete,
}

impl VolumeRetention {
    /// The value of a StatefulSet's `persistentVolumeClaimRetentionPolicy` fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retain => "Retain",
            Self::Delete => "Delete",
        }
    }
}

fn default_image() -> String {
    DEFAULT_IMAGE_PATTERN.to_owned()
}

/// When the kubelet pulls images. Unset: Kubernetes' rule (Always for `:latest`, IfNotPresent
/// otherwise).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull only when the node does not have the image.
    IfNotPresent,
    /// Never pull; the image must already be on the node.
    Never,
}

impl ImagePullPolicy {
    /// The value Kubernetes expects in `imagePullPolicy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Settings of the four components.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Components {
    /// The user service (stores users).
    #[serde(default)]
    pub user: ComponentSpec,
    /// The order service (stores orders; calls the user and product services).
    #[serde(default)]
    pub order: ComponentSpec,
    /// The product service (stores products and their stock).
    #[serde(default)]
    pub product: ComponentSpec,
    /// The API gateway in front of the three services.
    #[serde(default)]
    pub gateway: GatewaySpec,
}

/// Settings shared by every component.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    /// Image of this component; overrides `spec.image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,

    /// Number of pods. Ignored (left to the autoscaler) when `autoscaled` is true.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,

    /// True when a HorizontalPodAutoscaler owns the replica count: the operator then leaves
    /// `spec.replicas` of the Deployment alone instead of fighting the autoscaler.
    #[serde(default)]
    pub autoscaled: bool,

    /// CPU and memory requests and limits of the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Extra environment variables (at most 128). A variable named like one the operator sets
    /// replaces it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("maxItems" = 128))]
    pub env: Vec<EnvVar>,

    /// Settings for this component, as environment variables (keys are variable names; at
    /// most 64, each value at most 8 KiB, 64 KiB in all). The operator renders them into an immutable
    /// ConfigMap named after a hash of its content (`<app>-<component>-config-<hash>`), so a
    /// change rolls the pods and a pod never sees a half-edited set; ConfigMaps no longer used
    /// are deleted once the rollout ends. A key named like a variable the operator sets
    /// replaces it; an `env` entry of the same name replaces the key. Which settings each
    /// service reads: `services/README.md`.
    // The keys' form is checked by the operator (validate.rs): a CEL rule over unbounded map
    // keys would blow the API server's cost budget.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64, "additionalProperties" = {"type": "string", "maxLength": 8192}))]
    pub config: BTreeMap<String, String>,

    /// Existing ConfigMaps and Secrets in the app's namespace whose keys become environment
    /// variables of this component (`envFrom`, in this order; at most 8). They fill only the
    /// variables that neither the operator, `config` nor `env` set. A change in a ConfigMap
    /// rolls the pods that use it (its content's hash goes into the pod template); a change in
    /// a Secret does too only when the operator was installed with `watchConfigSecrets`,
    /// otherwise the Secret is read when a pod starts (see the README for rolling by hand).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("maxItems" = 8))]
    pub config_from: Vec<ConfigSource>,

    /// Extra labels for the Deployment, its pods and the Service. The `app.kubernetes.io/*`
    /// labels the operator sets cannot be overridden. At most 64.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub labels: BTreeMap<String, String>,

    /// Extra annotations for the Deployment and its pods. At most 64.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: BTreeMap<String, String>,

    /// Port the container listens on (named `http`). Must be 1024 or above (the containers run
    /// as non-root without capabilities) and not 9090 (the admin port, named `admin`, where
    /// `/metrics`, `/info` and the probes are).
    #[serde(default = "default_container_port")]
    #[schemars(range(min = 1024, max = 65535))]
    pub port: i32,

    /// How pods are replaced when the configuration changes.
    #[serde(default)]
    pub rollout: RolloutSpec,

    /// How a pod stops without failing requests.
    #[serde(default)]
    pub shutdown: ShutdownSpec,
}

/// One source of `configFrom`: exactly one of `configMap` or `secret`, naming an object in the
/// app's namespace.
#[derive(
    Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, KubeSchema,
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMap) != has(self.secret)")
    .message("each configFrom entry names exactly one of configMap or secret"))]
pub struct ConfigSource {
    /// A ConfigMap's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub config_map: Option<String>,
    /// A Secret's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret: Option<String>,
}

fn default_replicas() -> i32 {
    1
}

fn default_container_port() -> i32 {
    8080
}

impl Default for ComponentSpec {
    fn default() -> Self {
        Self {
            image: None,
            replicas: default_replicas(),
            autoscaled: false,
            resources: None,
            env: Vec::new(),
            config: BTreeMap::new(),
            config_from: Vec::new(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            port: default_container_port(),
            rollout: RolloutSpec::default(),
            shutdown: ShutdownSpec::default(),
        }
    }
}

/// A stopping pod first fails readiness while still serving (`drainDelaySeconds`), so kube-proxy
/// and the gateway stop sending to it; then it refuses new connections and in-flight requests
/// get `graceSeconds`. The pod's `terminationGracePeriodSeconds` covers both, plus 5 s.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShutdownSpec {
    /// Seconds to keep serving with readiness failing.
    #[serde(default = "default_drain_delay")]
    #[schemars(range(min = 0, max = 300))]
    pub drain_delay_seconds: i32,
    /// Seconds in-flight requests may take once new connections are refused.
    #[serde(default = "default_shutdown_grace")]
    #[schemars(range(min = 1, max = 600))]
    pub grace_seconds: i32,
}

fn default_drain_delay() -> i32 {
    5
}

fn default_shutdown_grace() -> i32 {
    20
}

/// Seconds between the end of the grace period and the kubelet's SIGKILL.
pub const SHUTDOWN_MARGIN_SECONDS: i32 = 5;

impl ShutdownSpec {
    /// The pod's `terminationGracePeriodSeconds`: drain + grace + margin (each bounded by the
    /// schema, so the sum cannot overflow).
    pub fn termination_grace_period_seconds(&self) -> i64 {
        i64::from(self.drain_delay_seconds)
            + i64::from(self.grace_seconds)
            + i64::from(SHUTDOWN_MARGIN_SECONDS)
    }
}

impl Default for ShutdownSpec {
    fn default() -> Self {
        Self {
            drain_delay_seconds: default_drain_delay(),
            grace_seconds: default_shutdown_grace(),
        }
    }
}

/// Rolling-update knobs of the component's Deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Pods that may be created above the desired count during a rollout (number or percent).
    #[serde(default = "default_rollout_fraction")]
    pub max_surge: IntOrString,
    /// Pods that may be unavailable during a rollout (number or percent).
    #[serde(default = "default_rollout_fraction")]
    pub max_unavailable: IntOrString,
    /// Seconds a new pod must be ready before it counts as available.
    #[serde(default)]
    #[schemars(range(min = 0, max = 3600))]
    pub min_ready_seconds: i32,
    /// Seconds a rollout may make no progress before it is reported as failed
    /// (the app's `Degraded` condition then names the component).
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 10, max = 86400))]
    pub progress_deadline_seconds: i32,
}

fn default_rollout_fraction() -> IntOrString {
    IntOrString::String("25%".to_owned())
}

fn default_progress_deadline() -> i32 {
    600
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            max_surge: default_rollout_fraction(),
            max_unavailable: default_rollout_fraction(),
            min_ready_seconds: 0,
            progress_deadline_seconds: default_progress_deadline(),
        }
    }
}

/// The API gateway: a component plus its Service exposure and its client-side traffic policy
/// towards the three services.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Settings every component has.
    #[serde(flatten)]
    pub component: ComponentSpec,
    /// How the gateway's Service is exposed.
    #[serde(default)]
    pub service: GatewayServiceSpec,
    /// How the gateway picks an endpoint of a service.
    #[serde(default)]
    pub load_balancing: LoadBalancingSpec,
    /// When the gateway stops calling a failing service altogether.
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerSpec,
    /// When the gateway stops calling one failing or slow endpoint for a while.
    #[serde(default)]
    pub outlier_detection: OutlierDetectionSpec,
    /// When the gateway retries a failed call.
    #[serde(default)]
    pub retries: RetrySpec,
    /// How long the gateway waits for an upstream.
    #[serde(default)]
    pub timeouts: TimeoutSpec,
    /// Requests per client the gateway lets through (off when absent). Each gateway replica
    /// counts on its own, so the app-wide limit is this times the replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitSpec>,
    /// Bearer tokens the gateway requires (off when absent: every route open, which the
    /// gateway logs at start and `kubectl get msa -o wide` shows as an empty Auth column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<GatewayAuthSpec>,
}

/// JWT verification, by the gateway and again by every service; the keys come from Secrets
/// mounted into the pods and/or the issuer's JWKS URL, so a rotated key is used without a
/// restart.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
// The routes' form is checked by the operator (validate.rs): a CEL rule over a list of
// unbounded strings would blow the API server's cost budget.
#[x_kube(validation = Rule::new("has(self.jwks) || has(self.jwksUri) || has(self.hmacSecret)")
    .message("spec.components.gateway.auth needs jwks (a Secret key holding the issuer's JWKS), jwksUri or hmacSecret"))]
pub struct GatewayAuthSpec {
    /// The tokens' issuer (`iss`).
    #[schemars(length(min = 1, max = 512))]
    pub issuer: String,
    /// Audiences accepted (`aud`).
    #[schemars(length(min = 1, max = 16))]
    pub audiences: Vec<String>,
    /// A Secret key holding the issuer's JWKS (RS256, ES256, EdDSA public keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<SecretKeySelectorSpec>,
    /// The issuer's JWKS URL (its `jwks_uri`, https), fetched by each pod at start, every 5
    /// minutes and when a token names an unknown key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 9, max = 2048))]
    pub jwks_uri: Option<String>,
    /// A Secret key holding a shared HS256 secret (at least 32 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac_secret: Option<SecretKeySelectorSpec>,
    /// Routes open without a token, as `METHOD /template` (for example `POST /users`,
    /// `GET /products`, `GET /products/{id}`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub public_routes: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_clock_skew")]
    #[schemars(range(min = 0, max = 300))]
    pub clock_skew_seconds: i32,
}

fn default_clock_skew() -> i32 {
    30
}

/// One key of a Secret in the app's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelectorSpec {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A token bucket per client address: `burst` requests at once, then `requestsPerSecond`.
/// Past it the gateway answers 429 with `Retry-After` and `RateLimit`/`RateLimit-Policy`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Sustained requests per second per client.
    #[schemars(range(min = 1, max = 1000000))]
    pub requests_per_second: i32,
    /// Requests a quiet client may send at once (default: requestsPerSecond).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: Option<i32>,
}

/// Exposure of the gateway's Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.nodePort) || self.type != 'ClusterIP'")
    .message("spec.components.gateway.service.nodePort is only allowed with type NodePort or LoadBalancer; remove it or change the type"))]
pub struct GatewayServiceSpec {
    /// Service type: ClusterIP (in-cluster only), NodePort or LoadBalancer.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Port of the Service.
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Fixed node port (NodePort or LoadBalancer only); chosen by Kubernetes when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub node_port: Option<i32>,
    /// Annotations for the Service (for example a cloud load balancer's settings). At most 64.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: BTreeMap<String, String>,
}

fn default_service_port() -> i32 {
    80
}

impl Default for GatewayServiceSpec {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_service_port(),
            node_port: None,
            annotations: BTreeMap::new(),
        }
    }
}

/// Kubernetes Service type of the gateway.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also reachable on a port of every node.
    NodePort,
    /// Also reachable through the cloud's load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The value Kubernetes expects in `spec.type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Endpoint selection.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancingSpec {
    /// PeakEwma (default: power of two choices over latency × in-flight requests), RoundRobin,
    /// WeightedRoundRobin or LeastRequest.
    #[serde(default)]
    pub strategy: BalancingStrategy,
}

/// Balancing strategies the gateway implements.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum BalancingStrategy {
    /// Power of two random choices, comparing peak-EWMA latency × in-flight requests.
    #[default]
    PeakEwma,
    /// Each endpoint in turn.
    RoundRobin,
    /// Each endpoint in turn, as often as its weight says.
    WeightedRoundRobin,
    /// Power of two random choices, comparing in-flight requests.
    LeastRequest,
}

impl BalancingStrategy {
    /// The value the gateway's `--lb-strategy` flag takes.
    pub fn flag_value(self) -> &'static str {
        match self {
            Self::PeakEwma => "peak-ewma",
            Self::RoundRobin => "round-robin",
            Self::WeightedRoundRobin => "weighted-round-robin",
            Self::LeastRequest => "least-request",
        }
    }
}

/// Per-service circuit breaker: opens on a failure rate over a sliding window.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreakerSpec {
    /// Failure rate (percent of calls in the window) that opens the circuit.
    #[serde(default = "default_failure_rate")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_rate_percent: i32,
    /// Calls needed in the window before the failure rate is trusted.
    #[serde(default = "default_minimum_calls")]
    #[schemars(range(min = 1, max = 10000))]
    pub minimum_calls: i32,
    /// Length of the sliding window.
    #[serde(default = "default_window_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub window_seconds: i32,
    /// How long the circuit stays open before probe calls are let through.
    #[serde(default = "default_open_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub open_seconds: i32,
    /// Probe calls allowed while half-open; all must succeed to close the circuit.
    #[serde(default = "default_half_open_probes")]
    #[schemars(range(min = 1, max = 100))]
    pub half_open_probes: i32,
}

fn default_failure_rate() -> i32 {
    50
}
fn default_minimum_calls() -> i32 {
    20
}
fn default_window_seconds() -> i32 {
    10
}
fn default_open_seconds() -> i32 {
    5
}
fn default_half_open_probes() -> i32 {
    3
}

impl Default for CircuitBreakerSpec {
    fn default() -> Self {
        Self {
            failure_rate_percent: default_failure_rate(),
            minimum_calls: default_minimum_calls(),
            window_seconds: default_window_seconds(),
            open_seconds: default_open_seconds(),
            half_open_probes: default_half_open_probes(),
        }
    }
}

/// Per-endpoint outlier ejection, in Envoy's vocabulary.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetectionSpec {
    /// Consecutive failures (connect error, reset, timeout, 502/503/504) that eject an endpoint.
    #[serde(default = "default_consecutive_failures")]
    #[schemars(range(min = 1, max = 1000))]
    pub consecutive_failures: i32,
    /// First ejection time; doubled (with jitter) on each failed probe.
    #[serde(default = "default_base_ejection_millis")]
    #[schemars(range(min = 10, max = 3600000))]
    pub base_ejection_millis: i32,
    /// Upper bound of the ejection time.
    #[serde(default = "default_max_ejection_millis")]
    #[schemars(range(min = 10, max = 3600000))]
    pub max_ejection_millis: i32,
    /// At most this share of a service's endpoints is ejected at once; below it the gateway
    /// ignores ejections (panic mode) rather than overload the rest.
    #[serde(default = "default_max_ejection_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: i32,
    /// Eject an endpoint whose latency is this many times its peers' median; 0 turns latency
    /// ejection off.
    #[serde(default = "default_latency_factor")]
    #[schemars(range(min = 0, max = 1000))]
    pub latency_factor: i32,
}

fn default_consecutive_failures() -> i32 {
    5
}
fn default_base_ejection_millis() -> i32 {
    1000
}
fn default_max_ejection_millis() -> i32 {
    60_000
}
fn default_max_ejection_percent() -> i32 {
    50
}
fn default_latency_factor() -> i32 {
    5
}

impl Default for OutlierDetectionSpec {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            base_ejection_millis: default_base_ejection_millis(),
            max_ejection_millis: default_max_ejection_millis(),
            max_ejection_percent: default_max_ejection_percent(),
            latency_factor: default_latency_factor(),
        }
    }
}

/// Retries of failed calls, bounded by a budget so retries cannot multiply an overload.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Retries per request (0 or 1); only idempotent requests, or requests of which no byte was
    /// sent, are retried, always on another endpoint.
    #[serde(default = "default_max_retries")]
    #[schemars(range(min = 0, max = 1))]
    pub max_retries: i32,
    /// Retries allowed as a percent of recent requests.
    #[serde(default = "default_budget_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub budget_percent: i32,
    /// Retries per second always allowed, whatever the percent says.
    #[serde(default = "default_min_retries_per_second")]
    #[schemars(range(min = 0, max = 10000))]
    pub min_retries_per_second: i32,
}

fn default_max_retries() -> i32 {
    1
}
fn default_budget_percent() -> i32 {
    20
}
fn default_min_retries_per_second() -> i32 {
    10
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            max_retries: default_max_retries(),
            budget_percent: default_budget_percent(),
            min_retries_per_second: default_min_retries_per_second(),
        }
    }
}

/// Upstream timeouts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.perTryMillis <= self.requestMillis")
    .message("spec.components.gateway.timeouts.perTryMillis must not exceed requestMillis: a try cannot outlive its request"))]
pub struct TimeoutSpec {
    /// Time to open a TCP connection to an endpoint.
    #[serde(default = "default_connect_millis")]
    #[schemars(range(min = 1, max = 600000))]
    pub connect_millis: i32,
    /// Time for one try, until the response headers arrive.
    #[serde(default = "default_per_try_millis")]
    #[schemars(range(min = 1, max = 600000))]
    pub per_try_millis: i32,
    /// Time for the whole request, retries included.
    #[serde(default = "default_request_millis")]
    #[schemars(range(min = 1, max = 600000))]
    pub request_millis: i32,
}

fn default_connect_millis() -> i32 {
    1000
}
fn default_per_try_millis() -> i32 {
    5000
}
fn default_request_millis() -> i32 {
    15000
}

impl Default for TimeoutSpec {
    fn default() -> Self {
        Self {
            connect_millis: default_connect_millis(),
            per_try_millis: default_per_try_millis(),
            request_millis: default_request_millis(),
        }
    }
}

/// External PostgreSQL databases for the stateful services.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// Secret in the app's namespace holding one connection URL per service.
    pub secret_ref: SecretReference,
    /// Keys of the Secret holding each service's URL (given to it as `DATABASE_URL`).
    #[serde(default)]
    pub keys: DatabaseKeys,
}

/// A Secret in the app's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Secret keys per service; each defaults to the service's name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseKeys {
    /// Key of the user service's URL.
    #[serde(default = "default_user_key")]
    #[schemars(length(min = 1, max = 253))]
    pub user: String,
    /// Key of the order service's URL.
    #[serde(default = "default_order_key")]
    #[schemars(length(min = 1, max = 253))]
    pub order: String,
    /// Key of the product service's URL.
    #[serde(default = "default_product_key")]
    #[schemars(length(min = 1, max = 253))]
    pub product: String,
}

fn default_user_key() -> String {
    "user".to_owned()
}
fn default_order_key() -> String {
    "order".to_owned()
}
fn default_product_key() -> String {
    "product".to_owned()
}

impl DatabaseKeys {
    /// The Secret key of a component's URL; None for the gateway, which keeps no data.
    pub fn for_component(&self, component: crate::component::Component) -> Option<&str> {
        use crate::component::Component;
        match component {
            Component::User => Some(&self.user),
            Component::Order => Some(&self.order),
            Component::Product => Some(&self.product),
            Component::Gateway => None,
        }
    }
}

impl Default for DatabaseKeys {
    fn default() -> Self {
        Self {
            user: default_user_key(),
            order: default_order_key(),
            product: default_product_key(),
        }
    }
}

/// What the operator observed, for people and for `kubectl wait --for=condition=Ready`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MicroserviceAppStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, following the Kubernetes API conventions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Replica and endpoint counts per component.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub components: BTreeMap<String, ComponentStatus>,
    /// Where the gateway is reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayStatus>,
    /// How the app is scraped, or why `spec.monitoring.podMonitor` could not be honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<String>,
}

/// Counts of one component.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Pods the Deployment should run.
    pub desired_replicas: i32,
    /// Pods running the current configuration.
    pub updated_replicas: i32,
    /// Pods passing their readiness probe.
    pub ready_replicas: i32,
    /// Ready endpoints in the Service's EndpointSlices: what the gateway can route to.
    pub endpoints: i32,
}

/// The gateway's address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    /// In-cluster URL of the gateway's Service.
    pub url: String,
}

/// The CustomResourceDefinition to install: the one kube derives from these types, except that
/// no field with a default is `nullable`.
///
/// kube marks every optional int-or-string field (`rollout.maxSurge`, `rollout.maxUnavailable`,
/// `storage.size`) `nullable: true`. The API server keeps a null written into a nullable field
/// instead of applying its default, and these fields are not `Option`s: one such object would
/// be unreadable. Without `nullable`, the API server drops the null and applies the default.
/// Fields that are `Option`s have no default, so they keep `nullable` (a null reads as `None`).
/// Install this, never `MicroserviceApp::crd()`.
pub fn definition() -> CustomResourceDefinition {
    use kube::CustomResourceExt;
    let mut crd = MicroserviceApp::crd();
    crd.metadata.annotations = Some(BTreeMap::from([(
        crate::crd_upgrade::VERSION_ANNOTATION.to_owned(),
        env!("CARGO_PKG_VERSION").to_owned(),
    )]));
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            never_null_where_defaulted(schema);
            restrict_condition_status(schema);
        }
    }
    crd
}

/// `status.conditions[].status` is `True`, `False` or `Unknown` (the API conventions); the
/// schema of k8s-openapi's `Condition` says only "string", so a client writing anything else
/// (a hand-made status patch) is refused by the API server.
fn restrict_condition_status(schema: &mut JSONSchemaProps) {
    let status = schema
        .properties
        .as_mut()
        .and_then(|p| p.get_mut("status"))
        .and_then(|s| s.properties.as_mut())
        .and_then(|p| p.get_mut("conditions"));
    if let Some(JSONSchemaPropsOrArray::Schema(condition)) = status.and_then(|c| c.items.as_mut())
        && let Some(field) = condition
            .properties
            .as_mut()
            .and_then(|p| p.get_mut("status"))
    {
        field.enum_ = Some(
            ["True", "False", "Unknown"]
                .map(|v| JSON(serde_json::Value::from(v)))
                .to_vec(),
        );
    }
}

fn never_null_where_defaulted(schema: &mut JSONSchemaProps) {
    if schema.default.is_some() {
        schema.nullable = None;
    }
    for property in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        never_null_where_defaulted(property);
    }
    match &mut schema.items {
        Some(JSONSchemaPropsOrArray::Schema(items)) => never_null_where_defaulted(items),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => {
            items.iter_mut().for_each(never_null_where_defaulted);
        }
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &mut schema.additional_properties {
        never_null_where_defaulted(values);
    }
}

/// The CRD as committed under `crds/` and the chart's `crds/`: a header, then the YAML of
/// [`definition`].
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(&definition())?;
    Ok(format!(
        "# Generated from operator/src/crd.rs by `make crds` (cargo run --bin crdgen); do not edit.\n{body}"
    ))
}
