//! A figure, not a test (issue 27): orders placed per second through the gateway of a local
//! shop (`msa-local up`, SQLite), with and without an `Idempotency-Key`, and the ratio. With a
//! key the gateway may send a placement again after a failed attempt, and the order service
//! records the key with the order. The two kinds alternate in rounds so background load hits
//! both alike. Ignored by default; run it with
//! `cargo test -p msa-local --test orders_bench -- --ignored --nocapture`.

mod common;

use msa_service_kit::testing::{self, TestClient};
use serde_json::json;

/// Orders per round, placed `CONCURRENCY` at a time; rounds per kind.
const PER_ROUND: usize = 200;
const CONCURRENCY: usize = 8;
const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints a figure"]
async fn orders_per_second_through_the_gateway() {
    let local = common::Local::start("orders-bench", &[]);
    let gateway = TestClient::new(local.gateway());
    let user = gateway
        .create(
            "/users",
            json!({"name": "Bench", "email": "bench@example.com"}),
        )
        .await;
    let product = gateway
        .create(
            "/products",
            json!({"name": "A", "price": "1.00", "stock": 1_000_000}),
        )
        .await;
    let body = json!({"user_id": user, "items": [{"product_id": product, "quantity": 1}]});
    let (plain, keyed) = testing::orders_per_second_without_and_with_keys(
        &gateway,
        &body,
        PER_ROUND,
        CONCURRENCY,
        ROUNDS,
    )
    .await;
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
