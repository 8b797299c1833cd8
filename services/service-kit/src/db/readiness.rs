//! Whether the service can begin a write now, for `/readyz`.
//!
//! `SELECT 1` succeeds on a database nobody can write (a SQLite file whose write lock a wedged
//! connection holds, a PostgreSQL standby), so the probe does what a write does: it takes a
//! connection from the pool and begins a write transaction, then rolls it back.
//!
//! - SQLite: `BEGIN IMMEDIATE` (it takes the write lock) on a pooled connection whose busy
//!   timeout is lowered to [`SQLITE_PROBE_BUSY_MS`] for the probe and then restored (the
//!   connection is closed instead of reused if restoring fails). A pooled connection rather than
//!   one of the probe's own: the probe then takes the path every write takes, so a pool whose
//!   connections are all wedged or taken fails it too.
//! - PostgreSQL: `BEGIN`, `SHOW transaction_read_only` must be `off` (a standby or a
//!   read-only default refuses writes), `ROLLBACK`.
//!
//! Bounded and cheap: the pool must give a connection within [`ACQUIRE_WITHIN`]; at most one
//! probe runs at a time, in a task of its own, so a `/readyz` that stops waiting never cancels
//! a `BEGIN` half-way (the very bug the pool's hygiene guards against); `/readyz` waits for it
//! at most [`WAIT`] and then answers "not ready" (a write could not begin in that time); and a
//! result is reused for [`FRESH_FOR`], so a storm of probes costs at most one transaction per
//! second.
//!
//! Busy is not broken. A probe that only found the pool or SQLite's write lock taken (by work
//! queued ahead of it) says the service is slow, not that it cannot write; failing readiness at
//! once would take every replica of a busy service out of its Service — with SQLite, its only
//! one — and turn slowness into an outage. Busy counts against readiness only once it has
//! lasted [`BUSY_GRACE`], as long as a real write waits for the lock before it fails; anything
//! else (read-only, refused, closed) fails readiness at once ([`Schedule::judge`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::{AnyPool, Connection, Executor};
use tokio::sync::watch;

use super::{Backend, SQLITE_BUSY_TIMEOUT_MS};

/// The longest `/readyz` waits for a probe.
pub const WAIT: Duration = Duration::from_secs(1);
/// How long a probe's result stands.
pub const FRESH_FOR: Duration = Duration::from_secs(1);
/// The longest a probe waits for a pooled connection.
pub const ACQUIRE_WITHIN: Duration = Duration::from_millis(500);
/// SQLite's busy timeout during a probe: the longest it waits for the write lock.
pub const SQLITE_PROBE_BUSY_MS: u32 = 500;
/// The longest one probe may take in all. Each step has its own bound on SQLite, but a
/// PostgreSQL server that stops answering mid-probe would otherwise hold the probe for ever:
/// no later check could start another, and the service would stay unready after the server
/// came back. A probe ended early closes its connection (see [`probe_once`]).
pub const PROBE_WITHIN: Duration = Duration::from_secs(5);

/// How long the database may stay busy (no pooled connection, or SQLite's write lock taken)
/// before `/readyz` fails: a write waits this long for the lock before it gives up, so past it
/// writes fail too.
pub const BUSY_GRACE: Duration = Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS as u64);

/// Why no write could begin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unwritable {
    /// Only waiting: the pool had no free connection, the write lock was taken, or the probe
    /// had not ended in time. For a while this is load, not failure.
    Busy(String),
    /// The database refused or failed (read-only, an error, the pool closed).
    Broken(String),
}

impl Unwritable {
    pub fn why(&self) -> &str {
        match self {
            Unwritable::Busy(why) | Unwritable::Broken(why) => why,
        }
    }
}

/// A probe's result.
pub type Outcome = Result<(), Unwritable>;

/// What a readiness check does, decided from the last result and the clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The last result is fresh: use it.
    Cached(Outcome),
    /// A probe is running: wait for the result of probe number `.0`.
    Join(u64),
    /// Start probe number `.0` and wait for its result.
    Start(u64),
}

/// The probes' bookkeeping (pure; the clock is passed in).
#[derive(Debug, Default)]
pub struct Schedule {
    last: Option<(Instant, Outcome)>,
    running: Option<u64>,
    started: u64,
    /// Since when every answer has been `Busy`.
    busy_since: Option<Instant>,
}

impl Schedule {
    /// What a check arriving at `now` does; a `Start` counts as running until
    /// [`Schedule::finished`].
    pub fn step(&mut self, now: Instant) -> Step {
        if let Some((at, outcome)) = &self.last
            && now.saturating_duration_since(*at) < FRESH_FOR
        {
            return Step::Cached(outcome.clone());
        }
        if let Some(probe) = self.running {
            return Step::Join(probe);
        }
        self.started += 1;
        self.running = Some(self.started);
        Step::Start(self.started)
    }

    /// What `/readyz` answers at `now` for a probe's `outcome`: busy counts only once it has
    /// lasted [`BUSY_GRACE`] (see the module).
    pub fn judge(&mut self, now: Instant, outcome: &Outcome) -> Result<(), String> {
        match outcome {
            Ok(()) => {
                self.busy_since = None;
                Ok(())
            }
            // Not a reason to start the busy grace over: a database that alternates between
            // broken and busy answers (too many connections, then pool timeouts) is unwritable
            // all along, and is so since the first of them.
            Err(Unwritable::Broken(why)) => {
                self.busy_since.get_or_insert(now);
                Err(why.clone())
            }
            Err(Unwritable::Busy(why)) => {
                let since = *self.busy_since.get_or_insert(now);
                if now.saturating_duration_since(since) < BUSY_GRACE {
                    Ok(())
                } else {
                    Err(format!("busy for {BUSY_GRACE:?} and more: {why}"))
                }
            }
        }
    }

    /// Probe `probe` ended at `now` with `outcome`; returns the previous result (to log a change).
    pub fn finished(&mut self, probe: u64, now: Instant, outcome: Outcome) -> Option<Outcome> {
        if self.running == Some(probe) {
            self.running = None;
        }
        self.last
            .replace((now, outcome))
            .map(|(_, previous)| previous)
    }
}

/// The probe of one database: its schedule, and the latest result by probe number.
#[derive(Debug)]
pub struct WriteProbe {
    schedule: Mutex<Schedule>,
    results: watch::Sender<(u64, Outcome)>,
}

impl Default for WriteProbe {
    fn default() -> Self {
        WriteProbe {
            schedule: Mutex::default(),
            results: watch::Sender::new((0, Err(Unwritable::Broken("not probed yet".into())))),
        }
    }
}

impl WriteProbe {
    /// Whether the service should count as ready to write now: `Err` says why not; see the
    /// module's documentation.
    pub async fn writable(
        self: &std::sync::Arc<Self>,
        pool: &AnyPool,
        backend: Backend,
    ) -> Result<(), String> {
        let outcome = self.probe(pool, backend).await;
        self.schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .judge(Instant::now(), &outcome)
    }

    /// One probe's outcome: a fresh result, or the result of a probe run or joined now.
    async fn probe(self: &std::sync::Arc<Self>, pool: &AnyPool, backend: Backend) -> Outcome {
        if pool.is_closed() {
            return Err(Unwritable::Broken("the database pool is closed".into()));
        }
        let mut results = self.results.subscribe();
        let step = self
            .schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .step(Instant::now());
        let probe = match step {
            Step::Cached(outcome) => return outcome,
            Step::Join(probe) => probe,
            Step::Start(probe) => {
                let (this, pool) = (self.clone(), pool.clone());
                tokio::spawn(async move {
                    // In a task of its own, so that even a panic ends the probe.
                    let outcome = tokio::spawn(async move { probe_once(&pool, backend).await })
                        .await
                        .unwrap_or_else(|e| {
                            Err(Unwritable::Broken(format!(
                                "the readiness probe failed: {e}"
                            )))
                        });
                    this.finished(probe, outcome);
                });
                probe
            }
        };
        match tokio::time::timeout(WAIT, results.wait_for(|(done, _)| *done >= probe)).await {
            Ok(Ok(result)) => result.1.clone(),
            Ok(Err(_)) => Err(Unwritable::Broken("the readiness probe stopped".into())),
            Err(_) => {
                tracing::warn!(
                    probe,
                    "readiness: no write could begin within {WAIT:?}; the probe is still waiting"
                );
                Err(Unwritable::Busy(format!(
                    "no write could begin within {WAIT:?}"
                )))
            }
        }
    }

    fn finished(&self, probe: u64, outcome: Outcome) {
        let previous = self
            .schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .finished(probe, Instant::now(), outcome.clone());
        match (&previous, &outcome) {
            (None | Some(Ok(())), Err(why)) => {
                let why = why.why();
                tracing::warn!(%why, "readiness: the database cannot begin a write");
            }
            (Some(Err(_)), Ok(())) => tracing::info!("readiness: the database takes writes again"),
            _ => {}
        }
        let _previous = self.results.send_replace((probe, outcome));
    }
}

/// One probe: a pooled connection, a write transaction begun and rolled back, within
/// [`PROBE_WITHIN`]. A connection whose probe did not end in time is closed, not returned: it
/// may be inside the transaction or still have the probe's short busy timeout.
async fn probe_once(pool: &AnyPool, backend: Backend) -> Outcome {
    let mut conn = tokio::time::timeout(ACQUIRE_WITHIN, pool.acquire())
        .await
        .map_err(|_| {
            Unwritable::Busy(format!(
                "no database connection was free within {ACQUIRE_WITHIN:?}"
            ))
        })?
        .map_err(|e| match e {
            sqlx::Error::PoolTimedOut => {
                Unwritable::Busy(format!("no database connection was free: {e}"))
            }
            e => Unwritable::Broken(format!("no database connection: {e}")),
        })?;
    match tokio::time::timeout(PROBE_WITHIN, probe_on(&mut conn, backend)).await {
        Ok(outcome) => outcome,
        Err(_) => {
            conn.close_on_drop();
            Err(Unwritable::Busy(format!(
                "the write probe did not end within {PROBE_WITHIN:?}"
            )))
        }
    }
}

/// The probe's statements on one pooled connection.
async fn probe_on(conn: &mut sqlx::pool::PoolConnection<sqlx::Any>, backend: Backend) -> Outcome {
    match backend {
        Backend::Sqlite => {
            let busy = |ms: u32| format!("PRAGMA busy_timeout = {ms}");
            conn.execute(busy(SQLITE_PROBE_BUSY_MS).as_str())
                .await
                .map_err(|e| broken_or_busy("cannot set the probe's busy timeout", &e))?;
            let began = begin_and_roll_back(conn, "BEGIN IMMEDIATE").await;
            let restore = busy(SQLITE_BUSY_TIMEOUT_MS);
            if let Err(error) = conn.execute(restore.as_str()).await {
                tracing::warn!(%error, "readiness: cannot restore a connection's busy timeout; closing it");
                conn.close_on_drop();
            }
            began
        }
        Backend::Postgres => {
            let mut tx = conn
                .begin()
                .await
                .map_err(|e| broken_or_busy("cannot begin a transaction", &e))?;
            let read_only: String = sqlx::query_scalar("SHOW transaction_read_only")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| broken_or_busy("cannot read transaction_read_only", &e))?;
            tx.rollback()
                .await
                .map_err(|e| broken_or_busy("cannot roll back the probe", &e))?;
            if read_only == "off" {
                Ok(())
            } else {
                Err(Unwritable::Broken(
                    "the database is read-only (a standby, or default_transaction_read_only)"
                        .into(),
                ))
            }
        }
    }
}

async fn begin_and_roll_back(conn: &mut sqlx::AnyConnection, begin: &'static str) -> Outcome {
    let tx = conn
        .begin_with(begin)
        .await
        .map_err(|e| broken_or_busy("cannot begin a write", &e))?;
    tx.rollback()
        .await
        .map_err(|e| broken_or_busy("cannot roll back the probe", &e))
}

/// SQLite's `SQLITE_BUSY` (5) and `SQLITE_LOCKED` (6), with their extended codes (the low
/// byte; `SQLITE_BUSY_RECOVERY` is 261), mean the lock is taken: busy. Anything else is the
/// database refusing or failing.
fn broken_or_busy(doing: &str, error: &sqlx::Error) -> Unwritable {
    let busy = error
        .as_database_error()
        .and_then(|e| e.code())
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6));
    let why = format!("{doing}: {error}");
    if busy {
        Unwritable::Busy(why)
    } else {
        Unwritable::Broken(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_probe_at_a_time_and_a_result_stands_for_a_second() {
        let mut schedule = Schedule::default();
        let t0 = Instant::now();
        assert_eq!(schedule.step(t0), Step::Start(1));
        assert_eq!(
            schedule.step(t0 + Duration::from_millis(300)),
            Step::Join(1)
        );
        assert_eq!(
            schedule.step(t0 + Duration::from_secs(5)),
            Step::Join(1),
            "however long it runs"
        );
        let done = t0 + Duration::from_secs(5);
        let locked = || Err(Unwritable::Busy("locked".into()));
        assert_eq!(schedule.finished(1, done, locked()), None);
        assert_eq!(
            schedule.step(done + Duration::from_millis(999)),
            Step::Cached(locked())
        );
        assert_eq!(schedule.step(done + FRESH_FOR), Step::Start(2));
        assert_eq!(
            schedule.finished(2, done + FRESH_FOR, Ok(())),
            Some(locked())
        );
        assert_eq!(schedule.step(done + FRESH_FOR), Step::Cached(Ok(())));
    }

    #[test]
    fn busy_fails_readiness_only_once_it_lasted_the_grace_and_broken_at_once() {
        let mut schedule = Schedule::default();
        let t0 = Instant::now();
        let busy = Err(Unwritable::Busy("the write lock is taken".into()));
        assert_eq!(
            schedule.judge(t0, &busy),
            Ok(()),
            "busy for a moment is load"
        );
        assert_eq!(schedule.judge(t0 + BUSY_GRACE / 2, &busy), Ok(()));
        let failed = schedule.judge(t0 + BUSY_GRACE, &busy).unwrap_err();
        assert!(failed.contains("the write lock is taken"), "{failed}");

        // One answer that is not busy ends the busy spell: its grace starts again.
        assert_eq!(schedule.judge(t0 + BUSY_GRACE, &Ok(())), Ok(()));
        let later = t0 + BUSY_GRACE * 3;
        assert_eq!(schedule.judge(later, &busy), Ok(()));
        assert!(schedule.judge(later + BUSY_GRACE, &busy).is_err());

        let read_only = Err(Unwritable::Broken("the database is read-only".into()));
        let mut fresh = Schedule::default();
        assert_eq!(
            fresh.judge(t0, &read_only),
            Err("the database is read-only".into()),
            "broken fails at once"
        );
        // Broken then busy, alternating: unwritable since the first answer, so the busy ones
        // fail too once the grace has run from there (they must not restart it).
        assert!(fresh.judge(t0 + BUSY_GRACE / 2, &busy).is_ok());
        assert!(fresh.judge(t0 + BUSY_GRACE * 3 / 4, &read_only).is_err());
        assert!(
            fresh.judge(t0 + BUSY_GRACE, &busy).is_err(),
            "a broken answer must not restart the busy grace"
        );
    }
}
