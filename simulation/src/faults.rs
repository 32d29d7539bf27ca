//! The faults the simulator injects, each named, scheduled from the seed
//! and healed after a seeded hold time.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use madsim::rand::{thread_rng, Rng};
use parley_raft::NodeId;
use parley_shards::client::ClusterClient;

use crate::cluster::SimCluster;

/// Every fault the simulator can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// The nodes split into two sides that cannot reach each other.
    SymmetricPartition,
    /// One node cannot send to another, but still receives from it.
    OneWayPartition,
    /// Every node reaches a majority, but no two the same one.
    MajorityRing,
    /// The node leading the most shards is cut off from the rest.
    LeaderIsolation,
    /// A share of all packets is dropped.
    PacketLoss,
    /// Every packet takes 20-300 ms.
    Delay,
    /// One node crashes, losing its unsynced writes, and restarts.
    CrashOne,
    /// A minority of nodes crash together and restart.
    CrashMinority,
    /// Every node crashes at once and restarts.
    PowerCut,
    /// One node stops running for longer than the election timeout.
    Pause,
    /// One node's clock is set minutes ahead or behind.
    ClockSkew,
    /// One node's clock drifts by a few ms per 100 ms.
    ClockDrift,
    /// One node's clock jumps forward or backward once.
    ClockJump,
}

impl FaultKind {
    pub const ALL: [FaultKind; 13] = [
        FaultKind::SymmetricPartition,
        FaultKind::OneWayPartition,
        FaultKind::MajorityRing,
        FaultKind::LeaderIsolation,
        FaultKind::PacketLoss,
        FaultKind::Delay,
        FaultKind::CrashOne,
        FaultKind::CrashMinority,
        FaultKind::PowerCut,
        FaultKind::Pause,
        FaultKind::ClockSkew,
        FaultKind::ClockDrift,
        FaultKind::ClockJump,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::SymmetricPartition => "symmetric_partition",
            FaultKind::OneWayPartition => "one_way_partition",
            FaultKind::MajorityRing => "majority_ring",
            FaultKind::LeaderIsolation => "leader_isolation",
            FaultKind::PacketLoss => "packet_loss",
            FaultKind::Delay => "delay",
            FaultKind::CrashOne => "crash_one",
            FaultKind::CrashMinority => "crash_minority",
            FaultKind::PowerCut => "power_cut",
            FaultKind::Pause => "pause",
            FaultKind::ClockSkew => "clock_skew",
            FaultKind::ClockDrift => "clock_drift",
            FaultKind::ClockJump => "clock_jump",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// The faults a run may inject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultMix(pub BTreeSet<FaultKind>);

impl FromStr for FaultMix {
    type Err = String;

    /// Parses `all`, `none`, or a comma-separated list of fault names.
    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "all" => return Ok(FaultMix(FaultKind::ALL.into_iter().collect())),
            "none" | "" => return Ok(FaultMix(BTreeSet::new())),
            _ => {}
        }
        let mut kinds = BTreeSet::new();
        for name in text.split(',').map(str::trim) {
            let kind = FaultKind::ALL
                .into_iter()
                .find(|kind| kind.name() == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = FaultKind::ALL.iter().map(|kind| kind.name()).collect();
                    format!(
                        "unknown fault {name:?}; use all, none, or a comma-separated list of {}",
                        names.join(", ")
                    )
                })?;
            kinds.insert(kind);
        }
        Ok(FaultMix(kinds))
    }
}

/// Counts of injected faults and torn writes by name.
pub type FaultCounts = BTreeMap<String, u64>;

fn count(counts: &mut FaultCounts, name: &str) {
    *counts.entry(name.to_string()).or_default() += 1;
}

fn random_node(cluster: &SimCluster) -> NodeId {
    let nodes = cluster.node_ids();
    nodes[thread_rng().gen_range(0..nodes.len())]
}

fn hold_time() -> Duration {
    Duration::from_millis(thread_rng().gen_range(500..4_000))
}

/// Injects seeded faults from `mix` until `until`, healing each one before
/// the next. Runs on a client node, so it can query node status.
pub async fn inject_until(
    cluster: &SimCluster,
    client: &ClusterClient,
    mix: &FaultMix,
    until: tokio::time::Instant,
) -> FaultCounts {
    let kinds: Vec<FaultKind> = mix.0.iter().copied().collect();
    let mut counts = FaultCounts::new();
    while !kinds.is_empty() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(200..2_000))).await;
        let kind = kinds[thread_rng().gen_range(0..kinds.len())];
        tracing::info!(fault = %kind, "injecting fault");
        count(&mut counts, kind.name());
        inject(cluster, client, kind, &mut counts).await;
    }
    cluster.heal_network();
    counts
}

async fn inject(
    cluster: &SimCluster,
    client: &ClusterClient,
    kind: FaultKind,
    counts: &mut FaultCounts,
) {
    let nodes = cluster.node_ids();
    match kind {
        FaultKind::SymmetricPartition => {
            let split = thread_rng().gen_range(1..nodes.len());
            let (left, right) = nodes.split_at(split);
            partition(cluster, left, right);
            tokio::time::sleep(hold_time()).await;
            cluster.heal_network();
        }
        FaultKind::OneWayPartition => {
            let from = random_node(cluster);
            let to = random_node(cluster);
            if from != to {
                cluster.cut_link(from, to);
            }
            tokio::time::sleep(hold_time()).await;
            cluster.heal_network();
        }
        FaultKind::MajorityRing => {
            majority_ring(cluster, &nodes);
            tokio::time::sleep(hold_time()).await;
            cluster.heal_network();
        }
        FaultKind::LeaderIsolation => {
            let leader = busiest_leader(client)
                .await
                .unwrap_or_else(|| random_node(cluster));
            let others: Vec<NodeId> = nodes
                .iter()
                .copied()
                .filter(|node| *node != leader)
                .collect();
            partition(cluster, &[leader], &others);
            tokio::time::sleep(hold_time()).await;
            cluster.heal_network();
        }
        FaultKind::PacketLoss => {
            let rate = thread_rng().gen_range(0.02..0.2);
            cluster.degrade_network(rate, Duration::from_millis(1)..Duration::from_millis(10));
            tokio::time::sleep(hold_time()).await;
            cluster.heal_network();
        }
        FaultKind::Delay => {
            cluster.degrade_network(0.0, Duration::from_millis(20)..Duration::from_millis(300));
            tokio::time::sleep(hold_time()).await;
            cluster.heal_network();
        }
        FaultKind::CrashOne => crash(cluster, &[random_node(cluster)], counts).await,
        FaultKind::CrashMinority => {
            let minority = (nodes.len() - 1) / 2;
            let start = thread_rng().gen_range(0..nodes.len());
            let victims: Vec<NodeId> = (0..minority.max(1))
                .map(|offset| nodes[(start + offset) % nodes.len()])
                .collect();
            crash(cluster, &victims, counts).await;
        }
        FaultKind::PowerCut => crash(cluster, &nodes, counts).await,
        FaultKind::Pause => {
            let node = random_node(cluster);
            cluster.pause(node);
            tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(1_000..3_000))).await;
            cluster.resume(node);
        }
        FaultKind::ClockSkew => {
            let node = random_node(cluster);
            let offset_ms = thread_rng().gen_range(-300_000..300_000);
            cluster.clock(node).set_offset_ms(offset_ms);
            tokio::time::sleep(hold_time()).await;
            cluster.clock(node).set_offset_ms(0);
        }
        FaultKind::ClockDrift => {
            let node = random_node(cluster);
            let step_ms: i64 = thread_rng().gen_range(-20..20);
            for step in 1..=30 {
                cluster.clock(node).set_offset_ms(step * step_ms);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            cluster.clock(node).set_offset_ms(0);
        }
        FaultKind::ClockJump => {
            let node = random_node(cluster);
            let jump_ms = if thread_rng().gen_bool(0.5) {
                3_600_000
            } else {
                -3_600_000
            };
            cluster.clock(node).set_offset_ms(jump_ms);
            tokio::time::sleep(hold_time()).await;
            cluster.clock(node).set_offset_ms(0);
        }
    }
}

fn partition(cluster: &SimCluster, left: &[NodeId], right: &[NodeId]) {
    for a in left {
        for b in right {
            cluster.cut_link(*a, *b);
            cluster.cut_link(*b, *a);
        }
    }
}

/// Cuts every link except those between ring neighbours, so each node
/// reaches itself and its two neighbours. With three nodes this leaves one
/// bridge node that sees both others.
fn majority_ring(cluster: &SimCluster, nodes: &[NodeId]) {
    let count = nodes.len();
    if count == 3 {
        cluster.cut_link(nodes[0], nodes[2]);
        cluster.cut_link(nodes[2], nodes[0]);
        return;
    }
    for (i, a) in nodes.iter().enumerate() {
        for (j, b) in nodes.iter().enumerate() {
            let distance = (i + count - j) % count;
            if i != j && distance != 1 && distance != count - 1 {
                cluster.cut_link(*a, *b);
            }
        }
    }
}

/// Crashes `victims`, each keeping a seeded prefix of its unsynced writes,
/// then restarts them after a seeded hold.
async fn crash(cluster: &SimCluster, victims: &[NodeId], counts: &mut FaultCounts) {
    for node in victims {
        let kept = thread_rng().gen_range(0..=3);
        let pending = cluster.crash(*node, kept);
        if kept > 0 && pending > kept {
            count(counts, "torn_write");
        }
    }
    tokio::time::sleep(hold_time()).await;
    for node in victims {
        cluster.restart(*node);
    }
}

/// Returns the node leading the most shards, if any node responds.
pub async fn busiest_leader(client: &ClusterClient) -> Option<NodeId> {
    let mut leaders: BTreeMap<NodeId, usize> = BTreeMap::new();
    for index in 0..client.addresses().len() {
        if let Ok(Ok(status)) =
            tokio::time::timeout(Duration::from_secs(1), client.status(index, false)).await
        {
            for shard in status.shards.iter().filter(|shard| shard.role == "leader") {
                *leaders.entry(status.node_id).or_default() += 1;
                let _ = shard;
            }
        }
    }
    leaders
        .into_iter()
        .max_by_key(|(node, count)| (*count, *node))
        .map(|(node, _)| node)
}
