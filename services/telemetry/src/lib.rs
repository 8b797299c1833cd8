//! Logs and traces for every msa binary.
//!
//! Logs are JSON (or text on request) on stderr. Traces are OpenTelemetry spans made from the
//! `tracing` spans the code already has, exported over OTLP/HTTP when the standard variables ask
//! for it ([`settings`]); with no exporter configured nothing OpenTelemetry runs at all, and the
//! request-path helpers here return at their first line.
//!
//! While tracing is on, a server span per request continues the caller's W3C trace
//! ([`continue_trace`]), a client span per upstream attempt ([`client_span`]) is what the next
//! hop sees as its parent, and every log line inside them carries `trace_id` and
//! `span_id` among the span's fields.

#[cfg(feature = "jaeger")]
pub mod jaeger;
mod settings;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing::field::Empty;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use settings::{Export, SettingsError, settings};

/// Whether spans are exported; set once by [`init`].
static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether this process exports traces. The request path asks before doing any tracing work.
pub fn enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Flushes and stops the exporter when dropped: keep it alive for the life of `main`.
#[must_use = "dropping it stops the trace exporter"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Spans still queued go out now, bounded so a dead collector cannot hold up exit.
            if let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
                eprintln!("traces: the last spans could not be exported: {error}");
            }
        }
    }
}

/// How the binary identifies itself in traces (`OTEL_SERVICE_NAME` and
/// `OTEL_RESOURCE_ATTRIBUTES` take precedence).
pub struct Identity<'a> {
    pub service: &'a str,
    pub version: &'a str,
}

/// Installs the global subscriber: logs go to stderr as JSON unless `log_format` is `text`
/// (colour only on a terminal), filtered by `RUST_LOG` (else `default_filter`), and spans at
/// `default_filter` go to an OTLP collector when the `OTEL_*` variables configure one —
/// `RUST_LOG=warn` quiets the logs without losing the traces. Refuses variables it cannot honour
/// (a gRPC or https endpoint, an unknown sampler) instead of silently tracing nothing.
pub fn init(
    log_format: &str,
    default_filter: &str,
    identity: &Identity<'_>,
) -> anyhow::Result<Telemetry> {
    let export = settings(|name| std::env::var(name).ok())?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let logs = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let logs = if log_format == "text" {
        logs.with_filter(filter).boxed()
    } else {
        logs.json()
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed()
    };
    let (provider, traces) = match &export {
        Export::Off(_) => (None, None),
        Export::Otlp { .. } => {
            let provider = provider(identity)?;
            let tracer = provider.tracer("msa");
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                // The binary's default level, not RUST_LOG: quieter logs keep the traces.
                .with_filter(EnvFilter::new(default_filter).or(filter_fn(is_api_request)));
            (Some(provider), Some(layer))
        }
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()?;
    match &export {
        Export::Off(why) => tracing::info!("traces are off: {why}"),
        Export::Otlp { endpoint } => {
            TRACING.store(true, Ordering::Relaxed);
            tracing::info!(%endpoint, "exporting traces over OTLP/HTTP");
        }
    }
    Ok(Telemetry { provider })
}

/// kube's client makes a debug-level span per Kubernetes API request; traced whatever the log
/// level, so an operator reconcile (or a discovery watch) shows the API calls it made.
fn is_api_request(metadata: &tracing::Metadata<'_>) -> bool {
    metadata.is_span() && metadata.name() == "HTTP" && metadata.target().starts_with("kube_client")
}

fn provider(identity: &Identity<'_>) -> anyhow::Result<SdkTracerProvider> {
    // The exporter reads the endpoint, headers and timeout from the standard variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()?;
    let mut resource = opentelemetry_sdk::Resource::builder().with_attribute(
        opentelemetry::KeyValue::new("service.version", identity.version.to_owned()),
    );
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(identity.service.to_owned());
    }
    // The sampler comes from OTEL_TRACES_SAMPLER(_ARG), validated by `settings`.
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// A server span for one request. Its fields are the request's log context; the `otel.*` and
/// `http.*` ones name the span and describe it in the trace. The path and request id are
/// recorded as strings, not `%` Display: text logs quote and escape them (as JSON logs do), so
/// a client's id cannot forge a field.
pub fn server_span(method: &Method, path: &str, route: Option<&str>, request_id: &str) -> Span {
    let span = tracing::info_span!(
        "request",
        method = %method,
        path,
        url.path = Empty,
        request_id,
        trace_id = Empty,
        span_id = Empty,
        otel.name = Empty,
        otel.kind = Empty,
        otel.status_code = Empty,
        http.route = Empty,
        http.response.status_code = Empty,
    );
    if enabled() {
        span.record("otel.kind", "server");
        span.record("url.path", path);
        span.record("http.route", route);
        match route {
            Some(route) => span.record("otel.name", format!("{method} {route}")),
            None => span.record("otel.name", method.as_str()),
        };
    }
    span
}

/// Makes `span` continue the trace the caller's `traceparent` (and `tracestate`) names, and
/// records its trace and span ids for the log lines inside it. A request without (valid)
/// context starts a new trace.
pub fn continue_trace(span: &Span, headers: &HeaderMap) {
    if !enabled() {
        return;
    }
    set_parent_from(span, headers);
    record_ids(span);
}

/// Records the answer's status on a server span; 5xx marks it as an error.
pub fn finish_server_span(span: &Span, status: u16) {
    if !enabled() {
        return;
    }
    // As i64: the OpenTelemetry layer keeps signed integers as numbers, u64 as text.
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        span.record("otel.status_code", "ERROR");
    }
}

/// A client span for one attempt at an upstream call (a retry is another attempt, and another
/// span), a child of the current span, written into the outgoing request's `traceparent` (and
/// `tracestate`), replacing what the caller sent: the next hop's parent is this attempt. A
/// disabled span, and `headers` untouched, when tracing is off.
pub fn client_span(
    method: &Method,
    upstream: &str,
    path: &str,
    attempt: u32,
    headers: &mut HeaderMap,
) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "attempt",
        otel.name = %format_args!("{method} {upstream}"),
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = %method,
        url.path = path,
        http.request.resend_count = i64::from(attempt),
        http.response.status_code = Empty,
        peer.service = upstream,
        server.address = Empty,
        "error.type" = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    let context = record_ids(&span);
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
    span
}

/// The current span's context as a W3C `traceparent`, for work that outlives the request (an
/// event written now, published later); `None` when tracing is off or no span is current.
pub fn current_traceparent() -> Option<String> {
    if !enabled() {
        return None;
    }
    let context = tracing_opentelemetry::OpenTelemetrySpanExt::context(&Span::current());
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut headers = HeaderMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(&mut headers));
    headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// A producer span (publishing one message to `destination`) that continues the trace named by
/// `traceparent` — the request that caused the message, which may have ended long ago. A
/// disabled span when tracing is off.
pub fn producer_span(destination: &str, traceparent: Option<&str>) -> Span {
    if !enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "publish",
        otel.name = %format_args!("publish {destination}"),
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = "nats",
        messaging.destination.name = destination,
        "error.type" = Empty,
        trace_id = Empty,
        span_id = Empty,
    );
    if let Some(traceparent) = traceparent {
        let mut headers = HeaderMap::new();
        if let Ok(value) = http::HeaderValue::from_str(traceparent) {
            headers.insert("traceparent", value);
            set_parent_from(&span, &headers);
        }
    }
    record_ids(&span);
    span
}

/// Marks a producer span failed with `failure` (a short, fixed reason).
pub fn fail_span(span: &Span, failure: &'static str) {
    if enabled() {
        span.record("error.type", failure);
        span.record("otel.status_code", "ERROR");
    }
}

/// Records which endpoint an attempt went to.
pub fn client_endpoint(span: &Span, endpoint: std::net::SocketAddr) {
    if enabled() {
        span.record("server.address", tracing::field::display(endpoint));
    }
}

/// Records how an attempt ended: the endpoint's status when it answered, and what failed (a
/// connect error, a timeout, a 5xx) as the span's error.
pub fn finish_client_span(span: &Span, status: Option<u16>, failure: Option<&'static str>) {
    if !enabled() {
        return;
    }
    if let Some(status) = status {
        // As i64: the OpenTelemetry layer keeps signed integers as numbers, u64 as text.
        span.record("http.response.status_code", i64::from(status));
    }
    if let Some(failure) = failure {
        span.record("error.type", failure);
        span.record("otel.status_code", "ERROR");
    }
}

/// Makes `span` a child of the trace context `headers` carry, when they carry a valid one.
fn set_parent_from(span: &Span, headers: &HeaderMap) {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    if parent.span().span_context().is_valid() {
        // Fails only for a span already started, which this one is not.
        let _ = tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(span, parent);
    }
}

/// Records the span's trace and span ids as its fields (for the log lines inside it); returns
/// its context.
fn record_ids(span: &Span) -> opentelemetry::Context {
    let context = tracing_opentelemetry::OpenTelemetrySpanExt::context(span);
    let ids = context.span().span_context().clone();
    if ids.is_valid() {
        span.record("trace_id", tracing::field::display(ids.trace_id()));
        span.record("span_id", tracing::field::display(ids.span_id()));
    }
    context
}
