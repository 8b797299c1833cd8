//! The identity of the components that discover peers: ServiceAccounts (the gateway's, and the
//! order service's own, see [`super::identity`]) whose Role allows reading EndpointSlices in
//! the app's namespace, and nothing else.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::Owner;
use crate::labels;

pub(super) fn service_account(owner: &Owner) -> ServiceAccount {
    ServiceAccount {
        metadata: metadata(owner),
        ..ServiceAccount::default()
    }
}

pub(super) fn order_service_account(owner: &Owner) -> ServiceAccount {
    let mut labels = labels::app_labels(&owner.name);
    labels.insert(labels::COMPONENT.to_owned(), "order".to_owned());
    ServiceAccount {
        metadata: owner.metadata(super::identity::order_account(&owner.name), labels),
        ..ServiceAccount::default()
    }
}

pub(super) fn role(owner: &Owner) -> Role {
    Role {
        metadata: metadata(owner),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["discovery.k8s.io".to_owned()]),
            resources: Some(vec!["endpointslices".to_owned()]),
            verbs: ["get", "list", "watch"].map(str::to_owned).to_vec(),
            ..PolicyRule::default()
        }]),
    }
}

pub(super) fn role_binding(owner: &Owner) -> RoleBinding {
    let name = labels::discovery_name(&owner.name);
    RoleBinding {
        metadata: metadata(owner),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "Role".to_owned(),
            name: name.clone(),
        },
        subjects: Some(
            [name, super::identity::order_account(&owner.name)]
                .into_iter()
                .map(|name| Subject {
                    kind: "ServiceAccount".to_owned(),
                    name,
                    namespace: Some(owner.namespace.clone()),
                    api_group: None,
                })
                .collect(),
        ),
    }
}

fn metadata(owner: &Owner) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    let mut labels = labels::app_labels(&owner.name);
    labels.insert(labels::COMPONENT.to_owned(), "discovery".to_owned());
    owner.metadata(labels::discovery_name(&owner.name), labels)
}
