//! The pool never hands out a connection left inside a transaction, and `/readyz` tells whether
//! the service can begin a write (issue 27). Real SQLite files and the test PostgreSQL.

use std::time::{Duration, Instant};

use axum::Router;
use msa_service_kit::db::{Backend, Database};
use msa_service_kit::server::Ops;
use msa_service_kit::testing::{TestBackend, fresh_database, loopback_client, loopback_get, spawn};
use sqlx::migrate::Migrator;
use sqlx::{Connection, Executor};

static NO_MIGRATIONS: Migrator = Migrator::DEFAULT;

async fn database(backend: TestBackend) -> (Database, String) {
    let url = fresh_database(backend, "kit").await;
    let db = Database::connect(&url, &NO_MIGRATIONS)
        .await
        .expect("connect to a fresh database");
    (db, url)
}

/// The value of the series `name{labels}` in `text` (Prometheus text), 0 when absent.
fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Polls until `discarded{check="release",reason="open_in_database"}` reaches `count` (the pool
/// returns a connection in a task of its own).
async fn discarded_on_release(ops: &Ops, count: f64) {
    let name =
        r#"msa_kit_db_connections_discarded_total{check="release",reason="open_in_database"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = ops.metrics.encode();
        if series(&text, name) >= count {
            assert_eq!(series(&text, name), count, "{text}");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not counted as discarded within 10 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_connection_left_inside_a_transaction_is_discarded_and_counted(backend: TestBackend) {
    let (db, _) = database(backend).await;
    let ops = Ops::new("kit", "test", "kit-0".into(), Some(db.clone()));
    sqlx::query("CREATE TABLE marks (note TEXT NOT NULL)")
        .execute(&db.pool)
        .await
        .expect("create a table");
    let begin = match db.backend {
        Backend::Sqlite => "BEGIN IMMEDIATE",
        Backend::Postgres => "BEGIN",
    };

    // A transaction sqlx does not know about, with a row in it, goes back to the pool.
    let mut conn = db.pool.acquire().await.expect("a connection");
    conn.execute(begin).await.expect("begin by hand");
    conn.execute("INSERT INTO marks (note) VALUES ('left open')")
        .await
        .expect("write inside it");
    drop(conn);
    discarded_on_release(&ops, 1.0).await;

    // A transaction sqlx counts whose guard is gone, as a cancelled `begin` leaves one.
    let mut conn = db.pool.acquire().await.expect("a connection");
    let transaction = (*conn).begin().await.expect("begin");
    std::mem::forget(transaction);
    assert!(conn.is_in_transaction());
    drop(conn);
    discarded_on_release(&ops, 2.0).await;
    // And nothing else: a clean connection is never discarded, and the checks themselves work.
    let text = ops.metrics.encode();
    for check in ["release", "acquire"] {
        for reason in ["counted_by_sqlx", "check_failed"] {
            let name = format!(
                r#"msa_kit_db_connections_discarded_total{{check="{check}",reason="{reason}"}}"#
            );
            assert_eq!(series(&text, &name), 0.0, "{text}");
        }
    }

    // Every connection the pool hands out now can write, and the abandoned row is gone.
    let max = db.pool.options().get_max_connections() as usize;
    let mut writes = Vec::new();
    for i in 0..max.min(4) {
        let db = db.clone();
        writes.push(tokio::spawn(async move {
            let mut tx = db.begin_write().await?;
            sqlx::query("INSERT INTO marks (note) VALUES ($1)")
                .bind(format!("after {i}"))
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        }));
    }
    for write in writes {
        tokio::time::timeout(Duration::from_secs(30), write)
            .await
            .expect("a write ends within 30 s")
            .expect("the write task does not panic")
            .expect("a write after the discards succeeds");
    }
    let notes: Vec<String> = sqlx::query_scalar("SELECT note FROM marks ORDER BY note")
        .fetch_all(&db.pool)
        .await
        .expect("read the marks");
    assert!(
        !notes.iter().any(|n| n == "left open"),
        "the abandoned transaction was rolled back: {notes:?}"
    );
    assert_eq!(notes.len(), max.min(4), "{notes:?}");
    if backend_is_postgres(&db) {
        // The server's own view: no session of this database sits inside a transaction.
        let idle_in_transaction: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND state LIKE 'idle in transaction%'",
        )
        .fetch_one(&db.pool)
        .await
        .expect("read pg_stat_activity");
        assert_eq!(idle_in_transaction, 0);
    }
    // Every pooled connection at once: none is inside a transaction, as sqlx sees it.
    let mut held = Vec::new();
    for _ in 0..max {
        let conn = tokio::time::timeout(Duration::from_secs(10), db.pool.acquire())
            .await
            .expect("a connection within 10 s")
            .expect("a connection");
        assert!(!conn.is_in_transaction());
        held.push(conn);
    }
}

fn backend_is_postgres(db: &Database) -> bool {
    db.backend == Backend::Postgres
}

msa_service_kit::on_both_backends!(a_connection_left_inside_a_transaction_is_discarded_and_counted);

/// Polls `/readyz` until it answers `status`; returns the last answer's body.
async fn readyz_becomes(base: &str, status: u16) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        // Each answer is bounded (the probe waits at most a second); `loopback_get` is a safety net.
        let response = loopback_get(base, "/readyz").await;
        if response.status().as_u16() == status {
            if status == 200 {
                return serde_json::Value::Null;
            }
            assert_eq!(response.headers()["retry-after"], "1");
            return msa_service_kit::testing::expect_problem(response, status).await;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not answer {status} within 40 s (last: {})",
            response.status()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_sqlite_write_lock_is_held_elsewhere_and_recovers() {
    let (db, url) = database(TestBackend::Sqlite).await;
    let base = spawn(
        Router::new(),
        Ops::new("kit", "test", "kit-0".into(), Some(db)),
    )
    .await;
    readyz_becomes(&base, 200).await;

    // Another program holds the write lock (its own connection to the file).
    let mut other = sqlx::AnyConnection::connect(&url)
        .await
        .expect("a second connection to the file");
    other
        .execute("PRAGMA busy_timeout = 10000")
        .await
        .expect("wait for the lock when taking it");
    other
        .execute("BEGIN IMMEDIATE")
        .await
        .expect("take the write lock");
    // Busy for a moment is load, not failure: still ready (a write would still wait its 10 s).
    // Past the last result's freshness, so this answer comes from a probe that met the lock.
    let locked = Instant::now();
    tokio::time::sleep(msa_service_kit::db::readiness::FRESH_FOR + Duration::from_millis(100))
        .await;
    let first = loopback_get(&base, "/readyz").await;
    if locked.elapsed() < msa_service_kit::db::readiness::BUSY_GRACE / 2 {
        assert_eq!(first.status(), 200, "busy within its grace counts as ready");
    }
    // Held past the grace (as long as a write waits for the lock), it is not ready.
    let problem = readyz_becomes(&base, 503).await;
    assert!(
        locked.elapsed() >= msa_service_kit::db::readiness::BUSY_GRACE,
        "unready after {:?}, inside the busy grace",
        locked.elapsed()
    );
    assert_eq!(problem["reason"], "database-unwritable", "{problem}");
    // Reads still work: only the write probe notices.
    assert_eq!(
        loopback_client()
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("an answer")
            .status(),
        200
    );

    other.execute("ROLLBACK").await.expect("release the lock");
    readyz_becomes(&base, 200).await;
    other.close().await.expect("close the second connection");
}

/// Kills every session of the database `conn` is connected to but `conn`'s own, so the
/// service's pool reconnects (and picks up the database's new defaults).
async fn reconnect_everyone_else(conn: &mut sqlx::AnyConnection) {
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .await
    .expect("end the service's sessions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_postgresql_is_read_only_and_recovers() {
    let (db, url) = database(TestBackend::Postgres).await;
    let base = spawn(
        Router::new(),
        Ops::new("kit", "test", "kit-0".into(), Some(db)),
    )
    .await;
    readyz_becomes(&base, 200).await;

    let mut admin = sqlx::AnyConnection::connect(&url)
        .await
        .expect("an admin connection");
    let name: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut admin)
        .await
        .expect("the database's name");
    // As a hot standby, or a database switched read-only, would be.
    admin
        .execute(format!("ALTER DATABASE {name} SET default_transaction_read_only = on").as_str())
        .await
        .expect("make the database read-only");
    reconnect_everyone_else(&mut admin).await;
    let problem = readyz_becomes(&base, 503).await;
    assert_eq!(problem["reason"], "database-unwritable", "{problem}");

    admin
        .execute(format!("ALTER DATABASE {name} RESET default_transaction_read_only").as_str())
        .await
        .expect("make the database writable");
    reconnect_everyone_else(&mut admin).await;
    readyz_becomes(&base, 200).await;
    admin.close().await.expect("close the admin connection");
}
