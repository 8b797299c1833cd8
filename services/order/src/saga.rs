//! Placing and changing orders across services.
//!
//! Placing: validate → the user exists → every product exists (its price) → record the order
//! `pending` → reserve stock for all lines at once at the product service, under the order's id →
//! commit the reservation (the stock is sold: from now on only this order's cancellation can give
//! it back) → `confirmed` at the prices the reservation charged. Requests that fail before the
//! order is recorded (bad input, unknown user or product, a peer down) leave nothing behind. Once
//! recorded, a failure is kept as a `failed` order with its reason, so the client and support can
//! see it: a refusal (insufficient stock) holds nothing; a reservation or commit whose outcome is
//! unknown (timeout, 5xx) is given back at once, and if even that fails, the order is marked
//! `release_pending` and [`release_pending_stock`] retries until the product service confirms.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use msa_service_kit::db::Database;
use msa_service_kit::{Problem, format_cents, now_rfc3339};

use crate::model::{
    Order, OrderLine, RequestedItem, Status, ValidOrder, check_expected_total, price_lines,
};
use crate::peers::{Peers, ReserveOutcome};
use crate::store;

/// Places a checked order (see [`crate::model::validate`]).
pub async fn place(db: &Database, peers: &Peers, order: ValidOrder) -> Result<Order, Problem> {
    let ValidOrder {
        user_id,
        items,
        expected_total_cents,
    } = order;
    if !peers.user_exists(&user_id).await? {
        return Err(Problem::invalid(
            "user_id",
            format!("no user with id {user_id}"),
        ));
    }
    let mut prices = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        if prices.contains_key(&item.product_id) {
            continue;
        }
        let price = peers
            .product_price(&item.product_id)
            .await?
            .ok_or_else(|| {
                Problem::invalid(
                    &format!("items[{i}].product_id"),
                    format!("no product with id {}", item.product_id),
                )
            })?;
        prices.insert(item.product_id.clone(), price);
    }
    let (lines, total_cents) = reprice(&items, &prices)?;
    check_expected_total(expected_total_cents, total_cents)?;
    let now = now_rfc3339();
    let order = Order {
        id: uuid::Uuid::new_v4().to_string(),
        user_id,
        status: Status::Pending,
        items: lines,
        total_cents,
        total: format_cents(total_cents),
        failure_reason: None,
        created_at: now.clone(),
        updated_at: now,
    };
    store::insert(db, &order).await?;

    match peers.reserve(&order.id, &items).await {
        ReserveOutcome::Reserved(reservation) => {
            // The reservation's prices are the ones charged: they were read in the same
            // transaction that took the stock. A price that moved since the lookup above must
            // not charge a client who named the total it expected: the stock goes back.
            let charged: BTreeMap<String, i64> = reservation
                .items
                .iter()
                .map(|l| (l.product_id.clone(), l.unit_price_cents))
                .collect();
            let (lines, total_cents) = match reprice(&items, &charged).and_then(|priced| {
                check_expected_total(expected_total_cents, priced.1).map(|()| priced)
            }) {
                Ok(priced) => priced,
                Err(problem) => {
                    let given_back = peers.give_back(&order.id).await;
                    store::fail(db, &order.id, &problem.detail, given_back.is_err()).await?;
                    return Err(problem.with("order_id", order.id));
                }
            };
            if let Err(why) = peers.commit(&order.id).await {
                return Err(abandon(db, peers, &order.id, "committed", &why).await);
            }
            store::confirm(db, &order.id, &lines, total_cents).await?;
            store::get(db, &order.id)
                .await?
                .ok_or_else(|| Problem::not_found("order", &order.id))
        }
        ReserveOutcome::Refused(problem) => {
            store::fail(db, &order.id, &problem.detail, false).await?;
            Err(problem.with("order_id", order.id))
        }
        ReserveOutcome::Unknown(why) => Err(abandon(db, peers, &order.id, "reserved", &why).await),
    }
}

/// The saga cannot finish: give back whatever the order may hold, record it `failed` (with
/// `release_pending` when even that failed) and tell the client to retry. `why` (peer
/// addresses, error text) goes to the log only; the order and the client get the step.
async fn abandon(db: &Database, peers: &Peers, order_id: &str, step: &str, why: &str) -> Problem {
    tracing::warn!(order = %order_id, step, %why, "order abandoned; giving its stock back");
    let reason = format!("the stock could not be {step}: the product service did not answer");
    let given_back = peers.give_back(order_id).await;
    if let Err(error) = &given_back {
        tracing::error!(order = %order_id, %error, "giving the stock back failed; will retry in the background");
    }
    if let Err(problem) = store::fail(db, order_id, &reason, given_back.is_err()).await {
        return problem;
    }
    Problem::unavailable(
        "the product service could not hold the stock; the order was not placed, retry shortly",
        2,
    )
    .with("order_id", order_id)
}

fn reprice(
    items: &[RequestedItem],
    prices: &BTreeMap<String, i64>,
) -> Result<(Vec<OrderLine>, i64), Problem> {
    let priced: Vec<(RequestedItem, i64)> = items
        .iter()
        .map(|item| {
            (
                item.clone(),
                prices.get(&item.product_id).copied().unwrap_or_default(),
            )
        })
        .collect();
    price_lines(&priced).ok_or_else(msa_service_kit::money::total_too_large)
}

/// `PUT /orders/{id}/status`. Cancelling gives the stock back (now, or by the background retry).
pub async fn change_status(
    db: &Database,
    peers: &Peers,
    id: &str,
    next: Status,
) -> Result<(StatusCode, Order), Problem> {
    let order = store::get(db, id)
        .await?
        .ok_or_else(|| Problem::not_found("order", id))?;
    if order.status == next {
        return Ok((StatusCode::OK, order));
    }
    if !order.status.may_become(next) {
        return Err(Problem::invalid(
            "status",
            format!(
                "an order that is {} cannot become {}",
                order.status.as_str(),
                next.as_str()
            ),
        )
        .with("current_status", order.status.as_str()));
    }
    let cancelling = next == Status::Cancelled;
    if !store::transition(db, id, order.status, next, cancelling).await? {
        return Err(Problem::conflict(
            "concurrent-change",
            "the order changed while this request ran; read it and retry",
        ));
    }
    if cancelling {
        match peers.give_back(id).await {
            Ok(()) => store::release_done(db, id).await?,
            Err(error) => {
                tracing::warn!(order = id, %error, "release after cancel failed; will retry in the background")
            }
        }
    }
    let order = store::get(db, id)
        .await?
        .ok_or_else(|| Problem::not_found("order", id))?;
    Ok((StatusCode::OK, order))
}

/// Retries releases that failed, every `every`, until the product service confirms each.
pub async fn release_pending_stock(db: Database, peers: Peers, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Ok(ids) = store::pending_releases(&db, 50).await else {
            continue;
        };
        for id in ids {
            match peers.give_back(&id).await {
                Ok(()) => {
                    if store::release_done(&db, &id).await.is_ok() {
                        tracing::info!(order = %id, "stock released after an earlier failure");
                    }
                }
                Err(error) => tracing::warn!(order = %id, %error, "stock release still failing"),
            }
        }
    }
}
