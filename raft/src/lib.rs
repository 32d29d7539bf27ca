//! Parley's Raft layer: openraft glue for one node's shard replicas.
//!
//! - `types`: the openraft type configuration.
//! - `runtime`: tokio in production, madsim under `--cfg madsim`.
//! - `engine`: the storage engine trait, on sled or on a simulated disk.
//! - `log_store` and `state_machine`: openraft's v2 storage traits.
//! - `network`: the node-to-node transport over gRPC.
//! - `commit_feed`: the applied commands of a replica, for gateways.

pub mod commit_feed;
pub mod engine;
pub mod error;
mod keys;
pub mod log_store;
pub mod network;
pub mod runtime;
pub mod state_machine;
pub mod types;

pub use commit_feed::{
    feed_position, feed_position_end, CommitFeed, CommittedEntry, Compacted, FeedItem,
    ENTRY_COMMANDS_MAX,
};
#[cfg(not(madsim))]
pub use engine::SledEngine;
pub use engine::{SimDisk, StorageEngine, WriteBatch};
pub use error::{EngineError, TransportError};
pub use log_store::LogStore;
pub use network::{
    NetworkFactory, PeerChannels, ShardRegistry, TransportService, TransportSettings,
};
pub use state_machine::{Applied, AppliedHandle, ShardStateMachine};
pub use types::*;
