//! Who may connect to whom: one NetworkPolicy per component that admits only the components
//! that call it (and the gateway's clients, and a monitoring namespace when configured).
//! Derived from [`Component::upstreams`], so a new call between components cannot be forgotten
//! here.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Owner;
use crate::component::Component;
use crate::crd::MicroserviceApp;
use crate::labels;

/// The components that call `component` (for the gateway: none; its clients are outside).
pub fn callers(component: Component) -> Vec<Component> {
    Component::ALL
        .into_iter()
        .filter(|c| c.upstreams().contains(&component))
        .collect()
}

pub(super) fn policy(app: &MicroserviceApp, owner: &Owner, component: Component) -> NetworkPolicy {
    let settings = &app.spec.network_policy;
    let port = vec![NetworkPolicyPort {
        port: Some(IntOrString::Int(component.spec(app).port)),
        protocol: Some("TCP".to_owned()),
        end_port: None,
    }];
    let pods_of = |caller: Component| NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(labels::selector(&owner.name, caller)),
            match_expressions: None,
        }),
        ..NetworkPolicyPeer::default()
    };
    let from = if component == Component::Gateway {
        // Empty `from` admits every source.
        (!settings.gateway_from.is_empty()).then(|| settings.gateway_from.clone())
    } else {
        Some(callers(component).into_iter().map(pods_of).collect())
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        from,
        ports: Some(port),
    }];
    // Metrics and `/info` are on the admin port; only the monitoring namespace reaches it.
    if let Some(namespace) = &settings.monitoring_namespace {
        ingress.push(from_monitoring(namespace, super::container::ADMIN_PORT));
    }
    NetworkPolicy {
        metadata: owner.component_metadata(app, component),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(labels::selector(&owner.name, component)),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(ingress),
            egress: None,
        }),
    }
}

/// The rule admitting the pods of the monitoring `namespace` to `port` (metrics).
pub(super) fn from_monitoring(namespace: &str, port: i32) -> NetworkPolicyIngressRule {
    NetworkPolicyIngressRule {
        from: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(
                    [(
                        "kubernetes.io/metadata.name".to_owned(),
                        namespace.to_owned(),
                    )]
                    .into(),
                ),
                match_expressions: None,
            }),
            ..NetworkPolicyPeer::default()
        }]),
        ports: Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".to_owned()),
            end_port: None,
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_service_is_called_by_exactly_its_callers() {
        assert_eq!(callers(Component::Gateway), []);
        assert_eq!(
            callers(Component::Order),
            [Component::Product, Component::Gateway]
        );
        assert_eq!(
            callers(Component::User),
            [Component::Order, Component::Gateway]
        );
        assert_eq!(
            callers(Component::Product),
            [Component::Order, Component::Gateway]
        );
    }
}
