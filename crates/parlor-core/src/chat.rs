//! The chat service: validates requests with [`crate::rules`] and drives the ports.
//! The server calls only this (and the auth it owns); it never reaches a store directly
//! for chat operations.

use crate::error::{Error, Result};
use crate::model::*;
use crate::ports::{Backlog, BoxFuture, Store};
use crate::rules;
use parlor_proto::rest::{ConversationDetail, ConversationInfo, ConversationSummary, History, Role};
use parlor_proto::ErrorCode;
use std::sync::Arc;

pub struct Chat {
    store: Arc<dyn Store>,
    limits: Limits,
}

impl Chat {
    pub fn new(store: Arc<dyn Store>, limits: Limits) -> Self {
        Chat { store, limits }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Validates a send and hands it to the store at once, so that sends submitted one
    /// after another keep their order; the returned future resolves after the commit.
    pub fn send(
        &self,
        sender: UserId,
        conv: ConvId,
        cid: Option<String>,
        text: String,
    ) -> Result<BoxFuture<Result<Appended>>> {
        if let Some(cid) = &cid {
            rules::client_id(cid)?;
        }
        rules::message_text(&text, self.limits.max_text_bytes)?;
        Ok(self.store.append_message(NewMessage {
            conv,
            sender,
            cid,
            text,
        }))
    }

    pub async fn open_direct(&self, me: UserId, other: UserId) -> Result<(ConversationInfo, bool)> {
        if me == other {
            return Err(Error::new(
                ErrorCode::Conflict,
                "a direct conversation needs two different people",
            ));
        }
        self.store.open_direct(me, other).await
    }

    pub async fn create_group(
        &self,
        owner: UserId,
        name: &str,
        members: &[UserId],
    ) -> Result<ConversationInfo> {
        let name = rules::group_name(name)?;
        let mut others: Vec<UserId> = members.iter().copied().filter(|m| *m != owner).collect();
        others.sort_unstable();
        others.dedup();
        let count = u32::try_from(others.len()).unwrap_or(u32::MAX);
        rules::membership::within_limit(1, count, self.limits.member_limit)?;
        self.store
            .create_group(owner, &name, &others, self.limits.member_limit)
            .await
    }

    pub async fn add_member(&self, actor: UserId, conv: ConvId, user: UserId) -> Result<()> {
        self.store
            .change_membership(MembershipCommand::Add { actor, conv, user }, self.limits.member_limit)
            .await
    }

    pub async fn remove_member(&self, actor: UserId, conv: ConvId, user: UserId) -> Result<()> {
        let command = if actor == user {
            MembershipCommand::Leave { conv, user }
        } else {
            MembershipCommand::Remove { actor, conv, user }
        };
        self.store.change_membership(command, self.limits.member_limit).await
    }

    pub async fn leave(&self, user: UserId, conv: ConvId) -> Result<()> {
        self.store
            .change_membership(MembershipCommand::Leave { conv, user }, self.limits.member_limit)
            .await
    }

    pub async fn set_role(&self, actor: UserId, conv: ConvId, user: UserId, role: Role) -> Result<()> {
        self.store
            .change_membership(
                MembershipCommand::SetRole { actor, conv, user, role },
                self.limits.member_limit,
            )
            .await
    }

    pub async fn conversation(&self, viewer: UserId, conv: ConvId) -> Result<ConversationDetail> {
        self.store.conversation(viewer, conv).await
    }

    pub async fn conversations(&self, viewer: UserId) -> Result<Vec<ConversationSummary>> {
        self.store.conversations(viewer).await
    }

    /// `before` and `after` are exclusive sequence bounds; at most one may be given.
    pub async fn history(
        &self,
        viewer: UserId,
        conv: ConvId,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<History> {
        let limit = rules::page_limit(limit, self.limits.history_max_page)?;
        let page = match (before, after) {
            (None, None) => Page::Latest { limit },
            (Some(before), None) => Page::Before { before, limit },
            (None, Some(after)) => Page::After { after, limit },
            (Some(_), Some(_)) => {
                return Err(Error::new(
                    ErrorCode::InvalidPagination,
                    "give either before or after, not both",
                ))
            }
        };
        self.store.history(viewer, conv, page).await
    }

    pub async fn mark_read(&self, viewer: UserId, conv: ConvId, seq: u64) -> Result<u64> {
        self.store.mark_read(viewer, conv, seq).await
    }

    /// The events the user missed after `since`, in pages.
    pub async fn backlog(&self, user: UserId, since: u64) -> Result<Backlog> {
        self.store.backlog(user, since, self.limits.sync_page).await
    }
}
