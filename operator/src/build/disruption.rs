//! A component's PodDisruptionBudget: node drains take at most one of its pods at a time.
//!
//! Only components that can have more than one pod get one. With one replica, a budget would
//! either block every drain (minAvailable 1) or allow what no budget allows anyway.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Owner;
use crate::component::Component;
use crate::crd::MicroserviceApp;
use crate::labels;

/// Whether the component gets a budget: more than one replica, or an autoscaler that may
/// scale it out.
pub fn needs_budget(app: &MicroserviceApp, component: Component) -> bool {
    let spec = component.spec(app);
    spec.autoscaled || spec.replicas > 1
}

pub(super) fn budget(
    app: &MicroserviceApp,
    owner: &Owner,
    component: Component,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: owner.component_metadata(app, component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(labels::selector(&owner.name, component)),
                match_expressions: None,
            }),
            // A pod that is not ready yet may be evicted: it serves nobody, and keeping it would
            // stall a drain behind a crash-looping pod.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}
