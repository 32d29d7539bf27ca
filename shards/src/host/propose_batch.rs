//! `ProposeBatch` on a node. The node checks that a batch is well formed
//! and hands its commands to the shard's batcher as one proposal, so that
//! they share one log entry. A node that does not lead the shard forwards
//! the whole batch.
//!
//! Apart from transport errors, the call fails only for a malformed
//! request, with INVALID_ARGUMENT. Every other failure comes back per command as a
//! `ProposeError`, so a caller retries exactly the commands that need it.

use parley_core::proto::command::Kind;
use parley_core::proto::Command;
use parley_raft::{NodeId, ShardId};
use prost::Message;

use super::{NodeHost, Replica, FORWARD_HOPS_MAX};
use crate::batcher::BatchOutcome;
use crate::error::ShardsError;
use crate::proto::{
    propose_outcome, ProposeBatchReply, ProposeBatchRequest, ProposeError, ProposeOutcome,
};

/// Maximum commands in one `ProposeBatch` request. It equals the batcher's
/// default `commands_max`, so a full batch fills one log entry.
pub const PROPOSE_BATCH_COMMANDS_MAX: usize = 256;

/// Maximum encoded bytes of the commands of one `ProposeBatch` request.
/// The batcher never splits a proposal, so this bounds the log entry it
/// becomes. It leaves room for a client batch that stops growing at 1 MiB
/// and then takes one more command of up to `COMMAND_BYTES_MAX`.
pub const PROPOSE_BATCH_BYTES_MAX: usize = 2 * COMMAND_BYTES_MAX;

/// Maximum encoded bytes of one proposed command; the largest valid one
/// (a 64 KiB body, or 1,000 member ids) is far smaller.
pub const COMMAND_BYTES_MAX: usize = 1024 * 1024;

/// Rejects a command above `COMMAND_BYTES_MAX`. Such a command could only
/// fail when applied, but its log entry would already be replicated.
pub(crate) fn check_command_size(field: &str, command: &Command) -> Result<(), ShardsError> {
    let bytes = command.encoded_len();
    if bytes > COMMAND_BYTES_MAX {
        return Err(ShardsError::InvalidRequest(format!(
            "{field} encodes to {bytes} bytes, above the limit of {COMMAND_BYTES_MAX}; send a \
             smaller command (message bodies are limited far below this)"
        )));
    }
    Ok(())
}

impl NodeHost {
    /// Replicates the commands of one shard as one proposal and returns one
    /// outcome per command, in request order. Fails only when the request
    /// is malformed: empty, above `PROPOSE_BATCH_COMMANDS_MAX` or
    /// `PROPOSE_BATCH_BYTES_MAX`, a command above `COMMAND_BYTES_MAX` or
    /// without a kind, or commands of different shards.
    pub async fn propose_batch(
        &self,
        mut request: ProposeBatchRequest,
    ) -> Result<ProposeBatchReply, ShardsError> {
        let shard = self.batch_shard(&request.commands)?;
        let Some(replica) = self.replicas.get(&shard) else {
            let target = self.map.replicas_of(shard)[0];
            return Ok(self.forward_propose_batch(shard, target, request).await);
        };

        let outcomes = self
            .write_commands(shard, replica, &mut request.commands)
            .await;
        if let Some(leader) = self.forward_target(&outcomes) {
            return Ok(self.forward_propose_batch(shard, leader, request).await);
        }
        let outcomes = outcomes
            .into_iter()
            .map(|outcome| self.to_propose_outcome(shard, outcome))
            .collect();
        Ok(ProposeBatchReply { outcomes })
    }

    /// Returns the shard every command of a batch belongs to, or the reason
    /// the batch is malformed.
    fn batch_shard(&self, commands: &[Command]) -> Result<ShardId, ShardsError> {
        if commands.is_empty() {
            return Err(ShardsError::InvalidRequest(format!(
                "ProposeBatchRequest.commands is empty (0 commands); send 1 to \
                 {PROPOSE_BATCH_COMMANDS_MAX} commands of one shard"
            )));
        }
        if commands.len() > PROPOSE_BATCH_COMMANDS_MAX {
            return Err(ShardsError::InvalidRequest(format!(
                "ProposeBatchRequest.commands has {} commands, above the limit of \
                 {PROPOSE_BATCH_COMMANDS_MAX}; split them into batches of at most \
                 {PROPOSE_BATCH_COMMANDS_MAX}",
                commands.len()
            )));
        }

        let mut bytes = 0;
        for (index, command) in commands.iter().enumerate() {
            check_command_size(&format!("ProposeBatchRequest.commands[{index}]"), command)?;
            bytes += command.encoded_len();
        }
        if bytes > PROPOSE_BATCH_BYTES_MAX {
            return Err(ShardsError::InvalidRequest(format!(
                "ProposeBatchRequest.commands encode to {bytes} bytes, above the limit of \
                 {PROPOSE_BATCH_BYTES_MAX}; split them into smaller batches"
            )));
        }

        let shard_of = |index: usize, command: &Command| {
            self.map.shard_of_command(command).ok_or_else(|| {
                ShardsError::InvalidRequest(format!(
                    "ProposeBatchRequest.commands[{index}].kind is missing; set one of the \
                     command kinds"
                ))
            })
        };
        let first = shard_of(0, &commands[0])?;
        for (index, command) in commands.iter().enumerate().skip(1) {
            let shard = shard_of(index, command)?;
            if shard != first {
                return Err(ShardsError::InvalidRequest(format!(
                    "ProposeBatchRequest.commands[{index}] belongs to shard {shard} but \
                     commands[0] belongs to shard {first}; send one batch per shard"
                )));
            }
        }
        Ok(first)
    }

    /// Stamps the appends with this node's clock, proposes every command
    /// as one proposal and waits for their outcomes.
    async fn write_commands(
        &self,
        shard: ShardId,
        replica: &Replica,
        commands: &mut [Command],
    ) -> Vec<BatchOutcome> {
        // The proposing node stamps appends; a client cannot choose its own
        // server time. A leader that receives the batch forwarded stamps
        // them again.
        let now_ms = self.clock.now_ms();
        for command in commands.iter_mut() {
            if let Some(Kind::Append(append)) = command.kind.as_mut() {
                append.proposer_time_ms = now_ms;
            }
        }
        let encoded = commands.iter().map(Message::encode_to_vec).collect();

        let timeout = self.settings.propose_timeout();
        let proposal = replica.batcher.propose_all(encoded);
        match tokio::time::timeout(timeout, proposal).await {
            Ok(outcomes) => outcomes,
            Err(_) => {
                tracing::debug!(node = self.node_id, shard, "proposal batch timed out");
                vec![BatchOutcome::TimedOut; commands.len()]
            }
        }
    }

    /// Returns the leader to forward the whole batch to: some other node,
    /// when every command came back with it as the leader.
    fn forward_target(&self, outcomes: &[BatchOutcome]) -> Option<NodeId> {
        let leader = match outcomes.first()? {
            BatchOutcome::ForwardToLeader {
                leader: Some(leader),
            } if *leader != self.node_id => *leader,
            _ => return None,
        };
        let all_forwarded = outcomes.iter().all(|outcome| {
            matches!(outcome, BatchOutcome::ForwardToLeader { leader: Some(other) } if *other == leader)
        });
        all_forwarded.then_some(leader)
    }

    fn to_propose_outcome(&self, shard: ShardId, outcome: BatchOutcome) -> ProposeOutcome {
        let timeout_ms = self.settings.propose_timeout_ms;
        let reply = match outcome {
            BatchOutcome::Committed {
                result, position, ..
            } => self.committed_reply(shard, &result, position),
            // Reached only when no other leader is known, since a batch
            // led elsewhere was forwarded whole.
            BatchOutcome::ForwardToLeader { .. } => Err(ShardsError::NoLeader { shard }),
            BatchOutcome::TimedOut => Err(ShardsError::TimedOut { shard, timeout_ms }),
            BatchOutcome::Fatal { message } => Err(ShardsError::Fatal { shard, message }),
        };
        match reply {
            Ok(reply) => ProposeOutcome {
                outcome: Some(propose_outcome::Outcome::Committed(reply)),
            },
            Err(error) => error_outcome(error),
        }
    }

    /// Sends the whole batch to `target` and returns its reply, or the same
    /// error for every command when forwarding fails.
    async fn forward_propose_batch(
        &self,
        shard: ShardId,
        target: NodeId,
        mut request: ProposeBatchRequest,
    ) -> ProposeBatchReply {
        let count = request.commands.len();
        if request.hops >= FORWARD_HOPS_MAX {
            return error_reply(count, ShardsError::NoLeader { shard });
        }
        request.hops += 1;
        tracing::debug!(
            node = self.node_id,
            shard,
            target,
            commands = count,
            "forwarding proposal batch"
        );

        let mut client = match self.client_for(target) {
            Ok(client) => client,
            Err(error) => return error_reply(count, error),
        };
        let call = client.propose_batch(request);
        let reply = tokio::time::timeout(self.settings.propose_timeout(), call).await;
        let error = match self.unwrap_forwarded(target, reply) {
            Ok(reply) if reply.outcomes.len() == count => return reply,
            Ok(reply) => ShardsError::Remote {
                node: target,
                code: tonic::Code::Internal,
                message: format!(
                    "returned {} outcomes for a batch of {count} commands",
                    reply.outcomes.len()
                ),
            },
            Err(error) => error,
        };
        tracing::debug!(
            node = self.node_id,
            shard,
            target,
            commands = count,
            %error,
            "forwarding proposal batch failed"
        );
        error_reply(count, error)
    }
}

fn error_outcome(error: ShardsError) -> ProposeOutcome {
    let status = tonic::Status::from(error);
    ProposeOutcome {
        outcome: Some(propose_outcome::Outcome::Error(ProposeError {
            code: status.code() as i32,
            message: status.message().to_string(),
        })),
    }
}

fn error_reply(count: usize, error: ShardsError) -> ProposeBatchReply {
    let outcome = error_outcome(error);
    ProposeBatchReply {
        outcomes: vec![outcome; count],
    }
}
