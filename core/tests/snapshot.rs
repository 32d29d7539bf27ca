//! Snapshot encoding: round trips, canonical bytes, and rejection of
//! truncated, flipped, inconsistent or non-canonical snapshots.

mod common;

use common::*;
use parley_core::proto::{
    ConversationKind, ShardSnapshot, SnapshotConversation, SnapshotEnvelope, SnapshotWatermark,
};
use parley_core::{CoreError, Limits, ShardState, SNAPSHOT_FORMAT_VERSION};
use prost::Message;
use sha2::{Digest, Sha256};

/// Builds a state with messages from several devices, receipts and a dedup
/// window that has already evicted entries.
fn busy_state() -> ShardState {
    let limits = Limits {
        dedup_window_per_device: 2,
        ..Limits::default()
    };
    let mut state = ShardState::new(limits);
    for user in ["alice", "bob", "carol"] {
        apply_ok(&mut state, &register_user(user));
    }
    apply_ok(&mut state, &register_device("alice", "alice-phone"));
    apply_ok(&mut state, &create_direct("dm", "alice", "bob"));
    apply_ok(
        &mut state,
        &create_group("team", "alice", &["bob", "carol"]),
    );
    for (id, time) in [("m1", 10), ("m2", 5), ("m3", 30)] {
        apply_ok(&mut state, &append("dm", "alice", "alice-phone", id, time));
    }
    apply_ok(&mut state, &append("team", "carol", "carol-pc", "m1", 40));
    apply_ok(&mut state, &mark_delivered("dm", "bob", "bob-phone", 2));
    apply_ok(&mut state, &mark_read("dm", "bob", 3));
    apply_ok(&mut state, &remove_member("team", "alice", "carol"));
    state
}

/// Splits snapshot bytes into the decoded inner state.
fn open(bytes: &[u8]) -> ShardSnapshot {
    let envelope = SnapshotEnvelope::decode(bytes).expect("the envelope decodes");
    ShardSnapshot::decode(envelope.state.as_slice()).expect("the state decodes")
}

/// Encodes `snapshot` in an envelope with a correct checksum.
fn seal(snapshot: &ShardSnapshot) -> Vec<u8> {
    let state = snapshot.encode_to_vec();
    SnapshotEnvelope {
        format_version: SNAPSHOT_FORMAT_VERSION,
        state_sha256: Sha256::digest(&state).to_vec(),
        state,
    }
    .encode_to_vec()
}

fn conversation<'a>(snapshot: &'a mut ShardSnapshot, id: &str) -> &'a mut SnapshotConversation {
    snapshot
        .conversations
        .iter_mut()
        .find(|conversation| conversation.conversation_id == id)
        .expect("the conversation is in the snapshot")
}

/// Decodes `bytes` and returns the error message, panicking if they decode.
fn decode_error(bytes: &[u8]) -> String {
    match ShardState::decode_snapshot(bytes) {
        Err(error) => error.to_string(),
        Ok(_) => panic!("a broken snapshot of {} bytes was accepted", bytes.len()),
    }
}

#[test]
fn empty_state_round_trips() {
    let state = ShardState::new(Limits::default());
    let bytes = state.encode_snapshot();

    let decoded = ShardState::decode_snapshot(&bytes).expect("the snapshot decodes");

    assert_eq!(decoded, state);
    assert!(decoded.encode_snapshot() == bytes);
}

#[test]
fn busy_state_round_trips() {
    let state = busy_state();
    let bytes = state.encode_snapshot();

    let decoded = ShardState::decode_snapshot(&bytes).expect("the snapshot decodes");

    assert_eq!(decoded, state);
    assert!(decoded.encode_snapshot() == bytes);
    assert_eq!(decoded.digest(), state.digest());
    assert_eq!(decoded.limits().dedup_window_per_device, 2);
}

#[test]
fn digest_is_sha256_of_snapshot() {
    let state = busy_state();

    let expected: [u8; 32] = Sha256::digest(state.encode_snapshot()).into();

    assert_eq!(state.digest(), expected);
}

#[test]
fn decoded_state_keeps_dedup_and_applies_identically() {
    let mut original = busy_state();
    let mut decoded =
        ShardState::decode_snapshot(&original.encode_snapshot()).expect("the snapshot decodes");
    let commands = [
        append("dm", "alice", "alice-phone", "m3", 99),
        append("dm", "alice", "alice-phone", "m1", 99),
        mark_read("dm", "bob", 2),
        append("team", "carol", "carol-pc", "m1", 99),
    ];

    for command in &commands {
        assert_eq!(
            decoded.apply(command),
            original.apply(command),
            "{command:?}"
        );
    }

    assert!(decoded.encode_snapshot() == original.encode_snapshot());
}

#[test]
fn equal_states_encode_to_equal_bytes() {
    let mut forward = ShardState::new(Limits::default());
    let mut backward = ShardState::new(Limits::default());
    let commands = [
        register_user("alice"),
        register_user("bob"),
        create_group("g", "alice", &["bob"]),
        create_direct("dm", "alice", "bob"),
    ];

    for command in &commands {
        apply_ok(&mut forward, command);
    }
    for command in commands.iter().rev() {
        apply_ok(&mut backward, command);
    }

    assert!(forward.encode_snapshot() == backward.encode_snapshot());
}

#[test]
fn truncated_snapshot_is_rejected() {
    let bytes = busy_state().encode_snapshot();

    for length in 0..bytes.len() {
        let result = ShardState::decode_snapshot(&bytes[..length]);

        assert!(
            result.is_err(),
            "a snapshot cut to {length} bytes was accepted"
        );
    }
}

#[test]
fn flipped_byte_is_rejected() {
    let bytes = busy_state().encode_snapshot();

    for index in 0..bytes.len() {
        for mask in [0x01, 0x80, 0xff] {
            let mut corrupt = bytes.clone();
            corrupt[index] ^= mask;

            let result = ShardState::decode_snapshot(&corrupt);

            assert!(result.is_err(), "byte {index} xor {mask:#x} was accepted");
        }
    }
}

#[test]
fn garbage_bytes_are_rejected() {
    for bytes in [
        &b""[..],
        b"\x00",
        b"\xff\xff\xff\xff",
        b"not a snapshot at all",
    ] {
        assert!(ShardState::decode_snapshot(bytes).is_err(), "{bytes:?}");
    }
}

#[test]
fn checksum_mismatch_is_corrupt() {
    let bytes = busy_state().encode_snapshot();
    let mut envelope = SnapshotEnvelope::decode(bytes.as_slice()).expect("the envelope decodes");
    envelope.state_sha256[0] ^= 1;

    let message = decode_error(&envelope.encode_to_vec());

    assert!(message.contains("SHA-256"), "{message}");
}

#[test]
fn other_format_version_is_unsupported() {
    let bytes = busy_state().encode_snapshot();
    let mut envelope = SnapshotEnvelope::decode(bytes.as_slice()).expect("the envelope decodes");
    envelope.format_version = SNAPSHOT_FORMAT_VERSION + 1;

    let result = ShardState::decode_snapshot(&envelope.encode_to_vec());

    assert_eq!(
        result.err(),
        Some(CoreError::UnsupportedSnapshotFormat {
            found: SNAPSHOT_FORMAT_VERSION + 1,
            supported: SNAPSHOT_FORMAT_VERSION,
        })
    );
}

#[test]
fn format_1_snapshot_is_unsupported() {
    let bytes = busy_state().encode_snapshot();
    let mut envelope = SnapshotEnvelope::decode(bytes.as_slice()).expect("the envelope decodes");
    envelope.format_version = 1;

    let result = ShardState::decode_snapshot(&envelope.encode_to_vec());

    assert_eq!(
        result.err(),
        Some(CoreError::UnsupportedSnapshotFormat {
            found: 1,
            supported: SNAPSHOT_FORMAT_VERSION,
        })
    );
}

#[test]
fn shared_device_id_round_trips() {
    let mut state = busy_state();
    apply_ok(&mut state, &mark_delivered("dm", "alice", "cli", 3));
    apply_ok(&mut state, &mark_delivered("dm", "bob", "cli", 1));
    let bytes = state.encode_snapshot();

    let decoded = ShardState::decode_snapshot(&bytes).expect("the snapshot decodes");

    assert_eq!(decoded, state);
    assert!(decoded.encode_snapshot() == bytes);
    assert_eq!(decoded.delivered_watermark("dm", "alice", "cli"), 3);
    assert_eq!(decoded.delivered_watermark("dm", "bob", "cli"), 1);
    assert_eq!(decoded.delivered_watermark("dm", "bob", "bob-phone"), 2);
}

#[test]
fn delivered_entries_sort_by_user_first() {
    let mut state = busy_state();
    apply_ok(&mut state, &mark_delivered("dm", "bob", "cli", 1));
    apply_ok(&mut state, &mark_delivered("dm", "alice", "cli", 3));
    let mut snapshot = open(&state.encode_snapshot());

    let entries: Vec<(&str, &str, u64)> = conversation(&mut snapshot, "dm")
        .delivered
        .iter()
        .map(|entry| (entry.user_id.as_str(), entry.id.as_str(), entry.seq))
        .collect();

    assert_eq!(
        entries,
        [
            ("alice", "cli", 3),
            ("bob", "bob-phone", 2),
            ("bob", "cli", 1)
        ]
    );
}

#[test]
fn delivered_entry_without_user_is_rejected() {
    let mut snapshot = open(&busy_state().encode_snapshot());
    conversation(&mut snapshot, "dm").delivered[0].user_id = String::new();

    let result = ShardState::decode_snapshot(&seal(&snapshot));

    let Err(CoreError::CorruptSnapshot { detail }) = result else {
        panic!("a delivered entry without a user id gave {result:?}");
    };
    assert!(detail.contains("delivered[0].user_id is \"\""), "{detail}");
    assert!(detail.contains("\"bob-phone\""), "{detail}");
}

#[test]
fn read_entry_with_user_is_rejected() {
    let mut snapshot = open(&busy_state().encode_snapshot());
    conversation(&mut snapshot, "dm").read[0].user_id = "bob".to_owned();

    let message = decode_error(&seal(&snapshot));

    assert!(message.contains("read[0].user_id is \"bob\""), "{message}");
}

#[test]
fn delivered_order_by_device_is_rejected() {
    let mut snapshot = open(&busy_state().encode_snapshot());
    let delivered = &mut conversation(&mut snapshot, "dm").delivered;
    delivered[0].id = "a-phone".to_owned();
    delivered.push(SnapshotWatermark {
        id: "b-phone".to_owned(),
        seq: 1,
        user_id: "alice".to_owned(),
    });

    let message = decode_error(&seal(&snapshot));

    assert!(
        message.contains("delivered are not in strictly ascending"),
        "{message}"
    );
}

#[test]
fn seq_gap_is_rejected() {
    let mut snapshot = open(&busy_state().encode_snapshot());
    conversation(&mut snapshot, "dm").messages[1].seq = 5;

    let message = decode_error(&seal(&snapshot));

    assert!(message.contains("seq 5"), "{message}");
}

#[test]
fn missing_message_is_rejected() {
    let mut snapshot = open(&busy_state().encode_snapshot());
    conversation(&mut snapshot, "dm").messages.remove(0);

    let message = decode_error(&seal(&snapshot));

    assert!(message.contains("seq 2 at position 1"), "{message}");
}

#[test]
fn decreasing_server_time_is_rejected() {
    let mut snapshot = open(&busy_state().encode_snapshot());
    conversation(&mut snapshot, "dm").messages[2].server_time_ms = 1;

    let message = decode_error(&seal(&snapshot));

    assert!(message.contains("server_time_ms 1"), "{message}");
}

#[test]
fn watermark_beyond_last_seq_is_rejected() {
    let mut snapshot = open(&busy_state().encode_snapshot());
    conversation(&mut snapshot, "dm").read[0].seq = 4;

    let message = decode_error(&seal(&snapshot));

    assert!(
        message.contains("read watermark of \"bob\" is 4"),
        "{message}"
    );
}

#[test]
fn zero_watermark_is_rejected() {
    let mut snapshot = open(&busy_state().encode_snapshot());
    conversation(&mut snapshot, "dm")
        .delivered
        .push(SnapshotWatermark {
            id: "cli".to_owned(),
            seq: 0,
            user_id: "zz".to_owned(),
        });

    let message = decode_error(&seal(&snapshot));

    assert!(message.contains("\"zz\"/\"cli\" is 0"), "{message}");
}

#[test]
fn direct_with_three_members_is_rejected() {
    let mut snapshot = open(&busy_state().encode_snapshot());
    conversation(&mut snapshot, "dm")
        .members
        .push("carol".to_owned());

    let message = decode_error(&seal(&snapshot));

    assert!(message.contains("3 members"), "{message}");
}

#[test]
fn dedup_entry_of_other_device_is_rejected() {
    let mut snapshot = open(&busy_state().encode_snapshot());
    let window = &mut conversation(&mut snapshot, "dm").dedup_windows[0];
    window.sender_device = "alice-pc".to_owned();

    let message = decode_error(&seal(&snapshot));

    assert!(message.contains("dedup window"), "{message}");
}

#[test]
fn dedup_window_missing_latest_message_is_rejected() {
    let mut snapshot = open(&busy_state().encode_snapshot());
    conversation(&mut snapshot, "dm").dedup_windows[0]
        .entries
        .remove(1);

    let message = decode_error(&seal(&snapshot));

    assert!(message.contains("latest 2 messages"), "{message}");
}

#[test]
fn unknown_conversation_kind_is_rejected() {
    let mut snapshot = open(&busy_state().encode_snapshot());
    conversation(&mut snapshot, "team").kind = ConversationKind::Unspecified.into();

    let message = decode_error(&seal(&snapshot));

    assert!(message.contains("kind 0"), "{message}");
}

#[test]
fn unsorted_or_repeated_users_are_rejected() {
    let original = open(&busy_state().encode_snapshot());
    let mut unsorted = original.clone();
    unsorted.users.swap(0, 1);
    let mut repeated = original.clone();
    repeated.users[1] = repeated.users[0].clone();

    let unsorted_message = decode_error(&seal(&unsorted));
    let repeated_message = decode_error(&seal(&repeated));

    assert!(
        unsorted_message.contains("strictly ascending"),
        "{unsorted_message}"
    );
    assert!(
        repeated_message.contains("strictly ascending"),
        "{repeated_message}"
    );
}

#[test]
fn missing_or_invalid_limits_are_rejected() {
    let original = open(&busy_state().encode_snapshot());
    let mut missing = original.clone();
    missing.limits = None;
    let mut zero = original.clone();
    if let Some(limits) = zero.limits.as_mut() {
        limits.body_bytes_max = 0;
    }

    let missing_message = decode_error(&seal(&missing));
    let zero_message = decode_error(&seal(&zero));

    assert!(
        missing_message.contains("limits are missing"),
        "{missing_message}"
    );
    assert!(
        zero_message.contains("body_bytes_max = 0"),
        "{zero_message}"
    );
}

#[test]
fn limits_that_invalidate_state_are_rejected() {
    let mut snapshot = open(&busy_state().encode_snapshot());
    if let Some(limits) = snapshot.limits.as_mut() {
        limits.body_bytes_max = 2;
    }

    let message = decode_error(&seal(&snapshot));

    assert!(message.contains("body_bytes_max 2"), "{message}");
}

#[test]
fn non_canonical_encoding_is_rejected() {
    let snapshot = open(&busy_state().encode_snapshot());
    let mut state = snapshot.encode_to_vec();
    // Field 15, varint 1: an unknown field that prost skips on decode.
    state.extend_from_slice(&[0x78, 0x01]);
    let bytes = SnapshotEnvelope {
        format_version: SNAPSHOT_FORMAT_VERSION,
        state_sha256: Sha256::digest(&state).to_vec(),
        state,
    }
    .encode_to_vec();

    let message = decode_error(&bytes);

    assert!(message.contains("canonical"), "{message}");
}
