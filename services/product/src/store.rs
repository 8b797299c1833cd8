//! Products and reservations in the database. A reservation takes stock for every line in one
//! transaction with a conditional decrement (`stock >= quantity`), so stock never goes negative
//! and concurrent orders cannot oversell; any failure rolls everything back.

use msa_events::types::{PriceChanged, ProductData, StockChanged, StockReason};
use msa_events::{Event, EventType};
use msa_service_kit::db::Database;
use msa_service_kit::page::{Page, PageRequest};
use msa_service_kit::{Problem, now_rfc3339};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::model::{
    Product, Reservation, ReservationItem, ReservedItem, format_cents, reservation_total,
    returned_stock,
};
use msa_service_kit::db::is_unique_violation;

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

fn data(product: &Product) -> ProductData {
    ProductData {
        id: product.id.clone(),
        name: product.name.clone(),
        description: product.description.clone(),
        price_cents: product.price_cents,
        stock: product.stock,
    }
}

pub async fn insert(db: &Database, product: &Product) -> Result<(), Problem> {
    let mut tx = db.begin_write().await?;
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
    .execute(&mut *tx)
    .await?;
    msa_events::append(
        &mut tx,
        &Event::product(EventType::ProductCreated, &data(product)),
    )
    .await?;
    msa_events::commit(tx).await?;
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
    let mut tx = db.begin_write().await?;
    let Some(previous) = locked_stock(&mut tx, id).await? else {
        return Ok(None);
    };
    if previous == stock {
        // Nothing changes: no event says otherwise.
        tx.rollback().await?;
        return get(db, id).await;
    }
    sqlx::query("UPDATE products SET stock = $1 WHERE id = $2")
        .bind(stock)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    stock_changed(&mut tx, id, previous, stock, StockReason::Set, None).await?;
    msa_events::commit(tx).await?;
    get(db, id).await
}

/// What `PATCH /products/{id}` changes: only the fields present.
#[derive(Debug, Default)]
pub struct ProductChange {
    pub name: Option<String>,
    pub description: Option<String>,
    pub price_cents: Option<i64>,
}

/// Changes a product's name, description or price, with `product.updated` when the name or
/// description changed and `product.price_changed` when the price did; `None` when the product
/// does not exist.
pub async fn update(
    db: &Database,
    id: &str,
    change: &ProductChange,
) -> Result<Option<Product>, Problem> {
    let mut tx = db.begin_write().await?;
    if locked_stock(&mut tx, id).await?.is_none() {
        return Ok(None);
    }
    let before = read(&mut tx, id).await?;
    let mut after = before.clone();
    if let Some(name) = &change.name {
        after.name.clone_from(name);
    }
    if let Some(description) = &change.description {
        after.description.clone_from(description);
    }
    if let Some(price_cents) = change.price_cents {
        after.price_cents = price_cents;
        after.price = format_cents(price_cents);
    }
    sqlx::query("UPDATE products SET name = $1, description = $2, price_cents = $3 WHERE id = $4")
        .bind(&after.name)
        .bind(&after.description)
        .bind(after.price_cents)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if (&after.name, &after.description) != (&before.name, &before.description) {
        msa_events::append(
            &mut tx,
            &Event::product(EventType::ProductUpdated, &data(&after)),
        )
        .await?;
    }
    if after.price_cents != before.price_cents {
        let change = PriceChanged {
            id: id.to_owned(),
            previous_price_cents: before.price_cents,
            price_cents: after.price_cents,
        };
        msa_events::append(&mut tx, &Event::price_changed(&change)).await?;
    }
    let product = read(&mut tx, id).await?;
    msa_events::commit(tx).await?;
    Ok(Some(product))
}

async fn read(conn: &mut AnyConnection, id: &str) -> Result<Product, Problem> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM products WHERE id = $1"))
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    Ok(product_from_row(&row)?)
}

/// Locks the product's row (a write of `updated_at`, which the change sets anyway) and reads
/// its stock, so what is read is what the change replaces even under concurrent reservations on
/// PostgreSQL. `None` when there is no such product.
async fn locked_stock(conn: &mut AnyConnection, id: &str) -> Result<Option<i64>, Problem> {
    let locked = sqlx::query("UPDATE products SET updated_at = $1 WHERE id = $2")
        .bind(now_rfc3339())
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if locked.rows_affected() == 0 {
        return Ok(None);
    }
    let stock: i64 = sqlx::query("SELECT stock FROM products WHERE id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await?
        .try_get("stock")?;
    Ok(Some(stock))
}

async fn stock_changed(
    conn: &mut AnyConnection,
    id: &str,
    previous_stock: i64,
    stock: i64,
    reason: StockReason,
    reservation_id: Option<&str>,
) -> Result<(), sqlx::Error> {
    let change = StockChanged {
        id: id.to_owned(),
        previous_stock,
        stock,
        reason,
        reservation_id: reservation_id.map(str::to_owned),
    };
    msa_events::append(conn, &Event::stock_changed(&change)).await
}

/// What became of a reservation request.
pub enum Reserved {
    /// Stock was taken now.
    Created(Reservation),
    /// The same id was reserved before with the same lines: nothing changed.
    Existing(Reservation),
}

/// Milliseconds since the Unix epoch (when a reservation was taken, for its expiry).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
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
    let inserted = sqlx::query("INSERT INTO reservations (id, state, created_at, updated_at, held_since_ms) VALUES ($1, 'reserved', $2, $2, $3)")
        .bind(id)
        .bind(&now)
        .bind(now_ms())
        .execute(&mut *tx)
        .await;
    if let Err(error) = inserted {
        tx.rollback().await?;
        // On PostgreSQL a concurrent request under the same id (a retry, or a release that
        // got there first) inserted it meanwhile: answer as for a repeat.
        if is_unique_violation(&error) {
            let existing = get_reservation(db, id)
                .await?
                .ok_or_else(|| Problem::from(error))?;
            return same_request(existing, items).map(Reserved::Existing);
        }
        return Err(error.into());
    }
    for (i, item) in items.iter().enumerate() {
        let taken = sqlx::query(
            "UPDATE products SET stock = stock - $1, updated_at = $2 WHERE id = $3 AND stock >= $1 \
             RETURNING stock",
        )
        .bind(item.quantity)
        .bind(&now)
        .bind(&item.product_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(taken) = taken else {
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
        };
        let left: i64 = taken.try_get("stock")?;
        // Both within the stock's range (checked by the database), so the sum cannot overflow.
        let previous = left.saturating_add(item.quantity);
        stock_changed(
            &mut tx,
            &item.product_id,
            previous,
            left,
            StockReason::Reserved,
            Some(id),
        )
        .await?;
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
        return Err(released(&existing.id));
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

fn released(id: &str) -> Problem {
    Problem::conflict(
        "reservation-released",
        format!(
            "reservation {id} was released (given back or expired); its stock is no longer held: reserve under a new id"
        ),
    )
}

/// Moves reservation `id` from state `from` to `to` if it is in `from` now (and, for expiry,
/// held since `held_before_ms` or earlier): one conditional UPDATE, so of two transactions
/// racing for the same move (two replicas, a release and an expiry) exactly one wins, on
/// SQLite and on PostgreSQL alike. True when this one did.
async fn move_state(
    conn: &mut AnyConnection,
    id: &str,
    from: &str,
    to: &str,
    held_before_ms: i64,
) -> Result<bool, Problem> {
    let done = sqlx::query(
        "UPDATE reservations SET state = $1, updated_at = $2 \
         WHERE id = $3 AND state = $4 AND held_since_ms <= $5",
    )
    .bind(to)
    .bind(now_rfc3339())
    .bind(id)
    .bind(from)
    .bind(held_before_ms)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The saga's last step: reserved → committed. From then on only [`return_committed`] (for a
/// cancelled or failed order) gives the stock back; a release is refused.
pub async fn commit(db: &Database, id: &str) -> Result<Reservation, Problem> {
    let mut tx = db.begin_write().await?;
    if !move_state(&mut tx, id, "reserved", "committed", i64::MAX).await? {
        let existing = load_reservation(&mut tx, id)
            .await?
            .ok_or_else(|| Problem::not_found("reservation", id))?;
        if existing.state != "committed" {
            return Err(released(id));
        }
    }
    finish(tx, id).await
}

/// Stock given back by a release or a return: the reservation, and the units that did not fit
/// under the stock's maximum.
pub struct GivenBack {
    pub reservation: Reservation,
    pub clamped: Vec<Clamped>,
}

/// Units of one product a give-back could not add (see [`returned_stock`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clamped {
    pub product_id: String,
    pub units: i64,
}

/// The saga's compensation: gives a held reservation's stock back once. Releasing an id never
/// reserved records it as released, so a reservation that arrives late (after its order gave
/// up) is refused instead of leaking stock. A committed reservation is sold: 409.
pub async fn release(db: &Database, id: &str) -> Result<GivenBack, Problem> {
    let mut tx = db.begin_write().await?;
    if move_state(&mut tx, id, "reserved", "released", i64::MAX).await? {
        let clamped = give_back(&mut tx, id, StockReason::Released).await?;
        let reservation = finish(tx, id).await?;
        return Ok(GivenBack {
            reservation,
            clamped,
        });
    }
    match load_reservation(&mut tx, id).await? {
        Some(existing) if existing.state == "committed" => Err(Problem::conflict(
            "reservation-committed",
            format!(
                "reservation {id} belongs to a confirmed order; cancel the order to give its stock back"
            ),
        )),
        Some(_) => Ok(GivenBack {
            reservation: finish(tx, id).await?,
            clamped: Vec::new(),
        }),
        None => {
            let inserted = sqlx::query("INSERT INTO reservations (id, state, created_at, updated_at, held_since_ms) VALUES ($1, 'released', $2, $2, $3)")
                .bind(id)
                .bind(now_rfc3339())
                .bind(now_ms())
                .execute(&mut *tx)
                .await;
            match inserted {
                Ok(_) => Ok(GivenBack {
                    reservation: finish(tx, id).await?,
                    clamped: Vec::new(),
                }),
                // A reservation under this id arrived meanwhile (PostgreSQL): release that.
                Err(error) if is_unique_violation(&error) => {
                    tx.rollback().await?;
                    Box::pin(release(db, id)).await
                }
                Err(error) => Err(error.into()),
            }
        }
    }
}

/// The order was cancelled or failed after its stock was committed: the stock comes back,
/// exactly once (repeating it changes nothing). A reservation still held must be released
/// instead.
pub async fn return_committed(db: &Database, id: &str) -> Result<GivenBack, Problem> {
    let mut tx = db.begin_write().await?;
    if move_state(&mut tx, id, "committed", "released", i64::MAX).await? {
        let clamped = give_back(&mut tx, id, StockReason::Returned).await?;
        let reservation = finish(tx, id).await?;
        return Ok(GivenBack {
            reservation,
            clamped,
        });
    }
    let existing = load_reservation(&mut tx, id)
        .await?
        .ok_or_else(|| Problem::not_found("reservation", id))?;
    if existing.state != "released" {
        return Err(Problem::conflict(
            "reservation-not-committed",
            format!("reservation {id} is not committed; release it instead"),
        ));
    }
    Ok(GivenBack {
        reservation: finish(tx, id).await?,
        clamped: Vec::new(),
    })
}

/// What one expiry sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Expired {
    pub reservations: u64,
    pub clamped: Vec<Clamped>,
}

/// Releases every reservation held (neither committed nor released) since `cutoff_ms` or
/// earlier, giving its stock back in the same transaction as the state change. A reservation
/// taken before held times were recorded (0) is stamped `now_ms` first, so it gets a full TTL
/// from the upgrade. Safe on several replicas at once: each release is conditional.
pub async fn expire(db: &Database, now_ms: i64, cutoff_ms: i64) -> Result<Expired, Problem> {
    sqlx::query(
        "UPDATE reservations SET held_since_ms = $1 WHERE state = 'reserved' AND held_since_ms = 0",
    )
    .bind(now_ms)
    .execute(&db.pool)
    .await?;
    let ids: Vec<String> = sqlx::query(
        "SELECT id FROM reservations WHERE state = 'reserved' AND held_since_ms <= $1 \
         ORDER BY held_since_ms, id LIMIT 1000",
    )
    .bind(cutoff_ms)
    .fetch_all(&db.pool)
    .await?
    .iter()
    .map(|row| row.try_get("id"))
    .collect::<Result<_, _>>()?;
    let mut expired = Expired::default();
    for id in ids {
        let mut tx = db.begin_write().await?;
        if move_state(&mut tx, &id, "reserved", "released", cutoff_ms).await? {
            expired
                .clamped
                .extend(give_back(&mut tx, &id, StockReason::Expired).await?);
            msa_events::commit(tx).await?;
            expired.reservations += 1;
            tracing::info!(reservation = %id, "reservation expired; its stock is back");
        } else {
            tx.rollback().await?;
        }
    }
    Ok(expired)
}

/// Adds reservation `id`'s quantities back to stock, each bounded by the stock's maximum
/// ([`returned_stock`]); returns what did not fit. Each product row is locked (a no-op
/// write) before it is read, so the sum is exact under concurrent reservations on PostgreSQL.
async fn give_back(
    conn: &mut AnyConnection,
    id: &str,
    reason: StockReason,
) -> Result<Vec<Clamped>, Problem> {
    let reservation = load_reservation(conn, id)
        .await?
        .ok_or_else(|| Problem::not_found("reservation", id))?;
    let mut clamped = Vec::new();
    for item in &reservation.items {
        let previous = locked_stock(conn, &item.product_id)
            .await?
            .ok_or_else(|| Problem::not_found("product", &item.product_id))?;
        let (stock, dropped) = returned_stock(previous, item.quantity);
        sqlx::query("UPDATE products SET stock = $1 WHERE id = $2")
            .bind(stock)
            .bind(&item.product_id)
            .execute(&mut *conn)
            .await?;
        stock_changed(conn, &item.product_id, previous, stock, reason, Some(id)).await?;
        if dropped > 0 {
            tracing::warn!(reservation = id, product = %item.product_id, units = dropped, "stock given back past its maximum; the excess was dropped");
            clamped.push(Clamped {
                product_id: item.product_id.clone(),
                units: dropped,
            });
        }
    }
    Ok(clamped)
}

/// Reads the reservation as the transaction left it, then commits.
async fn finish(
    mut tx: sqlx::Transaction<'static, sqlx::Any>,
    id: &str,
) -> Result<Reservation, Problem> {
    let reservation = load_reservation(&mut tx, id)
        .await?
        .ok_or_else(|| Problem::not_found("reservation", id))?;
    msa_events::commit(tx).await?;
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
