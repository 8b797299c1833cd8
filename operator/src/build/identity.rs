//! Service identity between components, from what the cluster already has: the order service
//! runs as its own ServiceAccount and gets a projected token for the product service's audience
//! (kubelet rotates it); the product service checks it against the API server's
//! ServiceAccount issuer keys, which the operator reads from the issuer discovery endpoints and
//! publishes in a ConfigMap. No shared secret, and the product service needs no API access.
//! Until the operator knows the issuer, the product service runs without the check (and says
//! so at start-up).

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
/// The product service's variable naming the issuer it checks tokens against.
const ISSUER_ENV: &str = "MSA_SERVICE_ISSUER";
/// Lifetime asked for the order service's token; kubelet renews it at 80 %.
const TOKEN_SECONDS: i64 = 3600;

/// What the operator learned from the cluster that rendering needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    /// The API server's ServiceAccount token issuer, when its discovery endpoints answered.
    pub service_issuer: Option<ServiceIssuer>,
    /// Whether the Prometheus Operator's PodMonitor API is installed.
    pub pod_monitors: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceIssuer {
    /// `iss` of ServiceAccount tokens (from `/.well-known/openid-configuration`).
    pub issuer: String,
    /// The keys that sign them (`/openid/v1/jwks`).
    pub jwks: String,
}

/// The audience of tokens meant for the product service.
pub fn product_audience(app: &str) -> String {
    labels::child_name(app, Component::Product)
}

/// The ServiceAccount the order service runs as: its own, so its tokens name it alone.
pub fn order_account(app: &str) -> String {
    labels::child_name(app, Component::Order)
}

/// The subject of the order service's tokens.
pub fn order_subject(owner: &Owner) -> String {
    format!(
        "system:serviceaccount:{}:{}",
        owner.namespace,
        order_account(&owner.name)
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

/// The issuer a (live) product pod template was rendered with; None when it runs without the
/// check. The inverse of what rendering puts there, so a running app's facts can be read back.
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
    match component {
        Component::Order => vec![Volume {
            name: TOKEN_VOLUME.to_owned(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(product_audience(&owner.name)),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        path: "token".to_owned(),
                    }),
                    ..VolumeProjection::default()
                }]),
                default_mode: Some(0o440),
            }),
            ..Volume::default()
        }],
        Component::Product if owner.cluster.service_issuer.is_some() => vec![Volume {
            name: ISSUER_VOLUME.to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: issuer_config_map_name(&owner.name),
                optional: Some(false),
                default_mode: Some(0o444),
                items: None,
            }),
            ..Volume::default()
        }],
        _ => Vec::new(),
    }
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
    match (component, &owner.cluster.service_issuer) {
        (Component::Order, _) => vec![("MSA_SERVICE_TOKEN_FILE", format!("{TOKEN_DIR}/token"))],
        (Component::Product, Some(issuer)) => vec![
            (ISSUER_ENV, issuer.issuer.clone()),
            ("MSA_SERVICE_JWKS_FILE", format!("{ISSUER_DIR}/{JWKS_KEY}")),
            ("MSA_SERVICE_AUDIENCE", product_audience(&owner.name)),
            ("MSA_SERVICE_CALLERS", order_subject(owner)),
        ],
        _ => Vec::new(),
    }
}
