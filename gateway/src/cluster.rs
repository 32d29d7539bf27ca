//! The gateway's view of the cluster: proposing commands and reading
//! history through the node API, with core rejections mapped to gRPC codes.

use std::time::Duration;

use parley_core::proto::command::Kind;
use parley_core::proto::command_result::Outcome;
use parley_core::proto::{Command, HistoryQuery, Rejection, RejectionCode, StoredMessage};
use parley_core::COMMAND_VERSION;
use parley_shards::client::{ClientError, ClusterClient};
use parley_shards::proto::Consistency;

/// How long a proposal keeps retrying across nodes and elections.
const PROPOSE_DEADLINE: Duration = Duration::from_secs(10);

/// A committed command's outcome and where it was committed.
pub struct Committed {
    pub outcome: Outcome,
    pub shard_id: u32,
    pub log_index: u64,
}

/// Returns the gRPC status for a core rejection.
pub fn rejection_status(rejection: &Rejection) -> tonic::Status {
    let code = RejectionCode::try_from(rejection.code).unwrap_or(RejectionCode::Unspecified);
    let grpc_code = match code {
        RejectionCode::NotAMember => tonic::Code::PermissionDenied,
        RejectionCode::UnknownConversation | RejectionCode::UnknownUser => tonic::Code::NotFound,
        RejectionCode::ConversationExists => tonic::Code::AlreadyExists,
        RejectionCode::GroupFull
        | RejectionCode::BodyTooLarge
        | RejectionCode::DeviceLimit
        | RejectionCode::ReceiptBeyondLastSeq
        | RejectionCode::NotAGroup => tonic::Code::FailedPrecondition,
        RejectionCode::Unspecified
        | RejectionCode::UnsupportedVersion
        | RejectionCode::Malformed
        | RejectionCode::InvalidId
        | RejectionCode::TooManyItems => tonic::Code::InvalidArgument,
    };
    tonic::Status::new(grpc_code, rejection.message.clone())
}

fn client_status(error: ClientError) -> tonic::Status {
    match error {
        ClientError::Rejected { status, .. } => status,
        other => tonic::Status::unavailable(format!("{other}; retry the call")),
    }
}

/// Node API access shared by every gateway task.
#[derive(Clone)]
pub struct Cluster {
    client: ClusterClient,
}

impl Cluster {
    pub fn new(client: ClusterClient) -> Self {
        Cluster { client }
    }

    pub fn client(&self) -> &ClusterClient {
        &self.client
    }

    /// Replicates `kind` and returns its outcome; a rejection becomes the
    /// matching gRPC status.
    pub async fn propose(&self, kind: Kind) -> Result<Committed, tonic::Status> {
        let command = Command {
            version: COMMAND_VERSION,
            kind: Some(kind),
        };
        let reply = self
            .client
            .propose(command, PROPOSE_DEADLINE)
            .await
            .map_err(client_status)?;
        let outcome = reply
            .result
            .and_then(|result| result.outcome)
            .ok_or_else(|| tonic::Status::internal("the node returned an empty command result"))?;
        if let Outcome::Rejected(rejection) = &outcome {
            return Err(rejection_status(rejection));
        }
        Ok(Committed {
            outcome,
            shard_id: reply.shard_id,
            log_index: reply.log_index,
        })
    }

    /// Reads one page of history linearizably as `reader`, retrying on
    /// other nodes while the shard elects a leader.
    pub async fn history_page(
        &self,
        reader: &str,
        conversation_id: &str,
        from_seq: u64,
        limit: u32,
    ) -> Result<(Vec<StoredMessage>, u64), tonic::Status> {
        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        loop {
            let node = attempt % self.client.addresses().len();
            let query = HistoryQuery {
                conversation_id: conversation_id.to_string(),
                reader: reader.to_string(),
                from_seq,
                limit,
            };
            let status = match self
                .client
                .history_page(node, query, Consistency::Linearizable, 0)
                .await
            {
                Ok(reply) => {
                    let page = reply.page.unwrap_or_default();
                    return Ok((page.messages, page.last_seq));
                }
                Err(status) => status,
            };
            if !parley_shards::client::is_transient(&status) || started.elapsed() > PROPOSE_DEADLINE
            {
                return Err(status);
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
