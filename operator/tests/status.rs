//! Status computation: conditions per the API conventions, driven by a fake clock.

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use msa_operator::component::Component;
use msa_operator::crd::MicroserviceApp;
use msa_operator::status::{self, Blocker, Observed, WorkloadState};
use msa_operator::validate::SpecProblem;
use serde_json::json;
use support::{app, fixed_time};

fn deployment(
    component: Component,
    desired: i32,
    ready: i32,
    updated: i32,
    conditions: serde_json::Value,
) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": format!("shop-{component}"), "namespace": "demo", "generation": 2},
        "spec": {"replicas": desired, "selector": {}, "template": {}},
        "status": {"observedGeneration": 2, "replicas": desired, "readyReplicas": ready, "updatedReplicas": updated, "conditions": conditions}
    }))
    .unwrap()
}

fn all(desired: i32, ready: i32) -> Vec<Deployment> {
    Component::ALL
        .into_iter()
        .map(|c| deployment(c, desired, ready, desired, json!([])))
        .collect()
}

fn observe(deployments: &[Deployment]) -> Observed {
    Observed {
        workloads: Component::ALL
            .into_iter()
            .zip(deployments.iter().map(WorkloadState::from))
            .collect(),
        ..Observed::default()
    }
}

fn condition<'a>(conditions: &'a [Condition], type_: &str) -> &'a Condition {
    conditions.iter().find(|c| c.type_ == type_).unwrap()
}

/// A condition's status and reason.
fn state<'a>(conditions: &'a [Condition], type_: &str) -> (&'a str, &'a str) {
    let c = condition(conditions, type_);
    (c.status.as_str(), c.reason.as_str())
}

/// The spec problem of an env var listed twice.
fn env_listed_twice() -> SpecProblem {
    SpecProblem {
        field: "spec.components.user.env[1].name".into(),
        message: "A is listed twice; keep one entry".into(),
    }
}

fn with_status(
    mut app: MicroserviceApp,
    status: msa_operator::crd::MicroserviceAppStatus,
) -> MicroserviceApp {
    app.status = Some(status);
    app
}

#[test]
fn a_fresh_app_is_progressing_and_not_ready() {
    let status = status::compute(&app(json!({})), &Observed::default(), &fixed_time(0));
    assert_eq!(status.observed_generation, Some(1));
    let ready = condition(&status.conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "ComponentsNotReady")
    );
    assert!(
        ready.message.contains("user: StatefulSet not created yet"),
        "{}",
        ready.message
    );
    assert_eq!(ready.observed_generation, Some(1));
    assert_eq!(condition(&status.conditions, "Progressing").status, "True");
    assert_eq!(condition(&status.conditions, "Degraded").status, "False");
    assert_eq!(status.gateway.unwrap().url, "http://shop-gateway.demo.svc");
    assert_eq!(status.components.len(), 4);
}

#[test]
fn all_ready_sets_ready_and_counts_per_component() {
    let deployments = all(1, 1);
    let mut observed = observe(&deployments);
    observed.endpoints.insert(Component::Gateway, 1);
    let status = status::compute(&app(json!({})), &observed, &fixed_time(0));
    let ready = condition(&status.conditions, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "AllComponentsReady")
    );
    let progressing = condition(&status.conditions, "Progressing");
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("False", "RolloutComplete")
    );
    let gateway = &status.components["gateway"];
    assert_eq!(
        (
            gateway.desired_replicas,
            gateway.ready_replicas,
            gateway.updated_replicas,
            gateway.endpoints
        ),
        (1, 1, 1, 1)
    );
}

#[test]
fn transition_time_moves_only_when_status_flips() {
    let not_ready = all(2, 1);
    let first = status::compute(&app(json!({})), &observe(&not_ready), &fixed_time(0));
    // Same status later, with a different message: the transition time stays.
    let partly = vec![
        deployment(Component::User, 2, 2, 2, json!([])),
        deployment(Component::Order, 2, 0, 2, json!([])),
        deployment(Component::Product, 2, 2, 2, json!([])),
        deployment(Component::Gateway, 2, 2, 2, json!([])),
    ];
    let second = status::compute(
        &with_status(app(json!({})), first.clone()),
        &observe(&partly),
        &fixed_time(60),
    );
    let ready = condition(&second.conditions, "Ready");
    assert_eq!(ready.last_transition_time, fixed_time(0));
    assert!(
        ready.message.contains("order: 0/2 ready"),
        "{}",
        ready.message
    );
    // Now it flips.
    let ready_all = all(2, 2);
    let third = status::compute(
        &with_status(app(json!({})), second.clone()),
        &observe(&ready_all),
        &fixed_time(120),
    );
    assert_eq!(
        condition(&third.conditions, "Ready").last_transition_time,
        fixed_time(120)
    );
    assert_eq!(
        condition(&third.conditions, "Degraded").last_transition_time,
        fixed_time(0)
    );
}

#[test]
fn a_deployment_past_its_progress_deadline_degrades_the_app_naming_the_component() {
    let mut deployments = all(1, 1);
    deployments[3] = deployment(
        Component::Gateway,
        2,
        1,
        1,
        json!([{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                 "message": "ReplicaSet \"shop-gateway-5d9\" has timed out progressing."}]),
    );
    let status = status::compute(&app(json!({})), &observe(&deployments), &fixed_time(0));
    let degraded = condition(&status.conditions, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ProgressDeadlineExceeded")
    );
    assert!(
        degraded.message.starts_with("gateway: ReplicaSet"),
        "{}",
        degraded.message
    );
    assert_eq!(condition(&status.conditions, "Progressing").status, "False");
    assert_eq!(condition(&status.conditions, "Ready").status, "False");
}

#[test]
fn replica_failures_degrade_the_app() {
    let mut deployments = all(1, 0);
    deployments[0] = deployment(
        Component::User,
        1,
        0,
        0,
        json!([{"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": "exceeded quota: compute"}]),
    );
    let status = status::compute(&app(json!({})), &observe(&deployments), &fixed_time(0));
    let degraded = condition(&status.conditions, "Degraded");
    assert_eq!(degraded.reason, "ReplicaFailure");
    assert_eq!(
        degraded.message,
        "user: FailedCreate: exceeded quota: compute"
    );
}

#[test]
fn a_stale_deployment_status_is_not_trusted() {
    let mut deployments = all(1, 1);
    deployments[1].metadata.generation = Some(3); // spec changed, controller has not caught up
    let status = status::compute(&app(json!({})), &observe(&deployments), &fixed_time(0));
    assert_eq!(condition(&status.conditions, "Ready").status, "False");
    assert_eq!(condition(&status.conditions, "Progressing").status, "True");
}

/// Issue 28 M6: a blocker stops the operator, not the app. With every component running and
/// ready, an invalid spec leaves Ready True and the measured counts, and says why nothing moves
/// in Degraded and Progressing (before, the counts were zeroed and Ready turned False, firing the
/// not-ready alert for a serving app).
#[test]
fn a_blocked_app_that_still_serves_stays_ready_with_its_counts() {
    let mut observed = observe(&all(2, 2));
    observed.endpoints.insert(Component::Gateway, 2);
    observed.blocker = Some(Blocker::InvalidSpec(vec![env_listed_twice()]));
    // Generation 1 ran; generation 2 is the refused one.
    let mut blocked = app(json!({}));
    blocked.metadata.generation = Some(2);
    blocked.status = Some(msa_operator::crd::MicroserviceAppStatus {
        observed_generation: Some(1),
        ..Default::default()
    });
    let status = status::compute(&blocked, &observed, &fixed_time(0));
    assert_eq!(
        state(&status.conditions, "Ready"),
        ("True", "AllComponentsReady")
    );
    // Ready and observedGeneration stay at what was applied, so kstatus does not take the
    // refused generation for done; Degraded speaks of the current one.
    assert_eq!(
        condition(&status.conditions, "Ready").observed_generation,
        Some(1)
    );
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        condition(&status.conditions, "Degraded").observed_generation,
        Some(2)
    );
    let gateway = &status.components["gateway"];
    assert_eq!((gateway.ready_replicas, gateway.endpoints), (2, 2));
    assert_eq!(
        state(&status.conditions, "Progressing"),
        ("False", "InvalidSpec")
    );
    assert_eq!(
        state(&status.conditions, "Degraded"),
        ("True", "InvalidSpec")
    );
}

#[test]
fn blockers_are_reported_as_degraded_with_the_reason() {
    let observed = Observed {
        blocker: Some(Blocker::InvalidSpec(vec![env_listed_twice()])),
        ..Observed::default()
    };
    let status = status::compute(&app(json!({})), &observed, &fixed_time(0));
    let degraded = condition(&status.conditions, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert_eq!(
        degraded.message,
        "the spec cannot be applied: spec.components.user.env[1].name: A is listed twice; keep one entry"
    );
    assert_eq!(
        condition(&status.conditions, "Progressing").reason,
        "InvalidSpec"
    );
    assert_eq!(
        state(&status.conditions, "Ready"),
        ("False", "ComponentsNotReady"),
        "nothing runs yet"
    );

    let observed = Observed {
        blocker: Some(Blocker::ApplyFailed(vec![(
            "Deployment/shop-user".into(),
            "spec.template: Invalid value".into(),
        )])),
        ..Observed::default()
    };
    let status = status::compute(&app(json!({})), &observed, &fixed_time(0));
    assert_eq!(
        condition(&status.conditions, "Degraded").message,
        "could not apply Deployment/shop-user (spec.template: Invalid value)"
    );
}

#[test]
fn endpoints_merge_slices_dedupe_and_respect_readiness() {
    let slice = |name: &str, endpoints: serde_json::Value| -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name}, "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}], "endpoints": endpoints
        }))
        .unwrap()
    };
    let a = slice(
        "a",
        json!([
            {"addresses": ["198.18.0.1"]},                                   // ready absent = ready
            {"addresses": ["198.18.0.2"], "conditions": {"ready": true}},
            {"addresses": ["198.18.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
        ]),
    );
    let b = slice(
        "b",
        json!([
            {"addresses": ["198.18.0.2"], "conditions": {"ready": true}},   // duplicate across slices
            {"addresses": ["198.18.0.4"]},
        ]),
    );
    assert_eq!(status::ready_endpoints([&a, &b]), 3);
    assert_eq!(status::ready_endpoints([]), 0);
}

#[test]
fn a_stuck_claim_degrades_the_app_with_a_message_that_says_what_to_do() {
    let deployments = all(1, 0);
    let mut observed = observe(&deployments);
    observed.storage_problem = Some("claim data-shop-user-0 has been Pending for 31 s".to_owned());
    let status = status::compute(&app(json!({})), &observed, &fixed_time(0));
    let degraded = condition(&status.conditions, "Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "StorageUnavailable")
    );
    assert!(
        degraded.message.contains("data-shop-user-0"),
        "{}",
        degraded.message
    );
}

mod claims {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    use msa_operator::component::Component;
    use msa_operator::storage::{self, PATIENCE};
    use serde_json::json;

    use super::support::{app, fixed_time, pg_app};

    fn stateful_set(component: Component, created_at: i64) -> StatefulSet {
        serde_json::from_value(json!({
            "metadata": {"name": format!("shop-{component}"), "namespace": "demo",
                         "creationTimestamp": fixed_time(created_at)},
            "spec": {"replicas": 1, "selector": {}, "serviceName": "", "template": {}}
        }))
        .unwrap()
    }

    fn claim(component: Component, created_at: i64, phase: &str) -> PersistentVolumeClaim {
        serde_json::from_value(json!({
            "metadata": {"name": format!("data-shop-{component}-0"), "namespace": "demo",
                         "creationTimestamp": fixed_time(created_at)},
            "spec": {"storageClassName": "missing"},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    const STATEFUL: [Component; 3] = [Component::User, Component::Order, Component::Product];

    fn check(
        app: &msa_operator::crd::MicroserviceApp,
        sets: &[StatefulSet],
        claims: &[PersistentVolumeClaim],
        now: i64,
    ) -> storage::Findings {
        let sets: BTreeMap<Component, &StatefulSet> = STATEFUL.into_iter().zip(sets).collect();
        let claims = claims
            .iter()
            .map(|c| (c.metadata.name.clone().unwrap(), c))
            .collect();
        storage::check(app, &sets, &claims, &fixed_time(now))
    }

    #[test]
    fn bound_claims_are_fine_and_pending_ones_are_rechecked_when_patience_ends() {
        let sets: Vec<_> = STATEFUL.iter().map(|c| stateful_set(*c, 0)).collect();
        let claims = vec![
            claim(Component::User, 0, "Bound"),
            claim(Component::Order, 0, "Bound"),
            claim(Component::Product, 10, "Pending"),
        ];
        let found = check(&app(json!({})), &sets, &claims, 20);
        assert!(found.stuck.is_empty());
        assert_eq!(found.recheck_in, Some(PATIENCE - Duration::from_secs(10)));
    }

    #[test]
    fn a_claim_pending_past_patience_or_never_created_is_stuck() {
        let sets: Vec<_> = STATEFUL.iter().map(|c| stateful_set(*c, 0)).collect();
        let claims = vec![
            claim(Component::User, 0, "Pending"),
            claim(Component::Order, 0, "Bound"),
        ];
        let found = check(&app(json!({})), &sets, &claims, 45);
        assert_eq!(found.recheck_in, None);
        assert_eq!(found.stuck.len(), 2, "{:?}", found.stuck);
        let pending = &found.stuck[0];
        assert_eq!(pending.claim, "data-shop-user-0");
        assert!(pending.exists);
        let described = pending.describe(Some("storageclass \"missing\" not found"));
        assert_eq!(
            described,
            "claim data-shop-user-0 has been Pending for more than 30 s with StorageClass \"missing\" \
             (Kubernetes reports: storageclass \"missing\" not found)"
        );
        let message = storage::message(&[described], &pending.claim, "demo");
        assert!(
            message.contains("spec.storage.storageClassName"),
            "{message}"
        );
        assert!(
            message.contains("kubectl describe pvc data-shop-user-0 -n demo"),
            "{message}"
        );
        // No claim at all (a quota refused it): the StatefulSet's events say why.
        let missing = &found.stuck[1];
        assert_eq!(missing.claim, "data-shop-product-0");
        assert!(!missing.exists);
        assert_eq!(
            missing.explained_by,
            ("StatefulSet", "shop-product".to_owned())
        );
        assert!(
            missing
                .describe(None)
                .contains("was not created within 30 s")
        );
    }

    /// Issue 28, H4: the description is the same whenever it is made, so status does not
    /// change (and is not written) on every reconcile while a claim stays stuck.
    #[test]
    fn a_stuck_claims_description_carries_no_clock() {
        let sets: Vec<_> = STATEFUL.iter().map(|c| stateful_set(*c, 0)).collect();
        let claims = vec![claim(Component::User, 0, "Pending")];
        let at = |now| {
            check(&app(json!({})), &sets, &claims, now)
                .stuck
                .iter()
                .map(|s| s.describe(Some("no storage class")))
                .collect::<Vec<_>>()
        };
        assert_eq!(at(40).len(), 3);
        assert_eq!(at(40), at(41));
        assert_eq!(at(40), at(4000));
    }

    #[test]
    fn an_explanation_is_reused_for_its_time_to_live_only() {
        let read = storage::Explanation {
            reported: None,
            read_at: fixed_time(100),
        };
        assert!(read.is_fresh(&fixed_time(100)));
        let ttl = i64::try_from(storage::EXPLANATION_TTL.as_secs()).unwrap();
        assert!(read.is_fresh(&fixed_time(100 + ttl - 1)));
        assert!(!read.is_fresh(&fixed_time(100 + ttl)));
        // A clock that went backwards does not keep an explanation for ever.
        assert!(!read.is_fresh(&fixed_time(99)));
    }

    #[test]
    fn with_postgresql_or_no_replicas_there_is_no_claim_to_wait_for() {
        let sets: Vec<_> = STATEFUL.iter().map(|c| stateful_set(*c, 0)).collect();
        assert!(check(&pg_app(json!({})), &sets, &[], 100).stuck.is_empty());
        let scaled_down = app(json!({"components": {
            "user": {"replicas": 0}, "order": {"replicas": 0}, "product": {"replicas": 0}
        }}));
        assert!(check(&scaled_down, &sets, &[], 100).stuck.is_empty());
    }
}

/// Issue 17: the operator's `/metrics`, as anything but Prometheus reads it, passes
/// `promtool check metrics` (counters with help, nothing out of place).
#[test]
fn the_operators_metrics_pass_promtool() {
    let metrics = msa_operator::metrics::Metrics::default();
    metrics.observe_reconcile(std::time::Duration::from_millis(3), None);
    metrics.observe_reconcile(std::time::Duration::from_millis(5), Some("forbidden"));
    metrics.count_write("Deployment");
    metrics.leader.set(1);
    let classic = msa_exposition::to_classic(&metrics.render());
    if let Err(said) = msa_exposition::promtool::check_metrics(&classic) {
        panic!("promtool check metrics:\n{said}\n---\n{classic}");
    }
    // The check can fail: the OpenMetrics document read as classic text is what promtool
    // complained about before the endpoints negotiated.
    let said = msa_exposition::promtool::check_metrics(&metrics.render()).unwrap_err();
    assert!(said.contains("no help text"), "{said}");
}

/// `msa_operator_apps{ready}` counts apps by their Ready condition (the MsaAppNotReady alert).
#[test]
fn apps_are_counted_by_readiness() {
    let metrics = msa_operator::metrics::Metrics::default();
    metrics.count_apps([true, false, false]);
    let text = metrics.render();
    assert!(
        text.contains("msa_operator_apps{ready=\"true\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("msa_operator_apps{ready=\"false\"} 2"),
        "{text}"
    );
    let mut app = support::app(serde_json::json!({}));
    assert!(!msa_operator::status::is_ready(&app));
    app.status = Some(
        serde_json::from_value(serde_json::json!({"conditions": [
            {"type": "Ready", "status": "True", "reason": "AllComponentsReady", "message": "",
             "lastTransitionTime": "2026-11-30T10:00:00Z", "observedGeneration": 1}
        ]}))
        .unwrap(),
    );
    assert!(msa_operator::status::is_ready(&app));
}
