//! MarkDelivered and MarkRead: delivered watermarks per (user, device) and
//! read watermarks per user.
//!
//! Invariants: a watermark never decreases and never exceeds the
//! conversation's last seq. A watermark of 0 is not stored. Delivered
//! watermarks are keyed by the user id as well as the device id, because
//! device ids are unique only per user.

use std::collections::BTreeMap;

use crate::ids::{check_id, quote};
use crate::proto::command_result::Outcome;
use crate::proto::{MarkDelivered, MarkRead, ReceiptAdvanced, Rejection, RejectionCode};
use crate::rejection::reject;
use crate::state::{unknown_conversation, Conversation, ShardState};

impl ShardState {
    pub(crate) fn mark_delivered(&mut self, command: &MarkDelivered) -> Result<Outcome, Rejection> {
        let limits = &self.limits;
        check_id(
            "mark_delivered.conversation_id",
            &command.conversation_id,
            limits,
        )?;
        check_id("mark_delivered.user_id", &command.user_id, limits)?;
        check_id("mark_delivered.device_id", &command.device_id, limits)?;

        let conversation = self
            .conversations
            .get_mut(&command.conversation_id)
            .ok_or_else(|| unknown_conversation(&command.conversation_id))?;
        check_receipt(
            &command.conversation_id,
            conversation,
            "mark_delivered",
            &command.user_id,
            command.seq,
        )?;

        Ok(advance(
            &command.conversation_id,
            &mut conversation.delivered,
            (command.user_id.clone(), command.device_id.clone()),
            command.seq,
        ))
    }

    pub(crate) fn mark_read(&mut self, command: &MarkRead) -> Result<Outcome, Rejection> {
        let limits = &self.limits;
        check_id(
            "mark_read.conversation_id",
            &command.conversation_id,
            limits,
        )?;
        check_id("mark_read.user_id", &command.user_id, limits)?;

        let conversation = self
            .conversations
            .get_mut(&command.conversation_id)
            .ok_or_else(|| unknown_conversation(&command.conversation_id))?;
        check_receipt(
            &command.conversation_id,
            conversation,
            "mark_read",
            &command.user_id,
            command.seq,
        )?;

        Ok(advance(
            &command.conversation_id,
            &mut conversation.read,
            command.user_id.clone(),
            command.seq,
        ))
    }
}

/// Rejects a receipt from a non-member or for a seq beyond the last seq.
fn check_receipt(
    conversation_id: &str,
    conversation: &Conversation,
    command_name: &str,
    user_id: &str,
    seq: u64,
) -> Result<(), Rejection> {
    let user_field = format!("{command_name}.user_id");
    conversation.check_member(conversation_id, &user_field, user_id)?;

    let last_seq = conversation.last_seq();
    if seq <= last_seq {
        return Ok(());
    }

    Err(reject(
        RejectionCode::ReceiptBeyondLastSeq,
        format!(
            "{command_name}.seq {seq} is beyond last_seq {last_seq} of conversation {}; \
             acknowledge only seqs that the client has received",
            quote(conversation_id)
        ),
    ))
}

/// Moves the watermark of `key` forward to `seq`. A `seq` at or below the
/// current watermark leaves it unchanged and returns `moved = false`.
fn advance<K: Ord>(
    conversation_id: &str,
    watermarks: &mut BTreeMap<K, u64>,
    key: K,
    seq: u64,
) -> Outcome {
    let current = watermarks.get(&key).copied().unwrap_or(0);
    let moved = seq > current;
    if moved {
        watermarks.insert(key, seq);
    }

    Outcome::ReceiptAdvanced(ReceiptAdvanced {
        conversation_id: conversation_id.to_owned(),
        watermark: current.max(seq),
        moved,
    })
}
