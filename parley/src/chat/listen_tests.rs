//! Tests of the listener against a scripted in-process gateway: repeats
//! are dropped, gaps are filled, every message is acked, cursors are saved
//! and a dropped session is reopened from them.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parley_gateway::proto::client_event;
use parley_gateway::proto::parley_server::{Parley, ParleyServer};
use parley_gateway::proto::server_event::Event;
use parley_gateway::proto::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use super::client::Gateway;
use super::listen::{ListenLimits, Listener};
use super::profile::Profile;

const CONVERSATION: &str = "d:alice:bob";

/// What one Session call pushes, then how it ends: with an error status,
/// or (None) by staying open until the client goes away.
struct SessionScript {
    events: Vec<ServerEvent>,
    end: Option<Status>,
}

/// What the client sent, for the test to check.
#[derive(Default)]
struct Recorded {
    /// The cursors of each SessionOpen, in call order.
    opens: Vec<Vec<(String, u64)>>,
    /// The `authorization` header of each Session call.
    tokens: Vec<String>,
    /// Every DeliveredAck as (conversation, seq).
    acks: Vec<(String, u64)>,
    /// Every GapFill as (conversation, after_seq).
    gap_fills: Vec<(String, u64)>,
}

struct MockGateway {
    scripts: Mutex<VecDeque<SessionScript>>,
    stored: Vec<Message>,
    recorded: Arc<Mutex<Recorded>>,
}

fn message(seq: u64) -> Message {
    Message {
        conversation_id: CONVERSATION.into(),
        seq,
        sender_user_id: "alice".into(),
        sender_device_id: "phone".into(),
        client_message_id: format!("m{seq}"),
        body: format!("text {seq}").into_bytes().into(),
        server_time_ms: 1_700_000_000_000 + seq,
    }
}

fn pushed(seq: u64) -> ServerEvent {
    ServerEvent {
        event: Some(Event::Message(message(seq))),
    }
}

fn ready() -> ServerEvent {
    ServerEvent {
        event: Some(Event::Ready(SessionReady {
            conversations: Vec::new(),
        })),
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not scripted in this test"))
}

#[tonic::async_trait]
impl Parley for MockGateway {
    async fn register(
        &self,
        _: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        unimplemented()
    }
    async fn link_device(
        &self,
        _: Request<LinkDeviceRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        unimplemented()
    }
    async fn create_direct(
        &self,
        _: Request<CreateDirectRequest>,
    ) -> Result<Response<Conversation>, Status> {
        unimplemented()
    }
    async fn create_group(
        &self,
        _: Request<CreateGroupRequest>,
    ) -> Result<Response<Conversation>, Status> {
        unimplemented()
    }
    async fn add_members(
        &self,
        _: Request<AddMembersRequest>,
    ) -> Result<Response<Conversation>, Status> {
        unimplemented()
    }
    async fn remove_member(
        &self,
        _: Request<RemoveMemberRequest>,
    ) -> Result<Response<Conversation>, Status> {
        unimplemented()
    }
    async fn list_conversations(
        &self,
        _: Request<ListConversationsRequest>,
    ) -> Result<Response<ListConversationsReply>, Status> {
        unimplemented()
    }
    async fn send(&self, _: Request<SendRequest>) -> Result<Response<SendReply>, Status> {
        unimplemented()
    }
    async fn mark_read(
        &self,
        _: Request<MarkReadRequest>,
    ) -> Result<Response<MarkReadReply>, Status> {
        unimplemented()
    }
    async fn history(&self, _: Request<HistoryRequest>) -> Result<Response<HistoryReply>, Status> {
        unimplemented()
    }
    async fn gap_fill(
        &self,
        request: Request<GapFillRequest>,
    ) -> Result<Response<HistoryReply>, Status> {
        let request = request.into_inner();
        let after = request.after_seq;
        self.recorded
            .lock()
            .unwrap()
            .gap_fills
            .push((request.conversation_id, after));
        let messages: Vec<Message> = self
            .stored
            .iter()
            .filter(|message| message.seq > after)
            .take(request.limit as usize)
            .cloned()
            .collect();
        let last_seq = self.stored.last().map_or(0, |message| message.seq);
        Ok(Response::new(HistoryReply { messages, last_seq }))
    }
    async fn presence(
        &self,
        _: Request<PresenceRequest>,
    ) -> Result<Response<PresenceReply>, Status> {
        unimplemented()
    }

    type SessionStream = ReceiverStream<Result<ServerEvent, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<ClientEvent>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut inbound = request.into_inner();
        let Some(client_event::Event::Open(open)) = inbound.message().await?.and_then(|e| e.event)
        else {
            return Err(Status::invalid_argument(
                "the first event must be SessionOpen",
            ));
        };
        {
            let mut recorded = self.recorded.lock().unwrap();
            recorded.tokens.push(token);
            let cursors = open.cursors.into_iter();
            recorded.opens.push(
                cursors
                    .map(|cursor| (cursor.conversation_id, cursor.seq))
                    .collect(),
            );
        }
        let recorded = self.recorded.clone();
        tokio::spawn(async move {
            while let Ok(Some(event)) = inbound.message().await {
                if let Some(client_event::Event::Delivered(ack)) = event.event {
                    let mut recorded = recorded.lock().unwrap();
                    recorded.acks.push((ack.conversation_id, ack.seq));
                }
            }
        });
        let script = self.scripts.lock().unwrap().pop_front();
        let script = script.ok_or_else(|| Status::unavailable("no more scripted sessions"))?;
        let (sender, receiver) = mpsc::channel(64);
        tokio::spawn(async move {
            for event in script.events {
                let _ = sender.send(Ok(event)).await;
            }
            match script.end {
                Some(status) => {
                    let _ = sender.send(Err(status)).await;
                }
                None => sender.closed().await,
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// Serves `mock` on a free 127.0.0.1 port and returns its address.
async fn serve(mock: MockGateway) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let server = tonic::transport::Server::builder()
        .add_service(ParleyServer::new(mock))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    address
}

fn bob_at(cursor: u64) -> Profile {
    let mut profile = Profile {
        user_id: "bob".into(),
        device_id: "laptop".into(),
        token: "t0k".into(),
        expires_at_ms: u64::MAX,
        cursors: Default::default(),
    };
    profile.advance(CONVERSATION, cursor);
    profile
}

async fn listen(address: &str, path: PathBuf, limits: ListenLimits) -> anyhow::Result<()> {
    let gateway = Gateway::new(address).unwrap();
    let profile = Profile::load(&path, "bob").unwrap();
    let client = gateway.authed(&profile.token).unwrap();
    Listener::new(gateway, client, profile, path)
        .listen(limits)
        .await
}

fn mock(scripts: Vec<SessionScript>, stored: Vec<Message>) -> (MockGateway, Arc<Mutex<Recorded>>) {
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let mock = MockGateway {
        scripts: Mutex::new(scripts.into()),
        stored,
        recorded: recorded.clone(),
    };
    (mock, recorded)
}

#[tokio::test]
async fn listener_drops_repeats_and_fills_gaps() {
    let script = SessionScript {
        events: vec![pushed(1), pushed(2), pushed(2), pushed(5), ready()],
        end: None,
    };
    let (mock, recorded) = mock(vec![script], (1..=5).map(message).collect());
    let address = serve(mock).await;
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("bob.toml");
    bob_at(1).save(&path).unwrap();

    // A timeout with no count ends the listener successfully, after the
    // session has stayed open long enough for every ack to arrive.
    let limits = ListenLimits {
        count: None,
        timeout: Some(Duration::from_secs(1)),
    };
    listen(&address, path.clone(), limits).await.unwrap();

    let saved = Profile::load(&path, "bob").unwrap();
    assert_eq!(saved.cursor(CONVERSATION), 5);
    let recorded = recorded.lock().unwrap();
    assert_eq!(recorded.opens, [vec![(CONVERSATION.to_string(), 1)]]);
    assert_eq!(recorded.tokens, ["Bearer t0k"]);
    assert_eq!(recorded.gap_fills, [(CONVERSATION.to_string(), 2)]);
    let acked: Vec<u64> = recorded.acks.iter().map(|(_, seq)| *seq).collect();
    assert_eq!(acked, [1, 2, 2, 3, 4, 5]);
}

#[tokio::test]
async fn listener_reopens_session_from_saved_cursor() {
    let first = SessionScript {
        events: vec![pushed(1), pushed(2)],
        end: Some(Status::unavailable("gateway restarting")),
    };
    // The second session replays from the start, as at-least-once allows.
    let second = SessionScript {
        events: vec![ready(), pushed(1), pushed(2), pushed(3)],
        end: None,
    };
    let (mock, recorded) = mock(vec![first, second], Vec::new());
    let address = serve(mock).await;
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("bob.toml");
    bob_at(0).save(&path).unwrap();

    let limits = ListenLimits {
        count: Some(3),
        timeout: Some(Duration::from_secs(10)),
    };
    listen(&address, path.clone(), limits).await.unwrap();

    // Counting the replayed 1 and 2 again would have stopped at cursor 2.
    let saved = Profile::load(&path, "bob").unwrap();
    assert_eq!(saved.cursor(CONVERSATION), 3);
    let recorded = recorded.lock().unwrap();
    assert_eq!(recorded.opens.len(), 2);
    assert_eq!(recorded.opens[1], [(CONVERSATION.to_string(), 2)]);
}

#[tokio::test]
async fn listener_stops_on_permission_denied() {
    let script = SessionScript {
        events: vec![ready()],
        end: Some(Status::permission_denied("device removed")),
    };
    let (mock, recorded) = mock(vec![script], Vec::new());
    let address = serve(mock).await;
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("bob.toml");
    bob_at(0).save(&path).unwrap();

    let limits = ListenLimits {
        count: None,
        timeout: Some(Duration::from_secs(10)),
    };
    let error = listen(&address, path, limits).await.unwrap_err();
    assert_eq!(error.to_string(), "PERMISSION_DENIED: device removed");
    assert_eq!(recorded.lock().unwrap().opens.len(), 1);
}

#[tokio::test]
async fn listener_times_out_short_of_count() {
    let script = SessionScript {
        events: vec![ready(), pushed(1)],
        end: None,
    };
    let (mock, _) = mock(vec![script], Vec::new());
    let address = serve(mock).await;
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("bob.toml");
    bob_at(0).save(&path).unwrap();

    let limits = ListenLimits {
        count: Some(2),
        timeout: Some(Duration::from_secs(1)),
    };
    let error = listen(&address, path, limits).await.unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("timed out after 1 s with 1 of 2 messages"),
        "{text}"
    );
}
