//! The user service: `POST /users`, `GET /users/{id}`, `GET /users`, `PUT /users/{id}`
//! (partial), `DELETE /users/{id}`. See the README for the API.
//!
//! With authentication on, signing up is open, an account is seen, changed and deleted only by
//! its user (the token's `sub`) or an admin (anyone else gets 404), and listing every user
//! needs the admin role.

pub mod model;
pub mod store;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use msa_service_kit::caller::Caller;
use msa_service_kit::db::Database;
use msa_service_kit::extract::{Json, Path, Query};
use msa_service_kit::page::PageQuery;
use msa_service_kit::{Problem, now_rfc3339, parse_id};

use crate::model::{CreateUser, UpdateUser, User, valid_email, valid_name};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub fn router(db: Database) -> Router {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route(
            "/users/{id}",
            get(get_user).put(update_user).delete(delete_user),
        )
        .route("/openapi.json", get(|| async { Json(openapi()) }))
        .with_state(db)
}

async fn create_user(
    State(db): State<Database>,
    Json(body): Json<CreateUser>,
) -> Result<impl IntoResponse, Problem> {
    let now = now_rfc3339();
    let user = User {
        id: uuid::Uuid::new_v4().to_string(),
        name: valid_name(&body.name)?,
        email: valid_email(&body.email)?,
        created_at: now.clone(),
        updated_at: now,
    };
    store::insert(&db, &user).await?;
    let location = [(axum::http::header::LOCATION, format!("/users/{}", user.id))];
    Ok((StatusCode::CREATED, location, Json(user)))
}

async fn get_user(
    State(db): State<Database>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<User>, Problem> {
    let id = parse_id("id", &id)?.to_string();
    caller.require_owner(&id, "user", &id)?;
    store::get(&db, &id)
        .await?
        .map(Json)
        .ok_or_else(|| Problem::not_found("user", &id))
}

async fn list_users(
    State(db): State<Database>,
    caller: Caller,
    Query(query): Query<PageQuery>,
) -> Result<impl IntoResponse, Problem> {
    caller.require_admin("listing every user")?;
    Ok(Json(store::list(&db, query.validate()?).await?))
}

async fn update_user(
    State(db): State<Database>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<UpdateUser>,
) -> Result<Json<User>, Problem> {
    let id = parse_id("id", &id)?.to_string();
    caller.require_owner(&id, "user", &id)?;
    if body.name.is_none() && body.email.is_none() {
        return Err(Problem::invalid(
            "name",
            "nothing to update: send name, email or both",
        ));
    }
    // Validate before reading, so a bad request is refused the same whether or not the user exists.
    let name = body.name.as_deref().map(valid_name).transpose()?;
    let email = body.email.as_deref().map(valid_email).transpose()?;
    let mut user = store::get(&db, &id)
        .await?
        .ok_or_else(|| Problem::not_found("user", &id))?;
    let before = (user.name.clone(), user.email.clone());
    if let Some(name) = name {
        user.name = name;
    }
    if let Some(email) = email {
        user.email = email;
    }
    // Nothing changes: nothing is written, and no event says otherwise.
    if (&user.name, &user.email) == (&before.0, &before.1) {
        return Ok(Json(user));
    }
    user.updated_at = now_rfc3339();
    if !store::update(&db, &user).await? {
        return Err(Problem::not_found("user", &id));
    }
    Ok(Json(user))
}

async fn delete_user(
    State(db): State<Database>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id = parse_id("id", &id)?.to_string();
    caller.require_owner(&id, "user", &id)?;
    if store::delete(&db, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found("user", &id))
    }
}

/// The OpenAPI 3.1 description served at `/openapi.json`.
pub fn openapi() -> serde_json::Value {
    serde_json::from_str(include_str!("../openapi.json")).expect("openapi.json is valid JSON")
}
