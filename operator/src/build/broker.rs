//! The event broker: what the services need to publish their events (`spec.events`), and, unless
//! `spec.events.external` names one, the NATS JetStream server the operator runs for the app —
//! a StatefulSet `<app>-events` of 1 or 3 servers, each with its own volume, a client Service, a
//! headless Service for the servers' routes, a PodDisruptionBudget with 3, a NetworkPolicy, and
//! the server's configuration.
//!
//! Who may say what is the broker's job, not the network's (events make services act: a
//! `user.deleted` will close orders): every component has its own login, allowed to publish only
//! its own service's subjects (`msa_events::broker`). The passwords live in a Secret the
//! operator creates once ([`credentials_secret`]); the configuration (a ConfigMap, no secret in
//! it) refers to them as environment variables the server resolves. Only the admin login may
//! make streams; it never leaves the broker's pod: the `msa-streams` container beside each
//! server makes and keeps the app's streams over the pod's loopback.
//!
//! How the services find the broker: by its Service's ClusterIP, which the operator reads once
//! the Service exists ([`super::ClusterFacts::broker_address`]). Clusters without DNS (such as
//! the project's test node) then work too, and the address stays for the Service's lifetime.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, KeyToPath,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, Secret, SecretKeySelector, SecretVolumeSource,
    Service, ServicePort, ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use msa_events::broker::{ADMIN, LOGINS, authorization_from_environment, password_variable, user};

use super::hash::short_hash;
use super::{BuildError, ClusterFacts, Owner};
use crate::component::Component;
use crate::crd::{COMPONENT_PLACEHOLDER, MicroserviceApp};
use crate::labels;

/// The server's ports: clients, monitoring (`/healthz`, `/varz`), and routes between servers.
pub const CLIENT_PORT: i32 = 4222;
pub const MONITOR_PORT: i32 = 8222;
pub const ROUTE_PORT: i32 = 6222;
/// The stream keeper's readiness (200 once every stream of the app is as configured).
pub const KEEPER_PROBE_PORT: i32 = 8223;

/// `app.kubernetes.io/component` of the broker's objects, and `app.kubernetes.io/name` of its
/// pods (also the image pattern's `{component}`: `msa-nats`).
pub const COMPONENT: &str = "events";
const SERVER_NAME: &str = "nats";
/// The stream keeper's image pattern `{component}` (`msa-streams`).
const KEEPER_NAME: &str = "streams";

/// Where a service's (and the keeper's) password file is mounted.
const CREDENTIALS_DIR: &str = "/etc/msa/events";
const CREDENTIALS_VOLUME: &str = "events-credentials";
const PASSWORD_FILE: &str = "password";
const CONFIG_DIR: &str = "/etc/nats";
const CONFIG_FILE: &str = "nats.conf";
const DATA_VOLUME: &str = "data";
const DATA_DIR: &str = "/data";

/// Whether the app's services publish events at all.
pub fn enabled(app: &MicroserviceApp) -> bool {
    app.spec.events.enabled
}

/// Whether the operator runs the app's broker.
pub fn is_managed(app: &MicroserviceApp) -> bool {
    enabled(app) && app.spec.events.external.is_none()
}

/// The StatefulSet, client Service, ConfigMap, budget and policy: `<app>-events`.
pub fn name(app: &str) -> String {
    format!("{app}-{COMPONENT}")
}

/// The headless Service that gives each server a stable DNS name for the others' routes.
pub fn pods_service_name(app: &str) -> String {
    format!("{app}-{COMPONENT}-pods")
}

/// The Secret with every login's password (made by the operator for the broker it runs):
/// `<app>-events-credentials-<first 8 of the app's uid>`. The uid makes "already exists" mean
/// "this app's": an earlier app of the same name, deleted and re-created before the garbage
/// collector removed its Secret, cannot lend it one that is about to vanish.
pub fn credentials_secret_name(app: &str, uid: &str) -> String {
    let uid: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .collect();
    format!("{app}-{COMPONENT}-credentials-{uid}")
}

/// The key of the servers' route password in the credentials Secret (not a client login).
pub const ROUTE_KEY: &str = "route";
const ROUTE_USER: &str = "route";
const ROUTE_PASSWORD_VARIABLE: &str = "MSA_NATS_PASSWORD_ROUTE";

/// The labels that select the broker's pods.
pub fn selector(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.to_owned(), SERVER_NAME.to_owned()),
        (labels::INSTANCE.to_owned(), app.to_owned()),
    ])
}

fn object_labels(app: &str) -> BTreeMap<String, String> {
    let mut all = labels::app_labels(app);
    all.extend(selector(app));
    all.insert(labels::COMPONENT.to_owned(), COMPONENT.to_owned());
    all
}

fn metadata(owner: &Owner, name: String) -> ObjectMeta {
    owner.metadata(name, object_labels(&owner.name))
}

/// Everything the operator keeps for the broker it runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ManagedBroker {
    pub config: ConfigMap,
    pub service: Service,
    pub pods_service: Service,
    pub stateful_set: StatefulSet,
    /// With 3 servers: at most one down by a drain.
    pub budget: Option<PodDisruptionBudget>,
    /// Always rendered (see [`managed`]); an `Option` so the reconciler deletes one left from
    /// an earlier operator version that made it optional.
    pub network_policy: Option<NetworkPolicy>,
}

impl ManagedBroker {
    pub fn count(&self) -> usize {
        4 + usize::from(self.budget.is_some()) + usize::from(self.network_policy.is_some())
    }
}

pub(super) fn managed(app: &MicroserviceApp, owner: &Owner) -> Option<ManagedBroker> {
    if !is_managed(app) {
        return None;
    }
    let config = config_map(app, owner);
    Some(ManagedBroker {
        stateful_set: stateful_set(app, owner, &config),
        config,
        service: client_service(owner),
        pods_service: pods_service(owner),
        budget: (app.spec.events.replicas > 1).then(|| budget(owner)),
        // Always, whatever `spec.networkPolicy.enabled` says: the servers' routes take no
        // credentials (nats-server cannot read a route's password from the environment), so
        // only the policy keeps other pods from joining the cluster as a server.
        network_policy: Some(network_policy(app, owner)),
    })
}

/// The client Service alone, applied before anything else of the app the first time, so the
/// services are rendered with its address from the start.
pub fn address_service(app: &MicroserviceApp) -> Result<Service, BuildError> {
    Ok(super::stamp_rendered_hash(client_service(&Owner::of(
        app,
        &ClusterFacts::default(),
    )?)))
}

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    }
}

fn client_service(owner: &Owner) -> Service {
    Service {
        metadata: metadata(owner, name(&owner.name)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector(&owner.name)),
            // Monitoring (`/connz`, `/jsz`) is not on the Service: Prometheus scrapes pods.
            ports: Some(vec![port("client", CLIENT_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn pods_service(owner: &Owner) -> Service {
    Service {
        metadata: metadata(owner, pods_service_name(&owner.name)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            selector: Some(selector(&owner.name)),
            // Servers must find each other before any is ready: a cluster forms first.
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![port("client", CLIENT_PORT), port("route", ROUTE_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The server's configuration. `sync_interval: always`: the default (a disk sync every two
/// minutes) lost acknowledged messages in a published crash test (nats-server issue 7564).
///
/// JetStream may fill at most nine tenths of the volume (`max_file_store`): a full disk would
/// stop every stream, while a full store refuses only new messages of a stream at its limit.
pub fn server_config(app: &MicroserviceApp, app_name: &str) -> String {
    let store = file_store_bytes(app);
    let mut text = format!(
        "# Rendered by msa-operator from MicroserviceApp {app_name}; edits are overwritten.\n\
         server_name: $MSA_POD_NAME\n\
         listen: \"0.0.0.0:{CLIENT_PORT}\"\n\
         http: \"0.0.0.0:{MONITOR_PORT}\"\n\
         jetstream {{\n  store_dir: \"{DATA_DIR}/jetstream\"\n  sync_interval: always\n  max_memory_store: 64MB\n  max_file_store: {store}\n}}\n"
    );
    if app.spec.events.replicas > 1 {
        // Servers join only with the route login (their routes, with its password, are given
        // as arguments: see `server_container`); `no_advertise`: clients are told of no other
        // server, so none is led anywhere else.
        text.push_str(&format!(
            "cluster {{\n  name: \"{}\"\n  listen: \"0.0.0.0:{ROUTE_PORT}\"\n  no_advertise: true\n  authorization {{ user: \"{ROUTE_USER}\", password: ${ROUTE_PASSWORD_VARIABLE} }}\n}}\n",
            name(app_name)
        ));
    }
    text.push_str(&authorization_from_environment(app_name));
    text
}

/// Nine tenths of the server's volume, in bytes (the schema makes the size a positive quantity).
pub fn file_store_bytes(app: &MicroserviceApp) -> u64 {
    let volume = crate::drift::quantity(&app.spec.events.storage.size.0).unwrap_or(0.0);
    // Truncation is wanted: whole bytes, below the volume's size.
    (volume * 0.9).max(0.0) as u64
}

/// What the streams may hold together: each of the three keeps `retention.maxMegabytes`.
pub fn streams_bytes(app: &MicroserviceApp) -> u64 {
    let per_stream = u64::try_from(app.spec.events.retention.max_megabytes).unwrap_or(0);
    per_stream.saturating_mul(1 << 20).saturating_mul(3)
}

fn config_map(app: &MicroserviceApp, owner: &Owner) -> ConfigMap {
    ConfigMap {
        metadata: metadata(owner, name(&owner.name)),
        data: Some(BTreeMap::from([(
            CONFIG_FILE.to_owned(),
            server_config(app, &owner.name),
        )])),
        ..ConfigMap::default()
    }
}

fn image(app: &MicroserviceApp, name: &str) -> String {
    app.spec.image.replace(COMPONENT_PLACEHOLDER, name)
}

fn secret_env(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        value_from: None,
    }
}

/// The stream limits both the services and the keeper are given, so the streams are made as
/// the services expect them.
fn stream_env(app: &MicroserviceApp) -> Vec<EnvVar> {
    let events = &app.spec.events;
    vec![
        value("MSA_EVENTS_REPLICAS", events.replicas.to_string()),
        value(
            "MSA_EVENTS_MAX_BYTES",
            (i64::from(events.retention.max_megabytes) << 20).to_string(),
        ),
        value(
            "MSA_EVENTS_MAX_AGE_HOURS",
            events.retention.max_age_hours.to_string(),
        ),
    ]
}

/// The volume holding one login's password as a file.
fn password_volume(secret: &str, key: &str) -> Volume {
    Volume {
        name: CREDENTIALS_VOLUME.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            items: Some(vec![KeyToPath {
                key: key.to_owned(),
                path: PASSWORD_FILE.to_owned(),
                mode: None,
            }]),
            // Readable by the pod's group (fsGroup) only.
            default_mode: Some(0o440),
            optional: Some(false),
        }),
        ..Volume::default()
    }
}

fn password_mount() -> VolumeMount {
    VolumeMount {
        name: CREDENTIALS_VOLUME.to_owned(),
        mount_path: CREDENTIALS_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// The connection a login makes: `MSA_NATS_URL`, `MSA_NATS_USER`, `MSA_NATS_PASSWORD_FILE`.
fn connection_env(app: &str, login: &str, url: String) -> Vec<EnvVar> {
    vec![
        value("MSA_NATS_URL", url),
        value("MSA_NATS_USER", user(app, login)),
        value(
            "MSA_NATS_PASSWORD_FILE",
            format!("{CREDENTIALS_DIR}/{PASSWORD_FILE}"),
        ),
    ]
}

/// Where a service publishes: the external broker's URL, or the managed broker's address once
/// its Service has one. None: the service keeps its events in its outbox only.
fn url(app: &MicroserviceApp, facts: &ClusterFacts) -> Option<String> {
    match &app.spec.events.external {
        Some(external) => Some(external.url.clone()),
        None => facts
            .broker_address
            .as_ref()
            .map(|ip| format!("nats://{ip}:{CLIENT_PORT}")),
    }
}

fn secret_of(app: &MicroserviceApp, app_name: &str, uid: &str) -> String {
    match &app.spec.events.external {
        Some(external) => external.credentials_secret_ref.name.clone(),
        None => credentials_secret_name(app_name, uid),
    }
}

/// A service component's environment for publishing (empty for the gateway, or with events
/// off, or while the managed broker has no address yet).
pub(super) fn service_env(
    app: &MicroserviceApp,
    owner: &Owner,
    component: Component,
) -> Vec<EnvVar> {
    if !component.is_stateful() || !enabled(app) {
        return Vec::new();
    }
    let Some(url) = url(app, &owner.cluster) else {
        return Vec::new();
    };
    let mut env = connection_env(&owner.name, component.name(), url);
    env.extend(stream_env(app));
    env
}

/// A service component's password volume (see [`service_env`]).
pub(super) fn service_volume(
    app: &MicroserviceApp,
    owner: &Owner,
    component: Component,
) -> Option<Volume> {
    (component.is_stateful() && enabled(app) && url(app, &owner.cluster).is_some()).then(|| {
        password_volume(
            &secret_of(app, &owner.name, &owner.reference.uid),
            component.name(),
        )
    })
}

pub(super) fn service_mount(
    app: &MicroserviceApp,
    owner: &Owner,
    component: Component,
) -> Option<VolumeMount> {
    service_volume(app, owner, component).map(|_| password_mount())
}

fn monitor_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    super::container::http_probe_on("monitor", path, period_seconds, failure_threshold)
}

fn container_port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

fn server_container(app: &MicroserviceApp, owner: &Owner) -> Container {
    let secret = credentials_secret_name(&owner.name, &owner.reference.uid);
    let mut env = vec![EnvVar {
        name: "MSA_POD_NAME".to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }];
    env.extend(
        LOGINS
            .iter()
            .map(|login| secret_env(&password_variable(login), &secret, login)),
    );
    let replicas = app.spec.events.replicas;
    let mut args = vec!["--config".to_owned(), format!("{CONFIG_DIR}/{CONFIG_FILE}")];
    if replicas > 1 {
        env.push(secret_env(ROUTE_PASSWORD_VARIABLE, &secret, ROUTE_KEY));
        // The routes carry the route login's password, which nats-server cannot take from the
        // environment inside a URL: the kubelet expands `$(VAR)` in arguments instead.
        let pods = pods_service_name(&owner.name);
        let routes: Vec<String> = (0..replicas)
            .map(|n| {
                format!(
                    "nats://{ROUTE_USER}:$({ROUTE_PASSWORD_VARIABLE})@{}-{n}.{pods}.{}.svc:{ROUTE_PORT}",
                    name(&owner.name),
                    owner.namespace
                )
            })
            .collect();
        args.extend(["--routes".to_owned(), routes.join(",")]);
    }
    Container {
        name: SERVER_NAME.to_owned(),
        image: Some(
            app.spec
                .events
                .image
                .clone()
                .unwrap_or_else(|| image(app, SERVER_NAME)),
        ),
        image_pull_policy: app.spec.image_pull_policy.map(|p| p.as_str().to_owned()),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![
            container_port("client", CLIENT_PORT),
            container_port("monitor", MONITOR_PORT),
            container_port("route", ROUTE_PORT),
        ]),
        resources: app.spec.events.resources.clone(),
        // JetStream recovers its streams at start, which can take a while on a large volume.
        startup_probe: Some(monitor_probe("/healthz", 2, 150)),
        liveness_probe: Some(monitor_probe("/healthz?js-enabled-only=true", 10, 3)),
        readiness_probe: Some(monitor_probe("/healthz?js-server-only=true", 2, 2)),
        security_context: Some(super::container::locked_down()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".to_owned(),
                mount_path: CONFIG_DIR.to_owned(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: DATA_VOLUME.to_owned(),
                mount_path: DATA_DIR.to_owned(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    }
}

/// `msa-streams`: the admin login, on the pod's loopback, making and keeping the streams.
fn keeper_container(app: &MicroserviceApp, owner: &Owner) -> Container {
    let mut env = connection_env(
        &owner.name,
        ADMIN,
        format!("nats://127.0.0.1:{CLIENT_PORT}"),
    );
    env.push(value("MSA_APP", owner.name.clone()));
    env.extend(stream_env(app));
    Container {
        name: KEEPER_NAME.to_owned(),
        image: Some(image(app, KEEPER_NAME)),
        image_pull_policy: app.spec.image_pull_policy.map(|p| p.as_str().to_owned()),
        env: Some(env),
        ports: Some(vec![container_port("probe", KEEPER_PROBE_PORT)]),
        // Small and bounded: it holds one connection and three stream configurations.
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_owned(), Quantity("10m".to_owned())),
                ("memory".to_owned(), Quantity("16Mi".to_owned())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity("64Mi".to_owned()),
            )])),
            ..ResourceRequirements::default()
        }),
        // The pod is ready only once the streams are made: the services' events have somewhere
        // to go (what the app's EventsReady condition reports).
        readiness_probe: Some(super::container::http_probe_on("probe", "/readyz", 2, 2)),
        security_context: Some(super::container::locked_down()),
        volume_mounts: Some(vec![password_mount()]),
        ..Container::default()
    }
}

fn stateful_set(app: &MicroserviceApp, owner: &Owner, config: &ConfigMap) -> StatefulSet {
    let events = &app.spec.events;
    let metadata = metadata(owner, name(&owner.name));
    let pod_spec = PodSpec {
        containers: vec![server_container(app, owner), keeper_container(app, owner)],
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        // The server stops at once on SIGTERM; clients reconnect to another (or wait).
        termination_grace_period_seconds: Some(30),
        image_pull_secrets: (!app.spec.image_pull_secrets.is_empty())
            .then(|| app.spec.image_pull_secrets.clone()),
        security_context: Some(super::pod::pod_security_context()),
        volumes: Some(vec![
            Volume {
                name: "config".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: name(&owner.name),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            password_volume(
                &credentials_secret_name(&owner.name, &owner.reference.uid),
                ADMIN,
            ),
        ]),
        ..PodSpec::default()
    };
    let mut annotations = BTreeMap::new();
    // A new configuration (the server reads it only at start) rolls the servers, one at a time.
    annotations.insert(
        labels::CONFIG_HASH_ANNOTATION.to_owned(),
        short_hash(&(&pod_spec, &config.data)),
    );
    StatefulSet {
        spec: Some(StatefulSetSpec {
            replicas: Some(events.replicas),
            service_name: Some(pods_service_name(&owner.name)),
            selector: LabelSelector {
                match_labels: Some(selector(&owner.name)),
                match_expressions: None,
            },
            // All servers at once: a cluster of three forms only when its members can start
            // together (the default, one by one, waits for readiness that needs the others).
            pod_management_policy: Some("Parallel".to_owned()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    max_unavailable: None,
                    partition: Some(0),
                }),
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(app.spec.storage.when_deleted.as_str().to_owned()),
                    when_scaled: Some("Retain".to_owned()),
                },
            ),
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(DATA_VOLUME.to_owned()),
                    labels: metadata.labels.clone(),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                    storage_class_name: events.storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_owned(),
                            events.storage.size.clone(),
                        )])),
                        limits: None,
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                status: None,
            }]),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: metadata.labels.clone(),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            ..StatefulSetSpec::default()
        }),
        metadata,
        status: None,
    }
}

fn budget(owner: &Owner) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: metadata(owner, name(&owner.name)),
        spec: Some(PodDisruptionBudgetSpec {
            // Three servers keep every stream with one of them down, not two.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector(&owner.name)),
                match_expressions: None,
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

fn tcp(port: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_owned()),
        end_port: None,
    }
}

/// Clients only from the app's services, routes only from the other servers, monitoring only
/// from the monitoring namespace.
fn network_policy(app: &MicroserviceApp, owner: &Owner) -> NetworkPolicy {
    let services = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                labels::INSTANCE.to_owned(),
                owner.name.clone(),
            )])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: labels::NAME.to_owned(),
                operator: "In".to_owned(),
                values: Some(
                    Component::ALL
                        .into_iter()
                        .filter(|c| c.is_stateful())
                        .map(|c| c.name().to_owned())
                        .collect(),
                ),
            }]),
        }),
        ..NetworkPolicyPeer::default()
    };
    let servers = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(selector(&owner.name)),
            match_expressions: None,
        }),
        ..NetworkPolicyPeer::default()
    };
    let mut ingress = vec![
        NetworkPolicyIngressRule {
            from: Some(vec![services]),
            ports: Some(vec![tcp(CLIENT_PORT)]),
        },
        NetworkPolicyIngressRule {
            from: Some(vec![servers]),
            ports: Some(vec![tcp(ROUTE_PORT)]),
        },
    ];
    if let Some(namespace) = &app.spec.network_policy.monitoring_namespace {
        ingress.push(super::network::from_monitoring(namespace, MONITOR_PORT));
    }
    NetworkPolicy {
        metadata: metadata(owner, name(&owner.name)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector(&owner.name)),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(ingress),
            egress: None,
        }),
    }
}

/// The Secret with a fresh password for every login, created once (never applied: the operator
/// neither reads Secrets nor overwrites this one, so the passwords stay as made). Deleted with
/// the app.
pub fn credentials_secret(
    app: &MicroserviceApp,
    mut password: impl FnMut() -> String,
) -> Result<Secret, BuildError> {
    let owner = Owner::of(app, &ClusterFacts::default())?;
    Ok(Secret {
        metadata: metadata(
            &owner,
            credentials_secret_name(&owner.name, &owner.reference.uid),
        ),
        data: Some(
            LOGINS
                .iter()
                .chain(&[ROUTE_KEY])
                .map(|login| ((*login).to_owned(), ByteString(password().into_bytes())))
                .collect(),
        ),
        type_: Some("Opaque".to_owned()),
        ..Secret::default()
    })
}
