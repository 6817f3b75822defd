//! Notifications: push targets (Web Push, FCM, APNs, webhooks), the in-app feed of
//! mentions and replies, and the settings that decide who is notified (per-conversation
//! mute, do-not-disturb).

use crate::ids::Id;
use serde::{Deserialize, Serialize};

/// The push providers a target can belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushKind {
    /// RFC 8030 push service, payload encrypted per RFC 8291, VAPID per RFC 8292.
    WebPush,
    /// Firebase Cloud Messaging (HTTP v1 API).
    Fcm,
    /// Apple Push Notification service (token-based, HTTP/2).
    Apns,
    /// An HTTP POST signed with HMAC-SHA256, for integrations.
    Webhook,
}

impl PushKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PushKind::WebPush => "web_push",
            PushKind::Fcm => "fcm",
            PushKind::Apns => "apns",
            PushKind::Webhook => "webhook",
        }
    }
}

/// A browser's `PushSubscription` keys, base64url as `PushSubscription.toJSON()` gives them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebPushKeys {
    /// The subscription's P-256 public key (65 bytes, uncompressed point).
    pub p256dh: String,
    /// The 16-byte authentication secret.
    pub auth: String,
}

/// `POST /v1/push/targets`: register this device (or an integration) for pushes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NewPushTarget {
    WebPush {
        endpoint: String,
        keys: WebPushKeys,
    },
    Fcm {
        token: String,
    },
    /// `token` is the device token in hex.
    Apns {
        token: String,
    },
    /// Parlor generates the signing secret and returns it once, in the response.
    Webhook {
        url: String,
    },
}

/// A registered push target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushTargetView {
    pub id: Id,
    pub kind: PushKind,
    /// The endpoint, token or URL (a token is shown only by its last 8 characters).
    pub address: String,
    pub created_at: i64,
    /// Webhooks only, and only in the response that created the target: the key of the
    /// `X-Parlor-Signature` HMAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushTargetList {
    pub targets: Vec<PushTargetView>,
}

/// `GET /v1/push/vapid`: the application server key a browser passes to
/// `pushManager.subscribe({applicationServerKey})`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VapidKey {
    /// The uncompressed P-256 public key, base64url without padding.
    pub public_key: String,
}

/// Why a feed item exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// The user (or `@all`) was mentioned.
    Mention,
    /// Someone replied to the user's message.
    Reply,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotificationKind::Mention => "mention",
            NotificationKind::Reply => "reply",
        }
    }
}

/// One in-app notification (feed item).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationView {
    /// Time-ordered: a newer notification has a larger id.
    pub id: Id,
    pub kind: NotificationKind,
    pub conv: Id,
    pub seq: u64,
    /// The message's id.
    pub message: Id,
    pub sender: Id,
    /// The start of the message text (at most 200 characters).
    pub preview: String,
    /// When the message was sent.
    pub ts: i64,
    pub read: bool,
}

/// `GET /v1/notifications?before=&limit=`: newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationPage {
    pub notifications: Vec<NotificationView>,
    /// Unread notifications in the whole feed.
    pub unread: u64,
    /// Pass as `before` for the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<Id>,
}

/// `POST /v1/notifications/read`: mark `ids`, and with `up_to` every notification with
/// an id up to it, as read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkNotificationsRead {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<Id>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to: Option<Id>,
}

/// The answer to [`MarkNotificationsRead`], and the `notifications_read` frame every
/// device of the user receives, so that read state follows across devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationsRead {
    /// The notifications that this call turned from unread to read.
    pub ids: Vec<Id>,
    pub unread: u64,
}

/// `GET|PUT /v1/conversations/{id}/notifications`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationNotifications {
    /// No pushes for ordinary messages of this conversation.
    pub muted: bool,
    /// Milliseconds since the Unix epoch when the mute ends; absent: until unmuted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// Mentions of the user (and `@all`) are muted too. Without it a mention notifies
    /// even in a muted conversation.
    #[serde(default)]
    pub mute_mentions: bool,
}

/// `GET|PUT /v1/notifications/preferences`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationPreferences {
    /// No pushes at all while set (the in-app feed still records mentions and replies).
    /// A presence status of `do_not_disturb` has the same effect while it lasts.
    pub do_not_disturb: bool,
    /// When do-not-disturb ends; absent: until turned off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
}
