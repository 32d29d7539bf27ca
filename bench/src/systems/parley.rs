//! A local Parley deployment for benchmarks: three `parley node` processes
//! (every shard replicated on all three, sled data in the run's temporary
//! folder) and one `parley gateway`, on free 127.0.0.1 ports.
//!
//! `start` returns once every shard has a leader that every replica agrees
//! on and the gateway accepts gRPC connections.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::RngCore;
use tonic::transport::Channel;

use crate::process::{free_ports, ChildProcess};
use crate::proto::parley::node::v1::node_api_client::NodeApiClient;
use crate::proto::parley::node::v1::{StatusReply, StatusRequest};

/// Nodes per cluster; each shard has a replica on all of them.
pub const NODE_COUNT: usize = 3;

/// How long the cluster may take to elect leaders and open the gateway.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Deadline of one node API status call.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Log level of the servers, whatever RUST_LOG the bench runs with.
const SERVER_LOG_LEVEL: &str = "info,openraft=warn";

/// A running Parley cluster and its gateway.
pub struct ParleyCluster {
    executable: PathBuf,
    root: PathBuf,
    pub shard_count: u32,
    /// Node API addresses; node id = index + 1.
    pub nodes: Vec<String>,
    pub gateway: String,
    node_processes: Vec<Option<ChildProcess>>,
    gateway_process: Option<ChildProcess>,
}

impl ParleyCluster {
    /// Starts a cluster with data and logs under `root`.
    pub async fn start(executable: &Path, root: &Path, shard_count: u32) -> Result<ParleyCluster> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("failed to create {}", root.display()))?;
        let ports = free_ports(NODE_COUNT + 1)?;
        let mut cluster = ParleyCluster {
            executable: executable.to_path_buf(),
            root: root.to_path_buf(),
            shard_count,
            nodes: ports[1..]
                .iter()
                .map(|port| format!("127.0.0.1:{port}"))
                .collect(),
            gateway: format!("127.0.0.1:{}", ports[0]),
            node_processes: Vec::new(),
            gateway_process: None,
        };
        for index in 0..NODE_COUNT {
            let node = cluster.spawn_node(index)?;
            cluster.node_processes.push(Some(node));
        }
        cluster.wait_for_leaders(READY_TIMEOUT).await?;
        cluster.start_gateway().await?;
        Ok(cluster)
    }

    fn spawn_node(&self, index: usize) -> Result<ChildProcess> {
        let id = index + 1;
        let mut args = vec![
            "node".to_string(),
            format!("--id={id}"),
            format!("--listen={}", self.nodes[index]),
            format!(
                "--data-dir={}",
                self.root.join(format!("node{id}")).display()
            ),
            format!("--shards={}", self.shard_count),
        ];
        for (peer, address) in self.nodes.iter().enumerate() {
            args.push(format!("--peer={}={address}", peer + 1));
        }
        let log = self.root.join(format!("node{id}.log"));
        ChildProcess::spawn(
            &self.executable,
            &format!("parley node {id}"),
            &args,
            &[("RUST_LOG", SERVER_LOG_LEVEL), ("NO_COLOR", "1")],
            &log,
        )
    }

    /// Starts the gateway (again, after `stop_gateway`) on its address and
    /// waits until it accepts connections.
    pub async fn start_gateway(&mut self) -> Result<()> {
        let key_path = self.root.join("token.key");
        if !key_path.exists() {
            let mut key = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut key);
            std::fs::write(&key_path, key)
                .with_context(|| format!("failed to write {}", key_path.display()))?;
        }
        let mut args = vec![
            "gateway".to_string(),
            format!("--listen={}", self.gateway),
            format!("--token-secret-file={}", key_path.display()),
        ];
        args.extend(self.nodes.iter().map(|node| format!("--node={node}")));
        let log = self.root.join("gateway.log");
        let process = ChildProcess::spawn(
            &self.executable,
            "parley gateway",
            &args,
            &[("RUST_LOG", SERVER_LOG_LEVEL), ("NO_COLOR", "1")],
            &log,
        )?;
        self.gateway_process = Some(process);
        self.wait_for_gateway(READY_TIMEOUT).await
    }

    async fn wait_for_gateway(&mut self, timeout: Duration) -> Result<()> {
        let started = tokio::time::Instant::now();
        loop {
            if let Some(process) = self.gateway_process.as_mut() {
                process.check_running()?;
            }
            let url = format!("http://{}", self.gateway);
            let endpoint = Channel::from_shared(url)?.connect_timeout(Duration::from_secs(1));
            if endpoint.connect().await.is_ok() {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "the gateway at {} did not accept connections within {timeout:?}; see {}",
                    self.gateway,
                    self.root.join("gateway.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the gateway with SIGTERM.
    pub async fn stop_gateway(&mut self) {
        if let Some(mut process) = self.gateway_process.take() {
            process.terminate().await;
        }
    }

    pub fn gateway_pid(&self) -> Option<u32> {
        self.gateway_process.as_ref().and_then(ChildProcess::pid)
    }

    pub fn gateway_rss_kib(&self) -> Result<u64> {
        self.gateway_process
            .as_ref()
            .context("the gateway is not running")?
            .rss_kib()
    }

    /// Returns the node API status of node `index`.
    pub async fn status(&self, index: usize) -> Result<StatusReply> {
        let url = format!("http://{}", self.nodes[index]);
        let call = async {
            let mut client = NodeApiClient::connect(url).await?;
            let request = StatusRequest {
                include_digests: false,
            };
            anyhow::Ok(client.status(request).await?.into_inner())
        };
        tokio::time::timeout(STATUS_TIMEOUT, call)
            .await
            .with_context(|| format!("status of node {} timed out", index + 1))?
    }

    /// Returns the leader id of `shard` that every running replica agrees
    /// on, or `None` while they disagree or one has no leader.
    pub async fn agreed_leader(&self, shard: u32) -> Option<u64> {
        let mut agreed = None;
        for index in self.running_node_indexes() {
            let status = self.status(index).await.ok()?;
            let replica = status
                .shards
                .iter()
                .find(|replica| replica.shard_id == shard)?;
            if replica.leader_id == 0 || agreed.is_some_and(|leader| leader != replica.leader_id) {
                return None;
            }
            agreed = Some(replica.leader_id);
        }
        agreed
    }

    fn running_node_indexes(&self) -> Vec<usize> {
        (0..self.node_processes.len())
            .filter(|index| self.node_processes[*index].is_some())
            .collect()
    }

    /// Waits until every shard has an agreed leader among running nodes.
    pub async fn wait_for_leaders(&mut self, timeout: Duration) -> Result<()> {
        let started = tokio::time::Instant::now();
        loop {
            for process in self.node_processes.iter_mut().flatten() {
                process.check_running()?;
            }
            let mut missing = Vec::new();
            for shard in 0..self.shard_count {
                if self.agreed_leader(shard).await.is_none() {
                    missing.push(shard);
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "shards {missing:?} have no agreed leader after {timeout:?}; logs in {}",
                    self.root.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGKILL to node `node_id` and waits for it to die.
    pub async fn kill_node(&mut self, node_id: u64) -> Result<()> {
        let index = (node_id as usize)
            .checked_sub(1)
            .filter(|index| *index < self.node_processes.len())
            .with_context(|| format!("there is no node {node_id}"))?;
        let mut process = self.node_processes[index]
            .take()
            .with_context(|| format!("node {node_id} is not running"))?;
        process.kill().await;
        Ok(())
    }

    /// Stops the gateway, then every node, with SIGTERM.
    pub async fn stop(&mut self) {
        self.stop_gateway().await;
        for process in self.node_processes.iter_mut() {
            if let Some(mut process) = process.take() {
                process.terminate().await;
            }
        }
    }
}

pub use parley_shards::shard_map::shard_of_id;
