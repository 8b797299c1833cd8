//! The gateway's own HTTP/1.1 server loop for its API port. Proxy traffic is nearly all the
//! gateway does, and for it this loop reads the request head with `httparse`, builds the request
//! on one copy of the head (header values are slices of it, not one allocation each), calls
//! [`Front::proxy`] and writes the answer — head and a small body in one write — on the same
//! task that reads the upstream's answer (see msa-upstream's `conns`). One task and no channel
//! per exchange, as nginx and HAProxy handle one in one event-loop turn.
//!
//! Everything else goes to hyper, which serves the rest of that connection with the full
//! [`Front`] (router, shared layers, connection limits): requests for other routes, HTTP/1.0,
//! `Transfer-Encoding`, `Expect`, `Upgrade` or `Connection` headers, CORS requests, bodies
//! over the limit, heads this parser refuses or that are too large — hyper then gives the
//! answer it always gave (400, 413, 414, 431, …). The bytes already read go to hyper first.
//! The rules for that choice are [`classify`], a plain function tested on bytes.
//!
//! Timeouts are those of msa-service-kit's `connections`: a head must arrive within
//! `header_timeout` of its first byte (else 408), an idle connection closes after
//! `idle_timeout`, a body may pause at most `body_timeout`, must average the minimum rate after
//! its grace and end by its deadline (else 408: [`ConnectionLimits::body_due`]). One timer per
//! connection serves them all and is moved only when a deadline comes earlier than the one it
//! is set for, so a busy connection touches it about once per timeout, not once per request.
//! A body that came with its head costs no clock read at all.

use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use hyper::body::Body as _;
use msa_service_kit::Problem;
use msa_service_kit::connections::{self, ConnectionLimits, REQUEST_TIMEOUT};
use msa_service_kit::server::{Ops, close_connections_while_draining};
use msa_upstream::h1::{Framing, write_message};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::client_connections::{self, ClientConnections};
use crate::front::Front;

/// A head this size without its end goes to hyper, which answers 414 or 431.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers a request may have here (hyper's limit too); more go to hyper.
const MAX_HEADERS: usize = 100;

/// Serves the gateway's API on `listener` until `stop` turns true (see [`connections::accept`]
/// for the connection limit and the drain); a client address holding as many connections as
/// `per_client` allows has the next one refused ([`client_connections::refuse`]).
pub async fn serve(
    listener: TcpListener,
    front: Front,
    ops: &Ops,
    limits: ConnectionLimits,
    per_client: Arc<ClientConnections>,
    stop: watch::Receiver<bool>,
) {
    let fallback = close_connections_while_draining(front.clone(), ops);
    connections::accept(listener, limits, stop, move |stream, peer, stop| {
        // Counted here, in the accept loop, so connections are admitted in the order accepted.
        let slot = per_client.admit(peer.ip());
        let (front, fallback) = (front.clone(), fallback.clone());
        async move {
            let Some(_slot) = slot else {
                client_connections::refuse(stream);
                return;
            };
            connection(stream, peer, front, fallback, limits, stop).await;
        }
    })
    .await;
}

/// What to do with the bytes read so far on a connection.
#[derive(Debug)]
pub(crate) enum Classified {
    /// The head is not complete yet.
    Partial,
    /// Not for this loop: hyper serves the connection from here on.
    Hyper,
    /// A proxy request this loop serves.
    Proxy(ProxyHead),
}

/// A request head this loop serves, as offsets into the bytes it was read from.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProxyHead {
    /// Bytes of the head (request line, headers, blank line).
    len: usize,
    method: Method,
    target: Range<usize>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    /// The body's length (0 without `Content-Length`).
    body: usize,
    /// The route and whether the path is its prefix itself.
    route: (usize, bool),
}

/// Reads the head at the front of `bytes` and decides who serves it. `route_of` is
/// [`Front::route_of`]; with `cors`, requests carrying `Origin` go to the router's CORS layer.
pub(crate) fn classify(
    bytes: &[u8],
    route_of: impl Fn(&str) -> Option<(usize, bool)>,
    cors: bool,
    body_limit: usize,
) -> Classified {
    // Uninitialised slots: filling 100 empty headers first cost more than parsing.
    let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(bytes, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() < MAX_HEAD => return Classified::Partial,
        _ => return Classified::Hyper,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Classified::Hyper;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Classified::Hyper;
    };
    if !target.starts_with('/') {
        return Classified::Hyper;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let Some(route) = route_of(path) else {
        return Classified::Hyper;
    };
    let base = bytes.as_ptr() as usize;
    let offsets = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let mut body = None;
    let mut headers = Vec::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let length = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok());
            match (body, length) {
                (None, Some(length)) if length <= body_limit => body = Some(length),
                // Repeated, malformed or over the limit: hyper refuses it as before.
                _ => return Classified::Hyper,
            }
        }
        let hyper_only = [
            &b"transfer-encoding"[..],
            b"expect",
            b"upgrade",
            b"connection",
        ];
        if hyper_only.iter().any(|n| name.eq_ignore_ascii_case(n))
            || (cors && name.eq_ignore_ascii_case(b"origin"))
        {
            return Classified::Hyper;
        }
        headers.push((offsets(name), offsets(h.value)));
    }
    Classified::Proxy(ProxyHead {
        len,
        method,
        target: offsets(target.as_bytes()),
        headers,
        body: body.unwrap_or(0),
        route,
    })
}

impl ProxyHead {
    /// The request, its header values sharing `head`'s bytes; `None` when a name or value is
    /// not one `http` accepts (hyper answers it instead).
    fn request(&self, head: &Bytes, body: Body) -> Option<Request> {
        // Room for the headers the gateway adds (request id, X-Forwarded-*), so none grows it.
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 6);
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(&head[name.clone()]).ok()?;
            let value = HeaderValue::from_maybe_shared(head.slice(value.clone())).ok()?;
            headers.append(name, value);
        }
        let uri = Uri::from_maybe_shared(head.slice(self.target.clone())).ok()?;
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = headers;
        Some(request)
    }
}

/// Writes a response head: the status line, the headers (without framing headers of their
/// own, unless bodyless), `Date` when missing, `Connection: close` when `close`, then the
/// body's framing.
pub(crate) fn write_response_head(
    status: StatusCode,
    headers: &HeaderMap,
    framing: Framing,
    close: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if framing != Framing::None
            && (name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING)
        {
            continue;
        }
        if name == header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        http_date(|date| out.extend_from_slice(date.as_bytes()));
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    match framing {
        Framing::None => {}
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Calls `f` with the current `Date` header value, formatted once a second per thread.
fn http_date(f: impl FnOnce(&str)) {
    thread_local! {
        static CACHE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with_borrow_mut(|(cached, text)| {
        if *cached != second || text.is_empty() {
            *cached = second;
            *text = httpdate::fmt_http_date(now);
        }
        f(text);
    });
}

/// One connection's timer: set for the earliest deadline it was asked for, moved only when
/// asked for an earlier one (see the module doc).
struct Deadline {
    sleep: Pin<Box<Sleep>>,
    set_for: Instant,
}

impl Deadline {
    fn new(limits: &ConnectionLimits) -> Self {
        let at = Instant::now() + limits.idle_timeout;
        Deadline {
            sleep: Box::pin(tokio::time::sleep_until(at)),
            set_for: at,
        }
    }

    /// Resolves when the timer fires; the caller checks whether its own deadline has passed.
    fn at(&mut self, deadline: Instant) -> &mut Pin<Box<Sleep>> {
        if deadline < self.set_for || self.sleep.is_elapsed() {
            self.sleep.as_mut().reset(deadline);
            self.set_for = deadline;
        }
        &mut self.sleep
    }
}

/// How waiting for bytes ended.
enum Waited {
    Read,
    /// The client closed, or reading failed.
    Gone,
    /// `deadline` passed.
    TimedOut,
    Stopping,
}

/// Reads more bytes into `buf`, giving up at `deadline` (and, with `or_stop`, on shutdown).
async fn read_more(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    timer: &mut Deadline,
    deadline: Instant,
    stop: &mut watch::Receiver<bool>,
    or_stop: bool,
) -> Waited {
    msa_upstream::h1::reserve_read_space(buf);
    loop {
        if or_stop && *stop.borrow() {
            return Waited::Stopping;
        }
        tokio::select! {
            biased;
            read = std::future::poll_fn(|cx| tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, buf)) => {
                return match read {
                    Ok(0) | Err(_) => Waited::Gone,
                    Ok(_) => Waited::Read,
                };
            }
            () = timer.at(deadline).as_mut() => {
                if Instant::now() >= deadline {
                    return Waited::TimedOut;
                }
            }
            changed = stop.changed(), if or_stop => {
                if changed.is_err() {
                    return Waited::Stopping;
                }
            }
        }
    }
}

async fn connection<S>(
    mut stream: TcpStream,
    peer: SocketAddr,
    front: Front,
    fallback: S,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) where
    S: tower::Service<Request, Response = Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(msa_upstream::h1::READ_SIZE);
    let mut out = Vec::with_capacity(msa_upstream::h1::READ_SIZE);
    let mut timer = Deadline::new(&limits);
    let client = crate::forwarding::ClientAddr::new(peer.ip());
    // Until its first byte a connection gets the header timeout, not the idle one (see
    // `ConnectionLimits::silent_timeout`).
    let mut idle_limit = limits.silent_timeout();
    loop {
        // A head: the idle clock runs until its first byte, the head's own clock from then.
        let mut idle_since = None;
        let mut head_since = None;
        let head = loop {
            if !buf.is_empty() {
                match classify(
                    &buf,
                    |p| front.route_of(p),
                    front.cors(),
                    front.body_limit(),
                ) {
                    Classified::Partial => {}
                    Classified::Hyper => {
                        connections::connection(stream, buf.freeze(), peer, fallback, limits, stop)
                            .await;
                        return;
                    }
                    Classified::Proxy(head) => break head,
                }
            }
            let now = Instant::now();
            let (deadline, idle) = if buf.is_empty() {
                (*idle_since.get_or_insert(now) + idle_limit, true)
            } else {
                (
                    *head_since.get_or_insert(now) + limits.header_timeout,
                    false,
                )
            };
            match read_more(&mut stream, &mut buf, &mut timer, deadline, &mut stop, idle).await {
                Waited::Read => {}
                Waited::TimedOut if !idle => {
                    let _ = stream.write_all(REQUEST_TIMEOUT).await;
                    return;
                }
                Waited::TimedOut | Waited::Gone | Waited::Stopping => return,
            }
        };
        idle_limit = limits.idle_timeout;
        // The rest of its body, within the body limits.
        let mut body_started = None;
        let mut last_read = None;
        while buf.len() < head.len + head.body {
            let now = Instant::now();
            let started = *body_started.get_or_insert(now);
            let received = (buf.len() - head.len) as u64;
            let deadline = limits.body_due(started, *last_read.get_or_insert(now), received);
            match read_more(
                &mut stream,
                &mut buf,
                &mut timer,
                deadline,
                &mut stop,
                false,
            )
            .await
            {
                Waited::Read => last_read = None,
                Waited::TimedOut => {
                    let stalled = Problem::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request-timeout",
                        "the request body arrived too slowly or stopped; send the whole request at once",
                    );
                    let _ = answer(
                        &mut stream,
                        &mut out,
                        &head.method,
                        stalled.into_response(),
                        true,
                    )
                    .await;
                    return;
                }
                Waited::Gone | Waited::Stopping => return,
            }
        }
        // Copied out, so the read buffer stays this connection's own for the next request.
        let head_bytes = Bytes::copy_from_slice(&buf[..head.len]);
        buf.advance(head.len);
        let body = match head.body {
            0 => Body::empty(),
            n => {
                let body = Bytes::copy_from_slice(&buf[..n]);
                buf.advance(n);
                Body::from(body)
            }
        };
        let Some(request) = head.request(&head_bytes, body) else {
            // Rebuild what was read for hyper, which answers the head it cannot accept.
            let mut all = BytesMut::from(&head_bytes[..]);
            all.extend_from_slice(&buf);
            connections::connection(stream, all.freeze(), peer, fallback, limits, stop).await;
            return;
        };
        let response = front.proxy(head.route, &client, request).await;
        let close = front.is_draining() || *stop.borrow();
        // A client that stops reading would otherwise hold its slot for good (the kernel
        // answers zero-window probes for it): a whole answer gets the idle timeout.
        let written = tokio::time::timeout(
            limits.idle_timeout,
            answer(&mut stream, &mut out, &head.method, response, close),
        )
        .await;
        if !matches!(written, Ok(Ok(()))) || close {
            return;
        }
    }
}

/// Why an answer could not be completed; the connection is closed, so a client sees a body cut
/// short rather than a short body passed off as whole.
struct Cut;

/// Writes `response` to the client: the head and what of the body is ready in one write, the
/// rest as it streams.
async fn answer(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    method: &Method,
    response: Response,
    close: bool,
) -> Result<(), Cut> {
    let (parts, body) = response.into_parts();
    let framing = Framing::of_response(method, parts.status, body.size_hint().exact());
    out.clear();
    write_response_head(parts.status, &parts.headers, framing, close, out);
    write_message(stream, out, body, framing)
        .await
        .map_err(|_| Cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(path: &str) -> Option<(usize, bool)> {
        match path {
            "/users" => Some((0, true)),
            p if p.starts_with("/users/") => Some((0, false)),
            _ => None,
        }
    }

    fn classified(text: &str) -> Classified {
        classify(text.as_bytes(), routes, false, 1000)
    }

    #[test]
    fn proxy_requests_are_served_here_with_their_header_bytes() {
        let text = "POST /users/7?x=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nX-A: 1\r\n\r\n{}";
        let Classified::Proxy(head) = classified(text) else {
            panic!("{:?}", classified(text));
        };
        assert_eq!(head.len, text.len() - 2);
        assert_eq!(head.body, 2);
        assert_eq!(head.route, (0, false));
        let bytes = Bytes::copy_from_slice(text.as_bytes());
        let request = head.request(&bytes, Body::empty()).unwrap();
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/users/7?x=1");
        assert_eq!(request.headers()["x-a"], "1");
        assert_eq!(request.headers()["content-length"], "2");
        assert_eq!(request.headers().len(), 3);
    }

    #[test]
    fn incomplete_heads_wait_and_oversized_ones_go_to_hyper() {
        assert!(matches!(
            classified("GET /users HTTP/1.1\r\nHost"),
            Classified::Partial
        ));
        let long = format!("GET /users/{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD));
        assert!(matches!(classified(&long), Classified::Hyper));
    }

    #[test]
    fn everything_but_plain_proxy_requests_goes_to_hyper() {
        for text in [
            "GET /health HTTP/1.1\r\n\r\n",
            "GET /users HTTP/1.0\r\n\r\n",
            "GET http://t/users HTTP/1.1\r\n\r\n",
            "POST /users HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST /users HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n",
            "POST /users HTTP/1.1\r\ncontent-length: +1\r\n\r\n",
            "POST /users HTTP/1.1\r\ncontent-length: 1001\r\n\r\n",
            "POST /users HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
            "GET /users HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET /users HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
            "GET /users HTTP/1.1\r\nbad header\r\n\r\n",
            "GET /users\0 HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(classified(text), Classified::Hyper), "{text:?}");
        }
        let origin = "GET /users HTTP/1.1\r\norigin: https://shop.example\r\n\r\n";
        assert!(matches!(classified(origin), Classified::Proxy(_)));
        assert!(matches!(
            classify(origin.as_bytes(), routes, true, 1000),
            Classified::Hyper
        ));
    }

    #[test]
    fn response_heads_are_framed_by_the_body_they_carry() {
        let mut headers = HeaderMap::new();
        headers.insert("content-length", HeaderValue::from_static("99"));
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        headers.insert(
            "date",
            HeaderValue::from_static("Mon, 30 Nov 2026 00:00:00 GMT"),
        );
        let head = |framing, close| {
            let mut out = Vec::new();
            write_response_head(StatusCode::OK, &headers, framing, close, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            head(Framing::Length(2), false),
            "HTTP/1.1 200 OK\r\nx-request-id: abc\r\ndate: Mon, 30 Nov 2026 00:00:00 GMT\r\ncontent-length: 2\r\n\r\n"
        );
        assert!(
            head(Framing::Chunked, true)
                .ends_with("connection: close\r\ntransfer-encoding: chunked\r\n\r\n")
        );
        // A HEAD answer keeps the length the upstream announced.
        assert!(head(Framing::None, false).contains("content-length: 99\r\n"));
    }
}
