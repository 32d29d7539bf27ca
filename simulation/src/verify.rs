//! Checks shared by simulated and real runs: waiting for every
//! acknowledged message to reach every member device, sampling each
//! replica's Raft state, and reading every replica's final copy of every
//! conversation into the history.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use parley_core::checkers::Violation;
use parley_core::history::{Event, History, ObservedMessage, RaftObserved, ReplicaRead};
use parley_shards::client::ClusterClient;

use crate::workload::{device_key, Cursors, Population, Recorder};

/// Invariant name of the liveness check.
pub const LIVENESS: &str = "liveness_delivery";

/// Waits until every member device has every acknowledged message, and
/// reports the devices still missing some after `bound_secs`.
pub async fn await_delivery(
    population: &Population,
    recorder: &Recorder,
    cursors: &Cursors,
    bound_secs: u64,
) -> Vec<Violation> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(bound_secs);
    loop {
        let missing = missing_deliveries(population, &recorder.snapshot(), cursors);
        if missing.is_empty() {
            return Vec::new();
        }
        if tokio::time::Instant::now() > deadline {
            return missing
                .into_iter()
                .map(|detail| Violation {
                    invariant: LIVENESS,
                    detail: format!("{detail} {bound_secs} s after healing"),
                })
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn missing_deliveries(
    population: &Population,
    history: &History,
    cursors: &Cursors,
) -> Vec<String> {
    let mut acknowledged: BTreeMap<&str, u64> = BTreeMap::new();
    for event in history.events() {
        if let Event::SendAcked(acked) = event {
            let highest = acknowledged
                .entry(acked.conversation_id.as_str())
                .or_default();
            *highest = (*highest).max(acked.seq);
        }
    }
    let cursors = cursors
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut missing = Vec::new();
    for device in &population.devices {
        for conversation_id in population.conversations_of(&device.user_id) {
            let expected = acknowledged
                .get(conversation_id.as_str())
                .copied()
                .unwrap_or(0);
            let have = cursors
                .get(&(device_key(device), conversation_id.clone()))
                .copied()
                .unwrap_or(0);
            if have < expected {
                missing.push(format!(
                    "device {} has {conversation_id} up to seq {have}, but seq {expected} was acknowledged",
                    device_key(device)
                ));
            }
        }
    }
    missing
}

/// Records each node's Raft view of every shard until stopped.
pub async fn poll_raft(
    client: ClusterClient,
    recorder: Recorder,
    stopped: tokio::sync::watch::Receiver<bool>,
) {
    while !*stopped.borrow() {
        for index in 0..client.addresses().len() {
            let Ok(Ok(status)) =
                tokio::time::timeout(Duration::from_secs(1), client.status(index, false)).await
            else {
                continue;
            };
            for shard in status.shards {
                let committed = if shard.last_applied_index > 0 {
                    vec![(shard.last_applied_index, shard.last_applied_term)]
                } else {
                    Vec::new()
                };
                recorder.record(RaftObserved {
                    node_id: status.node_id,
                    shard_id: u64::from(shard.shard_id),
                    term: shard.vote_term,
                    leader: (shard.vote_committed && shard.vote_node_id == status.node_id)
                        .then_some(status.node_id),
                    committed,
                    at_ms: recorder.now_ms(),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Reads every conversation from every replica after healing.
pub async fn read_replicas(
    client: &ClusterClient,
    population: &Population,
    recorder: &Recorder,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut hosted: Vec<(usize, u64, BTreeSet<u32>, u32)> = Vec::new();
    for index in 0..client.addresses().len() {
        match client.status(index, false).await {
            Ok(status) => hosted.push((
                index,
                status.node_id,
                status.shards.iter().map(|shard| shard.shard_id).collect(),
                status.shard_count,
            )),
            Err(error) => violations.push(unreadable(format!(
                "node {} did not report its status after healing: {error}",
                client.addresses()[index]
            ))),
        }
    }
    for (conversation_id, members) in &population.conversations {
        let reader = &members[0];
        let linearizable = client
            .history_linearizable(conversation_id, reader, Duration::from_secs(10))
            .await;
        let applied_index = match linearizable {
            Ok((_, applied_index)) => applied_index,
            Err(error) => {
                violations.push(unreadable(format!(
                    "linearizable read of {conversation_id} failed after healing: {error}"
                )));
                continue;
            }
        };
        for (index, node_id, shards, shard_count) in &hosted {
            let shard = parley_shards::shard_map::shard_of_id(conversation_id, *shard_count);
            if !shards.contains(&shard) {
                continue;
            }
            let read = client
                .history_all(
                    *index,
                    conversation_id,
                    reader,
                    parley_shards::proto::Consistency::Local,
                    applied_index,
                )
                .await;
            match read {
                Ok((messages, _)) => recorder.record(ReplicaRead {
                    node_id: *node_id,
                    shard_id: u64::from(shard),
                    conversation_id: conversation_id.clone(),
                    messages: messages
                        .into_iter()
                        .map(|message| ObservedMessage {
                            seq: message.seq,
                            sender_user: message.sender_user,
                            sender_device: message.sender_device,
                            client_message_id: message.client_message_id,
                            server_time_ms: message.server_time_ms,
                        })
                        .collect(),
                    at_ms: recorder.now_ms(),
                }),
                Err(status) => violations.push(unreadable(format!(
                    "node {node_id} could not serve a local read of {conversation_id} at index \
                     {applied_index} after healing: {status}"
                ))),
            }
        }
    }
    violations
}

fn unreadable(detail: String) -> Violation {
    Violation {
        invariant: LIVENESS,
        detail,
    }
}
