//! Reservations expire: one neither committed nor released within the TTL is released by a
//! background task, its stock given back in the same transaction as the state change
//! ([`crate::store::expire`]), so stock cannot stay held even if the order service never comes
//! back. A commit that comes later is refused (409 `reservation-released`), and the order fails.
//!
//! The TTL must exceed the order service's recovery bound (`--recover-after-ms`, default two
//! minutes): by then the order service has committed or released every reservation of a live
//! order. Reservations are not renewed (a repeated reservation under the same id answers the
//! existing one and leaves its clock alone): nothing holds stock legitimately for longer.

use std::time::Duration;

use msa_service_kit::db::Database;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use crate::store;

/// How long reservations live and how often they are checked.
#[derive(Clone, Copy, Debug)]
pub struct ExpirySettings {
    /// A reservation held longer than this is released.
    pub ttl: Duration,
    /// Time between sweeps.
    pub every: Duration,
}

impl Default for ExpirySettings {
    fn default() -> Self {
        ExpirySettings {
            ttl: Duration::from_secs(600),
            every: Duration::from_secs(30),
        }
    }
}

/// The product service's own metrics (prefix `msa_product_`).
#[derive(Clone, Default)]
pub struct ProductMetrics {
    /// `reservations_expired_total`.
    pub expired: Counter,
    /// `stock_clamped_units_total`: units a give-back could not add under the stock maximum.
    pub clamped_units: Counter,
}

impl ProductMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = ProductMetrics::default();
        registry.register(
            "reservations_expired",
            "Reservations released because they were neither committed nor released within the TTL",
            metrics.expired.clone(),
        );
        registry.register(
            "stock_clamped_units",
            "Units given back (release, return, expiry) that did not fit under the stock maximum and were dropped",
            metrics.clamped_units.clone(),
        );
        metrics
    }

    /// Counts and logs units dropped by a give-back.
    pub fn clamped(&self, clamped: &[store::Clamped]) {
        for c in clamped {
            self.clamped_units
                .inc_by(u64::try_from(c.units).unwrap_or_default());
        }
    }
}

/// Sweeps every `settings.every`, for ever.
pub async fn run(db: Database, settings: ExpirySettings, metrics: ProductMetrics) {
    let ttl_ms = i64::try_from(settings.ttl.as_millis()).unwrap_or(i64::MAX);
    let mut tick = tokio::time::interval(settings.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = store::now_ms();
        match store::expire(&db, now, now.saturating_sub(ttl_ms)).await {
            Ok(expired) => {
                metrics.expired.inc_by(expired.reservations);
                metrics.clamped(&expired.clamped);
            }
            Err(error) => {
                tracing::warn!(%error, "expiring reservations failed; next sweep retries")
            }
        }
    }
}
