//! Calling one upstream service: the thin async shell around [`Pool`]. Per call: wait briefly
//! for a first endpoint, ask the pool for one, send over that endpoint's HTTP/1.1 keep-alive
//! connections ([`Connections`]), time the attempt out, report the outcome, and retry once on
//! another endpoint when that is safe and the budget allows — all under an overall deadline.
//!
//! One timer serves a whole call: it is reset to each attempt's deadline (the per-try timeout,
//! capped by the overall one). The overall deadline is the call's own timeout, cut to the
//! caller's [`Deadline`] when it has one; each attempt tells the endpoint how long it will wait
//! for it in `x-msa-timeout-ms` (see [`crate::deadline`]), so the next hop can keep inside it.
//!
//! A call that meets a half-open circuit breaker whose probes are all out waits for their
//! verdict (bounded by its deadline) instead of being turned away: the probes succeed and it
//! goes, or one fails and it gets the open circuit's 503. A housekeeping tick each second closes idle connections; it also
//! keeps tokio's timer wheel armed, so arming a request's timer never has to wake the driver
//! (an `eventfd` write per request on an otherwise idle runtime).
//!
//! Retrying is safe when the method is idempotent, when the caller vouches for the request
//! ([`RetrySafe`], e.g. a request carrying its own idempotency key), or when the connection
//! failed before any byte was sent. Only bodies of known size up to the retry limit are kept
//! for a second attempt; larger or streamed bodies are sent once. tower's own `Retry` and
//! `TpsBudget` are not used because "on a different endpoint" needs the pool's choice, and the
//! budget must run on the injected clock like the other state machines.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use tokio::sync::Notify;
use tracing::{Instrument, info, warn};

use crate::balance::XorShift;
use crate::conns::{Connections, SendError, UpstreamBody};
use crate::deadline::{self, Deadline, TIMEOUT_HEADER};
use crate::discovery::Discovery;
use crate::metrics::{
    AttemptLabels, BreakerLabels, ReasonLabels, StateLabels, UpstreamLabel, UpstreamMetrics,
};
use crate::outlier::Outcome;
use crate::pool::{BreakerScope, Change, Pool, PoolConfig, PoolView, Refusal};

/// Timeouts and retry limits of calls.
#[derive(Clone, Debug, PartialEq)]
pub struct CallConfig {
    pub connect_timeout: Duration,
    pub per_try_timeout: Duration,
    pub request_timeout: Duration,
    /// 0 or 1: a call is never sent more than twice.
    pub max_retries: u32,
    /// Bodies larger than this are streamed and never retried.
    pub retry_body_limit: usize,
    /// Pause before a retry, jittered ±50 %.
    pub retry_backoff: Duration,
}

impl Default for CallConfig {
    /// A service's calls to its peers (the inner hop; see [`crate::config::INNER_PER_TRY_MS`]).
    fn default() -> Self {
        CallConfig {
            connect_timeout: Duration::from_secs(1),
            per_try_timeout: Duration::from_millis(crate::config::INNER_PER_TRY_MS),
            request_timeout: Duration::from_millis(crate::config::INNER_REQUEST_MS),
            max_retries: 1,
            retry_body_limit: 64 * 1024,
            retry_backoff: Duration::from_millis(10),
        }
    }
}

impl CallConfig {
    /// The gateway's calls (the outer hop): longer than a service's own calls to its peers.
    pub fn gateway() -> Self {
        CallConfig {
            per_try_timeout: Duration::from_millis(crate::config::GATEWAY_PER_TRY_MS),
            request_timeout: Duration::from_millis(crate::config::GATEWAY_REQUEST_MS),
            ..CallConfig::default()
        }
    }
}

/// Request extension: the caller vouches that this request may reach the service twice (it
/// carries its own idempotency key), so it is retried like a GET.
#[derive(Clone, Copy, Debug)]
pub struct RetrySafe;

/// Why a call got no response from the service.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(
        "the {upstream} service is failing{} (its circuit breaker is open); retry in {}s",
        on_route(scope),
        retry_after_secs(*retry_after)
    )]
    CircuitOpen {
        upstream: String,
        scope: BreakerScope,
        retry_after: Duration,
    },
    #[error("no {upstream} endpoint is available ({source_name}); retry shortly")]
    NoEndpoints {
        upstream: String,
        source_name: String,
    },
    #[error("the {upstream} service did not answer within {} ms", after.as_millis())]
    Timeout { upstream: String, after: Duration },
    #[error("could not connect to the {upstream} service at {endpoint}: {detail}")]
    Connect {
        upstream: String,
        endpoint: SocketAddr,
        detail: String,
    },
    #[error(
        "the {upstream} service at {endpoint} closed the connection without answering ({detail}); retry shortly"
    )]
    Unanswered {
        upstream: String,
        endpoint: SocketAddr,
        detail: String,
    },
    #[error("the {upstream} service at {endpoint} broke off the exchange: {detail}")]
    Protocol {
        upstream: String,
        endpoint: SocketAddr,
        detail: String,
    },
    #[error("the request body could not be read: {detail}")]
    RequestBody { fault: BodyFault, detail: String },
}

/// What was wrong with the caller's own request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFault {
    /// Larger than accepted (413).
    TooLarge,
    /// The client paused longer than the server's body timeout (408).
    Stalled,
    /// It broke off or was malformed (400).
    Unreadable,
}

impl BodyFault {
    fn of(error: &(dyn std::error::Error + 'static)) -> Self {
        if caused_by::<http_body_util::LengthLimitError>(error) {
            BodyFault::TooLarge
        } else if timed_out(error) {
            BodyFault::Stalled
        } else {
            BodyFault::Unreadable
        }
    }
}

/// " on GET /orders/{id}" for a route's breaker, nothing for the whole upstream's.
fn on_route(scope: &BreakerScope) -> String {
    if *scope == BreakerScope::WHOLE {
        String::new()
    } else {
        format!(" on {scope}")
    }
}

fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

impl CallError {
    /// The status a proxy answers with: 503 when the service cannot be called now (breaker
    /// open, no endpoint, or no endpoint accepted a connection — nothing was sent, so the
    /// request can simply be made again, as Envoy answers a connection failure), 504 on
    /// timeout, 502 when an exchange broke off or the service answered badly, 413/400 for the
    /// caller's own body.
    pub fn status(&self) -> StatusCode {
        match self {
            CallError::CircuitOpen { .. }
            | CallError::NoEndpoints { .. }
            | CallError::Connect { .. }
            | CallError::Unanswered { .. } => StatusCode::SERVICE_UNAVAILABLE,
            CallError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            CallError::Protocol { .. } => StatusCode::BAD_GATEWAY,
            CallError::RequestBody { fault, .. } => match fault {
                BodyFault::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                BodyFault::Stalled => StatusCode::REQUEST_TIMEOUT,
                BodyFault::Unreadable => StatusCode::BAD_REQUEST,
            },
        }
    }

    /// Seconds for `Retry-After`, when waiting is the remedy.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            CallError::CircuitOpen { retry_after, .. } => Some(retry_after_secs(*retry_after)),
            CallError::NoEndpoints { .. }
            | CallError::Connect { .. }
            | CallError::Unanswered { .. } => Some(1),
            _ => None,
        }
    }

    /// The upstream concerned, unless the caller's own request was at fault.
    pub fn upstream(&self) -> Option<&str> {
        match self {
            CallError::CircuitOpen { upstream, .. }
            | CallError::NoEndpoints { upstream, .. }
            | CallError::Timeout { upstream, .. }
            | CallError::Connect { upstream, .. }
            | CallError::Unanswered { upstream, .. }
            | CallError::Protocol { upstream, .. } => Some(upstream),
            CallError::RequestBody { .. } => None,
        }
    }

    /// What a client may be told: the service and what to do, never endpoint addresses or OS
    /// error text (those go to the log with the request id).
    pub fn public_detail(&self) -> String {
        match self {
            CallError::CircuitOpen { .. } | CallError::Timeout { .. } => self.to_string(),
            CallError::NoEndpoints { upstream, .. } => {
                format!("no {upstream} endpoint is available; retry shortly")
            }
            CallError::Connect { upstream, .. } => {
                format!("the {upstream} service could not be reached; retry shortly")
            }
            CallError::Unanswered { upstream, .. } => format!(
                "the {upstream} service closed the connection without answering; retry shortly"
            ),
            CallError::Protocol { upstream, .. } => format!(
                "the {upstream} service broke off the exchange; the request may or may not have been applied"
            ),
            CallError::RequestBody { fault, .. } => match fault {
                BodyFault::TooLarge => "the request body is larger than this gateway accepts",
                BodyFault::Stalled => {
                    "the request body stopped arriving; send the whole request at once"
                }
                BodyFault::Unreadable => "the request body could not be read",
            }
            .to_owned(),
        }
    }

    /// A short machine-readable name (problem type, metric label).
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::CircuitOpen { .. } => "circuit-open",
            CallError::NoEndpoints { .. } => "no-endpoints",
            CallError::Timeout { .. } => "upstream-timeout",
            CallError::Connect { .. } => "upstream-unreachable",
            CallError::Unanswered { .. } => "upstream-closed",
            CallError::Protocol { .. } => "bad-upstream-response",
            CallError::RequestBody { fault, .. } => match fault {
                BodyFault::TooLarge => "body-too-large",
                BodyFault::Stalled => "request-timeout",
                BodyFault::Unreadable => "unreadable-body",
            },
        }
    }
}

/// A request body kept for a possible retry, or streamed once.
enum Payload {
    Replayable(Bytes),
    Streaming(Option<Body>),
}

/// One upstream service, cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

/// Metric handles of one endpoint, cloned out of their families once.
struct EndpointHandles {
    successes: prometheus_client::metrics::counter::Counter,
    duration: prometheus_client::metrics::histogram::Histogram,
}

struct Inner {
    /// With no endpoint for this long, calls fail at once (the pool's setting).
    unavailable_after: Duration,
    endpoint_metrics: Mutex<crate::endpoint::ByAddress<EndpointHandles>>,
    name: String,
    source: String,
    pool: Mutex<Pool>,
    connections: Connections,
    config: CallConfig,
    metrics: UpstreamMetrics,
    endpoints_changed: Notify,
    /// Woken when a breaker changes state or gives back a probe slot (calls awaiting the
    /// probes' verdict ask again).
    breaker_changed: Notify,
    /// `x-msa-timeout-ms` for an attempt that has its whole per-try time, made once.
    per_try_header: http::HeaderValue,
}

impl Upstream {
    /// Starts following `discovery` (a background task keeps the pool's endpoints current).
    pub fn new(
        name: &str,
        mut discovery: Discovery,
        pool: PoolConfig,
        config: CallConfig,
        metrics: UpstreamMetrics,
    ) -> Upstream {
        let connections = Connections::new(config.connect_timeout, IDLE_CONNECTION_TIMEOUT);
        let now = Instant::now();
        let unavailable_after = pool.unavailable_after;
        let mut state = Pool::new(pool, now, XorShift::from_clock().next_u64());
        state.sync(&discovery.current(), now);
        let per_try_header = deadline::header_value(config.per_try_timeout);
        let inner = Arc::new(Inner {
            unavailable_after,
            endpoint_metrics: Mutex::default(),
            name: name.to_owned(),
            source: discovery.source().to_owned(),
            pool: Mutex::new(state),
            connections,
            config,
            metrics,
            endpoints_changed: Notify::new(),
            breaker_changed: Notify::new(),
            per_try_header,
        });
        inner.count_endpoints();
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            while let Some(endpoints) = discovery.changed().await {
                let Some(inner) = weak.upgrade() else { return };
                let listed: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
                info!(upstream = %inner.name, endpoints = ?listed, "endpoints changed");
                inner.lock().sync(&endpoints, Instant::now());
                inner.forget_departed(&endpoints);
                inner.connections.prune(Some(&endpoints), Instant::now());
                inner.count_endpoints();
                inner.endpoints_changed.notify_waiters();
            }
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.connections.prune(None, Instant::now());
            }
        });
        Upstream { inner }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Where the endpoints come from (`static:…` or `kubernetes:…`).
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// The pool as the admin view shows it.
    pub fn view(&self) -> PoolView {
        let now = Instant::now();
        let mut pool = self.inner.lock();
        let changes = pool.note_breaker_lapse(now);
        let mut view = pool.view(now);
        drop(pool);
        self.inner.report(changes);
        for endpoint in &mut view.endpoints {
            endpoint.idle_connections = self.inner.connections.idle_count(endpoint.address);
        }
        view
    }

    /// Sends `request` (its URI is the path and query; scheme and authority are the chosen
    /// endpoint's) and returns the response head with its streaming body. Its calls share the
    /// upstream's whole-service circuit breaker. A [`Deadline`] request extension cuts the
    /// call's timeouts to it (a service passes on the deadline its own caller gave it).
    pub async fn send(&self, request: Request<Body>) -> Result<Response<UpstreamBody>, CallError> {
        let deadline = request.extensions().get::<Deadline>().map(|d| d.0);
        self.send_scoped(request, BreakerScope::WHOLE, deadline)
            .await
    }

    /// [`Upstream::send`], with `scope` naming the circuit breaker the call counts under (the
    /// gateway passes each request's route) and `deadline` the caller's own, if any. Parameters,
    /// not request extensions: an extension map costs two allocations per request.
    pub async fn send_scoped(
        &self,
        request: Request<Body>,
        scope: BreakerScope,
        deadline: Option<Instant>,
    ) -> Result<Response<UpstreamBody>, CallError> {
        let inner = &self.inner;
        let (mut parts, body) = request.into_parts();
        parts.version = http::Version::HTTP_11;
        let retry_safe =
            is_idempotent(&parts.method) || parts.extensions.get::<RetrySafe>().is_some();
        let payload = inner.prepare(body).await?;
        let started = Instant::now();
        inner.lock().request_started(started);
        let own = started + inner.config.request_timeout;
        let deadline = deadline.map_or(own, |caller| caller.min(own));
        let call = CallTime {
            deadline,
            budget: deadline.saturating_duration_since(started),
        };
        inner
            .attempts(parts, payload, retry_safe, scope, call)
            .await
    }
}

/// Idle connections older than this are closed.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// How often idle connections are looked over (see the module doc for the other reason).
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// When a whole call must end, and how long that gave it (for the timeout's message).
#[derive(Clone, Copy)]
struct CallTime {
    deadline: Instant,
    budget: Duration,
}

/// What asking the pool for an endpoint gave.
enum Picked<F> {
    /// The attempt is on its way (once polled) to this endpoint.
    Sent(SocketAddr, crate::pool::Tracked<F>),
    /// Discovery lists no endpoint, and has for this long.
    NoEndpoints(Duration),
    /// The breaker is half-open and its probes are all out.
    AwaitingProbes,
    Refused(CallError),
}

/// An attempt the pool counts as in flight. Dropped unfinished — the caller went away — it is
/// given back unjudged, so in-flight counts and half-open probe slots cannot leak.
struct InFlight<'a> {
    inner: &'a Inner,
    addr: SocketAddr,
    scope: BreakerScope,
    open: bool,
}

impl InFlight<'_> {
    fn close(mut self) {
        self.open = false;
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.open {
            self.inner.finish_unjudged(self.addr, self.scope);
        }
    }
}

/// Methods RFC 9110 defines as idempotent.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// 502, 503 and 504 from an endpoint count against it and may be retried elsewhere.
fn is_failure_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// How one attempt ended.
enum Attempt {
    Answered(Response<UpstreamBody>),
    FailedStatus(Response<UpstreamBody>),
    ConnectFailed(String),
    Broken(String),
    /// The connection closed before the response began (see `SendError::Closed`).
    Closed {
        detail: String,
        reused: bool,
    },
    TimedOut,
}

impl Attempt {
    /// The endpoint's answer, when it gave one.
    fn status(&self) -> Option<u16> {
        match self {
            Attempt::Answered(response) | Attempt::FailedStatus(response) => {
                Some(response.status().as_u16())
            }
            _ => None,
        }
    }

    /// What failed (the metric and log label), `None` for an answer that counts as success.
    fn failure(&self) -> Option<&'static str> {
        match self {
            Attempt::Answered(_) => None,
            Attempt::FailedStatus(_) => Some("status_5xx"),
            Attempt::ConnectFailed(_) => Some("connect"),
            Attempt::Broken(_) => Some("protocol"),
            Attempt::Closed { reused: true, .. } => Some("stale_connection"),
            Attempt::Closed { reused: false, .. } => Some("closed"),
            Attempt::TimedOut => Some("timeout"),
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Pool> {
        // A panic while holding the lock leaves plain counters behind; keep going.
        self.pool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn prepare(&self, body: Body) -> Result<Payload, CallError> {
        let hint = body.size_hint();
        if hint.exact() == Some(0) {
            return Ok(Payload::Replayable(Bytes::new()));
        }
        match hint.upper() {
            Some(size) if size <= self.config.retry_body_limit as u64 => {
                match body.collect().await {
                    Ok(collected) => Ok(Payload::Replayable(collected.to_bytes())),
                    Err(error) => Err(CallError::RequestBody {
                        fault: BodyFault::of(&error),
                        detail: error.to_string(),
                    }),
                }
            }
            _ => Ok(Payload::Streaming(Some(body))),
        }
    }

    async fn attempts(
        &self,
        mut parts: Parts,
        mut payload: Payload,
        retry_safe: bool,
        scope: BreakerScope,
        call_time: CallTime,
    ) -> Result<Response<UpstreamBody>, CallError> {
        let deadline = tokio::time::Instant::from_std(call_time.deadline);
        let mut timer = std::pin::pin!(tokio::time::sleep_until(deadline));
        let mut previous: Option<SocketAddr> = None;
        let mut attempt = 0;
        loop {
            let replayable = matches!(payload, Payload::Replayable(_));
            let mut body = Some(match &mut payload {
                Payload::Replayable(bytes) => Body::from(bytes.clone()),
                Payload::Streaming(body) => body.take().unwrap_or_else(Body::empty),
            });
            // One client span per attempt; the next hop's parent is this attempt.
            let span = msa_telemetry::client_span(
                &parts.method,
                &self.name,
                parts.uri.path(),
                attempt,
                &mut parts.headers,
            );
            // Registered before the pool is asked again, so a change in between is not missed;
            // only once the pool has said to wait (a lock per request otherwise).
            let mut endpoints_changed = None;
            let mut breaker_changed = None;
            let (addr, call, started, try_time) = loop {
                // The attempt's time runs from here (the pool's choice takes microseconds), and
                // the endpoint is told it.
                let now = Instant::now();
                let Some(try_time) =
                    deadline::attempt_budget(now, self.config.per_try_timeout, call_time.deadline)
                else {
                    return Err(self.overall_timeout(call_time));
                };
                let told = if try_time == self.config.per_try_timeout {
                    self.per_try_header.clone()
                } else {
                    deadline::header_value(try_time)
                };
                parts.headers.insert(&TIMEOUT_HEADER, told);
                match self.pick(now, previous, scope, &parts, &mut body) {
                    Picked::Sent(addr, call) => break (addr, call, now, try_time),
                    Picked::Refused(error) => return Err(error),
                    Picked::NoEndpoints(for_at_least) => {
                        let Some(waiting) = &mut endpoints_changed else {
                            endpoints_changed = Some(enabled(&self.endpoints_changed));
                            continue;
                        };
                        let left = self.unavailable_after.saturating_sub(for_at_least);
                        if !left.is_zero() {
                            tokio::select! {
                                biased;
                                () = waiting.as_mut() => {
                                    endpoints_changed = None;
                                    continue;
                                }
                                () = tokio::time::sleep(left) => {}
                                () = &mut timer => return Err(self.overall_timeout(call_time)),
                            }
                        }
                        self.refused("no_endpoints");
                        return Err(CallError::NoEndpoints {
                            upstream: self.name.clone(),
                            source_name: self.source.clone(),
                        });
                    }
                    Picked::AwaitingProbes => {
                        let Some(waiting) = &mut breaker_changed else {
                            breaker_changed = Some(enabled(&self.breaker_changed));
                            continue;
                        };
                        // A probe's verdict comes within its per-try time; ask again then at
                        // the latest.
                        tokio::select! {
                            biased;
                            () = waiting.as_mut() => {}
                            () = tokio::time::sleep(self.config.per_try_timeout) => {}
                            () = &mut timer => return Err(self.overall_timeout(call_time)),
                        }
                        breaker_changed = None;
                    }
                }
            };
            msa_telemetry::client_endpoint(&span, addr);
            let in_flight = InFlight {
                inner: self,
                addr,
                scope,
                open: true,
            };
            let try_deadline = tokio::time::Instant::from_std(started) + try_time;
            timer.as_mut().reset(try_deadline.min(deadline));
            let ended = tokio::select! {
                biased;
                sent = call.instrument(span.clone()) => match sent {
                    Ok(response) if is_failure_status(response.status()) => {
                        Attempt::FailedStatus(response)
                    }
                    Ok(response) => Attempt::Answered(response),
                    Err(SendError::Exchange(error))
                        if BodyFault::of(&*error) != BodyFault::Unreadable =>
                    {
                        // The caller's body outgrew the limit or stalled while streaming: not
                        // the endpoint's fault, so nothing is recorded against it (`in_flight`
                        // gives the attempt back when dropped).
                        return Err(CallError::RequestBody {
                            fault: BodyFault::of(&*error),
                            detail: error_chain(&*error),
                        });
                    }
                    Err(SendError::Connect(detail)) => Attempt::ConnectFailed(detail),
                    Err(SendError::Exchange(error)) => Attempt::Broken(error_chain(&*error)),
                    Err(SendError::Closed { error, reused }) => Attempt::Closed {
                        detail: error_chain(&*error),
                        reused,
                    },
                },
                () = &mut timer => Attempt::TimedOut,
            };
            in_flight.close();
            msa_telemetry::finish_client_span(&span, ended.status(), ended.failure());
            let latency = started.elapsed();
            self.record(addr, scope, latency, &ended);
            if matches!(ended, Attempt::TimedOut) && try_deadline >= deadline {
                return Err(self.overall_timeout(call_time));
            }
            // A refused connection carried no byte of the request, so any method may go again.
            let safe = replayable && (retry_safe || matches!(ended, Attempt::ConnectFailed(_)));
            // A connection that closed before any answer: an idempotent request goes again on
            // a fresh connection, to the same endpoint if it is the only one (a one-replica
            // service mid-rollout), as HTTP clients do (RFC 9110 §9.2.2).
            let closed = matches!(ended, Attempt::Closed { .. });
            // Asked only after a failure: no lock on the path of a successful request.
            let retry = match ended.failure() {
                Some(reason) if safe && attempt < self.config.max_retries => {
                    let alternative = self.lock().has_alternative(addr, Instant::now());
                    ((closed || alternative) && self.retry_allowed(reason, addr))
                        .then_some(alternative)
                }
                _ => None,
            };
            if let Some(alternative) = retry {
                attempt += 1;
                // Another endpoint when there is one; the same one only after a closed
                // connection, for a service with no other.
                previous = alternative.then_some(addr);
                let jitter = 0.5 + XorShift::from_clock().next_f64();
                let pause = tokio::time::Instant::now() + self.config.retry_backoff.mul_f64(jitter);
                if pause >= deadline {
                    return Err(self.overall_timeout(call_time));
                }
                timer.as_mut().reset(pause);
                (&mut timer).await;
                timer.as_mut().reset(deadline);
                continue;
            }
            return match ended {
                Attempt::Answered(response) | Attempt::FailedStatus(response) => Ok(response),
                Attempt::ConnectFailed(detail) => Err(CallError::Connect {
                    upstream: self.name.clone(),
                    endpoint: addr,
                    detail,
                }),
                // Nothing was answered: for an idempotent request that is "come back shortly"
                // (Envoy answers a reset before headers with 503 too); a POST may have been
                // applied, so the caller must not take it for nothing having happened.
                Attempt::Closed { detail, .. } if retry_safe => Err(CallError::Unanswered {
                    upstream: self.name.clone(),
                    endpoint: addr,
                    detail,
                }),
                Attempt::Broken(detail) | Attempt::Closed { detail, .. } => {
                    Err(CallError::Protocol {
                        upstream: self.name.clone(),
                        endpoint: addr,
                        detail,
                    })
                }
                Attempt::TimedOut => Err(CallError::Timeout {
                    upstream: self.name.clone(),
                    after: try_time,
                }),
            };
        }
    }

    /// The call ran out of its overall time.
    fn overall_timeout(&self, call_time: CallTime) -> CallError {
        CallError::Timeout {
            upstream: self.name.clone(),
            after: call_time.budget,
        }
    }

    /// Asks the pool for an endpoint other than `exclude`; when it gives one, the returned
    /// future sends `head` and `body` there.
    fn pick<'a, 'h>(
        &'a self,
        now: Instant,
        exclude: Option<SocketAddr>,
        scope: BreakerScope,
        head: &'h Parts,
        body: &mut Option<Body>,
    ) -> Picked<impl Future<Output = Result<Response<UpstreamBody>, SendError>> + use<'a, 'h>> {
        let outcome = self.lock().send(now, exclude, scope, |addr| {
            let body = body.take().expect("sent once");
            // Boxed: the pool, the span and the select move a pointer, not the exchange.
            Box::pin(self.connections.send(addr, head, body))
        });
        let (refusal, changes) = match outcome {
            Ok((addr, call)) => return Picked::Sent(addr, call),
            Err(refused) => refused,
        };
        self.report(changes);
        match refusal {
            Refusal::NoEndpoints { for_at_least } => Picked::NoEndpoints(for_at_least),
            Refusal::AwaitingProbes { .. } => Picked::AwaitingProbes,
            Refusal::CircuitOpen { retry_after } => {
                self.refused("circuit_open");
                Picked::Refused(CallError::CircuitOpen {
                    upstream: self.name.clone(),
                    scope,
                    retry_after,
                })
            }
            Refusal::NoOtherEndpoint => {
                self.refused("no_endpoints");
                Picked::Refused(CallError::NoEndpoints {
                    upstream: self.name.clone(),
                    source_name: self.source.clone(),
                })
            }
        }
    }

    /// An attempt ended without a verdict on the endpoint; a probe slot it held goes to a call
    /// awaiting the probes.
    fn finish_unjudged(&self, addr: SocketAddr, scope: BreakerScope) {
        if self.lock().finish_unjudged(addr, Instant::now(), scope) {
            self.breaker_changed.notify_waiters();
        }
    }

    fn record(&self, addr: SocketAddr, scope: BreakerScope, latency: Duration, ended: &Attempt) {
        let failure = ended.failure();
        let changes = match (failure, ended) {
            // Not the endpoint's fault: neither a success nor a failure for its health.
            (_, Attempt::Closed { reused: true, .. }) => {
                self.finish_unjudged(addr, scope);
                Vec::new()
            }
            (None, _) => {
                self.lock()
                    .finish(addr, Instant::now(), scope, Outcome::Success { latency })
            }
            (Some(_), _) => self
                .lock()
                .finish(addr, Instant::now(), scope, Outcome::Failure),
        };
        self.with_endpoint_metrics(addr, |handles| {
            handles.duration.observe(latency.as_secs_f64());
            if failure.is_none() {
                handles.successes.inc();
            }
        });
        if let Some(label) = failure {
            self.metrics
                .attempts
                .get_or_create(&AttemptLabels {
                    upstream: self.name.clone(),
                    endpoint: addr.to_string(),
                    outcome: label,
                })
                .inc();
        }
        self.report(changes);
    }

    /// Drops the metric series of endpoints that left, so pod churn does not grow them forever.
    fn forget_departed(&self, present: &[crate::Endpoint]) {
        let mut cache = self
            .endpoint_metrics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.retain(|addr, _| {
            let stays = present.iter().any(|e| e.addr == *addr);
            if !stays {
                let labels = UpstreamMetrics::endpoint(&self.name, *addr);
                self.metrics.attempt_duration.remove(&labels);
                self.metrics.attempts.remove(&AttemptLabels {
                    upstream: labels.upstream,
                    endpoint: labels.endpoint,
                    outcome: "success",
                });
            }
            stays
        });
    }

    /// Runs `update` on the endpoint's metric handles of the hot path (looked up by label once
    /// per endpoint), under the cache's lock rather than on clones of them.
    fn with_endpoint_metrics(&self, addr: SocketAddr, update: impl FnOnce(&EndpointHandles)) {
        let mut cache = self
            .endpoint_metrics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let handles = cache.entry(addr).or_insert_with(|| EndpointHandles {
            successes: self
                .metrics
                .attempts
                .get_or_create(&AttemptLabels {
                    upstream: self.name.clone(),
                    endpoint: addr.to_string(),
                    outcome: "success",
                })
                .clone(),
            duration: self
                .metrics
                .attempt_duration
                .get_or_create(&UpstreamMetrics::endpoint(&self.name, addr))
                .clone(),
        });
        update(handles);
    }

    fn retry_allowed(&self, reason: &'static str, failed: SocketAddr) -> bool {
        if self.lock().allow_retry(Instant::now()) {
            self.metrics
                .retries
                .get_or_create(&ReasonLabels {
                    upstream: self.name.clone(),
                    reason,
                })
                .inc();
            info!(upstream = %self.name, endpoint = %failed, reason, "retrying");
            true
        } else {
            self.metrics
                .retries_refused
                .get_or_create(&UpstreamLabel {
                    upstream: self.name.clone(),
                })
                .inc();
            warn!(upstream = %self.name, endpoint = %failed, reason, "not retrying: the retry budget is spent");
            false
        }
    }

    fn refused(&self, reason: &'static str) {
        self.metrics
            .refused
            .get_or_create(&ReasonLabels {
                upstream: self.name.clone(),
                reason,
            })
            .inc();
    }

    fn report(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        if changes
            .iter()
            .any(|change| matches!(change, Change::Breaker { .. }))
        {
            self.breaker_changed.notify_waiters();
        }
        for change in changes {
            match change {
                Change::Ejected {
                    endpoint,
                    duration,
                    reason,
                } => {
                    warn!(upstream = %self.name, %endpoint, reason, ejected_ms = duration.as_millis() as u64, "endpoint ejected");
                    self.metrics
                        .ejections
                        .get_or_create(&crate::metrics::EjectionLabels {
                            upstream: self.name.clone(),
                            endpoint: endpoint.to_string(),
                            reason,
                        })
                        .inc();
                }
                Change::Readmitted { endpoint } => {
                    info!(upstream = %self.name, %endpoint, "endpoint readmitted after a successful probe");
                    self.metrics
                        .readmissions
                        .get_or_create(&UpstreamMetrics::endpoint(&self.name, endpoint))
                        .inc();
                }
                Change::Breaker { scope, from, to } => {
                    let route = scope.to_string();
                    warn!(upstream = %self.name, route, from, to, "circuit breaker changed state");
                    self.metrics.set_breaker(&self.name, &route, to);
                    self.metrics
                        .breaker_transitions
                        .get_or_create(&BreakerLabels {
                            upstream: self.name.clone(),
                            route,
                            state: to,
                        })
                        .inc();
                }
            }
        }
        self.count_endpoints();
    }

    fn count_endpoints(&self) {
        let view = self.lock().view(Instant::now());
        let ejected = view.endpoints.iter().filter(|e| e.ejected).count();
        for (state, count) in [("discovered", view.endpoints.len()), ("ejected", ejected)] {
            self.metrics
                .endpoints
                .get_or_create(&StateLabels {
                    upstream: self.name.clone(),
                    state,
                })
                .set(count as i64);
        }
    }
}

/// A notification of `notify`'s next `notify_waiters`, registered now.
fn enabled(notify: &Notify) -> std::pin::Pin<Box<tokio::sync::futures::Notified<'_>>> {
    let mut notified = Box::pin(notify.notified());
    notified.as_mut().enable();
    notified
}

/// Whether `E` is somewhere in the error's chain of causes.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// Whether a body error is a read that timed out: the server's body timeout (an `io::Error` of
/// kind `TimedOut`, see msa-service-kit's `connections`).
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// An error with its causes, which hyper keeps in the chain.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Reads a whole response body (for callers that want JSON, like the order service).
pub async fn read_body(
    response: Response<UpstreamBody>,
    limit: usize,
) -> Result<(StatusCode, Bytes), String> {
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), limit)
        .collect()
        .await
        .map_err(|e| format!("unreadable response body: {e}"))?;
    Ok((status, body.to_bytes()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use http::HeaderValue;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    use super::*;
    use crate::breaker::BreakerConfig;
    use crate::endpoint::Endpoint;
    use crate::outlier::OutlierConfig;

    /// An HTTP/1.1 endpoint on 127.0.0.1: answers 200, or 503 while `failing`, once `gate` is
    /// open; notes every `x-msa-timeout-ms` it is sent.
    struct Backend {
        failing: AtomicBool,
        requests: AtomicUsize,
        told: Mutex<Vec<Vec<HeaderValue>>>,
        gate: tokio::sync::watch::Sender<bool>,
    }

    impl Default for Backend {
        fn default() -> Self {
            Backend {
                failing: AtomicBool::default(),
                requests: AtomicUsize::default(),
                told: Mutex::default(),
                gate: tokio::sync::watch::Sender::new(true),
            }
        }
    }

    async fn backend(state: Arc<Backend>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let state = state.clone();
                        async move {
                            state.requests.fetch_add(1, Ordering::SeqCst);
                            let told = request
                                .headers()
                                .get_all(&TIMEOUT_HEADER)
                                .iter()
                                .cloned()
                                .collect();
                            state.told.lock().unwrap().push(told);
                            let _ = state.gate.subscribe().wait_for(|open| *open).await;
                            let mut response = Response::new(Body::empty());
                            if state.failing.load(Ordering::SeqCst) {
                                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    fn upstream(addr: SocketAddr, breaker: BreakerConfig, calls: CallConfig) -> Upstream {
        let pool = PoolConfig {
            breaker,
            // One endpoint, never ejected: only the breaker decides.
            outliers: OutlierConfig {
                consecutive_failures: 1_000_000,
                latency_factor: 0.0,
                ..OutlierConfig::default()
            },
            ..PoolConfig::default()
        };
        Upstream::new(
            "test",
            Discovery::fixed(vec![Endpoint::new(addr)]),
            pool,
            calls,
            UpstreamMetrics::register(&mut Default::default()),
        )
    }

    fn get() -> Request<Body> {
        Request::get("/x").body(Body::empty()).unwrap()
    }

    /// The one `x-msa-timeout-ms` value of the last request, in milliseconds.
    fn last_told(state: &Backend) -> u64 {
        let told = state.told.lock().unwrap();
        let values = told.last().expect("a request arrived");
        assert_eq!(values.len(), 1, "exactly one value: {values:?}");
        values[0].to_str().unwrap().parse().unwrap()
    }

    /// Issue 27: each attempt tells the endpoint how long it will wait — its per-try timeout,
    /// or less when the caller's deadline is nearer — and replaces any value the caller set.
    #[tokio::test]
    async fn every_attempt_tells_the_endpoint_how_long_it_will_wait() {
        let state = Arc::new(Backend::default());
        let addr = backend(state.clone()).await;
        let calls = CallConfig {
            per_try_timeout: Duration::from_millis(800),
            request_timeout: Duration::from_millis(2_000),
            ..CallConfig::default()
        };
        let upstream = upstream(addr, BreakerConfig::default(), calls);

        upstream.send(get()).await.unwrap();
        let told = last_told(&state);
        assert!((1..=800).contains(&told), "told {told} ms");

        let mut near = get();
        near.extensions_mut()
            .insert(Deadline(Instant::now() + Duration::from_millis(300)));
        upstream.send(near).await.unwrap();
        let told = last_told(&state);
        assert!((1..=300).contains(&told), "told {told} ms");

        let mut claims_more = get();
        claims_more
            .headers_mut()
            .insert(&TIMEOUT_HEADER, HeaderValue::from_static("99999"));
        upstream.send(claims_more).await.unwrap();
        let told = last_told(&state);
        assert!(
            (1..=800).contains(&told),
            "told {told} ms, never lengthened"
        );

        let before = state.requests.load(Ordering::SeqCst);
        let mut spent = get();
        spent.extensions_mut().insert(Deadline(Instant::now()));
        let error = upstream.send(spent).await.unwrap_err();
        assert!(matches!(error, CallError::Timeout { .. }), "{error}");
        assert_eq!(
            state.requests.load(Ordering::SeqCst),
            before,
            "a call with no time left is not sent"
        );
    }

    fn quick_breaker(open_for: Duration) -> BreakerConfig {
        BreakerConfig {
            failure_rate_percent: 50,
            minimum_calls: 4,
            window: Duration::from_secs(60),
            open_for,
            half_open_probes: 3,
        }
    }

    fn no_retries() -> CallConfig {
        CallConfig {
            max_retries: 0,
            ..CallConfig::default()
        }
    }

    /// Fails 4 calls so the breaker opens, then waits (polling) until it reads half-open.
    async fn open_then_lapse(upstream: &Upstream, state: &Backend) {
        state.failing.store(true, Ordering::SeqCst);
        for _ in 0..4 {
            let answer = upstream.send(get()).await.unwrap();
            assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        assert_eq!(upstream.view().breaker, "open");
        let patience = Instant::now() + Duration::from_secs(30);
        while upstream.view().breaker != "half_open" {
            assert!(Instant::now() < patience, "the breaker never lapsed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends a burst of 80 calls (each its own task) while the endpoint holds its answers, waits
    /// until the probes have reached it, then lets it answer; returns the calls' outcomes.
    /// On the single-threaded test runtime every call has asked the breaker by then: the tasks
    /// run in the order spawned, before the endpoint's connections are even accepted.
    async fn burst(upstream: &Upstream, state: &Backend) -> Vec<Result<StatusCode, CallError>> {
        let before = state.requests.load(Ordering::SeqCst);
        state.gate.send_replace(false);
        let calls: Vec<_> = (0..80)
            .map(|_| {
                let upstream = upstream.clone();
                tokio::spawn(async move { upstream.send(get()).await.map(|r| r.status()) })
            })
            .collect();
        let patience = Instant::now() + Duration::from_secs(30);
        while state.requests.load(Ordering::SeqCst) - before < 3 {
            assert!(Instant::now() < patience, "the probes never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        state.gate.send_replace(true);
        let mut outcomes = Vec::new();
        for call in calls {
            outcomes.push(call.await.unwrap());
        }
        outcomes
    }

    /// Issue 27: after a quiet period a half-open breaker turned away 77 of 80 orders to a
    /// healthy service. Now the calls beyond the probes wait for their verdict and go.
    #[tokio::test]
    async fn a_burst_meeting_a_lapsed_breaker_waits_for_the_probes_and_goes() {
        let state = Arc::new(Backend::default());
        let addr = backend(state.clone()).await;
        let upstream = upstream(
            addr,
            quick_breaker(Duration::from_millis(200)),
            no_retries(),
        );
        open_then_lapse(&upstream, &state).await;
        state.failing.store(false, Ordering::SeqCst);

        let outcomes = burst(&upstream, &state).await;
        let refused: Vec<String> = outcomes
            .iter()
            .filter_map(|answer| answer.as_ref().err().map(ToString::to_string))
            .collect();
        assert!(
            refused.is_empty(),
            "{} turned away: {refused:?}",
            refused.len()
        );
        assert!(
            outcomes
                .iter()
                .all(|s| *s.as_ref().unwrap() == StatusCode::OK)
        );
        assert_eq!(upstream.view().breaker, "closed");
    }

    /// While the service still fails, a burst meeting the half-open breaker sends it only the
    /// probes; the rest get the open circuit's refusal.
    #[tokio::test]
    async fn a_failing_service_meets_only_the_probes() {
        let state = Arc::new(Backend::default());
        let addr = backend(state.clone()).await;
        // Long enough that the burst is over before the circuit lapses again.
        let upstream = upstream(addr, quick_breaker(Duration::from_secs(2)), no_retries());
        open_then_lapse(&upstream, &state).await;

        let before = state.requests.load(Ordering::SeqCst);
        let outcomes = burst(&upstream, &state).await;
        let reached = state.requests.load(Ordering::SeqCst) - before;
        let refused = outcomes
            .iter()
            .filter(|answer| matches!(answer, Err(CallError::CircuitOpen { .. })))
            .count();
        assert_eq!(reached, 3, "only the probes reached the failing service");
        assert_eq!(refused, 77, "the others are refused, not sent");
        assert_eq!(upstream.view().breaker, "open");
    }
}
