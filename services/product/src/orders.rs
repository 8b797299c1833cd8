//! The order service, asked before sold stock comes back.
//!
//! A return (`POST /reservations/{id}/return`) gives a committed reservation's stock back. The
//! route takes only the order service's token, but a token can leak; if the token alone were
//! enough, whoever held it could take back the stock of any confirmed order and sell it twice.
//! So the product service believes the order service's own record, not the caller: it asks
//! `GET /internal/orders/{id}` (with its own token) and gives stock back only for an order that
//! is stored as cancelled or failed. An order service that cannot be asked makes the return
//! wait (503; the order service's recoverer retries), never succeed on trust.

use std::sync::Arc;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use msa_service_kit::Problem;
use msa_service_kit::auth::TokenFile;
use msa_service_kit::context::RequestContext;
use msa_upstream::client::read_body;
use msa_upstream::metrics::UpstreamMetrics;
use msa_upstream::{CallConfig, Discovery, PoolConfig, RetrySafe, Upstream};
use serde::Deserialize;

/// Largest answer read from the order service (a settlement is a few dozen bytes).
const RESPONSE_LIMIT: usize = 16 * 1024;

/// The order service's record of one order, as far as its stock is concerned.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Settlement {
    pub id: String,
    pub status: String,
    /// Whether stock held or sold for the order may come back (cancelled or failed).
    pub stock_returnable: bool,
}

/// What the order service says of an order whose stock someone asks back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Cancelled or failed: its stock comes back.
    Returnable,
    /// It stands (confirmed, shipped …): its stock stays sold.
    Kept { status: String },
    /// The order service has no such order.
    Unknown,
}

/// Refuses a return the order service does not back; `Ok` when it does.
pub fn permit_return(order_id: &str, standing: &Standing) -> Result<(), Problem> {
    match standing {
        Standing::Returnable => Ok(()),
        Standing::Kept { status } => Err(Problem::conflict(
            "order-not-cancelled",
            format!(
                "order {order_id} is {status}: only a cancelled or failed order's stock comes back; cancel the order first"
            ),
        )
        .with("order_status", status.clone())),
        Standing::Unknown => Err(Problem::conflict(
            "order-not-cancelled",
            format!(
                "the order service has no order {order_id}, so its stock stays sold; returns are for cancelled or failed orders"
            ),
        )),
    }
}

/// The order service as this service calls it.
#[derive(Clone)]
pub struct OrderBook {
    orders: Upstream,
    /// This service's token for the order service's internal route; `None` when service
    /// identities are off.
    token: Option<Arc<TokenFile>>,
}

impl OrderBook {
    pub fn new(orders: Upstream, token: Option<Arc<TokenFile>>) -> Self {
        OrderBook { orders, token }
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
        OrderBook::new(orders, None)
    }

    /// What the order service says of `order_id`; 503 when it cannot say.
    pub async fn standing(&self, order_id: &str) -> Result<Standing, Problem> {
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
        // A read: safe to send again to another endpoint.
        request.extensions_mut().insert(RetrySafe);
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
                    Standing::Kept {
                        status: settlement.status,
                    }
                })
            }
            StatusCode::NOT_FOUND => Ok(Standing::Unknown),
            other => Err(self.unavailable(format!("answered {other}"))),
        }
    }

    /// The caller's answer when the order service cannot say: retry later. Why goes to the log
    /// (with the request id), never to the caller.
    fn unavailable(&self, why: impl std::fmt::Display) -> Problem {
        tracing::warn!(upstream = self.orders.name(), error = %why, "cannot ask the order service about an order");
        Problem::unavailable(
            "the order service cannot confirm this order was cancelled; stock stays sold until it can, retry shortly",
            2,
        )
        .with("upstream", "order")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_cancelled_or_failed_order_gets_its_stock_back() {
        assert!(permit_return("o", &Standing::Returnable).is_ok());
        let kept = permit_return(
            "o",
            &Standing::Kept {
                status: "confirmed".into(),
            },
        )
        .unwrap_err();
        assert_eq!(kept.status, 409);
        assert!(kept.detail.contains("confirmed"), "{}", kept.detail);
        let unknown = permit_return("o", &Standing::Unknown).unwrap_err();
        assert_eq!(unknown.status, 409);
    }
}
