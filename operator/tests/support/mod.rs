//! Test fixtures: MicroserviceApps as the API server would store them, reflector caches fed by
//! hand, and a mocked API server that records every call and answers like the real one.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use kube::{Client, Resource};
use msa_operator::app_index::IndexedWriter;
use msa_operator::build::{Children, Workload};
use msa_operator::crd::MicroserviceApp;
use msa_operator::metrics::Metrics;
use msa_operator::reconcile::{Caches, Context};
use serde_json::{Value, json};

pub const NAMESPACE: &str = "demo";

/// An app named `shop` as stored by the API server (defaults applied, uid and generation set),
/// with `spec` merged over the defaults.
///
/// Without an event broker unless the spec says otherwise: the tests of everything else pin
/// exact API calls and objects, and the broker's own tests (`events_api.rs`, `render.rs`) set
/// `spec.events`.
pub fn app(spec: Value) -> MicroserviceApp {
    let mut spec = spec;
    if spec.get("events").is_none() {
        spec["events"] = json!({"enabled": false});
    }
    serde_json::from_value(json!({
        "apiVersion": "msa.dev/v1alpha1",
        "kind": "MicroserviceApp",
        "metadata": {
            "name": "shop",
            "namespace": NAMESPACE,
            "uid": "1b2c3d4e-0000-4000-8000-000000000001",
            "generation": 1,
            "resourceVersion": "100",
        },
        "spec": spec,
    }))
    .expect("fixture app deserializes")
}

/// The same app with its data in PostgreSQL: every component is a Deployment.
pub fn pg_app(spec: Value) -> MicroserviceApp {
    let mut spec = spec;
    spec["database"] = json!({"secretRef": {"name": "shop-db"}});
    app(spec)
}

/// The Deployments among rendered workloads.
pub fn deployments(children: &Children) -> Vec<Deployment> {
    children
        .workloads
        .iter()
        .filter_map(|w| match w {
            Workload::Deployment(d) => Some(d.clone()),
            Workload::StatefulSet(_) => None,
        })
        .collect()
}

/// The StatefulSets among rendered workloads.
pub fn stateful_sets(children: &Children) -> Vec<StatefulSet> {
    children
        .workloads
        .iter()
        .filter_map(|w| match w {
            Workload::StatefulSet(s) => Some(s.clone()),
            Workload::Deployment(_) => None,
        })
        .collect()
}

/// A fixed clock for condition timestamps.
pub fn fixed_time(seconds: i64) -> Time {
    Time(jiff::Timestamp::from_second(1_790_000_000 + seconds).unwrap())
}

/// Writers for every cache, so a test can play the watch events the API server would send.
pub struct FakeCaches {
    pub deployments: Writer<Deployment>,
    pub stateful_sets: Writer<StatefulSet>,
    pub budgets: Writer<PodDisruptionBudget>,
    pub claims: Writer<PersistentVolumeClaim>,
    pub services: Writer<Service>,
    pub service_accounts: Writer<ServiceAccount>,
    pub roles: Writer<Role>,
    pub role_bindings: Writer<RoleBinding>,
    pub network_policies: Writer<NetworkPolicy>,
    pub config_maps: IndexedWriter<ConfigMap>,
    pub config_sources: Writer<ConfigMap>,
    pub endpoint_slices: IndexedWriter<EndpointSlice>,
}

impl FakeCaches {
    /// Empty caches that have finished their initial list.
    pub fn listed() -> Self {
        let mut caches = Self::unlisted();
        caches.finish_lists();
        caches
    }

    /// Empty caches still waiting for their initial list, as at start-up.
    pub fn unlisted() -> Self {
        Self {
            deployments: Writer::default(),
            stateful_sets: Writer::default(),
            budgets: Writer::default(),
            claims: Writer::default(),
            services: Writer::default(),
            service_accounts: Writer::default(),
            roles: Writer::default(),
            role_bindings: Writer::default(),
            network_policies: Writer::default(),
            config_maps: IndexedWriter::default(),
            config_sources: Writer::default(),
            endpoint_slices: IndexedWriter::default(),
        }
    }

    /// Every cache ends its initial list (with nothing in it).
    pub fn finish_lists(&mut self) {
        fn finish<K: Resource<DynamicType = ()> + Clone + 'static>(writer: &mut Writer<K>) {
            writer.apply_watcher_event(&watcher::Event::Init);
            writer.apply_watcher_event(&watcher::Event::InitDone);
        }
        finish(&mut self.deployments);
        finish(&mut self.stateful_sets);
        finish(&mut self.budgets);
        finish(&mut self.claims);
        finish(&mut self.services);
        finish(&mut self.service_accounts);
        finish(&mut self.roles);
        finish(&mut self.role_bindings);
        finish(&mut self.network_policies);
        finish(&mut self.config_sources);
        self.config_maps.apply_watcher_event(&watcher::Event::Init);
        self.config_maps
            .apply_watcher_event(&watcher::Event::InitDone);
        self.endpoint_slices
            .apply_watcher_event(&watcher::Event::Init);
        self.endpoint_slices
            .apply_watcher_event(&watcher::Event::InitDone);
    }

    pub fn readers(&self) -> Caches {
        Caches {
            deployments: self.deployments.as_reader(),
            stateful_sets: self.stateful_sets.as_reader(),
            budgets: self.budgets.as_reader(),
            claims: self.claims.as_reader(),
            services: self.services.as_reader(),
            service_accounts: self.service_accounts.as_reader(),
            roles: self.roles.as_reader(),
            role_bindings: self.role_bindings.as_reader(),
            network_policies: self.network_policies.as_reader(),
            config_maps: self.config_maps.as_reader(),
            config_sources: self.config_sources.as_reader(),
            secret_sources: None,
            endpoint_slices: self.endpoint_slices.as_reader(),
        }
    }

    /// Stores every child as the watch would deliver it after an apply.
    pub fn store(&mut self, children: &Children) {
        let Children {
            workloads,
            services,
            budgets,
            service_account,
            own_service_accounts,
            service_issuer,
            role,
            role_binding,
            network_policies,
            pod_monitor: _,
            broker,
            component_configs,
        } = children;
        for c in component_configs {
            self.config_maps
                .apply_watcher_event(&watcher::Event::Apply(as_stored(c)));
        }
        for w in workloads {
            match w {
                Workload::Deployment(d) => self
                    .deployments
                    .apply_watcher_event(&watcher::Event::Apply(as_stored(d))),
                Workload::StatefulSet(s) => self
                    .stateful_sets
                    .apply_watcher_event(&watcher::Event::Apply(as_stored(s))),
            }
        }
        for (_, b) in budgets {
            self.budgets
                .apply_watcher_event(&watcher::Event::Apply(as_stored(b)));
        }
        for s in services {
            self.services
                .apply_watcher_event(&watcher::Event::Apply(as_stored(s)));
        }
        for account in std::iter::once(service_account).chain(own_service_accounts) {
            self.service_accounts
                .apply_watcher_event(&watcher::Event::Apply(as_stored(account)));
        }
        if let Some(config_map) = service_issuer {
            self.config_maps
                .apply_watcher_event(&watcher::Event::Apply(as_stored(config_map)));
        }
        self.roles
            .apply_watcher_event(&watcher::Event::Apply(as_stored(role)));
        self.role_bindings
            .apply_watcher_event(&watcher::Event::Apply(as_stored(role_binding)));
        for p in network_policies {
            self.network_policies
                .apply_watcher_event(&watcher::Event::Apply(as_stored(p)));
        }
        if let Some(broker) = broker {
            self.config_maps
                .apply_watcher_event(&watcher::Event::Apply(as_stored(&broker.config)));
            for s in [&broker.service, &broker.pods_service] {
                self.services
                    .apply_watcher_event(&watcher::Event::Apply(as_stored(s)));
            }
            self.stateful_sets
                .apply_watcher_event(&watcher::Event::Apply(as_stored(&broker.stateful_set)));
            if let Some(b) = &broker.budget {
                self.budgets
                    .apply_watcher_event(&watcher::Event::Apply(as_stored(b)));
            }
            if let Some(p) = &broker.network_policy {
                self.network_policies
                    .apply_watcher_event(&watcher::Event::Apply(as_stored(p)));
            }
        }
    }
}

/// The object as the API server returns it: ours plus server-set fields (uid, defaults,
/// managed fields), which must not count as drift.
pub fn as_stored<K>(object: &K) -> K
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned,
{
    let mut value = serde_json::to_value(object).unwrap();
    value["metadata"]["uid"] = json!("0f0f0f0f-0000-4000-8000-00000000aaaa");
    value["metadata"]["resourceVersion"] = json!("200");
    value["metadata"]["generation"] = json!(1);
    value["metadata"]["managedFields"] = json!([{"manager": "msa-operator", "operation": "Apply"}]);
    if value["kind"] == "Service" {
        // The address the API server allocates (a headless Service keeps its `None`).
        if value["spec"]["clusterIP"].is_null() {
            value["spec"]["clusterIP"] = json!("10.96.0.10");
        }
        value["spec"]["sessionAffinity"] = json!("None");
    }
    if value["kind"] == "Deployment" {
        value["spec"]["revisionHistoryLimit"] = json!(10);
        // Go's `omitempty` drops zero integers such as minReadySeconds.
        if value["spec"]["minReadySeconds"] == json!(0) {
            value["spec"]
                .as_object_mut()
                .unwrap()
                .remove("minReadySeconds");
        }
        value["spec"]["template"]["spec"]["restartPolicy"] = json!("Always");
        value["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"] =
            json!("/dev/termination-log");
    }
    serde_json::from_value(value).unwrap()
}

/// One request the operator sent.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
}

impl Call {
    /// `METHOD path?query`, for compact assertions.
    pub fn line(&self) -> String {
        if self.query.is_empty() {
            format!("{} {}", self.method, self.path)
        } else {
            format!("{} {}?{}", self.method, self.path, self.query)
        }
    }

    pub fn is_write(&self) -> bool {
        self.method != "GET"
    }
}

/// How the mocked API server answers a call.
pub type Responder = Arc<dyn Fn(&Call) -> (StatusCode, Value) + Send + Sync>;

/// Answers like a healthy API server where none of the app's children exists yet but those the
/// caches hold: applies return the applied object, a status apply returns the app with that
/// status, Event creation returns the Event, a read of one object (a child missing from the
/// caches, looked up before it is applied) is 404.
pub fn healthy_api(app: &MicroserviceApp) -> Responder {
    let app = serde_json::to_value(app).unwrap();
    Arc::new(move |call: &Call| {
        if call.method == "GET" {
            (
                StatusCode::NOT_FOUND,
                api_error(404, "NotFound", "not found"),
            )
        } else if call.method == "DELETE" {
            (
                StatusCode::OK,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}),
            )
        } else if call.path.ends_with("/status") {
            let mut stored = app.clone();
            stored["status"] = call.body["status"].clone();
            (StatusCode::OK, stored)
        } else {
            (StatusCode::OK, call.body.clone())
        }
    })
}

/// How a mocked API server that can also fail as a network does answers a call: `Err` is a
/// transport error (the connection reset before any answer).
pub type FallibleResponder =
    Arc<dyn Fn(&Call) -> Result<(StatusCode, Value), &'static str> + Send + Sync>;

/// A client whose every request is recorded in the returned list and answered by `respond`.
pub fn mocked_client(respond: Responder) -> (Client, Arc<Mutex<Vec<Call>>>) {
    mocked_client_or_cut_off(Arc::new(move |call: &Call| Ok(respond(call))))
}

/// As [`mocked_client`], where `respond` may also fail a request as the network would.
pub fn mocked_client_or_cut_off(respond: FallibleResponder) -> (Client, Arc<Mutex<Vec<Call>>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let recorded = calls.clone();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let method = request.method().to_string();
            let path = request.uri().path().to_owned();
            // Parameter order is an implementation detail of the client: compare them sorted.
            let mut params: Vec<&str> = request
                .uri()
                .query()
                .unwrap_or_default()
                .split('&')
                .filter(|p| !p.is_empty())
                .collect();
            params.sort_unstable();
            let query = params.join("&");
            let bytes = request.into_body().collect().await.unwrap().to_bytes();
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            let call = Call {
                method,
                path,
                query,
                body,
            };
            let answered = respond(&call);
            recorded.lock().unwrap().push(call);
            let (status, answer) = match answered {
                Ok(answer) => answer,
                Err(cut_off) => {
                    send.send_error(cut_off);
                    continue;
                }
            };
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    });
    (Client::new(service, NAMESPACE), calls)
}

/// A reconcile context over the mocked client and the given caches, with a fixed clock.
pub fn context(client: Client, caches: Caches) -> Arc<Context> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "msa-operator".into(),
            instance: Some("test".into()),
        },
    );
    let mut context = Context::new(client, caches, recorder, Arc::new(Metrics::default()));
    context.now = Box::new(|| fixed_time(0));
    known_cluster(&context);
    Arc::new(context)
}

/// The mocked API server offers no issuer discovery and no PodMonitor API, and the context
/// knows it (as the operator does once it asked).
fn known_cluster(context: &Context) {
    *context.cluster.write().unwrap() =
        msa_operator::facts::Learned::known(msa_operator::build::ClusterFacts::default());
}

/// A context that has not learned anything about the cluster yet (a start whose reads failed).
pub fn context_knowing_nothing(client: Client, caches: Caches) -> Arc<Context> {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "msa-operator".into(),
            instance: Some("test".into()),
        },
    );
    let mut context = Context::new(client, caches, recorder, Arc::new(Metrics::default()));
    context.now = Box::new(|| fixed_time(0));
    Arc::new(context)
}

/// [`context`] with a clock the test moves: seconds after [`fixed_time`]'s origin.
pub fn clocked_context(
    client: Client,
    caches: Caches,
) -> (Arc<Context>, Arc<std::sync::atomic::AtomicI64>) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "msa-operator".into(),
            instance: Some("test".into()),
        },
    );
    let clock = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let mut context = Context::new(client, caches, recorder, Arc::new(Metrics::default()));
    let read = clock.clone();
    context.now = Box::new(move || fixed_time(read.load(std::sync::atomic::Ordering::SeqCst)));
    known_cluster(&context);
    (Arc::new(context), clock)
}

/// The Kubernetes API error body for a refused request.
pub fn api_error(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "reason": reason, "code": code})
}
