//! The client stack the gateway and the order service share to call their peers (issue 5).
//! This first part holds its pure state machines — each takes the time as an argument, so
//! tests drive them deterministically without sleeping:
//!
//! - [`window`]: counts over a sliding time window, in fixed buckets (bounded memory);
//! - [`breaker`]: the per-service circuit breaker (closed → open → half-open);
//! - [`budget`]: the retry budget (a share of requests plus a floor per second);
//! - [`outlier`]: per-endpoint ejection on consecutive failures or outlying latency;
//! - [`slices`]: the addresses behind a Service, merged from its EndpointSlices.

pub mod breaker;
pub mod budget;
pub mod outlier;
pub mod slices;
pub mod window;
