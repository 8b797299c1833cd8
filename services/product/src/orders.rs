//! The order service, asked before sold stock comes back.
//!
//! A return (`POST /reservations/{id}/return`) gives a committed reservation's stock back. The
//! route takes only the order service's token, but a token can leak; if the token alone were
//! enough, whoever held it could take back the stock of any confirmed order and sell it twice.
//! So the product service believes the order service's own record, not the caller: it asks
//! `GET /internal/orders/{id}` (with its own token) and gives stock back only when the order is
//! stored as cancelled or failed, or when no order has that id (the order service records an
//! order before it reserves, so stock under an id it never recorded was bought by nobody). An
//! order service that cannot be asked makes the return wait, never succeed on trust: 424
//! `order-service-unavailable` with `Retry-After` (the order service's recoverer retries). Not
//! a 503: the order service's client would count it against this service's endpoints and
//! breaker, so an order service in trouble would also stop the orders this service could take.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use msa_service_kit::Problem;
use msa_service_kit::auth::TokenFile;
use msa_service_kit::context::RequestContext;
use msa_upstream::client::read_body;
use msa_upstream::metrics::UpstreamMetrics;
use msa_upstream::{CallConfig, Deadline, Discovery, PoolConfig, RetrySafe, Upstream};
use serde::Deserialize;

/// Largest answer read from the order service (a settlement is a few dozen bytes).
const RESPONSE_LIMIT: usize = 16 * 1024;

/// The order service's record of one order, as far as its stock is concerned.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Settlement {
    pub id: String,
    /// `None` when there is no such order.
    pub status: Option<String>,
    /// Whether stock held or sold under the id may come back.
    pub stock_returnable: bool,
}

/// What the order service says of an order whose stock someone asks back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Cancelled, failed, or no such order: the stock comes back.
    Returnable,
    /// The order stands (pending, confirmed, shipped …): its stock stays sold.
    Kept,
}

/// Refuses a return the order service does not back; `Ok` when it does. The refusal does not
/// say what the order's status is: the caller is not told more than it needs.
pub fn permit_return(order_id: &str, standing: Standing) -> Result<(), Problem> {
    match standing {
        Standing::Returnable => Ok(()),
        Standing::Kept => Err(Problem::conflict(
            "order-not-cancelled",
            format!(
                "the order service does not report order {order_id} as cancelled or failed, so its stock stays sold; cancel the order first"
            ),
        )),
    }
}

/// The order service as this service calls it.
#[derive(Clone)]
pub struct OrderClient {
    orders: Upstream,
    /// This service's token for the order service's internal route; `None` when service
    /// identities are off.
    token: Option<Arc<TokenFile>>,
}

impl OrderClient {
    pub fn new(orders: Upstream, token: Option<Arc<TokenFile>>) -> Self {
        OrderClient { orders, token }
    }

    /// The order service at endpoints from `discovery`, with the default call policy and
    /// metrics nobody reads (tests, and runs that do not export them).
    pub fn at(discovery: Discovery) -> Self {
        let metrics = UpstreamMetrics::register(&mut Default::default());
        let orders = Upstream::new(
            "order",
            discovery,
            PoolConfig::default(),
            CallConfig::default(),
            metrics,
        );
        OrderClient::new(orders, None)
    }

    /// What the order service says of `order_id`, asked by `answer_by` (the caller's deadline,
    /// when it gave one); 424 when it cannot say.
    pub async fn standing(
        &self,
        order_id: &str,
        answer_by: Option<Instant>,
    ) -> Result<Standing, Problem> {
        let mut request = Request::builder()
            .method(Method::GET)
            .uri(format!("/internal/orders/{order_id}"));
        if let Some(headers) = request.headers_mut() {
            RequestContext::current().propagate_into(headers);
            if let Some(value) = self.token.as_ref().and_then(|t| t.authorization()) {
                headers.insert(http::header::AUTHORIZATION, value);
            }
        }
        let mut request = request
            .body(Body::empty())
            .map_err(|e| self.unavailable(e))?;
        // A read: safe to send again to another endpoint, within the caller's time.
        request.extensions_mut().insert(RetrySafe);
        if let Some(instant) = answer_by {
            request.extensions_mut().insert(Deadline(instant));
        }
        let response = self
            .orders
            .send(request)
            .await
            .map_err(|e| self.unavailable(e))?;
        let (status, body) = read_body(response, RESPONSE_LIMIT)
            .await
            .map_err(|e| self.unavailable(e))?;
        match status {
            StatusCode::OK => {
                let settlement: Settlement = serde_json::from_slice(&body)
                    .map_err(|e| self.unavailable(format!("unreadable settlement: {e}")))?;
                if settlement.id != order_id {
                    return Err(self.unavailable(format!(
                        "asked for order {order_id}, told about {}",
                        settlement.id
                    )));
                }
                Ok(if settlement.stock_returnable {
                    Standing::Returnable
                } else {
                    Standing::Kept
                })
            }
            // Every id has an answer; a 404 is an order service without the route (an older
            // release during a rollout) or not an order service at all.
            other => Err(self.unavailable(format!("answered {other}"))),
        }
    }

    /// The caller's answer when the order service cannot say: retry later. Why goes to the log
    /// (with the request id), never to the caller.
    fn unavailable(&self, why: impl std::fmt::Display) -> Problem {
        tracing::warn!(upstream = self.orders.name(), error = %why, "cannot ask the order service about an order");
        Problem::new(
            StatusCode::FAILED_DEPENDENCY,
            "order-service-unavailable",
            "the order service cannot confirm this order was cancelled; the stock stays sold until it can, retry shortly",
        )
        .retry_after(Some(2))
        .with("upstream", "order")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_comes_back_only_when_the_order_service_backs_it() {
        assert!(permit_return("o", Standing::Returnable).is_ok());
        let kept = permit_return("o", Standing::Kept).unwrap_err();
        assert_eq!(
            (kept.status, kept.kind.as_str()),
            (409, "https://msa.dev/problems/order-not-cancelled")
        );
    }
}
