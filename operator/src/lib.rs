//! msa-operator: runs a whole microservice application from one `MicroserviceApp`.
//!
//! The reconcile is a pipeline: [`validate`] the spec, [`build`] the children (pure), apply
//! those that [`drift`] says differ from the cache, then compute and write [`status`] only when
//! it changed. Only [`reconcile`] holds a client.

pub mod app_index;
pub mod build;
pub mod component;
pub mod conditions;
pub mod config_sources;
pub mod controller;
pub mod crd;
pub mod crd_upgrade;
pub mod drift;
pub mod error;
pub mod facts;
pub mod http;
pub mod install_check;
pub mod labels;
pub mod leader;
pub mod lease;
pub mod metrics;
pub mod ownership;
pub mod pacing;
pub mod reconcile;
pub mod scope;
pub mod stateful_rollout;
pub mod status;
pub mod storage;
pub mod unreadable;
pub mod validate;
