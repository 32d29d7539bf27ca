//! The `acknowledged_not_lost` invariant: a committed send survives.
//!
//! Checks that for every `SendAcked`, every final replica read of its
//! conversation contains its client message id at its seq. When the history
//! contains replica reads but none of an acknowledged conversation, that
//! conversation is reported too, because its messages could have been lost
//! unseen. A history with no replica reads at all is not checked.

use std::collections::BTreeMap;

use super::{replica_reads, send_acks, sorted, violation, Source, Violation};
use crate::history::{History, ObservedMessage, ReplicaRead, SendAcked};

pub const NAME: &str = "acknowledged_not_lost";

pub fn check(history: &History) -> Vec<Violation> {
    let mut reads_by_conversation: BTreeMap<&str, Vec<IndexedRead<'_>>> = BTreeMap::new();
    for read in replica_reads(history) {
        reads_by_conversation
            .entry(read.conversation_id.as_str())
            .or_default()
            .push(IndexedRead::new(read));
    }
    if reads_by_conversation.is_empty() {
        return Vec::new();
    }

    let mut violations = Vec::new();
    for ack in send_acks(history) {
        match reads_by_conversation.get(ack.conversation_id.as_str()) {
            Some(reads) => violations.extend(reads.iter().filter_map(|read| read.check(ack))),
            None => violations.push(report_unread_conversation(ack)),
        }
    }
    sorted(violations)
}

/// A replica read with its messages indexed by seq.
struct IndexedRead<'a> {
    read: &'a ReplicaRead,
    messages_by_seq: BTreeMap<u64, &'a ObservedMessage>,
}

impl<'a> IndexedRead<'a> {
    fn new(read: &'a ReplicaRead) -> Self {
        let mut messages_by_seq = BTreeMap::new();
        for message in &read.messages {
            messages_by_seq.entry(message.seq).or_insert(message);
        }
        Self {
            read,
            messages_by_seq,
        }
    }

    /// Reports `ack` unless this read has its client message id at its seq.
    fn check(&self, ack: &SendAcked) -> Option<Violation> {
        let stored = self.messages_by_seq.get(&ack.seq);
        if stored.is_some_and(|message| message.client_message_id == ack.client_message_id) {
            return None;
        }

        let found = match stored {
            Some(message) => format!("client message id {}", message.client_message_id),
            None => "nothing".to_owned(),
        };

        let detail = format!(
            "conversation {} seq {}: op {} was acknowledged with client message id {}, \
             but {} has {found} at that seq",
            ack.conversation_id,
            ack.seq,
            ack.op,
            ack.client_message_id,
            Source::of_replica(self.read),
        );
        Some(violation(NAME, detail))
    }
}

fn report_unread_conversation(ack: &SendAcked) -> Violation {
    let detail = format!(
        "conversation {} seq {}: op {} was acknowledged with client message id {}, \
         but the history has no replica read of the conversation",
        ack.conversation_id, ack.seq, ack.op, ack.client_message_id,
    );
    violation(NAME, detail)
}
