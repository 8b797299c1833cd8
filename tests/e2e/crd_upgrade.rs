//! The operator keeps its CRD current, since Helm never upgrades a chart's CRDs (issue 28 M3).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use msa_e2e::wait_until;
use msa_operator::crd_upgrade::VERSION_ANNOTATION;
use serde_json::json;

use crate::support::{Setup, WAIT};

const CRD: &str = "microserviceapps.msa.dev";

/// The description of `spec` in the CRD's schema, where the test marks a CRD as someone else's.
fn spec_description(crd: &CustomResourceDefinition) -> Option<String> {
    crd.spec.versions[0]
        .schema
        .as_ref()?
        .open_api_v3_schema
        .as_ref()?
        .properties
        .as_ref()?
        .get("spec")?
        .description
        .clone()
}

/// Marks the live CRD as written by operator `version`, with a `spec` description of its own.
async fn mark(
    crds: &Api<CustomResourceDefinition>,
    version: &str,
    description: &str,
) -> anyhow::Result<()> {
    let patch = json!([
        {"op": "add", "path": format!("/metadata/annotations/{}", VERSION_ANNOTATION.replace('/', "~1")), "value": version},
        {"op": "add", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/spec/description", "value": description},
    ]);
    crds.patch(
        CRD,
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(patch)?),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster: make e2e"]
async fn the_operator_upgrades_an_older_crd_and_leaves_a_newer_one() -> anyhow::Result<()> {
    let s = Setup::new("crdup").await?;
    let crds: Api<CustomResourceDefinition> = Api::all(s.admin.clone());
    let ours = msa_operator::crd::definition();
    let our_version = ours.annotations()[VERSION_ANNOTATION].clone();
    // No other test changes the CRD meanwhile (dropped last, after the restore).
    let _exclusive = crate::support::changing_the_crd().await;
    // Put back what the other tests run on, whatever happens here.
    let _restore = RestoreCrd(s.cluster.clone());
    // The description is how the test tells the CRDs apart; no field changes, so the apps of the
    // tests running beside this one are not touched.
    mark(&crds, "0.0.1", "left by an older operator").await?;

    // An older CRD, as `helm upgrade` leaves it: the leader applies its own before reconciling.
    let operator = s.start_operator_with_env("older", &[("MSA_MANAGE_CRD", "true")])?;
    let upgraded = wait_until("the CRD to be the operator's own", WAIT, || async {
        let live = crds.get(CRD).await?;
        let current = live.annotations().get(VERSION_ANNOTATION) == Some(&our_version)
            && spec_description(&live) == spec_description(&ours);
        Ok(current.then_some(live))
    })
    .await?;
    assert!(
        upgraded
            .managed_fields()
            .iter()
            .any(|f| f.manager.as_deref() == Some("msa-operator")),
        "applied by the operator's field manager"
    );
    drop(operator);

    // A newer operator's CRD is left alone: an app reconciled means the check is behind it.
    mark(&crds, "99.0.0", "written by a newer operator").await?;
    let _operator = s.start_operator_with_env("newer", &[("MSA_MANAGE_CRD", "true")])?;
    s.cluster
        .kubectl_with_stdin(
            &["apply", "-n", &s.ns, "-f", "-"],
            Some("apiVersion: msa.dev/v1alpha1\nkind: MicroserviceApp\nmetadata: {name: shop}\nspec: {}\n"),
        )
        .ok()?;
    s.wait_ready("shop")?;
    let live = crds.get(CRD).await?;
    assert_eq!(live.annotations()[VERSION_ANNOTATION], "99.0.0");
    assert_eq!(
        spec_description(&live).as_deref(),
        Some("written by a newer operator")
    );
    Ok(())
}

/// Applies `crds/` again when dropped.
struct RestoreCrd(msa_e2e::Cluster);

impl Drop for RestoreCrd {
    fn drop(&mut self) {
        let file = self.0.repo_path("crds/microserviceapps.msa.dev.yaml");
        let _ = self.0.kubectl(&[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            file.to_str().unwrap_or_default(),
        ]);
    }
}
