//! Issue 15, defect 3, and issue 27: a client that is slow or silent holds a connection for a
//! bounded time — a request head gets `header_timeout` from its first byte (then 408), a body
//! may pause for `body_timeout`, must average `body_min_rate` after a grace and end within
//! `body_deadline` (else 408), an idle keep-alive connection lives `idle_timeout` — and no more
//! than `max_connections` are held at once. Raw TCP on 127.0.0.1, so nothing a client library
//! does can hide what the server does. Bounds are strict below (the server must not close
//! early); above there are only generous functional ones (the trickle would have gone on far
//! longer).

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use msa_service_kit::config::{LimitArgs, ServeArgs};
use msa_service_kit::extract::Json;
use msa_service_kit::server::Ops;
use msa_service_kit::testing::{read_response, read_until_closed, serve_args, spawn_with};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const PATIENCE: Duration = Duration::from_secs(15);

/// Header and body timeouts of 1 s, idle keep-alive `idle_seconds`, at most 2 connections; no
/// minimum body rate and a long body deadline, so the pause limit is the one that ends a body.
async fn server(idle_seconds: u64) -> String {
    server_with(LimitArgs {
        header_timeout_seconds: 1,
        body_timeout_seconds: 1,
        body_deadline_seconds: 3600,
        body_min_rate_bytes: 0,
        idle_timeout_seconds: idle_seconds,
        max_connections: 2,
        ..LimitArgs::default()
    })
    .await
}

async fn server_with(limits: LimitArgs) -> String {
    let args = ServeArgs {
        limits,
        ..serve_args()
    };
    let api = Router::new()
        .route(
            "/echo",
            post(|Json(body): Json<serde_json::Value>| async move { Json(body) }),
        )
        .route(
            "/hint",
            post(|request: axum::extract::Request| async move {
                use hyper::body::Body as _;
                format!("{:?}", request.body().size_hint().exact())
            }),
        );
    let ops = Ops::new("kit", "test", "kit-0".into(), None);
    let (base, _) = spawn_with(api, ops, &args, std::future::pending()).await;
    base.trim_start_matches("http://").to_owned()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Sends `head`, then `body` one byte every `pace` (in a task of its own), and returns the
/// server's answer, whether it closed, and how long after the head that took. The trickle
/// stops when the server closes.
async fn trickle(
    address: &str,
    head: &str,
    body_length: usize,
    pace: Duration,
) -> (String, bool, Duration) {
    let stream = TcpStream::connect(address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for _ in 0..body_length {
            tokio::time::sleep(pace).await;
            if writer.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let (answer, closed) = read_until_closed(&mut reader, PATIENCE).await;
    let waited = started.elapsed();
    trickle.abort();
    (text(&answer), closed, waited)
}

#[tokio::test]
async fn a_head_sent_slowly_gets_408_when_its_time_is_up() {
    // The idle limit is far away: the head's own clock must end it.
    let address = server(60).await;
    let stream = TcpStream::connect(&address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    writer
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n")
        .await
        .unwrap();
    // One more header line every 200 ms for 6 s: always progressing, never finishing.
    let trickle = tokio::spawn(async move {
        for i in 0..30 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let line = format!("x-{i}: y\r\n");
            if writer.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let (answer, closed) = read_until_closed(&mut reader, PATIENCE).await;
    let waited = started.elapsed();
    trickle.abort();
    let answer = text(&answer);
    assert!(closed, "the connection is closed");
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("request-timeout"), "{answer}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(6),
        "closed after {waited:?}, not at the header timeout of 1 s"
    );
}

/// A connection that never sends a byte gets the header timeout (1 s), not the idle keep-alive
/// time (60 s here), and is closed without an answer: no request began.
#[tokio::test]
async fn a_connection_that_never_speaks_is_closed_at_the_header_timeout() {
    let address = server(60).await;
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let started = Instant::now();
    let (answer, closed) = read_until_closed(&mut stream, PATIENCE).await;
    let waited = started.elapsed();
    assert!(closed && answer.is_empty(), "{}", text(&answer));
    assert!(
        waited >= Duration::from_millis(900),
        "closed early: {waited:?}"
    );
}

/// The idle keep-alive limit (2 s) is its own: longer than the header timeout (1 s).
#[tokio::test]
async fn an_idle_keep_alive_connection_lives_its_idle_timeout() {
    let address = server(2).await;
    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    // The whole answer, however long a busy machine takes to give it; the idle clock starts
    // once it is in.
    let answer = read_response(&mut stream, PATIENCE).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let answered = Instant::now();
    let (more, closed) = read_until_closed(&mut stream, PATIENCE).await;
    let idle = answered.elapsed();
    assert!(closed && more.is_empty(), "{}", text(&more));
    assert!(
        idle >= Duration::from_millis(1400),
        "closed after {idle:?}: the idle limit is 2 s, not the header timeout"
    );
}

#[tokio::test]
async fn a_body_that_stalls_gets_408() {
    let address = server(60).await;
    let mut stream = TcpStream::connect(&address).await.unwrap();
    let started = Instant::now();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\": 1,",
        )
        .await
        .unwrap();
    let (answer, closed) = read_until_closed(&mut stream, PATIENCE).await;
    let waited = started.elapsed();
    let answer = text(&answer);
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("request-timeout"), "{answer}");
    assert!(
        closed,
        "a half-read body cannot be followed by another request"
    );
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
}

/// With room for 2, a third client waits until one of the first two goes (here: closed for
/// saying nothing within the header timeout, 1 s), instead of being served at once.
#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let address = server(2).await;
    let _first = TcpStream::connect(&address).await.unwrap();
    let _second = TcpStream::connect(&address).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut third = TcpStream::connect(&address).await.unwrap();
    let started = Instant::now();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut third, PATIENCE).await;
    let waited = started.elapsed();
    assert!(
        text(&answer).starts_with("HTTP/1.1 200 "),
        "{}",
        text(&answer)
    );
    assert!(
        waited >= Duration::from_millis(700),
        "answered after {waited:?}, before a slot was free"
    );
}

/// The body timeout keeps what the body says about its size: the gateway decides on it whether
/// a request can be kept for a retry (an unknown size cannot).
#[tokio::test]
async fn the_body_timeout_keeps_the_size_hint() {
    let address = server(60).await;
    let mut stream = TcpStream::connect(&address).await.unwrap();
    stream
        .write_all(b"POST /hint HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut stream, PATIENCE).await;
    assert!(text(&answer).ends_with("Some(5)"), "{}", text(&answer));
}

/// Issue 27: one byte every 5 s never hit the 10 s pause limit. Paced under the pause limit
/// (here 300 ms against 10 s), a body that averages less than the minimum rate (100 bytes/s)
/// after the grace (1 s) gets 408 and the connection closes.
#[tokio::test]
async fn a_trickled_body_under_the_minimum_rate_gets_408() {
    let address = server_with(LimitArgs {
        body_timeout_seconds: 10,
        body_deadline_seconds: 3600,
        body_min_rate_bytes: 100,
        body_rate_grace_seconds: 1,
        ..LimitArgs::default()
    })
    .await;
    let head = "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n";
    // 200 bytes at 300 ms each would take a minute.
    let (answer, closed, waited) = trickle(&address, head, 200, Duration::from_millis(300)).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("request-timeout"), "{answer}");
    assert!(closed, "the connection is closed");
    assert!(
        waited >= Duration::from_millis(900),
        "408 after {waited:?}, inside the grace"
    );
}

/// However it is paced, a whole body gets `body_deadline` (2 s here): 10 bytes a second with no
/// minimum rate and no pause over 100 ms still ends in 408.
#[tokio::test]
async fn a_body_that_never_ends_gets_408_at_its_deadline() {
    let address = server_with(LimitArgs {
        body_timeout_seconds: 10,
        body_deadline_seconds: 2,
        body_min_rate_bytes: 0,
        ..LimitArgs::default()
    })
    .await;
    let head = "POST /echo HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n";
    let (answer, closed, waited) = trickle(&address, head, 1000, Duration::from_millis(100)).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(closed, "the connection is closed");
    assert!(
        waited >= Duration::from_millis(1900),
        "408 after {waited:?}, before the deadline"
    );
}

/// A request head is buffered up to 96 KiB (hyper's default, ~400 KiB, times the connection
/// limit would let slow clients pin gigabytes): a 32 KiB header is served, a 100 KiB one gets
/// 431.
#[tokio::test]
async fn a_head_past_the_buffer_limit_gets_431_and_a_large_one_within_it_is_served() {
    let address = server(60).await;
    for (size, status) in [(32 * 1024, "200"), (100 * 1024, "431")] {
        let mut stream = TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "GET /healthz HTTP/1.1\r\nhost: t\r\nx-filler: {}\r\nconnection: close\r\n\r\n",
            "a".repeat(size)
        );
        // The server may answer and close before reading all of it.
        let _ = stream.write_all(head.as_bytes()).await;
        let (answer, _) = read_until_closed(&mut stream, PATIENCE).await;
        let answer = text(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "a {size}-byte header: {answer}"
        );
    }
}
