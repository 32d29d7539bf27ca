//! The `order` invariant: each conversation has one sequence of messages,
//! and each device sees a subsequence of it.
//!
//! Checks that every send acknowledgement, device delivery and final replica
//! read that names a seq names the same message at that seq, that every final
//! replica read contains each seq a device received, and that each device
//! receives the seqs after its cursor in increasing order.
//!
//! A message is identified by its sender and client message id. A `SendAcked`
//! gets its sender from the `SendInvoked` of its op, and without one only its
//! client message id is compared. Skipped seqs are left to `gap_free` and
//! repeated seqs to `no_duplicates`.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use super::{
    classify_deliveries, deliveries, invocations_by_op, replica_reads, sorted, violation,
    ClassifiedDelivery, DeliveryStep, Device, Source, Violation,
};
use crate::history::{Event, History, ReplicaRead, SendInvoked};

pub const NAME: &str = "order";

pub fn check(history: &History) -> Vec<Violation> {
    let mut violations = check_one_message_per_seq(history);
    violations.extend(check_replicas_contain_deliveries(history));
    violations.extend(
        classify_deliveries(history)
            .iter()
            .filter_map(report_out_of_order),
    );
    sorted(violations)
}

/// A source's statement that one message is at one seq.
#[derive(Clone, Copy)]
struct Claim<'a> {
    client_message_id: &'a str,
    /// `None` for an acknowledgement whose op has no `SendInvoked`.
    sender: Option<Device<'a>>,
    source: Source<'a>,
}

impl Claim<'_> {
    fn agrees_with(&self, other: &Claim<'_>) -> bool {
        let same_sender = match (self.sender, other.sender) {
            (Some(sender), Some(other_sender)) => sender == other_sender,
            _ => true,
        };
        same_sender && self.client_message_id == other.client_message_id
    }
}

impl fmt::Display for Claim<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} has client message id {}",
            self.source, self.client_message_id
        )?;
        match self.sender {
            Some(sender) => write!(formatter, " from {sender}"),
            None => write!(formatter, " from an unrecorded sender"),
        }
    }
}

/// Compares each claim about a (conversation, seq) with the first claim about
/// it in history order.
fn check_one_message_per_seq(history: &History) -> Vec<Violation> {
    let invocations = invocations_by_op(history);
    let mut first_claims: BTreeMap<(&str, u64), Claim<'_>> = BTreeMap::new();
    let mut violations = Vec::new();

    for event in history.events() {
        for (conversation_id, seq, claim) in claims_of(event, &invocations) {
            match first_claims.entry((conversation_id, seq)) {
                Entry::Vacant(entry) => {
                    entry.insert(claim);
                }
                Entry::Occupied(mut entry) => {
                    let first = *entry.get();
                    if !first.agrees_with(&claim) {
                        let detail = format!(
                            "conversation {conversation_id} seq {seq}: {claim}, \
                             but {first}"
                        );
                        violations.push(violation(NAME, detail));
                    } else if first.sender.is_none() {
                        entry.insert(claim);
                    }
                }
            }
        }
    }

    violations
}

/// Returns the (conversation, seq, claim) triples that `event` makes.
fn claims_of<'a>(
    event: &'a Event,
    invocations: &BTreeMap<u64, &'a SendInvoked>,
) -> Vec<(&'a str, u64, Claim<'a>)> {
    match event {
        Event::SendAcked(ack) => {
            let sender = invocations.get(&ack.op).map(|invoked| Device {
                user_id: &invoked.sender_user,
                device_id: &invoked.sender_device,
            });
            let claim = Claim {
                client_message_id: &ack.client_message_id,
                sender,
                source: Source::Ack { op: ack.op },
            };
            vec![(ack.conversation_id.as_str(), ack.seq, claim)]
        }
        Event::DeliveredToDevice(delivery) => {
            let claim = Claim {
                client_message_id: &delivery.client_message_id,
                sender: Some(Device {
                    user_id: &delivery.sender_user,
                    device_id: &delivery.sender_device,
                }),
                source: Source::of_delivery(delivery),
            };
            vec![(delivery.conversation_id.as_str(), delivery.seq, claim)]
        }
        Event::ReplicaRead(read) => claims_of_replica(read),
        _ => Vec::new(),
    }
}

fn claims_of_replica(read: &ReplicaRead) -> Vec<(&str, u64, Claim<'_>)> {
    let source = Source::of_replica(read);
    read.messages
        .iter()
        .map(|message| {
            let claim = Claim {
                client_message_id: &message.client_message_id,
                sender: Some(Device {
                    user_id: &message.sender_user,
                    device_id: &message.sender_device,
                }),
                source,
            };
            (read.conversation_id.as_str(), message.seq, claim)
        })
        .collect()
}

/// Reports each final replica read that lacks seqs that a device received,
/// once per read, naming the lowest such seq.
fn check_replicas_contain_deliveries(history: &History) -> Vec<Violation> {
    let mut receivers: BTreeMap<&str, BTreeMap<u64, Device<'_>>> = BTreeMap::new();
    for delivery in deliveries(history) {
        let receiver = Device {
            user_id: &delivery.user_id,
            device_id: &delivery.device_id,
        };
        receivers
            .entry(delivery.conversation_id.as_str())
            .or_default()
            .entry(delivery.seq)
            .or_insert(receiver);
    }

    replica_reads(history)
        .filter_map(|read| {
            let received = receivers.get(read.conversation_id.as_str())?;
            report_missing_deliveries(read, received)
        })
        .collect()
}

fn report_missing_deliveries(
    read: &ReplicaRead,
    received: &BTreeMap<u64, Device<'_>>,
) -> Option<Violation> {
    let stored: BTreeSet<u64> = read.messages.iter().map(|message| message.seq).collect();
    let mut missing = received.iter().filter(|(seq, _)| !stored.contains(seq));
    let (lowest_seq, receiver) = missing.next()?;
    let missing_count = 1 + missing.count();

    let detail = format!(
        "conversation {}: {} lacks {missing_count} seq(s) that devices received, \
         the lowest being seq {lowest_seq}, received by {receiver}",
        read.conversation_id,
        Source::of_replica(read),
    );
    Some(violation(NAME, detail))
}

fn report_out_of_order(classified: &ClassifiedDelivery<'_>) -> Option<Violation> {
    let DeliveryStep::OutOfOrder { highest } = classified.step else {
        return None;
    };

    let delivery = classified.delivery;
    let detail = format!(
        "conversation {}: {} received seq {} after seq {highest}, out of seq order",
        delivery.conversation_id,
        classified.receiver(),
        delivery.seq,
    );
    Some(violation(NAME, detail))
}
