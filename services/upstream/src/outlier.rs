//! Per-endpoint outlier ejection. An endpoint is ejected after `consecutive_failures` failures in
//! a row, or when its latency (an EWMA) is far above its peers' median. After the ejection time
//! one probe request is let through: success readmits it, failure ejects it again for twice as
//! long (with ±20 % jitter, capped). At most `max_ejection_percent` of the endpoints are ejected
//! at once, and if fewer than half are healthy the ejections are ignored (panic mode), since
//! sending to a possibly-bad endpoint beats sending nowhere. State is dropped with the endpoint.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Clone, Debug, PartialEq)]
pub struct OutlierConfig {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    pub max_ejection_percent: u8,
    /// Eject when an endpoint's latency EWMA exceeds this many times the median of the others
    /// (with at least 3 endpoints). 0 turns latency ejection off.
    pub latency_factor: f64,
}

impl Default for OutlierConfig {
    /// The operator's defaults (`spec.components.gateway.outlierDetection`).
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(60),
            max_ejection_percent: 50,
            latency_factor: 5.0,
        }
    }
}

/// How a call to an endpoint went.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    Success {
        latency: Duration,
    },
    /// Connect error, reset, timeout, 502/503/504.
    Failure,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event<K> {
    Ejected {
        endpoint: K,
        duration: Duration,
        reason: &'static str,
    },
    Readmitted {
        endpoint: K,
    },
}

/// What the admin view shows per endpoint.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Health {
    pub consecutive_failures: u32,
    /// Ejections in a row (drives the backoff); 0 when healthy.
    pub ejections: u32,
    pub ejected_until: Option<Instant>,
    pub probe_in_flight: bool,
    pub latency_ewma_ms: Option<f64>,
}

const EWMA_WEIGHT: f64 = 0.3;
/// Latency differences below this never eject (a 1 ms peer must not make 4 ms an outlier).
const LATENCY_FLOOR_MS: f64 = 20.0;

pub struct Outliers<K> {
    config: OutlierConfig,
    endpoints: BTreeMap<K, Health>,
    /// Uniform in [0, 1); injected so tests are deterministic.
    random: Box<dyn FnMut() -> f64 + Send>,
}

impl<K: Ord + Clone> Outliers<K> {
    pub fn new(config: OutlierConfig, random: Box<dyn FnMut() -> f64 + Send>) -> Self {
        Outliers {
            config,
            endpoints: BTreeMap::new(),
            random,
        }
    }

    /// Keeps state for exactly these endpoints: new ones start healthy, gone ones are forgotten.
    pub fn sync(&mut self, present: &[K]) {
        self.endpoints.retain(|k, _| present.contains(k));
        for key in present {
            self.endpoints.entry(key.clone()).or_default();
        }
    }

    pub fn health(&self, key: &K) -> Option<&Health> {
        self.endpoints.get(key)
    }

    fn ejected(health: &Health) -> bool {
        health.ejected_until.is_some()
    }

    /// Endpoints a request may go to now: the healthy ones and those due a probe; all of them
    /// in panic mode.
    pub fn eligible(&self, now: Instant) -> Vec<K> {
        let panic = self.panic_mode();
        self.endpoints
            .iter()
            .filter(|(_, h)| Self::admits(h, now, panic))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Whether `key` may be sent to now (a cheaper `eligible(now).contains(key)`).
    pub fn is_eligible(&self, key: &K, now: Instant) -> bool {
        self.endpoints
            .get(key)
            .is_some_and(|h| Self::admits(h, now, self.panic_mode()))
    }

    /// Fewer than half healthy: ejections are ignored.
    fn panic_mode(&self) -> bool {
        let healthy = self
            .endpoints
            .values()
            .filter(|h| !Self::ejected(h))
            .count();
        healthy * 2 < self.endpoints.len()
    }

    fn admits(health: &Health, now: Instant, panic: bool) -> bool {
        panic
            || match health.ejected_until {
                None => true,
                Some(until) => now >= until && !health.probe_in_flight,
            }
    }

    pub fn on_send(&mut self, key: &K, now: Instant) {
        if let Some(health) = self.endpoints.get_mut(key)
            && health.ejected_until.is_some_and(|until| now >= until)
        {
            health.probe_in_flight = true;
        }
    }

    /// The call sent to `key` ended without saying anything about it: a probe it was may be
    /// sent again.
    pub fn cancel(&mut self, key: &K) {
        if let Some(health) = self.endpoints.get_mut(key) {
            health.probe_in_flight = false;
        }
    }

    pub fn record(&mut self, key: &K, now: Instant, outcome: Outcome) -> Option<Event<K>> {
        let health = self.endpoints.get_mut(key)?;
        let probing = health.probe_in_flight;
        health.probe_in_flight = false;
        match outcome {
            Outcome::Success { latency } => {
                health.consecutive_failures = 0;
                let ms = latency.as_secs_f64() * 1000.0;
                health.latency_ewma_ms = Some(match health.latency_ewma_ms {
                    Some(old) if !probing => old + EWMA_WEIGHT * (ms - old),
                    _ => ms,
                });
                if probing {
                    health.ejected_until = None;
                    health.ejections = 0;
                    return Some(Event::Readmitted {
                        endpoint: key.clone(),
                    });
                }
                if self.is_latency_outlier(key) {
                    return self.eject(key, now, "latency");
                }
                None
            }
            Outcome::Failure => {
                health.consecutive_failures += 1;
                if probing {
                    return self.eject(key, now, "probe failed");
                }
                if health.ejected_until.is_none()
                    && health.consecutive_failures >= self.config.consecutive_failures
                {
                    return self.eject(key, now, "consecutive failures");
                }
                None
            }
        }
    }

    fn is_latency_outlier(&self, key: &K) -> bool {
        if self.config.latency_factor <= 0.0 || self.endpoints.len() < 3 {
            return false;
        }
        let Some(mine) = self.endpoints[key].latency_ewma_ms else {
            return false;
        };
        let mut others: Vec<f64> = self
            .endpoints
            .iter()
            .filter(|(k, h)| *k != key && !Self::ejected(h))
            .filter_map(|(_, h)| h.latency_ewma_ms)
            .collect();
        if others.len() < 2 {
            return false;
        }
        others.sort_by(f64::total_cmp);
        let median = others[others.len() / 2];
        mine > median * self.config.latency_factor && mine - median > LATENCY_FLOOR_MS
    }

    fn eject(&mut self, key: &K, now: Instant, reason: &'static str) -> Option<Event<K>> {
        let total = self.endpoints.len();
        let already = self
            .endpoints
            .iter()
            .filter(|(k, h)| *k != key && Self::ejected(h))
            .count();
        if (already + 1) * 100 > total * usize::from(self.config.max_ejection_percent) {
            return None;
        }
        let jitter = 0.8 + 0.4 * (self.random)();
        let health = self.endpoints.get_mut(key)?;
        let doubling = 2u32.saturating_pow(health.ejections.min(16));
        let duration = self
            .config
            .base_ejection
            .saturating_mul(doubling)
            .min(self.config.max_ejection)
            .mul_f64(jitter);
        health.ejections += 1;
        health.ejected_until = Some(now + duration);
        Some(Event::Ejected {
            endpoint: key.clone(),
            duration,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outliers(keys: &[&'static str]) -> Outliers<&'static str> {
        // Jitter 0.5 → factor exactly 1.0.
        let mut o = Outliers::new(OutlierConfig::default(), Box::new(|| 0.5));
        o.sync(keys);
        o
    }

    const FAIL: Outcome = Outcome::Failure;
    fn ok(ms: u64) -> Outcome {
        Outcome::Success {
            latency: Duration::from_millis(ms),
        }
    }

    #[test]
    fn five_failures_in_a_row_eject_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut o = outliers(&["a", "b", "c"]);
        for _ in 0..4 {
            assert_eq!(o.record(&"a", t0, FAIL), None);
        }
        o.record(&"a", t0, ok(5));
        for _ in 0..4 {
            assert_eq!(o.record(&"a", t0, FAIL), None);
        }
        let event = o.record(&"a", t0, FAIL);
        assert_eq!(
            event,
            Some(Event::Ejected {
                endpoint: "a",
                duration: Duration::from_secs(1),
                reason: "consecutive failures"
            })
        );
        assert_eq!(o.eligible(t0), ["b", "c"]);
    }

    #[test]
    fn one_probe_after_the_ejection_then_readmit_or_back_off() {
        let t0 = Instant::now();
        let mut o = outliers(&["a", "b", "c"]);
        for _ in 0..5 {
            o.record(&"a", t0, FAIL);
        }
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(o.eligible(t1), ["a", "b", "c"], "due a probe");
        o.on_send(&"a", t1);
        assert_eq!(o.eligible(t1), ["b", "c"], "only one probe at a time");
        assert!(
            matches!(o.record(&"a", t1, FAIL), Some(Event::Ejected { duration, .. }) if duration == Duration::from_secs(2))
        );
        let t2 = t1 + Duration::from_secs(2);
        o.on_send(&"a", t2);
        assert!(
            matches!(o.record(&"a", t2, FAIL), Some(Event::Ejected { duration, .. }) if duration == Duration::from_secs(4))
        );
        let t3 = t2 + Duration::from_secs(4);
        o.on_send(&"a", t3);
        assert_eq!(
            o.record(&"a", t3, ok(5)),
            Some(Event::Readmitted { endpoint: "a" })
        );
        assert_eq!(o.health(&"a").unwrap().ejections, 0);
        assert_eq!(o.eligible(t3), ["a", "b", "c"]);
    }

    #[test]
    fn the_backoff_is_capped_and_jittered() {
        let t0 = Instant::now();
        let mut o = Outliers::new(OutlierConfig::default(), Box::new(|| 0.999));
        o.sync(&["a", "b"]);
        let mut now = t0;
        for _ in 0..5 {
            o.record(&"a", now, FAIL);
        }
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            now += Duration::from_secs(100);
            o.on_send(&"a", now);
            if let Some(Event::Ejected { duration, .. }) = o.record(&"a", now, FAIL) {
                last = duration;
            }
        }
        assert!(
            last > Duration::from_secs(60) && last < Duration::from_secs(72),
            "60 s cap × up to 1.2 jitter: {last:?}"
        );
    }

    #[test]
    fn never_more_than_the_max_share_is_ejected() {
        let t0 = Instant::now();
        let mut o = outliers(&["a", "b"]);
        for _ in 0..5 {
            o.record(&"a", t0, FAIL);
        }
        for _ in 0..10 {
            assert_eq!(o.record(&"b", t0, FAIL), None, "b would make 100 % > 50 %");
        }
        assert_eq!(o.eligible(t0), ["b"]);
    }

    #[test]
    fn panic_mode_ignores_ejections_when_most_are_down() {
        let t0 = Instant::now();
        let mut o = Outliers::new(
            OutlierConfig {
                max_ejection_percent: 100,
                ..Default::default()
            },
            Box::new(|| 0.5),
        );
        o.sync(&["a", "b", "c"]);
        for key in ["a", "b"] {
            for _ in 0..5 {
                o.record(&key, t0, FAIL);
            }
        }
        assert_eq!(
            o.eligible(t0),
            ["a", "b", "c"],
            "1 healthy of 3 < half: use them all"
        );
    }

    #[test]
    fn a_much_slower_endpoint_is_ejected() {
        let t0 = Instant::now();
        let mut o = outliers(&["a", "b", "c"]);
        for _ in 0..3 {
            o.record(&"a", t0, ok(10));
            o.record(&"b", t0, ok(12));
        }
        assert_eq!(
            o.record(&"c", t0, ok(20)),
            None,
            "twice as slow, not an outlier"
        );
        let mut event = None;
        for _ in 0..10 {
            event = event.or(o.record(&"c", t0, ok(80)));
        }
        assert!(
            matches!(
                event,
                Some(Event::Ejected {
                    endpoint: "c",
                    reason: "latency",
                    ..
                })
            ),
            "{event:?}"
        );
    }

    #[test]
    fn state_leaves_with_the_endpoint() {
        let t0 = Instant::now();
        let mut o = outliers(&["a", "b", "c"]);
        for _ in 0..5 {
            o.record(&"a", t0, FAIL);
        }
        o.sync(&["b", "c"]);
        assert!(o.health(&"a").is_none());
        o.sync(&["a", "b", "c"]);
        assert_eq!(o.health(&"a"), Some(&Health::default()), "back as new");
    }
}
