//! The chat client's unary commands: each makes one or a few calls and
//! prints the result in the line formats of `format`.

use std::time::Duration;

use anyhow::{bail, Result};
use parley_gateway::proto::{
    AddMembersRequest, CreateDirectRequest, CreateGroupRequest, HistoryRequest, LinkDeviceRequest,
    ListConversationsRequest, MarkReadRequest, PresenceRequest, RegisterReply, RegisterRequest,
    RemoveMemberRequest, SendRequest,
};
use tokio::time::Instant;

use super::client::{is_retryable, request, AuthedClient, Gateway};
use super::format::{conversation_line, history_line, presence_line, time_text};
use super::profile::Profile;

/// How long `send` retries UNAVAILABLE and DEADLINE_EXCEEDED.
const SEND_RETRY_WINDOW: Duration = Duration::from_secs(10);

/// Deadline of one Send attempt, short so that one hung attempt leaves
/// room for retries inside the window.
const SEND_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);

/// Registers `user_id` with its first device and returns its profile.
pub async fn register(gateway: &Gateway, user_id: &str, device_id: &str) -> Result<Profile> {
    let mut client = gateway.anonymous();
    let call = client.register(request(RegisterRequest {
        user_id: user_id.to_string(),
        device_id: device_id.to_string(),
    }));
    let reply = call.await.map_err(|status| gateway.error(status))?;
    Ok(profile_from(reply.into_inner()))
}

/// Links `device_id` to the profile's user and returns the new profile.
pub async fn link(gateway: &Gateway, mut client: AuthedClient, device_id: &str) -> Result<Profile> {
    let call = client.link_device(request(LinkDeviceRequest {
        device_id: device_id.to_string(),
    }));
    let reply = call.await.map_err(|status| gateway.error(status))?;
    Ok(profile_from(reply.into_inner()))
}

fn profile_from(reply: RegisterReply) -> Profile {
    Profile {
        user_id: reply.user_id,
        device_id: reply.device_id,
        token: reply.token,
        expires_at_ms: reply.expires_at_ms,
        cursors: Default::default(),
    }
}

/// Prints the id of the direct conversation with `peer`.
pub async fn direct(gateway: &Gateway, mut client: AuthedClient, peer: &str) -> Result<()> {
    let call = client.create_direct(request(CreateDirectRequest {
        peer_user_id: peer.to_string(),
    }));
    let conversation = call.await.map_err(|status| gateway.error(status))?;
    println!("{}", conversation.into_inner().conversation_id);
    Ok(())
}

/// Creates a group and prints its conversation line.
pub async fn group(
    gateway: &Gateway,
    mut client: AuthedClient,
    conversation_id: &str,
    members: Vec<String>,
) -> Result<()> {
    let call = client.create_group(request(CreateGroupRequest {
        conversation_id: conversation_id.to_string(),
        members,
    }));
    let conversation = call.await.map_err(|status| gateway.error(status))?;
    println!("{}", conversation_line(&conversation.into_inner()));
    Ok(())
}

/// Adds members to a group and prints its conversation line.
pub async fn add(
    gateway: &Gateway,
    mut client: AuthedClient,
    conversation_id: &str,
    user_ids: Vec<String>,
) -> Result<()> {
    let call = client.add_members(request(AddMembersRequest {
        conversation_id: conversation_id.to_string(),
        user_ids,
    }));
    let conversation = call.await.map_err(|status| gateway.error(status))?;
    println!("{}", conversation_line(&conversation.into_inner()));
    Ok(())
}

/// Removes a member from a group and prints its conversation line.
pub async fn remove(
    gateway: &Gateway,
    mut client: AuthedClient,
    conversation_id: &str,
    user_id: &str,
) -> Result<()> {
    let call = client.remove_member(request(RemoveMemberRequest {
        conversation_id: conversation_id.to_string(),
        user_id: user_id.to_string(),
    }));
    let conversation = call.await.map_err(|status| gateway.error(status))?;
    println!("{}", conversation_line(&conversation.into_inner()));
    Ok(())
}

/// Sends `text`, retrying transient failures with the same client message
/// id, so the message is appended once. Prints `sent seq N`, followed by
/// ` duplicate` when the gateway had already appended this id.
pub async fn send(
    gateway: &Gateway,
    mut client: AuthedClient,
    conversation_id: &str,
    text: &str,
    client_message_id: &str,
) -> Result<()> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut attempt = tonic::Request::new(SendRequest {
            conversation_id: conversation_id.to_string(),
            client_message_id: client_message_id.to_string(),
            body: text.as_bytes().to_vec(),
        });
        attempt.set_timeout(SEND_ATTEMPT_TIMEOUT);
        let status = match client.send(attempt).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                let duplicate = if reply.duplicate { " duplicate" } else { "" };
                println!("sent seq {}{duplicate}", reply.seq);
                return Ok(());
            }
            Err(status) => status,
        };
        if !is_retryable(&status) || started.elapsed() + backoff > SEND_RETRY_WINDOW {
            return Err(gateway.error(status));
        }
        eprintln!(
            "warning: Send of client message id {client_message_id} failed ({}); retrying in {} ms",
            gateway.error(status),
            backoff.as_millis()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// Marks `conversation_id` read up to `seq`, by default up to the
/// profile's cursor or, without one, the conversation's last seq. Prints
/// `read seq N` with the watermark the gateway returned.
pub async fn mark_read(
    gateway: &Gateway,
    mut client: AuthedClient,
    profile: &Profile,
    conversation_id: &str,
    seq: Option<u64>,
) -> Result<()> {
    let seq = match seq.or(Some(profile.cursor(conversation_id)).filter(|seq| *seq > 0)) {
        Some(seq) => seq,
        None => last_seq(gateway, &mut client, conversation_id).await?,
    };
    let call = client.mark_read(request(MarkReadRequest {
        conversation_id: conversation_id.to_string(),
        seq,
    }));
    let reply = call.await.map_err(|status| gateway.error(status))?;
    println!("read seq {}", reply.into_inner().read_seq);
    Ok(())
}

async fn last_seq(
    gateway: &Gateway,
    client: &mut AuthedClient,
    conversation_id: &str,
) -> Result<u64> {
    let call = client.list_conversations(request(ListConversationsRequest {}));
    let reply = call.await.map_err(|status| gateway.error(status))?;
    let conversations = reply.into_inner().conversations;
    match conversations
        .iter()
        .find(|conversation| conversation.conversation_id == conversation_id)
    {
        Some(conversation) => Ok(conversation.last_seq),
        None => bail!(
            "conversation {conversation_id:?} is not among yours; list them with \
             `parley chat conversations`"
        ),
    }
}

/// Prints messages from `from_seq` on, at most `limit` of them (all when
/// `limit` is None), one `history` line each, paging as needed.
pub async fn history(
    gateway: &Gateway,
    mut client: AuthedClient,
    conversation_id: &str,
    from_seq: u64,
    limit: Option<u32>,
) -> Result<()> {
    let mut next_seq = from_seq.max(1);
    let mut remaining = limit;
    while remaining != Some(0) {
        let call = client.history(request(HistoryRequest {
            conversation_id: conversation_id.to_string(),
            from_seq: next_seq,
            limit: remaining.unwrap_or(0),
        }));
        let page = call
            .await
            .map_err(|status| gateway.error(status))?
            .into_inner();
        let Some(last) = page.messages.last().map(|message| message.seq) else {
            break;
        };
        if last < next_seq {
            bail!("History from seq {next_seq} returned older messages (up to {last}); the gateway is misbehaving");
        }
        for message in page
            .messages
            .iter()
            .take(remaining.unwrap_or(u32::MAX) as usize)
        {
            println!("{}", history_line(message));
        }
        remaining = remaining.map(|left| left.saturating_sub(page.messages.len() as u32));
        if last >= page.last_seq {
            break;
        }
        next_seq = last + 1;
    }
    Ok(())
}

/// Prints one conversation line per conversation of the caller.
pub async fn conversations(gateway: &Gateway, mut client: AuthedClient) -> Result<()> {
    let call = client.list_conversations(request(ListConversationsRequest {}));
    let reply = call.await.map_err(|status| gateway.error(status))?;
    for conversation in reply.into_inner().conversations {
        println!("{}", conversation_line(&conversation));
    }
    Ok(())
}

/// Prints `presence <user> online|offline last_seen=<time|never>` per user.
pub async fn presence(
    gateway: &Gateway,
    mut client: AuthedClient,
    user_ids: Vec<String>,
) -> Result<()> {
    let call = client.presence(request(PresenceRequest { user_ids }));
    let reply = call.await.map_err(|status| gateway.error(status))?;
    for user in reply.into_inner().users {
        let last_seen = match user.last_seen_ms {
            0 => "never".to_string(),
            unix_ms => time_text(unix_ms),
        };
        println!("{} last_seen={last_seen}", presence_line(&user));
    }
    Ok(())
}
