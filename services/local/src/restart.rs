//! When to restart a component that died: at once the first time, then after a delay that
//! doubles with each death in a row (1 s, 2 s, 4 s … at most 30 s), so a component that crashes
//! on start does not spin. One that then ran for a minute starts the count again. Plain state
//! with the clock passed in.

use std::time::{Duration, Instant};

const FIRST_DELAY: Duration = Duration::from_secs(1);
const MAX_DELAY: Duration = Duration::from_secs(30);
/// A run this long counts as healthy: the next death starts the backoff again.
const STABLE_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct Restarts {
    /// Deaths in a row, each within [`STABLE_AFTER`] of its start.
    in_a_row: u32,
    started_at: Instant,
}

impl Restarts {
    pub fn new(started_at: Instant) -> Self {
        Restarts {
            in_a_row: 0,
            started_at,
        }
    }

    /// The component died at `now`: how long to wait before starting it again.
    pub fn died(&mut self, now: Instant) -> Duration {
        if now.saturating_duration_since(self.started_at) >= STABLE_AFTER {
            self.in_a_row = 0;
        }
        let delay = if self.in_a_row == 0 {
            Duration::ZERO
        } else {
            FIRST_DELAY
                .saturating_mul(1 << (self.in_a_row - 1).min(16))
                .min(MAX_DELAY)
        };
        self.in_a_row = self.in_a_row.saturating_add(1);
        delay
    }

    /// It was started again at `now`.
    pub fn started(&mut self, now: Instant) {
        self.started_at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deaths_in_a_row_back_off_and_a_long_run_forgives_them() {
        let t0 = Instant::now();
        let mut restarts = Restarts::new(t0);
        let mut now = t0 + Duration::from_secs(5);
        let mut delays = Vec::new();
        for _ in 0..8 {
            let delay = restarts.died(now);
            delays.push(delay.as_secs());
            now += delay;
            restarts.started(now);
            now += Duration::from_secs(1);
        }
        assert_eq!(delays, [0, 1, 2, 4, 8, 16, 30, 30]);
        now += STABLE_AFTER;
        assert_eq!(restarts.died(now), Duration::ZERO);
    }
}
