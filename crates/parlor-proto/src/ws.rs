//! WebSocket frames. Every frame is one JSON object in a text frame, tagged by `"type"`.
//!
//! A connection starts with the client's [`ClientFrame::Hello`]. The server answers with the
//! events missed since `since` (the same frames as live events, in position order), then
//! [`ServerFrame::Synced`], then live events as they happen.

use crate::error::ErrorCode;
use crate::ids::Id;
use crate::rest::{ConversationInfo, MessageView};
use serde::{Deserialize, Serialize};

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Must be the first frame. `token` may be omitted when the upgrade request carried
    /// `Authorization: Bearer <token>`. `since` is the sync position the client last saw
    /// (the `pos` of its newest event); omit it for "only live events from now on".
    Hello {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Id>,
    },
    /// Send a text message. `cid` is the client message id: a retry with the same `cid`
    /// returns the original acknowledgement and never creates a second message.
    Send {
        cid: String,
        conv: Id,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<u64>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        mentions: Vec<Id>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        mention_all: bool,
        /// Upload ids (ready, uploaded by the sender).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<Id>,
    },
    /// Mark a conversation read up to `seq` (never moves backwards).
    Read { conv: Id, seq: u64 },
    /// This device has received the conversation up to `seq`.
    Delivered { conv: Id, seq: u64 },
    /// Replace the text of one's own message.
    Edit {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
        conv: Id,
        seq: u64,
        text: String,
    },
    /// Delete one's own message (owners and admins: any message of their group).
    Delete {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
        conv: Id,
        seq: u64,
    },
    /// Started (`true`) or stopped (`false`) typing in a conversation. Expires by itself.
    Typing { conv: Id, typing: bool },
    /// Set one's availability and status text.
    Status {
        status: crate::rest::Availability,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// A message committed in a conversation the user belongs to (live or from sync).
    Message(MessageEvent),
    /// A membership change in a conversation the user belongs to or just left.
    Member(MemberEvent),
    /// A member's read marker moved (the user's own, from any device, or another member's).
    Read(ReadEvent),
    /// A message's text was replaced.
    Edited(EditedEvent),
    /// A message was deleted; its sequence number stays as a tombstone.
    Deleted(DeletedEvent),
    /// A member's device received the conversation up to `seq` (live only).
    Delivered(DeliveredEvent),
    /// Someone in a shared conversation is typing (live only, never stored).
    Typing(TypingEvent),
    /// Someone one shares a conversation with came online, went offline or changed status.
    Presence(crate::rest::PresenceView),
    /// A new in-app notification (a mention of the user or a reply to them), live to
    /// every connected device of the user. Missed ones are in `GET /v1/notifications`.
    Notification(crate::notify::NotificationView),
    /// Notifications were marked read (on any device of the user).
    NotificationsRead(crate::notify::NotificationsRead),
    /// Everything missed since `hello.since` has been sent; live events follow.
    /// `pos` is the position to present next time if no newer event arrives.
    Synced { pos: Id },
    /// A send was committed. Sent only after the message is durably stored.
    Ack(Ack),
    /// A request failed. `cid` names the send it answers, when there is one.
    Error(ErrorFrame),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEvent {
    pub pos: Id,
    #[serde(flatten)]
    pub message: MessageView,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberChange {
    /// Joined at creation or added by an owner or admin.
    Added,
    /// Removed by an owner or admin.
    Removed,
    /// Left by themselves.
    Left,
    /// Role changed (see `role`).
    Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEvent {
    pub pos: Id,
    pub conv: Id,
    pub user: Id,
    pub change: MemberChange,
    /// Who made the change.
    pub by: Id,
    pub ts: i64,
    /// The member's role after the change (absent when they are no longer a member).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<crate::rest::Role>,
    /// The conversation, so that a client that was just added can show it at once.
    pub conversation: ConversationInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadEvent {
    pub pos: Id,
    pub conv: Id,
    pub user: Id,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditedEvent {
    pub pos: Id,
    pub conv: Id,
    pub seq: u64,
    pub id: Id,
    pub text: String,
    pub edited_at: i64,
    pub by: Id,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedEvent {
    pub pos: Id,
    pub conv: Id,
    pub seq: u64,
    pub id: Id,
    pub by: Id,
    pub ts: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredEvent {
    pub conv: Id,
    pub user: Id,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypingEvent {
    pub conv: Id,
    pub user: Id,
    pub typing: bool,
    /// The indicator disappears after this long unless renewed.
    pub expires_in_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub cid: String,
    pub conv: Id,
    pub id: Id,
    pub seq: u64,
    pub pos: Id,
    /// Milliseconds since the Unix epoch, server clock.
    pub ts: i64,
    /// True when this acknowledges a retry of an already stored message.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_round_trip() {
        let f: ClientFrame = serde_json::from_str(
            r#"{"type":"send","cid":"a1","conv":"7","text":"hi"}"#,
        )
        .unwrap_or(ClientFrame::Read {
            conv: Id(0),
            seq: 0,
        });
        assert_eq!(
            f,
            ClientFrame::Send {
                cid: "a1".into(),
                conv: Id(7),
                text: "hi".into(),
                reply_to: None,
                mentions: vec![],
                mention_all: false,
                attachments: vec![],
            }
        );
        let hello: ClientFrame =
            serde_json::from_str(r#"{"type":"hello"}"#).unwrap_or(ClientFrame::Read {
                conv: Id(0),
                seq: 0,
            });
        assert_eq!(
            hello,
            ClientFrame::Hello {
                token: None,
                since: None
            }
        );
    }
}
