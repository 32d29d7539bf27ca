//! The `parley-chaos` command: parses the flags of `run`, finds the
//! `parley` binary, runs one chaos run, prints its verdict and the command
//! that reruns it, and stops every child on Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use parley_chaos::console::print_violations;
use parley_chaos::run::{run, RunOptions, Verdict};
use parley_chaos::schedule::FaultMix;

#[derive(Parser)]
#[command(
    name = "parley-chaos",
    version,
    about = "Break real parley processes under a seeded fault schedule and check the history"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Start a cluster, drive traffic through it under faults, then verify.
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Number of nodes: 3 or 5.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds of faults and traffic, before healing and verification.
    #[arg(long, default_value_t = 60)]
    duration_secs: u64,
    /// Seed of the fault schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Faults to inject: all, none, or a comma-separated list of
    /// kill_restart, pause, partition, one_way_partition, delay,
    /// clock_skew, rolling_restart, power_cut, power_loss. `all` is every
    /// kind but power_loss.
    #[arg(long, default_value = "all")]
    faults: FaultMix,
    /// Directory for node data, logs, history.txt and report.html.
    /// Default: target/chaos/seed-SEED.
    #[arg(long)]
    report_dir: Option<PathBuf>,
    /// The parley binary to run. Default: `parley` in the directory of
    /// this executable.
    #[arg(long)]
    parley_bin: Option<PathBuf>,
    /// Number of users; the first two get a second device.
    #[arg(long, default_value_t = 6)]
    users: usize,
    /// With power_loss: milliseconds each write to a node's sled files
    /// waits, one write at a time, as on a slow disk; 0 for the machine's
    /// own speed. It widens the window in which a power loss finds writes
    /// not yet synced, which is otherwise a fraction of a millisecond.
    #[arg(long, default_value_t = 10)]
    disk_delay_ms: u64,
    /// Seconds after healing within which every acknowledged message must
    /// reach every member device.
    #[arg(long, default_value_t = 60)]
    liveness_secs: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let Commands::Run(args) = Cli::parse().command;
    match execute(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn execute(args: RunArgs) -> Result<ExitCode> {
    let options = run_options(args)?;
    let program = std::env::args()
        .next()
        .unwrap_or_else(|| "parley-chaos".into());
    let rerun = options.rerun_command(&program);
    let Some(verdict) = run_until_interrupted(&options, &program)? else {
        // Dropping the run's future killed every child and proxy.
        eprintln!("interrupted; every node and gateway was stopped. Rerun with:\n  {rerun}");
        return Ok(ExitCode::from(130));
    };

    let report = options.report_dir.join("report.html");
    for warning in &verdict.warnings {
        println!("WARNING: {warning}");
    }
    if verdict.violations.is_empty() {
        println!(
            "PASS: seed {} found no violations; report {}",
            options.seed,
            report.display()
        );
        println!("rerun: {rerun}");
        return Ok(ExitCode::SUCCESS);
    }
    print_violations(&verdict.violations);
    println!(
        "FAIL: seed {} found {} violations; report {}",
        options.seed,
        verdict.violations.len(),
        report.display()
    );
    println!("rerun: {rerun}");
    Ok(ExitCode::from(1))
}

/// Runs the chaos run; returns None when SIGINT or SIGTERM stopped it.
fn run_until_interrupted(options: &RunOptions, program: &str) -> Result<Option<Verdict>> {
    // One thread runs the proxies, the traffic and the orchestration. The
    // workload's device tasks are !Send, so they need the LocalSet.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        tokio::select! {
            verdict = run(options, program) => verdict.map(Some),
            _ = tokio::signal::ctrl_c() => Ok(None),
            _ = terminate_signal() => Ok(None),
        }
    })
}

/// Completes on SIGTERM, or never if it cannot be watched.
async fn terminate_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut stream) => {
            stream.recv().await;
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch for SIGTERM; stop the run with Ctrl-C");
            std::future::pending::<()>().await;
        }
    }
}

fn run_options(args: RunArgs) -> Result<RunOptions> {
    if args.nodes != 3 && args.nodes != 5 {
        bail!("--nodes is {}; use 3 or 5", args.nodes);
    }
    if args.duration_secs == 0 {
        bail!("--duration-secs is 0; give at least 1 second of faults and traffic");
    }
    if args.liveness_secs == 0 {
        bail!(
            "--liveness-secs is 0; give delivery at least 1 second after healing, \
             for example the default 60"
        );
    }
    if args.users < 2 {
        bail!(
            "--users is {}; use at least 2, so conversations exist",
            args.users
        );
    }
    let parley_bin = match args.parley_bin {
        Some(path) => path,
        None => default_parley_bin()?,
    };
    if !parley_bin.is_file() {
        bail!(
            "the parley binary {} does not exist; build it with `cargo build --release -p parley` \
             (or `cargo build -p parley` for target/debug) or pass --parley-bin PATH",
            parley_bin.display()
        );
    }
    let report_dir = args
        .report_dir
        .unwrap_or_else(|| PathBuf::from(format!("target/chaos/seed-{}", args.seed)));
    Ok(RunOptions {
        nodes: args.nodes,
        duration: Duration::from_secs(args.duration_secs),
        seed: args.seed,
        faults: args.faults,
        report_dir,
        parley_bin,
        users: args.users,
        disk_delay_ms: args.disk_delay_ms,
        liveness_secs: args.liveness_secs,
    })
}

/// Returns `parley` beside this executable.
fn default_parley_bin() -> Result<PathBuf> {
    let executable =
        std::env::current_exe().context("failed to find the path of this parley-chaos binary")?;
    let directory = executable.parent().with_context(|| {
        format!(
            "{} has no parent directory; pass --parley-bin PATH",
            executable.display()
        )
    })?;
    Ok(directory.join("parley"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `run` with `extra` flags and an existing file as the binary.
    fn run_args(extra: &[&str]) -> RunArgs {
        let mut words = vec!["parley-chaos", "run", "--parley-bin", "Cargo.toml"];
        words.extend_from_slice(extra);
        let Commands::Run(args) = Cli::try_parse_from(words).expect("flags parse").command;
        args
    }

    #[test]
    fn defaults_are_accepted() {
        let options = run_options(run_args(&[])).expect("defaults are valid");

        assert_eq!(options.nodes, 3);
        assert_eq!(options.liveness_secs, 60);
    }

    #[test]
    fn invalid_sizes_are_rejected() {
        let cases: [(&[&str], &str); 4] = [
            (&["--nodes", "4"], "--nodes is 4"),
            (&["--duration-secs", "0"], "--duration-secs is 0"),
            (&["--liveness-secs", "0"], "--liveness-secs is 0"),
            (&["--users", "1"], "--users is 1"),
        ];
        for (flags, expected) in cases {
            let error = run_options(run_args(flags)).expect_err("flags are invalid");

            assert!(
                error.to_string().starts_with(expected),
                "{flags:?}: {error}"
            );
        }
    }
}
