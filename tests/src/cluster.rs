//! The running test cluster: its clients (kube-rs, and the real `kubectl` and `helm` built by
//! `tests/cluster/cluster.sh`), the operator chart installed once, and a namespace per test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// Namespace the chart is installed into, as the README tells users to.
pub const INSTALL_NAMESPACE: &str = "msa-system";
/// The chart's release name, which names its ServiceAccount.
pub const RELEASE: &str = "msa-operator";

/// Paths the cluster script exported; see `tests/cluster/cluster.sh`.
#[derive(Clone, Debug)]
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub audit_log: PathBuf,
    pub state: PathBuf,
    kubectl: PathBuf,
    helm: PathBuf,
    argocd_health: PathBuf,
    root: PathBuf,
}

/// What a command printed, kept so a failing test can show it.
#[derive(Debug)]
pub struct CmdOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
    command: String,
}

impl CmdOutput {
    /// What the finished `command` (its text, for messages) gave.
    pub fn of(command: String, output: &std::process::Output) -> Self {
        CmdOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            command,
        }
    }

    /// The standard output, or an error quoting the command and its standard error.
    pub fn ok(self) -> anyhow::Result<String> {
        if self.success {
            Ok(self.stdout)
        } else {
            bail!("`{}` failed: {}{}", self.command, self.stderr, self.stdout)
        }
    }
}

impl Cluster {
    /// The cluster started by `make e2e` (or `make cluster-up` and sourcing its env file).
    pub fn from_env() -> Self {
        let var =
            |name: &str| -> PathBuf {
                std::env::var_os(name).map(PathBuf::from).unwrap_or_else(|| {
                panic!(
                    "{name} is not set: these tests need the real control plane; run them with \
                     `make e2e`, or `make cluster-up` then `source $(tests/cluster/cluster.sh env)`"
                )
            })
            };
        Cluster {
            kubeconfig: var("KUBECONFIG"),
            audit_log: var("MSA_E2E_AUDIT_LOG"),
            state: var("MSA_E2E_STATE"),
            kubectl: var("MSA_E2E_KUBECTL"),
            helm: var("MSA_E2E_HELM"),
            argocd_health: var("MSA_E2E_ARGOCD_HEALTH"),
            root: Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        }
    }

    /// A path inside the repository.
    pub fn repo_path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// Keeps `text` as `target/<folder>/<name>` (real output the docs and the chart's tables
    /// are made from); returns the file.
    pub fn keep_capture(&self, folder: &str, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let dir = self.repo_path("target").join(folder);
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(name);
        std::fs::write(&file, text)?;
        Ok(file)
    }

    /// A client with the cluster admin's credentials, for setting up and checking.
    pub async fn admin(&self) -> anyhow::Result<kube::Client> {
        client_for(&self.kubeconfig).await
    }

    pub fn kubectl(&self, args: &[&str]) -> CmdOutput {
        self.kubectl_with_stdin(args, None)
    }

    /// `kubectl` with `stdin` piped in (for `apply -f -`).
    pub fn kubectl_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> CmdOutput {
        run(&self.kubectl, &self.kubeconfig, args, stdin)
    }

    pub fn helm(&self, args: &[&str]) -> CmdOutput {
        run(&self.helm, &self.kubeconfig, args, None)
    }

    /// `argocd-health` (hack/argocd-health: Argo CD's Lua health checks in gopher-lua).
    pub fn argocd_health(&self, args: &[&str]) -> CmdOutput {
        run(&self.argocd_health, &self.kubeconfig, args, None)
    }

    /// Installs `charts/msa-operator` into `msa-system` once per test process and waits for it.
    pub fn install_chart(&self) -> anyhow::Result<()> {
        static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
        INSTALLED
            .get_or_init(|| {
                let chart = self.repo_path("charts/msa-operator");
                self.helm(&[
                    "upgrade",
                    "--install",
                    RELEASE,
                    chart.to_str().expect("utf-8 path"),
                    "--namespace",
                    INSTALL_NAMESPACE,
                    "--create-namespace",
                    "--wait",
                    "--timeout",
                    "2m",
                ])
                .ok()
                .map(drop)
                .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(anyhow::Error::msg)
    }

    /// A kubeconfig that authenticates as `namespace/service_account` with a fresh token from
    /// the TokenRequest API (`kubectl create token`), written under the cluster's state folder.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> anyhow::Result<PathBuf> {
        let token = self
            .kubectl(&[
                "create",
                "token",
                service_account,
                "-n",
                namespace,
                "--duration",
                "2h",
            ])
            .ok()?;
        let admin = Kubeconfig::read_from(&self.kubeconfig)?;
        let cluster = admin
            .clusters
            .first()
            .and_then(|c| c.cluster.as_ref())
            .context("the admin kubeconfig names no cluster")?;
        let server = cluster
            .server
            .clone()
            .context("the admin kubeconfig names no server")?;
        let ca = cluster
            .certificate_authority
            .clone()
            .context("the admin kubeconfig names no certificate authority")?;
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": ca}}],
            "users": [{"name": service_account, "user": {"token": token.trim()}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": service_account}}],
            "current-context": "e2e",
        });
        let path = self
            .state
            .join(format!("kubeconfig-{namespace}-{service_account}"));
        std::fs::write(&path, serde_yaml::to_string(&config)?)?;
        Ok(path)
    }
}

/// A kube-rs client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let config = kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    Ok(kube::Client::try_from(config)?)
}

/// Runs a cluster client (kubectl, helm) with `KUBECONFIG`, which both read.
fn run(program: &Path, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> CmdOutput {
    let command = format!(
        "{} {}",
        program.file_name().unwrap_or_default().to_string_lossy(),
        args.join(" ")
    );
    let child = Command::new(program)
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            return CmdOutput {
                success: false,
                stdout: String::new(),
                stderr: format!("cannot start {}: {e}", program.display()),
                command,
            };
        }
    };
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes()).expect("write to stdin");
    }
    let out = child.wait_with_output().expect("wait for child");
    CmdOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        command,
    }
}

/// A namespace of one's own for a test, named `<prefix>-<unique suffix>`.
pub struct TestNamespace {
    pub name: String,
}

/// Where a namespace's pods run when the cluster has both kinds of node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Wherever the scheduler puts them: the real node when there is one (the kwok node is then
    /// tainted), else kwok.
    Default,
    /// On the kwok node: nothing runs, pods are Ready at once (scale tests, references).
    Kwok,
}

impl TestNamespace {
    pub async fn create(client: &kube::Client, prefix: &str) -> anyhow::Result<Self> {
        Self::create_on(client, prefix, Placement::Default).await
    }

    /// A namespace whose pods go where `placement` says. The kwok placement uses the
    /// PodNodeSelector and PodTolerationRestriction admission plugins the API server enables
    /// (`tests/cluster/cluster.sh`), so the pods of unchanged manifests land on the kwok node.
    pub async fn create_on(
        client: &kube::Client,
        prefix: &str,
        placement: Placement,
    ) -> anyhow::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
        let name = format!(
            "{prefix}-{:x}{}",
            nanos % 0xfffff,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let annotations = (placement == Placement::Kwok).then(|| {
            [
                (
                    "scheduler.alpha.kubernetes.io/node-selector".to_string(),
                    "type=kwok".to_string(),
                ),
                (
                    "scheduler.alpha.kubernetes.io/defaultTolerations".to_string(),
                    r#"[{"key":"kwok.x-k8s.io/node","operator":"Equal","value":"fake","effect":"NoSchedule"}]"#
                        .to_string(),
                ),
            ]
            .into()
        });
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("msa.dev/e2e".to_string(), prefix.to_string())].into()),
                annotations,
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        Ok(TestNamespace { name })
    }
}
