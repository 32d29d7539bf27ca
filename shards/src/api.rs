//! The node API gRPC service, a thin adapter over `NodeHost`.
//!
//! The fields that a gateway matches against its commit stream carry
//! commit feed positions (`parley_raft::feed_position`), not Raft log
//! indexes: `ProposeReply.log_index` (also inside `ProposeBatchReply`),
//! `ConversationsReply.applied_index`, `SubscribeRequest.from_index` and
//! `CommittedEntry.log_index`. A log entry carries a batch of commands,
//! and a position names one of them.
//! History and status replies carry Raft log indexes.

use std::sync::Arc;

use crate::host::NodeHost;
use crate::proto::node_api_server::{NodeApi, NodeApiServer};
use parley_raft::FeedItem;

use crate::proto::{
    CommittedEntry, ConversationsReply, ConversationsRequest, HistoryReply, HistoryRequest,
    ProposeBatchReply, ProposeBatchRequest, ProposeReply, ProposeRequest, SetClockOffsetReply,
    SetClockOffsetRequest, StatusReply, StatusRequest, SubscribeRequest,
};

/// The tonic service type that serves `NodeApiService`; madsim's generated
/// servers take an extra interceptor parameter.
#[cfg(not(madsim))]
pub type NodeApiTonicServer = NodeApiServer<NodeApiService>;
#[cfg(madsim)]
pub type NodeApiTonicServer = NodeApiServer<NodeApiService, tonic::codegen::IdentityInterceptor>;

/// Serves `NodeApi` from a node's host.
#[derive(Clone)]
pub struct NodeApiService {
    host: Arc<NodeHost>,
}

impl NodeApiService {
    /// Wraps the service for a tonic server, with the cluster's size limit.
    pub fn server(host: Arc<NodeHost>, message_bytes_max: usize) -> NodeApiTonicServer {
        NodeApiServer::new(NodeApiService { host })
            .max_decoding_message_size(message_bytes_max)
            .max_encoding_message_size(message_bytes_max)
    }
}

/// Entries buffered per subscriber between the feed and its gRPC stream.
const SUBSCRIBER_BUFFER_ENTRIES: usize = 256;

type EntryStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<CommittedEntry, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl NodeApi for NodeApiService {
    type SubscribeStream = EntryStream;

    async fn subscribe(
        &self,
        request: tonic::Request<SubscribeRequest>,
    ) -> Result<tonic::Response<EntryStream>, tonic::Status> {
        let request = request.into_inner();
        let feed = self.host.feed(request.shard_id)?;
        let (backlog, receiver) = feed
            .subscribe(request.from_index)
            .map_err(|compacted| tonic::Status::out_of_range(compacted.to_string()))?;

        let (sender, stream) = tokio::sync::mpsc::channel(SUBSCRIBER_BUFFER_ENTRIES);
        let stop_requested = self.host.stop_requested();
        tokio::spawn(forward_feed(
            request,
            backlog,
            receiver,
            sender,
            stop_requested,
        ));
        let stream = futures::stream::unfold(stream, |mut stream| async move {
            stream.recv().await.map(|item| (item, stream))
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn set_clock_offset(
        &self,
        request: tonic::Request<SetClockOffsetRequest>,
    ) -> Result<tonic::Response<SetClockOffsetReply>, tonic::Status> {
        let offset_ms = request.into_inner().offset_ms;
        let previous_offset_ms = self.host.clock().set_offset_ms(offset_ms);
        tracing::info!(
            node = self.host.node_id(),
            offset_ms,
            previous_offset_ms,
            "clock offset set"
        );
        Ok(tonic::Response::new(SetClockOffsetReply {
            previous_offset_ms,
        }))
    }

    async fn conversations(
        &self,
        request: tonic::Request<ConversationsRequest>,
    ) -> Result<tonic::Response<ConversationsReply>, tonic::Status> {
        let reply = self.host.conversations(request.into_inner().shard_id)?;
        Ok(tonic::Response::new(reply))
    }

    async fn propose(
        &self,
        request: tonic::Request<ProposeRequest>,
    ) -> Result<tonic::Response<ProposeReply>, tonic::Status> {
        let reply = self.host.propose(request.into_inner()).await?;
        Ok(tonic::Response::new(reply))
    }

    async fn propose_batch(
        &self,
        request: tonic::Request<ProposeBatchRequest>,
    ) -> Result<tonic::Response<ProposeBatchReply>, tonic::Status> {
        let reply = self.host.propose_batch(request.into_inner()).await?;
        Ok(tonic::Response::new(reply))
    }

    async fn history(
        &self,
        request: tonic::Request<HistoryRequest>,
    ) -> Result<tonic::Response<HistoryReply>, tonic::Status> {
        let reply = self.host.history(request.into_inner()).await?;
        Ok(tonic::Response::new(reply))
    }

    async fn status(
        &self,
        request: tonic::Request<StatusRequest>,
    ) -> Result<tonic::Response<StatusReply>, tonic::Status> {
        let include_digests = request.into_inner().include_digests;
        Ok(tonic::Response::new(self.host.status(include_digests)))
    }
}

type EntrySender = tokio::sync::mpsc::Sender<Result<CommittedEntry, tonic::Status>>;

/// Sends the backlog, then live entries, until the subscriber goes away or
/// the feed can no longer continue without a gap.
async fn forward_feed(
    request: SubscribeRequest,
    backlog: Vec<Arc<parley_raft::CommittedEntry>>,
    mut receiver: tokio::sync::broadcast::Receiver<FeedItem>,
    sender: EntrySender,
    stop_requested: tokio::sync::watch::Receiver<bool>,
) {
    let mut next_index = request.from_index;
    for entry in backlog {
        next_index = entry.position + 1;
        if sender.send(Ok(to_proto(&entry))).await.is_err() {
            return;
        }
    }
    let stopped = node_stopping(stop_requested);
    tokio::pin!(stopped);
    loop {
        let received = tokio::select! {
            received = receiver.recv() => received,
            // The stream would otherwise hold the node's graceful shutdown
            // open; the gateway resubscribes on another replica.
            () = &mut stopped => {
                let status = tonic::Status::unavailable(format!(
                    "this node is stopping; subscribe to shard {} on another replica from \
                     index {next_index}",
                    request.shard_id
                ));
                let _ = sender.send(Err(status)).await;
                return;
            }
        };
        let item = match received {
            Ok(FeedItem::Entry(entry)) if entry.position < next_index => continue,
            Ok(FeedItem::Entry(entry)) => {
                next_index = entry.position + 1;
                Ok(to_proto(&entry))
            }
            Ok(FeedItem::SnapshotInstalled { last_index }) => {
                Err(tonic::Status::out_of_range(format!(
                    "shard {} replica installed a snapshot through index {last_index}; reload its \
                 conversations and subscribe again",
                    request.shard_id
                )))
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(skipped)) => {
                Err(tonic::Status::aborted(format!(
                    "subscriber fell {skipped} entries behind on shard {}; subscribe again from \
                     index {next_index}",
                    request.shard_id
                )))
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let stop = item.is_err();
        if sender.send(item).await.is_err() || stop {
            return;
        }
    }
}

/// Completes once `stop_requested` turns true; never if its sender is
/// dropped first.
async fn node_stopping(mut stop_requested: tokio::sync::watch::Receiver<bool>) {
    while !*stop_requested.borrow_and_update() {
        if stop_requested.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn to_proto(entry: &parley_raft::CommittedEntry) -> CommittedEntry {
    CommittedEntry {
        log_index: entry.position,
        command: entry.command.clone(),
        result: entry.result.clone(),
    }
}
