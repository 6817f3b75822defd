//! Notification state in its own file, `notifications.db`: push targets, mutes,
//! do-not-disturb, the in-app feed, the push queue and the durable work cursor.
//!
//! A separate file has its own write lock, so recording decisions and claiming pushes
//! never wait for (or delay) the message writer. What it needs from the main database
//! (membership, read markers) it reads through the read pool.

use super::reader::{db_err, ReadPool};
use parking_lot::Mutex;
use parlor_core::error::{Error, Result};
use parlor_core::model::{ConvId, UserId};
use parlor_core::notify::{
    Decisions, Mute, NewFeedItem, PushContent, PushDone, PushJob, PushTarget, TargetAddress,
    MAX_TARGETS_PER_USER,
};
use parlor_proto::notify::{NotificationKind, NotificationView};
use parlor_proto::{ErrorCode, Id};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::Path;
use std::sync::Arc;

pub const NOTIFY_FILE: &str = "notifications.db";

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS push_targets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused: a pruned id stays dead
    user_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    address TEXT NOT NULL UNIQUE,
    target TEXT NOT NULL,                   -- the TargetAddress as JSON (keys, secret)
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS push_targets_by_user ON push_targets(user_id);
CREATE TABLE IF NOT EXISTS mutes (
    user_id INTEGER NOT NULL,
    conv_id INTEGER NOT NULL,
    until INTEGER,                          -- NULL: until unmuted
    mentions INTEGER NOT NULL,
    PRIMARY KEY (user_id, conv_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dnd (
    user_id INTEGER PRIMARY KEY,
    until INTEGER
);
CREATE TABLE IF NOT EXISTS feed (
    user_id INTEGER NOT NULL,
    id INTEGER NOT NULL,                    -- the message id: one item per user and message
    kind TEXT NOT NULL,
    conv_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    message INTEGER NOT NULL,
    sender INTEGER NOT NULL,
    preview TEXT NOT NULL,
    ts INTEGER NOT NULL,
    read INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS feed_unread ON feed(user_id, id) WHERE read = 0;
CREATE TABLE IF NOT EXISTS push_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id INTEGER NOT NULL,
    target_id INTEGER NOT NULL,
    conv_id INTEGER NOT NULL,
    message INTEGER NOT NULL,
    content TEXT NOT NULL,                  -- PushContent as JSON
    state INTEGER NOT NULL DEFAULT 0,       -- 0 pending, 1 sent, 2 superseded, 3 dropped
    due_at INTEGER NOT NULL,
    lease_until INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    UNIQUE (message, target_id)
);
CREATE INDEX IF NOT EXISTS push_pending ON push_queue(due_at) WHERE state = 0;
CREATE INDEX IF NOT EXISTS push_by_target ON push_queue(target_id, conv_id, id) WHERE state = 0;
CREATE INDEX IF NOT EXISTS push_finished ON push_queue(created_at) WHERE state <> 0;
CREATE TABLE IF NOT EXISTS work_cursors (
    name TEXT PRIMARY KEY,
    pos INTEGER NOT NULL
);
"#;

const PENDING: i64 = 0;
const SENT: i64 = 1;
const DROPPED: i64 = 3;

/// Finished pushes are kept this long, so that an event redelivered within it (a
/// restart, a JetStream redelivery) still finds its push and does not queue it again.
const KEEP_FINISHED_MS: i64 = 24 * 3600 * 1000;

pub struct NotifyDb {
    conn: Arc<Mutex<Connection>>,
}

impl NotifyDb {
    pub fn open(dir: &Path) -> anyhow::Result<NotifyDb> {
        let path = dir.join(NOTIFY_FILE);
        let conn = super::open::read_write(&path)
            .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(SCHEMA)?;
        Ok(NotifyDb {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection on a blocking thread.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || f(&mut conn.lock()).map_err(db_err))
            .await
            .map_err(|_| Error::unavailable())?
    }

    /// Like [`NotifyDb::run`], for work that can fail with a domain error.
    pub async fn try_run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || f(&mut conn.lock()))
            .await
            .map_err(|_| Error::unavailable())?
    }
}

fn id(row: &Row<'_>, index: usize) -> rusqlite::Result<Id> {
    Ok(Id(row.get::<_, i64>(index)? as u64))
}

fn target_row(row: &Row<'_>) -> rusqlite::Result<Option<PushTarget>> {
    let json: String = row.get(2)?;
    let Ok(address) = serde_json::from_str::<TargetAddress>(&json) else {
        tracing::warn!("unreadable push target row, skipped");
        return Ok(None);
    };
    Ok(Some(PushTarget {
        id: id(row, 0)?,
        user: id(row, 1)?,
        address,
        created_at: row.get(3)?,
    }))
}

pub fn register_target(
    conn: &mut Connection,
    user: UserId,
    address: &TargetAddress,
    now_ms: i64,
) -> Result<PushTarget> {
    let json = serde_json::to_string(address).map_err(|_| Error::internal())?;
    let tx = conn.transaction().map_err(db_err)?;
    let existing: Option<i64> = tx
        .query_row(
            "SELECT id FROM push_targets WHERE address = ?1",
            [address.address()],
            |r| r.get(0),
        )
        .optional()
        .map_err(db_err)?;
    let target_id = match existing {
        Some(target_id) => {
            // A device that changed hands must not receive the previous owner's pushes.
            tx.execute(
                "DELETE FROM push_queue WHERE target_id = ?1 AND user_id <> ?2",
                params![target_id, user.0 as i64],
            )
            .map_err(db_err)?;
            tx.execute(
                "UPDATE push_targets SET user_id = ?2, target = ?3 WHERE id = ?1",
                params![target_id, user.0 as i64, json],
            )
            .map_err(db_err)?;
            target_id
        }
        None => {
            let count: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM push_targets WHERE user_id = ?1",
                    [user.0 as i64],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            if count as usize >= MAX_TARGETS_PER_USER {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!(
                        "at most {MAX_TARGETS_PER_USER} push targets per user; remove one first"
                    ),
                ));
            }
            tx.execute(
                "INSERT INTO push_targets (user_id, kind, address, target, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![user.0 as i64, address.kind().as_str(), address.address(), json, now_ms],
            )
            .map_err(db_err)?;
            tx.last_insert_rowid()
        }
    };
    let target = tx
        .query_row(
            "SELECT id, user_id, target, created_at FROM push_targets WHERE id = ?1",
            [target_id],
            target_row,
        )
        .map_err(db_err)?
        .ok_or_else(Error::internal)?;
    tx.commit().map_err(db_err)?;
    Ok(target)
}

pub fn targets(conn: &Connection, user: UserId) -> rusqlite::Result<Vec<PushTarget>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, user_id, target, created_at FROM push_targets WHERE user_id = ?1 ORDER BY id DESC",
    )?;
    let rows = stmt.query_map([user.0 as i64], target_row)?;
    Ok(rows.filter_map(|r| r.ok().flatten()).collect())
}

/// Deletes a target and its queued pushes; `false` when there was none (for `user`, if given).
pub fn delete_target(
    conn: &mut Connection,
    id: Id,
    user: Option<UserId>,
) -> rusqlite::Result<bool> {
    let tx = conn.transaction()?;
    let deleted = match user {
        Some(user) => tx.execute(
            "DELETE FROM push_targets WHERE id = ?1 AND user_id = ?2",
            params![id.0 as i64, user.0 as i64],
        )?,
        None => tx.execute("DELETE FROM push_targets WHERE id = ?1", [id.0 as i64])?,
    };
    if deleted > 0 {
        tx.execute("DELETE FROM push_queue WHERE target_id = ?1", [id.0 as i64])?;
    }
    tx.commit()?;
    Ok(deleted > 0)
}

pub fn set_mute(
    conn: &Connection,
    user: UserId,
    conv: ConvId,
    mute: Option<Mute>,
) -> rusqlite::Result<()> {
    match mute {
        Some(m) => conn.execute(
            "INSERT INTO mutes (user_id, conv_id, until, mentions) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user_id, conv_id) DO UPDATE SET until = excluded.until, mentions = excluded.mentions",
            params![user.0 as i64, conv.0 as i64, m.until, m.mentions],
        )?,
        None => conn.execute(
            "DELETE FROM mutes WHERE user_id = ?1 AND conv_id = ?2",
            params![user.0 as i64, conv.0 as i64],
        )?,
    };
    Ok(())
}

pub fn mute(conn: &Connection, user: UserId, conv: ConvId) -> rusqlite::Result<Option<Mute>> {
    conn.prepare_cached("SELECT until, mentions FROM mutes WHERE user_id = ?1 AND conv_id = ?2")?
        .query_row(params![user.0 as i64, conv.0 as i64], |r| {
            Ok(Mute {
                until: r.get(0)?,
                mentions: r.get(1)?,
            })
        })
        .optional()
}

pub fn set_dnd(conn: &Connection, user: UserId, dnd: Option<Option<i64>>) -> rusqlite::Result<()> {
    match dnd {
        Some(until) => conn.execute(
            "INSERT INTO dnd (user_id, until) VALUES (?1, ?2)
             ON CONFLICT (user_id) DO UPDATE SET until = excluded.until",
            params![user.0 as i64, until],
        )?,
        None => conn.execute("DELETE FROM dnd WHERE user_id = ?1", [user.0 as i64])?,
    };
    Ok(())
}

pub fn dnd(conn: &Connection, user: UserId) -> rusqlite::Result<Option<Option<i64>>> {
    conn.prepare_cached("SELECT until FROM dnd WHERE user_id = ?1")?
        .query_row([user.0 as i64], |r| r.get::<_, Option<i64>>(0))
        .optional()
}

pub fn settings(
    conn: &Connection,
    conv: ConvId,
    users: &[UserId],
) -> rusqlite::Result<Vec<parlor_core::notify::RecipientSettings>> {
    let mut out = Vec::with_capacity(users.len());
    for user in users {
        out.push((mute(conn, *user, conv)?, dnd(conn, *user)?));
    }
    Ok(out)
}

pub fn record(
    conn: &mut Connection,
    decisions: &Decisions,
    now_ms: i64,
) -> rusqlite::Result<Vec<NewFeedItem>> {
    let tx = conn.transaction()?;
    let mut added = Vec::new();
    {
        let mut feed = tx.prepare_cached(
            "INSERT INTO feed (user_id, id, kind, conv_id, seq, message, sender, preview, ts)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT DO NOTHING",
        )?;
        for item in &decisions.feed {
            let n = feed.execute(params![
                item.user.0 as i64,
                item.id.0 as i64,
                item.kind.as_str(),
                item.conv.0 as i64,
                item.seq as i64,
                item.message.0 as i64,
                item.sender.0 as i64,
                item.preview,
                item.ts
            ])?;
            if n > 0 {
                added.push(item.clone());
            }
        }
        let mut push = tx.prepare_cached(
            "INSERT INTO push_queue (user_id, target_id, conv_id, message, content, due_at, created_at)
             SELECT ?1, id, ?2, ?3, ?4, ?5, ?5 FROM push_targets WHERE user_id = ?1
             ON CONFLICT (message, target_id) DO NOTHING",
        )?;
        for p in &decisions.pushes {
            let content = serde_json::to_string(&p.content).unwrap_or_default();
            push.execute(params![
                p.user.0 as i64,
                p.content.conv.0 as i64,
                p.content.message.0 as i64,
                content,
                now_ms
            ])?;
        }
    }
    tx.commit()?;
    Ok(added)
}

fn kind_from(text: &str) -> NotificationKind {
    if text == "reply" {
        NotificationKind::Reply
    } else {
        NotificationKind::Mention
    }
}

pub fn feed(
    conn: &Connection,
    user: UserId,
    before: Option<Id>,
    limit: u32,
) -> rusqlite::Result<Vec<NotificationView>> {
    let before = before.map_or(i64::MAX, |b| b.0 as i64);
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, conv_id, seq, message, sender, preview, ts, read FROM feed
         WHERE user_id = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![user.0 as i64, before, limit], |r| {
        Ok(NotificationView {
            id: id(r, 0)?,
            kind: kind_from(&r.get::<_, String>(1)?),
            conv: id(r, 2)?,
            seq: r.get::<_, i64>(3)? as u64,
            message: id(r, 4)?,
            sender: id(r, 5)?,
            preview: r.get(6)?,
            ts: r.get(7)?,
            read: r.get(8)?,
        })
    })?;
    rows.collect()
}

pub fn unread_notifications(conn: &Connection, user: UserId) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT COUNT(*) FROM feed WHERE user_id = ?1 AND read = 0")?
        .query_row([user.0 as i64], |r| r.get::<_, i64>(0))
        .map(|n| n as u64)
}

pub fn mark_read(
    conn: &mut Connection,
    user: UserId,
    ids: &[Id],
    up_to: Option<Id>,
) -> rusqlite::Result<Vec<Id>> {
    let tx = conn.transaction()?;
    let mut changed = Vec::new();
    {
        let mut one = tx.prepare_cached(
            "UPDATE feed SET read = 1 WHERE user_id = ?1 AND id = ?2 AND read = 0 RETURNING id",
        )?;
        for i in ids {
            if let Some(v) = one
                .query_row(params![user.0 as i64, i.0 as i64], |r| r.get::<_, i64>(0))
                .optional()?
            {
                changed.push(Id(v as u64));
            }
        }
        if let Some(up_to) = up_to {
            let mut all = tx.prepare_cached(
                "UPDATE feed SET read = 1 WHERE user_id = ?1 AND id <= ?2 AND read = 0 RETURNING id",
            )?;
            let rows = all.query_map(params![user.0 as i64, up_to.0 as i64], |r| {
                r.get::<_, i64>(0)
            })?;
            for v in rows {
                changed.push(Id(v? as u64));
            }
        }
    }
    tx.commit()?;
    changed.sort_unstable();
    changed.dedup();
    Ok(changed)
}

pub fn claim(
    conn: &mut Connection,
    now_ms: i64,
    lease_ms: i64,
    limit: u32,
) -> Result<Vec<PushJob>> {
    let tx = conn.transaction().map_err(db_err)?;
    let mut jobs = Vec::new();
    {
        // Pushes of one conversation collapse: a pending push with a newer one queued
        // for the same target is retired, unless it is being sent right now.
        tx.prepare_cached(
            "UPDATE push_queue SET state = 2
             WHERE state = 0 AND COALESCE(lease_until, 0) <= ?1
               AND EXISTS (SELECT 1 FROM push_queue n
                           WHERE n.state = 0 AND n.target_id = push_queue.target_id
                             AND n.conv_id = push_queue.conv_id AND n.id > push_queue.id)",
        )
        .and_then(|mut s| s.execute([now_ms]))
        .map_err(db_err)?;
        let mut due = tx
            .prepare_cached(
                "SELECT q.id, q.target_id, q.conv_id, q.content, q.attempts,
                        t.user_id, t.target, t.created_at
                 FROM push_queue q JOIN push_targets t ON t.id = q.target_id
                 WHERE q.state = 0 AND q.due_at <= ?1 AND COALESCE(q.lease_until, 0) <= ?1
                 ORDER BY q.id LIMIT ?2",
            )
            .map_err(db_err)?;
        let rows = due
            .query_map(params![now_ms, limit], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, String>(6)?,
                    r.get::<_, i64>(7)?,
                ))
            })
            .map_err(db_err)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_err)?;
        let mut lease = tx
            .prepare_cached(
                "UPDATE push_queue SET lease_until = ?2, attempts = attempts + 1 WHERE id = ?1",
            )
            .map_err(db_err)?;
        let mut drop = tx
            .prepare_cached("UPDATE push_queue SET state = 3 WHERE id = ?1")
            .map_err(db_err)?;
        for (qid, target_id, content, attempts, user, target, created_at) in rows {
            let (Ok(content), Ok(address)) = (
                serde_json::from_str::<PushContent>(&content),
                serde_json::from_str::<TargetAddress>(&target),
            ) else {
                tracing::warn!(push = qid, "unreadable queued push, dropped");
                drop.execute([qid]).map_err(db_err)?;
                continue;
            };
            lease
                .execute(params![qid, now_ms + lease_ms])
                .map_err(db_err)?;
            jobs.push(PushJob {
                id: Id(qid as u64),
                target: PushTarget {
                    id: Id(target_id as u64),
                    user: Id(user as u64),
                    address,
                    created_at,
                },
                content,
                attempts: attempts as u32,
            });
        }
        tx.execute(
            "DELETE FROM push_queue WHERE id IN (SELECT id FROM push_queue
               WHERE state <> 0 AND created_at < ?1 LIMIT 1000)",
            [now_ms - KEEP_FINISHED_MS],
        )
        .map_err(db_err)?;
    }
    tx.commit().map_err(db_err)?;
    Ok(jobs)
}

pub fn finish(conn: &Connection, id: Id, done: PushDone) -> rusqlite::Result<()> {
    match done {
        PushDone::Sent => conn.execute(
            "UPDATE push_queue SET state = ?2, lease_until = NULL WHERE id = ?1",
            params![id.0 as i64, SENT],
        )?,
        PushDone::RetryAt(at) => conn.execute(
            "UPDATE push_queue SET due_at = ?2, lease_until = NULL WHERE id = ?1 AND state = ?3",
            params![id.0 as i64, at, PENDING],
        )?,
        PushDone::Dropped => conn.execute(
            "UPDATE push_queue SET state = ?2, lease_until = NULL WHERE id = ?1",
            params![id.0 as i64, DROPPED],
        )?,
    };
    Ok(())
}

pub fn next_due_mut(conn: &mut Connection) -> rusqlite::Result<Option<i64>> {
    next_due(conn)
}

pub fn next_due(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(
        "SELECT MIN(MAX(due_at, COALESCE(lease_until, 0))) FROM push_queue WHERE state = 0",
    )?
    .query_row([], |r| r.get::<_, Option<i64>>(0))
}

pub fn cursor(conn: &Connection, name: &str) -> rusqlite::Result<Option<u64>> {
    conn.prepare_cached("SELECT pos FROM work_cursors WHERE name = ?1")?
        .query_row([name], |r| r.get::<_, i64>(0))
        .optional()
        .map(|p| p.map(|p| p as u64))
}

pub fn set_cursor(conn: &Connection, name: &str, pos: u64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO work_cursors (name, pos) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET pos = MAX(pos, excluded.pos)",
    )?
    .execute(params![name, pos as i64])
    .map(|_| ())
}

/// Whether `user` is a current member of `conv` (main database).
pub async fn is_member(reads: &Arc<ReadPool>, user: UserId, conv: ConvId) -> Result<bool> {
    reads
        .run(move |conn| {
            conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM members WHERE conv_id = ?1 AND user_id = ?2 AND left_pos IS NULL)",
            )
            .and_then(|mut s| s.query_row(params![conv.0 as i64, user.0 as i64], |r| r.get(0)))
            .map_err(db_err)
        })
        .await
}

/// The badge: unread messages over the user's conversations (main database).
pub async fn unread_messages(reads: &Arc<ReadPool>, user: UserId) -> Result<u64> {
    reads.run(move |conn| unread_count(conn, user)).await
}

/// Each conversation's newest message is the newest of `message_rows` or of the tail;
/// the tail is read once for all of them (materialized), not once per conversation
/// through the view.
pub(super) fn unread_count(conn: &Connection, user: UserId) -> Result<u64> {
    conn.prepare_cached(
        "WITH tail AS MATERIALIZED (SELECT conv_id, MAX(seq) AS seq FROM message_tail GROUP BY conv_id)
         SELECT COALESCE(SUM(MAX(0, MAX(
                    COALESCE((SELECT seq FROM message_rows WHERE conv_id = m.conv_id ORDER BY seq DESC LIMIT 1), 0),
                    COALESCE((SELECT seq FROM tail WHERE tail.conv_id = m.conv_id), 0)
                ) - m.read_seq)), 0)
         FROM members m WHERE m.user_id = ?1 AND m.left_pos IS NULL",
    )
    .and_then(|mut s| s.query_row([user.0 as i64], |r| r.get::<_, i64>(0)))
    .map(|n| n as u64)
    .map_err(db_err)
}
