//! The container of a component: image, environment, probes and a locked-down security context.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, Probe, SeccompProfile, SecretKeySelector, SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::Owner;
use super::identity;
use super::pod::{DATA_VOLUME, has_embedded_database};
use crate::component::Component;
use crate::crd::{GatewaySpec, MicroserviceApp};
use crate::labels;

/// Where the embedded SQLite database lives in a pod (the StatefulSet's volume).
const DATA_DIR: &str = "/data";

/// The gateway's token keys (a projected volume of the Secrets `spec.components.gateway.auth`
/// names; kubelet updates the files when a Secret changes, and the gateway re-reads them).
pub(super) const AUTH_VOLUME: &str = "auth-keys";
const AUTH_DIR: &str = "/etc/msa/auth";
pub(super) const JWKS_FILE: &str = "jwks.json";
pub(super) const HMAC_FILE: &str = "hmac-secret";

/// Name of the container port every component listens on; Services and EndpointSlice consumers
/// refer to it by this name.
pub const PORT_NAME: &str = "http";

/// The admin port (`/info`, `/metrics`, the gateway's `/debug/endpoints`, and the probes): on
/// every pod, in no Service, reachable only as NetworkPolicies allow.
pub const ADMIN_PORT: i32 = 9090;
pub const ADMIN_PORT_NAME: &str = "admin";

pub(super) fn container(app: &MicroserviceApp, owner: &Owner, component: Component) -> Container {
    let spec = component.spec(app);
    let mut mounts = vec![VolumeMount {
        name: "tmp".to_owned(),
        mount_path: "/tmp".to_owned(),
        ..VolumeMount::default()
    }];
    if has_embedded_database(app, component) {
        mounts.push(VolumeMount {
            name: DATA_VOLUME.to_owned(),
            mount_path: DATA_DIR.to_owned(),
            ..VolumeMount::default()
        });
    }
    // Every component verifies users' tokens itself, so each mounts the keys (when a Secret
    // holds them rather than only the issuer's URL).
    if super::pod::auth_keys(app).is_some() {
        mounts.push(VolumeMount {
            name: AUTH_VOLUME.to_owned(),
            mount_path: AUTH_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    mounts.extend(identity::mounts(owner, component));
    mounts.extend(super::broker::service_mount(app, owner, component));
    Container {
        name: component.name().to_owned(),
        image: Some(component.image(app)),
        image_pull_policy: app.spec.image_pull_policy.map(|p| p.as_str().to_owned()),
        ports: Some(vec![
            ContainerPort {
                name: Some(PORT_NAME.to_owned()),
                container_port: spec.port,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(ADMIN_PORT_NAME.to_owned()),
                container_port: ADMIN_PORT,
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        env: Some(env_for(app, owner, component)),
        env_from: super::config::env_from(app, component),
        resources: spec.resources.clone(),
        liveness_probe: Some(http_probe("/healthz", 10, 3)),
        // Every 2 s: a new pod counts as ready about a second after it listens (its first probe
        // often comes before that; at 5 s a one-pod rollout's gap doubled), and a stopping pod
        // is out of the EndpointSlices' serving set within 4 s, inside the 5 s drain delay.
        readiness_probe: Some(http_probe("/readyz", 2, 2)),
        security_context: Some(locked_down()),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

/// Every container the operator renders: no privilege escalation, read-only root, non-root,
/// no capabilities, the runtime's default seccomp profile.
pub(super) fn locked_down() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

pub(super) fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    http_probe_on(ADMIN_PORT_NAME, path, period_seconds, failure_threshold)
}

/// An HTTP GET probe of `path` on the container port named `port` (2 s timeout).
pub(super) fn http_probe_on(
    port: &str,
    path: &str,
    period_seconds: i32,
    failure_threshold: i32,
) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(port.to_owned()),
            scheme: Some("HTTP".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The component's environment: what the operator sets, then the user's `env` entries, each
/// replacing an operator-set variable of the same name (a list with one entry per name, as
/// server-side apply requires).
fn env_for(app: &MicroserviceApp, owner: &Owner, component: Component) -> Vec<EnvVar> {
    let app_name = app.name_any();
    let mut env = vec![
        value("MSA_COMPONENT", component.name()),
        value("MSA_APP", &app_name),
        value(
            "MSA_LISTEN",
            &format!("0.0.0.0:{}", component.spec(app).port),
        ),
        value("MSA_ADMIN_LISTEN", &format!("0.0.0.0:{ADMIN_PORT}")),
        field_ref("MSA_POD_NAME", "metadata.name"),
        field_ref("MSA_NAMESPACE", "metadata.namespace"),
        value(
            "MSA_DRAIN_DELAY_SECONDS",
            &component.spec(app).shutdown.drain_delay_seconds.to_string(),
        ),
        value(
            "MSA_SHUTDOWN_GRACE_SECONDS",
            &component.spec(app).shutdown.grace_seconds.to_string(),
        ),
    ];
    env.extend(database_url(app, component));
    if component.needs_discovery() {
        env.push(value("MSA_DISCOVERY", "kubernetes"));
        for upstream in component.upstreams() {
            env.push(value(
                &format!("MSA_UPSTREAM_{}", upstream.name().to_uppercase()),
                &labels::child_name(&app_name, *upstream),
            ));
        }
    }
    env.extend(token_verification(component, &app.spec.components.gateway));
    env.extend(
        identity::env(owner, component)
            .into_iter()
            .map(|(name, v)| value(name, &v)),
    );
    if component == Component::Gateway {
        env.extend(gateway_policy(&app.spec.components.gateway));
    }
    env.extend(super::broker::service_env(app, owner, component));
    env.extend(
        super::telemetry::env(app, component)
            .into_iter()
            .map(|(name, v)| value(name, &v)),
    );
    // `config` keys, then `env` entries, each replacing a variable of the same name set before.
    for user_var in super::config::env(app, owner, component)
        .iter()
        .chain(&component.spec(app).env)
    {
        match env.iter_mut().find(|e| e.name == user_var.name) {
            Some(existing) => *existing = user_var.clone(),
            None => env.push(user_var.clone()),
        }
    }
    env
}

/// `DATABASE_URL` of a stateful component: from the Secret when `spec.database` is set, else
/// the embedded SQLite file. None for the gateway.
fn database_url(app: &MicroserviceApp, component: Component) -> Option<EnvVar> {
    if !component.is_stateful() {
        return None;
    }
    let Some(database) = &app.spec.database else {
        let path = format!("sqlite://{DATA_DIR}/{}.db", component.name());
        return Some(value("DATABASE_URL", &path));
    };
    Some(EnvVar {
        name: "DATABASE_URL".to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: database.secret_ref.name.clone(),
                key: database.keys.for_component(component)?.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
    })
}

/// The gateway's traffic policy, in the environment variables its flags read.
fn gateway_policy(gateway: &GatewaySpec) -> Vec<EnvVar> {
    let (cb, od, rt, to) = (
        &gateway.circuit_breaker,
        &gateway.outlier_detection,
        &gateway.retries,
        &gateway.timeouts,
    );
    [
        (
            "MSA_LB_STRATEGY",
            gateway.load_balancing.strategy.flag_value().to_owned(),
        ),
        (
            "MSA_BREAKER_FAILURE_RATE_PERCENT",
            cb.failure_rate_percent.to_string(),
        ),
        ("MSA_BREAKER_MINIMUM_CALLS", cb.minimum_calls.to_string()),
        ("MSA_BREAKER_WINDOW_SECONDS", cb.window_seconds.to_string()),
        ("MSA_BREAKER_OPEN_SECONDS", cb.open_seconds.to_string()),
        (
            "MSA_BREAKER_HALF_OPEN_PROBES",
            cb.half_open_probes.to_string(),
        ),
        (
            "MSA_OUTLIER_CONSECUTIVE_FAILURES",
            od.consecutive_failures.to_string(),
        ),
        (
            "MSA_OUTLIER_BASE_EJECTION_MS",
            od.base_ejection_millis.to_string(),
        ),
        (
            "MSA_OUTLIER_MAX_EJECTION_MS",
            od.max_ejection_millis.to_string(),
        ),
        (
            "MSA_OUTLIER_MAX_EJECTION_PERCENT",
            od.max_ejection_percent.to_string(),
        ),
        ("MSA_OUTLIER_LATENCY_FACTOR", od.latency_factor.to_string()),
        ("MSA_RETRY_MAX", rt.max_retries.to_string()),
        ("MSA_RETRY_BUDGET_PERCENT", rt.budget_percent.to_string()),
        (
            "MSA_RETRY_MIN_PER_SECOND",
            rt.min_retries_per_second.to_string(),
        ),
        ("MSA_TIMEOUT_CONNECT_MS", to.connect_millis.to_string()),
        ("MSA_TIMEOUT_PER_TRY_MS", to.per_try_millis.to_string()),
        ("MSA_TIMEOUT_REQUEST_MS", to.request_millis.to_string()),
    ]
    .into_iter()
    .chain(gateway.rate_limit.iter().flat_map(|limit| {
        let burst = limit.burst.unwrap_or(limit.requests_per_second);
        [
            (
                "MSA_RATE_LIMIT_PER_SECOND",
                limit.requests_per_second.to_string(),
            ),
            ("MSA_RATE_LIMIT_BURST", burst.to_string()),
        ]
    }))
    .map(|(name, v)| value(name, &v))
    .collect()
}

/// What a component needs to verify users' tokens, when `auth` is set: every component gets
/// the issuer, audiences and keys (a request that reaches a service directly cannot act as
/// anyone either); only the gateway lets some routes through without a token.
fn token_verification(component: Component, gateway: &GatewaySpec) -> Vec<EnvVar> {
    let Some(auth) = &gateway.auth else {
        return Vec::new();
    };
    let mut env = vec![
        value("MSA_AUTH_ISSUER", &auth.issuer),
        value("MSA_AUTH_AUDIENCES", &auth.audiences.join(",")),
        value(
            "MSA_AUTH_CLOCK_SKEW_SECONDS",
            &auth.clock_skew_seconds.to_string(),
        ),
    ];
    if component == Component::Gateway && !auth.public_routes.is_empty() {
        env.push(value(
            "MSA_AUTH_PUBLIC_ROUTES",
            &auth.public_routes.join(","),
        ));
    }
    if auth.jwks.is_some() {
        env.push(value(
            "MSA_AUTH_JWKS_FILE",
            &format!("{AUTH_DIR}/{JWKS_FILE}"),
        ));
    }
    if let Some(uri) = &auth.jwks_uri {
        env.push(value("MSA_AUTH_JWKS_URL", uri));
    }
    if auth.hmac_secret.is_some() {
        env.push(value(
            "MSA_AUTH_HMAC_SECRET_FILE",
            &format!("{AUTH_DIR}/{HMAC_FILE}"),
        ));
    }
    env
}

fn value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        value_from: None,
    }
}

fn field_ref(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}
