//! Client side of the Parley gateway API for the scenarios: a pool of
//! HTTP/2 connections, device registration in bulk, groups, sends with the
//! device token, and device sessions read up to their ready event.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use tokio::sync::mpsc;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::proto::parley::v1::parley_client::ParleyClient;
use crate::proto::parley::v1::server_event::Event;
use crate::proto::parley::v1::{
    client_event, AddMembersRequest, ClientEvent, CreateGroupRequest, Cursor, RegisterRequest,
    SendReply, SendRequest, ServerEvent, SessionOpen,
};

/// Deadline of one setup call (register, create group, add members).
const SETUP_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Attempts of one setup call while the cluster reports UNAVAILABLE.
const SETUP_ATTEMPTS_MAX: usize = 20;

/// Deadline of one Send in the load scenarios.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Client events a session can queue before the sender waits.
const SESSION_OUTBOUND_EVENTS_MAX: usize = 64;

/// A registered device and its `authorization` header value.
#[derive(Clone, Debug)]
pub struct Device {
    pub user_id: String,
    pub device_id: String,
    pub authorization: MetadataValue<Ascii>,
}

/// A fixed set of HTTP/2 connections to one gateway; callers pick one by
/// index, so many logical clients share few connections.
#[derive(Clone)]
pub struct Pool {
    clients: Vec<ParleyClient<Channel>>,
}

impl Pool {
    /// Opens `connections` connections to `gateway` (IP:PORT). With
    /// `source_addresses`, connection i binds source address i modulo their
    /// count, which multiplies the loopback ephemeral ports available.
    pub async fn connect(
        gateway: &str,
        connections: usize,
        source_addresses: &[IpAddr],
    ) -> Result<Pool> {
        let mut clients = Vec::with_capacity(connections);
        for index in 0..connections {
            let source = (!source_addresses.is_empty())
                .then(|| source_addresses[index % source_addresses.len()]);
            let endpoint = Endpoint::from_shared(format!("http://{gateway}"))?
                .connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .local_address(source);
            let channel = endpoint.connect().await.with_context(|| {
                format!("failed to connect to the gateway at {gateway} (connection {index})")
            })?;
            clients.push(ParleyClient::new(channel));
        }
        Ok(Pool { clients })
    }

    pub fn client(&self, index: usize) -> ParleyClient<Channel> {
        self.clients[index % self.clients.len()].clone()
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// Wraps `message` with the device's token and a deadline.
pub fn authorized<T>(message: T, device: &Device, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", device.authorization.clone());
    request.set_timeout(timeout);
    request
}

fn is_retryable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
    )
}

/// Runs a setup call, retrying while the cluster is unavailable.
async fn with_retries<T, F, Fut>(call_name: &str, mut call: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(status) if is_retryable(&status) && attempt < SETUP_ATTEMPTS_MAX => {
                tracing::debug!(call_name, %status, attempt, "retrying a setup call");
                tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
            }
            Err(status) => bail!("{call_name} failed after {attempt} attempts: {status}"),
        }
    }
}

/// Registers user `user_id` with device `device_id`.
pub async fn register(client: &ParleyClient<Channel>, user_id: &str) -> Result<Device> {
    let device_id = format!("{user_id}-d");
    let reply = with_retries(&format!("Register {user_id}"), || {
        let mut client = client.clone();
        let mut request = tonic::Request::new(RegisterRequest {
            user_id: user_id.to_string(),
            device_id: device_id.clone(),
        });
        request.set_timeout(SETUP_CALL_TIMEOUT);
        async move { client.register(request).await }
    })
    .await?;
    let authorization = format!("Bearer {}", reply.token)
        .parse()
        .context("the gateway returned a token that is not ASCII")?;
    Ok(Device {
        user_id: reply.user_id,
        device_id: reply.device_id,
        authorization,
    })
}

/// Registers users `{prefix}{first}` to `{prefix}{first + count - 1}` with
/// `concurrency` calls in flight, in order, advancing `bar` per user.
pub async fn register_many(
    pool: &Pool,
    prefix: &str,
    range: std::ops::Range<usize>,
    concurrency: usize,
    bar: &indicatif::ProgressBar,
) -> Result<Vec<Device>> {
    futures::stream::iter(range)
        .map(|index| {
            let client = pool.client(index);
            let user_id = format!("{prefix}{index}");
            async move {
                let device = register(&client, &user_id).await;
                bar.inc(1);
                device
            }
        })
        .buffered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Creates group `conversation_id` with `creator` and `members`.
pub async fn create_group(
    client: &ParleyClient<Channel>,
    creator: &Device,
    conversation_id: &str,
    members: &[String],
) -> Result<()> {
    with_retries(&format!("CreateGroup {conversation_id}"), || {
        let mut client = client.clone();
        let request = CreateGroupRequest {
            conversation_id: conversation_id.to_string(),
            members: members.to_vec(),
        };
        let request = authorized(request, creator, SETUP_CALL_TIMEOUT);
        async move { client.create_group(request).await }
    })
    .await?;
    Ok(())
}

/// Adds `user_ids` to group `conversation_id` as `actor`.
pub async fn add_members(
    client: &ParleyClient<Channel>,
    actor: &Device,
    conversation_id: &str,
    user_ids: &[String],
) -> Result<()> {
    with_retries(&format!("AddMembers {conversation_id}"), || {
        let mut client = client.clone();
        let request = AddMembersRequest {
            conversation_id: conversation_id.to_string(),
            user_ids: user_ids.to_vec(),
        };
        let request = authorized(request, actor, SETUP_CALL_TIMEOUT);
        async move { client.add_members(request).await }
    })
    .await?;
    Ok(())
}

/// Sends one message; no retry.
pub async fn send(
    mut client: ParleyClient<Channel>,
    device: &Device,
    conversation_id: &str,
    client_message_id: String,
    body: Vec<u8>,
) -> Result<SendReply, tonic::Status> {
    let request = SendRequest {
        conversation_id: conversation_id.to_string(),
        client_message_id,
        body,
    };
    let reply = client
        .send(authorized(request, device, SEND_TIMEOUT))
        .await?;
    Ok(reply.into_inner())
}

/// One open Session call: the client events to send and the server events.
pub struct Session {
    pub outbound: mpsc::Sender<ClientEvent>,
    pub inbound: tonic::Streaming<ServerEvent>,
}

impl Session {
    /// Opens a session for `device` with `cursors` and reads events until
    /// the ready event, within `timeout`.
    pub async fn open(
        mut client: ParleyClient<Channel>,
        device: &Device,
        cursors: Vec<Cursor>,
        timeout: Duration,
    ) -> Result<Session> {
        let (outbound, receiver) = mpsc::channel(SESSION_OUTBOUND_EVENTS_MAX);
        let open = ClientEvent {
            event: Some(client_event::Event::Open(SessionOpen { cursors })),
        };
        outbound
            .send(open)
            .await
            .context("the session's outbound queue closed before the open event")?;
        let events = tokio_stream_from(receiver);
        let opening = async {
            let mut request = tonic::Request::new(events);
            request
                .metadata_mut()
                .insert("authorization", device.authorization.clone());
            let mut inbound = client.session(request).await?.into_inner();
            loop {
                match inbound.message().await? {
                    Some(ServerEvent {
                        event: Some(Event::Ready(_)),
                    }) => return Ok(inbound),
                    Some(_) => {}
                    None => {
                        return Err(tonic::Status::unavailable(
                            "the session ended before its ready event",
                        ))
                    }
                }
            }
        };
        let inbound = tokio::time::timeout(timeout, opening)
            .await
            .with_context(|| {
                format!(
                    "session of {} not ready within {timeout:?}",
                    device.device_id
                )
            })?
            .with_context(|| format!("failed to open the session of {}", device.device_id))?;
        Ok(Session { outbound, inbound })
    }

    /// Queues one client event.
    pub async fn send_event(&self, event: client_event::Event) -> Result<()> {
        self.outbound
            .send(ClientEvent { event: Some(event) })
            .await
            .context("the session call has ended")
    }
}

fn tokio_stream_from(
    receiver: mpsc::Receiver<ClientEvent>,
) -> impl futures::Stream<Item = ClientEvent> + Send + 'static {
    futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (event, receiver))
    })
}
