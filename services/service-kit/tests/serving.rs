//! The shared serving behaviour, end to end on 127.0.0.1: a drain that finishes in-flight
//! requests and fails readiness, and the CORS policy.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use msa_service_kit::config::ServeArgs;
use msa_service_kit::server::{Ops, shutdown_signal};
use msa_service_kit::testing::{loopback_client as client, spawn_with};
use tokio::sync::Notify;

fn args(origins: &[&str], credentials: bool) -> ServeArgs {
    ServeArgs {
        cors_origins: origins.iter().map(|o| o.to_string()).collect(),
        cors_allow_credentials: credentials,
        body_limit_bytes: 1024,
        instance: None,
        ..msa_service_kit::testing::serve_args()
    }
}

fn slow_api() -> Router {
    Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            "done"
        }),
    )
}

/// A route that tells `started` when its request arrives and answers only once `release` is
/// notified: a request held in flight for exactly as long as the test needs.
fn held_api(started: Arc<Notify>, release: Arc<Notify>) -> Router {
    Router::new().route(
        "/held",
        get(move || async move {
            started.notify_one();
            release.notified().await;
            "done"
        }),
    )
}

async fn readiness(http: &reqwest::Client, base: &str) -> u16 {
    http.get(format!("{base}/readyz"))
        .send()
        .await
        .expect("accepting during the drain delay")
        .status()
        .as_u16()
}

/// A real SIGTERM, to this test process, caught by the services' own [`shutdown_signal`]: the
/// server's readiness fails while it keeps serving (the drain delay), the request in flight
/// when the signal came is answered in full, and then the server stops accepting.
#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_fails_readiness() {
    // The handler is installed by the future's first poll; once installed (for the life of the
    // process) a SIGTERM no longer ends the test binary.
    let mut shutdown = Box::pin(shutdown_signal());
    let noop = &mut std::task::Context::from_waker(std::task::Waker::noop());
    assert!(shutdown.as_mut().poll(noop).is_pending());

    let ops = Ops::new("kit", "test", "kit-0".into(), None);
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let serve_args = ServeArgs {
        // The window in which readiness is asked; the test waits it out.
        drain_delay_seconds: Some(5),
        ..args(&[], false)
    };
    let (base, server) = spawn_with(
        held_api(started.clone(), release.clone()),
        ops,
        &serve_args,
        shutdown,
    )
    .await;
    let http = client();
    assert_eq!(readiness(&http, &base).await, 200);

    let in_flight = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move { http.get(format!("{base}/held")).send().await }
    });
    tokio::time::timeout(Duration::from_secs(10), started.notified())
        .await
        .expect("the request reached its handler");
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(signalled.success());

    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while readiness(&http, &base).await != 503 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "readiness still passes after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!in_flight.is_finished(), "still held in its handler");
    release.notify_one();
    let answer = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("the in-flight request is answered")
        .unwrap()
        .expect("answered, not cut off");
    assert_eq!(answer.status(), 200);
    assert_eq!(
        answer.text().await.unwrap(),
        "done",
        "the in-flight request finished"
    );
    tokio::time::timeout(Duration::from_secs(30), server)
        .await
        .expect("the server stops after the drain")
        .unwrap()
        .unwrap();
    assert!(
        client()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn readiness_fails_first_when_draining() {
    let ops = Ops::new("kit", "test", "kit-0".into(), None);
    let (base, _) = spawn_with(
        slow_api(),
        ops.clone(),
        &args(&[], false),
        std::future::pending(),
    )
    .await;
    let http = client();
    let before = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert!(
        before.headers().get("connection").is_none(),
        "keep-alive while serving normally"
    );
    ops.start_draining();
    let response = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    // Still serving, but every answer tells keep-alive clients to reconnect (elsewhere).
    let served = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["connection"], "close");
}

#[tokio::test]
async fn cors_allows_listed_origins_only_and_never_wildcard_with_credentials() {
    assert!(
        args(&["*"], true)
            .cors()
            .unwrap_err()
            .to_string()
            .contains("list the allowed origins")
    );
    assert!(args(&[], false).cors().unwrap().is_none());

    let ops = Ops::new("kit", "test", "kit-0".into(), None);
    let (base, _) = spawn_with(
        slow_api(),
        ops,
        &args(&["https://shop.example"], true),
        std::future::pending(),
    )
    .await;
    let http = client();
    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, format!("{base}/healthz"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .send()
    };
    let allowed = preflight("https://shop.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}
