//! A minimal HTTP backend for the gateway's tests and benchmarks: answers every request at once
//! (or after a delay set at runtime), counts requests by method, and on request echoes what it
//! received. Built on hyper alone so it costs the machine as little as possible.
//!
//! - any path: 200 `{"backend":"<name>"}`
//! - a path ending in `/__echo/request`: 200 with the method, path and query, headers and body
//!   size received
//! - a path ending in `/__echo/stats`: 200 `{"backend":…, "requests": {"GET": n, …}}`
//! - `PUT` a path ending in `/__echo/delay?ms=N`: from now on answer every other request N ms
//!   late
//!
//! - a path ending in `/__echo/status/<code>`: that status, with a small body (which hyper drops
//!   where the status or a `HEAD` allows none)
//! - a path ending in `/__echo/chunked`: 200 with a body of three chunks (no length)
//! - a path ending in `/__echo/cut-body`: 200 announcing 100 bytes, sending 10, then closing
//! - a path ending in `/__echo/no-answer`: the connection closes without a response
//!
//! The request echo also carries the HTTP version, the headers in order (repeats kept) and the
//! body as text, so a conformance test can compare exactly what arrived.
//! - with `--fail-method M`: 503 to every request with method M (a service whose dependency is
//!   down for one route, e.g. placing orders, while its reads keep working)
//!
//! (Suffixes, so the same calls work through the gateway's `/users/…` routes.)
//! - `/readyz`, `/healthz`: 200

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "A minimal HTTP backend for gateway tests and benchmarks"
)]
struct Flags {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// Name reported in every answer (default: the listen address).
    #[arg(long)]
    name: Option<String>,
    /// Initial delay before answering, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Answer 503 to every request with this method.
    #[arg(long)]
    fail_method: Option<Method>,
}

struct Backend {
    name: String,
    fail_method: Option<Method>,
    delay_ms: AtomicU64,
    requests: Mutex<BTreeMap<String, u64>>,
}

fn json(status: StatusCode, body: String) -> Answer {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// A fixed body, or a streamed one (chunked, or cut off on purpose).
type Answer = Response<Either<Full<Bytes>, BoxBody<Bytes, std::io::Error>>>;

async fn handle(
    backend: Arc<Backend>,
    request: Request<Incoming>,
) -> Result<Answer, std::io::Error> {
    let path = request.uri().path().to_owned();
    let command = path.rsplit_once("/__echo/").map(|(_, c)| c);
    if path == "/readyz" || path == "/healthz" {
        return Ok(json(StatusCode::OK, "\"ok\"".into()));
    }
    match command {
        Some("stats") => {
            let counts = backend.requests.lock().expect("counts").clone();
            let body = serde_json::json!({"backend": backend.name, "requests": counts});
            return Ok(json(StatusCode::OK, body.to_string()));
        }
        Some("delay") if request.method() == Method::PUT => {
            let ms = request
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|v| v.parse::<u64>().ok());
            return Ok(match ms {
                Some(ms) => {
                    backend.delay_ms.store(ms, Ordering::Relaxed);
                    json(StatusCode::OK, format!("{{\"delay_ms\":{ms}}}"))
                }
                None => json(
                    StatusCode::BAD_REQUEST,
                    "{\"detail\":\"give the delay as ?ms=<milliseconds>\"}".into(),
                ),
            });
        }
        _ => {}
    }
    *backend
        .requests
        .lock()
        .expect("counts")
        .entry(request.method().to_string())
        .or_default() += 1;
    if backend.fail_method.as_ref() == Some(request.method()) {
        return Ok(json(
            StatusCode::SERVICE_UNAVAILABLE,
            "{\"detail\":\"a dependency is down\"}".into(),
        ));
    }
    let delay = backend.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    match command {
        Some("request") => {
            let (parts, body) = request.into_parts();
            let received = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let headers: BTreeMap<String, String> = parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            let in_order: Vec<(String, String)> = parts
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                .collect();
            let body = serde_json::json!({
                "backend": backend.name,
                "version": format!("{:?}", parts.version),
                "method": parts.method.as_str(),
                "path": parts.uri.path_and_query().map(|pq| pq.as_str()),
                "headers": headers,
                "header_list": in_order,
                "body_bytes": received.len(),
                "body": String::from_utf8_lossy(&received[..received.len().min(4096)]),
            });
            return Ok(json(StatusCode::OK, body.to_string()));
        }
        Some(status) if status.starts_with("status/") => {
            let code = status["status/".len()..]
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            return Ok(json(code, "{\"body\":\"present\"}".into()));
        }
        Some("chunked") => {
            let chunks = ["first,", "second,", "third"]
                .map(|c| Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(c.as_bytes()))));
            let body = StreamBody::new(futures::stream::iter(chunks));
            return Ok(Response::new(Either::Right(BodyExt::boxed(body))));
        }
        Some("cut-body") => {
            // The pause lets the head and the first bytes go out before the break.
            let frames = futures::stream::unfold(0, |sent| async move {
                match sent {
                    0 => Some((Ok(Frame::data(Bytes::from_static(b"0123456789"))), 1)),
                    1 => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Some((Err(std::io::Error::other("the backend stops mid-body")), 2))
                    }
                    _ => None,
                }
            });
            let body = StreamBody::new(frames);
            let mut response = Response::new(Either::Right(BodyExt::boxed(body)));
            response.headers_mut().insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from_static("100"),
            );
            return Ok(response);
        }
        Some("no-answer") => return Err(std::io::Error::other("no answer, on purpose")),
        _ => {}
    }
    Ok(json(
        StatusCode::OK,
        format!("{{\"backend\":\"{}\"}}", backend.name),
    ))
}

fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(flags.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", flags.listen))?;
        let backend = Arc::new(Backend {
            name: flags.name.unwrap_or_else(|| flags.listen.to_string()),
            fail_method: flags.fail_method,
            delay_ms: AtomicU64::new(flags.delay_ms),
            requests: Mutex::default(),
        });
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted?,
                _ = terminate.recv() => return Ok(()),
                _ = tokio::signal::ctrl_c() => return Ok(()),
            };
            let _ = stream.set_nodelay(true);
            let backend = backend.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| handle(backend.clone(), request));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
