//! REST request and response bodies (JSON). Paths are documented in `docs/protocol.md`.

use crate::ids::Id;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub username: String,
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    pub id: Id,
    pub username: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    /// A label for the device ("Firefox on laptop"); at most 64 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Returned by login and refresh. The refresh token is single-use: each refresh returns a
/// new one, and presenting a used one revokes the whole device session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPair {
    pub access_token: String,
    /// Lifetime of the access token in seconds.
    pub expires_in: u64,
    pub refresh_token: String,
    pub user: UserView,
    /// The device session these tokens belong to.
    pub device_id: Id,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    Direct,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectRequest {
    pub user_id: Id,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateGroupRequest {
    pub name: String,
    /// Initial members besides the creator, who becomes the owner.
    #[serde(default)]
    pub members: Vec<Id>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddMemberRequest {
    pub user_id: Id,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRoleRequest {
    /// `admin` or `member`; ownership is not transferable through this call.
    pub role: Role,
}

/// A conversation as shown to one of its members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationInfo {
    pub id: Id,
    pub kind: ConversationKind,
    /// Group name; absent for direct conversations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub user: UserView,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationDetail {
    #[serde(flatten)]
    pub info: ConversationInfo,
    pub members: Vec<MemberView>,
    /// Sequence number of the newest message (0 when empty).
    pub last_seq: u64,
}

/// One row of "my conversations".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationSummary {
    #[serde(flatten)]
    pub info: ConversationInfo,
    /// For direct conversations: the other person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<UserView>,
    pub member_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<MessageView>,
    pub last_seq: u64,
    pub read_seq: u64,
    pub unread: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationList {
    pub conversations: Vec<ConversationSummary>,
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    pub conv: Id,
    pub id: Id,
    pub seq: u64,
    pub sender: Id,
    pub text: String,
    /// Milliseconds since the Unix epoch, server clock.
    pub ts: i64,
    /// The sender's client message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    /// Sequence number of the message this one replies to (same conversation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// Members mentioned by the sender.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<Id>,
    /// `@all`: every member of the group is mentioned.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mention_all: bool,
    /// Set when the text was edited (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<i64>,
    /// A tombstone: the text is gone, the sequence number stays.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// Uploaded files the message carries, in the order the sender gave them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<AttachmentView>,
}

/// A finished upload as a message carries it. Everything here is fixed once the upload
/// is complete, so it is stored with the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentView {
    /// The upload id: `GET /v1/uploads/{id}/content` downloads it.
    pub id: Id,
    /// File name as the uploader gave it (sanitized).
    pub name: String,
    /// The content type found in the bytes (never only the declared one).
    #[serde(rename = "type")]
    pub content_type: String,
    pub size: u64,
    /// Lower-case hex SHA-256 of the content; also its ETag.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// A tiny placeholder (blurhash) to show while the thumbnail loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blurhash: Option<String>,
    /// `GET /v1/uploads/{id}/thumbnails/{size}` for each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub thumbnails: Vec<ThumbnailView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThumbnailSize {
    /// Fits 160 × 160.
    Small,
    /// Fits 800 × 800.
    Medium,
    /// A video's poster frame at its own size (at most 1280 × 1280).
    Poster,
}

impl ThumbnailSize {
    pub fn as_str(self) -> &'static str {
        match self {
            ThumbnailSize::Small => "small",
            ThumbnailSize::Medium => "medium",
            ThumbnailSize::Poster => "poster",
        }
    }

    pub fn parse(s: &str) -> Option<ThumbnailSize> {
        match s {
            "small" => Some(ThumbnailSize::Small),
            "medium" => Some(ThumbnailSize::Medium),
            "poster" => Some(ThumbnailSize::Poster),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThumbnailView {
    pub size: ThumbnailSize,
    #[serde(rename = "type")]
    pub content_type: String,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    /// Bytes are still arriving (`offset < length`).
    Receiving,
    /// Complete, checked and stored: it can be attached to messages.
    Ready,
}

/// `GET /v1/uploads/{id}`: an upload as its owner (or a member who may download it) sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadView {
    pub id: Id,
    pub owner: Id,
    pub name: String,
    pub state: UploadState,
    /// Total size announced at creation.
    pub length: u64,
    /// Bytes received so far.
    pub offset: u64,
    pub created_at: i64,
    /// Set once the upload is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<AttachmentView>,
}

/// `GET /v1/uploads`: the caller's storage use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadUsage {
    pub used_bytes: u64,
    pub quota_bytes: u64,
    pub max_upload_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRequest {
    /// Client message id; strongly recommended so that retries are safe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<Id>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mention_all: bool,
    /// Upload ids (ready, uploaded by the sender) the message carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Id>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditRequest {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Messages in ascending sequence order.
    pub messages: Vec<MessageView>,
    /// True when older (for `before`) or newer (for `after`) messages exist beyond this page.
    pub has_more: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRequest {
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadState {
    pub conv: Id,
    pub read_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
}

/// `GET /readyz`: `ready`, `unavailable` or `shutting down`, and each engine's state
/// (`ok` or what failed): `store` always; `nats` and `redis` in cluster mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    pub status: String,
    pub engines: std::collections::BTreeMap<String, String>,
}

/// What a user says about being reachable; independent of being connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    #[default]
    Available,
    Away,
    DoNotDisturb,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceView {
    pub user: Id,
    /// True while any of the user's devices is connected (plus a short grace period).
    pub online: bool,
    pub status: Availability,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// When the user was last connected; absent while online or if never seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest {
    pub status: Availability,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceList {
    pub presence: Vec<PresenceView>,
}

/// How far one member has received and read a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub user: Id,
    pub delivered_seq: u64,
    pub read_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipts {
    pub conv: Id,
    pub last_seq: u64,
    pub receipts: Vec<Receipt>,
    /// For each of the newest messages (up to 50): how many other members have read it.
    pub read_counts: Vec<SeqCount>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqCount {
    pub seq: u64,
    pub read_by: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchHit {
    pub message: MessageView,
    /// An excerpt of the text around the first match.
    pub snippet: String,
    /// Matched ranges in `snippet`, as `[start, end)` character offsets.
    pub highlights: Vec<(usize, usize)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchResults {
    pub results: Vec<SearchHit>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}
