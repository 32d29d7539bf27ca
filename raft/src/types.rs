//! The openraft type configuration shared by every Parley shard group.
//!
//! Log entries carry an encoded `parley_core::proto::Command` as opaque
//! bytes, so the Raft layer never interprets application data; the state
//! machine decodes it at apply time and rejects what it cannot decode.

use serde::{Deserialize, Serialize};

/// Node ids are assigned by the operator and never reused for another node.
pub type NodeId = u64;

/// A shard group id; shard groups are numbered from 0.
pub type ShardId = u32;

/// A proposed command, encoded as `parley_core::proto::Command`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    #[serde(with = "serde_bytes")]
    pub command: Vec<u8>,
}

/// The outcome of applying one log entry, encoded as
/// `parley_core::proto::CommandResult`. Blank and membership entries have an
/// empty result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    #[serde(with = "serde_bytes")]
    pub result: Vec<u8>,
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
