//! Gateway settings, each with a bound.

use std::time::Duration;

/// Settings of one gateway process.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Address the client API listens on (IP:PORT).
    pub listen: String,
    /// Node API addresses of the cluster; the gateway uses any of them.
    pub nodes: Vec<String>,
    /// Key that signs device tokens; every gateway of a cluster shares it.
    pub token_secret: Vec<u8>,
    /// How long a device token stays valid.
    pub token_ttl: Duration,
    /// Events buffered per device session before the session is resynced
    /// from its cursors instead of buffering more.
    pub session_buffer_events_max: usize,
    /// How long a typing indicator lasts unless the client refreshes it.
    pub typing_ttl: Duration,
    /// How often delivered acks are batched into receipt commands.
    pub delivered_flush_interval: Duration,
}

impl GatewayConfig {
    /// Returns a configuration with default bounds.
    pub fn new(listen: String, nodes: Vec<String>, token_secret: Vec<u8>) -> Self {
        GatewayConfig {
            listen,
            nodes,
            token_secret,
            token_ttl: Duration::from_secs(30 * 24 * 3600),
            session_buffer_events_max: 1_024,
            typing_ttl: Duration::from_secs(5),
            delivered_flush_interval: Duration::from_millis(20),
        }
    }
}
