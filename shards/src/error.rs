//! Errors of the shard layer, and their gRPC status codes.
//!
//! Redirect and retry cases (no leader yet, timed out) are kept apart from
//! fatal ones (a replica's Raft stopped), so callers know whether to retry.

use parley_raft::{NodeId, ShardId};

#[derive(Debug, thiserror::Error)]
pub enum ShardsError {
    #[error("invalid settings: {0}")]
    InvalidSettings(String),

    #[error("invalid request: {0}")]
    InvalidRequest(String),

    #[error(
        "shard {shard} has no known leader right now (election in progress or no quorum); \
         retry after about one election timeout"
    )]
    NoLeader { shard: ShardId },

    #[error("shard {shard} is led by node {leader} at {address}; send the request there")]
    NotLeader {
        shard: ShardId,
        leader: NodeId,
        address: String,
    },

    #[error("shard {shard} did not answer within {timeout_ms} ms; retry, appends are idempotent by client message id")]
    TimedOut { shard: ShardId, timeout_ms: u64 },

    #[error("forwarding to node {node} at {address} failed: {message}")]
    Forward {
        node: NodeId,
        address: String,
        message: String,
    },

    #[error("the replica of shard {shard} on this node stopped: {message}; restart the node")]
    Fatal { shard: ShardId, message: String },

    #[error("node {node} hosts no replica of shard {shard}; ask one of nodes {replicas:?}")]
    NotHosted {
        node: NodeId,
        shard: ShardId,
        replicas: Vec<NodeId>,
    },

    #[error("permission denied: {0}")]
    PermissionDenied(String),

    #[error("storage failed: {0}")]
    Storage(String),

    #[error("rejected ({code:?}): {message}")]
    Rejected {
        code: parley_core::proto::RejectionCode,
        message: String,
    },

    #[error("node {node} answered {code:?}: {message}")]
    Remote {
        node: NodeId,
        code: tonic::Code,
        message: String,
    },
}

impl From<ShardsError> for tonic::Status {
    fn from(error: ShardsError) -> tonic::Status {
        let message = error.to_string();
        match error {
            ShardsError::InvalidSettings(_) => tonic::Status::failed_precondition(message),
            ShardsError::InvalidRequest(_) => tonic::Status::invalid_argument(message),
            ShardsError::NotHosted { .. } => tonic::Status::failed_precondition(message),
            ShardsError::NoLeader { .. } | ShardsError::NotLeader { .. } => {
                tonic::Status::unavailable(message)
            }
            ShardsError::Forward { .. } => tonic::Status::unavailable(message),
            ShardsError::TimedOut { .. } => tonic::Status::deadline_exceeded(message),
            ShardsError::PermissionDenied(_) => tonic::Status::permission_denied(message),
            ShardsError::Fatal { .. } | ShardsError::Storage(_) => tonic::Status::internal(message),
            ShardsError::Rejected { code, .. } => {
                tonic::Status::new(rejection_status(code), message)
            }
            // A forwarded error keeps the code the remote node chose.
            ShardsError::Remote { code, message, .. } => tonic::Status::new(code, message),
        }
    }
}

/// Returns the gRPC code for a state machine rejection of a read.
fn rejection_status(code: parley_core::proto::RejectionCode) -> tonic::Code {
    use parley_core::proto::RejectionCode;
    match code {
        RejectionCode::NotAMember => tonic::Code::PermissionDenied,
        RejectionCode::UnknownConversation | RejectionCode::UnknownUser => tonic::Code::NotFound,
        _ => tonic::Code::InvalidArgument,
    }
}
