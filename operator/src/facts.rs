//! What the operator learns from the cluster for rendering ([`ClusterFacts`]): the
//! ServiceAccount token issuer, read from the API server's discovery endpoints
//! (`/.well-known/openid-configuration`, `/openid/v1/jwks`; every ServiceAccount may read them
//! through the default `system:service-account-issuer-discovery` binding), whose keys the
//! order and product services check each other's projected tokens against (see
//! `build::identity`); and whether the Prometheus Operator's PodMonitor API is installed.
//!
//! A fact the operator does not know is never guessed: a failed read keeps what was known, and
//! before anything is known an app is rendered with the facts its live objects were rendered
//! with ([`resolve`]) or, if it has none, waits. Guessing "no issuer" would render every product
//! service without service identity and roll it, fleet-wide, whenever the first read after a
//! start or failover fails.

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
/// How soon a fact that is not known yet is read again (apps may be waiting for it).
const RETRY: Duration = Duration::from_secs(10);
const TIMEOUT: Duration = Duration::from_secs(10);

/// One fact as the operator knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Known<T> {
    /// Not read yet, or every read failed: nothing may be rendered from a guess.
    #[default]
    Unknown,
    /// What the cluster answered.
    Is(T),
}

/// Everything the operator learned from the cluster, as kept in the [`Context`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// `Is(None)`: the cluster does not offer issuer discovery to the operator (404 or 403);
    /// product services then run without the check, as on clusters without the feature.
    pub service_issuer: Known<Option<ServiceIssuer>>,
    pub pod_monitors: Known<bool>,
}

impl Learned {
    /// Every fact known, as given.
    pub fn known(facts: ClusterFacts) -> Self {
        Self {
            service_issuer: Known::Is(facts.service_issuer),
            pod_monitors: Known::Is(facts.pod_monitors),
        }
    }

    fn is_complete(&self) -> bool {
        self.service_issuer != Known::Unknown && self.pod_monitors != Known::Unknown
    }
}

/// What one app's live objects say about the facts they were rendered with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveFacts {
    /// The issuer of the live product workload: None when there is no product workload yet,
    /// `Some(None)` when it runs without the check.
    pub product_issuer: Option<Option<String>>,
    /// The keys in the app's live issuer ConfigMap.
    pub issuer_keys: Option<String>,
    /// Whether the app's status says it has a PodMonitor.
    pub had_pod_monitor: bool,
    /// The ClusterIP of the app's broker Service, once it has one.
    pub broker_address: Option<String>,
}

/// The facts to render one app with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub facts: ClusterFacts,
    /// False while the PodMonitor API's presence is not known: the app's PodMonitor is then
    /// neither applied nor deleted, and `status.monitoring` keeps what it said.
    pub pod_monitors_known: bool,
}

/// Decides what to render an app with: what the operator knows, else what the app's live
/// objects were rendered with (so nothing changes), else nothing (`Err`: what it waits for).
pub fn resolve(learned: &Learned, live: &LiveFacts) -> Result<Resolved, String> {
    let service_issuer = match (&learned.service_issuer, &live.product_issuer) {
        (Known::Is(issuer), _) => issuer.clone(),
        // Running without the check: rendering it so changes nothing.
        (Known::Unknown, Some(None)) => None,
        (Known::Unknown, Some(Some(issuer))) => match &live.issuer_keys {
            Some(keys) => Some(ServiceIssuer {
                issuer: issuer.clone(),
                jwks: keys.clone(),
            }),
            None => {
                return Err(format!(
                    "the cluster's ServiceAccount issuer (the order and product services check \
                     tokens of {issuer:?}, but its keys' ConfigMap is gone and the issuer \
                     discovery endpoints have not answered yet)"
                ));
            }
        },
        (Known::Unknown, None) => {
            return Err(
                "the cluster's ServiceAccount issuer (the issuer discovery endpoints \
                     have not answered yet; the order and product services check each other's \
                     tokens against it)"
                    .to_owned(),
            );
        }
    };
    let (pod_monitors, pod_monitors_known) = match learned.pod_monitors {
        Known::Is(present) => (present, true),
        Known::Unknown => (live.had_pod_monitor, false),
    };
    Ok(Resolved {
        facts: ClusterFacts {
            service_issuer,
            pod_monitors,
            broker_address: live.broker_address.clone(),
            // Read from the caches when the app is rendered (`reconcile::config_sources`).
            config_sources: Default::default(),
            running_sources: Default::default(),
        },
        pod_monitors_known,
    })
}

/// Why the issuer could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum IssuerUnread {
    /// The API server says there is none for the operator (404, 403): a fact, not a failure.
    NotOffered(String),
    /// No usable answer (timeout, transport, 5xx, a bad document): nothing learned.
    Failed(String),
}

/// The issuer and its keys, or why they could not be read.
pub async fn discover_issuer(client: &Client) -> Result<ServiceIssuer, IssuerUnread> {
    #[derive(Deserialize)]
    struct Configuration {
        issuer: String,
    }
    let get = |path: &'static str| async move {
        let request = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| IssuerUnread::Failed(e.to_string()))?;
        match tokio::time::timeout(TIMEOUT, client.request_text(request)).await {
            Err(_) => Err(IssuerUnread::Failed(format!(
                "{path} did not answer within {TIMEOUT:?}"
            ))),
            Ok(Err(kube::Error::Api(status))) if matches!(status.code, 403 | 404) => Err(
                IssuerUnread::NotOffered(format!("{path}: {} {}", status.code, status.message)),
            ),
            Ok(Err(error)) => Err(IssuerUnread::Failed(format!("{path}: {error}"))),
            Ok(Ok(text)) => Ok(text),
        }
    };
    let configuration: Configuration =
        serde_json::from_str(&get("/.well-known/openid-configuration").await?).map_err(|e| {
            IssuerUnread::Failed(format!(
                "the issuer discovery document is not readable: {e}"
            ))
        })?;
    let jwks = get("/openid/v1/jwks").await?;
    check_jwks(&jwks).map_err(IssuerUnread::Failed)?;
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

/// What is known after one read: the answer where there is one, else what was known. A known
/// issuer is never replaced by "none offered" (that would roll every order and product service).
pub fn learned_from(
    known: &Learned,
    issuer: Result<ServiceIssuer, IssuerUnread>,
    pod_monitors: Result<bool, String>,
) -> Learned {
    let service_issuer = match issuer {
        Ok(issuer) => Known::Is(Some(issuer)),
        Err(IssuerUnread::NotOffered(why)) => match &known.service_issuer {
            Known::Is(Some(_)) => {
                warn!(%why, "the ServiceAccount issuer is no longer offered; keeping the one known");
                known.service_issuer.clone()
            }
            _ => Known::Is(None),
        },
        Err(IssuerUnread::Failed(error)) => {
            warn!(%error, "cannot read the cluster's ServiceAccount issuer; keeping what was known (apps that need it wait)");
            known.service_issuer.clone()
        }
    };
    let pod_monitors = match pod_monitors {
        Ok(present) => Known::Is(present),
        Err(error) => {
            warn!(%error, "cannot tell whether the PodMonitor API is installed; keeping what was known");
            known.pod_monitors.clone()
        }
    };
    Learned {
        service_issuer,
        pod_monitors,
    }
}

/// Everything at once, keeping what `known` had where a read fails.
pub async fn discover(client: &Client, known: &Learned) -> Learned {
    learned_from(
        known,
        discover_issuer(client).await,
        discover_pod_monitors(client).await,
    )
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
    let learned = discover(client, &known).await;
    if learned != known {
        let issuer = match &learned.service_issuer {
            Known::Is(Some(issuer)) => issuer.issuer.clone(),
            Known::Is(None) => "not offered".to_owned(),
            Known::Unknown => "unknown".to_owned(),
        };
        info!(
            %issuer,
            pod_monitors = ?learned.pod_monitors,
            "what the cluster offers: the ServiceAccount issuer (order and product services check each other's tokens when known), the PodMonitor API; apps are rendered for it from their next reconcile"
        );
        *context
            .cluster
            .write()
            .unwrap_or_else(PoisonError::into_inner) = learned;
    }
}

/// Learns the facts again now and then for as long as the operator runs (every 10 minutes,
/// every 10 seconds while one is unknown): a failed read never takes the check away from
/// running apps.
pub async fn keep_current(client: Client, context: Arc<Context>) {
    loop {
        let complete = context
            .cluster
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_complete();
        tokio::time::sleep(if complete { REFRESH } else { RETRY }).await;
        learn(&client, &context).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(name: &str) -> ServiceIssuer {
        ServiceIssuer {
            issuer: name.to_owned(),
            jwks: format!("keys of {name}"),
        }
    }

    fn live(product_issuer: Option<Option<&str>>, keys: Option<&str>) -> LiveFacts {
        LiveFacts {
            product_issuer: product_issuer.map(|i| i.map(str::to_owned)),
            issuer_keys: keys.map(str::to_owned),
            had_pod_monitor: false,
            broker_address: None,
        }
    }

    /// Issue 28, H5: an unknown issuer never renders a running app differently.
    #[test]
    fn an_unknown_issuer_keeps_what_the_app_runs_with_or_waits() {
        let unknown = Learned::default();
        // Running with the check: rendered with the live issuer and the live keys.
        let kept = resolve(
            &unknown,
            &live(Some(Some("https://kubernetes.default.svc")), Some("keys")),
        )
        .unwrap();
        assert_eq!(
            kept.facts.service_issuer,
            Some(ServiceIssuer {
                issuer: "https://kubernetes.default.svc".to_owned(),
                jwks: "keys".to_owned()
            })
        );
        // Running without it: rendered without it (no change, no roll).
        assert_eq!(
            resolve(&unknown, &live(Some(None), None))
                .unwrap()
                .facts
                .service_issuer,
            None
        );
        // A new app, or a running one whose keys are gone: wait, saying for what.
        let waits = resolve(&unknown, &live(None, None)).unwrap_err();
        assert!(waits.contains("ServiceAccount issuer"), "{waits}");
        assert!(resolve(&unknown, &live(Some(Some("i")), None)).is_err());
        // Known facts win over what the app runs with.
        let known = Learned::known(ClusterFacts {
            service_issuer: Some(issuer("new")),
            pod_monitors: true,
            ..ClusterFacts::default()
        });
        let resolved = resolve(&known, &live(Some(Some("old")), Some("old keys"))).unwrap();
        assert_eq!(resolved.facts.service_issuer, Some(issuer("new")));
        assert!(resolved.pod_monitors_known && resolved.facts.pod_monitors);
    }

    #[test]
    fn an_unknown_pod_monitor_api_keeps_what_the_status_says() {
        let mut learned = Learned::known(ClusterFacts::default());
        learned.pod_monitors = Known::Unknown;
        let mut had = live(None, None);
        had.had_pod_monitor = true;
        let resolved = resolve(&learned, &had).unwrap();
        assert!(resolved.facts.pod_monitors && !resolved.pod_monitors_known);
    }

    #[test]
    fn a_failed_read_keeps_what_was_known_and_none_offered_never_replaces_a_known_issuer() {
        let failed = || Err(IssuerUnread::Failed("timeout".to_owned()));
        let not_offered = || Err(IssuerUnread::NotOffered("404".to_owned()));
        let nothing = Learned::default();
        assert_eq!(
            learned_from(&nothing, failed(), Err("x".to_owned())),
            nothing
        );
        assert_eq!(
            learned_from(&nothing, not_offered(), Ok(false)),
            Learned::known(ClusterFacts::default())
        );
        let known = Learned::known(ClusterFacts {
            service_issuer: Some(issuer("a")),
            pod_monitors: true,
            ..ClusterFacts::default()
        });
        assert_eq!(learned_from(&known, failed(), Err("x".to_owned())), known);
        assert_eq!(learned_from(&known, not_offered(), Ok(true)), known);
        assert_eq!(
            learned_from(&known, Ok(issuer("b")), Ok(false)).service_issuer,
            Known::Is(Some(issuer("b")))
        );
    }

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
