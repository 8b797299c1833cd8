//! Spec validation: the CEL rules the API server enforces (evaluated here with kube's CEL
//! interpreter) and the operator's own checks, each with a message that says what to do.

mod support;

use msa_operator::crd::MicroserviceAppSpec;
use msa_operator::validate;
use serde_json::{Value, json};
use support::app;

/// The spec as the API server would see it after defaulting.
fn defaulted(spec: Value) -> Value {
    let typed: MicroserviceAppSpec = serde_json::from_value(spec).unwrap();
    serde_json::to_value(typed).unwrap()
}

fn cel_errors(spec: Value) -> Vec<String> {
    match MicroserviceAppSpec::validate_cel(&defaulted(spec), None) {
        Ok(()) => Vec::new(),
        Err(errors) => errors.iter().map(|e| format!("{e:?}")).collect(),
    }
}

#[test]
fn cel_rejects_replicated_stateful_services_without_a_database() {
    assert!(cel_errors(json!({})).is_empty());
    assert!(cel_errors(json!({"components": {"gateway": {"replicas": 5}}})).is_empty());
    for component in ["user", "order", "product"] {
        let errors = cel_errors(json!({"components": {component: {"replicas": 2}}}));
        assert_eq!(errors.len(), 1, "{component}: {errors:?}");
        assert!(
            errors[0].contains(&format!(
                "spec.components.{component}: more than one replica"
            )),
            "{}",
            errors[0]
        );
        assert!(
            errors[0].contains("set spec.database.secretRef"),
            "{}",
            errors[0]
        );

        let autoscaled = cel_errors(json!({"components": {component: {"autoscaled": true}}}));
        assert_eq!(
            autoscaled.len(),
            1,
            "{component} autoscaled: {autoscaled:?}"
        );
    }
    let with_database = json!({
        "database": {"secretRef": {"name": "shop-db"}},
        "components": {"user": {"replicas": 3}, "order": {"replicas": 2}, "product": {"autoscaled": true}}
    });
    assert!(cel_errors(with_database).is_empty());
}

#[test]
fn valid_specs_have_no_problems() {
    assert_eq!(validate::problems(&app(json!({}))), vec![]);
    let full = app(json!({
        "components": {"user": {"labels": {"team": "a", "example.com/tier": "backend"}, "annotations": {"example.com/x": "y"},
                                "env": [{"name": "A", "value": "1"}], "rollout": {"maxSurge": 1, "maxUnavailable": "0%"}}}
    }));
    assert_eq!(validate::problems(&full), vec![]);
}

#[test]
fn operator_checks_name_the_field_and_the_fix() {
    let bad = app(json!({"components": {
        "user": {"labels": {"app.kubernetes.io/name": "x", "bad key!": "v", "ok": "not valid!"}},
        "order": {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}, {"name": ""}]},
        "product": {"rollout": {"maxSurge": 0, "maxUnavailable": "0%"}},
        "gateway": {"rollout": {"maxSurge": "150%"}, "image": " "}
    }}));
    let problems: Vec<String> = validate::problems(&bad)
        .iter()
        .map(ToString::to_string)
        .collect();
    let expect = [
        "spec.components.user.labels[app.kubernetes.io/name]: is set by the operator and cannot be overridden; remove it",
        "spec.components.user.labels[bad key!]: key name \"bad key!\" must be 1-63 characters",
        "spec.components.user.labels[ok]: value \"not valid!\" must be at most 63 characters",
        "spec.components.order.env[1].name: A is listed twice; keep one entry",
        "spec.components.order.env[2].name: is empty; name the variable",
        "spec.components.product.rollout: maxSurge and maxUnavailable are both 0",
        "spec.components.gateway.image: is empty; set an image reference",
        "spec.components.gateway.rollout.maxSurge: is \"150%\"; use a whole number or a percentage",
    ];
    for expected in expect {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "missing {expected:?} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expect.len(), "{problems:#?}");
}

#[test]
fn over_long_app_names_are_refused() {
    let mut long = app(json!({}));
    long.metadata.name = Some("a".repeat(validate::MAX_APP_NAME + 1));
    let problems = validate::problems(&long);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "metadata.name");
    let mut fits = app(json!({"database": {"secretRef": {"name": "db"}}}));
    fits.metadata.name = Some("a".repeat(validate::MAX_APP_NAME));
    assert!(validate::problems(&fits).is_empty());
}

#[test]
fn embedded_apps_have_a_shorter_name_limit_because_of_the_stateful_set_revision_label() {
    let mut long = app(json!({}));
    long.metadata.name = Some("a".repeat(validate::MAX_EMBEDDED_APP_NAME + 1));
    let problems = validate::problems(&long);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].to_string().contains("set spec.database"),
        "{}",
        problems[0]
    );
    // The revision label <name>-product-<10 characters> is exactly 63 at the limit.
    assert_eq!(validate::MAX_EMBEDDED_APP_NAME + "-product-".len() + 10, 63);
    long.spec.database =
        Some(serde_json::from_value(json!({"secretRef": {"name": "db"}})).unwrap());
    assert!(validate::problems(&long).is_empty());
}

#[test]
fn storage_size_and_class_cannot_change_once_the_volumes_exist() {
    let before = defaulted(json!({"storage": {"size": "1Gi"}}));
    let check =
        |after: Value| match MicroserviceAppSpec::validate_cel(&defaulted(after), Some(&before)) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.iter().map(|e| format!("{e:?}")).collect(),
        };
    assert!(check(json!({"storage": {"size": "1Gi", "whenDeleted": "Delete"}})).is_empty());
    let resized = check(json!({"storage": {"size": "5Gi"}}));
    assert_eq!(resized.len(), 1, "{resized:?}");
    assert!(resized[0].contains("resize the claims"), "{}", resized[0]);
    let reclassed = check(json!({"storage": {"size": "1Gi", "storageClassName": "fast"}}));
    assert_eq!(reclassed.len(), 1, "{reclassed:?}");
    // The same size written another way is no change (review L8).
    assert!(check(json!({"storage": {"size": "1024Mi"}})).is_empty());
}

/// Review L8: a size that is not a quantity is refused by the API server when the app is
/// applied, instead of by the StatefulSet's claim template later.
#[test]
fn a_storage_size_must_be_a_quantity() {
    for size in [
        json!("1Gi"),
        json!("500Mi"),
        json!("2G"),
        json!("1.5Ti"),
        json!(10737418240_i64),
    ] {
        assert!(
            cel_errors(json!({"storage": {"size": size}})).is_empty(),
            "{size}"
        );
    }
    for size in ["lots", "1 Gi", "-", "0", "-1Gi"] {
        let errors = cel_errors(json!({"storage": {"size": size}}));
        assert_eq!(errors.len(), 1, "{size}: {errors:?}");
        assert!(
            errors[0].contains("must be a positive quantity such as 1Gi"),
            "{}",
            errors[0]
        );
    }
}

/// The admin port (9090: `/metrics`, `/info`, probes) is on every pod; a component's own port
/// may not take it.
#[test]
fn a_component_port_may_not_be_the_admin_port() {
    let problems = validate::problems(&app(json!({"components": {"order": {"port": 9090}}})));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "spec.components.order.port");
    assert!(
        problems[0].message.contains("admin port"),
        "{}",
        problems[0]
    );
}

/// A JWKS URL must be https: keys fetched in the clear could be swapped on the way.
#[test]
fn a_jwks_url_must_be_https() {
    let auth = |uri: &str| {
        app(json!({"components": {"gateway": {"auth": {
            "issuer": "i", "audiences": ["a"], "jwksUri": uri
        }}}}))
    };
    assert!(validate::problems(&auth("https://idp.example/jwks")).is_empty());
    for bad in ["http://idp.example/jwks", "https://", "https://a b"] {
        let problems = validate::problems(&auth(bad));
        assert_eq!(problems.len(), 1, "{bad}: {problems:?}");
        assert_eq!(problems[0].field, "spec.components.gateway.auth.jwksUri");
    }
    assert!(
        cel_errors(json!({"components": {"gateway": {"auth": {
            "issuer": "i", "audiences": ["a"], "jwksUri": "https://idp.example/jwks"
        }}}}))
        .is_empty()
    );
}

#[test]
fn config_keys_values_and_sources_are_checked_with_the_fix() {
    let good = app(json!({"components": {"gateway": {
        "config": {"MSA_CORS_ORIGINS": "https://a.example", "_x1": ""},
        "configFrom": [{"configMap": "shop-settings"}, {"secret": "0keys.v2"}, {"configMap": "0keys.v2"}],
    }}}));
    assert_eq!(validate::problems(&good), vec![]);
    let bad = app(json!({"components": {
        "user": {"config": {"1ABC": "x", "A-B": "y", "OK": "z".repeat(8 * 1024 + 1)}},
        "order": {"configFrom": [{}, {"configMap": "a", "secret": "b"}, {"configMap": "Upper"},
                                 {"secret": "s"}, {"secret": "s"}]},
    }}));
    let problems: Vec<String> = validate::problems(&bad)
        .iter()
        .map(ToString::to_string)
        .collect();
    let expect = [
        "spec.components.user.config[1ABC]: is not an environment variable name",
        "spec.components.user.config[A-B]: is not an environment variable name",
        "spec.components.user.config[OK]: is 8193 bytes long; a value may be at most 8192",
        "spec.components.order.configFrom[0]: must name exactly one of configMap or secret",
        "spec.components.order.configFrom[1]: must name exactly one of configMap or secret",
        "spec.components.order.configFrom[2].configMap: \"Upper\" is not an object name",
        "spec.components.order.configFrom[4].secret: s is listed twice; keep one entry",
    ];
    for expected in expect {
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "missing {expected:?} in {problems:#?}"
        );
    }
    assert_eq!(problems.len(), expect.len(), "{problems:#?}");
    let too_much: serde_json::Map<String, Value> = (0..10)
        .map(|i| (format!("K{i}"), json!("v".repeat(7 * 1024))))
        .collect();
    let problems = validate::problems(&app(json!({"components": {"user": {"config": too_much}}})));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].to_string().contains("at most 65536 in all"));
    // A key's length cannot swell the status: it is cut in the message.
    let long = "1".repeat(60_000);
    let problems = validate::problems(&app(
        json!({"components": {"user": {"config": {long: "x"}}}}),
    ));
    assert_eq!(problems.len(), 1);
    assert!(problems[0].to_string().len() < 300, "{}", problems[0]);
}

#[test]
fn cel_rejects_a_config_source_naming_none_or_both() {
    assert!(
        cel_errors(
            json!({"components": {"user": {"configFrom": [{"configMap": "a"}, {"secret": "b"}]}}})
        )
        .is_empty()
    );
    for wrong in [json!({}), json!({"configMap": "a", "secret": "b"})] {
        let errors = cel_errors(json!({"components": {"gateway": {"configFrom": [wrong]}}}));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].contains("names exactly one of configMap or secret"),
            "{}",
            errors[0]
        );
    }
}
