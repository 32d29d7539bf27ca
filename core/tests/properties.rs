//! Property tests over random command logs.
//!
//! The logs draw from a few users, devices, conversations and client message
//! ids, so retries, duplicate ids, non-members, out-of-range and backward
//! receipts, full groups and wrong versions all occur often. Each log runs
//! against small limits and is checked against a model of seqs, server
//! times, dedup windows and receipt watermarks, and for determinism across
//! replicas and snapshots. Every user draws from the same device ids, so the
//! logs also check that delivered watermarks of two users' devices with one
//! id stay apart.

mod common;

use std::collections::{BTreeMap, VecDeque};

use common::command;
use parley_core::proto::command::Kind;
use parley_core::proto::command_result::Outcome;
use parley_core::proto::{
    AddMembers, Append, Appended, Command, CommandResult, CreateDirect, CreateGroup, HistoryQuery,
    MarkDelivered, MarkRead, ReceiptAdvanced, RegisterDevice, RegisterUser, RejectionCode,
    RemoveMember,
};
use parley_core::{Limits, ShardState};
use proptest::prelude::*;
use prost::Message;

const USERS: [&str; 5] = ["u0", "u1", "u2", "u3", "u4"];
const DEVICES: [&str; 2] = ["d0", "d1"];
const CONVERSATIONS: [&str; 3] = ["c0", "c1", "c2"];
const CLIENT_IDS: [&str; 5] = ["m0", "m1", "m2", "m3", "m4"];
const INVALID_ID: &str = "bad id";

fn limits() -> Limits {
    Limits {
        group_members_max: 4,
        body_bytes_max: 4,
        dedup_window_per_device: 2,
        id_bytes_max: 8,
        members_per_command_max: 2,
        devices_per_user_max: 1,
        history_page_max: 3,
    }
}

/// One generated log entry, with ids as indexes into the constant tables.
#[derive(Clone, Debug)]
enum Op {
    RegisterUser(usize),
    RegisterDevice(usize, usize),
    CreateDirect(usize, usize, usize),
    CreateGroup(usize, usize, Vec<usize>),
    AddMembers(usize, usize, Vec<usize>),
    RemoveMember(usize, usize, usize),
    Append {
        conversation: usize,
        user: usize,
        device: usize,
        client_id: usize,
        body_bytes: usize,
        time_ms: u64,
    },
    /// Repeats an earlier Append of the log, picked by index modulo count.
    RetryAppend(usize),
    MarkDelivered(usize, usize, usize, u64),
    MarkRead(usize, usize, u64),
}

/// A change that makes a command invalid.
#[derive(Clone, Debug)]
enum Mutation {
    None,
    Version(u32),
    MissingKind,
    InvalidId,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let user = 0..USERS.len();
    let device = 0..DEVICES.len();
    let conversation = 0..CONVERSATIONS.len();
    let users = proptest::collection::vec(0..USERS.len(), 0..=3);
    prop_oneof![
        1 => user.clone().prop_map(Op::RegisterUser),
        1 => (user.clone(), device.clone()).prop_map(|(u, d)| Op::RegisterDevice(u, d)),
        2 => (conversation.clone(), user.clone(), user.clone())
            .prop_map(|(c, a, b)| Op::CreateDirect(c, a, b)),
        2 => (conversation.clone(), user.clone(), users.clone())
            .prop_map(|(c, creator, members)| Op::CreateGroup(c, creator, members)),
        2 => (conversation.clone(), user.clone(), users)
            .prop_map(|(c, actor, users)| Op::AddMembers(c, actor, users)),
        1 => (conversation.clone(), user.clone(), user.clone())
            .prop_map(|(c, actor, u)| Op::RemoveMember(c, actor, u)),
        8 => (conversation.clone(), user.clone(), device.clone(), 0..CLIENT_IDS.len(), 0..6usize, 0..100u64)
            .prop_map(|(conversation, user, device, client_id, body_bytes, time_ms)| Op::Append {
                conversation, user, device, client_id, body_bytes, time_ms,
            }),
        3 => any::<usize>().prop_map(Op::RetryAppend),
        3 => (conversation.clone(), user.clone(), device, 0..6u64)
            .prop_map(|(c, u, d, seq)| Op::MarkDelivered(c, u, d, seq)),
        3 => (conversation, user, 0..6u64).prop_map(|(c, u, seq)| Op::MarkRead(c, u, seq)),
    ]
}

fn mutation_strategy() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        30 => Just(Mutation::None),
        1 => prop_oneof![Just(0u32), Just(2), Just(u32::MAX)].prop_map(Mutation::Version),
        1 => Just(Mutation::MissingKind),
        1 => Just(Mutation::InvalidId),
    ]
}

fn log_strategy() -> impl Strategy<Value = Vec<Command>> {
    proptest::collection::vec((op_strategy(), mutation_strategy()), 0..80).prop_map(build_log)
}

/// Commands that start every log, so that most generated commands address
/// an existing conversation: `c0` is direct between u0 and u1, `c1` a group
/// of u0, u1 and u2, and `c2` does not exist yet.
fn prelude() -> Vec<Command> {
    vec![
        build_command(Op::RegisterUser(0)),
        build_command(Op::CreateDirect(0, 0, 1)),
        build_command(Op::CreateGroup(1, 0, vec![1, 2])),
    ]
}

fn build_log(steps: Vec<(Op, Mutation)>) -> Vec<Command> {
    let mut appends: Vec<Command> = Vec::new();
    let mut log = prelude();

    for (op, mutation) in steps {
        let built = match op {
            Op::RetryAppend(_) if appends.is_empty() => continue,
            Op::RetryAppend(pick) => appends[pick % appends.len()].clone(),
            op => build_command(op),
        };
        if matches!(built.kind, Some(Kind::Append(_))) {
            appends.push(built.clone());
        }
        log.push(mutate(built, mutation));
    }

    log
}

fn build_command(op: Op) -> Command {
    let user = |index: usize| USERS[index].to_owned();
    let conversation = |index: usize| CONVERSATIONS[index].to_owned();
    let users = |indexes: Vec<usize>| indexes.into_iter().map(user).collect();

    command(match op {
        Op::RegisterUser(u) => Kind::RegisterUser(RegisterUser { user_id: user(u) }),
        Op::RegisterDevice(u, d) => Kind::RegisterDevice(RegisterDevice {
            user_id: user(u),
            device_id: DEVICES[d].to_owned(),
        }),
        Op::CreateDirect(c, a, b) => Kind::CreateDirect(CreateDirect {
            conversation_id: conversation(c),
            user_a: user(a),
            user_b: user(b),
        }),
        Op::CreateGroup(c, creator, members) => Kind::CreateGroup(CreateGroup {
            conversation_id: conversation(c),
            creator: user(creator),
            members: users(members),
        }),
        Op::AddMembers(c, actor, added) => Kind::AddMembers(AddMembers {
            conversation_id: conversation(c),
            actor: user(actor),
            users: users(added),
        }),
        Op::RemoveMember(c, actor, u) => Kind::RemoveMember(RemoveMember {
            conversation_id: conversation(c),
            actor: user(actor),
            user: user(u),
        }),
        Op::Append {
            conversation: c,
            user: u,
            device,
            client_id,
            body_bytes,
            time_ms,
        } => Kind::Append(Append {
            conversation_id: conversation(c),
            sender_user: user(u),
            sender_device: DEVICES[device].to_owned(),
            client_message_id: CLIENT_IDS[client_id].to_owned(),
            body: vec![0xab; body_bytes],
            proposer_time_ms: time_ms,
        }),
        Op::MarkDelivered(c, u, d, seq) => Kind::MarkDelivered(MarkDelivered {
            conversation_id: conversation(c),
            user_id: user(u),
            device_id: DEVICES[d].to_owned(),
            seq,
        }),
        Op::MarkRead(c, u, seq) => Kind::MarkRead(MarkRead {
            conversation_id: conversation(c),
            user_id: user(u),
            seq,
        }),
        Op::RetryAppend(_) => unreachable!("retries are resolved in build_log"),
    })
}

fn mutate(mut command: Command, mutation: Mutation) -> Command {
    match mutation {
        Mutation::None => {}
        Mutation::Version(version) => command.version = version,
        Mutation::MissingKind => command.kind = None,
        Mutation::InvalidId => {
            let invalid = INVALID_ID.to_owned();
            match command.kind.as_mut() {
                Some(Kind::RegisterUser(c)) => c.user_id = invalid,
                Some(Kind::RegisterDevice(c)) => c.device_id = invalid,
                Some(Kind::CreateDirect(c)) => c.user_b = invalid,
                Some(Kind::CreateGroup(c)) => c.creator = invalid,
                Some(Kind::AddMembers(c)) => c.actor = invalid,
                Some(Kind::RemoveMember(c)) => c.user = invalid,
                Some(Kind::Append(c)) => c.client_message_id = invalid,
                Some(Kind::MarkDelivered(c)) => c.device_id = invalid,
                Some(Kind::MarkRead(c)) => c.conversation_id = invalid,
                None => {}
            }
        }
    }
    command
}

/// The expected effect of appends: committed seqs and server times per
/// conversation, and the dedup window per (conversation, user, device).
#[derive(Default)]
struct AppendModel {
    times_by_conversation: BTreeMap<String, Vec<u64>>,
    windows: BTreeMap<(String, String, String), VecDeque<(String, u64)>>,
}

impl AppendModel {
    fn original_seq(&self, append: &Append) -> Option<u64> {
        let key = window_key(append);
        let window = self.windows.get(&key)?;
        window
            .iter()
            .find(|(client_id, _)| *client_id == append.client_message_id)
            .map(|(_, seq)| *seq)
    }

    fn time_of(&self, conversation_id: &str, seq: u64) -> u64 {
        self.times_by_conversation[conversation_id][usize::try_from(seq - 1).expect("small seq")]
    }

    fn record(&mut self, append: &Append, capacity: usize) -> (u64, u64) {
        let times = self
            .times_by_conversation
            .entry(append.conversation_id.clone())
            .or_default();
        let time = append
            .proposer_time_ms
            .max(times.last().copied().unwrap_or(0));
        times.push(time);
        let seq = times.len() as u64;

        let window = self.windows.entry(window_key(append)).or_default();
        window.push_back((append.client_message_id.clone(), seq));
        if window.len() > capacity {
            window.pop_front();
        }
        (seq, time)
    }
}

/// The expected receipt watermarks: delivered per (conversation, user,
/// device) and read per (conversation, user). A missing entry means 0.
#[derive(Default)]
struct ReceiptModel {
    delivered: BTreeMap<(String, String, String), u64>,
    read: BTreeMap<(String, String), u64>,
}

impl ReceiptModel {
    fn delivered(&mut self, mark: &MarkDelivered) -> &mut u64 {
        let key = (
            mark.conversation_id.clone(),
            mark.user_id.clone(),
            mark.device_id.clone(),
        );
        self.delivered.entry(key).or_insert(0)
    }

    fn read(&mut self, mark: &MarkRead) -> &mut u64 {
        let key = (mark.conversation_id.clone(), mark.user_id.clone());
        self.read.entry(key).or_insert(0)
    }
}

fn window_key(append: &Append) -> (String, String, String) {
    (
        append.conversation_id.clone(),
        append.sender_user.clone(),
        append.sender_device.clone(),
    )
}

fn rejection_code(result: &CommandResult) -> Option<RejectionCode> {
    match &result.outcome {
        Some(Outcome::Rejected(rejection)) => Some(rejection.code()),
        _ => None,
    }
}

/// Checks an append result against the model and updates the model.
fn check_append(
    before: &ShardState,
    append: &Append,
    result: &CommandResult,
    model: &mut AppendModel,
) {
    let code = rejection_code(result);
    let Some(last_seq) = before.last_seq(&append.conversation_id) else {
        assert_eq!(code, Some(RejectionCode::UnknownConversation));
        return;
    };

    if let Some(seq) = model.original_seq(append) {
        let expected = Appended {
            conversation_id: append.conversation_id.clone(),
            seq,
            server_time_ms: model.time_of(&append.conversation_id, seq),
            duplicate: true,
        };
        assert_eq!(
            result.outcome,
            Some(Outcome::Appended(expected)),
            "retry of {append:?}"
        );
        return;
    }

    let members = before.members(&append.conversation_id).unwrap_or_default();
    if !members.contains(&append.sender_user) {
        assert_eq!(code, Some(RejectionCode::NotAMember));
    } else if append.body.len() > limits().body_bytes_max {
        assert_eq!(code, Some(RejectionCode::BodyTooLarge));
    } else {
        let (seq, server_time_ms) = model.record(append, limits().dedup_window_per_device);
        assert_eq!(seq, last_seq + 1);
        let expected = Appended {
            conversation_id: append.conversation_id.clone(),
            seq,
            server_time_ms,
            duplicate: false,
        };
        assert_eq!(
            result.outcome,
            Some(Outcome::Appended(expected)),
            "{append:?}"
        );
    }
}

/// Checks a receipt result: rejections for unknown conversations,
/// non-members and seqs beyond last_seq, otherwise max(modeled, seq). Moves
/// `modeled`, the model's watermark, when the receipt is accepted.
fn check_receipt(
    before: &ShardState,
    conversation_id: &str,
    user_id: &str,
    seq: u64,
    modeled: &mut u64,
    result: &CommandResult,
) {
    let code = rejection_code(result);
    let Some(last_seq) = before.last_seq(conversation_id) else {
        assert_eq!(code, Some(RejectionCode::UnknownConversation));
        return;
    };

    let members = before.members(conversation_id).unwrap_or_default();
    if !members.iter().any(|member| member == user_id) {
        assert_eq!(code, Some(RejectionCode::NotAMember));
    } else if seq > last_seq {
        assert_eq!(code, Some(RejectionCode::ReceiptBeyondLastSeq));
    } else {
        let expected = ReceiptAdvanced {
            conversation_id: conversation_id.to_owned(),
            watermark: (*modeled).max(seq),
            moved: seq > *modeled,
        };
        assert_eq!(result.outcome, Some(Outcome::ReceiptAdvanced(expected)));
        *modeled = (*modeled).max(seq);
    }
}

/// Checks the result of one command against the model and the state before
/// it.
fn check_result(
    before: &ShardState,
    command: &Command,
    result: &CommandResult,
    model: &mut AppendModel,
    receipts: &mut ReceiptModel,
) {
    if command.version != parley_core::COMMAND_VERSION {
        assert_eq!(
            rejection_code(result),
            Some(RejectionCode::UnsupportedVersion)
        );
        return;
    }

    match &command.kind {
        None => assert_eq!(rejection_code(result), Some(RejectionCode::Malformed)),
        Some(kind) if mentions_invalid_id(kind) => {
            let code = rejection_code(result);
            assert!(
                matches!(
                    code,
                    Some(RejectionCode::InvalidId | RejectionCode::TooManyItems)
                ),
                "{code:?}"
            );
        }
        Some(Kind::Append(append)) => check_append(before, append, result, model),
        Some(Kind::MarkDelivered(mark)) => check_receipt(
            before,
            &mark.conversation_id,
            &mark.user_id,
            mark.seq,
            receipts.delivered(mark),
            result,
        ),
        Some(Kind::MarkRead(mark)) => check_receipt(
            before,
            &mark.conversation_id,
            &mark.user_id,
            mark.seq,
            receipts.read(mark),
            result,
        ),
        Some(_) => {}
    }
}

fn mentions_invalid_id(kind: &Kind) -> bool {
    format!("{kind:?}").contains(INVALID_ID)
}

/// A watermark the log can touch: (watermark kind, conversation, user,
/// device). The device is empty for read watermarks.
type WatermarkKey = (&'static str, &'static str, &'static str, &'static str);

/// Collects every watermark the log can touch.
fn watermarks(state: &ShardState) -> BTreeMap<WatermarkKey, u64> {
    let mut all = BTreeMap::new();
    for conversation_id in CONVERSATIONS {
        for user_id in USERS {
            for device_id in DEVICES {
                let seq = state.delivered_watermark(conversation_id, user_id, device_id);
                all.insert(("delivered", conversation_id, user_id, device_id), seq);
            }
            let seq = state.read_watermark(conversation_id, user_id);
            all.insert(("read", conversation_id, user_id, ""), seq);
        }
    }
    all
}

/// Collects the watermarks that `receipts` expects, in the shape of
/// [`watermarks`].
fn modeled_watermarks(receipts: &ReceiptModel) -> BTreeMap<WatermarkKey, u64> {
    let mut all = BTreeMap::new();
    for conversation_id in CONVERSATIONS {
        for user_id in USERS {
            for device_id in DEVICES {
                let key = (conversation_id.into(), user_id.into(), device_id.into());
                let seq = receipts.delivered.get(&key).copied().unwrap_or(0);
                all.insert(("delivered", conversation_id, user_id, device_id), seq);
            }
            let key = (conversation_id.into(), user_id.into());
            let seq = receipts.read.get(&key).copied().unwrap_or(0);
            all.insert(("read", conversation_id, user_id, ""), seq);
        }
    }
    all
}

/// Checks that no watermark decreased and none exceeds its last_seq.
fn check_watermarks(before: &ShardState, after: &ShardState) {
    let previous = watermarks(before);
    for (key, seq) in watermarks(after) {
        let (_, conversation_id, _, _) = key;
        let last_seq = after.last_seq(conversation_id).unwrap_or(0);
        assert!(
            seq >= previous[&key],
            "{key:?} regressed from {}",
            previous[&key]
        );
        assert!(
            seq <= last_seq,
            "{key:?} is {seq}, beyond last_seq {last_seq}"
        );
    }
}

/// Reads every page of each conversation's history as its first member and
/// checks seqs 1..=last_seq and non-decreasing server times against the
/// model.
fn check_history(state: &ShardState, model: &AppendModel) {
    for conversation_id in state.conversation_ids() {
        let last_seq = state.last_seq(&conversation_id).unwrap_or(0);
        let modeled = model
            .times_by_conversation
            .get(&conversation_id)
            .cloned()
            .unwrap_or_default();
        assert_eq!(last_seq, modeled.len() as u64, "{conversation_id}");

        let Some(reader) = state
            .members(&conversation_id)
            .unwrap_or_default()
            .first()
            .cloned()
        else {
            continue;
        };
        let mut times = Vec::new();
        let mut from_seq = 1;
        loop {
            let query = HistoryQuery {
                conversation_id: conversation_id.clone(),
                reader: reader.clone(),
                from_seq,
                limit: 0,
            };
            let page = state.history(&query).expect("a member reads history");
            assert!(page.messages.len() <= limits().history_page_max);
            if page.messages.is_empty() {
                break;
            }
            for message in &page.messages {
                assert_eq!(message.seq, from_seq, "gap in {conversation_id}");
                times.push(message.server_time_ms);
                from_seq += 1;
            }
        }
        assert_eq!(from_seq - 1, last_seq);
        assert_eq!(times, modeled);
        assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "{times:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_log_matches_model(log in log_strategy()) {
        let mut state = ShardState::new(limits());
        let mut model = AppendModel::default();
        let mut receipts = ReceiptModel::default();

        for command in &log {
            let before = state.clone();
            let before_bytes = state.encode_snapshot();

            let result = state.apply(command);

            prop_assert_eq!(result.version, parley_core::COMMAND_VERSION);
            check_result(&before, command, &result, &mut model, &mut receipts);
            if rejection_code(&result).is_some() {
                prop_assert!(state.encode_snapshot() == before_bytes, "{:?} changed state", command);
            }
            check_watermarks(&before, &state);
            prop_assert_eq!(watermarks(&state), modeled_watermarks(&receipts), "after {:?}", command);
            prop_assert_eq!(state.validate(), Ok(()));
        }

        check_history(&state, &model);
    }

    #[test]
    fn replicas_of_same_log_end_identical(log in log_strategy(), split in any::<prop::sample::Index>()) {
        let mut direct = ShardState::new(limits());
        let mut encoded = ShardState::new(limits());
        let split = split.index(log.len() + 1);

        let mut direct_results = Vec::new();
        let mut encoded_results = Vec::new();
        for command in &log {
            direct_results.push(direct.apply(command));
            encoded_results.push(encoded.apply_encoded(&command.encode_to_vec()));
        }

        let mut restored = ShardState::new(limits());
        for command in &log[..split] {
            restored.apply(command);
        }
        let mut restored = ShardState::decode_snapshot(&restored.encode_snapshot())
            .expect("a snapshot of an applied log decodes");
        let restored_results: Vec<CommandResult> =
            log[split..].iter().map(|command| restored.apply(command)).collect();

        prop_assert_eq!(&direct_results, &encoded_results);
        prop_assert_eq!(&direct_results[split..], &restored_results[..]);
        prop_assert!(direct.encode_snapshot() == encoded.encode_snapshot());
        prop_assert!(direct.encode_snapshot() == restored.encode_snapshot());
        prop_assert_eq!(direct.digest(), restored.digest());
    }

    #[test]
    fn snapshot_round_trip_keeps_bytes(log in log_strategy()) {
        let mut state = ShardState::new(limits());
        for command in &log {
            state.apply(command);
        }
        let bytes = state.encode_snapshot();

        let decoded = ShardState::decode_snapshot(&bytes).expect("the snapshot decodes");

        prop_assert!(decoded.encode_snapshot() == bytes);
        prop_assert_eq!(decoded, state);
    }

    #[test]
    fn mutated_snapshot_is_rejected(
        log in log_strategy(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 1..4),
    ) {
        let mut state = ShardState::new(limits());
        for command in &log {
            state.apply(command);
        }
        let mut bytes = state.encode_snapshot();

        for (index, mask) in edits {
            let position = index.index(bytes.len());
            bytes[position] ^= mask;
        }

        // Edits may cancel each other out, so only bytes that differ must fail.
        if bytes != state.encode_snapshot() {
            prop_assert!(ShardState::decode_snapshot(&bytes).is_err());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_decode(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(ShardState::decode_snapshot(&bytes).is_err());
    }
}
