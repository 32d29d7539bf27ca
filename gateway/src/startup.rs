//! Starting a gateway: settings checks, topology discovery, one commit
//! stream follower per shard, and the background flushers. Listening is
//! left to the caller: `server::serve` on a real socket, or a simulated
//! node under madsim.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use parley_shards::client::ClusterClient;

use crate::auth::TokenSigner;
use crate::cluster::Cluster;
use crate::context::{now_ms, Gateway};
use crate::delivered::DeliveredBatcher;
use crate::directory::Directory;
use crate::ephemeral::Ephemeral;
use crate::hub::Hub;
use crate::{feed, GatewayConfig, GatewayError};

/// Shortest token key accepted, in bytes.
const TOKEN_SECRET_BYTES_MIN: usize = 16;

/// How long startup waits for the cluster to report every shard.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(60);

/// How often expired typing indicators are swept.
const TYPING_SWEEP_INTERVAL: Duration = Duration::from_millis(250);

fn validate(config: &GatewayConfig) -> Result<(), GatewayError> {
    if config.nodes.is_empty() {
        return Err(GatewayError::InvalidSettings(
            "no node addresses given; pass at least one --node HOST:PORT".into(),
        ));
    }
    if config.token_secret.len() < TOKEN_SECRET_BYTES_MIN {
        return Err(GatewayError::InvalidSettings(format!(
            "the token key has {} bytes; use at least {TOKEN_SECRET_BYTES_MIN} random bytes",
            config.token_secret.len()
        )));
    }
    if config.session_buffer_events_max == 0 {
        return Err(GatewayError::InvalidSettings(
            "session_buffer_events_max is 0; set it to at least 1".into(),
        ));
    }
    Ok(())
}

/// Asks the nodes which shards each carries, until every shard has a
/// replica; returns the shard count and, per shard, node indexes.
async fn discover(
    client: &ClusterClient,
) -> Result<(u32, BTreeMap<u32, Vec<usize>>), GatewayError> {
    let started = tokio::time::Instant::now();
    loop {
        let mut shard_count = 0;
        let mut replicas: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        for index in 0..client.addresses().len() {
            if let Ok(status) = client.status(index, false).await {
                shard_count = status.shard_count;
                for shard in status.shards {
                    replicas.entry(shard.shard_id).or_default().push(index);
                }
            }
        }
        if shard_count > 0 && replicas.len() == shard_count as usize {
            return Ok((shard_count, replicas));
        }
        if started.elapsed() > DISCOVERY_TIMEOUT {
            return Err(GatewayError::Server(format!(
                "the nodes {:?} did not report all shards within {} s; check that they run",
                client.addresses(),
                DISCOVERY_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn spawn_background(gateway: &Arc<Gateway>) {
    let flusher = gateway.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(flusher.config.delivered_flush_interval).await;
            flusher.delivered.flush(&flusher.cluster).await;
        }
    });
    let sweeper = gateway.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(TYPING_SWEEP_INTERVAL).await;
            sweeper.ephemeral.expire(&sweeper.hub, now_ms());
        }
    });
}

/// Checks `config`, discovers the cluster, and starts following it.
pub async fn start(config: GatewayConfig) -> Result<Arc<Gateway>, GatewayError> {
    validate(&config)?;
    let client = ClusterClient::new(&config.nodes)
        .map_err(|error| GatewayError::InvalidSettings(error.to_string()))?;
    let (shard_count, replicas) = discover(&client).await?;

    let gateway = Arc::new(Gateway {
        cluster: Cluster::new(client),
        directory: Arc::new(Directory::new(shard_count)),
        hub: Hub::default(),
        ephemeral: Ephemeral::new(config.typing_ttl),
        delivered: Arc::new(DeliveredBatcher::default()),
        signer: TokenSigner::new(config.token_secret.clone()),
        stopping: tokio::sync::watch::channel(false).0,
        config,
    });
    for (shard, nodes) in replicas {
        tokio::spawn(feed::follow_shard(gateway.clone(), shard, nodes));
    }
    // Until a shard is loaded the directory lists none of its members, so
    // sessions would be refused or follow too few conversations.
    if !gateway.directory.wait_loaded(DISCOVERY_TIMEOUT).await {
        return Err(GatewayError::Server(format!(
            "the nodes {:?} did not return every shard's conversations within {} s; \
             check that they run",
            gateway.cluster.client().addresses(),
            DISCOVERY_TIMEOUT.as_secs()
        )));
    }
    spawn_background(&gateway);
    tracing::info!(shards = shard_count, "gateway following the cluster");
    Ok(gateway)
}
