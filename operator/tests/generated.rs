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

#[test]
fn example_app_is_a_valid_microservice_app() {
    let example: msa_operator::crd::MicroserviceApp =
        serde_yaml::from_str(&repo_file("manifests/shop.yaml"))
            .expect("manifests/shop.yaml parses as a MicroserviceApp");
    let spec = serde_json::to_value(&example.spec).unwrap();
    msa_operator::crd::MicroserviceAppSpec::validate_cel(&spec, None)
        .expect("manifests/shop.yaml passes the CRD's CEL rules");
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
