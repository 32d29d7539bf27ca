//! A cluster of real `parley node` processes on 127.0.0.1 for tests: free
//! ports, a temporary data directory per node, kill -9 and restart.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use parley_shards::client::ClusterClient;

pub mod gateway;

pub struct ProcessCluster {
    pub root: tempfile::TempDir,
    pub addresses: Vec<String>,
    pub shard_count: u32,
    children: Vec<Option<Child>>,
    extra_args: Vec<String>,
}

/// Reserves `count` distinct free loopback ports. The listeners are closed
/// before the nodes bind, so another process could take a port in between;
/// on loopback in a test run that has not happened in practice.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|listener| {
            listener
                .local_addr()
                .expect("bound listener has an address")
                .port()
        })
        .collect()
}

impl ProcessCluster {
    /// Starts `node_count` nodes with `shard_count` shards.
    pub fn start(node_count: usize, shard_count: u32) -> ProcessCluster {
        Self::start_with_args(node_count, shard_count, &[])
    }

    /// Starts nodes with extra `parley node` flags for every node.
    pub fn start_with_args(
        node_count: usize,
        shard_count: u32,
        extra_args: &[&str],
    ) -> ProcessCluster {
        let root = tempfile::tempdir().expect("temporary cluster directory");
        let addresses = free_ports(node_count)
            .into_iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let mut cluster = ProcessCluster {
            root,
            addresses,
            shard_count,
            children: (0..node_count).map(|_| None).collect(),
            extra_args: extra_args.iter().map(|arg| arg.to_string()).collect(),
        };
        for index in 0..node_count {
            cluster.start_node(index);
        }
        cluster
    }

    pub fn data_dir(&self, index: usize) -> PathBuf {
        self.root.path().join(format!("node{}", index + 1))
    }

    pub fn log_path(&self, index: usize) -> PathBuf {
        self.root.path().join(format!("node{}.log", index + 1))
    }

    /// Starts (or restarts) the node at `index`; node ids are index + 1.
    pub fn start_node(&mut self, index: usize) {
        assert!(
            self.children[index].is_none(),
            "node {} is already running",
            index + 1
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(index))
            .expect("node log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_parley"));
        command
            .arg("node")
            .arg("--id")
            .arg((index + 1).to_string())
            .arg("--listen")
            .arg(&self.addresses[index])
            .arg("--data-dir")
            .arg(self.data_dir(index))
            .arg("--shards")
            .arg(self.shard_count.to_string());
        for (peer, address) in self.addresses.iter().enumerate() {
            command.arg("--peer").arg(format!("{}={address}", peer + 1));
        }
        command.args(&self.extra_args);
        let child = command
            .env("RUST_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn parley node");
        self.children[index] = Some(child);
    }

    /// Sends SIGKILL to the node at `index` and waits for it to die.
    pub fn kill_nine(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits up to 20 s for a clean exit.
    pub fn terminate(&mut self, index: usize) -> Option<std::process::ExitStatus> {
        let mut child = self.children[index].take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        for _ in 0..200 {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        child.wait().ok()
    }

    pub fn client(&self) -> ClusterClient {
        ClusterClient::new(&self.addresses).expect("loopback addresses are valid")
    }

    /// Waits until every shard has a leader that all its replicas agree on.
    pub async fn wait_for_leaders(&self, timeout: Duration) {
        let client = self.client();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut leaders = std::collections::BTreeMap::new();
            let mut complete = true;
            for index in 0..self.addresses.len() {
                match client.status(index, false).await {
                    Ok(status) => {
                        for shard in status.shards {
                            if shard.leader_id == 0 {
                                complete = false;
                            }
                            leaders
                                .entry(shard.shard_id)
                                .or_insert_with(Vec::new)
                                .push(shard.leader_id);
                        }
                    }
                    Err(_) => complete = false,
                }
            }
            let agreed = leaders
                .values()
                .all(|ids| ids.iter().all(|id| *id == ids[0]));
            if complete && agreed && leaders.len() == self.shard_count as usize {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "shards have no agreed leaders after {timeout:?}: {leaders:?}; logs in {}",
                self.root.path().display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for index in 0..self.children.len() {
            self.kill_nine(index);
        }
    }
}
