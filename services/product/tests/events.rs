//! Every change of a product is an event in the product service's outbox, written with the
//! change: created, updated (name or description), price_changed, and stock_changed for each
//! way stock moves (set, reserved, released, returned), each with the stock before and after.

#[allow(dead_code)]
mod common;

use msa_events::testing::events_by_aggregate;
use msa_service_kit::on_both_backends;
use msa_service_kit::testing::{self, TestBackend};
use serde_json::{Value, json};

async fn every_change_of_a_product_is_announced(backend: TestBackend) {
    let ledger = common::Ledger::start(None).await;
    let book = ledger.book.clone();
    let (api, db) = testing::start_service(backend, "product", &msa_product::MIGRATOR, |db| {
        msa_product::router(db, book)
    })
    .await;
    let id = api
        .create(
            "/products",
            json!({"name": "Lamp", "price": "10.00", "stock": 5}),
        )
        .await;
    let path = format!("/products/{id}");
    api.expect("PATCH", &path, Some(json!({"name": "Desk lamp"})), 200)
        .await;
    api.expect("PATCH", &path, Some(json!({"price": "12.50"})), 200)
        .await;
    let both = api
        .expect(
            "PATCH",
            &path,
            Some(json!({"description": "LED", "price": 11})),
            200,
        )
        .await;
    assert_eq!(both["price"], "11.00");
    assert_eq!(both["description"], "LED");
    // Refused changes announce nothing.
    api.expect("PATCH", &path, Some(json!({})), 422).await;
    api.expect("PATCH", &path, Some(json!({"price": "-1"})), 422)
        .await;
    api.expect(
        "PATCH",
        &format!("/products/{}", uuid::Uuid::new_v4()),
        Some(json!({"name": "x"})),
        404,
    )
    .await;
    api.expect(
        "PUT",
        &format!("{path}/stock"),
        Some(json!({"stock": 9})),
        200,
    )
    .await;
    // Setting the stock it already has changes nothing, and says nothing.
    api.expect(
        "PUT",
        &format!("{path}/stock"),
        Some(json!({"stock": 9})),
        200,
    )
    .await;
    let order = uuid::Uuid::new_v4().to_string();
    let lines = json!({"id": order, "items": [{"product_id": id, "quantity": 4}]});
    api.expect("POST", "/reservations", Some(lines.clone()), 201)
        .await;
    api.expect("POST", "/reservations", Some(lines), 200).await; // a retry takes nothing
    api.expect("POST", &format!("/reservations/{order}/release"), None, 200)
        .await;
    api.expect("POST", &format!("/reservations/{order}/release"), None, 200)
        .await; // nor does a repeated release give anything back
    let sold = uuid::Uuid::new_v4().to_string();
    api.expect(
        "POST",
        "/reservations",
        Some(json!({"id": sold, "items": [{"product_id": id, "quantity": 2}]})),
        201,
    )
    .await;
    api.expect("POST", &format!("/reservations/{sold}/commit"), None, 200)
        .await;
    ledger.set(&sold, "cancelled");
    api.expect("POST", &format!("/reservations/{sold}/return"), None, 200)
        .await;

    let events = events_by_aggregate(&db.pool).await;
    let kinds: Vec<(&str, &Value)> = events[&id]
        .iter()
        .map(|(kind, data)| (kind.trim_start_matches("dev.msa.product."), data))
        .collect();
    let names: Vec<&str> = kinds.iter().map(|(kind, _)| *kind).collect();
    assert_eq!(
        names,
        [
            "created.v1",
            "updated.v1",
            "price_changed.v1",
            "updated.v1",
            "price_changed.v1",
            "stock_changed.v1",
            "stock_changed.v1",
            "stock_changed.v1",
            "stock_changed.v1",
            "stock_changed.v1",
        ]
    );
    assert_eq!(kinds[0].1["stock"], 5);
    assert_eq!(kinds[1].1["name"], "Desk lamp");
    assert_eq!(
        *kinds[2].1,
        json!({"id": id, "previous_price_cents": 1000, "price_cents": 1250})
    );
    let stock: Vec<(i64, i64, &str, Value)> = kinds[5..]
        .iter()
        .map(|(_, d)| {
            (
                d["previous_stock"].as_i64().unwrap(),
                d["stock"].as_i64().unwrap(),
                d["reason"].as_str().unwrap(),
                d["reservation_id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        stock,
        [
            (5, 9, "set", Value::Null),
            (9, 5, "reserved", json!(order)),
            (5, 9, "released", json!(order)),
            (9, 7, "reserved", json!(sold)),
            (7, 9, "returned", json!(sold)),
        ]
    );
    assert_eq!(events.len(), 1, "events of nothing but this product");
}

on_both_backends!(every_change_of_a_product_is_announced);
