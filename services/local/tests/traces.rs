//! Issue 17, part 2: traces reach a real OTLP receiver. Jaeger (built from its Go module by
//! `hack/tools.sh jaeger`, listening on loopback only) receives the spans of a local run: one
//! order through the gateway is one trace, with the gateway's, the order service's, the user
//! service's and the product service's spans parented hop by hop, and the relay's publishes of
//! the order's events under the spans that wrote them; the log lines carry the same ids; and a
//! retried upstream call shows as two attempts.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::Local;
use msa_service_kit::testing::{ServiceProcess, loopback_client};
use msa_telemetry::jaeger::{Jaeger, Span, assert_child, one};
use serde_json::{Value, json};

/// A random trace id (32 hex digits) or span id (16).
fn random_hex(bytes: usize) -> String {
    let mut id = uuid::Uuid::new_v4().simple().to_string();
    id.truncate(bytes * 2);
    id
}

async fn post(client: &reqwest::Client, url: String, body: Value, traceparent: &str) -> Value {
    let answer = client
        .post(url)
        .header("traceparent", traceparent)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{}", answer.status());
    answer.json().await.unwrap()
}

#[tokio::test]
async fn one_order_is_one_trace_across_every_component() {
    let jaeger = Jaeger::start("order").await;
    let local = Local::start_with_env(
        "traces",
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &jaeger.otlp),
            // Export within a tenth of a second instead of five.
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let gateway = local.gateway();
    let client = loopback_client();
    let setup = format!("00-{}-{}-01", random_hex(16), random_hex(8));
    let user = post(
        &client,
        format!("{gateway}/users"),
        json!({"name": "Ada", "email": "ada@example.com"}),
        &setup,
    )
    .await;
    let product = post(
        &client,
        format!("{gateway}/products"),
        json!({"name": "Lamp", "price": 19.5, "stock": 3}),
        &setup,
    )
    .await;

    // The caller's own trace context: the gateway continues it.
    let (trace_id, caller_span) = (random_hex(16), random_hex(8));
    let order = post(
        &client,
        format!("{gateway}/orders"),
        json!({"user_id": user["id"], "items": [{"product_id": product["id"], "quantity": 1}]}),
        &format!("00-{trace_id}-{caller_span}-01"),
    )
    .await;
    assert_eq!(order["status"], "confirmed", "{order}");

    let spans = jaeger
        .trace(&trace_id, |spans| {
            ["msa-gateway", "msa-order", "msa-user", "msa-product"]
                .iter()
                .all(|service| spans.iter().any(|s| s.service == *service))
                && spans.len() >= 11
                && spans
                    .iter()
                    .any(|s| s.operation == "publish msa.local.order.confirmed.v1")
        })
        .await;
    let front = one(&spans, "msa-gateway", "POST /orders");
    assert_eq!(
        front.parent.as_deref(),
        Some(caller_span.as_str()),
        "the gateway continues the caller's trace"
    );
    assert_eq!(front.tags["span.kind"], "server");
    assert_eq!(front.tags["http.response.status_code"], 201);
    let to_order = one(&spans, "msa-gateway", "POST order");
    assert_child(to_order, front);
    assert_eq!(to_order.tags["span.kind"], "client");
    let order_server = one(&spans, "msa-order", "POST /orders");
    assert_child(order_server, to_order);
    // The order service looks the user and the product up, reserves stock and commits the
    // reservation: each call a client span under its server span, each callee's server span
    // under that attempt.
    for (service, operation, call) in [
        ("msa-user", "GET /users/{id}", "GET user"),
        ("msa-product", "GET /products/{id}", "GET product"),
        ("msa-product", "POST /reservations", "POST product"),
        (
            "msa-product",
            "POST /reservations/{id}/commit",
            "POST product",
        ),
    ] {
        let server = one(&spans, service, operation);
        let attempt = spans
            .iter()
            .find(|s| Some(&s.id) == server.parent.as_ref())
            .unwrap_or_else(|| panic!("the parent of {service} {operation} in {spans:#?}"));
        assert_eq!(
            (attempt.service.as_str(), attempt.operation.as_str()),
            ("msa-order", call)
        );
        assert_eq!(attempt.tags["span.kind"], "client");
        assert_eq!(attempt.tags["url.path"], server.tags["url.path"]);
        assert_child(attempt, order_server);
    }
    assert!(
        spans.iter().all(|s| s.parent.is_some()),
        "every span hangs off the caller's: {spans:#?}"
    );
    // The order's events continue its trace (issue 29): each is published by the order
    // service's relay, later and outside the request, in a producer span whose parent is the
    // span that wrote the event with the order.
    for operation in [
        "publish msa.local.order.placed.v1",
        "publish msa.local.order.confirmed.v1",
    ] {
        let published = one(&spans, "msa-order", operation);
        assert_eq!(published.tags["span.kind"], "producer");
        assert_eq!(published.tags["messaging.system"], "nats");
        let writer = spans
            .iter()
            .find(|s| Some(&s.id) == published.parent.as_ref())
            .unwrap_or_else(|| panic!("the parent of {operation} in {spans:#?}"));
        assert_eq!(writer.service, "msa-order", "{operation}");
    }

    // The order service's log line for that request carries the same ids.
    let log = std::fs::read_to_string(local.data.join("logs/order-0.log")).unwrap();
    let handled = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["span"]["trace_id"] == trace_id.as_str())
        .unwrap_or_else(|| panic!("a log line with trace_id {trace_id} in:\n{log}"));
    assert_eq!(handled["span"]["span_id"], order_server.id.as_str());
    local.stop();
}

/// Stands in for an endpoint that drops its first connection unanswered and answers the next:
/// the gateway retries a GET on a fresh connection, and the trace shows both attempts.
fn flaky_backend() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        for answer in [false, true] {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            if answer {
                let body = b"[]";
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(body);
            }
        }
    });
    (address, handle)
}

#[tokio::test]
async fn a_retried_call_shows_as_two_attempts() {
    let jaeger = Jaeger::start("retry").await;
    let (backend, backend_thread) = flaky_backend();
    let gateway_binary = Path::new(common::LOCAL).with_file_name("msa-gateway");
    // Killed when dropped, also when the test fails first.
    let gateway = ServiceProcess::start(
        gateway_binary.to_str().unwrap(),
        &["--upstream-product", &backend.to_string()],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &jaeger.otlp),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            // Quiet logs (as the benchmarks run it) must not switch the request spans off.
            ("RUST_LOG", "warn"),
        ],
    )
    .await;
    let trace_id = random_hex(16);
    let answer = loopback_client()
        .get(format!("{}/products", gateway.base_url))
        .header("traceparent", format!("00-{trace_id}-{}-01", random_hex(8)))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(answer.status(), 200);
    backend_thread.join().unwrap();
    let spans = jaeger.trace(&trace_id, |spans| spans.len() >= 3).await;
    drop(gateway);
    let server = one(&spans, "msa-gateway", "GET /products");
    let mut attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.operation == "GET product")
        .collect();
    attempts.sort_by_key(|s| s.tags["http.request.resend_count"].as_i64());
    assert_eq!(attempts.len(), 2, "{spans:#?}");
    for attempt in &attempts {
        assert_child(attempt, server);
    }
    assert_eq!(attempts[0].tags["error.type"], "closed");
    assert_eq!(attempts[0].tags["otel.status_code"], "ERROR");
    assert_eq!(attempts[1].tags["http.request.resend_count"], 1);
    assert_eq!(attempts[1].tags["http.response.status_code"], 200);
}
