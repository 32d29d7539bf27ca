//! State invariants: the full check behind `ShardState::validate`, and the
//! cheap check of what one command touched, which `apply` runs in debug
//! builds.
//!
//! The full check visits every user, member, message, dedup entry and
//! watermark, so it runs on decoded snapshots and in tests, never per command.

use std::collections::{BTreeMap, BTreeSet};

use crate::dedup::DedupWindow;
use crate::ids::{is_valid_id, quote};
use crate::limits::Limits;
use crate::proto::command::Kind;
use crate::proto::Command;
use crate::state::{Conversation, ConversationKind, ShardState};
use crate::CoreError;

impl ShardState {
    /// Checks every invariant of the state: valid limits and ids, device and
    /// member counts within limits, direct conversations with exactly two
    /// members, seqs exactly 1..=last_seq, non-decreasing server times, dedup
    /// windows that list the latest messages of their sender device, and
    /// watermarks between 1 and last_seq.
    pub fn validate(&self) -> Result<(), CoreError> {
        self.limits.validate()?;

        for (user_id, devices) in &self.users {
            validate_user(user_id, devices, &self.limits)?;
        }

        for (conversation_id, conversation) in &self.conversations {
            validate_conversation(conversation_id, conversation, &self.limits)?;
        }

        Ok(())
    }

    /// Checks the invariants of what `command` may have changed, in time
    /// proportional to that part rather than to the whole state.
    pub(crate) fn validate_touched_by(&self, command: &Command) -> Result<(), CoreError> {
        let Some(kind) = &command.kind else {
            return Ok(());
        };

        match kind {
            Kind::RegisterUser(command) => self.validate_touched_user(&command.user_id),
            Kind::RegisterDevice(command) => self.validate_touched_user(&command.user_id),
            Kind::CreateDirect(command) => self.validate_touched_members(&command.conversation_id),
            Kind::CreateGroup(command) => self.validate_touched_members(&command.conversation_id),
            Kind::AddMembers(command) => self.validate_touched_members(&command.conversation_id),
            Kind::RemoveMember(command) => self.validate_touched_members(&command.conversation_id),
            Kind::Append(command) => self.validate_touched_append(
                &command.conversation_id,
                &command.sender_user,
                &command.sender_device,
            ),
            Kind::MarkDelivered(command) => {
                let conversation = self.touched_conversation(&command.conversation_id)?;
                let key = (command.user_id.clone(), command.device_id.clone());
                validate_watermark(
                    &command.conversation_id,
                    "delivered",
                    &device_owner(&command.user_id, &command.device_id),
                    conversation.delivered.get(&key).copied(),
                    conversation,
                )
            }
            Kind::MarkRead(command) => {
                let conversation = self.touched_conversation(&command.conversation_id)?;
                validate_watermark(
                    &command.conversation_id,
                    "read",
                    &quote(&command.user_id),
                    conversation.read.get(&command.user_id).copied(),
                    conversation,
                )
            }
        }
    }

    fn validate_touched_user(&self, user_id: &str) -> Result<(), CoreError> {
        let devices = self.users.get(user_id).ok_or_else(|| {
            CoreError::invariant(format!("user {} is missing after apply", quote(user_id)))
        })?;
        validate_user(user_id, devices, &self.limits)
    }

    fn validate_touched_members(&self, conversation_id: &str) -> Result<(), CoreError> {
        let conversation = self.touched_conversation(conversation_id)?;
        validate_members(conversation_id, conversation, &self.limits)
    }

    fn validate_touched_append(
        &self,
        conversation_id: &str,
        user_id: &str,
        device_id: &str,
    ) -> Result<(), CoreError> {
        let conversation = self.touched_conversation(conversation_id)?;
        let last_index = conversation.messages.len().saturating_sub(2);
        for (offset, message) in conversation.messages[last_index..].iter().enumerate() {
            let index = last_index + offset;
            let previous_time_ms = match index.checked_sub(1) {
                Some(previous) => conversation.messages[previous].server_time_ms,
                None => 0,
            };
            validate_message(
                conversation_id,
                index,
                message,
                previous_time_ms,
                &self.limits,
            )?;
        }

        match conversation.dedup_window(user_id, device_id) {
            Some(window) => validate_window_entries(
                conversation_id,
                conversation,
                (user_id, device_id),
                window,
                &self.limits,
            ),
            None => Err(CoreError::invariant(format!(
                "conversation {} has no dedup window for sender {}/{} after an append",
                quote(conversation_id),
                quote(user_id),
                quote(device_id)
            ))),
        }
    }

    fn touched_conversation(&self, conversation_id: &str) -> Result<&Conversation, CoreError> {
        self.conversations.get(conversation_id).ok_or_else(|| {
            CoreError::invariant(format!(
                "conversation {} is missing after apply",
                quote(conversation_id)
            ))
        })
    }
}

fn validate_user(
    user_id: &str,
    devices: &BTreeSet<String>,
    limits: &Limits,
) -> Result<(), CoreError> {
    validate_id("user id", user_id, limits)?;

    if devices.len() > limits.devices_per_user_max {
        return Err(CoreError::invariant(format!(
            "user {} has {} devices, above devices_per_user_max {}",
            quote(user_id),
            devices.len(),
            limits.devices_per_user_max
        )));
    }

    devices
        .iter()
        .try_for_each(|device_id| validate_id("device id", device_id, limits))
}

fn validate_conversation(
    conversation_id: &str,
    conversation: &Conversation,
    limits: &Limits,
) -> Result<(), CoreError> {
    validate_id("conversation id", conversation_id, limits)?;
    validate_members(conversation_id, conversation, limits)?;

    let mut previous_time_ms = 0;
    for (index, message) in conversation.messages.iter().enumerate() {
        validate_message(conversation_id, index, message, previous_time_ms, limits)?;
        previous_time_ms = message.server_time_ms;
    }

    validate_dedup_windows(conversation_id, conversation, limits)?;

    for ((user_id, device_id), seq) in &conversation.delivered {
        validate_id("user id", user_id, limits)?;
        validate_id("device id", device_id, limits)?;
        validate_watermark(
            conversation_id,
            "delivered",
            &device_owner(user_id, device_id),
            Some(*seq),
            conversation,
        )?;
    }
    for (user_id, seq) in &conversation.read {
        validate_id("user id", user_id, limits)?;
        validate_watermark(
            conversation_id,
            "read",
            &quote(user_id),
            Some(*seq),
            conversation,
        )?;
    }

    Ok(())
}

fn validate_members(
    conversation_id: &str,
    conversation: &Conversation,
    limits: &Limits,
) -> Result<(), CoreError> {
    let count = conversation.members.len();
    let broken = match conversation.kind {
        ConversationKind::Direct if count != 2 => Some("exactly 2 for a direct conversation"),
        ConversationKind::Group if count > limits.group_members_max => {
            Some("at most group_members_max for a group")
        }
        _ => None,
    };
    if let Some(rule) = broken {
        return Err(CoreError::invariant(format!(
            "conversation {} has {count} members, but the count must be {rule} \
             (group_members_max = {})",
            quote(conversation_id),
            limits.group_members_max
        )));
    }

    conversation
        .members
        .iter()
        .try_for_each(|user_id| validate_id("member id", user_id, limits))
}

/// Checks the message at `index`: its seq, its server time against the
/// previous message's, its ids and its body size.
fn validate_message(
    conversation_id: &str,
    index: usize,
    message: &crate::proto::StoredMessage,
    previous_time_ms: u64,
    limits: &Limits,
) -> Result<(), CoreError> {
    let expected_seq = u64::try_from(index).map_or(u64::MAX, |index| index.saturating_add(1));
    if message.seq != expected_seq {
        return Err(CoreError::invariant(format!(
            "conversation {} has seq {} at position {expected_seq}; seqs must be exactly \
             1..=last_seq",
            quote(conversation_id),
            message.seq
        )));
    }

    if message.server_time_ms < previous_time_ms {
        return Err(CoreError::invariant(format!(
            "conversation {} seq {} has server_time_ms {}, earlier than the previous \
             message's {previous_time_ms}",
            quote(conversation_id),
            message.seq,
            message.server_time_ms
        )));
    }

    if message.body.len() > limits.body_bytes_max {
        return Err(CoreError::invariant(format!(
            "conversation {} seq {} has a body of {} bytes, above body_bytes_max {}",
            quote(conversation_id),
            message.seq,
            message.body.len(),
            limits.body_bytes_max
        )));
    }

    validate_id("sender user id", &message.sender_user, limits)?;
    validate_id("sender device id", &message.sender_device, limits)?;
    validate_id("client message id", &message.client_message_id, limits)
}

/// Checks that every dedup window lists exactly the latest
/// `dedup_window_per_device` messages of its sender device, oldest first, and
/// that every sender device with messages has a window.
fn validate_dedup_windows(
    conversation_id: &str,
    conversation: &Conversation,
    limits: &Limits,
) -> Result<(), CoreError> {
    let mut seqs_by_sender: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for message in &conversation.messages {
        let sender = (message.sender_user.as_str(), message.sender_device.as_str());
        seqs_by_sender.entry(sender).or_default().push(message.seq);
    }

    let mut window_count = 0;
    for (user_id, windows) in &conversation.dedup_windows {
        for (device_id, window) in windows {
            let sender = (user_id.as_str(), device_id.as_str());
            validate_window_entries(conversation_id, conversation, sender, window, limits)?;

            let sent = seqs_by_sender.get(&sender).map_or(&[][..], Vec::as_slice);
            let expected = &sent[sent.len().saturating_sub(limits.dedup_window_per_device)..];
            if !window
                .entries()
                .map(|(_, seq)| seq)
                .eq(expected.iter().copied())
            {
                return Err(CoreError::invariant(format!(
                    "conversation {} dedup window of sender {}/{} does not list the \
                     latest {} messages of that device",
                    quote(conversation_id),
                    quote(user_id),
                    quote(device_id),
                    limits.dedup_window_per_device
                )));
            }
            window_count += 1;
        }
    }

    if window_count != seqs_by_sender.len() {
        return Err(CoreError::invariant(format!(
            "conversation {} has {window_count} dedup windows but {} sender devices",
            quote(conversation_id),
            seqs_by_sender.len()
        )));
    }

    Ok(())
}

/// Checks that a window is non-empty, within its capacity, and that each
/// entry names a message of that sender device with the same client message
/// id, in increasing seq order.
fn validate_window_entries(
    conversation_id: &str,
    conversation: &Conversation,
    (user_id, device_id): (&str, &str),
    window: &DedupWindow,
    limits: &Limits,
) -> Result<(), CoreError> {
    let sender = format!("{}/{}", quote(user_id), quote(device_id));
    if window.len() == 0 || window.len() > limits.dedup_window_per_device {
        return Err(CoreError::invariant(format!(
            "conversation {} dedup window of sender {sender} has {} entries, outside 1..={} \
             (dedup_window_per_device)",
            quote(conversation_id),
            window.len(),
            limits.dedup_window_per_device
        )));
    }

    let mut previous_seq = 0;
    for (client_message_id, seq) in window.entries() {
        let matches = conversation.message(seq).is_some_and(|message| {
            message.sender_user == user_id
                && message.sender_device == device_id
                && message.client_message_id == client_message_id
        });
        if !matches || seq <= previous_seq {
            return Err(CoreError::invariant(format!(
                "conversation {} dedup window of sender {sender} lists client_message_id {} \
                 at seq {seq}, which is not that sender's message with that id in seq order",
                quote(conversation_id),
                quote(client_message_id)
            )));
        }
        previous_seq = seq;
    }

    Ok(())
}

/// Checks that a stored watermark lies in 1..=last_seq. `None` (not stored)
/// always passes. `owner` names the user, or the user and device, already
/// quoted for the error message.
fn validate_watermark(
    conversation_id: &str,
    watermark_kind: &str,
    owner: &str,
    seq: Option<u64>,
    conversation: &Conversation,
) -> Result<(), CoreError> {
    let Some(seq) = seq else {
        return Ok(());
    };

    let last_seq = conversation.last_seq();
    if seq == 0 || seq > last_seq {
        return Err(CoreError::invariant(format!(
            "conversation {} {watermark_kind} watermark of {owner} is {seq}, outside \
             1..={last_seq}",
            quote(conversation_id)
        )));
    }

    Ok(())
}

/// Formats a device as `"user"/"device"` for error messages.
fn device_owner(user_id: &str, device_id: &str) -> String {
    format!("{}/{}", quote(user_id), quote(device_id))
}

fn validate_id(id_kind: &str, value: &str, limits: &Limits) -> Result<(), CoreError> {
    if is_valid_id(value, limits) {
        return Ok(());
    }

    Err(CoreError::invariant(format!(
        "invalid {id_kind} {}: ids must be 1 to {} bytes of ASCII letters, digits, \
         '-', '_', '.' or ':'",
        quote(value),
        limits.id_bytes_max
    )))
}
