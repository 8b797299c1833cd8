//! A bounded mixed load through the gateway, as a shop's clients make it — reads of users,
//! products and orders, and `POST /orders` — with a tally that tells a rollout a client never
//! noticed from one that failed requests or applied an order twice.
//!
//! Bounded in count and time ([`Limits`]); every request has a timeout, so a hang is counted as a
//! failure, never waited out. Only `503` with `Retry-After` counts as an honest "come back
//! later"; any other error, status or timeout is a failure.
//!
//! Orders are placed as the README tells clients to: each with its own `Idempotency-Key`, sent
//! again with the same key when the answer was a `5xx` or never came (after `Retry-After`, at
//! most [`ORDER_ATTEMPTS`] times within [`ORDER_PATIENCE`]). Every attempt is tallied; `201` and
//! `202` both answer the order; one still unanswered at the end is counted as abandoned.

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
    /// Ids of the orders the gateway answered `201` or `202` for.
    pub orders_answered: Vec<String>,
    /// How many of them were `202` (still pending when the answer was due).
    pub orders_accepted: u64,
    /// Orders given up on: no `201`, `202` or `4xx` within the client's patience. The shop may
    /// still have placed one; the audit then finds it confirmed without its answer.
    pub orders_abandoned: u64,
    /// When each `503` carrying `Retry-After` came, in seconds since the load began (at most
    /// one per attempt, so bounded by `ORDER_ATTEMPTS × Limits::max_requests`).
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
            "{} requests in {:.1} s: {} reads ok, {} orders answered ({} of them 202, {} given up), {} × 503+Retry-After ({:.1} s from the first to the last), {} failed reads, {} failed order attempts",
            self.requests,
            self.elapsed.as_secs_f64(),
            self.reads_ok,
            self.orders_answered.len(),
            self.orders_accepted,
            self.orders_abandoned,
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

/// How often one order is sent (with its one key) at most, and for how long, before the client
/// gives up on it: long enough for a one-replica rollout's gap.
pub const ORDER_ATTEMPTS: usize = 20;
pub const ORDER_PATIENCE: Duration = Duration::from_secs(30);
/// The pause before sending an order again: its `Retry-After`, capped, or this.
const ORDER_PAUSE: Duration = Duration::from_millis(500);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(2);

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
    let path = match step % 4 {
        0 => format!("/products/{product}"),
        1 => format!("/users/{user}"),
        2 => format!("/orders/user/{user}?limit=5"),
        _ => {
            let order = json!({"user_id": user, "items": [{"product_id": product, "quantity": 1}]});
            return place_order(http, shop, &order, started, tally).await;
        }
    };
    let request = http.get(format!("{}{path}", shop.base));
    let outcome = attempt(request, &format!("GET {path}"), false, started).await;
    tally.lock().await.add(outcome, started);
}

/// One order, with its own `Idempotency-Key`, sent again with that key after a `5xx` or no
/// answer, as a client that did not hear the answer should.
async fn place_order(
    http: &reqwest::Client,
    shop: &Shop,
    order: &Value,
    started: Instant,
    tally: &Mutex<Tally>,
) {
    let key = format!("\"load-{}\"", crate::random_hex());
    let url = format!("{}/orders", shop.base);
    let give_up = Instant::now() + ORDER_PATIENCE;
    for _ in 0..ORDER_ATTEMPTS {
        let request = http
            .post(&url)
            .header("idempotency-key", key.as_str())
            .json(order);
        let outcome = attempt(request, "POST /orders", true, started).await;
        let pause = outcome.pause_before_repeating();
        tally.lock().await.add(outcome, started);
        match pause {
            None => return,
            Some(pause) if Instant::now() + pause < give_up => tokio::time::sleep(pause).await,
            Some(_) => break,
        }
    }
    tally.lock().await.orders_abandoned += 1;
}

/// Sends `request` and judges its answer (before any lock is taken: the workers share the tally).
async fn attempt(
    request: reqwest::RequestBuilder,
    label: &str,
    places_order: bool,
    started: Instant,
) -> Outcome {
    let failure = |outcome: String, repeat: bool| {
        Outcome::Failed(
            Failure {
                request: label.to_owned(),
                outcome,
                at: started.elapsed().as_secs_f64(),
            },
            repeat,
        )
    };
    let response = match request.send().await {
        Err(error) if error.is_timeout() => {
            return failure("no answer in time (hang)".to_owned(), true);
        }
        Err(error) => return failure(format!("transport error: {error}"), true),
        Ok(response) => response,
    };
    let status = response.status().as_u16();
    let retry_after_value = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .map(|seconds| Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    let retry_after = response.headers().contains_key("retry-after");
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    let id = || answer["id"].as_str().map(str::to_owned);
    match (status, places_order) {
        (200, false) => Outcome::Read,
        (201, true) | (202, true) => match id() {
            Some(id) => Outcome::Ordered {
                id,
                accepted: status == 202,
            },
            None => failure(format!("{status} without an id: {answer}"), false),
        },
        (503, _) if retry_after => Outcome::Unavailable(retry_after_value),
        _ => failure(
            format!(
                "{status}{}: {}",
                if retry_after { " (Retry-After)" } else { "" },
                truncate(&answer.to_string(), 200)
            ),
            status >= 500,
        ),
    }
}

/// What one attempt got.
enum Outcome {
    /// A read answered `200`.
    Read,
    /// `201`, or `202` (`accepted`), with the order's id.
    Ordered { id: String, accepted: bool },
    /// `503` with `Retry-After` (its value in seconds, capped, when it has one).
    Unavailable(Option<Duration>),
    /// Anything else; `true` when the client should send it again (a `5xx` or no answer).
    Failed(Failure, bool),
}

impl Outcome {
    /// How long to wait before sending it again; None when it is not to be sent again.
    fn pause_before_repeating(&self) -> Option<Duration> {
        match self {
            Outcome::Unavailable(after) => Some(after.unwrap_or(ORDER_PAUSE)),
            Outcome::Failed(_, true) => Some(ORDER_PAUSE),
            _ => None,
        }
    }
}

impl Tally {
    fn add(&mut self, outcome: Outcome, started: Instant) {
        self.requests += 1;
        match outcome {
            Outcome::Read => self.reads_ok += 1,
            Outcome::Ordered { id, accepted } => {
                self.orders_answered.push(id);
                self.orders_accepted += u64::from(accepted);
            }
            Outcome::Unavailable(_) => self.unavailable_at.push(started.elapsed().as_secs_f64()),
            Outcome::Failed(failure, _) => self.failures.push(failure),
        }
    }
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
    /// Orders answered `201` or `202`.
    pub answered: usize,
    /// Confirmed orders no `201` or `202` answered: applied without the client knowing — an
    /// order placed twice under two keys, or one its client gave up on (`orders_abandoned`).
    pub confirmed_unanswered: Vec<String>,
    /// Orders whose status is still `pending`.
    pub pending: Vec<String>,
    /// Products whose stock is not initial stock minus confirmed quantities: id → (expected, found).
    pub stock_mismatches: BTreeMap<String, (i64, i64)>,
    /// Answered orders that cannot be read back.
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
/// order answered `201` or `202`, and each product's stock against the confirmed quantities.
pub async fn audit(
    http: &reqwest::Client,
    shop: &Shop,
    answered_orders: &[String],
) -> anyhow::Result<Audit> {
    let mut stored = 0;
    let mut pending = Vec::new();
    let mut confirmed_quantity: BTreeMap<String, i64> = BTreeMap::new();
    let answered: std::collections::BTreeSet<&str> =
        answered_orders.iter().map(String::as_str).collect();
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
    for order in answered_orders {
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
        answered: answered_orders.len(),
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
