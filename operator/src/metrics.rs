//! Prometheus metrics of the operator.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// Kind of the object written (`Deployment`, `MicroserviceApp/status`, ...).
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    /// `true` or `false`: the app's Ready condition.
    pub ready: &'static str,
}

/// How an app counts in `msa_operator_apps` and `msa_operator_unreadable_apps`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppHealth {
    /// Its Ready condition is True.
    Ready,
    NotReady,
    /// The operator cannot read it (see [`crate::unreadable`]).
    Unreadable,
}

/// Every metric the operator exports, registered in one registry.
pub struct Metrics {
    pub registry: Registry,
    /// Apps by readiness (two series whatever the number of apps, so an alert can say "some app
    /// is not Ready" without a series per app).
    pub apps: Family<ReadyLabels, Gauge>,
    /// Apps the operator cannot read (see [`crate::unreadable`]); they count as not Ready too.
    pub unreadable_apps: Gauge,
    pub reconciles: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub writes: Family<WriteLabels, Counter>,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("msa_operator");
        let reconciles = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let writes = Family::<WriteLabels, Counter>::default();
        let leader = Gauge::default();
        let apps = Family::<ReadyLabels, Gauge>::default();
        let unreadable_apps = Gauge::default();
        registry.register(
            "apps",
            "MicroserviceApps this operator reconciles, by whether their Ready condition is True",
            apps.clone(),
        );
        registry.register(
            "unreadable_apps",
            "MicroserviceApps the operator cannot read (a field its types do not accept): skipped, with a Warning Event on each",
            unreadable_apps.clone(),
        );
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Failed reconciliations by category",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            duration.clone(),
        );
        registry.register(
            "api_writes",
            "Writes sent to the API server by kind",
            writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this process holds the leader Lease",
            leader.clone(),
        );
        Self {
            registry,
            apps,
            unreadable_apps,
            reconciles,
            errors,
            duration,
            writes,
            leader,
        }
    }
}

impl Metrics {
    pub fn observe_reconcile(&self, took: Duration, error_category: Option<&str>) {
        self.reconciles.inc();
        self.duration.observe(took.as_secs_f64());
        if let Some(category) = error_category {
            self.errors
                .get_or_create(&ErrorLabels {
                    category: category.to_owned(),
                })
                .inc();
        }
    }

    pub fn count_write(&self, kind: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Sets the apps gauge from the apps' Ready conditions (every app readable).
    pub fn count_apps(&self, ready: impl IntoIterator<Item = bool>) {
        self.count_app_health(ready.into_iter().map(|ready| {
            if ready {
                AppHealth::Ready
            } else {
                AppHealth::NotReady
            }
        }));
    }

    /// Sets the apps gauges from each app's health.
    pub fn count_app_health(&self, apps: impl IntoIterator<Item = AppHealth>) {
        let (mut yes, mut no, mut unreadable) = (0, 0, 0);
        for health in apps {
            match health {
                AppHealth::Ready => yes += 1,
                AppHealth::NotReady => no += 1,
                AppHealth::Unreadable => {
                    no += 1;
                    unreadable += 1;
                }
            }
        }
        for (label, count) in [("true", yes), ("false", no)] {
            self.apps
                .get_or_create(&ReadyLabels { ready: label })
                .set(count);
        }
        self.unreadable_apps.set(unreadable);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
