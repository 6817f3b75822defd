//! Edits, deletes, read and delivery markers, history and receipts. Appends are the
//! batch writer's (`writer.rs`).

use crate::codec::*;
use crate::conversations::{current_members, lock, refusal};
use crate::error::DbResult;
use crate::{event_log, now_ms, search, Core};
use parlor_core::error::{Error, Result};
use parlor_core::model::*;
use parlor_proto::rest::{
    ConversationKind, History, MessageView, Receipt, Receipts, Role, SeqCount,
};
use parlor_proto::ws::{DeletedEvent, DeliveredEvent, EditedEvent, ReadEvent, ServerFrame};
use parlor_proto::{ErrorCode, Id};
use std::sync::Arc;

pub async fn mark_read(core: &Core, user: UserId, conv: ConvId, seq: u64) -> Result<u64> {
    let mut client = core.db.primary().await?;
    let tx = client.transaction().await.db()?;
    let locked = lock(&tx, conv)
        .await?
        .ok_or_else(|| Error::not_found("conversation not found"))?;
    let members = current_members(&tx, conv).await?;
    if !members.iter().any(|m| m.user == user) {
        return Err(Error::not_member());
    }
    if seq > locked.last_seq {
        return Err(Error::new(
            ErrorCode::BadRequest,
            "cannot mark read beyond the last message",
        ));
    }
    let current: i64 = tx
        .query_one(
            "SELECT read_seq FROM members WHERE conv_id = $1 AND user_id = $2",
            &[&sql_id(conv), &sql_id(user)],
        )
        .await
        .db()?
        .get(0);
    if seq <= current as u64 {
        return Ok(current as u64);
    }
    let positions = core.take_positions(&tx, 1).await?;
    let pos = positions.first;
    tx.execute(
        "UPDATE members SET read_seq = $3, read_pos = $4 WHERE conv_id = $1 AND user_id = $2",
        &[&sql_id(conv), &sql_id(user), &clamp(seq), &clamp(pos)],
    )
    .await
    .db()?;
    let mut recipients: Vec<UserId> = members.iter().map(|m| m.user).collect();
    recipients.sort_unstable();
    let events = vec![Event {
        pos,
        recipients: recipients.into(),
        frame: ServerFrame::Read(ReadEvent {
            pos: Id(pos),
            conv,
            user,
            seq,
        }),
    }];
    event_log::append(&tx, &events).await?;
    core.commit(tx, positions, events).await?;
    Ok(seq)
}

/// Delivery markers are live-only (position 0): one conditional update, no lock on the
/// conversation, then a live event to the current members.
pub async fn mark_delivered(core: &Core, user: UserId, conv: ConvId, seq: u64) -> Result<u64> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached(
            "SELECT c.last_seq, m.delivered_seq,
                    ARRAY(SELECT user_id FROM members WHERE conv_id = $1 AND left_pos IS NULL ORDER BY user_id)
             FROM conversations c LEFT JOIN members m
               ON m.conv_id = c.id AND m.user_id = $2 AND m.left_pos IS NULL
             WHERE c.id = $1",
        )
        .await
        .db()?;
    let row = client
        .query_opt(&stmt, &[&sql_id(conv), &sql_id(user)])
        .await
        .db()?
        .ok_or_else(|| Error::not_found("conversation not found"))?;
    let last_seq = row.get::<_, i64>(0) as u64;
    let Some(current) = row.get::<_, Option<i64>>(1) else {
        return Err(Error::not_member());
    };
    let recipients: Vec<i64> = row.get(2);
    if seq > last_seq {
        return Err(Error::new(
            ErrorCode::BadRequest,
            "cannot mark delivered beyond the last message",
        ));
    }
    if seq <= current as u64 {
        return Ok(current as u64);
    }
    let stmt = client
        .prepare_cached(
            "UPDATE members SET delivered_seq = GREATEST(delivered_seq, $3)
             WHERE conv_id = $1 AND user_id = $2 RETURNING delivered_seq",
        )
        .await
        .db()?;
    let row = client
        .query_one(&stmt, &[&sql_id(conv), &sql_id(user), &clamp(seq)])
        .await
        .db()?;
    let now = row.get::<_, i64>(0) as u64;
    if now == seq {
        core.bus.publish(Arc::from(vec![Event {
            pos: 0,
            recipients: recipients.into_iter().map(|u| Id(u as u64)).collect(),
            frame: ServerFrame::Delivered(DeliveredEvent { conv, user, seq }),
        }]));
    }
    Ok(now)
}

/// The acting member's role and the current members (recipients), under the lock.
async fn member_state(
    tx: &deadpool_postgres::Transaction<'_>,
    actor: UserId,
    conv: ConvId,
) -> Result<(Role, Arc<[UserId]>, ConversationKind)> {
    let locked = lock(tx, conv)
        .await?
        .ok_or_else(|| Error::not_found("conversation not found"))?;
    let members = current_members(tx, conv).await?;
    let role = members
        .iter()
        .find(|m| m.user == actor)
        .map(|m| m.role)
        .ok_or_else(Error::not_member)?;
    let mut users: Vec<UserId> = members.iter().map(|m| m.user).collect();
    users.sort_unstable();
    Ok((role, users.into(), locked.info.kind))
}

/// Message `seq` as edits and deletes need it.
struct Stored {
    id: u64,
    sender: UserId,
    deleted: bool,
    pos: i64,
    /// Whether it carries attachments (then `attachment_refs` has rows for it).
    attached: bool,
}

async fn message_row(
    tx: &deadpool_postgres::Transaction<'_>,
    conv: ConvId,
    seq: u64,
) -> Result<Stored> {
    let row = tx
        .query_opt(
            "SELECT id, sender, deleted, pos, attachments IS NOT NULL
             FROM messages WHERE conv_id = $1 AND seq = $2",
            &[&sql_id(conv), &clamp(seq)],
        )
        .await
        .db()?
        .ok_or_else(|| Error::not_found("message not found"))?;
    Ok(Stored {
        id: row.get::<_, i64>(0) as u64,
        sender: id_at(&row, 1),
        deleted: row.get(2),
        pos: row.get(3),
        attached: row.get(4),
    })
}

async fn record_change(
    tx: &deadpool_postgres::Transaction<'_>,
    pos: u64,
    conv: ConvId,
    seq: u64,
    kind: i16,
    actor: UserId,
    at: i64,
) -> Result<()> {
    tx.execute(
        "INSERT INTO message_changes (pos, conv_id, seq, kind, actor, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&clamp(pos), &sql_id(conv), &clamp(seq), &kind, &sql_id(actor), &at],
    )
    .await
    .db()?;
    Ok(())
}

pub async fn edit(
    core: &Core,
    actor: UserId,
    conv: ConvId,
    seq: u64,
    text: String,
) -> Result<MessageView> {
    // Tokenized before the transaction: nothing slow happens under the locks.
    let tsv = search::tsvector(&text);
    let mut client = core.db.primary().await?;
    let tx = client.transaction().await.db()?;
    let (_, recipients, _) = member_state(&tx, actor, conv).await?;
    let Stored {
        id,
        sender,
        deleted,
        ..
    } = message_row(&tx, conv, seq).await?;
    parlor_core::rules::may_edit(actor, sender, deleted)?;
    let at = now_ms();
    let positions = core.take_positions(&tx, 1).await?;
    let pos = positions.first;
    let row = tx
        .query_one(
            &format!(
                "UPDATE messages SET body = $3, edited_at = $4, tsv = $5::text::tsvector
                 WHERE conv_id = $1 AND seq = $2 RETURNING {MESSAGE_COLUMNS}"
            ),
            &[&sql_id(conv), &clamp(seq), &text.as_bytes(), &at, &tsv],
        )
        .await
        .db()?;
    let view = message_view(&row, 0);
    record_change(&tx, pos, conv, seq, 0, actor, at).await?;
    let events = vec![Event {
        pos,
        recipients,
        frame: ServerFrame::Edited(EditedEvent {
            pos: Id(pos),
            conv,
            seq,
            id: Id(id),
            text,
            edited_at: at,
            by: actor,
        }),
    }];
    event_log::append(&tx, &events).await?;
    core.commit(tx, positions, events).await?;
    Ok(view)
}

pub async fn delete(core: &Core, actor: UserId, conv: ConvId, seq: u64) -> Result<()> {
    let mut client = core.db.primary().await?;
    let tx = client.transaction().await.db()?;
    let (role, recipients, kind) = member_state(&tx, actor, conv).await?;
    let Stored {
        id,
        sender,
        deleted,
        pos: message_pos,
        attached,
    } = message_row(&tx, conv, seq).await?;
    let moderator = kind == ConversationKind::Group && matches!(role, Role::Owner | Role::Admin);
    if sender != actor && !moderator {
        return Err(Error::forbidden(
            "only the sender, or a group's owner and admins, can delete a message",
        ));
    }
    if deleted {
        return Ok(());
    }
    let at = now_ms();
    // The text leaves the store: a tombstone keeps only who and when; the search vector,
    // the mentions and the logged events that carried the text go too.
    tx.execute(
        "DELETE FROM mentions WHERE conv_id = $1 AND seq = $2
           AND user_id = ANY(COALESCE((SELECT mentions FROM messages WHERE conv_id = $1 AND seq = $2), '{}'))",
        &[&sql_id(conv), &clamp(seq)],
    )
    .await
    .db()?;
    tx.execute(
        "UPDATE messages SET body = ''::bytea, mentions = NULL, mention_all = false, reply_to = NULL,
                deleted = true, tsv = NULL, attachments = NULL
         WHERE conv_id = $1 AND seq = $2",
        &[&sql_id(conv), &clamp(seq)],
    )
    .await
    .db()?;
    if attached {
        // The files stop being reachable through this message. Each upload it carried is
        // marked, so that garbage collection looks at it (and keeps it if another message
        // still carries it); the upload rows are locked after the conversation, as the
        // writer locks them.
        tx.execute(
            "WITH gone AS (DELETE FROM attachment_refs WHERE conv_id = $1 AND seq = $2
                           RETURNING upload_id)
             UPDATE uploads SET detached_at = $3 WHERE id IN (SELECT upload_id FROM gone)",
            &[&sql_id(conv), &clamp(seq), &at],
        )
        .await
        .db()?;
    }
    let mut logged: Vec<i64> = tx
        .query(
            "SELECT pos FROM message_changes WHERE conv_id = $1 AND seq = $2 AND kind = 0",
            &[&sql_id(conv), &clamp(seq)],
        )
        .await
        .db()?
        .iter()
        .map(|r| r.get(0))
        .collect();
    logged.push(message_pos);
    event_log::scrub(&tx, &logged).await?;
    let positions = core.take_positions(&tx, 1).await?;
    let pos = positions.first;
    record_change(&tx, pos, conv, seq, 1, actor, at).await?;
    let events = vec![Event {
        pos,
        recipients,
        frame: ServerFrame::Deleted(DeletedEvent {
            pos: Id(pos),
            conv,
            seq,
            id: Id(id),
            by: actor,
            ts: at,
        }),
    }];
    event_log::append(&tx, &events).await?;
    core.commit(tx, positions, events).await
}

pub async fn history(core: &Core, viewer: UserId, conv: ConvId, page: Page) -> Result<History> {
    let client = core.db.replica().await?;
    let stmt = client
        .prepare_cached("SELECT left_seq FROM members WHERE conv_id = $1 AND user_id = $2")
        .await
        .db()?;
    let membership = client
        .query_opt(&stmt, &[&sql_id(conv), &sql_id(viewer)])
        .await
        .db()?;
    let Some(membership) = membership else {
        return Err(refusal(&client, conv).await?);
    };
    let bound = membership.get::<_, Option<i64>>(0).unwrap_or(i64::MAX);
    let (condition, anchor, limit, descending) = match page {
        Page::Latest { limit } => ("seq <= $2 ORDER BY seq DESC", i64::MAX, limit, true),
        Page::Before { before, limit } => (
            "seq < $4 AND seq <= $2 ORDER BY seq DESC",
            clamp(before),
            limit,
            true,
        ),
        Page::After { after, limit } => (
            "seq > $4 AND seq <= $2 ORDER BY seq ASC",
            clamp(after),
            limit,
            false,
        ),
    };
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE conv_id = $1 AND $4::bigint IS NOT NULL AND {condition} LIMIT $3"
        ))
        .await
        .db()?;
    let fetch = i64::from(limit) + 1;
    let rows = client
        .query(&stmt, &[&sql_id(conv), &bound, &fetch, &anchor])
        .await
        .db()?;
    let mut messages: Vec<MessageView> = rows.iter().map(|r| message_view(r, 0)).collect();
    let has_more = messages.len() > limit as usize;
    messages.truncate(limit as usize);
    if descending {
        messages.reverse();
    }
    Ok(History { messages, has_more })
}

pub async fn receipts(core: &Core, viewer: UserId, conv: ConvId) -> Result<Receipts> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached(
            "SELECT user_id, delivered_seq, read_seq FROM members
             WHERE conv_id = $1 AND left_pos IS NULL ORDER BY user_id",
        )
        .await
        .db()?;
    let receipts: Vec<Receipt> = client
        .query(&stmt, &[&sql_id(conv)])
        .await
        .db()?
        .iter()
        .map(|r| Receipt {
            user: id_at(r, 0),
            delivered_seq: r.get::<_, i64>(1) as u64,
            read_seq: r.get::<_, i64>(2) as u64,
        })
        .collect();
    if !receipts.iter().any(|r| r.user == viewer) {
        return Err(refusal(&client, conv).await?);
    }
    let stmt = client
        .prepare_cached("SELECT last_seq FROM conversations WHERE id = $1")
        .await
        .db()?;
    let last_seq = client
        .query_opt(&stmt, &[&sql_id(conv)])
        .await
        .db()?
        .map_or(0, |r| r.get::<_, i64>(0) as u64);
    // "Read by N": for each of the newest messages, the other members whose marker is at
    // or past it (the sender's own marker does not count).
    let stmt = client
        .prepare_cached(
            "SELECT seq, sender FROM messages WHERE conv_id = $1 AND seq > $2 ORDER BY seq",
        )
        .await
        .db()?;
    let read_counts = client
        .query(&stmt, &[&sql_id(conv), &clamp(last_seq.saturating_sub(50))])
        .await
        .db()?
        .iter()
        .map(|r| {
            let seq = r.get::<_, i64>(0) as u64;
            let sender = id_at(r, 1);
            SeqCount {
                seq,
                read_by: receipts
                    .iter()
                    .filter(|x| x.user != sender && x.read_seq >= seq)
                    .count() as u32,
            }
        })
        .collect();
    Ok(Receipts {
        conv,
        last_seq,
        receipts,
        read_counts,
    })
}
