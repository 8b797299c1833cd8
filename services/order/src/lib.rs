//! The order service: `POST /orders` (a saga over the user and product services),
//! `GET /orders/{id}`, `GET /orders/user/{user_id}`, `PUT /orders/{id}/status`.

pub mod model;
pub mod peers;
pub mod saga;
pub mod store;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use msa_service_kit::caller::Caller;
use msa_service_kit::db::Database;
use msa_service_kit::extract::{Json, Path, Query};
use msa_service_kit::page::PageQuery;
use msa_service_kit::{Problem, parse_id};

use crate::model::{CreateOrder, Order, SetStatus, Status};
use crate::peers::Peers;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub peers: Peers,
}

pub fn router(db: Database, peers: Peers) -> Router {
    Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/status", put(set_status))
        .route("/orders/user/{user_id}", get(list_for_user))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .with_state(AppState { db, peers })
}

async fn create_order(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<CreateOrder>,
) -> Result<impl IntoResponse, Problem> {
    let order = model::validate(body, &caller)?;
    let order = saga::place(&state.db, &state.peers, order).await?;
    let location = [(
        axum::http::header::LOCATION,
        format!("/orders/{}", order.id),
    )];
    Ok((StatusCode::CREATED, location, Json(order)))
}

async fn get_order(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Order>, Problem> {
    let id = parse_id("id", &id)?.to_string();
    Ok(Json(owned_order(&state.db, &caller, &id).await?))
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

/// The owner (or an admin) may cancel; shipping and delivering need the admin role.
async fn set_status(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<SetStatus>,
) -> Result<impl IntoResponse, Problem> {
    let id = parse_id("id", &id)?.to_string();
    let next = Status::parse(&body.status)?;
    owned_order(&state.db, &caller, &id).await?;
    if next != Status::Cancelled {
        caller.require_admin(&format!("marking an order {}", next.as_str()))?;
    }
    let (status, order) = saga::change_status(&state.db, &state.peers, &id, next).await?;
    Ok((status, Json(order)))
}

/// The OpenAPI 3.1 description served at `/openapi.json`.
pub fn openapi() -> serde_json::Value {
    serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json is valid JSON")
}
