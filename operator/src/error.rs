//! Errors of one reconcile, with a low-cardinality category for metrics and Events.

use crate::build::BuildError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the API server failed (network, permissions, conflicts, rejection).
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),

    /// The app could not be rendered.
    #[error("cannot render child objects: {0}")]
    Build(#[from] BuildError),

    /// Some children were rejected or could not be written; status names them.
    #[error("could not apply {count} child object(s): {first}")]
    Apply { count: usize, first: String },

    /// A rendered object did not serialize (a bug, never a user error).
    #[error("could not serialize a rendered object: {0}")]
    Serialize(#[from] serde_json::Error),

    /// The reflector caches stopped (the process is shutting down).
    #[error("the object caches stopped before they were filled")]
    CacheStopped,

    /// The reflector caches have not listed yet (the API server refuses or is slow to list).
    #[error(
        "the object caches did not finish their first list within {0:?}; check the operator's RBAC and the API server"
    )]
    CachesNotListed(std::time::Duration),
}

impl Error {
    /// A stable, low-cardinality label for the `reconcile_errors_total` metric.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(status)) => match status.code {
                403 => "forbidden",
                404 => "not_found",
                409 => "conflict",
                422 => "invalid",
                429 => "throttled",
                500..=599 => "api_server",
                _ => "api",
            },
            Self::Kube(_) => "transport",
            Self::Build(_) => "build",
            Self::Apply { .. } => "apply",
            Self::Serialize(_) => "serialize",
            Self::CacheStopped => "shutdown",
            Self::CachesNotListed(_) => "caches_not_listed",
        }
    }
}
