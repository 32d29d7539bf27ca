//! Raft transport between nodes over gRPC, multiplexed by shard id.
//!
//! Every node serves one `RaftTransport` service for all the shard replicas
//! it hosts, and keeps one lazily connected channel per peer node, shared by
//! all its shards. Every call carries a deadline: openraft's hard TTL for
//! appends and votes, a longer configured one for full snapshots. A call
//! whose settings digest differs from the receiver's is rejected, so nodes
//! started with different shard counts or limits never exchange Raft state.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::error::TransportError;
use crate::types::{NodeId, Raft, ShardId, Snapshot, SnapshotMeta, TypeConfig, Vote};

pub mod proto {
    tonic::include_proto!("parley.raft.v1");
}

use proto::raft_transport_client::RaftTransportClient;
use proto::raft_transport_server::{RaftTransport, RaftTransportServer};
use proto::{RaftCall, RaftCallKind, RaftReply};

/// The tonic service type that serves `TransportService`; madsim's
/// generated servers take an extra interceptor parameter.
#[cfg(not(madsim))]
pub type TransportServer = RaftTransportServer<TransportService>;
#[cfg(madsim)]
pub type TransportServer =
    RaftTransportServer<TransportService, tonic::codegen::IdentityInterceptor>;

/// Settings every outgoing Raft call of a node uses.
#[derive(Clone, Debug)]
pub struct TransportSettings {
    pub node_id: NodeId,
    pub settings_digest: u64,
    /// Deadline for sending a whole snapshot in one call.
    pub snapshot_timeout: Duration,
    /// Largest message the transport encodes or decodes, in bytes.
    pub message_bytes_max: usize,
}

/// The channels from this node to its peers, one per peer, shared by shards.
#[derive(Clone, Default)]
pub struct PeerChannels {
    channels: Arc<Mutex<BTreeMap<NodeId, (String, Channel)>>>,
}

impl PeerChannels {
    /// Returns the channel to `node` at `address`, creating it on first use.
    pub fn channel(&self, node: NodeId, address: &str) -> Result<Channel, TransportError> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((known_address, channel)) = channels.get(&node) {
            if known_address == address {
                return Ok(channel.clone());
            }
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}")).map_err(|error| {
            TransportError::Unreachable {
                node,
                address: address.to_string(),
                message: format!("invalid peer address: {error}"),
            }
        })?;
        let channel = endpoint
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(node, (address.to_string(), channel.clone()));
        Ok(channel)
    }
}

/// Creates the per-peer Raft clients of one shard replica.
pub struct NetworkFactory {
    shard: ShardId,
    channels: PeerChannels,
    settings: Arc<TransportSettings>,
}

impl NetworkFactory {
    pub fn new(shard: ShardId, channels: PeerChannels, settings: Arc<TransportSettings>) -> Self {
        NetworkFactory {
            shard,
            channels,
            settings,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            shard: self.shard,
            target,
            address: node.addr.clone(),
            channels: self.channels.clone(),
            settings: self.settings.clone(),
        }
    }
}

/// One shard replica's Raft client for one peer.
pub struct PeerClient {
    shard: ShardId,
    target: NodeId,
    address: String,
    channels: PeerChannels,
    settings: Arc<TransportSettings>,
}

impl PeerClient {
    async fn call(
        &self,
        kind: RaftCallKind,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let channel = self.channels.channel(self.target, &self.address)?;
        let mut client = RaftTransportClient::new(channel)
            .max_decoding_message_size(self.settings.message_bytes_max)
            .max_encoding_message_size(self.settings.message_bytes_max);
        let call = RaftCall {
            shard_id: self.shard,
            from_node: self.settings.node_id,
            settings_digest: self.settings.settings_digest,
            kind: kind as i32,
            payload,
        };

        let outcome = tokio::time::timeout(timeout, client.call(call)).await;
        let reply = match outcome {
            Err(_) => {
                return Err(TransportError::TimedOut {
                    node: self.target,
                    shard: self.shard,
                    timeout_ms: timeout.as_millis() as u64,
                })
            }
            Ok(reply) => reply.map_err(|status| self.status_error(status))?,
        };
        Ok(reply.into_inner().payload)
    }

    fn status_error(&self, status: tonic::Status) -> TransportError {
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown => TransportError::Unreachable {
                node: self.target,
                address: self.address.clone(),
                message: status.message().to_string(),
            },
            _ => TransportError::Rejected {
                node: self.target,
                shard: self.shard,
                message: format!("{:?}: {}", status.code(), status.message()),
            },
        }
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, TransportError> {
        bincode::deserialize(bytes).map_err(|error| TransportError::Codec {
            shard: self.shard,
            message: error.to_string(),
        })
    }

    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, TransportError> {
        bincode::serialize(value).map_err(|error| TransportError::Codec {
            shard: self.shard,
            message: error.to_string(),
        })
    }

    async fn unary<Req, Resp, E>(
        &self,
        kind: RaftCallKind,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let payload = self.encode(request).map_err(network_error)?;
        let reply = self
            .call(kind, payload, option.hard_ttl())
            .await
            .map_err(rpc_error)?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            self.decode(&reply).map_err(network_error)?;
        result.map_err(|error| RPCError::RemoteError(RemoteError::new(self.target, error)))
    }
}

fn network_error<E: std::error::Error>(error: TransportError) -> RPCError<NodeId, BasicNode, E> {
    RPCError::Network(NetworkError::new(&error))
}

fn rpc_error<E: std::error::Error>(error: TransportError) -> RPCError<NodeId, BasicNode, E> {
    match error {
        TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&error)),
        _ => RPCError::Network(NetworkError::new(&error)),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.unary(RaftCallKind::AppendEntries, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.unary(RaftCallKind::Vote, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>> {
        let request = (vote, snapshot.meta, *snapshot.snapshot);
        let payload = self
            .encode(&request)
            .map_err(|error| StreamingError::Network(NetworkError::new(&error)))?;

        let reply = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            reply = self.call(RaftCallKind::FullSnapshot, payload, self.settings.snapshot_timeout) => reply,
        };
        let reply = reply.map_err(|error| match error {
            TransportError::Unreachable { .. } => {
                StreamingError::Unreachable(Unreachable::new(&error))
            }
            _ => StreamingError::Network(NetworkError::new(&error)),
        })?;
        let result: Result<SnapshotResponse<NodeId>, Fatal<NodeId>> = self
            .decode(&reply)
            .map_err(|error| StreamingError::Network(NetworkError::new(&error)))?;
        result.map_err(|fatal| StreamingError::RemoteError(RemoteError::new(self.target, fatal)))
    }
}

/// The Raft instances a node hosts, by shard id.
#[derive(Clone, Default)]
pub struct ShardRegistry {
    rafts: Arc<RwLock<BTreeMap<ShardId, Raft>>>,
}

impl ShardRegistry {
    pub fn insert(&self, shard: ShardId, raft: Raft) {
        self.rafts
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(shard, raft);
    }

    pub fn get(&self, shard: ShardId) -> Option<Raft> {
        self.rafts
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&shard)
            .cloned()
    }

    pub fn all(&self) -> Vec<(ShardId, Raft)> {
        self.rafts
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(shard, raft)| (*shard, raft.clone()))
            .collect()
    }
}

/// The server side of the Raft transport.
#[derive(Clone)]
pub struct TransportService {
    registry: ShardRegistry,
    settings: Arc<TransportSettings>,
}

impl TransportService {
    pub fn new(registry: ShardRegistry, settings: Arc<TransportSettings>) -> Self {
        TransportService { registry, settings }
    }

    /// Wraps the service for a tonic server, with this node's size limits.
    pub fn into_server(self) -> TransportServer {
        let limit = self.settings.message_bytes_max;
        RaftTransportServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }

    async fn dispatch(
        &self,
        raft: Raft,
        kind: RaftCallKind,
        payload: &[u8],
    ) -> Result<Vec<u8>, tonic::Status> {
        match kind {
            RaftCallKind::AppendEntries => {
                let request: AppendEntriesRequest<TypeConfig> = decode_call(payload)?;
                encode_reply(&raft.append_entries(request).await)
            }
            RaftCallKind::Vote => {
                let request: VoteRequest<NodeId> = decode_call(payload)?;
                encode_reply(&raft.vote(request).await)
            }
            RaftCallKind::FullSnapshot => {
                let (vote, meta, data): (Vote, SnapshotMeta, Vec<u8>) = decode_call(payload)?;
                let snapshot = Snapshot {
                    meta,
                    snapshot: Box::new(data),
                };
                encode_reply(&raft.install_full_snapshot(vote, snapshot).await)
            }
            RaftCallKind::Unspecified => Err(tonic::Status::invalid_argument(
                "RaftCall.kind is unspecified; set it to the Raft call being made",
            )),
        }
    }
}

fn decode_call<T: DeserializeOwned>(payload: &[u8]) -> Result<T, tonic::Status> {
    bincode::deserialize(payload).map_err(|error| {
        tonic::Status::invalid_argument(format!("RaftCall.payload does not decode: {error}"))
    })
}

fn encode_reply<T: Serialize>(value: &T) -> Result<Vec<u8>, tonic::Status> {
    bincode::serialize(value)
        .map_err(|error| tonic::Status::internal(format!("failed to encode Raft reply: {error}")))
}

#[tonic::async_trait]
impl RaftTransport for TransportService {
    async fn call(
        &self,
        request: tonic::Request<RaftCall>,
    ) -> Result<tonic::Response<RaftReply>, tonic::Status> {
        let call = request.into_inner();
        if call.settings_digest != self.settings.settings_digest {
            return Err(tonic::Status::failed_precondition(format!(
                "node {} has settings digest {:016x} but node {} sent {:016x}; start every node \
                 with the same shard count, placement and limits",
                self.settings.node_id,
                self.settings.settings_digest,
                call.from_node,
                call.settings_digest
            )));
        }
        let Some(raft) = self.registry.get(call.shard_id) else {
            return Err(tonic::Status::not_found(format!(
                "node {} hosts no replica of shard {}",
                self.settings.node_id, call.shard_id
            )));
        };
        let kind = RaftCallKind::try_from(call.kind).map_err(|_| {
            tonic::Status::invalid_argument(format!("RaftCall.kind {} is unknown", call.kind))
        })?;

        let payload = self.dispatch(raft, kind, &call.payload).await?;
        Ok(tonic::Response::new(RaftReply { payload }))
    }
}
