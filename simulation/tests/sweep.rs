//! The CI fault sweep: whole clusters (nodes, a gateway, client devices)
//! under every fault kind for a fixed set of seeds, judged by the history
//! checkers; and the determinism check on a faulted run.
#![cfg(madsim)]

use parley_simulation::faults::FaultMix;
use parley_simulation::run::{run_seed, RunOptions};
use parley_simulation::{init_tracing, seeds_to_run};

/// Seeds of the CI sweep.
const SWEEP_SEEDS: std::ops::RangeInclusive<u64> = 1..=32;

/// Seeds that once exposed a bug, kept so it stays fixed. Seed 1699 found
/// two replicas of shard 0 leading term 9 at once: openraft's default
/// leader id allows one leader per (term, node), and the cluster now runs
/// with its single-term-leader mode, one leader per term. Seed 1396 found
/// shard 6 without a leader 10 s after healing: its three replicas timed
/// out in the same tick of every round and split the vote each time.
const REGRESSION_SEEDS: &[u64] = &[1396, 1699];

fn all_faults() -> FaultMix {
    "all".parse().expect("`all` is a fault mix")
}

fn replay(seed: u64) -> String {
    format!(
        "RUST_LOG=info RUSTFLAGS=\"--cfg madsim\" cargo run --release -p parley-simulation --bin \
         parley-sim --target-dir target/madsim -- --first-seed {seed} --seeds 1 --jobs 1 --faults all"
    )
}

#[test]
fn fault_sweep_finds_no_violations() {
    init_tracing();
    let seeds: Vec<u64> = SWEEP_SEEDS.collect();
    let mut failures = Vec::new();
    for seed in seeds_to_run(&seeds) {
        let report = run_seed(&RunOptions::new(seed, all_faults()));
        eprintln!(
            "seed {seed}: {} violations, {} acked sends, faults {:?}",
            report.violations.len(),
            report.acknowledged,
            report.faults
        );
        if !report.violations.is_empty() {
            failures.push(format!(
                "seed {seed}: {:?}\n  replay: {}",
                report.violations,
                replay(seed)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn regression_seeds_find_no_violations() {
    init_tracing();
    for &seed in REGRESSION_SEEDS {
        let report = run_seed(&RunOptions::new(seed, all_faults()));
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:?}\n  replay: {}",
            report.violations,
            replay(seed)
        );
    }
}

#[test]
fn same_seed_gives_identical_history_under_faults() {
    init_tracing();
    let first = run_seed(&RunOptions::new(5, all_faults()));
    let second = run_seed(&RunOptions::new(5, all_faults()));
    assert!(first.events > 0, "the run recorded no history");
    assert_eq!(
        first.history_digest, second.history_digest,
        "seed 5 ran twice with different histories"
    );
    assert_eq!(
        first.faults, second.faults,
        "seed 5 injected different faults"
    );
}

#[test]
fn faulted_run_draws_identical_random_sequence() {
    init_tracing();
    madsim::runtime::Runtime::check_determinism(5, madsim::Config::default(), || async {
        parley_simulation::run::scenario(RunOptions::new(5, "all".parse().expect("fault mix")))
            .await
    });
}
