//! Behaviour of successful commands, history reads and queries: idempotent
//! registration and creation, member changes, seq and time assignment, the
//! dedup window, and watermarks that never move backwards.

mod common;

use common::*;
use parley_core::proto::{Command, HistoryQuery, StoredMessage};
use parley_core::{Limits, ShardState, COMMAND_VERSION};
use prost::Message;

fn history_query(conversation_id: &str, reader: &str, from_seq: u64, limit: u32) -> HistoryQuery {
    HistoryQuery {
        conversation_id: conversation_id.to_owned(),
        reader: reader.to_owned(),
        from_seq,
        limit,
    }
}

fn page_seqs(state: &ShardState, query: &HistoryQuery) -> Vec<u64> {
    match state.history(query) {
        Ok(page) => page.messages.iter().map(|message| message.seq).collect(),
        Err(rejection) => panic!("history {query:?} was rejected: {rejection:?}"),
    }
}

#[test]
fn register_user_twice_reports_already_existed() {
    let mut state = ShardState::new(Limits::default());

    let first = registered(apply_ok(&mut state, &register_user("alice")));
    let second = registered(apply_ok(&mut state, &register_user("alice")));

    assert!(!first.already_existed);
    assert!(second.already_existed);
    assert_eq!(state.user_ids(), vec!["alice".to_owned()]);
}

#[test]
fn register_device_twice_reports_already_existed() {
    let limits = Limits {
        devices_per_user_max: 1,
        ..Limits::default()
    };
    let mut state = ShardState::new(limits);
    apply_ok(&mut state, &register_user("alice"));

    let first = registered(apply_ok(&mut state, &register_device("alice", "phone")));
    let again_at_limit = registered(apply_ok(&mut state, &register_device("alice", "phone")));

    assert!(!first.already_existed);
    assert!(again_at_limit.already_existed);
    assert_eq!(state.devices("alice"), Some(vec!["phone".to_owned()]));
}

#[test]
fn create_direct_again_returns_same_result() {
    let mut state = ShardState::new(Limits::default());

    let first = created(apply_ok(&mut state, &create_direct("dm", "alice", "bob")));
    let bytes = state.encode_snapshot();
    let repeated = created(apply_ok(&mut state, &create_direct("dm", "alice", "bob")));
    let reversed = created(apply_ok(&mut state, &create_direct("dm", "bob", "alice")));

    assert_eq!(first.member_count, 2);
    assert_eq!(repeated, first);
    assert_eq!(reversed, first);
    assert!(state.encode_snapshot() == bytes);
}

#[test]
fn create_group_deduplicates_members() {
    let mut state = ShardState::new(Limits::default());

    let outcome = apply_ok(
        &mut state,
        &create_group("g", "carol", &["bob", "carol", "bob"]),
    );

    assert_eq!(created(outcome).member_count, 2);
    assert_eq!(
        state.members("g"),
        Some(vec!["bob".to_owned(), "carol".to_owned()])
    );
}

#[test]
fn add_members_skips_existing_members() {
    let mut state = populated_state();

    let outcome = apply_ok(
        &mut state,
        &add_members("team", "bob", &["erin", "carol", "dave"]),
    );

    let changed = members_changed(outcome);
    assert_eq!(changed.added, vec!["dave".to_owned(), "erin".to_owned()]);
    assert!(changed.removed.is_empty());
    assert_eq!(changed.member_count, 5);
}

#[test]
fn add_members_already_present_changes_nothing() {
    let mut state = populated_state();
    let bytes = state.encode_snapshot();

    let changed = members_changed(apply_ok(
        &mut state,
        &add_members("team", "bob", &["carol"]),
    ));

    assert!(changed.added.is_empty());
    assert_eq!(changed.member_count, 3);
    assert!(state.encode_snapshot() == bytes);
}

#[test]
fn remove_non_member_returns_empty_removed() {
    let mut state = populated_state();

    let changed = members_changed(apply_ok(&mut state, &remove_member("team", "bob", "dave")));

    assert!(changed.removed.is_empty());
    assert_eq!(changed.member_count, 3);
}

#[test]
fn member_may_remove_themselves() {
    let mut state = populated_state();

    let changed = members_changed(apply_ok(&mut state, &remove_member("team", "bob", "bob")));

    assert_eq!(changed.removed, vec!["bob".to_owned()]);
    assert_eq!(changed.member_count, 2);
    assert_eq!(
        state.members("team"),
        Some(vec!["alice".to_owned(), "carol".to_owned()])
    );
}

#[test]
fn removed_member_keeps_read_watermark() {
    let mut state = populated_state();
    apply_ok(&mut state, &append("team", "alice", "alice-phone", "m1", 1));
    apply_ok(&mut state, &mark_read("team", "bob", 1));

    apply_ok(&mut state, &remove_member("team", "alice", "bob"));
    let while_removed = state.read_watermark("team", "bob");
    apply_ok(&mut state, &add_members("team", "alice", &["bob"]));

    assert_eq!(while_removed, 1);
    assert_eq!(state.read_watermark("team", "bob"), 1);
}

#[test]
fn appends_get_consecutive_seqs() {
    let mut state = populated_state();

    let seqs: Vec<u64> = ["m1", "m2", "m3"]
        .iter()
        .map(|id| {
            appended(apply_ok(
                &mut state,
                &append("team", "bob", "bob-pc", id, 5),
            ))
            .seq
        })
        .collect();

    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(state.last_seq("team"), Some(3));
    assert_eq!(state.last_seq("dm"), Some(0));
    assert_eq!(state.last_seq("nope"), None);
}

#[test]
fn append_retry_returns_original_seq() {
    let mut state = populated_state();
    let original = appended(apply_ok(
        &mut state,
        &append("dm", "alice", "phone", "m1", 10),
    ));
    apply_ok(&mut state, &append("dm", "bob", "laptop", "m1", 20));
    let bytes = state.encode_snapshot();

    let retry = appended(apply_ok(
        &mut state,
        &append("dm", "alice", "phone", "m1", 30),
    ));

    assert!(!original.duplicate);
    assert!(retry.duplicate);
    assert_eq!(retry.seq, original.seq);
    assert_eq!(retry.server_time_ms, 10);
    assert!(state.encode_snapshot() == bytes);
}

#[test]
fn append_retry_after_removal_returns_original_seq() {
    let mut state = populated_state();
    apply_ok(&mut state, &append("team", "carol", "carol-pc", "m1", 10));
    apply_ok(&mut state, &remove_member("team", "alice", "carol"));

    let retry = appended(apply_ok(
        &mut state,
        &append("team", "carol", "carol-pc", "m1", 11),
    ));

    assert!(retry.duplicate);
    assert_eq!(retry.seq, 1);
}

#[test]
fn append_retry_older_than_window_appends_again() {
    let limits = Limits {
        dedup_window_per_device: 2,
        ..Limits::default()
    };
    let mut state = ShardState::new(limits);
    apply_ok(&mut state, &create_direct("dm", "alice", "bob"));
    for id in ["m1", "m2", "m3"] {
        apply_ok(&mut state, &append("dm", "alice", "phone", id, 1));
    }

    let old_retry = appended(apply_ok(
        &mut state,
        &append("dm", "alice", "phone", "m1", 1),
    ));
    let recent_retry = appended(apply_ok(
        &mut state,
        &append("dm", "alice", "phone", "m3", 1),
    ));

    assert!(!old_retry.duplicate);
    assert_eq!(old_retry.seq, 4);
    assert!(recent_retry.duplicate);
    assert_eq!(recent_retry.seq, 3);
}

#[test]
fn dedup_is_per_sender_and_conversation() {
    let mut state = populated_state();
    apply_ok(&mut state, &add_members("team", "alice", &["dave"]));
    let first = appended(apply_ok(
        &mut state,
        &append("team", "alice", "phone", "m1", 1),
    ));

    let other_device = appended(apply_ok(
        &mut state,
        &append("team", "alice", "pc", "m1", 1),
    ));
    let other_user = appended(apply_ok(
        &mut state,
        &append("team", "bob", "phone", "m1", 1),
    ));
    let other_conversation = appended(apply_ok(
        &mut state,
        &append("dm", "alice", "phone", "m1", 1),
    ));

    assert_eq!(first.seq, 1);
    assert!(!other_device.duplicate);
    assert_eq!(other_device.seq, 2);
    assert!(!other_user.duplicate);
    assert_eq!(other_user.seq, 3);
    assert!(!other_conversation.duplicate);
    assert_eq!(other_conversation.seq, 1);
}

#[test]
fn server_time_never_decreases() {
    let mut state = populated_state();

    let times: Vec<u64> = [(1, 100), (2, 50), (3, 150), (4, 0)]
        .iter()
        .map(|(id, proposer_time_ms)| {
            let command = append("dm", "alice", "phone", &format!("m{id}"), *proposer_time_ms);
            appended(apply_ok(&mut state, &command)).server_time_ms
        })
        .collect();

    assert_eq!(times, vec![100, 100, 150, 150]);
}

#[test]
fn receipt_backwards_does_not_regress() {
    let mut state = populated_state();
    for id in ["m1", "m2", "m3"] {
        apply_ok(&mut state, &append("dm", "alice", "phone", id, 1));
    }

    let forward = receipt(apply_ok(&mut state, &mark_read("dm", "bob", 3)));
    let backward = receipt(apply_ok(&mut state, &mark_read("dm", "bob", 1)));
    let same = receipt(apply_ok(&mut state, &mark_read("dm", "bob", 3)));

    assert!(forward.moved);
    assert_eq!(forward.watermark, 3);
    assert!(!backward.moved);
    assert_eq!(backward.watermark, 3);
    assert!(!same.moved);
    assert_eq!(state.read_watermark("dm", "bob"), 3);
}

#[test]
fn delivered_watermarks_are_per_device() {
    let mut state = populated_state();
    for id in ["m1", "m2"] {
        apply_ok(&mut state, &append("dm", "alice", "phone", id, 1));
    }

    apply_ok(&mut state, &mark_delivered("dm", "bob", "bob-phone", 2));
    apply_ok(&mut state, &mark_delivered("dm", "bob", "bob-pc", 1));

    assert_eq!(state.delivered_watermark("dm", "bob", "bob-phone"), 2);
    assert_eq!(state.delivered_watermark("dm", "bob", "bob-pc"), 1);
    assert_eq!(state.delivered_watermark("dm", "alice", "alice-phone"), 0);
    assert_eq!(state.read_watermark("dm", "bob"), 0);
}

#[test]
fn delivered_watermarks_are_per_user_and_device() {
    let mut state = populated_state();
    for id in ["m1", "m2", "m3"] {
        apply_ok(&mut state, &append("team", "alice", "cli", id, 1));
    }

    let alice = receipt(apply_ok(
        &mut state,
        &mark_delivered("team", "alice", "cli", 3),
    ));
    let bob = receipt(apply_ok(
        &mut state,
        &mark_delivered("team", "bob", "cli", 3),
    ));
    let carol = receipt(apply_ok(
        &mut state,
        &mark_delivered("team", "carol", "cli", 1),
    ));

    assert!(alice.moved);
    assert!(
        bob.moved,
        "bob's ack moves bob's cli although alice's cli is at 3"
    );
    assert_eq!(bob.watermark, 3);
    assert!(carol.moved);
    assert_eq!(carol.watermark, 1);
    assert_eq!(state.delivered_watermark("team", "alice", "cli"), 3);
    assert_eq!(state.delivered_watermark("team", "bob", "cli"), 3);
    assert_eq!(state.delivered_watermark("team", "carol", "cli"), 1);
    assert_eq!(state.delivered_watermark("team", "dave", "cli"), 0);
}

#[test]
fn receipt_of_seq_zero_does_not_move() {
    let mut state = populated_state();

    let outcome = receipt(apply_ok(
        &mut state,
        &mark_delivered("dm", "bob", "bob-pc", 0),
    ));

    assert!(!outcome.moved);
    assert_eq!(outcome.watermark, 0);
}

#[test]
fn history_returns_stored_messages() {
    let mut state = populated_state();
    apply_ok(
        &mut state,
        &append_body("dm", "alice", "phone", "m1", b"ciphertext", 42),
    );

    let page = match state.history(&history_query("dm", "bob", 1, 10)) {
        Ok(page) => page,
        Err(rejection) => panic!("history was rejected: {rejection:?}"),
    };

    let expected = StoredMessage {
        seq: 1,
        sender_user: "alice".to_owned(),
        sender_device: "phone".to_owned(),
        client_message_id: "m1".to_owned(),
        body: b"ciphertext".to_vec(),
        server_time_ms: 42,
    };
    assert_eq!(page.messages, vec![expected]);
    assert_eq!(page.last_seq, 1);
}

#[test]
fn history_pages_honour_from_seq_and_limit() {
    let limits = Limits {
        history_page_max: 3,
        ..Limits::default()
    };
    let mut state = ShardState::new(limits);
    apply_ok(&mut state, &create_direct("dm", "alice", "bob"));
    for id in 1..=5 {
        apply_ok(
            &mut state,
            &append("dm", "alice", "phone", &format!("m{id}"), 1),
        );
    }

    assert_eq!(
        page_seqs(&state, &history_query("dm", "bob", 0, 2)),
        vec![1, 2]
    );
    assert_eq!(
        page_seqs(&state, &history_query("dm", "bob", 2, 0)),
        vec![2, 3, 4]
    );
    assert_eq!(
        page_seqs(&state, &history_query("dm", "bob", 4, 100)),
        vec![4, 5]
    );
    assert_eq!(
        page_seqs(&state, &history_query("dm", "bob", 2, u32::MAX)),
        vec![2, 3, 4]
    );
    assert!(page_seqs(&state, &history_query("dm", "bob", 6, 0)).is_empty());
    assert!(page_seqs(&state, &history_query("dm", "bob", u64::MAX, 0)).is_empty());
}

#[test]
fn removed_member_cannot_read_history() {
    let mut state = populated_state();
    apply_ok(&mut state, &remove_member("team", "alice", "carol"));

    let result = state.history(&history_query("team", "carol", 1, 0));

    assert!(result.is_err());
}

#[test]
fn queries_return_sorted_ids() {
    let mut state = ShardState::new(Limits::default());
    for conversation_id in ["zeta", "alpha", "mid"] {
        apply_ok(&mut state, &create_group(conversation_id, "zoe", &["adam"]));
    }

    assert_eq!(state.conversation_ids(), vec!["alpha", "mid", "zeta"]);
    assert_eq!(
        state.members("mid"),
        Some(vec!["adam".to_owned(), "zoe".to_owned()])
    );
    assert_eq!(state.members("nope"), None);
    assert_eq!(state.devices("nope"), None);
}

#[test]
fn apply_encoded_matches_apply() {
    let commands: Vec<Command> = vec![
        register_user("alice"),
        create_direct("dm", "alice", "bob"),
        append("dm", "alice", "phone", "m1", 7),
        append("dm", "alice", "phone", "m1", 8),
        mark_read("dm", "bob", 1),
        mark_read("dm", "carol", 1),
    ];
    let mut direct = ShardState::new(Limits::default());
    let mut encoded = ShardState::new(Limits::default());

    for command in &commands {
        let expected = direct.apply(command);
        let actual = encoded.apply_encoded(&command.encode_to_vec());
        assert_eq!(actual, expected, "{command:?}");
        assert_eq!(actual.version, COMMAND_VERSION);
    }

    assert!(direct.encode_snapshot() == encoded.encode_snapshot());
}

#[test]
fn applied_state_passes_validation() {
    let mut state = populated_state();
    apply_ok(&mut state, &append("team", "bob", "pc", "m1", 3));
    apply_ok(&mut state, &mark_delivered("team", "carol", "carol-pc", 1));

    assert_eq!(state.validate(), Ok(()));
}
