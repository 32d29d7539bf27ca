//! The `parley` binary's library: node startup, configuration, the dev
//! launcher, the chat client and the smoke workload, shared with the
//! process-level tests and the simulator. Under `--cfg madsim` only the
//! configuration and the workload are built: a simulated node runs the
//! shard host directly on a simulated disk.

#[cfg(not(madsim))]
pub mod chat;
pub mod config;
#[cfg(not(madsim))]
pub mod dev;
#[cfg(not(madsim))]
pub mod node;
pub mod smoke;
