//! A component's Deployment: the gateway, and the stateful services when their data lives in
//! PostgreSQL (so replicas are interchangeable).

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::Owner;
use super::pod;
use crate::component::Component;
use crate::crd::MicroserviceApp;
use crate::labels;

pub(super) fn deployment(app: &MicroserviceApp, owner: &Owner, component: Component) -> Deployment {
    let spec = component.spec(app);
    let rollout = &spec.rollout;
    Deployment {
        metadata: owner.workload_metadata(app, component),
        spec: Some(DeploymentSpec {
            // An autoscaler owns the count: leaving the field out avoids a tug of war.
            replicas: (!spec.autoscaled).then_some(spec.replicas),
            selector: LabelSelector {
                match_labels: Some(labels::selector(&owner.name, component)),
                match_expressions: None,
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(rollout.max_surge.clone()),
                    max_unavailable: Some(rollout.max_unavailable.clone()),
                }),
            }),
            // The API server omits a zero here (Go `omitempty`); rendering it would look like
            // drift on every reconcile.
            min_ready_seconds: (rollout.min_ready_seconds > 0).then_some(rollout.min_ready_seconds),
            progress_deadline_seconds: Some(rollout.progress_deadline_seconds),
            template: pod::template(app, owner, component, "pod-template-hash"),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}
