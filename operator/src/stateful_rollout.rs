//! A StatefulSet's rollout, judged from its pods (issue 28 M4).
//!
//! A Deployment reports `Progressing=False/ProgressDeadlineExceeded` itself; a StatefulSet has
//! no such condition, so a crash-looping pod of the embedded-database topology (the default)
//! would leave the app `Progressing` for ever. The deadline is kept here instead, per pod: a pod
//! of the update revision that has not been Ready within `progressDeadlineSeconds` of its
//! creation is stuck. Every new pod starts its own count, as a Deployment's deadline restarts
//! with each bit of progress.
//!
//! Reverting a broken spec does not heal a StatefulSet on its own: under `OrderedReady` the
//! controller waits for the broken pod, which belongs to the abandoned revision, to turn Ready
//! (Kubernetes' StatefulSet docs, "Forced rollback"). Such a pod — not Ready, of a revision other
//! than the update revision the controller has settled on — serves nobody and will be replaced
//! by its controller; the operator deletes it, which is the manual step those docs prescribe.

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
    pub revision: Option<String>,
    pub created: Option<Time>,
    pub ready: bool,
    pub terminating: bool,
}

impl From<&Pod> for PodFacts {
    fn from(pod: &Pod) -> Self {
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        PodFacts {
            name: pod.metadata.name.clone().unwrap_or_default(),
            controller: pod
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| o.uid.clone()),
            uid: pod.metadata.uid.clone(),
            revision: pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL).cloned()),
            created: pod.metadata.creation_timestamp.clone(),
            ready,
            terminating: pod.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// What the pods say of the rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assessment {
    /// Why the rollout is stuck (no clock in it: status changes only when the pods do).
    pub stuck: Option<String>,
    /// Pods to delete so the controller can replace them (name, uid).
    pub abandoned: Vec<(String, Option<String>)>,
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
        if pod.revision.as_deref() != Some(update_revision) {
            // Without a revision label the pod is not one the controller made; leave it.
            if pod.revision.is_some() {
                assessment
                    .abandoned
                    .push((pod.name.clone(), pod.uid.clone()));
            }
            continue;
        }
        let age = pod
            .created
            .as_ref()
            .map(|created| crate::storage::elapsed(created, now))
            .unwrap_or_default();
        match deadline.checked_sub(age) {
            Some(left) if !left.is_zero() => {
                assessment.recheck_in = Some(assessment.recheck_in.map_or(left, |r| r.min(left)));
            }
            _ => stuck.push(pod.name.clone()),
        }
    }
    if !stuck.is_empty() {
        stuck.sort();
        assessment.stuck = Some(format!(
            "pod {} of revision {update_revision} not Ready within {}s (progressDeadlineSeconds)",
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
            revision: Some(revision.to_owned()),
            created: Some(at(created)),
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
            Some("pod db-0 of revision new not Ready within 60s (progressDeadlineSeconds)")
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
    fn a_broken_pod_of_a_reverted_revision_is_abandoned_by_name_and_uid() {
        let a = assess(
            &[pod("db-0", "broken", 0, false)],
            "sts",
            "good",
            DEADLINE,
            &at(5),
        );
        assert_eq!(
            a.abandoned,
            vec![("db-0".to_owned(), Some("uid-db-0".to_owned()))]
        );
        assert_eq!(a.stuck, None);
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
