//! Serving a gateway on a real socket, with the gRPC health and
//! reflection services beside the client API.

use std::future::Future;
use std::time::Duration;

use crate::proto::parley_server::ParleyServer;
use crate::service::ParleyService;
use crate::{startup, GatewayConfig, GatewayError};

/// How long shutdown waits for open connections to close after it has
/// ended the sessions.
const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_secs(5);

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
            advice: listen_advice(error.kind()),
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

    let stopping = gateway.clone();
    let shutdown = async move {
        shutdown.await;
        tracing::info!(
            sessions = stopping.hub.session_count(),
            "gateway shutting down, ending sessions"
        );
        stopping.begin_shutdown();
    };
    let drain_expired = async {
        gateway.wait_stopping().await;
        tokio::time::sleep(SHUTDOWN_DRAIN_MAX).await;
    };

    tracing::info!(listen = %gateway.config.listen, "gateway serving");
    let server = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(ParleyServer::new(ParleyService::new(gateway.clone())))
        .serve_with_incoming_shutdown(
            // Nagle's algorithm would hold small replies and events until
            // the client's delayed ACK; tonic turns it off only on
            // listeners it binds itself.
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        );
    tokio::select! {
        served = server => served.map_err(|error| GatewayError::Server(error.to_string()))?,
        // A client that stops reading keeps its connection open, and the
        // graceful shutdown would wait for it forever.
        () = drain_expired => tracing::warn!(
            drain_max_s = SHUTDOWN_DRAIN_MAX.as_secs(),
            sessions = gateway.hub.session_count(),
            "connections still open after the shutdown drain; stopping without them"
        ),
    }

    gateway.delivered.flush(&gateway.cluster).await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Returns what to change after binding the client API address failed.
fn listen_advice(kind: std::io::ErrorKind) -> &'static str {
    match kind {
        std::io::ErrorKind::AddrInUse => "another process uses the port; pick a free port",
        std::io::ErrorKind::PermissionDenied => {
            "pick a port above 1023 or run with the right to bind it"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "the IP is not one of this machine's; use 127.0.0.1 or 0.0.0.0"
        }
        _ => "write the address as IP:PORT, for example 127.0.0.1:7100",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_advice_depends_on_the_failure() {
        let in_use = listen_advice(std::io::ErrorKind::AddrInUse);
        assert!(in_use.contains("pick a free port"), "{in_use}");
        let unparsed = listen_advice(std::io::ErrorKind::InvalidInput);
        assert!(unparsed.contains("IP:PORT"), "{unparsed}");
    }
}
