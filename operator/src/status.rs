//! Pure computation of a MicroserviceApp's status from what the operator observed.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::component::Component;
use crate::conditions::{Computed, DEGRADED, EVENTS_READY, PROGRESSING, READY};
use crate::crd::{ComponentStatus, GatewayStatus, MicroserviceApp, MicroserviceAppStatus};
use crate::validate::SpecProblem;

/// Condition reasons, stable for alerting and `kubectl wait`.
pub mod reason {
    pub const ALL_READY: &str = "AllComponentsReady";
    pub const NOT_READY: &str = "ComponentsNotReady";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const COMPLETE: &str = "RolloutComplete";
    pub const AS_EXPECTED: &str = "AsExpected";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const APPLY_FAILED: &str = "ApplyFailed";
    pub const FORBIDDEN: &str = "Forbidden";
    pub const PROGRESS_DEADLINE: &str = "ProgressDeadlineExceeded";
    pub const REPLICA_FAILURE: &str = "ReplicaFailure";
    pub const STORAGE_UNAVAILABLE: &str = "StorageUnavailable";
    pub const WAITING_FOR_CLUSTER: &str = "WaitingForCluster";
    pub const WAITING_FOR_ROLLOUT_SLOT: &str = "WaitingForRolloutSlot";
    pub const STREAMS_READY: &str = "StreamsReady";
    pub const BROKER_NOT_READY: &str = "BrokerNotReady";
    pub const BROKER_NOT_CREATED: &str = "BrokerNotCreated";
}

/// What stopped the operator from converging the app this time round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// The spec cannot be rendered; nothing was applied.
    InvalidSpec(Vec<SpecProblem>),
    /// Some children could not be applied (object name → API server's message).
    ApplyFailed(Vec<(String, String)>),
    /// The operator's own permissions do not cover a child (the API server's message); the
    /// reconcile stopped there.
    Forbidden(String),
}

/// The cluster state a status is computed from.
#[derive(Default)]
pub struct Observed {
    /// Each component's Deployment or StatefulSet, as far as status needs it.
    pub workloads: BTreeMap<Component, WorkloadState>,
    /// Ready endpoints per component, from the Services' EndpointSlices.
    pub endpoints: BTreeMap<Component, i32>,
    /// Why claims of the embedded databases are not bound (see [`crate::storage`]).
    pub storage_problem: Option<String>,
    pub blocker: Option<Blocker>,
    /// A fact about the cluster the operator waits for before rendering (nothing was applied).
    pub waiting: Option<String>,
    /// `status.monitoring` (see [`crate::build::monitoring_note`]).
    pub monitoring: Option<String>,
    /// The components whose new pod template waits for a rollout slot (see [`crate::pacing`]),
    /// and how many slots there are.
    pub paced: Option<(Vec<Component>, usize)>,
    /// The broker the operator runs (None: it runs none; `Some(None)`: its StatefulSet is
    /// not there yet).
    pub broker: Option<Option<WorkloadState>>,
}

/// What status reads from a component's Deployment or StatefulSet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadState {
    /// `Deployment` or `StatefulSet`, for messages.
    pub kind: &'static str,
    pub uid: Option<String>,
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    /// `spec.replicas` (absent when an autoscaler owns it).
    pub desired: Option<i32>,
    pub updated: i32,
    pub ready: i32,
    /// `status.replicas`: every pod, of the current revision or an older one.
    pub pods: i32,
    /// `status.availableReplicas`.
    pub available: i32,
    /// The workload's own conditions: (type, status, reason, message). For a StatefulSet,
    /// which has none of its own, the operator adds `Progressing=False/ProgressDeadlineExceeded`
    /// when its pods say so (see [`crate::stateful_rollout`]).
    pub conditions: Vec<(String, String, String, String)>,
    /// A StatefulSet's `status.updateRevision`: the revision its pods are being moved to.
    pub update_revision: Option<String>,
}

impl WorkloadState {
    /// Its controller has seen its last change and moved every pod to it (ready or not).
    pub fn rolled_out(&self) -> bool {
        self.generation.is_some()
            && self.observed_generation >= self.generation
            && self.updated >= self.desired.unwrap_or(0)
    }

    /// Rolled out, and no pod of an older revision is left (`kubectl rollout status`'s test):
    /// nothing can need what only an older revision read.
    pub fn only_current_pods(&self) -> bool {
        self.rolled_out()
            && self.pods <= self.updated
            && self.available >= self.desired.unwrap_or(0)
    }
}

/// Both workload kinds report the same fields under the same names.
macro_rules! workload_state {
    ($kind:literal, $object:expr) => {{
        let object = $object;
        let status = object.status.as_ref();
        WorkloadState {
            kind: $kind,
            uid: object.metadata.uid.clone(),
            generation: object.metadata.generation,
            observed_generation: status.and_then(|s| s.observed_generation),
            desired: object.spec.as_ref().and_then(|s| s.replicas),
            updated: status.and_then(|s| s.updated_replicas).unwrap_or(0),
            ready: status.and_then(|s| s.ready_replicas).unwrap_or(0),
            // Optional in a Deployment's status, required in a StatefulSet's.
            pods: status
                .and_then(|s| Option::<i32>::from(s.replicas))
                .unwrap_or(0),
            available: status.and_then(|s| s.available_replicas).unwrap_or(0),
            conditions: status
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .map(|c| {
                    (
                        c.type_.clone(),
                        c.status.clone(),
                        c.reason.clone().unwrap_or_default(),
                        c.message.clone().unwrap_or_default(),
                    )
                })
                .collect(),
            update_revision: None,
        }
    }};
}

impl From<&Deployment> for WorkloadState {
    fn from(deployment: &Deployment) -> Self {
        workload_state!("Deployment", deployment)
    }
}

impl From<&StatefulSet> for WorkloadState {
    fn from(stateful_set: &StatefulSet) -> Self {
        WorkloadState {
            update_revision: stateful_set
                .status
                .as_ref()
                .and_then(|s| s.update_revision.clone()),
            ..workload_state!("StatefulSet", stateful_set)
        }
    }
}

impl WorkloadState {
    /// A StatefulSet whose controller has seen its spec and whose pods are not all updated and
    /// Ready: only then are its pods worth a look (see [`crate::stateful_rollout`]).
    /// Returns the StatefulSet's uid and update revision.
    pub fn stateful_rollout_pending(&self) -> Option<(&str, &str)> {
        let current = match (self.generation, self.observed_generation) {
            (Some(generation), Some(observed)) => observed >= generation,
            _ => false,
        };
        let desired = self.desired.unwrap_or(1);
        (self.kind == "StatefulSet" && current && (self.updated < desired || self.ready < desired))
            .then_some(self.uid.as_deref().zip(self.update_revision.as_deref()))
            .flatten()
    }

    /// Records that the rollout is stuck, as a Deployment's controller would.
    pub fn mark_past_deadline(&mut self, message: String) {
        self.conditions.push((
            "Progressing".to_owned(),
            "False".to_owned(),
            reason::PROGRESS_DEADLINE.to_owned(),
            message,
        ));
    }
}

/// A component's rollout as read from its workload.
struct Rollout<'a> {
    component: Component,
    /// The workload kind the spec asks for, for messages.
    expected_kind: &'static str,
    counts: ComponentStatus,
    /// The workload's controller has seen the latest spec.
    observed_current: bool,
    workload: Option<&'a WorkloadState>,
}

impl Rollout<'_> {
    fn is_done(&self) -> bool {
        let c = &self.counts;
        self.workload.is_some()
            && self.observed_current
            && c.updated_replicas >= c.desired_replicas
            && c.ready_replicas >= c.desired_replicas
    }

    fn summary(&self) -> String {
        let c = &self.counts;
        match self.workload {
            None => format!("{}: {} not created yet", self.component, self.expected_kind),
            Some(_) => format!(
                "{}: {}/{} ready, {}/{} updated",
                self.component,
                c.ready_replicas,
                c.desired_replicas,
                c.updated_replicas,
                c.desired_replicas
            ),
        }
    }

    /// The workload's own condition of that type with that status, if any.
    fn workload_condition(&self, type_: &str, status: &str) -> Option<(String, String)> {
        self.workload?
            .conditions
            .iter()
            .find(|(t, s, _, _)| t == type_ && s == status)
            .map(|(_, _, reason, message)| (reason.clone(), message.clone()))
    }
}

fn rollout<'a>(
    app: &MicroserviceApp,
    component: Component,
    workload: Option<&'a WorkloadState>,
    endpoints: i32,
) -> Rollout<'a> {
    let spec_replicas = component.spec(app).replicas;
    let desired = workload.and_then(|w| w.desired).unwrap_or(spec_replicas);
    let observed_current = match (
        workload.and_then(|w| w.generation),
        workload.and_then(|w| w.observed_generation),
    ) {
        (Some(generation), Some(observed)) => observed >= generation,
        (None, _) => true,
        (Some(_), None) => false,
    };
    Rollout {
        component,
        expected_kind: if crate::build::has_embedded_database(app, component) {
            "StatefulSet"
        } else {
            "Deployment"
        },
        counts: ComponentStatus {
            desired_replicas: desired,
            updated_replicas: workload.map_or(0, |w| w.updated),
            ready_replicas: workload.map_or(0, |w| w.ready),
            endpoints,
        },
        observed_current,
        workload,
    }
}

/// The status to record, given what was observed; `now` stamps conditions that flip.
pub fn compute(app: &MicroserviceApp, observed: &Observed, now: &Time) -> MicroserviceAppStatus {
    let rollouts: Vec<Rollout<'_>> = Component::ALL
        .into_iter()
        .map(|c| {
            let endpoints = observed.endpoints.get(&c).copied().unwrap_or(0);
            rollout(app, c, observed.workloads.get(&c), endpoints)
        })
        .collect();

    let (ready, mut progressing, degraded) = conditions(
        &rollouts,
        observed.storage_problem.as_deref(),
        observed.blocker.as_ref(),
    );
    if let Some(waiting_for) = &observed.waiting {
        progressing = Computed::new(
            PROGRESSING,
            true,
            reason::WAITING_FOR_CLUSTER,
            format!(
                "nothing is applied until the operator knows {waiting_for}; running pods are \
                 left as they are"
            ),
        );
    }
    if let Some((components, slots)) = &observed.paced {
        progressing = Computed::new(
            PROGRESSING,
            true,
            reason::WAITING_FOR_ROLLOUT_SLOT,
            format!(
                "the operator renders the pods of {} differently now (a new operator version or \
                 a changed cluster fact) and rolls such changes out {slots} apps at a time \
                 (--max-concurrent-rollouts); running pods are left as they are until a slot is \
                 free",
                join(components.iter().map(ToString::to_string))
            ),
        );
    }
    let previous = app
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let generation = app.metadata.generation;
    // Under a blocker this generation was not (or not wholly) applied. Ready, which measures
    // what runs, and `status.observedGeneration` stay at the last generation applied, so
    // kstatus (Flux, `helm --wait`) does not take a refused generation for done; Progressing
    // and Degraded speak of the current one.
    // Waiting for a fact nothing was applied either: a spec edit made meanwhile is not marked
    // applied (nor later taken for the operator's own change, see crate::pacing).
    let applied = match (&observed.blocker, &observed.waiting) {
        (None, None) => generation,
        _ => app.status.as_ref().and_then(|s| s.observed_generation),
    };
    let mut conditions = vec![
        ready.settle(previous, applied, now),
        progressing.settle(previous, generation, now),
        degraded.settle(previous, generation, now),
    ];
    if let Some(broker) = &observed.broker {
        conditions.push(events_ready(app, broker.as_ref()).settle(previous, generation, now));
    }
    MicroserviceAppStatus {
        observed_generation: applied,
        conditions,
        components: rollouts
            .into_iter()
            .map(|r| (r.component.name().to_owned(), r.counts))
            .collect(),
        gateway: crate::build::gateway_url(app).map(|url| GatewayStatus { url }),
        monitoring: observed.monitoring.clone(),
    }
}

/// `EventsReady`: whether the broker the operator runs takes the services' events — all its
/// servers ready, which each is only once JetStream runs and the app's streams are as
/// configured (the stream keeper's readiness). It does not touch `Ready`: the services answer
/// requests without it, keeping their events until it takes them.
fn events_ready(app: &MicroserviceApp, broker: Option<&WorkloadState>) -> Computed {
    let name = crate::build::broker::name(&app.metadata.name.clone().unwrap_or_default());
    let Some(state) = broker else {
        return Computed::new(
            EVENTS_READY,
            false,
            reason::BROKER_NOT_CREATED,
            format!(
                "the event broker's StatefulSet {name} is not created yet; the services keep their events in their outboxes meanwhile"
            ),
        );
    };
    let desired = state.desired.unwrap_or(app.spec.events.replicas);
    // Counts of a revision its controller has seen, not of the one before a change.
    if state.rolled_out() && state.ready >= desired && desired > 0 {
        Computed::new(
            EVENTS_READY,
            true,
            reason::STREAMS_READY,
            format!(
                "{}/{desired} broker servers ({name}) are ready and the app's streams are as configured; each service publishes its events as it changes",
                state.ready
            ),
        )
    } else {
        Computed::new(
            EVENTS_READY,
            false,
            reason::BROKER_NOT_READY,
            format!(
                "{}/{desired} broker servers ({name}) are ready (a server is once JetStream runs and the app's streams are made); the services keep their events in their outboxes and publish them once it is",
                state.ready
            ),
        )
    }
}

fn conditions(
    rollouts: &[Rollout<'_>],
    storage_problem: Option<&str>,
    blocker: Option<&Blocker>,
) -> (Computed, Computed, Computed) {
    let (ready, progressing, degraded) = measured_conditions(rollouts, storage_problem);
    // A blocker stops the operator, not the app: Ready and the counts still say what runs
    // (the previous pods keep serving), while Progressing and Degraded say why nothing moves
    // (issue 28 M6; zeroed counts and Ready=False fired the not-ready alert for a serving app).
    let Some(blocker) = blocker else {
        return (ready, progressing, degraded);
    };
    let (reason, message) = match blocker {
        Blocker::InvalidSpec(problems) => (
            reason::INVALID_SPEC,
            format!(
                "the spec cannot be applied: {}",
                join(problems.iter().map(ToString::to_string))
            ),
        ),
        Blocker::ApplyFailed(failures) => (
            reason::APPLY_FAILED,
            format!(
                "could not apply {}",
                join(failures.iter().map(|(name, why)| format!("{name} ({why})")))
            ),
        ),
        Blocker::Forbidden(why) => (
            reason::FORBIDDEN,
            format!(
                "the operator is not allowed to write this app's objects: {why}; grant its \
                 ServiceAccount the chart's ClusterRole (helm upgrade restores it)"
            ),
        ),
    };
    (
        ready,
        Computed::new(PROGRESSING, false, reason, message.clone()),
        Computed::new(DEGRADED, true, reason, message),
    )
}

/// The conditions as the workloads, their rollouts and the claims say.
fn measured_conditions(
    rollouts: &[Rollout<'_>],
    storage_problem: Option<&str>,
) -> (Computed, Computed, Computed) {
    let stuck: Vec<String> = rollouts
        .iter()
        .filter_map(|r| {
            r.workload_condition("Progressing", "False")
                .filter(|(reason, _)| reason == reason::PROGRESS_DEADLINE)
                .map(|(_, message)| format!("{}: {message}", r.component))
        })
        .collect();
    let failing: Vec<String> = rollouts
        .iter()
        .filter_map(|r| {
            r.workload_condition("ReplicaFailure", "True")
                .map(|(reason, message)| format!("{}: {reason}: {message}", r.component))
        })
        .collect();
    let pending: Vec<String> = rollouts
        .iter()
        .filter(|r| !r.is_done())
        .map(Rollout::summary)
        .collect();

    let degraded = if let Some(problem) = storage_problem {
        Computed::new(DEGRADED, true, reason::STORAGE_UNAVAILABLE, problem)
    } else if !stuck.is_empty() {
        Computed::new(
            DEGRADED,
            true,
            reason::PROGRESS_DEADLINE,
            join(stuck.iter().cloned()),
        )
    } else if !failing.is_empty() {
        Computed::new(
            DEGRADED,
            true,
            reason::REPLICA_FAILURE,
            join(failing.into_iter()),
        )
    } else {
        Computed::new(
            DEGRADED,
            false,
            reason::AS_EXPECTED,
            "every component is healthy",
        )
    };
    let progressing = if !stuck.is_empty() {
        Computed::new(
            PROGRESSING,
            false,
            reason::PROGRESS_DEADLINE,
            join(stuck.into_iter()),
        )
    } else if !pending.is_empty() {
        Computed::new(
            PROGRESSING,
            true,
            reason::ROLLING_OUT,
            join(pending.iter().cloned()),
        )
    } else {
        Computed::new(
            PROGRESSING,
            false,
            reason::COMPLETE,
            "every component runs the current spec",
        )
    };
    let ready = if pending.is_empty() {
        Computed::new(
            READY,
            true,
            reason::ALL_READY,
            format!("all {} components are ready", rollouts.len()),
        )
    } else {
        Computed::new(
            READY,
            false,
            reason::NOT_READY,
            format!("waiting for {}", join(pending.into_iter())),
        )
    };
    (ready, progressing, degraded)
}

fn join(parts: impl Iterator<Item = String>) -> String {
    parts.collect::<Vec<_>>().join("; ")
}

/// Ready endpoints across all slices of one Service, each (address, port) counted once.
/// `ready` absent means ready, as the EndpointSlice API defines.
pub fn ready_endpoints<'a>(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> i32 {
    let mut seen = BTreeSet::new();
    for slice in slices {
        let ports: Vec<Option<i32>> = slice
            .ports
            .as_ref()
            .map(|ports| ports.iter().map(|p| p.port).collect())
            .unwrap_or_else(|| vec![None]);
        for endpoint in slice.endpoints.iter().flatten() {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                for port in &ports {
                    seen.insert((address.clone(), *port));
                }
            }
        }
    }
    i32::try_from(seen.len()).unwrap_or(i32::MAX)
}

/// Whether the app's Ready condition is True.
pub fn is_ready(app: &MicroserviceApp) -> bool {
    app.status.as_ref().is_some_and(|status| {
        status
            .conditions
            .iter()
            .any(|c| c.type_ == crate::conditions::READY && c.status == "True")
    })
}
