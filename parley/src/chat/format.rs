//! The chat client's output lines. Each line starts with a fixed word or a
//! number, fields are separated by single spaces, and message text comes
//! last, so scripts can split a line on its first few spaces.

use parley_gateway::proto::server_event::Event;
use parley_gateway::proto::{
    Conversation, ConversationKind, MembershipEvent, Message, PresenceEvent, ReceiptEvent,
    ReceiptKind, TypingEvent,
};

/// Returns a message body as one line of text: the text with control
/// characters and backslashes escaped as in a Rust string literal, or
/// `<N bytes>` when the body is not UTF-8.
pub fn body_text(body: &[u8]) -> String {
    let Ok(text) = std::str::from_utf8(body) else {
        return format!("<{} bytes>", body.len());
    };
    let mut line = String::with_capacity(text.len());
    for character in text.chars() {
        if character == '\\' || character.is_control() {
            line.extend(character.escape_default());
        } else {
            line.push(character);
        }
    }
    line
}

/// Formats milliseconds since the Unix epoch as RFC 3339 UTC, to the
/// millisecond.
pub fn time_text(unix_ms: u64) -> String {
    let Ok(signed) = i64::try_from(unix_ms) else {
        return format!("{unix_ms}ms");
    };
    match chrono::DateTime::from_timestamp_millis(signed) {
        Some(time) => time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        None => format!("{unix_ms}ms"),
    }
}

/// `<seq> <sender> <time> <text>`, one line of `history`.
pub fn history_line(message: &Message) -> String {
    format!(
        "{} {} {} {}",
        message.seq,
        message.sender_user_id,
        time_text(message.server_time_ms),
        body_text(&message.body)
    )
}

/// `<id> <kind> last_seq=<n> member_count=<n> members=<a,b,...>`.
pub fn conversation_line(conversation: &Conversation) -> String {
    let kind = match conversation.kind() {
        ConversationKind::Direct => "direct",
        ConversationKind::Group => "group",
        ConversationKind::Unspecified => "unspecified",
    };
    format!(
        "{} {kind} last_seq={} member_count={} members={}",
        conversation.conversation_id,
        conversation.last_seq,
        conversation.member_count,
        conversation.members.join(",")
    )
}

/// `message <conv> #<seq> <sender>: <text>`.
pub fn message_line(message: &Message) -> String {
    format!(
        "message {} #{} {}: {}",
        message.conversation_id,
        message.seq,
        message.sender_user_id,
        body_text(&message.body)
    )
}

/// `presence <user> online|offline`.
pub fn presence_line(presence: &PresenceEvent) -> String {
    let state = if presence.online { "online" } else { "offline" };
    format!("presence {} {state}", presence.user_id)
}

/// Returns the line for a pushed event other than a message or the
/// session's ready event, which the listener handles itself.
pub fn event_line(event: &Event) -> Option<String> {
    match event {
        Event::Receipt(receipt) => Some(receipt_line(receipt)),
        Event::Typing(typing) => Some(typing_line(typing)),
        Event::Presence(presence) => Some(presence_line(presence)),
        Event::Membership(membership) => Some(membership_line(membership)),
        Event::Ready(_) | Event::Message(_) => None,
    }
}

/// `receipt <conv> delivered <user>/<device> up to #<seq>` or
/// `receipt <conv> read <user> up to #<seq>`.
fn receipt_line(receipt: &ReceiptEvent) -> String {
    let (kind, who) = match receipt.kind() {
        ReceiptKind::Delivered => (
            "delivered",
            format!("{}/{}", receipt.user_id, receipt.device_id),
        ),
        ReceiptKind::Read => ("read", receipt.user_id.clone()),
        ReceiptKind::Unspecified => ("unspecified", receipt.user_id.clone()),
    };
    format!(
        "receipt {} {kind} {who} up to #{}",
        receipt.conversation_id, receipt.seq
    )
}

/// `typing <conv> <user> on|off`.
fn typing_line(typing: &TypingEvent) -> String {
    let state = if typing.typing { "on" } else { "off" };
    format!(
        "typing {} {} {state}",
        typing.conversation_id, typing.user_id
    )
}

/// `membership <conv> +<added>... -<removed>...`.
fn membership_line(membership: &MembershipEvent) -> String {
    let mut line = format!("membership {}", membership.conversation_id);
    for user in &membership.added {
        line.push_str(&format!(" +{user}"));
    }
    for user in &membership.removed {
        line.push_str(&format!(" -{user}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &[u8]) -> Message {
        Message {
            conversation_id: "d:alice:bob".into(),
            seq: 3,
            sender_user_id: "alice".into(),
            sender_device_id: "phone".into(),
            client_message_id: "c1".into(),
            body: body.to_vec().into(),
            server_time_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn body_text_escapes_line_breaks() {
        assert_eq!(body_text(b"hi there"), "hi there");
        assert_eq!(body_text(b"two\nlines\\"), "two\\nlines\\\\");
        assert_eq!(body_text("h\u{e9}".as_bytes()), "h\u{e9}");
    }

    #[test]
    fn body_text_counts_non_utf8_bytes() {
        assert_eq!(body_text(&[0xff, 0xfe, 0x00]), "<3 bytes>");
    }

    #[test]
    fn time_text_is_rfc3339_utc() {
        assert_eq!(time_text(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(time_text(u64::MAX), format!("{}ms", u64::MAX));
    }

    #[test]
    fn message_and_history_lines() {
        let message = message(b"hello bob");
        assert_eq!(
            message_line(&message),
            "message d:alice:bob #3 alice: hello bob"
        );
        assert_eq!(
            history_line(&message),
            "3 alice 2023-11-14T22:13:20.123Z hello bob"
        );
    }

    #[test]
    fn receipt_lines_name_device_only_for_delivered() {
        let mut receipt = ReceiptEvent {
            conversation_id: "g1".into(),
            kind: ReceiptKind::Delivered as i32,
            user_id: "bob".into(),
            device_id: "laptop".into(),
            seq: 4,
        };
        let line = event_line(&Event::Receipt(receipt.clone()));
        assert_eq!(line.unwrap(), "receipt g1 delivered bob/laptop up to #4");
        receipt.kind = ReceiptKind::Read as i32;
        receipt.device_id.clear();
        let line = event_line(&Event::Receipt(receipt));
        assert_eq!(line.unwrap(), "receipt g1 read bob up to #4");
    }

    #[test]
    fn typing_presence_and_membership_lines() {
        let typing = Event::Typing(TypingEvent {
            conversation_id: "g1".into(),
            user_id: "bob".into(),
            device_id: "laptop".into(),
            typing: true,
            expires_in_ms: 5_000,
        });
        assert_eq!(event_line(&typing).unwrap(), "typing g1 bob on");
        let presence = Event::Presence(PresenceEvent {
            user_id: "bob".into(),
            online: false,
            last_seen_ms: 0,
        });
        assert_eq!(event_line(&presence).unwrap(), "presence bob offline");
        let membership = Event::Membership(MembershipEvent {
            conversation_id: "g1".into(),
            added: vec!["carol".into(), "dave".into()],
            removed: vec!["erin".into()],
        });
        assert_eq!(
            event_line(&membership).unwrap(),
            "membership g1 +carol +dave -erin"
        );
    }

    #[test]
    fn conversation_line_lists_members() {
        let conversation = Conversation {
            conversation_id: "g1".into(),
            kind: ConversationKind::Group as i32,
            member_count: 2,
            last_seq: 9,
            members: vec!["alice".into(), "bob".into()],
        };
        assert_eq!(
            conversation_line(&conversation),
            "g1 group last_seq=9 member_count=2 members=alice,bob"
        );
    }
}
