//! A figure, not a test (issue 27): orders placed per second with and without an
//! `Idempotency-Key`, against the real user and product services on 127.0.0.1, and the ratio.
//! The two kinds alternate in rounds so background load hits both alike. Measured at the order
//! service (the gateway in front adds the same work to both kinds). Ignored by default; run it
//! with `cargo test --release -p msa-order --test idempotency_bench -- --ignored --nocapture`
//! (PostgreSQL too when `MSA_TEST_POSTGRES_URL` is set).

// Each test file uses a part of it.
#[allow(dead_code)]
mod common;

use msa_service_kit::testing::{self, TestBackend};
use serde_json::json;

/// Orders per round, placed `CONCURRENCY` at a time; rounds per kind.
const PER_ROUND: usize = 200;
const CONCURRENCY: usize = 8;
const ROUNDS: usize = 3;

async fn orders_per_second(backend: TestBackend) {
    let hood = common::neighbourhood(backend).await;
    let (orders, _) = testing::start_service(backend, "order", &msa_order::MIGRATOR, {
        let peers = common::peers(&hood.users.base, &hood.products.base);
        move |db| msa_order::router(db, peers)
    })
    .await;
    let user = hood
        .users
        .create(
            "/users",
            json!({"name": "Bench", "email": format!("{}@example.com", uuid::Uuid::new_v4().simple())}),
        )
        .await;
    let product = hood
        .products
        .create(
            "/products",
            json!({"name": "A", "price": "1.00", "stock": 1_000_000}),
        )
        .await;
    let body = json!({"user_id": user, "items": [{"product_id": product, "quantity": 1}]});
    let (plain, keyed) = testing::orders_per_second_without_and_with_keys(
        &orders,
        &body,
        PER_ROUND,
        CONCURRENCY,
        ROUNDS,
    )
    .await;
    println!(
        "{backend:?}: {PER_ROUND} orders x {ROUNDS} rounds, {CONCURRENCY} at a time (median round)\n  \
         without a key  {plain:>7.0} orders/s\n  \
         with a key     {keyed:>7.0} orders/s\n  \
         ratio          {:>7.2} (with / without)",
        keyed / plain
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints a figure"]
async fn sqlite() {
    orders_per_second(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints a figure"]
async fn postgres() {
    if std::env::var("MSA_TEST_POSTGRES_URL").is_err() {
        println!("MSA_TEST_POSTGRES_URL is not set: PostgreSQL skipped");
        return;
    }
    orders_per_second(TestBackend::Postgres).await;
}
