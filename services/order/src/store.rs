//! Orders in the database. Status changes are conditional on the status read (`WHERE status =`),
//! so two concurrent changes cannot both win.

use msa_events::types::{OrderData, OrderLineData};
use msa_events::{Event, EventType};
use msa_service_kit::db::{Database, is_unique_violation};
use msa_service_kit::page::{Page, PageRequest};
use msa_service_kit::{Problem, format_cents, now_rfc3339};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::idempotency::{self, Claim};
use crate::model::{Order, OrderLine, Status};

const COLUMNS: &str = "id, user_id, status, total_cents, failure_reason, created_at, updated_at";

async fn write_lines(
    conn: &mut AnyConnection,
    order_id: &str,
    lines: &[OrderLine],
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM order_items WHERE order_id = $1")
        .bind(order_id)
        .execute(&mut *conn)
        .await?;
    for (line, item) in lines.iter().enumerate() {
        sqlx::query(
            "INSERT INTO order_items (order_id, line, product_id, quantity, unit_price_cents) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(order_id)
        .bind(line as i64)
        .bind(&item.product_id)
        .bind(item.quantity)
        .bind(item.unit_price_cents)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The event of the order's new status, carrying the order as this transaction leaves it.
async fn announce(conn: &mut AnyConnection, id: &str) -> Result<(), Problem> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM orders WHERE id = $1"))
        .bind(id)
        .fetch_one(&mut *conn)
        .await?;
    let order = with_lines(conn, &row).await?;
    let kind = match order.status {
        Status::Pending => EventType::OrderPlaced,
        Status::Confirmed => EventType::OrderConfirmed,
        Status::Failed => EventType::OrderFailed,
        Status::Cancelled => EventType::OrderCancelled,
        Status::Shipped => EventType::OrderShipped,
        Status::Delivered => EventType::OrderDelivered,
    };
    let data = OrderData {
        id: order.id,
        user_id: order.user_id,
        status: order.status.as_str().to_owned(),
        items: order
            .items
            .into_iter()
            .map(|line| OrderLineData {
                product_id: line.product_id,
                quantity: line.quantity,
                unit_price_cents: line.unit_price_cents,
            })
            .collect(),
        total_cents: order.total_cents,
        failure_reason: order.failure_reason,
        created_at: order.created_at,
    };
    msa_events::append(conn, &Event::order(kind, &data)).await?;
    Ok(())
}

/// Milliseconds since the Unix epoch, as `created_at_ms` and the leases store time.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Records a new order and its lines.
pub async fn insert(db: &Database, order: &Order) -> Result<(), Problem> {
    insert_claimed(db, order, None).await.map(drop)
}

/// Records a new order, its lines and, in the same transaction, the idempotency key it was
/// sent with; false (and nothing recorded) when that key is already taken (a concurrent
/// request with the same key recorded its order first).
pub async fn insert_claimed(
    db: &Database,
    order: &Order,
    claim: Option<&Claim>,
) -> Result<bool, Problem> {
    let mut tx = db.begin_write().await?;
    sqlx::query(
        "INSERT INTO orders (id, user_id, status, total_cents, failure_reason, created_at, updated_at, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&order.id)
    .bind(&order.user_id)
    .bind(order.status.as_str())
    .bind(order.total_cents)
    .bind(order.failure_reason.clone())
    .bind(&order.created_at)
    .bind(&order.updated_at)
    .bind(now_ms())
    .execute(&mut *tx)
    .await?;
    write_lines(&mut tx, &order.id, &order.items).await?;
    if let Some(claim) = claim {
        match idempotency::insert(&mut tx, claim, &order.id).await {
            Ok(()) => {}
            Err(error) if is_unique_violation(&error) => {
                tx.rollback().await?;
                return Ok(false);
            }
            Err(error) => return Err(error.into()),
        }
    }
    announce(&mut tx, &order.id).await?;
    msa_events::commit(tx).await?;
    Ok(true)
}

/// pending → confirmed, with the lines at the prices the reservation charged; false (and
/// nothing changed) when the order is no longer pending (a cancellation came first).
pub async fn confirm(
    db: &Database,
    id: &str,
    lines: &[OrderLine],
    total_cents: i64,
) -> Result<bool, Problem> {
    let mut tx = db.begin_write().await?;
    let done = sqlx::query("UPDATE orders SET status = 'confirmed', total_cents = $1, updated_at = $2 WHERE id = $3 AND status = 'pending'")
        .bind(total_cents)
        .bind(now_rfc3339())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(false);
    }
    write_lines(&mut tx, id, lines).await?;
    announce(&mut tx, id).await?;
    msa_events::commit(tx).await?;
    Ok(true)
}

/// pending → failed, with the reason; `release_pending` when stock may still be held. False
/// when the order is no longer pending.
pub async fn fail(
    db: &Database,
    id: &str,
    reason: &str,
    release_pending: bool,
) -> Result<bool, Problem> {
    let mut tx = db.begin_write().await?;
    let done = sqlx::query(
        "UPDATE orders SET status = 'failed', failure_reason = $1, release_pending = $2, updated_at = $3 \
         WHERE id = $4 AND status = 'pending'",
    )
    .bind(reason)
    .bind(i64::from(release_pending))
    .bind(now_rfc3339())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    announce(&mut tx, id).await?;
    msa_events::commit(tx).await?;
    Ok(true)
}

/// `from` → `to` if the order is still in `from`; false when it changed meanwhile.
pub async fn transition(
    db: &Database,
    id: &str,
    from: Status,
    to: Status,
    release_pending: bool,
) -> Result<bool, Problem> {
    let mut tx = db.begin_write().await?;
    let done = sqlx::query("UPDATE orders SET status = $1, release_pending = $2, updated_at = $3 WHERE id = $4 AND status = $5")
        .bind(to.as_str())
        .bind(i64::from(release_pending))
        .bind(now_rfc3339())
        .bind(id)
        .bind(from.as_str())
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    announce(&mut tx, id).await?;
    msa_events::commit(tx).await?;
    Ok(true)
}

/// Orders the recoverer must drive to their end, oldest first: pending since
/// `cutoff_ms` or earlier, and failed or cancelled ones whose stock still has to be given back.
pub async fn overdue(db: &Database, cutoff_ms: i64, limit: i64) -> Result<Vec<String>, Problem> {
    let rows = sqlx::query(
        "SELECT id FROM orders WHERE (status = 'pending' AND created_at_ms <= $1) OR release_pending = 1 \
         ORDER BY created_at_ms, id LIMIT $2",
    )
    .bind(cutoff_ms)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get("id"))
        .collect::<Result<_, _>>()?)
}

/// The stock of this failed or cancelled order is back.
pub async fn release_done(db: &Database, id: &str) -> Result<(), Problem> {
    sqlx::query("UPDATE orders SET release_pending = 0 WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}

/// The order and whether its stock still has to be given back.
pub async fn state(db: &Database, id: &str) -> Result<Option<(Order, bool)>, Problem> {
    let mut conn = db.pool.acquire().await?;
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS}, release_pending FROM orders WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => {
            let release_pending: i64 = row.try_get("release_pending")?;
            Ok(Some((
                with_lines(&mut conn, &row).await?,
                release_pending != 0,
            )))
        }
        None => Ok(None),
    }
}

pub async fn get(db: &Database, id: &str) -> Result<Option<Order>, Problem> {
    let mut conn = db.pool.acquire().await?;
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM orders WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => Ok(Some(with_lines(&mut conn, &row).await?)),
        None => Ok(None),
    }
}

pub async fn list_by_user(
    db: &Database,
    user_id: &str,
    page: PageRequest,
) -> Result<Page<Order>, Problem> {
    let mut conn = db.pool.acquire().await?;
    let total: i64 = sqlx::query("SELECT COUNT(*) AS n FROM orders WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&mut *conn)
        .await?
        .try_get("n")?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM orders WHERE user_id = $1 ORDER BY created_at_ms, created_at, id LIMIT $2 OFFSET $3"
    ))
    .bind(user_id)
    .bind(page.limit)
    .bind(page.offset)
    .fetch_all(&mut *conn)
    .await?;
    let mut orders = Vec::with_capacity(rows.len());
    for row in &rows {
        orders.push(with_lines(&mut conn, row).await?);
    }
    Ok(Page::new(orders, page, total))
}

async fn with_lines(conn: &mut AnyConnection, row: &AnyRow) -> Result<Order, Problem> {
    let id: String = row.try_get("id")?;
    let lines = sqlx::query("SELECT product_id, quantity, unit_price_cents FROM order_items WHERE order_id = $1 ORDER BY line")
        .bind(&id)
        .fetch_all(&mut *conn)
        .await?;
    let items = lines
        .iter()
        .map(|line| {
            let quantity: i64 = line.try_get("quantity")?;
            let unit_price_cents: i64 = line.try_get("unit_price_cents")?;
            // Bounded when written; checked anyway, since the rows could come from elsewhere.
            let line_total_cents = quantity.checked_mul(unit_price_cents).ok_or_else(|| {
                sqlx::Error::Decode(format!("order {id}: a line total out of range").into())
            })?;
            Ok(OrderLine {
                product_id: line.try_get("product_id")?,
                quantity,
                unit_price_cents,
                unit_price: format_cents(unit_price_cents),
                line_total_cents,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let status: String = row.try_get("status")?;
    let total_cents: i64 = row.try_get("total_cents")?;
    Ok(Order {
        id,
        user_id: row.try_get("user_id")?,
        status: Status::parse(&status)?,
        items,
        total_cents,
        total: format_cents(total_cents),
        failure_reason: row.try_get("failure_reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}
