//! The multi-raft host: every shard replica a node carries, in one process.
//!
//! The host starts one openraft group member per shard placed on this node,
//! all on one storage engine and one transport. It bootstraps each shard
//! group from the shard's first replica node, proposes commands (forwarding
//! them to the shard leader when this node does not lead), and serves reads
//! either linearizably (ReadIndex at the leader) or from the local replica
//! once it has applied a given index.
//!
//! `propose_batch` (the `ProposeBatch` call) lives in `host/propose_batch.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::RaftError;
use openraft::BasicNode;
use parley_core::proto::command::Kind;
use parley_core::proto::{CommandResult, HistoryQuery, RejectionCode};
use parley_core::ConversationKind;
use parley_raft::{
    feed_position_end, AppliedHandle, CommitFeed, LogStore, NetworkFactory, NodeId, PeerChannels,
    Raft, ShardId, ShardRegistry, ShardStateMachine, StorageEngine, TransportService,
    TransportSettings,
};
use prost::Message;

use crate::batcher::{BatchOutcome, ProposalBatcher};
use crate::clock::NodeClock;
use crate::error::ShardsError;
use crate::proto::node_api_client::NodeApiClient;
use crate::proto::{
    Consistency, ConversationInfo, ConversationsReply, HistoryReply, HistoryRequest, ProposeReply,
    ProposeRequest, ShardStatus, StatusReply,
};
use crate::settings::ClusterSettings;
use crate::shard_map::ShardMap;

mod propose_batch;

pub use propose_batch::{COMMAND_BYTES_MAX, PROPOSE_BATCH_BYTES_MAX, PROPOSE_BATCH_COMMANDS_MAX};

/// A request is forwarded at most this many times before failing.
const FORWARD_HOPS_MAX: u32 = 2;

/// How long a LOCAL read waits for the replica to reach the requested index.
const LOCAL_READ_WAIT: Duration = Duration::from_secs(5);

struct Replica {
    raft: Raft,
    applied: AppliedHandle,
    batcher: ProposalBatcher,
}

/// All shard replicas of one node.
pub struct NodeHost {
    node_id: NodeId,
    settings: Arc<ClusterSettings>,
    map: ShardMap,
    registry: ShardRegistry,
    replicas: BTreeMap<ShardId, Replica>,
    channels: PeerChannels,
    transport_settings: Arc<TransportSettings>,
    clock: NodeClock,
    /// Turns true when the node begins to stop, which ends Subscribe
    /// streams so their gateways move to another replica.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl NodeHost {
    /// Starts every shard replica placed on `node_id` and bootstraps the
    /// shard groups this node is the first replica of.
    pub async fn start(
        node_id: NodeId,
        settings: ClusterSettings,
        engine: Arc<dyn StorageEngine>,
        clock: NodeClock,
    ) -> Result<Arc<NodeHost>, ShardsError> {
        settings.validate()?;
        if !settings.nodes.contains_key(&node_id) {
            return Err(ShardsError::InvalidSettings(format!(
                "node id {node_id} is not among the cluster's nodes {:?}; add it with --peer {node_id}=ADDRESS",
                settings.nodes.keys().collect::<Vec<_>>()
            )));
        }
        let raft_config = Arc::new(settings.openraft_config()?);
        let map = settings.shard_map();
        let channels = PeerChannels::default();
        let transport_settings = Arc::new(TransportSettings {
            node_id,
            settings_digest: settings.digest(),
            snapshot_timeout: Duration::from_millis(settings.raft.snapshot_send_timeout_ms),
            message_bytes_max: settings.message_bytes_max,
            peer_addresses: settings.nodes.clone(),
        });

        let registry = ShardRegistry::default();
        let mut replicas = BTreeMap::new();
        for shard in map.shards_on(node_id) {
            let replica = start_replica(
                node_id,
                shard,
                &settings,
                raft_config.clone(),
                engine.clone(),
                channels.clone(),
                transport_settings.clone(),
            )
            .await?;
            registry.insert(shard, replica.raft.clone());
            replicas.insert(shard, replica);
        }
        tracing::info!(
            node = node_id,
            shards = replicas.len(),
            "started shard replicas"
        );

        let host = Arc::new(NodeHost {
            node_id,
            settings: Arc::new(settings),
            map,
            registry,
            replicas,
            channels,
            transport_settings,
            clock,
            stopping: tokio::sync::watch::Sender::new(false),
        });
        host.bootstrap().await;
        Ok(host)
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn shard_map(&self) -> &ShardMap {
        &self.map
    }

    /// Returns the server side of the Raft transport for this node's shards.
    pub fn transport_service(&self) -> TransportService {
        TransportService::new(self.registry.clone(), self.transport_settings.clone())
    }

    /// Returns the applied state of this node's replica of `shard`.
    pub fn applied(&self, shard: ShardId) -> Option<AppliedHandle> {
        self.replicas
            .get(&shard)
            .map(|replica| replica.applied.clone())
    }

    /// Returns the clock this node stamps appends with.
    pub fn clock(&self) -> &NodeClock {
        &self.clock
    }

    /// Returns this node's Raft member of `shard`.
    pub fn raft(&self, shard: ShardId) -> Option<Raft> {
        self.replicas
            .get(&shard)
            .map(|replica| replica.raft.clone())
    }

    async fn bootstrap(&self) {
        for (shard, replica) in &self.replicas {
            let replicas = self.map.replicas_of(*shard);
            if replicas.first() != Some(&self.node_id) {
                continue;
            }
            match replica.raft.is_initialized().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(node = self.node_id, shard, %error, "failed to read Raft state");
                    continue;
                }
            }
            let members: BTreeMap<NodeId, BasicNode> = replicas
                .iter()
                .map(|id| {
                    (
                        *id,
                        BasicNode::new(self.map.address_of(*id).unwrap_or_default()),
                    )
                })
                .collect();
            match replica.raft.initialize(members).await {
                Ok(()) => tracing::info!(
                    node = self.node_id,
                    shard,
                    ?replicas,
                    "bootstrapped shard group"
                ),
                Err(error) => {
                    tracing::warn!(node = self.node_id, shard, %error, "shard group bootstrap skipped")
                }
            }
        }
    }

    /// Replicates `command` through its shard and returns the result.
    pub async fn propose(&self, request: ProposeRequest) -> Result<ProposeReply, ShardsError> {
        let mut command = request.command.clone().ok_or_else(|| {
            ShardsError::InvalidRequest(
                "ProposeRequest.command is missing; set the command to replicate".into(),
            )
        })?;
        let shard = self.map.shard_of_command(&command).ok_or_else(|| {
            ShardsError::InvalidRequest(
                "ProposeRequest.command.kind is missing; set one of the command kinds".into(),
            )
        })?;
        propose_batch::check_command_size("ProposeRequest.command", &command)?;
        let Some(replica) = self.replicas.get(&shard) else {
            let target = self.map.replicas_of(shard)[0];
            return self.forward_propose(target, request).await;
        };

        // The proposing node stamps appends; a client cannot choose its own
        // server time.
        if let Some(Kind::Append(append)) = command.kind.as_mut() {
            append.proposer_time_ms = self.clock.now_ms();
        }
        let timeout = self.settings.propose_timeout();
        let timed_out = || ShardsError::TimedOut {
            shard,
            timeout_ms: timeout.as_millis() as u64,
        };
        let proposal = replica.batcher.propose(command.encode_to_vec());
        let outcome = tokio::time::timeout(timeout, proposal)
            .await
            .map_err(|_| timed_out())?;

        match outcome {
            BatchOutcome::Committed {
                result, position, ..
            } => self.committed_reply(shard, &result, position),
            BatchOutcome::ForwardToLeader {
                leader: Some(leader),
            } if leader != self.node_id => self.forward_propose(leader, request).await,
            BatchOutcome::ForwardToLeader { .. } => Err(ShardsError::NoLeader { shard }),
            BatchOutcome::TimedOut => Err(timed_out()),
            BatchOutcome::Fatal { message } => Err(ShardsError::Fatal { shard, message }),
        }
    }

    /// Builds the reply for a command this node committed as leader.
    fn committed_reply(
        &self,
        shard: ShardId,
        result: &[u8],
        position: u64,
    ) -> Result<ProposeReply, ShardsError> {
        let result = CommandResult::decode(result).map_err(|error| ShardsError::Fatal {
            shard,
            message: format!("applied result does not decode: {error}"),
        })?;
        // The reply carries the command's feed position, which a gateway
        // compares with the positions of its commit stream.
        Ok(ProposeReply {
            result: Some(result),
            shard_id: shard,
            log_index: position,
            leader_address: self
                .map
                .address_of(self.node_id)
                .unwrap_or_default()
                .to_string(),
            shard_count: self.map.shard_count(),
        })
    }

    async fn forward_propose(
        &self,
        target: NodeId,
        mut request: ProposeRequest,
    ) -> Result<ProposeReply, ShardsError> {
        if request.hops >= FORWARD_HOPS_MAX {
            let shard = request
                .command
                .as_ref()
                .and_then(|command| self.map.shard_of_command(command))
                .unwrap_or_default();
            return Err(ShardsError::NoLeader { shard });
        }
        request.hops += 1;
        let mut client = self.client_for(target)?;
        let reply =
            tokio::time::timeout(self.settings.propose_timeout(), client.propose(request)).await;
        self.unwrap_forwarded(target, reply)
    }

    fn client_for(
        &self,
        target: NodeId,
    ) -> Result<NodeApiClient<tonic::transport::Channel>, ShardsError> {
        let address = self.map.address_of(target).unwrap_or_default().to_string();
        let channel =
            self.channels
                .channel(target, &address)
                .map_err(|error| ShardsError::Forward {
                    node: target,
                    address: address.clone(),
                    message: error.to_string(),
                })?;
        let limit = self.settings.message_bytes_max;
        Ok(NodeApiClient::new(channel)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit))
    }

    fn unwrap_forwarded<T>(
        &self,
        target: NodeId,
        reply: Result<Result<tonic::Response<T>, tonic::Status>, tokio::time::error::Elapsed>,
    ) -> Result<T, ShardsError> {
        let address = self.map.address_of(target).unwrap_or_default().to_string();
        match reply {
            Ok(Ok(response)) => Ok(response.into_inner()),
            // A status with a source was made on this side of the hop from a
            // transport failure, such as an HTTP/2 GOAWAY, not by the leader.
            // The caller may retry it: a retried send is deduplicated by its
            // client message id.
            Ok(Err(status)) if std::error::Error::source(&status).is_some() => {
                Err(ShardsError::Forward {
                    node: target,
                    address,
                    message: status.to_string(),
                })
            }
            Ok(Err(status)) => Err(ShardsError::Remote {
                node: target,
                code: status.code(),
                message: status.message().to_string(),
            }),
            Err(_) => Err(ShardsError::Forward {
                node: target,
                address,
                message: format!("no reply within {} ms", self.settings.propose_timeout_ms),
            }),
        }
    }

    /// Reads a page of a conversation's history at the requested consistency.
    pub async fn history(&self, request: HistoryRequest) -> Result<HistoryReply, ShardsError> {
        let query = request.query.clone().ok_or_else(|| {
            ShardsError::InvalidRequest(
                "HistoryRequest.query is missing; set the conversation to read".into(),
            )
        })?;
        let shard = self.map.shard_of(&query.conversation_id);
        let consistency =
            Consistency::try_from(request.consistency).unwrap_or(Consistency::Unspecified);

        match consistency {
            Consistency::Unspecified => Err(ShardsError::InvalidRequest(format!(
                "HistoryRequest.consistency is {}; set CONSISTENCY_LINEARIZABLE or CONSISTENCY_LOCAL",
                request.consistency
            ))),
            Consistency::Linearizable => self.linearizable_history(shard, request, &query).await,
            Consistency::Local => {
                let replica = self.hosted(shard)?;
                wait_applied(&replica.applied, request.min_applied_index, shard).await?;
                self.read_local(shard, replica, &query)
            }
        }
    }

    async fn linearizable_history(
        &self,
        shard: ShardId,
        mut request: HistoryRequest,
        query: &HistoryQuery,
    ) -> Result<HistoryReply, ShardsError> {
        let Some(replica) = self.replicas.get(&shard) else {
            let target = self.map.replicas_of(shard)[0];
            return self.forward_history(target, request).await;
        };
        let timeout = self.settings.propose_timeout();
        let check = tokio::time::timeout(timeout, replica.raft.ensure_linearizable())
            .await
            .map_err(|_| ShardsError::TimedOut {
                shard,
                timeout_ms: timeout.as_millis() as u64,
            })?;
        match check {
            Ok(_) => self.read_local(shard, replica, query),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                forward,
            ))) => match forward.leader_id {
                Some(leader) if leader != self.node_id && request.hops < FORWARD_HOPS_MAX => {
                    request.hops += 1;
                    self.forward_history(leader, request).await
                }
                _ => Err(ShardsError::NoLeader { shard }),
            },
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(ShardsError::NoLeader { shard })
            }
            Err(RaftError::Fatal(fatal)) => Err(ShardsError::Fatal {
                shard,
                message: fatal.to_string(),
            }),
        }
    }

    async fn forward_history(
        &self,
        target: NodeId,
        mut request: HistoryRequest,
    ) -> Result<HistoryReply, ShardsError> {
        if request.hops >= FORWARD_HOPS_MAX {
            return Err(ShardsError::InvalidRequest(
                "history request forwarded too many times".into(),
            ));
        }
        request.hops += 1;
        let mut client = self.client_for(target)?;
        let reply =
            tokio::time::timeout(self.settings.propose_timeout(), client.history(request)).await;
        self.unwrap_forwarded(target, reply)
    }

    fn read_local(
        &self,
        shard: ShardId,
        replica: &Replica,
        query: &HistoryQuery,
    ) -> Result<HistoryReply, ShardsError> {
        let applied = replica.applied.read();
        let applied_index = applied.last_applied.map_or(0, |log_id| log_id.index);
        let page = applied
            .state
            .history(query)
            .map_err(|rejection| ShardsError::Rejected {
                code: RejectionCode::try_from(rejection.code).unwrap_or(RejectionCode::Unspecified),
                message: rejection.message,
            })?;
        Ok(HistoryReply {
            page: Some(page),
            shard_id: shard,
            applied_index,
            node_id: self.node_id,
        })
    }

    /// Returns every conversation and user of this node's replica of
    /// `shard`, as of one applied index. The reply's `applied_index` is the
    /// last commit feed position that index covers, so a gateway that loads
    /// this reply subscribes from the position after it.
    pub fn conversations(&self, shard: ShardId) -> Result<ConversationsReply, ShardsError> {
        let replica = self.hosted(shard)?;
        let applied = replica.applied.read();
        let state = &applied.state;
        let conversations = state
            .conversation_ids()
            .into_iter()
            .map(|conversation_id| ConversationInfo {
                direct: state.conversation_kind(&conversation_id) == Some(ConversationKind::Direct),
                members: state.members(&conversation_id).unwrap_or_default(),
                last_seq: state.last_seq(&conversation_id).unwrap_or(0),
                conversation_id,
            })
            .collect();
        Ok(ConversationsReply {
            shard_id: shard,
            applied_index: applied
                .last_applied
                .map_or(0, |log_id| feed_position_end(log_id.index)),
            conversations,
            user_ids: state.user_ids(),
        })
    }

    /// Returns the commit feed of this node's replica of `shard`.
    pub fn feed(&self, shard: ShardId) -> Result<CommitFeed, ShardsError> {
        Ok(self.hosted(shard)?.applied.feed().clone())
    }

    fn hosted(&self, shard: ShardId) -> Result<&Replica, ShardsError> {
        self.replicas
            .get(&shard)
            .ok_or_else(|| ShardsError::NotHosted {
                node: self.node_id,
                shard,
                replicas: self.map.replicas_of(shard),
            })
    }

    /// Reports every replica on this node.
    pub fn status(&self, include_digests: bool) -> StatusReply {
        let shards = self
            .replicas
            .iter()
            .map(|(shard, replica)| shard_status(*shard, replica, include_digests))
            .collect();
        StatusReply {
            node_id: self.node_id,
            shards,
            shard_count: self.map.shard_count(),
        }
    }

    /// Stops every Raft member on this node.
    /// Marks the node as stopping, which ends its Subscribe streams.
    pub fn begin_stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Returns a receiver that turns true once `begin_stop` is called.
    pub fn stop_requested(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    pub async fn shutdown(&self) {
        for (shard, replica) in &self.replicas {
            if let Err(error) = replica.raft.shutdown().await {
                tracing::warn!(node = self.node_id, shard, %error, "Raft member did not stop cleanly");
            }
        }
        tracing::info!(node = self.node_id, "stopped shard replicas");
    }
}

async fn start_replica(
    node_id: NodeId,
    shard: ShardId,
    settings: &ClusterSettings,
    raft_config: Arc<openraft::Config>,
    engine: Arc<dyn StorageEngine>,
    channels: PeerChannels,
    transport_settings: Arc<TransportSettings>,
) -> Result<Replica, ShardsError> {
    let log_store = LogStore::new(shard, engine.clone());
    let state_machine = ShardStateMachine::open(
        shard,
        engine,
        settings.limits.clone(),
        settings.commit_feed_entries_max,
    )
    .map_err(|error| ShardsError::Storage(error.to_string()))?;
    let applied = state_machine.handle();
    let network = NetworkFactory::new(shard, channels, transport_settings);

    let raft = Raft::new(node_id, raft_config, network, log_store, state_machine)
        .await
        .map_err(|error| ShardsError::Fatal {
            shard,
            message: error.to_string(),
        })?;
    let batcher = ProposalBatcher::start(raft.clone(), shard, settings.proposal_batching.clone());
    let pause_max = Duration::from_millis(settings.raft.election_timeout_ms_max);
    tokio::spawn(crate::elections::break_split_votes(
        raft.clone(),
        node_id,
        shard,
        pause_max,
    ));
    Ok(Replica {
        raft,
        applied,
        batcher,
    })
}

async fn wait_applied(
    applied: &AppliedHandle,
    index: u64,
    shard: ShardId,
) -> Result<(), ShardsError> {
    let mut receiver = applied.subscribe_applied_index();
    let outcome = {
        let wait = receiver.wait_for(|applied_index| *applied_index >= index);
        tokio::time::timeout(LOCAL_READ_WAIT, wait)
            .await
            .map(|result| result.is_ok())
    };
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => Err(ShardsError::Fatal {
            shard,
            message: "state machine stopped".into(),
        }),
        Err(_) => Err(ShardsError::TimedOut {
            shard,
            timeout_ms: LOCAL_READ_WAIT.as_millis() as u64,
        }),
    }
}

fn shard_status(shard: ShardId, replica: &Replica, include_digests: bool) -> ShardStatus {
    let metrics = replica.raft.metrics().borrow().clone();
    let replicas: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
    let state_digest = if include_digests {
        hex::encode(replica.applied.read().state.digest())
    } else {
        String::new()
    };
    ShardStatus {
        shard_id: shard,
        role: format!("{:?}", metrics.state).to_lowercase(),
        leader_id: metrics.current_leader.unwrap_or(0),
        term: metrics.current_term,
        last_log_index: metrics.last_log_index.unwrap_or(0),
        last_applied_index: metrics.last_applied.map_or(0, |log_id| log_id.index),
        last_applied_term: metrics
            .last_applied
            .map_or(0, |log_id| log_id.leader_id.term),
        snapshot_index: metrics.snapshot.map_or(0, |log_id| log_id.index),
        purged_index: metrics.purged.map_or(0, |log_id| log_id.index),
        vote_term: metrics.vote.leader_id.term,
        vote_node_id: metrics.vote.leader_id.voted_for().unwrap_or(0),
        vote_committed: metrics.vote.committed,
        replicas: replicas.into_iter().collect(),
        state_digest,
    }
}
