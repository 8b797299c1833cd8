//! A bounded mixed load through the gateway, as a shop's clients make it — reads of users,
//! products and orders, and `POST /orders` — with a tally that tells a rollout a client never
//! noticed from one that failed requests or applied an order twice.
//!
//! Bounded in count and time ([`Limits`]); every request has a timeout, so a hang is counted as a
//! failure, never waited out. Only `503` with `Retry-After` counts as an honest "come back
//! later"; any other error, status or timeout is a failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use tokio::sync::{Mutex, watch};

/// The shop the load works on: users and products made for it, and the stock each product
/// started with.
#[derive(Clone, Debug)]
pub struct Shop {
    pub base: String,
    pub users: Vec<String>,
    pub products: Vec<String>,
    pub initial_stock: i64,
}

/// How much load, at most.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub concurrency: usize,
    pub max_requests: u64,
    pub max_duration: Duration,
    /// Pause between two requests of one worker (keeps the load at a rate the 2-core machine
    /// serves while it also runs the cluster).
    pub pause: Duration,
    /// A request that takes longer has hung.
    pub request_timeout: Duration,
}

/// The load of the durability scenarios: 3 clients, a request each every 30 ms at most, so
/// the 2-core machine still runs the cluster beside it.
impl Default for Limits {
    fn default() -> Self {
        Self {
            concurrency: 3,
            max_requests: 40_000,
            max_duration: Duration::from_secs(900),
            pause: Duration::from_millis(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// One request that failed, for the report.
#[derive(Clone, Debug)]
pub struct Failure {
    pub request: String,
    pub outcome: String,
    /// Seconds since the load began.
    pub at: f64,
}

/// What the load saw.
#[derive(Debug, Default)]
pub struct Tally {
    pub requests: u64,
    pub reads_ok: u64,
    /// Ids of the orders the gateway answered `201` for.
    pub orders_created: Vec<String>,
    /// When each `503` carrying `Retry-After` came, in seconds since the load began (at most
    /// one per request, so bounded by `Limits::max_requests`).
    pub unavailable_at: Vec<f64>,
    pub failures: Vec<Failure>,
    pub elapsed: Duration,
}

impl Tally {
    /// Failed reads (idempotent requests) and failed order placements.
    pub fn failed(&self) -> (usize, usize) {
        let posts = self
            .failures
            .iter()
            .filter(|f| f.request.starts_with("POST"))
            .count();
        (self.failures.len() - posts, posts)
    }

    /// `503` answers carrying `Retry-After`.
    pub fn unavailable(&self) -> usize {
        self.unavailable_at.len()
    }

    /// Seconds between the first and the last `503`: the gap clients saw.
    pub fn gap_seconds(&self) -> f64 {
        self.gap_within(0.0, f64::INFINITY).1
    }

    /// The `503`s between `from` and `to` (seconds since the load began): how many, and the
    /// seconds from the first to the last of them.
    pub fn gap_within(&self, from: f64, to: f64) -> (usize, f64) {
        let inside: Vec<f64> = self
            .unavailable_at
            .iter()
            .copied()
            .filter(|t| (from..=to).contains(t))
            .collect();
        let span = match (inside.first(), inside.last()) {
            (Some(first), Some(last)) => last - first,
            _ => 0.0,
        };
        (inside.len(), span)
    }

    pub fn summary(&self) -> String {
        let (reads, posts) = self.failed();
        format!(
            "{} requests in {:.1} s: {} reads ok, {} orders created, {} × 503+Retry-After ({:.1} s from the first to the last), {} failed reads, {} failed orders",
            self.requests,
            self.elapsed.as_secs_f64(),
            self.reads_ok,
            self.orders_created.len(),
            self.unavailable(),
            self.gap_seconds(),
            reads,
            posts
        )
    }
}

/// A client for the load: keep-alive like a browser or SDK, no proxy, no retries of its own.
pub fn client(limits: &Limits) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(limits.request_timeout)
        .pool_max_idle_per_host(limits.concurrency)
        .build()?)
}

/// Creates `users` users and `products` products with `stock` each, through the gateway.
pub async fn seed(
    http: &reqwest::Client,
    base: &str,
    users: usize,
    products: usize,
    stock: i64,
) -> anyhow::Result<Shop> {
    let run = crate::random_hex();
    let mut shop = Shop {
        base: base.trim_end_matches('/').to_owned(),
        users: Vec::new(),
        products: Vec::new(),
        initial_stock: stock,
    };
    for i in 0..users {
        let body =
            json!({"name": format!("Load {i}"), "email": format!("load-{run}-{i}@example.com")});
        shop.users
            .push(create(http, &format!("{}/users", shop.base), &body).await?);
    }
    for i in 0..products {
        let body = json!({"name": format!("Item {i}"), "description": "load", "price": "1.25", "stock": stock});
        shop.products
            .push(create(http, &format!("{}/products", shop.base), &body).await?);
    }
    Ok(shop)
}

async fn create(http: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<String> {
    let answer = http.post(url).json(body).send().await?;
    let status = answer.status();
    let value: Value = answer.json().await?;
    ensure!(status == 201, "POST {url}: {status} {value}");
    value["id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("POST {url} answered without an id: {value}"))
}

/// A running load; [`Load::stop`] ends it and returns the tally.
pub struct Load {
    stop: watch::Sender<bool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
    tally: Arc<Mutex<Tally>>,
    started: Instant,
}

impl Load {
    /// Starts `limits.concurrency` workers against the shop.
    pub fn start(http: reqwest::Client, shop: Shop, limits: Limits) -> Self {
        let (stop, stopped) = watch::channel(false);
        let tally = Arc::new(Mutex::new(Tally::default()));
        let sent = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let shop = Arc::new(shop);
        let workers = (0..limits.concurrency)
            .map(|worker| {
                let (http, shop, tally, sent, stopped) = (
                    http.clone(),
                    shop.clone(),
                    tally.clone(),
                    sent.clone(),
                    stopped.clone(),
                );
                tokio::spawn(async move {
                    let mut step = worker;
                    loop {
                        if *stopped.borrow()
                            || started.elapsed() >= limits.max_duration
                            || sent.fetch_add(1, Ordering::Relaxed) >= limits.max_requests
                        {
                            return;
                        }
                        one_request(&http, &shop, step, started, &tally).await;
                        step = step.wrapping_add(limits.concurrency);
                        tokio::time::sleep(limits.pause).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            workers,
            tally,
            started,
        }
    }

    /// Seconds since the load began (to place events on its timeline).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the workers (each finishes its request in flight) and returns the tally.
    pub async fn stop(self) -> Tally {
        let _ = self.stop.send(true);
        for worker in self.workers {
            let _ = worker.await;
        }
        let mut tally = std::mem::take(&mut *self.tally.lock().await);
        tally.elapsed = self.started.elapsed();
        tally
    }
}

/// Request number `step`: three reads for each order placed.
async fn one_request(
    http: &reqwest::Client,
    shop: &Shop,
    step: usize,
    started: Instant,
    tally: &Mutex<Tally>,
) {
    let product = &shop.products[step % shop.products.len()];
    let user = &shop.users[step % shop.users.len()];
    let (method, path, body) = match step % 4 {
        0 => ("GET", format!("/products/{product}"), None),
        1 => ("GET", format!("/users/{user}"), None),
        2 => ("GET", format!("/orders/user/{user}?limit=5"), None),
        _ => (
            "POST",
            "/orders".to_owned(),
            Some(json!({"user_id": user, "items": [{"product_id": product, "quantity": 1}]})),
        ),
    };
    let url = format!("{}{path}", shop.base);
    let request = match &body {
        Some(body) => http.post(&url).json(body),
        None => http.get(&url),
    };
    let result = request.send().await;
    let label = format!("{method} {path}");
    let failure = |outcome: String| Failure {
        request: label.clone(),
        outcome,
        at: started.elapsed().as_secs_f64(),
    };
    // Decided before taking the tally's lock, which the other workers share.
    let outcome = match result {
        Err(error) if error.is_timeout() => Err(failure("no answer in time (hang)".to_owned())),
        Err(error) => Err(failure(format!("transport error: {error}"))),
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            match (status, body.is_some()) {
                (200, false) => Ok(Answer::Read),
                (201, true) => match answer["id"].as_str() {
                    Some(id) => Ok(Answer::Created(id.to_owned())),
                    None => Err(failure(format!("201 without an id: {answer}"))),
                },
                (503, _) if retry_after => Ok(Answer::Unavailable),
                _ => Err(failure(format!(
                    "{status}{}: {}",
                    if retry_after { " (Retry-After)" } else { "" },
                    truncate(&answer.to_string(), 200)
                ))),
            }
        }
    };
    let at = started.elapsed().as_secs_f64();
    let mut tally = tally.lock().await;
    tally.requests += 1;
    match outcome {
        Ok(Answer::Read) => tally.reads_ok += 1,
        Ok(Answer::Created(order)) => tally.orders_created.push(order),
        Ok(Answer::Unavailable) => tally.unavailable_at.push(at),
        Err(failure) => tally.failures.push(failure),
    }
}

/// A request that went as a client expects.
enum Answer {
    Read,
    /// `201`, with the order's id.
    Created(String),
    /// `503` with `Retry-After`.
    Unavailable,
}

fn truncate(text: &str, max: usize) -> &str {
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

/// What the data says after the load.
#[derive(Debug)]
pub struct Audit {
    /// Orders stored for the load's users (any status).
    pub stored_orders: i64,
    /// Orders answered `201`.
    pub answered_created: usize,
    /// Confirmed orders no `201` answered: applied without the client knowing (a client that
    /// retried would have ordered twice).
    pub confirmed_unanswered: Vec<String>,
    /// Orders whose status is still `pending`.
    pub pending: Vec<String>,
    /// Products whose stock is not initial stock minus confirmed quantities: id → (expected, found).
    pub stock_mismatches: BTreeMap<String, (i64, i64)>,
    /// Created orders (`201`) that cannot be read back.
    pub missing: Vec<String>,
}

impl Audit {
    /// No order applied twice, none lost, none pending, stock consistent.
    pub fn is_clean(&self) -> bool {
        self.confirmed_unanswered.is_empty()
            && self.pending.is_empty()
            && self.stock_mismatches.is_empty()
            && self.missing.is_empty()
    }
}

/// Reads everything back through the gateway: the load's users' orders (count and states), every
/// order answered `201`, and each product's stock against the confirmed quantities.
pub async fn audit(
    http: &reqwest::Client,
    shop: &Shop,
    created: &[String],
) -> anyhow::Result<Audit> {
    let mut stored = 0;
    let mut pending = Vec::new();
    let mut confirmed_quantity: BTreeMap<String, i64> = BTreeMap::new();
    let answered: std::collections::BTreeSet<&str> = created.iter().map(String::as_str).collect();
    let mut confirmed_unanswered = Vec::new();
    for user in &shop.users {
        let mut offset = 0;
        loop {
            let url = format!("{}/orders/user/{user}?limit=100&offset={offset}", shop.base);
            let page: Value = read(http, &url).await?;
            if offset == 0 {
                stored += page["total"].as_i64().context("a page has a total")?;
            }
            for order in page["items"].as_array().into_iter().flatten() {
                let id = order["id"].as_str().unwrap_or_default().to_owned();
                match order["status"].as_str() {
                    Some("pending") => pending.push(id),
                    Some("confirmed" | "shipped" | "delivered") => {
                        if !answered.contains(id.as_str()) {
                            confirmed_unanswered.push(id.clone());
                        }
                        for item in order["items"].as_array().into_iter().flatten() {
                            let product = item["product_id"].as_str().unwrap_or_default();
                            *confirmed_quantity.entry(product.to_owned()).or_default() +=
                                item["quantity"].as_i64().unwrap_or(0);
                        }
                    }
                    _ => {}
                }
            }
            match page["next_offset"].as_i64() {
                Some(next) => offset = next,
                None => break,
            }
        }
    }
    let mut missing = Vec::new();
    for order in created {
        let url = format!("{}/orders/{order}", shop.base);
        if http.get(&url).send().await?.status() != 200 {
            missing.push(order.clone());
        }
    }
    let mut stock_mismatches = BTreeMap::new();
    for product in &shop.products {
        let found: Value = read(http, &format!("{}/products/{product}", shop.base)).await?;
        let stock = found["stock"].as_i64().context("a product has a stock")?;
        let expected = shop.initial_stock - confirmed_quantity.get(product).copied().unwrap_or(0);
        if stock != expected {
            stock_mismatches.insert(product.clone(), (expected, stock));
        }
    }
    Ok(Audit {
        stored_orders: stored,
        answered_created: created.len(),
        confirmed_unanswered,
        pending,
        stock_mismatches,
        missing,
    })
}

async fn read(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let answer = http.get(url).send().await?;
    let status = answer.status();
    let value: Value = answer.json().await?;
    ensure!(status == 200, "GET {url}: {status} {value}");
    Ok(value)
}
