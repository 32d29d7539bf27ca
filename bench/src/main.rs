//! `parley-bench run` and `parley-bench smoke`: parse and validate the
//! flags, raise the open-file limit, run the chosen scenarios in order and
//! print (and with `--write-docs`, write) the results.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use parley_bench::cli::{Cli, Command, Scenario, Settings};
use parley_bench::context::{Binaries, Context};
use parley_bench::machine::Machine;
use parley_bench::report::Report;
use parley_bench::scenarios;

/// Open files the bench and its servers may need: two per loopback TCP
/// connection (both ends in this machine), plus files and margin.
const OPEN_FILES_TARGET: u64 = 400_000;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Dropping the run on a signal kills every server it started (their
    // handles kill on drop) and removes its temporary folder.
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(cli) => Some(outcome),
            () = stop_requested() => None,
        }
    });
    match outcome {
        Some(Ok(true)) => ExitCode::SUCCESS,
        Some(Ok(false)) => ExitCode::FAILURE,
        Some(Err(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
        None => {
            eprintln!("stopped by a signal; every server was stopped and its data removed");
            ExitCode::from(130)
        }
    }
}

/// Completes on the first SIGINT or SIGTERM.
async fn stop_requested() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stop the bench with Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Returns whether every scenario succeeded.
async fn run(cli: Cli) -> Result<bool> {
    let (settings, common) = match &cli.command {
        Command::Run(args) => (Settings::from_run(args)?, args.common.clone()),
        Command::Smoke(common) => (Settings::smoke(common)?, common.clone()),
    };
    let open_files = parley_bench::process::raise_open_file_limit(OPEN_FILES_TARGET)?;
    tracing::info!(open_files, "open-file limit");
    check_docs_folder(settings.write_docs.as_deref())?;
    let binaries = Binaries::find(&common)?;
    // Only the appends scenario runs the peers.
    if !settings.peers_optional && settings.scenarios.contains(&Scenario::Appends) {
        for system in &settings.systems {
            if let Err(reason) = binaries.of(*system) {
                anyhow::bail!("{reason}");
            }
        }
    }
    let context = Context::new(settings, binaries, open_files, common.keep_data)?;
    let machine = Machine::probe(context.root())?;
    println!("{}", machine.to_text());

    let mut report = Report::default();
    report
        .versions
        .push(parley_version(&context.binaries.parley));
    let mut crowd_done = false;
    for scenario in context.settings.scenarios.clone() {
        // Fan-out and connections share one cluster and its users.
        if matches!(scenario, Scenario::Fanout | Scenario::Connections) {
            if crowd_done {
                continue;
            }
            crowd_done = true;
        }
        if let Err(error) = run_scenario(&context, scenario, &mut report).await {
            let failure = format!("{scenario:?}: {error:#}");
            eprintln!("scenario failed: {failure}");
            report.failures.push(failure);
        }
    }
    if let Some(path) = &context.settings.write_docs {
        let command = std::env::args().collect::<Vec<_>>().join(" ");
        report.write_markdown(path, &machine, &command)?;
        println!("wrote {}", path.display());
    }
    Ok(report.failures.is_empty())
}

/// Fails before any server starts when the results could not be written
/// at the end.
fn check_docs_folder(path: Option<&std::path::Path>) -> Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => std::path::Path::new("."),
    };
    if path.is_dir() {
        anyhow::bail!(
            "--write-docs {} is a folder; pass a file path such as {}",
            path.display(),
            path.join("benchmarks.md").display()
        );
    }
    if !folder.is_dir() {
        anyhow::bail!(
            "--write-docs {}: folder {} does not exist; create it or pass a path in an \
             existing folder",
            path.display(),
            folder.display()
        );
    }
    Ok(())
}

/// Returns the Parley build under test: the git commit of the working
/// directory (with `-dirty` for uncommitted changes) and the binary path.
fn parley_version(binary: &std::path::Path) -> String {
    let commit = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown commit".to_string());
    format!("parley {commit} ({})", binary.display())
}

async fn run_scenario(context: &Context, scenario: Scenario, report: &mut Report) -> Result<()> {
    match scenario {
        Scenario::Appends => scenarios::appends::run(context, report).await,
        Scenario::Failover => scenarios::failover::run(context, report).await,
        Scenario::Delivery => scenarios::delivery::run(context, report).await,
        Scenario::Typing => scenarios::typing::run(context, report).await,
        Scenario::Fanout | Scenario::Connections => scenarios::crowd::run(context, report).await,
    }
}
