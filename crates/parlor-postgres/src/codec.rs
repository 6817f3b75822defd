//! Integer codes of enums in the schema (stable: they are stored, and the same as the
//! SQLite store's), and rows turned into protocol values.

use parlor_core::error::{Error, Result};
use parlor_proto::rest::{
    AttachmentView, ConversationInfo, ConversationKind, MessageView, Role, UserView,
};
use parlor_proto::ws::MemberChange;
use parlor_proto::Id;
use tokio_postgres::Row;

pub fn role_code(role: Role) -> i16 {
    match role {
        Role::Owner => 0,
        Role::Admin => 1,
        Role::Member => 2,
    }
}

pub fn role_from_code(code: i16) -> Role {
    match code {
        0 => Role::Owner,
        1 => Role::Admin,
        _ => Role::Member,
    }
}

pub fn change_code(change: MemberChange) -> i16 {
    match change {
        MemberChange::Added => 0,
        MemberChange::Removed => 1,
        MemberChange::Left => 2,
        MemberChange::Role => 3,
    }
}

pub fn change_from_code(code: i16) -> MemberChange {
    match code {
        0 => MemberChange::Added,
        1 => MemberChange::Removed,
        2 => MemberChange::Left,
        _ => MemberChange::Role,
    }
}

pub fn kind_code(kind: ConversationKind) -> i16 {
    i16::from(kind == ConversationKind::Group)
}

pub fn kind_from_code(code: i16) -> ConversationKind {
    if code == 0 {
        ConversationKind::Direct
    } else {
        ConversationKind::Group
    }
}

/// Ids are stored as `bigint`; Snowflake ids fit in 63 bits.
pub fn sql_id(id: Id) -> i64 {
    id.0 as i64
}

pub fn id_at(row: &Row, index: usize) -> Id {
    Id(row.get::<_, i64>(index) as u64)
}

/// Sequence numbers and positions from the wire, clamped to what `bigint` holds.
pub fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub fn user_view(row: &Row) -> UserView {
    UserView {
        id: id_at(row, 0),
        username: row.get(1),
    }
}

/// `kind, name, created_at` at `start`.
pub fn conversation_info(id: Id, row: &Row, start: usize) -> ConversationInfo {
    ConversationInfo {
        id,
        kind: kind_from_code(row.get(start)),
        name: row.get(start + 1),
        created_at: row.get(start + 2),
    }
}

/// The columns [`message_view`] reads, in order (prefix with a table alias as needed).
pub const MESSAGE_COLUMNS: &str =
    "conv_id, seq, id, sender, body, created_at, cid, pos, reply_to, mentions, mention_all, edited_at, deleted, attachments";

/// Same as [`MESSAGE_COLUMNS`] with the alias `m.`.
pub const M_MESSAGE_COLUMNS: &str =
    "m.conv_id, m.seq, m.id, m.sender, m.body, m.created_at, m.cid, m.pos, m.reply_to, m.mentions, m.mention_all, m.edited_at, m.deleted, m.attachments";

/// A message from [`MESSAGE_COLUMNS`] starting at `start`.
pub fn message_view(row: &Row, start: usize) -> MessageView {
    let mentions: Option<Vec<i64>> = row.get(start + 9);
    MessageView {
        conv: id_at(row, start),
        seq: row.get::<_, i64>(start + 1) as u64,
        id: id_at(row, start + 2),
        sender: id_at(row, start + 3),
        text: text_at(row, start + 4),
        ts: row.get(start + 5),
        cid: row.get(start + 6),
        reply_to: row.get::<_, Option<i64>>(start + 8).map(|r| r as u64),
        mentions: mentions
            .unwrap_or_default()
            .into_iter()
            .map(|u| Id(u as u64))
            .collect(),
        mention_all: row.get(start + 10),
        edited_at: row.get(start + 11),
        deleted: row.get(start + 12),
        attachments: decode_attachments(row.get(start + 13)),
    }
}

/// The stored form of a message's attachments: their JSON, `NULL` when there are none
/// (most messages), so that reading them back costs nothing either.
pub fn encode_attachments(attachments: &[AttachmentView]) -> Result<Option<String>> {
    if attachments.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(attachments).map(Some).map_err(|e| {
        tracing::error!(error = %e, "cannot encode attachments");
        Error::internal()
    })
}

/// A message's attachments from their stored JSON. A row that cannot be read shows
/// without attachments rather than failing the whole page it is on.
pub fn decode_attachments(json: Option<&str>) -> Vec<AttachmentView> {
    let Some(json) = json else {
        return Vec::new();
    };
    serde_json::from_str(json).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "unreadable attachment list");
        Vec::new()
    })
}

/// Message texts are stored as UTF-8 bytes (`bytea`: text cannot hold NUL).
pub fn text_at(row: &Row, index: usize) -> String {
    String::from_utf8_lossy(row.get::<_, &[u8]>(index)).into_owned()
}

/// The position of a message row read with [`MESSAGE_COLUMNS`] at `start`.
pub fn message_pos(row: &Row, start: usize) -> u64 {
    row.get::<_, i64>(start + 7) as u64
}
