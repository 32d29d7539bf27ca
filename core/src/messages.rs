//! Append and history reads: the ordered message log of each conversation.
//!
//! Invariants: the seqs of a conversation are exactly 1..=last_seq, server
//! times never decrease within a conversation, and a retried append inside
//! the dedup window returns the original seq and time instead of appending
//! again.

use crate::ids::check_id;
use crate::proto::command_result::Outcome;
use crate::proto::{
    Append, Appended, HistoryPage, HistoryQuery, Rejection, RejectionCode, StoredMessage,
};
use crate::rejection::reject;
use crate::state::{unknown_conversation, ShardState};

impl ShardState {
    /// Appends a message and assigns it the next seq.
    ///
    /// The checks run in this order: ids, conversation exists, dedup lookup,
    /// sender membership, body size. A retry of a committed append therefore
    /// returns the original seq and server time with `duplicate = true`, even
    /// when the sender has been removed since.
    ///
    /// Dedup remembers the last `Limits::dedup_window_per_device` client
    /// message ids per (conversation, sender user, sender device). A retry
    /// older than that window is appended again as a new message.
    ///
    /// The server time is `max(proposer_time_ms, last server time of the
    /// conversation)`, so it never decreases even when proposers' clocks
    /// disagree.
    pub(crate) fn append(&mut self, command: &Append) -> Result<Outcome, Rejection> {
        let limits = &self.limits;
        check_id("append.conversation_id", &command.conversation_id, limits)?;
        check_id("append.sender_user", &command.sender_user, limits)?;
        check_id("append.sender_device", &command.sender_device, limits)?;
        check_id(
            "append.client_message_id",
            &command.client_message_id,
            limits,
        )?;

        let conversation = self
            .conversations
            .get_mut(&command.conversation_id)
            .ok_or_else(|| unknown_conversation(&command.conversation_id))?;

        let window = conversation.dedup_window(&command.sender_user, &command.sender_device);
        let original_seq = window.and_then(|window| window.seq_of(&command.client_message_id));
        if let Some(original) = original_seq.and_then(|seq| conversation.message(seq)) {
            return Ok(appended(&command.conversation_id, original, true));
        }

        conversation.check_member(
            &command.conversation_id,
            "append.sender_user",
            &command.sender_user,
        )?;
        if command.body.len() > limits.body_bytes_max {
            return Err(reject(
                RejectionCode::BodyTooLarge,
                format!(
                    "append.body of {} bytes exceeds body_bytes_max {}; split the message",
                    command.body.len(),
                    limits.body_bytes_max
                ),
            ));
        }

        let message = StoredMessage {
            seq: conversation.last_seq() + 1,
            sender_user: command.sender_user.clone(),
            sender_device: command.sender_device.clone(),
            client_message_id: command.client_message_id.clone(),
            body: command.body.clone(),
            server_time_ms: command
                .proposer_time_ms
                .max(conversation.last_server_time_ms()),
        };
        let outcome = appended(&command.conversation_id, &message, false);

        conversation
            .dedup_windows
            .entry(command.sender_user.clone())
            .or_default()
            .entry(command.sender_device.clone())
            .or_default()
            .remember(
                command.client_message_id.clone(),
                message.seq,
                limits.dedup_window_per_device,
            );
        conversation.messages.push(message);
        Ok(outcome)
    }

    /// Reads a page of a conversation's history. Only members may read.
    ///
    /// `from_seq` 0 is read as 1. `limit` 0 means `Limits::history_page_max`,
    /// and larger limits are cut to it. A page that starts past the last seq
    /// is empty. The page always carries the conversation's `last_seq`.
    pub fn history(&self, query: &HistoryQuery) -> Result<HistoryPage, Rejection> {
        check_id(
            "history.conversation_id",
            &query.conversation_id,
            &self.limits,
        )?;
        check_id("history.reader", &query.reader, &self.limits)?;

        let conversation = self
            .conversations
            .get(&query.conversation_id)
            .ok_or_else(|| unknown_conversation(&query.conversation_id))?;
        conversation.check_member(&query.conversation_id, "history.reader", &query.reader)?;

        let page_max = self.limits.history_page_max;
        let limit = match usize::try_from(query.limit) {
            Ok(0) => page_max,
            Ok(limit) => limit.min(page_max),
            Err(_) => page_max,
        };

        let messages = &conversation.messages;
        let first_index = usize::try_from(query.from_seq.max(1) - 1).unwrap_or(usize::MAX);
        let start = first_index.min(messages.len());
        let end = start.saturating_add(limit).min(messages.len());

        Ok(HistoryPage {
            messages: messages[start..end].to_vec(),
            last_seq: conversation.last_seq(),
        })
    }
}

fn appended(conversation_id: &str, message: &StoredMessage, duplicate: bool) -> Outcome {
    Outcome::Appended(Appended {
        conversation_id: conversation_id.to_owned(),
        seq: message.seq,
        server_time_ms: message.server_time_ms,
        duplicate,
    })
}
