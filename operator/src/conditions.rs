//! Conditions in the shape the Kubernetes API conventions ask for: `lastTransitionTime` moves
//! only when `status` flips, and each condition records the generation it describes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
/// Whether the broker the operator runs takes the services' events (only with one).
pub const EVENTS_READY: &str = "EventsReady";

/// A condition as computed, before its transition time is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Computed {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Computed {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }

    /// The full condition, keeping the previous transition time unless the status flipped.
    pub fn settle(self, previous: &[Condition], generation: Option<i64>, now: &Time) -> Condition {
        let status = if self.status { "True" } else { "False" }.to_owned();
        let last_transition_time = previous
            .iter()
            .find(|c| c.type_ == self.type_ && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: self.type_.to_owned(),
            status,
            reason: self.reason.to_owned(),
            message: self.message,
            observed_generation: generation,
            last_transition_time,
        }
    }
}

/// Looks a condition up by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}
