//! What the relay exposes: how much waits and for how long, how fast the stream acknowledges,
//! and what fails. Every label value comes from a fixed set.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `connect`, `stream`, `publish`, `database`.
    pub stage: &'static str,
}

#[derive(Clone)]
pub struct RelayMetrics {
    pub backlog: Gauge,
    pub oldest_age_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub published: Counter,
    pub duplicates: Counter,
    pub publish_seconds: Histogram,
    pub failures: Family<FailureLabels, Counter>,
    pub leader: Gauge,
    pub pruned: Counter,
}

impl RelayMetrics {
    pub fn register(registry: &mut Registry) -> RelayMetrics {
        let metrics = RelayMetrics {
            backlog: Gauge::default(),
            oldest_age_seconds: Gauge::default(),
            published: Counter::default(),
            duplicates: Counter::default(),
            publish_seconds: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            failures: Family::default(),
            leader: Gauge::default(),
            pruned: Counter::default(),
        };
        let events = registry.sub_registry_with_prefix("events");
        events.register(
            "outbox_backlog",
            "Events written to the outbox and not yet acknowledged by the stream (as last seen by this replica's relay)",
            metrics.backlog.clone(),
        );
        events.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest event not yet acknowledged by the stream (0 when none waits)",
            metrics.oldest_age_seconds.clone(),
        );
        events.register(
            "published",
            "Events the stream acknowledged",
            metrics.published.clone(),
        );
        events.register(
            "duplicates",
            "Events the stream acknowledged as already stored (a republished batch)",
            metrics.duplicates.clone(),
        );
        events.register(
            "publish_seconds",
            "From handing an event to NATS to the stream's acknowledgement",
            metrics.publish_seconds.clone(),
        );
        events.register(
            "relay_failures",
            "Relay rounds that failed, by stage (connect, stream, publish, database)",
            metrics.failures.clone(),
        );
        events.register(
            "relay_leader",
            "1 while this replica holds the relay lease",
            metrics.leader.clone(),
        );
        events.register(
            "outbox_pruned",
            "Published events deleted from the outbox after their retention",
            metrics.pruned.clone(),
        );
        metrics
    }

    pub fn failed(&self, stage: &'static str) {
        self.failures.get_or_create(&FailureLabels { stage }).inc();
    }
}
