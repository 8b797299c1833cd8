//! The cluster's ServiceAccount token issuer, read from the API server's discovery endpoints
//! (`/.well-known/openid-configuration`, `/openid/v1/jwks`; every ServiceAccount may read them
//! through the default `system:service-account-issuer-discovery` binding). The product service
//! checks the order service's projected tokens against these keys (see `build::identity`).

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
pub async fn discover(client: &Client) -> Result<ServiceIssuer, String> {
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

/// Reads the issuer now and then for as long as the operator runs, keeping the last good answer
/// (a failed read never takes the check away from running apps).
pub async fn keep_current(client: Client, context: Arc<Context>) {
    loop {
        let known = context
            .cluster
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .service_issuer
            .is_some();
        tokio::time::sleep(if known { REFRESH } else { RETRY }).await;
        match discover(&client).await {
            Ok(issuer) => {
                let mut facts = context
                    .cluster
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                if facts.service_issuer.as_ref() != Some(&issuer) {
                    info!(issuer = %issuer.issuer, "ServiceAccount issuer known: the product services will check the order services' tokens");
                    *facts = ClusterFacts {
                        service_issuer: Some(issuer),
                    };
                }
            }
            Err(error) => {
                warn!(%error, "cannot read the cluster's ServiceAccount issuer; keeping what was known (if anything)");
            }
        }
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
