//! A smoke workload and its verification, shared by `parley smoke` and the
//! process-level crash tests.
//!
//! The workload creates group conversations and appends to them from many
//! concurrent senders, retrying every failure with the same client message
//! id. Verification then checks, for every conversation:
//! - the linearizable history is gap-free (seqs 1..=n) and holds each
//!   acknowledged append exactly once, at the seq its acknowledgement gave;
//! - every replica's local history is identical to it.
//!
//! Finally it checks that all replicas of each shard report the same state
//! digest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use parley_core::proto::command::Kind;
use parley_core::proto::command_result::Outcome;
use parley_core::proto::{Append, Command, CreateGroup, RejectionCode, StoredMessage};
use parley_core::COMMAND_VERSION;
use parley_shards::proto::Consistency;

use parley_shards::client::ClusterClient;

/// The user every smoke append is sent as.
pub const SENDER_USER: &str = "smoke-alice";
const SENDER_DEVICE: &str = "smoke-alice-phone";
const OTHER_MEMBER: &str = "smoke-bob";

/// How long one proposal may keep retrying before the workload fails.
const PROPOSE_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct SmokeOptions {
    /// Prefix of every conversation and client message id of this run.
    pub run_id: String,
    pub conversations: usize,
    pub concurrency: usize,
    pub body_bytes: usize,
}

/// One acknowledged append.
#[derive(Clone, Debug)]
pub struct Ack {
    pub conversation_id: String,
    pub client_message_id: String,
    pub seq: u64,
    /// Commit feed position of the append (see `parley_raft::feed_position`).
    pub log_index: u64,
    /// Time from the first attempt to the acknowledgement, retries included.
    pub latency: Duration,
}

pub fn conversation_id(options: &SmokeOptions, index: usize) -> String {
    format!("{}-c{}", options.run_id, index % options.conversations)
}

fn client_message_id(options: &SmokeOptions, index: usize) -> String {
    format!("{}-m{index}", options.run_id)
}

/// Deterministic body bytes, different for every append.
fn body(index: usize, body_bytes: usize) -> Vec<u8> {
    (0..body_bytes)
        .map(|offset| (index.wrapping_mul(31) + offset) as u8)
        .collect()
}

fn command(kind: Kind) -> Command {
    Command {
        version: COMMAND_VERSION,
        kind: Some(kind),
    }
}

/// Creates the run's group conversations; a conversation that a retried
/// create already made counts as created.
pub async fn create_conversations(client: &ClusterClient, options: &SmokeOptions) -> Result<()> {
    for index in 0..options.conversations {
        let create = CreateGroup {
            conversation_id: conversation_id(options, index),
            creator: SENDER_USER.to_string(),
            members: vec![OTHER_MEMBER.to_string()],
        };
        let reply = client
            .propose(command(Kind::CreateGroup(create)), PROPOSE_DEADLINE)
            .await?;
        match reply.result.and_then(|result| result.outcome) {
            Some(Outcome::ConversationCreated(_)) => {}
            Some(Outcome::Rejected(rejection))
                if rejection.code == RejectionCode::ConversationExists as i32 => {}
            Some(Outcome::Rejected(rejection)) => {
                bail!(
                    "creating conversation {index} was rejected: {}",
                    rejection.message
                )
            }
            other => bail!("creating conversation {index} returned {other:?}"),
        }
    }
    Ok(())
}

/// Appends messages `indexes` with `options.concurrency` concurrent
/// senders, calling `on_ack` after each acknowledgement.
pub async fn append_range(
    client: &ClusterClient,
    options: &SmokeOptions,
    indexes: std::ops::Range<usize>,
    on_ack: Arc<dyn Fn(&Ack) + Send + Sync>,
) -> Result<Vec<Ack>> {
    let next = Arc::new(AtomicUsize::new(indexes.start));
    let acks = Arc::new(Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for _ in 0..options.concurrency.max(1) {
        let (client, options, next, acks, on_ack) = (
            client.clone(),
            options.clone(),
            next.clone(),
            acks.clone(),
            on_ack.clone(),
        );
        let end = indexes.end;
        senders.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= end {
                    return Ok::<(), anyhow::Error>(());
                }
                let started = tokio::time::Instant::now();
                let mut ack = append_one(&client, &options, index).await?;
                ack.latency = started.elapsed();
                on_ack(&ack);
                acks.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(ack);
            }
        }));
    }
    for sender in senders {
        sender.await.context("a sender task panicked")??;
    }
    let acks = std::mem::take(&mut *acks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    Ok(acks)
}

async fn append_one(client: &ClusterClient, options: &SmokeOptions, index: usize) -> Result<Ack> {
    let append = Append {
        conversation_id: conversation_id(options, index),
        sender_user: SENDER_USER.to_string(),
        sender_device: SENDER_DEVICE.to_string(),
        client_message_id: client_message_id(options, index),
        body: body(index, options.body_bytes),
        proposer_time_ms: 0,
    };
    let reply = client
        .propose(command(Kind::Append(append.clone())), PROPOSE_DEADLINE)
        .await
        .with_context(|| format!("append {index} to {}", append.conversation_id))?;
    let log_index = reply.log_index;
    match reply.result.and_then(|result| result.outcome) {
        Some(Outcome::Appended(appended)) => Ok(Ack {
            conversation_id: append.conversation_id,
            client_message_id: append.client_message_id,
            seq: appended.seq,
            log_index,
            latency: Duration::ZERO,
        }),
        Some(Outcome::Rejected(rejection)) => bail!(
            "append {index} to {} was rejected: {}",
            append.conversation_id,
            rejection.message
        ),
        other => bail!("append {index} returned {other:?}"),
    }
}

/// Returns the append latency at each of `percentiles` (0 to 100), in
/// milliseconds, or an empty list when there are no acks.
pub fn latency_percentiles_ms(acks: &[Ack], percentiles: &[f64]) -> Vec<f64> {
    let mut latencies: Vec<Duration> = acks.iter().map(|ack| ack.latency).collect();
    latencies.sort_unstable();
    let Some(last) = latencies.len().checked_sub(1) else {
        return Vec::new();
    };
    percentiles
        .iter()
        .map(|percentile| {
            let rank = ((percentile / 100.0) * last as f64).round() as usize;
            latencies[rank.min(last)].as_secs_f64() * 1_000.0
        })
        .collect()
}

/// Counts of what verification checked.
#[derive(Debug)]
pub struct VerifyReport {
    pub messages: usize,
    pub conversations: usize,
    pub replica_reads: usize,
    pub shards_compared: usize,
}

impl std::fmt::Display for VerifyReport {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "verified {} messages in {} conversations; {} conversation replicas identical and \
             gap-free; {} shard digests equal",
            self.messages, self.conversations, self.replica_reads, self.shards_compared
        )
    }
}

/// Checks every conversation of the run against `acks` on every replica.
pub async fn verify(
    client: &ClusterClient,
    options: &SmokeOptions,
    acks: &[Ack],
) -> Result<VerifyReport> {
    let mut acks_by_conversation: BTreeMap<String, Vec<&Ack>> = BTreeMap::new();
    for ack in acks {
        acks_by_conversation
            .entry(ack.conversation_id.clone())
            .or_default()
            .push(ack);
    }
    let placement = replica_shards(client).await?;

    let mut report = VerifyReport {
        messages: 0,
        conversations: 0,
        replica_reads: 0,
        shards_compared: 0,
    };
    for index in 0..options.conversations {
        let conversation = conversation_id(options, index);
        let expected = acks_by_conversation
            .remove(&conversation)
            .unwrap_or_default();
        let (messages, applied_index) = client
            .history_linearizable(&conversation, SENDER_USER, Duration::from_secs(30))
            .await?;
        check_history(&conversation, &messages, &expected)?;
        report.messages += messages.len();
        report.conversations += 1;
        report.replica_reads +=
            compare_replicas(client, &placement, &conversation, &messages, applied_index).await?;
    }
    report.shards_compared = compare_digests(client).await?;
    Ok(report)
}

/// Checks one conversation: seqs 1..=n, no duplicate client message id,
/// and every acknowledgement present at its seq.
pub fn check_history(conversation: &str, messages: &[StoredMessage], acks: &[&Ack]) -> Result<()> {
    let mut client_ids = BTreeSet::new();
    for (position, message) in messages.iter().enumerate() {
        ensure!(
            message.seq == position as u64 + 1,
            "{conversation}: position {position} holds seq {} (gap or reorder)",
            message.seq
        );
        ensure!(
            client_ids.insert(message.client_message_id.clone()),
            "{conversation}: client message id {} appears twice (duplicate append)",
            message.client_message_id
        );
    }
    for ack in acks {
        let stored = messages.get(ack.seq as usize - 1).with_context(|| {
            format!(
                "{conversation}: acknowledged seq {} ({}) is missing (lost append)",
                ack.seq, ack.client_message_id
            )
        })?;
        ensure!(
            stored.client_message_id == ack.client_message_id,
            "{conversation}: seq {} holds {} but was acknowledged for {}",
            ack.seq,
            stored.client_message_id,
            ack.client_message_id
        );
    }
    ensure!(
        messages.len() == acks.len(),
        "{conversation}: {} messages stored but {} appends acknowledged",
        messages.len(),
        acks.len()
    );
    Ok(())
}

/// The shard count and, for each node index, the shards it carries.
struct Placement {
    shard_count: u32,
    node_shards: Vec<BTreeSet<u32>>,
}

async fn replica_shards(client: &ClusterClient) -> Result<Placement> {
    let mut placement = Placement {
        shard_count: 0,
        node_shards: Vec::new(),
    };
    for index in 0..client.addresses().len() {
        let status = client.status(index, false).await?;
        placement.shard_count = status.shard_count;
        placement
            .node_shards
            .push(status.shards.iter().map(|shard| shard.shard_id).collect());
    }
    ensure!(placement.shard_count > 0, "the nodes report no shards");
    Ok(placement)
}

async fn compare_replicas(
    client: &ClusterClient,
    placement: &Placement,
    conversation: &str,
    expected: &[StoredMessage],
    applied_index: u64,
) -> Result<usize> {
    let shard = parley_shards::shard_map::shard_of_id(conversation, placement.shard_count);
    let mut reads = 0;
    for (index, shards) in placement.node_shards.iter().enumerate() {
        if !shards.contains(&shard) {
            continue;
        }
        let (messages, _) = client
            .history_all(
                index,
                conversation,
                SENDER_USER,
                Consistency::Local,
                applied_index,
            )
            .await
            .with_context(|| {
                format!(
                    "local read of {conversation} on {}",
                    client.addresses()[index]
                )
            })?;
        ensure!(
            messages == expected,
            "{conversation}: replica on {} differs from the linearizable history ({} vs {} messages)",
            client.addresses()[index],
            messages.len(),
            expected.len()
        );
        reads += 1;
    }
    Ok(reads)
}

/// Waits until the replicas of every shard have applied the same index,
/// then checks that their state digests are equal. Returns the shard count.
pub async fn compare_digests(client: &ClusterClient) -> Result<usize> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut by_shard: BTreeMap<u32, Vec<(u64, u64, String)>> = BTreeMap::new();
        for index in 0..client.addresses().len() {
            let status = client.status(index, true).await?;
            for shard in status.shards {
                by_shard.entry(shard.shard_id).or_default().push((
                    status.node_id,
                    shard.last_applied_index,
                    shard.state_digest,
                ));
            }
        }
        let settled = by_shard.values().all(|replicas| {
            replicas
                .iter()
                .all(|(_, applied, _)| *applied == replicas[0].1)
        });
        if settled {
            for (shard, replicas) in &by_shard {
                let digests: BTreeSet<_> = replicas.iter().map(|(_, _, digest)| digest).collect();
                ensure!(
                    digests.len() == 1,
                    "shard {shard}: replicas at the same index differ: {replicas:?}"
                );
            }
            return Ok(by_shard.len());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("replicas did not reach the same applied index within 30 s: {by_shard:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
