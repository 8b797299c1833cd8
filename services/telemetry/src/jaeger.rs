//! A real OTLP receiver for tests: Jaeger (v2, on the OpenTelemetry Collector) built from its Go
//! module by `hack/tools.sh jaeger`, with in-memory storage and every listener on loopback, and
//! a reader of the traces it stored.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where Jaeger's three listeners go: each on a loopback address of its own, on a port the OS
/// chooses, so the kernel's list of Jaeger's sockets tells them apart.
const OTLP_HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const QUERY_HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const GRPC_HOST: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// A client for loopback that ignores any proxy set in the environment.
fn loopback_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("an HTTP client")
}

/// A Jaeger process with in-memory storage, stopped and its folder removed when dropped.
pub struct Jaeger {
    child: Child,
    dir: PathBuf,
    /// Where components send spans (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub otlp: String,
    /// Its query API (`/api/traces/{id}`).
    pub query: String,
}

impl Jaeger {
    /// Builds Jaeger if needed (`hack/tools.sh jaeger`, cached) and starts it on loopback ports
    /// the OS chooses (Jaeger does not say which, the kernel does); `name` tells concurrent
    /// tests' folders apart.
    pub async fn start(name: &str) -> Jaeger {
        let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../hack/tools.sh");
        let built = Command::new(tools)
            .arg("jaeger")
            .stderr(Stdio::inherit())
            .output()
            .expect("run hack/tools.sh jaeger (needs Go)");
        assert!(built.status.success(), "hack/tools.sh jaeger failed");
        let binary = String::from_utf8(built.stdout).unwrap().trim().to_owned();
        let dir = std::env::temp_dir().join(format!("msa-jaeger-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (otlp, query, grpc) = (
            SocketAddr::from((OTLP_HOST, 0)),
            SocketAddr::from((QUERY_HOST, 0)),
            SocketAddr::from((GRPC_HOST, 0)),
        );
        // Every listener on loopback; no self-metrics port.
        let config = format!(
            "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces: {{receivers: [otlp], processors: [], exporters: [jaeger_storage_exporter]}}
  telemetry:
    metrics: {{level: none}}
    logs: {{level: warn}}
extensions:
  jaeger_query:
    storage: {{traces: memory}}
    http: {{endpoint: \"{query}\"}}
    grpc: {{endpoint: \"{grpc}\"}}
  jaeger_storage:
    backends:
      memory:
        memory: {{max_traces: 1000}}
receivers:
  otlp:
    protocols:
      http: {{endpoint: \"{otlp}\"}}
exporters:
  jaeger_storage_exporter: {{trace_storage: memory}}
"
        );
        std::fs::write(dir.join("config.yaml"), config).unwrap();
        let child = Command::new(binary)
            .arg("--config")
            .arg(dir.join("config.yaml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("jaeger.log")).unwrap())
            .spawn()
            .expect("start jaeger");
        let mut jaeger = Jaeger {
            child,
            dir,
            otlp: String::new(),
            query: String::new(),
        };
        let log = |jaeger: &Jaeger| {
            std::fs::read_to_string(jaeger.dir.join("jaeger.log")).unwrap_or_default()
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let (otlp, query) = loop {
            if let Some(status) = jaeger.child.try_wait().unwrap() {
                panic!(
                    "jaeger exited with {status} before listening:\n{}",
                    log(&jaeger)
                );
            }
            let listening = msa_listening::addresses(jaeger.child.id()).unwrap_or_default();
            let on = |host: Ipv4Addr| {
                let found: Vec<SocketAddr> = listening
                    .iter()
                    .copied()
                    .filter(|a| a.ip() == IpAddr::V4(host))
                    .collect();
                (found.len() == 1).then(|| found[0])
            };
            if let (Some(otlp), Some(query), Some(_)) =
                (on(OTLP_HOST), on(QUERY_HOST), on(GRPC_HOST))
            {
                break (otlp, query);
            }
            assert!(
                Instant::now() < deadline,
                "jaeger did not listen on {OTLP_HOST}, {QUERY_HOST} and {GRPC_HOST} (one port each) within 60 s ({listening:?}):\n{}",
                log(&jaeger)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        jaeger.otlp = format!("http://{otlp}");
        jaeger.query = format!("http://{query}");
        let client = loopback_client();
        loop {
            let answered = client
                .get(format!("{}/api/services", jaeger.query))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if answered {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "jaeger did not start within 60 s: {}",
                log(&jaeger)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        jaeger
    }

    /// The spans of trace `id` once `ready` accepts them (the exporters batch; Jaeger stores
    /// what arrives), or what had arrived after 30 s.
    pub async fn trace(&self, id: &str, ready: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        self.poll(&format!("/api/traces/{id}"), &[], |traces| {
            traces.first().is_some_and(|spans| ready(spans))
        })
        .await
        .into_iter()
        .next()
        .unwrap_or_default()
    }

    /// The traces (each as its spans) that have a span of `service` named `operation`, once
    /// there is at least one, or none after 30 s.
    pub async fn traces_of(&self, service: &str, operation: &str) -> Vec<Vec<Span>> {
        let query = [
            ("service", service),
            ("operation", operation),
            ("limit", "20"),
        ];
        self.poll("/api/traces", &query, |traces| !traces.is_empty())
            .await
    }

    /// Asks the query API at `path` every 250 ms until `ready` accepts the traces it answers,
    /// for at most 30 s; returns the last answer.
    async fn poll(
        &self,
        path: &str,
        query: &[(&str, &str)],
        ready: impl Fn(&[Vec<Span>]) -> bool,
    ) -> Vec<Vec<Span>> {
        let client = loopback_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let traces = match client
                .get(format!("{}{path}", self.query))
                .query(query)
                .timeout(Duration::from_secs(5))
                .send()
                .await
            {
                Ok(answer) => traces(&answer.json().await.unwrap_or(Value::Null)),
                Err(_) => Vec::new(),
            };
            if ready(&traces) || Instant::now() > deadline {
                return traces;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A span as the checks read it.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub operation: String,
    pub id: String,
    /// The span it is a child of (`CHILD_OF`), which may be outside the trace.
    pub parent: Option<String>,
    pub tags: HashMap<String, Value>,
}

/// An answer of Jaeger's query API (`{"data": [trace, ...]}`) → each trace's spans.
fn traces(answer: &Value) -> Vec<Vec<Span>> {
    answer["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(spans)
        .collect()
}

/// One trace of Jaeger's JSON → its spans.
fn spans(trace: &Value) -> Vec<Span> {
    let services = &trace["processes"];
    trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|span| Span {
            service: services[span["processID"].as_str().unwrap_or("")]["serviceName"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            operation: span["operationName"].as_str().unwrap_or("").to_owned(),
            id: span["spanID"].as_str().unwrap_or("").to_owned(),
            parent: span["references"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["refType"] == "CHILD_OF")
                .and_then(|r| r["spanID"].as_str())
                .map(str::to_owned),
            tags: span["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|tag| Some((tag["key"].as_str()?.to_owned(), tag["value"].clone())))
                .collect(),
        })
        .collect()
}

/// The one span of `service` named `operation`.
pub fn one<'a>(spans: &'a [Span], service: &str, operation: &str) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.service == service && s.operation == operation)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {service} span {operation:?} in {:#?}",
        spans
            .iter()
            .map(|s| format!("{} {}", s.service, s.operation))
            .collect::<Vec<_>>()
    );
    found[0]
}

/// Fails unless `child` is a child of `parent`.
pub fn assert_child(child: &Span, parent: &Span) {
    assert_eq!(
        child.parent.as_deref(),
        Some(parent.id.as_str()),
        "{} {:?} is a child of {} {:?}",
        child.service,
        child.operation,
        parent.service,
        parent.operation
    );
}
