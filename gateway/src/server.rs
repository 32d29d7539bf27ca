//! Serving a gateway on a real socket, with the gRPC health and
//! reflection services beside the client API.

use std::future::Future;

use crate::proto::parley_server::ParleyServer;
use crate::service::ParleyService;
use crate::{startup, GatewayConfig, GatewayError};

/// Serves the client API on `config.listen` until `shutdown` completes.
pub async fn serve(
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|error| GatewayError::Listen {
            address: config.listen.clone(),
            message: error.to_string(),
        })?;
    let gateway = startup::start(config).await?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ParleyServer<ParleyService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| GatewayError::Server(format!("reflection service: {error}")))?;

    tracing::info!(listen = %gateway.config.listen, "gateway serving");
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ParleyServer::new(ParleyService::new(gateway.clone())))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
        .map_err(|error| GatewayError::Server(error.to_string()))?;

    gateway.delivered.flush(&gateway.cluster).await;
    tracing::info!("gateway stopped");
    Ok(())
}
