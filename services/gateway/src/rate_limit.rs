//! Per-client rate limiting: a token bucket per client (the verified subject, or the address of
//! an anonymous client), refilled at `rate` per second up to `burst`. Plain state
//! with the clock passed in; the gateway holds it behind a mutex and answers a refusal with 429,
//! `Retry-After` and the `RateLimit`/`RateLimit-Policy` headers of the IETF draft.
//!
//! Memory is bounded whatever clients do: at most `max_clients` buckets are kept; when full, the
//! buckets that have refilled completely (clients gone quiet) are dropped, and if none has, new
//! clients share one overflow bucket until room appears. Limits are per gateway replica.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimitConfig {
    /// Tokens added per second.
    pub rate: f64,
    /// Most tokens a bucket holds: the burst a quiet client may send at once.
    pub burst: u32,
    /// Most buckets kept.
    pub max_clients: usize,
}

/// The answer to one request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// Whole tokens left after this request.
    pub remaining: u32,
    /// When refused: how long until a token is there.
    pub retry_after: Duration,
    /// How long until the bucket is full again.
    pub until_full: Duration,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct RateLimiter<K> {
    config: RateLimitConfig,
    buckets: HashMap<K, Bucket>,
    overflow: Bucket,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(config: RateLimitConfig, now: Instant) -> Self {
        RateLimiter {
            buckets: HashMap::new(),
            overflow: Bucket {
                tokens: f64::from(config.burst),
                updated: now,
            },
            config,
        }
    }

    pub fn config(&self) -> RateLimitConfig {
        self.config
    }

    /// Takes a token for `client` if there is one.
    pub fn check(&mut self, client: &K, now: Instant) -> Decision {
        let config = self.config;
        if !self.buckets.contains_key(client) && self.buckets.len() >= config.max_clients {
            self.drop_full_buckets(now);
        }
        let bucket = if self.buckets.len() < config.max_clients || self.buckets.contains_key(client)
        {
            self.buckets.entry(client.clone()).or_insert(Bucket {
                tokens: f64::from(config.burst),
                updated: now,
            })
        } else {
            &mut self.overflow
        };
        take(bucket, config, now)
    }

    /// Buckets kept now (for tests and the admin view).
    pub fn clients(&self) -> usize {
        self.buckets.len()
    }

    fn drop_full_buckets(&mut self, now: Instant) {
        let config = self.config;
        self.buckets
            .retain(|_, bucket| refilled(bucket, config, now) < f64::from(config.burst));
    }
}

/// The bucket's tokens at `now` (without changing it).
fn refilled(bucket: &Bucket, config: RateLimitConfig, now: Instant) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
    (bucket.tokens + elapsed * config.rate).min(f64::from(config.burst))
}

fn take(bucket: &mut Bucket, config: RateLimitConfig, now: Instant) -> Decision {
    bucket.tokens = refilled(bucket, config, now);
    bucket.updated = now;
    let allowed = bucket.tokens >= 1.0;
    if allowed {
        bucket.tokens -= 1.0;
    }
    let seconds = |tokens: f64| Duration::from_secs_f64((tokens / config.rate).max(0.0));
    Decision {
        allowed,
        remaining: bucket.tokens.floor() as u32,
        retry_after: if allowed {
            Duration::ZERO
        } else {
            seconds(1.0 - bucket.tokens)
        },
        until_full: seconds(f64::from(config.burst) - bucket.tokens),
    }
}

/// Whom a bucket counts: the verified subject, or the address of an anonymous client.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Client {
    Subject(String),
    Address(std::net::IpAddr),
}

/// The gateway's limiter: the buckets behind a lock, and the count of refusals.
pub struct ClientLimiter {
    buckets: std::sync::Mutex<RateLimiter<Client>>,
    refused: prometheus_client::metrics::counter::Counter,
}

impl ClientLimiter {
    /// Registers `rate_limited` (refusals) in `registry`.
    pub fn new(
        config: RateLimitConfig,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Self {
        let refused = prometheus_client::metrics::counter::Counter::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429 by the per-client rate limit",
            refused.clone(),
        );
        ClientLimiter {
            buckets: std::sync::Mutex::new(RateLimiter::new(config, Instant::now())),
            refused,
        }
    }

    /// `None` when `client` may go on; otherwise the 429 to answer.
    pub fn refusal(&self, client: &Client) -> Option<axum::response::Response> {
        let (decision, config) = {
            let mut buckets = self
                .buckets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (buckets.check(client, Instant::now()), buckets.config())
        };
        if decision.allowed {
            return None;
        }
        self.refused.inc();
        Some(too_many_requests(decision, config))
    }
}

/// 429 with `Retry-After` and the IETF draft's `RateLimit-Policy` (quota `q` over window `w`
/// seconds) and `RateLimit` (`r` left, `t` seconds until the quota is whole again) headers.
fn too_many_requests(decision: Decision, config: RateLimitConfig) -> axum::response::Response {
    use axum::response::IntoResponse;
    let ceil_secs = |d: Duration| d.as_secs_f64().ceil().max(1.0) as u64;
    let window = (f64::from(config.burst) / config.rate).ceil().max(1.0) as u64;
    let mut response = msa_service_kit::Problem::new(
        http::StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        format!(
            "more than {} requests per second (bursts of {}) from this caller; retry after the time in Retry-After",
            config.rate, config.burst
        ),
    )
    .retry_after(Some(ceil_secs(decision.retry_after)))
    .into_response();
    let headers = response.headers_mut();
    let policy = format!("\"per-client\";q={};w={window}", config.burst);
    let state = format!(
        "\"per-client\";r={};t={}",
        decision.remaining,
        ceil_secs(decision.until_full)
    );
    for (name, value) in [("ratelimit-policy", policy), ("ratelimit", state)] {
        if let Ok(value) = http::HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(max_clients: usize) -> RateLimiter<u32> {
        RateLimiter::new(
            RateLimitConfig {
                rate: 2.0,
                burst: 3,
                max_clients,
            },
            Instant::now(),
        )
    }

    #[test]
    fn a_burst_then_the_rate() {
        let mut limiter = limiter(10);
        let t0 = Instant::now();
        let allowed: Vec<bool> = (0..5).map(|_| limiter.check(&1, t0).allowed).collect();
        assert_eq!(allowed, [true, true, true, false, false]);
        let refused = limiter.check(&1, t0);
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert_eq!(refused.remaining, 0);
        // Another client has its own bucket.
        assert!(limiter.check(&2, t0).allowed);
        // 2 per second: one more after half a second.
        let later = t0 + Duration::from_millis(500);
        assert!(limiter.check(&1, later).allowed);
        assert!(!limiter.check(&1, later).allowed);
    }

    #[test]
    fn memory_stays_bounded_whatever_clients_do() {
        let mut limiter = limiter(100);
        let t0 = Instant::now();
        for client in 0..10_000 {
            limiter.check(&client, t0);
        }
        assert_eq!(limiter.clients(), 100);
        // New clients share the overflow bucket meanwhile: 3 get through, then 429s.
        assert!(!limiter.check(&20_000, t0).allowed);
        // Once the first buckets have refilled, they make room.
        let later = t0 + Duration::from_secs(2);
        assert!(limiter.check(&30_000, later).allowed);
        assert!(limiter.clients() <= 100);
    }
}
