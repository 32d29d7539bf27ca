//! Applies planned faults to a running cluster, one at a time, and heals
//! each before the next. Every fault becomes a `FaultSpan` on the
//! recorder's clock, and the `Stage` shows it while it lasts.

use std::time::Duration;

use parley_simulation::workload::Recorder;

use crate::cluster::Cluster;
use crate::console::Stage;
use crate::proxy::{Direction, LinkMode};
use crate::schedule::{Fault, Schedule};
use crate::stats::FaultSpan;

/// How long a rolling restart waits for every shard to have a leader
/// before it stops the next node.
const ROLLING_LEADER_WAIT: Duration = Duration::from_secs(30);

/// How often sleeps look for children that exited on their own.
const EXIT_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// The record of the fault phase.
pub struct FaultPhase {
    pub spans: Vec<FaultSpan>,
    /// Faults that could not be applied or undone, such as a node that did
    /// not restart.
    pub problems: Vec<String>,
}

/// Injects faults from `schedule` until `deadline`. A fault that starts
/// before the deadline runs to its end.
pub async fn run_faults(
    cluster: &mut Cluster,
    schedule: &mut Schedule,
    deadline: tokio::time::Instant,
    recorder: &Recorder,
    stage: &Stage,
) -> FaultPhase {
    let mut phase = FaultPhase {
        spans: Vec::new(),
        problems: Vec::new(),
    };
    loop {
        let Some((quiet, fault)) = schedule.next_fault() else {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            sleep_watching(cluster, remaining).await;
            break;
        };
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        sleep_watching(cluster, quiet.min(remaining)).await;
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        let start_ms = recorder.now_ms();
        stage.set(&fault.to_string());
        stage.announce(&format!("fault: {fault}"));
        tracing::info!(fault = %fault, kind = %fault.kind(), "injecting fault");
        let mut description = fault.to_string();
        match apply(cluster, &fault).await {
            Ok(Some(note)) => description = format!("{description}; {note}"),
            Ok(None) => {}
            Err(problem) => {
                tracing::error!(fault = %fault, %problem, "fault injection failed");
                phase.problems.push(format!("{fault}: {problem}"));
            }
        }
        let end_ms = recorder.now_ms();
        stage.set("quiet");
        stage.announce(&format!(
            "healed after {:.1} s: {description}",
            (end_ms - start_ms) as f64 / 1000.0
        ));
        phase.spans.push(FaultSpan {
            kind: fault.kind(),
            description,
            start_ms,
            end_ms,
        });
    }
    phase
}

/// Applies one fault, keeps it for its planned time, and undoes it.
/// Returns a note on what the fault did beyond its plan, if any.
async fn apply(cluster: &mut Cluster, fault: &Fault) -> Result<Option<String>, String> {
    match fault {
        Fault::PowerLoss { down } => power_loss(cluster, *down).await.map(Some),
        Fault::RollingRestart => rolling_restart(cluster).await.map(|()| None),
        _ => apply_plain(cluster, fault).await.map(|()| None),
    }
}

/// Applies a fault that has nothing to report beyond success.
async fn apply_plain(cluster: &mut Cluster, fault: &Fault) -> Result<(), String> {
    match fault {
        Fault::KillRestart { node, down } => {
            cluster.kill_node(*node).await;
            sleep_watching(cluster, *down).await;
            start(cluster, *node).await
        }
        Fault::Pause { node, hold } => {
            cluster.pause_node(*node);
            sleep_watching(cluster, *hold).await;
            cluster.resume_node(*node);
            Ok(())
        }
        Fault::Partition { side, hold } => {
            let others: Vec<usize> = (0..cluster.node_count())
                .filter(|node| !side.contains(node))
                .collect();
            for a in side {
                for b in &others {
                    cluster.set_link(*a, *b, LinkMode::Reject);
                    cluster.set_link(*b, *a, LinkMode::Reject);
                }
            }
            sleep_watching(cluster, *hold).await;
            cluster.set_every_link(LinkMode::Pass);
            Ok(())
        }
        Fault::OneWayPartition { from, to, hold } => {
            // Bytes from `from` to `to` travel as requests on link
            // from->to and as responses on link to->from.
            cluster.set_link(*from, *to, LinkMode::Cut(Direction::Forward));
            cluster.set_link(*to, *from, LinkMode::Cut(Direction::Reverse));
            sleep_watching(cluster, *hold).await;
            cluster.set_every_link(LinkMode::Pass);
            Ok(())
        }
        Fault::Delay { per_chunk, hold } => {
            cluster.set_every_link(LinkMode::Delay(*per_chunk));
            sleep_watching(cluster, *hold).await;
            cluster.set_every_link(LinkMode::Pass);
            Ok(())
        }
        Fault::ClockSkew {
            node,
            offset_ms,
            hold,
        } => {
            let skewed = cluster.set_clock_offset(*node, *offset_ms).await;
            sleep_watching(cluster, *hold).await;
            let reset = cluster.set_clock_offset(*node, 0).await;
            skewed.and(reset).map_err(|error| format!("{error:#}"))
        }
        Fault::PowerCut { down } => {
            for node in 0..cluster.node_count() {
                cluster.kill_node(node).await;
            }
            sleep_watching(cluster, *down).await;
            start_every_node(cluster).await
        }
        Fault::RollingRestart | Fault::PowerLoss { .. } => {
            unreachable!("apply handles {fault} itself")
        }
    }
}

/// Starts every node that is down; returns every failure.
async fn start_every_node(cluster: &mut Cluster) -> Result<(), String> {
    let mut problems = Vec::new();
    for node in 0..cluster.node_count() {
        if let Err(problem) = start(cluster, node).await {
            problems.push(problem);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Kills every node, undoes the writes each had not synced, and restarts
/// them. Returns how many writes were undone.
async fn power_loss(cluster: &mut Cluster, down: Duration) -> Result<String, String> {
    let mut problems = Vec::new();
    let mut loss = crate::crash::Loss::default();
    for node in 0..cluster.node_count() {
        match cluster.power_off_node(node).await {
            Ok(node_loss) => {
                loss.writes += node_loss.writes;
                loss.bytes += node_loss.bytes;
            }
            Err(error) => problems.push(format!("node {}: {error:#}", node + 1)),
        }
    }
    sleep_watching(cluster, down).await;
    if let Err(problem) = start_every_node(cluster).await {
        problems.push(problem);
    }
    if !problems.is_empty() {
        return Err(problems.join("; "));
    }
    Ok(format!(
        "undid {} unsynced writes ({} bytes)",
        loss.writes, loss.bytes
    ))
}

/// Restarts every node in id order with SIGTERM, waiting for every shard
/// to have a leader in between.
async fn rolling_restart(cluster: &mut Cluster) -> Result<(), String> {
    for node in 0..cluster.node_count() {
        cluster.terminate_node(node).await;
        start(cluster, node).await?;
        if let Err(problem) = cluster.wait_for_leaders(ROLLING_LEADER_WAIT).await {
            // Slow elections are an availability finding, not a failure of
            // the fault itself, so the liveness check judges the outcome.
            tracing::warn!(node = node + 1, %problem, "no leaders after a rolling restart step");
        }
    }
    Ok(())
}

async fn start(cluster: &mut Cluster, node: usize) -> Result<(), String> {
    cluster
        .start_node(node)
        .await
        .map_err(|error| format!("{error:#}"))
}

/// Sleeps for `duration`, restarting children that exit on their own
/// meanwhile (`Cluster::check_exits` records them).
pub async fn sleep_watching(cluster: &mut Cluster, duration: Duration) {
    let until = tokio::time::Instant::now() + duration;
    loop {
        cluster.check_exits().await;
        let now = tokio::time::Instant::now();
        if now >= until {
            return;
        }
        tokio::time::sleep(EXIT_CHECK_INTERVAL.min(until - now)).await;
    }
}
