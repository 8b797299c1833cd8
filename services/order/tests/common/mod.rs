//! What the order service's test files share: peers, the neighbouring services, and the audit
//! every fault test ends with. Each test file uses a part of it, so each declares it with
//! `#[allow(dead_code)]`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use msa_order::peers::Peers;
use msa_service_kit::db::Database;
use msa_service_kit::testing::{self, TestBackend, TestClient};
use msa_upstream::discovery::DiscoveryFeed;
use msa_upstream::endpoint::parse_list;
use msa_upstream::metrics::UpstreamMetrics;
use msa_upstream::{CallConfig, Discovery, PoolConfig, Upstream};
use serde_json::Value;
use sqlx::Row;

/// Peers at fixed addresses with the default call policy.
pub fn peers(user_url: &str, product_url: &str) -> Peers {
    peers_with(user_url, product_url, CallConfig::default())
}

/// Peers at fixed addresses with this call policy.
pub fn peers_with(user_url: &str, product_url: &str, calls: CallConfig) -> Peers {
    let metrics = UpstreamMetrics::register(&mut Default::default());
    let upstream = |name: &str, list: &str| {
        Upstream::new(
            name,
            Discovery::fixed(parse_list(list).unwrap()),
            PoolConfig::default(),
            calls.clone(),
            metrics.clone(),
        )
    };
    Peers::new(upstream("user", user_url), upstream("product", product_url))
}

/// The user and product services the order service calls, in-process on fresh databases.
pub async fn neighbours(backend: TestBackend) -> (TestClient, TestClient) {
    let hood = neighbourhood(backend).await;
    (hood.users, hood.products)
}

/// The user and product services, with the product service's database (for the audit, and
/// for slowing its writes down).
pub struct Neighbourhood {
    pub users: TestClient,
    pub products: TestClient,
    pub product_db: Database,
    pub product_url: String,
    /// Where the product service asks the order service about an order before a return: set
    /// with [`Neighbourhood::orders_at`] once the order service listens.
    pub orders: DiscoveryFeed,
}

impl Neighbourhood {
    /// The product service asks the order service at `base` (`http://ip:port`) from now on.
    pub fn orders_at(&self, base: &str) {
        orders_at(&self.orders, base);
    }
}

/// `feed` names the order service at `base` (`http://ip:port`).
pub fn orders_at(feed: &DiscoveryFeed, base: &str) {
    feed.set(parse_list(base.trim_start_matches("http://")).expect("a base URL with an address"));
}

pub async fn neighbourhood(backend: TestBackend) -> Neighbourhood {
    let (users, _) =
        testing::start_service(backend, "user", &msa_user::MIGRATOR, msa_user::router).await;
    let product_url = testing::fresh_database(backend, "product").await;
    let product_db = Database::connect(&product_url, &msa_product::MIGRATOR)
        .await
        .expect("connect and migrate the product database");
    let ops = msa_service_kit::server::Ops::new(
        "product",
        "test",
        "product-0".into(),
        Some(product_db.clone()),
    );
    let (orders, order_book) = Discovery::manual("order");
    let book = msa_product::orders::OrderClient::at(order_book);
    let products =
        TestClient::new(testing::spawn(msa_product::router(product_db.clone(), book), ops).await);
    Neighbourhood {
        users,
        products,
        product_db,
        product_url,
        orders,
    }
}

/// Waits (polling, up to `within`) until no order is pending and no failed or cancelled order
/// still has stock to give back; panics with what is left otherwise.
pub async fn settle(order_db: &Database, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left: Vec<(String, String, i64)> = sqlx::query(
            "SELECT id, status, release_pending FROM orders WHERE status = 'pending' OR release_pending = 1 ORDER BY id",
        )
        .fetch_all(&order_db.pool)
        .await
        .expect("read the orders")
        .iter()
        .map(|r| {
            (
                r.get::<String, _>("id"),
                r.get::<String, _>("status"),
                r.get::<i64, _>("release_pending"),
            )
        })
        .collect();
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "within {within:?}, {} orders did not end: {left:?}",
            left.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until none of `services` (component name, client) has a request at work — its
/// `msa_<component>_http_requests_in_flight` is 1, the scrape asking — on two reads in a row.
/// A request whose client hung up still runs to its end (it is detached), and an order it
/// places is stored only then: [`settle`] and the audit must not start before, or an order
/// stored and reserved between the audit's reads shows as stock sold to nobody (stop 42's CI).
pub async fn quiesce(services: &[(&str, &TestClient)], within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    for (component, client) in services {
        let gauge = format!("msa_{component}_http_requests_in_flight ");
        let mut quiet_reads = 0;
        while quiet_reads < 2 {
            let text = client
                .send("GET", "/metrics", None)
                .await
                .text()
                .await
                .unwrap_or_default();
            let in_flight = text
                .lines()
                .find_map(|line| line.strip_prefix(&gauge))
                .and_then(|value| value.trim().parse::<f64>().ok());
            quiet_reads = if in_flight == Some(1.0) {
                quiet_reads + 1
            } else {
                0
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "{component}: requests still at work after {within:?} ({in_flight:?} in flight)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Orders by status, as the audit found them.
pub type Tally = BTreeMap<String, usize>;

/// The audit after any fault (issue 27): every order ended (none pending, no stock owed);
/// every order a client was answered 201 or 202 for is stored exactly once; every committed
/// reservation belongs to a confirmed order and every confirmed order has one, with the same
/// lines; no reservation is still held; and each product's stock is its initial stock less
/// what confirmed orders bought. Returns the orders by status.
pub async fn audit(
    order_db: &Database,
    product_db: &Database,
    initial_stock: &BTreeMap<String, i64>,
    answered: &[String],
) -> Tally {
    let orders: BTreeMap<String, (String, i64)> =
        sqlx::query("SELECT id, status, release_pending FROM orders")
            .fetch_all(&order_db.pool)
            .await
            .expect("read the orders")
            .iter()
            .map(|r| {
                (
                    r.get::<String, _>("id"),
                    (
                        r.get::<String, _>("status"),
                        r.get::<i64, _>("release_pending"),
                    ),
                )
            })
            .collect();
    let mut tally = Tally::new();
    for (id, (status, owed)) in &orders {
        assert_ne!(status, "pending", "order {id} is still pending");
        assert_eq!(*owed, 0, "order {id} ({status}) still owes stock");
        *tally.entry(status.clone()).or_default() += 1;
    }
    for id in answered {
        let stored: i64 = sqlx::query("SELECT COUNT(*) AS n FROM orders WHERE id = $1")
            .bind(id)
            .fetch_one(&order_db.pool)
            .await
            .unwrap()
            .get("n");
        assert_eq!(
            stored, 1,
            "order {id} was answered 201/202: stored exactly once"
        );
    }
    let sold = |status: &str| matches!(status, "confirmed" | "shipped" | "delivered");
    let reservations: BTreeMap<String, String> = sqlx::query("SELECT id, state FROM reservations")
        .fetch_all(&product_db.pool)
        .await
        .expect("read the reservations")
        .iter()
        .map(|r| (r.get::<String, _>("id"), r.get::<String, _>("state")))
        .collect();
    for (id, state) in &reservations {
        assert_ne!(state, "reserved", "reservation {id} is still held");
        if state == "committed" {
            let status = orders.get(id).map(|o| o.0.as_str());
            assert!(
                status.is_some_and(sold),
                "reservation {id} is committed but its order is {status:?}: stock sold to nobody"
            );
        }
    }
    let mut bought: BTreeMap<String, i64> = BTreeMap::new();
    for (id, (status, _)) in &orders {
        if !sold(status) {
            continue;
        }
        assert_eq!(
            reservations.get(id).map(String::as_str),
            Some("committed"),
            "confirmed order {id} has a committed reservation"
        );
        let ordered = quantities(
            order_db,
            "SELECT product_id, quantity FROM order_items WHERE order_id = $1",
            id,
        )
        .await;
        let reserved = quantities(
            product_db,
            "SELECT product_id, quantity FROM reservation_items WHERE reservation_id = $1",
            id,
        )
        .await;
        assert_eq!(
            ordered, reserved,
            "order {id}: the lines it confirmed are the ones sold"
        );
        for (product, quantity) in ordered {
            *bought.entry(product).or_default() += quantity;
        }
    }
    let product_events = events_agree(order_db, product_db).await;
    stock_each_reservation_holds(product_db, &product_events, &reservations).await;
    for (product, initial) in initial_stock {
        let stock: i64 = sqlx::query("SELECT stock FROM products WHERE id = $1")
            .bind(product)
            .fetch_one(&product_db.pool)
            .await
            .unwrap()
            .get("stock");
        let sold = bought.get(product).copied().unwrap_or_default();
        assert_eq!(
            stock,
            initial - sold,
            "product {product}: stock = initial {initial} − confirmed {sold}"
        );
    }
    tally
}

/// The outboxes agree with the tables (issue 29): each order's last event carries its status,
/// lines and total; each product's last stock figure (from `created`, `updated` or
/// `stock_changed`) is its stock; every aggregate's events are numbered without gaps. Returns
/// the product service's events by aggregate.
async fn events_agree(
    order_db: &Database,
    product_db: &Database,
) -> HashMap<String, Vec<(String, Value)>> {
    let last = msa_events::testing::last_events(&order_db.pool).await;
    let orders = sqlx::query("SELECT id, status, total_cents FROM orders")
        .fetch_all(&order_db.pool)
        .await
        .unwrap();
    for order in &orders {
        let id: String = order.get("id");
        let status: String = order.get("status");
        let (kind, data) = last
            .get(&id)
            .unwrap_or_else(|| panic!("order {id} has no event"));
        let expected = if status == "pending" {
            "placed"
        } else {
            status.as_str()
        };
        assert_eq!(kind, &format!("dev.msa.order.{expected}.v1"), "order {id}");
        assert_eq!(
            data["status"],
            status.as_str(),
            "order {id}: its last event's status"
        );
        assert_eq!(
            data["total_cents"],
            order.get::<i64, _>("total_cents"),
            "order {id}: total"
        );
        let lines = quantities(
            order_db,
            "SELECT product_id, quantity FROM order_items WHERE order_id = $1",
            &id,
        )
        .await;
        let mut announced = BTreeMap::new();
        for line in data["items"].as_array().expect("lines") {
            *announced
                .entry(line["product_id"].as_str().unwrap().to_owned())
                .or_default() += line["quantity"].as_i64().unwrap();
        }
        assert_eq!(lines, announced, "order {id}: its last event's lines");
    }
    assert_eq!(
        last.len(),
        orders.len(),
        "events of orders that were never stored"
    );
    let products = msa_events::testing::events_by_aggregate(&product_db.pool).await;
    for (id, events) in &products {
        stock_changes_chain(id, events);
    }
    for row in sqlx::query("SELECT id, stock FROM products")
        .fetch_all(&product_db.pool)
        .await
        .unwrap()
    {
        let id: String = row.get("id");
        let announced = products.get(&id).and_then(|events| {
            events
                .iter()
                .rev()
                .find_map(|(_, data)| data["stock"].as_i64())
        });
        assert_eq!(
            announced,
            Some(row.get::<i64, _>("stock")),
            "product {id}: its stock and the last stock its events announced"
        );
    }
    products
}

/// What the stock events say each reservation holds now (units taken less units given back,
/// by product) is its lines when it is committed and nothing otherwise; and every reservation
/// the events name exists. This names the reservation when stock and sales disagree.
async fn stock_each_reservation_holds(
    product_db: &Database,
    product_events: &HashMap<String, Vec<(String, Value)>>,
    reservations: &BTreeMap<String, String>,
) {
    let mut held = BTreeMap::<(String, String), i64>::new();
    for (product, events) in product_events {
        for (kind, data) in events {
            let (Some(reservation), Some(previous), Some(stock)) = (
                data["reservation_id"].as_str(),
                data["previous_stock"].as_i64(),
                data["stock"].as_i64(),
            ) else {
                continue;
            };
            assert!(
                reservations.contains_key(reservation),
                "product {product}: {kind} names reservation {reservation}, which does not exist"
            );
            *held
                .entry((reservation.to_owned(), product.clone()))
                .or_default() += previous - stock;
        }
    }
    for (id, state) in reservations {
        let lines = quantities(
            product_db,
            "SELECT product_id, quantity FROM reservation_items WHERE reservation_id = $1",
            id,
        )
        .await;
        for (product, quantity) in lines {
            let expected = if state == "committed" { quantity } else { 0 };
            let holds = held
                .remove(&(id.clone(), product.clone()))
                .unwrap_or_default();
            assert_eq!(
                holds, expected,
                "reservation {id} ({state}): its stock events hold {holds} of product {product}"
            );
        }
    }
    for ((id, product), units) in held {
        assert_eq!(
            units, 0,
            "reservation {id} has no line of product {product}, yet its stock events hold {units}"
        );
    }
}

/// Each stock change of a product starts from the stock the one before it left: a change made
/// outside the transaction that announced it (or an announcement whose change was undone)
/// breaks the chain at that event, which the message names with its neighbours.
fn stock_changes_chain(product: &str, events: &[(String, Value)]) {
    let mut last: Option<(usize, i64)> = None;
    for (i, (kind, data)) in events.iter().enumerate() {
        if let (Some((before, stock)), Some(previous)) = (last, data["previous_stock"].as_i64()) {
            assert_eq!(
                previous,
                stock,
                "product {product}: event {} ({kind}, {data}) starts from stock {previous}, \
                 but event {} ({:?}) left {stock}",
                i + 1,
                before + 1,
                events[before],
            );
        }
        if let Some(stock) = data["stock"].as_i64() {
            last = Some((i, stock));
        }
    }
}

/// Quantities per product of one order's or reservation's lines (merged).
async fn quantities(db: &Database, query: &str, id: &str) -> BTreeMap<String, i64> {
    let mut merged = BTreeMap::new();
    for row in sqlx::query(query)
        .bind(id)
        .fetch_all(&db.pool)
        .await
        .unwrap()
    {
        *merged
            .entry(row.get::<String, _>("product_id"))
            .or_default() += row.get::<i64, _>("quantity");
    }
    merged
}

/// The order service's database at `url`, for reading what it stored.
pub async fn open(url: &str) -> Database {
    Database::connect(url, &msa_order::MIGRATOR)
        .await
        .expect("open the order database")
}
