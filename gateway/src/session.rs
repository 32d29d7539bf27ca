//! One device session: catch-up from the device's cursors, then live
//! events in seq order, with gaps filled from history.
//!
//! The session keeps a cursor (the last seq sent) per conversation. A
//! message at or below the cursor is dropped; a message beyond cursor + 1
//! first triggers a history read of the missing range. So whatever the hub
//! drops on overflow, and whatever a commit-stream resume repeats, the
//! device receives every message of a conversation once and in order.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::auth::DeviceIdentity;
use crate::context::{now_ms, Gateway};
use crate::hub::{Outgoing, Registration, SessionHandle};
use crate::proto::client_event::Event as ClientEventKind;
use crate::proto::server_event::Event;
use crate::proto::{ClientEvent, Cursor, Message, ServerEvent, SessionOpen, SessionReady};

/// Messages read from history per call while filling a gap.
const FILL_PAGE_MESSAGES: u32 = 500;

pub type Outbound = mpsc::Sender<Result<ServerEvent, tonic::Status>>;

struct Session {
    gateway: Arc<Gateway>,
    handle: SessionHandle,
    outbound: Outbound,
    cursors: BTreeMap<String, u64>,
}

/// The reason a session ended.
enum End {
    ClientClosed,
    OutboundClosed,
    Failed(tonic::Status),
    GatewayStopping,
}

/// Checks the opening cursors; fails with PERMISSION_DENIED naming the
/// first conversation the user is not a member of.
pub fn check_open(
    gateway: &Gateway,
    identity: &DeviceIdentity,
    open: &SessionOpen,
) -> Result<(), tonic::Status> {
    for cursor in &open.cursors {
        if !gateway
            .directory
            .is_member(&cursor.conversation_id, &identity.user_id)
        {
            return Err(tonic::Status::permission_denied(format!(
                "SessionOpen.cursors names conversation {:?}, which user {:?} is not a member of",
                cursor.conversation_id, identity.user_id
            )));
        }
    }
    Ok(())
}

/// Runs a session until the client or the server side closes it.
pub async fn run(
    gateway: Arc<Gateway>,
    identity: DeviceIdentity,
    open: SessionOpen,
    mut inbound: tonic::Streaming<ClientEvent>,
    outbound: Outbound,
) {
    let Registration {
        handle,
        mut queue,
        overflow,
    } = gateway
        .hub
        .register(identity.clone(), gateway.config.session_buffer_events_max);
    let mut session = Session {
        gateway: gateway.clone(),
        handle: handle.clone(),
        outbound,
        cursors: BTreeMap::new(),
    };
    announce_presence(&gateway, &identity.user_id);

    let serve = async {
        match session.start(&open).await {
            Err(end) => end,
            Ok(()) => loop {
                let step = tokio::select! {
                    outgoing = queue.recv() => match outgoing {
                        Some(outgoing) => session.deliver(outgoing).await,
                        None => Err(End::OutboundClosed),
                    },
                    event = inbound.message() => session.handle_client(event),
                    () = overflow.wake.notified() => Ok(()),
                };
                let refill = match step {
                    Ok(()) => session.refill_dirty(overflow.take()).await,
                    Err(end) => Err(end),
                };
                if let Err(end) = refill {
                    break end;
                }
            },
        }
    };
    // The server's graceful shutdown waits for every open call to finish,
    // so sessions must end on their own once shutdown begins.
    let end = tokio::select! {
        biased;
        end = serve => end,
        () = gateway.wait_stopping() => End::GatewayStopping,
    };

    match end {
        End::Failed(status) => {
            let _ = session.outbound.send(Err(status)).await;
        }
        // No waiting here: a device that stopped reading must not hold up
        // the shutdown. Without room for the status its stream just ends.
        End::GatewayStopping => {
            let status = tonic::Status::unavailable(
                "the gateway is shutting down; reconnect and resume from your cursors",
            );
            let _ = session.outbound.try_send(Err(status));
        }
        End::ClientClosed | End::OutboundClosed => {}
    }
    let remaining = gateway.hub.unregister(&handle);
    if remaining == 0 {
        gateway.ephemeral.seen(&identity.user_id, now_ms());
        announce_presence(&gateway, &identity.user_id);
    }
    tracing::debug!(user = %identity.user_id, device = %identity.device_id, "session closed");
}

fn announce_presence(gateway: &Gateway, user: &str) {
    let peers = gateway.directory.direct_peers(user);
    gateway
        .ephemeral
        .publish_presence(&gateway.hub, user, &peers);
}

impl Session {
    /// Follows every conversation of the user, sends what each missed since
    /// its cursor, then the ready event.
    async fn start(&mut self, open: &SessionOpen) -> Result<(), End> {
        let user = self.handle.identity.user_id.clone();
        let opened: BTreeMap<&str, u64> = open
            .cursors
            .iter()
            .map(|cursor| (cursor.conversation_id.as_str(), cursor.seq))
            .collect();
        // Follow before reading history, so no live event falls between.
        for conversation_id in self.gateway.directory.conversations_of(&user) {
            let cursor = opened.get(conversation_id.as_str()).copied().unwrap_or(0);
            self.gateway.hub.follow(&self.handle, &conversation_id);
            self.cursors.insert(conversation_id, cursor);
        }
        let conversations: Vec<String> = self.cursors.keys().cloned().collect();
        for conversation_id in conversations {
            self.catch_up(&conversation_id, None).await?;
        }

        let mut ready: Vec<Cursor> = self
            .cursors
            .iter()
            .map(|(conversation_id, seq)| Cursor {
                conversation_id: conversation_id.clone(),
                seq: *seq,
            })
            .collect();
        ready.sort_by(|a, b| a.conversation_id.cmp(&b.conversation_id));
        self.send(Event::Ready(SessionReady {
            conversations: ready,
        }))
        .await
    }

    async fn send(&self, event: Event) -> Result<(), End> {
        let event = ServerEvent { event: Some(event) };
        self.outbound
            .send(Ok(event))
            .await
            .map_err(|_| End::OutboundClosed)
    }

    async fn send_shared(&self, event: &ServerEvent) -> Result<(), End> {
        self.outbound
            .send(Ok(event.clone()))
            .await
            .map_err(|_| End::OutboundClosed)
    }

    /// Sends the messages after the cursor of `conversation_id`, up to
    /// `until` (or to the end of history when `None`).
    async fn catch_up(&mut self, conversation_id: &str, until: Option<u64>) -> Result<(), End> {
        let user = self.handle.identity.user_id.clone();
        loop {
            let cursor = self.cursors.get(conversation_id).copied().unwrap_or(0);
            if until.is_some_and(|until| cursor >= until) {
                return Ok(());
            }
            let page = self
                .gateway
                .cluster
                .history_page(&user, conversation_id, cursor + 1, FILL_PAGE_MESSAGES)
                .await;
            let (messages, _) = match page {
                Ok(page) => page,
                // Removed from the conversation meanwhile: stop following it.
                Err(status) if status.code() == tonic::Code::PermissionDenied => {
                    self.leave(conversation_id);
                    return Ok(());
                }
                Err(status) => return Err(End::Failed(status)),
            };
            if messages.is_empty() {
                return Ok(());
            }
            for stored in messages {
                if until.is_some_and(|until| stored.seq > until) {
                    return Ok(());
                }
                let message = Message {
                    conversation_id: conversation_id.to_string(),
                    seq: stored.seq,
                    sender_user_id: stored.sender_user,
                    sender_device_id: stored.sender_device,
                    client_message_id: stored.client_message_id,
                    body: stored.body.into(),
                    server_time_ms: stored.server_time_ms,
                };
                self.send(Event::Message(message)).await?;
                self.cursors.insert(conversation_id.to_string(), stored.seq);
            }
        }
    }

    fn leave(&mut self, conversation_id: &str) {
        self.cursors.remove(conversation_id);
        self.gateway.hub.unfollow(&self.handle, conversation_id);
    }

    /// Sends one queued event, filling any gap before a message first.
    async fn deliver(&mut self, outgoing: Outgoing) -> Result<(), End> {
        if let Some(Event::Membership(change)) = &outgoing.event.event {
            let user = &self.handle.identity.user_id;
            if change.added.contains(user) && !self.cursors.contains_key(&change.conversation_id) {
                self.gateway
                    .hub
                    .follow(&self.handle, &change.conversation_id);
                self.cursors.insert(change.conversation_id.clone(), 0);
            }
            if change.removed.contains(user) {
                self.leave(&change.conversation_id);
            }
            return self.send_shared(&outgoing.event).await;
        }
        if outgoing.seq == 0 {
            return self.send_shared(&outgoing.event).await;
        }

        let Some(cursor) = self.cursors.get(&*outgoing.conversation_id).copied() else {
            return Ok(());
        };
        if outgoing.seq <= cursor {
            return Ok(());
        }
        if outgoing.seq > cursor + 1 {
            self.catch_up(&outgoing.conversation_id, Some(outgoing.seq - 1))
                .await?;
        }
        self.send_shared(&outgoing.event).await?;
        match self.cursors.get_mut(&*outgoing.conversation_id) {
            Some(cursor) => *cursor = outgoing.seq,
            None => {
                self.cursors
                    .insert(outgoing.conversation_id.to_string(), outgoing.seq);
            }
        }
        Ok(())
    }

    /// Refills conversations whose events a full queue dropped.
    async fn refill_dirty(&mut self, dirty: std::collections::BTreeSet<String>) -> Result<(), End> {
        for conversation_id in dirty {
            if self.cursors.contains_key(&conversation_id) {
                self.catch_up(&conversation_id, None).await?;
            }
        }
        Ok(())
    }

    fn handle_client(
        &mut self,
        event: Result<Option<ClientEvent>, tonic::Status>,
    ) -> Result<(), End> {
        let event = match event {
            Ok(Some(event)) => event,
            Ok(None) => return Err(End::ClientClosed),
            Err(status) => {
                tracing::debug!(user = %self.handle.identity.user_id, error = %status, "session stream failed");
                return Err(End::ClientClosed);
            }
        };
        let identity = &self.handle.identity;
        match event.event {
            Some(ClientEventKind::Delivered(ack)) => {
                if self.cursors.contains_key(&ack.conversation_id) {
                    self.gateway
                        .delivered
                        .ack(identity, &ack.conversation_id, ack.seq);
                }
                Ok(())
            }
            Some(ClientEventKind::Typing(typing)) => {
                if self.cursors.contains_key(&typing.conversation_id) {
                    let gateway = &self.gateway;
                    gateway.ephemeral.typing(
                        &gateway.hub,
                        identity,
                        &typing.conversation_id,
                        typing.typing,
                        now_ms(),
                    );
                }
                Ok(())
            }
            Some(ClientEventKind::Open(_)) => Err(End::Failed(tonic::Status::invalid_argument(
                "ClientEvent.open may only be the first event of a session",
            ))),
            None => Err(End::Failed(tonic::Status::invalid_argument(
                "ClientEvent.event is missing; send delivered or typing",
            ))),
        }
    }
}
