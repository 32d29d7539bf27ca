//! End-to-end tests of the gateway on real sockets in front of a real
//! 3-node, 8-shard cluster. They cover message order and catch-up per
//! device, sent, delivered and read receipts, and typing expiry. They also
//! check that no acknowledged message is lost or duplicated across a
//! leader SIGKILL, a gateway restart and a retried send.
//!
//! Alice has two devices, bob one, and both are in a direct conversation
//! and in a 50-member group that alice creates. Every test starts its own
//! cluster. A lock runs the tests one at a time, so that the load of one
//! cluster cannot delay the Raft elections of another.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::gateway::{
    body_of, connect, gateway_config, is_transient, link_device, register, send_until_acked,
    with_token, Device, DeviceSession, GatewayProcess, InProcessGateway,
};
use common::ProcessCluster;
use parley_core::proto::command::Kind;
use parley_core::proto::command_result::Outcome;
use parley_core::proto::{Append, Command};
use parley_core::COMMAND_VERSION;
use parley_gateway::proto::parley_client::ParleyClient;
use parley_gateway::proto::server_event::Event;
use parley_gateway::proto::{
    ConversationKind, CreateDirectRequest, CreateGroupRequest, HistoryRequest, MarkReadRequest,
    ReceiptKind, SendRequest,
};
use parley_gateway::service::direct_conversation_id;
use parley_shards::shard_map::shard_of_id;
use tonic::transport::Channel;

const SHARDS: u32 = 8;
const LEADER_WAIT: Duration = Duration::from_secs(60);
/// How long a device may take to receive an event it is owed.
const EVENT_WAIT: Duration = Duration::from_secs(20);
/// How long a client keeps retrying one send.
const SEND_DEADLINE: Duration = Duration::from_secs(60);
const GROUP_ID: &str = "team";
const GROUP_MEMBERS: usize = 50;
const BODY_BYTES: usize = 64;
/// Typing indicator lifetime of the in-process gateways.
const TYPING_TTL: Duration = Duration::from_secs(1);

/// Runs the tests of this file one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The users, devices and conversations every test starts from.
struct Chat {
    client: ParleyClient<Channel>,
    alice_phone: Device,
    alice_desktop: Device,
    bob: Device,
    /// The 48 other group members.
    members: Vec<Device>,
    direct: String,
    group: String,
}

/// One acknowledged send.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Ack {
    conversation_id: String,
    seq: u64,
    client_message_id: String,
    sender_user_id: String,
    sender_device_id: String,
}

async fn start_cluster() -> ProcessCluster {
    let cluster = ProcessCluster::start(3, SHARDS);
    cluster.wait_for_leaders(LEADER_WAIT).await;
    cluster
}

fn start_gateway(cluster: &ProcessCluster) -> InProcessGateway {
    let mut config = gateway_config(cluster);
    config.typing_ttl = TYPING_TTL;
    InProcessGateway::start(config)
}

/// Registers the users and creates the direct conversation and the group.
async fn set_up_chat(address: &str) -> Chat {
    let mut client = connect(address).await;
    let alice_phone = register(&mut client, "alice", "alice-phone").await;
    let alice_desktop = link_device(&mut client, &alice_phone, "alice-desktop").await;
    let bob = register(&mut client, "bob", "bob-laptop").await;
    let mut members = Vec::new();
    for index in 0..GROUP_MEMBERS - 2 {
        let user = format!("member{index:02}");
        members.push(register(&mut client, &user, &format!("{user}-phone")).await);
    }

    let direct = client
        .create_direct(with_token(
            CreateDirectRequest {
                peer_user_id: "bob".into(),
            },
            &alice_phone.token,
        ))
        .await
        .expect("create the direct conversation")
        .into_inner();
    assert_eq!(
        direct.kind,
        ConversationKind::Direct as i32,
        "CreateDirect returns a direct conversation"
    );

    let mut group_members = vec!["bob".to_string()];
    group_members.extend(members.iter().map(|member| member.user_id.clone()));
    let group = client
        .create_group(with_token(
            CreateGroupRequest {
                conversation_id: GROUP_ID.into(),
                members: group_members,
            },
            &alice_phone.token,
        ))
        .await
        .expect("create the group")
        .into_inner();
    assert_eq!(
        group.member_count as usize, GROUP_MEMBERS,
        "the group has alice, bob and the other members"
    );

    Chat {
        client,
        alice_phone,
        alice_desktop,
        bob,
        members,
        direct: direct.conversation_id,
        group: group.conversation_id,
    }
}

impl Chat {
    /// Sends one message and returns its acknowledgement.
    async fn send(
        &mut self,
        sender: &Device,
        conversation_id: &str,
        client_message_id: &str,
    ) -> Ack {
        let (reply, _) = send_until_acked(
            &mut self.client,
            sender,
            conversation_id,
            client_message_id,
            BODY_BYTES,
            SEND_DEADLINE,
        )
        .await;
        assert!(
            !reply.duplicate,
            "first send of {client_message_id} is not a duplicate"
        );
        ack_of(sender, conversation_id, client_message_id, reply.seq)
    }

    async fn open_sessions(&self, address: &str) -> Vec<DeviceSession> {
        vec![
            DeviceSession::open("alice-phone", address, &self.alice_phone).await,
            DeviceSession::open("alice-desktop", address, &self.alice_desktop).await,
            DeviceSession::open("bob-laptop", address, &self.bob).await,
        ]
    }
}

fn ack_of(sender: &Device, conversation_id: &str, client_message_id: &str, seq: u64) -> Ack {
    Ack {
        conversation_id: conversation_id.into(),
        seq,
        client_message_id: client_message_id.into(),
        sender_user_id: sender.user_id.clone(),
        sender_device_id: sender.device_id.clone(),
    }
}

/// Returns the acks of one conversation, ordered by seq.
fn acks_of(acks: &[Ack], conversation_id: &str) -> Vec<Ack> {
    let mut selected: Vec<Ack> = acks
        .iter()
        .filter(|ack| ack.conversation_id == conversation_id)
        .cloned()
        .collect();
    selected.sort();
    selected
}

/// Returns what a session accepted in one conversation, as acks.
fn received_of(session: &DeviceSession, conversation_id: &str) -> Vec<Ack> {
    session
        .messages_of(conversation_id)
        .iter()
        .map(|message| Ack {
            conversation_id: message.conversation_id.clone(),
            seq: message.seq,
            client_message_id: message.client_message_id.clone(),
            sender_user_id: message.sender_user_id.clone(),
            sender_device_id: message.sender_device_id.clone(),
        })
        .collect()
}

/// Checks that `session` contains exactly the acknowledged messages of
/// `conversation_id`: seqs 1..=n with none missing, and each client message
/// id once.
fn assert_received_exactly(session: &DeviceSession, conversation_id: &str, acks: &[Ack]) {
    let expected = acks_of(acks, conversation_id);
    let received = received_of(session, conversation_id);
    let seqs: Vec<u64> = received.iter().map(|ack| ack.seq).collect();
    let contiguous: Vec<u64> = (1..=received.len() as u64).collect();
    assert_eq!(
        seqs, contiguous,
        "{}: {conversation_id} seqs run 1..=n without a gap",
        session.name
    );
    let distinct: BTreeSet<&str> = received
        .iter()
        .map(|ack| ack.client_message_id.as_str())
        .collect();
    assert_eq!(
        distinct.len(),
        received.len(),
        "{}: {conversation_id} contains each client message id once",
        session.name
    );
    assert_eq!(
        received, expected,
        "{}: {conversation_id} contains exactly the acknowledged messages",
        session.name
    );
}

fn is_receipt(
    event: &Event,
    conversation_id: &str,
    kind: ReceiptKind,
    user_id: &str,
    seq: u64,
) -> bool {
    matches!(event, Event::Receipt(receipt)
        if receipt.conversation_id == conversation_id
            && receipt.kind == kind as i32
            && receipt.user_id == user_id
            && receipt.seq == seq)
}

/// Checks that every watermark a session saw only moved forward.
fn assert_receipts_never_regress(session: &DeviceSession) {
    let mut highest: BTreeMap<(String, i32, String, String), u64> = BTreeMap::new();
    for event in &session.events {
        let Event::Receipt(receipt) = event else {
            continue;
        };
        let key = (
            receipt.conversation_id.clone(),
            receipt.kind,
            receipt.user_id.clone(),
            receipt.device_id.clone(),
        );
        let previous = highest.insert(key.clone(), receipt.seq).unwrap_or(0);
        assert!(
            receipt.seq > previous,
            "{}: receipt {key:?} moved from {previous} to {}",
            session.name,
            receipt.seq
        );
    }
}

async fn mark_read(chat: &mut Chat, reader: &Device, conversation_id: &str, seq: u64) -> u64 {
    let request = MarkReadRequest {
        conversation_id: conversation_id.into(),
        seq,
    };
    chat.client
        .mark_read(with_token(request, &reader.token))
        .await
        .unwrap_or_else(|status| {
            panic!("{} marks {conversation_id} read: {status}", reader.user_id)
        })
        .into_inner()
        .read_seq
}

/// Returns the index of the node that leads `shard`.
async fn leader_of(cluster: &ProcessCluster, shard: u32) -> usize {
    let client = cluster.client();
    for _ in 0..200 {
        for index in 0..cluster.addresses.len() {
            let Ok(status) = client.status(index, false).await else {
                continue;
            };
            let leader = status
                .shards
                .iter()
                .find(|replica| replica.shard_id == shard)
                .map_or(0, |replica| replica.leader_id);
            if leader != 0 {
                return leader as usize - 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("shard {shard} has no leader after 20 s");
}

/// Reads a whole conversation through the gateway as `reader`.
async fn full_history(
    client: &mut ParleyClient<Channel>,
    reader: &Device,
    conversation_id: &str,
) -> Vec<Ack> {
    let mut acks = Vec::new();
    loop {
        let request = HistoryRequest {
            conversation_id: conversation_id.into(),
            from_seq: acks.len() as u64 + 1,
            limit: 0,
        };
        let reply = match client.history(with_token(request, &reader.token)).await {
            Ok(reply) => reply.into_inner(),
            Err(status) if is_transient(&status) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(status) => panic!("history of {conversation_id}: {status}"),
        };
        if reply.messages.is_empty() {
            return acks;
        }
        acks.extend(reply.messages.into_iter().map(|message| Ack {
            conversation_id: message.conversation_id,
            seq: message.seq,
            client_message_id: message.client_message_id,
            sender_user_id: message.sender_user_id,
            sender_device_id: message.sender_device_id,
        }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_devices_receive_messages_in_order() {
    let _serial = SERIAL.lock().await;
    let cluster = start_cluster().await;
    let gateway = start_gateway(&cluster);
    let mut chat = set_up_chat(&gateway.address).await;
    let mut sessions = chat.open_sessions(&gateway.address).await;
    for session in &sessions {
        let ready: BTreeSet<&String> = session.cursors.keys().collect();
        let expected: BTreeSet<&String> = [&chat.direct, &chat.group].into();
        assert_eq!(
            ready, expected,
            "{}: the ready event lists both conversations",
            session.name
        );
    }

    let (alice_phone, alice_desktop, bob) = (
        chat.alice_phone.clone(),
        chat.alice_desktop.clone(),
        chat.bob.clone(),
    );
    let (direct, group) = (chat.direct.clone(), chat.group.clone());
    let mut acks = Vec::new();
    for round in 0..4 {
        let member = chat.members[round].clone();
        acks.push(
            chat.send(&alice_phone, &direct, &format!("ap-d{round}"))
                .await,
        );
        acks.push(chat.send(&bob, &direct, &format!("b-d{round}")).await);
        acks.push(
            chat.send(&alice_desktop, &direct, &format!("ad-d{round}"))
                .await,
        );
        acks.push(chat.send(&bob, &group, &format!("b-g{round}")).await);
        acks.push(
            chat.send(&alice_phone, &group, &format!("ap-g{round}"))
                .await,
        );
        acks.push(chat.send(&member, &group, &format!("m-g{round}")).await);
    }
    for conversation_id in [&direct, &group] {
        let seqs: Vec<u64> = acks
            .iter()
            .filter(|ack| &ack.conversation_id == conversation_id)
            .map(|ack| ack.seq)
            .collect();
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(
            seqs, expected,
            "Send replies of {conversation_id} number the messages 1..=n in send order"
        );
    }

    for session in &mut sessions {
        session.wait_for_seq(&direct, 12, EVENT_WAIT).await;
        session.wait_for_seq(&group, 12, EVENT_WAIT).await;
        assert_received_exactly(session, &direct, &acks);
        assert_received_exactly(session, &group, &acks);
        assert_eq!(
            session.repeats_dropped, 0,
            "{}: the gateway sent no message twice",
            session.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_receives_only_missed_messages() {
    let _serial = SERIAL.lock().await;
    let cluster = start_cluster().await;
    let gateway = start_gateway(&cluster);
    let mut chat = set_up_chat(&gateway.address).await;
    let mut sessions = chat.open_sessions(&gateway.address).await;
    let (alice_phone, alice_desktop, bob) = (
        chat.alice_phone.clone(),
        chat.alice_desktop.clone(),
        chat.bob.clone(),
    );
    let (direct, group) = (chat.direct.clone(), chat.group.clone());

    let mut acks = Vec::new();
    acks.push(chat.send(&alice_phone, &direct, "before-d1").await);
    acks.push(chat.send(&bob, &direct, "before-d2").await);
    acks.push(chat.send(&bob, &group, "before-g1").await);
    for session in &mut sessions {
        session.wait_for_seq(&direct, 2, EVENT_WAIT).await;
        session.wait_for_seq(&group, 1, EVENT_WAIT).await;
    }

    let mut bob_session = sessions.pop().expect("bob's session is last");
    bob_session.close();
    let direct_cursor = bob_session.cursor(&direct);
    let group_cursor = bob_session.cursor(&group);
    for index in 0..5 {
        let member = chat.members[index].clone();
        acks.push(
            chat.send(&alice_phone, &direct, &format!("missed-d{index}"))
                .await,
        );
        acks.push(
            chat.send(&member, &group, &format!("missed-g{index}"))
                .await,
        );
    }
    acks.push(chat.send(&alice_desktop, &group, "missed-g5").await);
    let direct_last = acks_of(&acks, &direct).last().expect("direct acks").seq;
    let group_last = acks_of(&acks, &group).last().expect("group acks").seq;
    for session in &mut sessions {
        session.wait_for_seq(&direct, direct_last, EVENT_WAIT).await;
        session.wait_for_seq(&group, group_last, EVENT_WAIT).await;
    }

    let received_before: usize = bob_session.messages.values().map(Vec::len).sum();
    bob_session.reopen().await;
    bob_session
        .wait_for_seq(&direct, direct_last, EVENT_WAIT)
        .await;
    bob_session
        .wait_for_seq(&group, group_last, EVENT_WAIT)
        .await;
    let received_after: usize = bob_session.messages.values().map(Vec::len).sum();
    let missed = (direct_last - direct_cursor) + (group_last - group_cursor);
    assert_eq!(
        (received_after - received_before) as u64,
        missed,
        "bob receives as many messages as he missed"
    );
    assert_eq!(
        bob_session.repeats_dropped, 0,
        "the reopened session repeats nothing bob had"
    );
    assert_received_exactly(&bob_session, &direct, &acks);
    assert_received_exactly(&bob_session, &group, &acks);
    for session in &sessions {
        assert_received_exactly(session, &direct, &acks);
        assert_received_exactly(session, &group, &acks);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_reach_devices_and_never_regress() {
    let _serial = SERIAL.lock().await;
    let cluster = start_cluster().await;
    let gateway = start_gateway(&cluster);
    let mut chat = set_up_chat(&gateway.address).await;
    let mut sessions = chat.open_sessions(&gateway.address).await;
    let (alice_phone, bob) = (chat.alice_phone.clone(), chat.bob.clone());
    let (direct, group) = (chat.direct.clone(), chat.group.clone());

    let mut acks = Vec::new();
    for index in 0..4 {
        acks.push(chat.send(&alice_phone, &direct, &format!("d{index}")).await);
    }
    assert_eq!(
        acks.last().expect("four acks").seq,
        4,
        "the sent receipt of the fourth message is its seq 4"
    );
    for session in &mut sessions {
        session.wait_for_seq(&direct, 4, EVENT_WAIT).await;
    }

    // Delivered: bob's device acks seq 4, and both alice devices hear it.
    // Every step waits for the receipt on bob's session too, so the marks
    // taken before the next step are past it on every session.
    let marks: Vec<usize> = sessions
        .iter()
        .map(|session| session.events.len())
        .collect();
    sessions[2].ack_delivered(&direct, 4).await;
    for (session, mark) in sessions.iter_mut().zip(&marks) {
        let delivered = session
            .wait_for_event(*mark, EVENT_WAIT, |event| {
                is_receipt(event, &direct, ReceiptKind::Delivered, "bob", 4)
            })
            .await;
        let Some(Event::Receipt(receipt)) = delivered else {
            panic!("{}: no delivered receipt from bob for seq 4", session.name);
        };
        assert_eq!(
            receipt.device_id, "bob-laptop",
            "{}: the delivered receipt names bob's device",
            session.name
        );
    }

    // Read: bob reads up to 3, then 4, and every session hears both.
    for seq in [3, 4] {
        let marks: Vec<usize> = sessions
            .iter()
            .map(|session| session.events.len())
            .collect();
        let read_seq = mark_read(&mut chat, &bob, &direct, seq).await;
        assert_eq!(
            read_seq, seq,
            "MarkRead({seq}) moves bob's watermark to {seq}"
        );
        for (session, mark) in sessions.iter_mut().zip(&marks) {
            let read = session
                .wait_for_event(*mark, EVENT_WAIT, |event| {
                    is_receipt(event, &direct, ReceiptKind::Read, "bob", seq)
                })
                .await;
            assert!(
                read.is_some(),
                "{}: bob's read receipt for seq {seq} arrives",
                session.name
            );
        }
    }

    // A lower MarkRead keeps the watermark and sends nothing. The marker
    // message commits after it on the same shard, so any receipt the lower
    // MarkRead caused would reach a session before the marker does.
    let marks: Vec<usize> = sessions
        .iter()
        .map(|session| session.events.len())
        .collect();
    let read_seq = mark_read(&mut chat, &bob, &direct, 2).await;
    assert_eq!(
        read_seq, 4,
        "MarkRead(2) after MarkRead(4) returns read_seq 4"
    );
    acks.push(chat.send(&alice_phone, &direct, "marker").await);
    for (session, mark) in sessions.iter_mut().zip(&marks) {
        session.wait_for_seq(&direct, 5, EVENT_WAIT).await;
        let late_reads: Vec<&Event> = session.events[*mark..]
            .iter()
            .filter(|event| matches!(event, Event::Receipt(receipt) if receipt.kind == ReceiptKind::Read as i32))
            .collect();
        assert!(
            late_reads.is_empty(),
            "{}: MarkRead(2) sends no read receipt, got {late_reads:?}",
            session.name
        );
    }

    // Alice reads the group on her phone; her desktop hears it, so its
    // unread count clears.
    for index in 0..3 {
        acks.push(chat.send(&bob, &group, &format!("g{index}")).await);
    }
    for session in &mut sessions {
        session.wait_for_seq(&group, 3, EVENT_WAIT).await;
    }
    let desktop_mark = sessions[1].events.len();
    let read_seq = mark_read(&mut chat, &alice_phone, &group, 3).await;
    assert_eq!(
        read_seq, 3,
        "alice's MarkRead(3) on the group returns read_seq 3"
    );
    let read = sessions[1]
        .wait_for_event(desktop_mark, EVENT_WAIT, |event| {
            is_receipt(event, &group, ReceiptKind::Read, "alice", 3)
        })
        .await;
    assert!(
        read.is_some(),
        "alice's desktop receives her own read receipt from the phone"
    );

    for session in &sessions {
        assert_receipts_never_regress(session);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_indicator_turns_off_after_ttl() {
    let _serial = SERIAL.lock().await;
    let cluster = start_cluster().await;
    let gateway = start_gateway(&cluster);
    let chat = set_up_chat(&gateway.address).await;
    let mut sessions = chat.open_sessions(&gateway.address).await;
    let direct = chat.direct.clone();

    let marks: Vec<usize> = sessions
        .iter()
        .map(|session| session.events.len())
        .collect();
    sessions[2].set_typing(&direct, true).await;
    let is_typing = |typing: bool| {
        let direct = direct.clone();
        move |event: &Event| {
            matches!(event, Event::Typing(update)
                if update.conversation_id == direct
                    && update.user_id == "bob"
                    && update.device_id == "bob-laptop"
                    && update.typing == typing)
        }
    };
    for (session, mark) in sessions[..2].iter_mut().zip(&marks) {
        let on = session
            .wait_for_event(*mark, EVENT_WAIT, is_typing(true))
            .await;
        let Some(Event::Typing(on)) = on else {
            panic!("{}: bob's typing indicator does not arrive", session.name);
        };
        assert_eq!(
            u128::from(on.expires_in_ms),
            TYPING_TTL.as_millis(),
            "{}: the indicator states the gateway's typing TTL",
            session.name
        );
    }
    let on_seen = tokio::time::Instant::now();

    for (session, mark) in sessions[..2].iter_mut().zip(&marks) {
        let off = session
            .wait_for_event(*mark, TYPING_TTL + EVENT_WAIT, is_typing(false))
            .await;
        assert!(
            off.is_some(),
            "{}: bob's typing indicator turns off without a stop event",
            session.name
        );
    }
    let off_after = on_seen.elapsed();
    assert!(
        off_after >= TYPING_TTL / 2,
        "the indicator stays on for about the TTL, but it turned off after {off_after:?}"
    );
    assert!(
        off_after <= TYPING_TTL + Duration::from_secs(3),
        "the indicator turns off soon after the TTL, but it took {off_after:?}"
    );

    // Bob's own session never hears his typing.
    let bob_session = &mut sessions[2];
    while bob_session
        .next_event(Duration::from_millis(200))
        .await
        .expect("bob's session is open")
        .is_some()
    {}
    let own_typing = bob_session
        .events
        .iter()
        .any(|event| matches!(event, Event::Typing(_)));
    assert!(
        !own_typing,
        "bob's own session receives no typing event of his"
    );
}

/// What one sender task reports when it is done.
#[derive(Debug, Default)]
struct SenderReport {
    retries: usize,
    /// Maximum time from the first attempt of a send to its ack.
    slowest_send: Duration,
}

/// Sends `count` messages from `sender` in `conversation_id`, one after the
/// other with retries and a pause between sends, recording each ack as it
/// arrives.
fn spawn_sender(
    address: String,
    sender: Device,
    conversation_id: String,
    prefix: &'static str,
    count: usize,
    acks: Arc<Mutex<Vec<Ack>>>,
) -> tokio::task::JoinHandle<SenderReport> {
    tokio::spawn(async move {
        let mut client = connect(&address).await;
        let mut report = SenderReport::default();
        for index in 0..count {
            let client_message_id = format!("{prefix}-{index}");
            let started = tokio::time::Instant::now();
            let (reply, retries) = send_until_acked(
                &mut client,
                &sender,
                &conversation_id,
                &client_message_id,
                BODY_BYTES,
                SEND_DEADLINE,
            )
            .await;
            report.retries += retries;
            report.slowest_send = report.slowest_send.max(started.elapsed());
            let ack = ack_of(&sender, &conversation_id, &client_message_id, reply.seq);
            acks.lock().expect("acks lock").push(ack);
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
        report
    })
}

fn ack_count(acks: &Arc<Mutex<Vec<Ack>>>) -> usize {
    acks.lock().expect("acks lock").len()
}

/// Waits until `acks` contains at least `count` acks.
async fn wait_for_acks(acks: &Arc<Mutex<Vec<Ack>>>, count: usize) {
    let deadline = tokio::time::Instant::now() + SEND_DEADLINE;
    while ack_count(acks) < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {count} sends were acknowledged within {SEND_DEADLINE:?}",
            ack_count(acks)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs alice's and bob's senders in the direct conversation and a reader
/// per device, and runs `disrupt` after the first acks. Then checks that
/// every device contains exactly the acknowledged messages. `disrupt` may
/// add acks of its own to the list it is given.
async fn check_no_loss_across<F, Disruption>(address: &str, chat: &mut Chat, disrupt: F)
where
    F: FnOnce(Arc<Mutex<Vec<Ack>>>) -> Disruption,
    Disruption: std::future::Future<Output = ()>,
{
    const PER_SENDER: usize = 60;
    let sessions = chat.open_sessions(address).await;
    let (targets, targets_watch) = tokio::sync::watch::channel(None);
    let readers: Vec<_> = sessions
        .into_iter()
        .map(|session| {
            let watch = targets_watch.clone();
            tokio::spawn(session.follow_until(watch, Duration::from_secs(100)))
        })
        .collect();

    let acks = Arc::new(Mutex::new(Vec::new()));
    let senders = [
        spawn_sender(
            address.into(),
            chat.alice_phone.clone(),
            chat.direct.clone(),
            "alice",
            PER_SENDER,
            acks.clone(),
        ),
        spawn_sender(
            address.into(),
            chat.bob.clone(),
            chat.direct.clone(),
            "bob",
            PER_SENDER,
            acks.clone(),
        ),
    ];
    wait_for_acks(&acks, 10).await;
    let acked_before = ack_count(&acks);
    disrupt(acks.clone()).await;
    let acked_during = ack_count(&acks) - acked_before;
    let sender_acks = acks
        .lock()
        .expect("acks lock")
        .iter()
        .filter(|ack| {
            ack.client_message_id.starts_with("alice") || ack.client_message_id.starts_with("bob")
        })
        .count();
    assert!(
        sender_acks < 2 * PER_SENDER,
        "sends continue after the disruption ends"
    );
    let mut reports = Vec::new();
    for sender in senders {
        reports.push(sender.await.expect("sender task"));
    }
    let acks = acks.lock().expect("acks lock").clone();
    assert!(
        acks.len() >= 2 * PER_SENDER,
        "every send is acknowledged in the end"
    );
    let direct_last = acks.iter().map(|ack| ack.seq).max().expect("acks");
    targets
        .send(Some(BTreeMap::from([(chat.direct.clone(), direct_last)])))
        .expect("readers are waiting");

    let mut reopens = Vec::new();
    for reader in readers {
        let session = reader.await.expect("reader task");
        assert_received_exactly(&session, &chat.direct, &acks);
        reopens.push((session.name.clone(), session.opens, session.repeats_dropped));
    }
    let history = full_history(&mut chat.client, &chat.bob, &chat.direct).await;
    assert_eq!(
        history,
        acks_of(&acks, &chat.direct),
        "the stored history is exactly the acknowledged messages"
    );
    eprintln!(
        "{} sends acknowledged ({acked_before} before the disruption, {acked_during} during \
         it); senders: {reports:?}; sessions (name, opens, repeats dropped): {reopens:?}",
        acks.len()
    );
}

/// Appends 5 messages from `sender` through the node API, as another
/// gateway would while this one is down, and records their acks.
async fn append_while_no_gateway(
    cluster: &ProcessCluster,
    sender: &Device,
    conversation_id: &str,
    acks: &Mutex<Vec<Ack>>,
) {
    let client = cluster.client();
    for index in 0..5 {
        let client_message_id = format!("no-gateway-{index}");
        let append = Append {
            conversation_id: conversation_id.into(),
            sender_user: sender.user_id.clone(),
            sender_device: sender.device_id.clone(),
            client_message_id: client_message_id.clone(),
            body: body_of(&client_message_id, BODY_BYTES),
            proposer_time_ms: 0,
        };
        let command = Command {
            version: COMMAND_VERSION,
            kind: Some(Kind::Append(append)),
        };
        let reply = client
            .propose(command, SEND_DEADLINE)
            .await
            .unwrap_or_else(|error| {
                panic!("append {client_message_id} through the nodes: {error}")
            });
        let outcome = reply.result.and_then(|result| result.outcome);
        let Some(Outcome::Appended(appended)) = outcome else {
            panic!("append {client_message_id} through the nodes returned {outcome:?}");
        };
        let ack = ack_of(sender, conversation_id, &client_message_id, appended.seq);
        acks.lock().expect("acks lock").push(ack);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_loses_or_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = start_cluster().await;
    let direct = direct_conversation_id("alice", "bob");
    let shard = shard_of_id(&direct, SHARDS);
    let leader = leader_of(&cluster, shard).await;
    // The gateway proposes through, and follows every shard's commit
    // stream on, the first node it is given. Listing the leader first makes
    // the kill also break the gateway's commit stream of that shard.
    let mut config = gateway_config(&cluster);
    config.nodes.rotate_left(leader);
    let gateway = InProcessGateway::start(config);
    let address = gateway.address.clone();
    let mut chat = set_up_chat(&address).await;
    assert_eq!(
        chat.direct, direct,
        "the direct conversation id is derived from its users"
    );
    assert_eq!(
        leader_of(&cluster, shard).await,
        leader,
        "shard {shard} kept its leader during the setup"
    );

    let cluster_ref = &mut cluster;
    let disrupt = |_| async move {
        eprintln!("killing node {} (leader of shard {shard})", leader + 1);
        cluster_ref.kill_nine(leader);
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster_ref.start_node(leader);
        eprintln!("restarted node {}", leader + 1);
    };
    check_no_loss_across(&address, &mut chat, disrupt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_restart_loses_or_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let cluster = start_cluster().await;
    let mut gateway = GatewayProcess::start(&cluster);
    let address = gateway.address.clone();
    let mut chat = set_up_chat(&address).await;

    let (gateway_ref, cluster_ref, bob) = (&mut gateway, &cluster, chat.bob.clone());
    let direct = chat.direct.clone();
    let disrupt = |acks: Arc<Mutex<Vec<Ack>>>| async move {
        let stopping = std::time::Instant::now();
        let exit = gateway_ref.terminate(Duration::from_secs(10));
        assert!(
            exit.is_some(),
            "the gateway exits within 10 s of SIGTERM while sessions are open; log in {}",
            gateway_ref.log_path().display()
        );
        eprintln!(
            "gateway exited {:?} after SIGTERM with {exit:?}",
            stopping.elapsed()
        );
        append_while_no_gateway(cluster_ref, &bob, &direct, &acks).await;
        gateway_ref.spawn();
        eprintln!("gateway restarted on {}", gateway_ref.address);
    };
    check_no_loss_across(&address, &mut chat, disrupt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_kill_nine_loses_or_duplicates_nothing() {
    let _serial = SERIAL.lock().await;
    let cluster = start_cluster().await;
    let mut gateway = GatewayProcess::start(&cluster);
    let address = gateway.address.clone();
    let mut chat = set_up_chat(&address).await;

    let (gateway_ref, cluster_ref, bob) = (&mut gateway, &cluster, chat.bob.clone());
    let direct = chat.direct.clone();
    let disrupt = |acks: Arc<Mutex<Vec<Ack>>>| async move {
        gateway_ref.kill_nine();
        append_while_no_gateway(cluster_ref, &bob, &direct, &acks).await;
        gateway_ref.spawn();
        eprintln!("gateway killed and restarted on {}", gateway_ref.address);
    };
    check_no_loss_across(&address, &mut chat, disrupt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_send_commits_once() {
    let _serial = SERIAL.lock().await;
    let cluster = start_cluster().await;
    let gateway = start_gateway(&cluster);
    let mut chat = set_up_chat(&gateway.address).await;
    let mut sessions = chat.open_sessions(&gateway.address).await;
    let (alice_phone, bob) = (chat.alice_phone.clone(), chat.bob.clone());
    let direct = chat.direct.clone();

    // The reply to the first send counts as lost, so the client retries.
    // The retry returns the original seq and reports a duplicate.
    let mut acks = vec![chat.send(&alice_phone, &direct, "once").await];
    let (retry, _) = send_until_acked(
        &mut chat.client,
        &alice_phone,
        &direct,
        "once",
        BODY_BYTES,
        SEND_DEADLINE,
    )
    .await;
    assert_eq!(retry.seq, acks[0].seq, "the retry returns the original seq");
    assert!(retry.duplicate, "the retry is reported as a duplicate");

    // A send whose call times out on the client is retried until acked.
    let request = SendRequest {
        conversation_id: direct.clone(),
        client_message_id: "timed-out".into(),
        body: body_of("timed-out", BODY_BYTES),
    };
    let mut timed_out = with_token(request, &bob.token);
    timed_out.set_timeout(Duration::from_millis(1));
    let first = chat.client.send(timed_out).await;
    eprintln!("send with a 1 ms deadline returned {first:?}");
    let (retry, retries) = send_until_acked(
        &mut chat.client,
        &bob,
        &direct,
        "timed-out",
        BODY_BYTES,
        SEND_DEADLINE,
    )
    .await;
    if let Ok(first) = &first {
        assert_eq!(
            retry.seq,
            first.get_ref().seq,
            "a retry after a successful first call returns its seq"
        );
    }
    eprintln!(
        "retry of timed-out: seq {}, duplicate {}, {retries} retries",
        retry.seq, retry.duplicate
    );
    acks.push(ack_of(&bob, &direct, "timed-out", retry.seq));
    acks.push(chat.send(&alice_phone, &direct, "after").await);

    let last = acks.last().expect("acks").seq;
    assert_eq!(last, 3, "three distinct client message ids take seqs 1..=3");
    for session in &mut sessions {
        session.wait_for_seq(&direct, last, EVENT_WAIT).await;
        assert_received_exactly(session, &direct, &acks);
        assert_eq!(
            session.repeats_dropped, 0,
            "{}: the gateway sent no message twice",
            session.name
        );
    }
    let history = full_history(&mut chat.client, &alice_phone, &direct).await;
    assert_eq!(
        history,
        acks_of(&acks, &direct),
        "the stored history contains each send once"
    );
}
