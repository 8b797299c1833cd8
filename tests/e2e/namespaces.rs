//! The operator scoped to a list of namespaces (chart `watchNamespaces`, review M2) on the real
//! API server: the chart renders a Role and RoleBinding in each and no ClusterRole for the
//! apps; an operator holding only those runs the apps of each listed namespace and never reads
//! or writes anywhere else. A listed namespace without its Role is left out, said so, and does
//! not hold the others up.

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::{Api, ListParams};
use msa_e2e::cluster::{INSTALL_NAMESPACE, TestNamespace};
use msa_e2e::{Cluster, Operator, OperatorOptions};
use serde::Deserialize;

use crate::support::Setup;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster: make e2e"]
async fn an_operator_watching_a_list_of_namespaces_runs_their_apps_with_a_role_in_each()
-> anyhow::Result<()> {
    let first = Setup::new("scope-a").await?;
    let second = TestNamespace::create(&first.admin, "scope-b").await?.name;
    let outside = TestNamespace::create(&first.admin, "scope-c").await?.name;
    let account = format!("{}-scoped", first.ns);
    let watched = [first.ns.clone(), second.clone()];
    let _roles = ScopedRoles::apply(&first.cluster, &account, &watched)?;

    let kubeconfig = first
        .cluster
        .service_account_kubeconfig(INSTALL_NAMESPACE, &account)?;
    // `outside` is listed too, but has no Role: the operator cannot watch it.
    let listed = format!("{},{outside}", watched.join(","));
    let operator = Operator::start(
        &first.cluster,
        &OperatorOptions::new(kubeconfig, account.clone()).watching(&listed),
    )?;
    let in_namespace = |ns: &str| Setup {
        cluster: first.cluster.clone(),
        admin: first.admin.clone(),
        ns: ns.to_owned(),
    };
    for ns in [&first.ns, &second, &outside] {
        in_namespace(ns).apply_shop()?;
    }
    for ns in &watched {
        in_namespace(ns).wait_ready("shop")?;
    }

    // The app outside the list was never touched: no status, no children. (Both watched apps
    // are Ready, so the operator has listed and reconciled all it could see.)
    let outside_app = in_namespace(&outside).apps().get("shop").await?;
    assert!(
        outside_app.status.is_none(),
        "the operator wrote the status of an app outside its namespaces: {:?}",
        outside_app.status
    );
    let workloads = Api::<Deployment>::namespaced(first.admin.clone(), &outside)
        .list_metadata(&ListParams::default())
        .await?
        .items
        .len()
        + Api::<StatefulSet>::namespaced(first.admin.clone(), &outside)
            .list_metadata(&ListParams::default())
            .await?
            .items
            .len();
    assert_eq!(
        workloads, 0,
        "children created outside the watched namespaces"
    );

    // Every request it made was allowed but the start-up check in the namespace without a
    // Role, which it then left out: it never asked for anything cluster-wide.
    let log = std::fs::read_to_string(&operator.log)?;
    let refusals: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("forbidden") || line.contains("Forbidden"))
        .collect();
    assert_eq!(refusals.len(), 1, "one refusal, at the start:\n{log}");
    assert!(
        refusals[0].contains("not watching this namespace") && refusals[0].contains(&outside),
        "{}",
        refusals[0]
    );
    assert!(
        log.contains(&watched.join(",")),
        "the log names the watched namespaces"
    );
    drop(operator);
    Ok(())
}

/// The chart's RBAC rendered for `watchNamespaces` (release `<account>`, ServiceAccount
/// `account` of the install namespace) and applied, with the ServiceAccount; removed when
/// dropped (the Roles go with their namespaces).
struct ScopedRoles {
    cluster: Cluster,
    account: String,
}

impl ScopedRoles {
    fn apply(cluster: &Cluster, account: &str, namespaces: &[String]) -> anyhow::Result<Self> {
        let chart = cluster.repo_path("charts/msa-operator");
        let manifest = cluster
            .helm(&[
                "template",
                account,
                chart.to_str().expect("utf-8 path"),
                "--namespace",
                INSTALL_NAMESPACE,
                "--kube-version",
                "1.36.0",
                "--set",
                &format!("watchNamespaces={{{}}}", namespaces.join(",")),
                "--set",
                &format!("serviceAccount.name={account}"),
                "--set",
                "leaderElection.enabled=false",
                "--set",
                "manageCrd=false",
                "--show-only",
                "templates/rbac.yaml",
            ])
            .ok()?;
        let mut rendered = Vec::new();
        for document in serde_yaml::Deserializer::from_str(&manifest) {
            let object = serde_yaml::Value::deserialize(document)?;
            if object.is_null() {
                continue;
            }
            rendered.push(format!(
                "{} {}",
                object["kind"].as_str().unwrap_or_default(),
                object["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("(cluster)")
            ));
        }
        rendered.sort();
        let mut expected: Vec<String> = namespaces
            .iter()
            .flat_map(|ns| [format!("Role {ns}"), format!("RoleBinding {ns}")])
            .collect();
        expected.sort();
        assert_eq!(
            rendered, expected,
            "a Role and RoleBinding in each, nothing cluster-wide"
        );

        let applied = ScopedRoles {
            cluster: cluster.clone(),
            account: account.to_owned(),
        };
        cluster
            .kubectl(&["create", "serviceaccount", account, "-n", INSTALL_NAMESPACE])
            .ok()?;
        cluster
            .kubectl_with_stdin(&["apply", "-f", "-"], Some(&manifest))
            .ok()?;
        Ok(applied)
    }
}

impl Drop for ScopedRoles {
    fn drop(&mut self) {
        let _ = self.cluster.kubectl(&[
            "delete",
            "serviceaccount",
            &self.account,
            "-n",
            INSTALL_NAMESPACE,
            "--ignore-not-found",
        ]);
    }
}
