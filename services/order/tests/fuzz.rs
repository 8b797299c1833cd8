//! A bounded random walk over every route (issue 15): random methods, paths, headers and
//! bodies — no 5xx, and a refused request changes no row. Real user and product services
//! behind it; on SQLite and PostgreSQL.

// Each test file uses a part of it.
#[allow(dead_code)]
mod common;

use msa_service_kit::testing::{self, TestBackend};
use serde_json::json;

/// Every stored row but failed orders: a refused reservation (409 insufficient stock) keeps its
/// order as `failed` on purpose (README, "The saga").
const SNAPSHOT: &[&str] = &[
    "SELECT id, user_id, status, total_cents, failure_reason, release_pending, created_at, updated_at \
     FROM orders WHERE status <> 'failed' ORDER BY id",
    "SELECT order_id, line, product_id, quantity, unit_price_cents FROM order_items \
     WHERE order_id IN (SELECT id FROM orders WHERE status <> 'failed') ORDER BY order_id, line",
];

async fn random_requests_get_no_5xx_and_refusals_store_nothing(backend: TestBackend) {
    let hood = common::neighbourhood(backend).await;
    let (users, products) = (&hood.users, &hood.products);
    let peers = common::peers(&users.base, &products.base);
    let (orders, db) = testing::start_service(backend, "order", &msa_order::MIGRATOR, |db| {
        msa_order::router(db, peers)
    })
    .await;
    hood.orders_at(&orders.base);
    let user = users
        .expect(
            "POST",
            "/users",
            Some(json!({"name": "Ada", "email": "ada@example.com"})),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let product = products
        .expect(
            "POST",
            "/products",
            Some(json!({"name": "A", "price": "1000000000.00", "stock": 50})),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let order = orders
        .expect(
            "POST",
            "/orders",
            Some(json!({"user_id": user, "items": [{"product_id": product, "quantity": 1}]})),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    testing::fuzz_routes(
        &orders,
        &db,
        testing::FuzzPlan {
            routes: &[
                "POST /orders",
                "GET /orders/{id}",
                "PUT /orders/{id}/status",
                "GET /orders/user/{id}",
            ],
            ids: &[user, product, order],
            fields: &["user_id", "items", "status", "total"],
            snapshot: SNAPSHOT,
            rounds: 300,
            seed: 0x5eed_0003,
        },
    )
    .await;
}

msa_service_kit::on_both_backends!(random_requests_get_no_5xx_and_refusals_store_nothing);
