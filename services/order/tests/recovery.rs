//! Process tests of issue 27 ("every order ends"), on SQLite and PostgreSQL: the order service
//! as a real process on 127.0.0.1, the user and product services in-process.
//!
//! - `kill -9` of the order service at random points under a bounded concurrent order load
//!   (seeded; the seed is printed, `MSA_TEST_SEED` replays one), restarted each time;
//! - product writes held (the product database's write lock, taken from the test) past the
//!   caller's timeout: the client gets 202 with the pending order, never a 504.
//!
//! After each, within the recovery bound (polled): no order pending, and the audit holds
//! (`common::audit`).

// Each test file uses a part of it.
#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use msa_service_kit::testing::{ServiceProcess, TestBackend, fresh_database};
use serde_json::{Value, json};
use tokio::sync::RwLock;

const BINARY: &str = env!("CARGO_BIN_EXE_msa-order");

/// The order service's flags: these peers and database, a fast recoverer.
fn order_args(database_url: &str, hood: &common::Neighbourhood, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--database-url",
        database_url,
        "--user-url",
        hood.users.base.as_str(),
        "--product-url",
        hood.products.base.as_str(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// The order service's binary with `args`; the product service asks it about orders from now on.
async fn start_order(hood: &common::Neighbourhood, args: &[String]) -> ServiceProcess {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let process = ServiceProcess::start(BINARY, &args, &[]).await;
    hood.orders_at(&process.base_url);
    process
}

/// xorshift64: reproducible from the printed seed without a dependency.
struct Rng(u64);

impl Rng {
    fn seeded() -> (u64, Rng) {
        let seed = std::env::var("MSA_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        (seed, Rng(seed))
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

async fn user(hood: &common::Neighbourhood) -> String {
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    hood.users
        .expect(
            "POST",
            "/users",
            Some(json!({"name": "Ada", "email": email})),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn products(hood: &common::Neighbourhood, count: usize, stock: i64) -> BTreeMap<String, i64> {
    let mut initial = BTreeMap::new();
    for i in 0..count {
        let body =
            json!({"name": format!("P{i}"), "price": format!("{}.00", i + 1), "stock": stock});
        let product = hood
            .products
            .expect("POST", "/products", Some(body), 201)
            .await;
        initial.insert(product["id"].as_str().unwrap().to_owned(), stock);
    }
    initial
}

/// What the clients were told.
#[derive(Default)]
struct Answers {
    /// Orders answered 201 or 202.
    placed: Vec<String>,
    by_status: BTreeMap<u16, usize>,
    /// Requests cut off (the process died under them): the order may or may not exist.
    unanswered: usize,
}

/// Issue 27: `kill -9` of the order service at random points under load, restarted each time:
/// every order ends, none is lost or doubled, and stock adds up.
async fn killed_at_random_points_under_load_every_order_ends(backend: TestBackend) {
    let (seed, mut rng) = Rng::seeded();
    println!("{backend:?}: seed {seed} (MSA_TEST_SEED={seed} replays it)");
    let hood = common::neighbourhood(backend).await;
    let user = user(&hood).await;
    let initial = products(&hood, 3, 25).await;
    let product_ids: Vec<String> = initial.keys().cloned().collect();
    let url = fresh_database(backend, "order").await;
    let args = order_args(
        &url,
        &hood,
        &[
            "--recover-after-ms",
            "1500",
            "--recovery-interval-ms",
            "200",
            "--recovery-lease-ms",
            "1000",
            "--order-wait-max-ms",
            "2000",
        ],
    );
    let mut process = start_order(&hood, &args).await;
    let base = Arc::new(RwLock::new(process.base_url.clone()));
    let attempts = Arc::new(AtomicUsize::new(0));
    let answers = Arc::new(std::sync::Mutex::new(Answers::default()));
    const ORDERS: usize = 90;
    let give_up = Instant::now() + Duration::from_secs(120);
    let clients: Vec<_> = (0..6)
        .map(|client| {
            let (base, attempts, answers) = (base.clone(), attempts.clone(), answers.clone());
            let (user, products) = (user.clone(), product_ids.clone());
            let mut rng = Rng(seed.wrapping_add(client as u64 * 7919) | 1);
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                while attempts.fetch_add(1, Ordering::SeqCst) < ORDERS && Instant::now() < give_up {
                    let lines: Vec<Value> = (0..=rng.below(2))
                        .map(|_| {
                            let product = &products[rng.below(products.len() as u64) as usize];
                            json!({"product_id": product, "quantity": 1 + rng.below(2)})
                        })
                        .collect();
                    let url = format!("{}/orders", base.read().await);
                    let sent = http
                        .post(url)
                        .header("x-msa-timeout-ms", "3000")
                        .json(&json!({"user_id": user, "items": lines}))
                        .send()
                        .await;
                    let response = match sent {
                        Ok(response) => response,
                        Err(error) => {
                            if error.is_connect() {
                                // Nothing was sent (the process is down): not an attempt.
                                attempts.fetch_sub(1, Ordering::SeqCst);
                            } else {
                                answers.lock().unwrap().unanswered += 1;
                            }
                            // A moment for the restart.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap_or_default();
                    let mut answers = answers.lock().unwrap();
                    *answers.by_status.entry(status).or_default() += 1;
                    assert!(
                        matches!(status, 201 | 202 | 409 | 503),
                        "seed {seed}: {status} {body}"
                    );
                    if matches!(status, 201 | 202) {
                        answers.placed.push(body["id"].as_str().unwrap().to_owned());
                    }
                }
            })
        })
        .collect();
    for kill in 0..3 {
        // A random point in the load.
        tokio::time::sleep(Duration::from_millis(100 + rng.below(600))).await;
        drop(process); // SIGKILL
        println!("seed {seed}: killed the order service ({kill})");
        process = start_order(&hood, &args).await;
        *base.write().await = process.base_url.clone();
    }
    for client in clients {
        client.await.unwrap();
    }
    let order_db = common::open(&url).await;
    common::settle(&order_db, Duration::from_secs(60)).await;
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let tally = common::audit(&order_db, &hood.product_db, &initial, &answers.placed).await;
    println!(
        "{backend:?} seed {seed}: answers {:?}, {} cut off; orders stored {tally:?}",
        answers.by_status, answers.unanswered
    );
    drop(process);
}

/// A write lock on the product service's database, held by the test.
enum WriteLock {
    Sqlite(sqlx::AnyConnection),
    Postgres(sqlx::AnyConnection),
}

impl WriteLock {
    /// `BEGIN IMMEDIATE` on the SQLite file, or `LOCK TABLE products IN EXCLUSIVE MODE` on
    /// PostgreSQL: reads go on, every write waits.
    async fn take(backend: TestBackend, url: &str) -> WriteLock {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(url)
            .await
            .expect("a second connection to the product database");
        match backend {
            TestBackend::Sqlite => {
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                WriteLock::Sqlite(conn)
            }
            TestBackend::Postgres => {
                sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
                sqlx::query("LOCK TABLE products IN EXCLUSIVE MODE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                WriteLock::Postgres(conn)
            }
        }
    }

    async fn release(self) {
        use sqlx::Connection;
        let (WriteLock::Sqlite(mut conn) | WriteLock::Postgres(mut conn)) = self;
        sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }
}

/// Issue 27: product writes held past the caller's timeout (`x-msa-timeout-ms`): each client
/// gets 202 Accepted with the pending order and its location, never a 504, and by the time it
/// gave (1.5 s): the answer must come before the client's 10 s patience runs out, where the
/// service's own limit (25 s here) would come after it. Once the writes go through, every order
/// is confirmed.
async fn product_writes_slower_than_the_caller_get_202_not_504(backend: TestBackend) {
    let hood = common::neighbourhood(backend).await;
    let user = user(&hood).await;
    let initial = products(&hood, 1, 10).await;
    let product = initial.keys().next().unwrap().clone();
    let url = fresh_database(backend, "order").await;
    let args = order_args(
        &url,
        &hood,
        &[
            "--recover-after-ms",
            "30000",
            "--recovery-interval-ms",
            "500",
            "--order-wait-max-ms",
            "25000",
        ],
    );
    let process = start_order(&hood, &args).await;
    let lock = WriteLock::take(backend, &hood.product_url).await;
    let placing: Vec<_> = (0..5)
        .map(|_| {
            let (base, user, product) = (process.base_url.clone(), user.clone(), product.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .no_proxy()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                let response = http
                    .post(format!("{base}/orders"))
                    .header("x-msa-timeout-ms", "1500")
                    .json(&json!({"user_id": user, "items": [{"product_id": product, "quantity": 1}]}))
                    .send()
                    .await
                    .expect("an answer, not a timeout");
                let status = response.status().as_u16();
                let location = response
                    .headers()
                    .get("location")
                    .map(|l| l.to_str().unwrap().to_owned());
                let body: Value = response.json().await.unwrap();
                (status, location, body)
            })
        })
        .collect();
    let mut placed = Vec::new();
    for answer in placing {
        let (status, location, body) = answer.await.unwrap();
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["status"], "pending");
        let id = body["id"].as_str().unwrap().to_owned();
        assert_eq!(location, Some(format!("/orders/{id}")));
        placed.push(id);
    }
    // Every client has its answer while the writes are still held.
    lock.release().await;
    let order_db = common::open(&url).await;
    common::settle(&order_db, Duration::from_secs(60)).await;
    let tally = common::audit(&order_db, &hood.product_db, &initial, &placed).await;
    assert_eq!(tally.get("confirmed"), Some(&5), "{tally:?}");
    drop(process);
}

msa_service_kit::on_both_backends!(
    killed_at_random_points_under_load_every_order_ends,
    product_writes_slower_than_the_caller_get_202_not_504,
);
