//! Counts of events over the last `window`, kept in `BUCKETS` buckets so memory stays constant
//! however many events arrive. Events older than the window fall out a bucket at a time.

use std::time::{Duration, Instant};

const BUCKETS: usize = 10;

/// Per-bucket counters of two kinds of events (for example successes and failures).
#[derive(Clone, Debug)]
pub struct SlidingCounts {
    bucket_width: Duration,
    origin: Instant,
    /// (bucket index since origin, first count, second count)
    buckets: [(u64, u64, u64); BUCKETS],
}

impl SlidingCounts {
    pub fn new(window: Duration, now: Instant) -> Self {
        let bucket_width = (window / BUCKETS as u32).max(Duration::from_millis(1));
        SlidingCounts {
            bucket_width,
            origin: now,
            buckets: [(u64::MAX, 0, 0); BUCKETS],
        }
    }

    fn index(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_nanos() / self.bucket_width.as_nanos())
            as u64
    }

    fn bucket(&mut self, now: Instant) -> &mut (u64, u64, u64) {
        let index = self.index(now);
        let slot = &mut self.buckets[(index % BUCKETS as u64) as usize];
        if slot.0 != index {
            *slot = (index, 0, 0);
        }
        slot
    }

    pub fn add_first(&mut self, now: Instant) {
        self.bucket(now).1 += 1;
    }

    pub fn add_second(&mut self, now: Instant) {
        self.bucket(now).2 += 1;
    }

    /// Totals of (first, second) over the window ending at `now`.
    pub fn totals(&self, now: Instant) -> (u64, u64) {
        let current = self.index(now);
        self.buckets
            .iter()
            .filter(|(index, _, _)| {
                *index != u64::MAX
                    && current.saturating_sub(*index) < BUCKETS as u64
                    && *index <= current
            })
            .fold((0, 0), |(a, b), (_, x, y)| (a + x, b + y))
    }

    pub fn clear(&mut self) {
        self.buckets = [(u64::MAX, 0, 0); BUCKETS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_fall_out_of_the_window() {
        let t0 = Instant::now();
        let mut counts = SlidingCounts::new(Duration::from_secs(10), t0);
        counts.add_first(t0);
        counts.add_second(t0 + Duration::from_secs(5));
        counts.add_second(t0 + Duration::from_secs(9));
        assert_eq!(counts.totals(t0 + Duration::from_secs(9)), (1, 2));
        assert_eq!(
            counts.totals(t0 + Duration::from_millis(10_500)),
            (0, 2),
            "the first event is older than 10 s"
        );
        assert_eq!(counts.totals(t0 + Duration::from_secs(30)), (0, 0));
        // A slot reused after a full turn starts from zero.
        counts.add_first(t0 + Duration::from_secs(30));
        assert_eq!(counts.totals(t0 + Duration::from_secs(30)), (1, 0));
    }
}
