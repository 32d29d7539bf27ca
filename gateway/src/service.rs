//! The `parley.v1.Parley` gRPC service: authentication, request checks,
//! and the mapping of each call to a replicated command or a read.

use std::sync::Arc;
use std::time::Duration;

use parley_core::proto::command::Kind;
use parley_core::proto::command_result::Outcome;
use parley_core::proto::{self as core, StoredMessage};
use parley_core::{is_valid_id, Limits};
use sha2::{Digest, Sha256};

use crate::auth::DeviceIdentity;
use crate::cluster::Committed;
use crate::context::{now_ms, Gateway};
use crate::proto::parley_server::Parley;
use crate::proto::{
    client_event, AddMembersRequest, ClientEvent, Conversation, ConversationKind,
    CreateDirectRequest, CreateGroupRequest, GapFillRequest, HistoryReply, HistoryRequest,
    LinkDeviceRequest, ListConversationsReply, ListConversationsRequest, MarkReadReply,
    MarkReadRequest, Message, PresenceReply, PresenceRequest, RegisterReply, RegisterRequest,
    RemoveMemberRequest, SendReply, SendRequest, ServerEvent,
};
use crate::session;

/// How long a call waits for the gateway's own commit stream to show its
/// write, so a session opened right after sees it.
const READ_YOUR_WRITES_WAIT: Duration = Duration::from_secs(2);

/// Members listed in a Conversation reply; larger groups list none.
const LISTED_MEMBERS_MAX: usize = 1_000;

/// Events buffered between a session task and its gRPC stream.
const OUTBOUND_EVENTS_MAX: usize = 64;

/// The client API of one gateway.
#[derive(Clone)]
pub struct ParleyService {
    gateway: Arc<Gateway>,
}

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

fn check_id(field: &str, value: &str) -> Result<(), tonic::Status> {
    if is_valid_id(value, &Limits::default()) {
        return Ok(());
    }
    Err(tonic::Status::invalid_argument(format!(
        "{field} {value:?} is invalid; use 1 to 128 ASCII letters, digits, '-', '_', '.' or ':'"
    )))
}

/// Prefix of every direct conversation id; group ids may not use it.
const DIRECT_PREFIX: &str = "direct-";

/// Returns the id of the direct conversation between two users: the same
/// for both orders, and within the id length limit for any user ids.
pub fn direct_conversation_id(user_a: &str, user_b: &str) -> String {
    let (low, high) = if user_a <= user_b {
        (user_a, user_b)
    } else {
        (user_b, user_a)
    };
    let digest = Sha256::digest(format!("{low}|{high}").as_bytes());
    format!("{DIRECT_PREFIX}{}", &hex::encode(digest)[..40])
}

fn to_message(conversation_id: &str, stored: StoredMessage) -> Message {
    Message {
        conversation_id: conversation_id.to_string(),
        seq: stored.seq,
        sender_user_id: stored.sender_user,
        sender_device_id: stored.sender_device,
        client_message_id: stored.client_message_id,
        body: stored.body.into(),
        server_time_ms: stored.server_time_ms,
    }
}

impl ParleyService {
    pub fn new(gateway: Arc<Gateway>) -> Self {
        ParleyService { gateway }
    }

    fn authenticate<T>(
        &self,
        request: &tonic::Request<T>,
    ) -> Result<DeviceIdentity, tonic::Status> {
        Ok(self
            .gateway
            .signer
            .authenticate(request.metadata(), now_ms())?)
    }

    fn token_reply(&self, identity: DeviceIdentity) -> RegisterReply {
        let expires_at_ms = now_ms() + self.gateway.config.token_ttl.as_millis() as u64;
        RegisterReply {
            token: self.gateway.signer.issue(&identity, expires_at_ms),
            user_id: identity.user_id,
            device_id: identity.device_id,
            expires_at_ms,
        }
    }

    /// Waits until this gateway's directory has applied `committed`.
    async fn settle(&self, committed: &Committed) {
        self.gateway
            .directory
            .wait_applied(
                committed.shard_id,
                committed.log_index,
                READ_YOUR_WRITES_WAIT,
            )
            .await;
    }

    async fn register_device(&self, identity: &DeviceIdentity) -> Result<(), tonic::Status> {
        let register = core::RegisterDevice {
            user_id: identity.user_id.clone(),
            device_id: identity.device_id.clone(),
        };
        self.gateway
            .cluster
            .propose(Kind::RegisterDevice(register))
            .await?;
        Ok(())
    }

    fn conversation_reply(&self, conversation_id: &str) -> Conversation {
        let entry = self
            .gateway
            .directory
            .conversation(conversation_id)
            .unwrap_or_default();
        let members = if entry.members.len() <= LISTED_MEMBERS_MAX {
            entry.members.iter().cloned().collect()
        } else {
            Vec::new()
        };
        let kind = if entry.direct {
            ConversationKind::Direct
        } else {
            ConversationKind::Group
        };
        Conversation {
            conversation_id: conversation_id.to_string(),
            kind: kind as i32,
            member_count: entry.members.len() as u32,
            last_seq: entry.last_seq,
            members,
        }
    }

    fn check_users_exist(&self, field: &str, users: &[String]) -> Result<(), tonic::Status> {
        for user in users {
            check_id(field, user)?;
            if !self.gateway.directory.user_exists(user) {
                return Err(tonic::Status::not_found(format!(
                    "{field} names user {user:?}, who is not registered; register the user first"
                )));
            }
        }
        Ok(())
    }

    async fn read_history(
        &self,
        identity: &DeviceIdentity,
        conversation_id: &str,
        from_seq: u64,
        limit: u32,
    ) -> Reply<HistoryReply> {
        let (messages, last_seq) = self
            .gateway
            .cluster
            .history_page(&identity.user_id, conversation_id, from_seq, limit)
            .await?;
        let messages = messages
            .into_iter()
            .map(|stored| to_message(conversation_id, stored))
            .collect();
        Ok(tonic::Response::new(HistoryReply { messages, last_seq }))
    }
}

type SessionStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<ServerEvent, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Parley for ParleyService {
    async fn register(&self, request: tonic::Request<RegisterRequest>) -> Reply<RegisterReply> {
        let request = request.into_inner();
        check_id("RegisterRequest.user_id", &request.user_id)?;
        check_id("RegisterRequest.device_id", &request.device_id)?;

        let register = core::RegisterUser {
            user_id: request.user_id.clone(),
        };
        let committed = self
            .gateway
            .cluster
            .propose(Kind::RegisterUser(register))
            .await?;
        if let Outcome::Registered(registered) = &committed.outcome {
            if registered.already_existed {
                return Err(tonic::Status::already_exists(format!(
                    "user {:?} is already registered; add a device with LinkDevice, \
                     authenticated by one of the user's devices",
                    request.user_id
                )));
            }
        }
        let identity = DeviceIdentity {
            user_id: request.user_id,
            device_id: request.device_id,
        };
        self.register_device(&identity).await?;
        self.settle(&committed).await;
        Ok(tonic::Response::new(self.token_reply(identity)))
    }

    async fn link_device(
        &self,
        request: tonic::Request<LinkDeviceRequest>,
    ) -> Reply<RegisterReply> {
        let caller = self.authenticate(&request)?;
        let request = request.into_inner();
        check_id("LinkDeviceRequest.device_id", &request.device_id)?;
        let identity = DeviceIdentity {
            user_id: caller.user_id,
            device_id: request.device_id,
        };
        self.register_device(&identity).await?;
        Ok(tonic::Response::new(self.token_reply(identity)))
    }

    async fn create_direct(
        &self,
        request: tonic::Request<CreateDirectRequest>,
    ) -> Reply<Conversation> {
        let caller = self.authenticate(&request)?;
        let peer = request.into_inner().peer_user_id;
        self.check_users_exist(
            "CreateDirectRequest.peer_user_id",
            std::slice::from_ref(&peer),
        )?;
        if peer == caller.user_id {
            return Err(tonic::Status::invalid_argument(
                "CreateDirectRequest.peer_user_id is the caller; a direct conversation needs another user",
            ));
        }
        let conversation_id = direct_conversation_id(&caller.user_id, &peer);
        let create = core::CreateDirect {
            conversation_id: conversation_id.clone(),
            user_a: caller.user_id,
            user_b: peer,
        };
        let committed = self
            .gateway
            .cluster
            .propose(Kind::CreateDirect(create))
            .await?;
        self.settle(&committed).await;
        Ok(tonic::Response::new(
            self.conversation_reply(&conversation_id),
        ))
    }

    async fn create_group(
        &self,
        request: tonic::Request<CreateGroupRequest>,
    ) -> Reply<Conversation> {
        let caller = self.authenticate(&request)?;
        let request = request.into_inner();
        check_id(
            "CreateGroupRequest.conversation_id",
            &request.conversation_id,
        )?;
        // Direct conversation ids are derived from their two users; a group
        // under such an id would squat on that pair's conversation.
        if request.conversation_id.starts_with(DIRECT_PREFIX) {
            return Err(tonic::Status::invalid_argument(format!(
                "CreateGroupRequest.conversation_id {:?} starts with {DIRECT_PREFIX:?}, which is \
                 reserved for direct conversations; choose another group id",
                request.conversation_id
            )));
        }
        self.check_users_exist("CreateGroupRequest.members", &request.members)?;
        let create = core::CreateGroup {
            conversation_id: request.conversation_id.clone(),
            creator: caller.user_id,
            members: request.members,
        };
        let committed = self
            .gateway
            .cluster
            .propose(Kind::CreateGroup(create))
            .await?;
        self.settle(&committed).await;
        Ok(tonic::Response::new(
            self.conversation_reply(&request.conversation_id),
        ))
    }

    async fn add_members(&self, request: tonic::Request<AddMembersRequest>) -> Reply<Conversation> {
        let caller = self.authenticate(&request)?;
        let request = request.into_inner();
        check_id(
            "AddMembersRequest.conversation_id",
            &request.conversation_id,
        )?;
        self.check_users_exist("AddMembersRequest.user_ids", &request.user_ids)?;
        let add = core::AddMembers {
            conversation_id: request.conversation_id.clone(),
            actor: caller.user_id,
            users: request.user_ids,
        };
        let committed = self.gateway.cluster.propose(Kind::AddMembers(add)).await?;
        self.settle(&committed).await;
        Ok(tonic::Response::new(
            self.conversation_reply(&request.conversation_id),
        ))
    }

    async fn remove_member(
        &self,
        request: tonic::Request<RemoveMemberRequest>,
    ) -> Reply<Conversation> {
        let caller = self.authenticate(&request)?;
        let request = request.into_inner();
        check_id(
            "RemoveMemberRequest.conversation_id",
            &request.conversation_id,
        )?;
        check_id("RemoveMemberRequest.user_id", &request.user_id)?;
        let remove = core::RemoveMember {
            conversation_id: request.conversation_id.clone(),
            actor: caller.user_id,
            user: request.user_id,
        };
        let committed = self
            .gateway
            .cluster
            .propose(Kind::RemoveMember(remove))
            .await?;
        self.settle(&committed).await;
        Ok(tonic::Response::new(
            self.conversation_reply(&request.conversation_id),
        ))
    }

    async fn list_conversations(
        &self,
        request: tonic::Request<ListConversationsRequest>,
    ) -> Reply<ListConversationsReply> {
        let caller = self.authenticate(&request)?;
        let conversations = self
            .gateway
            .directory
            .conversations_of(&caller.user_id)
            .iter()
            .map(|conversation_id| self.conversation_reply(conversation_id))
            .collect();
        Ok(tonic::Response::new(ListConversationsReply {
            conversations,
        }))
    }

    async fn send(&self, request: tonic::Request<SendRequest>) -> Reply<SendReply> {
        let caller = self.authenticate(&request)?;
        let request = request.into_inner();
        check_id("SendRequest.conversation_id", &request.conversation_id)?;
        check_id("SendRequest.client_message_id", &request.client_message_id)?;
        let append = core::Append {
            conversation_id: request.conversation_id.clone(),
            sender_user: caller.user_id,
            sender_device: caller.device_id,
            client_message_id: request.client_message_id,
            body: request.body,
            proposer_time_ms: 0,
        };
        let committed = self.gateway.cluster.propose(Kind::Append(append)).await?;
        let Outcome::Appended(appended) = committed.outcome else {
            return Err(tonic::Status::internal("an append returned no seq"));
        };
        Ok(tonic::Response::new(SendReply {
            conversation_id: request.conversation_id,
            seq: appended.seq,
            server_time_ms: appended.server_time_ms,
            duplicate: appended.duplicate,
        }))
    }

    async fn mark_read(&self, request: tonic::Request<MarkReadRequest>) -> Reply<MarkReadReply> {
        let caller = self.authenticate(&request)?;
        let request = request.into_inner();
        check_id("MarkReadRequest.conversation_id", &request.conversation_id)?;
        let mark = core::MarkRead {
            conversation_id: request.conversation_id,
            user_id: caller.user_id,
            seq: request.seq,
        };
        let committed = self.gateway.cluster.propose(Kind::MarkRead(mark)).await?;
        let Outcome::ReceiptAdvanced(advanced) = committed.outcome else {
            return Err(tonic::Status::internal(
                "a read receipt returned no watermark",
            ));
        };
        Ok(tonic::Response::new(MarkReadReply {
            read_seq: advanced.watermark,
        }))
    }

    async fn history(&self, request: tonic::Request<HistoryRequest>) -> Reply<HistoryReply> {
        let caller = self.authenticate(&request)?;
        let request = request.into_inner();
        check_id("HistoryRequest.conversation_id", &request.conversation_id)?;
        self.read_history(
            &caller,
            &request.conversation_id,
            request.from_seq,
            request.limit,
        )
        .await
    }

    async fn gap_fill(&self, request: tonic::Request<GapFillRequest>) -> Reply<HistoryReply> {
        let caller = self.authenticate(&request)?;
        let request = request.into_inner();
        check_id("GapFillRequest.conversation_id", &request.conversation_id)?;
        let from_seq = request.after_seq.saturating_add(1);
        self.read_history(&caller, &request.conversation_id, from_seq, request.limit)
            .await
    }

    async fn presence(&self, request: tonic::Request<PresenceRequest>) -> Reply<PresenceReply> {
        self.authenticate(&request)?;
        let request = request.into_inner();
        for user in &request.user_ids {
            check_id("PresenceRequest.user_ids", user)?;
        }
        let users = request
            .user_ids
            .iter()
            .map(|user| self.gateway.ephemeral.presence(&self.gateway.hub, user))
            .collect();
        Ok(tonic::Response::new(PresenceReply { users }))
    }

    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: tonic::Request<tonic::Streaming<ClientEvent>>,
    ) -> Reply<SessionStream> {
        let identity = self.authenticate(&request)?;
        let mut inbound = request.into_inner();
        let open = match inbound.message().await? {
            Some(ClientEvent {
                event: Some(client_event::Event::Open(open)),
            }) => open,
            _ => {
                return Err(tonic::Status::invalid_argument(
                    "the first ClientEvent of a session must be `open` (SessionOpen)",
                ))
            }
        };
        for cursor in &open.cursors {
            check_id(
                "SessionOpen.cursors.conversation_id",
                &cursor.conversation_id,
            )?;
        }
        session::check_open(&self.gateway, &identity, &open)?;

        let (outbound, stream) = tokio::sync::mpsc::channel(OUTBOUND_EVENTS_MAX);
        tokio::spawn(session::run(
            self.gateway.clone(),
            identity,
            open,
            inbound,
            outbound,
        ));
        let stream = futures::stream::unfold(stream, |mut stream| async move {
            stream.recv().await.map(|item| (item, stream))
        });
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_conversation_id_ignores_order() {
        assert_eq!(
            direct_conversation_id("alice", "bob"),
            direct_conversation_id("bob", "alice")
        );
        assert_ne!(
            direct_conversation_id("alice", "bob"),
            direct_conversation_id("alice", "carol")
        );
    }

    #[test]
    fn direct_conversation_id_is_a_valid_id() {
        let long = "u".repeat(128);
        let id = direct_conversation_id(&long, "bob");
        assert!(is_valid_id(&id, &Limits::default()), "{id}");
    }
}
