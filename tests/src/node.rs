//! The test cluster's real node (`tests/cluster/node.sh`): where it is, and the one rule for
//! dialling anything on it — only addresses inside 198.18.0.0/15, which `cluster.sh` blackholes
//! before the node exists, so no request to a pod, node or Service address can leave the machine.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::Cluster;
use crate::cluster::{INSTALL_NAMESPACE, RELEASE};

/// The range every node, pod and Service address of the test cluster lies in.
const GUARDED: (Ipv4Addr, u32) = (Ipv4Addr::new(198, 18, 0, 0), 15);

/// What a test on the real node works with: the cluster, an admin client, the node, and an
/// HTTP client that never uses a proxy.
pub struct OnNode {
    pub cluster: Cluster,
    pub admin: kube::Client,
    pub node: RealNode,
    pub http: reqwest::Client,
}

impl OnNode {
    pub async fn from_env() -> anyhow::Result<Self> {
        let cluster = Cluster::from_env();
        Ok(Self {
            admin: cluster.admin().await?,
            cluster,
            node: RealNode::from_env()?,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()?,
        })
    }
}

/// The real node as `cluster.sh up` exported it.
#[derive(Clone, Debug)]
pub struct RealNode {
    pub name: String,
    pub ip: Ipv4Addr,
    /// `ctr` with the node's containerd socket and the CRI namespace (`MSA_E2E_CTR`).
    ctr: Vec<String>,
}

impl RealNode {
    /// The node of the running cluster; fails with what to do when the cluster has none.
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |name: &str| {
            std::env::var(name).with_context(|| {
                format!(
                    "{name} is not set: this test needs the cluster's real node; run it with \
                     `make e2e`, or `make cluster-up` then `source $(tests/cluster/cluster.sh env)`"
                )
            })
        };
        let ip: Ipv4Addr = var("MSA_E2E_NODE_IP")?.parse()?;
        guarded(IpAddr::V4(ip))?;
        Ok(RealNode {
            name: var("MSA_E2E_NODE_NAME")?,
            ip,
            ctr: var("MSA_E2E_CTR")?
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        })
    }

    /// Kills the running process of one container of a pod with SIGKILL, as a crash would:
    /// no SIGTERM, no drain. The kubelet restarts it in the same pod.
    pub fn kill_container(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
    ) -> anyhow::Result<()> {
        let filter = format!(
            "labels.\"io.kubernetes.pod.namespace\"=={namespace},\
             labels.\"io.kubernetes.pod.name\"=={pod},\
             labels.\"io.kubernetes.container.name\"=={container}"
        );
        let ids = self.run_ctr(&["containers", "ls", "-q", &filter])?;
        // Containers of earlier restarts have no task left; only the running one is killed.
        let (mut killed, mut refused) = (0, Vec::new());
        for id in ids.lines().map(str::trim).filter(|id| !id.is_empty()) {
            match self.run_ctr(&["tasks", "kill", "-s", "SIGKILL", id]) {
                Ok(_) => killed += 1,
                Err(error) => refused.push(format!("{id}: {error:#}")),
            }
        }
        ensure!(
            killed == 1,
            "expected to kill one running {container} container of {namespace}/{pod}, killed \
             {killed}; ctr refused: {refused:?}"
        );
        Ok(())
    }

    fn run_ctr(&self, args: &[&str]) -> anyhow::Result<String> {
        let (program, base) = self.ctr.split_first().context("MSA_E2E_CTR is empty")?;
        let output = std::process::Command::new(program)
            .args(base)
            .args(args)
            .output()
            .with_context(|| format!("running {program}"))?;
        crate::cluster::CmdOutput::of(format!("ctr {}", args.join(" ")), &output).ok()
    }

    /// `http://<node IP>:<node port>` of a NodePort Service (its first port).
    pub async fn node_port_url(
        &self,
        admin: &kube::Client,
        namespace: &str,
        service: &str,
    ) -> anyhow::Result<String> {
        let found =
            kube::Api::<k8s_openapi::api::core::v1::Service>::namespaced(admin.clone(), namespace)
                .get(service)
                .await?;
        let node_port = found
            .spec
            .and_then(|s| s.ports)
            .and_then(|p| p.first().and_then(|p| p.node_port))
            .with_context(|| {
                format!("{namespace}/{service} has no node port: is it a NodePort?")
            })?;
        guarded_url(&self.ip.to_string(), u16::try_from(node_port)?)
    }
}

/// `ip` itself when it is inside 198.18.0.0/15, else an error: the tests dial nothing else.
pub fn guarded(ip: IpAddr) -> anyhow::Result<IpAddr> {
    let inside = match ip {
        IpAddr::V4(v4) => {
            u32::from(v4) >> (32 - GUARDED.1) == u32::from(GUARDED.0) >> (32 - GUARDED.1)
        }
        IpAddr::V6(_) => false,
    };
    ensure!(
        inside,
        "refusing to dial {ip}: test traffic goes only to 198.18.0.0/15 (blackholed off this machine)"
    );
    Ok(ip)
}

/// `http://ip:port` for an address that passes [`guarded`].
pub fn guarded_url(ip: &str, port: u16) -> anyhow::Result<String> {
    let ip: IpAddr = ip
        .parse()
        .with_context(|| format!("{ip:?} is not an IP address"))?;
    Ok(format!("http://{}:{port}", guarded(ip)?))
}

/// `helm install msa-operator charts/msa-operator --namespace msa-system --create-namespace
/// --set replicaCount=2 --wait`: the README's command with its two-replica variant. Returns how
/// long helm took.
pub fn install_operator_chart(cluster: &Cluster) -> anyhow::Result<Duration> {
    let chart = cluster.repo_path("charts/msa-operator");
    let started = Instant::now();
    cluster
        .helm(&[
            "install",
            RELEASE,
            chart.to_str().context("non-UTF-8 repository path")?,
            "--namespace",
            INSTALL_NAMESPACE,
            "--create-namespace",
            "--set",
            "replicaCount=2",
            "--wait",
            "--timeout",
            "3m",
        ])
        .ok()
        .context("helm install of the chart with the image from `make images`")?;
    Ok(started.elapsed())
}

/// Waits until the MicroserviceApp `name` in `namespace` is Ready for its current generation.
/// Ends at once, quoting the operator, when it reports that the API server refused a child
/// (`Degraded=True` with reason `ApplyFailed` or `Forbidden`: a missing RBAC rule shows up so).
pub async fn wait_app_ready(
    admin: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let apps =
        kube::Api::<msa_operator::crd::MicroserviceApp>::namespaced(admin.clone(), namespace);
    // Some(Err) ends the wait: a refusal does not heal by waiting.
    let outcome = crate::wait_until(
        &format!("msa/{name} Ready in {namespace}"),
        timeout,
        || async {
            let app = apps.get(name).await?;
            let generation = app.metadata.generation;
            let Some(status) = app.status else {
                return Ok(None);
            };
            let holds = |type_: &str| {
                status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == type_ && c.status == "True")
            };
            if let Some(refused) = holds("Degraded")
                .filter(|c| ["ApplyFailed", "Forbidden"].contains(&c.reason.as_str()))
            {
                return Ok(Some(Err(refused.message.clone())));
            }
            let ready = status.observed_generation == generation && holds("Ready").is_some();
            Ok(ready.then_some(Ok(())))
        },
    )
    .await?;
    outcome.map_err(|why| anyhow::anyhow!("the operator cannot apply msa/{name}: {why}"))
}

/// Waits until `GET <base>/healthz` answers 200: a new Service's NodePort works only once
/// kube-proxy has written its rules (until then the node refuses the connection).
pub async fn wait_reachable(base: &str, timeout: Duration) -> anyhow::Result<Duration> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let started = Instant::now();
    let url = format!("{base}/healthz");
    crate::wait_until(&format!("{url} to answer 200"), timeout, || async {
        Ok(http
            .get(&url)
            .send()
            .await
            .ok()
            .filter(|r| r.status().is_success())
            .map(drop))
    })
    .await?;
    Ok(started.elapsed())
}

/// `msa-local demo --gateway <url>`: the README's demo, each step checked by the demo itself.
/// Returns its wall time, or an error carrying everything it printed.
pub async fn run_demo(gateway: &str) -> anyhow::Result<Duration> {
    run_demo_in(gateway, None, &["insufficient-stock", "10 in stock again"]).await
}

/// `msa-local demo`, with `--data-dir` (whose key issues the demo's tokens when the gateway
/// requires them) when given; every line of `expected` must be printed.
pub async fn run_demo_in(
    gateway: &str,
    data_dir: Option<&std::path::Path>,
    expected: &[&str],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut command = tokio::process::Command::new(crate::workspace_binary("msa-local"));
    command.args(["demo", "--gateway", gateway]);
    if let Some(dir) = data_dir {
        command.arg("--data-dir").arg(dir);
    }
    let output = command
        .output()
        .await
        .context("run msa-local demo (make e2e builds it)")?;
    let elapsed = started.elapsed();
    let printed = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success() && expected.iter().all(|line| printed.contains(line)),
        "msa-local demo --gateway {gateway} failed or did not show {expected:?}:\n{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(elapsed)
}

/// `tests/cluster/cluster.sh <subcommand>` on the running cluster (`restart-node`,
/// `enforce-policies`), within the tests' usual wait.
pub async fn cluster_script(cluster: &Cluster, subcommand: &str) -> anyhow::Result<()> {
    let script = cluster.repo_path("tests/cluster/cluster.sh");
    let mut command = tokio::process::Command::new("bash");
    command.arg(script).arg(subcommand);
    for (from, to) in [
        ("MSA_E2E_STATE", "MSA_CLUSTER_STATE"),
        ("MSA_E2E_NODES", "MSA_CLUSTER_NODES"),
    ] {
        if let Ok(value) = std::env::var(from) {
            command.env(to, value);
        }
    }
    let output = tokio::time::timeout(SCRIPT_WAIT, command.output())
        .await
        .with_context(|| format!("cluster.sh {subcommand} did not finish in time"))??;
    anyhow::ensure!(
        output.status.success(),
        "cluster.sh {subcommand} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// How long a cluster script may take.
pub const SCRIPT_WAIT: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_blackholed_range_may_be_dialled() {
        for ok in ["198.18.0.1", "198.18.160.7", "198.19.255.254"] {
            assert!(guarded(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for refused in [
            "198.17.255.255",
            "198.20.0.1",
            "10.96.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "::1",
        ] {
            assert!(guarded(refused.parse().unwrap()).is_err(), "{refused}");
        }
        assert_eq!(
            guarded_url("198.18.250.2", 30080).unwrap(),
            "http://198.18.250.2:30080"
        );
        assert!(guarded_url("example.com", 80).is_err());
    }
}
