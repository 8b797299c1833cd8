//! Products and reservations in the database. A reservation takes stock for every line in one
//! transaction with a conditional decrement (`stock >= quantity`), so stock never goes negative
//! and concurrent orders cannot oversell; any failure rolls everything back.

use msa_service_kit::db::Database;
use msa_service_kit::page::{Page, PageRequest};
use msa_service_kit::{Problem, now_rfc3339};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::model::{
    Product, Reservation, ReservationItem, ReservedItem, format_cents, reservation_total,
};

const COLUMNS: &str = "id, name, description, price_cents, stock, created_at, updated_at";

fn product_from_row(row: &AnyRow) -> Result<Product, sqlx::Error> {
    let price_cents: i64 = row.try_get("price_cents")?;
    Ok(Product {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        price: format_cents(price_cents),
        price_cents,
        stock: row.try_get("stock")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

pub async fn insert(db: &Database, product: &Product) -> Result<(), Problem> {
    sqlx::query(
        "INSERT INTO products (id, name, description, price_cents, stock, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&product.id)
    .bind(&product.name)
    .bind(&product.description)
    .bind(product.price_cents)
    .bind(product.stock)
    .bind(&product.created_at)
    .bind(&product.updated_at)
    .execute(&db.pool)
    .await?;
    Ok(())
}

pub async fn get(db: &Database, id: &str) -> Result<Option<Product>, Problem> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM products WHERE id = $1"))
        .bind(id)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.as_ref().map(product_from_row).transpose()?)
}

pub async fn list(db: &Database, page: PageRequest) -> Result<Page<Product>, Problem> {
    let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM products")
        .fetch_one(&db.pool)
        .await?
        .try_get("n")?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM products ORDER BY created_at, id LIMIT $1 OFFSET $2"
    ))
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&db.pool)
    .await?;
    let items = rows
        .iter()
        .map(product_from_row)
        .collect::<Result<_, _>>()?;
    Ok(Page::new(items, page, total))
}

/// Sets the stock level; `None` when the product does not exist.
pub async fn set_stock(db: &Database, id: &str, stock: i64) -> Result<Option<Product>, Problem> {
    let done = sqlx::query("UPDATE products SET stock = $1, updated_at = $2 WHERE id = $3")
        .bind(stock)
        .bind(now_rfc3339())
        .bind(id)
        .execute(&db.pool)
        .await?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    get(db, id).await
}

/// What became of a reservation request.
pub enum Reserved {
    /// Stock was taken now.
    Created(Reservation),
    /// The same id was reserved before with the same lines: nothing changed.
    Existing(Reservation),
}

/// Reserves every line or none. `items` must be normalised (merged, sorted, quantities ≥ 1).
pub async fn reserve(
    db: &Database,
    id: &str,
    items: &[ReservationItem],
) -> Result<Reserved, Problem> {
    let mut tx = db.begin_write().await?;
    if let Some(existing) = load_reservation(&mut tx, id).await? {
        tx.rollback().await?;
        return same_request(existing, items).map(Reserved::Existing);
    }
    let now = now_rfc3339();
    sqlx::query("INSERT INTO reservations (id, state, created_at, updated_at) VALUES ($1, 'reserved', $2, $2)")
        .bind(id)
        .bind(&now)
        .execute(&mut *tx)
        .await?;
    for (i, item) in items.iter().enumerate() {
        let taken = sqlx::query(
            "UPDATE products SET stock = stock - $1, updated_at = $2 WHERE id = $3 AND stock >= $1",
        )
        .bind(item.quantity)
        .bind(&now)
        .bind(&item.product_id)
        .execute(&mut *tx)
        .await?;
        if taken.rows_affected() == 0 {
            let stock: Option<i64> = sqlx::query("SELECT stock FROM products WHERE id = $1")
                .bind(&item.product_id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|row| row.try_get("stock"))
                .transpose()?;
            tx.rollback().await?;
            return Err(match stock {
                None => Problem::invalid(
                    &format!("items[{i}].product_id"),
                    format!("no product with id {}", item.product_id),
                )
                .with("product_id", item.product_id.clone()),
                Some(available) => Problem::conflict(
                    "insufficient-stock",
                    format!(
                        "only {available} of product {} in stock, {} requested",
                        item.product_id, item.quantity
                    ),
                )
                .with("product_id", item.product_id.clone())
                .with("available", available)
                .with("requested", item.quantity),
            });
        }
        sqlx::query(
            "INSERT INTO reservation_items (reservation_id, product_id, quantity, unit_price_cents) \
             SELECT $1, id, $2, price_cents FROM products WHERE id = $3",
        )
        .bind(id)
        .bind(item.quantity)
        .bind(&item.product_id)
        .execute(&mut *tx)
        .await?;
    }
    // Reading it back checks the total: past the exact range it is a 422, and dropping the
    // transaction undoes everything above.
    let reservation = finish(tx, id).await?;
    Ok(Reserved::Created(reservation))
}

/// A retry must ask for the same lines; anything else is a client bug worth a 409.
fn same_request(existing: Reservation, items: &[ReservationItem]) -> Result<Reservation, Problem> {
    if existing.state == "released" {
        return Err(Problem::conflict(
            "reservation-released",
            format!(
                "reservation {} was released; reserve under a new id",
                existing.id
            ),
        ));
    }
    let lines: Vec<(&str, i64)> = existing
        .items
        .iter()
        .map(|i| (i.product_id.as_str(), i.quantity))
        .collect();
    let asked: Vec<(&str, i64)> = items
        .iter()
        .map(|i| (i.product_id.as_str(), i.quantity))
        .collect();
    if lines != asked {
        return Err(Problem::conflict(
            "reservation-mismatch",
            format!("reservation {} exists with different items", existing.id),
        ));
    }
    Ok(existing)
}

/// The saga's last step: reserved → committed. From then on only [`return_committed`] (the
/// order's cancellation) gives the stock back; a release is refused.
pub async fn commit(db: &Database, id: &str) -> Result<Reservation, Problem> {
    let mut tx = db.begin_write().await?;
    let existing = load_reservation(&mut tx, id)
        .await?
        .ok_or_else(|| Problem::not_found("reservation", id))?;
    match existing.state.as_str() {
        "committed" => {}
        "reserved" => set_state(&mut tx, id, "committed").await?,
        _ => {
            return Err(Problem::conflict(
                "reservation-released",
                format!("reservation {id} was released; its stock is no longer held"),
            ));
        }
    }
    finish(tx, id).await
}

/// The saga's compensation: gives a held reservation's stock back once. Releasing an id never
/// reserved records it as released, so a reservation that arrives late (after its order gave
/// up) is refused instead of leaking stock. A committed reservation is sold: 409.
pub async fn release(db: &Database, id: &str) -> Result<Reservation, Problem> {
    let mut tx = db.begin_write().await?;
    match load_reservation(&mut tx, id).await? {
        Some(existing) if existing.state == "released" => {}
        Some(existing) if existing.state == "committed" => {
            return Err(Problem::conflict(
                "reservation-committed",
                format!(
                    "reservation {id} belongs to a confirmed order; cancel the order to give its stock back"
                ),
            ));
        }
        Some(existing) => give_back(&mut tx, &existing).await?,
        None => {
            sqlx::query("INSERT INTO reservations (id, state, created_at, updated_at) VALUES ($1, 'released', $2, $2)")
                .bind(id)
                .bind(now_rfc3339())
                .execute(&mut *tx)
                .await?;
        }
    }
    finish(tx, id).await
}

/// A confirmed order was cancelled: its committed stock comes back, exactly once (repeating it
/// changes nothing). A reservation still held must be released instead.
pub async fn return_committed(db: &Database, id: &str) -> Result<Reservation, Problem> {
    let mut tx = db.begin_write().await?;
    let existing = load_reservation(&mut tx, id)
        .await?
        .ok_or_else(|| Problem::not_found("reservation", id))?;
    match existing.state.as_str() {
        "released" => {}
        "committed" => give_back(&mut tx, &existing).await?,
        _ => {
            return Err(Problem::conflict(
                "reservation-not-committed",
                format!("reservation {id} is not committed; release it instead"),
            ));
        }
    }
    finish(tx, id).await
}

/// Adds a reservation's quantities back to stock and marks it released.
async fn give_back(conn: &mut AnyConnection, reservation: &Reservation) -> Result<(), Problem> {
    let now = now_rfc3339();
    for item in &reservation.items {
        sqlx::query("UPDATE products SET stock = stock + $1, updated_at = $2 WHERE id = $3")
            .bind(item.quantity)
            .bind(&now)
            .bind(&item.product_id)
            .execute(&mut *conn)
            .await?;
    }
    set_state(conn, &reservation.id, "released").await
}

async fn set_state(conn: &mut AnyConnection, id: &str, state: &str) -> Result<(), Problem> {
    sqlx::query("UPDATE reservations SET state = $1, updated_at = $2 WHERE id = $3")
        .bind(state)
        .bind(now_rfc3339())
        .bind(id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Reads the reservation as the transaction left it, then commits.
async fn finish(
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    id: &str,
) -> Result<Reservation, Problem> {
    let reservation = load_reservation(&mut tx, id)
        .await?
        .ok_or_else(|| Problem::not_found("reservation", id))?;
    tx.commit().await?;
    Ok(reservation)
}

pub async fn get_reservation(db: &Database, id: &str) -> Result<Option<Reservation>, Problem> {
    let mut conn = db.pool.acquire().await?;
    load_reservation(&mut conn, id).await
}

async fn load_reservation(
    conn: &mut AnyConnection,
    id: &str,
) -> Result<Option<Reservation>, Problem> {
    let header =
        sqlx::query("SELECT id, state, created_at, updated_at FROM reservations WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(header) = header else {
        return Ok(None);
    };
    let items = sqlx::query(
        "SELECT product_id, quantity, unit_price_cents FROM reservation_items WHERE reservation_id = $1 ORDER BY product_id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(assemble(&header, &items)?))
}

fn assemble(header: &AnyRow, items: &[AnyRow]) -> Result<Reservation, Problem> {
    let items = items
        .iter()
        .map(|row| {
            Ok(ReservedItem {
                product_id: row.try_get("product_id")?,
                quantity: row.try_get("quantity")?,
                unit_price_cents: row.try_get("unit_price_cents")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    // Only `reserve` can meet a total past the exact range (it never commits one).
    let total_cents =
        reservation_total(&items).ok_or_else(msa_service_kit::money::total_too_large)?;
    Ok(Reservation {
        id: header.try_get("id")?,
        state: header.try_get("state")?,
        total_cents,
        items,
        created_at: header.try_get("created_at")?,
        updated_at: header.try_get("updated_at")?,
    })
}
