//! Reads, each a function of one read-only connection of the [`ReadPool`]. WAL mode lets
//! them run while the writer commits.

use super::codec::{change_from_code, role_from_code};
pub use super::read_pool::ReadPool;
use parlor_core::backlog::{BacklogMerge, Span};
use parlor_core::error::{Error, Result};
use parlor_core::model::*;
use parlor_proto::rest::{
    ConversationDetail, ConversationInfo, ConversationKind, ConversationSummary, History,
    MemberView, MessageView, Receipt, Receipts, SeqCount, UserView,
};
use parlor_proto::ws::{
    DeletedEvent, EditedEvent, MemberEvent, MessageEvent, ReadEvent, ServerFrame,
};
use parlor_proto::Id;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::collections::HashMap;
use std::sync::Arc;

pub fn db_err(e: rusqlite::Error) -> Error {
    tracing::error!(error = %e, "store read failed");
    Error::unavailable()
}

fn id(row: &Row<'_>, index: usize) -> rusqlite::Result<Id> {
    Ok(Id(row.get::<_, i64>(index)? as u64))
}

pub fn user_view(row: &Row<'_>) -> rusqlite::Result<UserView> {
    Ok(UserView {
        id: id(row, 0)?,
        username: row.get(1)?,
    })
}

pub(super) const MESSAGE_COLUMNS: &str =
    "conv_id, seq, id, sender, body, created_at, cid, pos, reply_to, mentions, mention_all, edited_at, deleted, attachments";

pub(super) fn message_view(row: &Row<'_>) -> rusqlite::Result<MessageView> {
    let mentions: Option<String> = row.get(9)?;
    Ok(MessageView {
        conv: id(row, 0)?,
        seq: row.get::<_, i64>(1)? as u64,
        id: id(row, 2)?,
        sender: id(row, 3)?,
        text: row.get(4)?,
        ts: row.get(5)?,
        cid: row.get(6)?,
        reply_to: row.get::<_, Option<i64>>(8)?.map(|r| r as u64),
        mentions: mentions
            .iter()
            .flat_map(|m| m.split(' '))
            .filter_map(|u| u.parse().ok())
            .collect(),
        mention_all: row.get(10)?,
        edited_at: row.get(11)?,
        deleted: row.get(12)?,
        attachments: super::uploads::attachments_from_json(
            row.get::<_, Option<String>>(13)?.as_deref(),
        ),
    })
}

pub fn message_by_seq(conn: &Connection, conv: ConvId, seq: u64) -> Result<Option<MessageView>> {
    conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE conv_id = ?1 AND seq = ?2"
    ))
    .and_then(|mut s| {
        s.query_row(params![conv.0 as i64, seq as i64], message_view)
            .optional()
    })
    .map_err(db_err)
}

/// The messages at `keys` (`(conv_id, seq)`), in that order. One lookup in
/// `message_rows` each, and a single scan of the tail for those it lacks, instead of a
/// scan of the tail per message through the view: the newest messages, which a search
/// ranks first, are the ones still in the tail.
pub(super) fn messages_at(
    conn: &Connection,
    keys: &[(i64, u64)],
) -> Result<Vec<Option<MessageView>>> {
    // One snapshot for both reads: a row copied between them would be in neither.
    in_one_snapshot(conn, || messages_at_in(conn, keys))
}

fn messages_at_in(conn: &Connection, keys: &[(i64, u64)]) -> Result<Vec<Option<MessageView>>> {
    let mut copied = conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM message_rows WHERE conv_id = ?1 AND seq = ?2"
        ))
        .map_err(db_err)?;
    let mut out: Vec<Option<MessageView>> = vec![None; keys.len()];
    let mut missing = HashMap::new();
    // In key order: a conversation's messages are neighbours in the clustered table, so
    // lookups of several from one conversation (search hits, newest first across many
    // conversations) hit the pages the previous lookup just read.
    let mut order: Vec<usize> = (0..keys.len()).collect();
    order.sort_unstable_by_key(|&i| keys[i]);
    for index in order {
        let (conv, seq) = keys[index];
        let found = copied
            .query_row(params![conv, seq as i64], message_view)
            .optional()
            .map_err(db_err)?;
        if found.is_none() {
            missing.insert((conv as u64, seq), index);
        }
        out[index] = found;
    }
    if !missing.is_empty() {
        // No test of `message_rows` per tail row (that doubled a search's cost): in this
        // snapshot `message_rows` lacks the messages looked for, so their tail rows are
        // not copied ones.
        let mut tail = conn
            .prepare_cached(&format!("SELECT {MESSAGE_COLUMNS} FROM message_tail"))
            .map_err(db_err)?;
        let rows = tail.query_map([], message_view).map_err(db_err)?;
        for row in rows {
            let message = row.map_err(db_err)?;
            if let Some(&index) = missing.get(&(message.conv.0, message.seq)) {
                out[index] = Some(message);
            }
        }
    }
    Ok(out)
}

/// Runs `read` inside one read transaction (one snapshot), unless the connection is in
/// one already (see [`super::positions::in_one_snapshot`]).
fn in_one_snapshot<T>(conn: &Connection, read: impl FnOnce() -> Result<T>) -> Result<T> {
    super::positions::in_one_snapshot(conn, read, db_err)
}

pub(super) fn conversation_info(
    conn: &Connection,
    conv: ConvId,
) -> Result<Option<ConversationInfo>> {
    conn.prepare_cached("SELECT kind, name, created_at FROM conversations WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([conv.0 as i64], |r| {
                Ok(ConversationInfo {
                    id: conv,
                    kind: if r.get::<_, i64>(0)? == 0 {
                        ConversationKind::Direct
                    } else {
                        ConversationKind::Group
                    },
                    name: r.get(1)?,
                    created_at: r.get(2)?,
                })
            })
            .optional()
        })
        .map_err(db_err)
}

pub fn conversation(conn: &Connection, viewer: UserId, conv: ConvId) -> Result<ConversationDetail> {
    let info =
        conversation_info(conn, conv)?.ok_or_else(|| Error::not_found("conversation not found"))?;
    let mut members = Vec::new();
    let mut is_member = false;
    {
        let mut stmt = conn
            .prepare_cached(
                "SELECT m.user_id, u.username, m.role FROM members m JOIN users u ON u.id = m.user_id
                 WHERE m.conv_id = ?1 AND m.left_pos IS NULL ORDER BY m.role, m.joined_pos",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map([conv.0 as i64], |r| {
                Ok(MemberView {
                    user: user_view(r)?,
                    role: role_from_code(r.get(2)?),
                })
            })
            .map_err(db_err)?;
        for row in rows {
            let member = row.map_err(db_err)?;
            is_member |= member.user.id == viewer;
            members.push(member);
        }
    }
    if !is_member {
        return Err(Error::not_member());
    }
    let last_seq: i64 = conn
        .prepare_cached("SELECT COALESCE((SELECT seq FROM messages WHERE conv_id = ?1 ORDER BY seq DESC LIMIT 1), 0)")
        .and_then(|mut s| s.query_row([conv.0 as i64], |r| r.get(0)))
        .map_err(db_err)?;
    Ok(ConversationDetail {
        info,
        members,
        last_seq: last_seq as u64,
    })
}

pub fn conversations(conn: &Connection, viewer: UserId) -> Result<Vec<ConversationSummary>> {
    // One snapshot for the list, the tail's scan and the last messages.
    in_one_snapshot(conn, || conversations_in(conn, viewer))
}

fn conversations_in(conn: &Connection, viewer: UserId) -> Result<Vec<ConversationSummary>> {
    // Each conversation's newest message: in `message_rows` or, for the active ones, in
    // the tail, read for all conversations in one scan instead of one per conversation.
    let mut in_tail: HashMap<i64, i64> = HashMap::new();
    {
        let mut tail = conn
            .prepare_cached("SELECT conv_id, MAX(seq) FROM message_tail GROUP BY conv_id")
            .map_err(db_err)?;
        let rows = tail
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .map_err(db_err)?;
        for row in rows {
            let (conv, seq) = row.map_err(db_err)?;
            in_tail.insert(conv, seq);
        }
    }
    let mut stmt = conn
        .prepare_cached(
            "SELECT c.id, c.kind, c.name, c.created_at, c.member_count, m.read_seq,
                    (SELECT seq FROM message_rows WHERE conv_id = c.id ORDER BY seq DESC LIMIT 1)
             FROM members m JOIN conversations c ON c.id = m.conv_id
             WHERE m.user_id = ?1 AND m.left_pos IS NULL",
        )
        .map_err(db_err)?;
    let rows = stmt
        .query_map([viewer.0 as i64], |r| {
            Ok((
                ConversationInfo {
                    id: id(r, 0)?,
                    kind: if r.get::<_, i64>(1)? == 0 {
                        ConversationKind::Direct
                    } else {
                        ConversationKind::Group
                    },
                    name: r.get(2)?,
                    created_at: r.get(3)?,
                },
                r.get::<_, i64>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<i64>>(6)?,
            ))
        })
        .map_err(db_err)?;
    let mut peer_stmt = conn
        .prepare_cached(
            "SELECT u.id, u.username FROM members m JOIN users u ON u.id = m.user_id
             WHERE m.conv_id = ?1 AND m.user_id != ?2 LIMIT 1",
        )
        .map_err(db_err)?;
    let mut out = Vec::new();
    for row in rows {
        let (info, member_count, read_seq, copied_seq) = row.map_err(db_err)?;
        let newest = copied_seq.max(in_tail.get(&(info.id.0 as i64)).copied());
        let last_seq = newest.unwrap_or(0) as u64;
        let read_seq = (read_seq as u64).min(last_seq);
        let peer = if info.kind == ConversationKind::Direct {
            peer_stmt
                .query_row(params![info.id.0 as i64, viewer.0 as i64], user_view)
                .optional()
                .map_err(db_err)?
        } else {
            None
        };
        out.push(ConversationSummary {
            info,
            peer,
            member_count: member_count as u32,
            last_message: None,
            last_seq,
            read_seq,
            unread: last_seq - read_seq,
        });
    }
    let keys: Vec<(i64, u64)> = out
        .iter()
        .filter(|c| c.last_seq > 0)
        .map(|c| (c.info.id.0 as i64, c.last_seq))
        .collect();
    let mut last_messages = messages_at(conn, &keys)?.into_iter();
    for summary in out.iter_mut().filter(|c| c.last_seq > 0) {
        summary.last_message = last_messages.next().flatten();
    }
    let activity =
        |c: &ConversationSummary| c.last_message.as_ref().map_or(c.info.created_at, |m| m.ts);
    out.sort_by(|a, b| {
        activity(b)
            .cmp(&activity(a))
            .then(b.info.id.cmp(&a.info.id))
    });
    Ok(out)
}

pub fn history(conn: &Connection, viewer: UserId, conv: ConvId, page: Page) -> Result<History> {
    let membership: Option<Option<i64>> = conn
        .prepare_cached("SELECT left_seq FROM members WHERE conv_id = ?1 AND user_id = ?2")
        .and_then(|mut s| {
            s.query_row(params![conv.0 as i64, viewer.0 as i64], |r| r.get(0))
                .optional()
        })
        .map_err(db_err)?;
    let Some(left_seq) = membership else {
        return Err(match conversation_info(conn, conv)? {
            Some(_) => Error::not_member(),
            None => Error::not_found("conversation not found"),
        });
    };
    let bound = left_seq.unwrap_or(i64::MAX);
    // The newest message a page may return; below what `message_rows` holds, the page
    // is read from it alone, without the view's scan of the tail.
    let newest_wanted = match page {
        Page::Latest { .. } => bound as u64,
        Page::Before { before, .. } => before.saturating_sub(1).min(bound as u64),
        Page::After { after, limit } => {
            after.saturating_add(u64::from(limit) + 1).min(bound as u64)
        }
    };
    let copied = super::positions::copied_through(conn, conv.0 as i64).map_err(db_err)?;
    let table = match newest_wanted <= copied {
        true => "message_rows",
        false => "messages",
    };
    let (sql, anchor, limit, descending) = match page {
        Page::Latest { limit } => ("seq <= ?2 ORDER BY seq DESC", i64::MAX, limit, true),
        Page::Before { before, limit } => (
            "seq < ?4 AND seq <= ?2 ORDER BY seq DESC",
            clamp(before),
            limit,
            true,
        ),
        Page::After { after, limit } => (
            "seq > ?4 AND seq <= ?2 ORDER BY seq ASC",
            clamp(after),
            limit,
            false,
        ),
    };
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM {table} WHERE conv_id = ?1 AND {sql} LIMIT ?3"
        ))
        .map_err(db_err)?;
    let fetch = i64::from(limit) + 1;
    let rows = if sql.contains("?4") {
        stmt.query_map(params![conv.0 as i64, bound, fetch, anchor], message_view)
    } else {
        stmt.query_map(params![conv.0 as i64, bound, fetch], message_view)
    }
    .map_err(db_err)?;
    let mut messages = rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)?;
    let has_more = messages.len() > limit as usize;
    messages.truncate(limit as usize);
    if descending {
        messages.reverse();
    }
    Ok(History { messages, has_more })
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// [`parlor_core::ports::Store::backlog`] on SQLite: the merge of
/// [`parlor_core::backlog`], with each round of cursor refills run on a read connection.
pub struct BacklogState {
    pool: Arc<ReadPool>,
    merge: BacklogMerge,
    /// Per cursor, the last message its previous chunk returned.
    resume: HashMap<usize, Resume>,
}

/// `(pos, seq)` of a message, where the next chunk of its conversation resumes.
type Resume = (u64, u64);

impl BacklogState {
    pub async fn start(
        pool: Arc<ReadPool>,
        user: UserId,
        since: u64,
        head: u64,
        page: u32,
    ) -> Result<Self> {
        let (spans, other) = pool
            .run(move |conn| {
                in_one_snapshot(conn, || load_backlog_sources(conn, user, since, head))
            })
            .await?;
        Ok(BacklogState {
            pool,
            merge: BacklogMerge::new(spans, other, page),
            resume: HashMap::new(),
        })
    }

    pub async fn next_page(&mut self) -> Option<Result<Vec<Event>>> {
        let wanted: Vec<_> = self
            .merge
            .refills()
            .into_iter()
            .map(|(index, span)| (index, span, self.resume.get(&index).copied()))
            .collect();
        if !wanted.is_empty() {
            let chunk = self.merge.chunk();
            let fetched = self
                .pool
                .run(move |conn| in_one_snapshot(conn, || fetch_chunks(conn, &wanted, chunk)))
                .await;
            let fetched = match fetched {
                Ok(f) => f,
                Err(e) => return Some(Err(e)),
            };
            for (index, events) in fetched {
                if let Some(Event {
                    pos,
                    frame: ServerFrame::Message(m),
                    ..
                }) = events.last()
                {
                    self.resume.insert(index, (*pos, m.message.seq));
                }
                self.merge.refilled(index, events);
            }
        }
        self.merge.next_page().map(Ok)
    }
}

/// The cursors' spans (one per conversation) and the non-message events, membership
/// bounding both.
fn load_backlog_sources(
    conn: &Connection,
    user: UserId,
    since: u64,
    head: u64,
) -> Result<(Vec<Span>, Vec<Event>)> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT conv_id, joined_pos, left_pos, read_pos, read_seq FROM members
             WHERE user_id = ?1 AND joined_pos <= ?2 AND (left_pos IS NULL OR left_pos > ?3)",
        )
        .map_err(db_err)?;
    let memberships = stmt
        .query_map(params![user.0 as i64, head as i64, since as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, Option<i64>>(2)?.map(|p| p as u64),
                r.get::<_, i64>(3)? as u64,
                r.get::<_, i64>(4)? as u64,
            ))
        })
        .map_err(db_err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_err)?;
    let mut spans = Vec::with_capacity(memberships.len());
    let mut other = Vec::new();
    let mut member_stmt = conn
        .prepare_cached(
            "SELECT pos, user_id, change, actor, role, created_at FROM member_events
             WHERE conv_id = ?1 AND pos > ?2 AND pos <= ?3 ORDER BY pos",
        )
        .map_err(db_err)?;
    let mut change_stmt = conn
        .prepare_cached(
            "SELECT c.pos, c.seq, c.kind, c.actor, c.created_at, m.id, m.body, m.edited_at
             FROM message_changes c JOIN messages m ON m.conv_id = c.conv_id AND m.seq = c.seq
             WHERE c.conv_id = ?1 AND c.pos > ?2 AND c.pos <= ?3 ORDER BY c.pos",
        )
        .map_err(db_err)?;
    for (conv, joined_pos, left_pos, read_pos, read_seq) in memberships {
        let upper = left_pos.unwrap_or(u64::MAX).min(head);
        // Events from before this membership began are history, not backlog.
        let lower = since.max(joined_pos.saturating_sub(1));
        let Some(info) = conversation_info(conn, Id(conv as u64))? else {
            continue;
        };
        let rows = member_stmt
            .query_map(params![conv, lower as i64, upper as i64], |r| {
                Ok(MemberEvent {
                    pos: id(r, 0)?,
                    conv: info.id,
                    user: id(r, 1)?,
                    change: change_from_code(r.get(2)?),
                    by: id(r, 3)?,
                    role: r.get::<_, Option<i64>>(4)?.map(role_from_code),
                    ts: r.get(5)?,
                    conversation: info.clone(),
                })
            })
            .map_err(db_err)?;
        for row in rows {
            let event = row.map_err(db_err)?;
            other.push(Event {
                pos: event.pos.0,
                recipients: Arc::from(Vec::new()),
                frame: ServerFrame::Member(event),
            });
        }
        let changes = change_stmt
            .query_map(params![conv, lower as i64, upper as i64], |r| {
                let pos = r.get::<_, i64>(0)? as u64;
                let frame = if r.get::<_, i64>(2)? == 0 {
                    ServerFrame::Edited(EditedEvent {
                        pos: Id(pos),
                        conv: info.id,
                        seq: r.get::<_, i64>(1)? as u64,
                        id: id(r, 5)?,
                        text: r.get(6)?,
                        edited_at: r.get::<_, Option<i64>>(7)?.unwrap_or(r.get(4)?),
                        by: id(r, 3)?,
                    })
                } else {
                    ServerFrame::Deleted(DeletedEvent {
                        pos: Id(pos),
                        conv: info.id,
                        seq: r.get::<_, i64>(1)? as u64,
                        id: id(r, 5)?,
                        by: id(r, 3)?,
                        ts: r.get(4)?,
                    })
                };
                Ok(Event {
                    pos,
                    recipients: Arc::from(Vec::new()),
                    frame,
                })
            })
            .map_err(db_err)?;
        for change in changes {
            other.push(change.map_err(db_err)?);
        }
        if left_pos.is_none() && read_pos > since && read_pos <= head {
            other.push(Event {
                pos: read_pos,
                recipients: Arc::from(Vec::new()),
                frame: ServerFrame::Read(ReadEvent {
                    pos: Id(read_pos),
                    conv: info.id,
                    user,
                    seq: read_seq,
                }),
            });
        }
        spans.push(Span {
            conv: Id(conv as u64),
            after: since.max(joined_pos),
            upper,
        });
    }
    Ok((spans, other))
}

/// The next chunk of each wanted cursor, one indexed range read per conversation.
fn fetch_chunks(
    conn: &Connection,
    wanted: &[(usize, Span, Option<Resume>)],
    chunk: u32,
) -> Result<Vec<(usize, Vec<Event>)>> {
    let mut out = Vec::with_capacity(wanted.len());
    for &(index, span, known) in wanted {
        let conv = span.conv.0 as i64;
        let range = super::positions::seq_range(conn, conv, span.after, span.upper, known);
        let Some(range) = range.map_err(db_err)? else {
            out.push((index, Vec::new()));
            continue;
        };
        let (first, last) = (range.first, range.last);
        let table = range.table(last.min(first.saturating_add(u64::from(chunk.max(1)) - 1)));
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM {table}
                 WHERE conv_id = ?1 AND seq >= ?2 AND seq <= ?3 ORDER BY seq LIMIT ?4"
            ))
            .map_err(db_err)?;
        let rows = stmt
            .query_map(
                params![conv, first as i64, last as i64, i64::from(chunk)],
                |r| {
                    let pos = r.get::<_, i64>(7)? as u64;
                    Ok(Event {
                        pos,
                        recipients: Arc::from(Vec::new()),
                        frame: ServerFrame::Message(MessageEvent {
                            pos: Id(pos),
                            message: message_view(r)?,
                        }),
                    })
                },
            )
            .map_err(db_err)?;
        out.push((
            index,
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)?,
        ));
    }
    Ok(out)
}

pub fn receipts(conn: &Connection, viewer: UserId, conv: ConvId) -> Result<Receipts> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT user_id, delivered_seq, read_seq FROM members WHERE conv_id = ?1 AND left_pos IS NULL ORDER BY user_id",
        )
        .map_err(db_err)?;
    let receipts = stmt
        .query_map([conv.0 as i64], |r| {
            Ok(Receipt {
                user: id(r, 0)?,
                delivered_seq: r.get::<_, i64>(1)? as u64,
                read_seq: r.get::<_, i64>(2)? as u64,
            })
        })
        .map_err(db_err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_err)?;
    if !receipts.iter().any(|r| r.user == viewer) {
        return Err(match conversation_info(conn, conv)? {
            Some(_) => Error::not_member(),
            None => Error::not_found("conversation not found"),
        });
    }
    let last_seq: i64 = conn
        .prepare_cached("SELECT COALESCE((SELECT seq FROM messages WHERE conv_id = ?1 ORDER BY seq DESC LIMIT 1), 0)")
        .and_then(|mut s| s.query_row([conv.0 as i64], |r| r.get(0)))
        .map_err(db_err)?;
    let last_seq = last_seq as u64;
    // "Read by N": for each of the newest messages, the other members whose marker is at
    // or past it (the sender's own marker does not count).
    let mut senders = conn
        .prepare_cached(
            "SELECT seq, sender FROM messages WHERE conv_id = ?1 AND seq > ?2 ORDER BY seq",
        )
        .map_err(db_err)?;
    let read_counts = senders
        .query_map(
            params![conv.0 as i64, last_seq.saturating_sub(50) as i64],
            |r| Ok((r.get::<_, i64>(0)? as u64, id(r, 1)?)),
        )
        .map_err(db_err)?
        .map(|row| {
            row.map(|(seq, sender)| SeqCount {
                seq,
                read_by: receipts
                    .iter()
                    .filter(|r| r.user != sender && r.read_seq >= seq)
                    .count() as u32,
            })
        })
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_err)?;
    Ok(Receipts {
        conv,
        last_seq,
        receipts,
        read_counts,
    })
}

pub fn members(conn: &Connection, conv: ConvId) -> Result<Arc<[UserId]>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT user_id FROM members WHERE conv_id = ?1 AND left_pos IS NULL ORDER BY user_id",
        )
        .map_err(db_err)?;
    let users = stmt
        .query_map([conv.0 as i64], |r| id(r, 0))
        .map_err(db_err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_err)?;
    if users.is_empty() && conversation_info(conn, conv)?.is_none() {
        return Err(Error::not_found("conversation not found"));
    }
    Ok(users.into())
}

pub fn contacts(conn: &Connection, user: UserId) -> rusqlite::Result<Vec<UserId>> {
    conn.prepare_cached(
        "SELECT DISTINCT other.user_id FROM members mine
         JOIN members other ON other.conv_id = mine.conv_id
         WHERE mine.user_id = ?1 AND mine.left_pos IS NULL AND other.left_pos IS NULL AND other.user_id != ?1",
    )?
    .query_map([user.0 as i64], |r| id(r, 0))?
    .collect()
}

pub fn last_seen(conn: &Connection, user: UserId) -> Result<Option<i64>> {
    conn.prepare_cached("SELECT last_seen FROM users WHERE id = ?1")
        .and_then(|mut s| {
            s.query_row([user.0 as i64], |r| r.get::<_, Option<i64>>(0))
                .optional()
        })
        .map(Option::flatten)
        .map_err(db_err)
}
