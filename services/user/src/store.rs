//! Users in the database. Every write is one transaction with its event in the outbox
//! (`msa_events`), so a failed request changes nothing and no change goes unannounced.

use msa_events::types::UserData;
use msa_events::{Event, EventType};
use msa_service_kit::Problem;
use msa_service_kit::db::{Database, is_unique_violation};
use msa_service_kit::page::{Page, PageRequest};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::model::User;

const COLUMNS: &str = "id, name, email, created_at, updated_at";

fn from_row(row: &AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        email: row.try_get("email")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn email_taken(email: &str) -> Problem {
    Problem::conflict(
        "email-taken",
        format!("a user with email {email} already exists"),
    )
    .with("field", "email")
}

fn data(user: &User) -> UserData {
    UserData {
        id: user.id.clone(),
        name: user.name.clone(),
        email: user.email.clone(),
    }
}

pub async fn insert(db: &Database, user: &User) -> Result<(), Problem> {
    let mut tx = db.begin_write().await?;
    let result = sqlx::query(
        "INSERT INTO users (id, name, email, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&user.id)
    .bind(&user.name)
    .bind(&user.email)
    .bind(&user.created_at)
    .bind(&user.updated_at)
    .execute(&mut *tx)
    .await;
    match result {
        Ok(_) => {}
        Err(e) if is_unique_violation(&e) => return Err(email_taken(&user.email)),
        Err(e) => return Err(e.into()),
    }
    msa_events::append(
        &mut tx,
        &Event::user(EventType::UserRegistered, &data(user)),
    )
    .await?;
    msa_events::commit(tx).await?;
    Ok(())
}

pub async fn get(db: &Database, id: &str) -> Result<Option<User>, Problem> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM users WHERE id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

pub async fn list(db: &Database, page: PageRequest) -> Result<Page<User>, Problem> {
    let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM users")
        .fetch_one(&db.pool)
        .await?
        .try_get("n")?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM users ORDER BY created_at, id LIMIT $1 OFFSET $2"
    ))
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&db.pool)
    .await?;
    let items = rows.iter().map(from_row).collect::<Result<_, _>>()?;
    Ok(Page::new(items, page, total))
}

/// Writes the user's name and email; `None` when the user does not exist.
pub async fn update(db: &Database, user: &User) -> Result<bool, Problem> {
    let mut tx = db.begin_write().await?;
    let result =
        sqlx::query("UPDATE users SET name = $1, email = $2, updated_at = $3 WHERE id = $4")
            .bind(&user.name)
            .bind(&user.email)
            .bind(&user.updated_at)
            .bind(&user.id)
            .execute(&mut *tx)
            .await;
    match result {
        Ok(done) if done.rows_affected() == 1 => {}
        Ok(_) => return Ok(false),
        Err(e) if is_unique_violation(&e) => return Err(email_taken(&user.email)),
        Err(e) => return Err(e.into()),
    }
    msa_events::append(&mut tx, &Event::user(EventType::UserUpdated, &data(user))).await?;
    msa_events::commit(tx).await?;
    Ok(true)
}

pub async fn delete(db: &Database, id: &str) -> Result<bool, Problem> {
    let mut tx = db.begin_write().await?;
    let done = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    msa_events::append(&mut tx, &Event::user_deleted(id)).await?;
    // The last event of this user (ids are never reused): its numbering need not be kept.
    msa_events::outbox::forget_aggregate(&mut tx, id).await?;
    msa_events::commit(tx).await?;
    Ok(true)
}
