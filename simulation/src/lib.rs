//! A Parley cluster inside the madsim deterministic simulator.
//!
//! Each simulated node runs the real shard host (`parley_shards::NodeHost`)
//! and the real gRPC services on a `SimDisk`, which the harness keeps across
//! restarts so it can drop unsynced writes on a crash. The client side uses
//! the same cluster client and smoke workload as `parley smoke`. Under
//! `--cfg madsim` every clock read, random draw and network delay comes
//! from the seed, so one seed always gives one run.
//!
//! `workload` and `verify` also build without madsim: the chaos tool drives
//! real processes with the same clients and checks.

#[cfg(madsim)]
mod cluster;
#[cfg(madsim)]
pub mod faults;
#[cfg(madsim)]
pub mod run;
pub mod verify;
pub mod workload;

#[cfg(madsim)]
pub use cluster::{SimCluster, SimClusterOptions};

/// Environment variable that restricts a seeded test to one seed.
pub const SEED_VARIABLE: &str = "PARLEY_SEED";

/// Returns the command that replays `seed` of the named test with tracing.
pub fn replay_command(test_name: &str, seed: u64) -> String {
    format!(
        "{SEED_VARIABLE}={seed} RUST_LOG=debug RUSTFLAGS=\"--cfg madsim\" cargo test \
         --target-dir target/madsim -p parley-simulation -- --exact {test_name} --nocapture"
    )
}

/// Returns `seeds`, or only the seed named by `PARLEY_SEED` when it is set.
///
/// # Panics
/// If `PARLEY_SEED` is set but is not an unsigned integer.
pub fn seeds_to_run(seeds: &[u64]) -> Vec<u64> {
    match std::env::var(SEED_VARIABLE) {
        Ok(value) => {
            let seed = value.trim().parse().unwrap_or_else(|_| {
                panic!("{SEED_VARIABLE}={value:?} is not a seed; set it to an unsigned integer")
            });
            vec![seed]
        }
        Err(_) => seeds.to_vec(),
    }
}

/// Installs a tracing subscriber that follows `RUST_LOG` (default: warn).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "warn,openraft=off".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
