//! Scenario 1, replicated appends: every system acknowledges a write only
//! once a majority of 3 replicas has it, and the same body size, sender
//! counts and connection counts drive all three.
//!
//! - Parley: a client `Send` through the gateway. Sender i is the device of
//!   user i and appends to its own group, so the senders spread over the
//!   shards as separate conversations do.
//! - etcd: a `Put` of a new key per operation; all keys go through etcd's
//!   single Raft group.
//! - NATS: a JetStream publish to subject `bench.s<i>` of one R3 file
//!   stream (one Raft group), waiting for the stream's ack.
//!
//! First a closed-loop sweep over the sender counts per system, then an
//! open-loop run at one fixed rate for every system and sender count whose
//! closed-loop throughput reached that rate.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context as _, Result};

use crate::cli::System;
use crate::context::Context;
use crate::load::{self, Mode, RunSpec, Target};
use crate::report::{Report, Section, Table};
use crate::stats::{format_latency, format_rate, format_ratio, Summary};
use crate::systems::etcd::{self, EtcdCluster};
use crate::systems::nats::{self, NatsCluster};
use crate::systems::parley::ParleyCluster;
use crate::systems::parley_client::{self, Device, Pool};

/// Fraction of Parley's closed-loop peak used as the default open-loop rate.
const OPEN_RATE_OF_PEAK: f64 = 0.5;

/// Parley senders: device i appends to its own group `bench-c<i>`.
pub struct ParleyAppends {
    pool: Pool,
    senders: Vec<(Device, String)>,
    body: Vec<u8>,
    next_id: AtomicU64,
}

impl ParleyAppends {
    /// Registers `count` users and creates one group for each.
    pub async fn setup(
        pool: Pool,
        count: usize,
        body_bytes: usize,
        concurrency: usize,
    ) -> Result<ParleyAppends> {
        let bar = crate::progress::counter("registering senders", count as u64);
        let devices =
            parley_client::register_many(&pool, "sender", 0..count, concurrency, &bar).await?;
        bar.finish_and_clear();
        let bar = crate::progress::counter("creating groups", count as u64);
        let senders = create_groups(&pool, devices, concurrency, &bar).await?;
        bar.finish_and_clear();
        Ok(ParleyAppends {
            pool,
            senders,
            body: vec![b'p'; body_bytes],
            next_id: AtomicU64::new(0),
        })
    }
}

async fn create_groups(
    pool: &Pool,
    devices: Vec<Device>,
    concurrency: usize,
    bar: &indicatif::ProgressBar,
) -> Result<Vec<(Device, String)>> {
    use futures::StreamExt;
    futures::stream::iter(devices.into_iter().enumerate())
        .map(|(index, device)| {
            let client = pool.client(index);
            async move {
                let conversation = format!("bench-c{index}");
                parley_client::create_group(&client, &device, &conversation, &[]).await?;
                bar.inc(1);
                anyhow::Ok((device, conversation))
            }
        })
        .buffered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

impl ParleyAppends {
    /// Returns the group sender `sender` appends to.
    pub fn conversation(&self, sender: usize) -> &str {
        &self.senders[sender].1
    }

    pub fn senders(&self) -> usize {
        self.senders.len()
    }

    /// Sends one message as `sender` with `client_message_id`, so a retry
    /// with the same id is deduplicated by the cluster.
    pub async fn send_with_id(&self, sender: usize, client_message_id: String) -> Result<()> {
        let client = self.pool.client(sender);
        let (device, conversation) = &self.senders[sender];
        let body = self.body.clone();
        parley_client::send(client, device, conversation, client_message_id, body).await?;
        Ok(())
    }
}

impl Target for ParleyAppends {
    fn call(&self, sender: usize) -> impl Future<Output = Result<()>> + Send {
        let client = self.pool.client(sender);
        let (device, conversation) = &self.senders[sender];
        let id = format!("m{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let body = self.body.clone();
        async move {
            parley_client::send(client, device, conversation, id, body).await?;
            Ok(())
        }
    }
}

/// etcd senders: each Put writes the new key `/bench/<sender>/<n>`.
struct EtcdPuts {
    clients: Vec<etcd::KvClient>,
    body: Vec<u8>,
    next_key: AtomicU64,
}

impl Target for EtcdPuts {
    fn call(&self, sender: usize) -> impl Future<Output = Result<()>> + Send {
        let client = self.clients[sender % self.clients.len()].clone();
        let number = self.next_key.fetch_add(1, Ordering::Relaxed);
        let key = format!("/bench/{sender}/{number}").into_bytes();
        let value = self.body.clone();
        etcd::put(client, key, value, parley_client::SEND_TIMEOUT)
    }
}

/// NATS senders: sender i publishes to `bench.s<i>`.
struct NatsPublishes {
    contexts: Vec<async_nats::jetstream::Context>,
    body: bytes::Bytes,
}

impl Target for NatsPublishes {
    fn call(&self, sender: usize) -> impl Future<Output = Result<()>> + Send {
        let context = self.contexts[sender % self.contexts.len()].clone();
        let subject = format!("bench.s{sender}");
        let payload = self.body.clone();
        async move { nats::publish(&context, subject, payload).await }
    }
}

/// Results of one system: closed-loop and open-loop summaries by senders.
#[derive(Default)]
struct SystemResults {
    closed: BTreeMap<usize, Summary>,
    open: BTreeMap<usize, Result<Summary, String>>,
}

impl SystemResults {
    fn peak(&self) -> Option<(usize, Summary)> {
        self.closed
            .iter()
            .max_by(|a, b| a.1.throughput.total_cmp(&b.1.throughput))
            .map(|(senders, summary)| (*senders, *summary))
    }
}

/// Runs the scenario for every configured system whose binary exists.
pub async fn run(context: &Context, report: &mut Report) -> Result<()> {
    let settings = &context.settings;
    let mut results: BTreeMap<System, SystemResults> = BTreeMap::new();
    let mut open_rate = settings.open_rate;
    let mut notes = Vec::new();
    for system in settings.systems.clone() {
        let binary = match context.binaries.of(system) {
            Ok(binary) => binary.to_path_buf(),
            Err(reason) if settings.peers_optional => {
                notes.push(format!("{} skipped: {reason}", system.name()));
                continue;
            }
            Err(reason) => anyhow::bail!("{reason}"),
        };
        let mut system_results = SystemResults::default();
        run_system(
            context,
            system,
            &binary,
            &mut system_results,
            &mut open_rate,
            &mut notes,
            report,
        )
        .await
        .with_context(|| format!("appends on {}", system.name()))?;
        results.insert(system, system_results);
    }
    report.add(section(context, &results, open_rate, notes));
    check_every_write_succeeded(&results)
}

/// Fails the scenario when any run had a failed write or none succeeded,
/// after its table is reported, so a broken system cannot pass as slow.
fn check_every_write_succeeded(results: &BTreeMap<System, SystemResults>) -> Result<()> {
    let mut failed = Vec::new();
    for (system, system_results) in results {
        let closed = system_results.closed.iter();
        let open = system_results.open.iter().filter_map(|(senders, outcome)| {
            outcome.as_ref().ok().map(|summary| (senders, summary))
        });
        for (senders, summary) in closed.chain(open) {
            if summary.errors > 0 || summary.count == 0 {
                failed.push(format!(
                    "{} at {senders} senders: {} writes failed, {} succeeded",
                    system.name(),
                    summary.errors,
                    summary.count
                ));
            }
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{}; rerun with RUST_LOG=debug to see each failed write",
        failed.join("; ")
    );
    Ok(())
}

/// Starts `system`, runs both sweeps and stops it.
async fn run_system(
    context: &Context,
    system: System,
    binary: &std::path::Path,
    results: &mut SystemResults,
    open_rate: &mut Option<f64>,
    notes: &mut Vec<String>,
    report: &mut Report,
) -> Result<()> {
    let settings = &context.settings;
    let senders_max = settings.senders.iter().copied().max().unwrap_or(1);
    let folder = context.folder(&format!("appends-{}", system.name()));
    match system {
        System::Parley => {
            let mut cluster = ParleyCluster::start(binary, &folder, settings.shards).await?;
            let pool = Pool::connect(&cluster.gateway, settings.connections, &[]).await?;
            let target = ParleyAppends::setup(
                pool,
                senders_max,
                settings.body_bytes,
                settings.setup_concurrency,
            )
            .await;
            let outcome = match target {
                Ok(target) => sweep(context, system, Arc::new(target), results, open_rate).await,
                Err(error) => Err(error),
            };
            cluster.stop().await;
            outcome
        }
        System::Etcd => {
            let mut cluster = EtcdCluster::start(binary, &folder).await?;
            push_version(report, format!("etcd {}", cluster.version));
            notes.push(
                "etcd fsyncs its WAL before acknowledging entries (`etcd --help` of 3.4.23 \
                 lists no flag to turn that off)."
                    .to_string(),
            );
            let outcome = async {
                let clients = etcd::connect_pool(&cluster, settings.connections).await?;
                let target = EtcdPuts {
                    clients,
                    body: vec![b'e'; settings.body_bytes],
                    next_key: AtomicU64::new(0),
                };
                sweep(context, system, Arc::new(target), results, open_rate).await
            }
            .await;
            cluster.stop().await;
            outcome
        }
        System::Nats => {
            let mut cluster = NatsCluster::start(binary, &folder).await?;
            push_version(report, format!("nats-server {}", cluster.version));
            notes.push(format!(
                "NATS JetStream durability: {}.",
                cluster.durability
            ));
            let outcome = async {
                let contexts = nats::connect_pool(&cluster, settings.connections).await?;
                let target = NatsPublishes {
                    contexts,
                    body: bytes::Bytes::from(vec![b'n'; settings.body_bytes]),
                };
                sweep(context, system, Arc::new(target), results, open_rate).await
            }
            .await;
            cluster.stop().await;
            outcome
        }
    }
}

fn push_version(report: &mut Report, version: String) {
    if !report.versions.contains(&version) {
        report.versions.push(version);
    }
}

/// Runs the closed-loop sweep, fixes the open-loop rate from the first
/// system's peak if no rate was given, then runs the open-loop sweep.
async fn sweep<T: Target>(
    context: &Context,
    system: System,
    target: Arc<T>,
    results: &mut SystemResults,
    open_rate: &mut Option<f64>,
) -> Result<()> {
    let settings = &context.settings;
    for &senders in &settings.senders {
        let spec = RunSpec {
            label: format!("{} closed loop, {senders} senders", system.name()),
            senders,
            mode: Mode::Closed,
            warmup: settings.warmup,
            duration: settings.duration,
        };
        let summary = load::run(target.clone(), &spec).await;
        tracing::info!(
            system = system.name(),
            senders,
            throughput = summary.throughput,
            "closed loop"
        );
        results.closed.insert(senders, summary);
    }
    let rate = match *open_rate {
        Some(rate) => rate,
        None => {
            let peak = results
                .peak()
                .map_or(0.0, |(_, summary)| summary.throughput);
            let rate = (peak * OPEN_RATE_OF_PEAK).max(1.0);
            *open_rate = Some(rate);
            rate
        }
    };
    for &senders in &settings.senders {
        let closed = results.closed[&senders].throughput;
        if closed < rate {
            let reason = format!(
                "closed loop peaked at {} ops/s, below the rate",
                format_rate(closed)
            );
            results.open.insert(senders, Err(reason));
            continue;
        }
        let spec = RunSpec {
            label: format!("{} open loop, {senders} senders", system.name()),
            senders,
            mode: Mode::Open { rate },
            warmup: settings.warmup,
            duration: settings.duration,
        };
        let summary = load::run(target.clone(), &spec).await;
        results.open.insert(senders, Ok(summary));
    }
    Ok(())
}

fn section(
    context: &Context,
    results: &BTreeMap<System, SystemResults>,
    open_rate: Option<f64>,
    mut notes: Vec<String>,
) -> Section {
    let settings = &context.settings;
    let mut table = Table::new(&[
        "system",
        "loop",
        "senders",
        "ops/s",
        "p50",
        "p99",
        "p99.9",
        "max",
        "errors",
        "parley/peer ops/s",
        "parley/peer p99",
    ]);
    let parley = results.get(&System::Parley);
    for (system, system_results) in results {
        for (senders, summary) in &system_results.closed {
            let baseline = parley.and_then(|parley| parley.closed.get(senders));
            table.push(row(*system, "closed", *senders, summary, baseline));
        }
        for (senders, outcome) in &system_results.open {
            let label = format!("open {}/s", format_rate(open_rate.unwrap_or(0.0)));
            match outcome {
                Ok(summary) => {
                    let baseline = parley
                        .and_then(|parley| parley.open.get(senders))
                        .and_then(|outcome| outcome.as_ref().ok());
                    let mut cells = row(*system, &label, *senders, summary, baseline);
                    // Every system gets the same offered rate, so only the
                    // latency ratio is informative.
                    cells[OPS_RATIO_COLUMN].clear();
                    table.push(cells);
                }
                Err(reason) => notes.push(format!(
                    "{} open loop at {} skipped: {reason}",
                    system.name(),
                    plural(*senders, "sender")
                )),
            }
        }
        if let Some((senders, peak)) = system_results.peak() {
            notes.push(format!(
                "{} peaks at {}: {} ops/s, p99 {}",
                system.name(),
                plural(senders, "sender"),
                format_rate(peak.throughput),
                format_latency(peak.p99)
            ));
        }
    }
    notes.extend(peak_ratios(results));
    notes.insert(
        0,
        format!(
            "{}-byte bodies, {} client connections per system shared by the senders, each \
             sender with one write in flight; {} s measured after {} s warm-up; latency of an \
             open-loop write counts from its scheduled start.",
            settings.body_bytes,
            settings.connections,
            settings.duration.as_secs_f64(),
            settings.warmup.as_secs_f64()
        ),
    );
    notes.insert(
        1,
        format!(
            "Parley: {} shards over 3 nodes, each sender appending to its own group through \
             one gateway; etcd and NATS: one Raft group each (etcd's, and the R3 stream's).",
            settings.shards
        ),
    );
    Section {
        title: "Replicated appends".to_string(),
        table,
        notes,
    }
}

/// Index of the Parley/peer throughput ratio in a `row`.
const OPS_RATIO_COLUMN: usize = 9;

/// Compares each peer's closed-loop peak with Parley's, wherever on the
/// sender sweep each of them peaked.
fn peak_ratios(results: &BTreeMap<System, SystemResults>) -> Vec<String> {
    let Some((_, parley)) = results.get(&System::Parley).and_then(SystemResults::peak) else {
        return Vec::new();
    };
    results
        .iter()
        .filter(|(system, _)| **system != System::Parley)
        .filter_map(|(system, system_results)| {
            let (_, peak) = system_results.peak()?;
            Some(format!(
                "peak against peak, parley/{name}: {} ops/s, {} p99",
                format_ratio(parley.throughput, peak.throughput),
                format_ratio(parley.p99.as_secs_f64(), peak.p99.as_secs_f64()),
                name = system.name()
            ))
        })
        .collect()
}

/// Returns "1 sender" or "N senders".
fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

fn row(
    system: System,
    mode: &str,
    senders: usize,
    summary: &Summary,
    parley: Option<&Summary>,
) -> Vec<String> {
    let (throughput_ratio, p99_ratio) = match (system, parley) {
        (System::Parley, _) | (_, None) => ("".to_string(), "".to_string()),
        (_, Some(parley)) => (
            format_ratio(parley.throughput, summary.throughput),
            format_ratio(parley.p99.as_secs_f64(), summary.p99.as_secs_f64()),
        ),
    };
    vec![
        system.name().to_string(),
        mode.to_string(),
        senders.to_string(),
        format_rate(summary.throughput),
        format_latency(summary.p50),
        format_latency(summary.p99),
        format_latency(summary.p999),
        format_latency(summary.max),
        summary.errors.to_string(),
        throughput_ratio,
        p99_ratio,
    ]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::stats::Recorder;

    fn summary(successes: u64, errors: u64) -> Summary {
        let mut recorder = Recorder::new();
        for _ in 0..successes {
            recorder.record(Duration::from_millis(1));
        }
        for _ in 0..errors {
            recorder.record_error();
        }
        recorder.summary(Duration::from_secs(1))
    }

    fn results_with(closed: Summary) -> BTreeMap<System, SystemResults> {
        let mut system_results = SystemResults::default();
        system_results.closed.insert(10, closed);
        BTreeMap::from([(System::Etcd, system_results)])
    }

    #[test]
    fn write_check_passes_clean_runs() {
        assert!(check_every_write_succeeded(&results_with(summary(5, 0))).is_ok());
    }

    #[test]
    fn write_check_fails_on_errors() {
        let error = check_every_write_succeeded(&results_with(summary(5, 1)))
            .expect_err("a failed write fails the scenario")
            .to_string();
        assert!(error.contains("etcd at 10 senders"), "{error}");
        assert!(error.contains("1 writes failed"), "{error}");
    }

    #[test]
    fn write_check_fails_when_nothing_succeeded() {
        let result = check_every_write_succeeded(&results_with(summary(0, 0)));
        assert!(result.is_err());
    }

    #[test]
    fn peak_ratios_compare_each_systems_own_peak() {
        let mut parley = SystemResults::default();
        parley.closed.insert(10, summary(300, 0));
        parley.closed.insert(100, summary(900, 0));
        let mut etcd = SystemResults::default();
        etcd.closed.insert(10, summary(450, 0));
        etcd.closed.insert(100, summary(200, 0));
        let results = BTreeMap::from([(System::Parley, parley), (System::Etcd, etcd)]);

        let notes = peak_ratios(&results);

        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("parley/etcd: 2.00x ops/s"), "{notes:?}");
    }

    #[test]
    fn plural_counts_one_and_many() {
        assert_eq!(plural(1, "sender"), "1 sender");
        assert_eq!(plural(1000, "sender"), "1000 senders");
    }
}
