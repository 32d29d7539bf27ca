//! Tests of the history checkers. A clean run with retries, a cursor reset,
//! receipts and a Raft election yields no violations. Each kind of fault
//! added to it is reported under its own invariant, with a detail that names
//! the conversation, device, node or op involved.

use std::collections::BTreeSet;

use parley_core::checkers::{
    acknowledged_not_lost, check_all, gap_free, no_duplicates, order, raft_safety,
    receipts_monotonic, replicas_converge, timestamps_monotonic, Violation, INVARIANTS,
};
use parley_core::history::{
    DeliveredToDevice, DeviceCursorReset, Event, History, ObservedMessage, RaftObserved,
    ReceiptAcked, ReceiptKind, ReceiptObserved, ReplicaRead, SendAcked, SendFailed, SendInvoked,
};

/// A (user id, device id) pair.
type Device = (&'static str, &'static str);

const ALICE_PHONE: Device = ("alice", "alice-phone");
const BOB_PHONE: Device = ("bob", "bob-phone");
const BOB_LAPTOP: Device = ("bob", "bob-laptop");
const DEVICES: [Device; 3] = [ALICE_PHONE, BOB_PHONE, BOB_LAPTOP];

/// The subject of a read receipt: a user, with no device.
const BOB: Device = ("bob", "");
const ALICE: Device = ("alice", "");

const DIRECT: &str = "direct-alice-bob";
const GROUP: &str = "group-team";
const DIRECT_SHARD: u64 = 0;
const GROUP_SHARD: u64 = 1;
const NODES: [u64; 3] = [1, 2, 3];

/// One committed message of the clean run.
#[derive(Clone, Copy, Debug)]
struct Message {
    conversation_id: &'static str,
    seq: u64,
    sender: Device,
    client_message_id: &'static str,
    server_time_ms: u64,
}

const fn message(
    conversation_id: &'static str,
    seq: u64,
    sender: Device,
    client_message_id: &'static str,
    server_time_ms: u64,
) -> Message {
    Message {
        conversation_id,
        seq,
        sender,
        client_message_id,
        server_time_ms,
    }
}

/// The direct conversation's log. Op 3 (a-2) is retried, and op 4 (l-1)
/// fails ambiguously but commits.
const DIRECT_LOG: [Message; 4] = [
    message(DIRECT, 1, ALICE_PHONE, "a-1", 1_000),
    message(DIRECT, 2, BOB_PHONE, "b-1", 1_005),
    message(DIRECT, 3, ALICE_PHONE, "a-2", 1_010),
    message(DIRECT, 4, BOB_LAPTOP, "l-1", 1_020),
];

/// The group conversation's log. Seqs 1 and 2 share a server time, and op 7
/// (l-2, seq 3) fails ambiguously, commits and is never delivered.
const GROUP_LOG: [Message; 3] = [
    message(GROUP, 1, BOB_PHONE, "b-2", 1_030),
    message(GROUP, 2, ALICE_PHONE, "a-3", 1_030),
    message(GROUP, 3, BOB_LAPTOP, "l-2", 1_040),
];

/// Builds a history and stamps each event 10 ms after the previous one.
#[derive(Default)]
struct Recorder {
    history: History,
    now_ms: u64,
}

impl Recorder {
    fn tick(&mut self) -> u64 {
        self.now_ms += 10;
        self.now_ms
    }

    fn invoke(&mut self, op: u64, sent: Message) {
        let at_ms = self.tick();
        self.history.push(SendInvoked {
            op,
            conversation_id: sent.conversation_id.to_owned(),
            sender_user: sent.sender.0.to_owned(),
            sender_device: sent.sender.1.to_owned(),
            client_message_id: sent.client_message_id.to_owned(),
            at_ms,
        });
    }

    fn ack(&mut self, op: u64, sent: Message, duplicate: bool) {
        let at_ms = self.tick();
        self.history.push(SendAcked {
            op,
            conversation_id: sent.conversation_id.to_owned(),
            client_message_id: sent.client_message_id.to_owned(),
            seq: sent.seq,
            server_time_ms: sent.server_time_ms,
            duplicate,
            at_ms,
        });
    }

    fn send(&mut self, op: u64, sent: Message) {
        self.invoke(op, sent);
        self.ack(op, sent, false);
    }

    fn fail(&mut self, op: u64, ambiguous: bool) {
        let at_ms = self.tick();
        self.history.push(SendFailed {
            op,
            ambiguous,
            at_ms,
        });
    }

    fn deliver(&mut self, receiver: Device, sent: Message) {
        let at_ms = self.tick();
        self.history.push(DeliveredToDevice {
            user_id: receiver.0.to_owned(),
            device_id: receiver.1.to_owned(),
            conversation_id: sent.conversation_id.to_owned(),
            seq: sent.seq,
            sender_user: sent.sender.0.to_owned(),
            sender_device: sent.sender.1.to_owned(),
            client_message_id: sent.client_message_id.to_owned(),
            server_time_ms: sent.server_time_ms,
            at_ms,
        });
    }

    fn deliver_to_all(&mut self, sent: Message) {
        for device in DEVICES {
            self.deliver(device, sent);
        }
    }

    fn reset(&mut self, device: Device, conversation_id: &str, seq: u64) {
        let at_ms = self.tick();
        self.history.push(DeviceCursorReset {
            user_id: device.0.to_owned(),
            device_id: device.1.to_owned(),
            conversation_id: conversation_id.to_owned(),
            seq,
            at_ms,
        });
    }

    fn observe_receipt(
        &mut self,
        observer: Device,
        conversation_id: &str,
        kind: ReceiptKind,
        subject: Device,
        seq: u64,
    ) {
        let at_ms = self.tick();
        self.history.push(ReceiptObserved {
            observer_user: observer.0.to_owned(),
            observer_device: observer.1.to_owned(),
            conversation_id: conversation_id.to_owned(),
            kind,
            subject_user: subject.0.to_owned(),
            subject_device: subject.1.to_owned(),
            seq,
            at_ms,
        });
    }

    fn ack_receipt(
        &mut self,
        conversation_id: &str,
        kind: ReceiptKind,
        device: Device,
        watermark: u64,
    ) {
        let at_ms = self.tick();
        self.history.push(ReceiptAcked {
            conversation_id: conversation_id.to_owned(),
            kind,
            user_id: device.0.to_owned(),
            device_id: device.1.to_owned(),
            watermark,
            at_ms,
        });
    }

    fn read_replica(&mut self, node_id: u64, shard_id: u64, log: &[Message]) {
        let Some(first) = log.first() else {
            return;
        };
        let at_ms = self.tick();
        self.history.push(ReplicaRead {
            node_id,
            shard_id,
            conversation_id: first.conversation_id.to_owned(),
            messages: log.iter().map(|sent| observed(*sent)).collect(),
            at_ms,
        });
    }

    fn observe_raft(
        &mut self,
        node_id: u64,
        shard_id: u64,
        term: u64,
        leader: Option<u64>,
        committed: &[(u64, u64)],
    ) {
        let at_ms = self.tick();
        self.history.push(RaftObserved {
            node_id,
            shard_id,
            term,
            leader,
            committed: committed.to_vec(),
            at_ms,
        });
    }
}

fn observed(sent: Message) -> ObservedMessage {
    ObservedMessage {
        seq: sent.seq,
        sender_user: sent.sender.0.to_owned(),
        sender_device: sent.sender.1.to_owned(),
        client_message_id: sent.client_message_id.to_owned(),
        server_time_ms: sent.server_time_ms,
    }
}

/// Returns the recorder of a run with no faults. It has two conversations,
/// three devices, a retried send with a duplicate ack and two ambiguous
/// failures that committed. It also has a cursor reset, receipts that move
/// forward, an election on shard 0 and identical reads of three replicas.
fn clean_recorder() -> Recorder {
    let mut recorder = Recorder::default();
    for node_id in NODES {
        recorder.observe_raft(node_id, DIRECT_SHARD, 1, Some(1), &[(1, 1)]);
        recorder.observe_raft(node_id, GROUP_SHARD, 1, Some(3), &[(1, 1)]);
    }
    for device in DEVICES {
        recorder.reset(device, DIRECT, 0);
        recorder.reset(device, GROUP, 0);
    }

    record_direct_conversation(&mut recorder);
    record_group_conversation(&mut recorder);

    for node_id in NODES {
        recorder.read_replica(node_id, DIRECT_SHARD, &DIRECT_LOG);
        recorder.read_replica(node_id, GROUP_SHARD, &GROUP_LOG);
    }
    for node_id in NODES {
        let direct_committed = [(1, 1), (2, 1), (3, 2), (4, 2), (5, 2)];
        recorder.observe_raft(node_id, DIRECT_SHARD, 2, Some(2), &direct_committed);
        let group_committed = [(1, 1), (2, 1), (3, 1), (4, 1)];
        recorder.observe_raft(node_id, GROUP_SHARD, 1, Some(3), &group_committed);
    }
    recorder
}

fn record_direct_conversation(recorder: &mut Recorder) {
    let [a1, b1, a2, l1] = DIRECT_LOG;

    recorder.send(1, a1);
    recorder.deliver_to_all(a1);
    recorder.send(2, b1);
    recorder.deliver_to_all(b1);
    recorder.reset(BOB_LAPTOP, DIRECT, 2);

    recorder.invoke(3, a2);
    recorder.invoke(3, a2);
    recorder.ack(3, a2, false);
    recorder.ack(3, a2, true);
    recorder.deliver_to_all(a2);
    recorder.observe_receipt(ALICE_PHONE, DIRECT, ReceiptKind::Delivered, BOB_PHONE, 3);

    recorder.observe_raft(2, DIRECT_SHARD, 2, None, &[(1, 1), (2, 1)]);
    for node_id in NODES {
        recorder.observe_raft(node_id, DIRECT_SHARD, 2, Some(2), &[(2, 1), (3, 2)]);
    }

    recorder.invoke(4, l1);
    recorder.fail(4, true);
    recorder.deliver_to_all(l1);

    recorder.observe_receipt(ALICE_PHONE, DIRECT, ReceiptKind::Delivered, BOB_PHONE, 4);
    recorder.observe_receipt(ALICE_PHONE, DIRECT, ReceiptKind::Delivered, BOB_LAPTOP, 4);
    recorder.ack_receipt(DIRECT, ReceiptKind::Delivered, BOB_PHONE, 4);
    recorder.ack_receipt(DIRECT, ReceiptKind::Read, BOB_PHONE, 3);
    recorder.observe_receipt(ALICE_PHONE, DIRECT, ReceiptKind::Read, BOB, 3);
    recorder.ack_receipt(DIRECT, ReceiptKind::Read, BOB_LAPTOP, 4);
    recorder.observe_receipt(ALICE_PHONE, DIRECT, ReceiptKind::Read, BOB, 4);
    recorder.ack_receipt(DIRECT, ReceiptKind::Read, ALICE_PHONE, 4);
    recorder.observe_receipt(BOB_PHONE, DIRECT, ReceiptKind::Read, ALICE, 4);
}

fn record_group_conversation(recorder: &mut Recorder) {
    let [b2, a3, l2] = GROUP_LOG;

    recorder.send(5, b2);
    recorder.deliver_to_all(b2);
    recorder.observe_receipt(BOB_LAPTOP, GROUP, ReceiptKind::Delivered, ALICE_PHONE, 1);
    recorder.send(6, a3);
    recorder.deliver_to_all(a3);
    recorder.observe_receipt(BOB_LAPTOP, GROUP, ReceiptKind::Delivered, ALICE_PHONE, 2);
    recorder.ack_receipt(GROUP, ReceiptKind::Delivered, ALICE_PHONE, 2);
    recorder.ack_receipt(GROUP, ReceiptKind::Read, BOB_PHONE, 2);

    recorder.invoke(7, l2);
    recorder.fail(7, true);
}

fn clean_history() -> History {
    clean_recorder().history
}

/// Returns the invariant names among `violations`.
fn names(violations: &[Violation]) -> BTreeSet<&'static str> {
    violations
        .iter()
        .map(|violation| violation.invariant)
        .collect()
}

/// Asserts that `check_all` reports only `invariant`, and that one of its
/// violations mentions every one of `mentions`.
fn assert_reported_only(history: &History, invariant: &str, mentions: &[&str]) {
    let violations = check_all(history);
    assert_eq!(
        names(&violations),
        BTreeSet::from([invariant]),
        "violations: {violations:#?}"
    );
    assert_mentioned(&violations, invariant, mentions);
}

/// Asserts that one violation of `invariant` mentions every one of
/// `mentions`.
fn assert_mentioned(violations: &[Violation], invariant: &str, mentions: &[&str]) {
    let mentioned = violations.iter().any(|violation| {
        violation.invariant == invariant
            && mentions
                .iter()
                .all(|mention| violation.detail.contains(mention))
    });
    assert!(
        mentioned,
        "no {invariant} violation mentions all of {mentions:?}: {violations:#?}"
    );
}

/// Returns `history` with `update` applied to the messages of every replica
/// read of `conversation_id` on one of `nodes`.
fn with_replica_messages(
    history: History,
    conversation_id: &str,
    nodes: &[u64],
    update: impl Fn(&mut Vec<ObservedMessage>),
) -> History {
    history
        .into_events()
        .into_iter()
        .map(|mut event| {
            if let Event::ReplicaRead(read) = &mut event {
                if read.conversation_id == conversation_id && nodes.contains(&read.node_id) {
                    update(&mut read.messages);
                }
            }
            event
        })
        .collect()
}

/// Returns `history` with the server time of (`conversation_id`, `seq`) set
/// to `server_time_ms` in every ack, delivery and replica read.
fn with_server_time(
    history: History,
    conversation_id: &str,
    seq: u64,
    server_time_ms: u64,
) -> History {
    history
        .into_events()
        .into_iter()
        .map(|mut event| {
            match &mut event {
                Event::SendAcked(ack)
                    if ack.conversation_id == conversation_id && ack.seq == seq =>
                {
                    ack.server_time_ms = server_time_ms;
                }
                Event::DeliveredToDevice(delivery)
                    if delivery.conversation_id == conversation_id && delivery.seq == seq =>
                {
                    delivery.server_time_ms = server_time_ms;
                }
                Event::ReplicaRead(read) if read.conversation_id == conversation_id => {
                    for stored in &mut read.messages {
                        if stored.seq == seq {
                            stored.server_time_ms = server_time_ms;
                        }
                    }
                }
                _ => {}
            }
            event
        })
        .collect()
}

#[test]
fn clean_history_has_no_violations() {
    let history = clean_history();

    let violations = check_all(&history);

    assert_eq!(violations, Vec::new());
}

#[test]
fn empty_history_has_no_violations() {
    assert_eq!(check_all(&History::new()), Vec::new());
}

#[test]
fn invariants_list_every_checker_once() {
    let expected = [
        order::NAME,
        gap_free::NAME,
        acknowledged_not_lost::NAME,
        no_duplicates::NAME,
        receipts_monotonic::NAME,
        replicas_converge::NAME,
        timestamps_monotonic::NAME,
        raft_safety::NAME,
    ];

    assert_eq!(INVARIANTS, expected);
    assert_eq!(INVARIANTS.iter().collect::<BTreeSet<_>>().len(), 8);
}

#[test]
fn devices_disagreeing_on_seq_are_reported() {
    let mut recorder = clean_recorder();
    recorder.reset(BOB_LAPTOP, DIRECT, 2);
    let intruder = message(DIRECT, 3, ALICE_PHONE, "intruder", 1_010);
    recorder.deliver(BOB_LAPTOP, intruder);

    assert_reported_only(
        &recorder.history,
        order::NAME,
        &[DIRECT, "seq 3", "bob-laptop", "intruder", "a-2"],
    );
}

#[test]
fn out_of_order_delivery_is_reported() {
    let mut recorder = clean_recorder();
    recorder.reset(ALICE_PHONE, GROUP, 0);
    recorder.deliver(ALICE_PHONE, GROUP_LOG[1]);
    recorder.deliver(ALICE_PHONE, GROUP_LOG[0]);

    let violations = check_all(&recorder.history);

    assert_eq!(
        names(&violations),
        BTreeSet::from([order::NAME, gap_free::NAME]),
        "violations: {violations:#?}"
    );
    assert_mentioned(
        &violations,
        order::NAME,
        &[GROUP, "alice-phone", "received seq 1 after seq 2"],
    );
}

#[test]
fn delivered_seq_missing_from_replicas_is_reported() {
    let mut recorder = clean_recorder();
    recorder.deliver(ALICE_PHONE, GROUP_LOG[2]);
    let lost = message(GROUP, 4, BOB_PHONE, "b-3", 1_050);
    recorder.deliver(ALICE_PHONE, lost);

    assert_reported_only(
        &recorder.history,
        order::NAME,
        &[GROUP, "node 2", "seq 4", "alice-phone"],
    );
}

#[test]
fn gap_in_device_deliveries_is_reported() {
    let mut recorder = clean_recorder();
    recorder.reset(ALICE_PHONE, GROUP, 0);
    recorder.deliver(ALICE_PHONE, GROUP_LOG[0]);
    recorder.deliver(ALICE_PHONE, GROUP_LOG[2]);

    assert_reported_only(
        &recorder.history,
        gap_free::NAME,
        &[GROUP, "alice-phone", "received seq 3", "seq 2 was expected"],
    );
}

#[test]
fn gap_in_replica_read_is_reported() {
    let history = with_replica_messages(clean_history(), GROUP, &NODES, |messages| {
        messages[2].seq = 4;
    });

    assert_reported_only(
        &history,
        gap_free::NAME,
        &[GROUP, "node 1", "seq 4 where seq 3 belongs"],
    );
}

#[test]
fn acknowledged_send_missing_from_replicas_is_reported() {
    let mut recorder = clean_recorder();
    let lost = message(DIRECT, 5, ALICE_PHONE, "a-4", 1_050);
    recorder.send(8, lost);

    let violations = check_all(&recorder.history);

    assert_reported_only(
        &recorder.history,
        acknowledged_not_lost::NAME,
        &[DIRECT, "seq 5", "op 8", "a-4", "node 3"],
    );
    assert_eq!(violations.len(), 3, "one per replica: {violations:#?}");
}

#[test]
fn unread_acknowledged_conversation_is_reported() {
    let history: History = clean_history()
        .into_events()
        .into_iter()
        .filter(|event| !matches!(event, Event::ReplicaRead(read) if read.conversation_id == GROUP))
        .collect();

    assert_reported_only(
        &history,
        acknowledged_not_lost::NAME,
        &[GROUP, "op 5", "no replica read"],
    );
}

#[test]
fn duplicate_in_replica_is_reported() {
    let history = with_replica_messages(clean_history(), GROUP, &NODES, |messages| {
        let repeated = message(GROUP, 4, BOB_LAPTOP, "l-2", 1_050);
        messages.push(observed(repeated));
    });

    assert_reported_only(
        &history,
        no_duplicates::NAME,
        &[GROUP, "node 1", "l-2", "seq 3", "seq 4"],
    );
}

#[test]
fn op_acknowledged_at_two_seqs_is_reported() {
    let mut recorder = clean_recorder();
    let appended_again = message(GROUP, 4, ALICE_PHONE, "a-3", 1_050);
    recorder.invoke(6, appended_again);
    recorder.ack(6, appended_again, false);
    let history = with_replica_messages(recorder.history, GROUP, &NODES, |messages| {
        messages.push(observed(appended_again));
    });

    assert_reported_only(
        &history,
        no_duplicates::NAME,
        &["op 6", GROUP, "seq 2", "seq 4"],
    );
}

#[test]
fn device_receiving_message_twice_is_reported() {
    let mut recorder = clean_recorder();
    let repeated = message(GROUP, 4, BOB_LAPTOP, "l-2", 1_050);
    recorder.deliver(ALICE_PHONE, GROUP_LOG[2]);
    recorder.deliver(ALICE_PHONE, repeated);
    let history = with_replica_messages(recorder.history, GROUP, &NODES, |messages| {
        messages.push(observed(repeated));
    });

    assert_reported_only(
        &history,
        no_duplicates::NAME,
        &[GROUP, "alice-phone", "received client message id l-2"],
    );
}

#[test]
fn redelivery_at_cursor_is_reported() {
    let mut recorder = clean_recorder();
    recorder.reset(BOB_PHONE, DIRECT, 3);
    recorder.deliver(BOB_PHONE, DIRECT_LOG[2]);

    assert_reported_only(
        &recorder.history,
        no_duplicates::NAME,
        &[DIRECT, "bob-phone", "seq 3", "cursor 3"],
    );
}

#[test]
fn observed_receipt_going_backwards_is_reported() {
    let mut recorder = clean_recorder();
    recorder.observe_receipt(ALICE_PHONE, DIRECT, ReceiptKind::Delivered, BOB_PHONE, 2);

    assert_reported_only(
        &recorder.history,
        receipts_monotonic::NAME,
        &[DIRECT, "alice-phone", "bob-phone", "from seq 4 to seq 2"],
    );
}

#[test]
fn shared_device_id_receipts_stay_apart() {
    let mut recorder = clean_recorder();
    let (alice_cli, bob_cli) = (("alice", "cli"), ("bob", "cli"));

    recorder.ack_receipt(DIRECT, ReceiptKind::Delivered, alice_cli, 4);
    recorder.observe_receipt(BOB_LAPTOP, DIRECT, ReceiptKind::Delivered, alice_cli, 4);
    recorder.ack_receipt(DIRECT, ReceiptKind::Delivered, bob_cli, 1);
    recorder.observe_receipt(BOB_LAPTOP, DIRECT, ReceiptKind::Delivered, bob_cli, 1);

    assert_eq!(check_all(&recorder.history), Vec::new());
}

#[test]
fn acknowledged_watermark_going_backwards_is_reported() {
    let mut recorder = clean_recorder();
    recorder.ack_receipt(DIRECT, ReceiptKind::Read, BOB_LAPTOP, 3);

    assert_reported_only(
        &recorder.history,
        receipts_monotonic::NAME,
        &[
            DIRECT,
            "read watermark",
            "bob-laptop",
            "from seq 4 to seq 3",
        ],
    );
}

#[test]
fn receipt_beyond_committed_seq_is_reported() {
    let mut recorder = clean_recorder();
    recorder.observe_receipt(BOB_PHONE, DIRECT, ReceiptKind::Read, ALICE, 9);

    assert_reported_only(
        &recorder.history,
        receipts_monotonic::NAME,
        &[
            DIRECT,
            "bob-phone",
            "read receipt of user alice",
            "seq 9",
            "seq 4",
        ],
    );
}

#[test]
fn receipt_before_its_commit_is_reported() {
    let mut recorder = Recorder::default();
    recorder.ack_receipt(GROUP, ReceiptKind::Delivered, BOB_LAPTOP, 1);
    let mut history = recorder.history;
    history.extend(clean_history().into_events());

    assert_reported_only(
        &history,
        receipts_monotonic::NAME,
        &[GROUP, "bob-laptop", "seq 1", "beyond seq 0"],
    );
}

#[test]
fn lagging_replica_is_reported() {
    let history = with_replica_messages(clean_history(), GROUP, &[3], |messages| {
        messages.pop();
    });

    assert_reported_only(
        &history,
        replicas_converge::NAME,
        &[GROUP, "node 3", "node 1", "position 3", "l-2"],
    );
}

#[test]
fn replica_with_other_message_is_reported() {
    let history = with_replica_messages(clean_history(), DIRECT, &[2], |messages| {
        messages[1].client_message_id = "b-forged".to_owned();
    });

    let violations = check_all(&history);

    assert_mentioned(
        &violations,
        replicas_converge::NAME,
        &[DIRECT, "node 2", "position 2", "b-forged"],
    );
    assert_mentioned(&violations, order::NAME, &[DIRECT, "seq 2", "b-forged"]);
    assert_mentioned(
        &violations,
        acknowledged_not_lost::NAME,
        &[DIRECT, "seq 2", "op 2", "node 2"],
    );
}

#[test]
fn decreasing_server_time_is_reported() {
    let history = with_server_time(clean_history(), GROUP, 2, 1_020);

    assert_reported_only(
        &history,
        timestamps_monotonic::NAME,
        &[GROUP, "seq 2", "1020 ms", "seq 1", "1030 ms"],
    );
}

#[test]
fn conflicting_server_times_for_seq_are_reported() {
    let mut recorder = clean_recorder();
    recorder.reset(BOB_LAPTOP, DIRECT, 2);
    let retimed = message(DIRECT, 3, ALICE_PHONE, "a-2", 1_011);
    recorder.deliver(BOB_LAPTOP, retimed);

    assert_reported_only(
        &recorder.history,
        timestamps_monotonic::NAME,
        &[DIRECT, "seq 3", "bob-laptop", "1011 ms", "1010 ms"],
    );
}

#[test]
fn two_leaders_in_one_term_are_reported() {
    let mut recorder = clean_recorder();
    recorder.observe_raft(3, DIRECT_SHARD, 2, Some(3), &[]);

    assert_reported_only(
        &recorder.history,
        raft_safety::NAME,
        &["shard 0 term 2", "node 2", "node 3"],
    );
}

#[test]
fn committed_index_with_two_terms_is_reported() {
    let mut recorder = clean_recorder();
    recorder.observe_raft(3, DIRECT_SHARD, 2, Some(2), &[(3, 1)]);

    assert_reported_only(
        &recorder.history,
        raft_safety::NAME,
        &["shard 0 index 3", "term 1", "term 2", "nodes 3"],
    );
}

#[test]
fn acknowledgement_without_invocation_matches_by_client_id() {
    let mut recorder = clean_recorder();
    recorder.ack(99, DIRECT_LOG[1], true);

    assert_eq!(check_all(&recorder.history), Vec::new());
}

#[test]
fn violations_are_grouped_and_sorted() {
    let mut recorder = clean_recorder();
    recorder.observe_raft(3, DIRECT_SHARD, 2, Some(3), &[(3, 1)]);
    recorder.observe_receipt(ALICE_PHONE, DIRECT, ReceiptKind::Delivered, BOB_PHONE, 2);
    recorder.reset(ALICE_PHONE, GROUP, 0);
    recorder.deliver(ALICE_PHONE, GROUP_LOG[2]);
    recorder.deliver(ALICE_PHONE, GROUP_LOG[0]);

    let violations = check_all(&recorder.history);

    let positions: Vec<usize> = violations
        .iter()
        .filter_map(|violation| {
            INVARIANTS
                .iter()
                .position(|name| *name == violation.invariant)
        })
        .collect();
    assert_eq!(positions.len(), violations.len());
    assert!(
        positions.is_sorted(),
        "not in INVARIANTS order: {violations:#?}"
    );
    for name in INVARIANTS {
        let group: Vec<&Violation> = violations
            .iter()
            .filter(|violation| violation.invariant == *name)
            .collect();
        assert!(group.is_sorted(), "{name} not sorted: {violations:#?}");
    }
    assert_eq!(names(&violations).len(), 4, "violations: {violations:#?}");
    assert_eq!(check_all(&recorder.history), violations);
}

#[test]
fn malformed_history_does_not_panic() {
    let mut recorder = Recorder::default();
    let extreme = message("", u64::MAX, ("", ""), "", u64::MAX);
    let zero = message("", 0, ("", ""), "", 0);
    recorder.reset(("", ""), "", u64::MAX);
    recorder.deliver(("", ""), extreme);
    recorder.deliver(("", ""), zero);
    recorder.deliver(("", ""), extreme);
    recorder.ack(u64::MAX, extreme, true);
    recorder.ack(u64::MAX, zero, false);
    recorder.observe_receipt(("", ""), "", ReceiptKind::Read, ("", ""), u64::MAX);
    recorder.ack_receipt("", ReceiptKind::Delivered, ("", ""), 0);
    recorder.read_replica(u64::MAX, u64::MAX, &[extreme, zero, extreme]);
    recorder.history.push(ReplicaRead {
        node_id: 0,
        shard_id: 0,
        conversation_id: String::new(),
        messages: Vec::new(),
        at_ms: 0,
    });
    recorder.observe_raft(
        0,
        0,
        u64::MAX,
        Some(u64::MAX),
        &[(u64::MAX, 0), (u64::MAX, 1)],
    );

    let violations = check_all(&recorder.history);

    assert!(!violations.is_empty());
    assert_eq!(check_all(&recorder.history), violations);
}
