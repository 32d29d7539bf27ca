//! The invariant checkers that judge a recorded `History`, one invariant per
//! module, shared by the madsim simulation and the chaos tool.
//!
//! Each module exposes `NAME`, the invariant's stable name, and
//! `check(&History) -> Vec<Violation>`. This module also owns what several
//! checkers share, such as the replay of each device's delivery stream. The
//! replay classifies every delivery once, so a skipped seq goes to `gap_free`,
//! an out-of-order seq to `order` and a repeated seq to `no_duplicates`.
//! Checkers are pure functions of the history, run in time roughly linear in
//! its size, iterate only ordered collections and return their violations
//! sorted.

pub mod acknowledged_not_lost;
pub mod gap_free;
pub mod no_duplicates;
pub mod order;
pub mod raft_safety;
pub mod receipts_monotonic;
pub mod replicas_converge;
pub mod timestamps_monotonic;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::history::{
    DeliveredToDevice, Event, History, ObservedMessage, ReplicaRead, SendAcked, SendInvoked,
};

/// One breach of an invariant found in a history.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Violation {
    /// The invariant's stable name, one of `INVARIANTS`.
    pub invariant: &'static str,
    /// A description of the breach that names the conversation, seq, device,
    /// node or op involved.
    pub detail: String,
}

/// The names of all invariants, in the order `check_all` runs them.
pub const INVARIANTS: &[&str] = &[
    order::NAME,
    gap_free::NAME,
    acknowledged_not_lost::NAME,
    no_duplicates::NAME,
    receipts_monotonic::NAME,
    replicas_converge::NAME,
    timestamps_monotonic::NAME,
    raft_safety::NAME,
];

/// Runs every checker on `history`. Returns the violations grouped in
/// `INVARIANTS` order and sorted within each invariant, so one history always
/// gives the same list.
pub fn check_all(history: &History) -> Vec<Violation> {
    let checks: [fn(&History) -> Vec<Violation>; 8] = [
        order::check,
        gap_free::check,
        acknowledged_not_lost::check,
        no_duplicates::check,
        receipts_monotonic::check,
        replicas_converge::check,
        timestamps_monotonic::check,
        raft_safety::check,
    ];

    checks.iter().flat_map(|check| check(history)).collect()
}

fn violation(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// Sorts `violations` and drops exact repeats.
fn sorted(mut violations: Vec<Violation>) -> Vec<Violation> {
    violations.sort();
    violations.dedup();
    violations
}

fn send_acks(history: &History) -> impl Iterator<Item = &SendAcked> {
    history.events().iter().filter_map(|event| match event {
        Event::SendAcked(ack) => Some(ack),
        _ => None,
    })
}

fn deliveries(history: &History) -> impl Iterator<Item = &DeliveredToDevice> {
    history.events().iter().filter_map(|event| match event {
        Event::DeliveredToDevice(delivery) => Some(delivery),
        _ => None,
    })
}

fn replica_reads(history: &History) -> impl Iterator<Item = &ReplicaRead> {
    history.events().iter().filter_map(|event| match event {
        Event::ReplicaRead(read) => Some(read),
        _ => None,
    })
}

/// Returns the first `SendInvoked` of each op, which names the sender that a
/// `SendAcked` does not carry.
fn invocations_by_op(history: &History) -> BTreeMap<u64, &SendInvoked> {
    let mut invocations = BTreeMap::new();
    for event in history.events() {
        if let Event::SendInvoked(invoked) = event {
            invocations.entry(invoked.op).or_insert(invoked);
        }
    }
    invocations
}

/// A user and one of its devices, displayed as `user U device D`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Device<'a> {
    user_id: &'a str,
    device_id: &'a str,
}

impl fmt::Display for Device<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "user {} device {}", self.user_id, self.device_id)
    }
}

/// The identity of a message: the dedup key of an append, which is the
/// client message id per conversation, sender user and sender device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct MessageKey<'a> {
    sender: Device<'a>,
    client_message_id: &'a str,
}

impl<'a> MessageKey<'a> {
    fn of_delivery(delivery: &'a DeliveredToDevice) -> Self {
        Self {
            sender: Device {
                user_id: &delivery.sender_user,
                device_id: &delivery.sender_device,
            },
            client_message_id: &delivery.client_message_id,
        }
    }

    fn of_stored(message: &'a ObservedMessage) -> Self {
        Self {
            sender: Device {
                user_id: &message.sender_user,
                device_id: &message.sender_device,
            },
            client_message_id: &message.client_message_id,
        }
    }
}

impl fmt::Display for MessageKey<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "client message id {} from {}",
            self.client_message_id, self.sender
        )
    }
}

/// The event that reported a seq's message or server time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source<'a> {
    Ack { op: u64 },
    Delivery(Device<'a>),
    Replica { node_id: u64, shard_id: u64 },
}

impl<'a> Source<'a> {
    fn of_delivery(delivery: &'a DeliveredToDevice) -> Self {
        Source::Delivery(Device {
            user_id: &delivery.user_id,
            device_id: &delivery.device_id,
        })
    }

    fn of_replica(read: &ReplicaRead) -> Self {
        Source::Replica {
            node_id: read.node_id,
            shard_id: read.shard_id,
        }
    }
}

impl fmt::Display for Source<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Ack { op } => write!(formatter, "the SendAcked of op {op}"),
            Source::Delivery(device) => write!(formatter, "the delivery to {device}"),
            Source::Replica { node_id, shard_id } => {
                write!(
                    formatter,
                    "the replica read of node {node_id} (shard {shard_id})"
                )
            }
        }
    }
}

/// The position of one delivery in its device's stream of one conversation,
/// relative to the last cursor reset of that stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DeliveryStep {
    /// The first delivery of a stream that had no cursor reset, so there is
    /// no expected seq to compare with.
    Start,
    /// The expected seq: cursor + 1, or the highest seq so far + 1.
    Next,
    /// A seq beyond the expected one, so `expected` and later were skipped.
    Gap { expected: u64 },
    /// A seq above the cursor that the stream skipped earlier and now
    /// receives after the higher seq `highest`.
    OutOfOrder { highest: u64 },
    /// A seq at or below the cursor, which the device already has.
    AtOrBelowCursor { cursor: u64 },
    /// A seq that this session already received.
    Repeated,
}

/// One delivery and where it falls in its stream.
struct ClassifiedDelivery<'a> {
    delivery: &'a DeliveredToDevice,
    step: DeliveryStep,
}

impl<'a> ClassifiedDelivery<'a> {
    fn receiver(&self) -> Device<'a> {
        Device {
            user_id: &self.delivery.user_id,
            device_id: &self.delivery.device_id,
        }
    }
}

/// The state of one device's stream of one conversation since its last
/// cursor reset.
#[derive(Default)]
struct Session {
    cursor: Option<u64>,
    highest: Option<u64>,
    received: BTreeSet<u64>,
}

impl Session {
    fn starting_at(cursor: u64) -> Self {
        Self {
            cursor: Some(cursor),
            ..Self::default()
        }
    }

    fn receive(&mut self, seq: u64) -> DeliveryStep {
        let step = self.classify(seq);
        if matches!(
            step,
            DeliveryStep::AtOrBelowCursor { .. } | DeliveryStep::Repeated
        ) {
            return step;
        }

        self.received.insert(seq);
        self.highest = Some(self.highest.map_or(seq, |highest| highest.max(seq)));
        step
    }

    fn classify(&self, seq: u64) -> DeliveryStep {
        if let Some(cursor) = self.cursor.filter(|cursor| seq <= *cursor) {
            return DeliveryStep::AtOrBelowCursor { cursor };
        }
        if self.received.contains(&seq) {
            return DeliveryStep::Repeated;
        }

        let Some(last) = self.highest.or(self.cursor) else {
            return DeliveryStep::Start;
        };
        let expected = last.saturating_add(1);
        if seq == expected {
            DeliveryStep::Next
        } else if seq > expected {
            DeliveryStep::Gap { expected }
        } else {
            DeliveryStep::OutOfOrder { highest: last }
        }
    }
}

/// Replays every device's delivery streams, one per (user, device,
/// conversation), and classifies each delivery in history order.
///
/// A stream with no `DeviceCursorReset` before its first delivery starts at
/// that delivery, so a gap before it cannot be seen.
fn classify_deliveries(history: &History) -> Vec<ClassifiedDelivery<'_>> {
    let mut sessions: BTreeMap<(Device<'_>, &str), Session> = BTreeMap::new();
    let mut classified = Vec::new();

    for event in history.events() {
        match event {
            Event::DeviceCursorReset(reset) => {
                let device = Device {
                    user_id: &reset.user_id,
                    device_id: &reset.device_id,
                };
                let key = (device, reset.conversation_id.as_str());
                sessions.insert(key, Session::starting_at(reset.seq));
            }
            Event::DeliveredToDevice(delivery) => {
                let device = Device {
                    user_id: &delivery.user_id,
                    device_id: &delivery.device_id,
                };
                let key = (device, delivery.conversation_id.as_str());
                let step = sessions.entry(key).or_default().receive(delivery.seq);
                classified.push(ClassifiedDelivery { delivery, step });
            }
            _ => {}
        }
    }

    classified
}
