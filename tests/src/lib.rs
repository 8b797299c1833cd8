//! Harness for the end-to-end tests and the operator benchmark: they run against the real control
//! plane that `tests/cluster/cluster.sh` starts on 127.0.0.1 (`make e2e` brings it up and down).
//!
//! Everything here talks only to that cluster's API server on loopback and to operator processes
//! it spawns on loopback; pod and Service addresses are read, never dialled.

pub mod audit;
pub mod cluster;
pub mod operator;
pub mod wait;

pub use cluster::{Cluster, TestNamespace};
pub use operator::{Operator, OperatorOptions};
pub use wait::wait_until;
