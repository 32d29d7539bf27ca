//! Snapshot encoding of `ShardState`: a `SnapshotEnvelope` that frames an
//! encoded `ShardSnapshot` with its SHA-256.
//!
//! Invariants: the encoding is canonical, so equal states give equal bytes,
//! and `decode_snapshot` accepts exactly the bytes that `encode_snapshot`
//! produces for a valid state. Any other input gives an error, never a panic,
//! which the property tests check with mutated and arbitrary bytes.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::dedup::DedupWindow;
use crate::ids::quote;
use crate::limits::{widen, Limits};
use crate::proto::{
    ConversationKind as ProtoKind, ShardSnapshot, SnapshotConversation, SnapshotDedupEntry,
    SnapshotDedupWindow, SnapshotEnvelope, SnapshotLimits, SnapshotUser, SnapshotWatermark,
};
use crate::state::{Conversation, ConversationKind, ShardState};
use crate::CoreError;

/// The snapshot format version that this build writes and reads.
///
/// Version 2 stores the user id of every delivered watermark. Version 1
/// keyed delivered watermarks by device id alone, which cannot be mapped to
/// a user, so version 1 snapshots are rejected as unsupported.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 2;

impl ShardState {
    /// Encodes the whole state, limits included. Equal states give equal
    /// bytes.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let state = self.to_proto().encode_to_vec();
        let state_sha256 = Sha256::digest(&state).to_vec();

        SnapshotEnvelope {
            format_version: SNAPSHOT_FORMAT_VERSION,
            state,
            state_sha256,
        }
        .encode_to_vec()
    }

    /// Decodes a snapshot written by [`ShardState::encode_snapshot`].
    ///
    /// Rejects bytes that fail the checksum or do not decode, snapshots of
    /// another format version, states that fail [`ShardState::validate`], and
    /// any encoding other than the canonical one.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<Self, CoreError> {
        let envelope = SnapshotEnvelope::decode(bytes).map_err(|error| {
            CoreError::corrupt(format!(
                "failed to decode {} bytes as a SnapshotEnvelope: {error}",
                bytes.len()
            ))
        })?;

        if envelope.format_version != SNAPSHOT_FORMAT_VERSION {
            return Err(CoreError::UnsupportedSnapshotFormat {
                found: envelope.format_version,
                supported: SNAPSHOT_FORMAT_VERSION,
            });
        }

        if Sha256::digest(&envelope.state).as_slice() != envelope.state_sha256.as_slice() {
            return Err(CoreError::corrupt(format!(
                "the SHA-256 of the {}-byte state does not match the stored checksum",
                envelope.state.len()
            )));
        }

        let snapshot = ShardSnapshot::decode(envelope.state.as_slice()).map_err(|error| {
            CoreError::corrupt(format!("failed to decode the ShardSnapshot: {error}"))
        })?;
        let state = Self::from_proto(snapshot)?;
        state
            .validate()
            .map_err(|error| CoreError::corrupt(error.to_string()))?;

        if state.encode_snapshot() != bytes {
            return Err(CoreError::corrupt(
                "the bytes decode to a valid state but are not its canonical encoding",
            ));
        }

        Ok(state)
    }

    /// Returns the SHA-256 of [`ShardState::encode_snapshot`].
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.encode_snapshot()).into()
    }

    fn to_proto(&self) -> ShardSnapshot {
        let users = self
            .users
            .iter()
            .map(|(user_id, devices)| SnapshotUser {
                user_id: user_id.clone(),
                device_ids: devices.iter().cloned().collect(),
            })
            .collect();

        let conversations = self
            .conversations
            .iter()
            .map(|(conversation_id, conversation)| {
                conversation_to_proto(conversation_id, conversation)
            })
            .collect();

        ShardSnapshot {
            limits: Some(limits_to_proto(&self.limits)),
            users,
            conversations,
        }
    }

    fn from_proto(snapshot: ShardSnapshot) -> Result<Self, CoreError> {
        let limits = snapshot
            .limits
            .ok_or_else(|| CoreError::corrupt("the limits are missing"))
            .and_then(limits_from_proto)?;

        check_ascending("users", snapshot.users.iter().map(|user| &user.user_id))?;
        let mut users = BTreeMap::new();
        for user in snapshot.users {
            let devices = sorted_set("device_ids", user.device_ids)?;
            users.insert(user.user_id, devices);
        }

        check_ascending(
            "conversations",
            snapshot
                .conversations
                .iter()
                .map(|conversation| &conversation.conversation_id),
        )?;
        let mut conversations = BTreeMap::new();
        for conversation in snapshot.conversations {
            let conversation_id = conversation.conversation_id.clone();
            conversations.insert(conversation_id, conversation_from_proto(conversation)?);
        }

        Ok(Self {
            limits,
            users,
            conversations,
        })
    }
}

fn limits_to_proto(limits: &Limits) -> SnapshotLimits {
    SnapshotLimits {
        group_members_max: widen(limits.group_members_max),
        body_bytes_max: widen(limits.body_bytes_max),
        dedup_window_per_device: widen(limits.dedup_window_per_device),
        id_bytes_max: widen(limits.id_bytes_max),
        members_per_command_max: widen(limits.members_per_command_max),
        devices_per_user_max: widen(limits.devices_per_user_max),
        history_page_max: widen(limits.history_page_max),
    }
}

fn limits_from_proto(limits: SnapshotLimits) -> Result<Limits, CoreError> {
    let narrow = |field: &str, value: u64| {
        usize::try_from(value).map_err(|_| {
            CoreError::corrupt(format!(
                "limit {field} = {value} does not fit in usize on this platform"
            ))
        })
    };

    Ok(Limits {
        group_members_max: narrow("group_members_max", limits.group_members_max)?,
        body_bytes_max: narrow("body_bytes_max", limits.body_bytes_max)?,
        dedup_window_per_device: narrow("dedup_window_per_device", limits.dedup_window_per_device)?,
        id_bytes_max: narrow("id_bytes_max", limits.id_bytes_max)?,
        members_per_command_max: narrow("members_per_command_max", limits.members_per_command_max)?,
        devices_per_user_max: narrow("devices_per_user_max", limits.devices_per_user_max)?,
        history_page_max: narrow("history_page_max", limits.history_page_max)?,
    })
}

fn conversation_to_proto(
    conversation_id: &str,
    conversation: &Conversation,
) -> SnapshotConversation {
    let kind = match conversation.kind {
        ConversationKind::Direct => ProtoKind::Direct,
        ConversationKind::Group => ProtoKind::Group,
    };

    let dedup_windows = conversation
        .dedup_windows
        .iter()
        .flat_map(|(user_id, windows)| {
            windows
                .iter()
                .map(move |(device_id, window)| window_to_proto(user_id, device_id, window))
        })
        .collect();

    SnapshotConversation {
        conversation_id: conversation_id.to_owned(),
        kind: kind.into(),
        members: conversation.members.iter().cloned().collect(),
        messages: conversation.messages.clone(),
        dedup_windows,
        delivered: delivered_to_proto(&conversation.delivered),
        read: read_to_proto(&conversation.read),
    }
}

fn conversation_from_proto(conversation: SnapshotConversation) -> Result<Conversation, CoreError> {
    let conversation_id = quote(&conversation.conversation_id);
    let kind = match ProtoKind::try_from(conversation.kind) {
        Ok(ProtoKind::Direct) => ConversationKind::Direct,
        Ok(ProtoKind::Group) => ConversationKind::Group,
        _ => {
            return Err(CoreError::corrupt(format!(
                "conversation {conversation_id} has kind {}, neither direct (1) nor group (2)",
                conversation.kind
            )))
        }
    };

    check_ascending(
        "dedup_windows",
        conversation
            .dedup_windows
            .iter()
            .map(|window| (&window.sender_user, &window.sender_device)),
    )?;
    let mut dedup_windows: BTreeMap<String, BTreeMap<String, DedupWindow>> = BTreeMap::new();
    for window in conversation.dedup_windows {
        let (user_id, device_id, window) = window_from_proto(&conversation_id, window)?;
        dedup_windows
            .entry(user_id)
            .or_default()
            .insert(device_id, window);
    }

    Ok(Conversation {
        kind,
        members: sorted_set("members", conversation.members)?,
        messages: conversation.messages,
        dedup_windows,
        delivered: delivered_from_proto(&conversation_id, conversation.delivered)?,
        read: read_from_proto(&conversation_id, conversation.read)?,
    })
}

fn window_to_proto(user_id: &str, device_id: &str, window: &DedupWindow) -> SnapshotDedupWindow {
    SnapshotDedupWindow {
        sender_user: user_id.to_owned(),
        sender_device: device_id.to_owned(),
        entries: window
            .entries()
            .map(|(client_message_id, seq)| SnapshotDedupEntry {
                client_message_id: client_message_id.to_owned(),
                seq,
            })
            .collect(),
    }
}

fn window_from_proto(
    conversation_id: &str,
    window: SnapshotDedupWindow,
) -> Result<(String, String, DedupWindow), CoreError> {
    let entries = window
        .entries
        .into_iter()
        .map(|entry| (entry.client_message_id, entry.seq))
        .collect();

    let Some(dedup_window) = DedupWindow::from_entries(entries) else {
        return Err(CoreError::corrupt(format!(
            "conversation {conversation_id} dedup window of sender {}/{} repeats a \
             client_message_id",
            quote(&window.sender_user),
            quote(&window.sender_device)
        )));
    };

    Ok((window.sender_user, window.sender_device, dedup_window))
}

/// Encodes delivered watermarks sorted by (user_id, device id), the order
/// of the map's keys.
fn delivered_to_proto(watermarks: &BTreeMap<(String, String), u64>) -> Vec<SnapshotWatermark> {
    watermarks
        .iter()
        .map(|((user_id, device_id), seq)| SnapshotWatermark {
            id: device_id.clone(),
            seq: *seq,
            user_id: user_id.clone(),
        })
        .collect()
}

fn read_to_proto(watermarks: &BTreeMap<String, u64>) -> Vec<SnapshotWatermark> {
    watermarks
        .iter()
        .map(|(user_id, seq)| SnapshotWatermark {
            id: user_id.clone(),
            seq: *seq,
            user_id: String::new(),
        })
        .collect()
}

/// Decodes delivered watermarks. Rejects an entry without a user id, because
/// device ids are unique only per user.
fn delivered_from_proto(
    conversation_id: &str,
    watermarks: Vec<SnapshotWatermark>,
) -> Result<BTreeMap<(String, String), u64>, CoreError> {
    let missing_user = watermarks
        .iter()
        .position(|watermark| watermark.user_id.is_empty());
    if let Some(index) = missing_user {
        return Err(CoreError::corrupt(format!(
            "conversation {conversation_id} delivered[{index}].user_id is \"\" for device \
             id {}; every delivered watermark must name the user that owns the device",
            quote(&watermarks[index].id)
        )));
    }

    check_ascending(
        "delivered",
        watermarks
            .iter()
            .map(|watermark| (&watermark.user_id, &watermark.id)),
    )?;

    Ok(watermarks
        .into_iter()
        .map(|watermark| ((watermark.user_id, watermark.id), watermark.seq))
        .collect())
}

/// Decodes read watermarks. Rejects an entry with a user id, because a read
/// watermark stores its user in `id`.
fn read_from_proto(
    conversation_id: &str,
    watermarks: Vec<SnapshotWatermark>,
) -> Result<BTreeMap<String, u64>, CoreError> {
    let extra_user = watermarks
        .iter()
        .position(|watermark| !watermark.user_id.is_empty());
    if let Some(index) = extra_user {
        return Err(CoreError::corrupt(format!(
            "conversation {conversation_id} read[{index}].user_id is {}, but read watermarks \
             store their user in id and leave user_id empty",
            quote(&watermarks[index].user_id)
        )));
    }

    check_ascending("read", watermarks.iter().map(|watermark| &watermark.id))?;

    Ok(watermarks
        .into_iter()
        .map(|watermark| (watermark.id, watermark.seq))
        .collect())
}

fn sorted_set(field: &str, values: Vec<String>) -> Result<BTreeSet<String>, CoreError> {
    check_ascending(field, values.iter())?;
    Ok(values.into_iter().collect())
}

/// Rejects keys that are not in strictly ascending order, which also rejects
/// duplicates.
fn check_ascending<K: Ord + std::fmt::Debug>(
    field: &str,
    keys: impl Iterator<Item = K>,
) -> Result<(), CoreError> {
    let mut previous: Option<K> = None;

    for (index, key) in keys.enumerate() {
        if let Some(previous) = previous.as_ref().filter(|previous| **previous >= key) {
            return Err(CoreError::corrupt(format!(
                "{field} are not in strictly ascending order: entry {index} {key:?} follows \
                 {previous:?}"
            )));
        }
        previous = Some(key);
    }

    Ok(())
}
