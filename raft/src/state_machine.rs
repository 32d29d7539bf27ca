//! The applied state of one shard replica and its snapshots.
//!
//! The shard state (`parley_core::ShardState`) lives in memory. Only
//! snapshots are written to the storage engine; after a restart the replica
//! loads its last snapshot and openraft re-applies the committed log entries
//! after it, which gives the same state because applying is deterministic.
//! Readers share the applied state through `AppliedHandle`.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use parley_core::{CoreError, Limits, ShardState};
use serde::{Deserialize, Serialize};

use crate::commit_feed::{feed_position, CommitFeed, CommittedEntry};
use crate::engine::{StorageEngine, WriteBatch};
use crate::error::EngineError;
use crate::keys;
use crate::types::{
    Entry, LogId, Response, ShardId, Snapshot, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};

/// The applied state of a replica, shared by the state machine and readers.
pub struct Applied {
    pub state: ShardState,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// A cheap, cloneable handle for reading one replica's applied state.
#[derive(Clone)]
pub struct AppliedHandle {
    inner: Arc<RwLock<Applied>>,
    applied_index: tokio::sync::watch::Sender<u64>,
    feed: CommitFeed,
}

impl AppliedHandle {
    /// Locks the applied state for reading. Hold the guard briefly: applies
    /// wait for it.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        // A poisoned lock means a panic during apply, which already stopped
        // this replica's Raft task; readers may still see the last state.
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Applied> {
        self.inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns the feed of this replica's applied commands.
    pub fn feed(&self) -> &CommitFeed {
        &self.feed
    }

    /// Returns a receiver notified whenever the last applied log index changes.
    pub fn subscribe_applied_index(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied_index.subscribe()
    }
}

/// A snapshot as stored in the engine: metadata plus encoded shard state.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// The openraft state machine of one shard replica.
pub struct ShardStateMachine {
    shard: ShardId,
    engine: Arc<dyn StorageEngine>,
    applied: AppliedHandle,
    snapshots_built: u64,
}

impl ShardStateMachine {
    /// Opens the state machine, restoring the last stored snapshot if any.
    pub fn open(
        shard: ShardId,
        engine: Arc<dyn StorageEngine>,
        limits: Limits,
        feed_entries_max: usize,
    ) -> Result<Self, EngineError> {
        let stored = read_stored_snapshot(shard, engine.as_ref())?;
        let applied = match stored {
            Some(stored) => Applied {
                state: decode_state(shard, &stored.data)?,
                last_applied: stored.meta.last_log_id,
                membership: stored.meta.last_membership,
            },
            None => Applied {
                state: ShardState::new(limits),
                last_applied: None,
                membership: StoredMembership::default(),
            },
        };
        let applied_index = applied.last_applied.map_or(0, |log_id| log_id.index);
        let feed = CommitFeed::new(applied_index, feed_entries_max);
        let (applied_index, _) = tokio::sync::watch::channel(applied_index);
        let applied = AppliedHandle {
            inner: Arc::new(RwLock::new(applied)),
            applied_index,
            feed,
        };

        Ok(ShardStateMachine {
            shard,
            engine,
            applied,
            snapshots_built: 0,
        })
    }

    pub fn handle(&self) -> AppliedHandle {
        self.applied.clone()
    }
}

/// Writes a snapshot over the shard's previous one and syncs it.
async fn store_snapshot(
    shard: ShardId,
    engine: &dyn StorageEngine,
    stored: &StoredSnapshot,
) -> Result<(), EngineError> {
    let bytes = bincode::serialize(stored)
        .map_err(|error| EngineError::corrupt(format!("shard {shard} snapshot"), error))?;
    let mut batch = WriteBatch::default();
    batch.put(keys::snapshot(shard), bytes);
    engine.write(batch)?;
    engine.sync().await
}

fn read_stored_snapshot(
    shard: ShardId,
    engine: &dyn StorageEngine,
) -> Result<Option<StoredSnapshot>, EngineError> {
    let Some(bytes) = engine.get(&keys::snapshot(shard))? else {
        return Ok(None);
    };
    let stored = bincode::deserialize(&bytes)
        .map_err(|error| EngineError::corrupt(format!("shard {shard} snapshot"), error))?;
    Ok(Some(stored))
}

fn decode_state(shard: ShardId, data: &[u8]) -> Result<ShardState, EngineError> {
    ShardState::decode_snapshot(data).map_err(|error| {
        let location = format!("shard {shard} snapshot state");
        match error {
            CoreError::UnsupportedSnapshotFormat { .. } => EngineError::UnsupportedFormat {
                location,
                message: error.to_string(),
            },
            _ => EngineError::corrupt(location, error),
        }
    })
}

/// Builds snapshots from a replica's applied state.
pub struct SnapshotBuilder {
    shard: ShardId,
    engine: Arc<dyn StorageEngine>,
    applied: AppliedHandle,
    sequence: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // NOTE: encoding runs under the read lock, so applies on this shard
        // wait for it; a very large shard state stalls its replica meanwhile.
        let (data, last_log_id, last_membership) = {
            let applied = self.applied.read();
            (
                applied.state.encode_snapshot(),
                applied.last_applied,
                applied.membership.clone(),
            )
        };
        let snapshot_id = match last_log_id {
            Some(log_id) => format!(
                "{}-{}-{}-{}",
                self.shard, log_id.leader_id, log_id.index, self.sequence
            ),
            None => format!("{}-none-{}", self.shard, self.sequence),
        };
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id,
        };
        let stored = StoredSnapshot { meta, data };

        store_snapshot(self.shard, self.engine.as_ref(), &stored)
            .await
            .map_err(|error| error.to_state_machine_error(true))?;
        tracing::info!(shard = self.shard, snapshot_id = %stored.meta.snapshot_id, bytes = stored.data.len(), "built snapshot");

        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(stored.data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for ShardStateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.applied.read();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let last_index = {
            let mut applied = self.applied.write();
            for entry in entries {
                responses.push(apply_entry(&mut applied, entry, &self.applied.feed));
            }
            applied.last_applied.map_or(0, |log_id| log_id.index)
        };
        self.applied.applied_index.send_replace(last_index);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots_built += 1;
        SnapshotBuilder {
            shard: self.shard,
            engine: self.engine.clone(),
            applied: self.applied.clone(),
            sequence: self.snapshots_built,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Vec<u8>>, StorageError> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Vec<u8>>,
    ) -> Result<(), StorageError> {
        let state = decode_state(self.shard, &snapshot)
            .map_err(|error| error.to_state_machine_error(true))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: *snapshot,
        };
        store_snapshot(self.shard, self.engine.as_ref(), &stored)
            .await
            .map_err(|error| error.to_state_machine_error(true))?;

        let last_index = meta.last_log_id.map_or(0, |log_id| log_id.index);
        {
            let mut applied = self.applied.write();
            applied.state = state;
            applied.last_applied = meta.last_log_id;
            applied.membership = meta.last_membership.clone();
        }
        self.applied.feed.reset(last_index);
        self.applied.applied_index.send_replace(last_index);
        tracing::info!(shard = self.shard, snapshot_id = %meta.snapshot_id, last_index, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let stored = read_stored_snapshot(self.shard, self.engine.as_ref())
            .map_err(|error| error.to_state_machine_error(false))?;
        Ok(stored.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(stored.data),
        }))
    }
}

fn apply_entry(applied: &mut Applied, entry: Entry, feed: &CommitFeed) -> Response {
    applied.last_applied = Some(entry.log_id);
    match entry.payload {
        EntryPayload::Blank => Response::default(),
        EntryPayload::Normal(request) => {
            let mut results = Vec::with_capacity(request.commands.len());
            for (item, command) in request.commands.into_iter().enumerate() {
                let result = prost::Message::encode_to_vec(&applied.state.apply_encoded(&command));
                feed.push(CommittedEntry {
                    position: feed_position(entry.log_id.index, item),
                    command: command.into_vec().into(),
                    result: result.clone().into(),
                });
                results.push(serde_bytes::ByteBuf::from(result));
            }
            Response { results }
        }
        EntryPayload::Membership(membership) => {
            applied.membership = StoredMembership::new(Some(entry.log_id), membership);
            Response::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use parley_core::proto::SnapshotEnvelope;
    use parley_core::SNAPSHOT_FORMAT_VERSION;
    use prost::Message;

    use super::*;

    #[test]
    fn snapshot_of_other_format_is_not_corrupt() {
        let bytes = ShardState::new(Limits::default()).encode_snapshot();
        let mut envelope =
            SnapshotEnvelope::decode(bytes.as_slice()).expect("the envelope decodes");
        envelope.format_version = SNAPSHOT_FORMAT_VERSION + 1;

        let error = decode_state(3, &envelope.encode_to_vec()).expect_err("format is rejected");

        assert!(
            matches!(error, EngineError::UnsupportedFormat { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("do not wipe"), "{error}");
    }

    #[test]
    fn garbage_snapshot_is_corrupt() {
        let error = decode_state(3, b"not a snapshot").expect_err("garbage is rejected");

        assert!(matches!(error, EngineError::Corrupt { .. }), "{error}");
    }
}
