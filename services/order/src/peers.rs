//! Calls to the user and product services: the saga's view of its peers.
//!
//! Each peer is an [`Upstream`] of the shared client stack (discovery, peak-EWMA balancing,
//! outlier ejection, circuit breaker, budgeted retries, timeouts). Reads are retried on another
//! endpoint when one fails; a reservation is too, because the product service treats its id as
//! an idempotency key (so a second delivery cannot reserve twice). Every call carries the
//! incoming request's `x-request-id` and `traceparent`.

use axum::body::Body;
use http::{Method, Request, StatusCode};
use std::sync::Arc;

use msa_service_kit::Problem;
use msa_service_kit::auth::TokenFile;
use msa_service_kit::context::RequestContext;
use msa_upstream::client::read_body;
use msa_upstream::{RetrySafe, Upstream};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::model::RequestedItem;

/// Largest peer response read.
const RESPONSE_LIMIT: usize = 1024 * 1024;

#[derive(Clone)]
pub struct Peers {
    users: Upstream,
    products: Upstream,
    /// This service's own token, sent to the product service (whose reservation routes take
    /// only the order service); `None` when service identities are off.
    service_token: Option<Arc<TokenFile>>,
}

/// Whose credentials a call carries.
#[derive(Clone, Copy)]
enum Credentials {
    /// The incoming request's token: the call is made on the user's behalf.
    Caller,
    /// This service's own token.
    Service,
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

/// A peer's answer: its status and body.
struct Answer {
    status: StatusCode,
    body: bytes::Bytes,
}

impl Answer {
    fn json<T: DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_slice(&self.body).map_err(|e| format!("unreadable answer: {e}"))
    }
}

impl Peers {
    pub fn new(users: Upstream, products: Upstream) -> Self {
        Peers {
            users,
            products,
            service_token: None,
        }
    }

    /// Calls to the product service carry this service's token from now on.
    pub fn with_service_token(mut self, token: Option<Arc<TokenFile>>) -> Self {
        self.service_token = token;
        self
    }

    async fn call(
        &self,
        upstream: &Upstream,
        credentials: Credentials,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Answer, String> {
        // Every call here is safe to deliver twice: reads, and writes keyed by the order id.
        let mut request = Request::builder().method(method).uri(path);
        if let Some(headers) = request.headers_mut() {
            let context = RequestContext::current();
            context.propagate_into(headers);
            let authorization = match credentials {
                Credentials::Caller => context.authorization,
                Credentials::Service => self.service_token.as_ref().and_then(|t| t.authorization()),
            };
            if let Some(value) = authorization {
                headers.insert(http::header::AUTHORIZATION, value);
            }
            if body.is_some() {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
            }
        }
        let body = body.map_or_else(Body::empty, |v| Body::from(v.to_string()));
        let mut request = request
            .body(body)
            .expect("a path and a method make a request");
        request.extensions_mut().insert(RetrySafe);
        let response = upstream.send(request).await.map_err(|e| e.to_string())?;
        let (status, body) = read_body(response, RESPONSE_LIMIT).await?;
        Ok(Answer { status, body })
    }

    /// The client's answer when a peer fails: which service, and to retry. Why it failed
    /// (addresses, OS errors) goes to the log with the request id, never to the client.
    fn unavailable(upstream: &Upstream, why: impl std::fmt::Display) -> Problem {
        tracing::warn!(upstream = upstream.name(), error = %why, "upstream call failed");
        Problem::unavailable(
            format!(
                "the {} service is unavailable; retry shortly",
                upstream.name()
            ),
            2,
        )
        .with("upstream", upstream.name())
    }

    /// Whether the user exists; 503 when the user service cannot say.
    pub async fn user_exists(&self, id: &str) -> Result<bool, Problem> {
        let answer = self
            .call(
                &self.users,
                Credentials::Caller,
                Method::GET,
                &format!("/users/{id}"),
                None,
            )
            .await
            .map_err(|e| Self::unavailable(&self.users, e))?;
        match answer.status {
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
        let answer = self
            .call(
                &self.products,
                Credentials::Service,
                Method::GET,
                &format!("/products/{id}"),
                None,
            )
            .await
            .map_err(|e| Self::unavailable(&self.products, e))?;
        match answer.status {
            StatusCode::OK => {
                let product: Product = answer
                    .json()
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
        let body = json!({"id": order_id, "items": items});
        let answer = match self
            .call(
                &self.products,
                Credentials::Service,
                Method::POST,
                "/reservations",
                Some(body),
            )
            .await
        {
            Ok(answer) => answer,
            Err(e) => return ReserveOutcome::Unknown(e),
        };
        match answer.status {
            StatusCode::OK | StatusCode::CREATED => match answer.json::<Reservation>() {
                Ok(reservation) => ReserveOutcome::Reserved(reservation),
                Err(e) => ReserveOutcome::Unknown(format!("unreadable reservation: {e}")),
            },
            StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY => {
                let body: Value = answer.json().unwrap_or_default();
                ReserveOutcome::Refused(relay(answer.status, &body))
            }
            other => ReserveOutcome::Unknown(format!("the product service answered {other}")),
        }
    }

    /// The saga's last step: the order is confirmed, so its reservation is sold. After this the
    /// product service refuses a release; only [`Peers::give_back`] returns the stock.
    pub async fn commit(&self, order_id: &str) -> Result<(), String> {
        self.reservation_action(order_id, "commit").await.map(drop)
    }

    /// Gives whatever the order holds back, exactly once (each step is idempotent at the product
    /// service): a held reservation is released; a committed one (the order was confirmed, now
    /// cancelled or abandoned) is returned.
    pub async fn give_back(&self, order_id: &str) -> Result<(), String> {
        let answer = self.reservation_action(order_id, "release").await?;
        if answer.status.is_success() {
            return Ok(());
        }
        let committed = answer.status == StatusCode::CONFLICT
            && answer.json::<Value>().is_ok_and(|p| {
                p["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("/reservation-committed"))
            });
        if !committed {
            return Err(format!("the product service answered {}", answer.status));
        }
        let answer = self.reservation_action(order_id, "return").await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(format!("the product service answered {}", answer.status))
        }
    }

    /// `POST /reservations/{id}/{action}`; a 2xx is `Ok`, any other answer is returned for the
    /// caller to read (except for `commit`, where it is an error).
    async fn reservation_action(&self, order_id: &str, action: &str) -> Result<Answer, String> {
        let path = format!("/reservations/{order_id}/{action}");
        let answer = self
            .call(
                &self.products,
                Credentials::Service,
                Method::POST,
                &path,
                None,
            )
            .await?;
        if answer.status.is_success() || action != "commit" {
            Ok(answer)
        } else {
            Err(format!("the product service answered {}", answer.status))
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
