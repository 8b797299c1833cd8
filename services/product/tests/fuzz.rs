//! A bounded random walk over every route (issue 15): random methods, paths, headers and
//! bodies — no 5xx, and a refused request changes no row. On SQLite and PostgreSQL.

#[allow(dead_code)]
mod common;

use msa_service_kit::testing::{self, TestBackend};
use serde_json::json;

/// Every stored row.
const SNAPSHOT: &[&str] = &[
    "SELECT id, name, description, price_cents, stock, created_at, updated_at FROM products ORDER BY id",
    "SELECT id, state, created_at, updated_at FROM reservations ORDER BY id",
    "SELECT reservation_id, product_id, quantity, unit_price_cents FROM reservation_items \
     ORDER BY reservation_id, product_id",
];

async fn random_requests_get_no_5xx_and_refusals_store_nothing(backend: TestBackend) {
    // An order service that says every order was cancelled, so returns reach the store.
    let book = common::Ledger::start(Some("cancelled")).await.book;
    let (api, db) = testing::start_service(backend, "product", &msa_product::MIGRATOR, |db| {
        msa_product::router(db, book)
    })
    .await;
    let mut ids = Vec::new();
    for stock in [0, 5, 1_000_000_000] {
        let body = json!({"name": "A", "price": "1000000000.00", "stock": stock});
        ids.push(
            api.expect("POST", "/products", Some(body), 201).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let reservation = uuid::Uuid::new_v4().to_string();
    let body = json!({"id": reservation, "items": [{"product_id": ids[1], "quantity": 2}]});
    api.expect("POST", "/reservations", Some(body), 201).await;
    ids.push(reservation);
    testing::fuzz_routes(
        &api,
        &db,
        testing::FuzzPlan {
            routes: &[
                "POST /products",
                "GET /products",
                "GET /products/{id}",
                "PUT /products/{id}/stock",
                "POST /reservations",
                "GET /reservations/{id}",
                "POST /reservations/{id}/commit",
                "POST /reservations/{id}/release",
                "POST /reservations/{id}/return",
            ],
            ids: &ids,
            fields: &[
                "name",
                "price",
                "stock",
                "description",
                "id",
                "items",
                "product_id",
                "quantity",
            ],
            snapshot: SNAPSHOT,
            rounds: 400,
            seed: 0x5eed_0002,
        },
    )
    .await;
}

msa_service_kit::on_both_backends!(random_requests_get_no_5xx_and_refusals_store_nothing);
