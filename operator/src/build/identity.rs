//! Service identity between components, from what the cluster already has. The order service
//! and the product service call each other's internal routes (the order service reserves
//! stock; the product service asks whether an order was really cancelled before its sold stock
//! comes back), so each runs as its own ServiceAccount and gets a projected token for the
//! other's audience (kubelet rotates it); each checks the other's token against the API
//! server's ServiceAccount issuer keys, which the operator reads from the issuer discovery
//! endpoints and publishes in a ConfigMap. No shared secret. Until the operator knows the
//! issuer, the services run without the check (and say so at start-up) and send no token: a
//! service that checks users' tokens would take a ServiceAccount token for a user's and refuse
//! it.

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, PodTemplateSpec, ProjectedVolumeSource,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};

use super::Owner;
use crate::component::Component;
use crate::labels;

const TOKEN_VOLUME: &str = "service-token";
const TOKEN_DIR: &str = "/var/run/msa/service-token";
const ISSUER_VOLUME: &str = "service-issuer";
const ISSUER_DIR: &str = "/etc/msa/service-issuer";
const JWKS_KEY: &str = "jwks.json";
/// The variable naming the issuer a service checks its peers' tokens against.
const ISSUER_ENV: &str = "MSA_SERVICE_ISSUER";
/// Lifetime asked for a service's token; kubelet renews it at 80 %.
const TOKEN_SECONDS: i64 = 3600;

/// What the operator learned from the cluster that rendering needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    /// The API server's ServiceAccount token issuer, when its discovery endpoints answered.
    pub service_issuer: Option<ServiceIssuer>,
    /// Whether the Prometheus Operator's PodMonitor API is installed.
    pub pod_monitors: bool,
    /// The ClusterIP of this app's broker Service (`<app>-events`), once it has one: where its
    /// services publish (see `build::broker`). Per app, unlike the rest.
    pub broker_address: Option<String>,
    /// What the operator knows of each ConfigMap and Secret the app's components name in
    /// `configFrom` (see [`super::config`]); a source missing here counts as absent. Per app.
    pub config_sources:
        std::collections::BTreeMap<crate::crd::ConfigSource, super::config::SourceContent>,
    /// The sources hash each component's running pod template carries, kept while a source it
    /// reads is absent. Per app.
    pub running_sources: std::collections::BTreeMap<Component, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceIssuer {
    /// `iss` of ServiceAccount tokens (from `/.well-known/openid-configuration`).
    pub issuer: String,
    /// The keys that sign them (`/openid/v1/jwks`).
    pub jwks: String,
}

/// Who calls whose internal routes with its own token: (caller, callee).
const CALLS: [(Component, Component); 2] = [
    (Component::Order, Component::Product),
    (Component::Product, Component::Order),
];

/// The peer whose internal routes `component` calls with its token, if any.
fn callee_of(component: Component) -> Option<Component> {
    CALLS
        .iter()
        .find(|(caller, _)| *caller == component)
        .map(|(_, callee)| *callee)
}

/// The components whose tokens `component` takes on its internal routes.
fn callers_of(component: Component) -> impl Iterator<Item = Component> {
    CALLS
        .into_iter()
        .filter(move |(_, callee)| *callee == component)
        .map(|(caller, _)| caller)
}

/// The components that run as a ServiceAccount of their own, so their tokens name them alone.
pub fn has_own_account(component: Component) -> bool {
    callee_of(component).is_some()
}

/// The audience of tokens meant for `component` (its Service's name).
pub fn audience(app: &str, component: Component) -> String {
    labels::child_name(app, component)
}

/// The ServiceAccount a component with its own identity runs as ([`has_own_account`]).
pub fn own_account(app: &str, component: Component) -> String {
    labels::child_name(app, component)
}

/// The subject of a component's tokens.
pub fn subject(owner: &Owner, component: Component) -> String {
    format!(
        "system:serviceaccount:{}:{}",
        owner.namespace,
        own_account(&owner.name, component)
    )
}

/// The ConfigMap with the issuer's keys, when known.
pub(super) fn issuer_config_map(owner: &Owner) -> Option<ConfigMap> {
    let issuer = owner.cluster.service_issuer.as_ref()?;
    let mut labels = labels::app_labels(&owner.name);
    labels.insert(labels::COMPONENT.to_owned(), "service-issuer".to_owned());
    Some(ConfigMap {
        metadata: owner.metadata(issuer_config_map_name(&owner.name), labels),
        data: Some([(JWKS_KEY.to_owned(), issuer.jwks.clone())].into()),
        ..ConfigMap::default()
    })
}

pub fn issuer_config_map_name(app: &str) -> String {
    format!("{app}-service-issuer")
}

/// The issuer a (live) pod template of a service that checks its peers' tokens was rendered
/// with; None when it runs without the check. The inverse of what rendering puts there, so a
/// running app's facts can be read back.
pub fn rendered_issuer(template: &PodTemplateSpec) -> Option<String> {
    template
        .spec
        .as_ref()?
        .containers
        .iter()
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == ISSUER_ENV)
        .and_then(|e| e.value.clone())
}

/// The keys held by a (live) issuer ConfigMap.
pub fn published_keys(config_map: &ConfigMap) -> Option<String> {
    config_map.data.as_ref()?.get(JWKS_KEY).cloned()
}

pub(super) fn volumes(owner: &Owner, component: Component) -> Vec<Volume> {
    let checked = owner.cluster.service_issuer.is_some();
    let token = callee_of(component)
        .filter(|_| checked)
        .map(|callee| Volume {
            name: TOKEN_VOLUME.to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(audience(&owner.name, callee)),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        path: "token".to_owned(),
                    }),
                    ..VolumeProjection::default()
                }]),
                default_mode: Some(0o440),
            }),
            ..Volume::default()
        });
    let keys = (checked && callers_of(component).next().is_some()).then(|| Volume {
        name: ISSUER_VOLUME.to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: issuer_config_map_name(&owner.name),
            optional: Some(false),
            default_mode: Some(0o444),
            items: None,
        }),
        ..Volume::default()
    });
    token.into_iter().chain(keys).collect()
}

pub(super) fn mounts(owner: &Owner, component: Component) -> Vec<VolumeMount> {
    volumes(owner, component)
        .into_iter()
        .map(|volume| VolumeMount {
            mount_path: if volume.name == TOKEN_VOLUME {
                TOKEN_DIR
            } else {
                ISSUER_DIR
            }
            .to_owned(),
            name: volume.name,
            read_only: Some(true),
            ..VolumeMount::default()
        })
        .collect()
}

pub(super) fn env(owner: &Owner, component: Component) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    if callee_of(component).is_some() && owner.cluster.service_issuer.is_some() {
        env.push(("MSA_SERVICE_TOKEN_FILE", format!("{TOKEN_DIR}/token")));
    }
    let callers: Vec<String> = callers_of(component)
        .map(|caller| subject(owner, caller))
        .collect();
    if let (Some(issuer), false) = (&owner.cluster.service_issuer, callers.is_empty()) {
        env.extend([
            (ISSUER_ENV, issuer.issuer.clone()),
            ("MSA_SERVICE_JWKS_FILE", format!("{ISSUER_DIR}/{JWKS_KEY}")),
            ("MSA_SERVICE_AUDIENCE", audience(&owner.name, component)),
            ("MSA_SERVICE_CALLERS", callers.join(",")),
        ]);
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call made with a token is a call: its caller discovers the callee (so it has the
    /// Role) and the callee's NetworkPolicy admits it. And one token per caller: a component
    /// has one token file.
    #[test]
    fn every_call_with_a_token_is_an_upstream_and_each_caller_has_one() {
        for (caller, callee) in CALLS {
            assert!(caller.upstreams().contains(&callee), "{caller} → {callee}");
            assert!(caller.needs_discovery());
            assert_eq!(
                CALLS.iter().filter(|(c, _)| *c == caller).count(),
                1,
                "{caller} calls one peer with its token"
            );
        }
    }
}
