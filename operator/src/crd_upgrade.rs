//! The operator keeps its own CRD current (issue 28 M3).
//!
//! Helm installs a chart's `crds/` once and never upgrades them, so a `helm upgrade` that adds a
//! field left the old schema in place and the API server pruned the new field from every app.
//! With `--manage-crd` (the chart's default) the leader applies the CRD it was built with, by
//! server-side apply, before it reconciles anything — unless the CRD in the cluster was written
//! by a newer operator (its `msa.dev/operator-version` annotation): during a rolling upgrade, or
//! a rollback of the operator, an older replica never takes fields away from a newer one.

use std::cmp::Ordering;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use tracing::{info, warn};

use crate::crd::definition;
use crate::drift;
use crate::labels::MANAGER;

/// The operator version that last wrote the CRD.
pub const VERSION_ANNOTATION: &str = "msa.dev/operator-version";

/// What to do with the CRD found in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Apply ours.
    Apply,
    /// Ours is what is there already.
    Current,
    /// A newer operator wrote it (the version it names); leave it.
    Newer(String),
}

/// Decides from the live CRD's version annotation and whether ours is already contained in it.
/// An unreadable or absent version counts as older: CRDs from before this annotation, or edited
/// by hand, are brought back to what this operator needs.
pub fn decide(live_version: Option<&str>, ours: &str, ours_contained: bool) -> Decision {
    match live_version.map(|live| compare_versions(live, ours)) {
        Some(Some(Ordering::Greater)) => Decision::Newer(live_version.unwrap_or_default().into()),
        Some(Some(Ordering::Equal)) if ours_contained => Decision::Current,
        _ => Decision::Apply,
    }
}

/// Compares two `major.minor.patch[-pre][+build]` versions as semantic versioning orders them as
/// far as this needs: a pre-release comes before its release (`0.2.0-rc.1` < `0.2.0`); two
/// pre-releases of one version compare equal; build metadata is ignored. `None` when either is
/// not such a version.
fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    fn parse(version: &str) -> Option<([u64; 3], bool)> {
        let version = version.trim_start_matches('v');
        let version = version.split('+').next()?;
        let (core, released) = match version.split_once('-') {
            Some((core, _pre)) => (core, false),
            None => (version, true),
        };
        let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
        let parsed = [parts.next()??, parts.next()??, parts.next()??];
        parts.next().is_none().then_some((parsed, released))
    }
    Some(parse(a)?.cmp(&parse(b)?))
}

/// Applies this operator's CRD when [`decide`] says so. A refusal (the chart's RBAC not
/// installed, say) is logged, not fatal: the operator then runs on the CRD as it is.
pub async fn ensure(client: &Client) -> Decision {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let desired = definition();
    let name = desired.name_any();
    let ours = env!("CARGO_PKG_VERSION");
    let live = match api.get(&name).await {
        Ok(live) => live,
        Err(error) => {
            warn!(crd = %name, %error, "cannot read the CRD to keep it current; running on it as it is");
            return Decision::Current;
        }
    };
    let contained = match (serde_json::to_value(&desired), serde_json::to_value(&live)) {
        (Ok(desired), Ok(live)) => drift::is_contained(&desired, &live),
        _ => false,
    };
    let decision = decide(
        live.annotations()
            .get(VERSION_ANNOTATION)
            .map(String::as_str),
        ours,
        contained,
    );
    match &decision {
        Decision::Current => {}
        Decision::Newer(theirs) => {
            warn!(crd = %name, ours, theirs = %theirs, "the CRD was written by a newer operator; leaving it as it is");
        }
        Decision::Apply => {
            match api
                .patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(&desired),
                )
                .await
            {
                Ok(_) => info!(crd = %name, version = ours, "applied this operator's CRD"),
                Err(error) => {
                    warn!(crd = %name, %error, "cannot apply this operator's CRD (grant the chart's CRD role, or apply crds/ yourself); running on it as it is")
                }
            }
        }
    }
    decision
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_unversioned_or_unreadable_crd_is_replaced() {
        assert_eq!(decide(Some("0.1.0"), "0.2.0", true), Decision::Apply);
        assert_eq!(decide(None, "0.2.0", true), Decision::Apply);
        assert_eq!(decide(Some("latest"), "0.2.0", true), Decision::Apply);
        assert_eq!(decide(Some("0.1.9"), "0.1.10", true), Decision::Apply);
        assert_eq!(decide(Some("0.2.0-rc.1"), "0.2.0", true), Decision::Apply);
    }

    #[test]
    fn the_same_version_is_applied_only_when_it_differs() {
        assert_eq!(decide(Some("0.2.0"), "0.2.0", true), Decision::Current);
        assert_eq!(decide(Some("0.2.0"), "0.2.0", false), Decision::Apply);
        assert_eq!(
            decide(Some("v0.2.0+build.7"), "0.2.0", true),
            Decision::Current
        );
    }

    #[test]
    fn a_newer_operators_crd_is_never_taken_back() {
        assert_eq!(
            decide(Some("0.10.0"), "0.9.3", false),
            Decision::Newer("0.10.0".to_owned())
        );
        assert_eq!(
            decide(Some("1.0.0-rc.1"), "0.9.3", false),
            Decision::Newer("1.0.0-rc.1".to_owned())
        );
        assert_eq!(
            decide(Some("0.2.0"), "0.2.0-rc.1", false),
            Decision::Newer("0.2.0".to_owned())
        );
    }
}
