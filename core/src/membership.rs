//! CreateDirect, CreateGroup, AddMembers and RemoveMember: which users belong
//! to which conversation.
//!
//! Invariants: a direct conversation has exactly two distinct members and
//! never changes them, and a group never exceeds `Limits::group_members_max`
//! members. Changes are all-or-nothing.
//!
//! NOTE: membership commands do not check that the users are registered,
//! because users live on other shards than their conversations. The gateway
//! must check that every user exists before it proposes these commands.

use std::collections::BTreeSet;

use crate::ids::{check_id, check_ids, quote};
use crate::limits::Limits;
use crate::proto::command_result::Outcome;
use crate::proto::{
    AddMembers, ConversationCreated, CreateDirect, CreateGroup, MembersChanged, Rejection,
    RejectionCode, RemoveMember,
};
use crate::rejection::reject;
use crate::state::{unknown_conversation, Conversation, ConversationKind, ShardState};

impl ShardState {
    /// Creates a direct conversation. Repeating the command with the same
    /// two users, in either order, returns the same result.
    pub(crate) fn create_direct(&mut self, command: &CreateDirect) -> Result<Outcome, Rejection> {
        let limits = &self.limits;
        check_id(
            "create_direct.conversation_id",
            &command.conversation_id,
            limits,
        )?;
        check_id("create_direct.user_a", &command.user_a, limits)?;
        check_id("create_direct.user_b", &command.user_b, limits)?;

        if command.user_a == command.user_b {
            return Err(reject(
                RejectionCode::InvalidId,
                format!(
                    "invalid create_direct.user_b {}: it equals user_a, but a direct \
                     conversation needs two distinct users",
                    quote(&command.user_b)
                ),
            ));
        }

        let members = BTreeSet::from([command.user_a.clone(), command.user_b.clone()]);
        if let Some(existing) = self.conversations.get(&command.conversation_id) {
            if existing.kind == ConversationKind::Direct && existing.members == members {
                return Ok(created(&command.conversation_id, existing));
            }
            return Err(conversation_exists(&command.conversation_id));
        }

        let conversation = Conversation::new(ConversationKind::Direct, members);
        let outcome = created(&command.conversation_id, &conversation);
        self.conversations
            .insert(command.conversation_id.clone(), conversation);
        Ok(outcome)
    }

    /// Creates a group of the creator and the listed members.
    ///
    /// Unlike CreateDirect this is not idempotent: a retry of a committed
    /// CreateGroup is rejected with CONVERSATION_EXISTS. A caller that retries
    /// must treat that code as possible success and compare `members`.
    pub(crate) fn create_group(&mut self, command: &CreateGroup) -> Result<Outcome, Rejection> {
        let limits = &self.limits;
        check_item_count("create_group.members", command.members.len(), limits)?;
        check_id(
            "create_group.conversation_id",
            &command.conversation_id,
            limits,
        )?;
        check_id("create_group.creator", &command.creator, limits)?;
        check_ids("create_group.members", &command.members, limits)?;

        if self.conversations.contains_key(&command.conversation_id) {
            return Err(conversation_exists(&command.conversation_id));
        }

        let mut members: BTreeSet<String> = command.members.iter().cloned().collect();
        members.insert(command.creator.clone());
        check_group_size(&command.conversation_id, members.len(), limits)?;

        let conversation = Conversation::new(ConversationKind::Group, members);
        let outcome = created(&command.conversation_id, &conversation);
        self.conversations
            .insert(command.conversation_id.clone(), conversation);
        Ok(outcome)
    }

    /// Adds users to a group, skipping users who are already members.
    /// `added` lists the new members in sorted order.
    pub(crate) fn add_members(&mut self, command: &AddMembers) -> Result<Outcome, Rejection> {
        let limits = &self.limits;
        check_item_count("add_members.users", command.users.len(), limits)?;
        check_id(
            "add_members.conversation_id",
            &command.conversation_id,
            limits,
        )?;
        check_id("add_members.actor", &command.actor, limits)?;
        check_ids("add_members.users", &command.users, limits)?;

        let conversation = self
            .conversations
            .get_mut(&command.conversation_id)
            .ok_or_else(|| unknown_conversation(&command.conversation_id))?;
        conversation.check_member(
            &command.conversation_id,
            "add_members.actor",
            &command.actor,
        )?;
        check_group(&command.conversation_id, conversation)?;

        let added: BTreeSet<String> = command
            .users
            .iter()
            .filter(|user| !conversation.members.contains(*user))
            .cloned()
            .collect();
        let member_count = conversation.members.len().saturating_add(added.len());
        check_group_size(&command.conversation_id, member_count, limits)?;

        conversation.members.extend(added.iter().cloned());
        Ok(members_changed(
            &command.conversation_id,
            conversation,
            added.into_iter().collect(),
            Vec::new(),
        ))
    }

    /// Removes a user from a group. Removing a non-member changes nothing and
    /// returns an empty `removed`. The user's read watermark is kept, so it
    /// still applies if the user is added again.
    pub(crate) fn remove_member(&mut self, command: &RemoveMember) -> Result<Outcome, Rejection> {
        let limits = &self.limits;
        check_id(
            "remove_member.conversation_id",
            &command.conversation_id,
            limits,
        )?;
        check_id("remove_member.actor", &command.actor, limits)?;
        check_id("remove_member.user", &command.user, limits)?;

        let conversation = self
            .conversations
            .get_mut(&command.conversation_id)
            .ok_or_else(|| unknown_conversation(&command.conversation_id))?;
        conversation.check_member(
            &command.conversation_id,
            "remove_member.actor",
            &command.actor,
        )?;
        check_group(&command.conversation_id, conversation)?;

        let mut removed = Vec::new();
        if conversation.members.remove(&command.user) {
            removed.push(command.user.clone());
        }

        Ok(members_changed(
            &command.conversation_id,
            conversation,
            Vec::new(),
            removed,
        ))
    }
}

fn check_item_count(field: &str, count: usize, limits: &Limits) -> Result<(), Rejection> {
    if count <= limits.members_per_command_max {
        return Ok(());
    }

    Err(reject(
        RejectionCode::TooManyItems,
        format!(
            "{field} lists {count} users, above members_per_command_max {}; \
             split them across several commands",
            limits.members_per_command_max
        ),
    ))
}

fn check_group_size(
    conversation_id: &str,
    member_count: usize,
    limits: &Limits,
) -> Result<(), Rejection> {
    if member_count <= limits.group_members_max {
        return Ok(());
    }

    Err(reject(
        RejectionCode::GroupFull,
        format!(
            "group {} would have {member_count} members, above group_members_max {}; \
             remove members first or start another group",
            quote(conversation_id),
            limits.group_members_max
        ),
    ))
}

fn check_group(conversation_id: &str, conversation: &Conversation) -> Result<(), Rejection> {
    if conversation.kind == ConversationKind::Group {
        return Ok(());
    }

    Err(reject(
        RejectionCode::NotAGroup,
        format!(
            "conversation {} is a direct conversation, whose members never change; \
             create a group to change members",
            quote(conversation_id)
        ),
    ))
}

fn conversation_exists(conversation_id: &str) -> Rejection {
    reject(
        RejectionCode::ConversationExists,
        format!(
            "conversation {} already exists with other members or another kind; \
             choose another conversation id",
            quote(conversation_id)
        ),
    )
}

/// Converts a member count for a result. Counts above `u32::MAX` saturate.
fn member_count(conversation: &Conversation) -> u32 {
    u32::try_from(conversation.members.len()).unwrap_or(u32::MAX)
}

fn created(conversation_id: &str, conversation: &Conversation) -> Outcome {
    Outcome::ConversationCreated(ConversationCreated {
        conversation_id: conversation_id.to_owned(),
        member_count: member_count(conversation),
    })
}

fn members_changed(
    conversation_id: &str,
    conversation: &Conversation,
    added: Vec<String>,
    removed: Vec<String>,
) -> Outcome {
    Outcome::MembersChanged(MembersChanged {
        conversation_id: conversation_id.to_owned(),
        added,
        removed,
        member_count: member_count(conversation),
    })
}
