//! Gateway errors.

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid gateway settings: {0}")]
    InvalidSettings(String),

    #[error("failed to listen on {address}: {message}; pick a free port")]
    Listen { address: String, message: String },

    #[error("the gateway server failed: {0}")]
    Server(String),
}
