//! The pure builders: what is sent to the API server, pinned by snapshots, and the properties
//! that matter stated as assertions.

mod support;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use msa_operator::build::{self, Workload};
use msa_operator::component::Component;
use serde_json::json;
use support::{app, pg_app};

fn workload(children: &build::Children, component: Component) -> &Workload {
    let index = Component::ALL.iter().position(|c| *c == component).unwrap();
    &children.workloads[index]
}

fn deployment(children: &build::Children, component: Component) -> &Deployment {
    match workload(children, component) {
        Workload::Deployment(d) => d,
        Workload::StatefulSet(_) => panic!("{component} is a StatefulSet, not a Deployment"),
    }
}

fn stateful_set(children: &build::Children, component: Component) -> &StatefulSet {
    match workload(children, component) {
        Workload::StatefulSet(s) => s,
        Workload::Deployment(_) => panic!("{component} is a Deployment, not a StatefulSet"),
    }
}

/// The pod template of a component, whatever its workload kind.
fn template(children: &build::Children, component: Component) -> &PodTemplateSpec {
    match workload(children, component) {
        Workload::Deployment(d) => &d.spec.as_ref().unwrap().template,
        Workload::StatefulSet(s) => &s.spec.as_ref().unwrap().template,
    }
}

fn pod_of(t: &PodTemplateSpec) -> &PodSpec {
    t.spec.as_ref().unwrap()
}

fn container_of(t: &PodTemplateSpec) -> &Container {
    &pod_of(t).containers[0]
}

/// Whether the pod has a volume of its own named `data` (the embedded database's volume comes
/// from the StatefulSet's claim template, never from the pod).
fn has_data_volume(pod: &PodSpec) -> bool {
    let volumes = pod.volumes.as_ref().expect("every pod has its /tmp volume");
    volumes.iter().any(|v| v.name == "data")
}

fn env_value(t: &PodTemplateSpec, name: &str) -> Option<serde_json::Value> {
    let container = &t.spec.as_ref()?.containers[0];
    let var = container.env.as_ref()?.iter().find(|e| e.name == name)?;
    Some(serde_json::to_value(var).unwrap())
}

#[test]
fn default_app_renders_the_snapshotted_objects() {
    let children = build::children(&app(json!({}))).unwrap();
    assert_eq!(
        children.count(),
        17,
        "one replica each: no PodDisruptionBudget"
    );
    insta::assert_json_snapshot!(
        "statefulset_order",
        stateful_set(&children, Component::Order)
    );
    insta::assert_json_snapshot!(
        "deployment_gateway",
        deployment(&children, Component::Gateway)
    );
    insta::assert_json_snapshot!("service_gateway", children.services[3]);
    insta::assert_json_snapshot!("service_user", children.services[0]);
    insta::assert_json_snapshot!("service_account", children.service_account);
    insta::assert_json_snapshot!("role", children.role);
    insta::assert_json_snapshot!("role_binding", children.role_binding);
    insta::assert_json_snapshot!("network_policy_user", children.network_policies[0]);
}

#[test]
fn every_child_has_the_recommended_labels_and_a_controller_owner_reference() {
    let children = build::children(&app(json!({}))).unwrap();
    let metas = children
        .workloads
        .iter()
        .map(|w| match w {
            Workload::Deployment(d) => &d.metadata,
            Workload::StatefulSet(s) => &s.metadata,
        })
        .chain(children.services.iter().map(|s| &s.metadata))
        .chain(children.network_policies.iter().map(|p| &p.metadata))
        .chain([
            &children.service_account.metadata,
            &children.role.metadata,
            &children.role_binding.metadata,
        ]);
    for meta in metas {
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/instance"], "shop");
        assert_eq!(labels["app.kubernetes.io/part-of"], "shop");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "msa-operator");
        assert!(labels.contains_key("app.kubernetes.io/component"));
        let owners = meta.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "MicroserviceApp");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("demo"));
        assert!(
            meta.annotations
                .as_ref()
                .unwrap()
                .contains_key("msa.dev/rendered-hash")
        );
    }
}

#[test]
fn pods_are_locked_down_and_only_discovering_components_get_a_token() {
    let children = build::children(&app(json!({}))).unwrap();
    for component in Component::ALL {
        let pod = pod_of(template(&children, component));
        let container = &pod.containers[0];
        let sc = container.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        assert_eq!(
            pod.automount_service_account_token,
            Some(component.needs_discovery())
        );
        // The order and product services have their own accounts: their tokens prove to each
        // other who is calling.
        let account = match component {
            Component::Order => Some("shop-order"),
            Component::Product => Some("shop-product"),
            _ => component.needs_discovery().then_some("shop-discovery"),
        };
        assert_eq!(pod.service_account_name.as_deref(), account);
        let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
            p.as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .clone()
                .unwrap()
        };
        assert_eq!(probe_path(&container.liveness_probe), "/healthz");
        assert_eq!(probe_path(&container.readiness_probe), "/readyz");
        // Probes, /metrics and /info are on the admin port, which no Service exposes.
        let probe = container.readiness_probe.as_ref().unwrap();
        assert_eq!(
            probe.http_get.as_ref().unwrap().port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("admin".into())
        );
        let ports = container.ports.as_ref().unwrap();
        assert_eq!(
            (ports[1].name.as_deref(), ports[1].container_port),
            (Some("admin"), 9090)
        );
        assert_eq!(
            env_value(template(&children, component), "MSA_ADMIN_LISTEN").unwrap()["value"],
            "0.0.0.0:9090"
        );
    }
    for service in &children.services {
        let ports = service.spec.as_ref().unwrap().ports.as_ref().unwrap();
        assert!(
            ports.iter().all(|p| p.port != 9090),
            "no Service exposes the admin port"
        );
    }
    assert!(Component::Order.needs_discovery() && Component::Gateway.needs_discovery());
    let rules = children.role.rules.unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].resources.as_deref(),
        Some(&["endpointslices".to_owned()][..])
    );
    assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
}

#[test]
fn image_pattern_and_per_component_override() {
    let children = build::children(&app(json!({
        "image": "registry.test/shop-{component}:1.2.3",
        "components": {"gateway": {"image": "registry.test/edge:9"}}
    })))
    .unwrap();
    let image = |c| container_of(template(&children, c)).image.clone().unwrap();
    assert_eq!(image(Component::User), "registry.test/shop-user:1.2.3");
    assert_eq!(
        image(Component::Product),
        "registry.test/shop-product:1.2.3"
    );
    assert_eq!(image(Component::Gateway), "registry.test/edge:9");
}

#[test]
fn autoscaled_components_leave_replicas_to_the_autoscaler() {
    let children = build::children(&pg_app(json!({
        "components": {"gateway": {"replicas": 3, "autoscaled": true}, "user": {"replicas": 1}}
    })))
    .unwrap();
    assert_eq!(
        deployment(&children, Component::Gateway)
            .spec
            .as_ref()
            .unwrap()
            .replicas,
        None
    );
    assert_eq!(
        deployment(&children, Component::User)
            .spec
            .as_ref()
            .unwrap()
            .replicas,
        Some(1)
    );
    let json = serde_json::to_value(deployment(&children, Component::Gateway)).unwrap();
    assert!(
        json["spec"].get("replicas").is_none(),
        "replicas must be absent, not null"
    );
}

#[test]
fn no_empty_atomic_fields_are_sent() {
    let children = build::children(&app(json!({}))).unwrap();
    let json = serde_json::to_string(
        &children
            .workloads
            .iter()
            .map(|w| match w {
                Workload::Deployment(d) => serde_json::to_value(d).unwrap(),
                Workload::StatefulSet(s) => serde_json::to_value(s).unwrap(),
            })
            .collect::<Vec<_>>(),
    )
    .unwrap()
        + &serde_json::to_string(&children.services).unwrap();
    for empty in ["\"selector\":{}", "\"resources\":{}", ":null", "\"status\""] {
        assert!(!json.contains(empty), "rendered objects contain {empty}");
    }
}

#[test]
fn database_secret_keys_become_database_urls_and_sqlite_is_the_default() {
    let embedded = build::children(&app(json!({}))).unwrap();
    assert_eq!(
        env_value(template(&embedded, Component::User), "DATABASE_URL"),
        Some(json!({"name": "DATABASE_URL", "value": "sqlite:///data/user.db"}))
    );
    assert_eq!(
        env_value(template(&embedded, Component::Gateway), "DATABASE_URL"),
        None
    );

    let external = build::children(&app(json!({
        "database": {"secretRef": {"name": "shop-db"}, "keys": {"order": "orders-url"}}
    })))
    .unwrap();
    assert_eq!(
        env_value(template(&external, Component::Order), "DATABASE_URL"),
        Some(
            json!({"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "shop-db", "key": "orders-url", "optional": false}}})
        )
    );
    assert_eq!(
        env_value(template(&external, Component::Product), "DATABASE_URL").unwrap()["valueFrom"]["secretKeyRef"]
            ["key"],
        "product"
    );
    // No SQLite volume when an external database is used.
    let pod = pod_of(template(&external, Component::User));
    assert!(!has_data_volume(pod));
}

#[test]
fn gateway_policy_reaches_the_gateway_as_environment() {
    let children = build::children(&app(json!({"components": {"gateway": {
        "loadBalancing": {"strategy": "LeastRequest"},
        "circuitBreaker": {"failureRatePercent": 30},
        "timeouts": {"perTryMillis": 250, "requestMillis": 1000},
        "rateLimit": {"requestsPerSecond": 50},
        "service": {"type": "NodePort", "nodePort": 30080, "port": 8000}
    }}})))
    .unwrap();
    let gateway = template(&children, Component::Gateway);
    assert_eq!(
        env_value(gateway, "MSA_RATE_LIMIT_PER_SECOND").unwrap()["value"],
        "50"
    );
    assert_eq!(
        env_value(gateway, "MSA_RATE_LIMIT_BURST").unwrap()["value"],
        "50",
        "the burst defaults to the rate"
    );
    assert_eq!(
        env_value(gateway, "MSA_LB_STRATEGY").unwrap()["value"],
        "least-request"
    );
    assert_eq!(
        env_value(gateway, "MSA_BREAKER_FAILURE_RATE_PERCENT").unwrap()["value"],
        "30"
    );
    assert_eq!(
        env_value(gateway, "MSA_TIMEOUT_PER_TRY_MS").unwrap()["value"],
        "250"
    );
    assert_eq!(
        env_value(gateway, "MSA_UPSTREAM_ORDER").unwrap()["value"],
        "shop-order"
    );
    let service = serde_json::to_value(&children.services[3]).unwrap();
    assert_eq!(service["spec"]["type"], "NodePort");
    assert_eq!(service["spec"]["ports"][0]["nodePort"], 30080);
    assert_eq!(service["spec"]["ports"][0]["port"], 8000);
    assert_eq!(
        env_value(template(&children, Component::User), "MSA_LB_STRATEGY"),
        None
    );
}

/// Issue 17: `spec.tracing` reaches every component as the standard OpenTelemetry variables,
/// each under its own service name, after the pod name it refers to; without it none appear.
#[test]
fn tracing_reaches_every_component_as_otel_environment() {
    let children = build::children(&app(json!({"tracing": {
        "endpoint": "http://otel-collector.monitoring:4318",
        "samplingRatio": 0.1
    }})))
    .unwrap();
    for component in Component::ALL {
        let t = template(&children, component);
        assert_eq!(
            env_value(t, "OTEL_EXPORTER_OTLP_ENDPOINT").unwrap()["value"],
            "http://otel-collector.monitoring:4318"
        );
        assert_eq!(
            env_value(t, "OTEL_SERVICE_NAME").unwrap()["value"],
            format!("shop-{}", component.name())
        );
        assert_eq!(
            env_value(t, "OTEL_TRACES_SAMPLER_ARG").unwrap()["value"],
            "0.1"
        );
        let names: Vec<&str> = container_of(t)
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        let position = |name| names.iter().position(|n| *n == name).unwrap();
        assert!(position("MSA_POD_NAME") < position("OTEL_RESOURCE_ATTRIBUTES"));
    }
    let plain = build::children(&app(json!({}))).unwrap();
    assert_eq!(
        env_value(
            template(&plain, Component::Gateway),
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
        None
    );
}

/// Issue 16: the token settings arrive as the flags' environment of every component (each
/// verifies tokens itself), the keys as files of a read-only projected volume of the named
/// Secrets; only the gateway has public routes; without `auth` nothing of it appears.
#[test]
fn auth_reaches_every_component_as_environment_and_mounted_keys() {
    let children = build::children(&app(json!({"components": {"gateway": {"auth": {
        "issuer": "https://issuer.example",
        "audiences": ["shop", "admin"],
        "jwks": {"name": "shop-jwks", "key": "keys.json"},
        "publicRoutes": ["POST /users", "GET /products"]
    }}}})))
    .unwrap();
    let gateway = template(&children, Component::Gateway);
    for (name, expected) in [
        ("MSA_AUTH_ISSUER", "https://issuer.example"),
        ("MSA_AUTH_AUDIENCES", "shop,admin"),
        ("MSA_AUTH_PUBLIC_ROUTES", "POST /users,GET /products"),
        ("MSA_AUTH_CLOCK_SKEW_SECONDS", "30"),
        ("MSA_AUTH_JWKS_FILE", "/etc/msa/auth/jwks.json"),
    ] {
        assert_eq!(
            env_value(gateway, name).unwrap()["value"],
            expected,
            "{name}"
        );
    }
    assert_eq!(env_value(gateway, "MSA_AUTH_HMAC_SECRET_FILE"), None);
    let pod = serde_json::to_value(pod_of(gateway)).unwrap();
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "auth-keys")
        .expect("the keys' volume");
    assert_eq!(
        volume["projected"]["sources"][0]["secret"],
        json!({"name": "shop-jwks", "items": [{"key": "keys.json", "path": "jwks.json"}], "optional": false})
    );
    let mount = serde_json::to_value(&container_of(gateway).volume_mounts).unwrap();
    assert!(
        mount
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "auth-keys" && m["readOnly"] == true),
        "{mount}"
    );
    for component in [Component::User, Component::Order, Component::Product] {
        let workload = template(&children, component);
        assert_eq!(
            env_value(workload, "MSA_AUTH_JWKS_FILE").unwrap()["value"],
            "/etc/msa/auth/jwks.json",
            "{component:?}"
        );
        assert_eq!(
            env_value(workload, "MSA_AUTH_PUBLIC_ROUTES"),
            None,
            "{component:?}"
        );
        let pod = serde_json::to_value(pod_of(workload)).unwrap();
        assert!(pod.to_string().contains("auth-keys"), "{component:?}");
    }
    let open = build::children(&app(json!({}))).unwrap();
    assert_eq!(
        env_value(template(&open, Component::Gateway), "MSA_AUTH_ISSUER"),
        None
    );
}

#[test]
fn user_env_replaces_operator_env_of_the_same_name_and_extra_labels_apply() {
    let children = build::children(&app(json!({"components": {"user": {
        "env": [{"name": "MSA_LISTEN", "value": "0.0.0.0:9000"}, {"name": "RUST_LOG", "value": "debug"}],
        "labels": {"team": "accounts"},
        "annotations": {"example.com/owner": "accounts"}
    }}})))
    .unwrap();
    let user = template(&children, Component::User);
    let env = container_of(user).env.clone().unwrap();
    assert_eq!(env.iter().filter(|e| e.name == "MSA_LISTEN").count(), 1);
    assert_eq!(
        env_value(user, "MSA_LISTEN").unwrap()["value"],
        "0.0.0.0:9000"
    );
    assert_eq!(env_value(user, "RUST_LOG").unwrap()["value"], "debug");
    let user_set = stateful_set(&children, Component::User);
    assert_eq!(
        user_set.metadata.labels.as_ref().unwrap()["team"],
        "accounts"
    );
    let pod_meta = user.metadata.as_ref().unwrap();
    assert_eq!(pod_meta.labels.as_ref().unwrap()["team"], "accounts");
    assert_eq!(
        pod_meta.annotations.as_ref().unwrap()["example.com/owner"],
        "accounts"
    );
    // The selector never carries extra labels: it is immutable.
    assert_eq!(
        user_set
            .spec
            .as_ref()
            .unwrap()
            .selector
            .match_labels
            .as_ref()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn configuration_changes_change_the_pod_config_hash_and_nothing_else_does() {
    let hash = |spec| {
        let children = build::children(&app(spec)).unwrap();
        let t = template(&children, Component::Order).clone();
        t.metadata.unwrap().annotations.unwrap()["msa.dev/config-hash"].clone()
    };
    let base = hash(json!({}));
    assert_eq!(base, hash(json!({})), "rendering is deterministic");
    assert_ne!(
        base,
        hash(json!({"components": {"order": {"env": [{"name": "A", "value": "1"}]}}}))
    );
    assert_ne!(base, hash(json!({"image": "other/{component}:2"})));
    assert_eq!(
        base,
        hash(json!({"components": {"order": {"replicas": 0}}})),
        "scaling does not roll pods"
    );
}

#[test]
fn rollout_knobs_reach_the_deployment() {
    let children = build::children(&pg_app(json!({"components": {"product": {"rollout": {
        "maxSurge": 1, "maxUnavailable": 0, "minReadySeconds": 5, "progressDeadlineSeconds": 120
    }}}})))
    .unwrap();
    let spec = serde_json::to_value(
        deployment(&children, Component::Product)
            .spec
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        spec["strategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}})
    );
    assert_eq!(spec["minReadySeconds"], 5);
    assert_eq!(spec["progressDeadlineSeconds"], 120);
}

#[test]
fn gateway_url_is_the_in_cluster_service_address() {
    assert_eq!(
        build::gateway_url(&app(json!({}))).unwrap(),
        "http://shop-gateway.demo.svc"
    );
    let custom = app(json!({"components": {"gateway": {"service": {"port": 8080}}}}));
    assert_eq!(
        build::gateway_url(&custom).unwrap(),
        "http://shop-gateway.demo.svc:8080"
    );
}

#[test]
fn an_app_without_uid_cannot_be_rendered() {
    let mut unsaved = app(json!({}));
    unsaved.metadata.uid = None;
    assert_eq!(
        build::children(&unsaved),
        Err(build::BuildError::MissingMetadata("uid"))
    );
}

#[test]
fn embedded_databases_live_on_a_claim_of_a_one_pod_stateful_set() {
    let children = build::children(&app(json!({
        "storage": {"size": "2Gi", "storageClassName": "fast", "whenDeleted": "Delete"}
    })))
    .unwrap();
    for component in [Component::User, Component::Order, Component::Product] {
        let set = stateful_set(&children, component);
        let spec = serde_json::to_value(set.spec.as_ref().unwrap()).unwrap();
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["serviceName"], format!("shop-{component}"));
        // Stop the old pod before starting the new one: never two writers of one file.
        assert_eq!(spec["updateStrategy"]["type"], "RollingUpdate");
        assert_eq!(
            spec["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Delete", "whenScaled": "Retain"})
        );
        let claim = &spec["volumeClaimTemplates"][0];
        assert_eq!(claim["metadata"]["name"], "data");
        assert_eq!(
            claim["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "msa-operator"
        );
        assert_eq!(claim["spec"]["accessModes"], json!(["ReadWriteOnce"]));
        assert_eq!(claim["spec"]["storageClassName"], "fast");
        assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "2Gi");
        let pod = pod_of(template(&children, component));
        let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
        assert!(
            mounts
                .iter()
                .any(|m| m.name == "data" && m.mount_path == "/data")
        );
        // The data volume is the claim, not a pod volume that would vanish with the pod.
        assert!(!has_data_volume(pod));
        assert_eq!(
            build::claim_name("shop", component, 0),
            format!("data-shop-{component}-0")
        );
    }
    assert!(matches!(
        workload(&children, Component::Gateway),
        Workload::Deployment(_)
    ));
    // Defaults: 1Gi from the default class, kept when the app goes.
    let defaults = build::children(&app(json!({}))).unwrap();
    let spec = serde_json::to_value(
        stateful_set(&defaults, Component::User)
            .spec
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        spec["persistentVolumeClaimRetentionPolicy"]["whenDeleted"],
        "Retain"
    );
    assert_eq!(
        spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
        "1Gi"
    );
    assert!(
        spec["volumeClaimTemplates"][0]["spec"]
            .get("storageClassName")
            .is_none()
    );
}

#[test]
fn with_postgresql_every_component_is_a_deployment_without_volumes_of_data() {
    let children = build::children(&pg_app(json!({}))).unwrap();
    for component in Component::ALL {
        let pod = pod_of(template(&children, component));
        assert!(matches!(
            workload(&children, component),
            Workload::Deployment(_)
        ));
        assert!(!has_data_volume(pod));
    }
}

#[test]
fn replicated_components_get_a_disruption_budget_and_single_ones_none() {
    let children = build::children(&pg_app(json!({"components": {
        "order": {"replicas": 3}, "gateway": {"replicas": 2}, "user": {"autoscaled": true}
    }})))
    .unwrap();
    let budgeted: Vec<Component> = children.budgets.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        budgeted,
        [Component::User, Component::Order, Component::Gateway]
    );
    let (_, order) = &children.budgets[1];
    let spec = serde_json::to_value(order.spec.as_ref().unwrap()).unwrap();
    assert_eq!(spec["maxUnavailable"], 1);
    assert_eq!(spec["unhealthyPodEvictionPolicy"], "AlwaysAllow");
    assert_eq!(
        spec["selector"]["matchLabels"],
        json!({"app.kubernetes.io/instance": "shop", "app.kubernetes.io/name": "order"})
    );
    assert!(build::children(&app(json!({}))).unwrap().budgets.is_empty());
}

#[test]
fn shutdown_timing_reaches_the_process_and_the_grace_period_covers_it() {
    let children = build::children(&app(json!({"components": {"order": {
        "shutdown": {"drainDelaySeconds": 7, "graceSeconds": 40}
    }}})))
    .unwrap();
    let order = template(&children, Component::Order);
    assert_eq!(
        env_value(order, "MSA_DRAIN_DELAY_SECONDS").unwrap()["value"],
        "7"
    );
    assert_eq!(
        env_value(order, "MSA_SHUTDOWN_GRACE_SECONDS").unwrap()["value"],
        "40"
    );
    assert_eq!(
        pod_of(order).termination_grace_period_seconds,
        Some(7 + 40 + 5)
    );
    let gateway = template(&children, Component::Gateway);
    assert_eq!(
        env_value(gateway, "MSA_DRAIN_DELAY_SECONDS").unwrap()["value"],
        "5"
    );
    assert_eq!(pod_of(gateway).termination_grace_period_seconds, Some(30));
    // A soft spread across nodes, per revision.
    let spread = &pod_of(gateway)
        .topology_spread_constraints
        .as_ref()
        .unwrap()[0];
    assert_eq!(spread.when_unsatisfiable, "ScheduleAnyway");
    assert_eq!(spread.topology_key, "kubernetes.io/hostname");
    assert_eq!(
        spread.match_label_keys.as_deref(),
        Some(&["pod-template-hash".to_owned()][..])
    );
    let user_spread = &pod_of(template(&children, Component::User))
        .topology_spread_constraints
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        user_spread.match_label_keys.as_deref(),
        Some(&["controller-revision-hash".to_owned()][..])
    );
}

/// Issue 16: a NetworkPolicy per component admits only its callers on its port — order from the
/// gateway and product (issue 27: it asks before a return), user and product from the gateway
/// and order, the gateway from anyone (or the
/// configured peers) — plus the monitoring namespace when set; switched off, none is rendered.
#[test]
fn network_policies_admit_only_each_components_callers() {
    let children = build::children(&app(json!({}))).unwrap();
    let policies: Vec<serde_json::Value> = children
        .network_policies
        .iter()
        .map(|p| serde_json::to_value(p).unwrap())
        .collect();
    assert_eq!(policies.len(), 4);
    let sources = |name: &str| -> Vec<String> {
        let policy = policies
            .iter()
            .find(|p| p["metadata"]["name"] == name)
            .unwrap();
        assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
        assert_eq!(
            policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"],
            "shop"
        );
        let rules = policy["spec"]["ingress"].as_array().unwrap();
        assert_eq!(rules.len(), 1, "{policy}");
        match rules[0]["from"].as_array() {
            None => vec!["anyone".to_owned()],
            Some(from) => from
                .iter()
                .map(|peer| {
                    peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect(),
        }
    };
    assert_eq!(sources("shop-gateway"), ["anyone"]);
    assert_eq!(sources("shop-order"), ["product", "gateway"]);
    assert_eq!(sources("shop-user"), ["order", "gateway"]);
    assert_eq!(sources("shop-product"), ["order", "gateway"]);
    let order = &policies[1];
    assert_eq!(
        order["spec"]["ingress"][0]["ports"],
        json!([{"port": 8080, "protocol": "TCP"}])
    );

    let configured = build::children(&app(json!({"networkPolicy": {
        "gatewayFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}],
        "monitoringNamespace": "monitoring"
    }})))
    .unwrap();
    let gateway = serde_json::to_value(&configured.network_policies[3]).unwrap();
    let rules = &gateway["spec"]["ingress"];
    assert_eq!(
        rules[0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "ingress"
    );
    assert_eq!(
        rules[1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    assert_eq!(
        rules[1]["ports"],
        json!([{"port": 9090, "protocol": "TCP"}]),
        "monitoring reaches the admin port, where /metrics is"
    );
    let off = build::children(&app(json!({"networkPolicy": {"enabled": false}}))).unwrap();
    assert!(off.network_policies.is_empty());
}

/// Issue 16, service identity (both ways since issue 27): the order and product services each
/// run as their own ServiceAccount; once the operator knows the cluster's issuer, each gets a
/// token projected for the other's audience and the issuer's keys (a ConfigMap), and accepts
/// only the other's account. Before, neither checks nor sends a token.
#[test]
fn the_order_and_product_services_prove_themselves_to_each_other_with_projected_tokens() {
    let shop = app(json!({}));
    let unknown = build::children(&shop).unwrap();
    let accounts: Vec<_> = unknown
        .own_service_accounts
        .iter()
        .map(|a| a.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(accounts, ["shop-order", "shop-product"]);
    let binding = serde_json::to_value(&unknown.role_binding).unwrap();
    let subjects: Vec<_> = binding["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(
        subjects,
        [
            json!("shop-discovery"),
            json!("shop-order"),
            json!("shop-product")
        ],
        "both accounts discover their peers too"
    );
    // The product service finds the order service as every caller finds its peers.
    let product = template(&unknown, Component::Product);
    assert_eq!(
        env_value(product, "MSA_UPSTREAM_ORDER").unwrap()["value"],
        "shop-order"
    );
    // Without the issuer: no check, and no token a user-token check would refuse.
    for component in [Component::Order, Component::Product] {
        let t = template(&unknown, component);
        assert_eq!(env_value(t, "MSA_SERVICE_ISSUER"), None, "{component}");
        assert_eq!(env_value(t, "MSA_SERVICE_TOKEN_FILE"), None, "{component}");
        assert!(
            pod_of(t)
                .volumes
                .iter()
                .flatten()
                .all(|v| v.name != "service-token"),
            "{component}"
        );
    }
    assert!(unknown.service_issuer.is_none());

    let facts = build::ClusterFacts {
        service_issuer: Some(build::ServiceIssuer {
            issuer: "https://kubernetes.default.svc".into(),
            jwks: r#"{"keys":[{"kty":"RSA","n":"x","e":"AQAB"}]}"#.into(),
        }),
        pod_monitors: false,
        ..build::ClusterFacts::default()
    };
    let known = build::children_in(&shop, &facts).unwrap();
    let config_map = serde_json::to_value(known.service_issuer.as_ref().unwrap()).unwrap();
    assert_eq!(config_map["metadata"]["name"], "shop-service-issuer");
    assert!(
        config_map["data"]["jwks.json"]
            .as_str()
            .unwrap()
            .contains("RSA")
    );
    for (component, account, peer, peer_account) in [
        (
            Component::Order,
            "shop-order",
            "shop-product",
            "shop-product",
        ),
        (
            Component::Product,
            "shop-product",
            "shop-order",
            "shop-order",
        ),
    ] {
        let t = template(&known, component);
        assert_eq!(pod_of(t).service_account_name.as_deref(), Some(account));
        assert_eq!(
            env_value(t, "MSA_SERVICE_TOKEN_FILE").unwrap()["value"],
            "/var/run/msa/service-token/token"
        );
        let pod = serde_json::to_value(pod_of(t)).unwrap();
        let projected = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "service-token")
            .unwrap();
        assert_eq!(
            projected["projected"]["sources"][0]["serviceAccountToken"],
            json!({"audience": peer, "expirationSeconds": 3600, "path": "token"})
        );
        let caller = format!("system:serviceaccount:demo:{peer_account}");
        for (name, expected) in [
            ("MSA_SERVICE_ISSUER", "https://kubernetes.default.svc"),
            ("MSA_SERVICE_JWKS_FILE", "/etc/msa/service-issuer/jwks.json"),
            ("MSA_SERVICE_AUDIENCE", account),
            ("MSA_SERVICE_CALLERS", caller.as_str()),
        ] {
            assert_eq!(
                env_value(t, name).unwrap()["value"],
                expected,
                "{component} {name}"
            );
        }
    }
    // The keys change without rolling anyone: only the ConfigMap carries them.
    let rotated = build::ClusterFacts {
        service_issuer: Some(build::ServiceIssuer {
            issuer: "https://kubernetes.default.svc".into(),
            jwks: r#"{"keys":[{"kty":"RSA","n":"y","e":"AQAB"}]}"#.into(),
        }),
        pod_monitors: false,
        ..build::ClusterFacts::default()
    };
    let after = build::children_in(&shop, &rotated).unwrap();
    assert_eq!(after.workloads, known.workloads);
    assert_ne!(after.service_issuer, known.service_issuer);
}

/// Issue 16: keys from the issuer's URL reach every component as MSA_AUTH_JWKS_URL, with no
/// volume to mount when no Secret is named.
#[test]
fn a_jwks_url_needs_no_volume() {
    let children = build::children(&app(json!({"components": {"gateway": {"auth": {
        "issuer": "https://issuer.example",
        "audiences": ["shop"],
        "jwksUri": "https://issuer.example/.well-known/jwks.json"
    }}}})))
    .unwrap();
    for component in Component::ALL {
        let workload = template(&children, component);
        assert_eq!(
            env_value(workload, "MSA_AUTH_JWKS_URL").unwrap()["value"],
            "https://issuer.example/.well-known/jwks.json"
        );
        let pod = serde_json::to_value(pod_of(workload)).unwrap();
        assert!(!pod.to_string().contains("auth-keys"), "{component:?}");
    }
}

/// Issue 17: `spec.monitoring.podMonitor` renders a PodMonitor scraping every pod's admin port
/// where the Prometheus Operator's API exists; where it does not, nothing is rendered and the
/// status says why.
#[test]
fn a_pod_monitor_where_the_api_exists_and_a_note_where_it_does_not() {
    let shop = app(
        json!({"monitoring": {"podMonitor": {"enabled": true, "interval": "15s",
        "labels": {"release": "kube-prometheus"}}}}),
    );
    let with_api = build::ClusterFacts {
        pod_monitors: true,
        ..Default::default()
    };
    let children = build::children_in(&shop, &with_api).unwrap();
    let monitor = serde_json::to_value(children.pod_monitor.as_ref().unwrap()).unwrap();
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["kind"], "PodMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus");
    assert_eq!(
        monitor["spec"]["podMetricsEndpoints"],
        json!([{"port": "admin", "path": "/metrics", "interval": "15s"}])
    );
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        "shop"
    );
    assert!(
        build::monitoring_note(&shop, true)
            .unwrap()
            .starts_with("PodMonitor shop")
    );

    let without_api = build::children(&shop).unwrap();
    assert!(without_api.pod_monitor.is_none());
    assert!(
        build::monitoring_note(&shop, false)
            .unwrap()
            .contains("Prometheus Operator) is not installed")
    );
    let off = app(json!({}));
    assert!(
        build::children_in(&off, &with_api)
            .unwrap()
            .pod_monitor
            .is_none()
    );
    assert_eq!(build::monitoring_note(&off, true), None);
}

fn config_hash(t: &PodTemplateSpec) -> String {
    t.metadata.as_ref().unwrap().annotations.as_ref().unwrap()["msa.dev/config-hash"].clone()
}

#[test]
fn config_is_an_immutable_config_map_named_after_its_content_read_key_by_key() {
    let spec = json!({"components": {"gateway": {
        "config": {"MSA_CORS_ORIGINS": "https://shop.example", "MSA_RATE_LIMIT_PER_SECOND": "7"},
        "env": [{"name": "MSA_CORS_ORIGINS", "value": "https://env.wins"}],
    }}});
    let children = build::children(&app(spec.clone())).unwrap();
    let [config_map] = &children.component_configs[..] else {
        panic!(
            "one ConfigMap, the gateway's: {:?}",
            children.component_configs
        )
    };
    let name = config_map.metadata.name.clone().unwrap();
    assert!(name.starts_with("shop-gateway-config-"), "{name}");
    assert_eq!(config_map.immutable, Some(true));
    assert_eq!(
        config_map.metadata.labels.as_ref().unwrap()["msa.dev/component-config"],
        "true"
    );
    assert_eq!(
        config_map.metadata.labels.as_ref().unwrap()["app.kubernetes.io/component"],
        "gateway"
    );
    assert_eq!(config_map.data.as_ref().unwrap().len(), 2);

    let t = template(&children, Component::Gateway);
    // A key replaces the variable the operator sets from spec (the rate limit), read from the
    // ConfigMap; an `env` entry of the same name replaces the key.
    assert_eq!(
        env_value(t, "MSA_RATE_LIMIT_PER_SECOND").unwrap(),
        json!({"name": "MSA_RATE_LIMIT_PER_SECOND", "valueFrom": {"configMapKeyRef": {
            "name": name, "key": "MSA_RATE_LIMIT_PER_SECOND", "optional": false}}})
    );
    assert_eq!(
        env_value(t, "MSA_CORS_ORIGINS").unwrap(),
        json!({"name": "MSA_CORS_ORIGINS", "value": "https://env.wins"})
    );
    let names: Vec<_> = container_of(t)
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    let unique: std::collections::BTreeSet<_> = names.iter().collect();
    assert_eq!(names.len(), unique.len(), "one entry per name: {names:?}");

    // Other components are untouched: no ConfigMap reference, the same pod hash as without.
    let plain = build::children(&app(json!({}))).unwrap();
    assert_eq!(
        config_hash(template(&children, Component::Order)),
        config_hash(template(&plain, Component::Order))
    );
    assert!(plain.component_configs.is_empty());

    // Same content, same name and pod; another value, another ConfigMap and a rolled pod.
    let again = build::children(&app(spec)).unwrap();
    assert_eq!(again.component_configs, children.component_configs);
    let edited = build::children(&app(json!({"components": {"gateway": {
        "config": {"MSA_CORS_ORIGINS": "https://shop.example", "MSA_RATE_LIMIT_PER_SECOND": "8"},
    }}})))
    .unwrap();
    assert_ne!(
        edited.component_configs[0].metadata.name.as_deref(),
        Some(name.as_str())
    );
    assert_ne!(
        config_hash(template(&edited, Component::Gateway)),
        config_hash(t)
    );
}

fn sources_hash(t: &PodTemplateSpec) -> Option<String> {
    t.metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()
        .get("msa.dev/config-sources-hash")
        .cloned()
}

#[test]
fn config_from_is_env_from_in_order_and_its_content_hash_rolls_only_its_readers() {
    use build::config::SourceContent;
    use msa_operator::crd::ConfigSource;
    let shop = app(json!({"components": {"product": {"configFrom": [
        {"configMap": "product-settings"}, {"secret": "product-keys"},
    ]}}}));
    let settings = ConfigSource {
        config_map: Some("product-settings".into()),
        secret: None,
    };
    let keys = ConfigSource {
        config_map: None,
        secret: Some("product-keys".into()),
    };
    let with = |known: &[(&ConfigSource, SourceContent)], running: Option<&str>| {
        let facts = build::ClusterFacts {
            config_sources: known
                .iter()
                .map(|(s, c)| ((*s).clone(), c.clone()))
                .collect(),
            running_sources: running
                .map(|h| (Component::Product, h.to_owned()))
                .into_iter()
                .collect(),
            ..build::ClusterFacts::default()
        };
        build::children_in(&shop, &facts).unwrap()
    };
    let hash = |h: &str| SourceContent::Hash(h.to_owned());
    let first = with(
        &[
            (&settings, hash("aaaa")),
            (&keys, SourceContent::NotWatched),
        ],
        None,
    );
    let t = template(&first, Component::Product);
    assert_eq!(
        serde_json::to_value(&container_of(t).env_from).unwrap(),
        json!([
            {"configMapRef": {"name": "product-settings", "optional": false}},
            {"secretRef": {"name": "product-keys", "optional": false}},
        ])
    );
    let first_sources = sources_hash(t).expect("a sources hash");
    let edited = with(
        &[
            (&settings, hash("bbbb")),
            (&keys, SourceContent::NotWatched),
        ],
        None,
    );
    let rolled = template(&edited, Component::Product);
    assert_ne!(
        sources_hash(rolled).unwrap(),
        first_sources,
        "an edited ConfigMap rolls its readers"
    );
    assert_eq!(
        config_hash(rolled),
        config_hash(t),
        "the pod spec's own hash stays (the operator's pacing does not hold a user's edit back)"
    );
    assert_eq!(rolled.spec, t.spec, "only the annotation changes");
    assert_eq!(
        template(&edited, Component::Order),
        template(&first, Component::Order),
        "components that do not read it stay"
    );
    // The Secret's content counts once it is watched.
    let watched = with(&[(&settings, hash("aaaa")), (&keys, hash("cccc"))], None);
    assert_ne!(
        sources_hash(template(&watched, Component::Product)).unwrap(),
        first_sources
    );
    // A ConfigMap deleted under running pods rolls nothing: they keep what they run with. An
    // app whose pods never ran with it renders it absent (the new pods wait for it).
    let deleted = with(&[(&keys, SourceContent::NotWatched)], Some(&first_sources));
    assert_eq!(
        sources_hash(template(&deleted, Component::Product)),
        Some(first_sources.clone())
    );
    let never = with(&[(&keys, SourceContent::NotWatched)], None);
    assert_ne!(
        sources_hash(template(&never, Component::Product)),
        Some(first_sources.clone())
    );
    let back = with(
        &[
            (&settings, hash("dddd")),
            (&keys, SourceContent::NotWatched),
        ],
        Some(&first_sources),
    );
    assert_ne!(
        sources_hash(template(&back, Component::Product)),
        Some(first_sources),
        "recreated with other content, it rolls"
    );
    // Without configFrom nothing changes: no annotation, no envFrom (no roll on upgrade).
    let plain = build::children(&app(json!({}))).unwrap();
    assert_eq!(sources_hash(template(&plain, Component::Product)), None);
    assert_eq!(
        container_of(template(&plain, Component::Product)).env_from,
        None
    );
    assert_eq!(
        template(&first, Component::Gateway),
        template(&plain, Component::Gateway)
    );
}
