//! Issue 27 at the gateway: a trickled request body is bounded (minimum rate after a grace, a
//! deadline for the whole body), one client address cannot hold more than its share of
//! connections, and the upstream is told how long the gateway will wait for it
//! (`x-msa-timeout-ms`), which a client's own value can only shorten.
//!
//! The gateway runs in-process on a listener bound to 127.0.0.1:0, in front of a small
//! in-process backend that answers every request with the `x-msa-timeout-ms` it was sent. Raw
//! TCP where the bytes on the wire are the point. Time bounds are lower bounds (the gateway must
//! not give up early) plus generous functional ones (the trickle would have gone on far longer).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use http::HeaderMap;
use msa_gateway::client_connections::ClientConnections;
use msa_gateway::{Gateway, Policy, Route};
use msa_service_kit::config::{LimitArgs, ServeArgs};
use msa_service_kit::metrics::HttpMetrics;
use msa_service_kit::server::Ops;
use msa_service_kit::testing::{read_response, read_until_closed, serve_args};
use msa_upstream::deadline::TIMEOUT_HEADER;
use msa_upstream::endpoint::Endpoint;
use msa_upstream::metrics::UpstreamMetrics;
use msa_upstream::{CallConfig, Discovery, PoolConfig, Upstream};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

const PATIENCE: Duration = Duration::from_secs(15);

/// A backend on 127.0.0.1 answering every request with the `x-msa-timeout-ms` values it was
/// sent (comma-separated, `none` without), after reading the whole body; counts requests.
async fn backend() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = requests.clone();
    let app = Router::new().fallback(move |headers: HeaderMap, _body: axum::body::Bytes| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            let told: Vec<&str> = headers
                .get_all(&TIMEOUT_HEADER)
                .iter()
                .map(|v| v.to_str().unwrap_or("?"))
                .collect();
            if told.is_empty() {
                "none".to_owned()
            } else {
                told.join(",")
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, requests)
}

/// What a test gateway is given.
struct Setup {
    limits: LimitArgs,
    per_client: u32,
    calls: CallConfig,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            limits: LimitArgs::default(),
            per_client: msa_gateway::client_connections::DEFAULT_LIMIT,
            calls: CallConfig::gateway(),
        }
    }
}

/// A gateway in front of `backend` (every route), serving until the returned sender is dropped.
async fn gateway(backend: SocketAddr, setup: Setup) -> (SocketAddr, watch::Sender<bool>) {
    let args = ServeArgs {
        limits: setup.limits,
        ..serve_args()
    };
    let mut metrics = HttpMetrics::for_component("gateway");
    let upstream_metrics = UpstreamMetrics::register(&mut metrics.registry);
    let routes = [
        ("/users", "user"),
        ("/orders", "order"),
        ("/products", "product"),
    ]
    .into_iter()
    .map(|(prefix, name)| Route {
        prefix,
        upstream: Upstream::new(
            name,
            Discovery::fixed(vec![Endpoint::new(backend)]),
            PoolConfig::default(),
            setup.calls.clone(),
            upstream_metrics.clone(),
        ),
    })
    .collect();
    let per_client = ClientConnections::new(setup.per_client, &mut metrics.registry);
    let ops = Ops::with_metrics("gateway", "test", "gateway-0".into(), None, metrics);
    let gateway = Arc::new(Gateway {
        routes,
        policy: Policy {
            body_limit: args.body_limit_bytes,
            auth: None,
            rate_limit: None,
        },
    });
    let router = msa_gateway::router(gateway.clone(), ops.clone(), &args).unwrap();
    let front = msa_gateway::front::Front::new(&gateway, router, &ops, &args).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop) = watch::channel(false);
    let limits = args.connection_limits();
    tokio::spawn(async move {
        msa_gateway::engine::serve(listener, front, &ops, limits, per_client, stop).await;
    });
    (addr, stop_tx)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `GET path` on `stream` (keep-alive), with `extra` header lines; the whole answer.
async fn get(stream: &mut TcpStream, path: &str, extra: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nhost: shop\r\n{extra}\r\n");
    // A refused connection may be closed already; its answer (or none) says so.
    let _ = stream.write_all(request.as_bytes()).await;
    read_response(stream, PATIENCE).await
}

/// A connection to `gateway` from the loopback address `from`.
async fn connect_from(from: &str, gateway: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(gateway).await.unwrap()
}

/// Sends `head`, then `body` one piece every `pace` (in a task of its own), and returns the
/// gateway's answer, whether it closed, and how long after the head that took.
async fn trickle(
    gateway: SocketAddr,
    head: &str,
    pieces: Vec<&'static [u8]>,
    pace: Duration,
) -> (String, bool, Duration) {
    let stream = TcpStream::connect(gateway).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for piece in pieces {
            tokio::time::sleep(pace).await;
            if writer.write_all(piece).await.is_err() {
                return;
            }
        }
    });
    let (answer, closed) = read_until_closed(&mut reader, PATIENCE).await;
    let waited = started.elapsed();
    trickle.abort();
    (text(&answer), closed, waited)
}

/// A long pause limit (so only the new limits can end a body) with the given minimum rate,
/// grace and deadline.
fn body_limits(min_rate: u32, grace_seconds: u64, deadline_seconds: u64) -> LimitArgs {
    LimitArgs {
        body_timeout_seconds: 10,
        body_min_rate_bytes: min_rate,
        body_rate_grace_seconds: grace_seconds,
        body_deadline_seconds: deadline_seconds,
        ..LimitArgs::default()
    }
}

/// Issue 27: one byte every 5 s never hit the 10 s pause limit, and 1500 such connections were
/// all held after 45 s. Paced under the pause limit (300 ms against 10 s), a body averaging less
/// than the minimum rate (100 bytes/s) after its grace (1 s) now gets 408 and is closed; the
/// backend never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_under_the_minimum_rate_gets_408() {
    let (backend, requests) = backend().await;
    let setup = Setup {
        limits: body_limits(100, 1, 3600),
        ..Setup::default()
    };
    let (gateway, _stop) = gateway(backend, setup).await;
    let head = "POST /orders HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n";
    // 200 bytes at one per 300 ms would take a minute.
    let (answer, closed, waited) =
        trickle(gateway, head, vec![b"x"; 200], Duration::from_millis(300)).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("request-timeout"), "{answer}");
    assert!(closed, "the connection is closed");
    assert!(
        waited >= Duration::from_millis(900),
        "408 after {waited:?}, inside the grace"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 0, "nothing was forwarded");
}

/// However it is paced, a whole body gets its deadline (2 s): 10 bytes a second with no
/// minimum rate still ends in 408 — on the gateway's own loop (a `content-length` body) and on
/// the hyper path it hands other requests to (a chunked body, streamed to the backend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_ends_gets_408_at_its_deadline() {
    let (backend, _) = backend().await;
    let setup = Setup {
        limits: body_limits(0, 0, 2),
        ..Setup::default()
    };
    let (gateway, _stop) = gateway(backend, setup).await;
    let sized = "POST /orders HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n";
    let chunked = "POST /orders HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
    for (head, piece) in [(sized, &b"x"[..]), (chunked, &b"1\r\nx\r\n"[..])] {
        let (answer, closed, waited) =
            trickle(gateway, head, vec![piece; 1000], Duration::from_millis(100)).await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{head}: {answer}");
        assert!(closed, "{head}: the connection is closed");
        assert!(
            waited >= Duration::from_millis(1900),
            "{head}: 408 after {waited:?}, before the deadline"
        );
    }
}

/// Issue 27: one client could take every connection slot. With room for 4 per address, the
/// 5th to 7th connections from 127.0.0.1 are refused with 503 and closed while the first 4 are
/// served; 127.0.0.2 is still served; a slot given back can be taken again; the refusals are
/// counted.
/// Issue 27 review: a connection that never sends a byte held its slot for the idle keep-alive
/// time (60 s). It now gets the header timeout (1 s here) and is closed without an answer; a
/// connection that made a request keeps the idle time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_says_nothing_is_closed_at_the_header_timeout() {
    let (backend, _) = backend().await;
    let setup = Setup {
        limits: LimitArgs {
            header_timeout_seconds: 1,
            idle_timeout_seconds: 60,
            ..LimitArgs::default()
        },
        ..Setup::default()
    };
    let (gateway, _stop) = gateway(backend, setup).await;
    let mut silent = TcpStream::connect(gateway).await.unwrap();
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut silent, PATIENCE).await;
    assert!(closed && answer.is_empty(), "{}", text(&answer));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed early"
    );

    let mut spoke = TcpStream::connect(gateway).await.unwrap();
    assert!(
        get(&mut spoke, "/users/1", "")
            .await
            .starts_with("HTTP/1.1 200 ")
    );
    let (more, closed) = read_until_closed(&mut spoke, Duration::from_secs(3)).await;
    assert!(
        !closed && more.is_empty(),
        "a connection that made a request is kept for the idle time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_its_share_of_connections_and_others_are_still_served() {
    let (backend, _) = backend().await;
    let setup = Setup {
        per_client: 4,
        // The held connections say nothing until the end: a slow machine must not see them
        // closed as silent (after the header timeout) before then.
        limits: LimitArgs {
            header_timeout_seconds: 60,
            ..LimitArgs::default()
        },
        ..Setup::default()
    };
    let (gateway, _stop) = gateway(backend, setup).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from("127.0.0.1", gateway).await);
    }
    // Accepted in the order connected: these three find the address's 4 slots taken.
    for _ in 0..3 {
        let mut refused = connect_from("127.0.0.1", gateway).await;
        let (answer, closed) = read_until_closed(&mut refused, PATIENCE).await;
        let answer = text(&answer);
        assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
        assert!(answer.contains("too-many-connections"), "{answer}");
        assert!(answer.contains("retry-after: 1"), "{answer}");
        assert!(closed, "a refused connection is closed");
    }
    for stream in &mut held {
        let answer = get(stream, "/users/1", "").await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }
    let mut other = connect_from("127.0.0.2", gateway).await;
    let answer = get(&mut other, "/users/1", "").await;
    assert!(
        answer.starts_with("HTTP/1.1 200 "),
        "another address: {answer}"
    );

    // Give one slot back; a new connection gets it once the gateway has seen the close.
    drop(held.pop());
    let patience = Instant::now() + PATIENCE;
    loop {
        let mut again = connect_from("127.0.0.1", gateway).await;
        let answer = get(&mut again, "/users/1", "").await;
        if answer.starts_with("HTTP/1.1 200 ") {
            break;
        }
        assert!(
            answer.starts_with("HTTP/1.1 503 ") || answer.is_empty(),
            "{answer}"
        );
        assert!(Instant::now() < patience, "the slot was never given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let metrics = get(&mut other, "/metrics", "").await;
    let refused: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("msa_gateway_connections_refused_total "))
        .expect("the refusal counter is exported")
        .trim()
        .parse()
        .unwrap();
    assert!(refused >= 3.0, "{refused} refusals counted");
    assert!(
        metrics
            .lines()
            .filter(|line| line.starts_with("msa_gateway_connections_refused"))
            .all(|line| !line.contains('{')),
        "one series, no client address in a label"
    );
}

/// The value the backend was told, from its answer's body.
fn told(answer: &str) -> String {
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// Issue 27: deadlines shrink inward. The upstream is told the gateway's per-try time (800 ms
/// here) in `x-msa-timeout-ms`; a client's own value (a trusted internal caller's remaining
/// time) can shorten it but never lengthen it, and is never passed on as sent; a malformed one
/// is a 400 that reaches nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_is_told_the_time_it_has_and_a_client_can_only_shorten_it() {
    let (backend, requests) = backend().await;
    let setup = Setup {
        calls: CallConfig {
            per_try_timeout: Duration::from_millis(800),
            request_timeout: Duration::from_millis(2_000),
            ..CallConfig::gateway()
        },
        ..Setup::default()
    };
    let (gateway, _stop) = gateway(backend, setup).await;
    let mut stream = TcpStream::connect(gateway).await.unwrap();
    let millis = |answer: &str| -> u64 {
        let value = told(answer);
        value
            .parse()
            .unwrap_or_else(|_| panic!("one value in ms, not {value:?}: {answer}"))
    };

    let answer = get(&mut stream, "/users/1", "").await;
    assert!((1..=800).contains(&millis(&answer)), "{answer}");

    let answer = get(&mut stream, "/orders", "x-msa-timeout-ms: 300\r\n").await;
    assert!((1..=300).contains(&millis(&answer)), "{answer}");

    let answer = get(&mut stream, "/products/7", "x-msa-timeout-ms: 99999\r\n").await;
    assert!(
        (1..=800).contains(&millis(&answer)),
        "never lengthened: {answer}"
    );

    let before = requests.load(Ordering::SeqCst);
    let answer = get(&mut stream, "/users/1", "x-msa-timeout-ms: soon\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(answer.contains("invalid-timeout"), "{answer}");
    assert_eq!(requests.load(Ordering::SeqCst), before, "not forwarded");
}

/// A figure, not a test (issue 27: 1500 connections trickling one byte every 5 s were all held
/// after 45 s): one client address opens [`TRICKLERS`] connections to a gateway with the default
/// limits, each sending an order's head and then one body byte every 5 s, and the table shows
/// how many the gateway still holds as time goes on. Run it with `cargo test -p msa-gateway
/// --test client_limits -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints a figure"]
async fn figure_connection_slots_one_trickling_client_holds() {
    const TRICKLERS: usize = 1_500;
    const WATCHED: Duration = Duration::from_secs(50);
    let (backend, requests) = backend().await;
    let (gateway, _stop) = gateway(backend, Setup::default()).await;
    let head = "POST /orders HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n";
    let held = Arc::new(AtomicUsize::new(0));
    let answers: Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>> = Arc::default();
    let started = Instant::now();
    let mut tricklers = Vec::new();
    for _ in 0..TRICKLERS {
        let stream = connect_from("127.0.0.1", gateway).await;
        held.fetch_add(1, Ordering::SeqCst);
        let (held, answers) = (held.clone(), answers.clone());
        tricklers.push(tokio::spawn(async move {
            let (mut reader, mut writer) = stream.into_split();
            let trickle = tokio::spawn(async move {
                let _ = writer.write_all(head.as_bytes()).await;
                while started.elapsed() < WATCHED {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    if writer.write_all(b"x").await.is_err() {
                        return;
                    }
                }
            });
            let left = WATCHED.saturating_sub(started.elapsed());
            let (answer, closed) = read_until_closed(&mut reader, left).await;
            if closed {
                held.fetch_sub(1, Ordering::SeqCst);
            }
            // The status line (`HTTP/1.1 503 Service Unavailable` → `503`), or how it ended.
            let status = text(&answer)
                .split_whitespace()
                .nth(1)
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    (if closed {
                        "closed silently"
                    } else {
                        "still open"
                    })
                    .to_owned()
                });
            *answers.lock().unwrap().entry(status).or_default() += 1;
            trickle.abort();
        }));
    }
    let opened = started.elapsed();
    println!(
        "one address, {TRICKLERS} connections (opened within {:.1} s), each an order's head then 1 byte / 5 s; \
         gateway defaults (per-client cap {}, body minimum {} B/s after {} s, body deadline {} s)",
        opened.as_secs_f64(),
        msa_gateway::client_connections::DEFAULT_LIMIT,
        LimitArgs::default().body_min_rate_bytes,
        LimitArgs::default().body_rate_grace_seconds,
        LimitArgs::default().body_deadline_seconds,
    );
    println!("{:>8} {:>16}", "after s", "still held");
    for second in (0..=WATCHED.as_secs()).step_by(5) {
        tokio::time::sleep_until((started + Duration::from_secs(second)).into()).await;
        println!("{second:>8} {:>16}", held.load(Ordering::SeqCst));
    }
    for trickler in tricklers {
        let _ = trickler.await;
    }
    println!(
        "answers by status: {:?}; requests that reached the backend: {}",
        answers.lock().unwrap(),
        requests.load(Ordering::SeqCst)
    );
}
