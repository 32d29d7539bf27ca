//! One seeded run of a whole cluster: a safety phase with faults, then a
//! liveness phase with every fault healed, then the checkers.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use parley_core::checkers::{check_all, Violation};
use parley_core::history::Event;
use sha2::{Digest, Sha256};

use crate::cluster::{SimCluster, SimClusterOptions};
use crate::faults::{self, FaultCounts, FaultMix};
use crate::verify;
use crate::workload::{self, Cursors, Population, Recorder};

pub use crate::verify::LIVENESS;

/// Invariant name for a run that panicked.
pub const PANIC: &str = "panic";

/// Options of one seeded run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub seed: u64,
    pub faults: FaultMix,
    /// Simulated seconds of faults.
    pub safety_secs: u64,
    /// Simulated seconds, after healing, within which every acknowledged
    /// message must reach every member device.
    pub liveness_secs: u64,
    pub users: usize,
    pub sends_per_device: usize,
}

impl RunOptions {
    pub fn new(seed: u64, faults: FaultMix) -> Self {
        RunOptions {
            seed,
            faults,
            safety_secs: 20,
            liveness_secs: 30,
            users: 4,
            sends_per_device: 15,
        }
    }
}

/// The verdict of one seed.
#[derive(Clone, Debug)]
pub struct SeedReport {
    pub seed: u64,
    pub simulated_ms: u64,
    pub faults: FaultCounts,
    pub violations: Vec<Violation>,
    pub events: usize,
    pub acknowledged: usize,
    /// SHA-256 of the whole history: equal for two runs of one seed.
    pub history_digest: String,
}

/// Runs one seed in a fresh madsim runtime on a fresh thread. A panic in
/// the run (an assertion in the product, openraft's or the harness's)
/// becomes a `panic` violation of that seed.
///
/// The thread matters for replay: std's `HashMap` hashing keys are
/// per-thread state that madsim seeds once per thread, so a second run on
/// the same thread would hash differently and could take another path.
pub fn run_seed(options: &RunOptions) -> SeedReport {
    let thread_options = options.clone();
    let seed = options.seed;
    let outcome = std::thread::spawn(move || {
        let runtime =
            madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        runtime.block_on(scenario(thread_options))
    })
    .join();
    outcome.unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
            .unwrap_or_else(|| "a non-text panic".into());
        SeedReport {
            seed,
            simulated_ms: 0,
            faults: FaultCounts::new(),
            violations: vec![Violation {
                invariant: PANIC,
                detail: message,
            }],
            events: 0,
            acknowledged: 0,
            history_digest: String::new(),
        }
    })
}

/// Runs one whole scenario inside the current madsim runtime.
pub async fn scenario(options: RunOptions) -> SeedReport {
    let started = tokio::time::Instant::now();
    let mut cluster = SimCluster::start(&SimClusterOptions::default());
    let gateway = cluster.start_gateway(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cluster = Arc::new(cluster);
    let clients = cluster.client_node("clients", 1);
    let chaos = cluster.client_node("chaos", 2);
    let recorder = Recorder::new();
    let mut violations = Vec::new();

    let client = workload::connect(&gateway).await;
    let users = options.users;
    let setup_client = client.clone();
    let population = clients
        .spawn(async move { workload::populate(&setup_client, users).await })
        .await
        .expect("setup task");
    let population = match population {
        Ok(population) => population,
        Err(status) => {
            violations.push(Violation {
                invariant: "setup",
                detail: format!("population failed: {status}"),
            });
            return report(&options, started, FaultCounts::new(), violations, &recorder);
        }
    };

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let cursors: Cursors = Arc::default();
    let node_client = cluster.cluster_client();
    chaos.spawn(verify::poll_raft(
        node_client.clone(),
        recorder.clone(),
        stopped.clone(),
    ));
    let senders = start_devices(
        &clients,
        &client,
        &population,
        &options,
        &recorder,
        &cursors,
        &stopped,
    );

    let until = tokio::time::Instant::now() + Duration::from_secs(options.safety_secs);
    let (fault_cluster, fault_client, mix) =
        (cluster.clone(), node_client.clone(), options.faults.clone());
    let faults = chaos
        .spawn(
            async move { faults::inject_until(&fault_cluster, &fault_client, &mix, until).await },
        )
        .await
        .expect("fault task");
    for sender in senders {
        let _ = sender.await;
    }

    violations.extend(
        verify::await_delivery(&population, &recorder, &cursors, options.liveness_secs).await,
    );
    let _ = stop.send(true);
    let (read_client, read_recorder, read_population) =
        (node_client.clone(), recorder.clone(), population.clone());
    let unreadable = chaos
        .spawn(async move {
            verify::read_replicas(&read_client, &read_population, &read_recorder).await
        })
        .await
        .expect("replica read task");
    violations.extend(unreadable);

    violations.extend(check_all(&recorder.snapshot()));
    report(&options, started, faults, violations, &recorder)
}

fn start_devices(
    clients: &madsim::runtime::NodeHandle,
    client: &parley_gateway::proto::parley_client::ParleyClient<tonic::transport::Channel>,
    population: &Population,
    options: &RunOptions,
    recorder: &Recorder,
    cursors: &Cursors,
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> Vec<madsim::task::JoinHandle<()>> {
    let operations = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    if let Some(owner) = population.devices.first() {
        senders.push(clients.spawn(workload::run_member_churn(client.clone(), owner.clone(), 4)));
    }
    for device in &population.devices {
        let conversations = population.conversations_of(&device.user_id);
        clients.spawn(workload::run_session(
            client.clone(),
            device.clone(),
            conversations.clone(),
            recorder.clone(),
            cursors.clone(),
            stopped.clone(),
        ));
        senders.push(clients.spawn(workload::run_sender(
            client.clone(),
            device.clone(),
            conversations,
            options.sends_per_device,
            recorder.clone(),
            operations.clone(),
            cursors.clone(),
        )));
    }
    senders
}

fn report(
    options: &RunOptions,
    started: tokio::time::Instant,
    faults: FaultCounts,
    mut violations: Vec<Violation>,
    recorder: &Recorder,
) -> SeedReport {
    let history = recorder.snapshot();
    let acknowledged = history
        .events()
        .iter()
        .filter(|event| matches!(event, Event::SendAcked(_)))
        .count();
    let digest = Sha256::digest(format!("{:?}", history.events()).as_bytes());
    violations.sort_by(|a, b| (a.invariant, &a.detail).cmp(&(b.invariant, &b.detail)));
    SeedReport {
        seed: options.seed,
        simulated_ms: started.elapsed().as_millis() as u64,
        faults,
        violations,
        events: history.len(),
        acknowledged,
        history_digest: hex::encode(digest),
    }
}
