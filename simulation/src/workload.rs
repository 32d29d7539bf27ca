//! The simulated clients: users with one or two devices that register,
//! open direct and group conversations, send with retries (including after
//! ambiguous timeouts), mark messages read, and drop and reopen their
//! sessions from their cursors. Every request, response and delivery goes
//! into the run's history.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use madsim::rand::{thread_rng, Rng};
use parley_core::history::{
    DeliveredToDevice, DeviceCursorReset, Event, History, ReceiptAcked,
    ReceiptKind as HistoryReceiptKind, ReceiptObserved, SendAcked, SendFailed, SendInvoked,
};
use parley_gateway::proto::parley_client::ParleyClient;
use parley_gateway::proto::server_event::Event as ServerEventKind;
use parley_gateway::proto::{
    client_event, AddMembersRequest, ClientEvent, CreateDirectRequest, CreateGroupRequest, Cursor,
    DeliveredAck, LinkDeviceRequest, MarkReadRequest, ReceiptKind, RegisterRequest,
    RemoveMemberRequest, SendRequest, SessionOpen,
};
use parley_shards::client::is_transient;
use tonic::transport::Channel;

/// Deadline of one client call; madsim's gRPC retries across partitions
/// for up to 10 s otherwise.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a send keeps retrying before it is recorded as ambiguous.
const SEND_DEADLINE: Duration = Duration::from_secs(30);

/// The shared history of one run, stamped with simulated milliseconds.
#[derive(Clone)]
pub struct Recorder {
    history: Arc<Mutex<History>>,
    started: tokio::time::Instant,
}

impl Recorder {
    pub fn new() -> Self {
        Recorder {
            history: Arc::new(Mutex::new(History::default())),
            started: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn record(&self, event: impl Into<Event>) {
        self.history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(event);
    }

    pub fn snapshot(&self) -> History {
        self.history
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

/// One registered device and its token.
#[derive(Clone, Debug)]
pub struct Device {
    pub user_id: String,
    pub device_id: String,
    pub token: String,
}

/// The users, devices and conversations a run works with.
#[derive(Clone, Debug, Default)]
pub struct Population {
    pub devices: Vec<Device>,
    /// Conversation id to its members.
    pub conversations: BTreeMap<String, Vec<String>>,
}

impl Population {
    pub fn conversations_of(&self, user: &str) -> Vec<String> {
        self.conversations
            .iter()
            .filter(|(_, members)| members.iter().any(|member| member == user))
            .map(|(id, _)| id.clone())
            .collect()
    }
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request
            .metadata_mut()
            .insert(parley_gateway::AUTHORIZATION_HEADER, value);
    }
    request
}

pub async fn connect(address: &str) -> ParleyClient<Channel> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .expect("simulated gateway address is valid");
    ParleyClient::new(endpoint.connect_lazy())
}

/// Calls `call` until it succeeds or fails permanently.
async fn retry<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let started = tokio::time::Instant::now();
    loop {
        let status = match tokio::time::timeout(CALL_TIMEOUT, call()).await {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) if !is_transient(&status) => return Err(status),
            Ok(Err(status)) => status,
            Err(_) => tonic::Status::deadline_exceeded("client call timed out"),
        };
        if started.elapsed() > SEND_DEADLINE {
            return Err(status);
        }
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(50..300))).await;
    }
}

/// Registers `users` users (the first two with a second device), a chain
/// of direct conversations and one group with everyone.
pub async fn populate(
    client: &ParleyClient<Channel>,
    users: usize,
) -> Result<Population, tonic::Status> {
    let mut population = Population::default();
    let mut first_tokens = Vec::new();
    for index in 0..users {
        let user_id = format!("user{index}");
        let request = RegisterRequest {
            user_id: user_id.clone(),
            device_id: "phone".into(),
        };
        let reply = retry(|| {
            let (mut client, request) = (client.clone(), request.clone());
            async move { client.register(request).await }
        })
        .await;
        // A retried Register may find the user created by its first try.
        let reply = match reply {
            Err(status) if status.code() == tonic::Code::AlreadyExists => continue,
            other => other?,
        };
        first_tokens.push(reply.token.clone());
        population.devices.push(Device {
            user_id: user_id.clone(),
            device_id: "phone".into(),
            token: reply.token.clone(),
        });
        if index < 2 {
            let link = LinkDeviceRequest {
                device_id: "desktop".into(),
            };
            let linked = retry(|| {
                let (mut client, link, token) = (client.clone(), link.clone(), reply.token.clone());
                async move { client.link_device(with_token(link, &token)).await }
            })
            .await?;
            population.devices.push(Device {
                user_id,
                device_id: "desktop".into(),
                token: linked.token,
            });
        }
    }
    let users: Vec<String> = population
        .devices
        .iter()
        .map(|device| device.user_id.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for pair in users.windows(2) {
        let token = token_of(&population, &pair[0]);
        let request = CreateDirectRequest {
            peer_user_id: pair[1].clone(),
        };
        let conversation = retry(|| {
            let (mut client, request, token) = (client.clone(), request.clone(), token.clone());
            async move { client.create_direct(with_token(request, &token)).await }
        })
        .await?;
        population
            .conversations
            .insert(conversation.conversation_id, pair.to_vec());
    }
    let token = token_of(&population, &users[0]);
    let request = CreateGroupRequest {
        conversation_id: "group0".into(),
        members: users[1..].to_vec(),
    };
    match retry(|| {
        let (mut client, request, token) = (client.clone(), request.clone(), token.clone());
        async move { client.create_group(with_token(request, &token)).await }
    })
    .await
    {
        Ok(_) => {}
        Err(status) if status.code() == tonic::Code::AlreadyExists => {}
        Err(status) => return Err(status),
    }
    population
        .conversations
        .insert("group0".into(), users.clone());
    register_churn_user(client).await?;
    Ok(population)
}

/// The user that `run_member_churn` adds to and removes from the group. It
/// has no session, so its comings and goings change no delivery a
/// liveness check expects.
pub const CHURN_USER: &str = "churn0";

async fn register_churn_user(client: &ParleyClient<Channel>) -> Result<(), tonic::Status> {
    let request = RegisterRequest {
        user_id: CHURN_USER.into(),
        device_id: "phone".into(),
    };
    let reply = retry(|| {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.register(request).await }
    })
    .await;
    match reply {
        Ok(_) => Ok(()),
        Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(status) => Err(status),
    }
}

/// Adds `CHURN_USER` to `group0` and removes it again, `rounds` times, as
/// the group's owner: membership changes racing with sends and faults.
pub async fn run_member_churn(client: ParleyClient<Channel>, owner: Device, rounds: usize) {
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(300..2_000))).await;
        let add = AddMembersRequest {
            conversation_id: "group0".into(),
            user_ids: vec![CHURN_USER.into()],
        };
        let _ = retry(|| {
            let (mut client, add, token) = (client.clone(), add.clone(), owner.token.clone());
            async move { client.add_members(with_token(add, &token)).await }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(300..2_000))).await;
        let remove = RemoveMemberRequest {
            conversation_id: "group0".into(),
            user_id: CHURN_USER.into(),
        };
        let _ = retry(|| {
            let (mut client, remove, token) = (client.clone(), remove.clone(), owner.token.clone());
            async move { client.remove_member(with_token(remove, &token)).await }
        })
        .await;
    }
}

fn token_of(population: &Population, user: &str) -> String {
    population
        .devices
        .iter()
        .find(|device| device.user_id == user)
        .map(|device| device.token.clone())
        .unwrap_or_default()
}

/// Per device and conversation, the last seq the device has.
pub type Cursors = Arc<Mutex<BTreeMap<(String, String), u64>>>;

/// Sends `sends` messages from `device`, retrying each with the same
/// client message id, and now and then marks a conversation read.
pub async fn run_sender(
    client: ParleyClient<Channel>,
    device: Device,
    conversations: Vec<String>,
    sends: usize,
    recorder: Recorder,
    operations: Arc<AtomicU64>,
    cursors: Cursors,
) {
    for index in 0..sends {
        let conversation_id = conversations[thread_rng().gen_range(0..conversations.len())].clone();
        let op = operations.fetch_add(1, Ordering::Relaxed);
        let client_message_id = format!("{}-{}-{index}", device.user_id, device.device_id);
        recorder.record(SendInvoked {
            op,
            conversation_id: conversation_id.clone(),
            sender_user: device.user_id.clone(),
            sender_device: device.device_id.clone(),
            client_message_id: client_message_id.clone(),
            at_ms: recorder.now_ms(),
        });
        let request = SendRequest {
            conversation_id: conversation_id.clone(),
            client_message_id: client_message_id.clone(),
            body: format!("message {index} from {}", device.device_id).into_bytes(),
        };
        match retry(|| {
            let (mut client, request, token) =
                (client.clone(), request.clone(), device.token.clone());
            async move { client.send(with_token(request, &token)).await }
        })
        .await
        {
            Ok(reply) => recorder.record(SendAcked {
                op,
                conversation_id: conversation_id.clone(),
                client_message_id,
                seq: reply.seq,
                server_time_ms: reply.server_time_ms,
                duplicate: reply.duplicate,
                at_ms: recorder.now_ms(),
            }),
            Err(status) => recorder.record(SendFailed {
                op,
                ambiguous: is_transient(&status),
                at_ms: recorder.now_ms(),
            }),
        }
        if thread_rng().gen_bool(0.2) {
            mark_read(&client, &device, &conversation_id, &recorder, &cursors).await;
        }
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(10..400))).await;
    }
}

async fn mark_read(
    client: &ParleyClient<Channel>,
    device: &Device,
    conversation_id: &str,
    recorder: &Recorder,
    cursors: &Cursors,
) {
    let seq = cursors
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .get(&(device_key(device), conversation_id.to_string()))
        .copied()
        .unwrap_or(0);
    if seq == 0 {
        return;
    }
    // A third of the marks are stale, as from a device that lags behind
    // its user's other devices: the watermark must not move back.
    let seq = if thread_rng().gen_bool(0.33) {
        thread_rng().gen_range(1..=seq)
    } else {
        seq
    };
    let request = MarkReadRequest {
        conversation_id: conversation_id.to_string(),
        seq,
    };
    if let Ok(reply) = retry(|| {
        let (mut client, request, token) = (client.clone(), request.clone(), device.token.clone());
        async move { client.mark_read(with_token(request, &token)).await }
    })
    .await
    {
        recorder.record(ReceiptAcked {
            conversation_id: conversation_id.to_string(),
            kind: HistoryReceiptKind::Read,
            user_id: device.user_id.clone(),
            device_id: device.device_id.clone(),
            watermark: reply.read_seq,
            at_ms: recorder.now_ms(),
        });
    }
}

pub fn device_key(device: &Device) -> String {
    format!("{}/{}", device.user_id, device.device_id)
}

/// Keeps a session of `device` open until `stop`, dropping and reopening
/// it now and then from its cursors.
pub async fn run_session(
    client: ParleyClient<Channel>,
    device: Device,
    conversations: Vec<String>,
    recorder: Recorder,
    cursors: Cursors,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let lifetime = Duration::from_millis(thread_rng().gen_range(2_000..15_000));
        session_once(
            &client,
            &device,
            &conversations,
            &recorder,
            &cursors,
            lifetime,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(thread_rng().gen_range(100..1_500))).await;
    }
}

async fn session_once(
    client: &ParleyClient<Channel>,
    device: &Device,
    conversations: &[String],
    recorder: &Recorder,
    cursors: &Cursors,
    lifetime: Duration,
) {
    let key = device_key(device);
    let opened: Vec<Cursor> = {
        let cursors = cursors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        conversations
            .iter()
            .map(|conversation_id| Cursor {
                conversation_id: conversation_id.clone(),
                seq: cursors
                    .get(&(key.clone(), conversation_id.clone()))
                    .copied()
                    .unwrap_or(0),
            })
            .collect()
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let open = ClientEvent {
        event: Some(client_event::Event::Open(SessionOpen {
            cursors: opened.clone(),
        })),
    };
    if sender.send(open).await.is_err() {
        return;
    }
    let outbound = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (event, receiver))
    });
    let response = tokio::time::timeout(
        CALL_TIMEOUT,
        client.clone().session(with_token(outbound, &device.token)),
    )
    .await;
    let Ok(Ok(response)) = response else {
        return;
    };
    let mut events = response.into_inner();
    for cursor in &opened {
        recorder.record(DeviceCursorReset {
            user_id: device.user_id.clone(),
            device_id: device.device_id.clone(),
            conversation_id: cursor.conversation_id.clone(),
            seq: cursor.seq,
            at_ms: recorder.now_ms(),
        });
    }

    let deadline = tokio::time::Instant::now() + lifetime;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(message) = tokio::time::timeout(remaining, events.message()).await else {
            return;
        };
        let Ok(Some(event)) = message else {
            return;
        };
        match event.event {
            Some(ServerEventKind::Message(message)) => {
                let cursor_key = (key.clone(), message.conversation_id.clone());
                let cursor = {
                    let mut cursors = cursors
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    let cursor = cursors.entry(cursor_key.clone()).or_insert(0);
                    let previous = *cursor;
                    // The application drops what it already has.
                    if message.seq > previous {
                        *cursor = message.seq;
                    }
                    previous
                };
                if message.seq <= cursor {
                    continue;
                }
                recorder.record(DeliveredToDevice {
                    user_id: device.user_id.clone(),
                    device_id: device.device_id.clone(),
                    conversation_id: message.conversation_id.clone(),
                    seq: message.seq,
                    sender_user: message.sender_user_id.clone(),
                    sender_device: message.sender_device_id.clone(),
                    client_message_id: message.client_message_id.clone(),
                    server_time_ms: message.server_time_ms,
                    at_ms: recorder.now_ms(),
                });
                let ack = ClientEvent {
                    event: Some(client_event::Event::Delivered(DeliveredAck {
                        conversation_id: message.conversation_id,
                        seq: message.seq,
                    })),
                };
                let _ = sender.try_send(ack);
            }
            Some(ServerEventKind::Receipt(receipt)) => {
                let kind = if receipt.kind == ReceiptKind::Read as i32 {
                    HistoryReceiptKind::Read
                } else {
                    HistoryReceiptKind::Delivered
                };
                recorder.record(ReceiptObserved {
                    observer_user: device.user_id.clone(),
                    observer_device: device.device_id.clone(),
                    conversation_id: receipt.conversation_id,
                    kind,
                    subject_user: receipt.user_id,
                    subject_device: receipt.device_id,
                    seq: receipt.seq,
                    at_ms: recorder.now_ms(),
                });
            }
            _ => {}
        }
    }
}
