//! The operator binary run as a local process against the test cluster, as a user would run it
//! with `cargo run` — authenticated by whatever kubeconfig the test hands it (normally a token of
//! the chart's ServiceAccount), with its metrics on a loopback port the OS chooses.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;

use anyhow::Context;

use crate::Cluster;

/// How to start one operator process.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// Who the operator authenticates as.
    pub kubeconfig: PathBuf,
    /// `--watch-namespace`: tests run side by side, each operator owning its test's namespace.
    pub watch_namespace: Option<String>,
    /// `--leader-election` with the Lease in this namespace.
    pub lease_namespace: Option<String>,
    /// `--lease-name` (default `msa-operator`); tests competing in parallel use one each.
    pub lease_name: Option<String>,
    /// `--identity`, which also names the log file.
    pub identity: String,
    pub concurrency: u16,
    /// More environment (the process otherwise starts with only `KUBECONFIG` and `RUST_LOG`).
    pub env: Vec<(String, String)>,
}

impl OperatorOptions {
    pub fn new(kubeconfig: PathBuf, identity: impl Into<String>) -> Self {
        OperatorOptions {
            kubeconfig,
            watch_namespace: None,
            lease_namespace: None,
            lease_name: None,
            identity: identity.into(),
            concurrency: 4,
            env: Vec::new(),
        }
    }

    pub fn watching(mut self, namespace: &str) -> Self {
        self.watch_namespace = Some(namespace.to_owned());
        self
    }

    /// `--leader-election` on the Lease `namespace/name`.
    pub fn leader_election(mut self, namespace: &str, name: &str) -> Self {
        self.lease_namespace = Some(namespace.to_owned());
        self.lease_name = Some(name.to_owned());
        self
    }

    /// Sets `name=value` in the operator's environment.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn concurrency(mut self, concurrency: u16) -> Self {
        self.concurrency = concurrency;
        self
    }
}

/// A running operator; killed when dropped.
pub struct Operator {
    child: Child,
    /// Where it serves `/metrics`, once learnt (see [`Operator::metrics_addr`]).
    metrics_addr: OnceLock<SocketAddr>,
    pub log: PathBuf,
    pub identity: String,
}

/// The binary under test: `MSA_E2E_OPERATOR`, else the workspace's debug build (`make e2e` builds it).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("MSA_E2E_OPERATOR") {
        return PathBuf::from(path);
    }
    crate::workspace_binary("msa-operator")
}

impl Operator {
    pub fn start(cluster: &Cluster, options: &OperatorOptions) -> anyhow::Result<Self> {
        let log = cluster
            .state
            .join(format!("operator-{}.log", options.identity));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let binary = binary();
        let mut command = Command::new(&binary);
        command
            .env_clear()
            .env("KUBECONFIG", &options.kubeconfig)
            .env("RUST_LOG", "info")
            .envs(options.env.iter().map(|(k, v)| (k, v)))
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--identity", &options.identity])
            .args(["--concurrency", &options.concurrency.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        if let Some(namespace) = &options.watch_namespace {
            command.args(["--watch-namespace", namespace]);
        }
        if let Some(namespace) = &options.lease_namespace {
            command.args(["--leader-election", "--lease-namespace", namespace]);
        }
        if let Some(name) = &options.lease_name {
            command.args(["--lease-name", name]);
        }
        let child = command.spawn().with_context(|| {
            format!(
                "cannot start {} (build it with `cargo build -p msa-operator`)",
                binary.display()
            )
        })?;
        Ok(Operator {
            child,
            metrics_addr: OnceLock::new(),
            log,
            identity: options.identity.clone(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crashed or evicted pod would die: no Lease release, no cleanup.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The exit status if the process has stopped.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: std::time::Duration) -> anyhow::Result<ExitStatus> {
        crate::wait_until("the operator to exit", timeout, || {
            let status = self.exited();
            async move { Ok(status) }
        })
        .await
    }

    /// Everything the process has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Where it serves `/healthz`, `/readyz` and `/metrics`: the port the OS gave it, read from
    /// the kernel's list of its sockets once it listens (within 30 s). An operator that exits
    /// first is an error with the end of its log.
    pub async fn metrics_addr(&self) -> anyhow::Result<SocketAddr> {
        if let Some(addr) = self.metrics_addr.get() {
            return Ok(*addr);
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let addr = loop {
            if let Some(addr) = crate::listening::on(self.pid(), Ipv4Addr::LOCALHOST.into()) {
                break addr;
            }
            let tail = || {
                let log = self.log_text();
                let lines: Vec<&str> = log.lines().collect();
                lines[lines.len().saturating_sub(30)..].join("\n")
            };
            anyhow::ensure!(
                !crate::listening::exited(self.pid()),
                "the operator {} exited before it listened; its log, {}:\n{}",
                self.identity,
                self.log.display(),
                tail()
            );
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the operator {} did not listen on 127.0.0.1 within 30 s; its log:\n{}",
                self.identity,
                tail()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        Ok(*self.metrics_addr.get_or_init(|| addr))
    }

    /// The Prometheus exposition from `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        http_get(self.metrics_addr().await?, "/metrics").await
    }

    /// The sum of a metric's samples whose labels contain `label_filter` (e.g. `category="forbidden"`).
    pub async fn metric(&self, name: &str, label_filter: &str) -> anyhow::Result<f64> {
        Ok(sum_metric(&self.metrics().await?, name, label_filter))
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS in /proc/<pid>/status")
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

/// Sums the samples of `name` (exact metric name) whose label set contains `label_filter`.
pub fn sum_metric(exposition: &str, name: &str, label_filter: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name && series.contains(label_filter)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// GET on the operator's loopback metrics port.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    assert!(addr.ip().is_loopback(), "only loopback is ever dialled");
    let response = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .get(format!("http://{addr}{path}"))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await?
        .error_for_status()?;
    Ok(response.text().await?)
}
