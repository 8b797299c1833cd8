//! HTTP/1.1 keep-alive connections to each endpoint, held by the upstream that balances over
//! them, and the exchange of one request on one of them. The socket is used in the caller's
//! task: the request head and body are written, the response head read and parsed
//! ([`crate::h1`]), and the response body streamed from the same socket by [`UpstreamBody`],
//! which hands the connection back to the idle set the moment the body has ended. No task per
//! connection, no channel per request (see `h1` for why not hyper's client connection).
//!
//! An idle connection is nobody's to watch, so whether its endpoint closed it meanwhile is
//! asked when it is taken: tokio knows from the readiness epoll already reported, and only when
//! the socket is marked readable does a read confirm (EOF or stray bytes: it is dropped, and
//! nothing was sent on it).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{Response, header};
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::net::TcpStream;

use crate::endpoint::ByAddress;
use crate::h1::{self, BodyDecoder, Framing, ResponseHead, Step, WriteError};

/// Idle connections kept per endpoint; more are closed when handed back.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request got no response head from the endpoint.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be opened: nothing was sent.
    Connect(String),
    /// The exchange broke off after the request was handed to a connection: the caller's body
    /// failed, or the endpoint answered badly or stopped mid-answer.
    Exchange(BoxError),
    /// The connection closed (EOF or reset) before any byte of the response. On a `reused`
    /// connection this is the keep-alive race: the endpoint closed it as idle, or on shutdown,
    /// while the request was on its way. On a new one the endpoint is going away (its
    /// listener closed with the connection still queued).
    Closed { error: BoxError, reused: bool },
}

struct Idle {
    stream: TcpStream,
    /// Its read buffer, empty, kept for the next exchange.
    buf: BytesMut,
    since: Instant,
}

/// The idle connections of one upstream, by endpoint; shared with the response bodies that
/// hand their connection back.
#[derive(Default)]
struct IdleSet {
    by_endpoint: Mutex<ByAddress<Endpoint>>,
}

struct Endpoint {
    idle: Vec<Idle>,
    /// Its address as a `Host` header value, written once.
    host: Bytes,
}

impl IdleSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, ByAddress<Endpoint>> {
        self.by_endpoint
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The endpoint's `Host` value and its most recently used open connection (the others age
    /// out), if any.
    fn checkout(&self, addr: SocketAddr) -> (Bytes, Option<(TcpStream, BytesMut)>) {
        let mut idle = self.lock();
        let endpoint = idle.entry(addr).or_insert_with(|| Endpoint {
            idle: Vec::new(),
            host: Bytes::from(addr.to_string()),
        });
        while let Some(candidate) = endpoint.idle.pop() {
            if still_open(&candidate.stream) {
                return (
                    endpoint.host.clone(),
                    Some((candidate.stream, candidate.buf)),
                );
            }
        }
        (endpoint.host.clone(), None)
    }

    fn checkin(&self, addr: SocketAddr, stream: TcpStream, buf: BytesMut) {
        let mut idle = self.lock();
        // An endpoint pruned while this connection was out is not brought back.
        if let Some(endpoint) = idle.get_mut(&addr)
            && endpoint.idle.len() < MAX_IDLE_PER_ENDPOINT
        {
            endpoint.idle.push(Idle {
                stream,
                buf,
                since: Instant::now(),
            });
        }
    }
}

/// Whether an idle connection can take a request: nothing to read on it (no EOF, no stray
/// bytes). Costs a system call only when tokio has seen it readable.
fn still_open(stream: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// The connections of one upstream, by endpoint.
pub(crate) struct Connections {
    idle: Arc<IdleSet>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

/// How an exchange failed, before it is judged reused or not.
enum Failure {
    /// The endpoint closed or reset the connection before any byte of an answer.
    Unanswered(io::Error),
    /// The caller's body failed while it was sent, or the endpoint answered badly or stopped
    /// mid-head.
    Broken(BoxError),
}

impl Connections {
    pub(crate) fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Connections {
            idle: Arc::default(),
            connect_timeout,
            idle_timeout,
        }
    }

    /// Sends a request (`parts` and `body`) to `addr` on an idle connection, or on a new one
    /// when none is open. The URI is sent in origin form; a missing `Host` becomes the
    /// endpoint's address.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        parts: &Parts,
        body: Body,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let (host, idle) = self.idle.checkout(addr);
        let (mut stream, mut buf, reused) = match idle {
            Some((stream, buf)) => (stream, buf, true),
            None => (
                self.connect(addr).await?,
                BytesMut::with_capacity(h1::READ_SIZE),
                false,
            ),
        };
        let head = match exchange(&mut stream, &host, parts, body, &mut buf).await {
            Ok(head) => head,
            Err(Failure::Broken(error)) => return Err(SendError::Exchange(error)),
            Err(Failure::Unanswered(error)) => {
                return Err(SendError::Closed {
                    error: error.into(),
                    reused,
                });
            }
        };
        let ResponseHead {
            status,
            version,
            headers,
            body,
            reusable,
        } = head;
        let live = Live {
            stream,
            buf,
            reusable,
            addr,
            home: self.idle.clone(),
        };
        let mut body = UpstreamBody {
            live: Some(live),
            decoder: body,
        };
        // Nothing may follow the head: the connection is free now.
        body.release_when_complete();
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.version_mut() = version;
        *response.headers_mut() = headers;
        Ok(response)
    }

    /// Closes idle connections older than the idle timeout, those the endpoint closed, and
    /// those of endpoints not in `present` (called periodically and when the endpoints change).
    pub(crate) fn prune(&self, present: Option<&[crate::Endpoint]>, now: Instant) {
        let mut idle = self.idle.lock();
        if let Some(present) = present {
            idle.retain(|addr, _| present.iter().any(|e| e.addr == *addr));
        }
        for endpoint in idle.values_mut() {
            endpoint.idle.retain(|c| {
                now.duration_since(c.since) < self.idle_timeout && still_open(&c.stream)
            });
        }
    }

    /// Idle connections per endpoint (for tests and the admin view).
    pub(crate) fn idle_count(&self, addr: SocketAddr) -> usize {
        self.idle.lock().get(&addr).map_or(0, |e| e.idle.len())
    }

    async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, SendError> {
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
        Ok(stream)
    }
}

/// Writes the request and reads the response head; bytes read past the head stay in `buf`.
async fn exchange(
    stream: &mut TcpStream,
    host: &[u8],
    parts: &Parts,
    body: Body,
    buf: &mut BytesMut,
) -> Result<ResponseHead, Failure> {
    write_request(stream, host, parts, body).await?;
    let mut answered = false;
    loop {
        if !buf.is_empty() {
            answered = true;
            match h1::parse_response_head(buf, &parts.method) {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(error) => return Err(Failure::Broken(error.into())),
            }
        }
        match std::future::poll_fn(|cx| poll_read(stream, cx, buf)).await {
            Ok(0) if answered => {
                return Err(Failure::Broken("the connection closed mid-head".into()));
            }
            Ok(0) => {
                return Err(Failure::Unanswered(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed before a response",
                )));
            }
            Ok(_) => {}
            Err(error) if answered => return Err(Failure::Broken(error.into())),
            Err(error) => return Err(Failure::Unanswered(error)),
        }
    }
}

/// Writes the request head and body; a small body goes out with the head in one write.
async fn write_request(
    stream: &mut TcpStream,
    host: &[u8],
    parts: &Parts,
    body: Body,
) -> Result<(), Failure> {
    let framing = Framing::of_request(
        &parts.method,
        body.size_hint().exact(),
        parts.headers.contains_key(header::CONTENT_LENGTH),
    );
    let mut out = Vec::with_capacity(512);
    h1::write_request_head(parts, host, framing, &mut out);
    h1::write_message(stream, &mut out, body, framing)
        .await
        .map_err(|error| match error {
            WriteError::Body(error) => Failure::Broken(error.into()),
            WriteError::Length(what) => Failure::Broken(what.into()),
            // A write fails only when the endpoint is gone (reset, broken pipe): nothing was
            // answered.
            WriteError::Io(error) => Failure::Unanswered(error),
        })
}

/// Reads what the socket has into `buf` (0: the endpoint closed it). Through `AsyncRead`, not
/// `try_read`: a read shorter than asked tells tokio the socket is drained, so the idle check
/// of [`still_open`] costs no system call afterwards.
fn poll_read(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    h1::reserve_read_space(buf);
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
}

/// The connection a response body is read from, and where it goes back when the body ends.
struct Live {
    stream: TcpStream,
    /// Bytes read and not yet decoded.
    buf: BytesMut,
    reusable: bool,
    addr: SocketAddr,
    home: Arc<IdleSet>,
}

/// A response body streamed from the endpoint's connection in the reader's task. When it ends
/// as its framing says, the connection goes back to the idle set; a body dropped early closes
/// it. A body cut short (the endpoint closed or sent a bad chunk) ends in an error, so a proxy
/// passing it on breaks its own answer off rather than pass a short one off as complete.
pub struct UpstreamBody {
    live: Option<Live>,
    decoder: BodyDecoder,
}

impl UpstreamBody {
    /// Once the body's last byte is read, the connection goes back to the idle set (or closes,
    /// when it cannot carry another exchange).
    fn release_when_complete(&mut self) {
        if self.decoder.remaining() != Some(0) {
            return;
        }
        self.decoder = BodyDecoder::Done;
        if let Some(live) = self.live.take()
            && live.reusable
            && live.buf.is_empty()
        {
            live.home.checkin(live.addr, live.stream, live.buf);
        }
    }

    fn fail(&mut self, error: impl Into<BoxError>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        self.live = None;
        self.decoder = BodyDecoder::Done;
        Poll::Ready(Some(Err(io::Error::other(error))))
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let this = self.get_mut();
        loop {
            let Some(live) = this.live.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.step(&mut live.buf) {
                Ok(Step::Data(data)) => {
                    // A reader that knows the length stops polling at its last byte, so the
                    // connection is freed with it.
                    this.release_when_complete();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::Done) => {
                    this.release_when_complete();
                    return Poll::Ready(None);
                }
                Ok(Step::NeedMore) => {}
                Err(error) => return this.fail(error),
            }
            match ready!(poll_read(&mut live.stream, cx, &mut live.buf)) {
                Ok(0) => {
                    live.reusable = false;
                    if let Err(error) = this.decoder.at_eof() {
                        return this.fail(error);
                    }
                }
                Ok(_) => {}
                Err(error) => return this.fail(error),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder == BodyDecoder::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("decoder", &self.decoder)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{HeaderValue, Request};
    use http_body_util::BodyExt;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

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
        let (head, ()) = Request::get(path).body(()).unwrap().into_parts();
        let response = connections.send(addr, &head, Body::empty()).await.unwrap();
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

    /// A server that answers one request per connection and then closes it without saying so
    /// (no `Connection: close`), as a server closing idle connections does.
    async fn silent_closer() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut request = vec![0u8; 4096];
                    let _ = stream.read(&mut request).await;
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn an_idle_connection_the_endpoint_closed_is_not_sent_a_request() {
        let (addr, accepted) = silent_closer().await;
        let connections = Connections::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..3 {
            let (head, ()) = Request::post("/orders").body(()).unwrap().into_parts();
            let response = connections
                .send(addr, &head, Body::from("{}"))
                .await
                .unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok");
            // The endpoint's FIN arrives while the connection is idle.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            3,
            "a new connection each time"
        );
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_and_its_connection_is_not_kept() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 4096];
            let _ = stream.read(&mut request).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
                .await;
        });
        let connections = Connections::new(Duration::from_secs(1), Duration::from_secs(30));
        let (head, ()) = Request::get("/").body(()).unwrap().into_parts();
        let response = connections.send(addr, &head, Body::empty()).await.unwrap();
        assert!(response.into_body().collect().await.is_err());
        assert_eq!(connections.idle_count(addr), 0);
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
        // Bound but never listening, and held: the port refuses, and nothing else can take it.
        let held = tokio::net::TcpSocket::new_v4().unwrap();
        held.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = held.local_addr().unwrap();
        let connections = Connections::new(Duration::from_secs(1), Duration::from_secs(30));
        let (head, ()) = Request::get("/").body(()).unwrap().into_parts();
        assert!(matches!(
            connections.send(addr, &head, Body::empty()).await,
            Err(SendError::Connect(_))
        ));
    }
}
