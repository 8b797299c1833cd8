//! What every msa HTTP service (user, order, product) shares, so it is written once:
//! configuration flags, problem+json errors and extractors, request-id and traceparent
//! propagation, RED metrics, `/healthz` `/readyz` `/info` `/metrics`, storage on SQLite or
//! PostgreSQL with migrations, pagination, and serving with a graceful drain.

pub mod auth;
pub mod caller;
pub mod config;
pub mod connections;
pub mod context;
pub mod db;
pub mod deadline;
pub mod extract;
pub mod metrics;
pub mod money;
pub mod page;
pub mod problem;
pub mod server;
pub mod signing;
#[cfg(feature = "testing")]
pub mod testing;
pub mod text;

pub use money::format_cents;
pub use problem::Problem;

/// The current time as RFC 3339 in UTC, as stored and returned.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

/// Parses a UUID path or body value, naming the field when it is not one (a 400).
pub fn parse_id(field: &str, raw: &str) -> Result<uuid::Uuid, Problem> {
    uuid::Uuid::parse_str(raw).map_err(|_| {
        Problem::bad_request(format!("{field} must be a UUID, got {raw:?}")).with("field", field)
    })
}
