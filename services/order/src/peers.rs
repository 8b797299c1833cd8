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
use std::time::Duration;

use msa_service_kit::Problem;
use msa_service_kit::auth::TokenFile;
use msa_service_kit::context::RequestContext;
use msa_upstream::client::read_body;
use msa_upstream::{RetrySafe, Upstream};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::model::RequestedItem;
use crate::steps::{Ask, Held, Known, Reservation};

/// Largest peer response read.
const RESPONSE_LIMIT: usize = 1024 * 1024;

#[derive(Clone)]
pub struct Peers {
    users: Upstream,
    products: Upstream,
    /// This service's own token, sent to the product service (whose reservation routes take
    /// only the order service); `None` when service identities are off.
    service_token: Option<Arc<TokenFile>>,
    /// The correlation headers to send, when the calls run apart from the request that caused
    /// them (the saga's task, the recoverer); `None`: the current request's.
    context: Option<RequestContext>,
}

/// Whose credentials a call carries.
#[derive(Clone, Copy)]
enum Credentials {
    /// The incoming request's token: the call is made on the user's behalf.
    Caller,
    /// This service's own token.
    Service,
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
            context: None,
        }
    }

    /// These peers, sending `context`'s correlation headers on every call (for work that runs
    /// in its own task, where there is no current request).
    pub fn in_context(&self, context: RequestContext) -> Self {
        Peers {
            context: Some(context),
            ..self.clone()
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
            let context = self.context.clone().unwrap_or_else(RequestContext::current);
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

    /// Asks the product service about the order's reservation and says what the answer means;
    /// no answer within `within` (or an error, or an answer that cannot be read) is
    /// [`Known::NoAnswer`]. Every request is safe to repeat: the reservation's id is the
    /// order's, and the product service's transitions are conditional on its state.
    pub async fn ask(
        &self,
        ask: Ask,
        order_id: &str,
        items: &[RequestedItem],
        within: Duration,
    ) -> Known {
        let (method, path, body) = match ask {
            Ask::Reserve => (
                Method::POST,
                "/reservations".to_owned(),
                Some(json!({"id": order_id, "items": items})),
            ),
            Ask::Look => (Method::GET, format!("/reservations/{order_id}"), None),
            Ask::Commit => (
                Method::POST,
                format!("/reservations/{order_id}/commit"),
                None,
            ),
            Ask::Release => (
                Method::POST,
                format!("/reservations/{order_id}/release"),
                None,
            ),
            Ask::Return => (
                Method::POST,
                format!("/reservations/{order_id}/return"),
                None,
            ),
        };
        let call = self.call(&self.products, Credentials::Service, method, &path, body);
        let answer = match tokio::time::timeout(within, call).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(why)) => return no_answer(ask, order_id, &why),
            Err(_) => return no_answer(ask, order_id, &"no answer in the time left"),
        };
        match meaning(ask, &answer) {
            Some(known) => known,
            None => no_answer(ask, order_id, &format!("answered {}", answer.status)),
        }
    }
}

fn no_answer(ask: Ask, order_id: &str, why: &dyn std::fmt::Display) -> Known {
    tracing::warn!(order = order_id, step = ?ask, error = %why, "the product service did not answer");
    Known::NoAnswer(ask)
}

/// What the product service's answer to `ask` says about the reservation; `None` when it says
/// nothing (a 5xx, an unexpected status, an unreadable body).
fn meaning(ask: Ask, answer: &Answer) -> Option<Known> {
    let problem_type = || {
        answer
            .json::<Value>()
            .ok()
            .and_then(|p| {
                p["type"]
                    .as_str()
                    .map(|t| t.rsplit('/').next().unwrap_or("").to_owned())
            })
            .unwrap_or_default()
    };
    match (ask, answer.status) {
        (_, StatusCode::OK | StatusCode::CREATED) => {
            answer.json::<Reservation>().ok().map(Known::Reservation)
        }
        (Ask::Look | Ask::Commit | Ask::Return, StatusCode::NOT_FOUND) => Some(Known::Absent),
        (_, StatusCode::CONFLICT) => match (ask, problem_type().as_str()) {
            (_, "reservation-released") => Some(Known::State(Held::Released)),
            (Ask::Release, "reservation-committed") => Some(Known::State(Held::Committed)),
            (Ask::Return, "reservation-not-committed") => Some(Known::State(Held::Reserved)),
            (Ask::Return, "order-not-cancelled") => {
                // This service returns only what it stored as cancelled or failed: the product
                // service asked another order service (discovery, a stale address file) or
                // this one lost its data. It will not heal by itself; keep retrying, loudly.
                tracing::error!(
                    "the product service says this order is not cancelled or failed, though it is stored so here; check which order service the product service asks"
                );
                None
            }
            (Ask::Reserve, _) => Some(Known::Refused(relay(
                answer.status,
                &answer.json().unwrap_or_default(),
            ))),
            _ => None,
        },
        (Ask::Reserve, StatusCode::UNPROCESSABLE_ENTITY) => Some(Known::Refused(relay(
            answer.status,
            &answer.json().unwrap_or_default(),
        ))),
        _ => None,
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

    fn answer(status: u16, body: Value) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            body: body.to_string().into(),
        }
    }

    fn problem(kind: &str) -> Value {
        json!({"type": format!("https://msa.dev/problems/{kind}"), "title": "Conflict", "status": 409, "detail": "d"})
    }

    #[test]
    fn each_answer_says_what_became_of_the_reservation() {
        let held = json!({"id": "r", "state": "committed", "total_cents": 300, "created_at": "", "updated_at": "",
            "items": [{"product_id": "p", "quantity": 3, "unit_price_cents": 100}]});
        let Some(Known::Reservation(reservation)) = meaning(Ask::Commit, &answer(200, held)) else {
            panic!("a reservation");
        };
        assert_eq!(
            (reservation.state, reservation.total_cents),
            (Held::Committed, 300)
        );
        let cases = [
            (Ask::Look, answer(404, json!({})), Some(Known::Absent)),
            (Ask::Commit, answer(404, json!({})), Some(Known::Absent)),
            (Ask::Release, answer(404, json!({})), None),
            (
                Ask::Commit,
                answer(409, problem("reservation-released")),
                Some(Known::State(Held::Released)),
            ),
            (
                Ask::Reserve,
                answer(409, problem("reservation-released")),
                Some(Known::State(Held::Released)),
            ),
            (
                Ask::Release,
                answer(409, problem("reservation-committed")),
                Some(Known::State(Held::Committed)),
            ),
            (
                Ask::Return,
                answer(409, problem("reservation-not-committed")),
                Some(Known::State(Held::Reserved)),
            ),
            (Ask::Commit, answer(409, problem("other")), None),
            (Ask::Look, answer(500, json!({})), None),
            (Ask::Look, answer(401, json!({})), None),
            (Ask::Look, answer(200, json!({"unreadable": true})), None),
        ];
        for (ask, answer, known) in cases {
            assert_eq!(meaning(ask, &answer), known, "{ask:?} {}", answer.status);
        }
        let refused = meaning(Ask::Reserve, &answer(409, problem("insufficient-stock")));
        assert!(
            matches!(refused, Some(Known::Refused(p)) if p.kind.ends_with("/insufficient-stock"))
        );
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
