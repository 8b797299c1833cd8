//! Generated artefacts are committed; these fail when they drift from the code.

use std::path::Path;

fn repo_file(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn committed_crds_match_the_rust_types() {
    let generated = msa_operator::crd::crd_yaml().unwrap();
    for file in [
        "crds/microserviceapps.msa.dev.yaml",
        "charts/msa-operator/crds/microserviceapps.msa.dev.yaml",
    ] {
        assert!(
            repo_file(file) == generated,
            "{file} is out of date with operator/src/crd.rs; run `make crds` and commit the result"
        );
    }
}

/// `make images` names each image `ghcr.io/msa-dev/<binary>:<workspace version>`; the chart's
/// default operator image, the CRD's default image pattern and `manifests/shop.yaml` must name
/// exactly those, or a user who loads the tarballs gets `ErrImageNeverPull`/`ImagePullBackOff`.
#[test]
fn image_names_agree_with_what_make_images_builds() {
    let version = env!("CARGO_PKG_VERSION");
    let built = |binary: &str| format!("ghcr.io/msa-dev/{binary}:{version}");

    let values: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("charts/msa-operator/values.yaml")).unwrap();
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&repo_file("charts/msa-operator/Chart.yaml")).unwrap();
    let repository = values["image"]["repository"].as_str().unwrap();
    let tag = values["image"]["tag"]
        .as_str()
        .filter(|t| !t.is_empty())
        .or(chart["appVersion"].as_str())
        .unwrap();
    assert_eq!(format!("{repository}:{tag}"), built("msa-operator"));

    let example: msa_operator::crd::MicroserviceApp =
        serde_yaml::from_str(&repo_file("manifests/shop.yaml")).unwrap();
    for pattern in [
        msa_operator::crd::DEFAULT_IMAGE_PATTERN,
        example.spec.image.as_str(),
    ] {
        for component in ["user", "order", "product", "gateway"] {
            assert_eq!(
                pattern.replace(msa_operator::crd::COMPONENT_PLACEHOLDER, component),
                built(&format!("msa-{component}")),
                "image pattern {pattern}"
            );
        }
    }
    let script = repo_file("hack/images.sh");
    assert!(
        script.contains("registry=ghcr.io/msa-dev") && script.contains("\"$registry/$b:$version\""),
        "hack/images.sh no longer names images ghcr.io/msa-dev/<binary>:<version>"
    );
}

/// Every `nullable` field of the served schema, as a path of property names (`[]` for an array's
/// items, `{}` for a map's values).
fn nullable_paths(schema: &serde_json::Value, path: &str, found: &mut Vec<String>) {
    if schema["nullable"] == true {
        found.push(path.to_owned());
    }
    if let Some(properties) = schema["properties"].as_object() {
        for (name, property) in properties {
            nullable_paths(property, &format!("{path}.{name}"), found);
        }
    }
    if schema["items"].is_object() {
        nullable_paths(&schema["items"], &format!("{path}[]"), found);
    }
    if schema["additionalProperties"].is_object() {
        nullable_paths(
            &schema["additionalProperties"],
            &format!("{path}{{}}"),
            found,
        );
    }
}

/// An app with `null` at `path` (objects created on the way).
fn app_with_null_at(path: &str) -> serde_json::Value {
    let mut app = serde_json::json!({
        "apiVersion": "msa.dev/v1alpha1", "kind": "MicroserviceApp",
        "metadata": {"name": "shop", "namespace": "demo"}, "spec": {},
    });
    let mut at = &mut app;
    let names: Vec<&str> = path.trim_start_matches('.').split('.').collect();
    for (i, name) in names.iter().enumerate() {
        if i + 1 == names.len() {
            at[*name] = serde_json::Value::Null;
        } else {
            if at[*name].is_null() {
                at[*name] = serde_json::json!({});
            }
            at = &mut at[*name];
        }
    }
    app
}

/// The API server keeps a null only in a `nullable` field (elsewhere it drops it and applies the
/// default), so every nullable field must read a null; one the types cannot read would make the
/// app unreadable (issue 28, H1: `rollout.maxSurge: null` stopped every app).
#[test]
fn every_nullable_field_of_the_schema_reads_a_null() {
    let crd = serde_json::to_value(msa_operator::crd::definition()).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut nullable = Vec::new();
    nullable_paths(schema, "", &mut nullable);
    assert!(
        nullable.contains(&".spec.database".to_owned()),
        "the walk finds Option fields: {nullable:?}"
    );
    for path in &nullable {
        // Inside arrays and maps are Kubernetes' own types (an env var's `divisor`), Options.
        if path.contains("[]") || path.contains("{}") {
            continue;
        }
        let app = app_with_null_at(path);
        if let Err(error) = serde_json::from_value::<msa_operator::crd::MicroserviceApp>(app) {
            assert!(
                !error.to_string().contains("null"),
                "{path} is nullable in the schema but a null there cannot be read: {error}"
            );
        }
    }
    for defaulted in [
        ".spec.storage.size",
        ".spec.components.user.rollout.maxSurge",
        ".spec.components.gateway.rollout.maxUnavailable",
    ] {
        assert!(
            !nullable.contains(&defaulted.to_owned()),
            "{defaulted} has a default: a null there must be dropped and defaulted, not kept"
        );
    }
    assert_eq!(
        schema["properties"]["spec"]["properties"]["storage"]["properties"]["size"]["default"],
        "1Gi"
    );
}

/// The README's `argocd-cm` snippet is the chart's health check, line for line.
#[test]
fn the_readmes_argo_cd_snippet_is_the_charts_health_check() {
    const KEY: &str = "  resource.customizations.health.msa.dev_MicroserviceApp: |\n";
    let readme = repo_file("README.md");
    let start = readme
        .find(KEY)
        .expect("the README gives the argocd-cm snippet")
        + KEY.len();
    let block = &readme[start..];
    let block = &block[..block.find("```").expect("the snippet's code block ends")];
    let snippet: String = block
        .lines()
        .map(|line| format!("{}\n", line.strip_prefix("    ").unwrap_or(line)))
        .collect();
    assert!(
        snippet == repo_file("charts/msa-operator/files/argocd/health.lua"),
        "the README's argocd-cm snippet differs from charts/msa-operator/files/argocd/health.lua; \
         copy the file in, indented by four spaces"
    );
}

/// The spec the README shows users (`manifests/shop.yaml`, and every ```yaml block of the
/// README that is a `spec:`) passes both the CRD's CEL rules and the operator's own checks:
/// an example that no longer applies fails here, not in a user's terminal.
#[test]
fn the_readmes_example_specs_validate() {
    let readme = repo_file("README.md");
    let mut examples = vec![(
        "manifests/shop.yaml".to_owned(),
        repo_file("manifests/shop.yaml"),
    )];
    for (i, block) in readme.split("```yaml\n").skip(1).enumerate() {
        let block = &block[..block.find("```").expect("a closed code block")];
        if block.starts_with("spec:") {
            examples.push((
                format!("README.md's yaml block {}", i + 1),
                format!(
                    "apiVersion: msa.dev/v1alpha1\nkind: MicroserviceApp\nmetadata: {{name: shop, namespace: demo}}\n{block}"
                ),
            ));
        }
    }
    assert!(examples.len() >= 2, "the README shows a spec");
    for (what, text) in examples {
        let app: msa_operator::crd::MicroserviceApp = serde_yaml::from_str(&text)
            .unwrap_or_else(|e| panic!("{what} is not a MicroserviceApp: {e}"));
        let spec = serde_json::to_value(&app.spec).unwrap();
        msa_operator::crd::MicroserviceAppSpec::validate_cel(&spec, None)
            .unwrap_or_else(|e| panic!("{what} fails the CRD's CEL rules: {e:?}"));
        let problems = msa_operator::validate::problems(&app);
        assert!(
            problems.is_empty(),
            "{what} fails the operator's checks: {problems:?}"
        );
    }
}

/// The README's `kubectl get msa -o wide` shows the CRD's columns, and the degraded app's
/// conditions it shows are the ones captured in the e2e run (the Argo CD table's testdata).
#[test]
fn the_readmes_captured_output_matches_the_crd_and_the_captures() {
    let readme = repo_file("README.md");
    let crd = msa_operator::crd::definition();
    let mut columns = vec!["NAME".to_owned()];
    columns.extend(
        crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.to_uppercase()),
    );
    let shown = readme
        .split("```console\n$ kubectl get msa")
        .nth(1)
        .expect("the README shows `kubectl get msa -o wide`");
    let header: Vec<&str> = shown
        .lines()
        .nth(1)
        .expect("a header line")
        .split_whitespace()
        .collect();
    assert_eq!(header, columns, "the README's `kubectl get msa -o wide`");

    let capture = repo_file("charts/msa-operator/files/argocd/testdata/degraded-storage.yaml");
    let start = capture
        .find("\n  conditions:\n")
        .expect("the capture has conditions")
        + 1;
    let end = start
        + capture[start..]
            .find("\n  gateway:\n")
            .expect("the status has the gateway")
        + 1;
    assert!(
        readme.contains(&format!("status:\n{}```", &capture[start..end])),
        "the README's degraded conditions differ from the capture"
    );
}
