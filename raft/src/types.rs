//! The openraft type configuration shared by every Parley shard group.
//!
//! A log entry carries a batch of encoded `parley_core::proto::Command`s as
//! opaque bytes, so the Raft layer never interprets application data. The
//! state machine decodes each command at apply time and rejects what it
//! cannot decode. Batching lets one entry, one fsync and one replication
//! round trip carry many concurrent proposals.

use serde::{Deserialize, Serialize};
/// The byte buffer commands and results are carried in; bincode encodes it
/// as one length-prefixed run rather than byte by byte.
pub use serde_bytes::ByteBuf;

/// Node ids are assigned by the operator and never reused for another node.
pub type NodeId = u64;

/// A shard group id; shard groups are numbered from 0.
pub type ShardId = u32;

/// Proposed commands, each encoded as `parley_core::proto::Command`,
/// applied in order as one log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub commands: Vec<ByteBuf>,
}

/// The outcomes of applying one log entry, one encoded
/// `parley_core::proto::CommandResult` per command of its `Request`, in
/// order. Blank and membership entries have none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub results: Vec<ByteBuf>,
}

openraft::declare_raft_types!(
    /// Parley's Raft types: byte commands, full-snapshot transfer as bytes.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Vec<u8>,
        AsyncRuntime = crate::runtime::Runtime,
);

pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Raft = openraft::Raft<TypeConfig>;
