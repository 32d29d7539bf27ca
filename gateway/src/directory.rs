//! The gateway's cache of who is in which conversation, built from every
//! shard's conversations and kept current from their commit streams.
//!
//! Authorization of sessions and fan-out read it; the state machine still
//! checks membership on every send and history read, so a stale cache can
//! delay a delivery but never leak or accept a message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::RwLock;

use parley_core::proto::command::Kind;
use parley_core::proto::command_result::Outcome;
use parley_shards::proto::ConversationsReply;
use parley_shards::shard_map::shard_of_id;
use tokio::sync::watch;

/// A conversation as the gateway's cache records it.
#[derive(Clone, Debug, Default)]
pub struct ConversationEntry {
    pub direct: bool,
    pub members: BTreeSet<String>,
    pub last_seq: u64,
}

#[derive(Default)]
struct State {
    conversations: BTreeMap<String, ConversationEntry>,
    conversations_of_user: BTreeMap<String, BTreeSet<String>>,
    users: BTreeSet<String>,
}

impl State {
    fn add_member(&mut self, conversation_id: &str, user: &str) {
        if let Some(entry) = self.conversations.get_mut(conversation_id) {
            entry.members.insert(user.to_string());
        }
        self.conversations_of_user
            .entry(user.to_string())
            .or_default()
            .insert(conversation_id.to_string());
    }

    fn remove_member(&mut self, conversation_id: &str, user: &str) {
        if let Some(entry) = self.conversations.get_mut(conversation_id) {
            entry.members.remove(user);
        }
        if let Some(conversations) = self.conversations_of_user.get_mut(user) {
            conversations.remove(conversation_id);
        }
    }

    fn insert_conversation(&mut self, conversation_id: &str, entry: ConversationEntry) {
        let members: Vec<String> = entry.members.iter().cloned().collect();
        self.conversations
            .insert(conversation_id.to_string(), entry);
        for member in members {
            self.add_member(conversation_id, &member);
        }
    }
}

/// A membership change the feed applied, for fan-out.
#[derive(Clone, Debug, Default)]
pub struct MembershipChange {
    pub conversation_id: String,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// Conversations, members and users of the whole cluster.
pub struct Directory {
    state: RwLock<State>,
    shard_count: u32,
    /// Per shard: the log index the cache has applied.
    applied: Vec<watch::Sender<u64>>,
    /// Per shard: whether the cache has loaded its conversations at least
    /// once. Before that, the cache lists none of the shard's members.
    loaded: Vec<watch::Sender<bool>>,
}

impl Directory {
    pub fn new(shard_count: u32) -> Self {
        Directory {
            state: RwLock::new(State::default()),
            shard_count,
            applied: (0..shard_count).map(|_| watch::channel(0).0).collect(),
            loaded: (0..shard_count).map(|_| watch::channel(false).0).collect(),
        }
    }

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

    pub fn shard_count(&self) -> u32 {
        self.shard_count
    }

    /// Replaces everything the cache holds for one shard with `reply`.
    pub fn load_shard(&self, reply: &ConversationsReply) {
        let shard = reply.shard_id;
        {
            let mut state = self.write();
            let stale: Vec<String> = state
                .conversations
                .keys()
                .filter(|id| shard_of_id(id, self.shard_count) == shard)
                .cloned()
                .collect();
            for conversation_id in stale {
                let members = state.conversations[&conversation_id].members.clone();
                for member in members {
                    state.remove_member(&conversation_id, &member);
                }
                state.conversations.remove(&conversation_id);
            }
            for info in &reply.conversations {
                let entry = ConversationEntry {
                    direct: info.direct,
                    members: info.members.iter().cloned().collect(),
                    last_seq: info.last_seq,
                };
                state.insert_conversation(&info.conversation_id, entry);
            }
            state.users.extend(reply.user_ids.iter().cloned());
        }
        self.set_applied(shard, reply.applied_index);
        if let Some(loaded) = self.loaded.get(shard as usize) {
            loaded.send_replace(true);
        }
    }

    /// Waits until every shard has been loaded once. Returns false if that
    /// takes longer than `timeout`.
    pub async fn wait_loaded(&self, timeout: std::time::Duration) -> bool {
        let all_loaded = async {
            for loaded in &self.loaded {
                let mut receiver = loaded.subscribe();
                let _ = receiver.wait_for(|loaded| *loaded).await;
            }
        };
        tokio::time::timeout(timeout, all_loaded).await.is_ok()
    }

    /// Applies one committed command; returns the membership change it
    /// made, if any.
    pub fn apply(&self, kind: &Kind, outcome: &Outcome) -> Option<MembershipChange> {
        let mut state = self.write();
        match (kind, outcome) {
            (Kind::RegisterUser(register), Outcome::Registered(_)) => {
                state.users.insert(register.user_id.clone());
                None
            }
            (Kind::CreateDirect(create), Outcome::ConversationCreated(_)) => {
                let members: BTreeSet<String> =
                    [create.user_a.clone(), create.user_b.clone()].into();
                created(&mut state, &create.conversation_id, true, members)
            }
            (Kind::CreateGroup(create), Outcome::ConversationCreated(_)) => {
                let mut members: BTreeSet<String> = create.members.iter().cloned().collect();
                members.insert(create.creator.clone());
                created(&mut state, &create.conversation_id, false, members)
            }
            (_, Outcome::MembersChanged(changed)) => {
                for user in &changed.added {
                    state.add_member(&changed.conversation_id, user);
                }
                for user in &changed.removed {
                    state.remove_member(&changed.conversation_id, user);
                }
                Some(MembershipChange {
                    conversation_id: changed.conversation_id.clone(),
                    added: changed.added.clone(),
                    removed: changed.removed.clone(),
                })
            }
            (Kind::Append(_), Outcome::Appended(appended)) => {
                if let Some(entry) = state.conversations.get_mut(&appended.conversation_id) {
                    entry.last_seq = entry.last_seq.max(appended.seq);
                }
                None
            }
            _ => None,
        }
    }

    pub fn set_applied(&self, shard: u32, log_index: u64) {
        if let Some(applied) = self.applied.get(shard as usize) {
            applied.send_modify(|current| *current = (*current).max(log_index));
        }
    }

    /// Waits until the cache has applied `log_index` of `shard`, so a
    /// caller sees its own write; gives up silently after `timeout`.
    pub async fn wait_applied(&self, shard: u32, log_index: u64, timeout: std::time::Duration) {
        let Some(applied) = self.applied.get(shard as usize) else {
            return;
        };
        let mut receiver = applied.subscribe();
        let wait = receiver.wait_for(|applied| *applied >= log_index);
        let _ = tokio::time::timeout(timeout, wait).await;
    }

    pub fn is_member(&self, conversation_id: &str, user: &str) -> bool {
        self.read()
            .conversations
            .get(conversation_id)
            .is_some_and(|entry| entry.members.contains(user))
    }

    pub fn conversation(&self, conversation_id: &str) -> Option<ConversationEntry> {
        self.read().conversations.get(conversation_id).cloned()
    }

    pub fn conversations_of(&self, user: &str) -> Vec<String> {
        self.read()
            .conversations_of_user
            .get(user)
            .map(|conversations| conversations.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn user_exists(&self, user: &str) -> bool {
        self.read().users.contains(user)
    }

    /// Returns the users who share a direct conversation with `user`.
    pub fn direct_peers(&self, user: &str) -> Vec<String> {
        let state = self.read();
        let Some(conversations) = state.conversations_of_user.get(user) else {
            return Vec::new();
        };
        conversations
            .iter()
            .filter_map(|id| state.conversations.get(id))
            .filter(|entry| entry.direct)
            .flat_map(|entry| entry.members.iter())
            .filter(|member| member.as_str() != user)
            .cloned()
            .collect()
    }
}

fn created(
    state: &mut State,
    conversation_id: &str,
    direct: bool,
    members: BTreeSet<String>,
) -> Option<MembershipChange> {
    if state.conversations.contains_key(conversation_id) {
        return None;
    }
    let added: Vec<String> = members.iter().cloned().collect();
    let entry = ConversationEntry {
        direct,
        members,
        last_seq: 0,
    };
    state.insert_conversation(conversation_id, entry);
    Some(MembershipChange {
        conversation_id: conversation_id.to_string(),
        added,
        removed: Vec::new(),
    })
}
