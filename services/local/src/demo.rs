//! `msa-local demo`: the shop's flow through the gateway, each request and answer printed, each
//! answer checked — so it doubles as a smoke test of a running application. When the gateway
//! requires tokens (`up --auth`), the demo issues its own with the run's key, and also shows
//! what a caller without one, a user reading another's order, and a too-fast caller get.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::identity;

/// How often, and how far apart, the demo looks for a cancelled order's stock to come back.
const RETURN_LOOKS: u32 = 20;
const RETURN_LOOK_EVERY: Duration = Duration::from_millis(500);
use serde_json::{Value, json};

struct Demo {
    http: reqwest::Client,
    base: String,
    step: u32,
    /// Sent as the bearer token, when set.
    token: Option<String>,
}

impl Demo {
    /// Sends one request, prints it and the answer, and insists on the `expected` status.
    async fn call(
        &mut self,
        title: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        expected: u16,
    ) -> anyhow::Result<Value> {
        self.step += 1;
        println!("\n{}. {title}", self.step);
        match &body {
            Some(body) => println!("   → {method} {path} {body}"),
            None => println!("   → {method} {path}"),
        }
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.with_context(|| {
            format!(
                "no answer from the gateway at {}; is `make local` running?",
                self.base
            )
        })?;
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        println!("   ← {status} {answer}");
        if status != expected {
            bail!(
                "step {}: expected {expected}, got {status}: {answer}",
                self.step
            );
        }
        Ok(answer)
    }
}

impl Demo {
    /// Whether the gateway requires tokens: a read of a made-up user's orders without one is
    /// 401 if so, an empty list if not. (`/info` says it too, but it is on the admin port in a
    /// cluster, which the gateway's Service does not expose.)
    async fn requires_tokens(&mut self) -> anyhow::Result<bool> {
        self.step += 1;
        let path = "/orders/user/00000000-0000-4000-8000-000000000000";
        println!("\n{}. Ask whether the gateway requires tokens", self.step);
        println!("   → GET {path} (no token)");
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .with_context(|| {
                format!(
                    "no answer from the gateway at {}; is `make local` running?",
                    self.base
                )
            })?;
        let status = response.status().as_u16();
        println!("   ← {status}");
        match status {
            401 => Ok(true),
            200 => Ok(false),
            other => bail!("step {}: expected 401 or 200, got {other}", self.step),
        }
    }
}

fn check(what: &str, ok: bool, answer: &Value) -> anyhow::Result<()> {
    if ok {
        println!("   ✓ {what}");
        Ok(())
    } else {
        bail!("{what}: not so in {answer}")
    }
}

pub async fn run(gateway: &str, data_dir: &Path) -> anyhow::Result<()> {
    let mut demo = Demo {
        http: reqwest::Client::builder().no_proxy().build()?,
        base: gateway.trim_end_matches('/').to_owned(),
        step: 0,
        token: None,
    };
    use reqwest::Method;
    println!("msa demo through the gateway at {}", demo.base);
    let auth = demo.requires_tokens().await?;
    let token = |subject: &str, admin: bool| {
        identity::user_token(data_dir, subject, admin, Duration::from_secs(600))
            .context("the gateway requires tokens; pass the run's --data-dir")
    };
    let admin = if auth {
        println!(
            "   authentication is on: the demo issues tokens with the key in {}",
            data_dir.display()
        );
        Some(token("msa-demo-admin", true)?)
    } else {
        println!(
            "   authentication is off: anyone may act as anyone (`msa-local up --auth` turns it on)"
        );
        None
    };

    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let email = format!("ada.{tag}@example.com");
    let user = demo
        .call(
            "Sign up a user (open to anyone)",
            Method::POST,
            "/users",
            Some(json!({"name": "Ada Lovelace", "email": email})),
            201,
        )
        .await?;
    let user_id = user["id"]
        .as_str()
        .context("the user has an id")?
        .to_owned();
    let ada = if auth {
        Some(token(&user_id, false)?)
    } else {
        None
    };

    demo.token.clone_from(&admin);
    let product = demo
        .call(
            if auth {
                "As an admin, create a product: price 999.99, 10 in stock"
            } else {
                "Create a product: price 999.99, 10 in stock"
            },
            Method::POST,
            "/products",
            Some(json!({"name": "Laptop", "description": "14-inch, 32 GB", "price": "999.99", "stock": 10})),
            201,
        )
        .await?;
    check(
        "price is exactly 999.99",
        product["price"] == "999.99" && product["price_cents"] == 99_999,
        &product,
    )?;
    let product_id = product["id"]
        .as_str()
        .context("the product has an id")?
        .to_owned();

    // With tokens, the order's user is the token's; without, the body names it.
    demo.token.clone_from(&ada);
    let order_body = |quantity: u32| {
        let items = json!([{"product_id": product_id, "quantity": quantity}]);
        if auth {
            json!({ "items": items })
        } else {
            json!({"user_id": user_id, "items": items})
        }
    };
    let order = demo
        .call(
            if auth {
                "As Ada, order one laptop"
            } else {
                "Order one laptop"
            },
            Method::POST,
            "/orders",
            Some(order_body(1)),
            201,
        )
        .await?;
    check(
        "the order is confirmed at 999.99",
        order["status"] == "confirmed" && order["total"] == "999.99",
        &order,
    )?;
    let order_id = order["id"]
        .as_str()
        .context("the order has an id")?
        .to_owned();

    let orders = demo
        .call(
            "List the user's orders",
            Method::GET,
            &format!("/orders/user/{user_id}"),
            None,
            200,
        )
        .await?;
    let listed = orders["items"]
        .as_array()
        .is_some_and(|items| items.iter().any(|o| o["id"] == order_id.as_str()));
    check("the order is listed", listed, &orders)?;

    let after = demo
        .call(
            "Look at the stock",
            Method::GET,
            &format!("/products/{product_id}"),
            None,
            200,
        )
        .await?;
    check("stock went from 10 to 9", after["stock"] == 9, &after)?;

    let refused = demo
        .call(
            "Order 20 more laptops (only 9 left)",
            Method::POST,
            "/orders",
            Some(order_body(20)),
            409,
        )
        .await?;
    let clear = refused["type"]
        .as_str()
        .is_some_and(|t| t.ends_with("/insufficient-stock"))
        && refused["detail"].as_str().is_some_and(|d| !d.is_empty());
    check(
        "refused for insufficient stock, with the reason",
        clear,
        &refused,
    )?;

    let still = demo
        .call(
            "The stock is untouched by the refused order",
            Method::GET,
            &format!("/products/{product_id}"),
            None,
            200,
        )
        .await?;
    check("still 9 in stock", still["stock"] == 9, &still)?;

    // Cancelling a confirmed order gives its stock back: the order service returns it, and the
    // product service gives it only after asking the order service that the order really is
    // cancelled (no caller's word is enough).
    let cancelled = demo
        .call(
            "Cancel the order",
            Method::PUT,
            &format!("/orders/{order_id}/status"),
            Some(json!({"status": "cancelled"})),
            200,
        )
        .await?;
    check(
        "the order is cancelled",
        cancelled["status"] == "cancelled",
        &cancelled,
    )?;
    let mut back = Value::Null;
    for _ in 0..RETURN_LOOKS {
        back = demo
            .call(
                "The laptop is back in stock",
                Method::GET,
                &format!("/products/{product_id}"),
                None,
                200,
            )
            .await?;
        if back["stock"] == 10 {
            break;
        }
        // The cancellation answers once the order is cancelled; the stock may follow a moment
        // later (the saga, or the recoverer if the product service was away).
        tokio::time::sleep(RETURN_LOOK_EVERY).await;
    }
    check("10 in stock again", back["stock"] == 10, &back)?;

    if auth {
        show_refusals(&mut demo, &order_id, &token).await?;
    }

    println!(
        "\ndemo finished: every answer was as expected (user {user_id}, product {product_id})"
    );
    Ok(())
}

/// With authentication on: no token is a 401, another user's order is a 404 (as if it did not
/// exist), and a caller over the gateway's rate is a 429 with `Retry-After`.
async fn show_refusals(
    demo: &mut Demo,
    order_id: &str,
    token: &impl Fn(&str, bool) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    use reqwest::Method;
    demo.token = None;
    let refused = demo
        .call(
            "Without a token, read Ada's order",
            Method::GET,
            &format!("/orders/{order_id}"),
            None,
            401,
        )
        .await?;
    check(
        "401: sign in first",
        refused["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("/unauthorized")),
        &refused,
    )?;

    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mallory = demo
        .call(
            "Sign up a second user, Mallory",
            Method::POST,
            "/users",
            Some(json!({"name": "Mallory", "email": format!("mallory.{tag}@example.com")})),
            201,
        )
        .await?;
    let mallory_id = mallory["id"].as_str().context("the user has an id")?;
    demo.token = Some(token(mallory_id, false)?);
    let hidden = demo
        .call(
            "As Mallory, read Ada's order",
            Method::GET,
            &format!("/orders/{order_id}"),
            None,
            404,
        )
        .await?;
    check(
        "404: another user's order looks like no order at all",
        hidden["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("/not-found")),
        &hidden,
    )?;

    demo.step += 1;
    println!(
        "\n{}. As Mallory, list her orders as fast as possible (10 at a time, at most {MAX_BURST_REQUESTS} requests in 30 s)",
        demo.step
    );
    let path = format!("{}/orders/user/{mallory_id}", demo.base);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    while sent < MAX_BURST_REQUESTS && std::time::Instant::now() < deadline {
        let mut batch = tokio::task::JoinSet::new();
        for _ in 0..10 {
            let mut request = demo.http.get(&path);
            if let Some(token) = &demo.token {
                request = request.bearer_auth(token);
            }
            batch.spawn(request.send());
        }
        sent += 10;
        while let Some(done) = batch.join_next().await {
            let response = done
                .context("a request task failed")?
                .context("no answer from the gateway")?;
            if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
                let header = |name: &str| {
                    response
                        .headers()
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                println!(
                    "   ← 429 within {sent} requests, Retry-After: {}, RateLimit-Policy: {}",
                    header("retry-after"),
                    header("ratelimit-policy")
                );
                println!("   ✓ 429: too fast; each caller has its own limit");
                return Ok(());
            }
        }
    }
    bail!(
        "{sent} requests were all answered: is the gateway's rate limit off? (`up --auth` sets one)"
    )
}

/// The most requests the rate-limit step sends.
const MAX_BURST_REQUESTS: usize = 500;
