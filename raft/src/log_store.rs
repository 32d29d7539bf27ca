//! The Raft log and vote of one shard replica, on the node's storage engine.
//!
//! Durability contract with openraft:
//! - `save_vote` returns only after the vote is synced;
//! - `append` hands the flush callback its result only after the entries
//!   are synced, so openraft never counts an unsynced entry towards a quorum;
//! - openraft calls these methods one at a time (`&mut self`), which keeps
//!   vote and log writes serialized.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::engine::{StorageEngine, WriteBatch};
use crate::error::EngineError;
use crate::keys;
use crate::types::{Entry, LogId, ShardId, StorageError, TypeConfig, Vote};

/// The log store of one shard replica. Clones share the same engine.
#[derive(Clone)]
pub struct LogStore {
    shard: ShardId,
    engine: Arc<dyn StorageEngine>,
}

impl LogStore {
    pub fn new(shard: ShardId, engine: Arc<dyn StorageEngine>) -> Self {
        LogStore { shard, engine }
    }

    fn read_record<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, EngineError> {
        let Some(bytes) = self.engine.get(key)? else {
            return Ok(None);
        };
        let value = bincode::deserialize(&bytes)
            .map_err(|error| EngineError::corrupt(self.location(key), error))?;
        Ok(Some(value))
    }

    fn location(&self, key: &[u8]) -> String {
        format!("shard {} key {:02x?}", self.shard, key)
    }

    fn last_entry_log_id(&self) -> Result<Option<LogId>, EngineError> {
        let start = keys::log_entry(self.shard, 0);
        let end = keys::log_entry(self.shard, u64::MAX);
        let pairs = self.engine.range(&start, &end)?;
        let Some((key, bytes)) = pairs.last() else {
            return Ok(None);
        };
        let entry: Entry = bincode::deserialize(bytes)
            .map_err(|error| EngineError::corrupt(self.location(key), error))?;
        Ok(Some(entry.log_id))
    }

    async fn write_synced(&self, batch: WriteBatch) -> Result<(), EngineError> {
        self.engine.write(batch)?;
        self.engine.sync().await
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // bincode cannot fail on these types: they hold no maps with
    // non-string keys and no unsized sequences.
    bincode::serialize(value).expect("bincode encodes Raft records")
}

fn index_bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&index) => index,
        Bound::Excluded(&index) => index.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&index) => index.saturating_add(1),
        Bound::Excluded(&index) => index,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = index_bounds(&range);
        if start >= end {
            return Ok(Vec::new());
        }
        let pairs = self
            .engine
            .range(
                &keys::log_entry(self.shard, start),
                &keys::log_entry(self.shard, end),
            )
            .map_err(|error| error.to_logs_error(false))?;

        let mut entries = Vec::with_capacity(pairs.len());
        for (key, bytes) in pairs {
            let entry: Entry = bincode::deserialize(&bytes).map_err(|error| {
                EngineError::corrupt(self.location(&key), error).to_logs_error(false)
            })?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self
            .read_record(&keys::purged(self.shard))
            .map_err(|error| error.to_logs_error(false))?;
        let last_entry = self
            .last_entry_log_id()
            .map_err(|error| error.to_logs_error(false))?;

        Ok(LogState {
            last_purged_log_id,
            last_log_id: last_entry.or(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put(keys::vote(self.shard), encode(vote));
        self.write_synced(batch)
            .await
            .map_err(|error| error.to_vote_error(true))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_record(&keys::vote(self.shard))
            .map_err(|error| error.to_vote_error(false))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // The committed id only lets a restarted replica re-apply entries
        // sooner; it need not be synced, because losing it only means
        // waiting for the leader to tell the replica again.
        let mut batch = WriteBatch::default();
        batch.put(keys::committed(self.shard), encode(&committed));
        self.engine
            .write(batch)
            .map_err(|error| error.to_logs_error(true))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed: Option<Option<LogId>> = self
            .read_record(&keys::committed(self.shard))
            .map_err(|error| error.to_logs_error(false))?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        for entry in entries {
            batch.put(
                keys::log_entry(self.shard, entry.log_id.index),
                encode(&entry),
            );
        }
        self.engine
            .write(batch)
            .map_err(|error| error.to_logs_error(true))?;

        let result = self.engine.sync().await;
        let io_result = match &result {
            Ok(()) => Ok(()),
            Err(error) => Err(std::io::Error::other(error.to_string())),
        };
        callback.log_io_completed(io_result);
        result.map_err(|error| error.to_logs_error(true))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(shard = self.shard, index = log_id.index, "truncating log");
        let start = keys::log_entry(self.shard, log_id.index);
        let end = keys::log_entry(self.shard, u64::MAX);
        let pairs = self
            .engine
            .range(&start, &end)
            .map_err(|error| error.to_logs_error(false))?;

        let mut batch = WriteBatch::default();
        for (key, _) in pairs {
            batch.delete(key);
        }
        self.write_synced(batch)
            .await
            .map_err(|error| error.to_logs_error(true))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        tracing::debug!(shard = self.shard, index = log_id.index, "purging log");
        let start = keys::log_entry(self.shard, 0);
        let end = keys::log_entry(self.shard, log_id.index.saturating_add(1));
        let pairs = self
            .engine
            .range(&start, &end)
            .map_err(|error| error.to_logs_error(false))?;

        // The purge marker goes in the same batch as the deletions, so a
        // crash never leaves a log whose first entry is past the marker.
        let mut batch = WriteBatch::default();
        batch.put(keys::purged(self.shard), encode(&log_id));
        for (key, _) in pairs {
            batch.delete(key);
        }
        self.write_synced(batch)
            .await
            .map_err(|error| error.to_logs_error(true))
    }
}
