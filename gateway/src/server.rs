//! Starting and stopping a gateway process.

use std::future::Future;

use crate::{GatewayConfig, GatewayError};

/// Serves the client API on `config.listen` until `shutdown` completes.
pub async fn serve(
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    let _ = (config, shutdown);
    Err(GatewayError::Server("not built yet".into()))
}
