//! One upstream service's endpoints and everything decided per call: which endpoint (the
//! balancer), whether it may be used (outlier ejection), whether the service may be called at all
//! (circuit breaker), whether a retry is affordable (budget). Plain state behind one lock; every
//! decision takes `now` so tests drive time themselves. Only the peak-EWMA load comes from
//! tower (`load::PeakEwma`), which keeps its own tokio clock.

use std::future::Future;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tower::Service;
use tower::load::Load;
use tower::load::completion::{CompleteOnResponse, TrackCompletionFuture};
use tower::load::peak_ewma::{Handle, PeakEwma};

use crate::balance::{Balancer, Loads, Strategy, XorShift};
use crate::breaker::{Breaker, BreakerConfig, State};
use crate::budget::RetryBudget;
use crate::endpoint::Endpoint;
use crate::outlier::{Event, Outcome, OutlierConfig, Outliers};

/// How an upstream's calls are balanced, ejected, broken and retried.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolConfig {
    pub strategy: Strategy,
    pub outliers: OutlierConfig,
    pub breaker: BreakerConfig,
    /// Retries allowed as a share of requests over the last 10 s …
    pub retry_budget_percent: u32,
    /// … plus this many per second regardless.
    pub retry_min_per_second: u32,
    /// Latency a new endpoint is assumed to have until it answers (peak-EWMA's pessimistic
    /// start: it is tried, but gently, until it proves faster).
    pub default_rtt: Duration,
    /// How fast peak-EWMA forgets a latency peak.
    pub ewma_decay: Duration,
    /// With no endpoint at all for this long, calls fail at once instead of waiting for one.
    pub unavailable_after: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            strategy: Strategy::default(),
            outliers: OutlierConfig::default(),
            breaker: BreakerConfig::default(),
            retry_budget_percent: 20,
            retry_min_per_second: 10,
            default_rtt: Duration::from_millis(30),
            ewma_decay: Duration::from_secs(10),
            unavailable_after: Duration::from_secs(3),
        }
    }
}

/// tower's peak-EWMA wraps a service; this one passes the call's own future through, so the
/// latency tracked is exactly that of the request sent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Passthrough;

impl<F, T, E> Service<F> for Passthrough
where
    F: Future<Output = Result<T, E>>,
{
    type Response = T;
    type Error = E;
    type Future = F;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), E>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: F) -> F {
        call
    }
}

/// A call's future with its latency feeding the endpoint's peak-EWMA.
pub type Tracked<F> = TrackCompletionFuture<F, CompleteOnResponse, Handle>;

struct Slot {
    endpoint: Endpoint,
    load: PeakEwma<Passthrough>,
    in_flight: u32,
    requests: u64,
    failures: u64,
}

struct Slots<'a>(&'a [Slot]);

impl Loads for Slots<'_> {
    type Cost = tower::load::peak_ewma::Cost;

    fn cost(&self, index: usize) -> Self::Cost {
        self.0[index].load.load()
    }

    fn in_flight(&self, index: usize) -> u32 {
        self.0[index].in_flight
    }

    fn weight(&self, index: usize) -> u32 {
        self.0[index].endpoint.weight
    }
}

/// Why no endpoint was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The service's circuit is open.
    CircuitOpen { retry_after: Duration },
    /// The circuit is half-open and every probe is out: their verdict (a breaker change, or a
    /// probe slot given back) decides, so the caller may wait for it and ask again.
    AwaitingProbes { retry_after: Duration },
    /// Discovery lists no endpoint, and has for `for_at_least`.
    NoEndpoints { for_at_least: Duration },
    /// A retry found no endpoint other than the one that just failed.
    NoOtherEndpoint,
}

/// Which calls share a circuit breaker: one route of the upstream (the gateway passes the
/// method and the route template, so one failing route cannot open the circuit of the others),
/// or the whole upstream when the caller names none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BreakerScope {
    pub method: &'static str,
    pub route: &'static str,
}

impl BreakerScope {
    pub const WHOLE: BreakerScope = BreakerScope {
        method: "*",
        route: "*",
    };
    /// Shared by every scope past [`MAX_SCOPES`], so no caller can grow the breakers (and their
    /// metric series) without bound.
    const OVERFLOW: BreakerScope = BreakerScope {
        method: "OTHER",
        route: "*",
    };
}

impl std::fmt::Display for BreakerScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if *self == BreakerScope::WHOLE {
            f.write_str("*")
        } else {
            write!(f, "{} {}", self.method, self.route)
        }
    }
}

/// Most breakers one upstream keeps (the gateway has a few dozen method × route pairs).
pub const MAX_SCOPES: usize = 64;

struct ScopedBreaker {
    scope: BreakerScope,
    breaker: Breaker,
    /// The state last reported, to notice changes.
    reported: &'static str,
}

/// Something worth a log line and a metric.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    Ejected {
        endpoint: SocketAddr,
        duration: Duration,
        reason: &'static str,
    },
    Readmitted {
        endpoint: SocketAddr,
    },
    Breaker {
        scope: BreakerScope,
        from: &'static str,
        to: &'static str,
    },
}

/// One endpoint as the admin view shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EndpointView {
    pub address: SocketAddr,
    pub weight: u32,
    pub in_flight: u32,
    pub requests: u64,
    pub failures: u64,
    pub consecutive_failures: u32,
    /// EWMA of successful calls' latency (what latency ejection compares).
    pub latency_ewma_ms: Option<f64>,
    /// Rank of the endpoint's peak-EWMA cost, 1 = cheapest (tower's `Cost` can only be
    /// compared, not read).
    pub cost_rank: usize,
    pub ejected: bool,
    pub ejected_for_ms: Option<u64>,
    pub ejections: u32,
    pub eligible: bool,
    /// Keep-alive connections waiting for a request (filled in by the client, which owns them).
    pub idle_connections: usize,
}

/// One breaker as the admin view shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BreakerView {
    /// `GET /orders/{id}`, or `*` for the whole upstream.
    pub route: String,
    pub state: &'static str,
    pub retry_after_ms: Option<u64>,
}

/// The whole pool as the admin view shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PoolView {
    pub strategy: &'static str,
    /// The worst state of any breaker (open, half_open, closed), and the longest wait.
    pub breaker: &'static str,
    pub breaker_retry_after_ms: Option<u64>,
    /// Each breaker, by route.
    pub breakers: Vec<BreakerView>,
    pub endpoints: Vec<EndpointView>,
}

pub struct Pool {
    config: PoolConfig,
    slots: Vec<Slot>,
    balancer: Balancer,
    outliers: Outliers<SocketAddr>,
    breakers: Vec<ScopedBreaker>,
    budget: RetryBudget,
    empty_since: Option<Instant>,
    rng: XorShift,
    eligible: Vec<usize>,
}

impl Pool {
    pub fn new(config: PoolConfig, now: Instant, seed: u64) -> Self {
        let mut jitter = XorShift::new(seed.rotate_left(17));
        Pool {
            balancer: Balancer::new(config.strategy),
            outliers: Outliers::new(config.outliers.clone(), Box::new(move || jitter.next_f64())),
            breakers: Vec::new(),
            budget: RetryBudget::new(
                config.retry_budget_percent,
                config.retry_min_per_second,
                Duration::from_secs(10),
                now,
            ),
            config,
            slots: Vec::new(),
            empty_since: Some(now),
            rng: XorShift::new(seed),
            eligible: Vec::new(),
        }
    }

    /// Discovery changed: keep what is known about endpoints that stay, start new ones
    /// pessimistically, forget the ones that left.
    pub fn sync(&mut self, endpoints: &[Endpoint], now: Instant) {
        let mut old = std::mem::take(&mut self.slots);
        let decay_ns = self.config.ewma_decay.as_nanos() as f64;
        for endpoint in endpoints {
            let slot = match old.iter().position(|s| s.endpoint.addr == endpoint.addr) {
                Some(i) => {
                    let mut slot = old.swap_remove(i);
                    slot.endpoint.weight = endpoint.weight;
                    slot
                }
                None => Slot {
                    endpoint: *endpoint,
                    load: PeakEwma::new(
                        Passthrough,
                        self.config.default_rtt,
                        decay_ns,
                        CompleteOnResponse::default(),
                    ),
                    in_flight: 0,
                    requests: 0,
                    failures: 0,
                },
            };
            self.slots.push(slot);
        }
        self.slots.sort_by_key(|s| s.endpoint.addr);
        self.slots.dedup_by_key(|s| s.endpoint.addr);
        let addrs: Vec<SocketAddr> = self.slots.iter().map(|s| s.endpoint.addr).collect();
        self.outliers.sync(&addrs);
        self.balancer.reset(self.slots.len());
        self.empty_since = match (self.slots.is_empty(), self.empty_since) {
            (false, _) => None,
            (true, Some(since)) => Some(since),
            (true, None) => Some(now),
        };
    }

    /// Whether an endpoint other than `failed` could take a retry now.
    pub fn has_alternative(&self, failed: SocketAddr, now: Instant) -> bool {
        self.outliers
            .eligible(now)
            .iter()
            .any(|addr| *addr != failed)
    }

    /// A logical request begins (retries are budgeted against these).
    pub fn request_started(&mut self, now: Instant) {
        self.budget.deposit(now);
    }

    /// Whether the budget affords one more retry (and spends it if so).
    pub fn allow_retry(&mut self, now: Instant) -> bool {
        self.budget.try_withdraw(now)
    }

    /// The breaker of `scope`, created closed on first use.
    fn breaker(&mut self, scope: BreakerScope, now: Instant) -> usize {
        let scope = if self.breakers.len() >= MAX_SCOPES
            && !self.breakers.iter().any(|b| b.scope == scope)
        {
            BreakerScope::OVERFLOW
        } else {
            scope
        };
        if let Some(i) = self.breakers.iter().position(|b| b.scope == scope) {
            return i;
        }
        self.breakers.push(ScopedBreaker {
            scope,
            breaker: Breaker::new(self.config.breaker.clone(), now),
            reported: State::Closed.name(),
        });
        self.breakers.len() - 1
    }

    /// Chooses an endpoint for one attempt of a call in `scope`, never `exclude`, and starts
    /// tracking `call(addr)`.
    pub fn send<F, T, E>(
        &mut self,
        now: Instant,
        exclude: Option<SocketAddr>,
        scope: BreakerScope,
        call: impl FnOnce(SocketAddr) -> F,
    ) -> Result<(SocketAddr, Tracked<F>), (Refusal, Vec<Change>)>
    where
        F: Future<Output = Result<T, E>>,
    {
        let mut changes = Vec::new();
        if let Some(since) = self.empty_since {
            let for_at_least = now.saturating_duration_since(since);
            return Err((Refusal::NoEndpoints { for_at_least }, changes));
        }
        self.eligible.clear();
        for (i, slot) in self.slots.iter().enumerate() {
            let addr = slot.endpoint.addr;
            if Some(addr) != exclude && self.outliers.is_eligible(&addr, now) {
                self.eligible.push(i);
            }
        }
        if self.eligible.is_empty() {
            return Err((Refusal::NoOtherEndpoint, changes));
        }
        let b = self.breaker(scope, now);
        let admitted = self.breakers[b].breaker.try_acquire(now);
        self.note_breaker(b, now, &mut changes);
        if let Err(rejected) = admitted {
            let retry_after = rejected.retry_after;
            let refusal = if rejected.awaiting_probes {
                Refusal::AwaitingProbes { retry_after }
            } else {
                Refusal::CircuitOpen { retry_after }
            };
            return Err((refusal, changes));
        }
        let rng = &mut self.rng;
        let index = self
            .balancer
            .pick(&self.eligible, &Slots(&self.slots), &mut || rng.next_u64())
            .expect("eligible is not empty");
        let slot = &mut self.slots[index];
        slot.in_flight += 1;
        slot.requests += 1;
        let addr = slot.endpoint.addr;
        let tracked = slot.load.call(call(addr));
        self.outliers.on_send(&addr, now);
        Ok((addr, tracked))
    }

    /// An attempt in `scope` sent to `addr` ended; returns what changed because of it.
    pub fn finish(
        &mut self,
        addr: SocketAddr,
        now: Instant,
        scope: BreakerScope,
        outcome: Outcome,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let success = matches!(outcome, Outcome::Success { .. });
        if let Ok(i) = self.slots.binary_search_by_key(&addr, |s| s.endpoint.addr) {
            let slot = &mut self.slots[i];
            slot.in_flight = slot.in_flight.saturating_sub(1);
            if !success {
                slot.failures += 1;
            }
            match self.outliers.record(&addr, now, outcome) {
                Some(Event::Ejected {
                    endpoint,
                    duration,
                    reason,
                }) => changes.push(Change::Ejected {
                    endpoint,
                    duration,
                    reason,
                }),
                Some(Event::Readmitted { endpoint }) => {
                    changes.push(Change::Readmitted { endpoint });
                }
                None => {}
            }
        }
        let b = self.breaker(scope, now);
        self.breakers[b].breaker.record(now, success);
        self.note_breaker(b, now, &mut changes);
        changes
    }

    /// An attempt ended for a reason that says nothing about the endpoint (the caller's own
    /// request was bad, or the caller went away): its in-flight count is given back, and the
    /// breaker releases it ([`Breaker::release`]). True when that freed a half-open probe slot
    /// (a call awaiting the probes may take it).
    pub fn finish_unjudged(&mut self, addr: SocketAddr, now: Instant, scope: BreakerScope) -> bool {
        if let Ok(i) = self.slots.binary_search_by_key(&addr, |s| s.endpoint.addr) {
            self.slots[i].in_flight = self.slots[i].in_flight.saturating_sub(1);
        }
        self.outliers.cancel(&addr);
        let b = self.breaker(scope, now);
        self.breakers[b].breaker.release(now)
    }

    fn note_breaker(&mut self, b: usize, now: Instant, changes: &mut Vec<Change>) {
        let scoped = &mut self.breakers[b];
        let name = scoped.breaker.state(now).name();
        if name != scoped.reported {
            changes.push(Change::Breaker {
                scope: scoped.scope,
                from: scoped.reported,
                to: name,
            });
            scoped.reported = name;
        }
    }

    /// Notes open breakers' lapse into half-open that no call has noticed yet.
    pub fn note_breaker_lapse(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        for b in 0..self.breakers.len() {
            self.note_breaker(b, now, &mut changes);
        }
        changes
    }

    pub fn view(&mut self, now: Instant) -> PoolView {
        let breakers: Vec<BreakerView> = self
            .breakers
            .iter_mut()
            .map(|b| {
                let state = b.breaker.state(now);
                BreakerView {
                    route: b.scope.to_string(),
                    state: state.name(),
                    retry_after_ms: match state {
                        State::Open { until } => {
                            Some(until.saturating_duration_since(now).as_millis() as u64)
                        }
                        _ => None,
                    },
                }
            })
            .collect();
        let worst = ["open", "half_open"]
            .into_iter()
            .find(|state| breakers.iter().any(|b| b.state == *state))
            .unwrap_or("closed");
        let eligible = self.outliers.eligible(now);
        let costs: Vec<_> = self.slots.iter().map(|s| s.load.load()).collect();
        let endpoints = self
            .slots
            .iter()
            .zip(&costs)
            .map(|(slot, cost)| {
                let addr = slot.endpoint.addr;
                let health = self.outliers.health(&addr).cloned().unwrap_or_default();
                EndpointView {
                    address: addr,
                    weight: slot.endpoint.weight,
                    in_flight: slot.in_flight,
                    requests: slot.requests,
                    failures: slot.failures,
                    consecutive_failures: health.consecutive_failures,
                    latency_ewma_ms: health.latency_ewma_ms,
                    cost_rank: 1 + costs.iter().filter(|other| *other < cost).count(),
                    ejected: health.ejected_until.is_some(),
                    ejected_for_ms: health
                        .ejected_until
                        .map(|until| until.saturating_duration_since(now).as_millis() as u64),
                    ejections: health.ejections,
                    eligible: eligible.contains(&addr),
                    idle_connections: 0,
                }
            })
            .collect();
        PoolView {
            strategy: self.balancer.strategy().name(),
            breaker: worst,
            breaker_retry_after_ms: breakers.iter().filter_map(|b| b.retry_after_ms).max(),
            breakers,
            endpoints,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(addrs: &[&str]) -> Vec<Endpoint> {
        addrs.iter().map(|a| a.parse().unwrap()).collect()
    }

    fn addr(a: &str) -> SocketAddr {
        a.parse().unwrap()
    }

    fn ready() -> std::future::Ready<Result<(), ()>> {
        std::future::ready(Ok(()))
    }

    const ABC: [&str; 3] = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"];

    #[tokio::test(start_paused = true)]
    async fn peak_ewma_steers_away_from_a_slow_endpoint() {
        let now = Instant::now();
        let mut pool = Pool::new(PoolConfig::default(), now, 42);
        pool.sync(&endpoints(&ABC), now);
        let slow = addr(ABC[2]);
        let mut picks = std::collections::BTreeMap::<SocketAddr, u32>::new();
        for _ in 0..600 {
            let (picked, call) = pool
                .send(Instant::now(), None, BreakerScope::WHOLE, |a| {
                    let delay = if a == slow { 50 } else { 1 };
                    async move {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        Ok::<_, ()>(())
                    }
                })
                .unwrap();
            call.await.unwrap();
            let latency = Duration::from_millis(if picked == slow { 50 } else { 1 });
            pool.finish(
                picked,
                Instant::now(),
                BreakerScope::WHOLE,
                Outcome::Success { latency },
            );
            *picks.entry(picked).or_default() += 1;
        }
        let to_slow = picks.get(&slow).copied().unwrap_or(0);
        assert!(to_slow < 60, "under 10 % to the slow endpoint: {picks:?}");
        assert!(
            picks[&addr(ABC[0])] > 200 && picks[&addr(ABC[1])] > 200,
            "{picks:?}"
        );
    }

    #[test]
    fn a_retry_never_goes_back_to_the_endpoint_that_failed() {
        let now = Instant::now();
        let mut pool = Pool::new(
            PoolConfig {
                strategy: Strategy::RoundRobin,
                ..PoolConfig::default()
            },
            now,
            1,
        );
        pool.sync(&endpoints(&ABC[..2]), now);
        for _ in 0..20 {
            let (picked, _) = pool
                .send(now, Some(addr(ABC[0])), BreakerScope::WHOLE, |_| ready())
                .unwrap();
            assert_eq!(picked, addr(ABC[1]));
            pool.finish(
                picked,
                now,
                BreakerScope::WHOLE,
                Outcome::Success {
                    latency: Duration::ZERO,
                },
            );
        }
        pool.sync(&endpoints(&ABC[..1]), now);
        let refused = pool
            .send(now, Some(addr(ABC[0])), BreakerScope::WHOLE, |_| ready())
            .map(|_| ());
        assert_eq!(refused.unwrap_err().0, Refusal::NoOtherEndpoint);
    }

    #[test]
    fn with_no_endpoints_the_refusal_says_for_how_long() {
        let t0 = Instant::now();
        let mut pool = Pool::new(PoolConfig::default(), t0, 1);
        let t1 = t0 + Duration::from_secs(2);
        let refused = pool
            .send(t1, None, BreakerScope::WHOLE, |_| ready())
            .map(|_| ());
        assert_eq!(
            refused.unwrap_err().0,
            Refusal::NoEndpoints {
                for_at_least: Duration::from_secs(2)
            }
        );
        pool.sync(&endpoints(&ABC), t1);
        assert!(
            pool.send(t1, None, BreakerScope::WHOLE, |_| ready())
                .is_ok()
        );
        let t2 = t1 + Duration::from_secs(5);
        pool.sync(&[], t2);
        let refused = pool
            .send(
                t2 + Duration::from_secs(1),
                None,
                BreakerScope::WHOLE,
                |_| ready(),
            )
            .map(|_| ());
        assert_eq!(
            refused.unwrap_err().0,
            Refusal::NoEndpoints {
                for_at_least: Duration::from_secs(1)
            },
            "counted from when the last endpoint left"
        );
    }

    #[test]
    fn ejected_endpoints_get_no_traffic_and_the_breaker_fails_calls_fast() {
        let now = Instant::now();
        let mut pool = Pool::new(
            PoolConfig {
                breaker: BreakerConfig {
                    minimum_calls: 10,
                    ..BreakerConfig::default()
                },
                ..PoolConfig::default()
            },
            now,
            3,
        );
        pool.sync(&endpoints(&ABC), now);
        let a = addr(ABC[0]);
        let changes: Vec<Change> = (0..5)
            .flat_map(|_| pool.finish(a, now, BreakerScope::WHOLE, Outcome::Failure))
            .collect();
        assert!(
            matches!(changes.as_slice(), [Change::Ejected { endpoint, reason: "consecutive failures", .. }] if *endpoint == a),
            "{changes:?}"
        );
        // b and c fail too (but are not ejected: that would pass the 50 % cap).
        let mut opened = None;
        for call in 0..20 {
            match pool.send(now, None, BreakerScope::WHOLE, |_| ready()) {
                Ok((picked, _)) => {
                    assert_ne!(picked, a);
                    let changes = pool.finish(picked, now, BreakerScope::WHOLE, Outcome::Failure);
                    if changes.contains(&Change::Breaker {
                        scope: BreakerScope::WHOLE,
                        from: "closed",
                        to: "open",
                    }) {
                        opened = Some(call);
                    }
                }
                Err((refusal, _)) => {
                    assert!(
                        matches!(refusal, Refusal::CircuitOpen { .. }),
                        "{refusal:?}"
                    );
                    break;
                }
            }
        }
        assert_eq!(opened, Some(4), "5 + 5 = 10 calls, all failed");
        let view = pool.view(now);
        assert_eq!(view.breaker, "open");
        assert!(view.endpoints[0].ejected && !view.endpoints[0].eligible);
    }

    /// Issue 15, defect 9: one route's failures open its breaker, not its neighbours'; and no
    /// caller can make more than MAX_SCOPES (+1 shared) breakers.
    #[test]
    fn breakers_are_per_route_and_bounded() {
        let now = Instant::now();
        let config = PoolConfig {
            breaker: BreakerConfig {
                minimum_calls: 5,
                ..BreakerConfig::default()
            },
            outliers: crate::outlier::OutlierConfig {
                consecutive_failures: 1000,
                ..Default::default()
            },
            ..PoolConfig::default()
        };
        let mut pool = Pool::new(config, now, 3);
        pool.sync(&endpoints(&ABC), now);
        let place = BreakerScope {
            method: "POST",
            route: "/orders",
        };
        let read = BreakerScope {
            method: "GET",
            route: "/orders/{id}",
        };
        for _ in 0..5 {
            let (picked, _) = pool.send(now, None, place, |_| ready()).unwrap();
            pool.finish(picked, now, place, Outcome::Failure);
        }
        assert!(matches!(
            pool.send(now, None, place, |_| ready()).map(|_| ()),
            Err((Refusal::CircuitOpen { .. }, _))
        ));
        assert!(
            pool.send(now, None, read, |_| ready()).is_ok(),
            "reads still go"
        );
        let view = pool.view(now);
        assert_eq!(view.breaker, "open");
        let states: Vec<(&str, &str)> = view
            .breakers
            .iter()
            .map(|b| (b.route.as_str(), b.state))
            .collect();
        assert_eq!(
            states,
            [("POST /orders", "open"), ("GET /orders/{id}", "closed")]
        );

        let invented: Vec<&'static str> = (0..200)
            .map(|i| &*Box::leak(format!("/r{i}").into_boxed_str()))
            .collect();
        for route in invented {
            let scope = BreakerScope {
                method: "GET",
                route,
            };
            let _ = pool.send(now, None, scope, |_| ready());
        }
        assert_eq!(pool.view(now).breakers.len(), MAX_SCOPES + 1);
    }

    #[test]
    fn state_survives_a_resync_that_keeps_the_endpoint() {
        let now = Instant::now();
        let mut pool = Pool::new(PoolConfig::default(), now, 3);
        pool.sync(&endpoints(&ABC), now);
        let (picked, _) = pool
            .send(now, None, BreakerScope::WHOLE, |_| ready())
            .unwrap();
        pool.finish(picked, now, BreakerScope::WHOLE, Outcome::Failure);
        pool.sync(
            &endpoints(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"]),
            now,
        );
        let view = pool.view(now);
        let kept = view.endpoints.iter().find(|e| e.address == picked).unwrap();
        assert_eq!(
            (kept.requests, kept.failures, kept.consecutive_failures),
            (1, 1, 1)
        );
        assert_eq!(view.endpoints.len(), 4);
    }
}
