//! The history of one test run that `crate::checkers` judges: every send
//! request and response, every delivery and receipt that a device saw, the
//! final read of each replica and samples of each replica's Raft state.
//!
//! The madsim simulation and the chaos tool both record a `History` and pass
//! it to `crate::checkers::check_all`. Events are stored in the order the
//! recorder observed them, and the checkers that reason about "so far" use
//! that order rather than `at_ms`. Every `at_ms` is the recorder's clock in
//! milliseconds (simulated or wall time). Every `server_time_ms` is the time
//! the cluster stamped on a message, in milliseconds since the Unix epoch.
//! Seqs start at 1 in each conversation.

/// The recorded events of one run, in the order the recorder observed them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    events: Vec<Event>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `event`, which may be an `Event` or any of its payload types.
    pub fn push(&mut self, event: impl Into<Event>) {
        self.events.push(event.into());
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn into_events(self) -> Vec<Event> {
        self.events
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

impl From<Vec<Event>> for History {
    fn from(events: Vec<Event>) -> Self {
        Self { events }
    }
}

impl FromIterator<Event> for History {
    fn from_iter<I: IntoIterator<Item = Event>>(events: I) -> Self {
        Self {
            events: events.into_iter().collect(),
        }
    }
}

impl Extend<Event> for History {
    fn extend<I: IntoIterator<Item = Event>>(&mut self, events: I) {
        self.events.extend(events);
    }
}

/// One recorded observation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    SendInvoked(SendInvoked),
    SendAcked(SendAcked),
    SendFailed(SendFailed),
    DeliveredToDevice(DeliveredToDevice),
    DeviceCursorReset(DeviceCursorReset),
    ReceiptObserved(ReceiptObserved),
    ReceiptAcked(ReceiptAcked),
    ReplicaRead(ReplicaRead),
    RaftObserved(RaftObserved),
}

impl Event {
    /// Returns the recorder's time of the event in milliseconds.
    pub fn at_ms(&self) -> u64 {
        match self {
            Event::SendInvoked(event) => event.at_ms,
            Event::SendAcked(event) => event.at_ms,
            Event::SendFailed(event) => event.at_ms,
            Event::DeliveredToDevice(event) => event.at_ms,
            Event::DeviceCursorReset(event) => event.at_ms,
            Event::ReceiptObserved(event) => event.at_ms,
            Event::ReceiptAcked(event) => event.at_ms,
            Event::ReplicaRead(event) => event.at_ms,
            Event::RaftObserved(event) => event.at_ms,
        }
    }
}

/// A client started a send. Retries of the same send reuse `op` and
/// `client_message_id`, and may be recorded again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendInvoked {
    /// Id of the logical send, unique within the history.
    pub op: u64,
    pub conversation_id: String,
    pub sender_user: String,
    pub sender_device: String,
    pub client_message_id: String,
    pub at_ms: u64,
}

/// The cluster acknowledged a send, so its message is committed at `seq`.
/// The sender comes from the `SendInvoked` with the same `op`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendAcked {
    pub op: u64,
    pub conversation_id: String,
    pub client_message_id: String,
    pub seq: u64,
    pub server_time_ms: u64,
    /// True when the cluster found the message already committed, so `seq`
    /// and `server_time_ms` are those of the original append.
    pub duplicate: bool,
    pub at_ms: u64,
}

/// The client gave up on a send.
///
/// NOTE: no checker reads this event yet, so a send that failed with
/// `ambiguous == false` but was committed anyway is not reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendFailed {
    pub op: u64,
    /// True when the send may or may not have committed, for example after a
    /// timeout.
    pub ambiguous: bool,
    pub at_ms: u64,
}

/// A device session received a message, after the client dropped seqs at or
/// below its cursor. This is what the application sees.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveredToDevice {
    /// The receiving user.
    pub user_id: String,
    /// The receiving device.
    pub device_id: String,
    pub conversation_id: String,
    pub seq: u64,
    pub sender_user: String,
    pub sender_device: String,
    pub client_message_id: String,
    pub server_time_ms: u64,
    pub at_ms: u64,
}

/// A device opened or reopened a session at cursor `seq`, the last seq it
/// has, so its next delivery should be `seq + 1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceCursorReset {
    pub user_id: String,
    pub device_id: String,
    pub conversation_id: String,
    pub seq: u64,
    pub at_ms: u64,
}

/// The kind of a receipt watermark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReceiptKind {
    /// Every message up to the seq is stored on one device.
    Delivered,
    /// Every message up to the seq is read by one user, on any device.
    Read,
}

/// A device saw a receipt event: `subject`'s watermark of `kind` reached
/// `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptObserved {
    pub observer_user: String,
    pub observer_device: String,
    pub conversation_id: String,
    pub kind: ReceiptKind,
    pub subject_user: String,
    /// The device whose delivered watermark moved. Empty for `Read`, whose
    /// watermark belongs to the user.
    pub subject_device: String,
    pub seq: u64,
    pub at_ms: u64,
}

/// The reply to a MarkDelivered or MarkRead request, which carries the
/// committed watermark after the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptAcked {
    pub conversation_id: String,
    pub kind: ReceiptKind,
    pub user_id: String,
    /// The device that sent the request, for `Read` too. The checkers key
    /// watermarks by it, so requests from different devices of one user may
    /// overlap in time.
    pub device_id: String,
    pub watermark: u64,
    pub at_ms: u64,
}

/// A final read, after all faults healed, of one replica's copy of a
/// conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRead {
    pub node_id: u64,
    pub shard_id: u64,
    pub conversation_id: String,
    /// Every message of the conversation on this replica, in the order the
    /// replica returned them.
    pub messages: Vec<ObservedMessage>,
    pub at_ms: u64,
}

/// One message as a replica stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedMessage {
    pub seq: u64,
    pub sender_user: String,
    pub sender_device: String,
    pub client_message_id: String,
    pub server_time_ms: u64,
}

/// One observation of a replica's Raft state, such as a sample of its
/// metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftObserved {
    pub node_id: u64,
    pub shard_id: u64,
    /// The replica's current term.
    pub term: u64,
    /// The leader the replica believes in at `term`, if any.
    pub leader: Option<u64>,
    /// `(index, term)` of log entries the replica reports committed. May be a
    /// sample rather than the whole log.
    pub committed: Vec<(u64, u64)>,
    pub at_ms: u64,
}

macro_rules! impl_from_payload {
    ($($payload:ident),* $(,)?) => {
        $(
            impl From<$payload> for Event {
                fn from(payload: $payload) -> Self {
                    Event::$payload(payload)
                }
            }
        )*
    };
}

impl_from_payload!(
    SendInvoked,
    SendAcked,
    SendFailed,
    DeliveredToDevice,
    DeviceCursorReset,
    ReceiptObserved,
    ReceiptAcked,
    ReplicaRead,
    RaftObserved,
);
