//! Following every shard's commit stream and turning committed commands
//! into session events.
//!
//! One follower task per shard subscribes to one replica's feed from the
//! next log index it needs. When the stream breaks it resumes, from that
//! same index, on the next replica of the shard, so a failover or a node
//! restart loses and repeats nothing. When no replica retains that index
//! any more, it reloads the shard's conversations and marks every session
//! following one of them for a refill from history.

use std::sync::Arc;
use std::time::Duration;

use parley_core::proto::command::Kind;
use parley_core::proto::command_result::Outcome;
use parley_core::proto::{Command, CommandResult};
use parley_shards::proto::{CommittedEntry, ConversationsRequest, SubscribeRequest};
use parley_shards::shard_map::shard_of_id;
use prost::Message as _;

use crate::context::Gateway;
use crate::directory::MembershipChange;
use crate::hub::Outgoing;
use crate::proto::server_event::Event;
use crate::proto::{MembershipEvent, Message, ReceiptEvent, ReceiptKind, ServerEvent};

/// Receipts of conversations with more members than this go only to the
/// acting user's own devices, so one read in a huge group does not cost a
/// push to every member.
const RECEIPT_FANOUT_MEMBERS_MAX: usize = 256;

/// Pause before resubscribing after a broken stream.
const RESUBSCRIBE_DELAY: Duration = Duration::from_millis(100);

/// Follows one shard for as long as the gateway runs.
pub async fn follow_shard(gateway: Arc<Gateway>, shard: u32, nodes: Vec<usize>) {
    assert!(!nodes.is_empty(), "shard {shard} has no replica to follow");
    let mut next_index: Option<u64> = None;
    let mut attempt = 0usize;
    loop {
        let node = nodes[attempt % nodes.len()];
        let status = follow_once(&gateway, shard, node, &mut next_index).await;
        if status.code() == tonic::Code::OutOfRange {
            next_index = None;
        }
        tracing::debug!(shard, node, next_index, error = %status, "commit stream ended; resubscribing");
        attempt += 1;
        tokio::time::sleep(RESUBSCRIBE_DELAY).await;
    }
}

async fn follow_once(
    gateway: &Gateway,
    shard: u32,
    node: usize,
    next_index: &mut Option<u64>,
) -> tonic::Status {
    let mut client = gateway.cluster.client().node(node);
    let from_index = match *next_index {
        Some(index) => index,
        None => {
            let request = ConversationsRequest { shard_id: shard };
            let reply = match client.conversations(request).await {
                Ok(reply) => reply.into_inner(),
                Err(status) => return status,
            };
            gateway.directory.load_shard(&reply);
            let shard_count = gateway.directory.shard_count();
            gateway
                .hub
                .mark_dirty(|conversation| shard_of_id(conversation, shard_count) == shard);
            tracing::info!(
                shard,
                node,
                applied_index = reply.applied_index,
                "loaded shard conversations"
            );
            reply.applied_index + 1
        }
    };
    *next_index = Some(from_index);

    let request = SubscribeRequest {
        shard_id: shard,
        from_index,
    };
    let mut stream = match client.subscribe(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return status,
    };
    loop {
        match stream.message().await {
            Ok(Some(entry)) => {
                dispatch(gateway, shard, &entry);
                *next_index = Some(entry.log_index + 1);
            }
            Ok(None) => return tonic::Status::unavailable("the commit stream ended"),
            Err(status) => return status,
        }
    }
}

/// Applies one committed entry to the directory and fans it out.
fn dispatch(gateway: &Gateway, shard: u32, entry: &CommittedEntry) {
    let decoded = Command::decode(entry.command.as_ref())
        .ok()
        .and_then(|command| command.kind)
        .zip(
            CommandResult::decode(entry.result.as_ref())
                .ok()
                .and_then(|result| result.outcome),
        );
    if let Some((kind, outcome)) = decoded {
        let change = gateway.directory.apply(&kind, &outcome);
        fan_out(gateway, &kind, &outcome, change);
    } else {
        tracing::warn!(
            shard,
            log_index = entry.log_index,
            "committed entry does not decode; skipped"
        );
    }
    gateway.directory.set_applied(shard, entry.log_index);
}

fn fan_out(gateway: &Gateway, kind: &Kind, outcome: &Outcome, change: Option<MembershipChange>) {
    match (kind, outcome) {
        (Kind::Append(append), Outcome::Appended(appended)) if !appended.duplicate => {
            let message = Message {
                conversation_id: append.conversation_id.clone(),
                seq: appended.seq,
                sender_user_id: append.sender_user.clone(),
                sender_device_id: append.sender_device.clone(),
                client_message_id: append.client_message_id.clone(),
                body: append.body.clone().into(),
                server_time_ms: appended.server_time_ms,
            };
            let outgoing = Outgoing {
                conversation_id: Arc::from(append.conversation_id.as_str()),
                seq: appended.seq,
                event: Arc::new(ServerEvent {
                    event: Some(Event::Message(message)),
                }),
            };
            gateway.hub.publish(&outgoing, |_| true);
        }
        (Kind::MarkDelivered(mark), Outcome::ReceiptAdvanced(advanced)) if advanced.moved => {
            let receipt = ReceiptEvent {
                conversation_id: mark.conversation_id.clone(),
                kind: ReceiptKind::Delivered as i32,
                user_id: mark.user_id.clone(),
                device_id: mark.device_id.clone(),
                seq: advanced.watermark,
            };
            publish_receipt(gateway, receipt);
        }
        (Kind::MarkRead(mark), Outcome::ReceiptAdvanced(advanced)) if advanced.moved => {
            let receipt = ReceiptEvent {
                conversation_id: mark.conversation_id.clone(),
                kind: ReceiptKind::Read as i32,
                user_id: mark.user_id.clone(),
                device_id: String::new(),
                seq: advanced.watermark,
            };
            publish_receipt(gateway, receipt);
        }
        _ => {}
    }
    if let Some(change) = change {
        publish_membership(gateway, change);
    }
}

fn publish_receipt(gateway: &Gateway, receipt: ReceiptEvent) {
    let members = gateway
        .directory
        .conversation(&receipt.conversation_id)
        .map_or(0, |entry| entry.members.len());
    let user = receipt.user_id.clone();
    let outgoing = Outgoing {
        conversation_id: Arc::from(receipt.conversation_id.as_str()),
        seq: 0,
        event: Arc::new(ServerEvent {
            event: Some(Event::Receipt(receipt)),
        }),
    };
    if members <= RECEIPT_FANOUT_MEMBERS_MAX {
        gateway.hub.publish(&outgoing, |_| true);
    } else {
        gateway
            .hub
            .publish(&outgoing, |session| session.identity.user_id == user);
    }
}

fn publish_membership(gateway: &Gateway, change: MembershipChange) {
    let event = MembershipEvent {
        conversation_id: change.conversation_id.clone(),
        added: change.added.clone(),
        removed: change.removed.clone(),
    };
    let outgoing = Outgoing {
        conversation_id: Arc::from(change.conversation_id.as_str()),
        seq: 0,
        event: Arc::new(ServerEvent {
            event: Some(Event::Membership(event)),
        }),
    };
    // Added users' sessions do not follow the conversation yet: reach them
    // directly, and they start following it when they see the event.
    gateway.hub.publish(&outgoing, |session| {
        !change.added.contains(&session.identity.user_id)
    });
    for user in &change.added {
        gateway.hub.publish_to_user(user, &outgoing);
    }
}
