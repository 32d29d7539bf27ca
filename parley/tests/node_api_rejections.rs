//! Rejections of the node API over real sockets, against three real
//! `parley node` processes with eight shards. The tests cover:
//! - state machine rejections, which return gRPC OK with `result.rejected`;
//! - request-shape errors, which return INVALID_ARGUMENT;
//! - reads by non-members, which return PERMISSION_DENIED on the leader's
//!   node and on the followers' nodes, and reads of unknown conversations,
//!   which return NOT_FOUND;
//! - every replica's state digest, which no rejected command may change;
//! - `parley node` with invalid flags, which must exit with a clear message.
//!
//! Each async test starts its own cluster and seeds it with one group whose
//! only messages come from `ALICE`. Rejections are proposed to node 1
//! directly, so the gRPC code in the test is the code the node returned.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::ProcessCluster;
use parley_core::proto::command::Kind;
use parley_core::proto::command_result::Outcome;
use parley_core::proto::{
    AddMembers, Append, Command, CreateGroup, HistoryQuery, MarkRead, RegisterUser, Rejection,
    RejectionCode,
};
use parley_core::{Limits, COMMAND_VERSION};
use parley_shards::client::ClusterClient;
use parley_shards::proto::node_api_client::NodeApiClient;
use parley_shards::proto::{
    Consistency, HistoryReply, HistoryRequest, ProposeReply, ProposeRequest,
};
use parley_shards::shard_map::shard_of_id;
use tonic::transport::Channel;
use tonic::Code;

const NODE_COUNT: usize = 3;
const SHARD_COUNT: u32 = 8;
const LEADER_WAIT: Duration = Duration::from_secs(60);
/// Deadline of one call to one node. A call without a reply by then is a hang.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a direct call keeps retrying UNAVAILABLE and DEADLINE_EXCEEDED,
/// which an election in the middle of a test returns.
const RETRY_DEADLINE: Duration = Duration::from_secs(30);
/// How long `ClusterClient::propose` retries a setup command.
const PROPOSE_DEADLINE: Duration = Duration::from_secs(30);
/// How long a `parley node` with invalid flags may run before the test
/// counts it as not having rejected them.
const NODE_EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// The seeded group: `ALICE` created it with `BOB`, and `ALICE` posted one
/// message, so its last seq is 1.
const GROUP: &str = "team";
const ALICE: &str = "alice";
const ALICE_DEVICE: &str = "alice-phone";
const BOB: &str = "bob";
/// A user who belongs to no conversation.
const MALLORY: &str = "mallory";
/// The group that `fill_group_to_max` fills to `group_members_max`.
const FULL_GROUP: &str = "stadium";
const BAD_ID: &str = "bad id!";

fn command(kind: Kind) -> Command {
    Command {
        version: COMMAND_VERSION,
        kind: Some(kind),
    }
}

fn append_by_alice(conversation_id: &str, client_message_id: &str, body: Vec<u8>) -> Kind {
    Kind::Append(Append {
        conversation_id: conversation_id.to_string(),
        sender_user: ALICE.to_string(),
        sender_device: ALICE_DEVICE.to_string(),
        client_message_id: client_message_id.to_string(),
        body,
        proposer_time_ms: 0,
    })
}

fn history_request(reader: &str, consistency: Consistency) -> HistoryRequest {
    HistoryRequest {
        query: Some(HistoryQuery {
            conversation_id: GROUP.to_string(),
            reader: reader.to_string(),
            from_seq: 1,
            limit: 0,
        }),
        consistency: consistency as i32,
        min_applied_index: 0,
        hops: 0,
    }
}

fn member_id(index: usize) -> String {
    format!("member-{index}")
}

fn is_transient(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
}

/// A running cluster with the seeded group, and direct calls to its nodes.
struct TestCluster {
    cluster: ProcessCluster,
    client: ClusterClient,
}

impl TestCluster {
    /// Starts three nodes, waits for every shard leader and seeds `GROUP`.
    async fn start() -> TestCluster {
        let cluster = ProcessCluster::start(NODE_COUNT, SHARD_COUNT);
        cluster.wait_for_leaders(LEADER_WAIT).await;
        let client = cluster.client();
        let test_cluster = TestCluster { cluster, client };

        test_cluster
            .commit(
                "creating the seeded group",
                Kind::CreateGroup(CreateGroup {
                    conversation_id: GROUP.to_string(),
                    creator: ALICE.to_string(),
                    members: vec![BOB.to_string()],
                }),
            )
            .await;
        test_cluster
            .commit(
                "appending the seeded message",
                append_by_alice(GROUP, "seed-message", b"hello".to_vec()),
            )
            .await;
        test_cluster
    }

    /// Proposes a setup command through the retrying client and returns its
    /// outcome, failing the test when it is rejected.
    async fn commit(&self, case: &str, kind: Kind) -> Outcome {
        let reply = self
            .client
            .propose(command(kind), PROPOSE_DEADLINE)
            .await
            .unwrap_or_else(|error| panic!("{case} failed: {error:#}"));
        match reply.result.and_then(|result| result.outcome) {
            Some(Outcome::Rejected(rejection)) => panic!("{case} was rejected: {rejection:?}"),
            Some(outcome) => outcome,
            None => panic!("{case} returned a result without an outcome"),
        }
    }

    async fn connect(&self, index: usize) -> NodeApiClient<Channel> {
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

    /// Sends `request` to the node at `index`, retrying only the transient
    /// codes of an election, and returns the node's reply or status.
    async fn propose_on(
        &self,
        index: usize,
        request: ProposeRequest,
    ) -> Result<ProposeReply, tonic::Status> {
        let started = Instant::now();
        loop {
            let mut client = self.connect(index).await;
            let reply = tokio::time::timeout(CALL_TIMEOUT, client.propose(request.clone()))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "node {} sent no Propose reply within {CALL_TIMEOUT:?}",
                        index + 1
                    )
                });
            match reply {
                Err(status) if is_transient(&status) && started.elapsed() < RETRY_DEADLINE => {
                    eprintln!("retrying Propose on node {} after {status}", index + 1);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other.map(tonic::Response::into_inner),
            }
        }
    }

    /// Sends `request` to the node at `index`, retrying only the transient
    /// codes of an election, and returns the node's reply or status.
    async fn history_on(
        &self,
        index: usize,
        request: HistoryRequest,
    ) -> Result<HistoryReply, tonic::Status> {
        let started = Instant::now();
        loop {
            let mut client = self.connect(index).await;
            let reply = tokio::time::timeout(CALL_TIMEOUT, client.history(request.clone()))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "node {} sent no History reply within {CALL_TIMEOUT:?}",
                        index + 1
                    )
                });
            match reply {
                Err(status) if is_transient(&status) && started.elapsed() < RETRY_DEADLINE => {
                    eprintln!("retrying History on node {} after {status}", index + 1);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => return other.map(tonic::Response::into_inner),
            }
        }
    }

    /// Proposes `command` to node 1 and returns its rejection, failing the
    /// test unless the node replies OK with a rejected result.
    async fn rejection_of(&self, case: &str, command: Command) -> Rejection {
        let request = ProposeRequest {
            command: Some(command),
            hops: 0,
        };
        let reply = match self.propose_on(0, request).await {
            Ok(reply) => reply,
            Err(status) => panic!(
                "{case}: expected gRPC OK with a rejected result, got {:?}: {}",
                status.code(),
                status.message()
            ),
        };
        match reply.result.and_then(|result| result.outcome) {
            Some(Outcome::Rejected(rejection)) => rejection,
            other => panic!("{case}: expected a rejected result, got {other:?}"),
        }
    }

    /// Sends `request` to the node at `index` and returns the error status,
    /// failing the test if the request succeeds.
    async fn propose_error_on(
        &self,
        index: usize,
        case: &str,
        request: ProposeRequest,
    ) -> tonic::Status {
        match self.propose_on(index, request).await {
            Err(status) => status,
            Ok(reply) => panic!("{case}: expected an error status, got the reply {reply:?}"),
        }
    }

    /// Sends `request` to the node at `index` and returns the error status,
    /// failing the test if the read succeeds.
    async fn history_error_on(
        &self,
        index: usize,
        case: &str,
        request: HistoryRequest,
    ) -> tonic::Status {
        match self.history_on(index, request).await {
            Err(status) => status,
            Ok(reply) => panic!("{case}: expected an error status, got the reply {reply:?}"),
        }
    }

    /// Returns the index of the node that leads `shard`, from node 1's status.
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

    /// Builds `FULL_GROUP` with exactly `group_members_max` members, in
    /// commands of `members_per_command_max` users each.
    async fn fill_group_to_max(&self) {
        let limits = Limits::default();
        let members: Vec<String> = (0..limits.group_members_max).map(member_id).collect();
        let mut batches = members.chunks(limits.members_per_command_max);
        let first = batches.next().expect("group_members_max is positive");
        let creator = first[0].clone();
        self.commit(
            "creating the group to fill",
            Kind::CreateGroup(CreateGroup {
                conversation_id: FULL_GROUP.to_string(),
                creator: creator.clone(),
                members: first[1..].to_vec(),
            }),
        )
        .await;

        let mut member_count = first.len();
        for (number, batch) in batches.enumerate() {
            let case = format!("adding batch {} to the group to fill", number + 1);
            let outcome = self
                .commit(
                    &case,
                    Kind::AddMembers(AddMembers {
                        conversation_id: FULL_GROUP.to_string(),
                        actor: creator.clone(),
                        users: batch.to_vec(),
                    }),
                )
                .await;
            let Outcome::MembersChanged(changed) = outcome else {
                panic!("{case} returned {outcome:?} instead of MembersChanged");
            };
            member_count = changed.member_count as usize;
        }
        assert_eq!(
            member_count, limits.group_members_max,
            "the filled group should have exactly group_members_max members"
        );
    }

    async fn check_append_to_unknown_conversation(&self) {
        let rejection = self
            .rejection_of(
                "append to an unknown conversation",
                command(append_by_alice(
                    "no-such-conversation",
                    "m-unknown",
                    b"hi".to_vec(),
                )),
            )
            .await;

        assert_eq!(
            rejection.code(),
            RejectionCode::UnknownConversation,
            "an append to a conversation nobody created should be UNKNOWN_CONVERSATION: {rejection:?}"
        );
        assert!(
            rejection.message.contains("\"no-such-conversation\""),
            "the message should quote the unknown conversation id: {}",
            rejection.message
        );
        assert!(
            rejection.message.contains("CreateGroup"),
            "the message should say how to create the conversation: {}",
            rejection.message
        );
    }

    async fn check_non_member_append(&self) {
        let rejection = self
            .rejection_of(
                "append by a non-member",
                command(Kind::Append(Append {
                    conversation_id: GROUP.to_string(),
                    sender_user: MALLORY.to_string(),
                    sender_device: "mallory-phone".to_string(),
                    client_message_id: "m-mallory".to_string(),
                    body: b"let me in".to_vec(),
                    proposer_time_ms: 0,
                })),
            )
            .await;

        assert_eq!(
            rejection.code(),
            RejectionCode::NotAMember,
            "an append by a user outside the group should be NOT_A_MEMBER: {rejection:?}"
        );
        assert!(
            rejection.message.contains("append.sender_user"),
            "the message should name the field append.sender_user: {}",
            rejection.message
        );
        assert!(
            rejection.message.contains(&format!("\"{MALLORY}\"")),
            "the message should quote the sender: {}",
            rejection.message
        );
        assert!(
            rejection.message.contains(&format!("\"{GROUP}\"")),
            "the message should quote the conversation id: {}",
            rejection.message
        );
    }

    async fn check_oversized_body(&self) {
        let limit = Limits::default().body_bytes_max;
        let rejection = self
            .rejection_of(
                "append with a body one byte over body_bytes_max",
                command(append_by_alice(GROUP, "m-too-large", vec![b'x'; limit + 1])),
            )
            .await;

        assert_eq!(
            rejection.code(),
            RejectionCode::BodyTooLarge,
            "a body of body_bytes_max + 1 bytes should be BODY_TOO_LARGE: {rejection:?}"
        );
        assert!(
            rejection.message.contains("append.body"),
            "the message should name the field append.body: {}",
            rejection.message
        );
        assert!(
            rejection.message.contains(&format!("{} bytes", limit + 1)),
            "the message should give the body size {}: {}",
            limit + 1,
            rejection.message
        );
        assert!(
            rejection
                .message
                .contains(&format!("body_bytes_max {limit}")),
            "the message should give the limit body_bytes_max {limit}: {}",
            rejection.message
        );
    }

    /// Expects `FULL_GROUP` to be full already; see `fill_group_to_max`.
    async fn check_full_group_rejects_one_more(&self) {
        let limit = Limits::default().group_members_max;
        let rejection = self
            .rejection_of(
                "adding one member to a full group",
                command(Kind::AddMembers(AddMembers {
                    conversation_id: FULL_GROUP.to_string(),
                    actor: member_id(0),
                    users: vec![member_id(limit)],
                })),
            )
            .await;

        assert_eq!(
            rejection.code(),
            RejectionCode::GroupFull,
            "adding a member to a group at group_members_max should be GROUP_FULL: {rejection:?}"
        );
        assert!(
            rejection.message.contains(&format!("\"{FULL_GROUP}\"")),
            "the message should quote the group id: {}",
            rejection.message
        );
        assert!(
            rejection
                .message
                .contains(&format!("{} members", limit + 1)),
            "the message should give the member count {} the command would reach: {}",
            limit + 1,
            rejection.message
        );
        assert!(
            rejection
                .message
                .contains(&format!("group_members_max {limit}")),
            "the message should give the limit group_members_max {limit}: {}",
            rejection.message
        );
    }

    async fn check_too_many_users_per_command(&self) {
        let limit = Limits::default().members_per_command_max;
        let users: Vec<String> = (0..=limit).map(|index| format!("extra-{index}")).collect();
        let add = self
            .rejection_of(
                "AddMembers listing members_per_command_max + 1 users",
                command(Kind::AddMembers(AddMembers {
                    conversation_id: GROUP.to_string(),
                    actor: ALICE.to_string(),
                    users: users.clone(),
                })),
            )
            .await;
        let create = self
            .rejection_of(
                "CreateGroup listing members_per_command_max + 1 users",
                command(Kind::CreateGroup(CreateGroup {
                    conversation_id: "crowd".to_string(),
                    creator: ALICE.to_string(),
                    members: users,
                })),
            )
            .await;

        for (rejection, field) in [(add, "add_members.users"), (create, "create_group.members")] {
            assert_eq!(
                rejection.code(),
                RejectionCode::TooManyItems,
                "{field} with {} users should be TOO_MANY_ITEMS: {rejection:?}",
                limit + 1
            );
            assert!(
                rejection.message.contains(field),
                "the message should name the field {field}: {}",
                rejection.message
            );
            assert!(
                rejection.message.contains(&format!("{} users", limit + 1)),
                "the message should give the user count {}: {}",
                limit + 1,
                rejection.message
            );
            assert!(
                rejection
                    .message
                    .contains(&format!("members_per_command_max {limit}")),
                "the message should give the limit members_per_command_max {limit}: {}",
                rejection.message
            );
        }
    }

    async fn check_malformed_ids(&self) {
        let cases = [
            (
                "register_user.user_id",
                Kind::RegisterUser(RegisterUser {
                    user_id: BAD_ID.to_string(),
                }),
            ),
            (
                "create_group.conversation_id",
                Kind::CreateGroup(CreateGroup {
                    conversation_id: BAD_ID.to_string(),
                    creator: ALICE.to_string(),
                    members: Vec::new(),
                }),
            ),
            (
                "append.sender_device",
                Kind::Append(Append {
                    conversation_id: GROUP.to_string(),
                    sender_user: ALICE.to_string(),
                    sender_device: BAD_ID.to_string(),
                    client_message_id: "m-bad-device".to_string(),
                    body: b"hi".to_vec(),
                    proposer_time_ms: 0,
                }),
            ),
        ];
        for (field, kind) in cases {
            let rejection = self
                .rejection_of(&format!("{field} {BAD_ID:?}"), command(kind))
                .await;
            assert_eq!(
                rejection.code(),
                RejectionCode::InvalidId,
                "{field} {BAD_ID:?} should be INVALID_ID: {rejection:?}"
            );
            assert!(
                rejection.message.contains(field),
                "the message should name the field {field}: {}",
                rejection.message
            );
            assert!(
                rejection.message.contains(&format!("{BAD_ID:?}")),
                "the message should quote the value {BAD_ID:?}: {}",
                rejection.message
            );
        }

        let status = self
            .history_error_on(
                0,
                "history read with a malformed reader id",
                history_request(BAD_ID, Consistency::Linearizable),
            )
            .await;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "a read with reader {BAD_ID:?} should be INVALID_ARGUMENT: {status:?}"
        );
        assert!(
            status.message().contains("history.reader"),
            "the message should name the field history.reader: {}",
            status.message()
        );
        assert!(
            status.message().contains(&format!("{BAD_ID:?}")),
            "the message should quote the value {BAD_ID:?}: {}",
            status.message()
        );
    }

    async fn check_mark_read_beyond_last_seq(&self) {
        let rejection = self
            .rejection_of(
                "MarkRead of seq 2 in a group whose last seq is 1",
                command(Kind::MarkRead(MarkRead {
                    conversation_id: GROUP.to_string(),
                    user_id: BOB.to_string(),
                    seq: 2,
                })),
            )
            .await;

        assert_eq!(
            rejection.code(),
            RejectionCode::ReceiptBeyondLastSeq,
            "a read receipt past the last seq should be RECEIPT_BEYOND_LAST_SEQ: {rejection:?}"
        );
        assert!(
            rejection.message.contains("mark_read.seq 2"),
            "the message should name the field mark_read.seq and its value 2: {}",
            rejection.message
        );
        assert!(
            rejection.message.contains("last_seq 1"),
            "the message should give the conversation's last_seq 1: {}",
            rejection.message
        );
    }

    async fn check_unsupported_version(&self) {
        let rejection = self
            .rejection_of(
                "a command of version 99",
                Command {
                    version: 99,
                    kind: Some(Kind::RegisterUser(RegisterUser {
                        user_id: "carol".to_string(),
                    })),
                },
            )
            .await;

        assert_eq!(
            rejection.code(),
            RejectionCode::UnsupportedVersion,
            "a command of version 99 should be UNSUPPORTED_VERSION: {rejection:?}"
        );
        assert!(
            rejection.message.contains("version 99"),
            "the message should name the rejected version 99: {}",
            rejection.message
        );
        assert!(
            rejection
                .message
                .contains(&format!("version {COMMAND_VERSION}")),
            "the message should name the supported version {COMMAND_VERSION}: {}",
            rejection.message
        );
    }

    async fn check_propose_without_command_or_kind(&self) {
        let missing_command = self
            .propose_error_on(
                0,
                "ProposeRequest without a command",
                ProposeRequest {
                    command: None,
                    hops: 0,
                },
            )
            .await;
        assert_eq!(
            missing_command.code(),
            Code::InvalidArgument,
            "a ProposeRequest without a command should be INVALID_ARGUMENT: {missing_command:?}"
        );
        assert!(
            missing_command.message().contains("ProposeRequest.command"),
            "the message should name ProposeRequest.command: {}",
            missing_command.message()
        );

        let missing_kind = self
            .propose_error_on(
                0,
                "Command without a kind",
                ProposeRequest {
                    command: Some(Command {
                        version: COMMAND_VERSION,
                        kind: None,
                    }),
                    hops: 0,
                },
            )
            .await;
        assert_eq!(
            missing_kind.code(),
            Code::InvalidArgument,
            "a Command without a kind should be INVALID_ARGUMENT: {missing_kind:?}"
        );
        assert!(
            missing_kind
                .message()
                .contains("ProposeRequest.command.kind"),
            "the message should name ProposeRequest.command.kind: {}",
            missing_kind.message()
        );
    }

    async fn check_history_without_consistency_or_query(&self) {
        for consistency in [Consistency::Unspecified as i32, 7] {
            let mut request = history_request(ALICE, Consistency::Unspecified);
            request.consistency = consistency;
            let status = self
                .history_error_on(
                    0,
                    &format!("history with consistency {consistency}"),
                    request,
                )
                .await;
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "a read with consistency {consistency} should be INVALID_ARGUMENT: {status:?}"
            );
            assert!(
                status
                    .message()
                    .contains(&format!("HistoryRequest.consistency is {consistency}")),
                "the message should name HistoryRequest.consistency and its value {consistency}: {}",
                status.message()
            );
            assert!(
                status.message().contains("CONSISTENCY_LINEARIZABLE"),
                "the message should list the valid consistency values: {}",
                status.message()
            );
        }

        let mut request = history_request(ALICE, Consistency::Linearizable);
        request.query = None;
        let status = self
            .history_error_on(0, "history without a query", request)
            .await;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "a read without a query should be INVALID_ARGUMENT: {status:?}"
        );
        assert!(
            status.message().contains("HistoryRequest.query"),
            "the message should name HistoryRequest.query: {}",
            status.message()
        );
    }

    /// Reads `GROUP` as `MALLORY` linearizably from every node, so that the
    /// followers forward the read to the leader, and locally from every
    /// follower.
    async fn check_non_member_history_reads(&self) {
        // NOTE: an election between this status call and the reads would
        // swap the roles in the failure messages, but not the expected code.
        let leader = self.leader_index(shard_of_id(GROUP, SHARD_COUNT)).await;
        let mut reads = Vec::new();
        for index in 0..NODE_COUNT {
            let role = if index == leader {
                "leader"
            } else {
                "follower"
            };
            reads.push((index, role, Consistency::Linearizable));
            if index != leader {
                reads.push((index, role, Consistency::Local));
            }
        }

        for (index, role, consistency) in reads {
            let case = format!(
                "{consistency:?} read by a non-member on node {} ({role})",
                index + 1
            );
            let status = self
                .history_error_on(index, &case, history_request(MALLORY, consistency))
                .await;
            assert_eq!(
                status.code(),
                Code::PermissionDenied,
                "{case} should be PERMISSION_DENIED: {status:?}"
            );
            assert!(
                status.message().contains(&format!("\"{MALLORY}\"")),
                "{case}: the message should quote the reader: {}",
                status.message()
            );
            assert!(
                status.message().contains("history.reader"),
                "{case}: the message should name the field history.reader: {}",
                status.message()
            );
        }
    }

    async fn check_unknown_conversation_history_reads(&self) {
        let mut request = history_request(ALICE, Consistency::Linearizable);
        if let Some(query) = request.query.as_mut() {
            query.conversation_id = "no-such-conversation".to_string();
        }
        for index in 0..NODE_COUNT {
            let case = format!("read of an unknown conversation on node {}", index + 1);
            let status = self.history_error_on(index, &case, request.clone()).await;
            assert_eq!(
                status.code(),
                Code::NotFound,
                "{case} should be NOT_FOUND: {status:?}"
            );
            assert!(
                status.message().contains("\"no-such-conversation\""),
                "{case}: the message should quote the conversation id: {}",
                status.message()
            );
        }
    }

    /// Waits until the replicas of every shard have applied the same index,
    /// then returns each replica's state digest and applied index by
    /// (node id, shard id).
    async fn settled_digests(&self) -> BTreeMap<(u64, u32), (String, u64)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut replicas = BTreeMap::new();
            let mut applied_by_shard: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
            for index in 0..NODE_COUNT {
                let status = self
                    .client
                    .status(index, true)
                    .await
                    .unwrap_or_else(|error| {
                        panic!("status of node {} failed: {error:#}", index + 1)
                    });
                for shard in status.shards {
                    applied_by_shard
                        .entry(shard.shard_id)
                        .or_default()
                        .push(shard.last_applied_index);
                    replicas.insert(
                        (status.node_id, shard.shard_id),
                        (shard.state_digest, shard.last_applied_index),
                    );
                }
            }
            let settled = applied_by_shard
                .values()
                .all(|applied| applied.iter().all(|index| *index == applied[0]));
            if settled {
                return replicas;
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not reach the same applied index within 30 s: {applied_by_shard:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_to_unknown_conversation_is_rejected() {
    let cluster = TestCluster::start().await;
    cluster.check_append_to_unknown_conversation().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_member_append_is_rejected_naming_user() {
    let cluster = TestCluster::start().await;
    cluster.check_non_member_append().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_is_rejected_naming_limit() {
    let cluster = TestCluster::start().await;
    cluster.check_oversized_body().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_beyond_group_max_is_rejected_as_full() {
    let cluster = TestCluster::start().await;
    let started = Instant::now();
    cluster.fill_group_to_max().await;
    eprintln!(
        "filled a group to {} members in {:.1} s",
        Limits::default().group_members_max,
        started.elapsed().as_secs_f64()
    );
    cluster.check_full_group_rejects_one_more().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_users_in_one_command_are_rejected() {
    let cluster = TestCluster::start().await;
    cluster.check_too_many_users_per_command().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_id_is_rejected_naming_field() {
    let cluster = TestCluster::start().await;
    cluster.check_malformed_ids().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_read_beyond_last_seq_is_rejected() {
    let cluster = TestCluster::start().await;
    cluster.check_mark_read_beyond_last_seq().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_command_version_is_rejected() {
    let cluster = TestCluster::start().await;
    cluster.check_unsupported_version().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propose_without_command_or_kind_is_invalid() {
    let cluster = TestCluster::start().await;
    cluster.check_propose_without_command_or_kind().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_without_consistency_or_query_is_invalid() {
    let cluster = TestCluster::start().await;
    cluster.check_history_without_consistency_or_query().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_member_read_is_denied_on_every_node() {
    let cluster = TestCluster::start().await;
    cluster.check_non_member_history_reads().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_conversation_read_is_not_found() {
    let cluster = TestCluster::start().await;
    cluster.check_unknown_conversation_history_reads().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_leave_every_replica_digest_unchanged() {
    let cluster = TestCluster::start().await;
    cluster.fill_group_to_max().await;
    let before = cluster.settled_digests().await;

    cluster.check_append_to_unknown_conversation().await;
    cluster.check_non_member_append().await;
    cluster.check_oversized_body().await;
    cluster.check_full_group_rejects_one_more().await;
    cluster.check_too_many_users_per_command().await;
    cluster.check_malformed_ids().await;
    cluster.check_mark_read_beyond_last_seq().await;
    cluster.check_unsupported_version().await;
    cluster.check_propose_without_command_or_kind().await;
    cluster.check_history_without_consistency_or_query().await;
    cluster.check_non_member_history_reads().await;
    cluster.check_unknown_conversation_history_reads().await;
    let after = cluster.settled_digests().await;

    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "the set of (node, shard) replicas changed during the rejections"
    );
    for (replica, (digest_before, applied_before)) in &before {
        let (digest_after, applied_after) = &after[replica];
        assert_eq!(
            digest_after, digest_before,
            "the state digest of (node, shard) {replica:?} changed from applied index \
             {applied_before} to {applied_after}, but every command in between was rejected"
        );
    }
    let applied_before: u64 = before.values().map(|(_, applied)| applied).sum();
    let applied_after: u64 = after.values().map(|(_, applied)| applied).sum();
    assert!(
        applied_after > applied_before,
        "the rejected commands should have been committed and applied (applied indexes sum \
         {applied_before} before, {applied_after} after)"
    );
}

/// The output of a `parley node` process that exited by itself.
struct NodeExit {
    status: ExitStatus,
    stderr: String,
}

/// Returns `count` loopback addresses whose ports were free a moment ago.
fn free_addresses(count: usize) -> Vec<String> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port"))
        .collect();
    listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .expect("a bound listener has an address")
                .to_string()
        })
        .collect()
}

/// Returns `parley node` flags for node 1 of the cluster at `addresses`.
fn node_flags(addresses: &[String], data_dir: &Path) -> Vec<String> {
    let mut flags = vec![
        "--id".to_string(),
        "1".to_string(),
        "--listen".to_string(),
        addresses[0].clone(),
        "--data-dir".to_string(),
        data_dir.display().to_string(),
        "--shards".to_string(),
        SHARD_COUNT.to_string(),
    ];
    for (index, address) in addresses.iter().enumerate() {
        flags.push("--peer".to_string());
        flags.push(format!("{}={address}", index + 1));
    }
    flags
}

/// Replaces the value that follows the first `flag` in `flags`.
fn set_flag(flags: &mut [String], flag: &str, value: &str) {
    let position = flags
        .iter()
        .position(|candidate| candidate == flag)
        .unwrap_or_else(|| panic!("{flag} is not among {flags:?}"));
    flags[position + 1] = value.to_string();
}

/// Runs `parley node` with `flags` and waits for it to exit, killing it and
/// failing the test if it is still running after `NODE_EXIT_TIMEOUT`.
fn run_node_expecting_exit(flags: &[String], log_dir: &Path) -> NodeExit {
    let stderr_path = log_dir.join("stderr.log");
    let stderr_file = std::fs::File::create(&stderr_path).expect("create the node's stderr file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_parley"))
        .arg("node")
        .args(flags)
        .env("RUST_LOG", "info,openraft=warn")
        .stdout(Stdio::null())
        .stderr(stderr_file)
        .spawn()
        .expect("spawn parley node");

    let deadline = Instant::now() + NODE_EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the parley node process") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "parley node {flags:?} was still running after {NODE_EXIT_TIMEOUT:?}; it should \
                 reject these flags and exit"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&stderr_path).expect("read the node's stderr");
    NodeExit { status, stderr }
}

/// Checks that the node failed with an error rather than a success or a panic.
fn assert_failed_cleanly(exit: &NodeExit, case: &str) {
    assert!(
        !exit.status.success(),
        "{case}: parley node should exit non-zero, but exited with {}; stderr:\n{}",
        exit.status,
        exit.stderr
    );
    assert!(
        !exit.stderr.contains("panicked"),
        "{case}: parley node should report an error, not panic; stderr:\n{}",
        exit.stderr
    );
}

#[test]
fn node_rejects_peer_without_address() {
    let temp = tempfile::tempdir().expect("temporary directory");
    let addresses = free_addresses(NODE_COUNT);
    let mut flags = node_flags(&addresses, &temp.path().join("data"));
    let peer_2 = format!("2={}", addresses[1]);
    let position = flags
        .iter()
        .position(|flag| *flag == peer_2)
        .expect("node_flags lists peer 2");
    flags[position] = "2".to_string();

    let exit = run_node_expecting_exit(&flags, temp.path());

    assert_failed_cleanly(&exit, "--peer 2");
    assert!(
        exit.stderr.contains("--peer \"2\""),
        "stderr should name the invalid value --peer \"2\":\n{}",
        exit.stderr
    );
    assert!(
        exit.stderr.contains("ID=HOST:PORT"),
        "stderr should give the expected form ID=HOST:PORT:\n{}",
        exit.stderr
    );
}

#[test]
fn node_rejects_zero_shards() {
    let temp = tempfile::tempdir().expect("temporary directory");
    let mut flags = node_flags(&free_addresses(NODE_COUNT), &temp.path().join("data"));
    set_flag(&mut flags, "--shards", "0");

    let exit = run_node_expecting_exit(&flags, temp.path());

    assert_failed_cleanly(&exit, "--shards 0");
    assert!(
        exit.stderr
            .contains("--shards (config key shard_count) is 0"),
        "stderr should name the --shards flag and its value 0:\n{}",
        exit.stderr
    );
    assert!(
        exit.stderr.contains("between 1 and 4096"),
        "stderr should give the valid range of the shard count:\n{}",
        exit.stderr
    );
}

#[test]
fn node_rejects_fewer_than_three_peers() {
    let temp = tempfile::tempdir().expect("temporary directory");
    let addresses = free_addresses(NODE_COUNT - 1);
    let flags = node_flags(&addresses, &temp.path().join("data"));

    let exit = run_node_expecting_exit(&flags, temp.path());

    assert_failed_cleanly(&exit, "two --peer flags");
    assert!(
        exit.stderr.contains("2 node(s)"),
        "stderr should give the number of nodes listed, 2:\n{}",
        exit.stderr
    );
    assert!(
        exit.stderr.contains("at least 3 with --peer"),
        "stderr should say to list at least 3 nodes with --peer:\n{}",
        exit.stderr
    );
}

#[test]
fn node_reports_busy_listen_port() {
    let temp = tempfile::tempdir().expect("temporary directory");
    let busy = TcpListener::bind("127.0.0.1:0").expect("bind the port to keep busy");
    let busy_address = busy
        .local_addr()
        .expect("a bound listener has an address")
        .to_string();
    let mut addresses = free_addresses(NODE_COUNT);
    addresses[0] = busy_address.clone();
    let flags = node_flags(&addresses, &temp.path().join("data"));

    let exit = run_node_expecting_exit(&flags, temp.path());

    assert_failed_cleanly(&exit, "a busy --listen port");
    assert!(
        exit.stderr.contains(&busy_address),
        "stderr should name the busy address {busy_address}:\n{}",
        exit.stderr
    );
    assert!(
        exit.stderr.contains("--listen"),
        "stderr should say to pick another port with --listen:\n{}",
        exit.stderr
    );
    drop(busy);
}
