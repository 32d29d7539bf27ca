//! `parley chat listen` and `parley chat typing`: the device session.
//!
//! The listener opens a session from the profile's cursors, prints every
//! pushed event as one line, and for each message whose seq is above the
//! cursor prints it, saves the advanced cursor and then acknowledges it.
//! Delivery is at-least-once, so a message at or below the cursor is
//! dropped and each message is printed once. A message that
//! skips past the cursor is preceded by a GapFill of the missing seqs. A
//! session that ends with a transient error is reopened from the cursors.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use parley_gateway::proto::client_event;
use parley_gateway::proto::server_event::Event;
use parley_gateway::proto::{
    ClientEvent, Cursor, DeliveredAck, GapFillRequest, Message, ServerEvent, SessionOpen,
    TypingUpdate,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use super::client::{request, AuthedClient, Gateway, CALL_TIMEOUT};
use super::format::{event_line, message_line};
use super::profile::{Arrival, Profile};

/// How long the listener keeps reopening a session that fails before it
/// ever becomes ready.
const RECONNECT_WINDOW: Duration = Duration::from_secs(10);

/// Largest number of messages one GapFill call requests.
const GAP_FILL_PAGE: u64 = 1_000;

/// When `listen` stops.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListenLimits {
    /// Stop after printing this many new messages.
    pub count: Option<u64>,
    /// Stop after this long; an error if `count` was given and not reached.
    pub timeout: Option<Duration>,
}

/// A device session's state across reconnects.
pub struct Listener {
    gateway: Gateway,
    client: AuthedClient,
    profile: Profile,
    profile_path: PathBuf,
    printed: u64,
    count: Option<u64>,
}

/// The end of a session that had no fatal error.
enum Ended {
    /// The requested number of messages was printed.
    Done,
    /// The stream failed or closed; `was_ready` is true if the session had
    /// become ready first.
    Dropped { status: Status, was_ready: bool },
}

impl Listener {
    pub fn new(
        gateway: Gateway,
        client: AuthedClient,
        profile: Profile,
        profile_path: PathBuf,
    ) -> Listener {
        Listener {
            gateway,
            client,
            profile,
            profile_path,
            printed: 0,
            count: None,
        }
    }

    /// Listens until `limits` are met, or forever when none are given.
    pub async fn listen(mut self, limits: ListenLimits) -> Result<()> {
        self.count = limits.count;
        let Some(timeout) = limits.timeout else {
            return self.reconnect_loop().await;
        };
        let outcome = tokio::time::timeout(timeout, self.reconnect_loop()).await;
        match (outcome, self.count) {
            (Ok(result), _) => result,
            (Err(_), Some(count)) => bail!(
                "timed out after {} s with {} of {count} messages; pass a larger --timeout-secs \
                 or a smaller --count",
                timeout.as_secs(),
                self.printed
            ),
            (Err(_), None) => Ok(()),
        }
    }

    async fn reconnect_loop(&mut self) -> Result<()> {
        let mut failing_since = Instant::now();
        let mut backoff = Duration::from_millis(200);
        loop {
            let (status, was_ready) = match self.session().await? {
                Ended::Done => return Ok(()),
                Ended::Dropped { status, was_ready } => (status, was_ready),
            };
            if !is_resumable(&status) {
                return Err(self.gateway.error(status));
            }
            if was_ready {
                failing_since = Instant::now();
                backoff = Duration::from_millis(200);
            }
            if failing_since.elapsed() > RECONNECT_WINDOW {
                return Err(self.gateway.error(status));
            }
            eprintln!(
                "warning: session ended ({}); reopening it in {} ms",
                self.gateway.error(status.clone()),
                backoff.as_millis()
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Runs one session until the count is reached or the stream ends.
    async fn session(&mut self) -> Result<Ended> {
        let (sender, mut stream) = match open_session(&mut self.client, &self.profile).await {
            Ok(session) => session,
            Err(status) => {
                return Ok(Ended::Dropped {
                    status,
                    was_ready: false,
                })
            }
        };
        let mut was_ready = false;
        loop {
            let event = match stream.message().await {
                Ok(Some(event)) => event,
                Ok(None) => {
                    let status = Status::unavailable("the gateway ended the session");
                    return Ok(Ended::Dropped { status, was_ready });
                }
                Err(status) => return Ok(Ended::Dropped { status, was_ready }),
            };
            match event.event {
                Some(Event::Ready(ready)) => {
                    was_ready = true;
                    println!("ready {} conversations", ready.conversations.len());
                }
                Some(Event::Message(message)) => {
                    if let Err(status) = self.on_message(message, &sender).await? {
                        return Ok(Ended::Dropped { status, was_ready });
                    }
                }
                Some(other) => {
                    if let Some(line) = event_line(&other) {
                        println!("{line}");
                    }
                }
                None => {}
            }
            if self.is_done() {
                close_session(sender, stream).await;
                return Ok(Ended::Done);
            }
        }
    }

    /// Handles one pushed message. The inner error is a GapFill failure
    /// that should reopen the session.
    async fn on_message(
        &mut self,
        message: Message,
        sender: &mpsc::Sender<ClientEvent>,
    ) -> Result<Result<(), Status>> {
        match self.profile.classify(&message.conversation_id, message.seq) {
            Arrival::Duplicate => {
                let seq = self.profile.cursor(&message.conversation_id);
                acknowledge(sender, &message.conversation_id, seq).await;
            }
            Arrival::Next => self.deliver(message, sender).await?,
            Arrival::Gap { after } => {
                if let Err(status) = self.fill_gap(&message, after, sender).await? {
                    return Ok(Err(status));
                }
                if !self.is_done() {
                    self.deliver(message, sender).await?;
                }
            }
        }
        Ok(Ok(()))
    }

    /// Prints a new message, saves its seq as the cursor, then acks it:
    /// a crash between the print and the save prints it again next time,
    /// but never loses it.
    async fn deliver(
        &mut self,
        message: Message,
        sender: &mpsc::Sender<ClientEvent>,
    ) -> Result<()> {
        println!("{}", message_line(&message));
        self.printed += 1;
        self.profile.advance(&message.conversation_id, message.seq);
        self.profile.save(&self.profile_path)?;
        acknowledge(sender, &message.conversation_id, message.seq).await;
        Ok(())
    }

    /// Fetches and delivers the messages between `after` and `next.seq`.
    /// A transient GapFill error is returned to reopen the session. Any
    /// other error, or an empty reply, skips the gap with a warning, since
    /// those messages cannot be fetched by this device.
    async fn fill_gap(
        &mut self,
        next: &Message,
        after: u64,
        sender: &mpsc::Sender<ClientEvent>,
    ) -> Result<Result<(), Status>> {
        let conversation_id = next.conversation_id.clone();
        let mut cursor = after;
        while cursor + 1 < next.seq && !self.is_done() {
            let limit = (next.seq - cursor - 1).min(GAP_FILL_PAGE) as u32;
            let call = self.client.gap_fill(request(GapFillRequest {
                conversation_id: conversation_id.clone(),
                after_seq: cursor,
                limit,
            }));
            let messages = match call.await {
                Ok(reply) => reply.into_inner().messages,
                Err(status) if is_resumable(&status) => return Ok(Err(status)),
                Err(status) => {
                    warn_gap(
                        &conversation_id,
                        cursor,
                        next.seq,
                        &self.gateway.error(status),
                    );
                    break;
                }
            };
            let missing: Vec<Message> = messages
                .into_iter()
                .filter(|message| message.seq > cursor && message.seq < next.seq)
                .collect();
            if missing.is_empty() {
                warn_gap(
                    &conversation_id,
                    cursor,
                    next.seq,
                    &anyhow!("GapFill returned none"),
                );
                break;
            }
            for message in missing {
                if self.is_done() {
                    break;
                }
                cursor = message.seq;
                self.deliver(message, sender).await?;
            }
        }
        Ok(Ok(()))
    }

    fn is_done(&self) -> bool {
        self.count.is_some_and(|count| self.printed >= count)
    }
}

/// Sends one TypingUpdate over a session opened for it.
pub async fn send_typing(
    gateway: &Gateway,
    mut client: AuthedClient,
    profile: &Profile,
    conversation_id: &str,
    typing: bool,
) -> Result<()> {
    let (sender, mut stream) = open_session(&mut client, profile)
        .await
        .map_err(|status| gateway.error(status))?;
    let ready = tokio::time::timeout(CALL_TIMEOUT, wait_ready(&mut stream)).await;
    let not_ready = || Status::deadline_exceeded("the session was not ready in time");
    let ready = ready.unwrap_or_else(|_| Err(not_ready()));
    let conversations = ready.map_err(|status| gateway.error(status))?;

    // The gateway drops typing updates for conversations it does not list
    // for the user without a reply, so check here to report the mistake. Its
    // list follows the commit feed and can lag a membership change by a moment.
    let is_member = conversations
        .iter()
        .any(|cursor| cursor.conversation_id == conversation_id);
    if !is_member {
        close_session(sender, stream).await;
        bail!(
            "the gateway does not list conversation {conversation_id:?} among yours, so the \
             typing update was not sent; check it with `parley chat conversations`, and retry \
             if you joined it just now"
        );
    }

    let update = client_event::Event::Typing(TypingUpdate {
        conversation_id: conversation_id.to_string(),
        typing,
    });
    let event = ClientEvent {
        event: Some(update),
    };
    if sender.send(event).await.is_err() {
        bail!("the session closed before the typing update was sent; try again");
    }
    close_session(sender, stream).await;
    Ok(())
}

/// Opens a session from the profile's cursors.
async fn open_session(
    client: &mut AuthedClient,
    profile: &Profile,
) -> Result<
    (
        mpsc::Sender<ClientEvent>,
        Streaming<parley_gateway::proto::ServerEvent>,
    ),
    Status,
> {
    let (sender, receiver) = mpsc::channel(256);
    let open = client_event::Event::Open(SessionOpen {
        cursors: profile.session_cursors(),
    });
    // The receiver is alive here, so this send cannot fail.
    let _ = sender.send(ClientEvent { event: Some(open) }).await;
    let response = client.session(ReceiverStream::new(receiver)).await?;
    Ok((sender, response.into_inner()))
}

async fn wait_ready(
    stream: &mut Streaming<parley_gateway::proto::ServerEvent>,
) -> Result<Vec<Cursor>, Status> {
    loop {
        match stream.message().await? {
            Some(ServerEvent {
                event: Some(Event::Ready(ready)),
            }) => return Ok(ready.conversations),
            Some(_) => {}
            None => return Err(Status::unavailable("the gateway ended the session")),
        }
    }
}

/// Half-closes the request stream and waits up to one second for the
/// gateway to end the session, ignoring what it pushes meanwhile, so the
/// last acks or typing update are read before the connection goes away.
async fn close_session(
    sender: mpsc::Sender<ClientEvent>,
    mut stream: Streaming<parley_gateway::proto::ServerEvent>,
) {
    drop(sender);
    let drain = async { while let Ok(Some(_)) = stream.message().await {} };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Acks `seq`. A failure means the session is ending, which the stream
/// reports, so it is ignored here.
async fn acknowledge(sender: &mpsc::Sender<ClientEvent>, conversation_id: &str, seq: u64) {
    let ack = client_event::Event::Delivered(DeliveredAck {
        conversation_id: conversation_id.to_string(),
        seq,
    });
    let _ = sender.send(ClientEvent { event: Some(ack) }).await;
}

fn warn_gap(conversation_id: &str, after: u64, next: u64, error: &anyhow::Error) {
    eprintln!(
        "warning: messages {}..{} of {conversation_id} are skipped: {error}",
        after + 1,
        next - 1
    );
}

/// Returns whether a session that ended with `status` should be reopened
/// from the cursors, which is always safe because the cursors drop repeats.
fn is_resumable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumable_codes_exclude_client_errors() {
        assert!(is_resumable(&Status::unavailable("restarting")));
        assert!(is_resumable(&Status::aborted("resync")));
        assert!(!is_resumable(&Status::unauthenticated("expired")));
        assert!(!is_resumable(&Status::permission_denied("not a member")));
    }
}
