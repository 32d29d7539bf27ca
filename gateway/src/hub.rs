//! The device sessions connected to this gateway, indexed by conversation
//! and by user, and the bounded fan-out of events to them.
//!
//! Each session has a bounded queue. When an event does not fit, the
//! session is marked overflowed and the conversation dirty instead of
//! buffering more; the session then refills that conversation from history
//! once it has drained its queue. Memory per session is therefore bounded
//! by the queue size, whatever a slow device does.
//!
//! Sessions are kept in ordered maps, so fan-out visits them in the same
//! order on every run: under the simulator one seed must give one run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::mpsc;

use crate::auth::DeviceIdentity;
use crate::proto::ServerEvent;

pub type SessionId = u64;

/// One event on its way to a session.
#[derive(Clone, Debug)]
pub struct Outgoing {
    /// Shared, because every session of the conversation gets a copy.
    pub conversation_id: Arc<str>,
    /// The message seq for message events, 0 for every other event.
    pub seq: u64,
    pub event: Arc<ServerEvent>,
}

/// The hub's side of one session.
#[derive(Clone)]
pub struct SessionHandle {
    pub id: SessionId,
    pub identity: DeviceIdentity,
    queue: mpsc::Sender<Outgoing>,
    overflow: Arc<Overflow>,
}

/// Conversations whose events a full queue dropped.
#[derive(Default)]
pub struct Overflow {
    flagged: AtomicBool,
    dirty: Mutex<BTreeSet<String>>,
    /// Wakes the session so it refills even if no further event arrives.
    pub wake: tokio::sync::Notify,
}

impl Overflow {
    /// Returns and clears the conversations to refill from history.
    pub fn take(&self) -> BTreeSet<String> {
        if !self.flagged.swap(false, Ordering::AcqRel) {
            return BTreeSet::new();
        }
        std::mem::take(
            &mut *self
                .dirty
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    fn mark(&self, conversation_id: &str) {
        self.dirty
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(conversation_id.to_string());
        self.flagged.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

impl SessionHandle {
    /// Queues `outgoing` without waiting; on a full queue marks the
    /// conversation for a refill instead.
    fn offer(&self, outgoing: &Outgoing) {
        match self.queue.try_send(outgoing.clone()) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!(session = self.id, user = %self.identity.user_id, "session queue full");
                self.overflow.mark(&outgoing.conversation_id);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

#[derive(Default)]
struct State {
    by_conversation: BTreeMap<String, BTreeMap<SessionId, SessionHandle>>,
    by_user: BTreeMap<String, BTreeMap<SessionId, SessionHandle>>,
}

/// All sessions of this gateway.
#[derive(Default)]
pub struct Hub {
    state: RwLock<State>,
    next_id: AtomicU64,
}

/// The hub's registration of a new session: its handle, queue and overflow state.
pub struct Registration {
    pub handle: SessionHandle,
    pub queue: mpsc::Receiver<Outgoing>,
    pub overflow: Arc<Overflow>,
}

impl Hub {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a session with a queue of `queue_events_max` events.
    pub fn register(&self, identity: DeviceIdentity, queue_events_max: usize) -> Registration {
        let (sender, queue) = mpsc::channel(queue_events_max.max(1));
        let overflow = Arc::new(Overflow::default());
        let handle = SessionHandle {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            identity,
            queue: sender,
            overflow: overflow.clone(),
        };
        self.write()
            .by_user
            .entry(handle.identity.user_id.clone())
            .or_default()
            .insert(handle.id, handle.clone());
        Registration {
            handle,
            queue,
            overflow,
        }
    }

    /// Removes a session everywhere; returns how many sessions its user
    /// still has on this gateway.
    pub fn unregister(&self, handle: &SessionHandle) -> usize {
        let mut state = self.write();
        for sessions in state.by_conversation.values_mut() {
            sessions.remove(&handle.id);
        }
        state
            .by_conversation
            .retain(|_, sessions| !sessions.is_empty());
        let user = &handle.identity.user_id;
        let remaining = match state.by_user.get_mut(user) {
            Some(sessions) => {
                sessions.remove(&handle.id);
                sessions.len()
            }
            None => 0,
        };
        if remaining == 0 {
            state.by_user.remove(user);
        }
        remaining
    }

    pub fn follow(&self, handle: &SessionHandle, conversation_id: &str) {
        self.write()
            .by_conversation
            .entry(conversation_id.to_string())
            .or_default()
            .insert(handle.id, handle.clone());
    }

    pub fn unfollow(&self, handle: &SessionHandle, conversation_id: &str) {
        let mut state = self.write();
        if let Some(sessions) = state.by_conversation.get_mut(conversation_id) {
            sessions.remove(&handle.id);
            if sessions.is_empty() {
                state.by_conversation.remove(conversation_id);
            }
        }
    }

    /// Offers `outgoing` to every session following its conversation for
    /// which `include` returns true.
    pub fn publish(&self, outgoing: &Outgoing, include: impl Fn(&SessionHandle) -> bool) {
        let state = self.read();
        let Some(sessions) = state.by_conversation.get(&*outgoing.conversation_id) else {
            return;
        };
        for session in sessions.values().filter(|session| include(session)) {
            session.offer(outgoing);
        }
    }

    /// Offers `outgoing` to every session of `user`.
    pub fn publish_to_user(&self, user: &str, outgoing: &Outgoing) {
        let state = self.read();
        if let Some(sessions) = state.by_user.get(user) {
            for session in sessions.values() {
                session.offer(outgoing);
            }
        }
    }

    /// Marks every conversation matching `select` dirty in each session
    /// that follows it, so the session refills it from history.
    pub fn mark_dirty(&self, select: impl Fn(&str) -> bool) {
        let state = self.read();
        for (conversation_id, sessions) in &state.by_conversation {
            if select(conversation_id) {
                for session in sessions.values() {
                    session.overflow.mark(conversation_id);
                }
            }
        }
    }

    pub fn is_online(&self, user: &str) -> bool {
        self.read().by_user.contains_key(user)
    }

    pub fn session_count(&self) -> usize {
        self.read().by_user.values().map(BTreeMap::len).sum()
    }
}
