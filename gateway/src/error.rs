//! Gateway errors.

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid gateway settings: {0}")]
    InvalidSettings(String),

    /// `advice` depends on the failure: a port in use needs another port,
    /// an address that does not parse needs the `IP:PORT` form.
    #[error("failed to listen on {address:?}: {message}; {advice}")]
    Listen {
        address: String,
        message: String,
        advice: &'static str,
    },

    #[error("the gateway server failed: {0}")]
    Server(String),
}
