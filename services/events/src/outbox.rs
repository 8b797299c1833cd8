//! The outbox: each event is a row written by [`append`] inside the transaction that makes the
//! change, so the change and its event commit together or not at all. The relay reads what is
//! not yet published, marks rows published once the stream acknowledged them, and prunes them
//! later.
//!
//! Order within an aggregate is what consumers rely on. [`append`] numbers an aggregate's events
//! from one `event_sequences` row it updates in the same transaction: two transactions changing
//! the same aggregate queue on that row (PostgreSQL's row lock; SQLite has one writer), so a later
//! event is never visible before an earlier one, and its `created_ms` is never less than the
//! previous one's even if the replicas' clocks differ. Across aggregates nothing is promised.

use std::sync::LazyLock;

use sqlx::{Any, AnyConnection, AnyPool, Row, Transaction};
use tokio::sync::Notify;

use crate::types::Event;

/// Wakes this process's relay when an event was committed here, so it need not wait for its
/// next poll (events committed by other replicas are found by polling).
static COMMITTED: LazyLock<Notify> = LazyLock::new(Notify::new);

/// One event waiting in (or published from) the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct OutboxRow {
    pub id: String,
    pub aggregate: String,
    pub sequence: i64,
    pub event_type: String,
    pub time: String,
    pub created_ms: i64,
    pub traceparent: Option<String>,
    pub data: String,
}

/// Milliseconds since the Unix epoch on this machine's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Writes `event` into the outbox of the transaction `conn` is in. Call it after the change's
/// own statements succeeded (a rolled-back transaction takes its events with it), and commit
/// with [`commit`].
pub async fn append(conn: &mut AnyConnection, event: &Event) -> Result<(), sqlx::Error> {
    let now = now_ms();
    let numbered = sqlx::query(
        "INSERT INTO event_sequences (aggregate, sequence, last_ms) VALUES ($1, 1, $2) \
         ON CONFLICT (aggregate) DO UPDATE SET sequence = event_sequences.sequence + 1, \
         last_ms = CASE WHEN event_sequences.last_ms > excluded.last_ms \
                        THEN event_sequences.last_ms ELSE excluded.last_ms END \
         RETURNING sequence, last_ms",
    )
    .bind(&event.subject)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    let sequence: i64 = numbered.try_get("sequence")?;
    let created_ms: i64 = numbered.try_get("last_ms")?;
    sqlx::query(
        "INSERT INTO outbox (id, aggregate, sequence, event_type, event_time, created_ms, traceparent, data) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(&event.subject)
    .bind(sequence)
    .bind(event.kind.as_str())
    .bind(jiff::Timestamp::now().to_string())
    .bind(created_ms)
    .bind(crate::trace::current_traceparent())
    .bind(event.data.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Forgets an aggregate's event numbering after its last event (a deleted user), so that
/// creating and deleting does not leave a row behind each time. Its events stay in the outbox
/// until published and pruned.
pub async fn forget_aggregate(
    conn: &mut AnyConnection,
    aggregate: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM event_sequences WHERE aggregate = $1")
        .bind(aggregate)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Commits a transaction that appended events, then wakes the relay.
pub async fn commit(tx: Transaction<'static, Any>) -> Result<(), sqlx::Error> {
    tx.commit().await?;
    COMMITTED.notify_one();
    Ok(())
}

/// Resolves when an event was committed in this process since the last call.
pub async fn committed() {
    COMMITTED.notified().await;
}

const ROW_COLUMNS: &str =
    "id, aggregate, sequence, event_type, event_time, created_ms, traceparent, data";

fn from_row(row: &sqlx::any::AnyRow) -> Result<OutboxRow, sqlx::Error> {
    Ok(OutboxRow {
        id: row.try_get("id")?,
        aggregate: row.try_get("aggregate")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        time: row.try_get("event_time")?,
        created_ms: row.try_get("created_ms")?,
        traceparent: row.try_get("traceparent")?,
        data: row.try_get("data")?,
    })
}

/// The next event to publish of each aggregate that has one waiting (its unpublished event with
/// the lowest sequence), oldest first, at most `limit`: one per aggregate, so that when one is
/// not acknowledged no later event of its aggregate can already be in the stream ahead of it,
/// and an aggregate with many waiting events delays no other.
pub async fn next_of_each_aggregate(
    pool: &AnyPool,
    limit: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {ROW_COLUMNS} FROM outbox o WHERE published_ms IS NULL AND NOT EXISTS \
         (SELECT 1 FROM outbox e WHERE e.aggregate = o.aggregate AND e.published_ms IS NULL \
          AND e.sequence < o.sequence) \
         ORDER BY created_ms, aggregate, sequence LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(from_row)
    .collect()
}

/// Every event in the outbox, published or not, oldest first (for audits and tests).
pub async fn all(pool: &AnyPool) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT {ROW_COLUMNS} FROM outbox ORDER BY created_ms, aggregate, sequence"
    ))
    .fetch_all(pool)
    .await?
    .iter()
    .map(from_row)
    .collect()
}

/// Marks these events published (the stream acknowledged each).
pub async fn mark_published(pool: &AnyPool, ids: &[&str], now_ms: i64) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let placeholders: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
    let sql = format!(
        "UPDATE outbox SET published_ms = $1 WHERE published_ms IS NULL AND id IN ({})",
        placeholders.join(", ")
    );
    let mut query = sqlx::query(&sql).bind(now_ms);
    for id in ids {
        query = query.bind(*id);
    }
    query.execute(pool).await?;
    Ok(())
}

/// Deletes up to `limit` events published before `before_ms` (and, with `unpublished_too`,
/// unpublished ones created before it: for a service with no broker to publish to). Returns how
/// many went.
pub async fn prune(
    pool: &AnyPool,
    before_ms: i64,
    unpublished_too: bool,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let condition = if unpublished_too {
        "(published_ms < $1 OR (published_ms IS NULL AND created_ms < $1))"
    } else {
        "published_ms < $1"
    };
    let done = sqlx::query(&format!(
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE {condition} LIMIT $2)"
    ))
    .bind(before_ms)
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// How many events wait, and when the oldest of them was written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backlog {
    pub events: i64,
    pub oldest_created_ms: Option<i64>,
}

pub async fn backlog(pool: &AnyPool) -> Result<Backlog, sqlx::Error> {
    let row = sqlx::query(
        "SELECT COUNT(*) AS n, MIN(created_ms) AS oldest FROM outbox WHERE published_ms IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(Backlog {
        events: row.try_get("n")?,
        oldest_created_ms: row.try_get("oldest")?,
    })
}
