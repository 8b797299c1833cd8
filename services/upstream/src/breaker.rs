//! The per-service circuit breaker. CLOSED counts outcomes over a sliding window and opens when
//! the failure rate reaches the threshold (once at least `minimum_calls` were seen); OPEN fails
//! fast for `open_for`; then HALF_OPEN lets up to `half_open_probes` calls through at once: all
//! of them succeed → CLOSED with a fresh window, any fails → OPEN again.
//!
//! While the probes are out, further calls are told to wait for their verdict
//! ([`Rejected::awaiting_probes`]) rather than being turned away: a burst that meets a breaker
//! which lapsed into half-open during a quiet period (its service long healthy again) waits one
//! probe's round trip and then goes, instead of being answered 503 but for the probes. A service
//! still failing sees at most `half_open_probes` calls per open period, because the waiters are
//! turned away when a probe fails.

use std::time::{Duration, Instant};

use crate::window::SlidingCounts;

#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    pub failure_rate_percent: u8,
    pub minimum_calls: u32,
    pub window: Duration,
    pub open_for: Duration,
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    /// The operator's defaults (`spec.components.gateway.circuitBreaker`).
    fn default() -> Self {
        BreakerConfig {
            failure_rate_percent: 50,
            minimum_calls: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            half_open_probes: 3,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// `probing` probe calls are out; `succeeded` came back well.
    HalfOpen {
        probing: u32,
        succeeded: u32,
    },
}

impl State {
    /// For metrics and the admin view.
    pub fn name(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }
}

/// A call may not go out now; retry after this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejected {
    pub retry_after: Duration,
    /// Half-open with every probe slot taken: the verdict is one probe away, so the caller may
    /// wait for the next state change and ask again instead of giving up.
    pub awaiting_probes: bool,
}

#[derive(Clone, Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    /// (successes, failures) while closed.
    outcomes: SlidingCounts,
}

impl Breaker {
    pub fn new(config: BreakerConfig, now: Instant) -> Self {
        let outcomes = SlidingCounts::new(config.window, now);
        Breaker {
            config,
            state: State::Closed,
            outcomes,
        }
    }

    /// The state at `now` (an open breaker whose time is up reads as half-open).
    pub fn state(&mut self, now: Instant) -> State {
        if let State::Open { until } = self.state
            && now >= until
        {
            self.state = State::HalfOpen {
                probing: 0,
                succeeded: 0,
            };
        }
        self.state
    }

    /// Asks to send one call. In HALF_OPEN only the probes are admitted; the rest are told to
    /// await their verdict.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Rejected> {
        match self.state(now) {
            State::Closed => Ok(()),
            State::Open { until } => Err(Rejected {
                retry_after: until - now,
                awaiting_probes: false,
            }),
            State::HalfOpen { probing, succeeded }
                if probing + succeeded < self.config.half_open_probes =>
            {
                self.state = State::HalfOpen {
                    probing: probing + 1,
                    succeeded,
                };
                Ok(())
            }
            State::HalfOpen { .. } => Err(Rejected {
                retry_after: Duration::from_secs(1),
                awaiting_probes: true,
            }),
        }
    }

    /// An admitted call ended without a verdict on the service (the caller went away, or its
    /// own request was at fault). Closed, it counts as a call the service did not fail; a
    /// half-open probe's slot is given back for another call. True when a probe slot was
    /// freed, so a waiting call may take it.
    pub fn release(&mut self, now: Instant) -> bool {
        match self.state(now) {
            State::Closed => {
                self.outcomes.add_first(now);
                false
            }
            State::HalfOpen { probing, succeeded } if probing > 0 => {
                self.state = State::HalfOpen {
                    probing: probing - 1,
                    succeeded,
                };
                true
            }
            State::HalfOpen { .. } | State::Open { .. } => false,
        }
    }

    /// Records the outcome of an admitted call; returns the new state when it changed.
    pub fn record(&mut self, now: Instant, success: bool) -> Option<State> {
        let before = self.state(now);
        match before {
            State::Closed => {
                if success {
                    self.outcomes.add_first(now);
                } else {
                    self.outcomes.add_second(now);
                }
                let (ok, failed) = self.outcomes.totals(now);
                let calls = ok + failed;
                if calls >= u64::from(self.config.minimum_calls)
                    && failed * 100 >= u64::from(self.config.failure_rate_percent) * calls
                {
                    self.open(now);
                }
            }
            State::HalfOpen { probing, succeeded } => {
                if !success {
                    self.open(now);
                } else if succeeded + 1 >= self.config.half_open_probes {
                    self.state = State::Closed;
                    self.outcomes.clear();
                } else {
                    self.state = State::HalfOpen {
                        probing: probing.saturating_sub(1),
                        succeeded: succeeded + 1,
                    };
                }
            }
            // A call admitted before the breaker opened: it no longer matters.
            State::Open { .. } => {}
        }
        (std::mem::discriminant(&self.state) != std::mem::discriminant(&before))
            .then_some(self.state)
    }

    fn open(&mut self, now: Instant) {
        self.state = State::Open {
            until: now + self.config.open_for,
        };
        self.outcomes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            failure_rate_percent: 50,
            minimum_calls: 4,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(5),
            half_open_probes: 2,
        }
    }

    fn call(breaker: &mut Breaker, now: Instant, success: bool) -> Option<State> {
        breaker.try_acquire(now).expect("admitted");
        breaker.record(now, success)
    }

    #[test]
    fn opens_on_the_failure_rate_only_after_enough_calls() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(config(), t0);
        assert_eq!(call(&mut breaker, t0, false), None);
        assert_eq!(call(&mut breaker, t0, false), None);
        assert_eq!(call(&mut breaker, t0, true), None, "3 calls < minimum 4");
        let opened = call(&mut breaker, t0, true);
        assert!(
            matches!(opened, Some(State::Open { .. })),
            "2 of 4 failed = 50 %"
        );
        assert_eq!(
            breaker.try_acquire(t0 + Duration::from_secs(2)),
            Err(Rejected {
                retry_after: Duration::from_secs(3),
                awaiting_probes: false,
            })
        );
    }

    #[test]
    fn old_failures_leave_the_window() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(config(), t0);
        call(&mut breaker, t0, false);
        call(&mut breaker, t0, false);
        let later = t0 + Duration::from_secs(11);
        for _ in 0..4 {
            assert_eq!(call(&mut breaker, later, true), None);
        }
        assert_eq!(breaker.state(later), State::Closed);
    }

    #[test]
    fn half_open_admits_the_probes_then_closes_or_reopens() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(config(), t0);
        for _ in 0..4 {
            breaker.try_acquire(t0).unwrap();
            breaker.record(t0, false);
        }
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(
            breaker.state(t1),
            State::HalfOpen {
                probing: 0,
                succeeded: 0
            }
        );
        breaker.try_acquire(t1).unwrap();
        breaker.try_acquire(t1).unwrap();
        assert!(breaker.try_acquire(t1).is_err(), "only 2 probes");
        assert_eq!(breaker.record(t1, true), None);
        assert_eq!(breaker.record(t1, true), Some(State::Closed));

        // Open it again; this time a probe fails.
        for _ in 0..4 {
            breaker.try_acquire(t1).unwrap();
            breaker.record(t1, false);
        }
        let t2 = t1 + Duration::from_secs(5);
        breaker.try_acquire(t2).unwrap();
        assert!(
            matches!(breaker.record(t2, false), Some(State::Open { until }) if until == t2 + Duration::from_secs(5))
        );
    }

    fn open_at(breaker: &mut Breaker, now: Instant) {
        for _ in 0..4 {
            breaker.try_acquire(now).unwrap();
            breaker.record(now, false);
        }
        assert!(matches!(breaker.state(now), State::Open { .. }));
    }

    /// Issue 27: after a quiet period a half-open breaker turned away 77 of 80 orders to a
    /// service healthy for ten minutes. Now the burst beyond the probes is told to wait for
    /// their verdict, and goes once they succeed: nobody is turned away.
    #[test]
    fn a_burst_after_a_quiet_period_waits_for_the_probes_and_then_goes() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(config(), t0);
        open_at(&mut breaker, t0);
        let burst = t0 + Duration::from_secs(600);
        let verdicts: Vec<Result<(), Rejected>> =
            (0..80).map(|_| breaker.try_acquire(burst)).collect();
        let probes = verdicts.iter().filter(|v| v.is_ok()).count();
        assert_eq!(probes, 2, "the probes go at once");
        assert!(
            verdicts
                .iter()
                .filter_map(|v| v.err())
                .all(|rejected| rejected.awaiting_probes),
            "the rest are told to wait, not turned away: {verdicts:?}"
        );
        let back = burst + Duration::from_millis(20);
        assert_eq!(breaker.record(back, true), None);
        assert_eq!(breaker.record(back, true), Some(State::Closed));
        for _ in 0..78 {
            assert_eq!(breaker.try_acquire(back), Ok(()), "the waiters go");
        }
    }

    /// While the service fails, each open period lets at most `half_open_probes` calls reach it,
    /// however many callers keep asking; the waiters are turned away when a probe fails.
    #[test]
    fn a_failing_service_sees_only_the_probes() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(config(), t0);
        open_at(&mut breaker, t0);
        // For a minute, 10 callers ask every 100 ms; each call admitted fails 50 ms later.
        let mut out: Vec<Instant> = Vec::new();
        let mut reached = 0;
        let mut most_at_once = 0;
        for tick in 1..=600u64 {
            let now = t0 + Duration::from_millis(100 * tick);
            for _ in 0..10 {
                match breaker.try_acquire(now) {
                    Ok(()) => {
                        reached += 1;
                        out.push(now + Duration::from_millis(50));
                    }
                    Err(rejected) => assert!(rejected.retry_after > Duration::ZERO),
                }
            }
            most_at_once = most_at_once.max(out.len());
            let later = now + Duration::from_millis(50);
            for _ in out.drain(..) {
                if let Some(State::Open { .. }) = breaker.record(later, false) {
                    // The waiters now hear that the circuit is open again.
                    let answer = breaker.try_acquire(later).unwrap_err();
                    assert!(!answer.awaiting_probes);
                }
            }
        }
        assert!(most_at_once <= 2, "{most_at_once} probes out at once");
        // An open period is 5 s (+ the 50 ms the failed probe took): 12 periods in a minute.
        assert!(
            (2..=2 * 12).contains(&reached),
            "{reached} calls reached the failing service in a minute"
        );
    }

    #[test]
    fn a_probe_given_back_unjudged_frees_its_slot_for_the_next_caller() {
        let t0 = Instant::now();
        let mut breaker = Breaker::new(config(), t0);
        open_at(&mut breaker, t0);
        let t1 = t0 + Duration::from_secs(5);
        breaker.try_acquire(t1).unwrap();
        breaker.try_acquire(t1).unwrap();
        assert!(breaker.try_acquire(t1).unwrap_err().awaiting_probes);
        assert!(breaker.release(t1), "a probe slot is freed");
        breaker.try_acquire(t1).unwrap();
        assert_eq!(breaker.record(t1, true), None);
        assert_eq!(breaker.record(t1, true), Some(State::Closed));
        assert!(!breaker.release(t1), "closed: no probe slot to free");
    }
}
