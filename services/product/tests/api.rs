//! Route-level tests of the product service, each on SQLite and on PostgreSQL.

#[allow(dead_code)]
mod common;

use common::Ledger;
use msa_service_kit::testing::{
    self, ServiceProcess, TestBackend, TestClient, expect_problem, fresh_database,
};
use serde_json::{Value, json};

/// The product service, asking an order service that backs every return (these tests are about
/// stock; [`a_return_needs_the_order_service_to_say_the_order_ended`] is about who may return).
async fn start(backend: TestBackend) -> TestClient {
    common::start_with(backend, &Ledger::start(Some("cancelled")).await).await
}

async fn create(api: &TestClient, name: &str, price: Value, stock: i64) -> Value {
    api.expect(
        "POST",
        "/products",
        Some(json!({"name": name, "price": price, "stock": stock, "description": "d"})),
        201,
    )
    .await
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

async fn stock_of(api: &TestClient, product: &str) -> i64 {
    api.expect("GET", &format!("/products/{product}"), None, 200)
        .await["stock"]
        .as_i64()
        .unwrap()
}

async fn catalogue(backend: TestBackend) {
    let api = start(backend).await;
    let laptop = create(&api, "Laptop", json!(999.99), 10).await;
    assert_eq!(
        (laptop["price"].as_str(), laptop["price_cents"].as_i64()),
        (Some("999.99"), Some(99999))
    );
    let pen = create(&api, "Pen", json!("1.5"), 0).await;
    assert_eq!(pen["price"], "1.50");
    assert_eq!(
        api.expect("GET", &format!("/products/{}", id(&laptop)), None, 200)
            .await,
        laptop
    );

    let page = api.expect("GET", "/products?limit=1", None, 200).await;
    assert_eq!(
        (page["total"].as_i64(), page["next_offset"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(page["items"][0]["name"], "Laptop");

    let restocked = api
        .expect(
            "PUT",
            &format!("/products/{}/stock", id(&pen)),
            Some(json!({"stock": 7})),
            200,
        )
        .await;
    assert_eq!(restocked["stock"], 7);
}

async fn bad_input_is_refused_and_changes_nothing(backend: TestBackend) {
    let api = start(backend).await;
    let cases = [
        (
            json!({"name": "", "price": 1, "stock": 1}),
            422,
            Some("name"),
        ),
        (
            json!({"name": "A", "price": -1, "stock": 1}),
            422,
            Some("price"),
        ),
        (
            json!({"name": "A", "price": "1.234", "stock": 1}),
            422,
            Some("price"),
        ),
        (
            json!({"name": "A", "price": 1, "stock": -1}),
            422,
            Some("stock"),
        ),
        (json!({"name": "A", "price": 1}), 400, None),
        (json!({"name": "A", "price": 1, "stock": "ten"}), 400, None),
        (json!({"name": "A", "price": 1, "stock": 1.5}), 400, None),
    ];
    for (body, status, field) in cases {
        let problem = expect_problem(
            api.send("POST", "/products", Some(body.clone())).await,
            status,
        )
        .await;
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{body}");
        }
    }
    assert_eq!(api.expect("GET", "/products", None, 200).await["total"], 0);

    let product = create(&api, "Laptop", json!(10), 3).await;
    let stock_path = format!("/products/{}/stock", id(&product));
    expect_problem(
        api.send("PUT", &stock_path, Some(json!({"stock": -5})))
            .await,
        422,
    )
    .await;
    expect_problem(
        api.send("PUT", &stock_path, Some(json!({"level": 5})))
            .await,
        400,
    )
    .await;
    assert_eq!(stock_of(&api, &id(&product)).await, 3);
    let missing = uuid::Uuid::new_v4();
    expect_problem(
        api.send("GET", &format!("/products/{missing}"), None).await,
        404,
    )
    .await;
    expect_problem(
        api.send(
            "PUT",
            &format!("/products/{missing}/stock"),
            Some(json!({"stock": 1})),
        )
        .await,
        404,
    )
    .await;
    expect_problem(api.send("GET", "/products/nope", None).await, 400).await;
    expect_problem(api.send("GET", "/products?offset=-1", None).await, 422).await;
}

async fn reservations_are_all_or_nothing(backend: TestBackend) {
    let api = start(backend).await;
    let a = id(&create(&api, "A", json!(2.5), 5).await);
    let b = id(&create(&api, "B", json!(10), 1).await);
    let order = uuid::Uuid::new_v4().to_string();

    // B has only 1: nothing is taken from A either.
    let body = json!({"id": order, "items": [{"product_id": a, "quantity": 2}, {"product_id": b, "quantity": 2}]});
    let problem = expect_problem(api.send("POST", "/reservations", Some(body)).await, 409).await;
    assert_eq!(
        (
            problem["product_id"].as_str(),
            problem["available"].as_i64()
        ),
        (Some(b.as_str()), Some(1))
    );
    assert_eq!((stock_of(&api, &a).await, stock_of(&api, &b).await), (5, 1));
    expect_problem(
        api.send("GET", &format!("/reservations/{order}"), None)
            .await,
        404,
    )
    .await;

    // Lines for the same product are merged; the reservation snapshots prices.
    let body = json!({"id": order, "items": [{"product_id": a, "quantity": 1}, {"product_id": b, "quantity": 1}, {"product_id": a, "quantity": 1}]});
    let reservation = api
        .expect("POST", "/reservations", Some(body.clone()), 201)
        .await;
    assert_eq!(
        (
            reservation["state"].as_str(),
            reservation["total_cents"].as_i64()
        ),
        (Some("reserved"), Some(2 * 250 + 1000))
    );
    assert_eq!((stock_of(&api, &a).await, stock_of(&api, &b).await), (3, 0));

    // A retry with the same id takes nothing more; different lines are a conflict.
    assert_eq!(
        api.expect("POST", "/reservations", Some(body), 200).await,
        reservation
    );
    let other = json!({"id": order, "items": [{"product_id": a, "quantity": 3}]});
    expect_problem(api.send("POST", "/reservations", Some(other)).await, 409).await;
    assert_eq!(stock_of(&api, &a).await, 3);

    // Release gives the stock back once.
    let released = api
        .expect("POST", &format!("/reservations/{order}/release"), None, 200)
        .await;
    assert_eq!(released["state"], "released");
    api.expect("POST", &format!("/reservations/{order}/release"), None, 200)
        .await;
    assert_eq!((stock_of(&api, &a).await, stock_of(&api, &b).await), (5, 1));
}

async fn a_release_before_the_reservation_wins(backend: TestBackend) {
    let api = start(backend).await;
    let a = id(&create(&api, "A", json!(1), 5).await);
    let order = uuid::Uuid::new_v4().to_string();
    api.expect("POST", &format!("/reservations/{order}/release"), None, 200)
        .await;
    let late = json!({"id": order, "items": [{"product_id": a, "quantity": 1}]});
    let problem = expect_problem(api.send("POST", "/reservations", Some(late)).await, 409).await;
    assert_eq!(
        problem["type"],
        "https://msa.dev/problems/reservation-released"
    );
    assert_eq!(stock_of(&api, &a).await, 5);
}

async fn reservation_input_errors(backend: TestBackend) {
    let api = start(backend).await;
    let a = id(&create(&api, "A", json!(1), 5).await);
    let order = uuid::Uuid::new_v4().to_string();
    let cases = [
        (json!({"id": order, "items": []}), 422),
        (
            json!({"id": order, "items": [{"product_id": a, "quantity": 0}]}),
            422,
        ),
        (
            json!({"id": order, "items": [{"product_id": uuid::Uuid::new_v4(), "quantity": 1}]}),
            422,
        ),
        (
            json!({"id": "order-1", "items": [{"product_id": a, "quantity": 1}]}),
            400,
        ),
        (
            json!({"id": order, "items": [{"product_id": "x", "quantity": 1}]}),
            400,
        ),
    ];
    for (body, status) in cases {
        expect_problem(api.send("POST", "/reservations", Some(body)).await, status).await;
    }
    assert_eq!(stock_of(&api, &a).await, 5);
}

/// Stock 10, 50 concurrent reservations of 1: exactly 10 succeed, stock ends at 0. A 5xx (a
/// busy database on a loaded machine) is retried under the same id, which the product service
/// treats as the same reservation, so the counts stay exact without requiring that nothing
/// times out.
async fn concurrent_reservations_never_oversell(backend: TestBackend) {
    let api = start(backend).await;
    let a = id(&create(&api, "A", json!(1), 10).await);
    let attempts = (0..50).map(|_| {
        let api = api.clone();
        let body = json!({"id": uuid::Uuid::new_v4(), "items": [{"product_id": a, "quantity": 1}]});
        tokio::spawn(async move {
            for _ in 0..5 {
                let status = api
                    .send("POST", "/reservations", Some(body.clone()))
                    .await
                    .status()
                    .as_u16();
                if status < 500 {
                    return status;
                }
            }
            panic!("5 attempts answered 5xx");
        })
    });
    let mut statuses = Vec::new();
    for attempt in attempts {
        statuses.push(attempt.await.unwrap());
    }
    assert_eq!(
        statuses.iter().filter(|s| matches!(**s, 200 | 201)).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        40,
        "{statuses:?}"
    );
    assert_eq!(stock_of(&api, &a).await, 0);
}

/// Issue 27: releases and returns racing for one reservation give its stock back exactly once
/// (the state change is one conditional UPDATE; before, two transactions on PostgreSQL could
/// both read `reserved` and both add the stock back).
async fn concurrent_give_backs_return_the_stock_once(backend: TestBackend) {
    let api = start(backend).await;
    let a = id(&create(&api, "A", json!(1), 10).await);
    for committed in [false, true] {
        let order = uuid::Uuid::new_v4();
        let body = json!({"id": order, "items": [{"product_id": a, "quantity": 3}]});
        api.expect("POST", "/reservations", Some(body), 201).await;
        let action = if committed {
            api.expect("POST", &format!("/reservations/{order}/commit"), None, 200)
                .await;
            "return"
        } else {
            "release"
        };
        let racing: Vec<_> = (0..8)
            .map(|_| {
                let api = api.clone();
                let path = format!("/reservations/{order}/{action}");
                tokio::spawn(async move { api.send("POST", &path, None).await.status().as_u16() })
            })
            .collect();
        for answer in racing {
            assert_eq!(answer.await.unwrap(), 200);
        }
        assert_eq!(stock_of(&api, &a).await, 10, "{action}: given back once");
    }
    // A commit racing releases: the stock is sold or back, never both.
    let order = uuid::Uuid::new_v4();
    let body = json!({"id": order, "items": [{"product_id": a, "quantity": 4}]});
    api.expect("POST", "/reservations", Some(body), 201).await;
    let racing: Vec<_> = ["commit", "release", "release", "commit", "release"]
        .iter()
        .map(|action| {
            let api = api.clone();
            let path = format!("/reservations/{order}/{action}");
            tokio::spawn(async move { api.send("POST", &path, None).await.status().as_u16() })
        })
        .collect();
    for answer in racing {
        assert!(matches!(answer.await.unwrap(), 200 | 409));
    }
    let state = api
        .expect("GET", &format!("/reservations/{order}"), None, 200)
        .await["state"]
        .clone();
    let expected = if state == "committed" { 6 } else { 10 };
    assert_eq!(stock_of(&api, &a).await, expected, "state {state}");
}

/// Issue 27: a reservation neither committed nor released within the TTL is released by the
/// service itself, its stock given back; a late commit is refused; a committed reservation
/// never expires.
async fn a_reservation_nobody_finishes_expires(backend: TestBackend) {
    use msa_product::expiry::{self, ExpirySettings, ProductMetrics};
    let metrics = ProductMetrics::default();
    let ledger = Ledger::start(Some("cancelled")).await;
    let (api, db) = testing::start_service(backend, "product", &msa_product::MIGRATOR, |db| {
        msa_product::router_with(db, ledger.book.clone(), metrics.clone())
    })
    .await;
    let a = id(&create(&api, "A", json!(1), 10).await);
    let (held, sold) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    for order in [held, sold] {
        let body = json!({"id": order, "items": [{"product_id": a, "quantity": 2}]});
        api.expect("POST", "/reservations", Some(body), 201).await;
    }
    api.expect("POST", &format!("/reservations/{sold}/commit"), None, 200)
        .await;
    assert_eq!(stock_of(&api, &a).await, 6);
    let sweeper = tokio::spawn(expiry::run(
        db,
        ExpirySettings {
            ttl: std::time::Duration::from_millis(200),
            every: std::time::Duration::from_millis(50),
        },
        metrics.clone(),
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let state = api
            .expect("GET", &format!("/reservations/{held}"), None, 200)
            .await["state"]
            .clone();
        if state == "released" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not expired: {state}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    sweeper.abort();
    assert_eq!(stock_of(&api, &a).await, 8, "the held 2 are back");
    assert_eq!(metrics.expired.get(), 1);
    let late = expect_problem(
        api.send("POST", &format!("/reservations/{held}/commit"), None)
            .await,
        409,
    )
    .await;
    assert_eq!(
        late["type"],
        "https://msa.dev/problems/reservation-released"
    );
    assert_eq!(
        api.expect("GET", &format!("/reservations/{sold}"), None, 200)
            .await["state"],
        "committed"
    );
}

/// The sweep with its clock injected: nothing younger than the cutoff goes; two sweeps at once
/// (two replicas) give the stock back once; a reservation from before held times were stored
/// gets a full TTL from the first sweep.
async fn expiry_follows_its_clock_and_gives_back_once(backend: TestBackend) {
    use msa_product::store::{self, Expired};
    let book = Ledger::start(Some("cancelled")).await.book;
    let (api, db) = testing::start_service(backend, "product", &msa_product::MIGRATOR, |db| {
        msa_product::router(db, book)
    })
    .await;
    let a = id(&create(&api, "A", json!(1), 10).await);
    let order = uuid::Uuid::new_v4().to_string();
    let body = json!({"id": order, "items": [{"product_id": a, "quantity": 4}]});
    api.expect("POST", "/reservations", Some(body), 201).await;
    let now = store::now_ms();
    let ttl = 60_000;
    assert_eq!(
        store::expire(&db, now, now - ttl).await.unwrap(),
        Expired::default(),
        "younger than the TTL"
    );
    let later = now + ttl + 1;
    let (one, two) = tokio::join!(
        store::expire(&db, later, later - ttl),
        store::expire(&db, later, later - ttl)
    );
    assert_eq!(
        one.unwrap().reservations + two.unwrap().reservations,
        1,
        "released by exactly one sweep"
    );
    assert_eq!(stock_of(&api, &a).await, 10);

    let legacy = uuid::Uuid::new_v4().to_string();
    let body = json!({"id": legacy, "items": [{"product_id": a, "quantity": 1}]});
    api.expect("POST", "/reservations", Some(body), 201).await;
    sqlx::query("UPDATE reservations SET held_since_ms = 0 WHERE id = $1")
        .bind(&legacy)
        .execute(&db.pool)
        .await
        .unwrap();
    let far = later + 10 * ttl;
    assert_eq!(
        store::expire(&db, far, far - ttl)
            .await
            .unwrap()
            .reservations,
        0,
        "stamped now, not expired"
    );
    let after = far + ttl + 1;
    assert_eq!(
        store::expire(&db, after, after - ttl)
            .await
            .unwrap()
            .reservations,
        1
    );
    assert_eq!(stock_of(&api, &a).await, 10);
}

/// Issue 27: stock given back (a release, a return) never passes the maximum a client may set:
/// what does not fit is dropped and counted, instead of a stock no client could have set.
async fn stock_given_back_stays_within_its_maximum(backend: TestBackend) {
    use msa_product::expiry::ProductMetrics;
    use msa_service_kit::money::MAX_STOCK;
    let metrics = ProductMetrics::default();
    let ledger = Ledger::start(Some("cancelled")).await;
    let (api, _) = testing::start_service(backend, "product", &msa_product::MIGRATOR, |db| {
        msa_product::router_with(db, ledger.book.clone(), metrics.clone())
    })
    .await;
    let a = id(&create(&api, "A", json!(1), 10).await);
    let (held, sold) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    for (order, quantity) in [(held, 5), (sold, 3)] {
        let body = json!({"id": order, "items": [{"product_id": a, "quantity": quantity}]});
        api.expect("POST", "/reservations", Some(body), 201).await;
    }
    api.expect("POST", &format!("/reservations/{sold}/commit"), None, 200)
        .await;
    let set = |stock: i64| {
        let api = api.clone();
        let path = format!("/products/{a}/stock");
        async move {
            api.expect("PUT", &path, Some(json!({"stock": stock})), 200)
                .await;
        }
    };
    set(MAX_STOCK).await;
    api.expect("POST", &format!("/reservations/{held}/release"), None, 200)
        .await;
    assert_eq!(stock_of(&api, &a).await, MAX_STOCK);
    set(MAX_STOCK - 1).await;
    api.expect("POST", &format!("/reservations/{sold}/return"), None, 200)
        .await;
    assert_eq!(stock_of(&api, &a).await, MAX_STOCK);
    assert_eq!(
        metrics.clamped_units.get(),
        5 + 2,
        "every dropped unit counted"
    );
}

/// Issue 15, defects 1 and 2: numbers near the 64-bit limits are refused at the API, and the
/// database itself refuses a stock no reader could read (SQLite would have stored a float).
async fn numbers_past_their_bounds_are_refused_and_the_product_stays_readable(
    backend: TestBackend,
) {
    let book = Ledger::start(Some("cancelled")).await.book;
    let (api, db) = testing::start_service(backend, "product", &msa_product::MIGRATOR, |db| {
        msa_product::router(db, book)
    })
    .await;
    let near_max = i64::MAX - 5;
    for body in [
        json!({"name": "A", "price": 1, "stock": near_max}),
        json!({"name": "A", "price": 1, "stock": 1_000_000_001}),
        json!({"name": "A", "price": "1000000000.01", "stock": 1}),
    ] {
        expect_problem(api.send("POST", "/products", Some(body)).await, 422).await;
    }
    let costly = id(&create(&api, "Yacht", json!("1000000000.00"), 1_000_000_000).await);
    let stock_path = format!("/products/{costly}/stock");
    expect_problem(
        api.send("PUT", &stock_path, Some(json!({"stock": near_max})))
            .await,
        422,
    )
    .await;

    // quantity × price past the exact range: 422, nothing taken (it panicked before).
    let order = uuid::Uuid::new_v4();
    for quantity in [1_000_000_000, i64::MAX] {
        let body = json!({"id": order, "items": [{"product_id": costly, "quantity": quantity}]});
        expect_problem(api.send("POST", "/reservations", Some(body)).await, 422).await;
    }
    assert_eq!(stock_of(&api, &costly).await, 1_000_000_000);
    let status = api
        .send("GET", &format!("/reservations/{order}"), None)
        .await
        .status();
    assert_eq!(status, 404, "a refused reservation leaves nothing behind");

    // Below the API, the table refuses what readers could not read.
    for write in [
        "UPDATE products SET stock = 9223372036854775807 WHERE id = $1",
        "UPDATE products SET stock = 9007199254740992 WHERE id = $1",
        "UPDATE products SET stock = -1 WHERE id = $1",
        "UPDATE products SET price_cents = 100000000001 WHERE id = $1",
    ] {
        let refused = sqlx::query(write).bind(&costly).execute(&db.pool).await;
        assert!(refused.is_err(), "{write} was stored");
    }
    sqlx::query("UPDATE products SET stock = 9007199254740991 WHERE id = $1")
        .bind(&costly)
        .execute(&db.pool)
        .await
        .expect("the largest exact stock fits");
    let overflow =
        sqlx::query("UPDATE products SET stock = stock + 9223372036854775000 WHERE id = $1")
            .bind(&costly)
            .execute(&db.pool)
            .await;
    assert!(
        overflow.is_err(),
        "an overflowing sum is refused, not stored as a float"
    );
    assert_eq!(stock_of(&api, &costly).await, 9_007_199_254_740_991);
    api.expect("GET", "/products", None, 200).await;
}

/// Issue 15, defect 5: the price is read from its JSON text, so both spellings agree.
async fn a_price_is_read_from_its_json_text(backend: TestBackend) {
    let api = start(backend).await;
    for body in [
        r#"{"name": "A", "price": 19.990000000000001, "stock": 1}"#,
        r#"{"name": "A", "price": "19.990000000000001", "stock": 1}"#,
        r#"{"name": "A", "price": 1e2, "stock": 1}"#,
    ] {
        let problem = expect_problem(api.send_text("POST", "/products", body).await, 422).await;
        assert_eq!(problem["field"], "price", "{body}");
    }
    for (body, cents) in [
        (r#"{"name": "A", "price": 19.99, "stock": 1}"#, 1999),
        (r#"{"name": "A", "price": "19.99", "stock": 1}"#, 1999),
        (r#"{"name": "A", "price": 19.90, "stock": 1}"#, 1990),
    ] {
        let response = api.send_text("POST", "/products", body).await;
        assert_eq!(response.status(), 201, "{body}");
        let product: Value = response.json().await.unwrap();
        assert_eq!(product["price_cents"], cents, "{body}");
    }
    assert_eq!(api.expect("GET", "/products", None, 200).await["total"], 3);
}

/// Issue 15, defect 6: control and text-direction characters are refused, not stored.
async fn control_characters_are_refused(backend: TestBackend) {
    let api = start(backend).await;
    for (name, description) in [
        ("nul\0byte", "d"),
        ("\x1b[31mred", "d"),
        ("bell\x07", "d"),
        ("evil\u{202E}gnp.exe", "d"),
        ("fine", "escape \x1b[2J"),
        ("fine", "isolate \u{2067}x"),
    ] {
        let body = json!({"name": name, "price": 1, "stock": 1, "description": description});
        expect_problem(api.send("POST", "/products", Some(body)).await, 422).await;
    }
    assert_eq!(api.expect("GET", "/products", None, 200).await["total"], 0);
    let multiline = json!({"name": "Pen", "price": 1, "stock": 1, "description": "blue\n\tink"});
    api.expect("POST", "/products", Some(multiline), 201).await;
}

/// Issue 15, defect 10: once committed (the order confirmed), a release cannot give the stock
/// back; only the return (the order's cancellation) does, exactly once.
async fn a_committed_reservation_returns_its_stock_once(backend: TestBackend) {
    let api = start(backend).await;
    let a = id(&create(&api, "A", json!(1), 5).await);
    let order = uuid::Uuid::new_v4();
    let body = json!({"id": order, "items": [{"product_id": a, "quantity": 5}]});
    api.expect("POST", "/reservations", Some(body), 201).await;
    let path = |action: &str| format!("/reservations/{order}/{action}");
    expect_problem(api.send("POST", &path("return"), None).await, 409).await;
    for _ in 0..2 {
        let committed = api.expect("POST", &path("commit"), None, 200).await;
        assert_eq!(committed["state"], "committed");
    }
    let problem = expect_problem(api.send("POST", &path("release"), None).await, 409).await;
    assert_eq!(
        problem["type"],
        "https://msa.dev/problems/reservation-committed"
    );
    assert_eq!(stock_of(&api, &a).await, 0, "a sold reservation stays sold");
    for _ in 0..3 {
        let returned = api.expect("POST", &path("return"), None, 200).await;
        assert_eq!(returned["state"], "released");
        api.expect("POST", &path("release"), None, 200).await;
    }
    assert_eq!(stock_of(&api, &a).await, 5, "given back exactly once");
    expect_problem(api.send("POST", &path("commit"), None).await, 409).await;
    let unknown = uuid::Uuid::new_v4();
    for action in ["commit", "return"] {
        let response = api
            .send("POST", &format!("/reservations/{unknown}/{action}"), None)
            .await;
        expect_problem(response, 404).await;
    }
}

/// Issue 27, defect 4: holding the order service's token is not enough to take sold stock
/// back. A return goes through only when the order service itself says the order was
/// cancelled or failed (or that no order has the id: then nobody bought the stock); a pending
/// or confirmed order, an order service that cannot be asked, or something that is not the
/// order service's route leaves the stock sold.
async fn a_return_needs_the_order_service_to_say_the_order_ended(backend: TestBackend) {
    let ledger = Ledger::start(None).await;
    let api = common::start_with(backend, &ledger).await;
    let sold = |api: TestClient, product: String, order: uuid::Uuid| async move {
        let body = json!({"id": order, "items": [{"product_id": product, "quantity": 2}]});
        api.expect("POST", "/reservations", Some(body), 201).await;
        api.expect("POST", &format!("/reservations/{order}/commit"), None, 200)
            .await;
    };
    let a = id(&create(&api, "A", json!(1), 10).await);
    let [pending, confirmed, cancelled, failed, nobodys] = [(); 5].map(|()| uuid::Uuid::new_v4());
    for order in [pending, confirmed, cancelled, failed] {
        sold(api.clone(), a.clone(), order).await;
    }
    assert_eq!(stock_of(&api, &a).await, 2);
    ledger.set(pending, "pending");
    ledger.set(confirmed, "confirmed");
    for order in [pending, confirmed] {
        let problem = expect_problem(
            api.send("POST", &format!("/reservations/{order}/return"), None)
                .await,
            409,
        )
        .await;
        assert_eq!(
            problem["type"],
            "https://msa.dev/problems/order-not-cancelled"
        );
        assert!(
            !problem.to_string().contains("confirmed") && !problem.to_string().contains("pending"),
            "the refusal does not tell the order's status: {problem}"
        );
        let still = api
            .expect("GET", &format!("/reservations/{order}"), None, 200)
            .await;
        assert_eq!(still["state"], "committed");
    }
    assert_eq!(
        stock_of(&api, &a).await,
        2,
        "refused returns give nothing back"
    );

    ledger.set(cancelled, "cancelled");
    ledger.set(failed, "failed");
    for order in [cancelled, failed] {
        let returned = api
            .expect("POST", &format!("/reservations/{order}/return"), None, 200)
            .await;
        assert_eq!(returned["state"], "released");
    }
    assert_eq!(stock_of(&api, &a).await, 6);
    // Sold under an id no order has (whoever held the token bought it for nobody): it comes
    // back, so stock cannot be locked away for good.
    sold(api.clone(), a.clone(), nobodys).await;
    api.expect(
        "POST",
        &format!("/reservations/{nobodys}/return"),
        None,
        200,
    )
    .await;
    assert_eq!(stock_of(&api, &a).await, 6);

    // An order service nobody can reach, and a peer without the route (an older order
    // service): the return waits (424, which the order service's breaker does not count
    // against this service), the stock stays sold, and no address leaks.
    let (_, nowhere) = msa_upstream::Discovery::manual("nowhere");
    let no_route = testing::spawn(
        axum::Router::new(),
        msa_service_kit::server::Ops::new("order", "old", "order-0".into(), None),
    )
    .await;
    let no_route = msa_upstream::endpoint::parse_list(no_route.trim_start_matches("http://"))
        .map(msa_upstream::Discovery::fixed)
        .unwrap();
    for orders in [nowhere, no_route] {
        let (cut_off, _) =
            testing::start_service(backend, "product", &msa_product::MIGRATOR, |db| {
                msa_product::router(db, msa_product::orders::OrderClient::at(orders))
            })
            .await;
        let b = id(&create(&cut_off, "B", json!(1), 3).await);
        let order = uuid::Uuid::new_v4();
        let body = json!({"id": order, "items": [{"product_id": b, "quantity": 3}]});
        cut_off
            .expect("POST", "/reservations", Some(body), 201)
            .await;
        cut_off
            .expect("POST", &format!("/reservations/{order}/commit"), None, 200)
            .await;
        let response = cut_off
            .send("POST", &format!("/reservations/{order}/return"), None)
            .await;
        assert_eq!(response.headers()["retry-after"], "2");
        let problem = expect_problem(response, 424).await;
        assert_eq!(
            problem["type"],
            "https://msa.dev/problems/order-service-unavailable"
        );
        assert!(
            !problem.to_string().contains("127.0.0.1"),
            "no addresses leak: {problem}"
        );
        assert_eq!(stock_of(&cut_off, &b).await, 0);
    }
}

async fn data_survives_a_restart(backend: TestBackend) {
    let url = fresh_database(backend, "product").await;
    let binary = env!("CARGO_BIN_EXE_msa-product");
    let first = ServiceProcess::start(binary, &["--database-url", &url], &[]).await;
    let api = TestClient::new(first.base_url.clone());
    let product = create(&api, "Laptop", json!(999.99), 10).await;
    let order = uuid::Uuid::new_v4();
    api.expect(
        "POST",
        "/reservations",
        Some(json!({"id": order, "items": [{"product_id": id(&product), "quantity": 2}]})),
        201,
    )
    .await;
    assert!(first.stop(), "clean exit on SIGTERM");

    let second = ServiceProcess::start(binary, &["--database-url", &url], &[]).await;
    let api = TestClient::new(second.base_url.clone());
    assert_eq!(stock_of(&api, &id(&product)).await, 8);
    assert_eq!(
        api.expect("GET", &format!("/reservations/{order}"), None, 200)
            .await["state"],
        "reserved"
    );
    assert!(second.stop());
}

msa_service_kit::on_both_backends!(
    catalogue,
    bad_input_is_refused_and_changes_nothing,
    reservations_are_all_or_nothing,
    a_release_before_the_reservation_wins,
    reservation_input_errors,
    concurrent_reservations_never_oversell,
    data_survives_a_restart,
    numbers_past_their_bounds_are_refused_and_the_product_stays_readable,
    a_price_is_read_from_its_json_text,
    control_characters_are_refused,
    a_committed_reservation_returns_its_stock_once,
    a_return_needs_the_order_service_to_say_the_order_ended,
    concurrent_give_backs_return_the_stock_once,
    a_reservation_nobody_finishes_expires,
    expiry_follows_its_clock_and_gives_back_once,
    stock_given_back_stays_within_its_maximum,
);
