//! Which trace an event belongs to: the request that made the change.

use msa_service_kit::context::{RequestContext, acceptable_traceparent};

/// The `traceparent` to record with an event written now: the current span's when traces are
/// exported (so the publish and the consumers appear under the request), else the caller's
/// own, if well formed, so the chain is not broken by a service that does not export.
pub fn current_traceparent() -> Option<String> {
    msa_telemetry::current_traceparent().or_else(|| {
        RequestContext::current()
            .traceparent
            .filter(acceptable_traceparent)
            .and_then(|value| value.to_str().ok().map(str::to_owned))
    })
}
