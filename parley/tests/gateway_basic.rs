//! A first end-to-end pass through a real gateway over real sockets: two
//! users register, open a direct conversation, and a message sent by one
//! reaches the other's session.

mod common;

use std::time::Duration;

use common::ProcessCluster;
use parley_gateway::proto::parley_client::ParleyClient;
use parley_gateway::proto::server_event::Event;
use parley_gateway::proto::{
    client_event, ClientEvent, CreateDirectRequest, RegisterRequest, SendRequest, SessionOpen,
};
use parley_gateway::GatewayConfig;
use tonic::transport::Channel;

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("token is ASCII");
    request.metadata_mut().insert("authorization", value);
    request
}

async fn connect(address: &str) -> ParleyClient<Channel> {
    for _ in 0..100 {
        if let Ok(client) = ParleyClient::connect(format!("http://{address}")).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("gateway at {address} did not accept connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_message_reaches_peer_session() {
    let cluster = ProcessCluster::start(3, 4);
    cluster.wait_for_leaders(Duration::from_secs(60)).await;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let config = GatewayConfig::new(listen.clone(), cluster.addresses.clone(), vec![7; 32]);
    tokio::spawn(parley_gateway::serve(config, std::future::pending()));
    let mut client = connect(&listen).await;

    let alice = client
        .register(RegisterRequest {
            user_id: "alice".into(),
            device_id: "phone".into(),
        })
        .await
        .expect("register alice")
        .into_inner();
    let bob = client
        .register(RegisterRequest {
            user_id: "bob".into(),
            device_id: "laptop".into(),
        })
        .await
        .expect("register bob")
        .into_inner();
    let conversation = client
        .create_direct(with_token(
            CreateDirectRequest {
                peer_user_id: "bob".into(),
            },
            &alice.token,
        ))
        .await
        .expect("create direct")
        .into_inner();

    let (sender, receiver) = tokio::sync::mpsc::channel(8);
    sender
        .send(ClientEvent {
            event: Some(client_event::Event::Open(SessionOpen { cursors: vec![] })),
        })
        .await
        .unwrap();
    let stream = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|event| (event, receiver))
    });
    let mut events = client
        .session(with_token(stream, &bob.token))
        .await
        .expect("session")
        .into_inner();
    let ready = events.message().await.expect("ready").expect("ready event");
    assert!(matches!(ready.event, Some(Event::Ready(_))), "{ready:?}");

    let sent = client
        .send(with_token(
            SendRequest {
                conversation_id: conversation.conversation_id.clone(),
                client_message_id: "m1".into(),
                body: b"hello bob".to_vec(),
            },
            &alice.token,
        ))
        .await
        .expect("send")
        .into_inner();
    assert_eq!(sent.seq, 1);

    let event = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("message within 10 s")
        .expect("stream ok")
        .expect("an event");
    match event.event {
        Some(Event::Message(message)) => {
            assert_eq!(message.seq, 1);
            assert_eq!(message.body.as_ref(), b"hello bob");
            assert_eq!(message.sender_user_id, "alice");
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_id_with_direct_prefix_is_rejected() {
    let cluster = ProcessCluster::start(3, 4);
    cluster.wait_for_leaders(Duration::from_secs(60)).await;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let config = GatewayConfig::new(listen.clone(), cluster.addresses.clone(), vec![7; 32]);
    tokio::spawn(parley_gateway::serve(config, std::future::pending()));
    let mut client = connect(&listen).await;
    let eve = client
        .register(RegisterRequest {
            user_id: "eve".into(),
            device_id: "phone".into(),
        })
        .await
        .expect("register eve")
        .into_inner();

    let request = parley_gateway::proto::CreateGroupRequest {
        conversation_id: "direct-0123".into(),
        members: vec![],
    };
    let status = client
        .create_group(with_token(request, &eve.token))
        .await
        .expect_err("a group may not take a direct conversation id");

    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("CreateGroupRequest.conversation_id"),
        "the message names the field: {}",
        status.message()
    );
}
