//! A client of a Parley cluster's node API that retries across nodes.
//!
//! Proposals are retried, unchanged, on every error that may be transient
//! (no leader, timeout, node down), so an append retried after an ambiguous
//! failure commits once: its client message id makes it idempotent.
//! `coalescer` groups concurrent proposals of a shard into `ProposeBatch`
//! calls and runs the retry loop. This module owns the connections, the
//! leader cache and the reads.

use std::sync::Arc;
use std::time::Duration;

use crate::coalescer::{CoalescerLimits, NodeCalls, Proposer};
use crate::proto::node_api_client::NodeApiClient;
use crate::proto::{
    Consistency, HistoryReply, HistoryRequest, ProposeBatchReply, ProposeBatchRequest,
    ProposeReply, ProposeRequest, StatusReply, StatusRequest,
};
use parley_core::proto::{Command, HistoryQuery, StoredMessage};
use parley_raft::ShardId;

use crate::shard_map::{routing_id, shard_of_id};
use tonic::transport::{Channel, Endpoint};

/// Largest message the client sends or accepts, in bytes.
const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// Deadline of one call to one node.
const CALL_TIMEOUT: Duration = Duration::from_secs(6);

/// A failed cluster client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no node addresses given; pass at least one node address as HOST:PORT")]
    NoNodes,

    #[error("node address {address:?} is invalid ({message}); write it as HOST:PORT")]
    InvalidAddress { address: String, message: String },

    #[error(
        "node {node} is unreachable ({message}); check that it runs and listens on that address"
    )]
    Unreachable { node: String, message: String },

    #[error("node {node} rejected the request: {status}")]
    Rejected { node: String, status: tonic::Status },

    #[error("request failed for {elapsed_ms} ms; last error from node {node}: {message}")]
    GaveUp {
        node: String,
        elapsed_ms: u64,
        message: String,
    },
}

impl ClientError {
    /// Returns the gRPC status a node returned, if there was one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            ClientError::Rejected { status, .. } => Some(status),
            _ => None,
        }
    }
}

type Result<T> = std::result::Result<T, ClientError>;

/// Clients of every node, in the order their addresses were given.
#[derive(Clone)]
pub struct ClusterClient {
    addresses: Vec<String>,
    clients: Vec<NodeApiClient<Channel>>,
    proposer: Arc<Proposer<NodeClients>>,
}

/// The node API clients that proposals go through, one per node.
pub(crate) struct NodeClients {
    clients: Vec<NodeApiClient<Channel>>,
}

impl NodeCalls for NodeClients {
    fn node_count(&self) -> usize {
        self.clients.len()
    }

    async fn propose(
        &self,
        node: usize,
        request: ProposeRequest,
    ) -> std::result::Result<ProposeReply, tonic::Status> {
        let mut client = self.clients[node].clone();
        match tokio::time::timeout(CALL_TIMEOUT, client.propose(request)).await {
            Ok(reply) => reply.map(tonic::Response::into_inner),
            Err(_) => Err(no_reply_status()),
        }
    }

    async fn propose_batch(
        &self,
        node: usize,
        request: ProposeBatchRequest,
    ) -> std::result::Result<ProposeBatchReply, tonic::Status> {
        let mut client = self.clients[node].clone();
        match tokio::time::timeout(CALL_TIMEOUT, client.propose_batch(request)).await {
            Ok(reply) => reply.map(tonic::Response::into_inner),
            Err(_) => Err(no_reply_status()),
        }
    }
}

fn no_reply_status() -> tonic::Status {
    tonic::Status::deadline_exceeded(format!("no reply within {} ms", CALL_TIMEOUT.as_millis()))
}

/// The node each shard's last proposal was committed by, learned from
/// `ProposeReply`, so the next proposal skips the forwarding hop. A stale
/// entry costs one forward, as if there were no cache.
#[derive(Default)]
pub(crate) struct LeaderCache {
    shard_count: u32,
    /// Index into `ClusterClient::addresses` per shard.
    leader_index: Vec<Option<usize>>,
}

impl LeaderCache {
    /// Returns the shard of `command`, once a reply has carried the shard
    /// count.
    pub(crate) fn shard_of(&self, command: &Command) -> Option<ShardId> {
        if self.shard_count == 0 {
            return None;
        }
        Some(shard_of_id(routing_id(command)?, self.shard_count))
    }

    pub(crate) fn leader_of(&self, command: &Command) -> Option<usize> {
        self.leader_of_shard(self.shard_of(command)?)
    }

    pub(crate) fn leader_of_shard(&self, shard: ShardId) -> Option<usize> {
        self.leader_index.get(shard as usize).copied().flatten()
    }

    pub(crate) fn learn(&mut self, reply: &ProposeReply, addresses: &[String]) {
        if reply.shard_count == 0 || reply.shard_id >= reply.shard_count {
            return;
        }
        if reply.shard_count != self.shard_count {
            self.shard_count = reply.shard_count;
            self.leader_index = vec![None; reply.shard_count as usize];
        }
        let leader = addresses
            .iter()
            .position(|address| *address == reply.leader_address);
        self.leader_index[reply.shard_id as usize] = leader;
    }

    pub(crate) fn forget(&mut self, command: &Command) {
        if let Some(shard) = self.shard_of(command) {
            self.forget_shard(shard);
        }
    }

    pub(crate) fn forget_shard(&mut self, shard: ShardId) {
        if let Some(leader) = self.leader_index.get_mut(shard as usize) {
            *leader = None;
        }
    }
}

/// Returns whether a failed call may succeed if tried again.
/// RESOURCE_EXHAUSTED counts only when the connection itself failed. h2
/// closes a connection with ENHANCE_YOUR_CALM when a peer resets many
/// streams at once, as clients do when a partition heals, and tonic reports
/// that with this code.
pub fn is_transient(status: &tonic::Status) -> bool {
    let connection_failed = std::error::Error::source(status).is_some();
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Unknown
        | tonic::Code::Internal
        | tonic::Code::Cancelled
        | tonic::Code::Aborted => true,
        tonic::Code::ResourceExhausted => connection_failed,
        _ => false,
    }
}

impl ClusterClient {
    /// Creates lazily connected clients for `addresses` ("host:port").
    pub fn new(addresses: &[String]) -> Result<ClusterClient> {
        if addresses.is_empty() {
            return Err(ClientError::NoNodes);
        }
        let mut clients = Vec::new();
        for address in addresses {
            let endpoint = Endpoint::from_shared(format!("http://{address}"))
                .map_err(|error| ClientError::InvalidAddress {
                    address: address.clone(),
                    message: error.to_string(),
                })?
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true);
            let client = NodeApiClient::new(endpoint.connect_lazy())
                .max_decoding_message_size(MESSAGE_BYTES_MAX)
                .max_encoding_message_size(MESSAGE_BYTES_MAX);
            clients.push(client);
        }
        let node_clients = NodeClients {
            clients: clients.clone(),
        };
        let proposer = Proposer::new(node_clients, addresses.to_vec(), CoalescerLimits::default());
        Ok(ClusterClient {
            addresses: addresses.to_vec(),
            clients,
            proposer: Arc::new(proposer),
        })
    }

    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// Returns the raw node API client of the node at `node_index`.
    pub fn node(&self, node_index: usize) -> NodeApiClient<Channel> {
        self.clients[node_index].clone()
    }

    /// Proposes `command` to its shard's last known leader, else to the
    /// nodes in turn, retrying transient failures on the next node until
    /// `deadline` has passed. Concurrent proposals of one shard share
    /// `ProposeBatch` calls (see `coalescer`).
    pub async fn propose(&self, command: Command, deadline: Duration) -> Result<ProposeReply> {
        self.proposer.propose(command, deadline).await
    }

    /// Reads one page from the node at `node_index`.
    pub async fn history_page(
        &self,
        node_index: usize,
        query: HistoryQuery,
        consistency: Consistency,
        min_applied_index: u64,
    ) -> std::result::Result<HistoryReply, tonic::Status> {
        let mut client = self.clients[node_index].clone();
        let request = HistoryRequest {
            query: Some(query),
            consistency: consistency as i32,
            min_applied_index,
            hops: 0,
        };
        match tokio::time::timeout(CALL_TIMEOUT, client.history(request)).await {
            Ok(reply) => reply.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded("history read timed out")),
        }
    }

    /// Reads a whole conversation from one node, page by page. Returns the
    /// messages and the replica's applied index after the last page.
    pub async fn history_all(
        &self,
        node_index: usize,
        conversation_id: &str,
        reader: &str,
        consistency: Consistency,
        min_applied_index: u64,
    ) -> std::result::Result<(Vec<StoredMessage>, u64), tonic::Status> {
        let mut messages = Vec::new();
        let mut applied_index = 0;
        loop {
            let query = HistoryQuery {
                conversation_id: conversation_id.to_string(),
                reader: reader.to_string(),
                from_seq: messages.len() as u64 + 1,
                limit: 0,
            };
            let reply = self
                .history_page(node_index, query, consistency, min_applied_index)
                .await?;
            applied_index = applied_index.max(reply.applied_index);
            let page = reply.page.unwrap_or_default();
            let page_len = page.messages.len();
            messages.extend(page.messages);
            if page_len == 0 || messages.len() as u64 >= page.last_seq {
                return Ok((messages, applied_index));
            }
        }
    }

    /// Reads a whole conversation linearizably, retrying across nodes.
    pub async fn history_linearizable(
        &self,
        conversation_id: &str,
        reader: &str,
        deadline: Duration,
    ) -> Result<(Vec<StoredMessage>, u64)> {
        let started = tokio::time::Instant::now();
        let mut attempt = 0usize;
        loop {
            let index = attempt % self.clients.len();
            match self
                .history_all(index, conversation_id, reader, Consistency::Linearizable, 0)
                .await
            {
                Ok(result) => return Ok(result),
                Err(status) if !is_transient(&status) => {
                    return Err(ClientError::Rejected {
                        node: self.addresses[index].clone(),
                        status,
                    })
                }
                Err(status) if started.elapsed() > deadline => {
                    return Err(ClientError::GaveUp {
                        node: self.addresses[index].clone(),
                        elapsed_ms: started.elapsed().as_millis() as u64,
                        message: status.to_string(),
                    })
                }
                Err(_) => {}
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Returns the status of the node at `node_index`.
    pub async fn status(&self, node_index: usize, include_digests: bool) -> Result<StatusReply> {
        let mut client = self.clients[node_index].clone();
        let request = StatusRequest { include_digests };
        let node = self.addresses[node_index].clone();
        match tokio::time::timeout(CALL_TIMEOUT, client.status(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                Err(ClientError::Unreachable {
                    node,
                    message: status.message().to_owned(),
                })
            }
            Ok(Err(status)) => Err(ClientError::Rejected { node, status }),
            Err(_) => Err(ClientError::GaveUp {
                node,
                elapsed_ms: CALL_TIMEOUT.as_millis() as u64,
                message: "status call timed out".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{is_transient, LeaderCache};
    use crate::proto::ProposeReply;
    use parley_core::proto::command::Kind;
    use parley_core::proto::{Append, Command};

    fn append_to(conversation_id: &str) -> Command {
        Command {
            kind: Some(Kind::Append(Append {
                conversation_id: conversation_id.into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn leader_cache_routes_shard_to_learned_leader() {
        let addresses = vec!["a:1".to_string(), "b:2".to_string(), "c:3".to_string()];
        let command = append_to("group-1");
        let shard = crate::shard_map::shard_of_id("group-1", 8);
        let mut cache = LeaderCache::default();
        assert_eq!(cache.leader_of(&command), None);

        cache.learn(
            &ProposeReply {
                shard_id: shard,
                shard_count: 8,
                leader_address: "c:3".into(),
                ..Default::default()
            },
            &addresses,
        );
        assert_eq!(cache.leader_of(&command), Some(2));

        cache.forget(&command);
        assert_eq!(cache.leader_of(&command), None);
    }

    #[test]
    fn leader_cache_ignores_unknown_address_and_bad_shard() {
        let addresses = vec!["a:1".to_string()];
        let command = append_to("group-1");
        let shard = crate::shard_map::shard_of_id("group-1", 8);
        let mut cache = LeaderCache::default();

        cache.learn(
            &ProposeReply {
                shard_id: shard,
                shard_count: 8,
                leader_address: "elsewhere:9".into(),
                ..Default::default()
            },
            &addresses,
        );
        assert_eq!(cache.leader_of(&command), None);

        cache.learn(
            &ProposeReply {
                shard_id: 8,
                shard_count: 8,
                leader_address: "a:1".into(),
                ..Default::default()
            },
            &addresses,
        );
        assert_eq!(cache.leader_of(&command), None);
    }

    #[test]
    fn resource_exhausted_from_connection_is_transient() {
        let mut status = tonic::Status::resource_exhausted("h2 protocol error: http2 error");
        let cause = std::io::Error::other("GOAWAY ENHANCE_YOUR_CALM");
        status.set_source(Arc::new(cause));

        assert!(is_transient(&status));
    }

    #[test]
    fn resource_exhausted_from_server_is_final() {
        let status = tonic::Status::resource_exhausted("quota used up");

        assert!(!is_transient(&status));
    }

    #[test]
    fn unavailable_is_transient_and_not_found_is_final() {
        assert!(is_transient(&tonic::Status::unavailable("electing")));
        assert!(!is_transient(&tonic::Status::not_found("no such user")));
    }
}
