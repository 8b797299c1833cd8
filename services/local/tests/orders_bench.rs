//! A figure, not a test (issue 27): orders placed per second through the gateway of a local
//! shop (`msa-local up`, SQLite), with and without an `Idempotency-Key`, and the ratio. With a
//! key the gateway may send a placement again after a failed attempt, and the order service
//! records the key with the order. The two kinds alternate in rounds so background load hits
//! both alike. Ignored by default; run it with
//! `cargo test -p msa-local --test orders_bench -- --ignored --nocapture`.

mod common;

use msa_service_kit::testing::{self, TestClient};
use serde_json::{Value, json};

/// Orders per round, placed `CONCURRENCY` at a time; rounds per kind.
const PER_ROUND: usize = 200;
const CONCURRENCY: usize = 8;
const ROUNDS: usize = 3;

async fn place(gateway: TestClient, body: Value, keyed: bool) {
    let mut request = gateway
        .http
        .post(format!("{}/orders", gateway.base))
        .json(&body);
    if keyed {
        request = request.header("idempotency-key", uuid::Uuid::new_v4().to_string());
    }
    let status = request.send().await.expect("the gateway answers").status();
    assert_eq!(status, 201);
}

async fn round(gateway: &TestClient, body: &Value, keyed: bool) -> f64 {
    let (gateway, body) = (gateway.clone(), body.clone());
    testing::calls_per_second(PER_ROUND, CONCURRENCY, move || {
        place(gateway.clone(), body.clone(), keyed)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints a figure"]
async fn orders_per_second_through_the_gateway() {
    let local = common::Local::start("orders-bench", &[]);
    let gateway = TestClient::new(local.gateway());
    let user = gateway
        .expect(
            "POST",
            "/users",
            Some(json!({"name": "Bench", "email": "bench@example.com"})),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let product = gateway
        .expect(
            "POST",
            "/products",
            Some(json!({"name": "A", "price": "1.00", "stock": 1_000_000})),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = json!({"user_id": user, "items": [{"product_id": product, "quantity": 1}]});
    round(&gateway, &body, false).await; // warm-up: connections, caches
    let (mut plain, mut keyed) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        plain.push(round(&gateway, &body, false).await);
        keyed.push(round(&gateway, &body, true).await);
    }
    let (plain, keyed) = (testing::median(plain), testing::median(keyed));
    println!(
        "through the gateway (msa-local, SQLite): {PER_ROUND} orders x {ROUNDS} rounds, \
         {CONCURRENCY} at a time (median round)\n  \
         without a key  {plain:>7.0} orders/s\n  \
         with a key     {keyed:>7.0} orders/s\n  \
         ratio          {:>7.2} (with / without)",
        keyed / plain
    );
    local.stop();
}
