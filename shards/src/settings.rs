//! Settings of a node and of the cluster it belongs to.
//!
//! Cluster settings (shard count, nodes, state machine limits, Raft timing)
//! must be identical on every node, because replicas of a shard apply the
//! same log and must reach the same state. Their digest travels with every
//! Raft call and is checked by the receiver.

use std::collections::BTreeMap;
use std::time::Duration;

use parley_core::Limits;
use parley_raft::NodeId;
use sha2::{Digest, Sha256};

use crate::batcher::BatchLimits;
use crate::error::ShardsError;
use crate::shard_map::{ShardMap, REPLICAS_PER_SHARD};

/// Raft timing and log retention, shared by every shard group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftTiming {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// A replica snapshots after this many entries since its last snapshot.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot, for slightly lagging peers.
    pub entries_kept_after_snapshot: u64,
    /// Largest number of entries in one AppendEntries call.
    pub append_entries_max: u64,
    /// Deadline for sending a whole snapshot to a lagging replica.
    pub snapshot_send_timeout_ms: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            // openraft 0.9 lets a follower that heard from its leader
            // campaign only after the leader lease (election_timeout_ms_max)
            // plus its own election timeout, checked on a tick of 1.5
            // heartbeats: 450 to 675 ms with these values. That bounds how
            // long a shard goes without a leader after its leader dies.
            // Shorter ranges round to fewer distinct tick counts, so split
            // votes get likelier; elections.rs breaks them.
            heartbeat_interval_ms: 50,
            election_timeout_ms_min: 150,
            election_timeout_ms_max: 300,
            snapshot_after_entries: 5_000,
            entries_kept_after_snapshot: 1_000,
            append_entries_max: 64,
            snapshot_send_timeout_ms: 30_000,
        }
    }
}

/// Everything every node of a cluster must agree on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    pub shard_count: u32,
    pub nodes: BTreeMap<NodeId, String>,
    pub limits: Limits,
    pub raft: RaftTiming,
    /// Largest gRPC message between nodes, in bytes.
    pub message_bytes_max: usize,
    /// Deadline for a proposal to commit, including forwarding.
    pub propose_timeout_ms: u64,
    /// Applied commands each replica keeps for gateways that resume their
    /// commit stream; an older resume point makes the gateway reload.
    pub commit_feed_entries_max: usize,
    /// Limits on grouping proposals into log entries. Nodes may differ
    /// here, so they are not part of the digest.
    pub proposal_batching: BatchLimits,
}

impl ClusterSettings {
    /// Returns settings for `nodes` with `shard_count` shards and defaults
    /// for everything else.
    pub fn new(shard_count: u32, nodes: BTreeMap<NodeId, String>) -> Self {
        ClusterSettings {
            shard_count,
            nodes,
            limits: Limits::default(),
            raft: RaftTiming::default(),
            message_bytes_max: 64 * 1024 * 1024,
            propose_timeout_ms: 5_000,
            commit_feed_entries_max: 16_384,
            proposal_batching: BatchLimits {
                write_timeout: Duration::from_millis(5_000),
                ..BatchLimits::default()
            },
        }
    }

    /// Checks the settings and names the first invalid value and its fix.
    pub fn validate(&self) -> Result<(), ShardsError> {
        if self.shard_count == 0 || self.shard_count > 4096 {
            return Err(ShardsError::InvalidSettings(format!(
                "shard_count is {}; set it between 1 and 4096",
                self.shard_count
            )));
        }
        if self.nodes.len() < REPLICAS_PER_SHARD {
            return Err(ShardsError::InvalidSettings(format!(
                "the cluster lists {} node(s); list at least {REPLICAS_PER_SHARD} with --peer ID=ADDRESS",
                self.nodes.len()
            )));
        }
        if let Some(id) = self.nodes.keys().find(|id| **id == 0) {
            return Err(ShardsError::InvalidSettings(format!(
                "node id {id} is reserved; number nodes from 1"
            )));
        }
        let raft = &self.raft;
        if raft.election_timeout_ms_min <= raft.heartbeat_interval_ms
            || raft.election_timeout_ms_max <= raft.election_timeout_ms_min
        {
            return Err(ShardsError::InvalidSettings(format!(
                "Raft timing heartbeat {} ms, election {}..{} ms is invalid; the heartbeat must be \
                 shorter than the minimum election timeout, which must be below the maximum",
                raft.heartbeat_interval_ms, raft.election_timeout_ms_min, raft.election_timeout_ms_max
            )));
        }
        self.limits
            .validate()
            .map_err(|error| ShardsError::InvalidSettings(error.to_string()))
    }

    pub fn shard_map(&self) -> ShardMap {
        ShardMap::new(self.shard_count, self.nodes.clone())
    }

    /// Returns a digest of every setting replicas must agree on.
    ///
    /// Node ids are covered but their addresses are not: each node may
    /// reach a peer through its own address for it (a proxy, a NAT). The
    /// command and snapshot format versions are covered too, so nodes whose
    /// builds apply commands or encode snapshots differently reject each
    /// other's Raft calls.
    pub fn digest(&self) -> u64 {
        let node_ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let canonical = format!(
            "shards={};nodes={:?};limits={:?};raft={:?};message_bytes_max={};\
             command_version={};snapshot_format={}",
            self.shard_count,
            node_ids,
            self.limits,
            self.raft,
            self.message_bytes_max,
            parley_core::COMMAND_VERSION,
            parley_core::SNAPSHOT_FORMAT_VERSION
        );
        let hash = Sha256::digest(canonical.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash[..8]);
        u64::from_be_bytes(first)
    }

    /// Returns openraft's configuration for every shard group.
    pub fn openraft_config(&self) -> Result<openraft::Config, ShardsError> {
        let raft = &self.raft;
        let config = openraft::Config {
            cluster_name: "parley".to_string(),
            heartbeat_interval: raft.heartbeat_interval_ms,
            election_timeout_min: raft.election_timeout_ms_min,
            election_timeout_max: raft.election_timeout_ms_max,
            max_payload_entries: raft.append_entries_max,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(raft.snapshot_after_entries),
            max_in_snapshot_log_to_keep: raft.entries_kept_after_snapshot,
            install_snapshot_timeout: raft.snapshot_send_timeout_ms,
            ..Default::default()
        };
        config
            .validate()
            .map_err(|error| ShardsError::InvalidSettings(format!("Raft settings: {error}")))
    }

    pub fn propose_timeout(&self) -> Duration {
        Duration::from_millis(self.propose_timeout_ms)
    }
}
