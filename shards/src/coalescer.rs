//! Coalescing of a client's proposals per shard, and the retry loop that
//! every proposal can fall back to.
//!
//! A proposal joins its shard's queue. While fewer than
//! `calls_in_flight_max` batch calls of that shard are out, a sender task
//! takes everything queued, within `commands_max` and `bytes_max`. It sends
//! one `ProposeBatch` to the shard's cached leader (the first node when
//! none is cached) and hands each caller its outcome. So a lone proposal
//! leaves at once, with no timer, and a burst that arrives while a call is
//! out leaves as a few large batches.
//!
//! A command whose batch call failed, or that came back with a transient
//! error, goes through the retry loop: unary `Propose` calls to one node
//! after another until the caller's deadline. Retrying is safe because an
//! append is idempotent by its client message id. Until a reply has
//! carried the shard count, proposals cannot be grouped by shard, so they
//! go straight to the retry loop.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use parley_core::proto::Command;
use parley_raft::ShardId;
use prost::Message;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::client::{is_transient, ClientError, LeaderCache};
use crate::host::PROPOSE_BATCH_COMMANDS_MAX;
use crate::proto::{
    propose_outcome, ProposeBatchReply, ProposeBatchRequest, ProposeOutcome, ProposeReply,
    ProposeRequest,
};

/// The node API calls proposals need, so that tests can stand in for the
/// nodes.
pub(crate) trait NodeCalls: Send + Sync + 'static {
    fn node_count(&self) -> usize;

    /// Sends one `Propose` to the node at index `node`. A call without a
    /// reply in time fails with a transient status.
    fn propose(
        &self,
        node: usize,
        request: ProposeRequest,
    ) -> impl Future<Output = Result<ProposeReply, tonic::Status>> + Send;

    /// Sends one `ProposeBatch` to the node at index `node`. A call without
    /// a reply in time fails with a transient status.
    fn propose_batch(
        &self,
        node: usize,
        request: ProposeBatchRequest,
    ) -> impl Future<Output = Result<ProposeBatchReply, tonic::Status>> + Send;
}

/// Bounds on how a client groups its proposals.
#[derive(Clone, Debug)]
pub(crate) struct CoalescerLimits {
    /// Maximum `ProposeBatch` calls out at once per shard.
    pub calls_in_flight_max: usize,
    /// Maximum commands in one call, at most `PROPOSE_BATCH_COMMANDS_MAX`.
    pub commands_max: usize,
    /// A batch stops growing once its encoded commands reach this many
    /// bytes, so it exceeds it by at most its last command.
    pub bytes_max: usize,
    /// Maximum proposals queued or in a call per shard. Beyond it, callers
    /// wait for room.
    pub queued_max: usize,
}

impl Default for CoalescerLimits {
    fn default() -> Self {
        CoalescerLimits {
            // One call in flight per shard gathers the most proposals per
            // call. `parley-bench run --scenarios appends` (3 nodes, 8
            // shards, one gateway, all on a shared 2-core VM), closed loop,
            // 3 runs each, in appends/s at 100 and 1000 senders: 1 in
            // flight 4,503-4,949 and 14,867-15,116; 2 in flight
            // 3,299-3,852 and 12,784-14,249.
            // NOTE: measured on loopback only. With real network round
            // trips, a second call in flight may pay off.
            calls_in_flight_max: 1,
            commands_max: PROPOSE_BATCH_COMMANDS_MAX,
            bytes_max: 1024 * 1024,
            queued_max: 4_096,
        }
    }
}

/// The outcome a sender task hands a queued caller.
#[derive(Debug)]
enum Delivery {
    Committed(ProposeReply),
    /// The node at index `node` returned `status` for this command alone.
    CommandFailed {
        node: usize,
        status: tonic::Status,
    },
    /// The whole `ProposeBatch` call to the node at index `node` failed.
    CallFailed {
        node: usize,
        status: tonic::Status,
    },
}

/// A proposal waiting in its shard's queue.
struct Queued {
    command: Command,
    /// Encoded length of `command`.
    bytes: usize,
    reply: oneshot::Sender<Delivery>,
    /// Room in the shard's queue, given back when the caller has its
    /// outcome.
    room: OwnedSemaphorePermit,
}

struct ShardQueue {
    waiting: VecDeque<Queued>,
    calls_in_flight: usize,
    room: Arc<Semaphore>,
}

/// Proposes commands for a `ClusterClient`: per-shard queues, their
/// sender tasks and the retry loop.
pub(crate) struct Proposer<T> {
    nodes: T,
    /// Node addresses, in the order of the indexes `nodes` takes.
    addresses: Vec<String>,
    limits: CoalescerLimits,
    leaders: Mutex<LeaderCache>,
    queues: Mutex<BTreeMap<ShardId, ShardQueue>>,
}

/// Locks `mutex` even if a holder panicked. The leader cache contains only
/// routing hints, and a queue left half-updated has at worst dropped
/// proposals, whose callers then fall back to the retry loop.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T: NodeCalls> Proposer<T> {
    /// Creates a proposer over `nodes`, whose indexes match `addresses`.
    ///
    /// # Panics
    ///
    /// When `nodes` has no node, its node count differs from the number of
    /// `addresses`, or `limits.commands_max` is outside
    /// 1..=`PROPOSE_BATCH_COMMANDS_MAX`.
    pub(crate) fn new(nodes: T, addresses: Vec<String>, limits: CoalescerLimits) -> Self {
        assert!(nodes.node_count() > 0, "a proposer needs at least one node");
        assert_eq!(
            nodes.node_count(),
            addresses.len(),
            "one address per node is needed"
        );
        assert!(
            (1..=PROPOSE_BATCH_COMMANDS_MAX).contains(&limits.commands_max),
            "commands_max {} is outside 1..={PROPOSE_BATCH_COMMANDS_MAX}",
            limits.commands_max
        );
        Proposer {
            nodes,
            addresses,
            limits,
            leaders: Mutex::default(),
            queues: Mutex::default(),
        }
    }

    /// Proposes `command` through its shard's queue, then, if that failed
    /// transiently, through the retry loop until `deadline` has passed.
    pub(crate) async fn propose(
        self: &Arc<Self>,
        command: Command,
        deadline: Duration,
    ) -> Result<ProposeReply, ClientError> {
        let started = tokio::time::Instant::now();
        let shard = lock(&self.leaders).shard_of(&command);
        let Some(shard) = shard else {
            return self
                .propose_with_retries(command, deadline, started, 0)
                .await;
        };

        let node_count = self.nodes.node_count();
        // The deadline covers the wait for room and for the shard's calls.
        let Ok(delivery) =
            tokio::time::timeout(deadline, self.enqueue(shard, command.clone())).await
        else {
            let leader = lock(&self.leaders).leader_of(&command).unwrap_or(0);
            return Err(ClientError::GaveUp {
                node: self.addresses[leader].clone(),
                elapsed_ms: started.elapsed().as_millis() as u64,
                message: format!(
                    "shard {shard}'s batched proposals got no outcome within the deadline; \
                     the command may still commit, so retry it unchanged"
                ),
            });
        };
        let first_node = match delivery {
            Some(Delivery::Committed(reply)) => return Ok(reply),
            Some(Delivery::CommandFailed { node, status }) if !is_transient(&status) => {
                return Err(ClientError::Rejected {
                    node: self.addresses[node].clone(),
                    status,
                })
            }
            Some(
                Delivery::CommandFailed { node, status } | Delivery::CallFailed { node, status },
            ) => {
                tracing::debug!(node = %self.addresses[node], shard, error = %status, "retrying batched proposal");
                (node + 1) % node_count
            }
            // The sender task ended without an outcome, as when the runtime
            // stops, so the retry loop starts over.
            None => 0,
        };
        self.propose_with_retries(command, deadline, started, first_node)
            .await
    }

    /// Queues `command` for its shard, starts a sender task if the shard
    /// has a free call slot, and waits for the outcome.
    async fn enqueue(self: &Arc<Self>, shard: ShardId, command: Command) -> Option<Delivery> {
        let room = lock(&self.queues)
            .entry(shard)
            .or_insert_with(|| ShardQueue {
                waiting: VecDeque::new(),
                calls_in_flight: 0,
                room: Arc::new(Semaphore::new(self.limits.queued_max.max(1))),
            })
            .room
            .clone();
        // Nothing closes the semaphore, so acquiring cannot fail.
        let room = room.acquire_owned().await.ok()?;

        let (reply, delivery) = oneshot::channel();
        let queued = Queued {
            bytes: command.encoded_len(),
            command,
            reply,
            room,
        };
        let start_sender = {
            let mut queues = lock(&self.queues);
            let queue = queues.get_mut(&shard)?;
            queue.waiting.push_back(queued);
            let free_slot = queue.calls_in_flight < self.limits.calls_in_flight_max.max(1);
            if free_slot {
                queue.calls_in_flight += 1;
            }
            free_slot
        };
        if start_sender {
            tokio::spawn(self.clone().send_batches(shard));
        }
        delivery.await.ok()
    }

    /// Sends the shard's queued proposals, batch after batch, until the
    /// queue is empty, then gives back the call slot.
    async fn send_batches(self: Arc<Self>, shard: ShardId) {
        while let Some(batch) = self.take_batch(shard) {
            self.send_batch(shard, batch).await;
        }
    }

    /// Takes the queued proposals that fit in one call, oldest first, or
    /// frees the call slot and returns `None` when nothing is queued.
    fn take_batch(&self, shard: ShardId) -> Option<Vec<Queued>> {
        let mut queues = lock(&self.queues);
        let queue = queues.get_mut(&shard)?;
        let mut batch = Vec::new();
        let mut bytes = 0;
        while batch.len() < self.limits.commands_max && bytes < self.limits.bytes_max {
            let Some(next) = queue.waiting.pop_front() else {
                break;
            };
            // A caller that gave up waiting no longer needs its command sent.
            if next.reply.is_closed() {
                continue;
            }
            bytes += next.bytes;
            batch.push(next);
        }
        if batch.is_empty() {
            assert!(
                queue.calls_in_flight > 0,
                "shard {shard} freed a call slot it did not hold"
            );
            queue.calls_in_flight -= 1;
            return None;
        }
        Some(batch)
    }

    /// Returns how many proposals wait in the queue of `shard`.
    #[cfg(test)]
    fn queued(&self, shard: ShardId) -> usize {
        lock(&self.queues)
            .get(&shard)
            .map_or(0, |queue| queue.waiting.len())
    }

    async fn send_batch(&self, shard: ShardId, batch: Vec<Queued>) {
        let node = lock(&self.leaders).leader_of_shard(shard).unwrap_or(0);
        let mut commands = Vec::with_capacity(batch.len());
        let mut waiters = Vec::with_capacity(batch.len());
        for queued in batch {
            commands.push(queued.command);
            waiters.push((queued.reply, queued.room));
        }
        let count = commands.len();
        tracing::trace!(node = %self.addresses[node], shard, commands = count, "sending proposal batch");

        let request = ProposeBatchRequest { commands, hops: 0 };
        let status = match self.nodes.propose_batch(node, request).await {
            Ok(reply) if reply.outcomes.len() == count => {
                return self.deliver(shard, node, reply.outcomes, waiters);
            }
            Ok(reply) => tonic::Status::internal(format!(
                "node {} returned {} outcomes for a batch of {count} commands",
                self.addresses[node],
                reply.outcomes.len()
            )),
            Err(status) => status,
        };

        tracing::debug!(node = %self.addresses[node], shard, commands = count, error = %status, "proposal batch call failed");
        lock(&self.leaders).forget_shard(shard);
        for (reply, _room) in waiters {
            let status = status.clone();
            let _ = reply.send(Delivery::CallFailed { node, status });
        }
    }

    /// Updates the leader cache from a batch reply, then hands each caller
    /// the outcome of its own command.
    fn deliver(
        &self,
        shard: ShardId,
        node: usize,
        outcomes: Vec<ProposeOutcome>,
        waiters: Vec<(oneshot::Sender<Delivery>, OwnedSemaphorePermit)>,
    ) {
        let deliveries: Vec<Delivery> = outcomes
            .into_iter()
            .map(|outcome| delivery_of(node, outcome))
            .collect();
        let committed = deliveries.iter().find_map(|delivery| match delivery {
            Delivery::Committed(reply) => Some(reply),
            _ => None,
        });
        match committed {
            Some(reply) => lock(&self.leaders).learn(reply, &self.addresses),
            None => lock(&self.leaders).forget_shard(shard),
        }

        for ((reply, _room), delivery) in waiters.into_iter().zip(deliveries) {
            // A caller that gave up waiting no longer needs its outcome.
            let _ = reply.send(delivery);
        }
    }

    /// Proposes `command` with unary calls, starting at the shard's cached
    /// leader or else at `first_node`, and retries transient failures on
    /// the next node until `deadline` has passed since `started`.
    async fn propose_with_retries(
        &self,
        command: Command,
        deadline: Duration,
        started: tokio::time::Instant,
        first_node: usize,
    ) -> Result<ProposeReply, ClientError> {
        let first = lock(&self.leaders)
            .leader_of(&command)
            .unwrap_or(first_node);
        let mut attempt = 0usize;
        loop {
            let index = (first + attempt) % self.nodes.node_count();
            let request = ProposeRequest {
                command: Some(command.clone()),
                hops: 0,
            };
            let status = match self.nodes.propose(index, request).await {
                Ok(reply) => {
                    lock(&self.leaders).learn(&reply, &self.addresses);
                    return Ok(reply);
                }
                Err(status) if !is_transient(&status) => {
                    return Err(ClientError::Rejected {
                        node: self.addresses[index].clone(),
                        status,
                    })
                }
                Err(status) => status.to_string(),
            };
            lock(&self.leaders).forget(&command);
            if started.elapsed() > deadline {
                return Err(ClientError::GaveUp {
                    node: self.addresses[index].clone(),
                    elapsed_ms: started.elapsed().as_millis() as u64,
                    message: status,
                });
            }
            tracing::debug!(node = %self.addresses[index], attempt, error = %status, "retrying proposal");
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(50.min(10 * attempt as u64))).await;
        }
    }
}

fn delivery_of(node: usize, outcome: ProposeOutcome) -> Delivery {
    match outcome.outcome {
        Some(propose_outcome::Outcome::Committed(reply)) => Delivery::Committed(reply),
        Some(propose_outcome::Outcome::Error(error)) => Delivery::CommandFailed {
            node,
            status: tonic::Status::new(tonic::Code::from(error.code), error.message),
        },
        // INTERNAL is transient, so the caller retries the command.
        None => Delivery::CommandFailed {
            node,
            status: tonic::Status::internal("the node returned an empty ProposeOutcome"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ProposeError;
    use crate::shard_map::shard_of_id;
    use parley_core::proto::command::Kind;
    use parley_core::proto::command_result::Outcome;
    use parley_core::proto::{Append, Appended, CommandResult};
    use tokio::sync::mpsc;

    const SHARD_COUNT: u32 = 8;
    const CONVERSATION: &str = "group-1";
    /// The node index the fake nodes name as the leader in their replies.
    const LEADER: usize = 1;
    const DEADLINE: Duration = Duration::from_secs(5);
    /// How long a test waits for proposals to reach the queue.
    const QUEUE_WAIT: Duration = Duration::from_secs(5);

    fn addresses() -> Vec<String> {
        vec!["node-1:1".into(), "node-2:2".into(), "node-3:3".into()]
    }

    fn shard() -> ShardId {
        shard_of_id(CONVERSATION, SHARD_COUNT)
    }

    fn append(client_message_id: &str) -> Command {
        Command {
            version: 1,
            kind: Some(Kind::Append(Append {
                conversation_id: CONVERSATION.into(),
                client_message_id: client_message_id.into(),
                ..Default::default()
            })),
        }
    }

    fn message_id(command: &Command) -> String {
        match &command.kind {
            Some(Kind::Append(append)) => append.client_message_id.clone(),
            other => panic!("the fake nodes take only appends, got {other:?}"),
        }
    }

    fn seq_of(reply: &ProposeReply) -> u64 {
        match reply
            .result
            .as_ref()
            .and_then(|result| result.outcome.as_ref())
        {
            Some(Outcome::Appended(appended)) => appended.seq,
            other => panic!("expected an appended result, got {other:?}"),
        }
    }

    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Call {
        Unary { node: usize, id: String },
        Batch { node: usize, ids: Vec<String> },
    }

    /// Nodes that append every command they get, in arrival order, and
    /// reply as if `LEADER` committed it.
    struct FakeNodes {
        calls: Mutex<Vec<Call>>,
        /// Seq assigned to each client message id.
        committed: Mutex<BTreeMap<String, u64>>,
        /// Batch calls still to fail as a whole with UNAVAILABLE.
        failing_batch_calls: Mutex<usize>,
        /// Codes to return, once, for single commands of a batch.
        command_errors: Mutex<BTreeMap<String, tonic::Code>>,
        /// Batch calls wait here for a permit; none is given until the test
        /// opens the gate.
        gate: Arc<Semaphore>,
        batch_started: mpsc::UnboundedSender<()>,
    }

    impl FakeNodes {
        fn new(gate_open: bool) -> (FakeNodes, mpsc::UnboundedReceiver<()>) {
            let (batch_started, started) = mpsc::unbounded_channel();
            let permits = if gate_open { 1 } else { 0 };
            let nodes = FakeNodes {
                calls: Mutex::default(),
                committed: Mutex::default(),
                failing_batch_calls: Mutex::default(),
                command_errors: Mutex::default(),
                gate: Arc::new(Semaphore::new(permits)),
                batch_started,
            };
            (nodes, started)
        }

        fn commit(&self, command: &Command) -> ProposeReply {
            let id = message_id(command);
            let seq = {
                let mut committed = lock(&self.committed);
                assert!(!committed.contains_key(&id), "{id} was committed twice");
                let seq = committed.len() as u64 + 1;
                committed.insert(id, seq);
                seq
            };
            ProposeReply {
                result: Some(CommandResult {
                    version: 1,
                    outcome: Some(Outcome::Appended(Appended {
                        conversation_id: CONVERSATION.into(),
                        seq,
                        server_time_ms: 0,
                        duplicate: false,
                    })),
                }),
                shard_id: shard(),
                log_index: seq,
                leader_address: addresses()[LEADER].clone(),
                shard_count: SHARD_COUNT,
            }
        }

        fn batch_outcome(&self, command: &Command) -> ProposeOutcome {
            let error = lock(&self.command_errors).remove(&message_id(command));
            let outcome = match error {
                Some(code) => propose_outcome::Outcome::Error(ProposeError {
                    code: code as i32,
                    message: format!("{code:?} for {}", message_id(command)),
                }),
                None => propose_outcome::Outcome::Committed(self.commit(command)),
            };
            ProposeOutcome {
                outcome: Some(outcome),
            }
        }

        fn calls(&self) -> Vec<Call> {
            lock(&self.calls).clone()
        }

        fn batch_sizes(&self) -> Vec<usize> {
            self.calls()
                .into_iter()
                .filter_map(|call| match call {
                    Call::Batch { ids, .. } => Some(ids.len()),
                    Call::Unary { .. } => None,
                })
                .collect()
        }

        fn seq_of_id(&self, id: &str) -> Option<u64> {
            lock(&self.committed).get(id).copied()
        }
    }

    impl NodeCalls for FakeNodes {
        fn node_count(&self) -> usize {
            addresses().len()
        }

        async fn propose(
            &self,
            node: usize,
            request: ProposeRequest,
        ) -> Result<ProposeReply, tonic::Status> {
            let command = request.command.expect("the proposer sends a command");
            let id = message_id(&command);
            lock(&self.calls).push(Call::Unary { node, id });
            Ok(self.commit(&command))
        }

        async fn propose_batch(
            &self,
            node: usize,
            request: ProposeBatchRequest,
        ) -> Result<ProposeBatchReply, tonic::Status> {
            let ids = request.commands.iter().map(message_id).collect();
            lock(&self.calls).push(Call::Batch { node, ids });
            let _ = self.batch_started.send(());
            drop(self.gate.acquire().await);

            let fail = {
                let mut failing = lock(&self.failing_batch_calls);
                let fail = *failing > 0;
                *failing = failing.saturating_sub(1);
                fail
            };
            if fail {
                return Err(tonic::Status::unavailable("the fake node is down"));
            }
            let outcomes = request
                .commands
                .iter()
                .map(|command| self.batch_outcome(command))
                .collect();
            Ok(ProposeBatchReply { outcomes })
        }
    }

    fn limits(calls_in_flight_max: usize, commands_max: usize) -> CoalescerLimits {
        CoalescerLimits {
            calls_in_flight_max,
            commands_max,
            ..CoalescerLimits::default()
        }
    }

    /// Starts a proposer and makes one proposal through it, which teaches
    /// it the shard count and the leader.
    async fn learned_proposer(
        nodes: FakeNodes,
        limits: CoalescerLimits,
    ) -> Arc<Proposer<FakeNodes>> {
        let proposer = Arc::new(Proposer::new(nodes, addresses(), limits));
        let reply = proposer
            .propose(append("setup"), DEADLINE)
            .await
            .expect("the setup proposal commits");
        assert_eq!(seq_of(&reply), 1);
        assert_eq!(
            proposer.nodes.calls(),
            [Call::Unary {
                node: 0,
                id: "setup".into()
            }],
            "a proposal made before the shard count is known goes unary"
        );
        proposer
    }

    type Handle = tokio::task::JoinHandle<Result<ProposeReply, ClientError>>;

    fn spawn_propose(proposer: &Arc<Proposer<FakeNodes>>, id: &str) -> Handle {
        let proposer = proposer.clone();
        let command = append(id);
        tokio::spawn(async move { proposer.propose(command, DEADLINE).await })
    }

    /// Waits until `count` proposals wait in the shard's queue.
    async fn wait_queued(proposer: &Proposer<FakeNodes>, count: usize) {
        let started = tokio::time::Instant::now();
        while proposer.queued(shard()) < count {
            assert!(
                started.elapsed() < QUEUE_WAIT,
                "{} of {count} proposals queued after {QUEUE_WAIT:?}",
                proposer.queued(shard())
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Proposes one lone command, whose call keeps the shard's only call
    /// slot busy until the gate opens, then queues `ids` one after another.
    async fn hold_slot_and_queue(
        proposer: &Arc<Proposer<FakeNodes>>,
        started: &mut mpsc::UnboundedReceiver<()>,
        ids: &[String],
    ) -> (Handle, Vec<Handle>) {
        let lone = spawn_propose(proposer, "lone");
        started
            .recv()
            .await
            .expect("the lone proposal starts a call");
        let mut queued = Vec::new();
        for (index, id) in ids.iter().enumerate() {
            queued.push(spawn_propose(proposer, id));
            wait_queued(proposer, index + 1).await;
        }
        (lone, queued)
    }

    fn ids(count: usize) -> Vec<String> {
        (0..count).map(|index| format!("m{index}")).collect()
    }

    #[tokio::test]
    async fn burst_becomes_few_batch_calls() {
        let (nodes, mut started) = FakeNodes::new(false);
        let proposer = learned_proposer(nodes, limits(1, 256)).await;
        let burst = ids(100);

        let (lone, queued) = hold_slot_and_queue(&proposer, &mut started, &burst).await;
        proposer.nodes.gate.add_permits(1);

        assert!(lone.await.expect("lone proposal task").is_ok());
        for handle in queued {
            assert!(handle.await.expect("queued proposal task").is_ok());
        }
        assert_eq!(proposer.nodes.batch_sizes(), [1, 100]);
        let calls = proposer.nodes.calls();
        assert_eq!(
            calls[1],
            Call::Batch {
                node: LEADER,
                ids: vec!["lone".into()]
            },
            "the lone proposal goes at once to the leader learned from the setup reply"
        );
        assert_eq!(
            calls[2],
            Call::Batch {
                node: LEADER,
                ids: burst
            }
        );
    }

    #[tokio::test]
    async fn burst_splits_at_commands_max() {
        let (nodes, mut started) = FakeNodes::new(false);
        let proposer = learned_proposer(nodes, limits(1, 32)).await;

        let (lone, queued) = hold_slot_and_queue(&proposer, &mut started, &ids(100)).await;
        proposer.nodes.gate.add_permits(1);

        assert!(lone.await.expect("lone proposal task").is_ok());
        for handle in queued {
            assert!(handle.await.expect("queued proposal task").is_ok());
        }
        assert_eq!(proposer.nodes.batch_sizes(), [1, 32, 32, 32, 4]);
    }

    #[tokio::test]
    async fn outcomes_reach_their_callers_in_order() {
        let (nodes, mut started) = FakeNodes::new(false);
        lock(&nodes.command_errors).insert("m7".into(), tonic::Code::InvalidArgument);
        let proposer = learned_proposer(nodes, limits(1, 256)).await;
        let burst = ids(20);

        let (lone, queued) = hold_slot_and_queue(&proposer, &mut started, &burst).await;
        proposer.nodes.gate.add_permits(1);

        let lone = lone
            .await
            .expect("lone proposal task")
            .expect("lone commits");
        assert_eq!(seq_of(&lone), 2);
        let mut previous_seq = seq_of(&lone);
        for (id, handle) in burst.iter().zip(queued) {
            let outcome = handle.await.expect("queued proposal task");
            if id == "m7" {
                let error = outcome.expect_err("m7 gets its own error");
                let status = error
                    .status()
                    .expect("m7's error carries the node's status");
                assert_eq!(status.code(), tonic::Code::InvalidArgument);
                assert_eq!(status.message(), "InvalidArgument for m7");
                continue;
            }
            let reply = outcome.unwrap_or_else(|error| panic!("{id} failed: {error}"));
            assert_eq!(Some(seq_of(&reply)), proposer.nodes.seq_of_id(id), "{id}");
            assert!(seq_of(&reply) > previous_seq, "{id} committed out of order");
            previous_seq = seq_of(&reply);
        }
        let retried_m7 = proposer
            .nodes
            .calls()
            .into_iter()
            .any(|call| matches!(call, Call::Unary { id, .. } if id == "m7"));
        assert!(
            !retried_m7,
            "a non-transient error is returned, not retried"
        );
    }

    #[tokio::test]
    async fn failed_call_retries_its_commands() {
        let (nodes, mut started) = FakeNodes::new(false);
        *lock(&nodes.failing_batch_calls) = 1;
        let proposer = learned_proposer(nodes, limits(1, 256)).await;
        let burst = ids(10);

        let (lone, queued) = hold_slot_and_queue(&proposer, &mut started, &burst).await;
        proposer.nodes.gate.add_permits(1);

        let lone = lone
            .await
            .expect("lone proposal task")
            .expect("lone commits");
        assert_eq!(Some(seq_of(&lone)), proposer.nodes.seq_of_id("lone"));
        for (id, handle) in burst.iter().zip(queued) {
            let reply = handle
                .await
                .expect("queued proposal task")
                .unwrap_or_else(|error| panic!("{id} failed: {error}"));
            assert_eq!(Some(seq_of(&reply)), proposer.nodes.seq_of_id(id), "{id}");
        }
        let calls = proposer.nodes.calls();
        assert_eq!(
            calls[1],
            Call::Batch {
                node: LEADER,
                ids: vec!["lone".into()]
            }
        );
        let lone_retries = calls
            .iter()
            .filter(|call| matches!(call, Call::Unary { id, .. } if id == "lone"))
            .count();
        assert_eq!(
            lone_retries, 1,
            "the failed call's command is retried once: {calls:?}"
        );
        assert_eq!(proposer.nodes.batch_sizes(), [1, 10]);
    }

    #[tokio::test]
    async fn transient_command_error_is_retried() {
        let (nodes, _started) = FakeNodes::new(true);
        lock(&nodes.command_errors).insert("m0".into(), tonic::Code::Unavailable);
        let proposer = learned_proposer(nodes, limits(1, 256)).await;

        let reply = proposer
            .propose(append("m0"), DEADLINE)
            .await
            .expect("m0 commits on retry");

        assert_eq!(Some(seq_of(&reply)), proposer.nodes.seq_of_id("m0"));
        assert_eq!(
            proposer.nodes.calls()[1..],
            [
                Call::Batch {
                    node: LEADER,
                    ids: vec!["m0".into()]
                },
                Call::Unary {
                    node: (LEADER + 1) % addresses().len(),
                    id: "m0".into()
                },
            ]
        );
    }
}
