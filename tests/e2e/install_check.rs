//! `msa-operator check`, what the chart's `helm test` pod runs (issue 32, part 4), against the
//! real API server with the chart's RBAC: the operator's ServiceAccount passes, one without the
//! right to list MicroserviceApps is told what is missing. (The `helm test` itself runs on the
//! real node, `tests/node/`.)

use std::process::Command;

use msa_e2e::workspace_binary;

use crate::support::Setup;

/// Runs the check with `kubeconfig`; (passed, stdout and stderr).
fn check(kubeconfig: &std::path::Path, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let output = Command::new(workspace_binary("msa-operator"))
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_BACKTRACE", "0")
        .args(args)
        .output()?;
    Ok((
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test cluster: make e2e"]
async fn the_install_check_passes_as_the_operator_and_says_what_another_account_lacks()
-> anyhow::Result<()> {
    let s = Setup::new("check").await?;
    let operator = s.start_operator("check")?;
    s.apply_manifest(
        "apiVersion: msa.dev/v1alpha1\nkind: MicroserviceApp\nmetadata: {name: shop}\nspec: {events: {enabled: false}}\n",
    )?;
    let url = format!("http://{}", operator.metrics_addr().await?);
    let as_operator = s.operator_kubeconfig()?;
    let scope = format!("--watch-namespace={}", s.ns);

    let (passed, report) = check(&as_operator, &[&scope, "check", "--metrics-url", &url])?;
    assert!(passed, "{report}");
    for expected in [
        format!("the operator answers {url}/readyz: 200 ready"),
        format!(
            "the operator's ServiceAccount lists MicroserviceApps in namespace {ns}: 1: {ns}/shop",
            ns = s.ns
        ),
        "msa-operator check: passed".to_owned(),
    ] {
        assert!(report.contains(&expected), "{expected:?} not in\n{report}");
    }

    // The namespace's default ServiceAccount has no right to the apps.
    let bare = s.cluster.service_account_kubeconfig(&s.ns, "default")?;
    let (passed, report) = check(&bare, &[&scope, "check"])?;
    assert!(!passed, "{report}");
    for expected in [
        "may not list MicroserviceApps in namespace",
        "forbidden",
        "`helm upgrade` restores the chart's RBAC",
    ] {
        assert!(report.contains(expected), "{expected:?} not in\n{report}");
    }
    Ok(())
}
