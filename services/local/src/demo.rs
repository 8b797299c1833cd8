//! `msa-local demo`: the shop's flow through the gateway, each request and answer printed, each
//! answer checked — so it doubles as a smoke test of a running application.

use anyhow::{Context, bail};
use serde_json::{Value, json};

struct Demo {
    http: reqwest::Client,
    base: String,
    step: u32,
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

fn check(what: &str, ok: bool, answer: &Value) -> anyhow::Result<()> {
    if ok {
        println!("   ✓ {what}");
        Ok(())
    } else {
        bail!("{what}: not so in {answer}")
    }
}

pub async fn run(gateway: &str) -> anyhow::Result<()> {
    let mut demo = Demo {
        http: reqwest::Client::builder().no_proxy().build()?,
        base: gateway.trim_end_matches('/').to_owned(),
        step: 0,
    };
    use reqwest::Method;
    println!("msa demo through the gateway at {}", demo.base);

    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let email = format!("ada.{tag}@example.com");
    let user = demo
        .call(
            "Create a user",
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

    let product = demo
        .call(
            "Create a product: price 999.99, 10 in stock",
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

    let order = demo
        .call(
            "Order one laptop",
            Method::POST,
            "/orders",
            Some(json!({"user_id": user_id, "items": [{"product_id": product_id, "quantity": 1}]})),
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
            Some(
                json!({"user_id": user_id, "items": [{"product_id": product_id, "quantity": 20}]}),
            ),
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

    println!(
        "\ndemo finished: every answer was as expected (user {user_id}, product {product_id})"
    );
    Ok(())
}
