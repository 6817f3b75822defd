//! The notifier: turns committed messages into feed items and queued pushes, by the
//! rules of [`crate::notify`]. It runs off the send path, fed by a durable
//! [`crate::ports::WorkQueue`]; the server owns the loop, the sending and the metrics.
//!
//! Handling one message is idempotent (the store dedupes feed items per user and
//! message and pushes per message and target), which is what lets the queue redeliver
//! after a crash without a second push.

use crate::error::Result;
use crate::model::{ConvId, Event, Page, UserId};
use crate::notify::{
    dnd_active, preview, should_push, Decisions, NewFeedItem, NewPush, PushContent, PushReason,
    RecipientFacts, Relation,
};
use crate::ports::{Bus, NotificationStore, Presence, Store};
use parlor_proto::notify::NotificationKind;
use parlor_proto::rest::{Availability, ConversationKind, MessageView};
use parlor_proto::ws::ServerFrame;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Entries kept in each lookup cache before it starts over.
const CACHE_LIMIT: usize = 10_000;

/// Answers "does this node hold a connection of this user?" without a round trip; a
/// user connected here is online, whatever the shared presence says.
pub type LocalPresence = Arc<dyn Fn(UserId) -> bool + Send + Sync>;

#[derive(Debug, Clone)]
pub struct NotifierOptions {
    /// Put the message text in pushes; without it a push says only who wrote.
    pub include_content: bool,
    /// Messages older than this get no push (a node catching up after a long outage
    /// must not ring every phone about yesterday); their feed items are still recorded.
    pub max_push_age_ms: i64,
}

pub struct Notifier {
    store: Arc<dyn Store>,
    notifications: Arc<dyn NotificationStore>,
    presence: Arc<dyn Presence>,
    bus: Arc<dyn Bus>,
    local: LocalPresence,
    options: NotifierOptions,
    conversations: Mutex<HashMap<ConvId, (ConversationKind, Option<String>)>>,
    names: Mutex<HashMap<UserId, String>>,
}

/// What handling a batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Handled {
    pub feed_items: usize,
    /// Users a push was queued for (one per user, fanned out to their targets).
    pub pushes: usize,
}

impl Notifier {
    pub fn new(
        store: Arc<dyn Store>,
        notifications: Arc<dyn NotificationStore>,
        presence: Arc<dyn Presence>,
        bus: Arc<dyn Bus>,
        local: LocalPresence,
        options: NotifierOptions,
    ) -> Self {
        Notifier {
            store,
            notifications,
            presence,
            bus,
            local,
            options,
            conversations: Mutex::new(HashMap::new()),
            names: Mutex::new(HashMap::new()),
        }
    }

    /// Handles every new message among `events`; other events are ignored (edits and
    /// deletes notify nobody).
    pub async fn handle(&self, events: &[Event], now_ms: i64) -> Result<Handled> {
        let mut handled = Handled::default();
        for event in events {
            if let ServerFrame::Message(m) = &event.frame {
                if m.message.deleted {
                    continue;
                }
                let h = self.message(&m.message, &event.recipients, now_ms).await?;
                handled.feed_items += h.feed_items;
                handled.pushes += h.pushes;
            }
        }
        Ok(handled)
    }

    async fn message(
        &self,
        message: &MessageView,
        recipients: &[UserId],
        now_ms: i64,
    ) -> Result<Handled> {
        let members: Arc<[UserId]> = if recipients.is_empty() {
            match self.store.members(message.conv).await {
                Ok(m) => m,
                // The conversation is gone: nobody to notify.
                Err(e) if e.code == parlor_proto::ErrorCode::NotFound => {
                    return Ok(Handled::default())
                }
                Err(e) => return Err(e),
            }
        } else {
            recipients.into()
        };
        let others: Vec<UserId> = members
            .iter()
            .copied()
            .filter(|u| *u != message.sender)
            .collect();
        if others.is_empty() {
            return Ok(Handled::default());
        }
        let (kind, title) = self.conversation(message.sender, message.conv).await?;
        let group = kind == ConversationKind::Group;
        let replied_sender = match message.reply_to {
            Some(seq) => self.sender_of(message.sender, message.conv, seq).await?,
            None => None,
        };

        let mut offline = Vec::new();
        let mut presence_dnd = Vec::new();
        for &user in &others {
            if (self.local)(user) {
                continue;
            }
            let view = self.presence.get(user).await?;
            if !view.online {
                offline.push(user);
                presence_dnd.push(view.status == Availability::DoNotDisturb);
            }
        }
        let settings = if offline.is_empty() {
            Vec::new()
        } else {
            self.notifications.settings(message.conv, &offline).await?
        };

        let mut decisions = Decisions::default();
        // Only a feed item or a push needs it, and most messages (to online members,
        // neither a mention nor a reply) get neither.
        let mut text: Option<String> = None;
        for &user in &others {
            let relation = Relation::of(message, user, group, replied_sender);
            if let Some(kind) = relation.feed_kind() {
                decisions.feed.push(NewFeedItem {
                    id: message.id,
                    user,
                    kind,
                    conv: message.conv,
                    seq: message.seq,
                    message: message.id,
                    sender: message.sender,
                    preview: text.get_or_insert_with(|| preview(message)).clone(),
                    ts: message.ts,
                });
            }
            if now_ms - message.ts > self.options.max_push_age_ms {
                continue;
            }
            let Some(i) = offline.iter().position(|u| *u == user) else {
                continue;
            };
            let (mute, dnd) = settings.get(i).copied().unwrap_or((None, None));
            let facts = RecipientFacts {
                online: false,
                dnd: dnd_active(dnd, now_ms) || presence_dnd.get(i).copied().unwrap_or(false),
                mute,
            };
            if !should_push(&facts, &relation, now_ms) {
                continue;
            }
            let reason = match relation.feed_kind() {
                Some(NotificationKind::Mention) => PushReason::Mention,
                Some(NotificationKind::Reply) => PushReason::Reply,
                None => PushReason::Message,
            };
            decisions.pushes.push(NewPush {
                user,
                content: PushContent {
                    conv: message.conv,
                    seq: message.seq,
                    message: message.id,
                    sender: message.sender,
                    reason,
                    title: String::new(),
                    body: String::new(),
                    ts: message.ts,
                },
            });
        }
        if decisions.feed.is_empty() && decisions.pushes.is_empty() {
            return Ok(Handled::default());
        }
        if !decisions.pushes.is_empty() {
            let name = self.name(message.sender).await?;
            let heading = match (&title, group) {
                (Some(t), true) => format!("{name} in {t}"),
                _ => name,
            };
            let body = if self.options.include_content {
                text.get_or_insert_with(|| preview(message)).clone()
            } else {
                "New message".to_owned()
            };
            for p in &mut decisions.pushes {
                p.content.title = heading.clone();
                p.content.body = body.clone();
            }
        }
        let handled = Handled {
            feed_items: decisions.feed.len(),
            pushes: decisions.pushes.len(),
        };
        let added = self.notifications.record(decisions, now_ms).await?;
        for item in added {
            self.bus.publish(Arc::from(vec![Event {
                pos: 0,
                recipients: Arc::from(vec![item.user]),
                frame: ServerFrame::Notification(item.view()),
            }]));
        }
        Ok(handled)
    }

    async fn conversation(
        &self,
        viewer: UserId,
        conv: ConvId,
    ) -> Result<(ConversationKind, Option<String>)> {
        if let Some(hit) = self
            .conversations
            .lock()
            .ok()
            .and_then(|c| c.get(&conv).cloned())
        {
            return Ok(hit);
        }
        let detail = self.store.conversation(viewer, conv).await?;
        let value = (detail.info.kind, detail.info.name);
        if let Ok(mut cache) = self.conversations.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(conv, value.clone());
        }
        Ok(value)
    }

    async fn name(&self, user: UserId) -> Result<String> {
        if let Some(hit) = self.names.lock().ok().and_then(|c| c.get(&user).cloned()) {
            return Ok(hit);
        }
        let name = self
            .store
            .user(user)
            .await?
            .map(|u| u.username)
            .unwrap_or_else(|| "Someone".to_owned());
        if let Ok(mut cache) = self.names.lock() {
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(user, name.clone());
        }
        Ok(name)
    }

    /// Who wrote message `seq` of `conv` (read as `viewer`, a member).
    async fn sender_of(&self, viewer: UserId, conv: ConvId, seq: u64) -> Result<Option<UserId>> {
        let page = self
            .store
            .history(
                viewer,
                conv,
                Page::After {
                    after: seq.saturating_sub(1),
                    limit: 1,
                },
            )
            .await?;
        Ok(page
            .messages
            .first()
            .filter(|m| m.seq == seq && !m.deleted)
            .map(|m| m.sender))
    }
}
