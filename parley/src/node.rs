//! Runs one Parley node process: the sled engine, the multi-raft host and
//! the gRPC server for the Raft transport and the node API.
//!
//! The listener is bound before any shard starts, so a busy port fails the
//! start at once. SIGINT and SIGTERM stop the server, stop every Raft
//! member and flush the engine before the process exits.

use std::sync::Arc;

use anyhow::{Context, Result};
use parley_raft::{SledEngine, StorageEngine};
use parley_shards::{NodeApiService, NodeClock, NodeHost};
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::NodeConfig;

/// Runs the node until SIGINT or SIGTERM.
pub async fn run(config: NodeConfig) -> Result<()> {
    config
        .cluster
        .validate()
        .context("the node's settings are invalid")?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| {
            format!(
                "failed to listen on {}; is another node using it? pick a free port with --listen",
                config.listen
            )
        })?;

    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "failed to create data directory {}",
            config.data_dir.display()
        )
    })?;
    check_data_identity(&config)?;
    let engine = Arc::new(SledEngine::open(&config.data_dir.join("sled"))?);
    let engine_for_shutdown = engine.clone();
    let host = NodeHost::start(
        config.node_id,
        config.cluster.clone(),
        engine,
        NodeClock::with_offset_ms(config.clock_offset_ms),
    )
    .await
    .context("failed to start the node's shard replicas")?;

    tracing::info!(
        node = config.node_id,
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        shards = host.shard_map().shards_on(config.node_id).len(),
        "node serving"
    );
    let message_bytes_max = config.cluster.message_bytes_max;
    let server = tonic::transport::Server::builder()
        .add_service(host.transport_service().into_server())
        .add_service(NodeApiService::server(host.clone(), message_bytes_max))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown_signal());
    server.await.context("the gRPC server failed")?;

    host.shutdown().await;
    engine_for_shutdown
        .sync()
        .await
        .context("failed to flush the storage engine at shutdown")?;
    tracing::info!(node = config.node_id, "node stopped");
    Ok(())
}

/// Completes on the first SIGINT or SIGTERM; shared by `parley node`,
/// `parley gateway` and `parley dev`.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; stop the process with SIGINT");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown requested");
}

/// File in a node's data directory that records which node and shard
/// count the data belongs to.
const IDENTITY_FILE: &str = "node-identity";

/// Refuses to start on data written by another node id or with another
/// shard count: ids hash to shards by the count, so a changed count hides
/// existing conversations and a borrowed directory would vote as another
/// node. Records both on the first start.
fn check_data_identity(config: &NodeConfig) -> Result<()> {
    let path = config.data_dir.join(IDENTITY_FILE);
    let expected = format!(
        "node_id={}\nshard_count={}\n",
        config.node_id, config.cluster.shard_count
    );
    match std::fs::read_to_string(&path) {
        Ok(recorded) if recorded == expected => Ok(()),
        Ok(recorded) => anyhow::bail!(
            "data directory {} belongs to {}, but this node was started as {}; start it with \
             the recorded --id and --shards, or give it an empty --data-dir",
            config.data_dir.display(),
            recorded.trim().replace('\n', ", "),
            expected.trim().replace('\n', ", ")
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if config.data_dir.join("sled").exists() {
                anyhow::bail!(
                    "data directory {} has sled data but no {IDENTITY_FILE} file, so its node id \
                     and shard count are unknown; restore the file or give the node an empty \
                     --data-dir",
                    config.data_dir.display()
                );
            }
            write_durably(&path, expected.as_bytes()).with_context(|| {
                format!("failed to record the node identity in {}", path.display())
            })
        }
        Err(error) => Err(error).with_context(|| format!("failed to read {}", path.display())),
    }
}

/// Writes `bytes` to `path` so that a power loss leaves either no file or
/// the whole file: a synced temporary file, renamed into place, then a
/// synced directory entry.
fn write_durably(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;

    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);

    std::fs::rename(&temporary, path)?;
    if let Some(directory) = path.parent() {
        std::fs::File::open(directory)?.sync_all()?;
    }
    Ok(())
}
