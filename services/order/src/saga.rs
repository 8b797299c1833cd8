//! Placing and changing orders across services: the shell around [`crate::steps`].
//!
//! Placing: validate → the user exists → every product exists (its price) → record the order
//! `pending` → run the saga in a task of its own (reserve, commit, confirm; see
//! [`crate::steps`]). Requests that fail before the order is recorded (bad input, unknown user
//! or product, a peer down) leave nothing behind. From the moment the order is recorded its
//! progress is in the database and every step is decided again from it, so the request that
//! started the saga can go (a client hanging up cancels nothing), and whatever a crash cuts
//! short, the recoverer ([`crate::recovery`]) finishes by the same rules.
//!
//! The executor here reads the order, asks the pure core for the next step, performs it, and
//! repeats. Writes to the order are conditional on its status (`WHERE status = 'pending'`), so
//! the saga, a cancellation and the recoverer may run at once and only one change wins; a step
//! that lost re-reads the order and continues from there.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use axum::http::StatusCode;
use msa_service_kit::db::Database;
use msa_service_kit::{Problem, format_cents, now_rfc3339};
use tokio::time::Instant;
use tracing::Instrument;

use crate::idempotency::Claim;
use crate::model::{
    Order, OrderLine, RequestedItem, Status, ValidOrder, check_expected_total, price_lines,
};
use crate::peers::Peers;
use crate::steps::{self, Driver, Failure, OrderView, Progress, Step};
use crate::store;

/// Most steps one run takes; then it stops and a later run continues (a bound on surprises,
/// never reached by the rules in [`crate::steps`]).
const MAX_STEPS: usize = 24;

/// How one run of the steps left an order.
#[derive(Debug)]
pub struct Run {
    pub order: Order,
    /// Why the order failed, when this run recorded the failure.
    pub failure: Option<Failure>,
}

/// Runs `work` in a task of its own, in the current request's context (its request id,
/// traceparent and log span), and waits for it: if the request is dropped (the client hung up),
/// the work still runs to its end, so no write is cut off half-way.
pub async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, Problem>> + Send + 'static,
) -> Result<T, Problem> {
    tokio::spawn(work.instrument(tracing::Span::current()))
        .await
        .map_err(|e| Problem::internal(&e))?
}

/// Checks the user and prices the order (read-only calls, safe to abandon): the order to record,
/// `pending` under a new id. Nothing is stored.
pub async fn price(peers: &Peers, order: &ValidOrder) -> Result<Order, Problem> {
    if !peers.user_exists(&order.user_id).await? {
        return Err(Problem::invalid(
            "user_id",
            format!("no user with id {}", order.user_id),
        ));
    }
    let mut prices = BTreeMap::new();
    for (i, item) in order.items.iter().enumerate() {
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
    let (lines, total_cents) = reprice(&order.items, &prices)?;
    check_expected_total(order.expected_total_cents, total_cents)?;
    let now = now_rfc3339();
    Ok(Order {
        id: uuid::Uuid::new_v4().to_string(),
        user_id: order.user_id.clone(),
        status: Status::Pending,
        items: lines,
        total_cents,
        total: format_cents(total_cents),
        failure_reason: None,
        created_at: now.clone(),
        updated_at: now,
    })
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

/// A saga started apart from its request.
pub struct Started {
    /// Answers once the order is recorded (true), its idempotency key turned out taken
    /// (false: nothing recorded, no saga), or it could not be recorded.
    pub recorded: tokio::sync::oneshot::Receiver<Result<bool, Problem>>,
    /// The saga's end, or where it stopped.
    pub finished: tokio::task::JoinHandle<Result<Run, Problem>>,
}

/// Records `order` and runs its saga in a task of its own (in the current log span; `peers`
/// should carry the request's context), giving up on the product service at `give_up_at`
/// (the order then stays pending for the recoverer).
pub fn start(
    db: Database,
    peers: Peers,
    order: Order,
    expected_total_cents: Option<i64>,
    claim: Option<Claim>,
    give_up_at: Instant,
) -> Started {
    let (tell, recorded) = tokio::sync::oneshot::channel();
    let work = async move {
        match store::insert_claimed(&db, &order, claim.as_ref()).await {
            Ok(true) => {
                let _ = tell.send(Ok(true));
            }
            Ok(false) => {
                let _ = tell.send(Ok(false));
                return Ok(Run {
                    order,
                    failure: None,
                });
            }
            Err(problem) => {
                let _ = tell.send(Err(problem.clone()));
                return Err(problem);
            }
        }
        let driver = Driver::Saga {
            expected_total_cents,
        };
        drive(&db, &peers, &order.id, driver, give_up_at).await
    };
    Started {
        recorded,
        finished: tokio::spawn(work.instrument(tracing::Span::current())),
    }
}

/// Takes the order's steps until it ends, or until the product service cannot say (or
/// `give_up_at` passes, or [`MAX_STEPS`]), when it stops with the order as it is.
pub async fn drive(
    db: &Database,
    peers: &Peers,
    id: &str,
    driver: Driver,
    give_up_at: Instant,
) -> Result<Run, Problem> {
    let mut progress = Progress::default();
    let mut failure = None;
    for _ in 0..MAX_STEPS {
        let (order, release_pending) = store::state(db, id)
            .await?
            .ok_or_else(|| Problem::not_found("order", id))?;
        let view = OrderView {
            status: order.status,
            release_pending,
            items: order.items.clone(),
            total_cents: order.total_cents,
        };
        let step = steps::next(&view, &progress, driver);
        tracing::debug!(order = id, ?step, "saga step");
        match step {
            Step::Ask(ask) => {
                let left = give_up_at.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(Run { order, failure });
                }
                let items: Vec<RequestedItem> = order
                    .items
                    .iter()
                    .map(|l| RequestedItem {
                        product_id: l.product_id.clone(),
                        quantity: l.quantity,
                    })
                    .collect();
                progress.learn(ask, peers.ask(ask, id, &items, left).await);
            }
            Step::Confirm { lines, total_cents } => {
                store::confirm(db, id, &lines, total_cents).await?;
            }
            Step::Fail { why, give_back } => {
                if store::fail(db, id, &why.reason(), give_back).await? {
                    tracing::info!(order = id, reason = %why.reason(), "order failed");
                    failure = Some(why);
                }
            }
            Step::GivenBack => store::release_done(db, id).await?,
            Step::Wait | Step::Done => return Ok(Run { order, failure }),
        }
    }
    let (order, _) = store::state(db, id)
        .await?
        .ok_or_else(|| Problem::not_found("order", id))?;
    Ok(Run { order, failure })
}

/// What the client of `POST /orders` is told about a run: 201 confirmed, 202 still pending
/// (with the order), or the failure as a problem naming the order.
pub fn answer(run: Run) -> Result<(StatusCode, Order), Problem> {
    let Run { order, failure } = run;
    let id = order.id.clone();
    match order.status {
        Status::Confirmed | Status::Shipped | Status::Delivered => Ok((StatusCode::CREATED, order)),
        Status::Pending => Ok((StatusCode::ACCEPTED, order)),
        Status::Cancelled => Err(Problem::conflict(
            "order-cancelled",
            "the order was cancelled while it was being placed; its stock is given back",
        )
        .with("order_id", id)),
        Status::Failed => Err(match failure {
            Some(Failure::Refused(problem)) => problem,
            Some(Failure::TotalMismatch {
                charged_cents,
                accepted_cents,
            }) => check_expected_total(Some(accepted_cents), charged_cents)
                .err()
                .unwrap_or_else(|| Problem::internal(&"a total mismatch with equal totals")),
            Some(Failure::NoAnswer(_)) => Problem::unavailable(
                "the product service could not hold the stock; the order was not placed, retry shortly",
                2,
            ),
            // Failed in an earlier run (a repeat of its key, or the recoverer ended it): what
            // to do is place a new order, not retry this one.
            _ => Problem::conflict(
                "order-failed",
                format!(
                    "the order could not be placed ({}); its stock is given back: place a new order (with a new Idempotency-Key)",
                    order.failure_reason.as_deref().unwrap_or("it failed")
                ),
            ),
        }
        .with("order_id", id)),
    }
}

/// `PUT /orders/{id}/status`. Cancelling (a pending or a confirmed order) marks its stock to be
/// given back and gives it back before answering when the product service answers by
/// `give_up_at`; otherwise the recoverer does, later. A saga still running for the order
/// notices: its confirmation is conditional on `pending`.
pub async fn change_status(
    db: &Database,
    peers: &Peers,
    id: &str,
    next: Status,
    give_up_at: Instant,
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
        let run = drive(db, peers, id, Driver::Recovery, give_up_at).await?;
        return Ok((StatusCode::OK, run.order));
    }
    let order = store::get(db, id)
        .await?
        .ok_or_else(|| Problem::not_found("order", id))?;
    Ok((StatusCode::OK, order))
}

/// How long a cancellation waits for the product service before leaving the give-back to the
/// recoverer.
pub const CANCEL_WAIT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    fn order(status: Status, reason: Option<&str>) -> Order {
        Order {
            id: "o-1".into(),
            user_id: "u".into(),
            status,
            items: Vec::new(),
            total_cents: 700,
            total: "7.00".into(),
            failure_reason: reason.map(str::to_owned),
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    #[test]
    fn clients_learn_how_the_order_ended() {
        let status = |run| match answer(run) {
            Ok((status, _)) => (status.as_u16(), String::new()),
            Err(problem) => {
                assert_eq!(problem.extra["order_id"], "o-1");
                (problem.status, problem.kind)
            }
        };
        let run = |status, failure| Run {
            order: order(status, Some("why")),
            failure,
        };
        assert_eq!(status(run(Status::Confirmed, None)).0, 201);
        assert_eq!(status(run(Status::Pending, None)).0, 202);
        assert!(
            status(run(Status::Cancelled, None))
                .1
                .ends_with("/order-cancelled")
        );
        let refused = Problem::conflict("insufficient-stock", "only 1");
        assert_eq!(
            status(run(Status::Failed, Some(Failure::Refused(refused)))),
            (409, "https://msa.dev/problems/insufficient-stock".into())
        );
        let mismatch = Failure::TotalMismatch {
            charged_cents: 800,
            accepted_cents: 700,
        };
        assert_eq!(
            status(run(Status::Failed, Some(mismatch))),
            (422, "https://msa.dev/problems/total-mismatch".into())
        );
        assert_eq!(
            status(run(
                Status::Failed,
                Some(Failure::NoAnswer(steps::Ask::Commit))
            ))
            .0,
            503
        );
        // Failed by another run (the recoverer, or a repeat of its key): the stored reason,
        // and a new order is what to do, not a retry.
        assert_eq!(
            status(run(Status::Failed, None)),
            (409, "https://msa.dev/problems/order-failed".into())
        );
    }
}
