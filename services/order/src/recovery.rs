//! The recoverer: at start and every `every`, on one replica at a time (a [`msa_service_kit::db::lease`]),
//! it drives every order pending longer than `after` to `confirmed` or `failed`, and gives back
//! the stock of failed and cancelled orders still marked `release_pending`, by asking the
//! product service what became of each reservation ([`crate::steps`], driver `Recovery`):
//! none → released (so a late reservation is refused) and failed; held → committed and
//! confirmed if it charged the order's recorded total, else released and failed; committed →
//! confirmed at its prices; released → failed. When the product service does not answer, the
//! order waits for the next round.
//!
//! `after` must exceed the saga's own worst case, so the recoverer never races a live saga in
//! the ordinary course: the saga gives up on the product service at half of it (see
//! [`saga_limit`]). If it still did (a stalled database), nothing breaks: every write is
//! conditional, every request to the product service idempotent.

use std::time::Duration;

use futures::StreamExt;
use msa_service_kit::Problem;
use msa_service_kit::context::RequestContext;
use msa_service_kit::db::Database;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

use crate::model::Status;
use crate::peers::Peers;
use crate::saga;
use crate::steps::Driver;
use crate::store;
use msa_service_kit::db::lease;

/// The lease's row (order migration 0002).
pub const LEASE: &str = "recoverer";
/// Orders recovered at once within a round.
const CONCURRENCY: usize = 8;
/// Most orders one round looks at; the rest wait for the next.
const ROUND_LIMIT: i64 = 10_000;

/// When and how the recoverer runs.
#[derive(Clone, Copy, Debug)]
pub struct RecoverySettings {
    /// An order pending longer than this is recovered.
    pub after: Duration,
    /// Time between rounds.
    pub every: Duration,
    /// How long a replica holds the lease without renewing it (renewed as the round goes).
    pub lease: Duration,
}

impl RecoverySettings {
    /// How long the recoverer waits for the product service about one order.
    fn per_order(&self) -> Duration {
        (self.lease / 2).max(Duration::from_millis(100))
    }
}

/// How long a saga may wait for the product service before leaving its order to the
/// recoverer: half the recovery bound.
pub fn saga_limit(after: Duration) -> Duration {
    after / 2
}

/// `msa_order_recovered_total{outcome}`: orders the recoverer drove, by how they ended.
#[derive(Clone, Default)]
pub struct RecoveryMetrics {
    recovered: Family<[(&'static str, &'static str); 1], Counter>,
}

impl RecoveryMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = RecoveryMetrics::default();
        registry.register(
            "recovered",
            "Orders the recoverer drove to an end (confirmed, failed, given_back) or left waiting for the product service",
            metrics.recovered.clone(),
        );
        metrics
    }

    fn count(&self, outcome: &'static str) {
        self.recovered.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// Orders counted under `outcome` so far.
    pub fn recovered(&self, outcome: &'static str) -> u64 {
        self.recovered.get_or_create(&[("outcome", outcome)]).get()
    }
}

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Another replica held the lease.
    pub skipped: bool,
    pub confirmed: u64,
    pub failed: u64,
    pub given_back: u64,
    pub waiting: u64,
}

impl Round {
    pub fn total(&self) -> u64 {
        self.confirmed + self.failed + self.given_back + self.waiting
    }
}

/// Runs a round now and then every `settings.every`, for ever.
pub async fn run(db: Database, peers: Peers, settings: RecoverySettings, metrics: RecoveryMetrics) {
    let holder = uuid::Uuid::new_v4().to_string();
    let mut tick = tokio::time::interval(settings.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match round(&db, &peers, &settings, &metrics, &holder).await {
            Ok(done) if done.total() > 0 => tracing::info!(?done, "recovery round"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "recovery round failed; next round retries"),
        }
    }
}

/// One round, as `holder`: takes the lease (or skips), drives each overdue order, renewing the
/// lease as it goes (and stopping if it lost it), then gives the lease up.
pub async fn round(
    db: &Database,
    peers: &Peers,
    settings: &RecoverySettings,
    metrics: &RecoveryMetrics,
    holder: &str,
) -> Result<Round, Problem> {
    let lease_ms = i64::try_from(settings.lease.as_millis()).unwrap_or(i64::MAX);
    let after_ms = i64::try_from(settings.after.as_millis()).unwrap_or(i64::MAX);
    if !lease::acquire(db, LEASE, holder, store::now_ms(), lease_ms).await? {
        return Ok(Round {
            skipped: true,
            ..Round::default()
        });
    }
    let mut renewed = Instant::now();
    let ids = store::overdue(db, store::now_ms().saturating_sub(after_ms), ROUND_LIMIT).await?;
    let mut done = Round::default();
    let mut outcomes = futures::stream::iter(ids)
        .map(|id| recover(db, peers, settings, id))
        .buffer_unordered(CONCURRENCY);
    while let Some(outcome) = outcomes.next().await {
        match outcome {
            Ok(outcome) => {
                metrics.count(outcome);
                match outcome {
                    "confirmed" => done.confirmed += 1,
                    "failed" => done.failed += 1,
                    "given_back" => done.given_back += 1,
                    _ => done.waiting += 1,
                }
            }
            Err(error) => tracing::warn!(%error, "recovering an order failed; next round retries"),
        }
        if renewed.elapsed() > settings.lease / 3 {
            if !lease::acquire(db, LEASE, holder, store::now_ms(), lease_ms).await? {
                tracing::warn!("the recovery lease was lost; another replica continues");
                return Ok(done);
            }
            renewed = Instant::now();
        }
    }
    drop(outcomes);
    lease::release(db, LEASE, holder).await?;
    Ok(done)
}

/// Drives one order; how it ended: `confirmed`, `failed`, `given_back` or `waiting`.
async fn recover(
    db: &Database,
    peers: &Peers,
    settings: &RecoverySettings,
    id: String,
) -> Result<&'static str, Problem> {
    let Some((before, owed)) = store::state(db, &id).await? else {
        return Ok("waiting");
    };
    // The product service's logs name the order that caused each call.
    let peers = peers.in_context(RequestContext {
        request_id: http::HeaderValue::from_str(&format!("recover-{id}")).ok(),
        ..RequestContext::default()
    });
    let give_up_at = Instant::now() + settings.per_order();
    let run = saga::drive(db, &peers, &id, Driver::Recovery, give_up_at).await?;
    let (after, still_owed) = store::state(db, &id)
        .await?
        .ok_or_else(|| Problem::not_found("order", &id))?;
    let outcome = match (before.status, after.status) {
        (Status::Pending, Status::Confirmed) => "confirmed",
        (Status::Pending, Status::Failed) => "failed",
        (_, Status::Pending) => "waiting",
        _ if owed && !still_owed => "given_back",
        _ if still_owed => "waiting",
        _ => "given_back",
    };
    let reason = run.order.failure_reason.as_deref().unwrap_or("");
    match outcome {
        "waiting" => {
            tracing::warn!(order = %id, status = after.status.as_str(), "order not recovered yet: the product service did not answer")
        }
        _ => {
            tracing::info!(order = %id, from = before.status.as_str(), to = after.status.as_str(), outcome, reason, "order recovered")
        }
    }
    Ok(outcome)
}
