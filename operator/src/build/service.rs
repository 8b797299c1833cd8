//! A component's Service.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Owner;
use super::container::PORT_NAME;
use crate::component::Component;
use crate::crd::{MicroserviceApp, ServiceType};
use crate::labels;

/// Port of the user, order and product Services (the gateway's is configurable).
pub const INTERNAL_SERVICE_PORT: i32 = 80;

pub(super) fn service(app: &MicroserviceApp, owner: &Owner, component: Component) -> Service {
    let mut metadata = owner.component_metadata(app, component);

    let (type_, port, node_port) = if component == Component::Gateway {
        let exposure = &app.spec.components.gateway.service;
        if !exposure.annotations.is_empty() {
            metadata.annotations = Some(exposure.annotations.clone());
        }
        let node_port = exposure
            .node_port
            .filter(|_| exposure.type_ != ServiceType::ClusterIP);
        (exposure.type_, exposure.port, node_port)
    } else {
        (ServiceType::ClusterIP, INTERNAL_SERVICE_PORT, None)
    };

    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(type_.as_str().to_owned()),
            selector: Some(labels::selector(&owner.name, component)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_owned()),
                port,
                target_port: Some(IntOrString::String(PORT_NAME.to_owned())),
                protocol: Some("TCP".to_owned()),
                app_protocol: Some("http".to_owned()),
                node_port,
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
