//! `msa-operator check`: what the chart's `helm test` runs in the cluster, under the operator's
//! own ServiceAccount, to tell a user their install works: the operator answers `/readyz`
//! (through its metrics Service), and that ServiceAccount may list MicroserviceApps in the
//! operator's scope. Each finding is one line a user reads in `helm test --logs`.

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use kube::api::ObjectMeta;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;

use crate::crd::MicroserviceApp;

/// How long the operator may take to answer ready (a pod just started waits for its caches).
pub const READY_WITHIN: Duration = Duration::from_secs(60);
/// One request to the operator or the API server.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the install does not work, as the user should read it.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailed {
    #[error(
        "--metrics-url {0:?} is not http://<host>:<port> (the chart passes the metrics Service's address)"
    )]
    BadUrl(String),
    #[error(
        "the operator did not answer ready at {url}/readyz within {within:?} (last: {last}); see `kubectl logs -l app.kubernetes.io/name=msa-operator -n <release namespace>`"
    )]
    NotReady {
        url: String,
        within: Duration,
        last: String,
    },
    #[error(
        "the operator's ServiceAccount may not list MicroserviceApps {scope}: {reason}; `helm upgrade` restores the chart's RBAC"
    )]
    CannotList { scope: String, reason: String },
}

/// The metrics URL the check calls: `http://host:port`, no path.
pub fn metrics_base(url: &str) -> Result<String, CheckFailed> {
    let bad = || CheckFailed::BadUrl(url.to_owned());
    let uri: http::Uri = url.parse().map_err(|_| bad())?;
    let plain = uri.scheme_str() == Some("http")
        && uri.port_u16().is_some_and(|p| p > 0)
        && uri.host().is_some_and(|h| !h.is_empty())
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none();
    if !plain {
        return Err(bad());
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// `/readyz` until it answers 200 or `within` passes.
pub async fn operator_ready(base: &str, within: Duration) -> Result<String, CheckFailed> {
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let url = format!("{base}/readyz");
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| CheckFailed::BadUrl(base.to_owned()))?;
        let last = match tokio::time::timeout(REQUEST_TIMEOUT, http.get(uri)).await {
            Ok(Ok(answer)) => {
                let status = answer.status();
                let body = tokio::time::timeout(REQUEST_TIMEOUT, answer.into_body().collect())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
                    .unwrap_or_default();
                if status == http::StatusCode::OK {
                    return Ok(format!("the operator answers {url}: 200 {body}"));
                }
                format!("{status} {body}")
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {REQUEST_TIMEOUT:?}"),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(CheckFailed::NotReady {
                url: base.to_owned(),
                within,
                last,
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Lists the MicroserviceApps (metadata only) in each watched namespace, or in all of them.
pub async fn list_apps(
    client: &kube::Client,
    namespaces: &[String],
) -> Result<Vec<String>, CheckFailed> {
    let scopes: Vec<(String, Api<MicroserviceApp>)> = if namespaces.is_empty() {
        vec![("in every namespace".to_owned(), Api::all(client.clone()))]
    } else {
        namespaces
            .iter()
            .map(|ns| {
                (
                    format!("in namespace {ns}"),
                    Api::namespaced(client.clone(), ns),
                )
            })
            .collect()
    };
    let mut lines = Vec::new();
    for (scope, api) in scopes {
        let listed: Result<Vec<PartialObjectMeta<MicroserviceApp>>, String> =
            match tokio::time::timeout(REQUEST_TIMEOUT, api.list_metadata(&ListParams::default()))
                .await
            {
                Ok(Ok(list)) => Ok(list.items),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!(
                    "the API server did not answer within {REQUEST_TIMEOUT:?}"
                )),
            };
        let apps = listed.map_err(|reason| CheckFailed::CannotList {
            scope: scope.clone(),
            reason,
        })?;
        let metadata: Vec<ObjectMeta> = apps.into_iter().map(|a| a.metadata).collect();
        lines.push(listed_line(&scope, &metadata));
    }
    Ok(lines)
}

/// One report line for a listed scope.
fn listed_line(scope: &str, apps: &[ObjectMeta]) -> String {
    let names: Vec<String> = apps
        .iter()
        .take(5)
        .map(|a| {
            format!(
                "{}/{}",
                a.namespace.as_deref().unwrap_or("-"),
                a.name.as_deref().unwrap_or("-")
            )
        })
        .collect();
    let more = apps.len().saturating_sub(names.len());
    let shown = match (names.is_empty(), more) {
        (true, _) => String::new(),
        (false, 0) => format!(": {}", names.join(", ")),
        (false, more) => format!(": {} and {more} more", names.join(", ")),
    };
    format!(
        "the operator's ServiceAccount lists MicroserviceApps {scope}: {}{shown}",
        apps.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_plain_http_address_is_taken() {
        assert_eq!(
            metrics_base("http://198.19.0.12:8080").unwrap(),
            "http://198.19.0.12:8080"
        );
        assert_eq!(
            metrics_base("http://op-metrics.msa-system.svc:8080/").unwrap(),
            "http://op-metrics.msa-system.svc:8080"
        );
        for bad in [
            "",
            "198.19.0.12:8080",
            "https://198.19.0.12:8080",
            "http://198.19.0.12",
            "http://198.19.0.12:0",
            "http://198.19.0.12:8080/readyz",
            "http://:8080",
            "http://$(MSA_OPERATOR_METRICS_SERVICE_HOST):$(MSA_OPERATOR_METRICS_SERVICE_PORT)",
        ] {
            assert!(
                matches!(metrics_base(bad), Err(CheckFailed::BadUrl(_))),
                "{bad:?} was taken"
            );
        }
    }

    fn app(namespace: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn a_listed_scope_names_a_few_apps_and_counts_the_rest() {
        assert_eq!(
            listed_line("in every namespace", &[]),
            "the operator's ServiceAccount lists MicroserviceApps in every namespace: 0"
        );
        assert_eq!(
            listed_line("in namespace demo", &[app("demo", "shop")]),
            "the operator's ServiceAccount lists MicroserviceApps in namespace demo: 1: demo/shop"
        );
        let many: Vec<_> = (0..7).map(|i| app("a", &format!("s{i}"))).collect();
        assert!(
            listed_line("in every namespace", &many)
                .ends_with(": 7: a/s0, a/s1, a/s2, a/s3, a/s4 and 2 more")
        );
    }

    #[tokio::test]
    async fn an_operator_that_is_not_ready_is_reported_with_its_last_answer() {
        // A server on 127.0.0.1:0 that answers 503 "starting", as a pod waiting for its caches.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/readyz",
            axum::routing::get(|| async { (http::StatusCode::SERVICE_UNAVAILABLE, "starting") }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let base = metrics_base(&format!("http://{addr}")).unwrap();
        let failed = operator_ready(&base, Duration::from_millis(100))
            .await
            .unwrap_err();
        let message = failed.to_string();
        assert!(
            message.contains("503 Service Unavailable starting")
                && message.contains("kubectl logs"),
            "{message}"
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_ready_operator_is_reported_with_its_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route("/readyz", axum::routing::get(|| async { "ready" }));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let line = operator_ready(&format!("http://{addr}"), Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(
            line,
            format!("the operator answers http://{addr}/readyz: 200 ready")
        );
        server.abort();
    }
}
