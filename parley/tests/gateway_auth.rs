//! Rejections of the gateway's client API on real sockets in front of a
//! real 3-node, 8-shard cluster. A member-only call by a non-member is
//! PERMISSION_DENIED. A call with a missing, forged, edited or expired
//! token is UNAUTHENTICATED. A malformed request is INVALID_ARGUMENT, with
//! a message that names the field.
//!
//! Every test starts its own cluster and gateway. A lock runs the tests
//! one at a time, so that the clusters do not compete for the CPU.

mod common;

use std::time::Duration;

use common::gateway::{
    body_of, connect, gateway_config, open_session_with, register, with_token, Device,
    DeviceSession, InProcessGateway, TOKEN_SECRET,
};
use common::ProcessCluster;
use parley_gateway::auth::{DeviceIdentity, TokenSigner};
use parley_gateway::proto::parley_client::ParleyClient;
use parley_gateway::proto::{
    client_event, AddMembersRequest, ClientEvent, CreateDirectRequest, CreateGroupRequest, Cursor,
    DeliveredAck, GapFillRequest, HistoryRequest, LinkDeviceRequest, ListConversationsRequest,
    MarkReadRequest, PresenceRequest, RegisterRequest, RemoveMemberRequest, SendRequest,
    SessionOpen,
};
use tonic::transport::Channel;
use tonic::Code;

const GROUP_ID: &str = "team";

/// Runs the tests of this file one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A running cluster and gateway with alice and bob in a direct
/// conversation and a group, one message in each, and eve in neither.
struct Fixture {
    _cluster: ProcessCluster,
    gateway: InProcessGateway,
    client: ParleyClient<Channel>,
    alice: Device,
    bob: Device,
    eve: Device,
    direct: String,
}

async fn set_up() -> Fixture {
    let cluster = ProcessCluster::start(3, 8);
    cluster.wait_for_leaders(Duration::from_secs(60)).await;
    let gateway = InProcessGateway::start(gateway_config(&cluster));
    let mut client = connect(&gateway.address).await;
    let alice = register(&mut client, "alice", "alice-phone").await;
    let bob = register(&mut client, "bob", "bob-laptop").await;
    let eve = register(&mut client, "eve", "eve-phone").await;

    let direct = client
        .create_direct(with_token(
            CreateDirectRequest {
                peer_user_id: "bob".into(),
            },
            &alice.token,
        ))
        .await
        .expect("create the direct conversation")
        .into_inner()
        .conversation_id;
    client
        .create_group(with_token(
            CreateGroupRequest {
                conversation_id: GROUP_ID.into(),
                members: vec!["bob".into()],
            },
            &alice.token,
        ))
        .await
        .expect("create the group");
    for conversation_id in [direct.as_str(), GROUP_ID] {
        let request = SendRequest {
            conversation_id: conversation_id.into(),
            client_message_id: "first".into(),
            body: body_of("first", 16),
        };
        client
            .send(with_token(request, &alice.token))
            .await
            .unwrap_or_else(|status| panic!("alice sends to {conversation_id}: {status}"));
    }

    Fixture {
        _cluster: cluster,
        gateway,
        client,
        alice,
        bob,
        eve,
        direct,
    }
}

/// Returns a token expiry one hour from now, in ms since the Unix epoch.
fn expiry_in_an_hour() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    (now + Duration::from_secs(3600)).as_millis() as u64
}

fn open_event(cursors: Vec<Cursor>) -> ClientEvent {
    ClientEvent {
        event: Some(client_event::Event::Open(SessionOpen { cursors })),
    }
}

/// Wraps `message` with `authorization` set to `header`, or without it.
fn with_header<T>(message: T, header: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(header) = header {
        let value = header.parse().expect("header is ASCII");
        request.metadata_mut().insert("authorization", value);
    }
    request.set_timeout(Duration::from_secs(15));
    request
}

/// Calls every RPC that needs a token, each with `authorization` set to
/// `header` (or missing), and returns each call's name and status code.
async fn call_every_authenticated_rpc(
    fixture: &mut Fixture,
    header: Option<&str>,
) -> Vec<(&'static str, Code)> {
    fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
        match result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        }
    }
    let direct = fixture.direct.clone();
    let client = &mut fixture.client;
    let mut codes = Vec::new();

    let request = LinkDeviceRequest {
        device_id: "eve-tablet".into(),
    };
    codes.push((
        "LinkDevice",
        code(client.link_device(with_header(request, header)).await),
    ));
    let request = CreateDirectRequest {
        peer_user_id: "eve".into(),
    };
    codes.push((
        "CreateDirect",
        code(client.create_direct(with_header(request, header)).await),
    ));
    let request = CreateGroupRequest {
        conversation_id: "another-group".into(),
        members: vec!["eve".into()],
    };
    codes.push((
        "CreateGroup",
        code(client.create_group(with_header(request, header)).await),
    ));
    let request = AddMembersRequest {
        conversation_id: GROUP_ID.into(),
        user_ids: vec!["eve".into()],
    };
    codes.push((
        "AddMembers",
        code(client.add_members(with_header(request, header)).await),
    ));
    let request = RemoveMemberRequest {
        conversation_id: GROUP_ID.into(),
        user_id: "bob".into(),
    };
    codes.push((
        "RemoveMember",
        code(client.remove_member(with_header(request, header)).await),
    ));
    codes.push((
        "ListConversations",
        code(
            client
                .list_conversations(with_header(ListConversationsRequest {}, header))
                .await,
        ),
    ));
    let request = SendRequest {
        conversation_id: direct.clone(),
        client_message_id: "unauthenticated".into(),
        body: body_of("unauthenticated", 16),
    };
    codes.push((
        "Send",
        code(client.send(with_header(request, header)).await),
    ));
    let request = MarkReadRequest {
        conversation_id: direct.clone(),
        seq: 1,
    };
    codes.push((
        "MarkRead",
        code(client.mark_read(with_header(request, header)).await),
    ));
    let request = HistoryRequest {
        conversation_id: direct.clone(),
        from_seq: 1,
        limit: 0,
    };
    codes.push((
        "History",
        code(client.history(with_header(request, header)).await),
    ));
    let request = GapFillRequest {
        conversation_id: direct.clone(),
        after_seq: 0,
        limit: 0,
    };
    codes.push((
        "GapFill",
        code(client.gap_fill(with_header(request, header)).await),
    ));
    let request = PresenceRequest {
        user_ids: vec!["alice".into()],
    };
    codes.push((
        "Presence",
        code(client.presence(with_header(request, header)).await),
    ));

    let (outbound, receiver) = tokio::sync::mpsc::channel(4);
    outbound
        .send(open_event(Vec::new()))
        .await
        .expect("the receiver is still here");
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (event, receiver))
    });
    codes.push((
        "Session",
        code(client.session(with_header(stream, header)).await),
    ));
    codes
}

/// Checks that every authenticated RPC returns UNAUTHENTICATED for
/// `header`, and that the cluster state did not change.
async fn assert_every_rpc_unauthenticated(fixture: &mut Fixture, header: Option<&str>) {
    for (call, code) in call_every_authenticated_rpc(fixture, header).await {
        assert_eq!(
            code,
            Code::Unauthenticated,
            "{call} with authorization {header:?} is UNAUTHENTICATED"
        );
    }
    let request = HistoryRequest {
        conversation_id: fixture.direct.clone(),
        from_seq: 1,
        limit: 0,
    };
    let history = fixture
        .client
        .history(with_token(request, &fixture.alice.token))
        .await
        .expect("alice reads the direct conversation")
        .into_inner();
    assert_eq!(
        history.messages.len(),
        1,
        "no unauthenticated send was stored"
    );
}

fn assert_denied(result: Result<impl std::fmt::Debug, tonic::Status>, call: &str) {
    match result {
        Ok(reply) => panic!("{call} by eve succeeded: {reply:?}"),
        Err(status) => assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "{call} by eve, who is not a member, is PERMISSION_DENIED: {status}"
        ),
    }
}

fn assert_invalid_naming(result: Result<impl std::fmt::Debug, tonic::Status>, field: &str) {
    let status = match result {
        Ok(reply) => panic!("the request with an invalid {field} succeeded: {reply:?}"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "an invalid {field} is INVALID_ARGUMENT: {status}"
    );
    assert!(
        status.message().contains(field),
        "the message names {field}: {:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsider_send_is_permission_denied() {
    let _serial = SERIAL.lock().await;
    let mut fixture = set_up().await;
    let request = SendRequest {
        conversation_id: fixture.direct.clone(),
        client_message_id: "intrusion".into(),
        body: body_of("intrusion", 16),
    };
    let result = fixture
        .client
        .send(with_token(request, &fixture.eve.token))
        .await;
    assert_denied(result, "Send");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsider_history_is_permission_denied() {
    let _serial = SERIAL.lock().await;
    let mut fixture = set_up().await;
    let request = HistoryRequest {
        conversation_id: fixture.direct.clone(),
        from_seq: 1,
        limit: 0,
    };
    let result = fixture
        .client
        .history(with_token(request, &fixture.eve.token))
        .await;
    assert_denied(result, "History");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsider_gap_fill_is_permission_denied() {
    let _serial = SERIAL.lock().await;
    let mut fixture = set_up().await;
    let request = GapFillRequest {
        conversation_id: fixture.direct.clone(),
        after_seq: 0,
        limit: 0,
    };
    let result = fixture
        .client
        .gap_fill(with_token(request, &fixture.eve.token))
        .await;
    assert_denied(result, "GapFill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsider_mark_read_is_permission_denied() {
    let _serial = SERIAL.lock().await;
    let mut fixture = set_up().await;
    let request = MarkReadRequest {
        conversation_id: fixture.direct.clone(),
        seq: 1,
    };
    let result = fixture
        .client
        .mark_read(with_token(request, &fixture.eve.token))
        .await;
    assert_denied(result, "MarkRead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsider_session_naming_conversation_is_permission_denied() {
    let _serial = SERIAL.lock().await;
    let mut fixture = set_up().await;
    let cursors = vec![Cursor {
        conversation_id: fixture.direct.clone(),
        seq: 0,
    }];
    let result = open_session_with(
        &mut fixture.client,
        Some(&fixture.eve.token),
        open_event(cursors),
    )
    .await
    .map(|_| "a session stream");
    assert_denied(result, "Session with a cursor on the direct conversation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsider_session_receives_no_foreign_message() {
    let _serial = SERIAL.lock().await;
    let mut fixture = set_up().await;
    let address = fixture.gateway.address.clone();
    let mut eve = DeviceSession::open("eve-phone", &address, &fixture.eve).await;
    assert!(
        eve.cursors.is_empty(),
        "eve's ready event lists no conversation: {:?}",
        eve.cursors
    );

    // Bob's session receiving the message shows that the gateway fanned it
    // out before eve's session is checked.
    let mut bob = DeviceSession::open("bob-laptop", &address, &fixture.bob).await;
    let request = SendRequest {
        conversation_id: fixture.direct.clone(),
        client_message_id: "second".into(),
        body: body_of("second", 16),
    };
    fixture
        .client
        .send(with_token(request, &fixture.alice.token))
        .await
        .expect("alice sends to bob");
    bob.wait_for_seq(&fixture.direct, 2, Duration::from_secs(20))
        .await;
    while eve
        .next_event(Duration::from_millis(500))
        .await
        .expect("eve's session stays open")
        .is_some()
    {}
    assert!(
        eve.messages.is_empty(),
        "eve receives no message of conversations she is not in: {:?}",
        eve.messages
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsider_add_members_is_permission_denied() {
    let _serial = SERIAL.lock().await;
    let mut fixture = set_up().await;
    let request = AddMembersRequest {
        conversation_id: GROUP_ID.into(),
        user_ids: vec!["eve".into()],
    };
    let result = fixture
        .client
        .add_members(with_token(request, &fixture.eve.token))
        .await;
    assert_denied(result, "AddMembers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_is_unauthenticated_everywhere() {
    let _serial = SERIAL.lock().await;
    let mut fixture = set_up().await;
    assert_every_rpc_unauthenticated(&mut fixture, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_key_token_is_unauthenticated_everywhere() {
    let _serial = SERIAL.lock().await;
    let mut fixture = set_up().await;
    let other_key = TokenSigner::new(b"some-other-cluster-key-0123456789".to_vec());
    let identity = DeviceIdentity {
        user_id: "alice".into(),
        device_id: "alice-phone".into(),
    };
    let forged = other_key.issue(&identity, expiry_in_an_hour());
    let header = format!("Bearer {forged}");
    assert_every_rpc_unauthenticated(&mut fixture, Some(&header)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_token_is_unauthenticated_everywhere() {
    let _serial = SERIAL.lock().await;
    let mut fixture = set_up().await;
    // Eve's token with her user id replaced by alice's: the signature no
    // longer matches the payload.
    let edited = fixture.eve.token.replacen("|eve|", "|alice|", 1);
    assert_ne!(edited, fixture.eve.token, "the token names its user");
    let header = format!("Bearer {edited}");
    assert_every_rpc_unauthenticated(&mut fixture, Some(&header)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_is_unauthenticated_everywhere() {
    let _serial = SERIAL.lock().await;
    let mut fixture = set_up().await;
    let identity = DeviceIdentity {
        user_id: "alice".into(),
        device_id: "alice-phone".into(),
    };
    let expired = TokenSigner::new(TOKEN_SECRET.to_vec()).issue(&identity, 1);
    let header = format!("Bearer {expired}");
    assert_every_rpc_unauthenticated(&mut fixture, Some(&header)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_without_conversation_id_names_field() {
    let _serial = SERIAL.lock().await;
    let mut fixture = set_up().await;
    let request = SendRequest {
        conversation_id: String::new(),
        client_message_id: "m1".into(),
        body: body_of("m1", 16),
    };
    let result = fixture
        .client
        .send(with_token(request, &fixture.alice.token))
        .await;
    assert_invalid_naming(result, "SendRequest.conversation_id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_client_message_id_names_field() {
    let _serial = SERIAL.lock().await;
    let mut fixture = set_up().await;
    for client_message_id in ["", "has spaces", "pipe|inside", &"x".repeat(129)] {
        let request = SendRequest {
            conversation_id: fixture.direct.clone(),
            client_message_id: client_message_id.into(),
            body: body_of("m1", 16),
        };
        let result = fixture
            .client
            .send(with_token(request, &fixture.alice.token))
            .await;
        assert_invalid_naming(result, "SendRequest.client_message_id");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_register_device_id_names_field() {
    let _serial = SERIAL.lock().await;
    let mut fixture = set_up().await;
    for device_id in ["", "bad device", "slash/inside"] {
        let request = RegisterRequest {
            user_id: "carol".into(),
            device_id: device_id.into(),
        };
        let result = fixture.client.register(request).await;
        assert_invalid_naming(result, "RegisterRequest.device_id");
    }
    // The rejected requests registered nothing, so carol is still free.
    let carol = fixture
        .client
        .register(RegisterRequest {
            user_id: "carol".into(),
            device_id: "carol-phone".into(),
        })
        .await;
    assert!(
        carol.is_ok(),
        "carol registers after the rejected attempts: {carol:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_without_open_first_is_invalid() {
    let _serial = SERIAL.lock().await;
    let mut fixture = set_up().await;
    let ack = ClientEvent {
        event: Some(client_event::Event::Delivered(DeliveredAck {
            conversation_id: fixture.direct.clone(),
            seq: 1,
        })),
    };
    let result = open_session_with(&mut fixture.client, Some(&fixture.alice.token), ack)
        .await
        .map(|_| "a session stream");
    assert_invalid_naming(result, "open");

    let empty = ClientEvent { event: None };
    let result = open_session_with(&mut fixture.client, Some(&fixture.alice.token), empty)
        .await
        .map(|_| "a session stream");
    assert_invalid_naming(result, "open");
}
