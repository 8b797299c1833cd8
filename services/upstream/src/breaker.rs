//! The per-service circuit breaker. CLOSED counts outcomes over a sliding window and opens when
//! the failure rate reaches the threshold (once at least `minimum_calls` were seen); OPEN fails
//! fast for `open_for`; then HALF_OPEN lets `half_open_probes` calls through: all succeed →
//! CLOSED with a fresh window, any fails → OPEN again.

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
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
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
                admitted: 0,
                succeeded: 0,
            };
        }
        self.state
    }

    /// Asks to send one call. In HALF_OPEN only the probes are admitted.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Rejected> {
        match self.state(now) {
            State::Closed => Ok(()),
            State::Open { until } => Err(Rejected {
                retry_after: until - now,
            }),
            State::HalfOpen {
                admitted,
                succeeded,
            } if admitted < self.config.half_open_probes => {
                self.state = State::HalfOpen {
                    admitted: admitted + 1,
                    succeeded,
                };
                Ok(())
            }
            State::HalfOpen { .. } => Err(Rejected {
                retry_after: Duration::from_secs(1),
            }),
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
            State::HalfOpen {
                admitted,
                succeeded,
            } => {
                if !success {
                    self.open(now);
                } else if succeeded + 1 >= self.config.half_open_probes {
                    self.state = State::Closed;
                    self.outcomes.clear();
                } else {
                    self.state = State::HalfOpen {
                        admitted,
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
                retry_after: Duration::from_secs(3)
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
                admitted: 0,
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
}
