//! Harness for the end-to-end tests and the benchmarks: they run against the real cluster that
//! `tests/cluster/cluster.sh` starts on this machine (`make e2e` brings it up and down).
//!
//! Everything here talks to that cluster's API server, to operator processes it spawns on
//! loopback, and — in the real-node tests — to node and pod addresses that pass
//! [`node::guarded`] (inside the blackholed 198.18.0.0/15).

pub mod argocd;
pub mod audit;
pub mod cluster;
pub mod durability;
pub mod events;
pub mod failing_api;
pub use msa_listening as listening;
pub mod load;
pub mod node;
pub mod operator;
pub mod postgres;
pub mod stall;
pub mod wait;

use std::path::PathBuf;

pub use cluster::{Cluster, Placement, TestNamespace};
pub use operator::{Operator, OperatorOptions};
pub use wait::wait_until;

/// 32 random hex digits from the kernel: unique names (test emails) and throwaway passwords.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    read.expect("Linux always has /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A binary of this workspace's debug build (`make e2e` builds the ones the tests run).
pub fn workspace_binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug").join(name)
}

/// Whether a pod's `Ready` condition is `True`.
pub fn pod_is_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
