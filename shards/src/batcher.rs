//! Proposal batching for one shard replica.
//!
//! openraft 0.9 appends and syncs each `client_write` as its own log entry,
//! one after another, so every proposal would cost the leader a storage
//! sync and the group a replication round trip. The batcher queues the
//! commands proposed on this replica and writes them as one entry per
//! batch. At most `in_flight_max` batches are written at a time. A batch
//! is gathered only once a slot is free, so a lone proposal goes out at
//! once while a burst waits in the queue and leaves as a few large batches.
//!
//! A proposal is one command or, from `ProposeBatch`, several commands of
//! one shard. A proposal is never split: its commands land in one entry,
//! in order, even when they are more than `commands_max`.
//!
//! The batcher does not decide who leads: on a follower the write fails
//! with the leader's id, and every command of the batch gets that outcome
//! for the caller to forward.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use parley_raft::{feed_position, ByteBuf, NodeId, Raft, Request, ShardId, ENTRY_COMMANDS_MAX};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// Bounds on how proposals are grouped into log entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchLimits {
    /// Maximum commands in one log entry.
    pub commands_max: usize,
    /// A batch stops growing once its commands reach this many bytes, so
    /// it exceeds it by at most its last command.
    pub bytes_max: usize,
    /// Maximum batches being written (appended, replicated and applied) at
    /// once per shard replica.
    pub in_flight_max: usize,
    /// Maximum proposals waiting for a batch per shard replica, where the
    /// commands of one `propose_all` call count as one proposal. Beyond it,
    /// callers wait for room.
    pub queued_max: usize,
    /// Deadline for one batch to commit and apply, after which its callers
    /// get `TimedOut` and its slot is freed.
    pub write_timeout: Duration,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            commands_max: 256,
            bytes_max: 1024 * 1024,
            // One batch at a time gathers the most proposals per entry. On a
            // shared 2-core VM, `parley smoke` with 32 and 128 senders ran
            // faster and used less CPU per append with 1 than with 2 or 4.
            // NOTE: measured on loopback only; with real network round
            // trips a second batch in flight may pay off.
            in_flight_max: 1,
            queued_max: 4_096,
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// The outcome of one proposed command.
#[derive(Clone, Debug)]
pub enum BatchOutcome {
    /// The command is committed and applied.
    Committed {
        /// Encoded `parley_core::proto::CommandResult`.
        result: Vec<u8>,
        log_index: u64,
        /// The command's position in the shard's commit feed.
        position: u64,
    },
    /// This replica is not the leader. `leader` is the leader it last saw,
    /// if any.
    ForwardToLeader { leader: Option<NodeId> },
    /// The batch did not commit within `BatchLimits::write_timeout`.
    TimedOut,
    /// The replica stopped or failed, for the reason in `message`.
    Fatal { message: String },
}

/// One proposal waiting in the queue: commands that share a log entry.
struct Pending {
    commands: Vec<Vec<u8>>,
    /// Total length of `commands`.
    bytes: usize,
    /// Receives one outcome per command, in order.
    reply: oneshot::Sender<Vec<BatchOutcome>>,
}

impl Pending {
    fn new(commands: Vec<Vec<u8>>, reply: oneshot::Sender<Vec<BatchOutcome>>) -> Self {
        let bytes = commands.iter().map(Vec::len).sum();
        Pending {
            commands,
            bytes,
            reply,
        }
    }
}

/// The proposal queue of one shard replica. Dropping it stops its task once
/// the queued proposals are written.
pub struct ProposalBatcher {
    sender: mpsc::Sender<Pending>,
}

impl ProposalBatcher {
    /// Starts the batching task of `shard` on this node's `raft` member.
    pub fn start(raft: Raft, shard: ShardId, limits: BatchLimits) -> Self {
        let (sender, receiver) = mpsc::channel(limits.queued_max.max(1));
        tokio::spawn(run(raft, shard, limits, receiver));
        ProposalBatcher { sender }
    }

    /// Proposes one encoded `parley_core::proto::Command` and waits for it
    /// to be committed and applied, or to fail.
    pub async fn propose(&self, command: Vec<u8>) -> BatchOutcome {
        let mut outcomes = self.propose_all(vec![command]).await;
        assert_eq!(
            outcomes.len(),
            1,
            "one command got {} outcomes",
            outcomes.len()
        );
        outcomes.pop().unwrap_or_else(stopped)
    }

    /// Proposes encoded commands to be written in one log entry, in this
    /// order, and waits until all of them are committed and applied, or
    /// have failed. Returns one outcome per command, in order.
    ///
    /// # Panics
    ///
    /// When `commands` is empty or longer than an entry can carry
    /// (`ENTRY_COMMANDS_MAX`); callers check the request first.
    pub async fn propose_all(&self, commands: Vec<Vec<u8>>) -> Vec<BatchOutcome> {
        let count = commands.len();
        assert!(
            (1..=ENTRY_COMMANDS_MAX).contains(&count),
            "a proposal of {count} commands is outside 1..={ENTRY_COMMANDS_MAX}"
        );

        let (reply, outcome) = oneshot::channel();
        if self
            .sender
            .send(Pending::new(commands, reply))
            .await
            .is_err()
        {
            return vec![stopped(); count];
        }
        outcome.await.unwrap_or_else(|_| vec![stopped(); count])
    }
}

fn stopped() -> BatchOutcome {
    BatchOutcome::Fatal {
        message: "the shard replica's proposal batcher stopped".into(),
    }
}

async fn run(
    raft: Raft,
    shard: ShardId,
    limits: BatchLimits,
    mut receiver: mpsc::Receiver<Pending>,
) {
    let slots = Arc::new(Semaphore::new(limits.in_flight_max.max(1)));
    // A proposal taken off the queue that did not fit the last batch.
    let mut carried: Option<Pending> = None;
    loop {
        let first = match carried.take() {
            Some(pending) => pending,
            None => match receiver.recv().await {
                Some(pending) => pending,
                None => return,
            },
        };
        // Acquiring fails only on a closed semaphore, and nothing closes
        // this one.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };

        // Gathering after a slot is free lets every proposal that arrived
        // while all slots were busy join this batch.
        let (batch, next) = gather(first, &mut receiver, &limits);
        carried = next;
        tracing::trace!(shard, proposals = batch.len(), "writing proposal batch");
        tokio::spawn(write_batch(raft.clone(), batch, limits.write_timeout, slot));
    }
}

/// Takes `first` and as many queued proposals as fit the limits with it.
/// Returns the batch, and the proposal taken off the queue that would have
/// pushed the batch past `commands_max`, if there was one.
fn gather(
    first: Pending,
    receiver: &mut mpsc::Receiver<Pending>,
    limits: &BatchLimits,
) -> (Vec<Pending>, Option<Pending>) {
    let commands_max = limits.commands_max.clamp(1, ENTRY_COMMANDS_MAX);
    let mut commands = first.commands.len();
    let mut bytes = first.bytes;
    let mut batch = vec![first];
    while commands < commands_max && bytes < limits.bytes_max {
        let Ok(next) = receiver.try_recv() else {
            break;
        };
        if commands + next.commands.len() > commands_max {
            return (batch, Some(next));
        }
        commands += next.commands.len();
        bytes += next.bytes;
        batch.push(next);
    }
    (batch, None)
}

async fn write_batch(
    raft: Raft,
    batch: Vec<Pending>,
    timeout: Duration,
    slot: OwnedSemaphorePermit,
) {
    let mut commands = Vec::new();
    let mut replies = Vec::with_capacity(batch.len());
    for pending in batch {
        replies.push((pending.reply, pending.commands.len()));
        commands.extend(pending.commands.into_iter().map(ByteBuf::from));
    }
    let command_count = commands.len();
    let write = raft.client_write(Request { commands });
    let outcome = tokio::time::timeout(timeout, write).await;
    drop(slot);

    let response = match outcome {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => return reply_all(replies, failure(error)),
        Err(_) => return reply_all(replies, BatchOutcome::TimedOut),
    };
    let log_index = response.log_id.index;
    let results = response.data.results;
    if results.len() != command_count {
        let message = format!(
            "log index {log_index} applied {} results for {command_count} commands",
            results.len(),
        );
        return reply_all(replies, BatchOutcome::Fatal { message });
    }

    // Results come in entry order, which is queue order, so each caller's
    // commands are the next `count` of them.
    let mut results = results.into_iter().enumerate();
    for (reply, count) in replies {
        let outcomes = results
            .by_ref()
            .take(count)
            .map(|(item, result)| BatchOutcome::Committed {
                result: result.into_vec(),
                log_index,
                position: feed_position(log_index, item),
            })
            .collect();
        // A caller that gave up waiting no longer needs its outcome.
        let _ = reply.send(outcomes);
    }
}

fn failure(
    error: RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>,
) -> BatchOutcome {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            BatchOutcome::ForwardToLeader {
                leader: forward.leader_id,
            }
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(error)) => {
            BatchOutcome::Fatal {
                message: error.to_string(),
            }
        }
        RaftError::Fatal(fatal) => BatchOutcome::Fatal {
            message: fatal.to_string(),
        },
    }
}

fn reply_all(replies: Vec<(oneshot::Sender<Vec<BatchOutcome>>, usize)>, outcome: BatchOutcome) {
    for (reply, count) in replies {
        let _ = reply.send(vec![outcome.clone(); count]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(bytes: usize) -> Pending {
        let (reply, _) = oneshot::channel();
        Pending::new(vec![vec![0; bytes]], reply)
    }

    /// Builds a proposal of `count` commands of `bytes` bytes each.
    fn pending_many(count: usize, bytes: usize) -> Pending {
        let (reply, _) = oneshot::channel();
        Pending::new(vec![vec![0; bytes]; count], reply)
    }

    fn queue(sizes: &[usize]) -> mpsc::Receiver<Pending> {
        queue_proposals(sizes.iter().map(|size| pending(*size)).collect())
    }

    fn queue_proposals(proposals: Vec<Pending>) -> mpsc::Receiver<Pending> {
        let (sender, receiver) = mpsc::channel(proposals.len().max(1));
        for proposal in proposals {
            assert!(sender.try_send(proposal).is_ok());
        }
        receiver
    }

    fn command_counts(batch: &[Pending]) -> Vec<usize> {
        batch.iter().map(|pending| pending.commands.len()).collect()
    }

    fn limits(commands_max: usize, bytes_max: usize) -> BatchLimits {
        BatchLimits {
            commands_max,
            bytes_max,
            ..BatchLimits::default()
        }
    }

    #[tokio::test]
    async fn gather_stops_at_commands_max() {
        let mut receiver = queue(&[10; 5]);

        let (batch, carried) = gather(pending(10), &mut receiver, &limits(3, 1_000));

        assert_eq!(batch.len(), 3);
        assert!(carried.is_none());
        assert_eq!(receiver.len(), 3);
    }

    #[tokio::test]
    async fn gather_stops_once_bytes_max_is_reached() {
        let mut receiver = queue(&[40, 40, 40]);

        let (batch, carried) = gather(pending(40), &mut receiver, &limits(100, 100));

        assert_eq!(batch.len(), 3);
        assert!(carried.is_none());
        assert_eq!(receiver.len(), 1);
    }

    #[tokio::test]
    async fn gather_sends_oversized_command_alone() {
        let mut receiver = queue(&[1]);

        let (batch, carried) = gather(pending(500), &mut receiver, &limits(100, 100));

        assert_eq!(batch.len(), 1);
        assert!(carried.is_none());
        assert_eq!(receiver.len(), 1);
    }

    #[tokio::test]
    async fn gather_takes_only_what_is_queued() {
        let mut receiver = queue(&[1, 1]);

        let (batch, carried) = gather(pending(1), &mut receiver, &limits(100, 1_000));

        assert_eq!(batch.len(), 3);
        assert!(carried.is_none());
        assert!(receiver.is_empty());
    }

    #[tokio::test]
    async fn gather_keeps_multi_command_proposal_whole() {
        let mut receiver = queue_proposals(vec![pending_many(2, 1), pending_many(3, 1)]);

        let (batch, carried) = gather(pending_many(2, 1), &mut receiver, &limits(5, 1_000));

        assert_eq!(command_counts(&batch), [2, 2]);
        let carried = carried.expect("the proposal of 3 commands is carried to the next batch");
        assert_eq!(carried.commands.len(), 3);
        assert!(receiver.is_empty());
    }

    #[tokio::test]
    async fn gather_writes_proposal_above_commands_max_alone() {
        let mut receiver = queue(&[1]);

        let (batch, carried) = gather(pending_many(8, 1), &mut receiver, &limits(4, 1_000));

        assert_eq!(command_counts(&batch), [8]);
        assert!(carried.is_none());
        assert_eq!(receiver.len(), 1);
    }

    #[tokio::test]
    async fn gather_counts_bytes_of_every_command() {
        let mut receiver = queue(&[10]);

        let (batch, carried) = gather(pending_many(3, 40), &mut receiver, &limits(100, 100));

        assert_eq!(command_counts(&batch), [3]);
        assert!(carried.is_none());
        assert_eq!(receiver.len(), 1);
    }
}
