//! Tracing settings for the components: the standard OpenTelemetry variables, so each pod's
//! spans go to the app's OTLP receiver under its own service name, sampled parent-based.

use kube::ResourceExt;

use crate::component::Component;
use crate::crd::MicroserviceApp;
use crate::labels;

/// The `OTEL_*` variables of `component` (none when `spec.tracing` is absent). The pod name in
/// the resource attributes is expanded by the kubelet from `MSA_POD_NAME`, set before these.
pub fn env(app: &MicroserviceApp, component: Component) -> Vec<(&'static str, String)> {
    let Some(tracing) = &app.spec.tracing else {
        return Vec::new();
    };
    let namespace = app.namespace().unwrap_or_default();
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", tracing.endpoint.clone()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
        (
            "OTEL_SERVICE_NAME",
            labels::child_name(&app.name_any(), component),
        ),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()),
        (
            "OTEL_TRACES_SAMPLER_ARG",
            tracing.sampling_ratio.to_string(),
        ),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            format!(
                "service.namespace={namespace},k8s.namespace.name={namespace},k8s.pod.name=$(MSA_POD_NAME),service.instance.id=$(MSA_POD_NAME)"
            ),
        ),
    ]
}

/// What a component would refuse at start in these settings (an endpoint it cannot export
/// to), checked with the components' own rules before anything is rendered.
pub fn problem(app: &MicroserviceApp) -> Option<String> {
    let env = env(app, Component::Gateway);
    if env.is_empty() {
        return None;
    }
    msa_telemetry::settings(|name| {
        env.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
    })
    .err()
    .map(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::TracingSpec;

    fn app(tracing: Option<TracingSpec>) -> MicroserviceApp {
        // Every field of the spec has a default.
        let spec = serde_json::from_value(serde_json::json!({})).expect("an empty spec");
        let mut app = MicroserviceApp::new("shop", spec);
        app.metadata.namespace = Some("demo".into());
        app.spec.tracing = tracing;
        app
    }

    #[test]
    fn without_a_tracing_section_no_component_traces() {
        assert!(env(&app(None), Component::Order).is_empty());
        assert_eq!(problem(&app(None)), None);
    }

    #[test]
    fn each_component_exports_under_its_own_name_with_the_ratio() {
        let app = app(Some(TracingSpec {
            endpoint: "http://otel-collector.monitoring:4318".into(),
            sampling_ratio: 0.25,
        }));
        let env: std::collections::BTreeMap<_, _> =
            env(&app, Component::Order).into_iter().collect();
        assert_eq!(
            env["OTEL_EXPORTER_OTLP_ENDPOINT"],
            "http://otel-collector.monitoring:4318"
        );
        assert_eq!(env["OTEL_SERVICE_NAME"], "shop-order");
        assert_eq!(env["OTEL_TRACES_SAMPLER"], "parentbased_traceidratio");
        assert_eq!(env["OTEL_TRACES_SAMPLER_ARG"], "0.25");
        assert!(env["OTEL_RESOURCE_ATTRIBUTES"].contains("k8s.namespace.name=demo"));
        assert_eq!(problem(&app), None);
    }

    #[test]
    fn an_endpoint_the_components_would_refuse_is_a_spec_problem() {
        for endpoint in ["https://collector:4318", "collector:4318"] {
            let app = app(Some(TracingSpec {
                endpoint: endpoint.into(),
                sampling_ratio: 1.0,
            }));
            assert!(problem(&app).is_some(), "{endpoint}");
        }
        let app = app(Some(TracingSpec {
            endpoint: "http://collector:4318".into(),
            sampling_ratio: 2.0,
        }));
        assert!(problem(&app).unwrap().contains("from 0 to 1"));
    }
}
