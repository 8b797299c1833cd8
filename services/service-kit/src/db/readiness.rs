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
/// came back. Ended early, the probe's connection may be left inside its transaction; the
/// pool's hygiene discards such a connection rather than lend it out (see `super::hygiene`).
pub const PROBE_WITHIN: Duration = Duration::from_secs(5);

/// A probe's result: `Err` says why no write can begin (for the log; clients get less).
pub type Outcome = Result<(), String>;

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
            results: watch::Sender::new((0, Err("not probed yet".into()))),
        }
    }
}

impl WriteProbe {
    /// Whether a write can begin on `pool` now; see the module's documentation.
    pub async fn writable(
        self: &std::sync::Arc<Self>,
        pool: &AnyPool,
        backend: Backend,
    ) -> Outcome {
        if pool.is_closed() {
            return Err("the database pool is closed".into());
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
                    let outcome = tokio::spawn(async move {
                        tokio::time::timeout(PROBE_WITHIN, probe_once(&pool, backend))
                            .await
                            .unwrap_or_else(|_| {
                                Err(format!(
                                    "the write probe did not end within {PROBE_WITHIN:?}"
                                ))
                            })
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("the readiness probe failed: {e}")));
                    this.finished(probe, outcome);
                });
                probe
            }
        };
        match tokio::time::timeout(WAIT, results.wait_for(|(done, _)| *done >= probe)).await {
            Ok(Ok(result)) => result.1.clone(),
            Ok(Err(_)) => Err("the readiness probe stopped".into()),
            Err(_) => {
                tracing::warn!(
                    probe,
                    "readiness: no write could begin within {WAIT:?}; the probe is still waiting"
                );
                Err(format!("no write could begin within {WAIT:?}"))
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
                tracing::warn!(%why, "readiness: the database cannot begin a write");
            }
            (Some(Err(_)), Ok(())) => tracing::info!("readiness: the database takes writes again"),
            _ => {}
        }
        let _previous = self.results.send_replace((probe, outcome));
    }
}

/// One probe: a pooled connection, a write transaction begun and rolled back.
async fn probe_once(pool: &AnyPool, backend: Backend) -> Outcome {
    let mut conn = tokio::time::timeout(ACQUIRE_WITHIN, pool.acquire())
        .await
        .map_err(|_| format!("no database connection was free within {ACQUIRE_WITHIN:?}"))?
        .map_err(|e| format!("no database connection: {e}"))?;
    match backend {
        Backend::Sqlite => {
            let busy = |ms: u32| format!("PRAGMA busy_timeout = {ms}");
            conn.execute(busy(SQLITE_PROBE_BUSY_MS).as_str())
                .await
                .map_err(|e| format!("cannot set the probe's busy timeout: {e}"))?;
            let began = begin_and_roll_back(&mut conn, "BEGIN IMMEDIATE").await;
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
                .map_err(|e| format!("cannot begin a transaction: {e}"))?;
            let read_only: String = sqlx::query_scalar("SHOW transaction_read_only")
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| format!("cannot read transaction_read_only: {e}"))?;
            tx.rollback()
                .await
                .map_err(|e| format!("cannot roll back the probe: {e}"))?;
            if read_only == "off" {
                Ok(())
            } else {
                Err(
                    "the database is read-only (a standby, or default_transaction_read_only)"
                        .into(),
                )
            }
        }
    }
}

async fn begin_and_roll_back(conn: &mut sqlx::AnyConnection, begin: &'static str) -> Outcome {
    let tx = conn
        .begin_with(begin)
        .await
        .map_err(|e| format!("cannot begin a write: {e}"))?;
    tx.rollback()
        .await
        .map_err(|e| format!("cannot roll back the probe: {e}"))
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
        assert_eq!(schedule.finished(1, done, Err("locked".into())), None);
        assert_eq!(
            schedule.step(done + Duration::from_millis(999)),
            Step::Cached(Err("locked".into()))
        );
        assert_eq!(schedule.step(done + FRESH_FOR), Step::Start(2));
        assert_eq!(
            schedule.finished(2, done + FRESH_FOR, Ok(())),
            Some(Err("locked".into()))
        );
        assert_eq!(schedule.step(done + FRESH_FOR), Step::Cached(Ok(())));
    }
}
