//! Building, crashing and restarting simulated Parley nodes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use madsim::runtime::{Handle, NodeHandle};
use parley_shards::client::ClusterClient;
use parley_raft::{NodeId, SimDisk};
use parley_shards::{ClusterSettings, NodeApiService, NodeClock, NodeHost, RaftTiming};

/// Port every simulated node serves on.
const NODE_PORT: u16 = 7100;

/// Shape of a simulated cluster.
#[derive(Clone, Debug)]
pub struct SimClusterOptions {
    pub node_count: u64,
    pub shard_count: u32,
    pub raft: RaftTiming,
    /// Simulated time one disk sync takes.
    pub sync_delay: Duration,
}

impl Default for SimClusterOptions {
    fn default() -> Self {
        SimClusterOptions {
            node_count: 3,
            shard_count: 8,
            raft: RaftTiming::default(),
            sync_delay: Duration::from_millis(1),
        }
    }
}

struct SimNode {
    handle: NodeHandle,
    disk: SimDisk,
}

/// A running simulated cluster.
pub struct SimCluster {
    runtime: Handle,
    settings: ClusterSettings,
    nodes: BTreeMap<NodeId, SimNode>,
}

fn node_ip(id: NodeId) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8))
}

fn node_address(id: NodeId) -> String {
    SocketAddr::new(node_ip(id), NODE_PORT).to_string()
}

impl SimCluster {
    /// Creates and starts every node.
    pub fn start(options: &SimClusterOptions) -> SimCluster {
        let runtime = Handle::current();
        let addresses: BTreeMap<NodeId, String> = (1..=options.node_count)
            .map(|id| (id, node_address(id)))
            .collect();
        let mut settings = ClusterSettings::new(options.shard_count, addresses);
        settings.raft = options.raft.clone();

        let mut nodes = BTreeMap::new();
        for id in 1..=options.node_count {
            let disk = SimDisk::new(options.sync_delay);
            let handle = build_node(&runtime, id, settings.clone(), disk.clone());
            nodes.insert(id, SimNode { handle, disk });
        }
        SimCluster {
            runtime,
            settings,
            nodes,
        }
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn addresses(&self) -> Vec<String> {
        self.settings.nodes.values().cloned().collect()
    }

    /// Creates a client node and returns a cluster client bound to it.
    pub fn client_node(&self, name: &str, index: u8) -> NodeHandle {
        self.runtime
            .create_node()
            .name(name)
            .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, index)))
            .build()
    }

    /// Returns a cluster client over every node's address.
    pub fn cluster_client(&self) -> ClusterClient {
        ClusterClient::new(&self.addresses()).expect("simulated node addresses are valid")
    }

    /// Kills `node` and loses its unsynced writes except the first
    /// `batches_kept` of them. Returns how many unsynced batches it had.
    pub fn crash(&self, node: NodeId, batches_kept: usize) -> usize {
        let sim_node = &self.nodes[&node];
        self.runtime.kill(sim_node.handle.id());
        let pending = sim_node.disk.crash(batches_kept);
        tracing::info!(node, pending, batches_kept, "crashed node");
        pending
    }

    /// Starts a crashed node again from what its disk kept.
    pub fn restart(&self, node: NodeId) {
        self.runtime.restart(self.nodes[&node].handle.id());
        tracing::info!(node, "restarted node");
    }
}

fn build_node(
    runtime: &Handle,
    id: NodeId,
    settings: ClusterSettings,
    disk: SimDisk,
) -> NodeHandle {
    runtime
        .create_node()
        .name(format!("node-{id}"))
        .ip(node_ip(id))
        .init(move || {
            let settings = settings.clone();
            let disk = disk.clone();
            async move {
                if let Err(error) = serve_node(id, settings, disk).await {
                    tracing::error!(node = id, %error, "simulated node failed");
                }
            }
        })
        .build()
}

async fn serve_node(id: NodeId, settings: ClusterSettings, disk: SimDisk) -> anyhow::Result<()> {
    let message_bytes_max = settings.message_bytes_max;
    let address: SocketAddr = node_address(id).parse()?;
    let host = NodeHost::start(id, settings, Arc::new(disk), NodeClock::default()).await?;
    tonic::transport::Server::builder()
        .add_service(host.transport_service().into_server())
        .add_service(NodeApiService::server(host.clone(), message_bytes_max))
        .serve(address)
        .await?;
    Ok(())
}
