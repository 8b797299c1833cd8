//! Prints the CRD generated from the Rust types as YAML (what `crds/` must contain).
use kube::CustomResourceExt;
use msa_operator::crd::MicroserviceApp;

fn main() -> anyhow::Result<()> {
    print!("{}", serde_yaml::to_string(&MicroserviceApp::crd())?);
    Ok(())
}
