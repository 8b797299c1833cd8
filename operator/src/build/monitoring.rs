//! The app's PodMonitor (Prometheus Operator), when asked for and where its API exists: every
//! pod of the app, scraped on its admin port. Built as a dynamic object, so the operator needs
//! no Prometheus Operator types and still runs where that API is absent.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::Owner;
use super::container::ADMIN_PORT_NAME;
use crate::crd::MicroserviceApp;
use crate::labels;

pub fn pod_monitor_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("monitoring.coreos.com", "v1", "PodMonitor"),
        "podmonitors",
    )
}

/// The start of `status.monitoring` while the app has a PodMonitor.
const CREATED: &str = "PodMonitor ";

/// Whether `status.monitoring` (as [`status_note`] wrote it) says the app had a PodMonitor.
pub fn had_pod_monitor(app: &MicroserviceApp) -> bool {
    app.status
        .as_ref()
        .and_then(|s| s.monitoring.as_deref())
        .is_some_and(|note| note.starts_with(CREATED))
}

/// What `status.monitoring` says.
pub fn status_note(app: &MicroserviceApp, api_present: bool) -> Option<String> {
    if !app.spec.monitoring.pod_monitor.enabled {
        return None;
    }
    Some(if api_present {
        format!(
            "{CREATED}{} scrapes every pod's admin port (/metrics on 9090)",
            kube::ResourceExt::name_any(app)
        )
    } else {
        "no PodMonitor: the monitoring.coreos.com API (Prometheus Operator) is not installed; scrape the pods' admin port 9090 (/metrics) another way".to_owned()
    })
}

pub(super) fn pod_monitor(app: &MicroserviceApp, owner: &Owner) -> Option<DynamicObject> {
    let settings = &app.spec.monitoring.pod_monitor;
    if !settings.enabled || !owner.cluster.pod_monitors {
        return None;
    }
    let mut labels = settings.labels.clone();
    labels.extend(labels::app_labels(&owner.name));
    let mut object = DynamicObject::new(&owner.name, &pod_monitor_resource());
    object.metadata = owner.metadata(owner.name.clone(), labels);
    object.data = json!({"spec": {
        "selector": {"matchLabels": {
            labels::INSTANCE: owner.name,
            labels::MANAGED_BY: labels::MANAGER,
        }},
        "namespaceSelector": {"matchNames": [owner.namespace]},
        "podMetricsEndpoints": [{
            "port": ADMIN_PORT_NAME,
            "path": "/metrics",
            "interval": settings.interval,
        }],
    }});
    Some(object)
}
