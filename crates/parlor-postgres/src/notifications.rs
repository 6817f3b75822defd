//! Notification state: the [`parlor_core::ports::NotificationStore`] port on the
//! cluster's database, next to the memberships and read markers it depends on.
//!
//! # Concurrency
//!
//! Every node runs a notifier and a push sender, so each decision is either one
//! statement or taken under a lock:
//!
//! - **Target limit.** A user's registrations are serialized by a transaction-scoped
//!   advisory lock on the user, so two concurrent registrations cannot both pass the
//!   count. The address is unique across users; a registration of an address inserted
//!   concurrently by someone else turns into a move (`ON CONFLICT … DO UPDATE`).
//! - **Recording.** One transaction per message; the feed's `(user_id, id)` key and the
//!   queue's `(target_id, message_id)` key absorb a redelivery (`ON CONFLICT DO NOTHING`),
//!   including one running at the same time on another node.
//! - **Claiming.** One statement (see [`CLAIM`]) picks, for each (target,
//!   conversation), the newest pending push if it is ready, locks it `FOR UPDATE SKIP
//!   LOCKED`, leases it and retires the older pending ones of the same pair. A node
//!   never waits for another node's claim: it skips the rows that one holds, and the
//!   older rows of a pair whose newest push another node holds are not heads for it
//!   either, so no push is handed to two nodes.
//! - **Moving a target** to another user deletes the queued pushes of its previous
//!   owner: one user's messages must not reach a device that now belongs to someone
//!   else. A `record` racing with the move can still queue one; the claim checks the
//!   owner again and drops such a push instead of sending it.

use crate::codec::{clamp, id_at, sql_id};
use crate::error::DbResult;
use crate::{now_ms, Core};
use deadpool_postgres::GenericClient;
use parlor_core::error::{Error, Result};
use parlor_core::model::{ConvId, UserId};
use parlor_core::notify::{
    Decisions, Mute, NewFeedItem, PushContent, PushDone, PushJob, PushTarget, TargetAddress,
    MAX_TARGETS_PER_USER,
};
use parlor_proto::notify::{NotificationKind, NotificationView};
use parlor_proto::{ErrorCode, Id};
use std::collections::HashSet;
use tokio_postgres::Row;

/// First key of the two-key advisory lock that serializes a user's target registrations
/// (a keyspace apart from the upload quota lock and the one-key migration lock).
const TARGETS_LOCK: i32 = 0x7075_7368;

/// How long finished pushes (sent, superseded, dropped) are kept: a redelivered event
/// within this time still finds them and queues nothing again.
const FINISHED_RETENTION_MS: i64 = 24 * 60 * 60 * 1000;

/// Superseded pushes one claim retires at most. More only wait for the next claim: a
/// push with a newer pending one is never a head meanwhile.
const RETIRE_BATCH: i64 = 1_000;

/// Finished pushes one claim deletes at most, so that the cleanup riding on the claim
/// stays short however much has piled up.
const CLEANUP_BATCH: i64 = 1_000;

/// Second key of a user's registration lock: the id folded to 32 bits. Two users that
/// share a key only wait for each other.
fn user_key(user: UserId) -> i32 {
    (user.0 ^ (user.0 >> 32)) as u32 as i32
}

fn to_json<T: serde::Serialize>(value: &T, what: &'static str) -> Result<String> {
    serde_json::to_string(value).map_err(|e| {
        tracing::error!(error = %e, what, "cannot encode");
        Error::internal()
    })
}

fn kind_from_str(kind: &str) -> NotificationKind {
    match kind {
        "reply" => NotificationKind::Reply,
        _ => NotificationKind::Mention,
    }
}

/// A target from `id, user_id, target, created_at` at `start`; `None` (logged) when its
/// stored address cannot be read, so that one bad row does not hide the others.
fn target_at(row: &Row, start: usize) -> Option<PushTarget> {
    let id = id_at(row, start);
    match serde_json::from_str::<TargetAddress>(row.get(start + 2)) {
        Ok(address) => Some(PushTarget {
            id,
            user: id_at(row, start + 1),
            address,
            created_at: row.get(start + 3),
        }),
        Err(e) => {
            tracing::warn!(error = %e, target = %id, "unreadable push target");
            None
        }
    }
}

async fn is_member(client: &impl GenericClient, user: UserId, conv: ConvId) -> Result<bool> {
    let stmt = client
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM members
                            WHERE conv_id = $1 AND user_id = $2 AND left_pos IS NULL)",
        )
        .await
        .db()?;
    Ok(client
        .query_one(&stmt, &[&sql_id(conv), &sql_id(user)])
        .await
        .db()?
        .get(0))
}

pub async fn register_target(
    core: &Core,
    user: UserId,
    address: TargetAddress,
) -> Result<PushTarget> {
    let json = to_json(&address, "push target")?;
    let kind = address.kind().as_str();
    let mut client = core.db.primary().await?;
    let tx = client.transaction().await.db()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&TARGETS_LOCK, &user_key(user)],
    )
    .await
    .db()?;
    // A known address moves, whoever has it, and does not count against the limit: it
    // is a device registering again (new keys) or changing hands, not a new fan-out.
    let moved = tx
        .prepare_cached(
            "UPDATE push_targets SET user_id = $1, kind = $2, target = $4 WHERE address = $3
             RETURNING id, created_at",
        )
        .await
        .db()?;
    let row = match tx
        .query_opt(&moved, &[&sql_id(user), &kind, &address.address(), &json])
        .await
        .db()?
    {
        Some(row) => row,
        None => {
            let count = tx
                .prepare_cached("SELECT count(*) FROM push_targets WHERE user_id = $1")
                .await
                .db()?;
            let registered: i64 = tx.query_one(&count, &[&sql_id(user)]).await.db()?.get(0);
            if registered >= MAX_TARGETS_PER_USER as i64 {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!(
                        "at most {MAX_TARGETS_PER_USER} push targets per user; remove one first"
                    ),
                ));
            }
            let insert = tx
                .prepare_cached(
                    "INSERT INTO push_targets (user_id, kind, address, target, created_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (address) DO UPDATE
                       SET user_id = EXCLUDED.user_id, kind = EXCLUDED.kind, target = EXCLUDED.target
                     RETURNING id, created_at",
                )
                .await
                .db()?;
            tx.query_one(
                &insert,
                &[&sql_id(user), &kind, &address.address(), &json, &now_ms()],
            )
            .await
            .db()?
        }
    };
    let id: i64 = row.get(0);
    let stale = tx
        .prepare_cached("DELETE FROM push_queue WHERE target_id = $1 AND user_id <> $2")
        .await
        .db()?;
    tx.execute(&stale, &[&id, &sql_id(user)]).await.db()?;
    tx.commit().await.db()?;
    Ok(PushTarget {
        id: Id(id as u64),
        user,
        address,
        created_at: row.get(1),
    })
}

pub async fn targets(core: &Core, user: UserId) -> Result<Vec<PushTarget>> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached(
            "SELECT id, user_id, target, created_at FROM push_targets
             WHERE user_id = $1 ORDER BY id DESC",
        )
        .await
        .db()?;
    Ok(client
        .query(&stmt, &[&sql_id(user)])
        .await
        .db()?
        .iter()
        .filter_map(|r| target_at(r, 0))
        .collect())
}

/// Deleting a target deletes its queued pushes (`ON DELETE CASCADE`).
pub async fn remove_target(core: &Core, user: UserId, id: Id) -> Result<()> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached("DELETE FROM push_targets WHERE id = $1 AND user_id = $2")
        .await
        .db()?;
    if client
        .execute(&stmt, &[&sql_id(id), &sql_id(user)])
        .await
        .db()?
        == 0
    {
        return Err(Error::not_found("push target not found"));
    }
    Ok(())
}

pub async fn prune_target(core: &Core, id: Id) -> Result<()> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached("DELETE FROM push_targets WHERE id = $1")
        .await
        .db()?;
    client.execute(&stmt, &[&sql_id(id)]).await.db()?;
    Ok(())
}

pub async fn set_mute(core: &Core, user: UserId, conv: ConvId, mute: Option<Mute>) -> Result<()> {
    let client = core.db.primary().await?;
    if !is_member(&client, user, conv).await? {
        return Err(Error::not_member());
    }
    match mute {
        Some(mute) => {
            let stmt = client
                .prepare_cached(
                    "INSERT INTO notification_mutes (user_id, conv_id, until, mentions)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (user_id, conv_id) DO UPDATE
                       SET until = EXCLUDED.until, mentions = EXCLUDED.mentions",
                )
                .await
                .db()?;
            client
                .execute(
                    &stmt,
                    &[&sql_id(user), &sql_id(conv), &mute.until, &mute.mentions],
                )
                .await
                .db()?;
        }
        None => {
            let stmt = client
                .prepare_cached(
                    "DELETE FROM notification_mutes WHERE user_id = $1 AND conv_id = $2",
                )
                .await
                .db()?;
            client
                .execute(&stmt, &[&sql_id(user), &sql_id(conv)])
                .await
                .db()?;
        }
    }
    Ok(())
}

pub async fn mute(core: &Core, user: UserId, conv: ConvId) -> Result<Option<Mute>> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached(
            "SELECT until, mentions FROM notification_mutes WHERE user_id = $1 AND conv_id = $2",
        )
        .await
        .db()?;
    Ok(client
        .query_opt(&stmt, &[&sql_id(user), &sql_id(conv)])
        .await
        .db()?
        .map(|r| Mute {
            until: r.get(0),
            mentions: r.get(1),
        }))
}

pub async fn set_dnd(core: &Core, user: UserId, dnd: Option<Option<i64>>) -> Result<()> {
    let client = core.db.primary().await?;
    match dnd {
        Some(until) => {
            let stmt = client
                .prepare_cached(
                    "INSERT INTO notification_dnd (user_id, until) VALUES ($1, $2)
                     ON CONFLICT (user_id) DO UPDATE SET until = EXCLUDED.until",
                )
                .await
                .db()?;
            client.execute(&stmt, &[&sql_id(user), &until]).await.db()?;
        }
        None => {
            let stmt = client
                .prepare_cached("DELETE FROM notification_dnd WHERE user_id = $1")
                .await
                .db()?;
            client.execute(&stmt, &[&sql_id(user)]).await.db()?;
        }
    }
    Ok(())
}

pub async fn dnd(core: &Core, user: UserId) -> Result<Option<Option<i64>>> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached("SELECT until FROM notification_dnd WHERE user_id = $1")
        .await
        .db()?;
    Ok(client
        .query_opt(&stmt, &[&sql_id(user)])
        .await
        .db()?
        .map(|r| r.get(0)))
}

pub async fn settings(
    core: &Core,
    conv: ConvId,
    users: &[UserId],
) -> Result<Vec<parlor_core::notify::RecipientSettings>> {
    if users.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = users.iter().map(|u| sql_id(*u)).collect();
    let client = core.db.primary().await?;
    // `mentions` and the do-not-disturb `user_id` are never NULL in a row, so a NULL
    // there tells "no row" apart from "until NULL".
    let stmt = client
        .prepare_cached(
            "SELECT m.mentions, m.until, d.user_id, d.until
             FROM unnest($2::bigint[]) WITH ORDINALITY AS u(user_id, ord)
             LEFT JOIN notification_mutes m ON m.user_id = u.user_id AND m.conv_id = $1
             LEFT JOIN notification_dnd d ON d.user_id = u.user_id
             ORDER BY u.ord",
        )
        .await
        .db()?;
    Ok(client
        .query(&stmt, &[&sql_id(conv), &ids])
        .await
        .db()?
        .iter()
        .map(|r| {
            let mute = r.get::<_, Option<bool>>(0).map(|mentions| Mute {
                until: r.get(1),
                mentions,
            });
            let dnd = r.get::<_, Option<i64>>(2).map(|_| r.get(3));
            (mute, dnd)
        })
        .collect())
}

pub async fn record(core: &Core, decisions: Decisions, now_ms: i64) -> Result<Vec<NewFeedItem>> {
    let Decisions { feed, pushes } = decisions;
    if feed.is_empty() && pushes.is_empty() {
        return Ok(Vec::new());
    }
    let mut client = core.db.primary().await?;
    let tx = client.transaction().await.db()?;
    let mut inserted = HashSet::new();
    if !feed.is_empty() {
        let mut columns = FeedColumns::default();
        for item in &feed {
            columns.push(item);
        }
        let stmt = tx
            .prepare_cached(
                "INSERT INTO notifications
                   (user_id, id, kind, conv_id, seq, message_id, sender, preview, ts)
                 SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[],
                                      $5::bigint[], $6::bigint[], $7::bigint[], $8::text[],
                                      $9::bigint[])
                 ON CONFLICT (user_id, id) DO NOTHING
                 RETURNING user_id, id",
            )
            .await
            .db()?;
        let rows = tx
            .query(
                &stmt,
                &[
                    &columns.users,
                    &columns.ids,
                    &columns.kinds,
                    &columns.convs,
                    &columns.seqs,
                    &columns.messages,
                    &columns.senders,
                    &columns.previews,
                    &columns.ts,
                ],
            )
            .await
            .db()?;
        inserted.extend(
            rows.iter()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1))),
        );
    }
    if !pushes.is_empty() {
        let mut users = Vec::with_capacity(pushes.len());
        let mut convs = Vec::with_capacity(pushes.len());
        let mut messages = Vec::with_capacity(pushes.len());
        let mut contents = Vec::with_capacity(pushes.len());
        for push in &pushes {
            users.push(sql_id(push.user));
            convs.push(sql_id(push.content.conv));
            messages.push(sql_id(push.content.message));
            contents.push(to_json(&push.content, "push content")?);
        }
        // The targets each user has now: one registered later does not get pushes of
        // messages from before.
        let stmt = tx
            .prepare_cached(
                "INSERT INTO push_queue (user_id, target_id, conv_id, message_id, content,
                                         due_at, created_at)
                 SELECT v.user_id, t.id, v.conv_id, v.message_id, v.content, $5, $5
                 FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[])
                      WITH ORDINALITY AS v(user_id, conv_id, message_id, content, ord)
                 JOIN push_targets t ON t.user_id = v.user_id
                 ORDER BY v.ord, t.id
                 ON CONFLICT (target_id, message_id) DO NOTHING",
            )
            .await
            .db()?;
        tx.execute(&stmt, &[&users, &convs, &messages, &contents, &now_ms])
            .await
            .db()?;
    }
    tx.commit().await.db()?;
    // In the order given; an item repeated within one call was inserted once.
    Ok(feed
        .into_iter()
        .filter(|item| inserted.remove(&(sql_id(item.user), sql_id(item.id))))
        .collect())
}

/// Feed items as the arrays of one `unnest` insert.
#[derive(Default)]
struct FeedColumns {
    users: Vec<i64>,
    ids: Vec<i64>,
    kinds: Vec<&'static str>,
    convs: Vec<i64>,
    seqs: Vec<i64>,
    messages: Vec<i64>,
    senders: Vec<i64>,
    previews: Vec<String>,
    ts: Vec<i64>,
}

impl FeedColumns {
    fn push(&mut self, item: &NewFeedItem) {
        self.users.push(sql_id(item.user));
        self.ids.push(sql_id(item.id));
        self.kinds.push(item.kind.as_str());
        self.convs.push(sql_id(item.conv));
        self.seqs.push(clamp(item.seq));
        self.messages.push(sql_id(item.message));
        self.senders.push(sql_id(item.sender));
        // `text` cannot hold NUL, which an attachment name shown as the preview might.
        self.previews.push(item.preview.replace('\0', " "));
        self.ts.push(item.ts);
    }
}

pub async fn feed(
    core: &Core,
    user: UserId,
    before: Option<Id>,
    limit: u32,
) -> Result<Vec<NotificationView>> {
    let client = core.db.primary().await?;
    // `before` as a bound rather than an `IS NULL OR`, so that the plan is the same
    // backward range scan of the primary key either way.
    let before = before.map_or(i64::MAX, sql_id);
    let stmt = client
        .prepare_cached(
            "SELECT id, kind, conv_id, seq, message_id, sender, preview, ts, read
             FROM notifications WHERE user_id = $1 AND id < $2
             ORDER BY id DESC LIMIT $3",
        )
        .await
        .db()?;
    Ok(client
        .query(&stmt, &[&sql_id(user), &before, &i64::from(limit)])
        .await
        .db()?
        .iter()
        .map(|r| NotificationView {
            id: id_at(r, 0),
            kind: kind_from_str(r.get(1)),
            conv: id_at(r, 2),
            seq: r.get::<_, i64>(3) as u64,
            message: id_at(r, 4),
            sender: id_at(r, 5),
            preview: r.get(6),
            ts: r.get(7),
            read: r.get(8),
        })
        .collect())
}

pub async fn unread_notifications(core: &Core, user: UserId) -> Result<u64> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached("SELECT count(*) FROM notifications WHERE user_id = $1 AND NOT read")
        .await
        .db()?;
    let unread: i64 = client.query_one(&stmt, &[&sql_id(user)]).await.db()?.get(0);
    Ok(unread.max(0) as u64)
}

pub async fn mark_notifications_read(
    core: &Core,
    user: UserId,
    ids: &[Id],
    up_to: Option<Id>,
) -> Result<Vec<Id>> {
    if ids.is_empty() && up_to.is_none() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = ids.iter().map(|id| sql_id(*id)).collect();
    let client = core.db.primary().await?;
    // A NULL `up_to` makes `id <= $3` NULL, which selects nothing.
    let stmt = client
        .prepare_cached(
            "UPDATE notifications SET read = true
             WHERE user_id = $1 AND NOT read AND (id = ANY($2) OR id <= $3)
             RETURNING id",
        )
        .await
        .db()?;
    let mut changed: Vec<Id> = client
        .query(&stmt, &[&sql_id(user), &ids, &up_to.map(sql_id)])
        .await
        .db()?
        .iter()
        .map(|r| id_at(r, 0))
        .collect();
    changed.sort_unstable();
    Ok(changed)
}

/// The sum of what `conversations()` shows as each conversation's `unread`.
pub async fn unread_messages(core: &Core, user: UserId) -> Result<u64> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached(
            "SELECT COALESCE(SUM(GREATEST(c.last_seq - m.read_seq, 0)), 0)::bigint
             FROM members m JOIN conversations c ON c.id = m.conv_id
             WHERE m.user_id = $1 AND m.left_pos IS NULL",
        )
        .await
        .db()?;
    let unread: i64 = client.query_one(&stmt, &[&sql_id(user)]).await.db()?.get(0);
    Ok(unread.max(0) as u64)
}

/// A pending push is ready when it is due and not leased (or its lease ran out): both
/// at once are `GREATEST(due_at, lease_until) <= now`, which `push_queue_ready` indexes.
///
/// `heads` are the ready pushes with no newer pending push of the same (target,
/// conversation): only the newest is ever sent. `older` are the pending pushes, not
/// being sent, that a newer pending push of their pair makes pointless (whether that
/// one is due now, waiting for a retry or being sent), retired as `superseded`; an older
/// push retrying later would otherwise replace the newer one on the device. Both lock
/// with `SKIP LOCKED`, so a node never waits for another node's claim, and a push held
/// by one node is neither a head nor retired for the other. The heads are leased and
/// come back with their targets, so that the caller can check the owner.
///
/// Every scan here walks pending rows only, through the partial indexes, never the
/// finished ones kept for a day: heads longest-ready first along `push_queue_ready`
/// (handed out in id order all the same), the retired ones along `push_queue_collapse`
/// or `push_queue_ready`, in no particular order since `SKIP LOCKED` never waits and so
/// needs no lock order. `= ANY (ARRAY (…))` keeps the updates to primary-key lookups,
/// where `IN (…)` may be planned as a scan of the whole queue.
const CLAIM: &str = "
    WITH heads AS MATERIALIZED (
        SELECT q.id FROM push_queue q
        WHERE q.state = 'pending' AND GREATEST(q.due_at, q.lease_until) <= $1
          AND NOT EXISTS (
              SELECT 1 FROM push_queue n
              WHERE n.target_id = q.target_id AND n.conv_id = q.conv_id AND n.id > q.id
                AND n.state = 'pending')
        ORDER BY GREATEST(q.due_at, q.lease_until), q.id LIMIT $3
        FOR UPDATE SKIP LOCKED
    ),
    older AS (
        SELECT o.id FROM push_queue o
        WHERE o.state = 'pending' AND (o.lease_until IS NULL OR o.lease_until <= $1)
          AND EXISTS (
              SELECT 1 FROM push_queue n
              WHERE n.target_id = o.target_id AND n.conv_id = o.conv_id AND n.id > o.id
                AND n.state = 'pending')
        LIMIT $4
        FOR UPDATE SKIP LOCKED
    ),
    retired AS (
        UPDATE push_queue SET state = 'superseded' WHERE id = ANY (ARRAY (SELECT id FROM older))
    ),
    claimed AS (
        UPDATE push_queue q SET lease_until = $2, attempts = q.attempts + 1
        FROM heads h WHERE q.id = h.id
        RETURNING q.id, q.user_id, q.target_id, q.content, q.attempts
    )
    SELECT c.id, c.user_id, c.content, c.attempts, t.id, t.user_id, t.target, t.created_at
    FROM claimed c JOIN push_targets t ON t.id = c.target_id
    ORDER BY c.id";

pub async fn claim_pushes(
    core: &Core,
    now_ms: i64,
    lease_ms: i64,
    limit: u32,
) -> Result<Vec<PushJob>> {
    let client = core.db.primary().await?;
    let mut jobs = Vec::new();
    if limit > 0 {
        let stmt = client.prepare_cached(CLAIM).await.db()?;
        let lease_until = now_ms.saturating_add(lease_ms.max(0));
        let rows = client
            .query(
                &stmt,
                &[&now_ms, &lease_until, &i64::from(limit), &RETIRE_BATCH],
            )
            .await
            .db()?;
        let mut broken = Vec::new();
        for row in &rows {
            let id = id_at(row, 0);
            let content = serde_json::from_str::<PushContent>(row.get(2))
                .inspect_err(|e| tracing::warn!(error = %e, push = %id, "unreadable queued push"))
                .ok();
            match (content, target_at(row, 4)) {
                // An owner other than the push's: the target changed hands while the
                // push was being recorded (see the module docs).
                (Some(content), Some(target)) if target.user == id_at(row, 1) => {
                    jobs.push(PushJob {
                        id,
                        target,
                        content,
                        attempts: (row.get::<_, i32>(3) - 1).max(0) as u32,
                    })
                }
                _ => broken.push(sql_id(id)),
            }
        }
        if !broken.is_empty() {
            // Outside the claim's statement: should this fail, the lease runs out and the
            // next claim finds the same pushes and drops them then.
            let stmt = client
                .prepare_cached(
                    "UPDATE push_queue SET state = 'dropped', lease_until = NULL
                     WHERE id = ANY($1)",
                )
                .await
                .db()?;
            client.execute(&stmt, &[&broken]).await.db()?;
        }
    }
    let cleanup = client
        .prepare_cached(
            "DELETE FROM push_queue WHERE id = ANY (ARRAY (
                SELECT id FROM push_queue WHERE state <> 'pending' AND created_at < $1
                ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED))",
        )
        .await
        .db()?;
    client
        .execute(
            &cleanup,
            &[
                &now_ms.saturating_sub(FINISHED_RETENTION_MS),
                &CLEANUP_BATCH,
            ],
        )
        .await
        .db()?;
    Ok(jobs)
}

/// A retry applies only to a push still pending: one retired or finished meanwhile (its
/// lease ran out and another node took it) must not be queued again.
pub async fn finish_push(core: &Core, id: Id, done: PushDone) -> Result<()> {
    let client = core.db.primary().await?;
    let id = sql_id(id);
    match done {
        PushDone::Sent | PushDone::Dropped => {
            let state = if done == PushDone::Sent {
                "sent"
            } else {
                "dropped"
            };
            let stmt = client
                .prepare_cached(
                    "UPDATE push_queue SET state = $2, lease_until = NULL WHERE id = $1",
                )
                .await
                .db()?;
            client.execute(&stmt, &[&id, &state]).await.db()?;
        }
        PushDone::RetryAt(at) => {
            let stmt = client
                .prepare_cached(
                    "UPDATE push_queue SET due_at = $2, lease_until = NULL
                     WHERE id = $1 AND state = 'pending'",
                )
                .await
                .db()?;
            client.execute(&stmt, &[&id, &at]).await.db()?;
        }
    }
    Ok(())
}

pub async fn next_push_due(core: &Core) -> Result<Option<i64>> {
    let client = core.db.primary().await?;
    let stmt = client
        .prepare_cached(
            "SELECT min(GREATEST(due_at, lease_until)) FROM push_queue WHERE state = 'pending'",
        )
        .await
        .db()?;
    Ok(client.query_one(&stmt, &[]).await.db()?.get(0))
}
