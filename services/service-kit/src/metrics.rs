//! RED metrics for every route (Prometheus text format on `/metrics`): requests by method, route
//! template and status; latency by method and route; requests in flight.

use std::collections::HashMap;
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
    /// Handles already looked up, so a request builds no label strings: counters by method
    /// and status, then route; histograms by method, then route.
    counters: Mutex<FastMap<(&'static str, u16), ByRoute<Counter>>>,
    histograms: Mutex<FastMap<&'static str, ByRoute<Histogram>>>,
}

/// The caches' keys are a static method label and a status code, never client text, so they
/// need no DoS-resistant hasher; SipHash cost 3 % of the gateway's instructions per request.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// The method as a label: the nine methods HTTP defines keep their name, any other token a
/// client invents is `OTHER` — a client must not be able to add series at will.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "OTHER",
    }
}

/// Metric handles by route template (a handful per method, so a scan beats hashing).
type ByRoute<T> = Vec<(String, T)>;

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
            counters: Mutex::default(),
            histograms: Mutex::default(),
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
    let method = request.method().clone();
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let in_flight = metrics.start();
    let start = Instant::now();
    let response = next.run(request).await;
    in_flight.finish(&method, route, response.status().as_u16(), start.elapsed());
    response
}

impl HttpMetrics {
    /// A request begins: it counts as in flight until [`InFlight::finish`] (or until dropped,
    /// when the client went away).
    pub fn start(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight { metrics: self }
    }

    fn count(&self, method: &'static str, route: &str, status: u16) {
        let mut cache = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        let routes = cache.entry((method, status)).or_default();
        if let Some((_, counter)) = routes.iter().find(|(r, _)| r == route) {
            counter.inc();
            return;
        }
        let counter = self
            .requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .clone();
        counter.inc();
        routes.push((route.to_owned(), counter));
    }

    fn observe(&self, method: &'static str, route: &str, seconds: f64) {
        let mut cache = self.histograms.lock().unwrap_or_else(|p| p.into_inner());
        let routes = cache.entry(method).or_default();
        if let Some((_, histogram)) = routes.iter().find(|(r, _)| r == route) {
            histogram.observe(seconds);
            return;
        }
        let histogram = self
            .duration
            .get_or_create(&RouteLabels {
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .clone();
        histogram.observe(seconds);
        routes.push((route.to_owned(), histogram));
    }
}

/// A request counted in flight; see [`HttpMetrics::start`].
pub struct InFlight<'a> {
    metrics: &'a HttpMetrics,
}

impl InFlight<'_> {
    /// The request, counted under its route template, ended with `status` after `elapsed`.
    /// `route` must be a template the server defines (or `unmatched`), never a raw path.
    pub fn finish(self, method: &Method, route: &str, status: u16, elapsed: Duration) {
        let method = method_label(method);
        self.metrics.observe(method, route, elapsed.as_secs_f64());
        self.metrics.count(method, route, status);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_and_status_and_in_flight_until_finished_or_dropped() {
        let metrics = HttpMetrics::for_component("gateway");
        for (route, status) in [
            ("/users/{*rest}", 200),
            ("/users/{*rest}", 200),
            ("/users/{*rest}", 404),
            ("/users", 200),
        ] {
            metrics
                .start()
                .finish(&Method::GET, route, status, Duration::from_millis(2));
        }
        let _pending = metrics.start();
        drop(metrics.start());
        let text = metrics.encode();
        for series in [
            r#"msa_gateway_http_requests_total{method="GET",route="/users/{*rest}",status="200"} 2"#,
            r#"msa_gateway_http_requests_total{method="GET",route="/users/{*rest}",status="404"} 1"#,
            r#"msa_gateway_http_requests_total{method="GET",route="/users",status="200"} 1"#,
            r#"msa_gateway_http_request_duration_seconds_count{method="GET",route="/users/{*rest}"} 3"#,
            "msa_gateway_http_requests_in_flight 1",
        ] {
            assert!(text.contains(series), "{series} missing in:\n{text}");
        }
    }

    #[test]
    fn invented_methods_share_one_label_value() {
        let metrics = HttpMetrics::for_component("user");
        let series = |m: &HttpMetrics| m.encode().lines().filter(|l| !l.starts_with('#')).count();
        metrics
            .start()
            .finish(&Method::GET, "unmatched", 404, Duration::ZERO);
        let baseline = series(&metrics);
        for i in 0..1000 {
            let invented = Method::from_bytes(format!("X{i}").as_bytes()).unwrap();
            metrics
                .start()
                .finish(&invented, "unmatched", 404, Duration::ZERO);
        }
        // One more method value (OTHER), so one counter and one histogram more; not 1000.
        let after = series(&metrics);
        let one_histogram = 16 + 3; // buckets, +Inf, sum, count: as for GET
        assert!(
            after <= baseline + 1 + one_histogram,
            "{baseline} → {after}"
        );
        assert!(
            metrics
                .encode()
                .contains(r#"method="OTHER",route="unmatched",status="404"} 1000"#)
        );
    }
}
