//! Command builders and result accessors shared by the integration tests.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use parley_core::proto::command::Kind;
use parley_core::proto::command_result::Outcome;
use parley_core::proto::{
    AddMembers, Append, Appended, Command, CommandResult, ConversationCreated, CreateDirect,
    CreateGroup, MarkDelivered, MarkRead, MembersChanged, ReceiptAdvanced, RegisterDevice,
    RegisterUser, Registered, Rejection, RemoveMember,
};
use parley_core::{ShardState, COMMAND_VERSION};

pub fn command(kind: Kind) -> Command {
    Command {
        version: COMMAND_VERSION,
        kind: Some(kind),
    }
}

pub fn register_user(user_id: &str) -> Command {
    command(Kind::RegisterUser(RegisterUser {
        user_id: user_id.to_owned(),
    }))
}

pub fn register_device(user_id: &str, device_id: &str) -> Command {
    command(Kind::RegisterDevice(RegisterDevice {
        user_id: user_id.to_owned(),
        device_id: device_id.to_owned(),
    }))
}

pub fn create_direct(conversation_id: &str, user_a: &str, user_b: &str) -> Command {
    command(Kind::CreateDirect(CreateDirect {
        conversation_id: conversation_id.to_owned(),
        user_a: user_a.to_owned(),
        user_b: user_b.to_owned(),
    }))
}

pub fn create_group(conversation_id: &str, creator: &str, members: &[&str]) -> Command {
    command(Kind::CreateGroup(CreateGroup {
        conversation_id: conversation_id.to_owned(),
        creator: creator.to_owned(),
        members: strings(members),
    }))
}

pub fn add_members(conversation_id: &str, actor: &str, users: &[&str]) -> Command {
    command(Kind::AddMembers(AddMembers {
        conversation_id: conversation_id.to_owned(),
        actor: actor.to_owned(),
        users: strings(users),
    }))
}

pub fn remove_member(conversation_id: &str, actor: &str, user: &str) -> Command {
    command(Kind::RemoveMember(RemoveMember {
        conversation_id: conversation_id.to_owned(),
        actor: actor.to_owned(),
        user: user.to_owned(),
    }))
}

/// Builds an append with the body `b"hello"`.
pub fn append(
    conversation_id: &str,
    sender_user: &str,
    sender_device: &str,
    client_message_id: &str,
    proposer_time_ms: u64,
) -> Command {
    append_body(
        conversation_id,
        sender_user,
        sender_device,
        client_message_id,
        b"hello",
        proposer_time_ms,
    )
}

pub fn append_body(
    conversation_id: &str,
    sender_user: &str,
    sender_device: &str,
    client_message_id: &str,
    body: &[u8],
    proposer_time_ms: u64,
) -> Command {
    command(Kind::Append(Append {
        conversation_id: conversation_id.to_owned(),
        sender_user: sender_user.to_owned(),
        sender_device: sender_device.to_owned(),
        client_message_id: client_message_id.to_owned(),
        body: body.to_vec(),
        proposer_time_ms,
    }))
}

pub fn mark_delivered(conversation_id: &str, user_id: &str, device_id: &str, seq: u64) -> Command {
    command(Kind::MarkDelivered(MarkDelivered {
        conversation_id: conversation_id.to_owned(),
        user_id: user_id.to_owned(),
        device_id: device_id.to_owned(),
        seq,
    }))
}

pub fn mark_read(conversation_id: &str, user_id: &str, seq: u64) -> Command {
    command(Kind::MarkRead(MarkRead {
        conversation_id: conversation_id.to_owned(),
        user_id: user_id.to_owned(),
        seq,
    }))
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|value| (*value).to_owned()).collect()
}

/// Applies `command` and panics unless it succeeded.
pub fn apply_ok(state: &mut ShardState, command: &Command) -> Outcome {
    let result = state.apply(command);
    match result.outcome {
        Some(Outcome::Rejected(rejection)) => {
            panic!("{command:?} was rejected: {rejection:?}")
        }
        Some(outcome) => outcome,
        None => panic!("{command:?} returned a result without an outcome"),
    }
}

pub fn rejection(result: &CommandResult) -> &Rejection {
    match &result.outcome {
        Some(Outcome::Rejected(rejection)) => rejection,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

pub fn registered(outcome: Outcome) -> Registered {
    match outcome {
        Outcome::Registered(registered) => registered,
        other => panic!("expected Registered, got {other:?}"),
    }
}

pub fn created(outcome: Outcome) -> ConversationCreated {
    match outcome {
        Outcome::ConversationCreated(created) => created,
        other => panic!("expected ConversationCreated, got {other:?}"),
    }
}

pub fn members_changed(outcome: Outcome) -> MembersChanged {
    match outcome {
        Outcome::MembersChanged(changed) => changed,
        other => panic!("expected MembersChanged, got {other:?}"),
    }
}

pub fn appended(outcome: Outcome) -> Appended {
    match outcome {
        Outcome::Appended(appended) => appended,
        other => panic!("expected Appended, got {other:?}"),
    }
}

pub fn receipt(outcome: Outcome) -> ReceiptAdvanced {
    match outcome {
        Outcome::ReceiptAdvanced(receipt) => receipt,
        other => panic!("expected ReceiptAdvanced, got {other:?}"),
    }
}

/// Builds a state with users alice, bob and carol, a direct conversation
/// `dm` of alice and bob, and a group `team` of all three.
pub fn populated_state() -> ShardState {
    let mut state = ShardState::new(parley_core::Limits::default());
    for user in ["alice", "bob", "carol"] {
        apply_ok(&mut state, &register_user(user));
    }
    apply_ok(&mut state, &register_device("alice", "alice-phone"));
    apply_ok(&mut state, &create_direct("dm", "alice", "bob"));
    apply_ok(
        &mut state,
        &create_group("team", "alice", &["bob", "carol"]),
    );
    state
}
