//! `ProposeBatch` over real sockets, against three real `parley node`
//! processes with eight shards. The tests cover:
//! - a batch that commits in request order, in one log entry, with
//!   gap-free seqs;
//! - a command retried in a later batch, which comes back as a duplicate
//!   with its original seq;
//! - a batch that mixes shards, an empty batch and a batch above the
//!   limit, which return INVALID_ARGUMENT naming the values;
//! - a batch sent to a follower, which the follower forwards to the leader;
//! - concurrent proposals through `ClusterClient`, which share batches and
//!   commit gap-free.
//!
//! Each test starts its own cluster. Batches are sent to one node
//! directly, so the gRPC code in the test is the code that node returned.

mod common;

use std::time::{Duration, Instant};

use common::ProcessCluster;
use parley_core::proto::command::Kind;
use parley_core::proto::command_result::Outcome;
use parley_core::proto::{Append, Appended, Command, CreateGroup};
use parley_core::COMMAND_VERSION;
use parley_shards::client::ClusterClient;
use parley_shards::host::{PROPOSE_BATCH_BYTES_MAX, PROPOSE_BATCH_COMMANDS_MAX};
use parley_shards::proto::node_api_client::NodeApiClient;
use parley_shards::proto::{propose_outcome, ProposeBatchReply, ProposeBatchRequest, ProposeReply};
use parley_shards::shard_map::shard_of_id;
use tonic::Code;

const NODE_COUNT: usize = 3;
const SHARD_COUNT: u32 = 8;
const LEADER_WAIT: Duration = Duration::from_secs(60);
/// Deadline of one call to one node. A call without a reply by then is a
/// hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a batch keeps being resent while an election makes it fail
/// with a transient code.
const RETRY_DEADLINE: Duration = Duration::from_secs(30);
/// How long `ClusterClient::propose` retries one command.
const PROPOSE_DEADLINE: Duration = Duration::from_secs(30);

const GROUP: &str = "batch-group";
const ALICE: &str = "alice";
const ALICE_DEVICE: &str = "alice-phone";
const BOB: &str = "bob";

fn command(kind: Kind) -> Command {
    Command {
        version: COMMAND_VERSION,
        kind: Some(kind),
    }
}

fn append_by_alice(conversation_id: &str, client_message_id: &str) -> Command {
    command(Kind::Append(Append {
        conversation_id: conversation_id.to_string(),
        sender_user: ALICE.to_string(),
        sender_device: ALICE_DEVICE.to_string(),
        client_message_id: client_message_id.to_string(),
        body: client_message_id.as_bytes().to_vec(),
        proposer_time_ms: 0,
    }))
}

fn appends(ids: &[String]) -> Vec<Command> {
    ids.iter().map(|id| append_by_alice(GROUP, id)).collect()
}

fn message_ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|index| format!("{prefix}-{index}"))
        .collect()
}

fn is_transient(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::DeadlineExceeded)
}

/// Returns the committed reply of every outcome, failing the test on a
/// per-command error.
fn committed_replies(case: &str, reply: ProposeBatchReply) -> Vec<ProposeReply> {
    reply
        .outcomes
        .into_iter()
        .enumerate()
        .map(|(index, outcome)| match outcome.outcome {
            Some(propose_outcome::Outcome::Committed(reply)) => reply,
            other => panic!("{case}: command {index} did not commit: {other:?}"),
        })
        .collect()
}

fn appended(case: &str, reply: &ProposeReply) -> Appended {
    match reply
        .result
        .as_ref()
        .and_then(|result| result.outcome.as_ref())
    {
        Some(Outcome::Appended(appended)) => appended.clone(),
        other => panic!("{case}: expected an appended result, got {other:?}"),
    }
}

/// A running cluster with `GROUP` created, and direct calls to its nodes.
struct TestCluster {
    cluster: ProcessCluster,
    client: ClusterClient,
}

impl TestCluster {
    /// Starts three nodes, waits for every shard leader and creates
    /// `GROUP`.
    async fn start() -> TestCluster {
        let cluster = ProcessCluster::start(NODE_COUNT, SHARD_COUNT);
        cluster.wait_for_leaders(LEADER_WAIT).await;
        let client = cluster.client();
        let create = Kind::CreateGroup(CreateGroup {
            conversation_id: GROUP.to_string(),
            creator: ALICE.to_string(),
            members: vec![BOB.to_string()],
        });
        let reply = client
            .propose(command(create), PROPOSE_DEADLINE)
            .await
            .unwrap_or_else(|error| panic!("creating {GROUP} failed: {error:#}"));
        match reply.result.and_then(|result| result.outcome) {
            Some(Outcome::ConversationCreated(_)) => {}
            other => panic!("creating {GROUP} returned {other:?}"),
        }
        TestCluster { cluster, client }
    }

    async fn connect(&self, index: usize) -> NodeApiClient<tonic::transport::Channel> {
        let address = &self.cluster.addresses[index];
        NodeApiClient::connect(format!("http://{address}"))
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "failed to connect to node {} at {address}: {error}",
                    index + 1
                )
            })
    }

    /// Sends `commands` as one batch to the node at `index` and returns
    /// the node's reply or status. While the call or any command fails with
    /// a transient code, as during an election, the batch is sent again
    /// unchanged, because a resent append is deduplicated by its id.
    async fn propose_batch_on(
        &self,
        index: usize,
        commands: Vec<Command>,
    ) -> Result<ProposeBatchReply, tonic::Status> {
        let started = Instant::now();
        loop {
            let request = ProposeBatchRequest {
                commands: commands.clone(),
                hops: 0,
            };
            let mut client = self.connect(index).await;
            let reply = tokio::time::timeout(CALL_TIMEOUT, client.propose_batch(request))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "node {} sent no ProposeBatch reply within {CALL_TIMEOUT:?}",
                        index + 1
                    )
                })
                .map(tonic::Response::into_inner);
            let transient = match &reply {
                Ok(reply) => first_transient_error(reply),
                Err(status) if is_transient(status.code()) => Some(status.to_string()),
                Err(_) => None,
            };
            match transient {
                Some(error) if started.elapsed() < RETRY_DEADLINE => {
                    eprintln!("resending ProposeBatch to node {} after {error}", index + 1);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                _ => return reply,
            }
        }
    }

    /// Sends `commands` to the node at `index` and returns the status,
    /// failing the test if the batch is accepted.
    async fn batch_error_on(
        &self,
        index: usize,
        case: &str,
        commands: Vec<Command>,
    ) -> tonic::Status {
        match self.propose_batch_on(index, commands).await {
            Err(status) => status,
            Ok(reply) => panic!("{case}: expected an error status, got the reply {reply:?}"),
        }
    }

    /// Returns the index of the node that leads `shard`, from node 1's
    /// status.
    async fn leader_index(&self, shard: u32) -> usize {
        let status = self
            .client
            .status(0, false)
            .await
            .unwrap_or_else(|error| panic!("status of node 1 failed: {error:#}"));
        let leader_id = status
            .shards
            .iter()
            .find(|replica| replica.shard_id == shard)
            .map(|replica| replica.leader_id)
            .unwrap_or_else(|| panic!("node 1 carries no replica of shard {shard}"));
        assert_ne!(
            leader_id, 0,
            "shard {shard} has no leader according to node 1"
        );
        usize::try_from(leader_id - 1).expect("node ids are small")
    }
}

fn first_transient_error(reply: &ProposeBatchReply) -> Option<String> {
    reply
        .outcomes
        .iter()
        .find_map(|outcome| match &outcome.outcome {
            Some(propose_outcome::Outcome::Error(error))
                if is_transient(Code::from(error.code)) =>
            {
                Some(error.message.clone())
            }
            _ => None,
        })
}

/// Returns a conversation id whose shard differs from `GROUP`'s.
fn id_in_other_shard() -> String {
    let group_shard = shard_of_id(GROUP, SHARD_COUNT);
    (0..)
        .map(|index| format!("other-{index}"))
        .find(|id| shard_of_id(id, SHARD_COUNT) != group_shard)
        .expect("some id hashes to another of 8 shards")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_commits_in_order_with_gap_free_seqs() {
    let cluster = TestCluster::start().await;
    let leader = cluster.leader_index(shard_of_id(GROUP, SHARD_COUNT)).await;
    let ids = message_ids("ordered", 50);

    let reply = cluster
        .propose_batch_on(leader, appends(&ids))
        .await
        .unwrap_or_else(|status| panic!("the batch failed: {status:?}"));

    let replies = committed_replies("ordered batch", reply);
    assert_eq!(replies.len(), ids.len(), "one outcome per command");
    for (index, reply) in replies.iter().enumerate() {
        let appended = appended(&ids[index], reply);
        assert_eq!(appended.seq, index as u64 + 1, "{}", ids[index]);
        assert!(!appended.duplicate, "{} is new", ids[index]);
        assert_eq!(
            reply.log_index,
            replies[0].log_index + index as u64,
            "{} is the next command of the same log entry",
            ids[index]
        );
        assert_eq!(reply.shard_id, shard_of_id(GROUP, SHARD_COUNT));
    }

    let (messages, _) = cluster
        .client
        .history_linearizable(GROUP, ALICE, PROPOSE_DEADLINE)
        .await
        .unwrap_or_else(|error| panic!("reading {GROUP} failed: {error:#}"));
    let stored: Vec<(u64, String)> = messages
        .into_iter()
        .map(|message| (message.seq, message.client_message_id))
        .collect();
    let expected: Vec<(u64, String)> = (1..).zip(ids).collect();
    assert_eq!(stored, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_command_in_batch_returns_original_seq() {
    let cluster = TestCluster::start().await;
    let leader = cluster.leader_index(shard_of_id(GROUP, SHARD_COUNT)).await;
    let ids = message_ids("retried", 3);

    let first = cluster
        .propose_batch_on(leader, appends(&ids[..2]))
        .await
        .unwrap_or_else(|status| panic!("the first batch failed: {status:?}"));
    let first = committed_replies("first batch", first);
    let original = appended(&ids[1], &first[1]);
    assert_eq!(original.seq, 2);
    let second = cluster
        .propose_batch_on(leader, appends(&ids[1..]))
        .await
        .unwrap_or_else(|status| panic!("the second batch failed: {status:?}"));
    let second = committed_replies("second batch", second);

    let retried = appended(&ids[1], &second[0]);
    assert!(retried.duplicate, "the retried command is a duplicate");
    assert_eq!(retried.seq, original.seq);
    assert_eq!(retried.server_time_ms, original.server_time_ms);
    let new = appended(&ids[2], &second[1]);
    assert!(!new.duplicate, "the command after it is new");
    assert_eq!(new.seq, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_shard_batch_is_invalid_argument() {
    let cluster = TestCluster::start().await;
    let other = id_in_other_shard();
    let commands = vec![
        append_by_alice(GROUP, "mixed-0"),
        append_by_alice(&other, "mixed-1"),
    ];

    let status = cluster.batch_error_on(0, "mixed batch", commands).await;

    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let message = status.message();
    let group_shard = shard_of_id(GROUP, SHARD_COUNT);
    let other_shard = shard_of_id(&other, SHARD_COUNT);
    assert!(message.contains("commands[1]"), "{message}");
    assert!(
        message.contains(&format!("shard {other_shard}")),
        "{message}"
    );
    assert!(
        message.contains(&format!("shard {group_shard}")),
        "{message}"
    );
    assert!(message.contains("one batch per shard"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_batch_is_invalid_argument() {
    let cluster = TestCluster::start().await;

    let status = cluster.batch_error_on(0, "empty batch", Vec::new()).await;

    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let message = status.message();
    assert!(
        message.contains("ProposeBatchRequest.commands"),
        "{message}"
    );
    assert!(message.contains("0 commands"), "{message}");
    assert!(
        message.contains(&format!("1 to {PROPOSE_BATCH_COMMANDS_MAX}")),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_batch_is_invalid_argument() {
    let cluster = TestCluster::start().await;
    let ids = message_ids("oversized", PROPOSE_BATCH_COMMANDS_MAX + 1);

    let status = cluster
        .batch_error_on(0, "oversized batch", appends(&ids))
        .await;

    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let message = status.message();
    assert!(
        message.contains(&format!("{} commands", PROPOSE_BATCH_COMMANDS_MAX + 1)),
        "{message}"
    );
    assert!(
        message.contains(&format!("limit of {PROPOSE_BATCH_COMMANDS_MAX}")),
        "{message}"
    );
    let (messages, _) = cluster
        .client
        .history_linearizable(GROUP, ALICE, PROPOSE_DEADLINE)
        .await
        .unwrap_or_else(|error| panic!("reading {GROUP} failed: {error:#}"));
    assert!(
        messages.is_empty(),
        "no command of a rejected batch commits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_above_byte_limit_is_invalid_argument() {
    let cluster = TestCluster::start().await;
    // Valid commands: each body is at the 64 KiB limit, but 256 of them
    // would make one 16 MiB log entry.
    let ids = message_ids("heavy", PROPOSE_BATCH_COMMANDS_MAX);
    let commands = ids
        .iter()
        .map(|id| {
            let mut command = append_by_alice(GROUP, id);
            if let Some(Kind::Append(append)) = command.kind.as_mut() {
                append.body = vec![b'x'; 65_536];
            }
            command
        })
        .collect();

    let status = cluster
        .batch_error_on(0, "batch above the byte limit", commands)
        .await;

    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let message = status.message();
    assert!(
        message.contains(&format!("limit of {PROPOSE_BATCH_BYTES_MAX}")),
        "{message}"
    );
    let ids = message_ids("after-heavy", 3);
    let reply = cluster
        .propose_batch_on(0, appends(&ids))
        .await
        .unwrap_or_else(|status| panic!("the batch after the rejected one failed: {status:?}"));
    assert_eq!(
        committed_replies("batch after the rejected one", reply).len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_sent_to_follower_is_forwarded() {
    let cluster = TestCluster::start().await;
    let shard = shard_of_id(GROUP, SHARD_COUNT);

    // An election between reading the leader and the call can make the
    // chosen follower the leader, so the case is tried up to three times.
    for attempt in 0..3 {
        let leader = cluster.leader_index(shard).await;
        let follower = (leader + 1) % NODE_COUNT;
        let ids = message_ids(&format!("forwarded-{attempt}"), 10);

        let reply = cluster
            .propose_batch_on(follower, appends(&ids))
            .await
            .unwrap_or_else(|status| panic!("the batch failed: {status:?}"));

        let replies = committed_replies("forwarded batch", reply);
        assert_eq!(replies.len(), ids.len(), "one outcome per command");
        let committer = &replies[0].leader_address;
        if *committer == cluster.cluster.addresses[follower] {
            eprintln!(
                "node {} led shard {shard} by the time the batch arrived",
                follower + 1
            );
            continue;
        }
        for (index, reply) in replies.iter().enumerate() {
            assert_eq!(
                reply.leader_address,
                cluster.cluster.addresses[leader],
                "{} was committed by the leader, node {}",
                ids[index],
                leader + 1
            );
        }
        let seqs: Vec<u64> = replies
            .iter()
            .zip(&ids)
            .map(|(reply, id)| appended(id, reply).seq)
            .collect();
        let first = seqs[0];
        let expected: Vec<u64> = (first..first + ids.len() as u64).collect();
        assert_eq!(seqs, expected, "the forwarded batch commits gap-free");
        return;
    }
    panic!("shard {shard} changed leader during each of 3 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_client_proposals_commit_gap_free() {
    let cluster = TestCluster::start().await;
    let ids = message_ids("concurrent", 300);

    let proposals = ids.iter().map(|id| {
        let client = cluster.client.clone();
        let command = append_by_alice(GROUP, id);
        async move { client.propose(command, PROPOSE_DEADLINE).await }
    });
    let replies = futures::future::join_all(proposals).await;

    let mut seqs = Vec::new();
    for (id, reply) in ids.iter().zip(replies) {
        let reply = reply.unwrap_or_else(|error| panic!("{id} failed: {error:#}"));
        let appended = appended(id, &reply);
        assert!(!appended.duplicate, "{id} is new");
        seqs.push(appended.seq);
    }
    seqs.sort_unstable();
    let expected: Vec<u64> = (1..=ids.len() as u64).collect();
    assert_eq!(
        seqs, expected,
        "every proposal got its own seq, with no gap"
    );
    let (messages, _) = cluster
        .client
        .history_linearizable(GROUP, ALICE, PROPOSE_DEADLINE)
        .await
        .unwrap_or_else(|error| panic!("reading {GROUP} failed: {error:#}"));
    assert_eq!(messages.len(), ids.len());
}
