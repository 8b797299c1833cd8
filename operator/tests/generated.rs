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
