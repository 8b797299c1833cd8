//! A component's Deployment.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::Owner;
use super::container::{container, runtime_default_seccomp};
use super::hash::short_hash;
use crate::component::Component;
use crate::crd::MicroserviceApp;
use crate::labels;

/// UID and GID the containers run as (the "nonroot" user of distroless images).
pub const RUN_AS: i64 = 65532;

pub(super) fn deployment(app: &MicroserviceApp, owner: &Owner, component: Component) -> Deployment {
    let spec = component.spec(app);
    let labels = labels::component_labels(&owner.name, component, &spec.labels);
    let pod_spec = pod_spec(app, owner, component);

    let mut pod_annotations: BTreeMap<String, String> = spec.annotations.clone();
    // Any change to the rendered pod spec rolls the pods; the hash also lets a person compare
    // what two pods run at a glance.
    pod_annotations.insert(
        labels::CONFIG_HASH_ANNOTATION.to_owned(),
        short_hash(&pod_spec),
    );

    let mut metadata = owner.metadata(labels::child_name(&owner.name, component), labels.clone());
    if !spec.annotations.is_empty() {
        metadata.annotations = Some(spec.annotations.clone());
    }
    let rollout = &spec.rollout;
    Deployment {
        metadata,
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
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(pod_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn pod_spec(app: &MicroserviceApp, owner: &Owner, component: Component) -> PodSpec {
    let mut volumes = vec![empty_dir("tmp")];
    if component.is_stateful() && app.spec.database.is_none() {
        volumes.push(empty_dir("data"));
    }
    let discovers = component.needs_discovery();
    PodSpec {
        containers: vec![container(app, component)],
        // Only components that watch EndpointSlices get an API token, and only for their own
        // ServiceAccount, whose Role allows exactly that.
        service_account_name: discovers.then(|| labels::discovery_name(&owner.name)),
        automount_service_account_token: Some(discovers),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(30),
        image_pull_secrets: (!app.spec.image_pull_secrets.is_empty())
            .then(|| app.spec.image_pull_secrets.clone()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..PodSecurityContext::default()
        }),
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}
