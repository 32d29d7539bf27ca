//! A local 3-member etcd cluster on free 127.0.0.1 ports, with its data in
//! the run's temporary folder, and a pool of gRPC connections to it.
//!
//! An etcd member fsyncs its WAL before it acknowledges new log entries
//! (one fsync may cover a batch), so an acknowledged Put is on disk on a
//! majority, like a Parley append. `etcd --help` of 3.4.23 lists no flag
//! that turns the fsync off.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tonic::transport::{Channel, Endpoint};

use crate::process::{free_ports, ChildProcess};
use crate::proto::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::proto::etcdserverpb::{PutRequest, StatusRequest};

/// Members of the cluster.
const MEMBER_COUNT: usize = 3;

/// How long the cluster may take to elect a leader.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running etcd cluster.
pub struct EtcdCluster {
    root: PathBuf,
    /// Client URLs (http://127.0.0.1:PORT), one per member.
    pub client_urls: Vec<String>,
    members: Vec<ChildProcess>,
    pub version: String,
}

impl EtcdCluster {
    pub async fn start(executable: &Path, root: &Path) -> Result<EtcdCluster> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("failed to create {}", root.display()))?;
        let ports = free_ports(2 * MEMBER_COUNT)?;
        let client_urls: Vec<String> = ports[..MEMBER_COUNT]
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect();
        let peer_urls: Vec<String> = ports[MEMBER_COUNT..]
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect();
        let initial_cluster = peer_urls
            .iter()
            .enumerate()
            .map(|(index, url)| format!("m{}={url}", index + 1))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for index in 0..MEMBER_COUNT {
            let name = format!("m{}", index + 1);
            let args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", root.join(&name).display()),
                format!("--listen-client-urls={}", client_urls[index]),
                format!("--advertise-client-urls={}", client_urls[index]),
                format!("--listen-peer-urls={}", peer_urls[index]),
                format!("--initial-advertise-peer-urls={}", peer_urls[index]),
                format!("--initial-cluster={initial_cluster}"),
                "--initial-cluster-state=new".to_string(),
                "--initial-cluster-token=parley-bench".to_string(),
                // 8 GiB, so long runs do not hit the 2 GiB default quota.
                "--quota-backend-bytes=8589934592".to_string(),
            ];
            let log = root.join(format!("{name}.log"));
            members.push(ChildProcess::spawn(
                executable,
                &format!("etcd {name}"),
                &args,
                &[],
                &log,
            )?);
        }
        let mut cluster = EtcdCluster {
            root: root.to_path_buf(),
            client_urls,
            members,
            version: String::new(),
        };
        cluster.version = cluster.wait_for_leader().await?;
        Ok(cluster)
    }

    /// Waits until every member reports the same leader; returns the
    /// server version.
    async fn wait_for_leader(&mut self) -> Result<String> {
        let started = tokio::time::Instant::now();
        loop {
            for member in &mut self.members {
                member.check_running()?;
            }
            if let Some(version) = self.agreed_status().await {
                return Ok(version);
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "etcd members did not agree on a leader within {READY_TIMEOUT:?}; logs in {}",
                    self.root.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn agreed_status(&self) -> Option<String> {
        let mut leader = None;
        let mut version = String::new();
        for url in &self.client_urls {
            let channel = Endpoint::from_shared(url.clone())
                .ok()?
                .connect_timeout(Duration::from_secs(1))
                .connect()
                .await
                .ok()?;
            let mut request = tonic::Request::new(StatusRequest {});
            request.set_timeout(Duration::from_secs(2));
            let status = MaintenanceClient::new(channel)
                .status(request)
                .await
                .ok()?
                .into_inner();
            if status.leader == 0 || leader.is_some_and(|leader| leader != status.leader) {
                return None;
            }
            leader = Some(status.leader);
            version = status.version;
        }
        Some(version)
    }

    pub async fn stop(&mut self) {
        for member in &mut self.members {
            member.terminate().await;
        }
    }
}

/// A KV client on one connection.
pub type KvClient = crate::proto::etcdserverpb::kv_client::KvClient<Channel>;

/// `connections` KV clients, connection i to member i modulo 3, as a
/// client library balancing over the cluster's endpoints would.
pub async fn connect_pool(cluster: &EtcdCluster, connections: usize) -> Result<Vec<KvClient>> {
    let mut clients = Vec::with_capacity(connections);
    for index in 0..connections {
        let url = &cluster.client_urls[index % cluster.client_urls.len()];
        let channel = Endpoint::from_shared(url.clone())?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("failed to connect to etcd at {url}"))?;
        clients.push(KvClient::new(channel));
    }
    Ok(clients)
}

/// Puts `value` under `key` through `client`, with a deadline.
pub async fn put(
    mut client: KvClient,
    key: Vec<u8>,
    value: Vec<u8>,
    timeout: Duration,
) -> Result<()> {
    let mut request = tonic::Request::new(PutRequest {
        key,
        value,
        lease: 0,
    });
    request.set_timeout(timeout);
    client.put(request).await?;
    Ok(())
}
