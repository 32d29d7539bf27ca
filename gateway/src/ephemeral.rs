//! Typing indicators and presence: ephemeral state that never enters the
//! Raft log.
//!
//! A typing indicator lasts `typing_ttl` unless its device refreshes it; a
//! sweeper sends the "stopped" event for indicators that expired, so a lost
//! stop event cannot leave anyone typing forever. Presence counts a user's
//! sessions on this gateway: online while at least one is open, and
//! last seen when the last one closes.
//!
//! NOTE: both live in this gateway's memory. With several gateways, users
//! on different gateways do not see each other's typing or presence, and
//! last-seen times are lost when the gateway restarts; a cross-gateway
//! ephemeral channel would fix both.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::DeviceIdentity;
use crate::hub::{Hub, Outgoing};
use crate::proto::server_event::Event;
use crate::proto::{PresenceEvent, ServerEvent, TypingEvent};

type TypingKey = (String, DeviceIdentity);

#[derive(Default)]
struct State {
    /// (conversation, device) to the typing deadline, in ms since the epoch.
    typing: BTreeMap<TypingKey, u64>,
    last_seen_ms: BTreeMap<String, u64>,
}

/// Typing and presence of the users connected to this gateway.
pub struct Ephemeral {
    state: Mutex<State>,
    typing_ttl: Duration,
}

impl Ephemeral {
    pub fn new(typing_ttl: Duration) -> Self {
        Ephemeral {
            state: Mutex::new(State::default()),
            typing_ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records and publishes a typing update from `identity`.
    pub fn typing(
        &self,
        hub: &Hub,
        identity: &DeviceIdentity,
        conversation_id: &str,
        typing: bool,
        now_ms: u64,
    ) {
        let key = (conversation_id.to_string(), identity.clone());
        {
            let mut state = self.lock();
            if typing {
                state
                    .typing
                    .insert(key, now_ms + self.typing_ttl.as_millis() as u64);
            } else if state.typing.remove(&key).is_none() {
                return;
            }
        }
        publish_typing(hub, identity, conversation_id, typing, self.typing_ttl);
    }

    /// Sends "stopped" for every indicator whose deadline passed.
    pub fn expire(&self, hub: &Hub, now_ms: u64) {
        let expired: Vec<TypingKey> = {
            let mut state = self.lock();
            let expired: Vec<TypingKey> = state
                .typing
                .iter()
                .filter(|(_, deadline)| **deadline <= now_ms)
                .map(|(key, _)| key.clone())
                .collect();
            for key in &expired {
                state.typing.remove(key);
            }
            expired
        };
        for (conversation_id, identity) in expired {
            publish_typing(hub, &identity, &conversation_id, false, self.typing_ttl);
        }
    }

    /// Returns the presence of `user`.
    pub fn presence(&self, hub: &Hub, user: &str) -> PresenceEvent {
        PresenceEvent {
            user_id: user.to_string(),
            online: hub.is_online(user),
            last_seen_ms: self.lock().last_seen_ms.get(user).copied().unwrap_or(0),
        }
    }

    /// Records that `user` was seen now (at session start and end).
    pub fn seen(&self, user: &str, now_ms: u64) {
        self.lock().last_seen_ms.insert(user.to_string(), now_ms);
    }

    /// Sends `user`'s presence to the sessions of `peers`.
    pub fn publish_presence(&self, hub: &Hub, user: &str, peers: &[String]) {
        let event = Arc::new(ServerEvent {
            event: Some(Event::Presence(self.presence(hub, user))),
        });
        let outgoing = Outgoing {
            conversation_id: Arc::from(""),
            seq: 0,
            event,
        };
        for peer in peers {
            hub.publish_to_user(peer, &outgoing);
        }
    }
}

fn publish_typing(
    hub: &Hub,
    identity: &DeviceIdentity,
    conversation_id: &str,
    typing: bool,
    ttl: Duration,
) {
    let event = TypingEvent {
        conversation_id: conversation_id.to_string(),
        user_id: identity.user_id.clone(),
        device_id: identity.device_id.clone(),
        typing,
        expires_in_ms: if typing { ttl.as_millis() as u32 } else { 0 },
    };
    let outgoing = Outgoing {
        conversation_id: Arc::from(conversation_id),
        seq: 0,
        event: Arc::new(ServerEvent {
            event: Some(Event::Typing(event)),
        }),
    };
    hub.publish(&outgoing, |session| session.identity != *identity);
}
