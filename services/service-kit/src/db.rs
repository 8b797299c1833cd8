//! Storage: one sqlx pool over SQLite (a file; in-memory only in unit tests) or PostgreSQL,
//! chosen by the URL, with each service's migrations for that backend applied at start.
//!
//! Queries and migrations are written once, in SQL both backends accept: `$1` placeholders, TEXT,
//! BIGINT, CHECK and UNIQUE constraints; ids and times are stored as text (UUID, RFC 3339) and
//! money as integer cents, which both store exactly.
//!
//! Two guards sit around the pool: [`hygiene`] never hands out a connection left inside a
//! transaction, and [`readiness`] tells `/readyz` whether a write can begin now.

pub mod hygiene;
pub mod lease;
pub mod readiness;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{Any, AnyPool, Executor, Transaction};

use self::hygiene::Discarded;
use self::readiness::WriteProbe;

/// SQLite's wait for the write lock (`PRAGMA busy_timeout`) on every pooled connection: writers
/// queue this long behind each other before a write fails.
pub const SQLITE_BUSY_TIMEOUT_MS: u32 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct Database {
    pub pool: AnyPool,
    pub backend: Backend,
    discarded: Discarded,
    probe: Arc<WriteProbe>,
}

impl Database {
    /// Connects (creating the SQLite file and its folder if needed) and migrates.
    pub async fn connect(url: &str, migrator: &Migrator) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(rest) = url.strip_prefix("sqlite:") {
            (Backend::Sqlite, sqlite_url(rest)?)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            (Backend::Postgres, url.to_owned())
        } else {
            anyhow::bail!(
                "unsupported database URL {:?}: use sqlite://<path> or postgres://user:password@host:port/database",
                redact(url)
            );
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let mut pool = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(5));
        if backend == Backend::Sqlite {
            // Every connection to `:memory:` is a database of its own: keep one.
            let connections = if url.contains(":memory:") { 1 } else { 8 };
            // WAL lets readers proceed while one writer writes; writers queue on the busy timeout.
            pool = pool.max_connections(connections).after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    let busy = format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}");
                    conn.execute(busy.as_str()).await?;
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let discarded = Discarded::default();
        let pool = hygiene::checked(pool, backend, discarded.clone())
            .connect_with(options)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the database {}: {e}", redact(&url)))?;
        migrator
            .run(&pool)
            .await
            .map_err(|e| anyhow::anyhow!("cannot migrate the database {}: {e}", redact(&url)))?;
        Ok(Database {
            pool,
            backend,
            discarded,
            probe: Arc::default(),
        })
    }

    /// A write transaction. On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`), so
    /// two writers queue instead of failing when both try to upgrade a read lock.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Whether a write can begin now (for `/readyz`): `Err` says why not. Bounded by
    /// [`readiness::WAIT`], and cheap to ask often; see [`readiness`].
    pub async fn writable(&self) -> Result<(), String> {
        self.probe.writable(&self.pool, self.backend).await
    }

    /// Adds this database's metrics (connections discarded by [`hygiene`]) to `registry`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.discarded.register(registry);
    }
}

/// `sqlite://path` (or `sqlite:path`) → an URL sqlx opens read-write, creating the file.
fn sqlite_url(rest: &str) -> anyhow::Result<String> {
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:"
        && let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(|e| {
            anyhow::anyhow!("cannot create the data folder {}: {e}", parent.display())
        })?;
    }
    let mut query = query.to_owned();
    if !query.contains("mode=") {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str("mode=rwc");
    }
    Ok(format!("sqlite://{path}?{query}"))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Whether a database error is a unique-constraint violation (both backends).
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_are_opened_read_write_create() {
        assert_eq!(
            sqlite_url(":memory:").unwrap(),
            "sqlite://:memory:?mode=rwc"
        );
        // The data folder is created: in the test's temporary folder, removed afterwards.
        let folder = std::env::temp_dir().join(format!("msa-kit-url-{}", std::process::id()));
        let path = folder.join("x.db");
        let path = path.to_str().unwrap();
        assert_eq!(
            sqlite_url(&format!("//{path}?cache=shared")).unwrap(),
            format!("sqlite://{path}?cache=shared&mode=rwc")
        );
        assert!(folder.is_dir());
        std::fs::remove_dir(&folder).unwrap();
    }

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://msa:secret@127.0.0.1:5432/db"),
            "postgres://msa:***@127.0.0.1:5432/db"
        );
        assert_eq!(redact("sqlite:///data/x.db"), "sqlite:///data/x.db");
    }
}
