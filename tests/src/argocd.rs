//! How Argo CD sees an app: the chart's `files/argocd/health.lua` run as Argo CD runs it
//! (gopher-lua, `hack/argocd-health`) on the object the operator really produced. Each judged
//! object is kept under `target/argocd-health/` — the chart's `health_test.yaml` table is made
//! of such captures.

use anyhow::Context;
use serde::Deserialize;

use crate::Cluster;

/// The chart's health check.
pub const HEALTH_LUA: &str = "charts/msa-operator/files/argocd/health.lua";

/// What Argo CD would show for the app.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Health {
    pub status: String,
    #[serde(default)]
    pub message: String,
}

impl Cluster {
    /// Reads `msa/<name>` as `kubectl get -o yaml` prints it (no managedFields), keeps it as
    /// `target/argocd-health/<capture>.yaml`, and judges it with the chart's health check.
    pub fn argocd_judges(
        &self,
        namespace: &str,
        name: &str,
        capture: &str,
    ) -> anyhow::Result<Health> {
        let object = self
            .kubectl(&["get", "msa", name, "-n", namespace, "-o", "yaml"])
            .ok()?;
        let file = self.keep_capture("argocd-health", &format!("{capture}.yaml"), &object)?;
        let script = self.repo_path(HEALTH_LUA);
        let judged = self
            .argocd_health(&[
                "eval",
                script.to_str().context("repository path")?,
                file.to_str().context("repository path")?,
            ])
            .ok()?;
        serde_json::from_str(&judged).with_context(|| format!("argocd-health printed {judged:?}"))
    }
}
