//! Issue 17, part 1: the application's original client, request for request, against
//! `msa-local up` — it creates a user and a product, places an order with the total it expects
//! (`"total": 999.99`, a JSON number), lists the user's orders, and calls `GET /` on the gateway
//! and `GET /health` and `GET /info` on each service. Every answer is checked, and a total that
//! is not the server's is refused without storing anything.

mod common;

use serde_json::{Value, json};

use common::Local;

async fn call(method: &str, url: String, body: Option<Value>) -> (u16, Value) {
    let client = msa_service_kit::testing::loopback_client();
    let mut request = client.request(method.parse().unwrap(), &url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_original_client_works_unchanged() {
    let local = Local::start("client", &[]);
    let gateway = local.gateway();

    let (status, front) = call("GET", format!("{gateway}/"), None).await;
    assert_eq!(status, 200, "{front}");
    assert_eq!(front["name"], "msa-gateway");
    assert_eq!(front["status"], "ok");
    assert_eq!(front["routes"], json!(["/users", "/orders", "/products"]));
    for service in ["user", "order", "product"] {
        let base = local.url(&format!("{service}-0"));
        let (status, health) = call("GET", format!("{base}/health"), None).await;
        assert_eq!(status, 200, "{service}: {health}");
        assert_eq!(
            (health["status"].as_str(), health["service"].as_str()),
            (Some("healthy"), Some(service))
        );
        let (status, info) = call("GET", format!("{base}/info"), None).await;
        assert_eq!(
            (status, info["name"].as_str()),
            (200, Some(service)),
            "{info}"
        );
    }

    let (status, user) = call(
        "POST",
        format!("{gateway}/users"),
        Some(json!({"name": "John Doe", "email": "john@example.com"})),
    )
    .await;
    assert_eq!(status, 201, "{user}");
    let user_id = user["id"].as_str().unwrap().to_owned();
    let (status, product) = call(
        "POST",
        format!("{gateway}/products"),
        Some(json!({"name": "Laptop", "description": "High-performance laptop", "price": 999.99, "stock": 10})),
    )
    .await;
    assert_eq!(status, 201, "{product}");
    assert_eq!(product["price"], "999.99");
    let product_id = product["id"].as_str().unwrap().to_owned();

    let items = json!([{"product_id": product_id, "quantity": 1}]);
    let (status, refused) = call(
        "POST",
        format!("{gateway}/orders"),
        Some(json!({"user_id": user_id, "items": items, "total": 1.00})),
    )
    .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused["type"]
            .as_str()
            .unwrap()
            .ends_with("/total-mismatch"),
        "{refused}"
    );
    assert_eq!(refused["computed_total"], "999.99");
    let (status, order) = call(
        "POST",
        format!("{gateway}/orders"),
        Some(json!({"user_id": user_id, "items": items, "total": 999.99})),
    )
    .await;
    assert_eq!(status, 201, "{order}");
    assert_eq!(
        (order["status"].as_str(), order["total"].as_str()),
        (Some("confirmed"), Some("999.99"))
    );

    let (status, orders) = call("GET", format!("{gateway}/orders/user/{user_id}"), None).await;
    assert_eq!(status, 200, "{orders}");
    assert_eq!(
        orders["total"], 1,
        "the refused order left nothing: {orders}"
    );
    assert_eq!(orders["items"][0]["id"], order["id"]);
    let (_, stock) = call("GET", format!("{gateway}/products/{product_id}"), None).await;
    assert_eq!(
        stock["stock"], 9,
        "only the accepted order took stock: {stock}"
    );
    local.stop();
}
