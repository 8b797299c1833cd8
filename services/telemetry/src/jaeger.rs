//! A real OTLP receiver for tests: Jaeger (v2, on the OpenTelemetry Collector) built from its Go
//! module by `hack/tools.sh jaeger`, with in-memory storage and every listener on loopback, and
//! a reader of the traces it stored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
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
    /// Builds Jaeger if needed (`hack/tools.sh jaeger`, cached) and starts it on free loopback
    /// ports; `name` tells concurrent tests' folders apart.
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
        let (otlp, query, grpc) = (free_port(), free_port(), free_port());
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
        let jaeger = Jaeger {
            child,
            dir,
            otlp: format!("http://{otlp}"),
            query: format!("http://{query}"),
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
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
                std::fs::read_to_string(jaeger.dir.join("jaeger.log")).unwrap_or_default()
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
        let client = reqwest::Client::new();
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
