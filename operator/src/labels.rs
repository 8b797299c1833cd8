//! Names and labels of child objects (`app.kubernetes.io/*`, see the Kubernetes recommended
//! labels). Selectors use only the two labels that never change, because a Deployment's
//! selector is immutable.

use std::collections::BTreeMap;

use crate::component::Component;

pub const NAME: &str = "app.kubernetes.io/name";
pub const INSTANCE: &str = "app.kubernetes.io/instance";
pub const PART_OF: &str = "app.kubernetes.io/part-of";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const COMPONENT: &str = "app.kubernetes.io/component";

/// Value of `app.kubernetes.io/managed-by` and the server-side-apply field manager.
pub const MANAGER: &str = "msa-operator";
/// The field manager that keeps an autoscaled Deployment's replica count while the autoscaler
/// has not written it yet (see `reconcile::hand_over_replicas`).
pub const REPLICAS_HANDOVER_MANAGER: &str = "msa-operator-replicas-handover";

/// Label selector matching everything the operator manages (used to scope its watches).
pub fn managed_selector() -> String {
    format!("{MANAGED_BY}={MANAGER}")
}

/// Label of the ConfigMaps holding a component's `config` (several exist during a rollout;
/// the operator deletes those no workload uses any more).
pub const COMPONENT_CONFIG: &str = "msa.dev/component-config";

/// Pod-template annotation holding a hash of the content of the ConfigMaps and Secrets the pods
/// read through `configFrom` (only when they read some): an edit in one rolls them. Apart from
/// [`CONFIG_HASH_ANNOTATION`] because such an edit is the user's, which the operator's rollout
/// pacing does not hold back.
pub const CONFIG_SOURCES_ANNOTATION: &str = "msa.dev/config-sources-hash";

/// Pod-template annotation holding a hash of the rendered pod spec.
pub const CONFIG_HASH_ANNOTATION: &str = "msa.dev/config-hash";

/// Object annotation holding a hash of the whole object as the operator rendered it; it lets
/// the operator notice a field it stopped setting, which a subset comparison cannot.
pub const RENDERED_HASH_ANNOTATION: &str = "msa.dev/rendered-hash";

/// Name of a component's Deployment and Service.
pub fn child_name(app: &str, component: Component) -> String {
    format!("{app}-{}", component.name())
}

/// Name of the ServiceAccount, Role and RoleBinding of the discovering components.
pub fn discovery_name(app: &str) -> String {
    format!("{app}-discovery")
}

/// The labels that select a component's pods.
pub fn selector(app: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME.to_owned(), component.name().to_owned()),
        (INSTANCE.to_owned(), app.to_owned()),
    ])
}

/// [`selector`] as a label-selector query (`key=value,key=value`), to list the pods.
pub fn selector_query(app: &str, component: Component) -> String {
    selector(app, component)
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels of an app-wide object that belongs to no single component.
pub fn app_labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (INSTANCE.to_owned(), app.to_owned()),
        (PART_OF.to_owned(), app.to_owned()),
        (MANAGED_BY.to_owned(), MANAGER.to_owned()),
    ])
}

/// All labels of a component's objects: the user's extra labels, then ours on top.
pub fn component_labels(
    app: &str,
    component: Component,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = extra.clone();
    labels.extend(app_labels(app));
    labels.extend(selector(app, component));
    labels.insert(COMPONENT.to_owned(), component.name().to_owned());
    labels
}

/// Whether a label key is one the operator owns (users may not set it).
pub fn is_reserved(key: &str) -> bool {
    [NAME, INSTANCE, PART_OF, MANAGED_BY, COMPONENT].contains(&key)
}
