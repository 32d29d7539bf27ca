//! One or more tests per rejection code. Each checks the code, that the
//! message names the offending value, and that the rejection leaves the
//! encoded state byte-identical.

mod common;

use common::*;
use parley_core::proto::{Command, HistoryQuery, RejectionCode};
use parley_core::{Limits, ShardState, COMMAND_VERSION};

/// Applies `command`, checks that it is rejected with `code`, that the
/// message contains every string in `named`, and that the state is unchanged.
fn assert_rejected(state: &mut ShardState, command: &Command, code: RejectionCode, named: &[&str]) {
    let before = state.encode_snapshot();

    let result = state.apply(command);

    let rejection = rejection(&result);
    assert_eq!(rejection.code(), code, "message: {}", rejection.message);
    for value in named {
        assert!(
            rejection.message.contains(value),
            "message {:?} does not name {value:?}",
            rejection.message
        );
    }
    assert_eq!(result.version, COMMAND_VERSION);
    assert!(
        state.encode_snapshot() == before,
        "rejection changed the state"
    );
}

fn small_limits() -> Limits {
    Limits {
        group_members_max: 3,
        members_per_command_max: 2,
        devices_per_user_max: 1,
        body_bytes_max: 4,
        ..Limits::default()
    }
}

#[test]
fn unsupported_version_names_version() {
    let mut state = populated_state();

    for version in [0, 2, u32::MAX] {
        let mut command = register_user("dave");
        command.version = version;

        assert_rejected(
            &mut state,
            &command,
            RejectionCode::UnsupportedVersion,
            &[&format!("version {version}")],
        );
    }
}

#[test]
fn missing_kind_is_malformed() {
    let mut state = populated_state();
    let command = Command {
        version: COMMAND_VERSION,
        kind: None,
    };

    assert_rejected(&mut state, &command, RejectionCode::Malformed, &["kind"]);
}

#[test]
fn undecodable_bytes_are_malformed() {
    let mut state = populated_state();
    let before = state.encode_snapshot();

    let result = state.apply_encoded(&[0xff, 0xff, 0xff]);

    let rejection = rejection(&result);
    assert_eq!(rejection.code(), RejectionCode::Malformed);
    assert!(
        rejection.message.contains("3 command bytes"),
        "{}",
        rejection.message
    );
    assert_eq!(result.version, COMMAND_VERSION);
    assert!(state.encode_snapshot() == before);
}

#[test]
fn invalid_ids_name_field_and_value() {
    let long_id = "x".repeat(129);
    let cases: Vec<(Command, &str, &str)> = vec![
        (register_user(""), "register_user.user_id", "\"\""),
        (register_user("a b"), "register_user.user_id", "\"a b\""),
        (
            register_user(&long_id),
            "register_user.user_id",
            "129 bytes",
        ),
        (
            register_device("alice", "ph/1"),
            "register_device.device_id",
            "\"ph/1\"",
        ),
        (
            create_direct("d 2", "alice", "bob"),
            "create_direct.conversation_id",
            "\"d 2\"",
        ),
        (
            create_group("g2", "alice", &["bob", "é"]),
            "create_group.members",
            "\"é\"",
        ),
        (
            add_members("team", "alice", &["x!"]),
            "add_members.users",
            "\"x!\"",
        ),
        (
            remove_member("team", "alice", "c\n"),
            "remove_member.user",
            "\"c\\n\"",
        ),
        (
            append("dm", "alice", "phone", "id?", 1),
            "append.client_message_id",
            "\"id?\"",
        ),
        (
            mark_delivered("dm", "alice", "", 0),
            "mark_delivered.device_id",
            "\"\"",
        ),
        (
            mark_read("dm", "al ice", 0),
            "mark_read.user_id",
            "\"al ice\"",
        ),
    ];

    let mut state = populated_state();
    for (command, field, value) in cases {
        assert_rejected(
            &mut state,
            &command,
            RejectionCode::InvalidId,
            &[field, value],
        );
    }
}

#[test]
fn direct_with_same_user_twice_is_invalid() {
    let mut state = populated_state();

    assert_rejected(
        &mut state,
        &create_direct("self", "alice", "alice"),
        RejectionCode::InvalidId,
        &["create_direct.user_b", "\"alice\"", "distinct"],
    );
}

#[test]
fn device_of_unknown_user_is_rejected() {
    let mut state = populated_state();

    assert_rejected(
        &mut state,
        &register_device("dave", "dave-phone"),
        RejectionCode::UnknownUser,
        &["\"dave\"", "RegisterUser"],
    );
}

#[test]
fn unknown_conversation_is_rejected_for_every_command() {
    let mut state = populated_state();
    let commands = [
        add_members("nope", "alice", &["bob"]),
        remove_member("nope", "alice", "bob"),
        append("nope", "alice", "alice-phone", "m1", 1),
        mark_delivered("nope", "alice", "alice-phone", 0),
        mark_read("nope", "alice", 0),
    ];

    for command in &commands {
        assert_rejected(
            &mut state,
            command,
            RejectionCode::UnknownConversation,
            &["\"nope\""],
        );
    }
}

#[test]
fn taken_conversation_id_is_rejected() {
    let mut state = populated_state();
    let commands = [
        create_direct("dm", "alice", "carol"),
        create_direct("team", "alice", "bob"),
        create_group("team", "alice", &[]),
        create_group("dm", "alice", &["bob"]),
    ];

    for command in &commands {
        let conversation_id = match &command.kind {
            Some(parley_core::proto::command::Kind::CreateDirect(create)) => {
                create.conversation_id.clone()
            }
            Some(parley_core::proto::command::Kind::CreateGroup(create)) => {
                create.conversation_id.clone()
            }
            other => panic!("unexpected command {other:?}"),
        };
        assert_rejected(
            &mut state,
            command,
            RejectionCode::ConversationExists,
            &[&format!("{conversation_id:?}")],
        );
    }
}

#[test]
fn non_member_is_rejected() {
    let mut state = populated_state();
    let cases = [
        (
            append("dm", "carol", "carol-phone", "m1", 1),
            "append.sender_user",
        ),
        (add_members("dm", "carol", &["dave"]), "add_members.actor"),
        (remove_member("team", "dave", "bob"), "remove_member.actor"),
        (
            mark_delivered("dm", "carol", "carol-phone", 0),
            "mark_delivered.user_id",
        ),
        (mark_read("dm", "carol", 0), "mark_read.user_id"),
    ];

    for (command, field) in &cases {
        let actor = if field.starts_with("remove") {
            "\"dave\""
        } else {
            "\"carol\""
        };
        assert_rejected(
            &mut state,
            command,
            RejectionCode::NotAMember,
            &[field, actor],
        );
    }
}

#[test]
fn history_of_non_member_is_rejected() {
    let state = populated_state();
    let query = HistoryQuery {
        conversation_id: "dm".to_owned(),
        reader: "carol".to_owned(),
        from_seq: 1,
        limit: 0,
    };

    let rejection = match state.history(&query) {
        Err(rejection) => rejection,
        Ok(page) => panic!("a non-member read a page: {page:?}"),
    };

    assert_eq!(rejection.code(), RejectionCode::NotAMember);
    assert!(
        rejection.message.contains("\"carol\""),
        "{}",
        rejection.message
    );
}

#[test]
fn history_of_unknown_conversation_is_rejected() {
    let state = populated_state();
    let query = HistoryQuery {
        conversation_id: "nope".to_owned(),
        reader: "alice".to_owned(),
        from_seq: 1,
        limit: 0,
    };

    let code = state.history(&query).map_err(|rejection| rejection.code());

    assert_eq!(code, Err(RejectionCode::UnknownConversation));
}

#[test]
fn history_with_invalid_reader_is_rejected() {
    let state = populated_state();
    let query = HistoryQuery {
        conversation_id: "dm".to_owned(),
        reader: "a b".to_owned(),
        from_seq: 1,
        limit: 0,
    };

    let code = state.history(&query).map_err(|rejection| rejection.code());

    assert_eq!(code, Err(RejectionCode::InvalidId));
}

#[test]
fn group_created_above_max_is_full() {
    let limits = Limits {
        group_members_max: 2,
        members_per_command_max: 2,
        ..Limits::default()
    };
    let mut state = ShardState::new(limits);

    assert_rejected(
        &mut state,
        &create_group("g", "alice", &["bob", "carol"]),
        RejectionCode::GroupFull,
        &["\"g\"", "3 members", "group_members_max 2"],
    );
}

#[test]
fn members_added_above_max_make_group_full() {
    let mut state = ShardState::new(small_limits());
    apply_ok(&mut state, &create_group("g", "alice", &["bob"]));

    assert_rejected(
        &mut state,
        &add_members("g", "alice", &["carol", "dave"]),
        RejectionCode::GroupFull,
        &["\"g\"", "4 members", "group_members_max 3"],
    );

    assert_eq!(
        state.members("g"),
        Some(vec!["alice".to_owned(), "bob".to_owned()])
    );
}

#[test]
fn body_above_max_is_too_large() {
    let mut state = ShardState::new(small_limits());
    apply_ok(&mut state, &create_direct("dm", "alice", "bob"));

    assert_rejected(
        &mut state,
        &append_body("dm", "alice", "phone", "m1", b"12345", 1),
        RejectionCode::BodyTooLarge,
        &["5 bytes", "body_bytes_max 4"],
    );
}

#[test]
fn receipt_beyond_last_seq_is_rejected() {
    let mut state = populated_state();
    apply_ok(&mut state, &append("dm", "alice", "alice-phone", "m1", 1));
    let commands = [
        mark_delivered("dm", "bob", "bob-phone", 2),
        mark_read("dm", "bob", 2),
        mark_read("dm", "bob", u64::MAX),
    ];

    for command in &commands {
        assert_rejected(
            &mut state,
            command,
            RejectionCode::ReceiptBeyondLastSeq,
            &["last_seq 1", "\"dm\""],
        );
    }
    assert_eq!(state.delivered_watermark("dm", "bob", "bob-phone"), 0);
    assert_eq!(state.read_watermark("dm", "bob"), 0);
}

#[test]
fn receipt_message_names_seq() {
    let mut state = populated_state();

    assert_rejected(
        &mut state,
        &mark_read("dm", "bob", 7),
        RejectionCode::ReceiptBeyondLastSeq,
        &["seq 7", "last_seq 0"],
    );
}

#[test]
fn member_change_of_direct_is_not_a_group() {
    let mut state = populated_state();
    let commands = [
        add_members("dm", "alice", &["carol"]),
        remove_member("dm", "alice", "bob"),
    ];

    for command in &commands {
        assert_rejected(&mut state, command, RejectionCode::NotAGroup, &["\"dm\""]);
    }
}

#[test]
fn too_many_listed_users_are_rejected() {
    let mut state = ShardState::new(small_limits());
    apply_ok(&mut state, &create_group("g", "alice", &[]));
    let commands = [
        create_group("g2", "alice", &["bob", "carol", "dave"]),
        add_members("g", "alice", &["bob", "carol", "dave"]),
    ];

    for command in &commands {
        assert_rejected(
            &mut state,
            command,
            RejectionCode::TooManyItems,
            &["3 users", "members_per_command_max 2"],
        );
    }
}

#[test]
fn device_beyond_limit_is_rejected() {
    let mut state = ShardState::new(small_limits());
    apply_ok(&mut state, &register_user("alice"));
    apply_ok(&mut state, &register_device("alice", "phone"));

    assert_rejected(
        &mut state,
        &register_device("alice", "laptop"),
        RejectionCode::DeviceLimit,
        &["\"alice\"", "\"laptop\"", "devices_per_user_max 1"],
    );
}
