//! A figure, not a test (issue 27): how long the recoverer takes to resolve 1,000 stranded
//! orders — a third never reserved, a third held, a third committed — against the real product
//! service on 127.0.0.1. Ignored by default; run it with
//! `cargo test -p msa-order --test recovery_bench -- --ignored --nocapture`
//! (PostgreSQL too when `MSA_TEST_POSTGRES_URL` is set).

// Each test file uses a part of it.
#[allow(dead_code)]
mod common;

use std::time::{Duration, Instant};

use msa_order::model::{Order, RequestedItem, Status, price_lines};
use msa_order::recovery::{self, RecoveryMetrics, RecoverySettings, Round};
use msa_product::model::ReservationItem;
use msa_service_kit::testing::{self, TestBackend};
use serde_json::json;

const STRANDED: usize = 1_000;

async fn resolve_stranded_orders(backend: TestBackend) {
    let hood = common::neighbourhood(backend).await;
    let product = hood
        .products
        .create(
            "/products",
            json!({"name": "A", "price": "1.00", "stock": 1_000_000}),
        )
        .await;
    let db = common::open(&testing::fresh_database(backend, "order").await).await;
    let user = uuid::Uuid::new_v4().to_string();
    for i in 0..STRANDED {
        let (items, total_cents) = price_lines(&[(
            RequestedItem {
                product_id: product.clone(),
                quantity: 1,
            },
            100,
        )])
        .unwrap();
        let now = msa_service_kit::now_rfc3339();
        let order = Order {
            id: uuid::Uuid::new_v4().to_string(),
            user_id: user.clone(),
            status: Status::Pending,
            items,
            total_cents,
            total: msa_service_kit::format_cents(total_cents),
            failure_reason: None,
            created_at: now.clone(),
            updated_at: now,
        };
        msa_order::store::insert(&db, &order).await.unwrap();
        if i % 3 != 0 {
            let line = ReservationItem {
                product_id: product.clone(),
                quantity: 1,
            };
            msa_product::store::reserve(&hood.product_db, &order.id, &[line])
                .await
                .unwrap();
        }
        if i % 3 == 2 {
            msa_product::store::commit(&hood.product_db, &order.id)
                .await
                .unwrap();
        }
    }
    let peers = common::peers(&hood.users.base, &hood.products.base);
    let settings = RecoverySettings {
        after: Duration::ZERO,
        every: Duration::from_secs(1),
        lease: Duration::from_secs(60),
    };
    let metrics = RecoveryMetrics::default();
    let started = Instant::now();
    let mut total = Round::default();
    for _ in 0..10 {
        let round = recovery::round(&db, &peers, &settings, &metrics, "bench")
            .await
            .unwrap();
        total.confirmed += round.confirmed;
        total.failed += round.failed;
        if round.total() == 0 {
            break;
        }
    }
    let took = started.elapsed();
    println!(
        "{backend:?}: the recoverer resolved {STRANDED} stranded orders ({} confirmed, {} failed) in {:.2} s, {:.0} orders/s",
        total.confirmed,
        total.failed,
        took.as_secs_f64(),
        STRANDED as f64 / took.as_secs_f64()
    );
    common::settle(&db, Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints a figure"]
async fn sqlite() {
    resolve_stranded_orders(TestBackend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints a figure"]
async fn postgres() {
    if std::env::var("MSA_TEST_POSTGRES_URL").is_err() {
        println!("MSA_TEST_POSTGRES_URL is not set: PostgreSQL skipped");
        return;
    }
    resolve_stranded_orders(TestBackend::Postgres).await;
}
