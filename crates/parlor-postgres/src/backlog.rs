//! Sync: the events visible to a user with positions in `(since, head]`, in position
//! order, in pages.
//!
//! The merge is the core's (`parlor_core::backlog`), the same as the embedded store's:
//! membership, edit/delete and read-marker events are few and loaded up front; messages
//! are read through one cursor per conversation in chunks, and a page releases events
//! only up to the smallest position an unfinished cursor has reached, so output is in
//! global position order and each row is read once. What is here is how the cursors
//! are read.
//!
//! Why per-conversation cursors and not one query ordered by `pos` over all the user's
//! conversations: with `conv_id = ANY(…)` PostgreSQL cannot walk the `(conv_id, pos)`
//! index in `pos` order across conversations, so every page would read and sort all
//! remaining rows (quadratic for a device that was away long). Here each chunk round
//! is ONE statement — a `LATERAL` subquery per conversation, each an index range scan
//! on one partition (`LIMIT chunk`) — so a round costs one round trip whatever the
//! number of conversations, and no row is read twice. All of it runs on the primary:
//! a replica may not have reached `head` yet.

use crate::codec::*;
use crate::error::DbResult;
use crate::Core;
use parlor_core::backlog::{BacklogMerge, Span};
use parlor_core::error::Result;
use parlor_core::model::*;
use parlor_proto::rest::ConversationInfo;
use parlor_proto::ws::{
    DeletedEvent, EditedEvent, MemberEvent, MessageEvent, ReadEvent, ServerFrame,
};
use parlor_proto::Id;
use std::collections::HashMap;
use std::sync::Arc;

/// The merge of [`parlor_core::backlog`], refilled here one statement per round.
pub struct BacklogState {
    core: Arc<Core>,
    merge: BacklogMerge,
}

fn no_recipients() -> Arc<[UserId]> {
    Arc::from(Vec::new())
}

impl BacklogState {
    pub async fn start(
        core: Arc<Core>,
        user: UserId,
        since: u64,
        head: u64,
        page: u32,
    ) -> Result<Self> {
        let (spans, other) = load_sources(&core, user, since, head).await?;
        Ok(BacklogState {
            core,
            merge: BacklogMerge::new(spans, other, page),
        })
    }

    pub async fn next_page(&mut self) -> Option<Result<Vec<Event>>> {
        let wanted = self.merge.refills();
        if !wanted.is_empty() {
            match fetch_chunks(&self.core, &wanted, self.merge.chunk()).await {
                Ok(mut fetched) => {
                    // A cursor with no row left is absent from the answer: it gets none,
                    // which marks it exhausted.
                    for (index, _) in wanted {
                        let events = fetched.remove(&index).unwrap_or_default();
                        self.merge.refilled(index, events);
                    }
                }
                Err(e) => return Some(Err(e)),
            }
        }
        self.merge.next_page().map(Ok)
    }
}

async fn load_sources(
    core: &Core,
    user: UserId,
    since: u64,
    head: u64,
) -> Result<(Vec<Span>, Vec<Event>)> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached(
            "SELECT m.conv_id, m.joined_pos, m.left_pos, m.read_pos, m.read_seq,
                    c.kind, c.name, c.created_at
             FROM members m JOIN conversations c ON c.id = m.conv_id
             WHERE m.user_id = $1 AND m.joined_pos <= $2 AND (m.left_pos IS NULL OR m.left_pos > $3)",
        )
        .await
        .db()?;
    let rows = client
        .query(&stmt, &[&sql_id(user), &clamp(head), &clamp(since)])
        .await
        .db()?;
    let mut spans = Vec::with_capacity(rows.len());
    let mut other = Vec::new();
    let mut infos: HashMap<i64, ConversationInfo> = HashMap::new();
    let (mut convs, mut lowers, mut uppers) = (Vec::new(), Vec::new(), Vec::new());
    for r in &rows {
        let conv: i64 = r.get(0);
        let joined_pos = r.get::<_, i64>(1) as u64;
        let left_pos = r.get::<_, Option<i64>>(2).map(|p| p as u64);
        let read_pos = r.get::<_, i64>(3) as u64;
        let read_seq = r.get::<_, i64>(4) as u64;
        let info = conversation_info(Id(conv as u64), r, 5);
        let upper = left_pos.unwrap_or(u64::MAX).min(head);
        // Events from before this membership began are history, not backlog.
        let lower = since.max(joined_pos.saturating_sub(1));
        convs.push(conv);
        lowers.push(clamp(lower));
        uppers.push(clamp(upper));
        if left_pos.is_none() && read_pos > since && read_pos <= head {
            other.push(Event {
                pos: read_pos,
                recipients: no_recipients(),
                frame: ServerFrame::Read(ReadEvent {
                    pos: Id(read_pos),
                    conv: info.id,
                    user,
                    seq: read_seq,
                }),
            });
        }
        spans.push(Span {
            conv: info.id,
            after: since.max(joined_pos),
            upper,
        });
        infos.insert(conv, info);
    }
    if !convs.is_empty() {
        let stmt = client
            .prepare_cached(
                "SELECT e.conv_id, e.pos, e.user_id, e.change, e.actor, e.role, e.created_at
                 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS v(conv_id, lower, upper)
                 JOIN member_events e ON e.conv_id = v.conv_id AND e.pos > v.lower AND e.pos <= v.upper",
            )
            .await
            .db()?;
        for r in client
            .query(&stmt, &[&convs, &lowers, &uppers])
            .await
            .db()?
        {
            let Some(info) = infos.get(&r.get::<_, i64>(0)) else {
                continue;
            };
            let pos = r.get::<_, i64>(1) as u64;
            other.push(Event {
                pos,
                recipients: no_recipients(),
                frame: ServerFrame::Member(MemberEvent {
                    pos: Id(pos),
                    conv: info.id,
                    user: id_at(&r, 2),
                    change: change_from_code(r.get(3)),
                    by: id_at(&r, 4),
                    role: r.get::<_, Option<i16>>(5).map(role_from_code),
                    ts: r.get(6),
                    conversation: info.clone(),
                }),
            });
        }
        let stmt = client
            .prepare_cached(
                "SELECT c.conv_id, c.pos, c.seq, c.kind, c.actor, c.created_at, m.id, m.body, m.edited_at
                 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS v(conv_id, lower, upper)
                 JOIN message_changes c ON c.conv_id = v.conv_id AND c.pos > v.lower AND c.pos <= v.upper
                 JOIN messages m ON m.conv_id = c.conv_id AND m.seq = c.seq",
            )
            .await
            .db()?;
        for r in client
            .query(&stmt, &[&convs, &lowers, &uppers])
            .await
            .db()?
        {
            let conv = Id(r.get::<_, i64>(0) as u64);
            let pos = r.get::<_, i64>(1) as u64;
            let seq = r.get::<_, i64>(2) as u64;
            let frame = if r.get::<_, i16>(3) == 0 {
                ServerFrame::Edited(EditedEvent {
                    pos: Id(pos),
                    conv,
                    seq,
                    id: id_at(&r, 6),
                    text: text_at(&r, 7),
                    edited_at: r.get::<_, Option<i64>>(8).unwrap_or(r.get(5)),
                    by: id_at(&r, 4),
                })
            } else {
                ServerFrame::Deleted(DeletedEvent {
                    pos: Id(pos),
                    conv,
                    seq,
                    id: id_at(&r, 6),
                    by: id_at(&r, 4),
                    ts: r.get(5),
                })
            };
            other.push(Event {
                pos,
                recipients: no_recipients(),
                frame,
            });
        }
    }
    Ok((spans, other))
}

/// The next chunk of every wanted cursor, in one statement.
async fn fetch_chunks(
    core: &Core,
    wanted: &[(usize, Span)],
    chunk: u32,
) -> Result<HashMap<usize, Vec<Event>>> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT v.idx, {M_MESSAGE_COLUMNS}
             FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::bigint[]) AS v(idx, conv_id, after, upper)
             CROSS JOIN LATERAL (
                SELECT * FROM messages WHERE conv_id = v.conv_id AND pos > v.after AND pos <= v.upper
                ORDER BY pos LIMIT $5) AS m"
        ))
        .await
        .db()?;
    let (mut idx, mut convs, mut afters, mut uppers) = (
        Vec::with_capacity(wanted.len()),
        Vec::with_capacity(wanted.len()),
        Vec::with_capacity(wanted.len()),
        Vec::with_capacity(wanted.len()),
    );
    for &(i, span) in wanted {
        idx.push(i as i32);
        convs.push(sql_id(span.conv));
        afters.push(clamp(span.after));
        uppers.push(clamp(span.upper));
    }
    let rows = client
        .query(&stmt, &[&idx, &convs, &afters, &uppers, &i64::from(chunk)])
        .await
        .db()?;
    let mut out: HashMap<usize, Vec<Event>> = HashMap::new();
    for r in &rows {
        let index = r.get::<_, i32>(0) as usize;
        let pos = message_pos(r, 1);
        out.entry(index).or_default().push(Event {
            pos,
            recipients: no_recipients(),
            frame: ServerFrame::Message(MessageEvent {
                pos: Id(pos),
                message: message_view(r, 1),
            }),
        });
    }
    for events in out.values_mut() {
        events.sort_by_key(|e| e.pos);
    }
    Ok(out)
}
