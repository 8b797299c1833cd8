//! Route-level tests of the order service with real user and product services (in-process on
//! 127.0.0.1), each on SQLite and on PostgreSQL: the saga, its compensation, status changes,
//! the concurrency guarantee, header propagation and restart durability.

// Each test file uses a part of it.
#[allow(dead_code)]
mod common;

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::routing::get;
use msa_order::Settings;
use msa_order::peers::Peers;
use msa_service_kit::db::Database;
use msa_service_kit::testing::{
    self, ServiceProcess, TestBackend, TestClient, expect_problem, fresh_database,
};
use serde_json::{Value, json};

use common::peers;
use msa_upstream::discovery::DiscoveryFeed;

/// The user and product services the order service calls.
struct Neighbours {
    users: TestClient,
    products: TestClient,
    product_db: Database,
    /// Where the product service finds the order service (for returns).
    orders: DiscoveryFeed,
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
    let hood = common::neighbourhood(backend).await;
    Neighbours {
        users: hood.users,
        products: hood.products,
        product_db: hood.product_db,
        orders: hood.orders,
    }
}

async fn start_order(neighbours: &Neighbours, backend: TestBackend, peers: Peers) -> TestClient {
    start_order_with(neighbours, backend, peers, Settings::default())
        .await
        .0
}

/// The order service with these settings, and its database; the product service asks it
/// about orders from now on.
async fn start_order_with(
    neighbours: &Neighbours,
    backend: TestBackend,
    peers: Peers,
    settings: Settings,
) -> (TestClient, Database) {
    let (orders, db) = testing::start_service(backend, "order", &msa_order::MIGRATOR, |db| {
        msa_order::router_with(db, peers, settings)
    })
    .await;
    common::orders_at(&neighbours.orders, &orders.base);
    (orders, db)
}

async fn start(backend: TestBackend) -> Shop {
    let neighbours = start_neighbours(backend).await;
    let orders = start_order(
        &neighbours,
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

    // Issue 27: two lines of one product within the per-line bound but past it together are
    // bad input, refused before anything is recorded (the product service would refuse the
    // merged line and leave a failed order behind).
    let merged = expect_problem(
        shop.order(&user, &[(&laptop, 600_000_000), (&laptop, 600_000_000)])
            .await,
        422,
    )
    .await;
    assert_eq!(merged["field"], "items[1].quantity");
    // The caller's deadline header is checked at the edge.
    for bad in ["0", "600001", "soon", "-1"] {
        let refused = shop
            .orders
            .http
            .post(format!("{}/orders", shop.orders.base))
            .header("x-msa-timeout-ms", bad)
            .json(&order_body(&user, &[(&laptop, 1)]))
            .send()
            .await
            .unwrap();
        let problem = expect_problem(refused, 400).await;
        assert_eq!(problem["header"], "x-msa-timeout-ms", "{bad}");
    }

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
    let orders = start_order(
        &neighbours,
        backend,
        peers(&neighbours.users.base, &product_url),
    )
    .await;
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

/// When the commit never reaches the product service, the saga looks the reservation up,
/// commits once more, then gives up: the order is `failed`, the client gets a 503 that leaks
/// nothing, and the stock comes back.
async fn a_commit_that_never_arrives_gives_the_stock_back(backend: TestBackend) {
    let neighbours = start_neighbours(backend).await;
    let product_url = product_with_broken_commit(&neighbours.products, CommitFault::Lost).await;
    let orders = start_order(
        &neighbours,
        backend,
        peers(&neighbours.users.base, &product_url),
    )
    .await;
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

/// Issue 27: a commit the product service applied but whose answer was lost is looked up, not
/// guessed: the order is confirmed (201) and the stock stays sold. (Before, the order failed
/// and its committed stock was returned, though the client could have had it.)
async fn a_commit_whose_answer_was_lost_is_looked_up_and_confirmed(backend: TestBackend) {
    let neighbours = start_neighbours(backend).await;
    let product_url =
        product_with_broken_commit(&neighbours.products, CommitFault::AnswerLost).await;
    let orders = start_order(
        &neighbours,
        backend,
        peers(&neighbours.users.base, &product_url),
    )
    .await;
    let user = neighbours.user().await;
    let product = neighbours.product(json!(3), 4).await;
    let confirmed = orders
        .expect(
            "POST",
            "/orders",
            Some(order_body(&user, &[(&product, 3)])),
            201,
        )
        .await;
    assert_eq!(confirmed["status"], "confirmed");
    assert_eq!(neighbours.stock(&product).await, 1);
    let id = confirmed["id"].as_str().unwrap();
    let reservation = neighbours
        .products
        .expect("GET", &format!("/reservations/{id}"), None, 200)
        .await;
    assert_eq!(reservation["state"], "committed");
}

/// A product service that accepts every connection and closes it at once; its base URL.
async fn product_that_hangs_up() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((connection, _)) = listener.accept().await {
            drop(connection);
        }
    });
    url
}

async fn a_peer_down_is_a_503_and_leaves_nothing(backend: TestBackend) {
    let neighbours = start_neighbours(backend).await;
    let down = product_that_hangs_up().await;
    let orders = start_order(&neighbours, backend, peers(&neighbours.users.base, &down)).await;
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

/// The issue's guarantee: stock 10, 50 concurrent orders of 1 → no oversell, and every order
/// ends. An order whose saga outlives the wait is answered 202 and must end too; a 503 (nothing
/// could be placed in time, on a busy machine) is retried. Then the stock left, if any (an order
/// that held it failed), is bought one unit at a time: no unit leaked.
async fn fifty_concurrent_orders_for_ten_in_stock(backend: TestBackend) {
    let neighbours = start_neighbours(backend).await;
    let (orders, order_db) = start_order_with(
        &neighbours,
        backend,
        peers(&neighbours.users.base, &neighbours.products.base),
        Settings::default(),
    )
    .await;
    let user = neighbours.user().await;
    let laptop = neighbours.product(json!(999.99), 10).await;
    let started = std::time::Instant::now();
    let attempts: Vec<_> = (0..50)
        .map(|_| {
            let orders = orders.clone();
            let body = order_body(&user, &[(&laptop, 1)]);
            tokio::spawn(async move {
                for _ in 0..5 {
                    let response = orders.send("POST", "/orders", Some(body.clone())).await;
                    let status = response.status().as_u16();
                    if status != 503 {
                        let body: Value = response.json().await.unwrap();
                        return (status, body);
                    }
                }
                panic!("5 attempts answered 503");
            })
        })
        .collect();
    let mut answered = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for attempt in attempts {
        let (status, body) = attempt.await.unwrap();
        *statuses.entry(status).or_default() += 1;
        assert!(matches!(status, 201 | 202 | 409), "{status}: {body}");
        if status != 409 {
            answered.push(body["id"].as_str().unwrap().to_owned());
        }
    }
    eprintln!(
        "{backend:?}: 50 concurrent orders, stock 10 → {statuses:?} in {:?}",
        started.elapsed()
    );
    common::settle(&order_db, std::time::Duration::from_secs(90)).await;
    let left = neighbours.stock(&laptop).await;
    for _ in 0..left {
        orders
            .expect(
                "POST",
                "/orders",
                Some(order_body(&user, &[(&laptop, 1)])),
                201,
            )
            .await;
    }
    expect_problem(
        orders
            .send("POST", "/orders", Some(order_body(&user, &[(&laptop, 1)])))
            .await,
        409,
    )
    .await;
    let tally = common::audit(
        &order_db,
        &neighbours.product_db,
        &[(laptop.clone(), 10)].into(),
        &answered,
    )
    .await;
    assert_eq!(tally.get("confirmed"), Some(&10), "{tally:?}");
    assert_eq!(neighbours.stock(&laptop).await, 0);
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
    let orders = start_order(
        &neighbours,
        backend,
        peers(&users_url, &neighbours.products.base),
    )
    .await;
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

/// Where a [`Gate`] holds the exchanges it picks.
#[derive(Clone, Copy)]
enum Hold {
    /// Before passing the request on: the product service has not seen it.
    Before,
    /// After the product service answered: it applied the request, the order service waits.
    After,
}

/// A proxy in front of the product service that holds the exchanges `pick` chooses until
/// [`Gate::open`], and records every request it passes (method, path, `x-request-id`).
struct Gate {
    url: String,
    open: tokio::sync::watch::Sender<bool>,
    /// Notified each time an exchange is held.
    held: Arc<tokio::sync::Notify>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A request a [`Gate`] passed: method, path, `x-request-id`.
type Seen = (String, String, Option<String>);

impl Gate {
    async fn start(products: &TestClient, pick: fn(&str, &str) -> bool, hold: Hold) -> Gate {
        let (open, gate) = tokio::sync::watch::channel(false);
        let held = Arc::new(tokio::sync::Notify::new());
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (target, http) = (products.base.clone(), testing::loopback_client());
        let (notify, record) = (held.clone(), seen.clone());
        let proxy = axum::Router::new().fallback(move |request: axum::extract::Request| {
            let (target, http, mut gate) = (target.clone(), http.clone(), gate.clone());
            let (notify, record) = (notify.clone(), record.clone());
            async move {
                let (parts, body) = request.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
                let (method, path) = (parts.method.to_string(), parts.uri.path().to_owned());
                let request_id = parts
                    .headers
                    .get("x-request-id")
                    .map(|v| v.to_str().unwrap().to_owned());
                record
                    .lock()
                    .unwrap()
                    .push((method.clone(), path.clone(), request_id));
                let picked = pick(&method, &path);
                let wait_open = |gate: &mut tokio::sync::watch::Receiver<bool>| {
                    notify.notify_one();
                    let mut gate = gate.clone();
                    async move { gate.wait_for(|open| *open).await.map(drop) }
                };
                if picked && matches!(hold, Hold::Before) {
                    wait_open(&mut gate).await.unwrap();
                }
                let mut forward = http
                    .request(parts.method, format!("{target}{}", parts.uri))
                    .body(body);
                for name in ["content-type", "x-request-id", "traceparent"] {
                    if let Some(value) = parts.headers.get(name) {
                        forward = forward.header(name, value);
                    }
                }
                let answer = forward.send().await.unwrap();
                let status = answer.status();
                let bytes = answer.bytes().await.unwrap().to_vec();
                if picked && matches!(hold, Hold::After) {
                    wait_open(&mut gate).await.unwrap();
                }
                (status, [("content-type", "application/json")], bytes)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, proxy).await });
        Gate {
            url,
            open,
            held,
            seen,
        }
    }

    fn open(&self) {
        self.open.send_replace(true);
    }
}

/// Polls `check` (up to 30 s) until it holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Settings that answer 202 quickly.
fn impatient() -> Settings {
    Settings {
        wait_max: std::time::Duration::from_millis(300),
        ..Settings::default()
    }
}

/// Issue 27: a pending order can be cancelled, and the saga honours it. Here the cancellation
/// comes while the reservation is still on its way: the release gets there first and is
/// recorded, so the late reservation is refused and nothing is ever held.
async fn a_pending_order_cancelled_before_its_reservation_arrives(backend: TestBackend) {
    let neighbours = start_neighbours(backend).await;
    let gate = Gate::start(
        &neighbours.products,
        |method, path| method == "POST" && path == "/reservations",
        Hold::Before,
    )
    .await;
    let (orders, order_db) = start_order_with(
        &neighbours,
        backend,
        peers(&neighbours.users.base, &gate.url),
        impatient(),
    )
    .await;
    let user = neighbours.user().await;
    let laptop = neighbours.product(json!(10), 5).await;
    let response = orders
        .send("POST", "/orders", Some(order_body(&user, &[(&laptop, 2)])))
        .await;
    assert_eq!(response.status(), 202, "the saga outlived the wait");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let pending: Value = response.json().await.unwrap();
    assert_eq!(pending["status"], "pending");
    assert_eq!(
        location,
        format!("/orders/{}", pending["id"].as_str().unwrap())
    );
    let id = pending["id"].as_str().unwrap().to_owned();

    let cancelled = orders
        .expect(
            "PUT",
            &format!("/orders/{id}/status"),
            Some(json!({"status": "cancelled"})),
            200,
        )
        .await;
    assert_eq!(cancelled["status"], "cancelled");
    gate.open();
    let products = neighbours.products.clone();
    eventually("the late reservation is refused", || {
        let (products, path) = (products.clone(), format!("/reservations/{id}"));
        async move { products.expect("GET", &path, None, 200).await["state"] == "released" }
    })
    .await;
    common::settle(&order_db, std::time::Duration::from_secs(30)).await;
    assert_eq!(
        orders.expect("GET", &location, None, 200).await["status"],
        "cancelled"
    );
    assert_eq!(neighbours.stock(&laptop).await, 5, "nothing held");
    common::audit(
        &order_db,
        &neighbours.product_db,
        &[(laptop, 5)].into(),
        &[id],
    )
    .await;
}

/// Issue 27: the cancellation comes after the product service committed the reservation but
/// before the saga confirmed the order: the committed stock is returned (the order is
/// cancelled in the order service's own database), exactly once, and the saga's confirmation,
/// conditional on `pending`, changes nothing.
async fn a_pending_order_cancelled_after_its_commit(backend: TestBackend) {
    let neighbours = start_neighbours(backend).await;
    let gate = Gate::start(
        &neighbours.products,
        |method, path| method == "POST" && path.ends_with("/commit"),
        Hold::After,
    )
    .await;
    let (orders, order_db) = start_order_with(
        &neighbours,
        backend,
        peers(&neighbours.users.base, &gate.url),
        impatient(),
    )
    .await;
    let user = neighbours.user().await;
    let laptop = neighbours.product(json!(10), 5).await;
    let response = orders
        .send("POST", "/orders", Some(order_body(&user, &[(&laptop, 2)])))
        .await;
    assert_eq!(response.status(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The commit reached the product service; its answer is held.
    tokio::time::timeout(std::time::Duration::from_secs(30), gate.held.notified())
        .await
        .expect("the commit arrives");
    let reservation = format!("/reservations/{id}");
    assert_eq!(
        neighbours
            .products
            .expect("GET", &reservation, None, 200)
            .await["state"],
        "committed"
    );
    orders
        .expect(
            "PUT",
            &format!("/orders/{id}/status"),
            Some(json!({"status": "cancelled"})),
            200,
        )
        .await;
    assert_eq!(neighbours.stock(&laptop).await, 5, "returned at once");
    gate.open();
    common::settle(&order_db, std::time::Duration::from_secs(30)).await;
    let order = orders
        .expect("GET", &format!("/orders/{id}"), None, 200)
        .await;
    assert_eq!(order["status"], "cancelled");
    assert_eq!(
        neighbours
            .products
            .expect("GET", &reservation, None, 200)
            .await["state"],
        "released"
    );
    assert_eq!(neighbours.stock(&laptop).await, 5, "and only once");
    common::audit(
        &order_db,
        &neighbours.product_db,
        &[(laptop, 5)].into(),
        &[id],
    )
    .await;
}

/// Issue 27: the saga runs in its own task, in the request's context: the product service sees
/// the client's request id on the reservation and its commit.
async fn the_saga_carries_the_requests_id(backend: TestBackend) {
    let neighbours = start_neighbours(backend).await;
    let gate = Gate::start(&neighbours.products, |_, _| false, Hold::Before).await;
    let orders = start_order(
        &neighbours,
        backend,
        peers(&neighbours.users.base, &gate.url),
    )
    .await;
    let user = neighbours.user().await;
    let laptop = neighbours.product(json!(10), 5).await;
    let response = orders
        .http
        .post(format!("{}/orders", orders.base))
        .header("x-request-id", "req-saga-7")
        .json(&order_body(&user, &[(&laptop, 1)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let seen = gate.seen.lock().unwrap().clone();
    let id_of = |suffix: &str| {
        seen.iter()
            .find(|(method, path, _)| method == "POST" && path.ends_with(suffix))
            .and_then(|(_, _, id)| id.clone())
    };
    assert_eq!(
        id_of("/reservations").as_deref(),
        Some("req-saga-7"),
        "{seen:?}"
    );
    assert_eq!(id_of("/commit").as_deref(), Some("req-saga-7"), "{seen:?}");
}

/// An order recorded as if a saga had stopped right after `store::insert` (crash): `quantity`
/// of `product` at 1.00, recorded at `total_cents`.
async fn stranded(
    db: &Database,
    user: &str,
    product: &str,
    quantity: i64,
    total_cents: i64,
) -> String {
    let now = msa_service_kit::now_rfc3339();
    let (items, _) = msa_order::model::price_lines(&[(
        msa_order::model::RequestedItem {
            product_id: product.to_owned(),
            quantity,
        },
        100,
    )])
    .unwrap();
    let order = msa_order::model::Order {
        id: uuid::Uuid::new_v4().to_string(),
        user_id: user.to_owned(),
        status: msa_order::model::Status::Pending,
        items,
        total_cents,
        total: msa_service_kit::format_cents(total_cents),
        failure_reason: None,
        created_at: now.clone(),
        updated_at: now,
    };
    msa_order::store::insert(db, &order).await.unwrap();
    order.id
}

/// Issue 27: the recoverer drives every stranded order to its end by what the product service
/// says: no reservation → failed (and the id released, so a late reservation is refused); held
/// at the recorded total → committed and confirmed; held at another total → released and
/// failed; committed → confirmed; released → failed; a failed or cancelled order still owing
/// stock → given back. One replica at a time: while another holds the lease, a round skips.
async fn the_recoverer_ends_every_stranded_order(backend: TestBackend) {
    use msa_order::recovery::{self, RecoveryMetrics, RecoverySettings, Round};
    let neighbours = start_neighbours(backend).await;
    let recovering = peers(&neighbours.users.base, &neighbours.products.base);
    let (orders, db) = start_order_with(
        &neighbours,
        backend,
        recovering.clone(),
        Settings::default(),
    )
    .await;
    let user = neighbours.user().await;
    let product = neighbours.product(json!("1.00"), 30).await;
    let reserve = |id: String, quantity: i64, then: &'static [&'static str]| {
        let products = neighbours.products.clone();
        let product = product.clone();
        async move {
            let body = json!({"id": id, "items": [{"product_id": product, "quantity": quantity}]});
            products
                .expect("POST", "/reservations", Some(body), 201)
                .await;
            for action in then {
                let path = format!("/reservations/{id}/{action}");
                products.expect("POST", &path, None, 200).await;
            }
        }
    };
    let never_reserved = stranded(&db, &user, &product, 1, 100).await;
    let held = stranded(&db, &user, &product, 2, 200).await;
    reserve(held.clone(), 2, &[]).await;
    let repriced = stranded(&db, &user, &product, 3, 301).await;
    reserve(repriced.clone(), 3, &[]).await;
    let committed = stranded(&db, &user, &product, 4, 400).await;
    reserve(committed.clone(), 4, &["commit"]).await;
    let released = stranded(&db, &user, &product, 5, 500).await;
    reserve(released.clone(), 5, &["release"]).await;
    let failed_owing = stranded(&db, &user, &product, 6, 600).await;
    reserve(failed_owing.clone(), 6, &["commit"]).await;
    assert!(
        msa_order::store::fail(&db, &failed_owing, "crashed after the commit", true)
            .await
            .unwrap()
    );
    let cancelled_owing = stranded(&db, &user, &product, 7, 700).await;
    reserve(cancelled_owing.clone(), 7, &[]).await;
    assert!(
        msa_order::store::transition(
            &db,
            &cancelled_owing,
            msa_order::model::Status::Pending,
            msa_order::model::Status::Cancelled,
            true,
        )
        .await
        .unwrap()
    );
    assert_eq!(neighbours.stock(&product).await, 30 - 2 - 3 - 4 - 6 - 7);

    let settings = RecoverySettings {
        after: std::time::Duration::ZERO,
        every: std::time::Duration::from_secs(1),
        lease: std::time::Duration::from_secs(10),
    };
    let metrics = RecoveryMetrics::default();
    let now = msa_order::store::now_ms();
    assert!(
        msa_service_kit::db::lease::acquire(&db, recovery::LEASE, "other-replica", now, 60_000)
            .await
            .unwrap()
    );
    let skipped = recovery::round(&db, &recovering, &settings, &metrics, "this-replica")
        .await
        .unwrap();
    assert_eq!(
        skipped,
        Round {
            skipped: true,
            ..Round::default()
        }
    );
    msa_service_kit::db::lease::release(&db, recovery::LEASE, "other-replica")
        .await
        .unwrap();
    let round = recovery::round(&db, &recovering, &settings, &metrics, "this-replica")
        .await
        .unwrap();
    assert_eq!(
        (
            round.confirmed,
            round.failed,
            round.given_back,
            round.waiting
        ),
        (2, 3, 2, 0),
        "{round:?}"
    );
    assert_eq!(metrics.recovered("confirmed"), 2);
    let status = |id: String| {
        let orders = orders.clone();
        async move {
            orders
                .expect("GET", &format!("/orders/{id}"), None, 200)
                .await["status"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    for (id, expected) in [
        (&never_reserved, "failed"),
        (&held, "confirmed"),
        (&repriced, "failed"),
        (&committed, "confirmed"),
        (&released, "failed"),
        (&failed_owing, "failed"),
        (&cancelled_owing, "cancelled"),
    ] {
        assert_eq!(status(id.clone()).await, expected, "{id}");
    }
    let late = json!({"id": never_reserved, "items": [{"product_id": product, "quantity": 1}]});
    expect_problem(
        neighbours
            .products
            .send("POST", "/reservations", Some(late))
            .await,
        409,
    )
    .await;
    let tally = common::audit(&db, &neighbours.product_db, &[(product, 30)].into(), &[]).await;
    assert_eq!(tally.get("confirmed"), Some(&2));
    // Nothing left: the next round finds nothing to do.
    let idle = recovery::round(&db, &recovering, &settings, &metrics, "this-replica")
        .await
        .unwrap();
    assert_eq!(idle, Round::default());
}

/// When the product service cannot say, a stranded order waits for the next round.
async fn the_recoverer_waits_while_the_product_service_is_down(backend: TestBackend) {
    use msa_order::recovery::{self, RecoveryMetrics, RecoverySettings};
    let neighbours = start_neighbours(backend).await;
    let down = product_that_hangs_up().await;
    let recovering = peers(&neighbours.users.base, &down);
    let (_, db) = start_order_with(
        &neighbours,
        backend,
        recovering.clone(),
        Settings::default(),
    )
    .await;
    let user = neighbours.user().await;
    let product = neighbours.product(json!("1.00"), 3).await;
    let id = stranded(&db, &user, &product, 1, 100).await;
    let settings = RecoverySettings {
        after: std::time::Duration::ZERO,
        every: std::time::Duration::from_secs(1),
        lease: std::time::Duration::from_secs(4),
    };
    let round = recovery::round(
        &db,
        &recovering,
        &settings,
        &RecoveryMetrics::default(),
        "r",
    )
    .await
    .unwrap();
    assert_eq!(round.waiting, 1, "{round:?}");
    let (order, _) = msa_order::store::state(&db, &id).await.unwrap().unwrap();
    assert_eq!(order.status, msa_order::model::Status::Pending);
}

/// `POST /orders` with an `Idempotency-Key` header.
async fn order_with_key(orders: &TestClient, key: &str, body: &Value) -> reqwest::Response {
    orders
        .http
        .post(format!("{}/orders", orders.base))
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .expect("the order service answers")
}

/// Fails without the Idempotency-Key support: the repeat would place a second order.
async fn a_repeated_order_with_its_key_is_placed_once(backend: TestBackend) {
    let shop = start(backend).await;
    let user = shop.user().await;
    let laptop = shop.product(json!(10), 5).await;
    let body = order_body(&user, &[(&laptop, 2)]);

    let first = order_with_key(&shop.orders, "\"key-1\"", &body).await;
    assert_eq!(first.status(), 201);
    let location = first.headers()["location"].clone();
    let first: Value = first.json().await.unwrap();
    // The same key, bare or quoted, and the same request: the same order and answer.
    for key in ["key-1", "\"key-1\""] {
        let again = order_with_key(&shop.orders, key, &body).await;
        assert_eq!(again.status(), 201);
        assert_eq!(again.headers()["location"], location);
        assert_eq!(again.json::<Value>().await.unwrap(), first);
    }
    assert_eq!(shop.stock(&laptop).await, 3, "stock taken once");
    let listed = shop
        .orders
        .expect("GET", &format!("/orders/user/{user}"), None, 200)
        .await;
    assert_eq!(listed["total"], 1, "one order");

    // The same key with another request: refused, nothing placed.
    let other = order_with_key(&shop.orders, "key-1", &order_body(&user, &[(&laptop, 1)])).await;
    let problem = expect_problem(other, 422).await;
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("idempotency-key-reused")
    );
    assert_eq!(shop.stock(&laptop).await, 3);

    // A malformed key: 400, nothing placed.
    for bad in ["", "two words", &"k".repeat(256)] {
        expect_problem(order_with_key(&shop.orders, bad, &body).await, 400).await;
    }
    // A key is the user's own: another user's order under the same key is a new order.
    let someone = shop.user().await;
    let theirs = order_with_key(
        &shop.orders,
        "key-1",
        &order_body(&someone, &[(&laptop, 1)]),
    )
    .await;
    assert_eq!(theirs.status(), 201);
    assert_eq!(shop.stock(&laptop).await, 2);
}

/// A failure is a final answer too: the repeat gets the same problem, and nothing more happens.
async fn a_repeated_failed_order_gets_the_same_problem(backend: TestBackend) {
    let shop = start(backend).await;
    let user = shop.user().await;
    let scarce = shop.product(json!(10), 1).await;
    let body = order_body(&user, &[(&scarce, 2)]);
    let first = expect_problem(order_with_key(&shop.orders, "k", &body).await, 409).await;
    let again = expect_problem(order_with_key(&shop.orders, "k", &body).await, 409).await;
    assert_eq!(first, again);
    assert_eq!(shop.stock(&scarce).await, 1);
}

/// A 5xx failure (the commit never arrived: the order failed, its stock went back) frees the
/// key: the repeat places the order again instead of hearing "retry" for ever.
async fn a_key_whose_order_failed_with_a_5xx_places_the_order_again(backend: TestBackend) {
    let neighbours = start_neighbours(backend).await;
    let product_url = product_with_broken_commit(&neighbours.products, CommitFault::Lost).await;
    let orders = start_order(
        &neighbours,
        backend,
        peers(&neighbours.users.base, &product_url),
    )
    .await;
    let user = neighbours.user().await;
    let product = neighbours.product(json!(3), 4).await;
    let body = order_body(&user, &[(&product, 1)]);
    let first = expect_problem(order_with_key(&orders, "k", &body).await, 503).await;
    let again = expect_problem(order_with_key(&orders, "k", &body).await, 503).await;
    assert_ne!(
        first["order_id"], again["order_id"],
        "placed again, as a new order"
    );
    assert_eq!(
        neighbours.stock(&product).await,
        4,
        "every failed order gave its stock back"
    );
}

/// Concurrent repeats (a client retrying before its first try answered): one order.
async fn concurrent_requests_with_one_key_place_one_order(backend: TestBackend) {
    let shop = start(backend).await;
    let user = shop.user().await;
    let laptop = shop.product(json!(10), 100).await;
    let body = order_body(&user, &[(&laptop, 1)]);
    let answers =
        futures::future::join_all((0..8).map(|_| order_with_key(&shop.orders, "same", &body)))
            .await;
    let mut ids = std::collections::BTreeSet::new();
    for answer in answers {
        assert!(
            matches!(answer.status().as_u16(), 201 | 202),
            "{}",
            answer.status()
        );
        ids.insert(
            answer.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    eventually("the order confirmed and stock taken once", || async {
        shop.stock(&laptop).await == 99
    })
    .await;
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
    a_commit_that_never_arrives_gives_the_stock_back,
    a_commit_whose_answer_was_lost_is_looked_up_and_confirmed,
    a_price_change_during_the_order_is_not_charged,
    a_pending_order_cancelled_before_its_reservation_arrives,
    a_pending_order_cancelled_after_its_commit,
    the_saga_carries_the_requests_id,
    the_recoverer_ends_every_stranded_order,
    the_recoverer_waits_while_the_product_service_is_down,
    a_repeated_order_with_its_key_is_placed_once,
    a_repeated_failed_order_gets_the_same_problem,
    concurrent_requests_with_one_key_place_one_order,
    a_key_whose_order_failed_with_a_5xx_places_the_order_again,
);
