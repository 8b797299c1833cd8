//! A lease in the database, so a job runs on one replica at a time: whoever holds the row's
//! lease (its id in `holder`, `expires_at_ms` in the future) may run; taking, renewing and
//! giving it up are single conditional UPDATEs, atomic on SQLite and PostgreSQL alike, so two
//! replicas can never both hold it — no process-local flag, no luck. Times are each replica's
//! wall clock in milliseconds: clocks may differ by less than a lease's length without harm.
//! Each service's migrations create the `leases` table and the rows of its jobs.

use crate::Problem;
use crate::db::Database;

/// Takes (or renews) the lease `name` for `holder` until `now_ms + for_ms`, when it is free,
/// expired, or already `holder`'s. True when `holder` holds it now.
pub async fn acquire(
    db: &Database,
    name: &str,
    holder: &str,
    now_ms: i64,
    for_ms: i64,
) -> Result<bool, Problem> {
    let done = sqlx::query(
        "UPDATE leases SET holder = $1, expires_at_ms = $2 \
         WHERE name = $3 AND (holder = $1 OR expires_at_ms <= $4)",
    )
    .bind(holder)
    .bind(now_ms.saturating_add(for_ms))
    .bind(name)
    .bind(now_ms)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Gives the lease up, if `holder` holds it, so another replica need not wait for it to expire.
pub async fn release(db: &Database, name: &str, holder: &str) -> Result<(), Problem> {
    sqlx::query("UPDATE leases SET expires_at_ms = 0 WHERE name = $1 AND holder = $2")
        .bind(name)
        .bind(holder)
        .execute(&db.pool)
        .await?;
    Ok(())
}
