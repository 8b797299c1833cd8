//! Client connections: how many a server holds and how long it waits for each, so a slow or
//! silent client costs a bounded amount of memory and file descriptors.
//!
//! hyper serves the HTTP/1.1 on each connection; this module owns the accept loop around it and
//! adds what hyper leaves to the server (and axum's `serve` does not set): a connection limit,
//! a time limit for a request head (answered with 408 when it runs out), an idle keep-alive
//! limit, and limits on a request body — a pause between its bytes, a deadline for the whole
//! of it, and a minimum average rate — that the body readers turn into a 408 (see
//! [`body_timed_out`] and [`ConnectionLimits::body_due`]). The bookkeeping is [`Activity`], a
//! plain struct with the clock passed in; the accept loop and the per-connection task only feed
//! it and act on its verdicts.
//!
//! Beside the usual proxies' defaults: nginx times a body only between two reads
//! (`client_body_timeout`, 60 s) with no total, so one byte every 59 s holds a connection for
//! as long as the body is long; HAProxy's `timeout http-request` covers only the head unless
//! `option http-buffer-request` is set, and `timeout client` is again an inactivity timeout.
//! Apache's `mod_reqtimeout` (`body=20,MinRate=500`) is the model for the minimum rate here:
//! after a grace, the body must have averaged at least that many bytes a second.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;
use tracing::{debug, warn};

/// What a server allows each client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From a request's first byte to the end of its head (request line and headers).
    pub header_timeout: Duration,
    /// Longest pause between two reads of a request body.
    pub body_timeout: Duration,
    /// Longest a whole request body may take, from when the server first waits for it.
    pub body_deadline: Duration,
    /// Slowest average a request body may arrive at once `body_rate_grace` has passed, in bytes
    /// per second (0: no minimum).
    pub body_min_rate: u32,
    pub body_rate_grace: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// Connections open at once; more wait in the kernel's accept queue.
    pub max_connections: usize,
}

impl ConnectionLimits {
    /// How long a connection that has sent nothing yet is kept: the header timeout (at most
    /// the idle one). The idle keep-alive time is for clients that have made a request; a
    /// client that connects and says nothing would otherwise hold a slot six times as long,
    /// and a few thousand such clients every slot. Closed without an answer: no request began.
    pub fn silent_timeout(&self) -> Duration {
        self.header_timeout.min(self.idle_timeout)
    }
}

impl Default for ConnectionLimits {
    /// HAProxy's advice for `timeout http-request` (10 s) for heads and body pauses; a whole
    /// body within 30 s, averaging at least 500 bytes a second after its first 10 s (Apache's
    /// `MinRate`; a 64 KiB body, the default limit, needs 130 s at that rate, so the rate only
    /// catches trickles, the deadline everything else); an idle keep-alive connection lives
    /// 60 s, longer than the 30 s the msa client pools keep one, so a pool never reuses a
    /// connection the server is about to close.
    fn default() -> Self {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            body_deadline: Duration::from_secs(30),
            body_min_rate: 500,
            body_rate_grace: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

impl ConnectionLimits {
    /// When a request body that began at `started`, last made progress at `last_read` and has
    /// `received` bytes so far is too slow, unless more arrives first: the earliest of its
    /// pause limit, its whole deadline, and the moment its average since `started` falls under
    /// the minimum rate after the grace (each byte buys `1 / body_min_rate` s more, as in
    /// Apache's `MinRate`).
    pub fn body_due(&self, started: Instant, last_read: Instant, received: u64) -> Instant {
        let paused = last_read + self.body_timeout;
        let due = paused.min(started + self.body_deadline);
        if self.body_min_rate == 0 {
            return due;
        }
        let earned = Duration::from_nanos(
            received.saturating_mul(1_000_000_000) / u64::from(self.body_min_rate),
        );
        match (started + self.body_rate_grace).checked_add(earned) {
            Some(slow) => due.min(slow),
            None => due,
        }
    }
}

/// Whether `error` (a failed body read, wrapped any number of times) is the body timeout: the
/// client paused longer than [`ConnectionLimits::body_timeout`]. It is an `io::Error` of kind
/// `TimedOut`, so layers that do not know this crate (the upstream client) recognise it too.
pub fn body_timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = error.source();
    }
    false
}

/// A request body that fails with a `TimedOut` error when the client is too slow (see
/// [`ConnectionLimits::body_due`]). Unlike tower-http's `TimeoutBody` it keeps the body's size
/// hint (the gateway decides on it whether a request may be retried) and reads the clock and
/// arms a timer only when it has to wait for the client, not for a body that is already in.
struct BodyTimeout {
    inner: Incoming,
    limits: ConnectionLimits,
    /// When the body was first waited for.
    started: Option<Instant>,
    received: u64,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl hyper::body::Body for BodyTimeout {
    type Data = axum::body::Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.sleep = None;
                if let Some(Ok(frame)) = &frame
                    && let Some(data) = frame.data_ref()
                {
                    this.received = this.received.saturating_add(data.len() as u64);
                }
                Poll::Ready(frame.map(|f| f.map_err(io::Error::other)))
            }
            Poll::Pending => {
                let sleep = this.sleep.get_or_insert_with(|| {
                    // The first wait after progress: the pause runs from here.
                    let now = Instant::now();
                    let started = *this.started.get_or_insert(now);
                    let due = this.limits.body_due(started, now, this.received);
                    Box::pin(tokio::time::sleep_until(due))
                });
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request body arrived too slowly",
                    )))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// What the connection should do now, by [`Activity::verdict`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do before this instant.
    WaitUntil(Instant),
    /// Idle past the keep-alive limit: close without a word (no request is pending).
    CloseIdle,
    /// A request head did not arrive in time: answer 408 and close.
    HeadTimedOut,
}

/// One connection's state as seen from its bytes and its requests.
#[derive(Clone, Debug)]
pub struct Activity {
    /// Requests whose head was read and whose response head is not yet written.
    in_flight: usize,
    /// When the first byte of the next request arrived (no request in flight).
    head_started: Option<Instant>,
    /// Since when nothing has happened (no request in flight, nothing read since).
    idle_since: Instant,
    /// When the connection's task will next look at this (see [`Activity::read`]).
    next_look: Option<Instant>,
    /// Nothing has arrived since the connection opened (see
    /// [`ConnectionLimits::silent_timeout`]).
    silent: bool,
}

impl Activity {
    pub fn new(now: Instant) -> Self {
        Activity {
            in_flight: 0,
            head_started: None,
            idle_since: now,
            next_look: None,
            silent: true,
        }
    }

    /// Bytes arrived from the client. True when they start a request head whose deadline comes
    /// before the task's next look, so the task must be woken to look sooner. On a busy
    /// keep-alive connection that is about once per `header_timeout`, not once per request: the
    /// look planned for the previous head comes first.
    pub fn read(&mut self, now: Instant, header_timeout: Duration) -> bool {
        self.silent = false;
        if self.in_flight > 0 || self.head_started.is_some() {
            return false;
        }
        self.head_started = Some(now);
        let deadline = now + header_timeout;
        self.next_look.is_none_or(|look| look > deadline)
    }

    /// The task will look again at `at`.
    pub fn looking_at(&mut self, at: Instant) {
        self.next_look = Some(at);
    }

    /// Bytes went out to the client (a response streaming keeps the connection busy).
    pub fn wrote(&mut self, now: Instant) {
        if self.in_flight == 0 && self.head_started.is_none() {
            self.idle_since = now;
        }
    }

    /// A request head was read completely and handed to the service.
    pub fn request_started(&mut self) {
        self.in_flight += 1;
        self.head_started = None;
    }

    /// The service answered (its body may still be streaming).
    pub fn request_answered(&mut self, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.idle_since = now;
    }

    pub fn verdict(&self, now: Instant, limits: &ConnectionLimits) -> Verdict {
        if self.in_flight > 0 {
            // The handler and the body timeout own this time; look again later.
            return Verdict::WaitUntil(now + limits.header_timeout.min(limits.idle_timeout));
        }
        if let Some(started) = self.head_started {
            let deadline = started + limits.header_timeout;
            return if now >= deadline {
                Verdict::HeadTimedOut
            } else {
                Verdict::WaitUntil(deadline)
            };
        }
        let idle_limit = if self.silent {
            limits.silent_timeout()
        } else {
            limits.idle_timeout
        };
        let deadline = self.idle_since + idle_limit;
        if now >= deadline {
            Verdict::CloseIdle
        } else {
            Verdict::WaitUntil(deadline)
        }
    }
}

/// A connection's [`Activity`], shared by its stream, its requests and its task.
struct Tracked {
    activity: Mutex<Activity>,
    /// Set when the head timed out: the stream answers 408 as it is dropped.
    answer_timeout: AtomicBool,
    /// Wakes the connection's task when a deadline comes forward (a head started).
    deadline_moved: Notify,
}

type Shared = Arc<Tracked>;

fn with<T>(shared: &Shared, f: impl FnOnce(&mut Activity) -> T) -> T {
    f(&mut shared
        .activity
        .lock()
        .unwrap_or_else(PoisonError::into_inner))
}

/// The longest request head, and the most a connection buffers while one arrives; a longer
/// head gets 431, also when it arrives all at once. hyper's default (~400 KiB) times the
/// connection limit (10 000) would let slow clients pin about 4 GB; at 96 KiB it is under 1 GB
/// at worst, and no real request comes close. Above hyper's URI limit (64 KiB) on purpose: a
/// request line just past that is read whole and answered 414, as nginx answers it.
pub const MAX_HEAD_BUFFER: usize = 96 * 1024;

/// The answer to a request head that did not arrive in time (nothing else was written).
pub const REQUEST_TIMEOUT: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\
content-type: application/problem+json\r\nconnection: close\r\ncontent-length: 186\r\n\r\n\
{\"type\":\"https://msa.dev/problems/request-timeout\",\"title\":\"Request Timeout\",\"status\":408,\"detail\":\"the request head did not arrive in time; send a request at once\"}";

/// The TCP stream as hyper sees it, reporting reads and writes to the connection's [`Activity`].
struct Watched {
    stream: TcpStream,
    /// Bytes already read off the stream by someone else (the gateway's own front), read first.
    read_already: axum::body::Bytes,
    activity: Shared,
    header_timeout: Duration,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = if self.read_already.is_empty() {
            Pin::new(&mut self.stream).poll_read(cx, buf)
        } else {
            let n = buf.remaining().min(self.read_already.len());
            buf.put_slice(&self.read_already.split_to(n));
            Poll::Ready(Ok(()))
        };
        if matches!(polled, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && with(&self.activity, |a| {
                a.read(Instant::now(), self.header_timeout)
            })
        {
            self.activity.deadline_moved.notify_one();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            with(&self.activity, |a| a.wrote(Instant::now()));
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            with(&self.activity, |a| a.wrote(Instant::now()));
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        // Set when the head timed out: hyper has written nothing, so the answer is ours.
        if self.activity.answer_timeout.load(Ordering::Relaxed) {
            // Small enough for any socket buffer; if even that fails, closing says enough.
            let _ = self.stream.try_write(REQUEST_TIMEOUT);
        }
    }
}

/// Serves `service` on `listener` within `limits` until `stop` turns true; then every
/// connection finishes its current request and closes, and this returns when all have.
pub async fn serve<S>(
    listener: TcpListener,
    service: S,
    limits: ConnectionLimits,
    stop: watch::Receiver<bool>,
) where
    S: tower::Service<Request, Response = Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
{
    accept(listener, limits, stop, move |stream, peer, stop| {
        connection(
            stream,
            axum::body::Bytes::new(),
            peer,
            service.clone(),
            limits,
            stop,
        )
    })
    .await;
}

/// The accept loop: at most `limits.max_connections` connections at once, each handled by
/// `handle` in a task of its own, until `stop` turns true; then returns when every connection
/// has ended.
pub async fn accept<H, F>(
    listener: TcpListener,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
    handle: H,
) where
    H: Fn(TcpStream, SocketAddr, watch::Receiver<bool>) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut warned_full = false;
    loop {
        if permits.available_permits() == 0 && !warned_full {
            warn!(
                max_connections = limits.max_connections,
                "connection limit reached; new connections wait"
            );
            warned_full = true;
        }
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        warned_full = false;
        let served = handle(stream, peer, stop.clone());
        tokio::spawn(async move {
            served.await;
            drop(permit);
        });
    }
    // Every connection holds a permit until it ends.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
}

/// Resolves once `stop` is true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Serves one connection with hyper, `read_already` being bytes of it already read (a front
/// that read a request head and left it to hyper).
pub async fn connection<S>(
    stream: TcpStream,
    read_already: axum::body::Bytes,
    peer: SocketAddr,
    service: S,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let _ = stream.set_nodelay(true);
    let activity: Shared = Arc::new(Tracked {
        activity: Mutex::new(Activity::new(Instant::now())),
        answer_timeout: AtomicBool::new(false),
        deadline_moved: Notify::new(),
    });
    let io = Watched {
        stream,
        read_already,
        activity: activity.clone(),
        header_timeout: limits.header_timeout,
    };
    let per_request = activity.clone();
    let handler = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        with(&per_request, Activity::request_started);
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(ConnectInfo(peer));
        let body = Body::new(BodyTimeout {
            inner: body,
            limits,
            started: None,
            received: 0,
            sleep: None,
        });
        let answered = service.clone().oneshot(Request::from_parts(parts, body));
        let activity = per_request.clone();
        async move {
            let response = answered.await;
            with(&activity, |a| a.request_answered(Instant::now()));
            response
        }
    });
    let http = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Ours (above) measures from the first byte, so idle keep-alive has a limit of its own.
        .header_read_timeout(None)
        .max_header_size(MAX_HEAD_BUFFER)
        .max_buf_size(MAX_HEAD_BUFFER)
        .serve_connection(TokioIo::new(io), handler);
    let mut http = std::pin::pin!(http);
    let mut stopping = false;
    loop {
        let verdict = with(&activity, |a| {
            let verdict = a.verdict(Instant::now(), &limits);
            if let Verdict::WaitUntil(at) = verdict {
                a.looking_at(at);
            }
            verdict
        });
        let wake = match verdict {
            Verdict::WaitUntil(at) => at,
            Verdict::CloseIdle => {
                debug!(%peer, "closing an idle connection");
                return;
            }
            Verdict::HeadTimedOut => {
                debug!(%peer, "a request head timed out; answering 408");
                // Dropping the connection drops the stream, which then writes the 408.
                activity.answer_timeout.store(true, Ordering::Relaxed);
                return;
            }
        };
        tokio::select! {
            served = http.as_mut() => {
                if let Err(error) = served {
                    debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            () = tokio::time::sleep_until(wake) => {}
            () = activity.deadline_moved.notified() => {}
            () = stopped(&mut stop), if !stopping => {
                stopping = true;
                http.as_mut().graceful_shutdown();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1,
            ..ConnectionLimits::default()
        }
    }

    /// Issue 27: one byte every 5 s never hit the 10 s pause limit, so a trickled body held its
    /// connection for as long as it was long. The minimum rate ends it after the grace, and
    /// the deadline ends any body, however it is paced.
    #[test]
    fn a_trickled_body_is_due_after_the_grace_and_any_body_by_the_deadline() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let limits = ConnectionLimits::default();
        // One byte every 5 s: each read is within the pause limit, yet at 10 s it is due.
        let mut received = 0;
        let mut last_read = t0;
        for i in 1..=2 {
            let now = t0 + s(5 * i);
            assert!(now < limits.body_due(t0, last_read, received), "{i}");
            received += 1;
            last_read = now;
        }
        let due = limits.body_due(t0, last_read, received);
        assert!(due > t0 + s(10) && due < t0 + s(11), "{:?}", due - t0);

        // Fast enough (1 kB/s) but never finishing: the deadline at 30 s.
        let due = limits.body_due(t0, t0 + s(29), 29_000);
        assert_eq!(due, t0 + s(30));

        // A silent body: the pause limit (10 s), not the grace.
        let quiet = ConnectionLimits {
            body_timeout: s(3),
            ..limits
        };
        assert_eq!(quiet.body_due(t0, t0, 0), t0 + s(3));

        // No minimum rate: only the pause limit and the deadline (the old behaviour had only
        // the pause).
        let no_rate = ConnectionLimits {
            body_min_rate: 0,
            ..limits
        };
        assert_eq!(no_rate.body_due(t0, t0 + s(15), 3), t0 + s(25));
        assert_eq!(
            ConnectionLimits {
                body_min_rate: 1,
                ..limits
            }
            .body_due(t0, t0, u64::MAX),
            t0 + s(10),
            "a huge count cannot overflow"
        );
    }

    #[test]
    fn a_connection_that_never_sends_a_byte_gets_the_header_timeout_not_the_idle_one() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let activity = Activity::new(t0);
        assert_eq!(
            activity.verdict(t0, &limits()),
            Verdict::WaitUntil(t0 + s(10))
        );
        assert_eq!(
            activity.verdict(t0 + s(10), &limits()),
            Verdict::CloseIdle,
            "closed without an answer: no request began"
        );
    }

    #[test]
    fn a_head_is_timed_from_its_first_byte_and_idle_time_separately() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut activity = Activity::new(t0);
        // One request served: from now on the connection is an idle keep-alive one.
        activity.read(t0, s(10));
        activity.request_started();
        activity.request_answered(t0);
        assert_eq!(
            activity.verdict(t0, &limits()),
            Verdict::WaitUntil(t0 + s(60))
        );
        assert_eq!(activity.verdict(t0 + s(60), &limits()), Verdict::CloseIdle);

        // A first byte after 50 s idle: the head has 10 s from then, not what idle time is left.
        activity.looking_at(t0 + s(110));
        assert!(
            activity.read(t0 + s(50), s(10)),
            "the head's deadline is before the next look"
        );
        assert!(!activity.read(t0 + s(55), s(10)), "the same head");
        assert_eq!(
            activity.verdict(t0 + s(56), &limits()),
            Verdict::WaitUntil(t0 + s(60))
        );
        assert_eq!(
            activity.verdict(t0 + s(60), &limits()),
            Verdict::HeadTimedOut
        );

        // Once the head is in, a slow handler is not this clock's business.
        activity.request_started();
        assert!(matches!(
            activity.verdict(t0 + s(500), &limits()),
            Verdict::WaitUntil(_)
        ));
        assert!(!activity.read(t0 + s(501), s(10)), "a body, not a head");
        activity.request_answered(t0 + s(502));
        // Streaming the response keeps it busy; then the idle clock runs from the last write.
        activity.wrote(t0 + s(530));
        assert_eq!(
            activity.verdict(t0 + s(531), &limits()),
            Verdict::WaitUntil(t0 + s(590))
        );
        assert_eq!(activity.verdict(t0 + s(590), &limits()), Verdict::CloseIdle);
    }
}

#[cfg(test)]
mod wake_tests {
    use super::*;

    /// On a busy keep-alive connection the task is woken about once per header timeout, not
    /// once per request.
    #[test]
    fn back_to_back_requests_do_not_wake_the_task_each_time() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut activity = Activity::new(t0);
        activity.looking_at(t0 + Duration::from_secs(60));
        let mut wakes = 0;
        for i in 0..1000 {
            let now = t0 + ms(i);
            if activity.read(now, Duration::from_secs(10)) {
                wakes += 1;
                activity.looking_at(now + Duration::from_secs(10));
            }
            activity.request_started();
            activity.request_answered(now);
        }
        assert_eq!(wakes, 1);
    }
}
