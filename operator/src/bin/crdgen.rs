//! Prints the MicroserviceApp CRD generated from the Rust types (what `crds/` must contain).

fn main() -> anyhow::Result<()> {
    print!("{}", msa_operator::crd::crd_yaml()?);
    Ok(())
}
