//! MicroserviceApps the operator cannot read: a field its types do not accept (for example a
//! null kept by an older CRD that marked the field nullable). The controller watches apps through
//! kube-core's `DeserializeGuard`, so such an object arrives as its metadata and the error
//! instead of failing the whole list — which would stop every app in the watched scope. Each
//! one is reported (a Warning Event on it, a log line, `msa_operator_apps{ready="false"}` and
//! `msa_operator_unreadable_apps`) and skipped; the others converge.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::core::DeserializeGuard;
use kube::core::error_boundary::InvalidObject;

use crate::crd::MicroserviceApp;
use crate::metrics::AppHealth;

/// Reason of the Warning Event on an unreadable app.
pub const REASON: &str = "Unreadable";

/// Category of `msa_operator_reconcile_errors_total` counted each time one is skipped.
pub const CATEGORY: &str = "unreadable";

/// What to do about one unreadable app.
#[derive(Clone, Debug, PartialEq)]
pub struct Unreadable {
    /// The object to publish the Warning Event on; None when its metadata does not name it
    /// (then only the log line and the metrics report it).
    pub regarding: Option<ObjectReference>,
    /// `namespace/name` for the log line (`?` for a part the metadata lacks).
    pub key: String,
    /// The Event's note and the log line's message: what is wrong and what to do.
    pub note: String,
}

/// Decides how to report an app the operator cannot read. Pure: the caller publishes.
pub fn decide(invalid: &InvalidObject) -> Unreadable {
    let meta = &invalid.metadata;
    let name = meta.name.as_deref().filter(|n| !n.is_empty());
    let namespace = meta.namespace.as_deref().filter(|n| !n.is_empty());
    let regarding = name
        .zip(namespace)
        .map(|(name, namespace)| ObjectReference {
            api_version: Some(MicroserviceApp::api_version(&()).into_owned()),
            kind: Some(MicroserviceApp::kind(&()).into_owned()),
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            field_path: None,
        });
    let key = format!("{}/{}", namespace.unwrap_or("?"), name.unwrap_or("?"));
    let edit = match (name, namespace) {
        (Some(name), Some(namespace)) => format!("`kubectl edit msa {name} -n {namespace}`"),
        _ => "`kubectl edit msa`".to_owned(),
    };
    Unreadable {
        regarding,
        key,
        note: format!(
            "msa-operator cannot read this MicroserviceApp ({}), so it leaves it and its children \
             as they are; a field holds a value the CRD's types do not accept (often a null: \
             remove the field to get its default), fix it with {edit}",
            invalid.error
        ),
    }
}

/// How a watched object counts in the apps metrics.
pub fn health(object: &DeserializeGuard<MicroserviceApp>) -> AppHealth {
    match &object.0 {
        Ok(app) if crate::status::is_ready(app) => AppHealth::Ready,
        Ok(_) => AppHealth::NotReady,
        Err(_) => AppHealth::Unreadable,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn invalid(name: Option<&str>, namespace: Option<&str>) -> InvalidObject {
        InvalidObject {
            error: "invalid type: null, expected IntOrString".to_owned(),
            metadata: ObjectMeta {
                name: name.map(str::to_owned),
                namespace: namespace.map(str::to_owned),
                uid: Some("u-1".to_owned()),
                ..ObjectMeta::default()
            },
        }
    }

    #[test]
    fn a_named_app_gets_an_event_saying_what_is_wrong_and_how_to_fix_it() {
        let decided = decide(&invalid(Some("shop"), Some("demo")));
        let regarding = decided.regarding.unwrap();
        assert_eq!(regarding.kind.as_deref(), Some("MicroserviceApp"));
        assert_eq!(regarding.api_version.as_deref(), Some("msa.dev/v1alpha1"));
        assert_eq!(regarding.name.as_deref(), Some("shop"));
        assert_eq!(regarding.namespace.as_deref(), Some("demo"));
        assert_eq!(regarding.uid.as_deref(), Some("u-1"));
        assert_eq!(decided.key, "demo/shop");
        assert!(
            decided
                .note
                .contains("invalid type: null, expected IntOrString"),
            "{}",
            decided.note
        );
        assert!(
            decided.note.contains("kubectl edit msa shop -n demo"),
            "{}",
            decided.note
        );
    }

    #[test]
    fn an_app_without_a_name_or_namespace_is_only_logged() {
        for (name, namespace) in [
            (None, Some("demo")),
            (Some("shop"), None),
            (Some(""), Some("demo")),
        ] {
            let decided = decide(&invalid(name, namespace));
            assert_eq!(decided.regarding, None, "{name:?} {namespace:?}");
            assert!(
                decided.note.contains("kubectl edit msa`"),
                "{}",
                decided.note
            );
        }
    }
}
