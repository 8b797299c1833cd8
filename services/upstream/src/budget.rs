//! The retry budget: retries may add at most `percent` of the requests seen over the window, plus
//! a floor of `min_per_second` so a quiet service can still retry. (tower's `TpsBudget` does the
//! same but reads the clock itself; this one takes the time, so tests are deterministic.)

use std::time::{Duration, Instant};

use crate::window::SlidingCounts;

#[derive(Clone, Debug)]
pub struct RetryBudget {
    percent: u32,
    min_per_second: u32,
    window: Duration,
    /// (requests, retries)
    counts: SlidingCounts,
}

impl RetryBudget {
    pub fn new(percent: u32, min_per_second: u32, window: Duration, now: Instant) -> Self {
        RetryBudget {
            percent,
            min_per_second,
            window,
            counts: SlidingCounts::new(window, now),
        }
    }

    /// Every first attempt deposits.
    pub fn deposit(&mut self, now: Instant) {
        self.counts.add_first(now);
    }

    /// A retry withdraws, if the budget allows; false means do not retry.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let (requests, retries) = self.counts.totals(now);
        let floor = u64::from(self.min_per_second) * self.window.as_secs().max(1);
        let allowed = floor + requests * u64::from(self.percent) / 100;
        if retries < allowed {
            self.counts.add_second(now);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_a_share_of_requests_plus_a_floor() {
        let t0 = Instant::now();
        let mut budget = RetryBudget::new(20, 1, Duration::from_secs(10), t0);
        // Floor: 1/s over 10 s = 10 retries with no traffic at all.
        assert_eq!((0..15).filter(|_| budget.try_withdraw(t0)).count(), 10);
        // 100 requests add 20 more.
        for _ in 0..100 {
            budget.deposit(t0);
        }
        assert_eq!((0..30).filter(|_| budget.try_withdraw(t0)).count(), 20);
        // A window later, the spent retries have aged out.
        assert!(budget.try_withdraw(t0 + Duration::from_secs(11)));
    }
}
