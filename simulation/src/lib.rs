//! A Parley cluster inside the madsim deterministic simulator.
//!
//! Each simulated node runs the real shard host (`parley_shards::NodeHost`)
//! and the real gRPC services on a `SimDisk`, which the harness keeps across
//! restarts so it can drop unsynced writes on a crash. The client side uses
//! the same cluster client and smoke workload as `parley smoke`. Under
//! `--cfg madsim` every clock read, random draw and network delay comes
//! from the seed, so one seed always gives one run.

#[cfg(madsim)]
mod cluster;

#[cfg(madsim)]
pub use cluster::{SimCluster, SimClusterOptions};

/// Returns the command that replays `seed` of the named test with tracing.
pub fn replay_command(test_name: &str, seed: u64) -> String {
    format!(
        "MADSIM_TEST_SEED={seed} RUST_LOG=debug RUSTFLAGS=\"--cfg madsim\" cargo test \
         --target-dir target/madsim -p parley-simulation -- --exact {test_name} --nocapture"
    )
}
