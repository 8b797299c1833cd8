//! Route-level tests of the order service with real user and product services (in-process on
//! 127.0.0.1), each on SQLite and on PostgreSQL: the saga, its compensation, status changes,
//! the concurrency guarantee, header propagation and restart durability.

mod common;

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::routing::get;
use msa_order::peers::Peers;
use msa_service_kit::testing::{
    self, ServiceProcess, TestBackend, TestClient, expect_problem, fresh_database,
};
use serde_json::{Value, json};

use common::peers;

/// The user and product services the order service calls.
struct Neighbours {
    users: TestClient,
    products: TestClient,
}

/// All three services; derefs to the neighbours for seeding users and products.
struct Shop {
    orders: TestClient,
    neighbours: Neighbours,
}

impl std::ops::Deref for Shop {
    type Target = Neighbours;
    fn deref(&self) -> &Neighbours {
        &self.neighbours
    }
}

async fn start_neighbours(backend: TestBackend) -> Neighbours {
    let (users, products) = common::neighbours(backend).await;
    Neighbours { users, products }
}

async fn start_order(backend: TestBackend, peers: Peers) -> TestClient {
    testing::start_service(backend, "order", &msa_order::MIGRATOR, |db| {
        msa_order::router(db, peers)
    })
    .await
    .0
}

async fn start(backend: TestBackend) -> Shop {
    let neighbours = start_neighbours(backend).await;
    let orders = start_order(
        backend,
        peers(&neighbours.users.base, &neighbours.products.base),
    )
    .await;
    Shop { orders, neighbours }
}

impl Neighbours {
    async fn user(&self) -> String {
        let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
        let user = self
            .users
            .expect(
                "POST",
                "/users",
                Some(json!({"name": "Ada", "email": email})),
                201,
            )
            .await;
        user["id"].as_str().unwrap().to_owned()
    }

    async fn product(&self, price: Value, stock: i64) -> String {
        let body = json!({"name": "Laptop", "price": price, "stock": stock});
        self.products
            .expect("POST", "/products", Some(body), 201)
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The order a refusal names is `failed`, `product` is back to `stock`, and the order's
    /// reservation is released; returns the order.
    async fn assert_failed_and_given_back(
        &self,
        orders: &TestClient,
        problem: &Value,
        product: &str,
        stock: i64,
    ) -> Value {
        let order = problem["order_id"].as_str().unwrap();
        let failed = orders
            .expect("GET", &format!("/orders/{order}"), None, 200)
            .await;
        assert_eq!(failed["status"], "failed");
        assert_eq!(self.stock(product).await, stock);
        let reservation = self
            .products
            .expect("GET", &format!("/reservations/{order}"), None, 200)
            .await;
        assert_eq!(reservation["state"], "released");
        failed
    }

    async fn stock(&self, product: &str) -> i64 {
        self.products
            .expect("GET", &format!("/products/{product}"), None, 200)
            .await["stock"]
            .as_i64()
            .unwrap()
    }
}

impl Shop {
    async fn order(&self, user: &str, lines: &[(&str, i64)]) -> reqwest::Response {
        self.orders
            .send("POST", "/orders", Some(order_body(user, lines)))
            .await
    }
}

/// The body of `POST /orders` for these (product, quantity) lines.
fn order_body(user: &str, lines: &[(&str, i64)]) -> Value {
    let items: Vec<Value> = lines
        .iter()
        .map(|(p, q)| json!({"product_id": p, "quantity": q}))
        .collect();
    json!({"user_id": user, "items": items})
}

async fn an_order_is_priced_by_the_catalogue_and_takes_stock(backend: TestBackend) {
    let shop = start(backend).await;
    let user = shop.user().await;
    let laptop = shop.product(json!(999.99), 10).await;
    let pen = shop.product(json!("1.50"), 100).await;

    let response = shop.order(&user, &[(&laptop, 2), (&pen, 3)]).await;
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let order: Value = response.json().await.unwrap();
    assert_eq!(
        (
            order["status"].as_str(),
            order["total"].as_str(),
            order["total_cents"].as_i64()
        ),
        (Some("confirmed"), Some("2004.48"), Some(200448))
    );
    assert_eq!(order["items"][0]["unit_price"], "999.99");
    assert_eq!((shop.stock(&laptop).await, shop.stock(&pen).await), (8, 97));

    assert_eq!(shop.orders.expect("GET", &location, None, 200).await, order);
    let listed = shop
        .orders
        .expect("GET", &format!("/orders/user/{user}"), None, 200)
        .await;
    assert_eq!(
        (listed["total"].as_i64(), &listed["items"][0]),
        (Some(1), &order)
    );
    let other = uuid::Uuid::new_v4();
    assert_eq!(
        shop.orders
            .expect("GET", &format!("/orders/user/{other}"), None, 200)
            .await["total"],
        0
    );
}

async fn insufficient_stock_fails_the_order_and_holds_nothing(backend: TestBackend) {
    let shop = start(backend).await;
    let user = shop.user().await;
    let laptop = shop.product(json!(10), 1).await;
    let pen = shop.product(json!(1), 5).await;

    let problem = expect_problem(shop.order(&user, &[(&pen, 2), (&laptop, 2)]).await, 409).await;
    assert_eq!(
        problem["type"],
        "https://msa.dev/problems/insufficient-stock"
    );
    assert_eq!(
        (
            problem["product_id"].as_str(),
            problem["available"].as_i64()
        ),
        (Some(laptop.as_str()), Some(1))
    );
    let failed = shop
        .orders
        .expect(
            "GET",
            &format!("/orders/{}", problem["order_id"].as_str().unwrap()),
            None,
            200,
        )
        .await;
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["failure_reason"]
            .as_str()
            .unwrap()
            .contains("only 1")
    );
    assert_eq!(
        (shop.stock(&laptop).await, shop.stock(&pen).await),
        (1, 5),
        "nothing held"
    );
}

async fn bad_orders_are_refused_before_anything_is_recorded(backend: TestBackend) {
    let shop = start(backend).await;
    let user = shop.user().await;
    let laptop = shop.product(json!(10), 5).await;
    let ghost = uuid::Uuid::new_v4().to_string();

    let unknown_user = expect_problem(shop.order(&ghost, &[(&laptop, 1)]).await, 422).await;
    assert_eq!(unknown_user["field"], "user_id");
    let unknown_product =
        expect_problem(shop.order(&user, &[(&laptop, 1), (&ghost, 1)]).await, 422).await;
    assert_eq!(unknown_product["field"], "items[1].product_id");
    let zero = expect_problem(shop.order(&user, &[(&laptop, 0)]).await, 422).await;
    assert_eq!(zero["field"], "items[0].quantity");
    expect_problem(shop.order(&user, &[]).await, 422).await;
    expect_problem(shop.order("not-a-uuid", &[(&laptop, 1)]).await, 400).await;
    let malformed = json!({"user_id": user, "items": [{"product_id": laptop, "quantity": "two"}]});
    expect_problem(
        shop.orders.send("POST", "/orders", Some(malformed)).await,
        400,
    )
    .await;
    // A client's total is its expectation: one that is not the server's is refused.
    let with_total =
        json!({"user_id": user, "items": [{"product_id": laptop, "quantity": 1}], "total": 0.01});
    let mismatch = expect_problem(
        shop.orders.send("POST", "/orders", Some(with_total)).await,
        422,
    )
    .await;
    assert!(
        mismatch["type"]
            .as_str()
            .unwrap()
            .ends_with("/total-mismatch"),
        "{mismatch}"
    );

    assert_eq!(
        shop.orders
            .expect("GET", &format!("/orders/user/{user}"), None, 200)
            .await["total"],
        0
    );
    assert_eq!(shop.stock(&laptop).await, 5);
    expect_problem(
        shop.orders
            .send("GET", &format!("/orders/{ghost}"), None)
            .await,
        404,
    )
    .await;
    expect_problem(shop.orders.send("GET", "/orders/12", None).await, 400).await;
}

async fn status_moves_forward_and_cancel_gives_stock_back(backend: TestBackend) {
    let shop = start(backend).await;
    let user = shop.user().await;
    let laptop = shop.product(json!(10), 5).await;
    let order = |r: reqwest::Response| async move {
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let shipped = order(shop.order(&user, &[(&laptop, 1)]).await).await;
    let cancelled = order(shop.order(&user, &[(&laptop, 2)]).await).await;
    assert_eq!(shop.stock(&laptop).await, 2);
    let set = |id: String, status: &'static str| {
        let orders = shop.orders.clone();
        async move {
            orders
                .send(
                    "PUT",
                    &format!("/orders/{id}/status"),
                    Some(json!({"status": status})),
                )
                .await
        }
    };

    assert_eq!(set(shipped.clone(), "shipped").await.status(), 200);
    let problem = expect_problem(set(shipped.clone(), "cancelled").await, 422).await;
    assert_eq!(problem["current_status"], "shipped");
    let delivered: Value = set(shipped.clone(), "delivered")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(delivered["status"], "delivered");
    expect_problem(set(shipped.clone(), "shipped").await, 422).await;
    assert_eq!(
        set(shipped.clone(), "delivered").await.status(),
        200,
        "repeating a status is a no-op"
    );
    expect_problem(set(shipped.clone(), "lost").await, 422).await;
    expect_problem(set(shipped.clone(), "confirmed").await, 422).await;
    expect_problem(set(uuid::Uuid::new_v4().to_string(), "shipped").await, 404).await;

    let cancelled_order: Value = set(cancelled.clone(), "cancelled")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(cancelled_order["status"], "cancelled");
    assert_eq!(
        shop.stock(&laptop).await,
        4,
        "the cancelled order's 2 are back"
    );
    assert_eq!(set(cancelled.clone(), "cancelled").await.status(), 200);
    assert_eq!(shop.stock(&laptop).await, 4, "and only once");
}

/// Issue 15, defect 10: a confirmed order's reservation is committed, so releasing it at the
/// product service (the saga's compensation, or anyone calling it) gives nothing back; only the
/// order's cancellation does, once.
async fn a_confirmed_orders_stock_is_given_back_only_by_its_cancellation(backend: TestBackend) {
    let shop = start(backend).await;
    let user = shop.user().await;
    let laptop = shop.product(json!(10), 5).await;
    let response = shop.order(&user, &[(&laptop, 5)]).await;
    assert_eq!(response.status(), 201);
    let order = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let release = format!("/reservations/{order}/release");
    let problem = expect_problem(shop.products.send("POST", &release, None).await, 409).await;
    assert_eq!(
        problem["type"],
        "https://msa.dev/problems/reservation-committed"
    );
    assert_eq!(shop.stock(&laptop).await, 0, "sold stays sold");
    expect_problem(shop.order(&user, &[(&laptop, 5)]).await, 409).await;

    let cancel = Some(json!({"status": "cancelled"}));
    for _ in 0..2 {
        let path = format!("/orders/{order}/status");
        shop.orders.expect("PUT", &path, cancel.clone(), 200).await;
        shop.products.expect("POST", &release, None, 200).await;
    }
    assert_eq!(shop.stock(&laptop).await, 5, "given back exactly once");
}

/// What the fault proxy does to `POST /reservations/{id}/commit`.
#[derive(Clone, Copy)]
enum CommitFault {
    /// Answers 500 without passing it on: the reservation stays held.
    Lost,
    /// Passes it on, then answers 500: committed, but the order service cannot know.
    AnswerLost,
}

/// A status and body the proxy answers.
type Answer = (StatusCode, Vec<u8>);

/// What a proxy in front of the product service does with one exchange.
enum Tamper {
    /// Answer this instead of passing the request on.
    Answer(StatusCode, Vec<u8>),
    /// Pass it on, then let `after` change the answer.
    PassOn(fn(&str, StatusCode, Vec<u8>) -> Answer),
}

/// The product service behind a proxy that tampers with exchanges as `tamper` decides from
/// the path; its base URL.
async fn product_behind(products: &TestClient, tamper: fn(&str) -> Tamper) -> String {
    let target = products.base.clone();
    let http = testing::loopback_client();
    let proxy = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (target, http) = (target.clone(), http.clone());
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let path = parts.uri.path().to_owned();
            let after = match tamper(&path) {
                Tamper::Answer(status, bytes) => return (status, bytes),
                Tamper::PassOn(after) => after,
            };
            let answer = http
                .request(parts.method, format!("{target}{}", parts.uri))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = answer.status();
            let bytes = answer.bytes().await.unwrap().to_vec();
            after(&path, status, bytes)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, proxy).await });
    url
}

/// The product service behind a proxy that breaks the commit step; its base URL.
async fn product_with_broken_commit(products: &TestClient, fault: CommitFault) -> String {
    fn unchanged(_: &str, status: StatusCode, bytes: Vec<u8>) -> Answer {
        (status, bytes)
    }
    fn commit_answer_lost(path: &str, status: StatusCode, bytes: Vec<u8>) -> Answer {
        if path.ends_with("/commit") {
            (StatusCode::INTERNAL_SERVER_ERROR, Vec::new())
        } else {
            (status, bytes)
        }
    }
    match fault {
        CommitFault::Lost => {
            product_behind(products, |path| {
                if path.ends_with("/commit") {
                    Tamper::Answer(StatusCode::INTERNAL_SERVER_ERROR, Vec::new())
                } else {
                    Tamper::PassOn(unchanged)
                }
            })
            .await
        }
        CommitFault::AnswerLost => {
            product_behind(products, |_| Tamper::PassOn(commit_answer_lost)).await
        }
    }
}

/// A price that moved between the order service's lookup and the reservation: a client who
/// named the total it expected is not charged the new one — 422 `total-mismatch` with the
/// charged total, the order `failed`, the stock given back.
async fn a_price_change_during_the_order_is_not_charged(backend: TestBackend) {
    let neighbours = start_neighbours(backend).await;
    // The lookup sees 2.00; the reservation charges the catalogue's 3.00.
    let product_url = product_behind(&neighbours.products, |_| {
        Tamper::PassOn(|path, status, bytes| {
            if !path.starts_with("/products/") {
                return (status, bytes);
            }
            let mut product: Value = serde_json::from_slice(&bytes).unwrap();
            product["price_cents"] = json!(200);
            (status, serde_json::to_vec(&product).unwrap())
        })
    })
    .await;
    let orders = start_order(backend, peers(&neighbours.users.base, &product_url)).await;
    let user = neighbours.user().await;
    let product = neighbours.product(json!("3.00"), 4).await;
    let mut body = order_body(&user, &[(&product, 1)]);
    body["total"] = json!("2.00");
    let problem = expect_problem(orders.send("POST", "/orders", Some(body)).await, 422).await;
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("/total-mismatch"),
        "{problem}"
    );
    assert_eq!(problem["computed_total"], "3.00");
    neighbours
        .assert_failed_and_given_back(&orders, &problem, &product, 4)
        .await;
}

/// When the commit fails — before or after the product service applied it — the order is
/// `failed`, the client gets a 503 that leaks nothing, and the stock comes back either way.
async fn a_failed_commit_gives_the_stock_back(backend: TestBackend) {
    for fault in [CommitFault::Lost, CommitFault::AnswerLost] {
        let neighbours = start_neighbours(backend).await;
        let product_url = product_with_broken_commit(&neighbours.products, fault).await;
        let orders = start_order(backend, peers(&neighbours.users.base, &product_url)).await;
        let user = neighbours.user().await;
        let product = neighbours.product(json!(3), 4).await;
        let response = orders
            .send("POST", "/orders", Some(order_body(&user, &[(&product, 3)])))
            .await;
        let problem = expect_problem(response, 503).await;
        let detail = problem["detail"].as_str().unwrap();
        assert!(!detail.contains("127.0.0.1"), "{detail}");
        let failed = neighbours
            .assert_failed_and_given_back(&orders, &problem, &product, 4)
            .await;
        assert!(
            !failed["failure_reason"]
                .as_str()
                .unwrap()
                .contains("127.0.0.1")
        );
    }
}

async fn a_peer_down_is_a_503_and_leaves_nothing(backend: TestBackend) {
    let neighbours = start_neighbours(backend).await;
    // Nothing listens on port 9 of loopback.
    let orders = start_order(backend, peers(&neighbours.users.base, "http://127.0.0.1:9")).await;
    let user = neighbours.user().await;
    let product = neighbours.product(json!(1), 1).await;
    let body = order_body(&user, &[(&product, 1)]);
    let response = orders.send("POST", "/orders", Some(body)).await;
    assert_eq!(response.headers()["retry-after"], "2");
    let problem = expect_problem(response, 503).await;
    assert_eq!(problem["upstream"], "product");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        !detail.contains("127.0.0.1") && !detail.contains("refused"),
        "{detail}"
    );
    let listed = orders
        .expect("GET", &format!("/orders/user/{user}"), None, 200)
        .await;
    assert_eq!(listed["total"], 0);
}

/// The guarantee: stock 10, 50 concurrent orders of 1 → exactly 10 confirmed, stock 0.
async fn fifty_concurrent_orders_for_ten_in_stock(backend: TestBackend) {
    let shop = start(backend).await;
    let user = shop.user().await;
    let laptop = shop.product(json!(999.99), 10).await;
    let started = std::time::Instant::now();
    let attempts: Vec<_> = (0..50)
        .map(|_| {
            let orders = shop.orders.clone();
            let body = order_body(&user, &[(&laptop, 1)]);
            tokio::spawn(async move {
                orders
                    .send("POST", "/orders", Some(body))
                    .await
                    .status()
                    .as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for attempt in attempts {
        statuses.push(attempt.await.unwrap());
    }
    let confirmed = statuses.iter().filter(|s| **s == 201).count();
    let refused = statuses.iter().filter(|s| **s == 409).count();
    eprintln!(
        "{backend:?}: 50 concurrent orders, stock 10 → {confirmed} confirmed, {refused} refused (409), in {:?}",
        started.elapsed()
    );
    assert_eq!((confirmed, refused), (10, 40), "{statuses:?}");
    assert_eq!(shop.stock(&laptop).await, 0);
    let page = shop
        .orders
        .expect("GET", &format!("/orders/user/{user}?limit=100"), None, 200)
        .await;
    let by_status = |s: &str| {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["status"] == s)
            .count()
    };
    assert_eq!((by_status("confirmed"), by_status("failed")), (10, 40));
}

/// (x-request-id, traceparent) as a peer received them.
type SeenHeaders = (Option<String>, Option<String>);

async fn correlation_headers_reach_the_peers(backend: TestBackend) {
    let seen: Arc<Mutex<Vec<SeenHeaders>>> = Arc::default();
    let recorder = seen.clone();
    let fake_users = axum::Router::new().route(
        "/users/{id}",
        get(move |headers: axum::http::HeaderMap| {
            let recorder = recorder.clone();
            async move {
                let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
                recorder
                    .lock()
                    .unwrap()
                    .push((header("x-request-id"), header("traceparent")));
                axum::Json(json!({"id": "x"}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let users_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, fake_users).await });
    let neighbours = start_neighbours(backend).await;
    let orders = start_order(backend, peers(&users_url, &neighbours.products.base)).await;
    let product = neighbours.product(json!(1), 1).await;

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = orders
        .http
        .post(format!("{}/orders", orders.base))
        .header("x-request-id", "req-42")
        .header("traceparent", traceparent)
        .json(&order_body(
            &uuid::Uuid::new_v4().to_string(),
            &[(&product, 1)],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["x-request-id"], "req-42");
    assert_eq!(
        seen.lock().unwrap().clone(),
        [(Some("req-42".to_owned()), Some(traceparent.to_owned()))]
    );
}

async fn orders_survive_a_restart(backend: TestBackend) {
    let neighbours = start_neighbours(backend).await;
    let url = fresh_database(backend, "order").await;
    let args = [
        "--database-url",
        url.as_str(),
        "--user-url",
        neighbours.users.base.as_str(),
        "--product-url",
        neighbours.products.base.as_str(),
    ];
    let binary = env!("CARGO_BIN_EXE_msa-order");
    let first = ServiceProcess::start(binary, &args, &[]).await;
    let user = neighbours.user().await;
    let product = neighbours.product(json!(1), 3).await;
    let orders = TestClient::new(first.base_url.clone());
    let body = order_body(&user, &[(&product, 1)]);
    let placed = orders.expect("POST", "/orders", Some(body), 201).await;
    assert!(first.stop(), "clean exit on SIGTERM");

    let second = ServiceProcess::start(binary, &args, &[]).await;
    let orders = TestClient::new(second.base_url.clone());
    assert_eq!(
        orders
            .expect(
                "GET",
                &format!("/orders/{}", placed["id"].as_str().unwrap()),
                None,
                200
            )
            .await,
        placed
    );
    assert!(second.stop());
}

msa_service_kit::on_both_backends!(
    an_order_is_priced_by_the_catalogue_and_takes_stock,
    insufficient_stock_fails_the_order_and_holds_nothing,
    bad_orders_are_refused_before_anything_is_recorded,
    status_moves_forward_and_cancel_gives_stock_back,
    a_peer_down_is_a_503_and_leaves_nothing,
    fifty_concurrent_orders_for_ten_in_stock,
    correlation_headers_reach_the_peers,
    orders_survive_a_restart,
    a_confirmed_orders_stock_is_given_back_only_by_its_cancellation,
    a_failed_commit_gives_the_stock_back,
    a_price_change_during_the_order_is_not_charged,
);
