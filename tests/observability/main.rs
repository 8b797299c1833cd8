//! Issue 17: the alert rules and the Grafana dashboard the chart ships. `promtool` checks the
//! rules and runs their unit tests (charts/msa-operator/tests/alerts.test.yaml), and every
//! metric the rules and the dashboard query must be one a component exports — taken from the
//! components' own registries with every family given a sample, so a renamed metric fails here
//! instead of silently emptying a panel.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use msa_service_kit::metrics::HttpMetrics;
use msa_upstream::metrics::{
    AttemptLabels, BreakerLabels, EjectionLabels, EndpointLabels, ReasonLabels, StateLabels,
    UpstreamLabel, UpstreamMetrics,
};

fn chart(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../charts/msa-operator")
        .join(path)
}

/// Every family of the upstream metrics with one sample.
fn touch_upstream(metrics: &UpstreamMetrics) {
    let upstream = || "product".to_owned();
    let endpoint = || "198.18.0.9:8080".to_owned();
    metrics
        .attempts
        .get_or_create(&AttemptLabels {
            upstream: upstream(),
            endpoint: endpoint(),
            outcome: "ok",
        })
        .inc();
    metrics
        .attempt_duration
        .get_or_create(&EndpointLabels {
            upstream: upstream(),
            endpoint: endpoint(),
        })
        .observe(0.01);
    metrics
        .endpoints
        .get_or_create(&StateLabels {
            upstream: upstream(),
            state: "ejected",
        })
        .set(1);
    metrics
        .ejections
        .get_or_create(&EjectionLabels {
            upstream: upstream(),
            endpoint: endpoint(),
            reason: "consecutive_failures",
        })
        .inc();
    metrics
        .readmissions
        .get_or_create(&EndpointLabels {
            upstream: upstream(),
            endpoint: endpoint(),
        })
        .inc();
    metrics.set_breaker("product", "GET /products", "open");
    metrics
        .breaker_transitions
        .get_or_create(&BreakerLabels {
            upstream: upstream(),
            route: "GET /products".into(),
            state: "open",
        })
        .inc();
    metrics
        .retries
        .get_or_create(&ReasonLabels {
            upstream: upstream(),
            reason: "connect",
        })
        .inc();
    metrics
        .retries_refused
        .get_or_create(&UpstreamLabel {
            upstream: upstream(),
        })
        .inc();
    metrics
        .refused
        .get_or_create(&ReasonLabels {
            upstream: upstream(),
            reason: "circuit_open",
        })
        .inc();
}

/// The sample names every component can export.
fn exported() -> BTreeSet<String> {
    let mut expositions = Vec::new();
    for component in ["user", "order", "product", "gateway"] {
        let mut metrics = HttpMetrics::for_component(component);
        if component == "order" || component == "gateway" {
            touch_upstream(&UpstreamMetrics::register(&mut metrics.registry));
        }
        if component != "gateway" {
            let events = msa_events::metrics::RelayMetrics::register(&mut metrics.registry);
            events.publish_seconds.observe(0.001);
            events.failed("publish");
        }
        if component == "gateway" {
            msa_gateway::rate_limit::ClientLimiter::new(
                msa_gateway::rate_limit::RateLimitConfig {
                    rate: 1.0,
                    burst: 1,
                    max_clients: 1,
                },
                &mut metrics.registry,
            );
        }
        metrics.start().finish(
            &reqwest::Method::GET,
            "/products",
            500,
            Duration::from_millis(1),
        );
        expositions.push(metrics.encode());
    }
    let operator = msa_operator::metrics::Metrics::default();
    operator.observe_reconcile(Duration::from_millis(1), Some("forbidden"));
    operator.count_write("Deployment");
    operator.count_apps([true, false]);
    expositions.push(operator.render());
    expositions
        .iter()
        .flat_map(|text| text.lines())
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The `msa_*` metric names a PromQL-bearing text mentions.
fn queried(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("msa_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if boundary {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

#[test]
fn rules_and_dashboard_query_only_exported_metrics() {
    let exported = exported();
    let rules = std::fs::read_to_string(chart("files/alerts.yaml")).unwrap();
    let dashboard = std::fs::read_to_string(chart("files/dashboard.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("the dashboard is JSON");
    for (file, text) in [("alerts.yaml", &rules), ("dashboard.json", &dashboard)] {
        let names = queried(text);
        assert!(names.len() >= 5, "{file} queries {names:?}");
        let missing: Vec<&String> = names.iter().filter(|n| !exported.contains(*n)).collect();
        assert!(
            missing.is_empty(),
            "{file} queries metrics no component exports: {missing:?}\nexported: {exported:?}"
        );
    }
    // The check can fail: a misspelt name is caught.
    assert!(!exported.contains("msa_gateway_http_request_total"));
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    for args in [
        vec!["check", "rules", "../files/alerts.yaml"],
        vec!["test", "rules", "alerts.test.yaml"],
    ] {
        let output = Command::new("promtool")
            .args(&args)
            .current_dir(chart("tests"))
            .output()
            .expect("promtool (Debian's prometheus package; make unit installs it)");
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
