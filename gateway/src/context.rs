//! What every gateway task shares: settings, cluster access, the
//! directory, the sessions, ephemeral state and the ack batcher.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::auth::TokenSigner;
use crate::cluster::Cluster;
use crate::delivered::DeliveredBatcher;
use crate::directory::Directory;
use crate::ephemeral::Ephemeral;
use crate::hub::Hub;
use crate::GatewayConfig;

pub struct Gateway {
    pub config: GatewayConfig,
    pub cluster: Cluster,
    pub directory: Arc<Directory>,
    pub hub: Hub,
    pub ephemeral: Ephemeral,
    pub delivered: Arc<DeliveredBatcher>,
    pub signer: TokenSigner,
    /// Whether shutdown has begun. Every open session ends when this turns
    /// true, so that the server's graceful shutdown can finish.
    pub stopping: tokio::sync::watch::Sender<bool>,
}

impl Gateway {
    /// Ends every open session (and any opened later) with UNAVAILABLE.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Completes once shutdown has begun.
    pub async fn wait_stopping(&self) {
        let mut stopping = self.stopping.subscribe();
        let _ = stopping.wait_for(|stopping| *stopping).await;
    }
}

/// Returns the gateway's wall clock in milliseconds since the Unix epoch;
/// under madsim this is the simulated clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
