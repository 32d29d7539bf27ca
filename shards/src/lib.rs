//! Parley's shard layer: where each conversation lives and how a node runs
//! the replicas of many shard groups.
//!
//! - `shard_map`: stable hashing of ids to shards, and shard placement.
//! - `clock`: the per-node wall clock that stamps appends.
//! - `settings`: cluster-wide settings and their digest.
//! - `host`: the multi-raft host, leader forwarding and reads.
//! - `api`: the node API gRPC service.

pub mod api;
pub mod clock;
pub mod error;
pub mod host;
pub mod settings;
pub mod shard_map;

pub mod proto {
    tonic::include_proto!("parley.node.v1");
}

pub use api::NodeApiService;
pub use clock::NodeClock;
pub use error::ShardsError;
pub use host::NodeHost;
pub use settings::{ClusterSettings, RaftTiming};
pub use shard_map::{ShardMap, BUCKET_COUNT, REPLICAS_PER_SHARD};
