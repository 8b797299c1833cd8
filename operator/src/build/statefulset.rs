//! A stateful component's StatefulSet when it keeps an embedded SQLite database.
//!
//! Why a StatefulSet and not a Deployment with a claim: a Deployment's rolling update starts the
//! new pod before the old one stops (with a ReadWriteOnce volume on one node, both would open
//! the same SQLite file), and a claim shared by every replica cannot stop a second pod from
//! mounting it. A StatefulSet stops pod `-0` before it starts its replacement, and its claim
//! template gives each ordinal its own volume, so no two pods ever write one file.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    RollingUpdateStatefulSetStrategy, StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy,
    StatefulSetSpec, StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::Owner;
use super::pod::{self, DATA_VOLUME};
use crate::component::Component;
use crate::crd::MicroserviceApp;
use crate::labels;

pub(super) fn stateful_set(
    app: &MicroserviceApp,
    owner: &Owner,
    component: Component,
) -> StatefulSet {
    let spec = component.spec(app);
    let metadata = owner.workload_metadata(app, component);
    let name = metadata.name.clone();
    let labels = metadata.labels.clone();
    let storage = &app.spec.storage;
    let retention = storage.when_deleted.as_str().to_owned();
    StatefulSet {
        metadata,
        spec: Some(StatefulSetSpec {
            // The schema allows more than one replica only with spec.database (then this is a
            // Deployment), so this is 0 or 1.
            replicas: Some(spec.replicas),
            // The component's (ClusterIP) Service. Per-pod DNS names (`<pod>.<service>`) exist
            // only under a headless Service, and nothing here needs them: callers reach the
            // component through its Service, and the discovering components find pods in the
            // EndpointSlices. So no headless Service is made (issue 28 L9).
            service_name: name,
            selector: LabelSelector {
                match_labels: Some(labels::selector(&owner.name, component)),
                match_expressions: None,
            },
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    // Replace one pod at a time, each stopped before its successor starts.
                    max_unavailable: None,
                    partition: Some(0),
                }),
            }),
            min_ready_seconds: (spec.rollout.min_ready_seconds > 0)
                .then_some(spec.rollout.min_ready_seconds),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(retention),
                    // Scaling to 0 and back keeps the data.
                    when_scaled: Some("Retain".to_owned()),
                },
            ),
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(DATA_VOLUME.to_owned()),
                    // The claims carry the app's labels, so the operator's watch sees them.
                    labels,
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                    storage_class_name: storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_owned(),
                            storage.size.clone(),
                        )])),
                        limits: None,
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                status: None,
            }]),
            template: pod::template(app, owner, component, "controller-revision-hash"),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

/// Name of the claim the StatefulSet creates for pod `ordinal` of a component.
pub fn claim_name(app: &str, component: Component, ordinal: i32) -> String {
    format!(
        "{DATA_VOLUME}-{}-{ordinal}",
        labels::child_name(app, component)
    )
}
