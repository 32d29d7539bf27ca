//! The chat client's connection to a gateway: the channel, the bearer token
//! on every authenticated call, and gRPC errors turned into
//! `CODE: message` lines with a hint for the codes a user can act on.

use std::fmt;
use std::time::Duration;

use anyhow::{Context, Result};
use parley_gateway::proto::parley_client::ParleyClient;
use parley_gateway::AUTHORIZATION_HEADER;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Deadline of one unary call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A client whose calls carry the device token.
pub type AuthedClient = ParleyClient<InterceptedService<Channel, BearerToken>>;

/// A lazily connected channel to one gateway.
#[derive(Clone)]
pub struct Gateway {
    address: String,
    channel: Channel,
}

impl Gateway {
    /// Creates a channel to `address` (IP:PORT, or a URL with http://); it
    /// connects on the first call.
    pub fn new(address: &str) -> Result<Gateway> {
        let url = if address.contains("://") {
            address.to_string()
        } else {
            format!("http://{address}")
        };
        let endpoint = Endpoint::from_shared(url).with_context(|| {
            format!(
                "--gateway {address:?} is invalid; write it as IP:PORT, for example 127.0.0.1:7100"
            )
        })?;
        let channel = endpoint
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        Ok(Gateway {
            address: address.to_string(),
            channel,
        })
    }

    /// Returns a client without a token, for Register.
    pub fn anonymous(&self) -> ParleyClient<Channel> {
        ParleyClient::new(self.channel.clone())
    }

    /// Returns a client that sends `token` on every call.
    pub fn authed(&self, token: &str) -> Result<AuthedClient> {
        let value: MetadataValue<Ascii> = format!("Bearer {token}").parse().context(
            "the profile's token is not printable ASCII; register the device again to get a new one",
        )?;
        Ok(ParleyClient::with_interceptor(
            self.channel.clone(),
            BearerToken(value),
        ))
    }

    /// Converts a failed call's status into an error that prints as
    /// `CODE: message` plus what to do about it.
    pub fn error(&self, status: Status) -> anyhow::Error {
        let hint = match status.code() {
            Code::Unavailable => Some(format!(
                "is a gateway listening on {}? start one with `parley dev` or pass --gateway",
                self.address
            )),
            Code::Unauthenticated => Some(
                "the profile's token was rejected; register the device again, or use the \
                 gateway whose token key issued it"
                    .to_string(),
            ),
            _ => None,
        };
        RpcError { status, hint }.into()
    }
}

/// Adds `authorization: Bearer <token>` to every request.
#[derive(Clone)]
pub struct BearerToken(MetadataValue<Ascii>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        request
            .metadata_mut()
            .insert(AUTHORIZATION_HEADER, self.0.clone());
        Ok(request)
    }
}

/// A call the gateway (or the transport) failed.
#[derive(Debug)]
pub struct RpcError {
    pub status: Status,
    pub hint: Option<String>,
}

impl fmt::Display for RpcError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{}: {}",
            code_name(self.status.code()),
            self.status.message()
        )?;
        if let Some(hint) = &self.hint {
            write!(formatter, " ({hint})")?;
        }
        Ok(())
    }
}

impl std::error::Error for RpcError {}

/// Returns whether a failed Send may be retried with the same client
/// message id: the gateway had no leader or the call ran out of time.
pub fn is_retryable(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
}

/// Returns a request with the unary call deadline set.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// Returns the canonical upper-case name of a gRPC status code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpc_error_prints_code_then_message() {
        let error = RpcError {
            status: Status::permission_denied("alice is not a member of g1"),
            hint: None,
        };
        assert_eq!(
            error.to_string(),
            "PERMISSION_DENIED: alice is not a member of g1"
        );
    }

    #[tokio::test]
    async fn unavailable_error_names_gateway_address() {
        let gateway = Gateway::new("127.0.0.1:7199").unwrap();
        let error = gateway.error(Status::unavailable("connection refused"));
        let text = error.to_string();
        assert!(
            text.starts_with("UNAVAILABLE: connection refused"),
            "{text}"
        );
        assert!(text.contains("127.0.0.1:7199"), "{text}");
    }

    #[test]
    fn send_retries_only_transient_codes() {
        assert!(is_retryable(&Status::unavailable("electing")));
        assert!(is_retryable(&Status::deadline_exceeded("slow")));
        assert!(!is_retryable(&Status::permission_denied("no")));
        assert!(!is_retryable(&Status::invalid_argument("bad id")));
    }

    #[tokio::test]
    async fn invalid_gateway_address_is_rejected() {
        let error = Gateway::new("not an address").err().unwrap().to_string();
        assert!(error.contains("IP:PORT"), "{error}");
    }
}
