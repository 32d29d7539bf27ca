//! Runs one Parley node process: the sled engine, the multi-raft host and
//! the gRPC server for the Raft transport and the node API.
//!
//! The listener is bound before any shard starts, so a busy port fails the
//! start at once. SIGINT and SIGTERM stop the server, stop every Raft
//! member and flush the engine before the process exits.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use parley_raft::{SledEngine, StorageEngine};
use parley_shards::{NodeApiService, NodeClock, NodeHost};
use tonic::transport::server::TcpIncoming;

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
    let (stopping, stop_requested) = tokio::sync::watch::channel(false);
    let stopping_host = host.clone();
    let shutdown = async move {
        shutdown_signal().await;
        stopping_host.begin_stop();
        stopping.send_replace(true);
    };
    let server = tonic::transport::Server::builder()
        .http2_max_pending_accept_reset_streams(Some(PENDING_RESET_STREAMS_MAX))
        .add_service(host.transport_service().into_server())
        .add_service(NodeApiService::server(host.clone(), message_bytes_max))
        .serve_with_incoming_shutdown(incoming_without_nagle(listener), shutdown);
    tokio::select! {
        served = server => served.context("the gRPC server failed")?,
        // A client that keeps its connection open would hold the graceful
        // shutdown open forever. Its connection task ends when the process
        // exits.
        () = drain_expired(stop_requested) => tracing::warn!(
            node = config.node_id,
            drain_max_ms = SHUTDOWN_DRAIN_MAX.as_millis() as u64,
            "connections still open after the shutdown drain; stopping without them"
        ),
    }

    host.shutdown().await;
    engine_for_shutdown
        .sync()
        .await
        .context("failed to flush the storage engine at shutdown")?;
    tracing::info!(node = config.node_id, "node stopped");
    Ok(())
}

/// Streams a peer may reset before this node accepts them, after which h2
/// closes the connection with ENHANCE_YOUR_CALM. The h2 default of 20
/// guards public servers against rapid-reset floods. On the cluster's own
/// links, a healed partition cancels hundreds of timed-out Raft calls at once.
const PENDING_RESET_STREAMS_MAX: usize = 4096;

/// Accepts connections on `listener` with Nagle's algorithm off. tonic
/// applies its own `tcp_nodelay` setting only to listeners it binds, and
/// with Nagle on, a small reply can wait for the peer's delayed ACK
/// (40 ms at least on Linux) before it is sent.
fn incoming_without_nagle(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// How long a stopping node waits for open connections to close before it
/// drops them. Peers elect a new leader only after this node stops its
/// Raft members, so the bound is kept well under a second.
const SHUTDOWN_DRAIN_MAX: Duration = Duration::from_millis(500);

/// Completes `SHUTDOWN_DRAIN_MAX` after `stop_requested` turns true.
async fn drain_expired(mut stop_requested: tokio::sync::watch::Receiver<bool>) {
    if stop_requested.wait_for(|stop| *stop).await.is_err() {
        // The sender lives as long as the server future, which ended first.
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(SHUTDOWN_DRAIN_MAX).await;
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

/// Version of the Raft log entry encoding in the sled data. Format 2
/// entries carry a batch of commands; format 1, written before the format
/// was recorded, carried one command per entry.
const LOG_FORMAT: u32 = 2;

/// Rejects data written by another node id, with another shard count or
/// in another log format, and records all three on the first start. Ids
/// hash to shards by the count, so a changed count hides existing
/// conversations. A borrowed directory would vote as another node, and an
/// old log would not decode.
fn check_data_identity(config: &NodeConfig) -> Result<()> {
    let path = config.data_dir.join(IDENTITY_FILE);
    let identity = format!(
        "node_id={}\nshard_count={}\n",
        config.node_id, config.cluster.shard_count
    );
    let expected = format!("{identity}log_format={LOG_FORMAT}\n");
    match std::fs::read_to_string(&path) {
        Ok(recorded) if recorded == expected => Ok(()),
        Ok(recorded) if recorded.starts_with(&identity) => {
            let format = recorded
                .lines()
                .find_map(|line| line.strip_prefix("log_format="))
                .unwrap_or("1");
            anyhow::bail!(
                "data directory {} holds a Raft log in format {format}, but this build reads \
                 only format {LOG_FORMAT}; run the build that wrote it, or start every node of \
                 the cluster with an empty --data-dir",
                config.data_dir.display()
            )
        }
        Ok(recorded) => anyhow::bail!(
            "data directory {} belongs to {}, but this node was started as {}; start it with \
             the recorded --id and --shards, or give it an empty --data-dir",
            config.data_dir.display(),
            recorded.trim().replace('\n', ", "),
            identity.trim().replace('\n', ", ")
        ),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if config.data_dir.join("sled").exists() {
                anyhow::bail!(
                    "data directory {} has sled data but no {IDENTITY_FILE} file, so its node id, \
                     shard count and log format are unknown; restore the file or give the node \
                     an empty --data-dir",
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
