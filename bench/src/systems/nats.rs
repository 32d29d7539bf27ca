//! A local 3-server NATS cluster with JetStream on free 127.0.0.1 ports,
//! its file store in the run's temporary folder, and one R3 file-storage
//! stream that the bench publishes to with acknowledgements.
//!
//! Durability: nats-server 2.10 added `sync_interval: always` (fsync every
//! write before the acknowledgement). Older servers reject the key and sync
//! their file store on a timer (every 2 minutes by default, per the NATS
//! JetStream documentation), so an acknowledged message there is in the
//! page cache of a majority, not on disk. `start` probes the key with
//! `nats-server -t` and reports which mode it got in `durability`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_nats::jetstream::{self, context::ContextBuilder, stream};

use crate::process::{free_ports, ChildProcess};

/// Servers of the cluster.
const SERVER_COUNT: usize = 3;

/// How long the cluster may take until the stream exists.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Name of the benchmark stream; it captures the subjects `bench.>`.
pub const STREAM: &str = "BENCH";

/// Deadline of one JetStream API call or publish acknowledgement.
const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// A running NATS cluster with the benchmark stream.
pub struct NatsCluster {
    pub client_urls: Vec<String>,
    servers: Vec<ChildProcess>,
    pub version: String,
    /// The durability of an acknowledged write, for the report.
    pub durability: String,
}

impl NatsCluster {
    pub async fn start(executable: &Path, root: &Path) -> Result<NatsCluster> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("failed to create {}", root.display()))?;
        let version = server_version(executable)?;
        let sync_always = probe_sync_always(executable, root)?;

        let ports = free_ports(2 * SERVER_COUNT)?;
        let client_ports = &ports[..SERVER_COUNT];
        let route_ports = &ports[SERVER_COUNT..];
        let mut servers = Vec::new();
        for index in 0..SERVER_COUNT {
            let config = server_config(root, index, client_ports, route_ports, sync_always);
            let config_path = root.join(format!("n{}.conf", index + 1));
            std::fs::write(&config_path, config)
                .with_context(|| format!("failed to write {}", config_path.display()))?;
            let args = vec!["-c".to_string(), config_path.display().to_string()];
            let log = root.join(format!("n{}.log", index + 1));
            servers.push(ChildProcess::spawn(
                executable,
                &format!("nats-server n{}", index + 1),
                &args,
                &[],
                &log,
            )?);
        }

        let durability = if sync_always {
            "fsync on every write (sync_interval: always)".to_string()
        } else {
            format!(
                "no per-write fsync: nats-server {version} rejects `sync_interval` (added in \
                 2.10) and syncs its file store on a timer (2 min by default)"
            )
        };
        let mut cluster = NatsCluster {
            client_urls: client_ports
                .iter()
                .map(|port| format!("nats://127.0.0.1:{port}"))
                .collect(),
            servers,
            version,
            durability,
        };
        cluster.create_stream(root).await?;
        Ok(cluster)
    }

    /// Creates the R3 file stream, retrying while the JetStream meta
    /// group elects its leader.
    async fn create_stream(&mut self, root: &Path) -> Result<()> {
        let started = tokio::time::Instant::now();
        loop {
            for server in &mut self.servers {
                server.check_running()?;
            }
            let error = match self.try_create_stream().await {
                Ok(()) => return Ok(()),
                Err(error) => error,
            };
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "the JetStream stream {STREAM} could not be created within \
                     {READY_TIMEOUT:?}: {error:#}; logs in {}",
                    root.display()
                );
            }
            tracing::debug!(error = format!("{error:#}"), "stream not created yet");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn try_create_stream(&self) -> Result<()> {
        let client = async_nats::connect(self.client_urls[0].as_str()).await?;
        let context = context(client);
        let config = stream::Config {
            name: STREAM.to_string(),
            subjects: vec!["bench.>".to_string()],
            storage: stream::StorageType::File,
            num_replicas: SERVER_COUNT,
            ..Default::default()
        };
        context
            .get_or_create_stream(config)
            .await
            .map_err(|error| anyhow::anyhow!("{error}"))?;
        Ok(())
    }

    pub async fn stop(&mut self) {
        for server in &mut self.servers {
            server.terminate().await;
        }
    }
}

fn context(client: async_nats::Client) -> jetstream::Context {
    ContextBuilder::new()
        .timeout(JETSTREAM_TIMEOUT)
        .ack_timeout(JETSTREAM_TIMEOUT)
        .build(client)
}

fn server_config(
    root: &Path,
    index: usize,
    client_ports: &[u16],
    route_ports: &[u16],
    sync_always: bool,
) -> String {
    let routes = route_ports
        .iter()
        .enumerate()
        .filter(|(other, _)| *other != index)
        .map(|(_, port)| format!("nats-route://127.0.0.1:{port}"))
        .collect::<Vec<_>>()
        .join(", ");
    let store: PathBuf = root.join(format!("n{}", index + 1));
    let sync = if sync_always {
        "\n  sync_interval: always"
    } else {
        ""
    };
    format!(
        "server_name: n{id}\nlisten: 127.0.0.1:{client}\n\
         jetstream {{\n  store_dir: \"{store}\"{sync}\n}}\n\
         cluster {{\n  name: parley-bench\n  listen: 127.0.0.1:{route}\n  routes: [{routes}]\n}}\n",
        id = index + 1,
        client = client_ports[index],
        store = store.display(),
        route = route_ports[index],
    )
}

/// Returns the version `nats-server --version` prints, such as `v2.9.10`.
fn server_version(executable: &Path) -> Result<String> {
    let output = std::process::Command::new(executable)
        .arg("--version")
        .output()
        .with_context(|| format!("failed to run {} --version", executable.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .split_whitespace()
        .last()
        .unwrap_or("unknown")
        .to_string())
}

/// Returns whether this nats-server accepts `sync_interval: always`,
/// by testing a configuration with it (`nats-server -t`).
fn probe_sync_always(executable: &Path, root: &Path) -> Result<bool> {
    let path = root.join("probe.conf");
    let config = format!(
        "listen: 127.0.0.1:-1\njetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
        root.join("probe").display()
    );
    std::fs::write(&path, config).with_context(|| format!("failed to write {}", path.display()))?;
    let output = std::process::Command::new(executable)
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .output()
        .with_context(|| format!("failed to run {} -t", executable.display()))?;
    let accepted = output.status.success();
    tracing::debug!(
        accepted,
        stderr = %String::from_utf8_lossy(&output.stderr),
        "probed sync_interval: always"
    );
    Ok(accepted)
}

/// `connections` JetStream contexts, connection i to server i modulo 3.
pub async fn connect_pool(
    cluster: &NatsCluster,
    connections: usize,
) -> Result<Vec<jetstream::Context>> {
    let mut contexts = Vec::with_capacity(connections);
    for index in 0..connections {
        let url = &cluster.client_urls[index % cluster.client_urls.len()];
        let client = async_nats::connect(url.as_str())
            .await
            .with_context(|| format!("failed to connect to NATS at {url}"))?;
        contexts.push(context(client));
    }
    Ok(contexts)
}

/// Publishes `payload` to `subject` and waits for the stream's ack.
pub async fn publish(
    context: &jetstream::Context,
    subject: String,
    payload: bytes::Bytes,
) -> Result<()> {
    let ack = context
        .publish(subject, payload)
        .await
        .map_err(|error| anyhow::anyhow!("publish failed: {error}"))?;
    ack.await
        .map_err(|error| anyhow::anyhow!("publish ack failed: {error}"))?;
    Ok(())
}
