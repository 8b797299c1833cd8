//! Issue 28, H5 on the real API server: an operator that starts while the cluster's
//! ServiceAccount issuer discovery fails (a 503, as from an overloaded API server) changes no
//! pod template of a running app — it keeps what the app runs with — and, once the endpoint
//! answers again, learns the same issuer and still changes nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};
use msa_e2e::cluster::{INSTALL_NAMESPACE, RELEASE};
use msa_e2e::failing_api::FailingApiProxy;
use msa_e2e::{Operator, OperatorOptions, wait_until};

use crate::support::{Setup, WAIT};

const ISSUER_PATHS: &[&str] = &["/.well-known/openid-configuration", "/openid/v1/jwks"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster: make e2e"]
async fn an_operator_starting_while_the_issuer_fails_rolls_nothing() -> anyhow::Result<()> {
    let (s, first) = Setup::ready_shop("issuer").await?;
    let before = pod_templates(&s).await?;
    assert!(
        before
            .values()
            .any(|(_, template)| template.contains("MSA_SERVICE_ISSUER")),
        "the shop runs with service identity (the cluster offers its issuer)"
    );
    drop(first);

    // The same ServiceAccount, through a proxy that fails the issuer discovery paths.
    let kubeconfig = s
        .cluster
        .service_account_kubeconfig(INSTALL_NAMESPACE, RELEASE)?;
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&kubeconfig)?)?;
    let server = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let api_server = server.strip_prefix("https://").unwrap_or(&server).parse()?;
    let proxy =
        FailingApiProxy::start(api_server, &s.cluster.state.join("pki"), ISSUER_PATHS).await?;
    config["clusters"][0]["cluster"]["server"] = proxy.url().into();
    let through_proxy = s
        .cluster
        .state
        .join(format!("kubeconfig-{}-issuer-failing", s.ns));
    std::fs::write(&through_proxy, serde_yaml::to_string(&config)?)?;
    let operator = Operator::start(
        &s.cluster,
        &OperatorOptions::new(through_proxy, format!("{}-restarted", s.ns)).watching(&s.ns),
    )?;

    // It reconciled the app (twice: at start, and after a poke) while every issuer read failed.
    wait_until("the restarted operator to reconcile", WAIT, || async {
        Ok((operator.metric("msa_operator_reconciles_total", "").await? >= 1.0).then_some(()))
    })
    .await?;
    s.cluster
        .kubectl(&[
            "annotate",
            "msa/shop",
            "-n",
            &s.ns,
            "e2e.msa.dev/poke=1",
            "--overwrite",
        ])
        .ok()?;
    wait_until("the poked reconcile", WAIT, || async {
        Ok((operator.metric("msa_operator_reconciles_total", "").await? >= 2.0).then_some(()))
    })
    .await?;
    assert!(
        proxy.refused() >= 1,
        "the operator asked for the issuer and was refused"
    );
    let changed = changed(&before, &pod_templates(&s).await?);
    assert!(
        changed.is_empty(),
        "pod templates changed while the issuer could not be read: {changed:?}"
    );
    s.wait_ready("shop")?;

    // The endpoint answers again: the operator learns the same issuer (it retries every 10 s),
    // and a reconcile with it still changes nothing.
    proxy.heal();
    wait_until("the operator to learn the issuer", WAIT, || async {
        Ok(operator
            .log_text()
            .contains("issuer\":\"https://")
            .then_some(()))
    })
    .await?;
    let reconciled = operator.metric("msa_operator_reconciles_total", "").await?;
    s.cluster
        .kubectl(&[
            "annotate",
            "msa/shop",
            "-n",
            &s.ns,
            "e2e.msa.dev/poke=2",
            "--overwrite",
        ])
        .ok()?;
    wait_until("the reconcile with the issuer known", WAIT, || async {
        Ok(
            (operator.metric("msa_operator_reconciles_total", "").await? > reconciled)
                .then_some(()),
        )
    })
    .await?;
    assert_eq!(
        pod_templates(&s).await?,
        before,
        "the issuer learned is the one the shop runs with"
    );
    drop(operator);
    Ok(())
}

/// The workloads whose generation or pod template differ, with their generations.
fn changed(
    before: &BTreeMap<String, (i64, String)>,
    after: &BTreeMap<String, (i64, String)>,
) -> Vec<String> {
    let names: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    names
        .into_iter()
        .filter(|name| before.get(*name) != after.get(*name))
        .map(|name| {
            let generation = |m: &BTreeMap<String, (i64, String)>| m.get(name).map(|(g, _)| *g);
            format!(
                "{name}: generation {:?} -> {:?}",
                generation(before),
                generation(after)
            )
        })
        .collect()
}

/// Each workload's generation and pod template, by kind and name.
async fn pod_templates(s: &Setup) -> anyhow::Result<BTreeMap<String, (i64, String)>> {
    let mut templates = BTreeMap::new();
    let deployments = Api::<Deployment>::namespaced(s.admin.clone(), &s.ns);
    for d in deployments.list(&ListParams::default()).await? {
        let template = d.spec.as_ref().map(|spec| &spec.template);
        record(&mut templates, "Deployment", &d.metadata, template)?;
    }
    let stateful_sets = Api::<StatefulSet>::namespaced(s.admin.clone(), &s.ns);
    for set in stateful_sets.list(&ListParams::default()).await? {
        let template = set.spec.as_ref().map(|spec| &spec.template);
        record(&mut templates, "StatefulSet", &set.metadata, template)?;
    }
    Ok(templates)
}

fn record(
    templates: &mut BTreeMap<String, (i64, String)>,
    kind: &str,
    meta: &ObjectMeta,
    template: Option<&PodTemplateSpec>,
) -> anyhow::Result<()> {
    let name = meta.name.clone().unwrap_or_default();
    let generation = meta.generation.unwrap_or_default();
    templates.insert(
        format!("{kind} {name}"),
        (generation, serde_json::to_string(&template)?),
    );
    Ok(())
}
