//! The product service: the catalogue (`/products`) and stock reservations (`/reservations`),
//! which the order service's saga uses to take and give back stock atomically. See the README.
//!
//! Reading the catalogue is open. With authentication on, creating and changing products and
//! setting stock need the admin role; with service identities on, the reservation routes answer
//! only the services named trusted (the order service), and sold stock comes back only for an order the
//! order service itself says was cancelled or failed ([`orders`]).

pub mod expiry;
pub mod model;
pub mod orders;
pub mod store;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use msa_service_kit::caller::Caller;
use msa_service_kit::db::Database;
use msa_service_kit::deadline::Deadline;
use msa_service_kit::extract::{Json, Path, Query};
use msa_service_kit::page::PageQuery;
use msa_service_kit::{Problem, now_rfc3339, parse_id};

use msa_service_kit::money::{parse_price, valid_stock};

use crate::expiry::ProductMetrics;
use crate::model::{
    CreateProduct, CreateReservation, DESCRIPTION, NAME, Product, SetStock, UpdateProduct,
    normalise_items,
};
use crate::orders::OrderClient;
use crate::store::{GivenBack, Reserved};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The service's shared state.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub metrics: ProductMetrics,
    /// Asked before a return: whether the order really was cancelled or failed.
    pub orders: OrderClient,
}

impl axum::extract::FromRef<AppState> for Database {
    fn from_ref(state: &AppState) -> Database {
        state.db.clone()
    }
}

/// The API, with metrics nobody reads (route tests).
pub fn router(db: Database, orders: OrderClient) -> Router {
    router_with(db, orders, ProductMetrics::default())
}

pub fn router_with(db: Database, orders: OrderClient, metrics: ProductMetrics) -> Router {
    Router::new()
        .route("/products", get(list_products).post(create_product))
        .route("/products/{id}", get(get_product).patch(update_product))
        .route("/products/{id}/stock", put(set_stock))
        .route("/reservations", post(reserve))
        .route("/reservations/{id}", get(get_reservation))
        .route("/reservations/{id}/commit", post(commit))
        .route("/reservations/{id}/release", post(release))
        .route("/reservations/{id}/return", post(return_stock))
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .with_state(AppState {
            db,
            metrics,
            orders,
        })
}

async fn create_product(
    State(db): State<Database>,
    caller: Caller,
    Json(body): Json<CreateProduct>,
) -> Result<impl IntoResponse, Problem> {
    caller.require_admin("creating a product")?;
    let name = NAME.check(&body.name)?;
    let price_cents = parse_price("price", &body.price)?;
    let stock = valid_stock(body.stock)?;
    let description = DESCRIPTION.check(&body.description)?;
    let now = now_rfc3339();
    let product = Product {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        description,
        price: model::format_cents(price_cents),
        price_cents,
        stock,
        created_at: now.clone(),
        updated_at: now,
    };
    store::insert(&db, &product).await?;
    let location = [(
        axum::http::header::LOCATION,
        format!("/products/{}", product.id),
    )];
    Ok((StatusCode::CREATED, location, Json(product)))
}

async fn get_product(
    State(db): State<Database>,
    Path(id): Path<String>,
) -> Result<Json<Product>, Problem> {
    let id = parse_id("id", &id)?.to_string();
    store::get(&db, &id)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found("product", &id))
}

/// Admin: changes the name, description or price (only the fields sent); stock has its own
/// route, since reservations change it too.
async fn update_product(
    State(db): State<Database>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<UpdateProduct>,
) -> Result<Json<Product>, Problem> {
    caller.require_admin("changing a product")?;
    let id = parse_id("id", &id)?.to_string();
    if body.name.is_none() && body.description.is_none() && body.price.is_none() {
        return Err(Problem::invalid(
            "name",
            "nothing to update: send name, description, price or several",
        ));
    }
    let change = store::ProductChange {
        name: body
            .name
            .as_deref()
            .map(|name| NAME.check(name))
            .transpose()?,
        description: body
            .description
            .as_deref()
            .map(|description| DESCRIPTION.check(description))
            .transpose()?,
        price_cents: body
            .price
            .as_deref()
            .map(|price| parse_price("price", price))
            .transpose()?,
    };
    store::update(&db, &id, &change)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found("product", &id))
}

async fn list_products(
    State(db): State<Database>,
    Query(query): Query<PageQuery>,
) -> Result<impl IntoResponse, Problem> {
    Ok(Json(store::list(&db, query.validate()?).await?))
}

async fn set_stock(
    State(db): State<Database>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<SetStock>,
) -> Result<Json<Product>, Problem> {
    caller.require_admin("setting stock")?;
    let id = parse_id("id", &id)?.to_string();
    let stock = valid_stock(body.stock)?;
    store::set_stock(&db, &id, stock)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found("product", &id))
}

/// 201 when stock was taken now, 200 when this id was already reserved with the same lines.
async fn reserve(
    State(db): State<Database>,
    caller: Caller,
    Json(body): Json<CreateReservation>,
) -> Result<impl IntoResponse, Problem> {
    caller.require_service()?;
    let id = parse_id("id", &body.id)?.to_string();
    let items = normalise_items(&body.items)?;
    Ok(match store::reserve(&db, &id, &items).await? {
        Reserved::Created(reservation) => (StatusCode::CREATED, Json(reservation)),
        Reserved::Existing(reservation) => (StatusCode::OK, Json(reservation)),
    })
}

async fn get_reservation(
    State(db): State<Database>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, Problem> {
    caller.require_service()?;
    let id = parse_id("id", &id)?.to_string();
    store::get_reservation(&db, &id)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found("reservation", &id))
}

/// The saga's last step: the order was confirmed, so the stock is sold (idempotent).
async fn commit(
    State(db): State<Database>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, Problem> {
    caller.require_service()?;
    let id = parse_id("id", &id)?.to_string();
    Ok(Json(store::commit(&db, &id).await?))
}

/// The saga's compensation: 200 with the reservation, now `released` (idempotent); 409 once
/// it is committed, since then only the order's cancellation may give its stock back.
async fn release(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, Problem> {
    caller.require_service()?;
    let id = parse_id("id", &id)?.to_string();
    Ok(Json(given_back(
        &state,
        store::release(&state.db, &id).await?,
    )))
}

/// A confirmed order was cancelled (or failed after its commit): its committed stock comes
/// back, exactly once, and only when the order service's record says so (409
/// `order-not-cancelled` otherwise, 424 `order-service-unavailable` while it cannot be asked).
async fn return_stock(
    State(state): State<AppState>,
    caller: Caller,
    deadline: Deadline,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, Problem> {
    caller.require_service()?;
    let id = parse_id("id", &id)?.to_string();
    // The caller's time, when it said; the client's own timeouts bound the call either way.
    let answer_by = deadline.wait.map(|wait| deadline.answer_by(wait));
    orders::permit_return(&id, state.orders.standing(&id, answer_by).await?)?;
    Ok(Json(given_back(
        &state,
        store::return_committed(&state.db, &id).await?,
    )))
}

fn given_back(state: &AppState, given: GivenBack) -> model::Reservation {
    state.metrics.clamped(&given.clamped);
    given.reservation
}

/// The OpenAPI 3.1 description served at `/openapi.json`.
pub fn openapi() -> serde_json::Value {
    serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json is valid JSON")
}
