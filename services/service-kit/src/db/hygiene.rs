//! A pooled connection is never handed out inside a transaction.
//!
//! sqlx 0.8.6 cannot always end a transaction whose future was dropped: on SQLite, `begin_with`
//! awaits once more after `BEGIN IMMEDIATE` succeeded (it checks the connection is in a
//! transaction), so a caller cancelled at that point leaves no `Transaction` to roll back, a
//! transaction depth of 1, and the write lock held — every later `begin_with` on that connection
//! fails ("attempted to call begin_with at non-zero transaction depth") and every other
//! connection waits out its busy timeout. On PostgreSQL, `begin` counts the transaction only
//! after the server answered, so a caller cancelled during that round trip leaves the server in
//! a transaction sqlx does not know about, and the next borrower's statements run inside it
//! (transact-rs/sqlx issues 3932 and 4385, fixed upstream in 0.9.0 and 0.9.1).
//!
//! So the pool checks each connection twice, and closes one found inside a transaction instead
//! of reusing it, with a warning and a count in `<component>_db_connections_discarded_total`:
//!
//! - On release (`after_release`), as sqlx sees it (its transaction depth) and as the database
//!   sees it: SQLite answers `ROLLBACK` with "no transaction is active" when there is none (and
//!   ends one that was left open); on PostgreSQL `now()` (the transaction's start) equals
//!   `statement_timestamp()` only in a transaction's first statement, so outside an explicit
//!   transaction. The database is asked first: a `Transaction` dropped unfinished queues its
//!   `ROLLBACK` on the connection (SQLite's worker lowers the depth only when it runs it), and the
//!   check, queued behind it, sees the connection after it.
//! - On acquire (`before_acquire`), sqlx's depth only, which costs nothing.
//!
//! In what order sqlx 0.8.6 runs these (sqlx-core `pool/connection.rs`, `Floating::return_to_pool`,
//! and `pool/inner.rs`, `check_idle_conn`): a released connection is closed if the pool is
//! closed or the connection is past its lifetime; otherwise `after_release` runs, then `ping`
//! (which on PostgreSQL only flushes what is queued; sqlx itself never rolls back on release),
//! then the connection goes idle. On acquire an idle connection is pinged
//! (`test_before_acquire`), then `before_acquire` runs. `Ok(false)` from either hook closes the
//! connection gracefully, which rolls back whatever it still had open; the pool opens a new one
//! when it needs it.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyConnection, Database, Executor, Row, TransactionManager};

use super::Backend;

/// What a check found about a connection's transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leftover {
    /// None: the connection may be reused.
    Clean,
    /// The database has a transaction open on the connection.
    OpenInDatabase,
    /// sqlx counts this many transactions and savepoints that no `Transaction` will end.
    CountedBySqlx(usize),
    /// The check itself failed, so nothing is known about the connection.
    Unknown(String),
}

impl Leftover {
    /// What the database and sqlx said about one connection: whether the database has a
    /// transaction open (or why it could not tell), and sqlx's transaction depth.
    pub fn judge(open_in_database: Result<bool, String>, sqlx_depth: usize) -> Leftover {
        match open_in_database {
            Err(why) => Leftover::Unknown(why),
            Ok(true) => Leftover::OpenInDatabase,
            Ok(false) if sqlx_depth > 0 => Leftover::CountedBySqlx(sqlx_depth),
            Ok(false) => Leftover::Clean,
        }
    }

    /// The metric's `reason` label, `None` for a clean connection.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Leftover::Clean => None,
            Leftover::OpenInDatabase => Some("open_in_database"),
            Leftover::CountedBySqlx(_) => Some("counted_by_sqlx"),
            Leftover::Unknown(_) => Some("check_failed"),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DiscardLabels {
    /// `release` or `acquire`.
    check: &'static str,
    reason: &'static str,
}

/// Connections closed instead of reused, by check and reason.
#[derive(Clone, Debug, Default)]
pub struct Discarded(Family<DiscardLabels, Counter>);

impl Discarded {
    /// As `db_connections_discarded` (so `msa_<component>_db_connections_discarded_total`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "db_connections_discarded",
            "Pooled database connections closed instead of reused because they were found \
             inside a transaction (or could not be checked)",
            self.0.clone(),
        );
    }

    /// How many connections `check` ("release" or "acquire") discarded, for every reason.
    pub fn total(&self, check: &'static str) -> u64 {
        ["open_in_database", "counted_by_sqlx", "check_failed"]
            .into_iter()
            .filter_map(|reason| self.0.get(&DiscardLabels { check, reason }))
            .map(|counter| counter.get())
            .sum()
    }

    /// Whether to keep a connection `check` found `leftover`; logs and counts one it discards.
    fn keep(&self, check: &'static str, leftover: &Leftover) -> bool {
        let Some(reason) = leftover.reason() else {
            return true;
        };
        match leftover {
            Leftover::Unknown(why) => tracing::warn!(
                check,
                reason,
                error = %why,
                "closing a pooled database connection whose transaction state could not be checked"
            ),
            _ => tracing::warn!(
                check,
                reason,
                ?leftover,
                "closing a pooled database connection left inside a transaction (a cancelled \
                 caller?) instead of reusing it"
            ),
        }
        self.0.get_or_create(&DiscardLabels { check, reason }).inc();
        false
    }
}

/// `options` with the release and acquire checks installed, counting into `discarded`.
pub(super) fn checked(
    options: AnyPoolOptions,
    backend: Backend,
    discarded: Discarded,
) -> AnyPoolOptions {
    let on_release = discarded.clone();
    options
        .after_release(move |conn, _| {
            let discarded = on_release.clone();
            Box::pin(async move {
                let leftover = on_release_check(conn, backend).await;
                Ok(discarded.keep("release", &leftover))
            })
        })
        .before_acquire(move |conn, _| {
            let leftover = Leftover::judge(Ok(false), depth(conn));
            let keep = discarded.keep("acquire", &leftover);
            Box::pin(async move { Ok(keep) })
        })
}

/// The release check: the database first (see the module's documentation for why), then sqlx.
pub async fn on_release_check(conn: &mut AnyConnection, backend: Backend) -> Leftover {
    let open = open_in_database(conn, backend)
        .await
        .map_err(|e| e.to_string());
    Leftover::judge(open, depth(conn))
}

/// sqlx's count of open transactions and savepoints on `conn`.
fn depth(conn: &AnyConnection) -> usize {
    <Any as Database>::TransactionManager::get_transaction_depth(conn)
}

/// Whether the database has a transaction open on `conn`. Both statements go as plain text (the
/// simple protocol on PostgreSQL): one message, so `now()` and `statement_timestamp()` are taken
/// from the same command outside a transaction.
async fn open_in_database(conn: &mut AnyConnection, backend: Backend) -> Result<bool, sqlx::Error> {
    match backend {
        Backend::Sqlite => match conn.execute("ROLLBACK").await {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(error))
                if error.message().contains("no transaction is active") =>
            {
                Ok(false)
            }
            Err(error) => Err(error),
        },
        Backend::Postgres => {
            let row = conn
                .fetch_one("SELECT now() = statement_timestamp()")
                .await?;
            Ok(!row.try_get::<bool, _>(0)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_connection_both_call_clean_is_kept() {
        assert_eq!(Leftover::judge(Ok(false), 0), Leftover::Clean);
        assert_eq!(Leftover::judge(Ok(true), 0), Leftover::OpenInDatabase);
        assert_eq!(Leftover::judge(Ok(true), 1), Leftover::OpenInDatabase);
        assert_eq!(Leftover::judge(Ok(false), 2), Leftover::CountedBySqlx(2));
        assert_eq!(
            Leftover::judge(Err("broken pipe".into()), 0),
            Leftover::Unknown("broken pipe".into())
        );
        let discarded = Discarded::default();
        assert!(discarded.keep("release", &Leftover::Clean));
        assert!(!discarded.keep("release", &Leftover::OpenInDatabase));
        assert!(!discarded.keep("release", &Leftover::Unknown("x".into())));
        assert!(!discarded.keep("acquire", &Leftover::CountedBySqlx(1)));
        assert_eq!(
            (discarded.total("release"), discarded.total("acquire")),
            (2, 1)
        );
    }
}
