//! Building, crashing, pausing, partitioning and restarting simulated
//! Parley nodes and gateways.
//!
//! Every node runs the real shard host on a `SimDisk` and a `NodeClock`
//! that the harness keeps across restarts, so a crash can drop unsynced
//! writes and a clock fault can skew one node without touching madsim's
//! single global clock. Gateways run the real gateway on their own
//! simulated nodes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};
use parley_gateway::GatewayConfig;
use parley_raft::{NodeId, SimDisk};
use parley_shards::client::ClusterClient;
use parley_shards::{ClusterSettings, NodeApiService, NodeClock, NodeHost, RaftTiming};

/// Port every simulated node serves its node API and Raft transport on.
const NODE_PORT: u16 = 7100;

/// Port every simulated gateway serves the client API on.
const GATEWAY_PORT: u16 = 7000;

/// Key that signs device tokens in simulated clusters.
pub const SIM_TOKEN_SECRET: &[u8] = b"parley-simulation-token-key";

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
    clock: NodeClock,
}

/// A running simulated cluster.
pub struct SimCluster {
    runtime: Handle,
    settings: ClusterSettings,
    nodes: BTreeMap<NodeId, SimNode>,
    gateways: Vec<(NodeHandle, String)>,
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
            let clock = NodeClock::default();
            let handle = build_node(&runtime, id, settings.clone(), disk.clone(), clock.clone());
            nodes.insert(
                id,
                SimNode {
                    handle,
                    disk,
                    clock,
                },
            );
        }
        SimCluster {
            runtime,
            settings,
            nodes,
            gateways: Vec::new(),
        }
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn shard_count(&self) -> u32 {
        self.settings.shard_count
    }

    pub fn addresses(&self) -> Vec<String> {
        self.settings.nodes.values().cloned().collect()
    }

    /// Creates a client node with address 10.0.1.`index`.
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

    /// Starts a gateway on its own simulated node and returns its address.
    pub fn start_gateway(&mut self, typing_ttl: Duration) -> String {
        let index = self.gateways.len() as u8 + 1;
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 2, index));
        let address = SocketAddr::new(ip, GATEWAY_PORT);
        let mut config = GatewayConfig::new(
            address.to_string(),
            self.addresses(),
            SIM_TOKEN_SECRET.to_vec(),
        );
        config.typing_ttl = typing_ttl;
        let handle = self
            .runtime
            .create_node()
            .name(format!("gateway-{index}"))
            .ip(ip)
            .init(move || {
                let config = config.clone();
                async move {
                    if let Err(error) = serve_gateway(config, address).await {
                        tracing::error!(%error, "simulated gateway failed");
                    }
                }
            })
            .build();
        self.gateways.push((handle, address.to_string()));
        address.to_string()
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

    /// Stops scheduling `node`'s tasks until `resume`.
    pub fn pause(&self, node: NodeId) {
        self.runtime.pause(self.nodes[&node].handle.id());
    }

    pub fn resume(&self, node: NodeId) {
        self.runtime.resume(self.nodes[&node].handle.id());
    }

    /// Returns the clock `node` stamps appends with.
    pub fn clock(&self, node: NodeId) -> &NodeClock {
        &self.nodes[&node].clock
    }

    /// Drops every packet from `from` to `to` until `heal_network`.
    pub fn cut_link(&self, from: NodeId, to: NodeId) {
        let net = NetSim::current();
        net.clog_link(self.nodes[&from].handle.id(), self.nodes[&to].handle.id());
    }

    /// Restores every link, and removes packet loss and added delay.
    pub fn heal_network(&self) {
        let net = NetSim::current();
        for from in self.nodes.values() {
            for to in self.nodes.values() {
                net.unclog_link(from.handle.id(), to.handle.id());
            }
        }
        net.update_config(|config| {
            config.packet_loss_rate = 0.0;
            config.send_latency = Duration::from_millis(1)..Duration::from_millis(10);
        });
    }

    /// Sets the packet loss rate and latency of the whole network.
    pub fn degrade_network(&self, packet_loss_rate: f64, latency: std::ops::Range<Duration>) {
        NetSim::current().update_config(|config| {
            config.packet_loss_rate = packet_loss_rate;
            config.send_latency = latency;
        });
    }
}

fn build_node(
    runtime: &Handle,
    id: NodeId,
    settings: ClusterSettings,
    disk: SimDisk,
    clock: NodeClock,
) -> NodeHandle {
    runtime
        .create_node()
        .name(format!("node-{id}"))
        .ip(node_ip(id))
        .init(move || {
            let settings = settings.clone();
            let disk = disk.clone();
            let clock = clock.clone();
            async move {
                if let Err(error) = serve_node(id, settings, disk, clock).await {
                    tracing::error!(node = id, %error, "simulated node failed");
                }
            }
        })
        .build()
}

async fn serve_node(
    id: NodeId,
    settings: ClusterSettings,
    disk: SimDisk,
    clock: NodeClock,
) -> anyhow::Result<()> {
    let message_bytes_max = settings.message_bytes_max;
    let address: SocketAddr = node_address(id).parse()?;
    let host = NodeHost::start(id, settings, Arc::new(disk), clock).await?;
    tonic::transport::Server::builder()
        .add_service(host.transport_service().into_server())
        .add_service(NodeApiService::server(host.clone(), message_bytes_max))
        .serve(address)
        .await?;
    Ok(())
}

async fn serve_gateway(config: GatewayConfig, address: SocketAddr) -> anyhow::Result<()> {
    let gateway = parley_gateway::start(config).await?;
    tonic::transport::Server::builder()
        .add_service(parley_gateway::tonic_service(gateway))
        .serve(address)
        .await?;
    Ok(())
}
