//! The `no_duplicates` invariant: each send becomes at most one message, and
//! each device receives it at most once.
//!
//! A message's identity is its client message id per conversation, sender
//! user and sender device, the key the shard deduplicates appends by.
//! Checks that:
//! - no final replica read contains one identity at two seqs;
//! - no device receives a seq at or below its cursor, receives a seq twice in
//!   one session, or receives one identity at two seqs;
//! - all `SendAcked` of one op carry the same conversation and seq, and so do
//!   all `SendAcked` of one identity.
//!
//! NOTE: the shard remembers only the last `Limits::dedup_window_per_device`
//! client message ids per sender device, so a workload that retries a send
//! after that many newer sends gets a duplicate that this checker reports,
//! although the shard works as designed.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use super::{
    classify_deliveries, deliveries, invocations_by_op, replica_reads, send_acks, sorted,
    violation, ClassifiedDelivery, DeliveryStep, Device, MessageKey, Source, Violation,
};
use crate::history::{History, ReplicaRead, SendAcked};

pub const NAME: &str = "no_duplicates";

pub fn check(history: &History) -> Vec<Violation> {
    let mut violations: Vec<Violation> = replica_reads(history)
        .flat_map(check_replica_read)
        .collect();
    violations.extend(
        classify_deliveries(history)
            .iter()
            .filter_map(report_redelivery),
    );
    violations.extend(check_messages_received_once(history));
    violations.extend(check_acks_of_one_op(history));
    violations.extend(check_acks_of_one_message(history));
    sorted(violations)
}

fn check_replica_read(read: &ReplicaRead) -> Vec<Violation> {
    let mut first_seqs: BTreeMap<MessageKey<'_>, u64> = BTreeMap::new();
    let mut violations = Vec::new();

    for message in &read.messages {
        let key = MessageKey::of_stored(message);
        let first_seq = *first_seqs.entry(key).or_insert(message.seq);
        if first_seq != message.seq {
            let detail = format!(
                "conversation {}: {} has {key} at seq {first_seq} and at seq {}",
                read.conversation_id,
                Source::of_replica(read),
                message.seq,
            );
            violations.push(violation(NAME, detail));
        }
    }

    violations
}

fn report_redelivery(classified: &ClassifiedDelivery<'_>) -> Option<Violation> {
    let reason = match classified.step {
        DeliveryStep::AtOrBelowCursor { cursor } => format!("at or below its cursor {cursor}"),
        DeliveryStep::Repeated => "a second time in one session".to_owned(),
        _ => return None,
    };

    let delivery = classified.delivery;
    let detail = format!(
        "conversation {}: {} received seq {} ({}) {reason}",
        delivery.conversation_id,
        classified.receiver(),
        delivery.seq,
        MessageKey::of_delivery(delivery),
    );
    Some(violation(NAME, detail))
}

/// Reports each device that receives one message identity at two seqs, in
/// any sessions.
fn check_messages_received_once(history: &History) -> Vec<Violation> {
    let mut first_seqs: BTreeMap<(Device<'_>, &str, MessageKey<'_>), u64> = BTreeMap::new();
    let mut violations = Vec::new();

    for delivery in deliveries(history) {
        let receiver = Device {
            user_id: &delivery.user_id,
            device_id: &delivery.device_id,
        };
        let key = MessageKey::of_delivery(delivery);
        let conversation_id = delivery.conversation_id.as_str();
        let first_seq = *first_seqs
            .entry((receiver, conversation_id, key))
            .or_insert(delivery.seq);
        if first_seq != delivery.seq {
            let detail = format!(
                "conversation {conversation_id}: {receiver} received {key} at seq \
                 {first_seq} and again at seq {}",
                delivery.seq,
            );
            violations.push(violation(NAME, detail));
        }
    }

    violations
}

/// Reports each `SendAcked` whose conversation or seq differs from the first
/// `SendAcked` of its op.
fn check_acks_of_one_op(history: &History) -> Vec<Violation> {
    let mut first_acks: BTreeMap<u64, &SendAcked> = BTreeMap::new();
    let mut violations = Vec::new();

    for ack in send_acks(history) {
        let first = *first_acks.entry(ack.op).or_insert(ack);
        if (first.conversation_id.as_str(), first.seq) != (ack.conversation_id.as_str(), ack.seq) {
            let detail = format!(
                "op {} was acknowledged at conversation {} seq {} and at conversation {} seq {}",
                ack.op, first.conversation_id, first.seq, ack.conversation_id, ack.seq,
            );
            violations.push(violation(NAME, detail));
        }
    }

    violations
}

/// Reports each `SendAcked` whose seq differs from an earlier `SendAcked` of
/// another op with the same message identity. Acks of one op are left to
/// `check_acks_of_one_op`, and acks whose op has no `SendInvoked` have no
/// known sender and are skipped.
fn check_acks_of_one_message(history: &History) -> Vec<Violation> {
    let invocations = invocations_by_op(history);
    let mut first_acks: BTreeMap<(&str, MessageKey<'_>), &SendAcked> = BTreeMap::new();
    let mut violations = Vec::new();

    for ack in send_acks(history) {
        let Some(invoked) = invocations.get(&ack.op) else {
            continue;
        };
        let key = MessageKey {
            sender: Device {
                user_id: &invoked.sender_user,
                device_id: &invoked.sender_device,
            },
            client_message_id: &ack.client_message_id,
        };

        let first = match first_acks.entry((ack.conversation_id.as_str(), key)) {
            Entry::Vacant(entry) => {
                entry.insert(ack);
                continue;
            }
            Entry::Occupied(entry) => *entry.get(),
        };
        if first.op != ack.op && first.seq != ack.seq {
            let detail = format!(
                "conversation {}: ops {} and {} sent {key} and were acknowledged at seq {} \
                 and at seq {}",
                ack.conversation_id, first.op, ack.op, first.seq, ack.seq,
            );
            violations.push(violation(NAME, detail));
        }
    }

    violations
}
