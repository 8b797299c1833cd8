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
        "--metrics-url {0:?} is not http://<host>:<port> or tcp://<host>:<port> (the chart passes the metrics Service's address)"
    )]
    BadUrl(String),
    #[error(
        "--metrics-url {0:?} still names a variable: the pod did not get the metrics Service's environment (is enableServiceLinks off, or was the Service missing when the pod started?)"
    )]
    NoServiceEnvironment(String),
    #[error(
        "the operator did not answer ready at {url}/readyz within {within:?} (last: {last}); see `kubectl logs -l app.kubernetes.io/name=msa-operator -n <release namespace>`"
    )]
    NotReady {
        url: String,
        within: Duration,
        last: String,
    },
    #[error(
        "the operator's ServiceAccount may not list MicroserviceApps {scope} ({reason}); `helm upgrade` restores the chart's RBAC"
    )]
    Forbidden { scope: String, reason: String },
    #[error(
        "the API server serves no MicroserviceApps: the CRD is not installed; `kubectl apply --server-side -f crds/` (Helm installs it only with the first install)"
    )]
    NoCrd,
    #[error("listing MicroserviceApps {scope} failed: {reason}")]
    CannotList { scope: String, reason: String },
}

/// The metrics URL the check calls, `http://host:port`: given as such, or as the
/// `tcp://host:port` Kubernetes puts in a Service's `<NAME>_PORT` variable (which brackets an
/// IPv6 address, unlike `<NAME>_SERVICE_HOST`).
pub fn metrics_base(url: &str) -> Result<String, CheckFailed> {
    if url.contains("$(") {
        return Err(CheckFailed::NoServiceEnvironment(url.to_owned()));
    }
    let bad = || CheckFailed::BadUrl(url.to_owned());
    let http = match url.strip_prefix("tcp://") {
        Some(rest) => format!("http://{rest}"),
        None => url.to_owned(),
    };
    let uri: http::Uri = http.parse().map_err(|_| bad())?;
    let plain = uri.scheme_str() == Some("http")
        && uri.port_u16().is_some_and(|p| p > 0)
        && uri.host().is_some_and(|h| !h.is_empty())
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none();
    if !plain {
        return Err(bad());
    }
    Ok(http.trim_end_matches('/').to_owned())
}

/// `/readyz` until it answers 200 or `within` passes.
pub async fn operator_ready(base: &str, within: Duration) -> Result<String, CheckFailed> {
    let http = HttpClient::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let url = format!("{base}/readyz");
    let deadline = tokio::time::Instant::now() + within;
    let uri: http::Uri = url
        .parse()
        .map_err(|_| CheckFailed::BadUrl(base.to_owned()))?;
    loop {
        let last = match tokio::time::timeout(REQUEST_TIMEOUT, http.get(uri.clone())).await {
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
        let (count, first) = list_scope(&api)
            .await
            .map_err(|reason| classify(&scope, reason))?;
        lines.push(listed_line(&scope, count, &first));
    }
    Ok(lines)
}

/// Why a list failed, as the API server or the clock said.
enum ListError {
    Api { code: u16, message: String },
    Other(String),
}

fn classify(scope: &str, error: ListError) -> CheckFailed {
    match error {
        ListError::Api { code: 403, message } => CheckFailed::Forbidden {
            scope: scope.to_owned(),
            reason: message,
        },
        ListError::Api { code: 404, .. } => CheckFailed::NoCrd,
        ListError::Api { code, message } => CheckFailed::CannotList {
            scope: scope.to_owned(),
            reason: format!("{message} ({code})"),
        },
        ListError::Other(reason) => CheckFailed::CannotList {
            scope: scope.to_owned(),
            reason,
        },
    }
}

/// Counts the apps page by page (metadata only, `PAGE` at a time, so a large fleet costs the
/// check pod little memory) and keeps the first few names.
async fn list_scope(api: &Api<MicroserviceApp>) -> Result<(usize, Vec<ObjectMeta>), ListError> {
    const PAGE: u32 = 500;
    let (mut count, mut first, mut next) = (0usize, Vec::new(), None::<String>);
    loop {
        let mut params = ListParams::default().limit(PAGE);
        if let Some(token) = &next {
            params = params.continue_token(token);
        }
        let page: kube::core::ObjectList<PartialObjectMeta<MicroserviceApp>> =
            match tokio::time::timeout(REQUEST_TIMEOUT, api.list_metadata(&params)).await {
                Ok(Ok(page)) => page,
                Ok(Err(kube::Error::Api(status))) => {
                    return Err(ListError::Api {
                        code: status.code,
                        message: status.message,
                    });
                }
                Ok(Err(error)) => return Err(ListError::Other(error.to_string())),
                Err(_) => {
                    return Err(ListError::Other(format!(
                        "the API server did not answer within {REQUEST_TIMEOUT:?}"
                    )));
                }
            };
        count = count.saturating_add(page.items.len());
        first.extend(
            page.items
                .into_iter()
                .take(SHOWN.saturating_sub(first.len()))
                .map(|a| a.metadata),
        );
        next = page.metadata.continue_.filter(|t| !t.is_empty());
        if next.is_none() {
            return Ok((count, first));
        }
    }
}

/// Apps named in a report line; the rest are counted.
const SHOWN: usize = 5;

/// One report line for a listed scope: how many, and the first few by name.
fn listed_line(scope: &str, count: usize, first: &[ObjectMeta]) -> String {
    let names: Vec<String> = first
        .iter()
        .map(|a| {
            format!(
                "{}/{}",
                a.namespace.as_deref().unwrap_or("-"),
                a.name.as_deref().unwrap_or("-")
            )
        })
        .collect();
    let more = count.saturating_sub(names.len());
    let shown = match (names.is_empty(), more) {
        (true, _) => String::new(),
        (false, 0) => format!(": {}", names.join(", ")),
        (false, more) => format!(": {} and {more} more", names.join(", ")),
    };
    format!("the operator's ServiceAccount lists MicroserviceApps {scope}: {count}{shown}")
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
        // A Service's <NAME>_PORT, IPv4 and (bracketed) IPv6.
        assert_eq!(
            metrics_base("tcp://198.19.0.12:8080").unwrap(),
            "http://198.19.0.12:8080"
        );
        assert_eq!(
            metrics_base("tcp://[fd00:10:96::1a2b]:8080").unwrap(),
            "http://[fd00:10:96::1a2b]:8080"
        );
        assert!(matches!(
            metrics_base("$(MSA_OPERATOR_METRICS_PORT)"),
            Err(CheckFailed::NoServiceEnvironment(_))
        ));
        for bad in [
            "",
            "198.19.0.12:8080",
            "https://198.19.0.12:8080",
            "http://198.19.0.12",
            "http://198.19.0.12:0",
            "http://198.19.0.12:8080/readyz",
            "http://:8080",
            "http://fd00:10:96::1a2b:8080",
            "udp://198.19.0.12:8080",
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
            listed_line("in every namespace", 0, &[]),
            "the operator's ServiceAccount lists MicroserviceApps in every namespace: 0"
        );
        assert_eq!(
            listed_line("in namespace demo", 1, &[app("demo", "shop")]),
            "the operator's ServiceAccount lists MicroserviceApps in namespace demo: 1: demo/shop"
        );
        let first: Vec<_> = (0..SHOWN).map(|i| app("a", &format!("s{i}"))).collect();
        assert!(
            listed_line("in every namespace", 1207, &first)
                .ends_with(": 1207: a/s0, a/s1, a/s2, a/s3, a/s4 and 1202 more")
        );
    }

    #[test]
    fn each_list_failure_says_what_to_do_about_it() {
        let forbidden = classify(
            "in namespace demo",
            ListError::Api {
                code: 403,
                message: "microserviceapps.msa.dev is forbidden".into(),
            },
        )
        .to_string();
        assert!(
            forbidden.contains("may not list MicroserviceApps in namespace demo")
                && forbidden.contains("helm upgrade"),
            "{forbidden}"
        );
        let missing = classify(
            "in every namespace",
            ListError::Api {
                code: 404,
                message: "the server could not find the requested resource".into(),
            },
        )
        .to_string();
        assert!(
            missing.contains("kubectl apply --server-side -f crds/"),
            "{missing}"
        );
        for other in [
            ListError::Api {
                code: 500,
                message: "etcd is down".into(),
            },
            ListError::Other("the API server did not answer within 10s".into()),
        ] {
            let said = classify("in every namespace", other).to_string();
            assert!(
                said.starts_with("listing MicroserviceApps in every namespace failed")
                    && !said.contains("helm upgrade"),
                "{said}"
            );
        }
    }

    #[tokio::test]
    async fn an_operator_that_is_not_ready_is_reported_with_its_last_answer() {
        // As a pod waiting for its caches.
        let (addr, server) = readyz_server(http::StatusCode::SERVICE_UNAVAILABLE, "starting").await;
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
        let (addr, server) = readyz_server(http::StatusCode::OK, "ready").await;
        let line = operator_ready(&format!("http://{addr}"), Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(
            line,
            format!("the operator answers http://{addr}/readyz: 200 ready")
        );
        server.abort();
    }

    /// A server on 127.0.0.1:0 whose /readyz answers `status` and `body`.
    async fn readyz_server(
        status: http::StatusCode,
        body: &'static str,
    ) -> (
        std::net::SocketAddr,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/readyz",
            axum::routing::get(move || async move { (status, body) }),
        );
        (
            addr,
            tokio::spawn(async move { axum::serve(listener, app).await }),
        )
    }
}
