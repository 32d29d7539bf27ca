//! `ShardState`: the replicated state of one shard, the command dispatcher
//! and the read-only queries.
//!
//! Invariants kept here: `apply` is deterministic (no clock, randomness, I/O
//! or hash-map iteration order), every result carries `COMMAND_VERSION`, and
//! a rejected command changes nothing. Each handler runs all of its checks
//! before its first write so that the last point holds.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;

use crate::dedup::DedupWindow;
use crate::ids::quote;
use crate::limits::{widen, Limits};
use crate::proto::command::Kind;
use crate::proto::command_result::Outcome;
use crate::proto::{Command, CommandResult, Rejection, RejectionCode, StoredMessage};
use crate::rejection::{into_result, reject};
use crate::{CoreError, COMMAND_VERSION};

/// The replicated state of one shard: users with their devices, and
/// conversations with their members, messages, dedup windows and receipts.
///
/// NOTE: message history lives inside this state, and so inside every
/// snapshot. Moving history to the storage engine would bound snapshot size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardState {
    pub(crate) limits: Limits,
    /// Registered users and the ids of their devices.
    pub(crate) users: BTreeMap<String, BTreeSet<String>>,
    pub(crate) conversations: BTreeMap<String, Conversation>,
}

/// Whether a conversation is between two users or a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConversationKind {
    Direct,
    Group,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Conversation {
    pub(crate) kind: ConversationKind,
    pub(crate) members: BTreeSet<String>,
    /// Committed messages. The message with seq `n` is at index `n - 1`.
    pub(crate) messages: Vec<StoredMessage>,
    /// Dedup windows by sender user, then by sender device.
    pub(crate) dedup_windows: BTreeMap<String, BTreeMap<String, DedupWindow>>,
    /// Delivered watermarks by (user id, device id), because device ids are
    /// unique only per user. A missing entry means 0.
    pub(crate) delivered: BTreeMap<(String, String), u64>,
    /// Read watermarks by user id. A missing entry means 0.
    pub(crate) read: BTreeMap<String, u64>,
}

impl Conversation {
    pub(crate) fn new(kind: ConversationKind, members: BTreeSet<String>) -> Self {
        Self {
            kind,
            members,
            messages: Vec::new(),
            dedup_windows: BTreeMap::new(),
            delivered: BTreeMap::new(),
            read: BTreeMap::new(),
        }
    }

    pub(crate) fn last_seq(&self) -> u64 {
        widen(self.messages.len())
    }

    /// Returns the server time of the last message, or 0 when there is none.
    pub(crate) fn last_server_time_ms(&self) -> u64 {
        self.messages
            .last()
            .map_or(0, |message| message.server_time_ms)
    }

    pub(crate) fn message(&self, seq: u64) -> Option<&StoredMessage> {
        let index = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.messages.get(index)
    }

    pub(crate) fn dedup_window(&self, user_id: &str, device_id: &str) -> Option<&DedupWindow> {
        self.dedup_windows.get(user_id)?.get(device_id)
    }

    /// Rejects with NOT_A_MEMBER unless `user_id` is a member.
    pub(crate) fn check_member(
        &self,
        conversation_id: &str,
        field: &str,
        user_id: &str,
    ) -> Result<(), Rejection> {
        if self.members.contains(user_id) {
            return Ok(());
        }

        let remedy = match self.kind {
            ConversationKind::Direct => "the members of a direct conversation never change",
            ConversationKind::Group => "a member must add the user with AddMembers first",
        };
        Err(reject(
            RejectionCode::NotAMember,
            format!(
                "{field} {} is not a member of conversation {}; {remedy}",
                quote(user_id),
                quote(conversation_id)
            ),
        ))
    }
}

impl ShardState {
    /// Creates an empty state.
    ///
    /// Only debug builds check the limits here. Call [`Limits::validate`]
    /// first or use [`ShardState::try_new`], because `decode_snapshot` rejects
    /// snapshots whose limits are invalid.
    pub fn new(limits: Limits) -> Self {
        debug_assert_eq!(limits.validate(), Ok(()));

        Self {
            limits,
            users: BTreeMap::new(),
            conversations: BTreeMap::new(),
        }
    }

    /// Creates an empty state after checking the limits with
    /// [`Limits::validate`].
    pub fn try_new(limits: Limits) -> Result<Self, CoreError> {
        limits.validate()?;
        Ok(Self::new(limits))
    }

    /// Returns the limits that this state applies commands with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Applies one committed command and returns its result.
    ///
    /// The result depends only on the state and the command, so every replica
    /// returns the same result. A rejected command leaves the state unchanged.
    pub fn apply(&mut self, command: &Command) -> CommandResult {
        let outcome = self.apply_command(command);

        if cfg!(debug_assertions) && outcome.is_ok() {
            if let Err(error) = self.validate_touched_by(command) {
                panic!("applying {command:?} broke an invariant: {error}");
            }
        }

        into_result(outcome)
    }

    /// Decodes a protobuf-encoded `Command` and applies it. Bytes that do not
    /// decode are rejected with REJECTION_CODE_MALFORMED.
    pub fn apply_encoded(&mut self, bytes: &[u8]) -> CommandResult {
        match Command::decode(bytes) {
            Ok(command) => self.apply(&command),
            Err(error) => into_result(Err(reject(
                RejectionCode::Malformed,
                format!(
                    "failed to decode {} command bytes as parley.core.v1.Command: {error}; \
                     encode the command with the parley.core.v1 protobuf schema",
                    bytes.len()
                ),
            ))),
        }
    }

    fn apply_command(&mut self, command: &Command) -> Result<Outcome, Rejection> {
        if command.version != COMMAND_VERSION {
            return Err(reject(
                RejectionCode::UnsupportedVersion,
                format!(
                    "unsupported command version {}: this build applies only version \
                     {COMMAND_VERSION}; upgrade every replica before proposing version {} commands",
                    command.version, command.version
                ),
            ));
        }

        let Some(kind) = &command.kind else {
            return Err(reject(
                RejectionCode::Malformed,
                "malformed command: the kind field is missing; set exactly one command kind"
                    .to_owned(),
            ));
        };

        match kind {
            Kind::RegisterUser(command) => self.register_user(command),
            Kind::RegisterDevice(command) => self.register_device(command),
            Kind::CreateDirect(command) => self.create_direct(command),
            Kind::CreateGroup(command) => self.create_group(command),
            Kind::AddMembers(command) => self.add_members(command),
            Kind::RemoveMember(command) => self.remove_member(command),
            Kind::Append(command) => self.append(command),
            Kind::MarkDelivered(command) => self.mark_delivered(command),
            Kind::MarkRead(command) => self.mark_read(command),
        }
    }

    /// Returns the last seq of a conversation (0 when it has no messages), or
    /// `None` when the conversation does not exist.
    pub fn last_seq(&self, conversation_id: &str) -> Option<u64> {
        Some(self.conversations.get(conversation_id)?.last_seq())
    }

    /// Returns the ids of all conversations on this shard, sorted.
    pub fn conversation_ids(&self) -> Vec<String> {
        self.conversations.keys().cloned().collect()
    }

    /// Returns whether a conversation is direct or a group, or `None` when
    /// it does not exist.
    pub fn conversation_kind(&self, conversation_id: &str) -> Option<ConversationKind> {
        Some(self.conversations.get(conversation_id)?.kind)
    }

    /// Returns the sorted members of a conversation, or `None` when it does
    /// not exist.
    pub fn members(&self, conversation_id: &str) -> Option<Vec<String>> {
        let conversation = self.conversations.get(conversation_id)?;
        Some(conversation.members.iter().cloned().collect())
    }

    /// Returns the delivered watermark of device `device_id` of user
    /// `user_id`, or 0 when the device has none or the conversation does not
    /// exist.
    pub fn delivered_watermark(
        &self,
        conversation_id: &str,
        user_id: &str,
        device_id: &str,
    ) -> u64 {
        let key = (user_id.to_owned(), device_id.to_owned());
        self.conversations
            .get(conversation_id)
            .and_then(|conversation| conversation.delivered.get(&key))
            .copied()
            .unwrap_or(0)
    }

    /// Returns the read watermark of a user, or 0 when the user has none or
    /// the conversation does not exist.
    pub fn read_watermark(&self, conversation_id: &str, user_id: &str) -> u64 {
        self.conversations
            .get(conversation_id)
            .and_then(|conversation| conversation.read.get(user_id))
            .copied()
            .unwrap_or(0)
    }

    /// Returns the ids of all users registered on this shard, sorted.
    pub fn user_ids(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// Returns the sorted device ids of a user, or `None` when the user is
    /// not registered on this shard.
    pub fn devices(&self, user_id: &str) -> Option<Vec<String>> {
        Some(self.users.get(user_id)?.iter().cloned().collect())
    }
}

pub(crate) fn unknown_conversation(conversation_id: &str) -> Rejection {
    reject(
        RejectionCode::UnknownConversation,
        format!(
            "unknown conversation {}; create it with CreateDirect or CreateGroup first",
            quote(conversation_id)
        ),
    )
}
