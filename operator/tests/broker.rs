//! The event broker (`spec.events`): what is rendered for the broker the operator runs, what the
//! services get to publish, and what the reconciler sends the API server for it.

mod support;

use std::sync::Arc;

use http::StatusCode;
use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
use msa_operator::build::{self, Children, ClusterFacts, Workload, broker};
use msa_operator::component::Component;
use msa_operator::reconcile;
use msa_operator::validate;
use serde_json::{Value, json};
use support::{Call, FakeCaches, api_error, app, context, healthy_api, mocked_client, pg_app};

const ADDRESS: &str = "198.19.7.7";
/// The fixture app's credentials Secret: its name carries the first 8 of the app's uid.
const SECRET: &str = "shop-events-credentials-1b2c3d4e";

fn with_address() -> ClusterFacts {
    ClusterFacts {
        broker_address: Some(ADDRESS.to_owned()),
        ..ClusterFacts::default()
    }
}

fn pod_of(children: &Children, component: Component) -> PodSpec {
    let template =
        match &children.workloads[Component::ALL.iter().position(|c| *c == component).unwrap()] {
            Workload::Deployment(d) => d.spec.as_ref().unwrap().template.clone(),
            Workload::StatefulSet(s) => s.spec.as_ref().unwrap().template.clone(),
        };
    template.spec.unwrap()
}

fn env(container: &Container, name: &str) -> Option<EnvVar> {
    container
        .env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)
        .cloned()
}

fn value(container: &Container, name: &str) -> Option<String> {
    env(container, name).and_then(|e| e.value)
}

#[test]
fn by_default_the_operator_runs_one_server_with_its_stream_keeper() {
    let shop = app(json!({"events": {}}));
    let children = build::children_in(&shop, &with_address()).unwrap();
    let managed = children.broker.clone().expect("a broker by default");
    assert_eq!(
        children.count(),
        build::children(&pg_app(json!({}))).unwrap().count() + 4 + 1
    );

    let set = managed.stateful_set.spec.as_ref().unwrap();
    assert_eq!(
        managed.stateful_set.metadata.name.as_deref(),
        Some("shop-events")
    );
    assert_eq!(set.replicas, Some(1));
    assert_eq!(set.service_name.as_deref(), Some("shop-events-pods"));
    let claim = &set.volume_claim_templates.as_ref().unwrap()[0];
    assert_eq!(
        claim
            .spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0,
        "1Gi"
    );
    let pod = set.template.spec.as_ref().unwrap();
    let [server, keeper] = pod.containers.as_slice() else {
        panic!("two containers: {:?}", pod.containers)
    };
    assert_eq!(
        server.image.as_deref(),
        Some("ghcr.io/msa-dev/msa-nats:0.2.0")
    );
    assert_eq!(
        keeper.image.as_deref(),
        Some("ghcr.io/msa-dev/msa-streams:0.2.0")
    );
    assert_eq!(pod.automount_service_account_token, Some(false));
    // Every login's password reaches the server as the variable its configuration names.
    for login in ["user", "order", "product", "observer", "admin"] {
        let var = env(
            server,
            &format!("MSA_NATS_PASSWORD_{}", login.to_uppercase()),
        )
        .unwrap();
        let selector = var.value_from.unwrap().secret_key_ref.unwrap();
        assert_eq!(
            (selector.name.as_str(), selector.key.as_str()),
            (SECRET, login)
        );
    }
    // The keeper is the admin, on the pod's loopback, with the streams' limits; its readiness
    // is the pod's.
    assert_eq!(
        value(keeper, "MSA_NATS_URL").as_deref(),
        Some("nats://127.0.0.1:4222")
    );
    assert_eq!(
        value(keeper, "MSA_NATS_USER").as_deref(),
        Some("shop-admin")
    );
    assert_eq!(
        value(keeper, "MSA_EVENTS_MAX_BYTES").as_deref(),
        Some("268435456")
    );
    assert_eq!(
        value(keeper, "MSA_EVENTS_MAX_AGE_HOURS").as_deref(),
        Some("168")
    );
    assert!(keeper.readiness_probe.is_some());
    let admin_volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "events-credentials")
        .unwrap();
    let items = admin_volume
        .secret
        .as_ref()
        .unwrap()
        .items
        .as_ref()
        .unwrap();
    assert_eq!(
        items[0].key, "admin",
        "the admin's password is in the broker's pod only"
    );

    let config = &managed.config.data.as_ref().unwrap()["nats.conf"];
    assert!(config.contains("sync_interval: always"), "{config}");
    assert!(
        !config.contains("cluster {"),
        "one server: no routes\n{config}"
    );
    assert!(
        config.contains("password: $MSA_NATS_PASSWORD_ORDER"),
        "{config}"
    );
    // Only the user service's login may publish the user service's events.
    let user_subjects: Vec<&str> = config
        .lines()
        .filter(|line| line.contains("\"msa.shop.user.>\""))
        .collect();
    assert_eq!(user_subjects.len(), 1, "{config}");
    assert!(user_subjects[0].contains("user: \"shop-user\""));
    // A new configuration rolls the server (it reads it only at start).
    let bigger = app(json!({"events": {"retention": {"maxMegabytes": 2048}}}));
    let other = build::children_in(&bigger, &with_address())
        .unwrap()
        .broker
        .unwrap();
    let hash = |b: &broker::ManagedBroker| {
        b.stateful_set
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["msa.dev/config-hash"]
            .clone()
    };
    assert_ne!(hash(&managed), hash(&other));

    assert_eq!(managed.budget, None, "one server: no budget");
    let server_args = managed
        .stateful_set
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap();
    assert_eq!(
        server_args,
        ["--config", "/etc/nats/nats.conf"],
        "one server: no routes"
    );
    assert!(
        config.contains("max_file_store: 966367641"),
        "nine tenths of 1Gi\n{config}"
    );
    let client_ports = managed
        .service
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap();
    assert_eq!(client_ports.len(), 1, "monitoring is not on the Service");
    // The policy is the servers' only wall around their routes: rendered even when the app's
    // other policies are off.
    let open = app(json!({"events": {}, "networkPolicy": {"enabled": false}}));
    let children = build::children_in(&open, &with_address()).unwrap();
    assert!(children.network_policies.is_empty());
    assert!(children.broker.unwrap().network_policy.is_some());
    let policy = managed.network_policy.unwrap();
    let rules = policy.spec.unwrap().ingress.unwrap();
    let clients = serde_json::to_value(&rules[0]).unwrap();
    assert_eq!(clients["ports"][0]["port"], 4222);
    assert_eq!(
        clients["from"][0]["podSelector"]["matchExpressions"][0]["values"],
        json!(["user", "order", "product"]),
        "clients: the app's services, not the gateway"
    );
    assert_eq!(
        serde_json::to_value(&rules[1]).unwrap()["ports"][0]["port"],
        6222
    );
    assert_eq!(rules.len(), 2, "no monitoring namespace: no third rule");
}

#[test]
fn each_service_publishes_with_its_own_login_once_the_broker_has_an_address() {
    let shop = app(json!({"events": {}}));
    let children = build::children_in(&shop, &with_address()).unwrap();
    for component in [Component::User, Component::Order, Component::Product] {
        let pod = pod_of(&children, component);
        let container = &pod.containers[0];
        assert_eq!(
            value(container, "MSA_NATS_URL").as_deref(),
            Some("nats://198.19.7.7:4222")
        );
        assert_eq!(
            value(container, "MSA_NATS_USER"),
            Some(format!("shop-{component}"))
        );
        assert_eq!(
            value(container, "MSA_NATS_PASSWORD_FILE").as_deref(),
            Some("/etc/msa/events/password")
        );
        assert_eq!(
            value(container, "MSA_EVENTS_REPLICAS").as_deref(),
            Some("1")
        );
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "events-credentials")
            .unwrap();
        let secret = volume.secret.unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some(SECRET));
        assert_eq!(
            secret.items.unwrap()[0].key,
            component.name(),
            "its own password only"
        );
    }
    let gateway = pod_of(&children, Component::Gateway);
    assert_eq!(value(&gateway.containers[0], "MSA_NATS_URL"), None);

    // Before the Service has an address the services run without publishing (their events
    // wait in the outbox); the reconciler applies the Service first so this is brief.
    let unknown = build::children(&shop).unwrap();
    let user = pod_of(&unknown, Component::User);
    assert_eq!(value(&user.containers[0], "MSA_NATS_URL"), None);
    assert!(
        user.volumes
            .unwrap()
            .iter()
            .all(|v| v.name != "events-credentials")
    );
}

#[test]
fn three_servers_form_a_cluster_with_a_budget() {
    let shop = app(json!({"events": {"replicas": 3}}));
    let managed = build::children_in(&shop, &with_address())
        .unwrap()
        .broker
        .unwrap();
    let set = managed.stateful_set.spec.unwrap();
    assert_eq!(set.replicas, Some(3));
    assert_eq!(set.pod_management_policy.as_deref(), Some("Parallel"));
    let config = &managed.config.data.unwrap()["nats.conf"];
    assert!(
        config.contains("authorization { user: \"route\", password: $MSA_NATS_PASSWORD_ROUTE }"),
        "servers join only with the route login\n{config}"
    );
    assert!(config.contains("no_advertise: true"), "{config}");
    let server = &set.template.spec.as_ref().unwrap().containers[0];
    let args = server.args.as_ref().unwrap();
    assert_eq!(args[2], "--routes");
    for n in 0..3 {
        assert!(
            args[3].contains(&format!(
                "nats://route:$(MSA_NATS_PASSWORD_ROUTE)@shop-events-{n}.shop-events-pods.demo.svc:6222"
            )),
            "{args:?}"
        );
    }
    let route = env(server, "MSA_NATS_PASSWORD_ROUTE").unwrap();
    assert_eq!(
        route.value_from.unwrap().secret_key_ref.unwrap().key,
        "route"
    );
    let budget = managed.budget.unwrap().spec.unwrap();
    assert_eq!(
        budget.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
}

#[test]
fn an_external_broker_runs_nothing_and_off_renders_nothing() {
    let shop = app(json!({"events": {"external": {
        "url": "nats://nats.infra:4222",
        "credentialsSecretRef": {"name": "shop-nats"}
    }}}));
    let children = build::children(&shop).unwrap();
    assert_eq!(children.broker, None);
    let order = pod_of(&children, Component::Order);
    assert_eq!(
        value(&order.containers[0], "MSA_NATS_URL").as_deref(),
        Some("nats://nats.infra:4222")
    );
    let volume = order
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "events-credentials")
        .unwrap();
    assert_eq!(
        volume.secret.unwrap().secret_name.as_deref(),
        Some("shop-nats")
    );

    let off = app(json!({"events": {"enabled": false}}));
    let children = build::children_in(&off, &with_address()).unwrap();
    assert_eq!(children.broker, None);
    assert_eq!(
        value(
            &pod_of(&children, Component::User).containers[0],
            "MSA_NATS_URL"
        ),
        None
    );
}

#[test]
fn the_credentials_are_fresh_per_login_and_go_with_the_app() {
    let shop = app(json!({"events": {}}));
    let secret = broker::credentials_secret(&shop, msa_events::broker::password).unwrap();
    assert_eq!(secret.metadata.name.as_deref(), Some(SECRET));
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "MicroserviceApp");
    let data = secret.data.unwrap();
    let passwords: std::collections::BTreeSet<&Vec<u8>> = data.values().map(|b| &b.0).collect();
    assert_eq!(data.len(), 6, "five logins and the servers' routes");
    assert_eq!(passwords.len(), 6, "no two logins share a password");
    assert!(passwords.iter().all(|p| p.len() == 32));
}

#[test]
fn what_the_schema_refuses_is_refused_again_before_anything_is_applied() {
    let problems = |spec: Value, name: &str| {
        let mut shop = app(spec);
        shop.metadata.name = Some(name.to_owned());
        validate::problems(&shop)
            .into_iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        problems(json!({"events": {"replicas": 2}}), "shop")[0]
            .starts_with("spec.events.replicas: must be 1 or 3")
    );
    for url in [
        "http://nats:4222",
        "nats://u:p@nats:4222",
        "nats://nats",
        "nats://nats:4222/x",
    ] {
        let found = problems(
            json!({"events": {"external": {"url": url, "credentialsSecretRef": {"name": "s"}}}}),
            "shop",
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("spec.events.external.url")),
            "{url}: {found:?}"
        );
    }
    // The broker's StatefulSet name leaves room for 45 characters (with spec.database).
    let long = "a".repeat(46);
    let database = json!({"secretRef": {"name": "db"}});
    assert!(
        problems(json!({"events": {}, "database": database}), &long)[0].contains("event broker")
    );
    assert!(
        problems(
            json!({"events": {"enabled": false}, "database": database}),
            &long
        )
        .is_empty()
    );
    assert!(problems(json!({"events": {}, "database": database}), &"a".repeat(45)).is_empty());
    // The streams must fit in what JetStream may use of the volume.
    let found = problems(
        json!({"events": {"retention": {"maxMegabytes": 400}}}),
        "shop",
    );
    assert!(found[0].starts_with("spec.events.retention.maxMegabytes: 3 streams of 400 MiB need 1200 MiB, more than the 921 MiB"), "{found:?}");
    assert!(
        problems(
            json!({"events": {"retention": {"maxMegabytes": 400}, "storage": {"size": "2Gi"}}}),
            "shop"
        )
        .is_empty()
    );
    assert!(problems(json!({"events": {"external": {"url": "nats://nats:0", "credentialsSecretRef": {"name": "s"}}}}), "shop")[0].starts_with("spec.events.external.url"));
    assert!(
        problems(json!({}), "shop.user")[0].starts_with("metadata.name: must be lowercase letters")
    );
}

/// A mocked API server that gives the broker's Service an address, as the API server does.
fn api_with_cluster_ips(app: &msa_operator::crd::MicroserviceApp) -> support::Responder {
    let healthy = healthy_api(app);
    Arc::new(move |call: &Call| {
        let (status, mut body) = healthy(call);
        if call.method == "PATCH" && call.path.ends_with("/services/shop-events") {
            body["spec"]["clusterIP"] = json!(ADDRESS);
        }
        (status, body)
    })
}

#[tokio::test]
async fn the_first_reconcile_makes_the_credentials_and_the_address_before_the_services() {
    let shop = pg_app(json!({"events": {}}));
    let (client, recorded) = mocked_client(api_with_cluster_ips(&shop));
    let caches = FakeCaches::listed();
    let ctx = context(client, caches.readers());
    reconcile::reconcile(Arc::new(shop.clone()), ctx.clone())
        .await
        .unwrap();
    let writes: Vec<Call> = recorded
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.is_write())
        .cloned()
        .collect();
    let lines: Vec<String> = writes.iter().map(Call::line).collect();
    let position = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} not in {lines:#?}"))
    };
    assert!(
        lines[0].starts_with("POST /api/v1/namespaces/demo/secrets"),
        "{lines:#?}"
    );
    assert_eq!(writes[0].body["metadata"]["name"], SECRET);
    assert!(position("/services/shop-events?") < position("/deployments/shop-user?"));
    for object in [
        "/configmaps/shop-events?",
        "/services/shop-events-pods?",
        "/statefulsets/shop-events?",
        "/networkpolicies/shop-events?",
    ] {
        assert!(
            position(object) < position("/deployments/shop-user?"),
            "{object}"
        );
    }
    let user = &writes[position("/deployments/shop-user?")].body;
    let env = user["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    assert!(
        env.contains(&json!({"name": "MSA_NATS_URL", "value": "nats://198.19.7.7:4222"})),
        "the services start with the broker's address: {env:#?}"
    );
    let status = &writes.last().unwrap().body["status"];
    let events = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "EventsReady")
        .unwrap();
    assert_eq!(events["status"], "False");
    assert_eq!(events["reason"], "BrokerNotReady");

    // Another process (a restart, a failover) before the broker's StatefulSet was made (none in
    // its cache) does not know the Secret was made: one create, answered "already exists", and
    // nothing is sent again after that.
    let (client, recorded) = mocked_client(Arc::new(|call: &Call| {
        if call.method == "POST" && call.path.ends_with("/secrets") {
            (
                StatusCode::CONFLICT,
                api_error(
                    409,
                    "AlreadyExists",
                    "secrets \"shop-events-credentials\" already exists",
                ),
            )
        } else {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                api_error(500, "InternalError", "unexpected"),
            )
        }
    }));
    let ctx = context(client, caches.readers());
    let failed = reconcile::reconcile(Arc::new(shop.clone()), ctx.clone()).await;
    assert!(failed.is_err(), "everything else is refused by this mock");
    let first = recorded.lock().unwrap()[0].line();
    assert!(
        first.starts_with("POST /api/v1/namespaces/demo/secrets"),
        "{first}"
    );
    recorded.lock().unwrap().clear();
    let _ = reconcile::reconcile(Arc::new(shop), ctx).await;
    assert!(
        recorded
            .lock()
            .unwrap()
            .iter()
            .all(|c| !c.path.ends_with("/secrets")),
        "known to exist: not created again"
    );
}

#[tokio::test]
async fn a_converged_app_with_a_broker_costs_no_call_and_turning_events_off_stops_the_broker() {
    let shop = pg_app(json!({"events": {}}));
    let children = build::children_in(&shop, &with_address()).unwrap();
    let mut caches = FakeCaches::listed();
    caches.store(&children);
    // The broker's Service as stored has its address.
    let mut service = serde_json::to_value(support::as_stored(
        &children.broker.as_ref().unwrap().service,
    ))
    .unwrap();
    service["spec"]["clusterIP"] = json!(ADDRESS);
    caches
        .services
        .apply_watcher_event(&kube::runtime::watcher::Event::Apply(
            serde_json::from_value(service).unwrap(),
        ));
    let (client, recorded) = mocked_client(api_with_cluster_ips(&shop));
    let ctx = context(client, caches.readers());
    // A new process (a restart, a failover) does not know the Secret was made; the broker's
    // StatefulSet in its cache, made after the Secret, is the proof: nothing is created.
    reconcile::reconcile(Arc::new(shop.clone()), ctx.clone())
        .await
        .unwrap();
    let writes: Vec<String> = recorded
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.is_write() && !c.path.ends_with("/status") && !c.path.contains("/events"))
        .map(Call::line)
        .collect();
    assert_eq!(
        writes,
        Vec::<String>::new(),
        "nothing of the broker rewritten"
    );

    recorded.lock().unwrap().clear();
    let mut off = shop.clone();
    off.spec.events.enabled = false;
    reconcile::reconcile(Arc::new(off), ctx).await.unwrap();
    let deleted: Vec<String> = recorded
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.method == "DELETE")
        .map(|c| c.path.clone())
        .collect();
    assert!(
        deleted
            .iter()
            .any(|p| p.ends_with("/statefulsets/shop-events")),
        "{deleted:?}"
    );
    assert!(
        deleted
            .iter()
            .any(|p| p.ends_with("/networkpolicies/shop-events")),
        "{deleted:?}"
    );
    let user = recorded
        .lock()
        .unwrap()
        .iter()
        .find(|c| c.method == "PATCH" && c.path.ends_with("/deployments/shop-user"))
        .cloned()
        .expect("the services are rolled without the broker");
    assert!(!user.body.to_string().contains("MSA_NATS_URL"));
}
