//! The node API gRPC service, a thin adapter over `NodeHost`.

use std::sync::Arc;

use crate::host::NodeHost;
use crate::proto::node_api_server::{NodeApi, NodeApiServer};
use crate::proto::{
    HistoryReply, HistoryRequest, ProposeReply, ProposeRequest, StatusReply, StatusRequest,
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

#[tonic::async_trait]
impl NodeApi for NodeApiService {
    async fn propose(
        &self,
        request: tonic::Request<ProposeRequest>,
    ) -> Result<tonic::Response<ProposeReply>, tonic::Status> {
        let reply = self.host.propose(request.into_inner()).await?;
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
