//! A component's configuration (`spec.components.<c>.config` and `configFrom`).
//!
//! `config` becomes an immutable ConfigMap whose name ends in a hash of its content, read by
//! the container through `configMapKeyRef` entries: a change is a new ConfigMap and a new pod
//! template, so the pods roll and no pod ever reads a half-edited set (the way kustomize's
//! ConfigMap generator and Helm's checksum annotations make configuration roll). The old
//! ConfigMap stays until the workload has rolled away from it (see `reconcile`).
//!
//! `configFrom` names objects the user keeps. Their content is not the operator's to copy, so
//! the pod reads them with `envFrom`, and what the operator knows of them, a hash of each one's
//! content from a watch (`ClusterFacts::config_sources`), goes into a pod-template annotation
//! of its own ([`sources_hash`]): editing one rolls the pods that read it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, ConfigMapKeySelector, EnvFromSource, EnvVar, EnvVarSource,
    SecretEnvSource,
};

use super::Owner;
use super::hash::short_hash;
use crate::component::Component;
use crate::crd::{ConfigSource, MicroserviceApp};
use crate::labels;

/// What the operator knows of the content of one `configFrom` source (serialized into the
/// sources hash).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceContent {
    /// A hash of its content (see `config_sources::content_hash`).
    Hash(String),
    /// It does not exist (new pods wait for it).
    Absent,
    /// A Secret, while Secrets are not watched: its changes roll nothing.
    NotWatched,
}

/// Name of the ConfigMap holding a component's `config`: `<app>-<component>-config-<hash>`.
pub fn config_map_name(
    app: &str,
    component: Component,
    config: &BTreeMap<String, String>,
) -> String {
    format!(
        "{}-config-{}",
        labels::child_name(app, component),
        short_hash(config)
    )
}

/// The component's `config` as an immutable ConfigMap; none when it has no `config`.
pub(super) fn config_map(
    app: &MicroserviceApp,
    owner: &Owner,
    component: Component,
) -> Option<ConfigMap> {
    let config = &component.spec(app).config;
    if config.is_empty() {
        return None;
    }
    let mut labels = labels::component_labels(&owner.name, component, &BTreeMap::new());
    labels.insert(labels::COMPONENT_CONFIG.to_owned(), "true".to_owned());
    Some(ConfigMap {
        metadata: owner.metadata(config_map_name(&owner.name, component, config), labels),
        data: Some(config.clone()),
        immutable: Some(true),
        ..ConfigMap::default()
    })
}

/// One variable per `config` key, read from the component's ConfigMap.
pub(super) fn env(app: &MicroserviceApp, owner: &Owner, component: Component) -> Vec<EnvVar> {
    let config = &component.spec(app).config;
    if config.is_empty() {
        return Vec::new();
    }
    let name = config_map_name(&owner.name, component, config);
    config
        .keys()
        .map(|key| EnvVar {
            name: key.clone(),
            value: None,
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: name.clone(),
                    key: key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        })
        .collect()
}

/// `envFrom` for `configFrom`, in its order; none when empty (so apps without it render as
/// before).
pub(super) fn env_from(app: &MicroserviceApp, component: Component) -> Option<Vec<EnvFromSource>> {
    let sources = &component.spec(app).config_from;
    (!sources.is_empty()).then(|| {
        sources
            .iter()
            .map(|source| EnvFromSource {
                config_map_ref: source.config_map.as_ref().map(|name| ConfigMapEnvSource {
                    name: name.clone(),
                    optional: Some(false),
                }),
                secret_ref: source.secret.as_ref().map(|name| SecretEnvSource {
                    name: name.clone(),
                    optional: Some(false),
                }),
                prefix: None,
            })
            .collect()
    })
}

/// The pod template's [`labels::CONFIG_SOURCES_ANNOTATION`]: a hash of what the operator knows
/// of each source the component reads, so an edit in one rolls its pods; none when it reads
/// none (apps without `configFrom` render as before). A source missing from the facts counts
/// as absent. While a ConfigMap it reads is absent, the pods keep the value they run with
/// (`owner.cluster.running_sources`): deleting a ConfigMap by mistake must not replace running
/// pods by ones that cannot start (a StatefulSet stops its only pod first).
pub(super) fn sources_hash(
    app: &MicroserviceApp,
    owner: &Owner,
    component: Component,
) -> Option<String> {
    let sources = &component.spec(app).config_from;
    if sources.is_empty() {
        return None;
    }
    let known: Vec<(&ConfigSource, &SourceContent)> = sources
        .iter()
        .map(|source| {
            let content = owner.cluster.config_sources.get(source);
            (source, content.unwrap_or(&SourceContent::Absent))
        })
        .collect();
    if known.iter().any(|(_, c)| **c == SourceContent::Absent)
        && let Some(running) = owner.cluster.running_sources.get(&component)
    {
        return Some(running.clone());
    }
    Some(short_hash(&known))
}
