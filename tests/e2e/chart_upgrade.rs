//! `helm upgrade` from the previous chart version (issue 32, part 4): the CRD stays as it is
//! (Helm never touches a chart's `crds/` after the first install), and the apps keep running —
//! same objects, same children, Ready throughout the upgrade of the operator's release.
//!
//! The previous version is `tests/fixtures/msa-operator-0.1.0.tgz`, `helm package` of
//! `charts/msa-operator` as it was at version 0.1.0 (commit d1ac0b5), as a user would have it
//! from a chart repository.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::support::{self, Setup};

const PREVIOUS_CHART: &str = "tests/fixtures/msa-operator-0.1.0.tgz";
const CRD: &str = "microserviceapps.msa.dev";

/// The app's children by kind and name → uid (a recreated child has a new uid).
async fn children(s: &Setup) -> anyhow::Result<BTreeMap<String, String>> {
    let by_app = ListParams::default().labels("app.kubernetes.io/instance=kept");
    let mut found = BTreeMap::new();
    for set in s.stateful_sets().list(&by_app).await? {
        found.insert(
            format!("StatefulSet/{}", set.name_any()),
            set.uid().unwrap_or_default(),
        );
    }
    for deployment in s.deployments().list(&by_app).await? {
        found.insert(
            format!("Deployment/{}", deployment.name_any()),
            deployment.uid().unwrap_or_default(),
        );
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster: make e2e"]
async fn helm_upgrade_from_the_previous_chart_keeps_the_crd_and_the_apps() -> anyhow::Result<()> {
    let s = Setup::new("upgrade").await?;
    // The CRD must not change under this test for another reason.
    let _crd_unchanged = support::changing_the_crd().await;
    let crds: Api<CustomResourceDefinition> = Api::all(s.admin.clone());
    let crd_before = crds.get(CRD).await?;

    // The previous chart, installed as a user of 0.1.0 did: a release of its own in this
    // namespace, watching only it (nothing cluster-wide, so the shared release is untouched).
    let release = |verb: &str, chart: &std::path::Path| {
        let watched = format!("watchNamespaces={{{}}}", s.ns);
        s.cluster
            .helm(&[
                verb,
                "msa-operator",
                chart.to_str().expect("utf-8 path"),
                "--namespace",
                &s.ns,
                "--wait",
                "--timeout",
                "2m",
                "--set",
                &watched,
                "--set",
                "manageCrd=false",
            ])
            .ok()
    };
    release("install", &s.cluster.repo_path(PREVIOUS_CHART))?;

    let _operator = s.start_operator("upgrade")?;
    s.apply_manifest(
        "apiVersion: msa.dev/v1alpha1\nkind: MicroserviceApp\nmetadata: {name: kept}\nspec: {events: {enabled: false}}\n",
    )?;
    s.wait_ready("kept")?;
    let app_before = s.apps().get("kept").await?;
    let children_before = children(&s).await?;
    assert_eq!(children_before.len(), 4, "{children_before:?}");

    let chart = s.cluster.repo_path("charts/msa-operator");
    release("upgrade", &chart)?;

    let history = s
        .cluster
        .helm(&[
            "history",
            "msa-operator",
            "--namespace",
            &s.ns,
            "-o",
            "json",
        ])
        .ok()?;
    let history: Vec<serde_json::Value> = serde_json::from_str(&history)?;
    let charts: Vec<(&str, &str)> = history
        .iter()
        .map(|r| {
            (
                r["chart"].as_str().unwrap_or_default(),
                r["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let current = format!(
        "msa-operator-{}",
        std::fs::read_to_string(chart.join("Chart.yaml"))?
            .lines()
            .find_map(|l| l.strip_prefix("version: "))
            .unwrap_or_default()
    );
    assert_eq!(
        charts,
        [
            ("msa-operator-0.1.0", "superseded"),
            (current.as_str(), "deployed")
        ]
    );

    let crd_after = crds.get(CRD).await?;
    assert_eq!(
        (crd_after.uid(), crd_after.metadata.generation),
        (crd_before.uid(), crd_before.metadata.generation),
        "helm upgrade left the CRD as it was"
    );
    let app_after = s.apps().get("kept").await?;
    assert_eq!(
        app_after.uid(),
        app_before.uid(),
        "the app is the same object"
    );
    assert_eq!(
        support::condition(&app_after, "Ready").map(|c| c.status),
        Some("True".to_owned()),
        "the app is Ready after the upgrade"
    );
    assert_eq!(
        children(&s).await?,
        children_before,
        "no child was recreated"
    );
    Ok(())
}
