//! What the operator learns from the cluster for rendering ([`ClusterFacts`]): the
//! ServiceAccount token issuer, read from the API server's discovery endpoints
//! (`/.well-known/openid-configuration`, `/openid/v1/jwks`; every ServiceAccount may read them
//! through the default `system:service-account-issuer-discovery` binding), whose keys the
//! product service checks the order service's projected tokens against (see
//! `build::identity`); and whether the Prometheus Operator's PodMonitor API is installed.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use kube::Client;
use serde::Deserialize;
use tracing::{info, warn};

use crate::build::{ClusterFacts, ServiceIssuer};
use crate::reconcile::Context;

/// Largest key set accepted (a real one is a few KiB).
const MAX_JWKS: usize = 64 * 1024;
/// How often the keys are read again (the API server's signing keys rotate rarely).
const REFRESH: Duration = Duration::from_secs(600);
const RETRY: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(10);

/// The issuer and its keys, or why they could not be read.
pub async fn discover_issuer(client: &Client) -> Result<ServiceIssuer, String> {
    #[derive(Deserialize)]
    struct Configuration {
        issuer: String,
    }
    let get = |path: &'static str| async move {
        let request = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(TIMEOUT, client.request_text(request))
            .await
            .map_err(|_| format!("{path} did not answer within {TIMEOUT:?}"))?
            .map_err(|e| format!("{path}: {e}"))
    };
    let configuration: Configuration =
        serde_json::from_str(&get("/.well-known/openid-configuration").await?)
            .map_err(|e| format!("the issuer discovery document is not readable: {e}"))?;
    let jwks = get("/openid/v1/jwks").await?;
    check_jwks(&jwks)?;
    Ok(ServiceIssuer {
        issuer: configuration.issuer,
        jwks,
    })
}

/// Whether `monitoring.coreos.com/v1` serves `podmonitors`.
pub async fn discover_pod_monitors(client: &Client) -> Result<bool, String> {
    match tokio::time::timeout(
        TIMEOUT,
        client.list_api_group_resources("monitoring.coreos.com/v1"),
    )
    .await
    {
        Err(_) => Err(format!("API discovery did not answer within {TIMEOUT:?}")),
        Ok(Ok(list)) => Ok(list.resources.iter().any(|r| r.name == "podmonitors")),
        Ok(Err(kube::Error::Api(status))) if status.code == 404 => Ok(false),
        Ok(Err(error)) => Err(error.to_string()),
    }
}

/// Everything at once, keeping what `known` had where a read fails.
pub async fn discover(client: &Client, known: &ClusterFacts) -> ClusterFacts {
    let service_issuer = match discover_issuer(client).await {
        Ok(issuer) => Some(issuer),
        Err(error) => {
            warn!(%error, "cannot read the cluster's ServiceAccount issuer; keeping what was known (if anything)");
            known.service_issuer.clone()
        }
    };
    let pod_monitors = match discover_pod_monitors(client).await {
        Ok(present) => present,
        Err(error) => {
            warn!(%error, "cannot tell whether the PodMonitor API is installed; keeping what was known");
            known.pod_monitors
        }
    };
    ClusterFacts {
        service_issuer,
        pod_monitors,
    }
}

/// A bounded JSON document with a `keys` array.
fn check_jwks(jwks: &str) -> Result<(), String> {
    if jwks.len() > MAX_JWKS {
        return Err(format!("the issuer's key set is over {MAX_JWKS} bytes"));
    }
    let value: serde_json::Value =
        serde_json::from_str(jwks).map_err(|e| format!("the key set is not JSON: {e}"))?;
    if value["keys"].as_array().is_none_or(Vec::is_empty) {
        return Err("the key set has no keys".into());
    }
    Ok(())
}

/// Reads the facts and keeps them in `context` (the last good answers where a read fails),
/// saying what changed.
pub async fn learn(client: &Client, context: &Context) {
    let known = context
        .cluster
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let facts = discover(client, &known).await;
    if facts != known {
        info!(
            issuer = facts
                .service_issuer
                .as_ref()
                .map(|i| i.issuer.as_str())
                .unwrap_or("unknown"),
            pod_monitors = facts.pod_monitors,
            "what the cluster offers: the ServiceAccount issuer (product services check the order services' tokens when known), the PodMonitor API; apps are rendered for it from their next reconcile"
        );
        *context
            .cluster
            .write()
            .unwrap_or_else(PoisonError::into_inner) = facts;
    }
}

/// Learns the facts again now and then for as long as the operator runs (every 10 minutes,
/// every minute while the issuer is unknown): a failed read never takes the check away from
/// running apps.
pub async fn keep_current(client: Client, context: Arc<Context>) {
    loop {
        let issuer_known = context
            .cluster
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .service_issuer
            .is_some();
        tokio::time::sleep(if issuer_known { REFRESH } else { RETRY }).await;
        learn(&client, &context).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_sets_must_hold_keys_and_stay_small() {
        assert!(check_jwks(r#"{"keys": [{"kty": "RSA"}]}"#).is_ok());
        assert!(check_jwks(r#"{"keys": []}"#).is_err());
        assert!(check_jwks("not json").is_err());
        assert!(
            check_jwks(&format!(
                r#"{{"keys": [{{"x": "{}"}}]}}"#,
                "a".repeat(MAX_JWKS)
            ))
            .is_err()
        );
    }
}
