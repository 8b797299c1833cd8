//! Pacing of the operator's own rollouts (issue 28, M5). A new operator version, or a fact about
//! the cluster that changes (the ServiceAccount issuer's keys), re-renders the pods of every app
//! at once: without pacing, every app of the fleet rolls in the same minute, and the cluster's
//! spare capacity, image pulls and the API server take the whole wave together. Such a rollout
//! — a pod template change of an app whose spec the operator has already applied — takes one
//! of a fixed number of slots and holds it until its rollout is over; an app that finds none
//! free keeps its pods as they are and waits. A change of the app's own spec never waits: a
//! person who edits an app expects it to roll.
//!
//! Pure: the caller gives the time (seconds on any monotonic scale).

use std::collections::BTreeMap;

/// How long a slot may be held at most: a rollout that never ends (its app is never reconciled
/// again, or stays stuck) does not keep the others waiting for ever. The workloads' own progress
/// deadline (600 s by default) reports a stuck one long before.
pub const MAX_HOLD_SECONDS: u64 = 900;

/// The fleet's rollout slots.
#[derive(Debug)]
pub struct RolloutSlots {
    /// Slots in all; 0: no pacing.
    limit: usize,
    /// Holders by app uid, with when each took its slot.
    held: BTreeMap<String, u64>,
}

impl RolloutSlots {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            held: BTreeMap::new(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether app `uid` may roll out now: it holds a slot, or takes a free one. Slots held
    /// longer than [`MAX_HOLD_SECONDS`] are freed first.
    pub fn take(&mut self, uid: &str, now: u64) -> bool {
        if self.limit == 0 || uid.is_empty() {
            return true;
        }
        // Expired holders, this app too, queue again behind the others.
        self.held
            .retain(|_, taken| now.saturating_sub(*taken) < MAX_HOLD_SECONDS);
        if self.held.contains_key(uid) {
            return true;
        }
        if self.held.len() >= self.limit {
            return false;
        }
        self.held.insert(uid.to_owned(), now);
        true
    }

    /// App `uid`'s rollout is over (or it was deleted): its slot is free.
    pub fn release(&mut self, uid: &str) {
        self.held.remove(uid);
    }

    /// Whether app `uid` holds a slot.
    pub fn holds(&self, uid: &str) -> bool {
        self.held.contains_key(uid)
    }

    /// Frees the slots of apps that no longer exist.
    pub fn retain(&mut self, exists: impl Fn(&str) -> bool) {
        self.held.retain(|uid, _| exists(uid));
    }

    /// Slots held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// Whether a workload change must wait for a slot: the pod spec the operator renders changed
/// (its hash annotation differs from the live one's: a template someone edited by hand is
/// repaired at once), the workload exists, and the app's spec was already applied
/// (`status.observedGeneration` is its generation) — so the change comes from the operator, not
/// from the person who edited the app.
pub fn needs_slot(
    generation: Option<i64>,
    observed_generation: Option<i64>,
    workload_exists: bool,
    template_changes: bool,
) -> bool {
    workload_exists && template_changes && generation.is_some() && generation == observed_generation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_up_to_the_limit_and_held_until_released() {
        let mut slots = RolloutSlots::new(2);
        assert!(slots.take("a", 0));
        assert!(slots.take("b", 0));
        assert!(!slots.take("c", 1), "no slot free");
        assert!(slots.take("a", 2), "a holder keeps its slot");
        slots.release("a");
        assert!(slots.take("c", 3));
        assert_eq!(slots.held(), 2);
        assert!(slots.holds("c") && !slots.holds("a"));
    }

    #[test]
    fn a_slot_held_too_long_is_freed() {
        let mut slots = RolloutSlots::new(1);
        assert!(slots.take("stuck", 0));
        assert!(!slots.take("next", MAX_HOLD_SECONDS - 1));
        assert!(slots.take("next", MAX_HOLD_SECONDS));
        assert!(!slots.holds("stuck"));
        // The expired holder asking again queues behind the others.
        assert!(!slots.take("stuck", MAX_HOLD_SECONDS + 1));
        let mut alone = RolloutSlots::new(1);
        assert!(alone.take("a", 0));
        assert!(
            alone.take("a", MAX_HOLD_SECONDS),
            "free again: it may take it anew"
        );
    }

    #[test]
    fn no_limit_means_no_pacing() {
        let mut slots = RolloutSlots::new(0);
        assert!((0..1000).all(|i| slots.take(&i.to_string(), 0)));
        assert_eq!(slots.held(), 0);
    }

    #[test]
    fn deleted_apps_free_their_slots() {
        let mut slots = RolloutSlots::new(2);
        slots.take("gone", 0);
        slots.take("here", 0);
        slots.retain(|uid| uid == "here");
        assert_eq!(slots.held(), 1);
    }

    #[test]
    fn only_the_operators_own_template_changes_wait() {
        // Re-rendered by a new operator: the spec was applied already.
        assert!(needs_slot(Some(3), Some(3), true, true));
        // The person edited the spec: it rolls at once.
        assert!(!needs_slot(Some(4), Some(3), true, true));
        // Created, or nothing about the pods changes: nothing to pace.
        assert!(!needs_slot(Some(3), Some(3), false, true));
        assert!(!needs_slot(Some(3), Some(3), true, false));
        // Never applied yet.
        assert!(!needs_slot(Some(1), None, true, true));
    }
}
