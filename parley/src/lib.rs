//! The `parley` binary's library: node startup, configuration, a cluster
//! client and the smoke workload, shared with the process-level tests and
//! the simulator. Under `--cfg madsim` only the client and the workload are
//! built: a simulated node runs the shard host directly on a simulated disk.

pub mod config;
#[cfg(not(madsim))]
pub mod node;
pub mod smoke;
