//! RED metrics for every route (Prometheus text format on `/metrics`): requests by method, route
//! template and status; latency by method and route; requests in flight.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

pub struct HttpMetrics {
    pub registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
    in_flight: Gauge,
}

impl HttpMetrics {
    /// A registry whose metric names start with `prefix` (e.g. `msa_user`).
    pub fn new(prefix: &str) -> Self {
        let mut registry = Registry::with_prefix(prefix);
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        let in_flight = Gauge::default();
        registry.register("http_requests", "HTTP requests handled", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to handle an HTTP request",
            duration.clone(),
        );
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being handled",
            in_flight.clone(),
        );
        HttpMetrics {
            registry,
            requests,
            duration,
            in_flight,
        }
    }

    /// The registry of component `name`: metrics named `msa_<name>_…`.
    pub fn for_component(name: &str) -> Self {
        Self::new(&format!("msa_{}", name.replace('-', "_")))
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Middleware: counts and times every request by its route template (not its raw path, which
/// would give every id its own series). Unmatched paths are counted under `unmatched`.
pub async fn track(
    State(metrics): State<Arc<HttpMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let in_flight = Counted::new(&metrics.in_flight);
    let start = Instant::now();
    let response = next.run(request).await;
    drop(in_flight);
    let status = response.status().as_u16();
    metrics
        .duration
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status,
        })
        .inc();
    response
}

/// The RED metrics of one route for a hand-written hot path (the gateway's proxy routes): the
/// same series [`track`] writes, with each method's and status's handles looked up once
/// instead of building label strings on every request.
pub struct RouteMetrics {
    metrics: Arc<HttpMetrics>,
    route: String,
    requests: Mutex<Vec<(Method, u16, Counter)>>,
    durations: Mutex<Vec<(Method, Histogram)>>,
}

impl RouteMetrics {
    pub fn new(metrics: Arc<HttpMetrics>, route: impl Into<String>) -> Self {
        RouteMetrics {
            metrics,
            route: route.into(),
            requests: Mutex::default(),
            durations: Mutex::default(),
        }
    }

    /// A request of this route begins: it counts as in flight until [`InFlight::finish`] (or
    /// until dropped, when the client went away).
    pub fn start(&self) -> InFlight<'_> {
        InFlight {
            route: self,
            _counted: Counted::new(&self.metrics.in_flight),
        }
    }

    fn counter(&self, method: &Method, status: u16) -> Counter {
        let mut cache = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, _, counter)) = cache.iter().find(|(m, s, _)| m == method && *s == status) {
            return counter.clone();
        }
        let counter = self
            .metrics
            .requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                route: self.route.clone(),
                status,
            })
            .clone();
        cache.push((method.clone(), status, counter.clone()));
        counter
    }

    fn duration(&self, method: &Method) -> Histogram {
        let mut cache = self.durations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, histogram)) = cache.iter().find(|(m, _)| m == method) {
            return histogram.clone();
        }
        let histogram = self
            .metrics
            .duration
            .get_or_create(&RouteLabels {
                method: method.to_string(),
                route: self.route.clone(),
            })
            .clone();
        cache.push((method.clone(), histogram.clone()));
        histogram
    }
}

/// A request counted in flight; see [`RouteMetrics::start`].
pub struct InFlight<'a> {
    route: &'a RouteMetrics,
    _counted: Counted<'a>,
}

impl InFlight<'_> {
    /// The request ended with `status` after `elapsed`.
    pub fn finish(self, method: &Method, status: u16, elapsed: Duration) {
        self.route.duration(method).observe(elapsed.as_secs_f64());
        self.route.counter(method, status).inc();
    }
}

/// One request in the in-flight gauge for as long as it lives: a handler future dropped
/// because the client went away is taken out too.
struct Counted<'a>(&'a Gauge);

impl<'a> Counted<'a> {
    fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_metrics_write_the_series_the_middleware_writes() {
        let metrics = Arc::new(HttpMetrics::for_component("gateway"));
        let route = RouteMetrics::new(metrics.clone(), "/users/{*rest}");
        for status in [200, 200, 404] {
            route
                .start()
                .finish(&Method::GET, status, Duration::from_millis(2));
        }
        let _pending = route.start();
        drop(route.start());
        let text = metrics.encode();
        assert!(text.contains(
            r#"msa_gateway_http_requests_total{method="GET",route="/users/{*rest}",status="200"} 2"#
        ), "{text}");
        assert!(text.contains(
            r#"msa_gateway_http_requests_total{method="GET",route="/users/{*rest}",status="404"} 1"#
        ));
        assert!(text.contains(
            r#"msa_gateway_http_request_duration_seconds_count{method="GET",route="/users/{*rest}"} 3"#
        ));
        assert!(text.contains("msa_gateway_http_requests_in_flight 1"));
    }
}
