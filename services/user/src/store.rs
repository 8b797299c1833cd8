//! Users in the database. Every write is one statement or one transaction, so a failed request
//! changes nothing.

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

pub async fn insert(db: &Database, user: &User) -> Result<(), Problem> {
    let result = sqlx::query(
        "INSERT INTO users (id, name, email, created_at, updated_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&user.id)
    .bind(&user.name)
    .bind(&user.email)
    .bind(&user.created_at)
    .bind(&user.updated_at)
    .execute(&db.pool)
    .await;
    match result {
        Ok(_) => Ok(()),
        Err(e) if is_unique_violation(&e) => Err(email_taken(&user.email)),
        Err(e) => Err(e.into()),
    }
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
    let result =
        sqlx::query("UPDATE users SET name = $1, email = $2, updated_at = $3 WHERE id = $4")
            .bind(&user.name)
            .bind(&user.email)
            .bind(&user.updated_at)
            .bind(&user.id)
            .execute(&db.pool)
            .await;
    match result {
        Ok(done) => Ok(done.rows_affected() == 1),
        Err(e) if is_unique_violation(&e) => Err(email_taken(&user.email)),
        Err(e) => Err(e.into()),
    }
}

pub async fn delete(db: &Database, id: &str) -> Result<bool, Problem> {
    let done = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(done.rows_affected() == 1)
}
