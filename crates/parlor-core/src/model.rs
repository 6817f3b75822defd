//! Domain values exchanged between the chat service and the ports.

use parlor_proto::ws::ServerFrame;
use parlor_proto::Id;
use std::sync::Arc;

pub type UserId = Id;
pub type ConvId = Id;
pub type DeviceId = Id;

/// A committed change, in global commit order. `pos` is the sync position: it increases
/// with every committed event of the whole store, so "everything after `pos`" is one
/// question for a reconnecting client, whatever the number of its conversations.
#[derive(Debug, Clone)]
pub struct Event {
    pub pos: u64,
    /// Users whose devices should receive the event live. Computed at commit time from the
    /// membership that the commit saw, so that delivery never races membership changes.
    /// Empty for events read back by sync (the reader is the only recipient).
    pub recipients: Arc<[UserId]>,
    pub frame: ServerFrame,
}

impl Event {
    /// The conversation the event belongs to; `None` for presence, which is per user.
    pub fn conv(&self) -> Option<ConvId> {
        match &self.frame {
            ServerFrame::Message(m) => Some(m.message.conv),
            ServerFrame::Member(m) => Some(m.conv),
            ServerFrame::Read(r) => Some(r.conv),
            ServerFrame::Edited(e) => Some(e.conv),
            ServerFrame::Deleted(d) => Some(d.conv),
            ServerFrame::Delivered(d) => Some(d.conv),
            ServerFrame::Typing(t) => Some(t.conv),
            ServerFrame::Ack(a) => Some(a.conv),
            ServerFrame::Notification(n) => Some(n.conv),
            ServerFrame::Presence(_)
            | ServerFrame::NotificationsRead(_)
            | ServerFrame::Synced { .. }
            | ServerFrame::Error(_) => None,
        }
    }

    /// The event with its recipients as JSON: how events cross between nodes (the bus)
    /// and wait in a store's event log.
    pub fn encode(&self) -> Vec<u8> {
        let wire = WireEventRef {
            pos: self.pos,
            recipients: &self.recipients,
            frame: &self.frame,
        };
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Event, serde_json::Error> {
        let wire: WireEvent = serde_json::from_slice(bytes)?;
        Ok(Event {
            pos: wire.pos,
            recipients: wire.recipients.into(),
            frame: wire.frame,
        })
    }
}

#[derive(serde::Serialize)]
struct WireEventRef<'a> {
    pos: u64,
    recipients: &'a [UserId],
    frame: &'a ServerFrame,
}

#[derive(serde::Deserialize)]
struct WireEvent {
    pos: u64,
    recipients: Vec<UserId>,
    frame: ServerFrame,
}

/// A message to append, already validated by [`crate::rules`].
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub conv: ConvId,
    pub sender: UserId,
    pub cid: Option<String>,
    pub text: String,
    /// Sequence number of the replied-to message, checked to exist in `conv`.
    pub reply_to: Option<u64>,
    /// Mentioned users, checked to be members; sorted and deduplicated.
    pub mentions: Vec<UserId>,
    /// `@all`, groups only.
    pub mention_all: bool,
    /// Upload ids, checked by [`crate::uploads::attachment_list`]; each store checks
    /// them with [`crate::uploads::may_attach`] under its lock.
    pub attachments: Vec<Id>,
}

/// A full-text query with its filters, already validated.
#[derive(Debug, Clone)]
pub struct SearchQuery {
    pub query: crate::search::Query,
    pub conv: Option<ConvId>,
    pub sender: Option<UserId>,
    /// Inclusive bounds on the message time, milliseconds since the Unix epoch.
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// Results to skip (decoded from the opaque cursor).
    pub offset: u32,
    pub limit: u32,
}

/// What the store returns once a message is committed (or was committed before, for a
/// retried client message id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub id: Id,
    pub conv: ConvId,
    pub seq: u64,
    pub pos: u64,
    pub ts: i64,
    pub duplicate: bool,
}

/// Membership changes, executed atomically by the store with the rules of
/// [`crate::rules::membership`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipCommand {
    Add {
        actor: UserId,
        conv: ConvId,
        user: UserId,
    },
    Remove {
        actor: UserId,
        conv: ConvId,
        user: UserId,
    },
    Leave {
        conv: ConvId,
        user: UserId,
    },
    SetRole {
        actor: UserId,
        conv: ConvId,
        user: UserId,
        role: parlor_proto::rest::Role,
    },
}

/// One page of history, bounded by sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The newest messages.
    Latest { limit: u32 },
    /// Messages with `seq < before`, newest first in selection, returned ascending.
    Before { before: u64, limit: u32 },
    /// Messages with `seq > after`, ascending.
    After { after: u64, limit: u32 },
}

/// A device session as stored (refresh tokens are stored hashed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: UserId,
    pub username: String,
    pub password_hash: String,
}

/// The result of presenting a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The token was current: it is now replaced by the new one.
    Rotated { user: UserId, device: DeviceId },
    /// The token was already used once: the device session is now revoked, because a
    /// stolen token and its owner cannot both keep going.
    Reused { device: DeviceId },
    /// Unknown, expired or revoked.
    Invalid,
}

/// Limits that the domain enforces; every one is configurable and documented.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_text_bytes: usize,
    /// Most recent matches considered by a search before ranking; bounds its cost.
    pub search_candidates: u32,
    pub member_limit: u32,
    pub history_max_page: u32,
    pub sync_page: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_bytes: 16 * 1024,
            search_candidates: 300,
            member_limit: 1000,
            history_max_page: 200,
            sync_page: 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parlor_proto::ws::ReadEvent;

    #[test]
    fn events_survive_the_wire() {
        let event = Event {
            pos: 42,
            recipients: vec![Id(7), Id(9)].into(),
            frame: ServerFrame::Read(ReadEvent {
                pos: Id(42),
                conv: Id(3),
                user: Id(7),
                seq: 5,
            }),
        };
        let back = Event::decode(&event.encode()).expect("decodes");
        assert_eq!(back.pos, 42);
        assert_eq!(&*back.recipients, &[Id(7), Id(9)]);
        assert_eq!(back.frame, event.frame);
        assert_eq!(back.conv(), Some(Id(3)));
        assert!(Event::decode(b"{not json").is_err());
    }
}
