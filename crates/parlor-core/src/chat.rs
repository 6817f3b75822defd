//! The chat service: validates requests with [`crate::rules`] and drives the ports.
//! The server calls only this (and the auth it owns); it never reaches a store directly
//! for chat operations.

use crate::error::{Error, Result};
use crate::model::*;
use crate::ports::{Backlog, BoxFuture, Bus, Presence, RecentCache, Store, RECENT_PAGE};
use crate::{rules, search};
use parlor_proto::rest::{
    Availability, ConversationDetail, ConversationInfo, ConversationSummary, History, MessageView,
    PresenceView, Receipts, Role, SearchResults,
};
use parlor_proto::ws::{ServerFrame, TypingEvent};
use parlor_proto::ErrorCode;
use std::sync::Arc;

/// A typing indicator disappears after this long unless renewed.
pub const TYPING_TTL_MS: u64 = 5_000;
/// Users per presence query.
pub const MAX_PRESENCE_QUERY: usize = 200;
/// Results per search page.
pub const MAX_SEARCH_PAGE: u32 = 50;

/// A message as the sender wrote it, before validation.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    pub cid: Option<String>,
    pub text: String,
    pub reply_to: Option<u64>,
    pub mentions: Vec<UserId>,
    pub mention_all: bool,
    /// Upload ids the message carries.
    pub attachments: Vec<parlor_proto::Id>,
}

/// Search parameters as the caller gave them.
#[derive(Debug, Clone, Default)]
pub struct SearchRequest<'a> {
    pub q: &'a str,
    pub conv: Option<ConvId>,
    pub sender: Option<UserId>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub cursor: Option<&'a str>,
    pub limit: Option<u32>,
}

pub struct Chat {
    store: Arc<dyn Store>,
    presence: Arc<dyn Presence>,
    /// For ephemeral events (typing, presence) that are never stored.
    bus: Arc<dyn Bus>,
    limits: Limits,
    /// Newest history pages shared by the nodes (cluster mode); none in embedded mode,
    /// where the store's own page cache is as fast.
    recent: Option<Arc<dyn RecentCache>>,
}

impl Chat {
    pub fn new(
        store: Arc<dyn Store>,
        presence: Arc<dyn Presence>,
        bus: Arc<dyn Bus>,
        limits: Limits,
    ) -> Self {
        Chat {
            store,
            presence,
            bus,
            limits,
            recent: None,
        }
    }

    pub fn with_recent_cache(mut self, cache: Arc<dyn RecentCache>) -> Self {
        self.recent = Some(cache);
        self
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
        draft: Draft,
    ) -> Result<BoxFuture<Result<Appended>>> {
        if let Some(cid) = &draft.cid {
            rules::client_id(cid)?;
        }
        crate::uploads::attachment_list(&draft.attachments)?;
        if draft.attachments.is_empty() || !draft.text.is_empty() {
            rules::message_text(&draft.text, self.limits.max_text_bytes)?;
        }
        let mut mentions = draft.mentions;
        mentions.sort_unstable();
        mentions.dedup();
        if mentions.len() > rules::MAX_MENTIONS {
            return Err(Error::new(
                ErrorCode::BadRequest,
                format!("at most {} mentions per message", rules::MAX_MENTIONS),
            ));
        }
        let appended = self.store.append_message(NewMessage {
            conv,
            sender,
            cid: draft.cid,
            text: draft.text,
            reply_to: draft.reply_to,
            mentions,
            mention_all: draft.mention_all,
            attachments: draft.attachments,
        });
        let Some(cache) = self.recent.clone() else {
            return Ok(appended);
        };
        // The cached page goes stale before the sender hears of the commit, so a
        // history read after the ack always sees the message.
        Ok(Box::pin(async move {
            let appended = appended.await?;
            if !appended.duplicate {
                cache.bump(conv).await;
            }
            Ok(appended)
        }))
    }

    pub async fn edit(
        &self,
        actor: UserId,
        conv: ConvId,
        seq: u64,
        text: String,
    ) -> Result<MessageView> {
        rules::message_text(&text, self.limits.max_text_bytes)?;
        let view = self.store.edit_message(actor, conv, seq, text).await?;
        if let Some(cache) = &self.recent {
            cache.bump(conv).await;
        }
        Ok(view)
    }

    pub async fn delete(&self, actor: UserId, conv: ConvId, seq: u64) -> Result<()> {
        self.store.delete_message(actor, conv, seq).await?;
        if let Some(cache) = &self.recent {
            cache.bump(conv).await;
        }
        Ok(())
    }

    pub async fn mark_delivered(&self, user: UserId, conv: ConvId, seq: u64) -> Result<u64> {
        self.store.mark_delivered(user, conv, seq).await
    }

    pub async fn receipts(&self, viewer: UserId, conv: ConvId) -> Result<Receipts> {
        self.store.receipts(viewer, conv).await
    }

    /// Tells the other members' connected devices; nothing is stored.
    pub async fn typing(&self, user: UserId, conv: ConvId, typing: bool) -> Result<()> {
        let members = self.store.members(conv).await?;
        if !members.contains(&user) {
            return Err(Error::not_member());
        }
        let recipients: Arc<[UserId]> = members.iter().copied().filter(|m| *m != user).collect();
        self.publish_ephemeral(
            recipients,
            ServerFrame::Typing(TypingEvent {
                conv,
                user,
                typing,
                expires_in_ms: TYPING_TTL_MS,
            }),
        );
        Ok(())
    }

    /// Sends a live-only frame to every connected device of `user`.
    pub fn publish_to_user(&self, user: UserId, frame: ServerFrame) {
        self.publish_ephemeral(Arc::from(vec![user]), frame);
    }

    fn publish_ephemeral(&self, recipients: Arc<[UserId]>, frame: ServerFrame) {
        self.bus.publish(Arc::from(vec![Event {
            pos: 0,
            recipients,
            frame,
        }]));
    }

    /// Presence changes go to everyone who shares a conversation with the user, and to
    /// the user's own devices.
    async fn announce(&self, view: PresenceView) -> Result<()> {
        let mut recipients = self.store.contacts(view.user).await?;
        recipients.push(view.user);
        self.publish_ephemeral(recipients.into(), ServerFrame::Presence(view));
        Ok(())
    }

    pub async fn device_connected(&self, user: UserId) -> Result<()> {
        if let Some(view) = self.presence.connect(user).await? {
            self.announce(view).await?;
        }
        Ok(())
    }

    pub async fn device_disconnected(&self, user: UserId, now_ms: i64) -> Result<()> {
        self.presence.disconnect(user, now_ms).await
    }

    /// Called periodically: users whose grace period ended go offline, with a stored
    /// last-seen time.
    pub async fn expire_presence(&self, now_ms: i64) -> Result<()> {
        for view in self.presence.expire(now_ms).await? {
            if !view.online {
                self.store
                    .set_last_seen(view.user, view.last_seen.unwrap_or(now_ms))
                    .await?;
            }
            self.announce(view).await?;
        }
        Ok(())
    }

    pub async fn set_status(
        &self,
        user: UserId,
        status: Availability,
        text: Option<String>,
    ) -> Result<PresenceView> {
        let view = self.presence.set_status(user, status, text).await?;
        self.announce(view.clone()).await?;
        Ok(view)
    }

    /// The nodes holding connections of `user` (the connection registry).
    pub async fn presence_nodes(&self, user: UserId) -> Result<Vec<String>> {
        self.presence.nodes(user).await
    }

    pub async fn presence(&self, users: &[UserId]) -> Result<Vec<PresenceView>> {
        if users.is_empty() || users.len() > MAX_PRESENCE_QUERY {
            return Err(Error::new(
                ErrorCode::BadRequest,
                format!("ask for 1 to {MAX_PRESENCE_QUERY} users"),
            ));
        }
        let mut out = Vec::with_capacity(users.len());
        for &user in users {
            let mut view = self.presence.get(user).await?;
            if !view.online && view.last_seen.is_none() {
                view.last_seen = self.store.last_seen(user).await?;
            }
            out.push(view);
        }
        Ok(out)
    }

    pub async fn search(
        &self,
        viewer: UserId,
        request: SearchRequest<'_>,
    ) -> Result<SearchResults> {
        let query = search::parse_query(request.q)?;
        let limit = rules::page_limit(request.limit, MAX_SEARCH_PAGE)?;
        let offset = match request.cursor {
            None => 0,
            Some(cursor) => cursor
                .parse::<u32>()
                .map_err(|_| Error::new(ErrorCode::InvalidPagination, "invalid search cursor"))?,
        };
        if let (Some(from), Some(to)) = (request.from, request.to) {
            if from > to {
                return Err(Error::new(ErrorCode::InvalidPagination, "from is after to"));
            }
        }
        self.store
            .search(
                viewer,
                SearchQuery {
                    query,
                    conv: request.conv,
                    sender: request.sender,
                    from: request.from,
                    to: request.to,
                    offset,
                    limit: limit.min(self.limits.search_candidates),
                },
            )
            .await
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
            .change_membership(
                MembershipCommand::Add { actor, conv, user },
                self.limits.member_limit,
            )
            .await
    }

    pub async fn remove_member(&self, actor: UserId, conv: ConvId, user: UserId) -> Result<()> {
        let command = if actor == user {
            MembershipCommand::Leave { conv, user }
        } else {
            MembershipCommand::Remove { actor, conv, user }
        };
        self.store
            .change_membership(command, self.limits.member_limit)
            .await
    }

    pub async fn leave(&self, user: UserId, conv: ConvId) -> Result<()> {
        self.store
            .change_membership(
                MembershipCommand::Leave { conv, user },
                self.limits.member_limit,
            )
            .await
    }

    pub async fn set_role(
        &self,
        actor: UserId,
        conv: ConvId,
        user: UserId,
        role: Role,
    ) -> Result<()> {
        self.store
            .change_membership(
                MembershipCommand::SetRole {
                    actor,
                    conv,
                    user,
                    role,
                },
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
        match (page, &self.recent) {
            (Page::Latest { limit }, Some(cache)) if limit <= RECENT_PAGE => {
                self.recent_history(cache, viewer, conv, limit).await
            }
            _ => self.store.history(viewer, conv, page).await,
        }
    }

    /// The newest page through the shared cache, for current members; anyone else (a
    /// former member sees history up to when they left) asks the store.
    async fn recent_history(
        &self,
        cache: &Arc<dyn RecentCache>,
        viewer: UserId,
        conv: ConvId,
        limit: u32,
    ) -> Result<History> {
        if !self.store.members(conv).await?.contains(&viewer) {
            return self
                .store
                .history(viewer, conv, Page::Latest { limit })
                .await;
        }
        let full = match cache.get(conv).await {
            Some(page) => page,
            None => {
                let version = cache.version(conv).await;
                let page = self
                    .store
                    .history(viewer, conv, Page::Latest { limit: RECENT_PAGE })
                    .await?;
                if let Some(version) = version {
                    cache.put(conv, version, &page).await;
                }
                page
            }
        };
        let skip = full.messages.len().saturating_sub(limit as usize);
        Ok(History {
            has_more: full.has_more || skip > 0,
            messages: full.messages[skip..].to_vec(),
        })
    }

    pub async fn mark_read(&self, viewer: UserId, conv: ConvId, seq: u64) -> Result<u64> {
        self.store.mark_read(viewer, conv, seq).await
    }

    /// The events the user missed after `since`, in pages.
    pub async fn backlog(&self, user: UserId, since: u64) -> Result<Backlog> {
        self.store.backlog(user, since, self.limits.sync_page).await
    }
}
