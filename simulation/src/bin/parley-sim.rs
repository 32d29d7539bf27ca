//! `parley-sim`: runs K seeds of the whole cluster under madsim with a
//! chosen fault mix, prints a verdict per seed and a summary, and for every
//! failing seed the command that replays it with full tracing.
//!
//! Build and run it with the simulator enabled:
//! `RUSTFLAGS="--cfg madsim" cargo run --release -p parley-simulation --bin parley-sim
//! --target-dir target/madsim -- --seeds 100 --faults all`

#[cfg(not(madsim))]
fn main() {
    eprintln!(
        "parley-sim runs only in a simulator build: RUSTFLAGS=\"--cfg madsim\" cargo run --release \
         -p parley-simulation --bin parley-sim --target-dir target/madsim -- --seeds 10"
    );
    std::process::exit(2);
}

#[cfg(madsim)]
fn main() {
    sweep::main();
}

#[cfg(madsim)]
mod sweep {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use parley_simulation::faults::FaultMix;
    use parley_simulation::run::{run_seed, RunOptions, SeedReport};

    struct Arguments {
        first_seed: u64,
        seeds: u64,
        faults: FaultMix,
        faults_text: String,
        jobs: usize,
        safety_secs: u64,
    }

    const USAGE: &str =
        "usage: parley-sim [--first-seed N] [--seeds K] [--faults all|none|a,b,...] \
                         [--jobs J] [--safety-secs S]";

    fn parse() -> Result<Arguments, String> {
        let mut arguments = Arguments {
            first_seed: 1,
            seeds: 32,
            faults: "all".parse()?,
            faults_text: "all".into(),
            jobs: 2,
            safety_secs: 20,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .ok_or_else(|| format!("{flag} needs a value; {USAGE}"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{flag} {value:?} is not a whole number"))
            };
            match flag.as_str() {
                "--first-seed" => arguments.first_seed = number()?,
                "--seeds" => arguments.seeds = number()?,
                "--jobs" => arguments.jobs = number()?.max(1) as usize,
                "--safety-secs" => arguments.safety_secs = number()?,
                "--faults" => {
                    arguments.faults = value.parse()?;
                    arguments.faults_text = value;
                }
                other => return Err(format!("unknown flag {other:?}; {USAGE}")),
            }
        }
        Ok(arguments)
    }

    pub fn main() {
        let arguments = match parse() {
            Ok(arguments) => arguments,
            Err(message) => {
                eprintln!("error: {message}");
                std::process::exit(2);
            }
        };
        parley_simulation::init_tracing();
        let started = Instant::now();
        let reports = run_all(&arguments);
        let wall_secs = started.elapsed().as_secs_f64();
        let failed = summarize(&arguments, &reports, wall_secs);
        std::process::exit(if failed { 1 } else { 0 });
    }

    fn run_all(arguments: &Arguments) -> Vec<SeedReport> {
        let next = Arc::new(AtomicUsize::new(0));
        let reports = Arc::new(Mutex::new(Vec::new()));
        let seeds: Vec<u64> =
            (arguments.first_seed..arguments.first_seed + arguments.seeds).collect();
        let workers: Vec<_> = (0..arguments.jobs)
            .map(|_| {
                let (next, reports, seeds) = (next.clone(), reports.clone(), seeds.clone());
                let (faults, safety_secs) = (arguments.faults.clone(), arguments.safety_secs);
                std::thread::spawn(move || loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(seed) = seeds.get(index).copied() else {
                        return;
                    };
                    let mut options = RunOptions::new(seed, faults.clone());
                    options.safety_secs = safety_secs;
                    let report = run_seed(&options);
                    print_verdict(&report, index + 1, seeds.len());
                    reports
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .push(report);
                })
            })
            .collect();
        for worker in workers {
            let _ = worker.join();
        }
        let mut reports = std::mem::take(
            &mut *reports
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        reports.sort_by_key(|report| report.seed);
        reports
    }

    fn print_verdict(report: &SeedReport, done: usize, total: usize) {
        let verdict = if report.violations.is_empty() {
            "ok"
        } else {
            "FAILED"
        };
        let faults: u64 = report.faults.values().sum();
        println!(
            "[{done}/{total}] seed {:>6} {verdict:<6} {:>5.1} sim s, {faults} faults, {} acked sends, {} events",
            report.seed,
            report.simulated_ms as f64 / 1000.0,
            report.acknowledged,
            report.events
        );
        // The first violation of each invariant, and how many more it had.
        let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
        for violation in &report.violations {
            let count = shown.entry(violation.invariant).or_default();
            if *count == 0 {
                println!("    {}: {}", violation.invariant, violation.detail);
            }
            *count += 1;
        }
        for (invariant, count) in shown.iter().filter(|(_, count)| **count > 1) {
            println!("    ({} more {invariant} violations)", count - 1);
        }
    }

    fn summarize(arguments: &Arguments, reports: &[SeedReport], wall_secs: f64) -> bool {
        let simulated_secs: f64 = reports
            .iter()
            .map(|report| report.simulated_ms as f64 / 1000.0)
            .sum();
        let mut faults: BTreeMap<String, u64> = BTreeMap::new();
        let mut violations: BTreeMap<&str, usize> = BTreeMap::new();
        for report in reports {
            for (kind, count) in &report.faults {
                *faults.entry(kind.clone()).or_default() += count;
            }
            for violation in &report.violations {
                *violations.entry(violation.invariant).or_default() += 1;
            }
        }
        println!("\nseeds run: {}", reports.len());
        println!(
            "simulated {simulated_secs:.0} s in {wall_secs:.0} s wall: {:.1} simulated s per wall s",
            simulated_secs / wall_secs.max(0.001)
        );
        println!("faults injected by kind:");
        for (kind, count) in &faults {
            println!("  {kind:<22} {count}");
        }
        println!(
            "violations by invariant: {}",
            if violations.is_empty() { "none" } else { "" }
        );
        for (invariant, count) in &violations {
            println!("  {invariant:<22} {count}");
        }
        let failing: Vec<&SeedReport> = reports
            .iter()
            .filter(|report| !report.violations.is_empty())
            .collect();
        for report in &failing {
            println!(
                "replay seed {}: RUST_LOG=info RUSTFLAGS=\"--cfg madsim\" cargo run --release -p parley-simulation \
                 --bin parley-sim --target-dir target/madsim -- --first-seed {} --seeds 1 --jobs 1 --faults {} --safety-secs {}",
                report.seed, report.seed, arguments.faults_text, arguments.safety_secs
            );
        }
        !failing.is_empty()
    }
}
