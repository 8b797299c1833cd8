//! What every end-to-end test does first — the chart installed, a namespace, an operator
//! authenticated as the chart's ServiceAccount — and the lookups the tests share.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Container, Pod, PodTemplateSpec, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use kube::{Resource, ResourceExt};
use msa_e2e::audit::{AuditLog, AuditRequest, Mark};
use msa_e2e::cluster::{INSTALL_NAMESPACE, RELEASE};
use msa_e2e::{Cluster, Operator, OperatorOptions, TestNamespace, wait_until};
use msa_operator::crd::MicroserviceApp;

/// How long anything in a test may take to converge on this small cluster.
pub const WAIT: Duration = Duration::from_secs(120);
/// The shop's workloads: user, order, product (StatefulSets: embedded databases), gateway.
pub const CHILD_WORKLOADS: usize = 4;
/// The components of the shop that keep an embedded database, each in a StatefulSet.
pub const STATEFUL: [&str; 3] = ["user", "order", "product"];

pub struct Setup {
    pub cluster: Cluster,
    pub admin: kube::Client,
    pub ns: String,
}

impl Setup {
    /// The chart installed (once per run), and a fresh namespace for this test.
    pub async fn new(prefix: &str) -> anyhow::Result<Self> {
        let cluster = Cluster::from_env();
        let chart = cluster.clone();
        tokio::task::spawn_blocking(move || chart.install_chart()).await??;
        let admin = cluster.admin().await?;
        let ns = TestNamespace::create(&admin, prefix).await?.name;
        Ok(Setup { cluster, admin, ns })
    }

    /// The common start of a test: a namespace, an operator for it, and the shop applied and Ready.
    pub async fn ready_shop(prefix: &str) -> anyhow::Result<(Self, Operator)> {
        let s = Setup::new(prefix).await?;
        let operator = s.start_operator(prefix)?;
        s.apply_shop()?;
        s.wait_ready("shop")?;
        Ok((s, operator))
    }

    /// Every child of `app` exists with the app (and only it) as controller owner.
    pub async fn assert_children_owned(&self, app: &str) -> anyhow::Result<()> {
        let uid = self
            .apps()
            .get(app)
            .await?
            .metadata
            .uid
            .expect("a stored app has a uid");
        for (name, kind) in children(app) {
            let owners = self.owner_uids(kind, &name).await?;
            assert_eq!(owners, vec![uid.clone()], "{kind} {name} owner references");
        }
        Ok(())
    }

    /// ReplicaSets in the namespace matching `selector` ("" for all).
    pub async fn replica_set_count(&self, selector: &str) -> anyhow::Result<usize> {
        let sets = Api::<ReplicaSet>::namespaced(self.admin.clone(), &self.ns)
            .list_metadata(&ListParams::default().labels(selector))
            .await?;
        Ok(sets.items.len())
    }

    /// ControllerRevisions (a StatefulSet's pod-template history) matching `selector`.
    pub async fn revision_count(&self, selector: &str) -> anyhow::Result<usize> {
        let revisions = Api::<ControllerRevision>::namespaced(self.admin.clone(), &self.ns)
            .list_metadata(&ListParams::default().labels(selector))
            .await?;
        Ok(revisions.items.len())
    }

    /// The operator as the chart's ServiceAccount, watching this test's namespace.
    pub fn start_operator(&self, identity: &str) -> anyhow::Result<Operator> {
        self.start_operator_with_env(identity, &[])
    }

    /// [`Setup::start_operator`] with more environment variables.
    pub fn start_operator_with_env(
        &self,
        identity: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Operator> {
        let options = env.iter().fold(
            OperatorOptions::new(
                self.operator_kubeconfig()?,
                format!("{}-{identity}", self.ns),
            )
            .watching(&self.ns),
            |options, (name, value)| options.env(name, value),
        );
        Operator::start(&self.cluster, &options)
    }

    /// An operator competing for `lease` in the install namespace, where the chart grants Leases.
    pub fn start_leader_candidate(&self, identity: &str, lease: &str) -> anyhow::Result<Operator> {
        let options = OperatorOptions::new(
            self.operator_kubeconfig()?,
            format!("{}-{identity}", self.ns),
        )
        .watching(&self.ns)
        .leader_election(INSTALL_NAMESPACE, lease);
        Operator::start(&self.cluster, &options)
    }

    /// [`Setup::start_leader_candidate`] under a ServiceAccount of its own with the chart's
    /// roles bound to it, so the API server's audit log tells this candidate's requests from
    /// the others'. Dropped, the candidate ends its process and removes what it created.
    pub fn start_leader_candidate_as_itself(
        &self,
        identity: &str,
        lease: &str,
    ) -> anyhow::Result<OwnCandidate> {
        self.start_leader_candidate_through(identity, lease, None)
    }

    /// [`Setup::start_leader_candidate_as_itself`], reaching the API server at `server` (a
    /// proxy's URL) when given.
    pub fn start_leader_candidate_through(
        &self,
        identity: &str,
        lease: &str,
        server: Option<&str>,
    ) -> anyhow::Result<OwnCandidate> {
        let mut candidate = OwnCandidate {
            operator: None,
            account: format!("{}-{identity}", self.ns),
            cluster: self.cluster.clone(),
        };
        let account = candidate.account.clone();
        let kubectl = |args: &[&str]| self.cluster.kubectl(args).ok().map(drop);
        kubectl(&[
            "create",
            "serviceaccount",
            &account,
            "-n",
            INSTALL_NAMESPACE,
        ])?;
        let subject = format!("--serviceaccount={INSTALL_NAMESPACE}:{account}");
        kubectl(&[
            "create",
            "clusterrolebinding",
            &account,
            &format!("--clusterrole={RELEASE}"),
            &subject,
        ])?;
        kubectl(&[
            "create",
            "rolebinding",
            &account,
            "-n",
            INSTALL_NAMESPACE,
            &format!("--role={RELEASE}-leader-election"),
            &subject,
        ])?;
        let kubeconfig = self
            .cluster
            .service_account_kubeconfig(INSTALL_NAMESPACE, &account)?;
        if let Some(server) = server {
            let mut config: serde_yaml::Value =
                serde_yaml::from_str(&std::fs::read_to_string(&kubeconfig)?)?;
            config["clusters"][0]["cluster"]["server"] = server.into();
            std::fs::write(&kubeconfig, serde_yaml::to_string(&config)?)?;
        }
        let options = OperatorOptions::new(kubeconfig, account.clone())
            .watching(&self.ns)
            .leader_election(INSTALL_NAMESPACE, lease);
        candidate.operator = Some(Operator::start(&self.cluster, &options)?);
        Ok(candidate)
    }

    /// A kubeconfig with the chart's operator ServiceAccount's token (made once per test process).
    pub fn operator_kubeconfig(&self) -> anyhow::Result<PathBuf> {
        static KUBECONFIG: OnceLock<Result<PathBuf, String>> = OnceLock::new();
        KUBECONFIG
            .get_or_init(|| {
                self.cluster
                    .service_account_kubeconfig(INSTALL_NAMESPACE, RELEASE)
                    .map_err(|e| format!("{e:#}"))
            })
            .clone()
            .map_err(anyhow::Error::msg)
    }

    /// `kubectl apply -f manifests/shop.yaml` into this namespace.
    ///
    /// Without the event broker: these tests are about what the operator does with the app's
    /// four components, and count their objects and pods; the broker the manifest asks for has
    /// a test of its own (`events::the_operator_runs_the_broker_...`), the real node runs it.
    pub fn apply_shop(&self) -> anyhow::Result<()> {
        let manifest = shop_manifest()?;
        let without_broker = manifest.replace(
            "  events:\n    replicas: 1\n",
            "  events:\n    enabled: false\n",
        );
        anyhow::ensure!(
            without_broker != manifest,
            "manifests/shop.yaml no longer has `events: {{replicas: 1}}` to turn off"
        );
        self.apply_manifest(&without_broker)
    }

    /// `kubectl apply -f -` of `manifest` into this namespace.
    pub fn apply_manifest(&self, manifest: &str) -> anyhow::Result<()> {
        self.cluster
            .kubectl_with_stdin(&["apply", "-n", &self.ns, "-f", "-"], Some(manifest))
            .ok()
            .map(drop)
    }

    /// `kubectl wait --for=condition=Ready msa/<name>`, as the README tells users.
    /// On failure the error carries the app's conditions, which say why (a permission the
    /// operator lacks shows up there as `ApplyFailed` quoting the API server).
    pub fn wait_ready(&self, name: &str) -> anyhow::Result<()> {
        let app = format!("msa/{name}");
        let waited = self
            .cluster
            .kubectl(&[
                "wait",
                "-n",
                &self.ns,
                "--for=condition=Ready",
                &app,
                "--timeout=120s",
            ])
            .ok();
        waited.map(drop).map_err(|error| {
            let conditions = self
                .cluster
                .kubectl(&[
                    "get",
                    &app,
                    "-n",
                    &self.ns,
                    "-o",
                    "jsonpath={.status.conditions}",
                ])
                .stdout;
            error.context(format!("{app} conditions: {conditions}"))
        })
    }

    /// `kubectl patch msa/<app> --type=<merge|json> -p <patch>`, as a person edits the app.
    pub fn patch_app(&self, app: &str, kind: &str, patch: &str) -> anyhow::Result<()> {
        self.cluster
            .kubectl(&[
                "patch",
                &format!("msa/{app}"),
                "-n",
                &self.ns,
                &format!("--type={kind}"),
                "-p",
                patch,
            ])
            .ok()
            .map(drop)
    }

    /// Waits until the app reports `Degraded=True` with `reason`; returns the message.
    pub async fn wait_degraded(&self, app: &str, reason: &str) -> anyhow::Result<String> {
        let apps = self.apps();
        let what = format!("msa/{app} Degraded=True {reason}");
        let degraded = wait_until(&what, WAIT, || async {
            let found = apps.get(app).await?;
            Ok(condition(&found, "Degraded").filter(|c| c.status == "True" && c.reason == reason))
        })
        .await?;
        Ok(degraded.message)
    }

    /// Argo CD's verdict on `msa/<app>` with the chart's health check (the object is kept as
    /// `target/argocd-health/<capture>.yaml`): it must be `status` with a message starting
    /// with `message_start`.
    pub fn assert_argocd_health(
        &self,
        app: &str,
        capture: &str,
        status: &str,
        message_start: &str,
    ) -> anyhow::Result<()> {
        let health = self.cluster.argocd_judges(&self.ns, app, capture)?;
        anyhow::ensure!(
            health.status == status && health.message.starts_with(message_start),
            "Argo CD would show msa/{app} as {health:?}, expected {status} with a message \
             starting {message_start:?}"
        );
        Ok(())
    }

    /// What the chart's operator sent in this test's namespace since `mark`, as the API server
    /// audited it (its writes, and its reads: the policy logs them for its ServiceAccount).
    pub fn operator_requests_since(
        &self,
        audit: &AuditLog,
        mark: Mark,
    ) -> anyhow::Result<Vec<AuditRequest>> {
        let operator_user = format!("system:serviceaccount:{INSTALL_NAMESPACE}:{RELEASE}");
        let mut requests = audit.requests_since(mark)?;
        requests
            .retain(|r| r.username == operator_user && r.namespace.as_deref() == Some(&self.ns));
        Ok(requests)
    }

    pub fn apps(&self) -> Api<MicroserviceApp> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    pub fn stateful_sets(&self) -> Api<StatefulSet> {
        Api::namespaced(self.admin.clone(), &self.ns)
    }

    pub async fn pod_count(&self) -> anyhow::Result<usize> {
        let pods = Api::<Pod>::namespaced(self.admin.clone(), &self.ns);
        Ok(pods
            .list_metadata(&ListParams::default())
            .await?
            .items
            .len())
    }

    /// UIDs of the live (not terminating) pods of one component (a StatefulSet's replacement
    /// pod keeps its predecessor's name, so names do not tell them apart).
    pub async fn pod_uids(&self, component: &str) -> anyhow::Result<BTreeSet<String>> {
        let pods = Api::<Pod>::namespaced(self.admin.clone(), &self.ns);
        let selector = format!("app.kubernetes.io/name={component}");
        Ok(pods
            .list_metadata(&ListParams::default().labels(&selector))
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.uid())
            .collect())
    }

    /// The controller-owner UIDs of one child, `None` when it does not exist.
    async fn owners(&self, kind: ChildKind, name: &str) -> anyhow::Result<Option<Vec<String>>> {
        match kind {
            ChildKind::Deployment => owners_of::<Deployment>(self, name).await,
            ChildKind::StatefulSet => owners_of::<StatefulSet>(self, name).await,
            ChildKind::PodDisruptionBudget => owners_of::<PodDisruptionBudget>(self, name).await,
            ChildKind::Service => owners_of::<Service>(self, name).await,
            ChildKind::ServiceAccount => owners_of::<ServiceAccount>(self, name).await,
            ChildKind::Role => owners_of::<Role>(self, name).await,
            ChildKind::RoleBinding => owners_of::<RoleBinding>(self, name).await,
        }
    }

    /// The controller-owner UIDs of one child that must exist.
    pub async fn owner_uids(&self, kind: ChildKind, name: &str) -> anyhow::Result<Vec<String>> {
        self.owners(kind, name)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{kind} {name} does not exist"))
    }

    pub async fn exists(&self, kind: ChildKind, name: &str) -> anyhow::Result<bool> {
        Ok(self.owners(kind, name).await?.is_some())
    }
}

async fn owners_of<K>(s: &Setup, name: &str) -> anyhow::Result<Option<Vec<String>>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api = Api::<K>::namespaced(s.admin.clone(), &s.ns);
    Ok(api.get_metadata_opt(name).await?.map(|object| {
        object
            .metadata
            .owner_references
            .unwrap_or_default()
            .into_iter()
            .filter(|o| o.controller == Some(true) && o.kind == "MicroserviceApp")
            .map(|o| o.uid)
            .collect()
    }))
}

#[derive(Clone, Copy, Debug)]
pub enum ChildKind {
    Deployment,
    StatefulSet,
    PodDisruptionBudget,
    Service,
    ServiceAccount,
    Role,
    RoleBinding,
}

impl std::fmt::Display for ChildKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Every object the operator makes for an app of the shop's shape (embedded databases, two
/// gateway replicas).
pub fn children(app: &str) -> Vec<(String, ChildKind)> {
    let mut all = Vec::new();
    for component in STATEFUL {
        all.push((format!("{app}-{component}"), ChildKind::StatefulSet));
        all.push((format!("{app}-{component}"), ChildKind::Service));
    }
    all.push((format!("{app}-gateway"), ChildKind::Deployment));
    all.push((format!("{app}-gateway"), ChildKind::Service));
    all.push((format!("{app}-gateway"), ChildKind::PodDisruptionBudget));
    for kind in [
        ChildKind::ServiceAccount,
        ChildKind::Role,
        ChildKind::RoleBinding,
    ] {
        all.push((format!("{app}-discovery"), kind));
    }
    all
}

pub fn replicas(deployment: &Deployment) -> i32 {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
}

pub fn set_replicas(stateful_set: &StatefulSet) -> i32 {
    stateful_set
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
}

/// The first container of a StatefulSet's pod template.
pub fn set_container(stateful_set: &StatefulSet) -> &Container {
    container_of(&stateful_set.spec.as_ref().expect("a spec").template)
}

fn container_of(template: &PodTemplateSpec) -> &Container {
    &template.spec.as_ref().expect("a pod spec").containers[0]
}

/// Asserts that a status message says `expected`.
pub fn assert_mentions(message: &str, expected: &str) {
    assert!(
        message.contains(expected),
        "{expected:?} missing in: {message}"
    );
}

pub fn condition(app: &MicroserviceApp, type_: &str) -> Option<Condition> {
    app.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// Held by every test that changes the CRD's schema or replaces the CRD while it runs. The
/// API server ends every watch of the kind when its CRD changes, and the relist reads stored
/// objects under the new schema: the CRD-upgrade test putting back the current schema turned the
/// unreadable-app test's kept null into a default under it (CI saw the gauge stay at 0).
static CRD_CHANGES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits until no other test changes the CRD, and keeps others out until dropped.
pub async fn changing_the_crd() -> tokio::sync::MutexGuard<'static, ()> {
    CRD_CHANGES.lock().await
}

/// The CRD as an older release served it, with `spec.components.order.rollout.maxSurge`
/// nullable, until dropped (then the field is not nullable again). No other test changes the
/// CRD meanwhile.
pub struct NullableMaxSurge {
    cluster: Cluster,
    // Dropped after `drop` has put the schema back.
    _exclusive: tokio::sync::MutexGuard<'static, ()>,
}

const CRD: &str = "microserviceapps.msa.dev";
const MAX_SURGE_NULLABLE: &str = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/components/properties/order/properties/rollout/properties/maxSurge/nullable";

impl NullableMaxSurge {
    pub async fn set(cluster: &Cluster) -> anyhow::Result<Self> {
        let exclusive = changing_the_crd().await;
        let patch = format!(r#"[{{"op":"add","path":"{MAX_SURGE_NULLABLE}","value":true}}]"#);
        cluster
            .kubectl(&["patch", "crd", CRD, "--type=json", "-p", &patch])
            .ok()?;
        Ok(NullableMaxSurge {
            cluster: cluster.clone(),
            _exclusive: exclusive,
        })
    }
}

impl Drop for NullableMaxSurge {
    fn drop(&mut self) {
        let patch = format!(r#"[{{"op":"remove","path":"{MAX_SURGE_NULLABLE}"}}]"#);
        let _ = self
            .cluster
            .kubectl(&["patch", "crd", CRD, "--type=json", "-p", &patch]);
    }
}

/// A leader candidate under a ServiceAccount of its own (see
/// [`Setup::start_leader_candidate_as_itself`]).
pub struct OwnCandidate {
    operator: Option<Operator>,
    account: String,
    cluster: Cluster,
}

impl OwnCandidate {
    pub fn operator(&self) -> &Operator {
        self.operator.as_ref().expect("started")
    }

    pub fn operator_mut(&mut self) -> &mut Operator {
        self.operator.as_mut().expect("started")
    }

    /// Its requests' user name in the audit log.
    pub fn user(&self) -> String {
        format!("system:serviceaccount:{INSTALL_NAMESPACE}:{}", self.account)
    }

    /// Sends `signal` (`-STOP`, `-CONT`) to its process.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.operator().pid().to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()?;
        anyhow::ensure!(status.success(), "kill {signal} {pid}: {status}");
        Ok(())
    }
}

impl Drop for OwnCandidate {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        drop(self.operator.take());
        let account = self.account.as_str();
        for args in [
            &[
                "delete",
                "clusterrolebinding",
                account,
                "--ignore-not-found",
            ][..],
            &[
                "delete",
                "rolebinding",
                account,
                "-n",
                INSTALL_NAMESPACE,
                "--ignore-not-found",
            ],
            &[
                "delete",
                "serviceaccount",
                account,
                "-n",
                INSTALL_NAMESPACE,
                "--ignore-not-found",
            ],
        ] {
            let _ = self.cluster.kubectl(args);
        }
    }
}

/// `manifests/shop.yaml` as the README gives it.
pub fn shop_manifest() -> anyhow::Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/shop.yaml");
    Ok(std::fs::read_to_string(&path)?)
}
