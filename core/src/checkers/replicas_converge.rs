//! The `replicas_converge` invariant: after faults heal, every replica has the
//! same copy of each conversation.
//!
//! Checks that every final replica read of a conversation has the same
//! messages, compared field by field and in order, as the first read of that
//! conversation in the history. Each differing read is reported once, at the
//! first position where it differs.

use std::collections::BTreeMap;

use super::{replica_reads, sorted, violation, MessageKey, Source, Violation};
use crate::history::{History, ObservedMessage, ReplicaRead};

pub const NAME: &str = "replicas_converge";

pub fn check(history: &History) -> Vec<Violation> {
    let mut first_reads: BTreeMap<&str, &ReplicaRead> = BTreeMap::new();
    let mut violations = Vec::new();

    for read in replica_reads(history) {
        let first = *first_reads
            .entry(read.conversation_id.as_str())
            .or_insert(read);
        if first.messages != read.messages {
            violations.push(report_difference(first, read));
        }
    }

    sorted(violations)
}

fn report_difference(first: &ReplicaRead, read: &ReplicaRead) -> Violation {
    let position = first
        .messages
        .iter()
        .zip(&read.messages)
        .take_while(|(expected, actual)| expected == actual)
        .count();

    let detail = format!(
        "conversation {}: {} differs from {} at position {}, where node {} has {} and \
         node {} has {}. Node {} has {} messages and node {} has {}",
        read.conversation_id,
        Source::of_replica(read),
        Source::of_replica(first),
        position + 1,
        read.node_id,
        describe(read.messages.get(position)),
        first.node_id,
        describe(first.messages.get(position)),
        read.node_id,
        read.messages.len(),
        first.node_id,
        first.messages.len(),
    );
    violation(NAME, detail)
}

fn describe(message: Option<&ObservedMessage>) -> String {
    match message {
        Some(message) => format!(
            "seq {} with {} at server time {} ms",
            message.seq,
            MessageKey::of_stored(message),
            message.server_time_ms,
        ),
        None => "no message".to_owned(),
    }
}
