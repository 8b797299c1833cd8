//! The client stack the gateway and the order service call their peers through:
//! discovery (EndpointSlices or a fixed list) → balancer (peak-EWMA P2C by default) →
//! per-endpoint outlier ejection → circuit breakers per route (or per service) → retries within a budget →
//! timeouts → pooled HTTP/1.1 connections.
//!
//! The decisions are plain state with an injected clock (`balance`, `outlier`, `breaker`,
//! `budget`, `pool`), unit-tested without I/O; `client` and `discovery` are the thin async shell.

pub mod balance;
pub mod breaker;
pub mod budget;
pub mod client;
pub mod config;
mod conns;
pub mod deadline;
pub mod discovery;
pub mod endpoint;
pub mod h1;
pub mod metrics;
pub mod outlier;
pub mod pool;
pub mod slices;
pub mod window;

pub use client::{CallConfig, CallError, RetrySafe, Upstream};
pub use conns::UpstreamBody;
pub use deadline::Deadline;
pub use discovery::Discovery;
pub use endpoint::Endpoint;
pub use pool::{BreakerScope, PoolConfig};
