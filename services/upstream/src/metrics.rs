//! Prometheus metrics of calls to upstreams: attempts and their latency per endpoint, endpoint
//! counts, ejections, breaker state and transitions, retries, and calls refused outright.

use std::net::SocketAddr;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    pub upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub upstream: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub upstream: String,
    pub endpoint: String,
    /// `success`, or the failure: `connect`, `timeout`, `protocol`, `status_5xx`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub upstream: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EjectionLabels {
    pub upstream: String,
    pub endpoint: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub upstream: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreakerLabels {
    pub upstream: String,
    /// `GET /orders/{id}`, or `*` for a breaker over the whole upstream.
    pub route: String,
    pub state: &'static str,
}

/// Handles to every upstream metric; cheap to clone.
#[derive(Clone, Debug)]
pub struct UpstreamMetrics {
    pub attempts: Family<AttemptLabels, Counter>,
    pub attempt_duration: Family<EndpointLabels, Histogram>,
    pub endpoints: Family<StateLabels, Gauge>,
    pub ejections: Family<EjectionLabels, Counter>,
    pub readmissions: Family<EndpointLabels, Counter>,
    pub breaker_state: Family<BreakerLabels, Gauge>,
    pub breaker_transitions: Family<BreakerLabels, Counter>,
    pub retries: Family<ReasonLabels, Counter>,
    pub retries_refused: Family<UpstreamLabel, Counter>,
    pub refused: Family<ReasonLabels, Counter>,
}

impl UpstreamMetrics {
    /// Registers every metric under `upstream_` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = UpstreamMetrics {
            attempts: Family::default(),
            attempt_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
            }),
            endpoints: Family::default(),
            ejections: Family::default(),
            readmissions: Family::default(),
            breaker_state: Family::default(),
            breaker_transitions: Family::default(),
            retries: Family::default(),
            retries_refused: Family::default(),
            refused: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("upstream");
        r.register(
            "attempts",
            "Attempts sent to an upstream endpoint, by outcome",
            metrics.attempts.clone(),
        );
        r.register(
            "attempt_duration_seconds",
            "Time from sending an attempt to its response head",
            metrics.attempt_duration.clone(),
        );
        r.register(
            "endpoints",
            "Endpoints of an upstream: discovered, and ejected among them",
            metrics.endpoints.clone(),
        );
        r.register(
            "ejections",
            "Endpoints ejected, by reason",
            metrics.ejections.clone(),
        );
        r.register(
            "readmissions",
            "Ejected endpoints readmitted after a successful probe",
            metrics.readmissions.clone(),
        );
        r.register(
            "breaker_state",
            "1 for a circuit breaker's current state (closed, half_open, open), by route",
            metrics.breaker_state.clone(),
        );
        r.register(
            "breaker_transitions",
            "Circuit breaker state changes, by route and the state entered",
            metrics.breaker_transitions.clone(),
        );
        r.register(
            "retries",
            "Attempts retried on another endpoint, by what failed",
            metrics.retries.clone(),
        );
        r.register(
            "retries_refused",
            "Retries not made because the retry budget was spent",
            metrics.retries_refused.clone(),
        );
        r.register(
            "refused",
            "Calls failed fast without an attempt (circuit_open, no_endpoints)",
            metrics.refused.clone(),
        );
        metrics
    }

    pub fn endpoint(upstream: &str, addr: SocketAddr) -> EndpointLabels {
        EndpointLabels {
            upstream: upstream.to_owned(),
            endpoint: addr.to_string(),
        }
    }

    /// Sets a breaker's gauge: 1 for `current`, 0 for the other states. A route's series
    /// appear when its breaker first changes state (the pool caps how many breakers exist).
    pub fn set_breaker(&self, upstream: &str, route: &str, current: &'static str) {
        for state in ["closed", "half_open", "open"] {
            self.breaker_state
                .get_or_create(&BreakerLabels {
                    upstream: upstream.to_owned(),
                    route: route.to_owned(),
                    state,
                })
                .set(i64::from(state == current));
        }
    }
}
