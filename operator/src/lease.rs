//! The decisions of leader election, without I/O: given what this candidate read from the
//! coordination Lease and when (on its own monotonic clock), what to do next — read, claim,
//! renew, wait or step down. [`crate::leader`] carries the steps out against the API server.
//!
//! The rules, those of client-go's `leaderelection.go`:
//! - **Every write is conditional.** A claim, a renewal and a release replace the Lease carrying
//!   the `metadata.resourceVersion` this candidate last saw, so of two candidates racing on one
//!   version the API server lets one win and answers 409 to the other, which reads again. Nothing
//!   is ever forced.
//! - **Expiry is measured on the observer's clock.** A candidate takes a Lease someone holds only
//!   once it has seen the same resourceVersion, unchanged, for the lease duration of its *own*
//!   time. The holder's `renewTime` is never compared with this clock, so skew between nodes
//!   cannot depose a live leader. A record naming this candidate's identity counts as someone
//!   else's unless this process wrote it: a restarted process waits like everyone else.
//! - **A leader that cannot renew steps down before anyone may take over.** Its term ends
//!   `renew_deadline` after it *sent* its last successful write. A standby starts counting only
//!   once that write has landed, and waits `lease_duration > renew_deadline`, so the old leader
//!   has stopped at least `lease_duration - renew_deadline` before a standby may claim.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use tokio::time::Instant;

/// The longest lease accepted, from the flags and from a record someone else wrote.
pub const MAX_LEASE_DURATION: Duration = Duration::from_secs(3600);

/// How long a term lasts and how often it is renewed (client-go's meaning and defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    lease_duration: Duration,
    renew_deadline: Duration,
    retry_period: Duration,
}

/// Why a [`Timing`] was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error("the lease duration must be between 1 s and {max:?}, not {0:?}", max = MAX_LEASE_DURATION)]
    LeaseDuration(Duration),
    #[error(
        "the renew deadline ({renew:?}) must be shorter than the lease duration ({lease:?}): a leader has to stop before a standby may take over"
    )]
    RenewDeadline { renew: Duration, lease: Duration },
    #[error(
        "the retry period ({retry:?}) must be longer than zero and shorter than the renew deadline ({renew:?}), so a leader gets more than one try at renewing"
    )]
    RetryPeriod { retry: Duration, renew: Duration },
}

impl Timing {
    /// client-go's defaults: a 15 s lease, renewed every 2 s, given up 10 s after the last renewal.
    pub const DEFAULT: Timing = Timing {
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    };

    pub fn new(
        lease_duration: Duration,
        renew_deadline: Duration,
        retry_period: Duration,
    ) -> Result<Self, TimingError> {
        if lease_duration < Duration::from_secs(1) || lease_duration > MAX_LEASE_DURATION {
            return Err(TimingError::LeaseDuration(lease_duration));
        }
        if renew_deadline >= lease_duration {
            return Err(TimingError::RenewDeadline {
                renew: renew_deadline,
                lease: lease_duration,
            });
        }
        if retry_period.is_zero() || retry_period >= renew_deadline {
            return Err(TimingError::RetryPeriod {
                retry: retry_period,
                renew: renew_deadline,
            });
        }
        Ok(Self {
            lease_duration,
            renew_deadline,
            retry_period,
        })
    }

    pub fn lease_duration(&self) -> Duration {
        self.lease_duration
    }

    pub fn renew_deadline(&self) -> Duration {
        self.renew_deadline
    }

    pub fn retry_period(&self) -> Duration {
        self.retry_period
    }

    /// The longest one API call may take: half the renew deadline, so a hung call leaves a
    /// leader time for another try before its term ends.
    pub fn call_timeout(&self) -> Duration {
        self.renew_deadline / 2
    }

    /// How long past the end of its term a process may still be running before the watchdog
    /// ends it: half the margin between the renew deadline and the lease duration (so it is
    /// gone well before a standby may claim), at most a second.
    pub fn watchdog_grace(&self) -> Duration {
        ((self.lease_duration - self.renew_deadline) / 2).min(Duration::from_secs(1))
    }

    /// `leaseDurationSeconds` as written: whole seconds, rounded up so a reader never waits less
    /// than this candidate's term allows.
    fn lease_seconds(&self) -> i32 {
        let secs =
            self.lease_duration.as_secs() + u64::from(self.lease_duration.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }
}

impl Default for Timing {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The two clocks a decision reads: the monotonic one decides, the wall clock only fills in
/// `renewTime`/`acquireTime` for people reading the Lease.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub instant: Instant,
    pub wall: jiff::Timestamp,
}

impl Now {
    pub fn current() -> Self {
        Self {
            instant: Instant::now(),
            wall: jiff::Timestamp::now(),
        }
    }
}

/// What to do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Read the Lease (a quorum GET).
    Read,
    /// Create the Lease, which does not exist yet (the API server refuses a second create).
    Create(Lease),
    /// Replace the Lease; `metadata.resourceVersion` is always set, so the write fails with 409
    /// if anyone wrote since.
    Replace(Lease),
    /// Nothing to do before this instant.
    Sleep(Instant),
    /// This process's term is over: stop writing. Every later step is this one.
    StepDown,
}

/// What the API server answered to the last [`Step::Read`], [`Step::Create`] or
/// [`Step::Replace`].
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// The Lease as stored: read, or written by the last step.
    Lease(Box<Lease>),
    /// 404: there is no such Lease.
    NotFound,
    /// 409: someone wrote since our read (or created the Lease first).
    Conflict,
    /// Anything else: an error status, a transport error, no answer within the call's deadline.
    Failed,
}

/// Whether this process leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Standby,
    Leading,
    /// Led and stepped down (or never can again): the process must stop writing and exit.
    SteppedDown,
}

/// One candidate's view of the election.
#[derive(Debug)]
pub struct Elector {
    identity: String,
    namespace: String,
    name: String,
    timing: Timing,
    seen: Option<Seen>,
    term: Option<Term>,
    phase: Phase,
    stepped_down: bool,
}

/// The last record seen and since when (on this clock) it has been the same.
#[derive(Debug)]
struct Seen {
    /// None: the Lease does not exist.
    lease: Option<Lease>,
    version: Option<String>,
    since: Instant,
}

/// This process's term as leader.
#[derive(Debug)]
struct Term {
    /// When it ends unless renewed: `renew_deadline` after the last successful write was sent.
    deadline: Instant,
    /// The Lease as the API server stored our last write (its resourceVersion is what the next
    /// renewal is conditional on).
    lease: Lease,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Next: read the Lease.
    Read,
    /// A read is in flight.
    Reading,
    /// A fresh read is in; decide on it.
    Decide,
    /// Nothing to do until then; then a leader renews, a standby reads.
    Idle(Instant),
    /// A write sent at this instant is in flight.
    Writing(Instant),
}

impl Elector {
    pub fn new(
        identity: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
        timing: Timing,
    ) -> Self {
        Self {
            identity: identity.into(),
            namespace: namespace.into(),
            name: name.into(),
            timing,
            seen: None,
            term: None,
            phase: Phase::Read,
            stepped_down: false,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// The holder named by the last record seen.
    pub fn holder(&self) -> Option<&str> {
        self.seen.as_ref()?.lease.as_ref().and_then(holder)
    }

    pub fn role(&self) -> Role {
        if self.stepped_down {
            Role::SteppedDown
        } else if self.term.is_some() {
            Role::Leading
        } else {
            Role::Standby
        }
    }

    /// When the current term ends unless renewed; None when not leading.
    pub fn term_deadline(&self) -> Option<Instant> {
        self.term.as_ref().map(|t| t.deadline)
    }

    /// By when the call for the current step must have answered: [`Timing::call_timeout`] from
    /// now, and never after the end of the term, so no write of a deposed leader is still being
    /// waited for.
    pub fn call_deadline(&self, now: Instant) -> Instant {
        let own = now + self.timing.call_timeout();
        self.term_deadline().map_or(own, |end| own.min(end))
    }

    /// The next step. After a Read, Create or Replace, report the API server's answer with
    /// [`Elector::answer`] before asking again.
    pub fn next(&mut self, now: Now) -> Step {
        if self.stepped_down {
            return Step::StepDown;
        }
        if self.term_deadline().is_some_and(|end| now.instant >= end) {
            return self.step_down();
        }
        match self.phase {
            Phase::Read => {
                self.phase = Phase::Reading;
                Step::Read
            }
            // The answer was never reported: the call's outcome is unknown, which is a failure.
            Phase::Reading | Phase::Writing(_) => {
                self.answer(Answer::Failed, now.instant);
                self.next(now)
            }
            Phase::Decide => self.decide(now),
            Phase::Idle(until) if now.instant < until => {
                Step::Sleep(self.term_deadline().map_or(until, |end| until.min(end)))
            }
            Phase::Idle(_) => match &self.term {
                // The leader renews what it last wrote, without reading first; a 409 sends it to
                // read and decide again.
                Some(term) => {
                    let lease = renewed(&term.lease, &self.identity, self.timing, now.wall);
                    self.phase = Phase::Writing(now.instant);
                    Step::Replace(lease)
                }
                None => {
                    self.phase = Phase::Reading;
                    Step::Read
                }
            },
        }
    }

    /// Takes in the API server's answer to the last step, received at `now`.
    pub fn answer(&mut self, answer: Answer, now: Instant) {
        let retry = now + self.timing.retry_period;
        match (self.phase, answer) {
            (Phase::Reading, Answer::Lease(lease)) => {
                self.observe(Some(*lease), now);
                self.phase = Phase::Decide;
            }
            (Phase::Reading, Answer::NotFound) => {
                self.observe(None, now);
                self.phase = Phase::Decide;
            }
            (Phase::Reading, Answer::Conflict | Answer::Failed) => self.phase = Phase::Idle(retry),
            (Phase::Writing(sent), Answer::Lease(lease)) => {
                // An answer after the term ended comes too late: the process must already have
                // stopped writing, whatever the API server stored.
                if self.stepped_down || self.term_deadline().is_some_and(|end| now >= end) {
                    self.step_down();
                    return;
                }
                self.observe(Some((*lease).clone()), now);
                self.term = Some(Term {
                    deadline: sent + self.timing.renew_deadline,
                    lease: *lease,
                });
                self.phase = Phase::Idle(retry);
            }
            // Someone wrote since our read, or the Lease is gone: read again, never force.
            (Phase::Writing(_), Answer::Conflict | Answer::NotFound) => self.phase = Phase::Read,
            // Unknown whether it landed: try again after the retry period (a leader renews at
            // the version it knows; if the failed write did land, that answers 409 and it reads).
            (Phase::Writing(_), Answer::Failed) => self.phase = Phase::Idle(retry),
            // No call was in flight: nothing to take in.
            (Phase::Read | Phase::Decide | Phase::Idle(_), _) => {}
        }
    }

    /// The write that gives the Lease up, if this process still holds it: conditional on the
    /// version of our last write, so it fails (409) rather than clear someone else's claim.
    /// After it, this elector steps down whatever the answer.
    pub fn release(&mut self, now: Now) -> Option<Lease> {
        let term = self.term.as_ref()?;
        if self.stepped_down || now.instant >= term.deadline {
            self.step_down();
            return None;
        }
        let mut lease = for_write(&term.lease);
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = Some(MicroTime(now.wall));
        self.step_down();
        Some(lease)
    }

    fn step_down(&mut self) -> Step {
        self.stepped_down = true;
        self.term = None;
        Step::StepDown
    }

    fn observe(&mut self, lease: Option<Lease>, now: Instant) {
        let version = lease
            .as_ref()
            .and_then(|l| l.metadata.resource_version.clone());
        match &mut self.seen {
            Some(seen) if seen.lease.is_some() == lease.is_some() && seen.version == version => {
                seen.lease = lease;
            }
            _ => {
                self.seen = Some(Seen {
                    lease,
                    version,
                    since: now,
                });
            }
        }
    }

    fn decide(&mut self, now: Now) -> Step {
        let leading = self.term.is_some();
        let Some(seen) = &self.seen else {
            self.phase = Phase::Read;
            return self.next(now);
        };
        let Some(lease) = &seen.lease else {
            if leading {
                // Our Lease was deleted: someone may be creating it right now.
                return self.step_down();
            }
            self.phase = Phase::Writing(now.instant);
            return Step::Create(created(
                &self.namespace,
                &self.name,
                &self.identity,
                self.timing,
                now.wall,
            ));
        };
        if seen.version.is_none() {
            // A conditional write needs the version; without one, wait and read again.
            return self.idle(now.instant + self.timing.retry_period);
        }
        let holder = holder(lease);
        if leading {
            if holder != Some(self.identity.as_str()) {
                return self.step_down();
            }
            let lease = renewed(lease, &self.identity, self.timing, now.wall);
            self.phase = Phase::Writing(now.instant);
            return Step::Replace(lease);
        }
        if holder.is_some() {
            let expires = seen.since + record_duration(lease, self.timing);
            if now.instant < expires {
                return self.idle(now.instant + self.timing.retry_period);
            }
        }
        let lease = acquired(lease, &self.identity, self.timing, now.wall);
        self.phase = Phase::Writing(now.instant);
        Step::Replace(lease)
    }

    fn idle(&mut self, until: Instant) -> Step {
        self.phase = Phase::Idle(until);
        Step::Sleep(until)
    }
}

/// The holder a record names; an empty name is no holder.
fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()?
        .holder_identity
        .as_deref()
        .filter(|h| !h.is_empty())
}

/// How long a record someone else holds lasts after we saw it: the longer of the duration it
/// declares (bounded) and ours, so neither a holder with a longer lease nor one that declares
/// none is cut short.
fn record_duration(lease: &Lease, timing: Timing) -> Duration {
    let declared = lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map_or(Duration::ZERO, Duration::from_secs)
        .min(MAX_LEASE_DURATION);
    declared.max(timing.lease_duration)
}

/// The object to send back: what was read, minus the managed fields (the API server keeps its
/// own), keeping resourceVersion as the write's precondition.
fn for_write(lease: &Lease) -> Lease {
    let mut lease = lease.clone();
    lease.metadata.managed_fields = None;
    lease
}

fn created(
    namespace: &str,
    name: &str,
    identity: &str,
    timing: Timing,
    wall: jiff::Timestamp,
) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(identity.to_owned()),
            lease_duration_seconds: Some(timing.lease_seconds()),
            acquire_time: Some(MicroTime(wall)),
            renew_time: Some(MicroTime(wall)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// A claim of a Lease someone else held (or nobody): a new term.
fn acquired(lease: &Lease, identity: &str, timing: Timing, wall: jiff::Timestamp) -> Lease {
    let mut lease = for_write(lease);
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
    spec.holder_identity = Some(identity.to_owned());
    spec.lease_duration_seconds = Some(timing.lease_seconds());
    spec.acquire_time = Some(MicroTime(wall));
    spec.renew_time = Some(MicroTime(wall));
    lease
}

/// A renewal of our own term.
fn renewed(lease: &Lease, identity: &str, timing: Timing, wall: jiff::Timestamp) -> Lease {
    let mut lease = for_write(lease);
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(identity.to_owned());
    spec.lease_duration_seconds = Some(timing.lease_seconds());
    spec.renew_time = Some(MicroTime(wall));
    lease
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ME: &str = "operator-a";
    const OTHER: &str = "operator-b";

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A clock the test moves by hand; the wall clock starts at an arbitrary fixed time.
    struct Clock {
        start: Instant,
        elapsed: Duration,
    }

    impl Clock {
        fn new() -> Self {
            Self {
                start: Instant::now(),
                elapsed: Duration::ZERO,
            }
        }
        fn now(&self) -> Now {
            Now {
                instant: self.start + self.elapsed,
                wall: jiff::Timestamp::from_second(1_790_000_000).unwrap()
                    + jiff::SignedDuration::try_from(self.elapsed).unwrap(),
            }
        }
        fn instant(&self) -> Instant {
            self.now().instant
        }
        fn advance(&mut self, by: Duration) {
            self.elapsed += by;
        }
        /// Moves to `at` (a Sleep's end).
        fn sleep_until(&mut self, at: Instant) {
            assert!(at >= self.instant(), "sleeping into the past");
            self.elapsed = at - self.start;
        }
    }

    /// The API server's answer carrying `lease`.
    fn got(lease: Lease) -> Answer {
        Answer::Lease(Box::new(lease))
    }

    fn elector() -> Elector {
        Elector::new(ME, "msa-system", "msa-operator", Timing::DEFAULT)
    }

    /// A Lease as the API server returns it, held by `holder` with `renewTime` at `renew` (a
    /// wall time that may be anything: another node's clock).
    fn stored(version: &str, holder: Option<&str>, renew: jiff::Timestamp) -> Lease {
        serde_json::from_value(json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": "msa-operator",
                "namespace": "msa-system",
                "resourceVersion": version,
                "labels": {"team": "platform"},
                "managedFields": [{"manager": "someone", "operation": "Update"}],
            },
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": 15,
                "renewTime": MicroTime(renew),
                "acquireTime": MicroTime(renew),
                "leaseTransitions": 3,
            },
        }))
        .unwrap()
    }

    /// The write a step carries, with the version it is conditional on.
    fn written(step: &Step) -> (&Lease, Option<&str>) {
        match step {
            Step::Replace(lease) | Step::Create(lease) => {
                (lease, lease.metadata.resource_version.as_deref())
            }
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn spec(lease: &Lease) -> &LeaseSpec {
        lease.spec.as_ref().unwrap()
    }

    /// The API server storing a write: a new version.
    fn store(mut lease: Lease, version: &str) -> Lease {
        lease.metadata.resource_version = Some(version.to_owned());
        lease
    }

    /// Reads, gets `lease`, and returns the decision.
    fn read(elector: &mut Elector, clock: &Clock, lease: Option<Lease>) -> Step {
        assert_eq!(elector.next(clock.now()), Step::Read);
        elector.answer(lease.map_or(Answer::NotFound, got), clock.instant());
        elector.next(clock.now())
    }

    /// A standby that saw `holder` at version 7 and keeps reading the same record, until it
    /// claims: returns how long (on its clock) after the first read it claimed.
    fn time_to_claim(holder_renew: jiff::Timestamp) -> Duration {
        let mut clock = Clock::new();
        let mut e = elector();
        let first = clock.instant();
        let record = stored("7", Some(OTHER), holder_renew);
        let mut step = read(&mut e, &clock, Some(record.clone()));
        for _ in 0..100 {
            match step {
                Step::Sleep(until) => {
                    clock.sleep_until(until);
                    step = read(&mut e, &clock, Some(record.clone()));
                }
                Step::Replace(ref lease) => {
                    assert_eq!(lease.metadata.resource_version.as_deref(), Some("7"));
                    return clock.instant() - first;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("never claimed");
    }

    #[test]
    fn timing_is_validated_like_client_go() {
        assert_eq!(
            Timing::new(secs(15), secs(10), secs(2)).unwrap(),
            Timing::DEFAULT
        );
        assert!(matches!(
            Timing::new(secs(10), secs(10), secs(2)),
            Err(TimingError::RenewDeadline { .. })
        ));
        assert!(matches!(
            Timing::new(secs(15), secs(10), secs(10)),
            Err(TimingError::RetryPeriod { .. })
        ));
        assert!(matches!(
            Timing::new(secs(15), secs(10), Duration::ZERO),
            Err(TimingError::RetryPeriod { .. })
        ));
        assert!(matches!(
            Timing::new(Duration::ZERO, Duration::ZERO, Duration::ZERO),
            Err(TimingError::LeaseDuration(_))
        ));
        assert!(matches!(
            Timing::new(secs(7200), secs(10), secs(2)),
            Err(TimingError::LeaseDuration(_))
        ));
        assert!(Timing::DEFAULT.call_timeout() < Timing::DEFAULT.renew_deadline());
    }

    #[test]
    fn the_watchdog_ends_a_stuck_leader_before_a_standby_may_claim() {
        assert_eq!(Timing::DEFAULT.watchdog_grace(), secs(1));
        let tight = Timing::new(secs(3), secs(2), secs(1)).unwrap();
        assert_eq!(tight.watchdog_grace(), Duration::from_millis(500));
    }

    #[test]
    fn a_missing_lease_is_created_and_its_creator_leads() {
        let clock = Clock::new();
        let mut e = elector();
        let step = read(&mut e, &clock, None);
        let (lease, version) = written(&step);
        assert!(matches!(step, Step::Create(_)));
        assert_eq!(
            version, None,
            "a create needs no version: a second one fails"
        );
        assert_eq!(spec(lease).holder_identity.as_deref(), Some(ME));
        assert_eq!(spec(lease).lease_duration_seconds, Some(15));
        assert_eq!(e.role(), Role::Standby, "not before the API server said so");
        e.answer(got(store(lease.clone(), "1")), clock.instant());
        assert_eq!(e.role(), Role::Leading);
        assert_eq!(e.term_deadline(), Some(clock.instant() + secs(10)));
    }

    #[test]
    fn a_free_lease_is_claimed_at_the_version_read_keeping_its_metadata() {
        let clock = Clock::new();
        let mut e = elector();
        let free = stored("41", None, clock.now().wall);
        let step = read(&mut e, &clock, Some(free));
        let (lease, version) = written(&step);
        assert_eq!(version, Some("41"));
        assert_eq!(spec(lease).holder_identity.as_deref(), Some(ME));
        assert_eq!(spec(lease).lease_transitions, Some(4));
        assert_eq!(lease.metadata.labels.as_ref().unwrap()["team"], "platform");
        assert_eq!(lease.metadata.managed_fields, None);
    }

    #[test]
    fn a_standby_never_takes_a_lease_it_saw_change_within_the_lease_duration_whatever_the_holders_clock()
     {
        let wall = Clock::new().now().wall;
        let hour = jiff::SignedDuration::from_hours(1);
        for renew in [wall, wall + hour, wall - hour] {
            let waited = time_to_claim(renew);
            assert!(
                waited >= secs(15),
                "claimed after {waited:?} with the holder's renewTime at {renew}"
            );
            // And not much later: it re-reads every retry period.
            assert!(waited <= secs(15) + secs(2), "claimed after {waited:?}");
        }
    }

    #[test]
    fn a_renewal_seen_restarts_the_standbys_wait() {
        let mut clock = Clock::new();
        let mut e = elector();
        let wall = clock.now().wall;
        // Version 7 seen at 0 s; the holder renews (version 8) at 10 s; the record stays
        // unchanged after that.
        let mut version = "7";
        let mut claimed_at = None;
        let mut step = read(&mut e, &clock, Some(stored(version, Some(OTHER), wall)));
        while claimed_at.is_none() {
            match step {
                Step::Sleep(until) => {
                    clock.sleep_until(until);
                    if clock.elapsed >= secs(10) {
                        version = "8";
                    }
                    step = read(&mut e, &clock, Some(stored(version, Some(OTHER), wall)));
                }
                Step::Replace(ref lease) => {
                    assert_eq!(lease.metadata.resource_version.as_deref(), Some("8"));
                    claimed_at = Some(clock.elapsed);
                }
                ref other => panic!("unexpected {other:?}"),
            }
        }
        assert!(claimed_at.unwrap() >= secs(10 + 15), "{claimed_at:?}");
    }

    #[test]
    fn a_record_with_a_longer_declared_duration_is_waited_out_in_full() {
        let mut clock = Clock::new();
        let mut e = elector();
        let mut record = stored("7", Some(OTHER), clock.now().wall);
        record.spec.as_mut().unwrap().lease_duration_seconds = Some(60);
        let mut step = read(&mut e, &clock, Some(record.clone()));
        while let Step::Sleep(until) = step {
            clock.sleep_until(until);
            step = read(&mut e, &clock, Some(record.clone()));
        }
        assert!(clock.elapsed >= secs(60), "{:?}", clock.elapsed);
    }

    #[test]
    fn a_record_naming_this_identity_that_this_process_did_not_write_is_waited_out() {
        // A restarted process with the same name (a pod's container restart) must not assume
        // its predecessor is gone.
        let mut clock = Clock::new();
        let mut e = elector();
        let record = stored("7", Some(ME), clock.now().wall);
        let mut step = read(&mut e, &clock, Some(record.clone()));
        while let Step::Sleep(until) = step {
            clock.sleep_until(until);
            step = read(&mut e, &clock, Some(record.clone()));
        }
        assert!(clock.elapsed >= secs(15), "{:?}", clock.elapsed);
        assert_eq!(spec(written(&step).0).lease_transitions, Some(4));
    }

    #[test]
    fn of_two_candidates_racing_on_one_version_only_the_one_the_api_server_accepts_leads() {
        let clock = Clock::new();
        let free = stored("41", None, clock.now().wall);
        let mut a = Elector::new("a", "msa-system", "msa-operator", Timing::DEFAULT);
        let mut b = Elector::new("b", "msa-system", "msa-operator", Timing::DEFAULT);
        let claim_a = read(&mut a, &clock, Some(free.clone()));
        let claim_b = read(&mut b, &clock, Some(free));
        assert_eq!(written(&claim_a).1, Some("41"));
        assert_eq!(written(&claim_b).1, Some("41"));
        // The API server stores a's write first; b's, conditional on 41, is refused.
        let stored_a = store(written(&claim_a).0.clone(), "42");
        a.answer(got(stored_a.clone()), clock.instant());
        b.answer(Answer::Conflict, clock.instant());
        assert_eq!(a.role(), Role::Leading);
        assert_eq!(b.role(), Role::Standby);
        // b reads again (it does not force) and waits out a's fresh record.
        let next = read(&mut b, &clock, Some(stored_a));
        assert!(matches!(next, Step::Sleep(_)), "{next:?}");
        assert_eq!(b.holder(), Some("a"));
    }

    #[test]
    fn a_leader_renews_every_retry_period_at_the_version_of_its_last_write() {
        let mut clock = Clock::new();
        let mut e = elector();
        let step = read(&mut e, &clock, None);
        e.answer(got(store(written(&step).0.clone(), "1")), clock.instant());
        let Step::Sleep(until) = e.next(clock.now()) else {
            panic!()
        };
        assert_eq!(until, clock.instant() + secs(2));
        clock.sleep_until(until);
        let renewal = e.next(clock.now());
        let (lease, version) = written(&renewal);
        assert!(matches!(renewal, Step::Replace(_)));
        assert_eq!(version, Some("1"));
        assert_eq!(spec(lease).holder_identity.as_deref(), Some(ME));
        assert_eq!(spec(lease).lease_transitions, Some(0));
        assert_eq!(spec(lease).renew_time, Some(MicroTime(clock.now().wall)));
        // Success moves the deadline to renew_deadline after this write was sent.
        let sent = clock.instant();
        clock.advance(Duration::from_millis(300));
        e.answer(got(store(lease.clone(), "2")), clock.instant());
        assert_eq!(e.term_deadline(), Some(sent + secs(10)));
    }

    #[test]
    fn a_leader_that_cannot_renew_steps_down_at_its_deadline_and_writes_nothing_after() {
        let mut clock = Clock::new();
        let mut e = elector();
        let step = read(&mut e, &clock, None);
        let acquired_at = clock.instant();
        e.answer(got(store(written(&step).0.clone(), "1")), clock.instant());
        // Every renewal fails (no answer within the call deadline).
        let mut writes_after_deadline = 0;
        let step_down_at = loop {
            match e.next(clock.now()) {
                Step::Sleep(until) => clock.sleep_until(until),
                Step::Replace(_) => {
                    if clock.instant() >= acquired_at + secs(10) {
                        writes_after_deadline += 1;
                    }
                    let deadline = e.call_deadline(clock.instant());
                    assert!(deadline <= acquired_at + secs(10));
                    clock.sleep_until(deadline);
                    e.answer(Answer::Failed, clock.instant());
                }
                Step::StepDown => break clock.instant(),
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(writes_after_deadline, 0);
        assert_eq!(step_down_at, acquired_at + secs(10));
        assert_eq!(e.role(), Role::SteppedDown);
        assert_eq!(e.next(clock.now()), Step::StepDown, "for good");
        assert_eq!(e.release(clock.now()), None, "nothing to release");
    }

    #[test]
    fn a_leader_whose_renewal_conflicts_reads_and_steps_down_if_someone_else_holds_it() {
        let mut clock = Clock::new();
        let mut e = elector();
        let step = read(&mut e, &clock, None);
        e.answer(got(store(written(&step).0.clone(), "1")), clock.instant());
        clock.advance(secs(2));
        assert!(matches!(e.next(clock.now()), Step::Replace(_)));
        e.answer(Answer::Conflict, clock.instant());
        let taken = stored("5", Some(OTHER), clock.now().wall);
        assert_eq!(read(&mut e, &clock, Some(taken)), Step::StepDown);
        assert_eq!(e.role(), Role::SteppedDown);
    }

    #[test]
    fn a_leader_whose_renewal_conflicts_with_an_edit_of_its_own_record_renews_at_the_new_version() {
        let mut clock = Clock::new();
        let mut e = elector();
        let step = read(&mut e, &clock, None);
        let mine = store(written(&step).0.clone(), "1");
        e.answer(got(mine.clone()), clock.instant());
        clock.advance(secs(2));
        assert!(matches!(e.next(clock.now()), Step::Replace(_)));
        e.answer(Answer::Conflict, clock.instant());
        let relabelled = store(mine, "3");
        let step = read(&mut e, &clock, Some(relabelled));
        assert_eq!(written(&step).1, Some("3"));
        assert_eq!(e.role(), Role::Leading);
    }

    #[test]
    fn a_leader_steps_down_when_its_lease_is_deleted_or_cleared() {
        for after in [None, Some(stored("9", None, Clock::new().now().wall))] {
            let mut clock = Clock::new();
            let mut e = elector();
            let step = read(&mut e, &clock, None);
            e.answer(got(store(written(&step).0.clone(), "1")), clock.instant());
            clock.advance(secs(2));
            assert!(matches!(e.next(clock.now()), Step::Replace(_)));
            e.answer(Answer::Conflict, clock.instant());
            assert_eq!(
                read(&mut e, &clock, after.clone()),
                Step::StepDown,
                "{after:?}"
            );
        }
    }

    #[test]
    fn a_standby_whose_claim_conflicts_reads_again() {
        let clock = Clock::new();
        let mut e = elector();
        let step = read(&mut e, &clock, Some(stored("41", None, clock.now().wall)));
        assert!(matches!(step, Step::Replace(_)));
        e.answer(Answer::Conflict, clock.instant());
        assert_eq!(e.next(clock.now()), Step::Read);
    }

    #[test]
    fn a_standby_whose_create_loses_to_another_reads_again() {
        let clock = Clock::new();
        let mut e = elector();
        assert!(matches!(read(&mut e, &clock, None), Step::Create(_)));
        e.answer(Answer::Conflict, clock.instant());
        assert_eq!(e.next(clock.now()), Step::Read);
        assert_eq!(e.role(), Role::Standby);
    }

    #[test]
    fn calls_never_outlast_the_term() {
        let clock = Clock::new();
        let mut e = elector();
        assert_eq!(
            e.call_deadline(clock.instant()),
            clock.instant() + secs(5),
            "a standby: the call timeout"
        );
        let step = read(&mut e, &clock, None);
        e.answer(got(store(written(&step).0.clone(), "1")), clock.instant());
        let late = clock.instant() + secs(8);
        assert_eq!(e.call_deadline(late), clock.instant() + secs(10));
    }

    #[test]
    fn a_leader_sleeping_wakes_at_its_deadline_at_the_latest() {
        let timing = Timing::new(secs(15), secs(3), secs(2)).unwrap();
        let mut clock = Clock::new();
        let mut e = Elector::new(ME, "ns", "lease", timing);
        let step = read(&mut e, &clock, None);
        let sent = clock.instant();
        // The write took 2.5 s to answer: the renewal would be due after the deadline.
        clock.advance(Duration::from_millis(2500));
        e.answer(got(store(written(&step).0.clone(), "1")), clock.instant());
        assert_eq!(e.next(clock.now()), Step::Sleep(sent + secs(3)));
    }

    #[test]
    fn release_is_conditional_on_the_version_held_and_only_while_leading() {
        let mut clock = Clock::new();
        let mut standby = elector();
        let _ = read(
            &mut standby,
            &clock,
            Some(stored("7", Some(OTHER), clock.now().wall)),
        );
        assert_eq!(
            standby.release(clock.now()),
            None,
            "a standby holds nothing"
        );

        let mut e = elector();
        let step = read(&mut e, &clock, None);
        e.answer(got(store(written(&step).0.clone(), "1")), clock.instant());
        clock.advance(secs(1));
        let release = e.release(clock.now()).expect("the leader releases");
        assert_eq!(release.metadata.resource_version.as_deref(), Some("1"));
        assert_eq!(spec(&release).holder_identity, None);
        assert_eq!(spec(&release).lease_transitions, Some(0));
        assert_eq!(e.role(), Role::SteppedDown);
        assert_eq!(e.next(clock.now()), Step::StepDown);
    }

    #[test]
    fn the_lease_duration_is_written_in_whole_seconds_rounded_up() {
        let timing = Timing::new(
            Duration::from_millis(1500),
            secs(1),
            Duration::from_millis(500),
        )
        .unwrap();
        assert_eq!(timing.lease_seconds(), 2);
    }
}
