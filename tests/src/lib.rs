//! Harness for the end-to-end tests and the benchmarks: they run against the real cluster that
//! `tests/cluster/cluster.sh` starts on this machine (`make e2e` brings it up and down).
//!
//! Everything here talks to that cluster's API server, to operator processes it spawns on
//! loopback, and — in the real-node tests — to node and pod addresses that pass
//! [`node::guarded`] (inside the blackholed 198.18.0.0/15).

pub mod audit;
pub mod cluster;
pub mod durability;
pub mod load;
pub mod node;
pub mod operator;
pub mod postgres;
pub mod wait;

use std::path::PathBuf;

pub use cluster::{Cluster, Placement, TestNamespace};
pub use operator::{Operator, OperatorOptions};
pub use wait::wait_until;

/// A binary of this workspace's debug build (`make e2e` builds the ones the tests run).
pub fn workspace_binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("debug").join(name)
}
