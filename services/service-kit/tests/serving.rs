//! The shared serving behaviour, end to end on 127.0.0.1: a drain that finishes in-flight
//! requests and fails readiness, and the CORS policy.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use msa_service_kit::config::ServeArgs;
use msa_service_kit::server::Ops;
use msa_service_kit::testing::{loopback_client as client, spawn_with};

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

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_fails_readiness() {
    let ops = Ops::new("kit", "test", "kit-0".into(), None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (base, server) = spawn_with(slow_api(), ops, &args(&[], false), async {
        let _ = stopped.await;
    })
    .await;
    let http = client();
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let in_flight = tokio::spawn({
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.get(format!("{base}/slow"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert_eq!(
        in_flight.await.unwrap(),
        "done",
        "the in-flight request finished"
    );
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
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
