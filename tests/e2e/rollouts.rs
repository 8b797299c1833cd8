//! Rollouts that do not go to plan (issue 28): a StatefulSet whose new pod never turns Ready,
//! the spec reverted under it.

use std::collections::BTreeSet;

use crate::support::{self, Setup, WAIT};
use msa_e2e::wait_until;

/// The kwok stage that plays a container crashing at start: the pod runs, never Ready
/// (`tests/cluster/kwok.yaml`).
const CRASH_LOOP_IMAGE: &str = "registry.msa.test/crash-loop:1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster: make e2e"]
async fn a_crash_looping_stateful_set_degrades_the_app_and_a_revert_recovers_it()
-> anyhow::Result<()> {
    let s = Setup::new("crashloop").await?;
    let _operator = s.start_operator("crashloop")?;
    let manifest = r#"apiVersion: msa.dev/v1alpha1
kind: MicroserviceApp
metadata: {name: crash}
spec:
  components:
    user:
      rollout: {progressDeadlineSeconds: 10}
"#;
    s.cluster
        .kubectl_with_stdin(&["apply", "-n", &s.ns, "-f", "-"], Some(manifest))
        .ok()?;
    s.wait_ready("crash")?;
    let healthy = s.pod_uids("user").await?;

    // Issue 28 M4: a Deployment reports its own progress deadline, a StatefulSet (every
    // component with the embedded database, the default) none; the app stayed Progressing for
    // ever.
    s.patch_app(
        "crash",
        "merge",
        &format!(r#"{{"spec":{{"components":{{"user":{{"image":"{CRASH_LOOP_IMAGE}"}}}}}}}}"#),
    )?;
    let message = s.wait_degraded("crash", "ProgressDeadlineExceeded").await?;
    s.assert_argocd_health(
        "crash",
        "degraded-progress-deadline",
        "Degraded",
        "ProgressDeadlineExceeded: user: pod crash-user-0 of revision",
    )?;
    for expected in ["user: pod crash-user-0 of revision", "not Ready for 10s"] {
        support::assert_mentions(&message, expected);
    }
    let app = s.apps().get("crash").await?;
    let progressing = support::condition(&app, "Progressing").expect("Progressing is reported");
    assert_eq!(
        (progressing.status.as_str(), progressing.reason.as_str()),
        ("False", "ProgressDeadlineExceeded")
    );

    // Reverted, the StatefulSet would wait for the broken pod to turn Ready (Kubernetes'
    // "forced rollback"); the operator deletes that pod, and the app recovers by itself.
    let broken = s.pod_uids("user").await?;
    assert!(broken.is_disjoint(&healthy), "the broken revision runs");
    s.patch_app(
        "crash",
        "merge",
        r#"{"spec":{"components":{"user":{"image":null}}}}"#,
    )?;
    s.wait_ready("crash")?;
    let apps = s.apps();
    wait_until("Degraded to clear after the revert", WAIT, || async {
        let app = apps.get("crash").await?;
        Ok(support::condition(&app, "Degraded")
            .filter(|c| c.status == "False")
            .map(drop))
    })
    .await?;
    let replaced: BTreeSet<String> = s.pod_uids("user").await?;
    assert!(
        replaced.is_disjoint(&broken),
        "the broken pod was replaced: {replaced:?} vs {broken:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster: make e2e"]
async fn turning_autoscaling_on_keeps_the_running_replica_count() -> anyhow::Result<()> {
    let s = Setup::new("handover").await?;
    let _operator = s.start_operator("handover")?;
    let manifest = r#"apiVersion: msa.dev/v1alpha1
kind: MicroserviceApp
metadata: {name: scaled}
spec:
  components:
    gateway: {replicas: 3}
"#;
    s.cluster
        .kubectl_with_stdin(&["apply", "-n", &s.ns, "-f", "-"], Some(manifest))
        .ok()?;
    s.wait_ready("scaled")?;

    // Issue 28 M7: the operator stops sending spec.replicas once an autoscaler owns it; as the
    // field's last owner dropping it, server-side apply reset it to 1 before any autoscaler
    // (none here) had written it. The env change makes the operator apply the Deployment.
    s.patch_app(
        "scaled",
        "merge",
        r#"{"spec":{"components":{"gateway":{"autoscaled":true,"env":[{"name":"HANDOVER","value":"1"}]}}}}"#,
    )?;
    let deployments = s.deployments();
    let applied = wait_until("the change to reach the Deployment", WAIT, || async {
        let gateway = deployments.get("scaled-gateway").await?;
        let env = gateway
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers[0].env.clone().unwrap_or_default())
            .unwrap_or_default();
        Ok(env.iter().any(|e| e.name == "HANDOVER").then_some(gateway))
    })
    .await?;
    assert_eq!(support::replicas(&applied), 3, "the running count is kept");
    let owners: Vec<String> = applied
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|f| {
            f.fields_v1
                .as_ref()
                .is_some_and(|v| v.0.pointer("/f:spec/f:replicas").is_some())
        })
        .filter_map(|f| f.manager.clone())
        .collect();
    assert_eq!(
        owners,
        ["msa-operator-replicas-handover"],
        "the count is held by the handover manager alone, for the autoscaler to take over"
    );
    s.wait_ready("scaled")?;
    assert_eq!(
        support::replicas(&deployments.get("scaled-gateway").await?),
        3
    );
    Ok(())
}
