//! A StatefulSet's rollout, judged from its pods (issue 28 M4).
//!
//! A Deployment reports `Progressing=False/ProgressDeadlineExceeded` itself; a StatefulSet has
//! no such condition, so a crash-looping pod of the embedded-database topology (the default)
//! would leave the app `Progressing` for ever. The deadline is kept here instead, per pod: a pod
//! of the update revision that has not been Ready for `progressDeadlineSeconds` — counted from
//! its creation, or from when it last stopped being Ready, so a pod that was Ready for days and
//! fails a probe is not called stuck at once — is stuck. Every new pod starts its own count, as
//! a Deployment's deadline restarts with each bit of progress.
//!
//! Reverting a broken spec does not heal a StatefulSet on its own: under `OrderedReady` the
//! controller waits for the broken pod, which belongs to the abandoned revision, to turn Ready
//! (Kubernetes' StatefulSet docs, "Forced rollback"). Such a pod — not Ready, of a revision other
//! than the update revision the controller has settled on, and not Ready for the deadline too
//! (so a pod still starting is given its time) — serves nobody and will be replaced by its
//! controller; the operator deletes it, which is the manual step those docs prescribe. The
//! deletion is conditional on the pod's uid and resourceVersion: a pod that changed since it
//! was judged (turned Ready, or was replaced under the same name) is left alone.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The label the StatefulSet controller puts on each pod: the name of its revision.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// What the judgement needs of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    pub name: String,
    /// The uid of the pod's controller: only the StatefulSet's own pods are judged (an earlier
    /// app of the same name may still have pods with the same labels).
    pub controller: Option<String>,
    /// A deletion is made conditional on it: the replacement pod gets the same name.
    pub uid: Option<String>,
    /// A deletion is conditional on it too: the pod is deleted only as it was judged.
    pub resource_version: Option<String>,
    pub revision: Option<String>,
    /// Since when it has not been Ready: its creation, or its Ready condition's last transition
    /// if later.
    pub unready_since: Option<Time>,
    pub ready: bool,
    pub terminating: bool,
}

impl From<&Pod> for PodFacts {
    fn from(pod: &Pod) -> Self {
        let ready_condition = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "Ready");
        let ready = ready_condition.is_some_and(|c| c.status == "True");
        let created = pod.metadata.creation_timestamp.clone();
        let changed = ready_condition.and_then(|c| c.last_transition_time.clone());
        let unready_since = match (created, changed) {
            (Some(created), Some(changed)) => Some(if changed.0 > created.0 {
                changed
            } else {
                created
            }),
            (created, changed) => created.or(changed),
        };
        PodFacts {
            name: pod.metadata.name.clone().unwrap_or_default(),
            controller: crate::ownership::controller(&pod.metadata).map(str::to_owned),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            revision: pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL).cloned()),
            unready_since,
            ready,
            terminating: pod.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// A pod to delete, and what it must still be for the deletion to go ahead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Abandoned {
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

/// What the pods say of the rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assessment {
    /// Why the rollout is stuck (no clock in it: status changes only when the pods do).
    pub stuck: Option<String>,
    /// Pods to delete so the controller can replace them.
    pub abandoned: Vec<Abandoned>,
    /// When a pending pod's deadline ends, to look again then.
    pub recheck_in: Option<Duration>,
}

/// Judges the pods of one StatefulSet (uid `stateful_set`) whose status is current
/// (`observedGeneration` has caught up with `generation`: only then is `update_revision` the one
/// the controller works towards).
pub fn assess(
    pods: &[PodFacts],
    stateful_set: &str,
    update_revision: &str,
    deadline: Duration,
    now: &Time,
) -> Assessment {
    let mut assessment = Assessment::default();
    let mut stuck = Vec::new();
    let judged = pods
        .iter()
        .filter(|p| p.controller.as_deref() == Some(stateful_set))
        .filter(|p| !p.ready && !p.terminating);
    for pod in judged {
        let unready_for = pod
            .unready_since
            .as_ref()
            .map(|since| crate::storage::elapsed(since, now))
            .unwrap_or_default();
        let left = deadline.saturating_sub(unready_for);
        if !left.is_zero() {
            // Given its time, whichever revision it is of; looked at again when it is up.
            assessment.recheck_in = Some(assessment.recheck_in.map_or(left, |r| r.min(left)));
            continue;
        }
        match pod.revision.as_deref() {
            Some(revision) if revision == update_revision => stuck.push(pod.name.clone()),
            Some(_) => assessment.abandoned.push(Abandoned {
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                resource_version: pod.resource_version.clone(),
            }),
            // Without a revision label the pod is not one the controller made; leave it.
            None => {}
        }
    }
    if !stuck.is_empty() {
        stuck.sort();
        assessment.stuck = Some(format!(
            "pod {} of revision {update_revision} not Ready for {}s (progressDeadlineSeconds)",
            stuck.join(", "),
            deadline.as_secs()
        ));
    }
    assessment
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + seconds).unwrap())
    }

    fn pod(name: &str, revision: &str, created: i64, ready: bool) -> PodFacts {
        PodFacts {
            name: name.to_owned(),
            controller: Some("sts".to_owned()),
            uid: Some(format!("uid-{name}")),
            resource_version: Some("7".to_owned()),
            revision: Some(revision.to_owned()),
            unready_since: Some(at(created)),
            ready,
            terminating: false,
        }
    }

    const DEADLINE: Duration = Duration::from_secs(60);

    #[test]
    fn a_new_pod_within_its_deadline_is_waited_for_until_the_deadline_ends() {
        let a = assess(
            &[pod("db-0", "new", 0, false)],
            "sts",
            "new",
            DEADLINE,
            &at(45),
        );
        assert_eq!(a.stuck, None);
        assert!(a.abandoned.is_empty());
        assert_eq!(a.recheck_in, Some(Duration::from_secs(15)));
    }

    #[test]
    fn a_pod_of_the_update_revision_not_ready_past_the_deadline_is_stuck() {
        let a = assess(
            &[pod("db-0", "new", 0, false)],
            "sts",
            "new",
            DEADLINE,
            &at(60),
        );
        assert_eq!(
            a.stuck.as_deref(),
            Some("pod db-0 of revision new not Ready for 60s (progressDeadlineSeconds)")
        );
        assert_eq!(a.recheck_in, None);
        assert!(
            a.abandoned.is_empty(),
            "a pod of the update revision is the controller's"
        );
    }

    #[test]
    fn the_message_does_not_change_while_the_pod_stays_stuck() {
        let later = assess(
            &[pod("db-0", "new", 0, false)],
            "sts",
            "new",
            DEADLINE,
            &at(600),
        );
        let sooner = assess(
            &[pod("db-0", "new", 0, false)],
            "sts",
            "new",
            DEADLINE,
            &at(61),
        );
        assert_eq!(later.stuck, sooner.stuck);
    }

    #[test]
    fn ready_pods_and_pods_being_deleted_are_neither_stuck_nor_abandoned() {
        let mut going = pod("db-1", "old", 0, false);
        going.terminating = true;
        let a = assess(
            &[
                pod("db-0", "new", 0, true),
                going,
                pod("db-2", "old", 0, true),
            ],
            "sts",
            "new",
            DEADLINE,
            &at(600),
        );
        assert_eq!(a, Assessment::default());
    }

    #[test]
    fn a_broken_pod_of_a_reverted_revision_is_abandoned_by_name_uid_and_version() {
        let a = assess(
            &[pod("db-0", "broken", 0, false)],
            "sts",
            "good",
            DEADLINE,
            &at(60),
        );
        assert_eq!(
            a.abandoned,
            vec![Abandoned {
                name: "db-0".to_owned(),
                uid: Some("uid-db-0".to_owned()),
                resource_version: Some("7".to_owned()),
            }]
        );
        assert_eq!(a.stuck, None);
    }

    #[test]
    fn a_pod_of_an_older_revision_still_starting_is_given_its_time() {
        let a = assess(
            &[pod("db-0", "older", 0, false)],
            "sts",
            "new",
            DEADLINE,
            &at(20),
        );
        assert!(a.abandoned.is_empty());
        assert_eq!(a.recheck_in, Some(Duration::from_secs(40)));
    }

    #[test]
    fn a_pod_that_was_ready_counts_from_when_it_stopped_being_ready() {
        let mut flapping = pod("db-0", "new", 0, false);
        flapping.unready_since = Some(at(86_400));
        let a = assess(&[flapping], "sts", "new", DEADLINE, &at(86_410));
        assert_eq!(a.stuck, None);
        assert_eq!(a.recheck_in, Some(Duration::from_secs(50)));
    }

    #[test]
    fn pods_of_another_controller_are_left_alone() {
        let mut earlier_apps = pod("db-0", "broken", 0, false);
        earlier_apps.controller = Some("an-earlier-stateful-set".to_owned());
        assert_eq!(
            assess(&[earlier_apps], "sts", "good", DEADLINE, &at(600)),
            Assessment::default()
        );
    }

    #[test]
    fn a_pod_without_a_revision_label_is_left_alone() {
        let mut stray = pod("db-0", "x", 0, false);
        stray.revision = None;
        assert_eq!(
            assess(&[stray], "sts", "new", DEADLINE, &at(600)),
            Assessment::default()
        );
    }

    #[test]
    fn the_earliest_deadline_decides_when_to_look_again() {
        let a = assess(
            &[pod("db-0", "new", 0, false), pod("db-1", "new", 30, false)],
            "sts",
            "new",
            DEADLINE,
            &at(40),
        );
        assert_eq!(a.recheck_in, Some(Duration::from_secs(20)));
    }
}
