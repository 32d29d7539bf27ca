//! The `parley` binary's library: node startup, configuration, a cluster
//! client and the smoke workload, shared with the process-level tests.

pub mod client;
pub mod config;
pub mod node;
pub mod smoke;
