//! The chart's optional admission policy (`admissionPolicy.enabled`, review M2) on the real API
//! server: the operator's ServiceAccount may write nothing in the system namespaces, and only
//! objects labelled `app.kubernetes.io/managed-by=msa-operator` elsewhere — while its real
//! reconcile of an app still passes.
//!
//! The policy matches one user name, so this test renders it for an operator under a
//! ServiceAccount of its own (the chart's roles bound to it), and names the policy objects after
//! its namespace (the release name): tests running beside it, all acting as the chart's own
//! ServiceAccount, are not bound by it.

use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use msa_e2e::audit::AuditLog;
use msa_e2e::cluster::{INSTALL_NAMESPACE, client_for};
use msa_e2e::{Cluster, wait_until};
use serde::Deserialize;
use serde_json::json;

use crate::support::{Setup, WAIT, assert_mentions};

const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// How every refusal of the chart's policy starts (after the API server's own prefix).
const POLICY: &str = "msa-operator admission policy: refused";
/// The objects this test writes by hand; the operator's own writes are everything else.
const PROBES: [&str; 5] = ["probe", "mine", "someone-elses", "unlabelled", "config"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster: make e2e"]
async fn the_admission_policy_holds_the_operator_to_its_own_objects() -> anyhow::Result<()> {
    let s = Setup::new("admission").await?;
    let identity = "operator";
    let account = format!("{}-{identity}", s.ns);
    // Dropped last: removed after the operator has stopped.
    let policy = AppliedPolicy::apply(&s.cluster, &s.ns, &account)?;
    let lease = format!("msa-operator-{}", s.ns);
    let candidate = s.start_leader_candidate_as_itself(identity, &lease)?;
    // Once it leads it has read its kubeconfig, which the next call writes again (fresh token).
    wait_until("the operator to lead", WAIT, || async {
        let leading = candidate
            .operator()
            .metric("msa_operator_leader", "")
            .await?;
        Ok((leading == 1.0).then_some(()))
    })
    .await?;
    let as_operator = client_for(
        &s.cluster
            .service_account_kubeconfig(INSTALL_NAMESPACE, &account)?,
    )
    .await?;
    let system = Api::<ConfigMap>::namespaced(as_operator.clone(), "kube-system");
    let here = Api::<ConfigMap>::namespaced(as_operator.clone(), &s.ns);

    // A policy is in effect once the API server's informers have it, a moment after the apply.
    // Probed as dry runs (admission runs for them; nothing is stored). Labelled in kube-system,
    // so that only the namespace rule can refuse it.
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let (in_system, unlabelled) = wait_until("both policies to be in effect", WAIT, || async {
        let in_system = refusal(system.create(&dry_run, &config_map("probe", true)).await)?;
        let unlabelled = refusal(here.create(&dry_run, &config_map("probe", false)).await)?;
        Ok(in_system.zip(unlabelled))
    })
    .await?;
    assert_mentions(
        &in_system,
        "refused CREATE of configmaps probe in namespace kube-system",
    );
    assert_mentions(&in_system, "it is a protected system namespace");
    assert_mentions(
        &unlabelled,
        "the object would not carry the label app.kubernetes.io/managed-by=msa-operator",
    );

    // The API server type-checked every expression against the kinds it matches.
    let policies = Api::<ValidatingAdmissionPolicy>::all(s.admin.clone());
    for name in &policy.policies {
        let warnings = wait_until(&format!("{name} to be type-checked"), WAIT, || async {
            let found = policies.get(name).await?;
            let status = found.status.unwrap_or_default();
            let checked = status.observed_generation.is_some()
                && status.observed_generation == found.metadata.generation;
            Ok(checked.then(|| {
                status
                    .type_checking
                    .and_then(|t| t.expression_warnings)
                    .unwrap_or_default()
            }))
        })
        .await?;
        let warnings: Vec<String> = warnings
            .iter()
            .map(|w| format!("{}: {}", w.field_ref, w.warning))
            .collect();
        assert!(warnings.is_empty(), "{name}:\n{}", warnings.join("\n"));
    }

    // In the watched namespace: an unlabelled object is refused, a labelled one allowed, and
    // the label can be neither dropped nor added to take an object over.
    let message = refused(
        here.create(&PostParams::default(), &config_map("unlabelled", false))
            .await,
        "creating an unlabelled ConfigMap",
    )?;
    assert_mentions(
        &message,
        &format!("refused CREATE of configmaps {}/unlabelled", s.ns),
    );
    here.create(&PostParams::default(), &config_map("mine", true))
        .await?;
    here.patch(
        "mine",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"probe": "2"}})),
    )
    .await?;
    let message = refused(
        here.patch(
            "mine",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {MANAGED_BY: null}}})),
        )
        .await,
        "dropping the label",
    )?;
    assert_mentions(&message, "the object would not carry the label");
    // Of ConfigMaps it labelled, the operator deletes only components' `config` ones.
    let message = refused(
        here.delete("mine", &DeleteParams::default()).await,
        "deleting a ConfigMap that is not a component's config",
    )?;
    assert_mentions(&message, "of ConfigMaps it deletes only components' config");
    let mut config = config_map("config", true);
    config
        .metadata
        .labels
        .get_or_insert_default()
        .insert("msa.dev/component-config".to_owned(), "true".to_owned());
    here.create(&PostParams::default(), &config).await?;
    here.delete("config", &DeleteParams::default()).await?;

    Api::<ConfigMap>::namespaced(s.admin.clone(), &s.ns)
        .create(&PostParams::default(), &config_map("someone-elses", false))
        .await?;
    let message = refused(
        here.patch(
            "someone-elses",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {MANAGED_BY: "msa-operator"}}})),
        )
        .await,
        "taking someone else's ConfigMap over by labelling it",
    )?;
    assert_mentions(
        &message,
        "the stored object does not carry the label app.kubernetes.io/managed-by=msa-operator",
    );

    // A delete is judged on the stored object.
    let deployments = Api::<Deployment>::namespaced(s.admin.clone(), &s.ns);
    deployments
        .create(&PostParams::default(), &unlabelled_deployment()?)
        .await?;
    let message = refused(
        Api::<Deployment>::namespaced(as_operator.clone(), &s.ns)
            .delete("someone-elses", &DeleteParams::default())
            .await,
        "deleting someone else's Deployment",
    )?;
    assert_mentions(
        &message,
        &format!("refused DELETE of deployments {}/someone-elses", s.ns),
    );
    assert!(
        deployments.get_opt("someone-elses").await?.is_some(),
        "the refused delete deleted"
    );

    // The operator's own writes pass: its children, their status, Events, its Lease.
    let audit = AuditLog::new(s.cluster.audit_log.clone());
    let mark = audit.mark()?;
    s.apply_shop()?;
    s.wait_ready("shop")?;
    let user = candidate.user();
    let writes: Vec<_> = audit
        .writes_since(mark)?
        .into_iter()
        .filter(|w| w.username == user)
        .filter(|w| !w.name.as_deref().is_some_and(|n| PROBES.contains(&n)))
        .collect();
    let refused_writes: Vec<String> = writes
        .iter()
        .filter(|w| matches!(w.code, 403 | 422))
        .map(ToString::to_string)
        .collect();
    assert!(
        refused_writes.is_empty(),
        "the policy refused the operator's own writes:\n{}",
        refused_writes.join("\n")
    );
    assert!(
        writes
            .iter()
            .any(|w| w.code < 400 && w.namespace.as_deref() == Some(s.ns.as_str())),
        "the audit log shows no write of the operator in {}",
        s.ns
    );
    drop(candidate);
    drop(policy);
    Ok(())
}

/// The chart's admission policy, rendered (`helm template`, release `release`) for the
/// ServiceAccount `account` of the install namespace and applied; deleted when dropped.
struct AppliedPolicy {
    cluster: Cluster,
    manifest: String,
    /// Names of the ValidatingAdmissionPolicies.
    policies: Vec<String>,
}

impl AppliedPolicy {
    fn apply(cluster: &Cluster, release: &str, account: &str) -> anyhow::Result<Self> {
        let chart = cluster.repo_path("charts/msa-operator");
        let manifest = cluster
            .helm(&[
                "template",
                release,
                chart.to_str().expect("utf-8 path"),
                "--namespace",
                INSTALL_NAMESPACE,
                "--kube-version",
                "1.36.0",
                "--set",
                "admissionPolicy.enabled=true",
                "--set",
                &format!("serviceAccount.name={account}"),
                "--show-only",
                "templates/admissionpolicy.yaml",
            ])
            .ok()?;
        let mut policies = Vec::new();
        let mut bindings = 0;
        for document in serde_yaml::Deserializer::from_str(&manifest) {
            let object = serde_yaml::Value::deserialize(document)?;
            if object.is_null() {
                continue;
            }
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            anyhow::ensure!(
                name.starts_with(release),
                "{name} is not named after the release {release}"
            );
            match object["kind"].as_str() {
                Some("ValidatingAdmissionPolicy") => policies.push(name.to_owned()),
                Some("ValidatingAdmissionPolicyBinding") => bindings += 1,
                other => anyhow::bail!("unexpected {other:?} in templates/admissionpolicy.yaml"),
            }
        }
        anyhow::ensure!(
            policies.len() == 2 && bindings == 2,
            "expected two policies and their bindings, rendered:\n{manifest}"
        );
        assert_mentions(
            &manifest,
            &format!("system:serviceaccount:{INSTALL_NAMESPACE}:{account}"),
        );
        // Built before the apply, so that a partial apply is removed too.
        let applied = AppliedPolicy {
            cluster: cluster.clone(),
            manifest,
            policies,
        };
        applied
            .cluster
            .kubectl_with_stdin(
                &["apply", "--server-side", "-f", "-"],
                Some(&applied.manifest),
            )
            .ok()?;
        Ok(applied)
    }
}

impl Drop for AppliedPolicy {
    fn drop(&mut self) {
        let _ = self.cluster.kubectl_with_stdin(
            &["delete", "--ignore-not-found", "--wait=false", "-f", "-"],
            Some(&self.manifest),
        );
    }
}

/// The policy's refusal message; `None` while the request still passes (a policy just applied
/// takes a moment); an error for any other answer.
fn refusal<T>(answer: Result<T, kube::Error>) -> anyhow::Result<Option<String>> {
    match answer {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(status)) if status.code == 422 && status.message.contains(POLICY) => {
            Ok(Some(status.message.clone()))
        }
        Err(error) => Err(error.into()),
    }
}

/// The refusal of a request the policy (in effect) must refuse.
fn refused<T>(answer: Result<T, kube::Error>, what: &str) -> anyhow::Result<String> {
    refusal(answer)?.ok_or_else(|| anyhow::anyhow!("{what} was allowed"))
}

fn config_map(name: &str, labelled: bool) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: labelled.then(|| [(MANAGED_BY.to_owned(), "msa-operator".to_owned())].into()),
            ..ObjectMeta::default()
        },
        data: Some([("probe".to_owned(), "1".to_owned())].into()),
        ..ConfigMap::default()
    }
}

/// A Deployment the operator did not make (no pods: zero replicas).
fn unlabelled_deployment() -> anyhow::Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": "someone-elses"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "someone-elses"}},
            "template": {
                "metadata": {"labels": {"app": "someone-elses"}},
                "spec": {"containers": [{"name": "app", "image": "registry.msa.test/none:1"}]},
            },
        },
    }))?)
}

/// The chart's optional API Priority and Fairness objects (issue 28 M5) and the operator's
/// NetworkPolicy (L6) are ones the API server accepts as they are rendered: a server-side dry
/// run validates every field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster: make e2e"]
async fn the_api_priority_objects_are_accepted_by_the_api_server() -> anyhow::Result<()> {
    let s = Setup::new("apf").await?;
    let chart = s.cluster.repo_path("charts/msa-operator");
    let manifest = s
        .cluster
        .helm(&[
            "template",
            &s.ns,
            chart.to_str().expect("utf-8 path"),
            "--namespace",
            INSTALL_NAMESPACE,
            "--kube-version",
            "1.36.0",
            "--set",
            "apiPriority.enabled=true",
            "--set",
            "metrics.networkPolicy.enabled=true",
            "--show-only",
            "templates/apipriority.yaml",
            "--show-only",
            "templates/networkpolicy.yaml",
        ])
        .ok()?;
    let accepted = s
        .cluster
        .kubectl_with_stdin(
            &["apply", "--server-side", "--dry-run=server", "-f", "-"],
            Some(&manifest),
        )
        .ok()?;
    for expected in [
        "prioritylevelconfiguration.flowcontrol.apiserver.k8s.io",
        "flowschema.flowcontrol.apiserver.k8s.io",
        "networkpolicy.networking.k8s.io",
    ] {
        assert_mentions(&accepted, expected);
    }
    Ok(())
}
