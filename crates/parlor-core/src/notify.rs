//! Who is notified of a message, and how: the rules of push and of the in-app feed, as
//! pure functions over facts the notifier gathers (presence, settings), plus the values
//! that cross the notification ports.
//!
//! The rules, in order:
//! 1. The sender is never notified of their own message.
//! 2. A mention of the user (or `@all` in a group) and a reply to one of the user's
//!    messages become a feed item, whatever else holds: the feed is the record.
//! 3. A user connected on any device gets no push (their devices show the message and
//!    the feed item live).
//! 4. Do-not-disturb (stored, or the presence status) stops every push.
//! 5. A muted conversation pushes only mentions, and not those either when mentions are
//!    muted too. An expired mute is no mute.
//! 6. Otherwise every new message pushes, direct or group.

use crate::model::{ConvId, UserId};
use parlor_proto::notify::{NotificationKind, PushKind};
use parlor_proto::rest::MessageView;
use parlor_proto::Id;
use serde::{Deserialize, Serialize};

/// Longest preview (feed items and push bodies), in characters.
pub const PREVIEW_CHARS: usize = 200;
/// Most push targets one user may register; registering more replaces nothing and is
/// refused, so a buggy client cannot grow the fan-out without bound.
pub const MAX_TARGETS_PER_USER: usize = 20;
/// Longest endpoint, token or URL accepted for a push target, in bytes.
pub const MAX_ADDRESS_LEN: usize = 2048;

/// A per-conversation mute. `until == None` means until unmuted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mute {
    pub until: Option<i64>,
    pub mentions: bool,
}

impl Mute {
    pub fn active(&self, now_ms: i64) -> bool {
        self.until.is_none_or(|t| t > now_ms)
    }
}

/// Whether a stored do-not-disturb (`Some(until)`, `None` inside meaning forever) is on.
pub fn dnd_active(dnd: Option<Option<i64>>, now_ms: i64) -> bool {
    matches!(dnd, Some(until) if until.is_none_or(|t| t > now_ms))
}

/// One recipient's stored settings for one conversation: their mute of it, and their
/// do-not-disturb (`Some(until)`, see [`dnd_active`]).
pub type RecipientSettings = (Option<Mute>, Option<Option<i64>>);

/// What the notifier knows about one recipient when it decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecipientFacts {
    /// Connected on any device (presence, with its grace period).
    pub online: bool,
    /// Stored do-not-disturb on, or presence status `do_not_disturb`.
    pub dnd: bool,
    pub mute: Option<Mute>,
}

/// How a recipient relates to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relation {
    pub mentioned: bool,
    /// The message replies to one of the recipient's messages.
    pub replied_to: bool,
}

impl Relation {
    pub fn of(
        message: &MessageView,
        user: UserId,
        group: bool,
        replied_sender: Option<UserId>,
    ) -> Self {
        Relation {
            mentioned: message.mentions.contains(&user) || (group && message.mention_all),
            replied_to: replied_sender == Some(user),
        }
    }

    /// The feed item the message makes for this recipient (rule 2): a mention wins over
    /// a reply, so one message never makes two items for one user.
    pub fn feed_kind(&self) -> Option<NotificationKind> {
        if self.mentioned {
            Some(NotificationKind::Mention)
        } else if self.replied_to {
            Some(NotificationKind::Reply)
        } else {
            None
        }
    }
}

/// Rules 3 to 6: whether the recipient gets a push. The sender is excluded by the caller.
pub fn should_push(facts: &RecipientFacts, relation: &Relation, now_ms: i64) -> bool {
    if facts.online || facts.dnd {
        return false;
    }
    match facts.mute {
        Some(m) if m.active(now_ms) => relation.mentioned && !m.mentions,
        _ => true,
    }
}

/// The start of a message's text for a preview, or its first attachment's name.
pub fn preview(message: &MessageView) -> String {
    let text = message.text.trim();
    if text.is_empty() {
        if let Some(a) = message.attachments.first() {
            return format!("📎 {}", a.name)
                .chars()
                .take(PREVIEW_CHARS)
                .collect();
        }
    }
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(PREVIEW_CHARS)
        .collect();
    if text.chars().nth(PREVIEW_CHARS).is_some() {
        out.pop();
        out.push('…');
    }
    out
}

/// Pushes of one conversation replace each other on a device (collapse key, topic).
pub fn collapse_key(conv: ConvId) -> String {
    format!("c{}", conv.0)
}

/// Where a push goes. Secrets (webhook keys) live here and never in a view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TargetAddress {
    /// `p256dh` and `auth` are base64url, as the browser gave them.
    WebPush {
        endpoint: String,
        p256dh: String,
        auth: String,
    },
    Fcm {
        token: String,
    },
    Apns {
        token: String,
    },
    Webhook {
        url: String,
        secret: String,
    },
}

impl TargetAddress {
    pub fn kind(&self) -> PushKind {
        match self {
            TargetAddress::WebPush { .. } => PushKind::WebPush,
            TargetAddress::Fcm { .. } => PushKind::Fcm,
            TargetAddress::Apns { .. } => PushKind::Apns,
            TargetAddress::Webhook { .. } => PushKind::Webhook,
        }
    }

    /// What identifies the target at its provider: one registration per address.
    pub fn address(&self) -> &str {
        match self {
            TargetAddress::WebPush { endpoint, .. } => endpoint,
            TargetAddress::Fcm { token } | TargetAddress::Apns { token } => token,
            TargetAddress::Webhook { url, .. } => url,
        }
    }

    /// The address as a listing shows it: tokens only by their end.
    pub fn shown(&self) -> String {
        match self {
            TargetAddress::Fcm { token } | TargetAddress::Apns { token } => {
                let tail: String = token
                    .chars()
                    .rev()
                    .take(8)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                format!("…{tail}")
            }
            other => other.address().to_string(),
        }
    }
}

/// A registered push target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    pub id: Id,
    pub user: UserId,
    pub address: TargetAddress,
    pub created_at: i64,
}

impl PushTarget {
    pub fn view(&self, with_secret: bool) -> parlor_proto::notify::PushTargetView {
        parlor_proto::notify::PushTargetView {
            id: self.id,
            kind: self.address.kind(),
            address: self.address.shown(),
            created_at: self.created_at,
            secret: match &self.address {
                TargetAddress::Webhook { secret, .. } if with_secret => Some(secret.clone()),
                _ => None,
            },
        }
    }
}

/// Why a push is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushReason {
    Message,
    Mention,
    Reply,
}

/// What a push says: the same for every target of one user and one message. Stored
/// with each queued push, so a retry after a restart sends exactly the same content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushContent {
    pub conv: ConvId,
    pub seq: u64,
    pub message: Id,
    pub sender: UserId,
    pub reason: PushReason,
    /// The sender's name, and for a group " in <title>".
    pub title: String,
    pub body: String,
    /// When the message was committed (milliseconds since the Unix epoch).
    pub ts: i64,
}

/// A push decided for one user; the store turns it into one queued push per target the
/// user has when it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPush {
    pub user: UserId,
    pub content: PushContent,
}

/// A feed item to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFeedItem {
    pub id: Id,
    pub user: UserId,
    pub kind: NotificationKind,
    pub conv: ConvId,
    pub seq: u64,
    pub message: Id,
    pub sender: UserId,
    pub preview: String,
    pub ts: i64,
}

impl NewFeedItem {
    pub fn view(&self) -> parlor_proto::notify::NotificationView {
        parlor_proto::notify::NotificationView {
            id: self.id,
            kind: self.kind,
            conv: self.conv,
            seq: self.seq,
            message: self.message,
            sender: self.sender,
            preview: self.preview.clone(),
            ts: self.ts,
            read: false,
        }
    }
}

/// Everything one message's decision records, atomically and idempotently: recording
/// the same message again (a redelivery after a crash) adds nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decisions {
    pub feed: Vec<NewFeedItem>,
    pub pushes: Vec<NewPush>,
}

/// A queued push, claimed for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushJob {
    /// Also the idempotency key sent to providers that take one (APNs `apns-id`,
    /// webhook delivery id): a resend after a crash carries the same key.
    pub id: Id,
    pub target: PushTarget,
    pub content: PushContent,
    /// Sends tried before this one.
    pub attempts: u32,
}

/// One push as a provider sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushMessage {
    pub id: Id,
    pub content: PushContent,
    /// Unread messages over the user's conversations (from the read markers).
    pub badge: u64,
    pub collapse_key: String,
    /// How long the provider may hold the push for an unreachable device.
    pub ttl_secs: u32,
}

/// What a provider made of one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Accepted by the provider.
    Sent,
    /// The provider says the target no longer exists (404/410, `Unregistered`, …): remove it.
    Gone,
    /// A transient failure (timeout, 429, 5xx): try again, no sooner than `after` if given.
    Retry {
        after: Option<std::time::Duration>,
        reason: String,
    },
    /// A permanent failure for this push (bad request, auth refused): do not retry.
    Failed { reason: String },
}

/// How a claimed push ended, for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushDone {
    Sent,
    /// Try again at this time (milliseconds since the Unix epoch).
    RetryAt(i64),
    /// Given up (permanent failure or too many attempts).
    Dropped,
}

/// Backoff before retry `attempt` (1-based): 1 s, 2 s, 4 s … capped at 5 minutes.
pub fn retry_delay_ms(attempt: u32) -> i64 {
    let exp = attempt.saturating_sub(1).min(9);
    (1_000i64 << exp).min(300_000)
}

/// Attempts after which a push is dropped.
pub const MAX_PUSH_ATTEMPTS: u32 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str, mentions: Vec<Id>, all: bool) -> MessageView {
        MessageView {
            conv: Id(1),
            id: Id(10),
            seq: 1,
            sender: Id(2),
            text: text.into(),
            ts: 0,
            cid: None,
            reply_to: None,
            mentions,
            mention_all: all,
            edited_at: None,
            deleted: false,
            attachments: vec![],
        }
    }

    const OFFLINE: RecipientFacts = RecipientFacts {
        online: false,
        dnd: false,
        mute: None,
    };

    #[test]
    fn online_users_get_no_push_and_offline_ones_do() {
        let r = Relation::of(&msg("hi", vec![], false), Id(3), false, None);
        assert!(should_push(&OFFLINE, &r, 0));
        assert!(!should_push(
            &RecipientFacts {
                online: true,
                ..OFFLINE
            },
            &r,
            0
        ));
        assert_eq!(r.feed_kind(), None);
    }

    #[test]
    fn dnd_stops_everything_even_mentions() {
        let r = Relation::of(&msg("hi", vec![Id(3)], false), Id(3), true, None);
        assert!(!should_push(
            &RecipientFacts {
                dnd: true,
                ..OFFLINE
            },
            &r,
            0
        ));
        assert_eq!(r.feed_kind(), Some(NotificationKind::Mention));
    }

    #[test]
    fn mute_lets_mentions_through_unless_they_are_muted_too() {
        let plain = Relation::of(&msg("hi", vec![], false), Id(3), true, None);
        let all = Relation::of(&msg("hi", vec![], true), Id(3), true, None);
        let muted = RecipientFacts {
            mute: Some(Mute {
                until: None,
                mentions: false,
            }),
            ..OFFLINE
        };
        let fully = RecipientFacts {
            mute: Some(Mute {
                until: None,
                mentions: true,
            }),
            ..OFFLINE
        };
        assert!(!should_push(&muted, &plain, 0));
        assert!(should_push(&muted, &all, 0));
        assert!(!should_push(&fully, &all, 0));
    }

    #[test]
    fn an_expired_mute_is_no_mute() {
        let plain = Relation::of(&msg("hi", vec![], false), Id(3), true, None);
        let facts = RecipientFacts {
            mute: Some(Mute {
                until: Some(1_000),
                mentions: true,
            }),
            ..OFFLINE
        };
        assert!(!should_push(&facts, &plain, 999));
        assert!(should_push(&facts, &plain, 1_000));
        assert!(dnd_active(Some(None), 5));
        assert!(!dnd_active(Some(Some(5)), 5));
        assert!(!dnd_active(None, 5));
    }

    #[test]
    fn mention_all_counts_only_in_groups_and_beats_reply() {
        let m = msg("hi", vec![], true);
        assert!(!Relation::of(&m, Id(3), false, None).mentioned);
        let r = Relation::of(&msg("hi", vec![Id(3)], false), Id(3), true, Some(Id(3)));
        assert_eq!(r.feed_kind(), Some(NotificationKind::Mention));
        let r = Relation::of(&msg("hi", vec![], false), Id(3), true, Some(Id(3)));
        assert_eq!(r.feed_kind(), Some(NotificationKind::Reply));
    }

    #[test]
    fn previews_are_bounded_and_plain() {
        let long = "é".repeat(500);
        let p = preview(&msg(&long, vec![], false));
        assert_eq!(p.chars().count(), PREVIEW_CHARS);
        assert!(p.ends_with('…'));
        assert_eq!(preview(&msg("a\nb", vec![], false)), "a b");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(retry_delay_ms(1), 1_000);
        assert_eq!(retry_delay_ms(2), 2_000);
        assert_eq!(retry_delay_ms(50), 300_000);
    }
}
