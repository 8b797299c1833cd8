//! The identity of the components that discover peers: ServiceAccounts (the gateway's, and the
//! order and product services' own, see [`super::identity`]) whose Role allows reading
//! EndpointSlices in the app's namespace, and nothing else.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};

use super::Owner;
use crate::component::Component;
use crate::labels;

pub(super) fn service_account(owner: &Owner) -> ServiceAccount {
    ServiceAccount {
        metadata: metadata(owner),
        ..ServiceAccount::default()
    }
}

/// The ServiceAccounts of the components with an identity of their own, in
/// [`Component::ALL`] order.
pub(super) fn own_service_accounts(owner: &Owner) -> Vec<ServiceAccount> {
    own_accounts()
        .map(|component| {
            let mut labels = labels::app_labels(&owner.name);
            labels.insert(labels::COMPONENT.to_owned(), component.name().to_owned());
            ServiceAccount {
                metadata: owner
                    .metadata(super::identity::own_account(&owner.name, component), labels),
                ..ServiceAccount::default()
            }
        })
        .collect()
}

fn own_accounts() -> impl Iterator<Item = Component> {
    Component::ALL
        .into_iter()
        .filter(|c| super::identity::has_own_account(*c))
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
            std::iter::once(name)
                .chain(own_accounts().map(|c| super::identity::own_account(&owner.name, c)))
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
