//! The pod template every workload kind shares: containers, identity, security context,
//! volumes, shutdown timing and a soft spread across nodes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec,
    ProjectedVolumeSource, SecretProjection, TopologySpreadConstraint, Volume, VolumeProjection,
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

/// Name of the volume holding an embedded database (a claim template of the StatefulSet).
pub const DATA_VOLUME: &str = "data";

/// Whether the component keeps its data in an embedded SQLite file on a PersistentVolume.
pub fn has_embedded_database(app: &MicroserviceApp, component: Component) -> bool {
    component.is_stateful() && app.spec.database.is_none()
}

/// The pod template; `revision_label` is the label the workload's controller stamps on each
/// revision's pods (`pod-template-hash` or `controller-revision-hash`), so the spread is
/// computed among the pods of one revision.
pub(super) fn template(
    app: &MicroserviceApp,
    owner: &Owner,
    component: Component,
    revision_label: &str,
) -> PodTemplateSpec {
    let spec = component.spec(app);
    let labels = labels::component_labels(&owner.name, component, &spec.labels);
    let pod_spec = pod_spec(app, owner, component, revision_label);
    let mut annotations: BTreeMap<String, String> = spec.annotations.clone();
    // Any change to the rendered pod spec rolls the pods; the hash also lets a person compare
    // what two pods run at a glance. So does an edit in a ConfigMap or Secret the pods read
    // through `configFrom` (its own annotation: see the label's documentation).
    annotations.insert(
        labels::CONFIG_HASH_ANNOTATION.to_owned(),
        short_hash(&pod_spec),
    );
    if let Some(sources) = super::config::sources_hash(app, owner, component) {
        annotations.insert(labels::CONFIG_SOURCES_ANNOTATION.to_owned(), sources);
    }
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(pod_spec),
    }
}

fn pod_spec(
    app: &MicroserviceApp,
    owner: &Owner,
    component: Component,
    revision_label: &str,
) -> PodSpec {
    let discovers = component.needs_discovery();
    PodSpec {
        containers: vec![container(app, owner, component)],
        // Only components that watch EndpointSlices get an API token, and only for their own
        // ServiceAccount, whose Role allows exactly that.
        service_account_name: if super::identity::has_own_account(component) {
            Some(super::identity::own_account(&owner.name, component))
        } else {
            discovers.then(|| labels::discovery_name(&owner.name))
        },
        automount_service_account_token: Some(discovers),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(
            component
                .spec(app)
                .shutdown
                .termination_grace_period_seconds(),
        ),
        image_pull_secrets: (!app.spec.image_pull_secrets.is_empty())
            .then(|| app.spec.image_pull_secrets.clone()),
        security_context: Some(pod_security_context()),
        // The embedded database's volume comes from the StatefulSet's claim template.
        volumes: Some(
            std::iter::once(empty_dir("tmp"))
                .chain(auth_keys(app))
                .chain(super::identity::volumes(owner, component))
                .chain(super::broker::service_volume(app, owner, component))
                .collect(),
        ),
        topology_spread_constraints: Some(vec![spread_across_nodes(
            &owner.name,
            component,
            revision_label,
        )]),
        ..PodSpec::default()
    }
}

/// Every pod the operator renders runs as [`RUN_AS`], non-root, with the runtime's default
/// seccomp profile.
pub(super) fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        // Volumes that support it (block-backed, emptyDir) are made writable for the group.
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..PodSecurityContext::default()
    }
}

/// A soft preference (never blocks scheduling) to put a component's pods on different nodes,
/// so losing one node does not take every replica.
fn spread_across_nodes(
    app: &str,
    component: Component,
    revision_label: &str,
) -> TopologySpreadConstraint {
    TopologySpreadConstraint {
        max_skew: 1,
        topology_key: "kubernetes.io/hostname".to_owned(),
        when_unsatisfiable: "ScheduleAnyway".to_owned(),
        label_selector: Some(LabelSelector {
            match_labels: Some(labels::selector(app, component)),
            match_expressions: None,
        }),
        match_label_keys: Some(vec![revision_label.to_owned()]),
        ..TopologySpreadConstraint::default()
    }
}

/// The Secrets holding the keys that verify users' tokens, projected into one read-only folder
/// (every component verifies them).
pub(super) fn auth_keys(app: &MicroserviceApp) -> Option<Volume> {
    let auth = app.spec.components.gateway.auth.as_ref()?;
    let project = |selector: &crate::crd::SecretKeySelectorSpec, path: &str| VolumeProjection {
        secret: Some(SecretProjection {
            name: selector.name.clone(),
            items: Some(vec![KeyToPath {
                key: selector.key.clone(),
                path: path.to_owned(),
                mode: None,
            }]),
            optional: Some(false),
        }),
        ..VolumeProjection::default()
    };
    let sources: Vec<VolumeProjection> = auth
        .jwks
        .iter()
        .map(|s| project(s, super::container::JWKS_FILE))
        .chain(
            auth.hmac_secret
                .iter()
                .map(|s| project(s, super::container::HMAC_FILE)),
        )
        .collect();
    if sources.is_empty() {
        // Keys from the issuer's URL only: nothing to mount.
        return None;
    }
    Some(Volume {
        name: super::container::AUTH_VOLUME.to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            default_mode: Some(0o440),
        }),
        ..Volume::default()
    })
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}
