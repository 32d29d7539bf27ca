//! One chaos run from start to verdict. It starts the cluster and the
//! traffic, injects the seeded faults for the run's duration and heals.
//! Then it waits for the cluster to converge and for every acknowledged
//! message to reach every member device, reads every replica, judges the
//! history with `parley_core::checkers::check_all` and writes the reports.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use parley_core::checkers::{check_all, Violation};
use parley_simulation::verify;
use parley_simulation::workload::Recorder;

use crate::cluster::{Cluster, ClusterOptions};
use crate::console::{self, Stage};
use crate::crash;
use crate::html::{self, ReportInput};
use crate::inject::{self, FaultPhase};
use crate::schedule::{FaultKind, FaultMix, Schedule};
use crate::stats;
use crate::traffic::Traffic;

/// Invariant of a cluster that did not agree on leaders and applied
/// indexes after healing.
pub const CONVERGED: &str = "converged";

/// Invariant of a node or gateway that exited without being stopped.
pub const PROCESS_EXIT: &str = "process_exit";

/// Invariant of a panic found in a node's or gateway's log.
pub const PANIC: &str = "panic";

/// Invariant of a fault that could not be applied or undone, such as a
/// node that did not restart.
pub const FAULT_INJECTION: &str = "fault_injection";

/// The file in a report directory that marks it as written by this tool,
/// so a rerun may clear it.
const MARKER: &str = "chaos-run.txt";

/// How long the cluster may take to elect every shard's leader at start.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// How long the cluster may take to converge after healing.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Shards of the cluster, as `parley dev` runs it.
const SHARDS: u32 = 8;

/// Gateways of the cluster; devices alternate between them.
const GATEWAYS: usize = 2;

/// The settings of one run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub nodes: usize,
    pub duration: Duration,
    pub seed: u64,
    pub faults: FaultMix,
    pub report_dir: PathBuf,
    pub parley_bin: PathBuf,
    pub users: usize,
    /// Milliseconds each write to a node's sled files waits, as on a slow
    /// disk, when `power_loss` is selected; 0 for none.
    pub disk_delay_ms: u64,
    /// Seconds after healing within which every acknowledged message must
    /// reach every member device.
    pub liveness_secs: u64,
}

impl RunOptions {
    /// Returns the command that reruns this seed.
    pub fn rerun_command(&self, program: &str) -> String {
        format!(
            "{program} run --nodes {} --duration-secs {} --seed {} --faults {} --users {} \
             --disk-delay-ms {} --liveness-secs {} --report-dir {} --parley-bin {}",
            self.nodes,
            self.duration.as_secs(),
            self.seed,
            self.faults.to_flag(),
            self.users,
            self.disk_delay_ms,
            self.liveness_secs,
            self.report_dir.display(),
            self.parley_bin.display()
        )
    }
}

/// The outcome of a run that completed.
pub struct Verdict {
    pub violations: Vec<Violation>,
    /// Findings that do not fail the run, such as a node that needed
    /// SIGKILL after SIGTERM.
    pub warnings: Vec<String>,
}

/// Runs the chaos run and writes its reports. Errors are failures of the
/// run itself, such as a cluster that never started.
pub async fn run(options: &RunOptions, program: &str) -> Result<Verdict> {
    prepare_report_dir(&options.report_dir, &options.rerun_command(program))?;
    let recorder = Recorder::new();
    let stage = Stage::new(recorder.clone());
    let progress = tokio::spawn(console::print_progress(stage.clone(), recorder.clone()));
    let _progress_guard = AbortOnDrop(progress);
    stage.announce(&format!(
        "starting {} nodes, {GATEWAYS} gateways and {} proxies; files in {}",
        options.nodes,
        options.nodes * (options.nodes - 1),
        options.report_dir.display()
    ));
    let crash_shim = if options.faults.0.contains(&FaultKind::PowerLoss) {
        Some(crash::build_shim(&options.report_dir)?)
    } else {
        None
    };
    let mut cluster = Cluster::start(cluster_options(options, crash_shim), READY_TIMEOUT).await?;
    stage.set("registering users");
    let sends_per_device = options.duration.as_secs() as usize * 10 + 100;
    let mut traffic = Traffic::start(
        recorder.clone(),
        &cluster.gateway_addresses(),
        cluster.client().clone(),
        options.users,
        sends_per_device,
    )
    .await?;
    stage.announce(&format!(
        "traffic from {} devices; faults for {} s: {}",
        traffic.population.devices.len(),
        options.duration.as_secs(),
        options.faults.to_flag()
    ));

    let phase_start = recorder.now_ms();
    stage.set("quiet");
    let mut schedule = Schedule::new(options.seed, &options.faults, options.nodes);
    let deadline = tokio::time::Instant::now() + options.duration;
    let faults = inject::run_faults(&mut cluster, &mut schedule, deadline, &recorder, &stage).await;
    let mut violations = heal(&mut cluster, &mut traffic, &faults, &stage).await;
    let phase_end = recorder.now_ms();

    violations.extend(verify_end(&mut cluster, &mut traffic, &stage, options).await);
    let history = recorder.snapshot();
    violations.extend(check_all(&history));
    violations.extend(exit_violations(&cluster));
    let log_paths = cluster.log_paths();
    stage.set("stopping");
    let warnings = cluster.shutdown().await;
    violations.extend(panics_in_logs(&log_paths));

    let summary = stats::summarize(
        &history,
        &faults.spans,
        (phase_start, phase_end),
        &violations,
    );
    let html = html::render(&ReportInput {
        title: format!(
            "parley-chaos seed {} ({} nodes, {} s, faults {})",
            options.seed,
            options.nodes,
            options.duration.as_secs(),
            options.faults.to_flag()
        ),
        rerun_command: options.rerun_command(program),
        summary: &summary,
        spans: &faults.spans,
        violations: &violations,
        warnings: &warnings,
        phase: (phase_start, phase_end),
        end_ms: recorder.now_ms(),
    });
    write_reports(&options.report_dir, &history, &html)?;
    println!("\n{}", console::summary_table(&summary));
    Ok(Verdict {
        violations,
        warnings,
    })
}

fn cluster_options(options: &RunOptions, crash_shim: Option<PathBuf>) -> ClusterOptions {
    ClusterOptions {
        nodes: options.nodes,
        gateways: GATEWAYS,
        shards: SHARDS,
        dir: options.report_dir.clone(),
        parley_bin: options.parley_bin.clone(),
        crash_shim,
        disk_delay_ms: options.disk_delay_ms,
    }
}

/// Undoes every fault and stops the senders. Returns a violation per fault
/// that could not be applied or undone.
async fn heal(
    cluster: &mut Cluster,
    traffic: &mut Traffic,
    faults: &FaultPhase,
    stage: &Stage,
) -> Vec<Violation> {
    stage.set("healing");
    let mut problems = faults.problems.clone();
    problems.extend(cluster.heal().await);
    traffic.stop_senders().await;
    stage.announce(&format!(
        "healed after {} faults; senders stopped",
        faults.spans.len()
    ));
    problems
        .into_iter()
        .map(|detail| Violation {
            invariant: FAULT_INJECTION,
            detail,
        })
        .collect()
}

/// Waits for convergence and delivery, then reads every replica into the
/// history.
async fn verify_end(
    cluster: &mut Cluster,
    traffic: &mut Traffic,
    stage: &Stage,
    options: &RunOptions,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    stage.set("waiting for leaders and equal applied indexes");
    if let Err(reason) = wait_converged(cluster).await {
        violations.push(Violation {
            invariant: CONVERGED,
            detail: format!(
                "not converged {} s after healing: {reason}",
                CONVERGE_TIMEOUT.as_secs()
            ),
        });
    }
    stage.set("waiting for delivery to every device");
    violations.extend(
        verify::await_delivery(
            &traffic.population,
            &traffic.recorder,
            &traffic.cursors,
            options.liveness_secs,
        )
        .await,
    );
    traffic.stop_sessions().await;
    stage.set("reading every replica");
    verify::read_replicas(cluster.client(), &traffic.population, &traffic.recorder).await;
    stage.announce("verification done; checking the history");
    violations
}

async fn wait_converged(cluster: &mut Cluster) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    loop {
        cluster.check_exits().await;
        let outcome = cluster.converged().await;
        if outcome.is_ok() || started.elapsed() > CONVERGE_TIMEOUT {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn exit_violations(cluster: &Cluster) -> Vec<Violation> {
    cluster
        .unexpected_exits()
        .iter()
        .map(|detail| Violation {
            invariant: PROCESS_EXIT,
            detail: detail.clone(),
        })
        .collect()
}

/// Returns a violation per distinct panic message in the logs. A panic in a
/// spawned task (openraft's core, for one) leaves the process running, so
/// only the log shows it.
fn panics_in_logs(paths: &[PathBuf]) -> Vec<Violation> {
    let mut violations = Vec::new();
    for path in paths {
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        let mut seen = std::collections::BTreeSet::new();
        for line in text.lines().filter(|line| line.contains("panicked at")) {
            if seen.insert(line.to_string()) {
                violations.push(Violation {
                    invariant: PANIC,
                    detail: format!("{}: {line}", path.display()),
                });
            }
        }
    }
    violations
}

/// Creates the report directory, or clears a previous run's files from
/// it. Rejects a non-empty directory that this tool did not write.
fn prepare_report_dir(dir: &Path, command: &str) -> Result<()> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir)
            .with_context(|| format!("failed to read the report directory {}", dir.display()))?;
        if entries.next().is_some() {
            if !dir.join(MARKER).exists() {
                bail!(
                    "the report directory {} is not empty and contains no {MARKER}, so it is not \
                     a previous chaos run; pass a new or empty --report-dir",
                    dir.display()
                );
            }
            clear_previous_run(dir)?;
        }
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("failed to create the report directory {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), format!("{command}\n"))
        .with_context(|| format!("failed to write {}", dir.join(MARKER).display()))
}

/// Removes the files and node data directories a run writes.
fn clear_previous_run(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let is_node_dir = name.starts_with("node") && name[4..].parse::<u32>().is_ok();
        let outputs = [
            MARKER,
            "token.key",
            "history.txt",
            "report.html",
            "crash_shim.c",
            "libparley_crash.so",
        ];
        let is_output = name.ends_with(".log")
            || name.ends_with(".journal")
            || outputs.contains(&name.as_str());
        if is_node_dir && path.is_dir() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("failed to remove {}", path.display()))?;
        } else if is_output && path.is_file() {
            std::fs::remove_file(&path)
                .with_context(|| format!("failed to remove {}", path.display()))?;
        }
    }
    Ok(())
}

fn write_reports(dir: &Path, history: &parley_core::history::History, html: &str) -> Result<()> {
    console::write_history(history, &dir.join("history.txt"))?;
    let path = dir.join("report.html");
    std::fs::write(&path, html).with_context(|| format!("failed to write {}", path.display()))
}

/// Aborts a task when dropped, including on an early return.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_report_dir_is_rejected() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("notes.txt"), "mine").unwrap();
        let error = prepare_report_dir(directory.path(), "cmd")
            .unwrap_err()
            .to_string();
        assert!(error.contains("is not empty"), "{error}");
        assert!(directory.path().join("notes.txt").exists());
    }

    #[test]
    fn previous_run_is_cleared_but_other_files_kept() {
        let directory = tempfile::tempdir().unwrap();
        let dir = directory.path();
        prepare_report_dir(dir, "first").unwrap();
        std::fs::create_dir_all(dir.join("node1/sled")).unwrap();
        std::fs::write(dir.join("node1.log"), "log").unwrap();
        std::fs::write(dir.join("report.html"), "html").unwrap();
        std::fs::write(dir.join("keep.txt"), "keep").unwrap();
        prepare_report_dir(dir, "second").unwrap();
        assert!(!dir.join("node1").exists());
        assert!(!dir.join("node1.log").exists());
        assert!(!dir.join("report.html").exists());
        assert!(dir.join("keep.txt").exists());
        let marker = std::fs::read_to_string(dir.join(MARKER)).unwrap();
        assert_eq!(marker, "second\n");
    }

    #[test]
    fn panics_are_found_once_per_message() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("node2.log");
        let line = "thread 'tokio-runtime-worker' panicked at openraft/src/x.rs:1:1:";
        std::fs::write(&path, format!("ok\n{line}\n{line}\nok\n")).unwrap();
        let violations = panics_in_logs(&[path]);
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].invariant, PANIC);
        assert!(violations[0].detail.contains("node2.log"));
    }

    #[test]
    fn rerun_command_repeats_every_setting() {
        let options = RunOptions {
            nodes: 5,
            duration: Duration::from_secs(60),
            seed: 42,
            faults: "pause,delay".parse().unwrap(),
            report_dir: "out".into(),
            parley_bin: "bin/parley".into(),
            users: 6,
            disk_delay_ms: 0,
            liveness_secs: 60,
        };
        assert_eq!(
            options.rerun_command("parley-chaos"),
            "parley-chaos run --nodes 5 --duration-secs 60 --seed 42 --faults pause,delay \
             --users 6 --disk-delay-ms 0 --liveness-secs 60 --report-dir out \
             --parley-bin bin/parley"
        );
    }
}
