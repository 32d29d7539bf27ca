//! Maps conversation and user ids to shard groups, and shard groups to the
//! nodes that carry their replicas.
//!
//! An id hashes (64-bit FNV-1a over its bytes) to one of `BUCKET_COUNT`
//! fixed buckets, and buckets map to shards by `bucket % shard_count`. The
//! hash and bucket count never change, so a later shard split or move only
//! has to reassign buckets, never rehash ids.

use std::collections::BTreeMap;

use parley_core::proto::command::Kind;
use parley_core::proto::Command;
use parley_raft::{NodeId, ShardId};

/// Number of hash buckets ids map to; fixed for the life of a cluster.
pub const BUCKET_COUNT: u32 = 4096;

/// How many replicas each shard group has.
pub const REPLICAS_PER_SHARD: usize = 3;

fn fnv1a_64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Returns the bucket an id hashes to.
pub fn bucket_of(id: &str) -> u32 {
    (fnv1a_64(id.as_bytes()) % u64::from(BUCKET_COUNT)) as u32
}

/// Returns the id that places `command` on a shard: the user for user and
/// device registration, the conversation for everything else. None when
/// the command has no kind.
pub fn routing_id(command: &Command) -> Option<&str> {
    let id = match command.kind.as_ref()? {
        Kind::RegisterUser(register) => &register.user_id,
        Kind::RegisterDevice(register) => &register.user_id,
        Kind::CreateDirect(create) => &create.conversation_id,
        Kind::CreateGroup(create) => &create.conversation_id,
        Kind::AddMembers(add) => &add.conversation_id,
        Kind::RemoveMember(remove) => &remove.conversation_id,
        Kind::Append(append) => &append.conversation_id,
        Kind::MarkDelivered(mark) => &mark.conversation_id,
        Kind::MarkRead(mark) => &mark.conversation_id,
    };
    Some(id)
}

/// Returns the shard that owns an id in a cluster of `shard_count` shards.
pub fn shard_of_id(id: &str, shard_count: u32) -> ShardId {
    bucket_of(id) % shard_count
}

/// The fixed layout of a cluster: its shards and where their replicas live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardMap {
    shard_count: u32,
    /// Every node of the cluster with its address, by id.
    nodes: BTreeMap<NodeId, String>,
}

impl ShardMap {
    /// Builds the map. Callers validate that `shard_count > 0` and that
    /// there are at least `REPLICAS_PER_SHARD` nodes.
    pub fn new(shard_count: u32, nodes: BTreeMap<NodeId, String>) -> Self {
        assert!(shard_count > 0, "a cluster needs at least one shard");
        assert!(
            nodes.len() >= REPLICAS_PER_SHARD,
            "a cluster needs at least {REPLICAS_PER_SHARD} nodes, got {}",
            nodes.len()
        );
        ShardMap { shard_count, nodes }
    }

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    pub fn nodes(&self) -> &BTreeMap<NodeId, String> {
        &self.nodes
    }

    pub fn address_of(&self, node: NodeId) -> Option<&str> {
        self.nodes.get(&node).map(String::as_str)
    }

    /// Returns the shard that owns a conversation or user id.
    pub fn shard_of(&self, id: &str) -> ShardId {
        shard_of_id(id, self.shard_count)
    }

    /// Returns the shard a command belongs to: its conversation's shard, or
    /// for user and device registration the user's shard.
    pub fn shard_of_command(&self, command: &Command) -> Option<ShardId> {
        routing_id(command).map(|id| self.shard_of(id))
    }

    /// Returns the nodes carrying replicas of `shard`: `REPLICAS_PER_SHARD`
    /// consecutive nodes in id order, starting at `shard % node_count`, so
    /// replicas spread evenly.
    pub fn replicas_of(&self, shard: ShardId) -> Vec<NodeId> {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        let start = shard as usize % ids.len();
        (0..REPLICAS_PER_SHARD)
            .map(|offset| ids[(start + offset) % ids.len()])
            .collect()
    }

    /// Returns the shards with a replica on `node`.
    pub fn shards_on(&self, node: NodeId) -> Vec<ShardId> {
        (0..self.shard_count)
            .filter(|shard| self.replicas_of(*shard).contains(&node))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three_nodes() -> BTreeMap<NodeId, String> {
        (1..=3)
            .map(|id| (id, format!("127.0.0.1:{}", 7100 + id)))
            .collect()
    }

    #[test]
    fn bucket_of_is_stable_across_releases() {
        // These values pin the hash: changing them would move every
        // conversation of an existing cluster to another shard.
        assert_eq!(bucket_of(""), (0xcbf2_9ce4_8422_2325u64 % 4096) as u32);
        assert_eq!(bucket_of("alice"), bucket_of("alice"));
        assert_ne!(bucket_of("alice"), bucket_of("bob"));
    }

    #[test]
    fn every_shard_has_three_distinct_replicas() {
        let map = ShardMap::new(8, three_nodes());
        for shard in 0..8 {
            let mut replicas = map.replicas_of(shard);
            replicas.sort();
            replicas.dedup();
            assert_eq!(replicas.len(), REPLICAS_PER_SHARD);
        }
    }

    #[test]
    fn five_nodes_spread_replicas_evenly() {
        let nodes = (1..=5).map(|id| (id, format!("n{id}"))).collect();
        let map = ShardMap::new(10, nodes);
        for node in 1..=5 {
            assert_eq!(map.shards_on(node).len(), 6);
        }
    }

    #[test]
    fn ids_spread_over_all_shards() {
        let map = ShardMap::new(8, three_nodes());
        let mut counts = [0u32; 8];
        for index in 0..8000 {
            counts[map.shard_of(&format!("conversation-{index}")) as usize] += 1;
        }
        for count in counts {
            assert!(count > 700, "shard load {count} of 8000 is too uneven");
        }
    }
}
