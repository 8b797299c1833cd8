//! Claims of the embedded databases that the cluster does not satisfy: no StorageClass, an
//! unknown one, a provisioner that fails, a quota that refuses the claim.
//!
//! A claim is normally Pending for a moment (with `WaitForFirstConsumer` until its pod is
//! scheduled, then while the provisioner works), so only a claim Pending, or never created, for
//! longer than [`PATIENCE`] counts. Pure: the caller passes the clock.
//!
//! The message says nothing that changes with time (the Degraded condition's
//! `lastTransitionTime` says since when), so a stuck claim writes status once, not on every
//! reconcile; and Kubernetes' own explanation, which costs an Event LIST, is read when a claim
//! turns stuck and then at most every [`EXPLANATION_TTL`] ([`Explanation::is_fresh`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::build::{claim_name, has_embedded_database};
use crate::component::Component;
use crate::crd::MicroserviceApp;

/// How long a claim may be Pending (or missing) before the app reports it.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// One claim that is not bound in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StuckClaim {
    pub claim: String,
    /// Whether the claim exists (Pending) or was never created (refused, e.g. by a quota).
    pub exists: bool,
    pub storage_class: Option<String>,
    /// `Kind/name` of the object whose Warning events explain why.
    pub explained_by: (&'static str, String),
}

impl StuckClaim {
    /// What is wrong with this claim; `reported` is the latest Warning event Kubernetes
    /// recorded about it, when there is one.
    pub fn describe(&self, reported: Option<&str>) -> String {
        let class = match &self.storage_class {
            Some(class) => format!("StorageClass {class:?}"),
            None => "no StorageClass (the cluster has no default one)".to_owned(),
        };
        let patience = PATIENCE.as_secs();
        let state = if self.exists {
            format!("has been Pending for more than {patience} s")
        } else {
            format!("was not created within {patience} s")
        };
        let said = reported
            .map(|r| format!(" (Kubernetes reports: {r})"))
            .unwrap_or_default();
        format!("claim {} {state} with {class}{said}", self.claim)
    }
}

/// The status message for stuck claims: each one described, then what to do, once.
pub fn message(described: &[String], first_claim: &str, namespace: &str) -> String {
    format!(
        "{}; set spec.storage.storageClassName to a class `kubectl get storageclass` lists or mark \
         one default, check quotas (`kubectl describe resourcequota -n {namespace}`), and see \
         `kubectl describe pvc {first_claim} -n {namespace}`",
        described.join("; ")
    )
}

/// What [`check`] found, and when to look again if a claim may still turn out stuck.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Findings {
    pub stuck: Vec<StuckClaim>,
    pub recheck_in: Option<Duration>,
}

/// Checks the claim of every component that keeps an embedded database.
pub fn check(
    app: &MicroserviceApp,
    stateful_sets: &BTreeMap<Component, &StatefulSet>,
    claims: &BTreeMap<String, &PersistentVolumeClaim>,
    now: &Time,
) -> Findings {
    let mut findings = Findings::default();
    let app_name = app.name_any();
    for component in Component::ALL {
        if !has_embedded_database(app, component) || component.spec(app).replicas < 1 {
            continue;
        }
        let Some(stateful_set) = stateful_sets.get(&component) else {
            continue;
        };
        let name = claim_name(&app_name, component, 0);
        let claim = claims.get(&name);
        if claim.is_some_and(|c| phase(c) == Some("Bound")) {
            continue;
        }
        let created = match claim {
            Some(c) => c.metadata.creation_timestamp.as_ref(),
            None => stateful_set.metadata.creation_timestamp.as_ref(),
        };
        let waited = created.map_or(Duration::ZERO, |t| elapsed(t, now));
        if waited < PATIENCE {
            let left = PATIENCE - waited;
            findings.recheck_in = Some(findings.recheck_in.map_or(left, |r| r.min(left)));
            continue;
        }
        findings.stuck.push(StuckClaim {
            claim: name.clone(),
            exists: claim.is_some(),
            storage_class: claim
                .and_then(|c| c.spec.as_ref()?.storage_class_name.clone())
                .or_else(|| app.spec.storage.storage_class_name.clone()),
            explained_by: match claim {
                Some(_) => ("PersistentVolumeClaim", name),
                None => ("StatefulSet", stateful_set.name_any()),
            },
        });
    }
    findings
}

/// How long Kubernetes' explanation of a stuck claim is used before it is read again.
pub const EXPLANATION_TTL: Duration = Duration::from_secs(15 * 60);

/// Kubernetes' explanation of why a claim is stuck (the latest Warning Event about it), as read
/// at `read_at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The Event's message; None when Kubernetes had recorded none.
    pub reported: Option<String>,
    pub read_at: Time,
}

impl Explanation {
    /// Whether it may still be used at `now` instead of listing Events again.
    pub fn is_fresh(&self, now: &Time) -> bool {
        elapsed(&self.read_at, now) < EXPLANATION_TTL && self.read_at.0 <= now.0
    }
}

/// The objects whose Events may explain a stuck claim of this app (each stateful component's
/// claim and StatefulSet), so their remembered explanations can be dropped once not stuck.
pub fn explainers(app: &MicroserviceApp) -> Vec<(&'static str, String)> {
    let app_name = app.name_any();
    Component::ALL
        .into_iter()
        .filter(|c| c.is_stateful())
        .flat_map(|c| {
            [
                ("PersistentVolumeClaim", claim_name(&app_name, c, 0)),
                ("StatefulSet", crate::labels::child_name(&app_name, c)),
            ]
        })
        .collect()
}

fn phase(claim: &PersistentVolumeClaim) -> Option<&str> {
    claim.status.as_ref()?.phase.as_deref()
}

/// Whole seconds from `since` to `now`; zero when the clocks disagree.
pub(crate) fn elapsed(since: &Time, now: &Time) -> Duration {
    let seconds = now.0.as_second().saturating_sub(since.0.as_second());
    Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}
