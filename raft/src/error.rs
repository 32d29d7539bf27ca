//! Errors of the Raft layer: the storage engine and the transport.
//!
//! Storage errors are fatal for the shard replica that hits them (openraft
//! stops the replica); transport errors are retried by openraft's
//! replication loop and by callers.

use crate::types::{NodeId, ShardId, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "failed to open the storage engine at {path}: {message}; check that the directory is \
         writable and that no other parley node uses it"
    )]
    Open { path: String, message: String },

    #[error("storage engine I/O failed: {message}; stop the node, check the disk and restart it")]
    Io { message: String },

    #[error(
        "corrupt record at {location}: {message}; this replica's data directory is damaged, \
         wipe it and let the replica catch up from its peers"
    )]
    Corrupt { location: String, message: String },

    /// Every replica of a shard writes the same format, so no peer can repair
    /// this as it can a corrupt record. Wiping the directory would lose data.
    #[error(
        "unreadable record at {location}: {message}; it was written by a parley build with \
         another state format, so run the build that wrote it and do not wipe the directory"
    )]
    UnsupportedFormat { location: String, message: String },
}

impl EngineError {
    #[cfg(not(madsim))]
    pub(crate) fn sled(source: sled::Error) -> Self {
        EngineError::Io {
            message: source.to_string(),
        }
    }

    pub(crate) fn corrupt(location: impl Into<String>, message: impl ToString) -> Self {
        EngineError::Corrupt {
            location: location.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn to_logs_error(&self, write: bool) -> StorageError {
        let source = openraft::AnyError::new(self);
        let io_error = if write {
            openraft::StorageIOError::write_logs(source)
        } else {
            openraft::StorageIOError::read_logs(source)
        };
        io_error.into()
    }

    pub(crate) fn to_vote_error(&self, write: bool) -> StorageError {
        let source = openraft::AnyError::new(self);
        let io_error = if write {
            openraft::StorageIOError::write_vote(source)
        } else {
            openraft::StorageIOError::read_vote(source)
        };
        io_error.into()
    }

    pub(crate) fn to_state_machine_error(&self, write: bool) -> StorageError {
        let source = openraft::AnyError::new(self);
        let io_error = if write {
            openraft::StorageIOError::write_state_machine(source)
        } else {
            openraft::StorageIOError::read_state_machine(source)
        };
        io_error.into()
    }
}

/// A failed call from this node to a peer's Raft transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("peer node {node} at {address} is unreachable: {message}")]
    Unreachable {
        node: NodeId,
        address: String,
        message: String,
    },

    #[error("call to peer node {node} for shard {shard} timed out after {timeout_ms} ms")]
    TimedOut {
        node: NodeId,
        shard: ShardId,
        timeout_ms: u64,
    },

    #[error("peer node {node} rejected the call for shard {shard}: {message}")]
    Rejected {
        node: NodeId,
        shard: ShardId,
        message: String,
    },

    #[error("failed to encode or decode a Raft message for shard {shard}: {message}")]
    Codec { shard: ShardId, message: String },
}
