//! The reconciler against a mocked API server: every call pinned (method, path, field manager,
//! body), for create, no-op, drift, scale, status and error paths.

mod support;

use std::sync::Arc;

use http::StatusCode;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::core::DeserializeGuard;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use msa_operator::build;
use msa_operator::crd::MicroserviceApp;
use msa_operator::reconcile::{self, RESYNC};
use serde_json::{Value, json};
use support::{
    Call, FakeCaches, api_error, app, as_stored, context, deployments, healthy_api, mocked_client,
    mocked_client_or_cut_off, pg_app,
};

const APPLY: &str = "fieldManager=msa-operator&force=true";

/// The calls a reconcile made, without the reads of single objects (a child missing from the
/// caches is looked up before it is applied, issue 28 L4; a StatefulSet is read again before a
/// pod of an abandoned revision is deleted): the sequences the tests pin are of writes and lists.
/// [`all_calls`] has them too.
fn calls(recorded: &std::sync::Mutex<Vec<Call>>) -> Vec<Call> {
    all_calls(recorded)
        .into_iter()
        .filter(|c| !(c.method == "GET" && c.query.is_empty()))
        .collect()
}

fn all_calls(recorded: &std::sync::Mutex<Vec<Call>>) -> Vec<Call> {
    recorded.lock().unwrap().clone()
}

fn lines(calls: &[Call]) -> Vec<String> {
    calls.iter().map(Call::line).collect()
}

/// The app after the operator wrote `status` (as the watch would deliver it).
fn with_status_of(app: &MicroserviceApp, status_call: &Call) -> MicroserviceApp {
    let mut next = app.clone();
    next.status = Some(serde_json::from_value(status_call.body["status"].clone()).unwrap());
    next
}

/// Deployments as the cluster reports them once their pods are ready.
fn ready(deployment: &Deployment) -> Deployment {
    let mut value = serde_json::to_value(as_stored(deployment)).unwrap();
    let replicas = value["spec"]["replicas"].clone();
    value["status"] = json!({"observedGeneration": 1, "replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas, "availableReplicas": replicas});
    serde_json::from_value(value).unwrap()
}

#[tokio::test]
async fn first_reconcile_applies_every_child_then_writes_status_and_a_second_writes_nothing() {
    let shop = pg_app(json!({}));
    let (client, recorded) = mocked_client(healthy_api(&shop));
    let mut caches = FakeCaches::listed();
    let ctx = context(client, caches.readers());

    let action = reconcile::reconcile(Arc::new(shop.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(RESYNC));

    let first = calls(&recorded);
    // Each child, missing from the caches, is looked up right before it is applied (issue 28
    // L4: an object of its name the app did not make is not taken over).
    let every = all_calls(&recorded);
    let applies: Vec<&Call> = every
        .iter()
        .filter(|c| c.method == "PATCH" && !c.path.ends_with("/status"))
        .collect();
    assert_eq!(applies.len(), 17, "{:#?}", lines(&every));
    for (i, call) in every.iter().enumerate() {
        if call.method == "PATCH" && !call.path.ends_with("/status") {
            assert_eq!(every[i - 1].line(), format!("GET {}", call.path));
        }
    }
    let ns = "/api/v1/namespaces/demo";
    let rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/demo";
    let apps = "/apis/apps/v1/namespaces/demo/deployments";
    let net = "/apis/networking.k8s.io/v1/namespaces/demo/networkpolicies";
    assert_eq!(
        lines(&first),
        [
            format!("PATCH {ns}/serviceaccounts/shop-discovery?{APPLY}"),
            format!("PATCH {ns}/serviceaccounts/shop-order?{APPLY}"),
            format!("PATCH {ns}/serviceaccounts/shop-product?{APPLY}"),
            format!("PATCH {rbac}/roles/shop-discovery?{APPLY}"),
            format!("PATCH {rbac}/rolebindings/shop-discovery?{APPLY}"),
            format!("PATCH {ns}/services/shop-user?{APPLY}"),
            format!("PATCH {ns}/services/shop-order?{APPLY}"),
            format!("PATCH {ns}/services/shop-product?{APPLY}"),
            format!("PATCH {ns}/services/shop-gateway?{APPLY}"),
            format!("PATCH {net}/shop-user?{APPLY}"),
            format!("PATCH {net}/shop-order?{APPLY}"),
            format!("PATCH {net}/shop-product?{APPLY}"),
            format!("PATCH {net}/shop-gateway?{APPLY}"),
            format!("PATCH {apps}/shop-user?{APPLY}"),
            format!("PATCH {apps}/shop-order?{APPLY}"),
            format!("PATCH {apps}/shop-product?{APPLY}"),
            format!("PATCH {apps}/shop-gateway?{APPLY}"),
            "POST /apis/events.k8s.io/v1/namespaces/demo/events".to_owned(),
            format!(
                "PATCH /apis/msa.dev/v1alpha1/namespaces/demo/microserviceapps/shop/status?{APPLY}"
            ),
        ]
    );

    // The bodies are exactly the rendered objects (pinned by the render snapshots).
    let children = build::children(&shop).unwrap();
    let build::Children {
        workloads: _,
        services,
        budgets,
        service_account,
        own_service_accounts,
        service_issuer,
        role,
        role_binding,
        network_policies,
        pod_monitor,
        broker,
        component_configs,
    } = children.clone();
    assert_eq!(broker, None, "events off in the fixture");
    assert!(component_configs.is_empty(), "no config in the fixture");
    assert_eq!(pod_monitor, None, "off unless asked for");
    assert_eq!(
        service_issuer, None,
        "the mocked API server has no issuer discovery"
    );
    assert!(
        budgets.is_empty(),
        "one replica each: no PodDisruptionBudget"
    );
    let deployments = deployments(&children);
    let mut expected: Vec<Value> = vec![serde_json::to_value(&service_account).unwrap()];
    expected.extend(
        own_service_accounts
            .iter()
            .map(|a| serde_json::to_value(a).unwrap()),
    );
    expected.extend([
        serde_json::to_value(&role).unwrap(),
        serde_json::to_value(&role_binding).unwrap(),
    ]);
    expected.extend(services.iter().map(|s| serde_json::to_value(s).unwrap()));
    expected.extend(
        network_policies
            .iter()
            .map(|p| serde_json::to_value(p).unwrap()),
    );
    expected.extend(deployments.iter().map(|d| serde_json::to_value(d).unwrap()));
    for (call, body) in first.iter().zip(&expected) {
        assert_eq!(&call.body, body, "{}", call.line());
    }
    let event = &first[17].body;
    assert_eq!(event["reason"], "Applied");
    assert_eq!(event["regarding"]["name"], "shop");
    assert!(event["note"].as_str().unwrap().starts_with(
        "applied ServiceAccount/shop-discovery, ServiceAccount/shop-order, ServiceAccount/shop-product, Role/shop-discovery"
    ));
    let status_call = &first[18];
    assert_eq!(status_call.body["apiVersion"], "msa.dev/v1alpha1");
    assert_eq!(status_call.body["kind"], "MicroserviceApp");
    assert_eq!(status_call.body["status"]["observedGeneration"], 1);
    assert_eq!(status_call.body["status"]["conditions"][0]["type"], "Ready");
    assert_eq!(
        status_call.body["status"]["conditions"][0]["status"],
        "False"
    );

    // The watch delivers what was applied and the new status: nothing left to write.
    caches.store(&children);
    let converged = with_status_of(&shop, status_call);
    recorded.lock().unwrap().clear();
    reconcile::reconcile(Arc::new(converged), ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        lines(&calls(&recorded)),
        Vec::<String>::new(),
        "a converged app costs no API call"
    );
    // Write metrics count the first reconcile's writes and nothing of the second.
    let metrics = ctx.metrics.render();
    for line in [
        "msa_operator_api_writes_total{kind=\"Deployment\"} 4",
        "msa_operator_api_writes_total{kind=\"Service\"} 4",
        "msa_operator_api_writes_total{kind=\"MicroserviceApp/status\"} 1",
        "msa_operator_reconciles_total 2",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
}

#[tokio::test]
async fn hand_edits_and_deletions_are_reverted_with_one_apply_each() {
    let shop = pg_app(json!({}));
    let (client, recorded) = mocked_client(healthy_api(&shop));
    let mut caches = FakeCaches::listed();
    let children = build::children(&shop).unwrap();
    caches.store(&children);
    let ctx = context(client, caches.readers());
    // Converge status first so only drift remains.
    reconcile::reconcile(Arc::new(shop.clone()), ctx.clone())
        .await
        .unwrap();
    let converged = with_status_of(&shop, calls(&recorded).last().unwrap());
    recorded.lock().unwrap().clear();

    // Someone scales the order Deployment and strips a label from the user Service.
    let mut scaled = as_stored(&deployments(&children)[1]);
    scaled.spec.as_mut().unwrap().replicas = Some(7);
    caches
        .deployments
        .apply_watcher_event(&watcher::Event::Apply(scaled));
    let mut relabelled = as_stored(&children.services[0]);
    relabelled
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove("app.kubernetes.io/part-of");
    caches
        .services
        .apply_watcher_event(&watcher::Event::Apply(relabelled));
    // ... and deletes the Role.
    caches
        .roles
        .apply_watcher_event(&watcher::Event::Delete(as_stored(&children.role)));

    reconcile::reconcile(Arc::new(converged), ctx)
        .await
        .unwrap();
    let after = calls(&recorded);
    assert_eq!(
        lines(&after),
        [
            format!(
                "PATCH /apis/rbac.authorization.k8s.io/v1/namespaces/demo/roles/shop-discovery?{APPLY}"
            ),
            format!("PATCH /api/v1/namespaces/demo/services/shop-user?{APPLY}"),
            format!("PATCH /apis/apps/v1/namespaces/demo/deployments/shop-order?{APPLY}"),
            "POST /apis/events.k8s.io/v1/namespaces/demo/events".to_owned(),
        ]
    );
    assert_eq!(after[2].body["spec"]["replicas"], 1);
    assert_eq!(
        after[3].body["note"],
        "applied Role/shop-discovery, Service/shop-user, Deployment/shop-order"
    );
}

#[tokio::test]
async fn scaling_in_the_spec_applies_one_deployment_and_its_disruption_budget_and_updates_status() {
    let shop = pg_app(json!({}));
    let (client, recorded) = mocked_client(healthy_api(&shop));
    let mut caches = FakeCaches::listed();
    let children = build::children(&shop).unwrap();
    caches.store(&children);
    for d in &deployments(&children) {
        caches
            .deployments
            .apply_watcher_event(&watcher::Event::Apply(ready(d)));
    }
    let ctx = context(client, caches.readers());
    reconcile::reconcile(Arc::new(shop.clone()), ctx.clone())
        .await
        .unwrap();
    let first = calls(&recorded);
    assert_eq!(first.len(), 1, "only the status: {:?}", lines(&first));
    assert_eq!(
        first[0].body["status"]["conditions"][0]["status"], "True",
        "all components ready"
    );
    let converged = with_status_of(&shop, &first[0]);
    recorded.lock().unwrap().clear();

    let mut scaled = converged.clone();
    scaled.spec.components.gateway.component.replicas = 3;
    scaled.metadata.generation = Some(2);
    reconcile::reconcile(Arc::new(scaled), ctx).await.unwrap();
    let after = calls(&recorded);
    assert_eq!(
        lines(&after),
        [
            format!("PATCH /apis/apps/v1/namespaces/demo/deployments/shop-gateway?{APPLY}"),
            // More than one replica: node drains may take only one at a time.
            format!(
                "PATCH /apis/policy/v1/namespaces/demo/poddisruptionbudgets/shop-gateway?{APPLY}"
            ),
            "POST /apis/events.k8s.io/v1/namespaces/demo/events".to_owned(),
            format!(
                "PATCH /apis/msa.dev/v1alpha1/namespaces/demo/microserviceapps/shop/status?{APPLY}"
            ),
            "POST /apis/events.k8s.io/v1/namespaces/demo/events".to_owned(),
        ]
    );
    assert_eq!(after[0].body["spec"]["replicas"], 3);
    assert_eq!(after[1].body["spec"]["maxUnavailable"], 1);
    let status = &after[3].body["status"];
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(status["components"]["gateway"]["desiredReplicas"], 3);
    assert_eq!(status["conditions"][0]["status"], "False");
    // Ready flipped from True to False: announced as a Warning.
    assert_eq!(after[4].body["type"], "Warning");
    assert_eq!(after[4].body["reason"], "ComponentsNotReady");
}

#[tokio::test]
async fn an_invalid_spec_writes_only_a_degraded_status_and_waits_for_a_change() {
    let bad = pg_app(
        json!({"components": {"order": {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}}}),
    );
    let (client, recorded) = mocked_client(healthy_api(&bad));
    let caches = FakeCaches::listed();
    let ctx = context(client, caches.readers());
    let action = reconcile::reconcile(Arc::new(bad.clone()), ctx)
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    let all = calls(&recorded);
    assert_eq!(
        lines(&all),
        [
            format!(
                "PATCH /apis/msa.dev/v1alpha1/namespaces/demo/microserviceapps/shop/status?{APPLY}"
            ),
            "POST /apis/events.k8s.io/v1/namespaces/demo/events".to_owned(),
        ]
    );
    let degraded = &all[0].body["status"]["conditions"][2];
    assert_eq!(degraded["type"], "Degraded");
    assert_eq!(degraded["reason"], "InvalidSpec");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap()
            .contains("spec.components.order.env[1].name: A is listed twice")
    );
    assert_eq!(all[1].body["type"], "Warning");
    assert_eq!(all[1].body["reason"], "InvalidSpec");
}

/// An app deleted and created again under its name: until the garbage collector has removed the
/// old app's workloads they are still cached under the same names, ready. The new app — here
/// with a spec it cannot run — must not report them as its own.
#[tokio::test]
async fn workloads_of_an_earlier_app_of_the_same_name_are_not_counted() {
    let bad = pg_app(
        json!({"components": {"order": {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}}}),
    );
    let mut earlier = pg_app(json!({}));
    earlier.metadata.uid = Some("0e0e0e0e-0000-4000-8000-00000000beef".to_owned());
    let mut caches = FakeCaches::listed();
    caches.store(&build::children(&earlier).unwrap());
    for d in deployments(&build::children(&earlier).unwrap()) {
        let mut ready = as_stored(&d);
        let replicas = ready.spec.as_ref().and_then(|s| s.replicas);
        ready.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
            replicas,
            ready_replicas: replicas,
            available_replicas: replicas,
            updated_replicas: replicas,
            observed_generation: ready.metadata.generation,
            ..Default::default()
        });
        caches
            .deployments
            .apply_watcher_event(&watcher::Event::Apply(ready));
    }
    let (client, recorded) = mocked_client(healthy_api(&bad));
    let ctx = context(client, caches.readers());
    reconcile::reconcile(Arc::new(bad), ctx).await.unwrap();
    let all = calls(&recorded);
    let status = &all[0].body["status"];
    assert!(all[0].path.ends_with("/status"), "{:?}", all[0]);
    let ready = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "False", "{status:#}");
    for component in ["gateway", "user", "order", "product"] {
        assert_eq!(
            status["components"][component]["readyReplicas"]
                .as_i64()
                .unwrap_or(0),
            0,
            "{component}: {status:#}"
        );
    }
}

#[tokio::test]
async fn a_refused_child_is_reported_the_rest_applied_and_the_reconcile_retried_with_backoff() {
    let shop = pg_app(json!({}));
    let healthy = healthy_api(&shop);
    let respond: support::Responder = Arc::new(move |call: &Call| {
        if call.method == "PATCH" && call.path.ends_with("/deployments/shop-user") {
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                api_error(
                    422,
                    "Invalid",
                    "Deployment.apps \"shop-user\" is invalid: spec.template.spec.containers[0].image: Required value",
                ),
            )
        } else {
            healthy(call)
        }
    });
    let (client, recorded) = mocked_client(respond);
    let caches = FakeCaches::listed();
    let ctx = context(client, caches.readers());
    let shop = Arc::new(shop);
    let error = reconcile::reconcile(shop.clone(), ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(error.category(), "apply");
    let all = calls(&recorded);
    assert_eq!(
        all.iter()
            .filter(|c| c.path.contains("/deployments/"))
            .count(),
        4,
        "the other Deployments are still applied"
    );
    let status = &all
        .iter()
        .find(|c| c.path.ends_with("/status"))
        .unwrap()
        .body["status"];
    assert_eq!(status["conditions"][2]["reason"], "ApplyFailed");
    assert!(
        status["conditions"][2]["message"]
            .as_str()
            .unwrap()
            .starts_with("could not apply Deployment/shop-user (Deployment.apps")
    );

    // Backoff doubles per failure of the same app (less its spread) and resets on success.
    let key = ObjectRef::new("shop").within("demo");
    assert_eq!(
        reconcile::error_policy(shop.clone(), &error, ctx.clone()),
        Action::requeue(reconcile::spread(reconcile::BACKOFF_FIRST, &key, 1))
    );
    let _ = reconcile::reconcile(shop.clone(), ctx.clone()).await;
    assert_eq!(
        reconcile::error_policy(shop.clone(), &error, ctx.clone()),
        Action::requeue(reconcile::spread(reconcile::BACKOFF_FIRST * 2, &key, 2))
    );
    assert_eq!(reconcile::backoff(30), reconcile::BACKOFF_CAP);
    assert!(
        ctx.metrics
            .render()
            .contains("msa_operator_reconcile_errors_total{category=\"apply\"} 2")
    );
}

#[tokio::test]
async fn a_transport_error_aborts_the_reconcile_at_the_failed_apply() {
    let shop = pg_app(json!({}));
    let healthy = healthy_api(&shop);
    let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let respond: support::FallibleResponder = Arc::new(move |call: &Call| {
        if call.is_write() && !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst) {
            Err("connection reset by peer")
        } else {
            Ok(healthy(call))
        }
    });
    let (client, recorded) = mocked_client_or_cut_off(respond);
    let ctx = context(client, FakeCaches::listed().readers());
    let error = reconcile::reconcile(Arc::new(shop), ctx).await.unwrap_err();
    assert_eq!(error.category(), "transport", "{error}");
    let calls = calls(&recorded);
    assert_eq!(
        calls.len(),
        1,
        "nothing is applied after the first write's connection failed: {calls:?}"
    );
}

#[tokio::test]
async fn a_permission_error_aborts_the_reconcile_and_shows_in_status() {
    let shop = pg_app(json!({}));
    let lookups = healthy_api(&shop);
    let respond: support::Responder = Arc::new(move |call: &Call| {
        if call.method == "GET" {
            return lookups(call);
        }
        (
            StatusCode::FORBIDDEN,
            api_error(
                403,
                "Forbidden",
                "serviceaccounts \"shop-discovery\" is forbidden: User cannot patch resource",
            ),
        )
    });
    let (client, recorded) = mocked_client(respond);
    let caches = FakeCaches::listed();
    let ctx = context(client, caches.readers());
    let error = reconcile::reconcile(Arc::new(shop), ctx).await.unwrap_err();
    assert_eq!(error.category(), "forbidden");
    assert!(error.to_string().contains("is forbidden"), "{error}");
    let calls = calls(&recorded);
    assert_eq!(
        calls.len(),
        2,
        "stops at the first refused apply, then reports it in status: {calls:?}"
    );
    let status = &calls[1].body;
    assert!(calls[1].path.ends_with("/status"), "{:?}", calls[1]);
    let degraded = status["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap();
    assert_eq!(degraded["status"], "True");
    assert_eq!(degraded["reason"], "Forbidden");
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.contains("\"shop-discovery\" is forbidden")
            && message.contains("grant its ServiceAccount the chart's ClusterRole"),
        "{message}"
    );
}

#[tokio::test]
async fn status_counts_the_ready_endpoints_of_the_apps_own_slices_only() {
    let shop = pg_app(json!({}));
    let (client, recorded) = mocked_client(healthy_api(&shop));
    let mut caches = FakeCaches::listed();
    caches.store(&build::children(&shop).unwrap());
    let slice = |name: &str,
                 app: &str,
                 service: &str,
                 addresses: Value|
     -> k8s_openapi::api::discovery::v1::EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "demo", "labels": {
                "app.kubernetes.io/instance": app, "kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": addresses,
        }))
        .unwrap()
    };
    for s in [
        slice(
            "shop-gateway-a",
            "shop",
            "shop-gateway",
            json!([{"addresses": ["198.18.0.1"]}, {"addresses": ["198.18.0.2"], "conditions": {"ready": false}}]),
        ),
        slice(
            "shop-gateway-b",
            "shop",
            "shop-gateway",
            json!([{"addresses": ["198.18.0.3"]}]),
        ),
        slice(
            "shop-user-a",
            "shop",
            "shop-user",
            json!([{"addresses": ["198.18.0.4"]}]),
        ),
        // Another app in the same namespace: never counted for shop.
        slice(
            "other-gateway-a",
            "other",
            "other-gateway",
            json!([{"addresses": ["198.18.0.9"]}]),
        ),
    ] {
        caches
            .endpoint_slices
            .apply_watcher_event(&watcher::Event::Apply(s));
    }
    let ctx = context(client, caches.readers());
    reconcile::reconcile(Arc::new(shop), ctx).await.unwrap();
    let all = calls(&recorded);
    let status = &all
        .iter()
        .find(|c| c.path.ends_with("/status"))
        .unwrap()
        .body["status"];
    assert_eq!(status["components"]["gateway"]["endpoints"], 2);
    assert_eq!(status["components"]["user"]["endpoints"], 1);
    assert_eq!(status["components"]["order"]["endpoints"], 0);
}

#[tokio::test]
async fn an_embedded_app_runs_stateful_sets_and_switching_to_postgresql_replaces_them() {
    let embedded = app(json!({}));
    let (client, recorded) = mocked_client(healthy_api(&embedded));
    let mut caches = FakeCaches::listed();
    let ctx = context(client, caches.readers());
    reconcile::reconcile(Arc::new(embedded.clone()), ctx.clone())
        .await
        .unwrap();
    let workloads: Vec<String> = lines(&calls(&recorded))
        .into_iter()
        .filter(|l| l.contains("/apis/apps/"))
        .collect();
    let apps = "/apis/apps/v1/namespaces/demo";
    assert_eq!(
        workloads,
        [
            format!("PATCH {apps}/statefulsets/shop-user?{APPLY}"),
            format!("PATCH {apps}/statefulsets/shop-order?{APPLY}"),
            format!("PATCH {apps}/statefulsets/shop-product?{APPLY}"),
            format!("PATCH {apps}/deployments/shop-gateway?{APPLY}"),
        ]
    );

    // The StatefulSets exist; now the app moves to PostgreSQL.
    caches.store(&build::children(&embedded).unwrap());
    recorded.lock().unwrap().clear();
    let mut switched = pg_app(json!({}));
    switched.metadata.generation = Some(2);
    reconcile::reconcile(Arc::new(switched), ctx).await.unwrap();
    let writes: Vec<String> = lines(&calls(&recorded))
        .into_iter()
        .filter(|l| l.contains("/apis/apps/"))
        .collect();
    assert_eq!(
        writes,
        [
            format!("DELETE {apps}/statefulsets/shop-user"),
            format!("PATCH {apps}/deployments/shop-user?{APPLY}"),
            format!("DELETE {apps}/statefulsets/shop-order"),
            format!("PATCH {apps}/deployments/shop-order?{APPLY}"),
            format!("DELETE {apps}/statefulsets/shop-product"),
            format!("PATCH {apps}/deployments/shop-product?{APPLY}"),
        ],
        "the gateway's Deployment is unchanged"
    );
}

/// Issue 28, H1: an app the types cannot read (here a null the API server kept in a field an
/// older CRD marked nullable) arrives through the guard as its metadata and the error; it gets a
/// Warning Event and nothing else, while the app listed with it converges.
#[tokio::test]
async fn one_unreadable_app_is_reported_and_skipped_while_the_others_converge() {
    let good = pg_app(json!({}));
    let mut bad = serde_json::to_value(pg_app(json!({}))).unwrap();
    bad["metadata"]["name"] = json!("broken");
    bad["metadata"]["uid"] = json!("1b2c3d4e-0000-4000-8000-0000000000bb");
    bad["spec"]["components"]["gateway"]["rollout"] = json!({"maxSurge": null});
    let page = json!({
        "apiVersion": "msa.dev/v1alpha1", "kind": "MicroserviceAppList",
        "metadata": {"resourceVersion": "300"},
        "items": [bad, serde_json::to_value(&good).unwrap()],
    });
    // Read without the guard, the one bad item fails the whole page (every app stops).
    let unguarded = serde_json::from_value::<kube::core::ObjectList<MicroserviceApp>>(page.clone());
    assert!(unguarded.unwrap_err().to_string().contains("null"));
    let listed: kube::core::ObjectList<DeserializeGuard<MicroserviceApp>> =
        serde_json::from_value(page).unwrap();
    assert_eq!(listed.items.len(), 2);

    let (client, recorded) = mocked_client(healthy_api(&good));
    let caches = FakeCaches::listed();
    let ctx = context(client, caches.readers());
    let metrics = &ctx.metrics;
    metrics.count_app_health(listed.items.iter().map(msa_operator::unreadable::health));
    for object in listed.items {
        let action = reconcile::reconcile_object(Arc::new(object), ctx.clone())
            .await
            .unwrap();
        assert!(
            action == Action::requeue(RESYNC) || action == Action::await_change(),
            "{action:?}"
        );
    }

    let all = calls(&recorded);
    let about_broken: Vec<&Call> = all
        .iter()
        .filter(|c| c.path.contains("broken") || c.body["regarding"]["name"] == "broken")
        .collect();
    assert_eq!(
        about_broken.iter().map(|c| c.line()).collect::<Vec<_>>(),
        ["POST /apis/events.k8s.io/v1/namespaces/demo/events"],
        "the unreadable app gets one Event and no write"
    );
    let event = &about_broken[0].body;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "Unreadable");
    assert_eq!(event["regarding"]["kind"], "MicroserviceApp");
    assert!(
        event["note"]
            .as_str()
            .unwrap()
            .contains("kubectl edit msa broken -n demo"),
        "{event}"
    );
    assert!(
        all.iter().any(|c| c.line()
            == format!("PATCH /apis/apps/v1/namespaces/demo/deployments/shop-gateway?{APPLY}")),
        "the readable app is applied: {:?}",
        lines(&all)
    );
    assert!(
        all.iter()
            .any(|c| c.path.ends_with("/microserviceapps/shop/status")),
        "and its status written"
    );
    let text = metrics.render();
    for line in [
        "msa_operator_reconcile_errors_total{category=\"unreadable\"} 1",
        "msa_operator_unreadable_apps 1",
        "msa_operator_apps{ready=\"false\"} 2",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

/// Issue 28, H4 (the review's probe): an embedded app whose claims are never created (no
/// StorageClass) reconciled at 40, 41 and 42 s with nothing else changing writes its status
/// once, and lists each stuck claim's Events once.
#[tokio::test]
async fn a_stuck_claim_writes_status_once_and_reads_its_events_once() {
    let shop = app(json!({}));
    let healthy = healthy_api(&shop);
    let respond: support::Responder = Arc::new(move |call: &Call| {
        if call.method == "GET" && call.path.ends_with("/events") {
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": [{
                    "metadata": {"name": "e1", "namespace": "demo"},
                    "involvedObject": {"kind": "StatefulSet", "name": "shop-user"},
                    "type": "Warning", "reason": "FailedCreate",
                    "message": "create Claim data-shop-user-0 failed: exceeded quota",
                    "lastTimestamp": "2026-09-22T10:00:00Z"
                }]}),
            )
        } else {
            healthy(call)
        }
    });
    let (client, recorded) = mocked_client(respond);
    let mut caches = FakeCaches::listed();
    caches.store(&build::children(&shop).unwrap());
    for set in support::stateful_sets(&build::children(&shop).unwrap()) {
        let mut stored = as_stored(&set);
        stored.metadata.creation_timestamp = Some(support::fixed_time(0));
        caches
            .stateful_sets
            .apply_watcher_event(&watcher::Event::Apply(stored));
    }
    let (ctx, clock) = support::clocked_context(client, caches.readers());

    let mut current = shop.clone();
    for second in [40, 41, 42] {
        clock.store(second, std::sync::atomic::Ordering::SeqCst);
        reconcile::reconcile(Arc::new(current.clone()), ctx.clone())
            .await
            .unwrap();
        // The watch delivers the status just written, as it would.
        if let Some(status) = calls(&recorded)
            .iter()
            .rev()
            .find(|c| c.path.ends_with("/status"))
        {
            current = with_status_of(&shop, status);
        }
    }
    let all = calls(&recorded);
    let status_writes: Vec<&Call> = all.iter().filter(|c| c.path.ends_with("/status")).collect();
    let event_lists = all
        .iter()
        .filter(|c| c.method == "GET" && c.path.ends_with("/events"))
        .count();
    assert_eq!(status_writes.len(), 1, "{:?}", lines(&all));
    assert_eq!(event_lists, 3, "one per stuck claim: {:?}", lines(&all));
    let degraded = &status_writes[0].body["status"]["conditions"][2];
    assert_eq!(degraded["reason"], "StorageUnavailable");
    let message = degraded["message"].as_str().unwrap();
    assert!(
        message.contains("claim data-shop-user-0 was not created within 30 s")
            && message.contains("exceeded quota"),
        "{message}"
    );
    assert!(
        !message.contains("40"),
        "no clock in the message: {message}"
    );
}

/// Issue 28, H5 (the review's probe): a product Deployment rendered while the issuer was known,
/// reconciled by a process that could not read it (a start or failover while the discovery
/// endpoint fails): nothing is applied, so no pod rolls without its service identity.
#[tokio::test]
async fn an_unknown_issuer_never_rolls_a_running_app() {
    let shop = pg_app(json!({}));
    let issuer = build::ServiceIssuer {
        issuer: "https://kubernetes.default.svc.cluster.local".to_owned(),
        jwks: r#"{"keys": [{"kty": "RSA", "kid": "k1"}]}"#.to_owned(),
    };
    let rendered = build::children_in(
        &shop,
        &build::ClusterFacts {
            service_issuer: Some(issuer),
            pod_monitors: false,
            ..build::ClusterFacts::default()
        },
    )
    .unwrap();
    let product = &deployments(&rendered)[2];
    assert!(
        serde_json::to_string(product)
            .unwrap()
            .contains("MSA_SERVICE_ISSUER")
    );
    let (client, recorded) = mocked_client(healthy_api(&shop));
    let mut caches = FakeCaches::listed();
    caches.store(&rendered);
    let ctx = support::context_knowing_nothing(client, caches.readers());

    reconcile::reconcile(Arc::new(shop), ctx).await.unwrap();
    let writes: Vec<String> = calls(&recorded)
        .iter()
        .filter(|c| c.is_write() && !c.path.ends_with("/status") && !c.path.ends_with("/events"))
        .map(Call::line)
        .collect();
    assert_eq!(
        writes,
        Vec::<String>::new(),
        "rendered with the issuer and keys the app runs with: nothing to apply"
    );
}

/// Issue 28 (the review's leftover): an app created again under the name of one whose children
/// the garbage collector has not removed yet takes nothing from them — neither the facts its
/// product workload was rendered with (here: without service identity, while the operator does
/// not know the issuer) nor the storage problem of its StatefulSets.
#[tokio::test]
async fn an_earlier_apps_children_lend_a_new_app_neither_facts_nor_storage_problems() {
    // The earlier app's product service runs without the check, and none of its claims exists.
    let mut earlier = app(json!({}));
    earlier.metadata.uid = Some("0e0e0e0e-0000-4000-8000-00000000beef".to_owned());
    let rendered = build::children(&earlier).unwrap();
    let mut caches = FakeCaches::listed();
    caches.store(&rendered);
    for set in support::stateful_sets(&rendered) {
        let mut stored = as_stored(&set);
        stored.metadata.creation_timestamp = Some(support::fixed_time(0));
        caches
            .stateful_sets
            .apply_watcher_event(&watcher::Event::Apply(stored));
    }
    let shop = app(json!({}));

    // Issuer unknown: the new app waits for it, instead of running without the check because
    // the earlier app did.
    let (client, recorded) = mocked_client(healthy_api(&shop));
    let ctx = support::context_knowing_nothing(client, caches.readers());
    let action = reconcile::reconcile(Arc::new(shop.clone()), ctx)
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(reconcile::FACTS_WAIT));
    let all = calls(&recorded);
    assert!(
        all.iter()
            .all(|c| !c.is_write() || c.path.ends_with("/status")),
        "nothing applied: {:?}",
        lines(&all)
    );

    // Issuer known, 40 s after the earlier StatefulSets were created without claims: the new
    // app reports no storage problem of theirs. (Nor does it take the earlier app's children
    // over, issue 28 L4: it waits, ApplyFailed, until the garbage collector removed them.)
    let (client, recorded) = mocked_client(healthy_api(&shop));
    let (ctx, clock) = support::clocked_context(client, caches.readers());
    clock.store(40, std::sync::atomic::Ordering::SeqCst);
    let result = reconcile::reconcile(Arc::new(shop), ctx).await;
    assert!(
        matches!(result, Err(msa_operator::error::Error::Apply { .. })),
        "{result:?}"
    );
    let all = calls(&recorded);
    let status = &all
        .iter()
        .rev()
        .find(|c| c.path.ends_with("/status"))
        .expect("a status write")
        .body["status"];
    assert!(
        !status.to_string().contains("StorageUnavailable"),
        "{status:#}"
    );
    assert!(
        all.iter()
            .all(|c| !(c.method == "GET" && c.path.ends_with("/events"))),
        "no Events read for claims that are not the app's: {:?}",
        lines(&all)
    );
}

/// A new app while the issuer is unknown waits, says why, and looks again soon; nothing of it
/// is created without the check.
#[tokio::test]
async fn a_new_app_waits_for_an_unknown_issuer_and_says_so() {
    let shop = pg_app(json!({}));
    let (client, recorded) = mocked_client(healthy_api(&shop));
    let caches = FakeCaches::listed();
    let ctx = support::context_knowing_nothing(client, caches.readers());
    let action = reconcile::reconcile(Arc::new(shop), ctx).await.unwrap();
    assert_eq!(action, Action::requeue(reconcile::FACTS_WAIT));
    let all = calls(&recorded);
    assert_eq!(
        lines(&all),
        [format!(
            "PATCH /apis/msa.dev/v1alpha1/namespaces/demo/microserviceapps/shop/status?{APPLY}"
        )]
    );
    let progressing = &all[0].body["status"]["conditions"][1];
    assert_eq!(progressing["type"], "Progressing");
    assert_eq!(progressing["status"], "True");
    assert_eq!(progressing["reason"], "WaitingForCluster");
    assert!(
        progressing["message"]
            .as_str()
            .unwrap()
            .contains("ServiceAccount issuer"),
        "{progressing}"
    );
}

/// At start-up every app's first reconcile waits for the caches' first lists, side by side.
/// kube-runtime's `Store::wait_until_ready` wakes only the last of several tasks waiting on it;
/// before the operator let one reconcile wait for all of them, the others never went on, and
/// on the real node an app created before a restart was never reconciled again.
#[tokio::test]
async fn reconciles_waiting_side_by_side_for_the_first_lists_all_go_on() {
    let shop = pg_app(json!({}));
    let mut other = shop.clone();
    other.metadata.name = Some("other".into());
    let (client, _) = mocked_client(healthy_api(&shop));
    let mut caches = FakeCaches::unlisted();
    let ctx = context(client, caches.readers());

    let waiting: Vec<_> = [shop, other]
        .into_iter()
        .map(|app| tokio::spawn(reconcile::reconcile(Arc::new(app), ctx.clone())))
        .collect();
    // Let both run until they wait for the lists.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "no reconcile may go on before the caches listed"
    );
    caches.finish_lists();
    for reconcile in waiting {
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(30), reconcile)
            .await
            .expect("a reconcile waiting for the caches' first lists was never woken")
            .unwrap();
        assert_eq!(outcome.unwrap(), Action::requeue(RESYNC));
    }
}

/// Caches that never finish listing (a list the API server keeps refusing) fail the reconcile
/// after a bounded wait, which the error policy logs and retries, instead of holding it silently.
#[tokio::test(start_paused = true)]
async fn caches_that_never_list_fail_the_reconcile_after_a_bounded_wait() {
    let shop = pg_app(json!({}));
    let (client, recorded) = mocked_client(healthy_api(&shop));
    let caches = FakeCaches::unlisted();
    let ctx = context(client, caches.readers());

    let error = reconcile::reconcile(Arc::new(shop), ctx).await.unwrap_err();
    assert_eq!(error.category(), "caches_not_listed");
    assert!(error.to_string().contains("RBAC"), "{error}");
    assert!(calls(&recorded).is_empty(), "nothing is written unlisted");
}

/// Issue 28 L5: an app being deleted (under foreground deletion it still exists while the
/// garbage collector removes its children) is left alone: no child applied again, no status.
#[tokio::test]
async fn an_app_being_deleted_is_left_to_the_garbage_collector() {
    let mut shop = pg_app(json!({}));
    shop.metadata.deletion_timestamp = Some(support::fixed_time(0));
    shop.metadata.finalizers = Some(vec!["foregroundDeletion".into()]);
    let (client, recorded) = mocked_client(healthy_api(&shop));
    let caches = FakeCaches::listed();
    let ctx = context(client, caches.readers());

    let action = reconcile::reconcile(Arc::new(shop), ctx).await.unwrap();
    assert_eq!(action, Action::await_change());
    assert!(
        calls(&recorded).is_empty(),
        "{:?}",
        lines(&calls(&recorded))
    );
}

/// Issue 28 L1: apps that fail together (an API outage) retry spread over the last fifth of
/// their delay, not in lock-step; the delay never grows past the cap.
#[test]
fn apps_failing_together_retry_spread_out() {
    let delay = reconcile::backoff(3);
    let delays: std::collections::BTreeSet<_> = (0..100)
        .map(|i| {
            let app = ObjectRef::new(&format!("app-{i}")).within("demo");
            reconcile::spread(delay, &app, 3)
        })
        .collect();
    assert!(delays.len() > 50, "only {} distinct delays", delays.len());
    assert!(delays.iter().all(|d| *d <= delay && *d >= delay * 4 / 5));
    let capped = ObjectRef::new("app").within("demo");
    assert!(reconcile::spread(reconcile::backoff(30), &capped, 30) <= reconcile::BACKOFF_CAP);
}

/// Issue 28 L1: the failure count of an app deleted while it failed is forgotten.
#[tokio::test]
async fn what_is_remembered_of_apps_that_are_gone_is_forgotten() {
    let (client, _) = mocked_client(healthy_api(&pg_app(json!({}))));
    let ctx = context(client, FakeCaches::listed().readers());
    let kept = pg_app(json!({}));
    let kept_key = ObjectRef::from_obj(&kept);
    let kept_uid = kept.metadata.uid.clone().unwrap();
    let gone = ObjectRef::new("gone").within("demo");
    ctx.failures
        .lock()
        .unwrap()
        .extend([(kept_key.clone(), 3), (gone.clone(), 5)]);
    ctx.applied_pod_monitors.lock().unwrap().extend([
        (kept_uid.clone(), "hash-a".to_owned()),
        ("uid-of-a-deleted-app".to_owned(), "hash-b".to_owned()),
    ]);
    ctx.forget_apps_except(&reconcile::ExistingApps::of([&kept.metadata]));
    let failures = ctx.failures.lock().unwrap();
    assert_eq!(failures.get(&kept_key), Some(&3));
    assert!(!failures.contains_key(&gone));
    let monitors = ctx.applied_pod_monitors.lock().unwrap();
    assert_eq!(
        monitors.keys().collect::<Vec<_>>(),
        [&kept_uid],
        "only the existing app's PodMonitor hash stays"
    );
}

/// Issue 28 L4: an object of a child's name that the app did not make (here a Service made by
/// hand, without the operator's labels, so not in its caches: looked up before the apply) is
/// neither applied over nor adopted — the garbage collector would delete it with the app; the
/// app says which object and what to do, and its other children are applied.
#[tokio::test]
async fn an_object_the_app_did_not_create_is_never_taken_over() {
    let shop = pg_app(json!({}));
    let healthy = healthy_api(&shop);
    let (client, recorded) = mocked_client(Arc::new(move |call: &Call| {
        if call.method == "GET" && call.path == "/api/v1/namespaces/demo/services/shop-user" {
            let made_by_hand = json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "shop-user", "namespace": "demo", "uid": "hand-made"}});
            (StatusCode::OK, made_by_hand)
        } else {
            healthy(call)
        }
    }));
    let ctx = context(client, FakeCaches::listed().readers());
    let result = reconcile::reconcile(Arc::new(shop), ctx).await;
    assert!(
        matches!(
            result,
            Err(msa_operator::error::Error::Apply { count: 1, .. })
        ),
        "{result:?}"
    );
    let all = calls(&recorded);
    let written = lines(&all);
    assert!(
        !written.iter().any(|l| l.contains("/services/shop-user")),
        "{written:#?}"
    );
    assert!(
        written.iter().any(|l| l.contains("/services/shop-order")),
        "{written:#?}"
    );
    let status = &status_write(&all).body["status"];
    let degraded = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .unwrap();
    assert_eq!(degraded["reason"], "ApplyFailed", "{status:#}");
    let message = degraded["message"].as_str().unwrap();
    for expected in [
        "Service/shop-user",
        "was not made by this operator for this app",
        "kubectl delete service shop-user -n demo",
    ] {
        assert!(message.contains(expected), "{message}");
    }
}

/// An orphan of the app — its own labels, no owner (`kubectl delete msa --cascade=orphan`, then
/// the app applied again, or a restore without owner references) — is taken back, not refused.
#[tokio::test]
async fn the_apps_own_orphans_are_adopted() {
    let shop = pg_app(json!({}));
    let mut caches = FakeCaches::listed();
    let mut orphan = as_stored(&build::children(&shop).unwrap().services[0]);
    orphan.metadata.owner_references = None;
    caches
        .services
        .apply_watcher_event(&watcher::Event::Apply(orphan));
    let (client, recorded) = mocked_client(healthy_api(&shop));
    let ctx = context(client, caches.readers());
    reconcile::reconcile(Arc::new(shop), ctx).await.unwrap();
    let adopted = calls(&recorded)
        .into_iter()
        .find(|c| c.method == "PATCH" && c.path == "/api/v1/namespaces/demo/services/shop-user")
        .expect("the orphan is applied");
    assert_eq!(
        adopted.body["metadata"]["ownerReferences"][0]["controller"],
        true
    );
}

/// A StatefulSet whose controller has seen its spec, one pod desired and none ready, rolling
/// out to `revision`.
fn rolling_stateful_set(children: &build::Children, revision: &str) -> StatefulSet {
    let mut set = as_stored(&support::stateful_sets(children)[0]);
    set.status = Some(k8s_openapi::api::apps::v1::StatefulSetStatus {
        replicas: 1,
        ready_replicas: Some(0),
        updated_replicas: Some(1),
        observed_generation: set.metadata.generation,
        update_revision: Some(revision.to_owned()),
        current_revision: Some("shop-user-old".to_owned()),
        ..Default::default()
    });
    set
}

/// The user StatefulSet's one pod, not Ready, of `revision`, created at the clock's origin.
fn unready_pod(owner_uid: &str, revision: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "300"},
        "items": [{
            "metadata": {
                "name": "shop-user-0", "namespace": "demo", "uid": "pod-uid-1",
                "creationTimestamp": support::fixed_time(0),
                "labels": {"controller-revision-hash": revision},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                    "name": "shop-user", "uid": owner_uid, "controller": true}]
            },
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"}]}
        }]
    })
}

/// The last status write among `calls`.
fn status_write(calls: &[Call]) -> &Call {
    calls
        .iter()
        .rfind(|c| c.path.ends_with("/status"))
        .expect("a status write")
}

/// The API server of [`healthy_api`], listing `pods` for the user component.
fn api_with_pods(
    shop: &MicroserviceApp,
    pods: Value,
    user_set: Option<StatefulSet>,
) -> support::Responder {
    let healthy = healthy_api(shop);
    let user_set = serde_json::to_value(user_set).unwrap();
    Arc::new(move |call: &Call| {
        if call.method == "GET" && call.path == "/api/v1/namespaces/demo/pods" {
            (StatusCode::OK, pods.clone())
        } else if call.method == "GET"
            && call.path == "/apis/apps/v1/namespaces/demo/statefulsets/shop-user"
            && !user_set.is_null()
        {
            (StatusCode::OK, user_set.clone())
        } else {
            healthy(call)
        }
    })
}

/// Issue 28 M4: a StatefulSet has no progress deadline of its own; its pod not Ready past
/// `progressDeadlineSeconds` (counted from the pod's creation) makes the app Degraded, and until
/// then the operator looks again when the deadline ends.
#[tokio::test]
async fn a_stateful_set_pod_not_ready_past_its_deadline_degrades_the_app() {
    let shop = app(json!({"components": {"user": {"rollout": {"progressDeadlineSeconds": 60}}}}));
    let children = build::children(&shop).unwrap();
    let mut caches = FakeCaches::listed();
    caches.store(&children);
    let set = rolling_stateful_set(&children, "shop-user-new");
    let set_uid = set.metadata.uid.clone().unwrap();
    caches
        .stateful_sets
        .apply_watcher_event(&watcher::Event::Apply(set));

    let (client, recorded) = mocked_client(api_with_pods(
        &shop,
        unready_pod(&set_uid, "shop-user-new"),
        None,
    ));
    let (ctx, clock) = support::clocked_context(client, caches.readers());
    clock.store(45, std::sync::atomic::Ordering::SeqCst);
    let action = reconcile::reconcile(Arc::new(shop.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(15)));
    let all = calls(&recorded);
    assert!(
        all.iter()
            .any(|c| c.line() == "GET /api/v1/namespaces/demo/pods?labelSelector=app.kubernetes.io%2Finstance%3Dshop%2Capp.kubernetes.io%2Fname%3Duser"),
        "{:#?}",
        lines(&all)
    );
    let status = &status_write(&all).body["status"];
    assert!(
        !status.to_string().contains("ProgressDeadlineExceeded"),
        "{status:#}"
    );

    recorded.lock().unwrap().clear();
    clock.store(61, std::sync::atomic::Ordering::SeqCst);
    let with_status = with_status_of(&shop, status_write(&all));
    reconcile::reconcile(Arc::new(with_status), ctx)
        .await
        .unwrap();
    let all = calls(&recorded);
    let status = &status_write(&all).body["status"];
    let condition = |type_: &str| {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap()
            .clone()
    };
    assert_eq!(condition("Degraded")["status"], "True", "{status:#}");
    assert_eq!(condition("Degraded")["reason"], "ProgressDeadlineExceeded");
    assert_eq!(
        condition("Degraded")["message"],
        "user: pod shop-user-0 of revision shop-user-new not Ready for 60s (progressDeadlineSeconds)"
    );
    assert_eq!(condition("Progressing")["status"], "False");
    assert!(
        !all.iter().any(|c| c.method == "DELETE"),
        "a pod of the revision being rolled out is the StatefulSet's to replace"
    );
}

/// Issue 28 M4, forced rollback: after a revert the StatefulSet waits for its broken pod (of the
/// abandoned revision) to turn Ready, for ever; the operator deletes that pod, on its uid.
#[tokio::test]
async fn a_pod_of_an_abandoned_revision_is_deleted_so_a_revert_recovers() {
    let shop = app(json!({}));
    let children = build::children(&shop).unwrap();
    let mut caches = FakeCaches::listed();
    caches.store(&children);
    let set = rolling_stateful_set(&children, "shop-user-good");
    let set_uid = set.metadata.uid.clone().unwrap();
    caches
        .stateful_sets
        .apply_watcher_event(&watcher::Event::Apply(set.clone()));
    let (client, recorded) = mocked_client(api_with_pods(
        &shop,
        unready_pod(&set_uid, "shop-user-broken"),
        Some(set),
    ));
    let (ctx, clock) = support::clocked_context(client, caches.readers());
    // Not Ready for the default deadline (600 s) since its creation: not a pod still starting.
    clock.store(600, std::sync::atomic::Ordering::SeqCst);
    reconcile::reconcile(Arc::new(shop), ctx).await.unwrap();
    let all = calls(&recorded);
    let deletion = all
        .iter()
        .find(|c| c.method == "DELETE")
        .expect("the broken pod is deleted");
    assert_eq!(deletion.path, "/api/v1/namespaces/demo/pods/shop-user-0");
    assert_eq!(deletion.body["preconditions"]["uid"], "pod-uid-1");

    // A pod of another StatefulSet (an earlier app's, same labels) is left alone.
    let mut caches = FakeCaches::listed();
    caches.store(&children);
    caches
        .stateful_sets
        .apply_watcher_event(&watcher::Event::Apply(rolling_stateful_set(
            &children,
            "shop-user-good",
        )));
    let (client, recorded) = mocked_client(api_with_pods(
        &app(json!({})),
        unready_pod("someone-else", "shop-user-broken"),
        None,
    ));
    let ctx = context(client, caches.readers());
    reconcile::reconcile(Arc::new(app(json!({}))), ctx)
        .await
        .unwrap();
    assert!(!calls(&recorded).iter().any(|c| c.method == "DELETE"));
}

/// Issue 28 M7: turning `autoscaled` on makes the operator stop sending `spec.replicas`; as the
/// field's last owner, that reset it to 1. Before such an apply the live count is applied under a
/// field manager of its own (not forced: the autoscaler may own it already).
#[tokio::test]
async fn turning_autoscaling_on_hands_the_replica_count_over_before_dropping_it() {
    let before = pg_app(json!({"components": {"gateway": {"replicas": 3}}}));
    let mut caches = FakeCaches::listed();
    caches.store(&build::children(&before).unwrap());
    let after = pg_app(json!({"components": {"gateway": {
        "replicas": 3, "autoscaled": true, "env": [{"name": "X", "value": "1"}]}}}));
    let (client, recorded) = mocked_client(healthy_api(&after));
    let ctx = context(client, caches.readers());
    reconcile::reconcile(Arc::new(after), ctx).await.unwrap();
    let all = calls(&recorded);
    let gateway: Vec<&Call> = all
        .iter()
        .filter(|c| c.path == "/apis/apps/v1/namespaces/demo/deployments/shop-gateway")
        .collect();
    assert_eq!(
        gateway.iter().map(|c| c.line()).collect::<Vec<_>>(),
        [
            "PATCH /apis/apps/v1/namespaces/demo/deployments/shop-gateway?fieldManager=msa-operator-replicas-handover".to_owned(),
            format!("PATCH /apis/apps/v1/namespaces/demo/deployments/shop-gateway?{APPLY}"),
        ]
    );
    assert_eq!(gateway[0].body["spec"], json!({"replicas": 3}));
    assert!(gateway[1].body["spec"].get("replicas").is_none());
}

/// Issue 28 L2: a PodMonitor the app no longer asks for is deleted only when the app controls
/// it (and conditional on its uid); one of that name made by someone else is left alone.
#[tokio::test]
async fn only_the_apps_own_pod_monitor_is_deleted() {
    let mut shop = pg_app(json!({}));
    shop.status =
        Some(serde_json::from_value(json!({"monitoring": "PodMonitor shop created"})).unwrap());
    let app_uid = shop.metadata.uid.clone().unwrap();
    let path = "/apis/monitoring.coreos.com/v1/namespaces/demo/podmonitors/shop";
    for (owner, deleted) in [("someone-else", false), (app_uid.as_str(), true)] {
        let live = json!({
            "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor",
            "metadata": {"name": "shop", "namespace": "demo", "uid": "pm-uid",
                "ownerReferences": [{"apiVersion": "msa.dev/v1alpha1", "kind": "MicroserviceApp",
                    "name": "shop", "uid": owner, "controller": true}]},
        });
        let healthy = healthy_api(&shop);
        let (client, recorded) = mocked_client(Arc::new(move |call: &Call| {
            if call.method == "GET" && call.path == path {
                (StatusCode::OK, live.clone())
            } else {
                healthy(call)
            }
        }));
        let mut caches = FakeCaches::listed();
        caches.store(&build::children(&shop).unwrap());
        let ctx = context(client, caches.readers());
        *ctx.cluster.write().unwrap() =
            msa_operator::facts::Learned::known(msa_operator::build::ClusterFacts {
                pod_monitors: true,
                ..Default::default()
            });
        reconcile::reconcile(Arc::new(shop.clone()), ctx)
            .await
            .unwrap();
        let deletions: Vec<Call> = calls(&recorded)
            .into_iter()
            .filter(|c| c.method == "DELETE")
            .collect();
        assert_eq!(
            deletions.len(),
            usize::from(deleted),
            "owner {owner}: {deletions:?}"
        );
        if deleted {
            assert_eq!(deletions[0].path, path);
            assert_eq!(deletions[0].body["preconditions"]["uid"], "pm-uid");
        }
    }
}

/// Issue 28 M7, failing closed: when the count could not be handed over — an error, or a
/// conflict with the operator's own field manager (its cached count is stale) — the Deployment
/// is not applied without it (which would drop it to one replica); the reconcile fails and is
/// retried. A conflict with another manager (the autoscaler owns the count) lets the apply go on.
#[tokio::test]
async fn a_handover_that_fails_keeps_the_deployment_as_it_is() {
    let before = pg_app(json!({"components": {"gateway": {"replicas": 3}}}));
    let after = pg_app(json!({"components": {"gateway": {
        "replicas": 3, "autoscaled": true, "env": [{"name": "X", "value": "1"}]}}}));
    let gateway = "/apis/apps/v1/namespaces/demo/deployments/shop-gateway";
    let conflict = |manager: &str| {
        (
            StatusCode::CONFLICT,
            api_error(
                409,
                "Conflict",
                &format!(
                    "Apply failed with 1 conflict: conflict with \"{manager}\" using apps/v1: .spec.replicas"
                ),
            ),
        )
    };
    let cases = [
        (
            "a server error",
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                api_error(500, "InternalError", "etcd timeout"),
            ),
            false,
        ),
        (
            "the operator's own manager",
            conflict("msa-operator"),
            false,
        ),
        ("the autoscaler", conflict("kube-controller-manager"), true),
    ];
    for (what, answer, applied) in cases {
        let mut caches = FakeCaches::listed();
        caches.store(&build::children(&before).unwrap());
        let healthy = healthy_api(&after);
        let (client, recorded) = mocked_client(Arc::new(move |call: &Call| {
            if call.method == "PATCH"
                && call.path == gateway
                && call.query.contains("msa-operator-replicas-handover")
            {
                answer.clone()
            } else {
                healthy(call)
            }
        }));
        let ctx = context(client, caches.readers());
        let result = reconcile::reconcile(Arc::new(after.clone()), ctx).await;
        let main_apply = calls(&recorded)
            .iter()
            .any(|c| c.method == "PATCH" && c.path == gateway && c.query == APPLY);
        assert_eq!(main_apply, applied, "{what}");
        assert_eq!(result.is_ok(), applied, "{what}: {result:?}");
    }
}

/// An app whose spec the operator applied already (`status.observedGeneration` is its
/// generation), running a gateway rendered by an earlier operator (an extra env entry).
fn rerendered_app(name: &str, uid: &str, generation: i64) -> (MicroserviceApp, build::Children) {
    let mut before =
        pg_app(json!({"components": {"gateway": {"env": [{"name": "X", "value": "1"}]}}}));
    let mut now = pg_app(json!({}));
    for app in [&mut before, &mut now] {
        app.metadata.name = Some(name.to_owned());
        app.metadata.uid = Some(uid.to_owned());
        app.metadata.generation = Some(generation);
        app.status = Some(serde_json::from_value(json!({"observedGeneration": 1})).unwrap());
    }
    (now, build::children(&before).unwrap())
}

fn gateway_applies(recorded: &std::sync::Mutex<Vec<Call>>, app: &str) -> usize {
    let path = format!("/apis/apps/v1/namespaces/demo/deployments/{app}-gateway");
    calls(recorded)
        .iter()
        .filter(|c| c.method == "PATCH" && c.path == path)
        .count()
}

/// Issue 28 M5: when the operator itself renders running apps differently (a new version, a
/// changed cluster fact), only as many apps as there are rollout slots roll at once; the others
/// keep their pods, say why, and look again soon. A slot is freed when its app's rollout ends or
/// the app is deleted. A change of an app's own spec never waits.
#[tokio::test]
async fn the_operators_own_rollouts_are_paced_across_apps() {
    let (first, first_live) = rerendered_app("shop", "0a0a0a0a-0000-4000-8000-000000000001", 1);
    let (second, second_live) = rerendered_app("other", "0b0b0b0b-0000-4000-8000-000000000002", 1);
    let mut caches = FakeCaches::listed();
    caches.store(&first_live);
    caches.store(&second_live);
    let (client, recorded) = mocked_client(healthy_api(&first));
    let ctx = context(client, caches.readers());
    *ctx.rollout_slots.lock().unwrap() = msa_operator::pacing::RolloutSlots::new(1);

    reconcile::reconcile(Arc::new(first.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        gateway_applies(&recorded, "shop"),
        1,
        "the first app takes the slot"
    );
    let action = reconcile::reconcile(Arc::new(second.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        gateway_applies(&recorded, "other"),
        0,
        "no slot: its pods stay"
    );
    assert_eq!(action, Action::requeue(reconcile::SLOT_WAIT));
    let status = calls(&recorded)
        .into_iter()
        .rev()
        .find(|c| c.path.ends_with("/microserviceapps/other/status"))
        .expect("a status write")
        .body["status"]
        .clone();
    let progressing = &status["conditions"][1];
    assert_eq!(progressing["reason"], "WaitingForRolloutSlot", "{status:#}");
    assert!(
        progressing["message"]
            .as_str()
            .unwrap()
            .contains("1 apps at a time"),
        "{progressing}"
    );

    // A template someone edited by hand (the rendered pod spec's hash is unchanged) is
    // repaired at once: that is drift, not the operator's rollout.
    let (tampered, _) = rerendered_app("tampered", "0c0c0c0c-0000-4000-8000-000000000003", 1);
    for deployment in deployments(&build::children(&tampered).unwrap()) {
        let mut edited = as_stored(&deployment);
        let pod = edited
            .spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap();
        pod.containers[0].image = Some("someone/else:1".to_owned());
        caches
            .deployments
            .apply_watcher_event(&watcher::Event::Apply(edited));
    }
    reconcile::reconcile(Arc::new(tampered), ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        gateway_applies(&recorded, "tampered"),
        1,
        "drift is repaired without a slot"
    );

    // The person edits the second app: that rolls at once, slot or not.
    let (edited, _) = rerendered_app("other", "0b0b0b0b-0000-4000-8000-000000000002", 2);
    reconcile::reconcile(Arc::new(edited), ctx.clone())
        .await
        .unwrap();
    assert_eq!(gateway_applies(&recorded, "other"), 1);

    // The first app's rollout ends (its workloads run the new template, all updated and
    // ready): its slot is freed.
    for deployment in deployments(&build::children(&first).unwrap()) {
        let mut done = as_stored(&deployment);
        let replicas = done.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        done.status = Some(
            serde_json::from_value(json!({
                "observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                "readyReplicas": replicas, "availableReplicas": replicas,
            }))
            .unwrap(),
        );
        caches
            .deployments
            .apply_watcher_event(&watcher::Event::Apply(done));
    }
    reconcile::reconcile(Arc::new(first.clone()), ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        gateway_applies(&recorded, "shop"),
        1,
        "nothing more to apply"
    );
    assert!(
        !ctx.rollout_slots
            .lock()
            .unwrap()
            .holds(first.metadata.uid.as_deref().unwrap()),
        "the slot is freed once the rollout is over"
    );
    reconcile::reconcile(Arc::new(second), ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        gateway_applies(&recorded, "other"),
        2,
        "the second app's turn"
    );
}

/// Issue 32: a component's earlier `config` ConfigMaps are deleted once its workload runs only
/// the current revision. Until then the one the live template reads and the newest other one
/// stay (pods of an unfinished rollout may read it), and older ones go, so a rollout that never
/// ends does not keep a ConfigMap per edit. A ConfigMap not named as the operator names them is
/// never deleted, labels or not.
#[tokio::test]
async fn earlier_config_maps_go_once_no_pod_can_read_them() {
    let version = |n: &str| pg_app(json!({"components": {"gateway": {"config": {"A": n}}}}));
    let config_of = |n: &str, second: i64| {
        let mut config_map = build::children(&version(n)).unwrap().component_configs[0].clone();
        config_map.metadata.creation_timestamp = Some(support::fixed_time(second));
        support::as_stored(&config_map)
    };
    let name_of = |n: &str| config_of(n, 0).metadata.name.unwrap();
    let mut impostor = config_of("1", 0);
    impostor.metadata.name = Some("shop-issuer-keys".into());
    let seeded = |live: &str| {
        let mut caches = FakeCaches::listed();
        caches.store(&build::children(&version(live)).unwrap());
        for (n, second) in [("1", 1), ("2", 2), ("3", 3)] {
            caches
                .config_maps
                .apply_watcher_event(&watcher::Event::Apply(config_of(n, second)));
        }
        caches
            .config_maps
            .apply_watcher_event(&watcher::Event::Apply(impostor.clone()));
        caches
    };
    let deleted = |recorded: &std::sync::Mutex<Vec<Call>>| -> Vec<String> {
        calls(recorded)
            .iter()
            .filter(|c| c.method == "DELETE")
            .map(|c| c.path.rsplit('/').next().unwrap().to_owned())
            .collect()
    };

    // Mid-rollout: the gateway runs A=3 and is applied with A=4 (no status yet): A=3 is read by
    // the live template, A=2 is the newest other, A=1 goes.
    let current = version("4");
    let (client, recorded) = mocked_client(healthy_api(&current));
    let ctx = context(client, seeded("3").readers());
    reconcile::reconcile(Arc::new(current.clone()), ctx)
        .await
        .unwrap();
    assert_eq!(deleted(&recorded), [name_of("1")]);

    // Rolled out, no pod of an older revision left: every earlier one goes, the current stays.
    let mut caches = seeded("4");
    let mut gateway = deployments(&build::children(&current).unwrap())
        .into_iter()
        .find(|d| d.metadata.name.as_deref() == Some("shop-gateway"))
        .unwrap();
    gateway = support::as_stored(&gateway);
    gateway.status = Some(
        serde_json::from_value(json!({
            "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1,
            "readyReplicas": 1, "availableReplicas": 1,
        }))
        .unwrap(),
    );
    caches
        .deployments
        .apply_watcher_event(&watcher::Event::Apply(gateway.clone()));
    let (client, recorded) = mocked_client(healthy_api(&current));
    let ctx = context(client, caches.readers());
    reconcile::reconcile(Arc::new(current.clone()), ctx)
        .await
        .unwrap();
    let mut gone = deleted(&recorded);
    gone.sort();
    let mut expected = [name_of("1"), name_of("2"), name_of("3")];
    expected.sort();
    assert_eq!(gone, expected);

    // An old pod still running (2 pods, 1 updated): the newest earlier one stays.
    gateway.status = Some(
        serde_json::from_value(json!({
            "observedGeneration": 1, "replicas": 2, "updatedReplicas": 1,
            "readyReplicas": 2, "availableReplicas": 2,
        }))
        .unwrap(),
    );
    let mut caches = seeded("4");
    caches
        .deployments
        .apply_watcher_event(&watcher::Event::Apply(gateway));
    let (client, recorded) = mocked_client(healthy_api(&current));
    let ctx = context(client, caches.readers());
    reconcile::reconcile(Arc::new(current), ctx).await.unwrap();
    let mut gone = deleted(&recorded);
    gone.sort();
    let mut expected = [name_of("1"), name_of("2")];
    expected.sort();
    assert_eq!(gone, expected);
}

/// Issue 32: an edit of a ConfigMap named in `configFrom` rolls its readers; deleting it rolls
/// nothing (the running pods keep what they started with).
#[tokio::test]
async fn a_referenced_config_map_rolls_its_readers_when_edited_and_nothing_when_deleted() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use msa_operator::build::config::SourceContent;
    use msa_operator::config_sources::{condense_config_map, condensed_hash};
    let shop =
        pg_app(json!({"components": {"gateway": {"configFrom": [{"configMap": "settings"}]}}}));
    let settings = |origin: &str| {
        let mut config_map: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "settings", "namespace": "demo"},
            "data": {"MSA_CORS_ORIGINS": origin},
        }))
        .unwrap();
        condense_config_map(&mut config_map);
        config_map
    };
    let first = settings("https://a.example");
    let facts = build::ClusterFacts {
        config_sources: [(
            shop.spec.components.gateway.component.config_from[0].clone(),
            SourceContent::Hash(condensed_hash(&first).unwrap()),
        )]
        .into(),
        ..build::ClusterFacts::default()
    };
    let gateway_writes = |caches: &FakeCaches| {
        let (client, recorded) = mocked_client(healthy_api(&shop));
        let ctx = context(client, caches.readers());
        let shop = shop.clone();
        async move {
            reconcile::reconcile(Arc::new(shop), ctx).await.unwrap();
            lines(&calls(&recorded))
                .into_iter()
                .filter(|l| l.contains("/deployments/shop-gateway"))
                .count()
        }
    };
    let mut caches = FakeCaches::listed();
    caches.store(&build::children_in(&shop, &facts).unwrap());
    caches
        .config_sources
        .apply_watcher_event(&watcher::Event::Apply(first.clone()));
    assert_eq!(
        gateway_writes(&caches).await,
        0,
        "as rendered: nothing to do"
    );

    caches
        .config_sources
        .apply_watcher_event(&watcher::Event::Delete(first));
    assert_eq!(gateway_writes(&caches).await, 0, "deleted: the pods stay");

    caches
        .config_sources
        .apply_watcher_event(&watcher::Event::Apply(settings("https://b.example")));
    assert_eq!(
        gateway_writes(&caches).await,
        1,
        "edited: the gateway rolls"
    );
}
