//! The ConfigMaps and Secrets apps name in `configFrom`: what the operator keeps of them, and
//! which apps a change in one concerns.
//!
//! These objects are the users', in any number, and the operator needs only to know when their
//! content changes. So the watch keeps, of each, its name, namespace and a hash of its content
//! (no data, no annotations — `kubectl apply` copies the whole object into one — no labels):
//! a cluster's worth of ConfigMaps costs a few hundred bytes each, and no Secret's value
//! stays in the operator's memory longer than the list page or watch event that brought it
//! (the list is paged, see `controller::condensed_watch`). A Secret's hash is salted with its
//! uid, so the pod-template annotation cannot be matched against guesses of a weak Secret.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use kube::runtime::reflector::Store;

use crate::build::config::SourceContent;
use crate::build::short_hash;
use crate::component::Component;
use crate::controller::WatchedApp;
use crate::crd::ConfigSource;

/// Where a condensed object keeps the hash of its content.
pub const CONTENT_HASH_ANNOTATION: &str = "msa.dev/content-hash";

/// Which of the two kinds a source is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    ConfigMap,
    Secret,
}

/// A hash of a ConfigMap's or Secret's content (its keys and values, text and binary) and of
/// `salt` (a Secret's uid, so a hash shown in a pod template cannot be matched against guesses
/// of a weak Secret).
pub fn content_hash<T: serde::Serialize, B: serde::Serialize>(
    salt: &str,
    data: &Option<BTreeMap<String, T>>,
    binary: &Option<BTreeMap<String, B>>,
) -> String {
    short_hash(&(salt, data, binary))
}

/// What `store` (a condensed watch's cache) knows of the object `name` in `namespace`.
pub fn content_in<K>(store: &Store<K>, namespace: &str, name: &str) -> SourceContent
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .get(&ObjectRef::new(name).within(namespace))
        .and_then(|object| condensed_hash(object.as_ref()))
        .map_or(SourceContent::Absent, SourceContent::Hash)
}

/// Replaces a ConfigMap by its name and a hash of its content.
pub fn condense_config_map(config_map: &mut ConfigMap) {
    let hash = content_hash("", &config_map.data, &config_map.binary_data);
    *config_map = ConfigMap {
        metadata: condensed_meta(config_map.meta(), hash),
        ..ConfigMap::default()
    };
}

/// Replaces a Secret by its name and a hash of its content.
pub fn condense_secret(secret: &mut Secret) {
    let uid = secret.metadata.uid.clone().unwrap_or_default();
    let hash = content_hash(&uid, &secret.data, &secret.string_data);
    *secret = Secret {
        metadata: condensed_meta(secret.meta(), hash),
        ..Secret::default()
    };
}

fn condensed_meta(meta: &ObjectMeta, hash: String) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        resource_version: meta.resource_version.clone(),
        uid: meta.uid.clone(),
        annotations: Some(BTreeMap::from([(CONTENT_HASH_ANNOTATION.to_owned(), hash)])),
        ..ObjectMeta::default()
    }
}

/// The content hash a condensed object carries.
pub fn condensed_hash(object: &impl Resource) -> Option<String> {
    object.annotations().get(CONTENT_HASH_ANNOTATION).cloned()
}

/// Whether `source` names the object `name` of `kind`.
fn names(source: &ConfigSource, kind: SourceKind, name: &str) -> bool {
    let named = match kind {
        SourceKind::ConfigMap => &source.config_map,
        SourceKind::Secret => &source.secret,
    };
    named.as_deref() == Some(name)
}

/// The apps in `namespace` one of whose components reads `name` of `kind` through
/// `configFrom`: those a change in it concerns. Apps the operator cannot read are skipped
/// (they are reconciled when they are fixed).
pub fn apps_reading(
    apps: &[Arc<WatchedApp>],
    namespace: &str,
    kind: SourceKind,
    name: &str,
) -> Vec<ObjectRef<WatchedApp>> {
    apps.iter()
        .filter(|watched| watched.namespace().as_deref() == Some(namespace))
        .filter(|watched| {
            watched.0.as_ref().is_ok_and(|app| {
                Component::ALL.into_iter().any(|component| {
                    component
                        .spec(app)
                        .config_from
                        .iter()
                        .any(|source| names(source, kind, name))
                })
            })
        })
        .map(|watched| ObjectRef::from_obj(watched.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    fn config_map(data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("settings".into()),
                namespace: Some("shop".into()),
                resource_version: Some("7".into()),
                annotations: Some(BTreeMap::from([(
                    "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                    "{… the whole object …}".to_owned(),
                )])),
                labels: Some(BTreeMap::from([("team".to_owned(), "a".to_owned())])),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn a_condensed_config_map_keeps_its_name_and_a_hash_of_its_content_only() {
        let mut condensed = config_map(&[("MSA_CORS_ORIGINS", "https://a.example")]);
        condense_config_map(&mut condensed);
        assert_eq!(condensed.data, None);
        assert_eq!(condensed.metadata.labels, None);
        assert_eq!(condensed.name_any(), "settings");
        assert_eq!(condensed.namespace().as_deref(), Some("shop"));
        let hash = condensed_hash(&condensed).expect("a hash");
        assert_eq!(condensed.annotations().len(), 1, "nothing but the hash");

        // The same content, however its metadata differs, hashes the same; other content not.
        let mut relabelled = config_map(&[("MSA_CORS_ORIGINS", "https://a.example")]);
        relabelled.metadata.labels = None;
        condense_config_map(&mut relabelled);
        assert_eq!(condensed_hash(&relabelled), Some(hash.clone()));
        let mut edited = config_map(&[("MSA_CORS_ORIGINS", "https://b.example")]);
        condense_config_map(&mut edited);
        assert_ne!(condensed_hash(&edited), Some(hash));
    }

    #[test]
    fn a_condensed_secret_holds_no_value() {
        let mut secret = Secret {
            metadata: ObjectMeta {
                name: Some("keys".into()),
                namespace: Some("shop".into()),
                ..ObjectMeta::default()
            },
            data: Some(BTreeMap::from([(
                "TOKEN".to_owned(),
                ByteString(b"hunter2".to_vec()),
            )])),
            ..Secret::default()
        };
        secret.metadata.uid = Some("4f1c".into());
        let before = content_hash("4f1c", &secret.data, &secret.string_data);
        assert_ne!(
            before,
            content_hash("", &secret.data, &secret.string_data),
            "salted with the uid"
        );
        condense_secret(&mut secret);
        assert_eq!(secret.data, None);
        let kept = serde_json::to_string(&secret).unwrap();
        assert!(!kept.contains("aHVudGVyMg=="), "{kept}");
        assert_eq!(condensed_hash(&secret), Some(before));
    }

    #[test]
    fn a_change_concerns_the_apps_of_its_namespace_that_read_it() {
        let app = |name: &str, namespace: &str, sources: serde_json::Value| {
            let object: WatchedApp = serde_json::from_value(serde_json::json!({
                "apiVersion": "msa.dev/v1alpha1",
                "kind": "MicroserviceApp",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"components": {"gateway": {"configFrom": sources}}},
            }))
            .unwrap();
            Arc::new(object)
        };
        let apps = [
            app("shop", "a", serde_json::json!([{"configMap": "settings"}])),
            app("other", "a", serde_json::json!([{"secret": "settings"}])),
            app(
                "elsewhere",
                "b",
                serde_json::json!([{"configMap": "settings"}]),
            ),
            app("none", "a", serde_json::json!([])),
        ];
        let names = |kind| {
            apps_reading(&apps, "a", kind, "settings")
                .into_iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(names(SourceKind::ConfigMap), ["shop"]);
        assert_eq!(names(SourceKind::Secret), ["other"]);
        assert!(apps_reading(&apps, "a", SourceKind::ConfigMap, "unrelated").is_empty());
    }
}
