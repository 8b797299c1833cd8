//! Calls to the user and product services: the saga's view of its peers.
//!
//! This is the plain client the design allows until the shared discovery/balancing/breaking
//! stack exists: each upstream is a list of base URLs (static addresses, or a Service name, which
//! becomes `http://<name>`), used round-robin, with connect and request timeouts. Every call
//! carries the incoming request's `x-request-id` and `traceparent`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use msa_service_kit::Problem;
use msa_service_kit::context::RequestContext;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::model::RequestedItem;

/// Base URLs of one upstream service, used in turn.
#[derive(Clone, Debug)]
pub struct Upstream {
    name: &'static str,
    bases: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
}

impl Upstream {
    /// `raw`: comma-separated `http://host:port` addresses, or a Kubernetes Service name.
    pub fn parse(name: &'static str, raw: &str) -> anyhow::Result<Self> {
        let bases: Vec<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.contains("://") {
                    s.trim_end_matches('/').to_owned()
                } else {
                    format!("http://{s}")
                }
            })
            .collect();
        anyhow::ensure!(!bases.is_empty(), "no address given for the {name} service");
        for base in &bases {
            anyhow::ensure!(
                base.starts_with("http://"),
                "the {name} service address {base:?} must be http://host:port"
            );
        }
        Ok(Upstream {
            name,
            bases: Arc::new(bases),
            next: Arc::default(),
        })
    }

    fn base(&self) -> &str {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.bases.len();
        &self.bases[i]
    }
}

#[derive(Clone, Debug)]
pub struct Peers {
    http: reqwest::Client,
    users: Upstream,
    products: Upstream,
}

/// A line as the product service reserved it, at the price it charged.
#[derive(Clone, Debug, Deserialize)]
pub struct ReservedLine {
    pub product_id: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Reservation {
    pub items: Vec<ReservedLine>,
}

/// What became of a reservation request.
pub enum ReserveOutcome {
    Reserved(Reservation),
    /// The product service said no (insufficient stock, unknown product): nothing is held.
    Refused(Problem),
    /// No answer, or an error: stock may or may not be held, so it must be released.
    Unknown(String),
}

impl Peers {
    pub fn new(
        users: Upstream,
        products: Upstream,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> anyhow::Result<Self> {
        // Peers are called directly, never through a proxy named in the environment.
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Peers {
            http,
            users,
            products,
        })
    }

    fn request(&self, method: reqwest::Method, url: String) -> reqwest::RequestBuilder {
        let mut headers = http::HeaderMap::new();
        RequestContext::current().propagate_into(&mut headers);
        self.http.request(method, url).headers(headers)
    }

    fn unavailable(upstream: &Upstream, why: impl std::fmt::Display) -> Problem {
        tracing::warn!(upstream = upstream.name, error = %why, "upstream call failed");
        Problem::unavailable(
            format!(
                "the {} service is unavailable ({why}); retry shortly",
                upstream.name
            ),
            2,
        )
        .with("upstream", upstream.name)
    }

    /// Whether the user exists; 503 when the user service cannot say.
    pub async fn user_exists(&self, id: &str) -> Result<bool, Problem> {
        let url = format!("{}/users/{id}", self.users.base());
        let response = self
            .request(reqwest::Method::GET, url)
            .send()
            .await
            .map_err(|e| Self::unavailable(&self.users, e))?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            other => Err(Self::unavailable(&self.users, format!("answered {other}"))),
        }
    }

    /// The product's current price in cents, `None` when there is no such product.
    pub async fn product_price(&self, id: &str) -> Result<Option<i64>, Problem> {
        #[derive(Deserialize)]
        struct Product {
            price_cents: i64,
        }
        let url = format!("{}/products/{id}", self.products.base());
        let response = self
            .request(reqwest::Method::GET, url)
            .send()
            .await
            .map_err(|e| Self::unavailable(&self.products, e))?;
        match response.status() {
            StatusCode::OK => {
                let product: Product = response
                    .json()
                    .await
                    .map_err(|e| Self::unavailable(&self.products, e))?;
                Ok(Some(product.price_cents))
            }
            StatusCode::NOT_FOUND => Ok(None),
            other => Err(Self::unavailable(
                &self.products,
                format!("answered {other}"),
            )),
        }
    }

    /// Reserves every line under the order's id (idempotent at the product service).
    pub async fn reserve(&self, order_id: &str, items: &[RequestedItem]) -> ReserveOutcome {
        let url = format!("{}/reservations", self.products.base());
        let body = json!({"id": order_id, "items": items});
        let response = match self
            .request(reqwest::Method::POST, url)
            .json(&body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => return ReserveOutcome::Unknown(e.to_string()),
        };
        let status = response.status();
        match status {
            StatusCode::OK | StatusCode::CREATED => match response.json::<Reservation>().await {
                Ok(reservation) => ReserveOutcome::Reserved(reservation),
                Err(e) => ReserveOutcome::Unknown(format!("unreadable reservation: {e}")),
            },
            StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY => {
                let body: Value = response.json().await.unwrap_or_default();
                ReserveOutcome::Refused(relay(status, &body))
            }
            other => ReserveOutcome::Unknown(format!("the product service answered {other}")),
        }
    }

    /// Gives the order's stock back (idempotent at the product service).
    pub async fn release(&self, order_id: &str) -> Result<(), String> {
        let url = format!("{}/reservations/{order_id}/release", self.products.base());
        let response = self
            .request(reqwest::Method::POST, url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!(
                "the product service answered {}",
                response.status()
            ))
        }
    }
}

/// The product service's refusal, passed on to our client with its type and details.
fn relay(status: StatusCode, body: &Value) -> Problem {
    let kind = body["type"]
        .as_str()
        .and_then(|t| t.rsplit('/').next())
        .unwrap_or("refused");
    let detail = body["detail"]
        .as_str()
        .unwrap_or("the product service refused the reservation");
    let mut problem = Problem::new(status, kind, detail);
    if let Some(extra) = body.as_object() {
        for (key, value) in extra {
            if !matches!(key.as_str(), "type" | "title" | "status" | "detail") {
                problem = problem.with(key, value.clone());
            }
        }
    }
    problem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_take_addresses_or_a_service_name() {
        let listed = Upstream::parse("user", "http://127.0.0.1:1/, http://127.0.0.1:2").unwrap();
        assert_eq!(
            (listed.base(), listed.base(), listed.base()),
            (
                "http://127.0.0.1:1",
                "http://127.0.0.1:2",
                "http://127.0.0.1:1"
            )
        );
        assert_eq!(
            Upstream::parse("user", "shop-user").unwrap().base(),
            "http://shop-user"
        );
        assert!(Upstream::parse("user", " , ").is_err());
        assert!(Upstream::parse("user", "https://x").is_err());
    }

    #[test]
    fn refusals_keep_their_type_and_details() {
        let body = json!({"type": "https://msa.dev/problems/insufficient-stock", "title": "Conflict", "status": 409,
            "detail": "only 0 left", "product_id": "p", "available": 0});
        let problem = relay(StatusCode::CONFLICT, &body);
        assert_eq!(
            (problem.status, problem.kind.as_str()),
            (409, "https://msa.dev/problems/insufficient-stock")
        );
        assert_eq!(
            (
                problem.extra["product_id"].as_str(),
                problem.extra["available"].as_i64()
            ),
            (Some("p"), Some(0))
        );
    }
}
