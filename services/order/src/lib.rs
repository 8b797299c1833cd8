//! The order service: `POST /orders` (a saga over the user and product services),
//! `GET /orders/{id}`, `GET /orders/user/{user_id}`, `PUT /orders/{id}/status`, and the
//! recoverer that finishes every order a crash or a silent peer left pending.

pub mod idempotency;
pub mod model;
pub mod peers;
pub mod recovery;
pub mod saga;
pub mod steps;
pub mod store;

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use msa_service_kit::caller::Caller;
use msa_service_kit::context::RequestContext;
use msa_service_kit::db::Database;
use msa_service_kit::deadline::Deadline;
use msa_service_kit::extract::{Json, Path, Query};
use msa_service_kit::page::PageQuery;
use msa_service_kit::{Problem, parse_id};
use tokio::time::Instant;

use crate::model::{CreateOrder, Order, SetStatus, Status};
use crate::peers::Peers;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long `POST /orders` waits for its saga, and when orders count as stranded.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The longest `POST /orders` waits for its saga before answering 202 with the pending
    /// order; shorter when the caller's `x-msa-timeout-ms` says it waits less.
    pub wait_max: Duration,
    /// An order pending longer than this is the recoverer's; the saga gives up on the product
    /// service at half of it ([`recovery::saga_limit`]).
    pub recover_after: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            wait_max: Duration::from_secs(4),
            recover_after: Duration::from_secs(120),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub peers: Peers,
    pub settings: Settings,
}

/// The API with the default [`Settings`].
pub fn router(db: Database, peers: Peers) -> Router {
    router_with(db, peers, Settings::default())
}

pub fn router_with(db: Database, peers: Peers, settings: Settings) -> Router {
    Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/status", put(set_status))
        .route("/orders/user/{user_id}", get(list_for_user))
        .route("/internal/orders/{id}", get(settlement))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .with_state(AppState {
            db,
            peers,
            settings,
        })
}

/// 201 confirmed; 202 with the pending order when its saga has not finished by the time the
/// caller (`x-msa-timeout-ms`, less a margin) or this service (`wait_max`) stops waiting; the
/// saga's failure otherwise. The saga runs in its own task: a client that goes stops nothing.
/// With an `Idempotency-Key`, a repeat gets the first request's order and answer
/// ([`idempotency`]).
async fn create_order(
    State(state): State<AppState>,
    caller: Caller,
    deadline: Deadline,
    headers: axum::http::HeaderMap,
    Json(body): Json<CreateOrder>,
) -> Result<Response, Problem> {
    let key = idempotency::parse(&headers)?;
    let valid = model::validate(body, &caller)?;
    let claim = key.map(|key| idempotency::Claim::new(key, &valid));
    if let Some(claim) = &claim
        && let Some(repeat) = repeated(&state.db, claim).await?
    {
        return Ok(repeat);
    }
    let answer_by = Instant::from_std(deadline.answer_by(state.settings.wait_max));
    // Only reads so far: abandoning them at the deadline leaves nothing behind.
    let order = tokio::time::timeout_at(answer_by, saga::price(&state.peers, &valid))
        .await
        .map_err(|_| {
            Problem::unavailable(
                "the order could not be checked in the time the request allows; nothing was placed, retry",
                1,
            )
        })??;
    let give_up_at = Instant::now() + recovery::saga_limit(state.settings.recover_after);
    let started = saga::start(
        state.db.clone(),
        state.peers.in_context(RequestContext::current()),
        order.clone(),
        valid.expected_total_cents,
        claim.clone(),
        give_up_at,
    );
    // Recording waits for the write lock or a pooled connection; past the caller's time the
    // answer is a 503 (the order may still be recorded: a repeat with the same key is safe).
    let recorded = tokio::time::timeout_at(answer_by, started.recorded)
        .await
        .map_err(|_| {
            Problem::unavailable(
                "the order could not be recorded in the time the request allows; it may still be placed: \
                 retry with the same Idempotency-Key, or look at GET /orders/user/{user_id}",
                1,
            )
        })?
        .map_err(|_| Problem::internal(&"the saga's task ended before recording the order"))??;
    if let (false, Some(claim)) = (recorded, &claim) {
        // A request with the same key recorded its order first.
        return repeated(&state.db, claim)
            .await?
            .ok_or_else(|| Problem::internal(&"an idempotency key taken but not stored"));
    }
    let outcome = match tokio::time::timeout_at(answer_by, started.finished).await {
        Ok(joined) => saga::answer(joined.map_err(|e| Problem::internal(&e))??),
        Err(_) => Ok((StatusCode::ACCEPTED, order)),
    };
    if let Some(claim) = &claim {
        remember_answer(&state.db, claim, &outcome).await;
    }
    let (status, order) = outcome?;
    let id = order.id.clone();
    Ok(created(status, &id, Json(order).into_response()))
}

/// Keeps what repeats of `claim` are told. A final answer (201, or a refusal the client must act
/// on, 4xx) is stored as sent. A 202 is not final: repeats see the order as it stands. A 5xx
/// failure (the product service did not answer; the order failed and its stock goes back) frees
/// the key, so a repeat places the order again instead of being told "retry" for ever. A failure
/// to store is logged, never turned into the answer: the order stands either way.
async fn remember_answer(
    db: &Database,
    claim: &idempotency::Claim,
    outcome: &Result<(StatusCode, Order), Problem>,
) {
    let stored = match outcome {
        Ok((StatusCode::ACCEPTED, _)) => return,
        Ok((status, order)) => serde_json::to_string(order).map(|body| (status.as_u16(), body)),
        Err(problem) if problem.status_code().is_server_error() => {
            if let Err(error) = idempotency::forget(db, claim).await {
                tracing::warn!(%error, "could not free the idempotency key of a failed order");
            }
            return;
        }
        Err(problem) => serde_json::to_string(problem).map(|body| (problem.status, body)),
    };
    let result = match stored {
        Ok((status, body)) => idempotency::store_answer(db, claim, status, &body).await,
        Err(error) => Err(Problem::internal(&error)),
    };
    if let Err(error) = result {
        tracing::warn!(%error, "could not store the answer for its idempotency key; repeats will see the order as it stands");
    }
}

/// The answer `body` (JSON) with `status` and the order's location.
fn created(status: StatusCode, order_id: &str, body: Response) -> Response {
    let location = [(axum::http::header::LOCATION, format!("/orders/{order_id}"))];
    (status, location, body).into_response()
}

/// The answer to a request repeating `claim`'s key, if the key was used before.
async fn repeated(db: &Database, claim: &idempotency::Claim) -> Result<Option<Response>, Problem> {
    let Some(recorded) = idempotency::lookup(db, &claim.user_id, &claim.key).await? else {
        return Ok(None);
    };
    let order_id = recorded.order_id.clone();
    match idempotency::replay(recorded, &claim.fingerprint) {
        idempotency::Replay::Mismatch => Err(idempotency::reused()),
        idempotency::Replay::Answer { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let content_type = if status.is_success() {
                "application/json"
            } else {
                msa_service_kit::problem::CONTENT_TYPE
            };
            let body = ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response();
            Ok(Some(created(status, &order_id, body)))
        }
        idempotency::Replay::Order(id) => {
            let order = store::get(db, &id)
                .await?
                .ok_or_else(|| Problem::not_found("order", &id))?;
            let (status, order) = saga::answer(saga::Run {
                order,
                failure: None,
            })?;
            Ok(Some(created(status, &id, Json(order).into_response())))
        }
    }
}

async fn get_order(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Order>, Problem> {
    let id = parse_id("id", &id)?.to_string();
    Ok(Json(owned_order(&state.db, &caller, &id).await?))
}

/// What the product service asks before it gives committed stock back: the order's status,
/// and whether stock held under its id may come back (a cancelled or failed order's, or stock
/// under an id no order has). The product service believes this answer, not the caller of its
/// return route, so holding the order service's token is not enough to take sold stock back.
/// Internal: trusted services only, and the gateway routes no `/internal` path.
async fn settlement(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<model::Settlement>, Problem> {
    caller.require_service()?;
    let id = parse_id("id", &id)?.to_string();
    let order = store::get(&state.db, &id).await?;
    Ok(Json(model::Settlement::of(&id, order.as_ref())))
}

/// The order `id` when the caller may see it; the same 404 when it does not exist and when it
/// is someone else's.
async fn owned_order(db: &Database, caller: &Caller, id: &str) -> Result<Order, Problem> {
    caller.require_user()?;
    let order = store::get(db, id)
        .await?
        .ok_or_else(|| Problem::not_found("order", id))?;
    caller.require_owner(&order.user_id, "order", id)?;
    Ok(order)
}

async fn list_for_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(user_id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<impl IntoResponse, Problem> {
    let user_id = parse_id("user_id", &user_id)?.to_string();
    caller.require_owner(&user_id, "user", &user_id)?;
    Ok(Json(
        store::list_by_user(&state.db, &user_id, query.validate()?).await?,
    ))
}

/// The owner (or an admin) may cancel (a pending or confirmed order); shipping and delivering
/// need the admin role. The change runs in its own task, so a client that goes cuts no write off.
async fn set_status(
    State(state): State<AppState>,
    caller: Caller,
    deadline: Deadline,
    Path(id): Path<String>,
    Json(body): Json<SetStatus>,
) -> Result<impl IntoResponse, Problem> {
    let id = parse_id("id", &id)?.to_string();
    let next = Status::parse(&body.status)?;
    owned_order(&state.db, &caller, &id).await?;
    if next != Status::Cancelled {
        caller.require_admin(&format!("marking an order {}", next.as_str()))?;
    }
    let give_up_at = Instant::from_std(deadline.answer_by(saga::CANCEL_WAIT));
    let peers = state.peers.in_context(RequestContext::current());
    let (status, order) = saga::detached(async move {
        saga::change_status(&state.db, &peers, &id, next, give_up_at).await
    })
    .await?;
    Ok((status, Json(order)))
}

/// The OpenAPI 3.1 description served at `/openapi.json`.
pub fn openapi() -> serde_json::Value {
    serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json is valid JSON")
}
