//! Key layout of shard data inside a node's storage engine.
//!
//! Every key starts with the shard id (4 bytes, big-endian) and a one-byte
//! tag, so one shard's records are contiguous and a range scan over one tag
//! never reaches another shard. Log entries append the index as 8 bytes
//! big-endian, so key order is index order.

use crate::types::ShardId;

const TAG_VOTE: u8 = b'v';
const TAG_COMMITTED: u8 = b'c';
const TAG_PURGED: u8 = b'p';
const TAG_LOG: u8 = b'l';
const TAG_SNAPSHOT: u8 = b's';

fn prefix(shard: ShardId, tag: u8) -> Vec<u8> {
    let mut key = Vec::with_capacity(13);
    key.extend_from_slice(&shard.to_be_bytes());
    key.push(tag);
    key
}

pub fn vote(shard: ShardId) -> Vec<u8> {
    prefix(shard, TAG_VOTE)
}

pub fn committed(shard: ShardId) -> Vec<u8> {
    prefix(shard, TAG_COMMITTED)
}

pub fn purged(shard: ShardId) -> Vec<u8> {
    prefix(shard, TAG_PURGED)
}

pub fn snapshot(shard: ShardId) -> Vec<u8> {
    prefix(shard, TAG_SNAPSHOT)
}

pub fn log_entry(shard: ShardId, index: u64) -> Vec<u8> {
    let mut key = prefix(shard, TAG_LOG);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_index() {
        let low = log_entry(3, 9);
        let high = log_entry(3, 10);
        assert!(low < high);
    }

    #[test]
    fn shards_do_not_interleave() {
        assert!(log_entry(1, u64::MAX) < log_entry(2, 0));
        assert!(snapshot(1) < vote(2));
    }
}
