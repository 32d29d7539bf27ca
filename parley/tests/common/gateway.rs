//! Gateway helpers for the end-to-end tests: a gateway as a `parley
//! gateway` child process or inside the test's runtime, client calls with a
//! device token, and device sessions that check what they receive.
//!
//! `DeviceSession` applies the client rule of the API: a message at or
//! below the conversation's cursor is a repeat and is dropped, and any other
//! message must be exactly cursor + 1, or the session panics with the gap.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use parley_gateway::proto::parley_client::ParleyClient;
use parley_gateway::proto::server_event::Event;
use parley_gateway::proto::{
    client_event, ClientEvent, Cursor, DeliveredAck, LinkDeviceRequest, Message, RegisterReply,
    RegisterRequest, SendReply, SendRequest, ServerEvent, SessionOpen, TypingUpdate,
};
use parley_gateway::{GatewayConfig, GatewayError};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::ProcessCluster;

/// Token signing key shared by every gateway of a test cluster.
pub const TOKEN_SECRET: &[u8] = b"parley-test-token-key-0123456789";

/// Deadline of one client call. `send_until_acked` retries a call that
/// exceeds it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// Returns a free loopback address. The probe listener is closed before
/// the gateway binds, as in `ProcessCluster`.
pub fn free_address() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("bound listener has an address")
        .to_string()
}

/// A `parley gateway` child process that can be stopped and restarted on
/// the same address.
pub struct GatewayProcess {
    pub address: String,
    nodes: Vec<String>,
    key_path: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

impl GatewayProcess {
    /// Starts a gateway in front of `cluster` on a free address.
    pub fn start(cluster: &ProcessCluster) -> GatewayProcess {
        let key_path = cluster.root.path().join("token.key");
        std::fs::write(&key_path, TOKEN_SECRET).expect("write the token key file");
        let mut gateway = GatewayProcess {
            address: free_address(),
            nodes: cluster.addresses.clone(),
            key_path,
            log_path: cluster.root.path().join("gateway.log"),
            child: None,
        };
        gateway.spawn();
        gateway
    }

    /// Starts the process again on the same address.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the gateway is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("gateway log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_parley"));
        command
            .arg("gateway")
            .arg("--listen")
            .arg(&self.address)
            .arg("--token-secret-file")
            .arg(&self.key_path);
        for node in &self.nodes {
            command.arg("--node").arg(node);
        }
        let child = command
            // The hub logs each event a full session queue drops at debug.
            .env("RUST_LOG", "info,parley_gateway::hub=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn parley gateway");
        self.child = Some(child);
    }

    pub fn log_path(&self) -> &PathBuf {
        &self.log_path
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the gateway is running").id()
    }

    /// Returns the resident set size of the process in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status of the gateway");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("/proc/PID/status has a VmRSS line in kB")
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit.
    /// Returns `None` (after a SIGKILL) when it did not exit in time.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Sends SIGKILL and waits for the process to die.
    pub fn kill_nine(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill_nine();
    }
}

/// A gateway served by `parley_gateway::serve` on the test's runtime until
/// it is dropped or the runtime ends.
pub struct InProcessGateway {
    pub address: String,
    task: tokio::task::JoinHandle<Result<(), GatewayError>>,
}

impl InProcessGateway {
    /// Serves `config`, whose `listen` address must be free.
    pub fn start(config: GatewayConfig) -> InProcessGateway {
        let address = config.listen.clone();
        let task = tokio::spawn(parley_gateway::serve(config, std::future::pending()));
        InProcessGateway { address, task }
    }
}

impl Drop for InProcessGateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Returns a gateway configuration for `cluster` on a free address.
pub fn gateway_config(cluster: &ProcessCluster) -> GatewayConfig {
    GatewayConfig::new(
        free_address(),
        cluster.addresses.clone(),
        TOKEN_SECRET.to_vec(),
    )
}

/// Connects to the gateway at `address`, retrying for up to 30 s while it
/// starts. Each call opens its own HTTP/2 connection.
pub async fn connect(address: &str) -> ParleyClient<Channel> {
    for _ in 0..300 {
        if let Ok(client) = ParleyClient::connect(format!("http://{address}")).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the gateway at {address} did not accept connections within 30 s");
}

/// Wraps `message` in a request with `authorization: Bearer <token>` and
/// the client call deadline.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("token is ASCII");
    request.metadata_mut().insert("authorization", value);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// Returns whether a failed call may succeed if retried unchanged: the
/// cluster is electing a leader, or the gateway is unreachable or went
/// away mid-call.
///
/// A call that races the GOAWAY (reason NO_ERROR) of a gateway shutting
/// down fails in the client's transport, and tonic 0.14 reports that as
/// INTERNAL with an "h2 protocol error" message (`Status::code_from_h2`).
/// The gateway never saw the call, so that status counts as transient too.
pub fn is_transient(status: &tonic::Status) -> bool {
    let transport_error =
        status.code() == tonic::Code::Internal && status.message().starts_with("h2 protocol error");
    transport_error
        || matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Cancelled
        )
}

/// A registered device and its token.
#[derive(Clone, Debug)]
pub struct Device {
    pub user_id: String,
    pub device_id: String,
    pub token: String,
}

impl From<RegisterReply> for Device {
    fn from(reply: RegisterReply) -> Device {
        Device {
            user_id: reply.user_id,
            device_id: reply.device_id,
            token: reply.token,
        }
    }
}

pub async fn register(
    client: &mut ParleyClient<Channel>,
    user_id: &str,
    device_id: &str,
) -> Device {
    let request = RegisterRequest {
        user_id: user_id.into(),
        device_id: device_id.into(),
    };
    client
        .register(request)
        .await
        .unwrap_or_else(|status| panic!("register {user_id}/{device_id}: {status}"))
        .into_inner()
        .into()
}

pub async fn link_device(
    client: &mut ParleyClient<Channel>,
    existing: &Device,
    device_id: &str,
) -> Device {
    let request = LinkDeviceRequest {
        device_id: device_id.into(),
    };
    client
        .link_device(with_token(request, &existing.token))
        .await
        .unwrap_or_else(|status| panic!("link {}/{device_id}: {status}", existing.user_id))
        .into_inner()
        .into()
}

/// Sends one message with a body of at least `body_bytes` and retries it
/// with the same client message id on every transient failure for up to
/// `deadline`. Returns the reply and the number of retries.
pub async fn send_until_acked(
    client: &mut ParleyClient<Channel>,
    sender: &Device,
    conversation_id: &str,
    client_message_id: &str,
    body_bytes: usize,
    deadline: Duration,
) -> (SendReply, usize) {
    let started = tokio::time::Instant::now();
    let mut retries = 0;
    loop {
        let request = SendRequest {
            conversation_id: conversation_id.into(),
            client_message_id: client_message_id.into(),
            body: body_of(client_message_id, body_bytes),
        };
        match client.send(with_token(request, &sender.token)).await {
            Ok(reply) => return (reply.into_inner(), retries),
            Err(status) if is_transient(&status) && started.elapsed() < deadline => {
                eprintln!("send {client_message_id} failed ({status}); retrying");
                retries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!(
                "send {client_message_id} to {conversation_id} failed after {retries} retries \
                 and {:?}: {status}",
                started.elapsed()
            ),
        }
    }
}

/// Returns the body the helpers send for a client message id: the id,
/// then `.` padding up to `body_bytes`. A receiver checks it with
/// `is_body_of`.
pub fn body_of(client_message_id: &str, body_bytes: usize) -> Vec<u8> {
    let mut body = format!("body of {client_message_id}|").into_bytes();
    if body.len() < body_bytes {
        body.resize(body_bytes, b'.');
    }
    body
}

/// Returns whether `body` is a body `body_of` made for `client_message_id`.
pub fn is_body_of(body: &[u8], client_message_id: &str) -> bool {
    let prefix = format!("body of {client_message_id}|");
    body.strip_prefix(prefix.as_bytes())
        .is_some_and(|padding| padding.iter().all(|byte| *byte == b'.'))
}

fn log_session_end(name: &str, status: &tonic::Status) {
    eprintln!("{name}: session ended ({status}); reopening with its cursors");
}

fn client_event(event: client_event::Event) -> ClientEvent {
    ClientEvent { event: Some(event) }
}

/// The two halves of one open Session call.
pub struct SessionStreams {
    pub outbound: mpsc::Sender<ClientEvent>,
    pub inbound: tonic::Streaming<ServerEvent>,
}

/// Opens a Session call with `first` as its first client event.
pub async fn open_session_with(
    client: &mut ParleyClient<Channel>,
    token: Option<&str>,
    first: ClientEvent,
) -> Result<SessionStreams, tonic::Status> {
    let (outbound, receiver) = mpsc::channel(64);
    outbound
        .send(first)
        .await
        .expect("the receiver is still here");
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (event, receiver))
    });
    let request = match token {
        Some(token) => with_token(stream, token),
        None => tonic::Request::new(stream),
    };
    let inbound = client.session(request).await?.into_inner();
    Ok(SessionStreams { outbound, inbound })
}

/// One device's view of its sessions: the cursors, every message it
/// accepted, and every other event, kept across reconnects.
pub struct DeviceSession {
    pub name: String,
    pub device: Device,
    client: ParleyClient<Channel>,
    streams: Option<SessionStreams>,
    /// Last accepted seq per conversation.
    pub cursors: BTreeMap<String, u64>,
    /// Accepted messages per conversation, in seq order.
    pub messages: BTreeMap<String, Vec<Message>>,
    /// Messages at or below the cursor that the client dropped.
    pub repeats_dropped: usize,
    /// Every event other than a message, in arrival order.
    pub events: Vec<Event>,
    /// Number of sessions opened so far.
    pub opens: usize,
}

impl DeviceSession {
    /// Opens a session for `device` on its own connection to `address`.
    pub async fn open(name: &str, address: &str, device: &Device) -> DeviceSession {
        let mut session = DeviceSession {
            name: name.into(),
            device: device.clone(),
            client: connect(address).await,
            streams: None,
            cursors: BTreeMap::new(),
            messages: BTreeMap::new(),
            repeats_dropped: 0,
            events: Vec::new(),
            opens: 0,
        };
        session.reopen().await;
        session
    }

    /// Opens a new session with the current cursors and reads up to its
    /// ready event. The catch-up messages before it are checked like live
    /// ones.
    pub async fn reopen(&mut self) {
        self.try_reopen(CALL_TIMEOUT)
            .await
            .unwrap_or_else(|status| panic!("{}: open session: {status}", self.name));
    }

    /// Like `reopen`, but retries transient failures for up to `deadline`
    /// (for a gateway that is restarting).
    pub async fn try_reopen(&mut self, deadline: Duration) -> Result<(), tonic::Status> {
        self.streams = None;
        let started = tokio::time::Instant::now();
        loop {
            let cursors = self
                .cursors
                .iter()
                .map(|(conversation_id, seq)| Cursor {
                    conversation_id: conversation_id.clone(),
                    seq: *seq,
                })
                .collect();
            let open = client_event(client_event::Event::Open(SessionOpen { cursors }));
            let opened = open_session_with(&mut self.client, Some(&self.device.token), open).await;
            let result = match opened {
                Ok(streams) => {
                    self.streams = Some(streams);
                    self.opens += 1;
                    self.read_until_ready().await
                }
                Err(status) => Err(status),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(status) if is_transient(&status) && started.elapsed() < deadline => {
                    eprintln!(
                        "{}: opening a session failed ({status}); retrying",
                        self.name
                    );
                    self.streams = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => return Err(status),
            }
        }
    }

    async fn read_until_ready(&mut self) -> Result<(), tonic::Status> {
        loop {
            let event = self
                .next_event(CALL_TIMEOUT)
                .await?
                .ok_or_else(|| tonic::Status::deadline_exceeded("no ready event"))?;
            if let Event::Ready(ready) = event {
                for cursor in &ready.conversations {
                    let seq = self.cursor(&cursor.conversation_id);
                    assert_eq!(
                        cursor.seq, seq,
                        "{}: ready reports cursor {} for {} but the device accepted up to {seq}",
                        self.name, cursor.seq, cursor.conversation_id
                    );
                    self.cursors.insert(cursor.conversation_id.clone(), seq);
                }
                return Ok(());
            }
        }
    }

    /// Ends the session from the client side, as a device going offline.
    pub fn close(&mut self) {
        self.streams = None;
    }

    pub fn cursor(&self, conversation_id: &str) -> u64 {
        self.cursors.get(conversation_id).copied().unwrap_or(0)
    }

    /// Returns the accepted messages of a conversation.
    pub fn messages_of(&self, conversation_id: &str) -> &[Message] {
        self.messages
            .get(conversation_id)
            .map_or(&[], Vec::as_slice)
    }

    fn accept(&mut self, message: Message) {
        let cursor = self.cursor(&message.conversation_id);
        if message.seq <= cursor {
            self.repeats_dropped += 1;
            return;
        }
        assert_eq!(
            message.seq,
            cursor + 1,
            "{}: gap in {}: received seq {} after seq {cursor}",
            self.name,
            message.conversation_id,
            message.seq
        );
        assert!(
            is_body_of(&message.body, &message.client_message_id),
            "{}: seq {} of {} has a body that does not match its client message id {}",
            self.name,
            message.seq,
            message.conversation_id,
            message.client_message_id
        );
        self.cursors
            .insert(message.conversation_id.clone(), message.seq);
        self.messages
            .entry(message.conversation_id.clone())
            .or_default()
            .push(message);
    }

    /// Reads one event within `timeout`: messages are checked and stored,
    /// other events are stored. Returns `Ok(None)` on timeout and an error
    /// when the stream fails or ends.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>, tonic::Status> {
        let streams = self
            .streams
            .as_mut()
            .ok_or_else(|| tonic::Status::unavailable("the session is closed"))?;
        let event = match tokio::time::timeout(timeout, streams.inbound.message()).await {
            Err(_) => return Ok(None),
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) => return Err(tonic::Status::unavailable("the session stream ended")),
            Ok(Ok(Some(event))) => event,
        };
        let Some(event) = event.event else {
            panic!("{}: server event without a kind", self.name);
        };
        match &event {
            Event::Message(message) => self.accept(message.clone()),
            other => self.events.push(other.clone()),
        }
        Ok(Some(event))
    }

    /// Reads events until the cursor of `conversation_id` reaches `seq`.
    pub async fn wait_for_seq(&mut self, conversation_id: &str, seq: u64, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.cursor(conversation_id) < seq {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Ok(Some(_)) => {}
                Ok(None) => panic!(
                    "{}: {conversation_id} reached seq {} of {seq} within {timeout:?}",
                    self.name,
                    self.cursor(conversation_id)
                ),
                Err(status) => panic!("{}: session failed: {status}", self.name),
            }
        }
    }

    /// Reads events until one stored at or after index `from` of `events`
    /// matches, and returns it. Returns `None` after `timeout`.
    pub async fn wait_for_event(
        &mut self,
        from: usize,
        timeout: Duration,
        matches: impl Fn(&Event) -> bool,
    ) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut checked = from;
        loop {
            if let Some(found) = self.events[checked.min(self.events.len())..]
                .iter()
                .find(|event| matches(event))
            {
                return Some(found.clone());
            }
            checked = self.events.len();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => panic!("{}: session failed: {status}", self.name),
            }
        }
    }

    /// Reads events, reopening the session with its cursors whenever it
    /// fails or ends, until `targets` has a seq for each conversation and
    /// every cursor has reached it. Panics after `timeout`.
    pub async fn follow_until(
        mut self,
        mut targets: tokio::sync::watch::Receiver<Option<BTreeMap<String, u64>>>,
        timeout: Duration,
    ) -> DeviceSession {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let reached = targets.borrow_and_update().as_ref().is_some_and(|targets| {
                targets
                    .iter()
                    .all(|(conversation_id, seq)| self.cursor(conversation_id) >= *seq)
            });
            if reached {
                return self;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: cursors {:?} did not reach {:?} within {timeout:?}",
                self.name,
                self.cursors,
                *targets.borrow()
            );
            if let Err(status) = self.next_event(Duration::from_millis(200)).await {
                log_session_end(&self.name, &status);
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                self.try_reopen(left)
                    .await
                    .unwrap_or_else(|status| panic!("{}: reopen session: {status}", self.name));
            }
        }
    }

    pub async fn send_client_event(&self, event: client_event::Event) {
        let streams = self.streams.as_ref().expect("the session is open");
        streams
            .outbound
            .send(client_event(event))
            .await
            .expect("the session call is still running");
    }

    pub async fn ack_delivered(&self, conversation_id: &str, seq: u64) {
        let ack = DeliveredAck {
            conversation_id: conversation_id.into(),
            seq,
        };
        self.send_client_event(client_event::Event::Delivered(ack))
            .await;
    }

    pub async fn set_typing(&self, conversation_id: &str, typing: bool) {
        let update = TypingUpdate {
            conversation_id: conversation_id.into(),
            typing,
        };
        self.send_client_event(client_event::Event::Typing(update))
            .await;
    }
}
