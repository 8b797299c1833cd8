//! HTTP/1.1 keep-alive connections to each endpoint, held by the upstream that balances over
//! them. hyper's connection API does the protocol; this module only keeps the idle connections
//! of every endpoint, opens new ones, and forgets connections that closed, idled too long, or
//! belong to an endpoint that left.
//!
//! Why not hyper-util's pooled client: it keys its pool by URI authority (so every request
//! needs an absolute URI built and parsed), and after each response it spawns a task that
//! waits for the connection to become reusable. Here the balancer already knows the endpoint,
//! and a connection handed back while its response body still streams is simply skipped until
//! it is ready — no task per request.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

/// Idle connections kept per endpoint; more are closed when handed back.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

/// Why a request got no response head from the endpoint.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be opened: nothing was sent.
    Connect(String),
    /// The exchange broke off after the request was handed to a connection.
    Exchange(hyper::Error),
    /// The connection closed (EOF or reset) before any byte of the response. On a `reused`
    /// connection this is the keep-alive race: the endpoint closed it as idle, or on shutdown,
    /// while the request was on its way. On a new one the endpoint is going away (its
    /// listener closed with the connection still queued).
    Closed { error: hyper::Error, reused: bool },
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// The connections of one upstream, by endpoint.
pub(crate) struct Connections {
    idle: Mutex<HashMap<SocketAddr, VecDeque<Idle>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

impl Connections {
    pub(crate) fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Connections {
            idle: Mutex::default(),
            connect_timeout,
            idle_timeout,
        }
    }

    /// Sends `request` to `addr` on an idle connection, or on a new one when none is ready or
    /// the idle one turned out closed before the request went out. The URI is sent in origin
    /// form; a missing `Host` becomes the endpoint's address.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        prepare(addr, &mut request);
        if let Some(mut sender) = self.checkout(addr) {
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.checkin(addr, sender);
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    // The connection closed before taking the request: nothing was sent.
                    Some(unsent) => request = unsent,
                    None => {
                        let error = error.into_error();
                        return Err(exchange_error(error, true));
                    }
                },
            }
        }
        let mut sender = self.connect(addr).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| exchange_error(error, false))?;
        self.checkin(addr, sender);
        Ok(response)
    }

    /// Closes idle connections older than the idle timeout and those of endpoints not in
    /// `present` (called periodically and when the endpoints change).
    pub(crate) fn prune(&self, present: Option<&[crate::Endpoint]>, now: Instant) {
        let mut idle = self.lock();
        if let Some(present) = present {
            idle.retain(|addr, _| present.iter().any(|e| e.addr == *addr));
        }
        for connections in idle.values_mut() {
            connections.retain(|c| {
                !c.sender.is_closed() && now.duration_since(c.since) < self.idle_timeout
            });
        }
    }

    /// Idle connections per endpoint (for tests and the admin view).
    pub(crate) fn idle_count(&self, addr: SocketAddr) -> usize {
        self.lock().get(&addr).map_or(0, VecDeque::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, VecDeque<Idle>>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The oldest idle connection that is ready for a request. Connections whose response
    /// body is still streaming stay queued; closed ones are dropped.
    fn checkout(&self, addr: SocketAddr) -> Option<SendRequest<Body>> {
        let mut idle = self.lock();
        let queue = idle.get_mut(&addr)?;
        for _ in 0..queue.len() {
            let candidate = queue.pop_front()?;
            if candidate.sender.is_closed() {
                continue;
            }
            if candidate.sender.is_ready() {
                return Some(candidate.sender);
            }
            queue.push_back(candidate);
        }
        None
    }

    fn checkin(&self, addr: SocketAddr, sender: SendRequest<Body>) {
        let mut idle = self.lock();
        let queue = idle.entry(addr).or_default();
        if queue.len() < MAX_IDLE_PER_ENDPOINT {
            queue.push_back(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<Body>, SendError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return Err(SendError::Connect(error.to_string())),
                Err(_) => {
                    return Err(SendError::Connect(format!(
                        "no connection within {} ms",
                        self.connect_timeout.as_millis()
                    )));
                }
            };
        // Requests are small and latency matters more than packet count.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(endpoint = %addr, %error, "upstream connection ended");
            }
        });
        Ok(sender)
    }
}

/// Origin-form request target and a `Host` header, as HTTP/1.1 requires.
fn prepare(addr: SocketAddr, request: &mut Request<Body>) {
    if request.uri().authority().is_some() {
        let target = request
            .uri()
            .path_and_query()
            .map_or_else(|| Uri::from_static("/"), |pq| Uri::from(pq.clone()));
        *request.uri_mut() = target;
    }
    if !request.headers().contains_key(http::header::HOST)
        && let Ok(host) = HeaderValue::try_from(addr.to_string())
    {
        request.headers_mut().insert(http::header::HOST, host);
    }
}

fn exchange_error(error: hyper::Error, reused: bool) -> SendError {
    if closed_before_response(&error) {
        SendError::Closed { error, reused }
    } else {
        SendError::Exchange(error)
    }
}

/// Whether an exchange failed because the connection closed (EOF or reset) before a response
/// began, rather than in the middle of one.
fn closed_before_response(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            );
        }
        source = cause.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use hyper::service::service_fn;

    use super::*;

    /// An HTTP/1.1 server on 127.0.0.1 counting the connections it accepted; with `close` it
    /// ends every connection after one response.
    async fn server(close: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| async move {
                        let mut response = Response::new(Body::from(request.uri().to_string()));
                        if close {
                            response
                                .headers_mut()
                                .insert("connection", HeaderValue::from_static("close"));
                        }
                        Ok::<_, std::convert::Infallible>(response)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    async fn get(connections: &Connections, addr: SocketAddr, path: &str) -> String {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = connections.send(addr, request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_connection() {
        let (addr, accepted) = server(false).await;
        let connections = Connections::new(Duration::from_secs(1), Duration::from_secs(30));
        for i in 0..5 {
            assert_eq!(
                get(&connections, addr, &format!("/n/{i}")).await,
                format!("/n/{i}")
            );
            // The connection task marks the connection reusable once the body is read.
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(connections.idle_count(addr), 1);
    }

    #[tokio::test]
    async fn connections_the_server_closed_are_replaced_without_failing_a_request() {
        let (addr, accepted) = server(true).await;
        let connections = Connections::new(Duration::from_secs(1), Duration::from_secs(30));
        for i in 0..3 {
            assert_eq!(
                get(&connections, addr, &format!("/c/{i}")).await,
                format!("/c/{i}")
            );
            tokio::task::yield_now().await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn idle_connections_are_pruned_by_age_and_by_departure() {
        let (addr, _) = server(false).await;
        let connections = Connections::new(Duration::from_secs(1), Duration::from_secs(30));
        get(&connections, addr, "/").await;
        let now = Instant::now();
        connections.prune(None, now);
        assert_eq!(connections.idle_count(addr), 1, "young and open: kept");
        connections.prune(None, now + Duration::from_secs(31));
        assert_eq!(connections.idle_count(addr), 0, "idle past 30 s: closed");
        get(&connections, addr, "/").await;
        connections.prune(Some(&[]), Instant::now());
        assert_eq!(connections.idle_count(addr), 0, "the endpoint left: closed");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = unused.local_addr().unwrap();
        drop(unused);
        let connections = Connections::new(Duration::from_secs(1), Duration::from_secs(30));
        let request = Request::get("/").body(Body::empty()).unwrap();
        assert!(matches!(
            connections.send(addr, request).await,
            Err(SendError::Connect(_))
        ));
    }

    #[test]
    fn requests_go_out_in_origin_form_with_a_host() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let mut absolute = Request::get("http://example.test/a?b=1")
            .body(Body::empty())
            .unwrap();
        prepare(addr, &mut absolute);
        assert_eq!(absolute.uri(), "/a?b=1");
        assert_eq!(absolute.headers()["host"], "127.0.0.1:9");

        let mut kept = Request::get("/x")
            .header("host", "shop.example")
            .body(Body::empty())
            .unwrap();
        prepare(addr, &mut kept);
        assert_eq!(kept.uri(), "/x");
        assert_eq!(kept.headers()["host"], "shop.example");
    }
}
